"""The content stream: every stored byte has a position in one append-only stream, cut
into blocks of `block_size` positions (16 MiB by default). A file's record lists the
stream ranges it is made of (its extents); its own new bytes are appended to the
stream in order, so they compress next to each other and next to the files stored
before and after it.

Stored form (table `blocks`), one value per *fragment*:

    key   = u64be(block_id << 16 | fragment)
    value = frame(tag BLOCK, key, extra = live ranges + piece hashes, payload)

A fragment holds the live bytes of some ranges of its block (block-relative
`(start, length)`, sorted, disjoint), concatenated. A block written whole is one
fragment (0). Bytes appended by a small ingest (a file dropped into inbox/) go into a new
fragment of the open block, so an ingest compresses only what it adds; the compactor
later merges a block's fragments into one frame at a high level. Dropping dead bytes
rewrites a fragment with fewer ranges; positions never move, so no record is ever
rewritten for it.

Reads decode a fragment only as far as needed (frames.PartialDecoder), each 256 KiB
piece checked against its own hash before it is handed out.
"""
from __future__ import annotations

import logging
import struct
import threading
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from .. import limits
from ..errors import Corrupt
from ..packing import get_uvarint, put_uvarint
from . import frames

log = logging.getLogger(__name__)

_KEY = struct.Struct(">Q")


def frag_key(block_id: int, frag: int) -> int:
    return (block_id << 16) | frag


def key_bytes(k: int) -> bytes:
    return _KEY.pack(k)


def piece_step(codec: int) -> int:
    """The piece a fragment's piece hashes each cover: of its stored payload when it is
    checked as stored, else of its decoded payload."""
    return limits.STORED_PIECE_STEP if codec == frames.ZSTD_STORED_CHECK else limits.PIECE_HASH_STEP


def final(hd: frames.Header, level: int, stored_check: bool) -> bool:
    """Whether a fragment's frame is as compaction leaves it (given it is its block's only
    fragment and holds only live bytes): raw, or zstd at `level` or above, checked as
    stored where the store writes so (format 6)."""
    return hd.codec == frames.RAW or (
        hd.level >= level and (hd.codec == frames.ZSTD_STORED_CHECK or not stored_check))


def encode_extra(ranges: list[tuple[int, int]], payload, step: int = limits.PIECE_HASH_STEP) -> bytes:
    out = bytearray()
    put_uvarint(out, len(ranges))
    prev = 0
    for start, length in ranges:
        put_uvarint(out, start - prev)
        put_uvarint(out, length)
        prev = start + length
    out += frames.chunk_hashes(payload, step)
    return bytes(out)


def decode_extra(extra: bytes, raw_len: int, key: int) -> tuple[list[tuple[int, int]], bytes]:
    try:
        n, pos = get_uvarint(extra, 0)
        ranges, prev, total = [], 0, 0
        for _ in range(n):
            gap, pos = get_uvarint(extra, pos)
            length, pos = get_uvarint(extra, pos)
            ranges.append((prev + gap, length))
            prev += gap + length
            total += length
    except ValueError as e:
        raise Corrupt(f"block fragment {key >> 16}.{key & 0xFFFF} is damaged: {e}") from None
    if total != raw_len:
        raise Corrupt(f"block fragment {key >> 16}.{key & 0xFFFF} is damaged (ranges)")
    return ranges, extra[pos:]


def encode_fragment(key: int, ranges: list[tuple[int, int]], raw, level: int,
                    stored_check: bool = True) -> bytes:
    """A BLOCK frame; stored_check (format 6): a zstd payload checked as stored
    (frames.ZSTD_STORED_CHECK), its piece hashes over the stored bytes."""
    if not stored_check:
        return frames.encode(frames.BLOCK, key, bytes(raw), level, encode_extra(ranges, raw))
    return frames.encode(frames.BLOCK, key, bytes(raw), level,
                         extra_of=lambda payload, codec: encode_extra(ranges, payload, piece_step(codec)))


