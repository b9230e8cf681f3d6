"""The writer's end of the content stream (see blocks.py for the stored form).

One Appender per writing Store. It keeps the open block (the last, partly filled one)
decoded in memory across write transactions, so an ingest compresses only what it adds:

- `append(data)` gives the bytes their stream positions;
- `save(txn)`, at the end of each write transaction, writes what was appended since the
  last save as one new fragment of the open block (fast level), and blocks that filled
  up as one frame each (ingest level, compressed in worker threads meanwhile);
- `seal(txn)` (end of a CLI ingest, or the compactor) rewrites the open block's
  fragments as one frame at the ingest level.

Another process may write in between: the meta record `stream` = {end, epoch} names
the state this cache was built from, and any mismatch reloads it from the store.
A transaction that fails is undone with `mark()` / `rollback()`.

A lean appender (the mount's: `Store.defer_block_merges`) holds only what was appended
since the last save, reads the rest of the open block back from its fragments, never
seals, and leaves a block that fills up as its fragments: the mount's background
compaction merges them into one frame (compaction.compact_block) in a child process.
The daemon then holds neither the open block (up to a block, 16 MiB) nor the zstd state
that compressing a whole block takes (27 MiB at the ingest level).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from .. import limits
from . import blocks, frames
from .lmdbenv import meta_get, meta_put

_pool: Optional[ThreadPoolExecutor] = None


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=limits.COMPRESS_THREADS, thread_name_prefix="stowfs-zstd")
    return _pool


class _Full:
    """A block that filled up: its frame is being compressed."""

    def __init__(self, block_id: int, ranges, raw: bytearray, old_frags: list[int], level: Optional[int],
                 stored_check: bool):
        self.block_id, self.ranges, self.raw, self.old_frags = block_id, ranges, raw, old_frags
        key = blocks.frag_key(block_id, 0)
        # level None (a lean appender): no frame; what was not saved goes in as a fragment
        self.future = None if level is None else pool().submit(
            blocks.encode_fragment, key, ranges, raw, level, stored_check)


class Appender:
    def __init__(self, blocks_table, meta_table, block_size: int, level: int, lean: bool = False,
                 stored_check: bool = True):
        """stored_check: write blocks checked as stored (format 6; blocks.encode_fragment)."""
        self.table, self.meta, self.B, self.level = blocks_table, meta_table, block_size, level
        self.lean, self.stored_check = lean, stored_check
        self.epoch = None          # (end, epoch) this cache reflects; None: not loaded
        self.full: list[_Full] = []

    # ------------------------------------------------------------ state
    def begin(self, txn) -> None:
        st = meta_get(txn, self.meta, b"stream", {"end": 0, "epoch": 0})
        if self.epoch == (st["end"], st["epoch"]):
            return
        self.full = []
        self.end = self.saved = st["end"]
        self.ep = st["epoch"]
        self.open_id = self.end // self.B
        self.ranges: list[list[int]] = []
        self.raw = bytearray()
        self.frags: list[int] = []
        if self.lean:       # only the last fragment's number matters (the next one's)
            last = blocks.last_fragment_key(txn, self.table, self.open_id)
            self.frags = [] if last is None else [last]
        else:
            reader = blocks.StreamReader(self.table, self.B, blocks.DecodedCache(0))
            for frag, frame in blocks.fragments(txn, self.table, self.open_id):
                for start, length in frag.ranges:
                    self._add_range(start, length)
                self.raw += reader.whole(frag, frame)
                self.frags.append(frag.key)
        self.epoch = (self.end, self.ep)

    def mark(self):
        return (self.end, self.saved, self.open_id, [list(r) for r in self.ranges], len(self.raw),
                list(self.frags), len(self.full), self.ep, self.epoch)

    def rollback(self, m) -> None:
        (end, saved, open_id, ranges, nraw, frags, nfull, ep, epoch) = m
        popped = self.full[nfull:]
        del self.full[nfull:]
        if popped:                      # the open block at the mark had filled since
            self.raw = popped[0].raw
        del self.raw[nraw:]
        self.end, self.saved, self.open_id, self.ranges = end, saved, open_id, ranges
        self.frags, self.ep, self.epoch = frags, ep, epoch

    def flush_full(self, txn, in_flight: int = limits.COMPRESS_THREADS) -> None:
        """Write the frames of filled blocks that are compressed (waiting while more than
        in_flight are), so a large file is stored in bounded memory. Only in a
        transaction of its own: a failure then forgets the whole cache (`forget`)."""
        while self.full and (self.full[0].future is None or self.full[0].future.done()
                             or len(self.full) > in_flight):
            f = self.full.pop(0)
            if f.future is None:
                self._save_tail_of(txn, f.block_id, f.ranges, f.raw, f.old_frags)
                continue
            frame = f.future.result()
            for k in f.old_frags:
                self.table.delete(txn, blocks.key_bytes(k))
            self.table.put(txn, blocks.key_bytes(blocks.frag_key(f.block_id, 0)), frame)

    def forget(self) -> None:
        """Drop the cache (after a failed transaction that cannot be rolled back)."""
        self.epoch = None
        self.full = []

    def _add_range(self, start: int, length: int) -> None:
        if self.ranges and self.ranges[-1][0] + self.ranges[-1][1] == start:
            self.ranges[-1][1] += length
        else:
            self.ranges.append([start, length])

    # ------------------------------------------------------------ writing
    def append(self, data) -> int:
        """Give data the next stream positions; returns the first."""
        first = self.end
        mv = memoryview(data)
        while mv:
            off = self.end - self.open_id * self.B
            take = min(len(mv), self.B - off)
            self._add_range(off, take)
            self.raw += mv[:take]
            self.end += take
            mv = mv[take:]
            if self.end == (self.open_id + 1) * self.B:
                self._close_open_block()
        return first

    def _close_open_block(self) -> None:
        self.full.append(_Full(self.open_id, [tuple(r) for r in self.ranges], self.raw,
                               self.frags, None if self.lean else self.level, self.stored_check))
        self.open_id += 1
        self.ranges, self.raw, self.frags = [], bytearray(), []

    def read(self, pos: int, n: int) -> Optional[bytes]:
        """Bytes at stream positions this writer holds in memory (the open block and
        blocks being compressed), or None."""
        for raw, bid, ranges in [(f.raw, f.block_id, f.ranges) for f in self.full] + \
                [(self.raw, self.open_id, self.ranges)]:
            base = bid * self.B
            if base <= pos and pos + n <= base + self.B:
                acc = 0
                for start, length in ranges:
                    if base + start <= pos and pos + n <= base + start + length:
                        p = acc + pos - base - start
                        return bytes(raw[p:p + n])
                    acc += length
                return None
        return None

    def held_from(self) -> int:
        """The first stream position read from this appender (read()), not the store: a
        lean one holds only what it has not saved (flush_full may have written the
        unsaved part of filled blocks already)."""
        lo = self.full[0].block_id * self.B if self.full else self.open_id * self.B
        return max(lo, self.saved) if self.lean else lo

    def holds(self, pos: int) -> bool:
        return pos >= self.held_from()

    def dirty(self) -> bool:
        """Something appended or filled since the last save."""
        return self.end != self.saved or bool(self.full)

    def save(self, txn, wait: bool = False, seal: bool = False) -> None:
        """Write, in txn, the full blocks whose frames are ready (all, with wait) and
        what the open block gained since the last save, as one fragment; with seal,
        the open block is instead written whole as one frame at the ingest level (what
        a batch of `ingest` does: no fragment to rewrite later)."""
        if not self.dirty():
            return
        keep = []
        for f in self.full:
            if f.future is None:
                self._save_tail_of(txn, f.block_id, f.ranges, f.raw, f.old_frags)
            elif wait or f.future.done():
                frame = f.future.result()
                for k in f.old_frags:
                    self.table.delete(txn, blocks.key_bytes(k))
                self.table.put(txn, blocks.key_bytes(blocks.frag_key(f.block_id, 0)), frame)
            else:
                # Not ready: its bytes go in as a fragment now (nothing may wait in memory
                # only), and the whole frame replaces the fragments when it is.
                self._save_tail_of(txn, f.block_id, f.ranges, f.raw, f.old_frags)
                keep.append(f)
        self.full = keep
        if seal and self.end > self.saved and not self.lean:
            self.saved = self.end
            self._seal(txn, self.level)
            return
        self._save_tail_of(txn, self.open_id, self.ranges, self.raw, self.frags)
        self.saved = self.end
        if self.lean:
            self.ranges, self.raw = [], bytearray()
        self.ep += 1
        meta_put(txn, self.meta, b"stream", {"end": self.end, "epoch": self.ep})
        self.epoch = (self.end, self.ep)

    def _save_tail_of(self, txn, bid: int, ranges, raw, frags: list[int]) -> None:
        """Write the bytes of block bid at stream positions >= self.saved as a fragment."""
        base = bid * self.B
        lo = max(self.saved - base, 0)
        acc, new_ranges, parts = 0, [], []
        for start, length in ranges:
            a, b = max(start, lo), start + length
            if a < b:
                new_ranges.append((a, b - a))
                parts.append(raw[acc + a - start:acc + length])
            acc += length
        if not new_ranges:
            return
        no = (frags[-1] & 0xFFFF) + 1 if frags else 0
        if no > 0xFFFF:
            raise RuntimeError("too many fragments in one block")   # seal() first
        key = blocks.frag_key(bid, no)
        body = b"".join(parts)
        self.table.put(txn, blocks.key_bytes(key),
                       blocks.encode_fragment(key, new_ranges, body, limits.LEVEL_FRAGMENT, self.stored_check))
        frags.append(key)

    def seal(self, txn, level: Optional[int] = None) -> bool:
        """Rewrite the open block's fragments as one frame (after save). True if it did.
        A lean appender never does (it does not hold the block)."""
        if self.lean or (len(self.frags) <= 1 and level is None):
            return False
        if not self.frags:
            return False
        self._seal(txn, self.level if level is None else level)
        return True

    def _seal(self, txn, level: int) -> None:
        key = blocks.frag_key(self.open_id, 0)
        frame = blocks.encode_fragment(key, [tuple(r) for r in self.ranges], self.raw, level, self.stored_check)
        for k in self.frags:
            self.table.delete(txn, blocks.key_bytes(k))
        self.table.put(txn, blocks.key_bytes(key), frame)
        self.frags = [key]
        self.ep += 1
        meta_put(txn, self.meta, b"stream", {"end": self.end, "epoch": self.ep})
        self.epoch = (self.end, self.ep)
