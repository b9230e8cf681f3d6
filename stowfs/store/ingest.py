"""What a file becomes when it is stored.

`prepare` needs no store: it parses the bytes (stowfs.formats), takes the manifest
fields and the per-file facts (view sizes, token counts, ...) and a checksum. It is
pure and picklable, so `ingest` prepares files in worker processes.

`Writer.store_bytes` runs inside a write transaction: it finds the long repeats of the
bytes in the stream through the anchor index (anchors.py), checks each hit byte for byte
and grows it both ways, and appends everything else to the stream (appender.py), in
order. The result is the file's extents.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Optional

from .. import limits
from ..conversation import Parsed
from . import anchors
from .appender import Appender
from .blocks import StreamReader
from .records import CHECKSUM_SIZE, checksum


@dataclass
class Prepared:
    name: str
    size: int
    mtime_ns: int
    mode: int
    meta: dict
    facts: dict = field(default_factory=dict)
    checksum: bytes = b""
    anchors: Optional[tuple] = None     # anchors.find(data), taken in the worker


def describe(parsed: Parsed) -> dict:
    """The record fields that come from parsing."""
    models = parsed.models()
    conv0 = parsed.conversations[0] if parsed.conversations else None
    day = conv0.started[:10] if conv0 is not None and conv0.started and len(conv0.started) >= 10 else None
    app = next((c.application for c in parsed.conversations if c.application), None)
    return {"format": parsed.format, "application": app, "model": models[0] if models else None,
            "models": models[:16], "day": day, "error": parsed.issue,
            "messages": parsed.message_count(), "conversations": len(parsed.conversations)}


def unparsed(size: int) -> Parsed:
    return Parsed(format="unparsed", error=f"larger than {limits.MAX_PARSE_BYTES} bytes "
                  f"({size} bytes): stored and deduplicated, not parsed as a conversation")


def preload() -> None:
    """Import what prepare() uses (parsers, views, token counts, numpy): before workers
    are forked, so that none of them imports it again."""
    from .. import facts
    from ..formats import parse  # noqa: F401
    facts.preload()
    anchors.preload()


def prepare(name: str, data: bytes, mtime_ns: int, mode: int) -> Prepared:
    from .. import facts
    from ..formats import parse
    parsed = parse(data, name)
    return Prepared(name, len(data), mtime_ns, mode, describe(parsed),
                    facts.compute(parsed, data), checksum(data), anchors.find(data))


def prepare_large(name: str, path: str, size: int, mtime_ns: int, mode: int) -> Prepared:
    """A file too large to parse: its checksum, streamed."""
    h = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(limits.READ_WINDOW)
            if not chunk:
                break
            h.update(chunk)
    return Prepared(name, size, mtime_ns, mode, describe(unparsed(size)), {}, h.digest())


def prepare_path(name: str, path: str, mtime_ns: int, mode: int):
    """(Prepared, bytes or None when too large to hold)."""
    size = os.path.getsize(path)
    if size > limits.MAX_PARSE_BYTES:
        return prepare_large(name, path, size, mtime_ns, mode), None
    with open(path, "rb") as f:
        data = f.read()
    return prepare(name, data, mtime_ns, mode), data


def prepare_many(rows: list) -> list:
    """Worker-process entry: prepare_path for (name, path, mtime_ns, mode) rows; the
    bytes are not sent back (the main process reads them again, from the page cache)."""
    from ..errors import StowError
    out = []
    for name, path, mtime_ns, mode in rows:
        try:
            p, data = prepare_path(name, path, mtime_ns, mode)
            if data is not None and len(data) != p.size:
                raise StowError(f"{path} changed while it was read")
            out.append(p)
        except StowError as e:
            out.append(e)
        except OSError as e:
            out.append(StowError(f"cannot read {path}: {e.strerror}"))
    return out


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    if a[len(a) - n:] == b[len(b) - n:]:
        return n
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Writer:
    """Stores bytes into the stream inside a write transaction (one per writing Store)."""

    def __init__(self, appender: Appender, index: anchors.Index, reader: StreamReader):
        self.app, self.index, self.reader = appender, index, reader
        self.own_txn = False      # storing one file in a transaction of its own

    def begin(self, txn) -> None:
        self.app.begin(txn)
        self.index.begin(txn)

    def mark(self):
        return self.app.mark(), self.index.mark()

    def rollback(self, m) -> None:
        self.app.rollback(m[0])
        self.index.rollback(m[1])

    def dirty(self) -> bool:
        return self.app.dirty() or bool(self.index.pending)

    def save(self, txn, wait: bool = False, seal: bool = False) -> None:
        self.app.save(txn, wait, seal)
        self.index.save(txn)

    # ------------------------------------------------------------ reading stored bytes
    def _get(self, txn, pos: int, n: int, virt: tuple) -> bytes:
        """Up to n bytes at stream position pos (fewer at a hole or the end); positions
        past the appender's end are the current literal run, virt = (data, lo, hi)."""
        end = self.app.end
        if pos >= end:
            data, lo, hi = virt
            a = lo + pos - end
            return bytes(data[a:min(hi, a + n)]) if a < hi else b""
        n = min(n, end - pos)
        if self.app.holds(pos):
            out = bytearray()
            while n > 0:
                got = None
                step = n
                while step and got is None:
                    got = self.app.read(pos, step)
                    if got is None:
                        step //= 2
                if not got:
                    break
                out += got
                pos += len(got)
                n -= len(got)
            return bytes(out)
        n = self._stored_span(pos, n)
        try:
            return self.reader.read(txn, pos, n)
        except Exception:
            return b""          # a hole (dropped bytes): no match there

    def _stored_span(self, pos: int, n: int) -> int:
        """How many of the n bytes at pos (a position the appender does not hold) one
        read from the store may take: within one block, and short of what the appender
        holds (a lean one holds the open block from its last save on)."""
        B = self.reader.block_size
        return min(n, B - pos % B, self.app.held_from() - pos)

    def read(self, txn, pos: int, n: int) -> bytes:
        """n bytes at stream position pos, whether committed or still in this writer's
        memory (a file stored earlier in the same transaction)."""
        out = bytearray()
        while n > 0:
            got = self._get(txn, pos, n, (b"", 0, 0)) if self.app.holds(pos) else \
                self.reader.read(txn, pos, self._stored_span(pos, n))
            if not got:
                from ..errors import Corrupt
                raise Corrupt(f"stream position {pos} is not stored")
            out += got
            pos += len(got)
            n -= len(got)
        return bytes(out)

    # ------------------------------------------------------------ storing
    def store_bytes(self, txn, data, found=None) -> tuple[list[tuple[int, int]], int, int]:
        """Store data (found: its anchors, if taken already); returns (extents, new
        bytes, deduplicated bytes)."""
        if found is not None:
            return self._store_parts(txn, [(data, found)], len(data))
        mv = memoryview(data)
        return self._store_parts(txn, (mv[lo:lo + limits.READ_WINDOW]
                                       for lo in range(0, len(data), limits.READ_WINDOW)), len(data))

    def store_file(self, txn, path: str, size: int):
        """Store a file too large to hold, a window at a time."""
        def parts():
            n = 0
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(limits.READ_WINDOW)
                    if not chunk:
                        break
                    n += len(chunk)
                    yield chunk
            if n != size:
                from ..errors import StowError
                raise StowError(f"{path} changed while it was being stored")
        return self._store_parts(txn, parts(), size)

    def _store_parts(self, txn, parts, size: int):
        far = limits.MIN_MATCH if size >= limits.FAR_FILE else None
        extents: list[list[int]] = []
        new = dup = 0

        def emit(pos: int, length: int):
            if length <= 0:
                return
            if extents and extents[-1][0] + extents[-1][1] == pos:
                extents[-1][1] += length
            else:
                extents.append([pos, length])

        for part in parts:
            found = None
            if isinstance(part, tuple):
                part, found = part
            n_new, n_dup = self._store_part(txn, part, emit, found, far)
            new += n_new
            dup += n_dup
            if self.own_txn:
                self.app.flush_full(txn)
        return [tuple(e) for e in extents], new, dup

    def _store_part(self, txn, data, emit, found=None, far=limits.MIN_MATCH) -> tuple[int, int]:
        """Store one part of a file; a repeat in an earlier block is taken from `far`
        bytes long, or not at all if far is None (see limits.FAR_FILE)."""
        positions, keys = anchors.find(data) if found is None else found
        hits = self.index.lookup(keys)
        pending = self.index.pending
        lit = 0              # start of the literal run not yet appended
        covered = 0          # data before this is stored (appended or matched)
        new = dup = 0
        W = anchors.W
        for j in range(len(positions)):
            i = int(positions[j])
            if i < covered:
                continue
            open_start = self.app.open_id * self.app.B     # moves on as blocks fill
            k = int(keys[j])
            cands = []
            if hits[j] >= 0:
                cands.append(int(hits[j]))
            p = pending.get(k)
            if p is not None and p not in cands:
                cands.append(p)
            if far is None:     # comparing would read an earlier block only to refuse it
                cands = [c for c in cands if c >= open_start]
            best = None
            for s in cands:
                m = self._match(txn, data, i, s, lit)
                if m is not None and (best is None or m[1] + m[2] > best[1] + best[2]):
                    best = m
            # A source inside the open block is within zstd's window already: taking
            # it saves little and costs an extent, unless the repeat is long. One in an
            # earlier block costs a read of that block.
            need = None
            if best is not None:
                need = limits.LONG_MATCH if best[0] - best[1] >= open_start else far
            if need is not None and best[1] + best[2] >= need:
                s, back, fwd = best
                if i - back > lit:
                    emit(self.app.append(data[lit:i - back]), i - back - lit)
                    new += i - back - lit
                emit(s - back, back + fwd)
                dup += back + fwd
                lit = covered = i + fwd
                continue
            self.index.add(k, self.app.end + (i - lit))
        if len(data) > lit:
            emit(self.app.append(data[lit:]), len(data) - lit)
            new += len(data) - lit
        return new, dup

    def _match(self, txn, data, i: int, s: int, lit: int) -> Optional[tuple[int, int, int]]:
        """(s, back, fwd): data[i-back:i+fwd] equals the stream at [s-back, s+fwd)."""
        W = anchors.W
        virt = (data, lit, i)
        if s + W > self.app.end + (i - lit):
            return None
        if self._get(txn, s, W, virt) != bytes(data[i:i + W]):
            return None
        fwd, step = W, 4096
        while i + fwd < len(data):
            want = min(step, len(data) - i - fwd)
            got = self._get(txn, s + fwd, want, virt)
            c = _common_prefix(got, data[i + fwd:i + fwd + len(got)])
            fwd += c
            if not got or c < len(got):
                break
            step = min(step * 2, 1 << 20)
        back, step = 0, 4096
        while back < i - lit and s - back > 0:
            want = min(step, i - lit - back, s - back)
            got = self._get(txn, s - back - want, want, virt)
            while len(got) < want and want > 64:      # a range boundary: come closer
                want //= 2
                got = self._get(txn, s - back - want, want, virt)
            if len(got) < want or not want:
                break
            c = _common_suffix(got, data[i - back - want:i - back])
            back += c
            if c < want:
                break
            step = min(step * 2, 1 << 20)
        # a source in the literal run itself must end before the part that is matched
        limit = self.app.end + (i - back - lit)
        if s + fwd > limit:
            fwd = limit - s
            if fwd < W:
                return None
        return s, back, fwd