@dataclass
class Fragment:
    key: int
    ranges: list            # block-relative (start, length)
    starts: list            # range starts, for bisect
    offsets: list           # payload offset of each range
    hd: frames.Header
    pieces: bytes           # the piece hashes (of piece_step(hd.codec) bytes each)

    @property
    def first(self) -> int:
        return self.ranges[0][0] if self.ranges else 0

    @property
    def end(self) -> int:
        return self.ranges[-1][0] + self.ranges[-1][1] if self.ranges else 0

    def locate(self, off: int) -> Optional[tuple[int, int]]:
        """(payload offset, bytes live from there) of block offset off, or None (a hole)."""
        i = bisect_right(self.starts, off) - 1
        if i < 0:
            return None
        start, length = self.ranges[i]
        if off >= start + length:
            return None
        return self.offsets[i] + off - start, start + length - off


def parse_fragment(frame, key: int) -> Fragment:
    hd = frames.header(frame, frames.BLOCK, key)
    ranges, pieces = decode_extra(hd.extra, hd.raw_len, key)
    offsets, acc = [], 0
    for _, length in ranges:
        offsets.append(acc)
        acc += length
    return Fragment(key, ranges, [r[0] for r in ranges], offsets, hd, pieces)


def new_decoder(frag: Fragment, frame) -> frames.PartialDecoder:
    """A decoder of a fragment's payload (frame: the fragment's value, held by it)."""
    return frames.PartialDecoder(frame, frag.hd, frag.pieces, piece_step(frag.hd.codec))


def _block_key(k) -> int:
    try:
        return _KEY.unpack(k)[0]
    except struct.error:
        raise Corrupt("a block key is damaged") from None


def fragments(txn, table, block_id: int) -> list[tuple[Fragment, memoryview]]:
    """Every fragment of a block, in key order, with its frame."""
    out = []
    cur = table.cursor(txn)
    if cur.set_range(key_bytes(frag_key(block_id, 0))):
        for k, v in cur:
            key = _block_key(k)
            if key >> 16 != block_id:
                break
            out.append((parse_fragment(v, key), v))
    return out


def _frag_at(cur, block_id: int, no: int) -> Optional[tuple[Fragment, memoryview]]:
    """The first fragment of block_id numbered no or more, with its frame (None: none)."""
    if not cur.set_range(key_bytes(frag_key(block_id, no))):
        return None
    key = _block_key(cur.key())
    if key >> 16 != block_id:
        return None
    frame = cur.value()
    return parse_fragment(frame, key), frame


def find_fragment(txn, table, block_id: int, off: int) -> Optional[tuple[Fragment, memoryview]]:
    """The fragment of block_id whose span holds block offset off (None: none does).

    A block's fragments hold ascending, disjoint ranges in key order (bytes are appended
    in stream order, and merges and drops keep positions), so past the first fragment (a
    compacted block has only that one) a binary search over fragment numbers finds it
    with ~16 parses instead of one per fragment: the open block of a mount that takes
    inbox files has thousands (a read parsing them all took 40 ms at 3,000)."""
    cur = table.cursor(txn)
    got = _frag_at(cur, block_id, 0)
    if got is None or off < got[0].end:
        return got if got is not None and got[0].first <= off else None
    lo, hi = (got[0].key & 0xFFFF) + 1, 1 << 16
    while lo < hi:
        mid = (lo + hi) // 2
        g = _frag_at(cur, block_id, mid)
        if g is None or g[0].first > off:
            hi = mid
        else:
            got, lo = g, (g[0].key & 0xFFFF) + 1
    return got if got[0].first <= off < got[0].end else None


def last_fragment_key(txn, table, block_id: int) -> Optional[int]:
    """The key of block_id's last fragment (None: it has none)."""
    cur = table.cursor(txn)
    ok = cur.prev() if cur.set_range(key_bytes(frag_key(block_id + 1, 0))) else cur.last()
    if not ok:
        return None
    key = _block_key(cur.key())
    return key if key >> 16 == block_id else None


