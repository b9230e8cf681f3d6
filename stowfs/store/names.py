"""The name table: every stored path, sorted, packed up to NAME_PAGE_ENTRIES to a
compressed page (as squashfs packs its directory table), so a name costs a few bytes
instead of an LMDB entry of its own.

Stored form (table `names`): key = the UTF-8 of the page's first name, cut to
NAME_KEY_BYTES (LMDB's key limit is 511 bytes; names may be longer), value =
frame(tag NAMES, key = BLAKE2b-64 of the LMDB key, payload = msgpack [[names sorted],
[file ids, as deltas]]). The frame's key binds a page to the LMDB key it is
stored under, so a damaged key is detected.

The table is an index over the records (each record holds its name): `verify`
cross-checks the two both ways, and a read checks that the record a name led to has
that name.
"""
from __future__ import annotations

import bisect
import hashlib
from typing import Iterator, Optional

from .. import limits
from ..errors import Corrupt
from ..packing import pack, unpack
from . import frames
from .tables import FrameCache, ThreadDirty


def page_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")[:limits.NAME_KEY_BYTES]


def frame_key(k: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "big")


def encode_page(k: bytes, entries: list, level: int) -> bytes:
    """Two columns: the names, and the file ids as deltas."""
    ids = [e[1] for e in entries]
    deltas = ids[:1] + [b - a for a, b in zip(ids, ids[1:])]
    return frames.encode(frames.NAMES, frame_key(k), pack([[e[0] for e in entries], deltas]), level)


def decode_page(k: bytes, frame) -> list:
    return _entries(k, frames.decode(frame, frames.NAMES, frame_key(k))[1])


def recover_page(frame) -> Optional[tuple[bytes, list]]:
    """(table key, entries) of a name page found where its key is damaged (under another
    key, or under another table's tag: no lookup reaches it), or None when it is not a
    sound name page. Sound: the frame matches its own hash, and the key it says it has
    is the one its first name gives. verify names its files: else a damaged key made
    every name on the page vanish, and nothing named the files that no longer read."""
    try:
        if frame is None or len(frame) < 9 or frame[0] != frames.NAMES:
            return None
        key = int.from_bytes(bytes(frame[1:9]), "big")
        _, raw = frames.decode(frame, frames.NAMES, key)
        names, _ = unpack(raw)
        k = page_key(names[0])
        if frame_key(k) != key:
            return None
        return k, _entries(k, raw)
    except (Corrupt, ValueError, TypeError, IndexError):     # not a sound name page
        return None


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def salvage_page(frame) -> list:
    """The [name, file id] entries a damaged name page seems to hold, unverified (its
    hash or header is what is damaged, or its payload): for verify's report alone, so
    that a damaged page's files are named, not just counted. [] when nothing sound-
    looking is found. Never used to read a file."""
    if frame is None or len(frame) < 12 or frame[0] != frames.NAMES:
        return []
    data = bytes(frame)
    at = data.find(ZSTD_MAGIC, 11)
    if at < 0:
        return []
    try:
        return _columns(frames.decompressor().decompressobj().decompress(data[at:]))
    except (ValueError, TypeError, frames.zstd.ZstdError):    # nothing that looks sound
        return []


def _columns(raw) -> list:
    """[name, file id] of a page's payload (names, then ids: the first absolute, then
    deltas); ValueError when it is not that shape."""
    names, deltas = unpack(raw)
    if not (isinstance(names, list) and isinstance(deltas, list)) or len(names) != len(deltas):
        raise ValueError("columns differ in length")
    entries, acc = [], 0
    for i, (n, d) in enumerate(zip(names, deltas)):
        if not isinstance(n, str) or not isinstance(d, int):
            raise ValueError("bad entry")
        acc = d if i == 0 else acc + d
        entries.append([n, acc])
    return entries


def _entries(k: bytes, raw) -> list:
    try:
        entries = _columns(raw)
        prev = None
        for e in entries:
            if prev is not None and e[0] <= prev:
                raise ValueError("not sorted")
            prev = e[0]
        if not entries or page_key(entries[0][0]) != bytes(k):
            raise ValueError("first name does not match the page key")
        return entries
    except Exception as e:
        raise Corrupt(f"name page {bytes(k)[:40]!r} is damaged: {e}") from None