class DecodedCache:
    """Decoded (or partly decoded) fragments by (key, content hash), LRU, bounded in
    bytes of decoded content; the one in use is kept even when larger than the bound.

    The bound starts at `floor` (one block) and rises to `limit` (two blocks at least)
    once reads go back to blocks it dropped: files whose repeats were stored once in an
    earlier block read from two blocks by turns, and one block held would decode both
    again and again; reads front to back (cat, grep -r of chat files) need only the
    block they are in, and the second block was a third of the daemon's memory (all
    ShareGPT files: 37.5 of ~100 MiB)."""

    REDECODES = 2           # blocks decoded again right after they were dropped: then `limit`
    TURN_READS = 16         # "right after": within this many reads (get) of the cache
    _RECENT = 8             # dropped keys remembered

    def __init__(self, limit: int, floor: Optional[int] = None):
        self.limit = limit
        self.floor = limit if floor is None else min(floor, limit)
        self.cap = self.floor
        self._d: OrderedDict = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._dropped: OrderedDict = OrderedDict()     # key: self._reads when dropped
        self._redecodes = 0
        self._reads = 0

    def empty(self) -> bool:
        return not self._d

    def get(self, k):
        with self._lock:
            self._reads += 1
            v = self._d.get(k)
            if v is not None:
                self._d.move_to_end(k)
            return v

    def put(self, k, dec: frames.PartialDecoder) -> None:
        with self._lock:
            if k not in self._d:
                self._d[k] = dec
                # a block decoded again within a few reads of being dropped: reads by
                # turns. One dropped a block's worth of reads ago is decoded again by a
                # reader going through every block once more (a second cat of
                # everything, once the kernel let its pages go), for which one block
                # held suffices.
                at = self._dropped.pop(k, None)
                if at is not None and self._reads - at <= self.TURN_READS and self.cap < self.limit:
                    self._redecodes += 1
                    if self._redecodes >= self.REDECODES:
                        self.cap = self.limit
            self._trim()

    def fits(self, raw_len: int) -> bool:
        """Whether a fragment decoding to raw_len bytes fits, decoded, beside what the
        cache holds once that is decoded too, within its bound now. (A fragment being
        decoded holds its compressed frame as well, until it is done: the decode-ahead
        thread decodes one at a time, so the next one begins when the last one let its
        frame go.)"""
        with self._lock:
            held = sum(d.hd.raw_len + limits.DECODED_ENTRY_COST for d in self._d.values())
            return held + raw_len + limits.DECODED_ENTRY_COST <= self.cap

    def grew(self) -> None:
        with self._lock:
            self._trim()

    def reserve(self, k, dec: frames.PartialDecoder, end: int) -> None:
        """Make room for dec to decode up to end, before it does: the others are trimmed
        to the limit less what dec will hold then. Trimmed only after the growth, a read
        that starts a block held the full cache and the new block at once (a cold cat of
        all ShareGPT files: 40 MiB of cached blocks plus 16-20 MiB for the next, at each
        block)."""
        growth = self._growth(dec, end)
        if not growth:                  # a read within what is decoded (most): grew() trims
            return
        with self._lock:
            if self._d.get(k) is not dec:
                return
            self._d.move_to_end(k)
            self._trim(reserve=self._cost(dec) + growth)

    @staticmethod
    def _growth(d: frames.PartialDecoder, end: int) -> int:
        """What need(end) adds to d's cost, at most (see PartialDecoder.need)."""
        raw_len = d.hd.raw_len
        if d.done:
            return 0
        if d.decodes_whole(end):                # also when another read decoded past end
            return raw_len                      # along the stream: decoded whole anew
        if end <= len(d.buf):
            return 0
        return 2 * (min(end + limits.PARTIAL_DECODE_STEP, raw_len) - len(d.buf))   # bytes and window

    @staticmethod
    def _cost(d: frames.PartialDecoder) -> int:
        """Memory a cached fragment holds: what it decoded, the decoder object itself,
        and while it is not decoded to its end, its compressed frame and the stream
        decoder's window (as large as the payload, at most)."""
        return len(d.buf) + limits.DECODED_ENTRY_COST + len(d._frame or b"") + d.stream_state()

    def _trim(self, reserve: int = 0) -> None:
        """Drop least recently used fragments until within the limit (less reserve, the
        growth the last one is about to make): decoded ones first (dropping one partly
        decoded loses its progress: a reader going on through it would start again from
        its beginning), never the one used last."""
        size = sum(self._cost(d) for d in self._d.values())
        last = next(reversed(self._d), None)
        if last is not None and reserve:
            size += reserve - self._cost(self._d[last])
        for done_first in (True, False):
            for k in list(self._d)[:-1]:
                if size <= self.cap:
                    break
                d = self._d[k]
                if d.done or not done_first:
                    del self._d[k]
                    size -= self._cost(d)
                    self._dropped[k] = self._reads
                    while len(self._dropped) > self._RECENT:
                        self._dropped.popitem(last=False)
        self._size = size

    def clear(self) -> None:
        """Drop everything; the bound starts again from the floor (the next reads may
        not go back and forth between blocks)."""
        with self._lock:
            self._d.clear()
            self._size = 0
            self._dropped.clear()
            self._redecodes, self.cap = 0, self.floor


class NotReady(Exception):
    """StreamReader.read(ready=True): the bytes are not decoded and checked yet."""


class Unmatched(Corrupt):
    """StreamReader.read(whole=True): a fragment read from does not match its frame hash
    while every piece of its payload does (frames.PartialDecoder.unmatched): its ranges
    are not vouched for, so no part of a file may be taken from it; the whole file,
    checked against its own checksum, may (FileReader)."""


def _unmatched(frag: Fragment) -> str:
    return (f"block fragment {frag.key >> 16}.{frag.key & 0xFFFF} is damaged (its content "
            "does not match its hash)")


class StreamReader:
    """Reads committed stream ranges inside a transaction."""

    def __init__(self, table, block_size: int, cache: DecodedCache, copied=None):
        """copied(): called inside the transaction once a large frame was copied out of
        the map (Store: give its pages back at once, not at the next drop_mapped)."""
        self.table = table
        self.block_size = block_size
        self.cache = cache
        self.copied = copied
        # the mount's (Store.decode_blocks_ahead): a read of a part of a file that starts
        # a block checked as stored has the rest of it decoded in steps on the
        # decode-ahead thread
        self.ahead_on_read = False

    def read(self, txn, pos: int, n: int, found: Optional[dict] = None, ready: bool = False,
             whole: bool = False, partly: Optional[list] = None) -> bytes:
        """found: {block id: (fragment, frame)} of this transaction, kept across calls
        (many files read in one transaction: their fragment is looked up and parsed
        once, not once a file). ready: only from what the cache holds decoded and
        checked, else NotReady (nothing is decoded, no lock waited for). whole: each
        fragment read from is matched against its frame hash first (its ranges are
        vouched for by nothing else): one checked as stored is from the start, one
        checked decoded is decoded whole for it. partly: a list, given an item for each
        read from a fragment not matched against its frame hash (its ranges not checked:
        the caller checks what it read another way, a file's checksum)."""
        out = None
        while n > 0:
            bid, off = divmod(pos, self.block_size)
            take = min(n, self.block_size - off)
            got = self._read_block(txn, bid, off, take, found, ready, whole, partly)
            if out is None:
                if len(got) == n:           # most reads: one fragment, no second copy
                    return got
                out = bytearray()
            out += got
            pos += len(got)
            n -= len(got)
        return bytes(out) if out is not None else b""

    def _read_block(self, txn, bid: int, off: int, n: int, found: Optional[dict] = None,
                    ready: bool = False, whole: bool = False, partly: Optional[list] = None) -> bytes:
        got = found.get(bid) if found is not None else None
        loc = got[0].locate(off) if got is not None else None
        if loc is None:
            got = find_fragment(txn, self.table, bid, off)
            loc = got[0].locate(off) if got is not None else None
            if loc is not None and found is not None:
                found[bid] = got
        if loc is not None:
            frag, frame = got
            p, live = loc
            take = min(n, live)
            if ready:
                return self._ready(frag, p, take, whole, partly)
            dec = self.decoder(frag, frame)
            if self.ahead_on_read and whole and dec.ahead is None and dec.may_step():
                # a part of a file (the mount's READs of a large one): the kernel's
                # read-ahead goes on through the block, and its next READs find their
                # bytes decoded or wait only for the step that reaches them. Not a
                # whole small file: its reader may go to another block next, and would
                # wait for this one's decode to end first (one decode-ahead thread)
                if self.decode_ahead({bid: got}, steps_only=True):
                    self._ahead_next(txn, bid)
            # whole: its ranges must be sound; a frame checked as stored is from the start
            end = frag.hd.raw_len if whole and not dec.whole_ok else p + take
            self.cache.reserve((frag.key, frag.hd.hash), dec, end)
            with dec.lock:
                dec.need(end)
                if not dec.whole_ok:
                    if whole:
                        raise Unmatched(_unmatched(frag))
                    if partly is not None:
                        partly.append(frag.key)
                out = bytes(memoryview(dec.buf)[p:p + take])    # one copy, bytes or bytearray
            self.cache.grew()
            return out
        raise Corrupt(f"stream position {bid * self.block_size + off} is not stored "
                      f"(block {bid}: a record points at bytes that are gone)")

    def _ready(self, frag: Fragment, p: int, take: int, whole: bool, partly: Optional[list]) -> bytes:
        dec = None if frag.hd.raw_len < limits.CACHED_FRAGMENT_MIN else self.cache.get((frag.key, frag.hd.hash))
        if dec is None or not dec.lock.acquire(blocking=False):
            raise NotReady()
        try:
            if (whole and not dec.whole_ok) or dec.checked < p + take:
                raise NotReady()
            if partly is not None and not dec.whole_ok:
                partly.append(frag.key)
            if dec.fixed:
                # the reply takes the bytes without a copy (256 KiB a READ of a large
                # file, on the thread that answers requests). Only this path: a view
                # kept (a cache of whole files) would keep the whole block
                return memoryview(dec.buf).toreadonly()[p:p + take]
            return bytes(memoryview(dec.buf)[p:p + take])
        finally:
            dec.lock.release()

    def whole(self, frag: Fragment, frame) -> bytes:
        """A fragment's whole payload, decoded and checked (through the cache)."""
        dec = self.decoder(frag, frame)
        self.cache.reserve((frag.key, frag.hd.hash), dec, frag.hd.raw_len)
        with dec.lock:
            dec.need(frag.hd.raw_len)
            if not dec.whole_ok:        # written anew, it would be vouched for as it is
                raise Corrupt(_unmatched(frag))
            out = bytes(dec.buf)
        self.cache.grew()
        return out

    def ahead_at(self, txn, pos: int) -> None:
        """decode_ahead of the fragment holding stream position pos, when the cache holds
        no fragment at all (a reader's first block: Store.prefetch)."""
        if not self.cache.empty():
            return
        bid, off = divmod(pos, self.block_size)
        if self._ahead_fragment(txn, bid, off):
            self._ahead_next(txn, bid)

    def _ahead_fragment(self, txn, bid: int, off: int, steps_only: bool = False,
                        room: bool = False) -> bool:
        """decode_ahead of the fragment holding block bid's offset off, if it is one the
        cache keeps; room: only if not cached yet and it fits beside what the cache
        holds (DecodedCache.fits). Whether it was handed to the thread."""
        got = find_fragment(txn, self.table, bid, off)
        if got is None or got[0].hd.raw_len < limits.CACHED_FRAGMENT_MIN:
            return False
        frag, frame = got
        if room and (self.cache.get((frag.key, frag.hd.hash)) is not None
                     or not self.cache.fits(frag.hd.raw_len)):
            return False
        self.decoder(frag, frame)
        return self.decode_ahead({bid: got}, steps_only) > 0

    def _ahead_next(self, txn, bid: int) -> None:
        """Once a reader's block is decoded ahead: the next block's first fragment too,
        after it on the same thread, if the cache holds it beside what it holds without
        dropping anything (its floor is 1.25 blocks: a store's last, partly filled block
        after a full one). A reader going on past the end of the block (a large file
        that continues in the next, `cat` of the last files) then finds it decoded; on
        the mixed corpus its 2 MB tail block cost the READs that reached it ~8 ms."""
        self._ahead_fragment(txn, bid + 1, 0, steps_only=True, room=True)

    def decode_ahead(self, found: dict, steps_only: bool = False) -> int:
        """Decode the rest of each cached fragment in found (read_files' {block id:
        (fragment, frame)}) in a background thread: for a reader going through the
        stream in order (the mount's read-ahead), which would otherwise decode each
        block whole on its own thread when it reaches a quarter of it. zstd and BLAKE2
        run without the GIL, beside the thread that answers requests. Reads of the
        fragment meanwhile wait for the whole (PartialDecoder.need). A fragment checked
        as stored was matched before: what the thread decodes is sound. One checked
        decoded: the reads check the pieces they reach until that thread has checked the
        whole against the frame hash; in a frame that does not match, the pieces say
        which part is damaged. steps_only: only the fragments decoded in steps
        (PartialDecoder.decode_in_steps), whose reads wait only for the step that reaches
        them. Returns how many it handed to the thread."""
        handed = 0
        for frag, _ in found.values():
            ck = (frag.key, frag.hd.hash)
            dec = self.cache.get(ck)
            # not when another thread holds the decoder (it may be decoding it): this
            # runs on the thread that answers requests, and the next batch asks again
            if dec is None or not dec.lock.acquire(blocking=False):
                continue
            try:
                if dec.begin_ahead(steps_only) is None:
                    continue            # decoded, or being decoded ahead already
            finally:
                dec.lock.release()
            try:
                _ahead_pool().submit(_decode_whole, self.cache, ck, dec)
                handed += 1
            except RuntimeError:        # the interpreter is shutting down: no thread
                with dec.lock:
                    ahead = dec.cancel_ahead()
                if ahead is not None:
                    ahead.set()
        return handed

    def decoder(self, frag: Fragment, frame) -> frames.PartialDecoder:
        """The cached decoder of a fragment (a new one, not cached, for a small fragment:
        see limits.CACHED_FRAGMENT_MIN): use it only holding its lock (readers in several
        threads share it)."""
        small = frag.hd.raw_len < limits.CACHED_FRAGMENT_MIN
        ck = (frag.key, frag.hd.hash)
        dec = None if small else self.cache.get(ck)
        if dec is None:
            dec = new_decoder(frag, bytes(frame))
            if not small:
                self.cache.put(ck, dec)
                if self.copied is not None:
                    self.copied()
        return dec