class Names(ThreadDirty):
    """The name table. A write transaction changes pages in `dirty` (key -> entries;
    None: deleted) and writes each once, at `flush`."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self._cache = FrameCache(limits.NAME_PAGE_CACHE)

    def release(self) -> None:
        """Drop the decoded pages kept."""
        self._cache.clear()

    def _load(self, k: bytes, frame) -> list:
        hd = frames.header(frame, frames.NAMES, frame_key(k))
        return self._cache.get(hd.hash, lambda: decode_page(k, frame))

    def _entries(self, txn, k: bytes) -> list:
        d = self.dirty
        if k in d:
            return d[k]
        return self._load(k, self.table.get(txn, k))

    def _keys_from(self, txn, k: Optional[bytes]):
        """Page keys in order, starting at the last live one <= k (all, for None)."""
        dirty = sorted(dk for dk, v in self.dirty.items() if v is not None)
        floor = None
        if k is not None:
            # the floor among stored keys not deleted in this transaction (a stored floor
            # deleted here, a page re-keyed by a rename, made the walk start past the
            # live floor and skip its page) and among this transaction's keys
            floor = self._stored_floor(txn, k)
            below = [dk for dk in dirty if dk <= k]
            if below and (floor is None or below[-1] > floor):
                floor = below[-1]

        def lmdb_keys():
            c2 = self.table.cursor(txn)
            if not (c2.set_range(floor) if floor is not None else c2.first()):
                return
            for kk in c2.iternext(keys=True, values=False):
                yield bytes(kk)
        import heapq
        seen = None
        for kk in heapq.merge(lmdb_keys(), (d for d in dirty if floor is None or d >= floor)):
            if kk == seen:
                continue
            seen = kk
            if floor is not None and kk < floor:
                continue
            if kk in self.dirty and self.dirty[kk] is None:
                continue
            yield kk

    def _page_for(self, txn, name: str) -> Optional[tuple[bytes, list]]:
        """The page whose range holds name (the last page whose first name <= name).
        A page whose key is above name's cannot hold it (keys are first names cut to
        NAME_KEY_BYTES, so a greater key means a greater first name): one page is read."""
        k = page_key(name)
        if not self.dirty:          # a reader: one cursor, one page (two for a long name)
            cur = self.table.cursor(txn)
            if cur.set_range(k):
                if bytes(cur.key()) == k:
                    entries = self._load(k, cur.value())
                    if entries[0][0] <= name:
                        return k, entries
                ok = cur.prev()     # the page before holds it
            else:
                ok = cur.last()
            if ok or cur.first():   # (or name sorts before every page: the first)
                pk = bytes(cur.key())
                return pk, self._load(pk, cur.value())
            return None
        got = self._floor_page(txn, k, name)
        if got is not None:
            return got
        prev = None
        for pk in self._keys_from(txn, k):
            if pk > k:
                break
            entries = self._entries(txn, pk)
            if entries[0][0] > name:
                # a long name sorting before the first name of the page its key names:
                # it belongs to the page before
                before = self._key_before(txn, pk)
                if before is not None:
                    prev = (before, self._entries(txn, before))
                break
            prev = (pk, entries)
        if prev is None:
            for pk in self._keys_from(txn, None):
                return pk, self._entries(txn, pk)
        return prev

    def _floor_page(self, txn, k: bytes, name: str) -> Optional[tuple[bytes, list]]:
        """_page_for in a write transaction, the common case in one cursor step: the
        greatest page key <= k, from the stored keys and this transaction's pages, when it
        is a live page whose first name is <= name, or the first page when there is no
        such key. None leaves the rest to the full walk (a long name before its page's
        first name). Ingest looks up each name four times in a batch that holds up to 4,096
        pages' changes: the merged walk from the floor was a third of storing a file."""
        floor = self._stored_floor(txn, k)
        for dk, v in self.dirty.items():
            if v is not None and dk <= k and (floor is None or dk > floor):
                floor = dk
        if floor is None:       # name sorts before every page: the first one
            first = self._key_after(txn, b"")
            return (first, self._entries(txn, first)) if first is not None else None
        entries = self._entries(txn, floor)
        return (floor, entries) if entries[0][0] <= name else None

    def _stored_floor(self, txn, k: bytes) -> Optional[bytes]:
        """The greatest stored page key <= k not deleted in this transaction."""
        cur = self.table.cursor(txn)
        ok = cur.set_range(k)
        if ok and bytes(cur.key()) != k:
            ok = cur.prev()
        elif not ok:
            ok = cur.last()
        while ok and self.dirty.get(bytes(cur.key()), True) is None:   # deleted here
            ok = cur.prev()
        return bytes(cur.key()) if ok else None

    def _key_after(self, txn, k: bytes) -> Optional[bytes]:
        """The least live page key above k (pages written in this transaction too)."""
        cur = self.table.cursor(txn)
        ok = cur.set_range(k)
        if ok and bytes(cur.key()) == k:
            ok = cur.next()
        while ok and self.dirty.get(bytes(cur.key()), True) is None:   # deleted here
            ok = cur.next()
        best = bytes(cur.key()) if ok else None
        for dk, v in self.dirty.items():
            if v is not None and dk > k and (best is None or dk < best):
                best = dk
        return best

    def _key_before(self, txn, k: bytes) -> Optional[bytes]:
        """The greatest live page key below k (pages written in this transaction too)."""
        cur = self.table.cursor(txn)
        ok = cur.prev() if cur.set_range(k) else cur.last()
        while ok and self.dirty.get(bytes(cur.key()), True) is None:   # deleted here
            ok = cur.prev()
        best = bytes(cur.key()) if ok else None
        for dk, v in self.dirty.items():
            if v is not None and dk < k and (best is None or dk > best):
                best = dk
        return best

    def lookup(self, txn, name: str) -> Optional[int]:
        page = self._page_for(txn, name)
        if page is None:
            return None
        entries = page[1]
        i = bisect.bisect_left(entries, [name, -1])
        if i < len(entries) and entries[i][0] == name:
            return entries[i][1]
        return None

    def first_from(self, txn, start: str) -> Optional[str]:
        """The first name >= start (one page read when the page that would hold start
        has one)."""
        page = self._page_for(txn, start)
        if page is None:
            return None
        entries = page[1]
        i = bisect.bisect_left(entries, [start, -1])
        if i < len(entries):
            return entries[i][0]
        after = self._key_after(txn, page[0])      # pages are disjoint and in order
        return self._entries(txn, after)[0][0] if after is not None else None

    def iterate(self, txn, start: str = "") -> Iterator[tuple[str, int]]:
        """(name, id) for every name >= start, in order."""
        for pk in self._keys_from(txn, page_key(start) if start else None):
            for name, fid in self._entries(txn, pk):
                if name >= start:
                    yield name, fid

    def put(self, txn, name: str, file_id: int) -> Optional[int]:
        """Map name to file_id; returns the id it replaced, if any."""
        page = self._page_for(txn, name)
        if page is None:
            k, entries = page_key(name), []
        else:
            k, entries = page[0], list(page[1])
        i = bisect.bisect_left(entries, [name, -1])
        old = None
        if i < len(entries) and entries[i][0] == name:
            old = entries[i][1]
            entries[i] = [name, file_id]
        else:
            entries.insert(i, [name, file_id])
        self._set(k, entries)
        return old

    def delete(self, txn, name: str) -> Optional[int]:
        page = self._page_for(txn, name)
        if page is None:
            return None
        k, entries = page[0], list(page[1])
        i = bisect.bisect_left(entries, [name, -1])
        if i < len(entries) and entries[i][0] == name:
            fid = entries.pop(i)[1]
            self._set(k, entries)
            return fid
        return None

    def _set(self, k: bytes, entries: list) -> None:
        """Entries become the page at k: re-keyed if its first name changed, split when
        it grew past the page size."""
        self.dirty[k] = None
        if not entries:
            return
        pages = [entries]
        while len(pages[-1]) > limits.NAME_PAGE_ENTRIES:
            last = pages.pop()
            cut = len(last) // 2
            # pages must start with names whose keys differ (names longer than the key)
            while cut < len(last) and page_key(last[cut][0]) == page_key(last[cut - 1][0]):
                cut += 1
            if cut >= len(last):
                pages.append(last)
                break
            pages += [last[:cut], last[cut:]]
        for p in pages:
            self.dirty[page_key(p[0][0])] = p

    def mark(self):
        return dict(self.dirty)

    def rollback(self, m) -> None:
        self.dirty = m

    def flush(self, txn, level: int) -> None:
        for k, entries in self.dirty.items():
            if entries is None:
                self.table.delete(txn, k)
        for k, entries in self.dirty.items():
            if entries is not None:
                frame = encode_page(k, entries, level)
                self.table.put(txn, k, frame)
                self._cache.put(frames.header(frame, frames.NAMES, frame_key(k)).hash, entries)
        self.dirty = {}

    def rewrite_all(self, txn, level: int, fit: int) -> int:
        """The names cut into pages anew at level (the compactor), as many a page as fit
        in `fit` bytes (what a value may take in one LMDB overflow page; at most
        NAME_PAGE_ENTRIES): a page is stored in whole pages of the file, and the pages
        splits leave (api-log: five of 2.5-3.7 KB, a 4 KiB page each) made the table a
        third larger than its names. Returns pages written."""
        stored = list(self.pages(txn))
        entries = [e for k, v in stored for e in self._load(k, v)]
        for k, _ in stored:
            self.table.delete(txn, k)
        n = start = 0
        while start < len(entries):
            m, frame = self._fitting(entries, start, level, fit)
            k = page_key(entries[start][0])
            self.table.put(txn, k, frame)
            self._cache.put(frames.header(frame, frames.NAMES, frame_key(k)).hash, entries[start:start + m])
            start += m
            n += 1
        return n

    @staticmethod
    def _fitting(entries: list, start: int, level: int, fit: int) -> tuple[int, bytes]:
        """(m, frame): the most entries from start, up to NAME_PAGE_ENTRIES, whose page is
        at most fit bytes (at least one), cut where the next page's key differs."""
        k = page_key(entries[start][0])

        def cut_ok(m):
            return start + m >= len(entries) or \
                page_key(entries[start + m][0]) != page_key(entries[start + m - 1][0])

        def page(m):
            while not cut_ok(m):
                m += 1
            return m, encode_page(k, entries[start:start + m], level)

        lo, hi = 1, min(limits.NAME_PAGE_ENTRIES, len(entries) - start)
        best = page(lo)
        if len(best[1]) > fit:
            return best
        while lo < hi:                  # the largest count that fits
            mid = (lo + hi + 1) // 2
            got = page(mid)
            if len(got[1]) <= fit:
                lo, best = mid, got
            else:
                hi = mid - 1
        return best

    def pages(self, txn) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self.table.cursor(txn):
            yield bytes(k), bytes(v)