_POOL_LOCK = threading.Lock()
_AHEAD_POOL = None


def _ahead_pool():
    global _AHEAD_POOL
    with _POOL_LOCK:
        if _AHEAD_POOL is None:
            from concurrent.futures import ThreadPoolExecutor
            _AHEAD_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stowfs-decode-ahead")
        return _AHEAD_POOL


def in_background(fn, *args) -> None:
    """fn(*args) on the decode-ahead thread, after what it was given before; nothing
    when the interpreter is shutting down."""
    try:
        _ahead_pool().submit(fn, *args)
    except RuntimeError:
        pass


def _decode_whole(cache: DecodedCache, ck, dec: frames.PartialDecoder) -> None:
    """StreamReader.decode_ahead's work, in its thread: decode dec's frame whole and hand
    it over (the reads waiting for it go on as soon as it is taken). A frame checked
    decoded: the reads check the pieces they reach, and this thread then checks the
    whole against the frame hash, which spares them that. Ends by clearing dec.ahead
    and waking the reads that waited for it, whatever happened."""
    ahead = dec.ahead
    try:
        frame = dec.frame_left()        # none decodes it while ahead is set
        if frame is None or cache.get(ck) is not dec:
            return                      # dropped meanwhile: the next read starts anew
        hd = dec.hd
        cache.reserve(ck, dec, hd.raw_len)
        if dec.decode_in_steps():       # a frame checked as stored: handed out as it goes
            cache.grew()
            return
        raw = frames.payload(frame, hd)
        hashing = threading.Event()
        with dec.lock:
            # to check here: not a frame checked as stored (what it decodes to is sound)
            check = dec.adopt(raw) and hd.codec == frames.ZSTD
            if check:
                dec.hashing = hashing   # a read that needs the whole checked waits for this
            if dec.ahead is ahead:
                dec.ahead = None
        if ahead is not None:
            ahead.set()
        cache.grew()
        try:
            if check and frames.content_hash(hd.tag, hd.key, hd.extra, raw) == hd.hash:
                with dec.lock:
                    dec.whole_checked(raw)
        finally:
            if check:
                with dec.lock:
                    if dec.hashing is hashing:
                        dec.hashing = None
                hashing.set()
    except Exception as e:   # the reads of this block meet whatever this met, and say so
        log.debug("decoding %s ahead: %s", ck, e)
    finally:
        with dec.lock:
            if dec.ahead is ahead:
                dec.cancel_ahead()
        if ahead is not None:
            ahead.set()
