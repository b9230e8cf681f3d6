"""The store: one LMDB environment holding every stored file, deduplicated and compressed.

Named databases (all keys and values are bytes):

    meta       b"format" -> format version; b"counters" -> msgpack stats counters;
               b"next_file" / b"next_block" / b"next_dict" -> u64; b"generation" -> u64;
               b"ingest_dict" -> dictionary id used for new blocks
    blocks     u64 block id -> frame (codec.py) whose decoded bytes are a pack of segments
    segments   BLAKE2b-128 of a segment -> uvarints (block, slot, refcount, kind, length),
               and for a segment kept as a delta: uvarints (DELTA, depth) + the base's
               hash. refcount = number of stored files that use the segment + number of
               deltas made against it, so a base lives as long as a delta needs it. A
               segment at refcount 0 stays until gc (ingesting it again revives it).
    near       LSH band key (4 bytes, neardup.py) + first 4 bytes of a segment's hash ->
               b"": where new segments look for a near-duplicate base. Only segments of
               DELTA_MIN bytes or more, and not chat messages (user, assistant: near
               copies are rare there, and 18 bytes a band entry would cost more than
               deltas save); derived data (gc drops entries of deleted segments)
    manifests  u64 file id -> msgpack header: name, size, SHA-256, format, metadata, view
               sizes, and "pl", the hashes of the segments (kind "pieces", 1 MiB each at most)
               whose bytes, joined, hold the piece lists
               of the original and text views; kept in blocks like any segment, so the long
               hash lists of similar files compress against each other.
               compact packs the headers into *groups*, as squashfs packs its inode table:
               u64 last file id of the group -> b"\x01" + frame (codec.py) of a msgpack list
               of up to 256 headers of consecutive files, where a file's piece lists, when no
               other file shares them and they are small, sit in its header ("pb") instead
               of in segments (measured after compact, headers + piece lists + segment
               index: api-log 1.21 -> 1.04 MB, chats 10.1 -> 9.4 MB; 256 files a group
               beat 64 by 2%). A file stored later gets its own entry again; a group
               shrinks as its files are removed.
    names      path -> u64 file id
    dicts      u32 dictionary id -> msgpack {kind, bytes, trained_on, created}
    index      b"model\\0<value>\\0" + u64 shard -> bitmap of the file ids shard * 256 ..
               shard * 256 + 255 that have that model (likewise app, day): a few bytes a
               file instead of an entry each (measured on api-log: 160 KB -> 12 KB);
               a store of format 1 (an entry per file: key ending in the u64 file id,
               value b"") still reads, and is converted when it is opened for writing

Every change is one write transaction: a crash leaves the whole old state or the whole
new one. Readers (other threads, other processes) never wait and never see half a put.
"""
from __future__ import annotations

import fcntl
import io
import os
import struct
import threading
import time
from collections import Counter, OrderedDict
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import lmdb

from .. import limits
from .. import neardup
from .codec import (DELTA, Dictionaries, build_pack, decode_delta, decode_frame, encode_delta,
                    encode_frame, frame_dict_id, frame_raw_size, parse_pack, segment_hash)
from ..errors import Busy, Corrupt, Exists, InvalidName, NotFound, StoreFull, StowError
from ..packing import get_uvarint, pack, unpack, encode_uvarints
from .pieces import (KIND_NAMES, PIECES, SKELETON, TOKENS, VIEW, PieceList, render,
                     unpack_views)
from .planner import Plan, describe, plan_bytes, plan_path, plan_paths, split_views, unparsed

FORMAT_VERSION = 2                      # 2: the index holds bitmaps (format 1: an entry a file)
VIEWS = ("original", "text")
_U64 = struct.Struct(">Q")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GROUP = b"\x01"                        # first byte of a manifest group (no msgpack map starts so)
_NEAR_PREFIX = 4                        # bytes of a segment hash an LSH entry keeps


def _u64(n: int) -> bytes:
    return _U64.pack(n)


def _times(mtime, mtime_ns, mode) -> tuple[float, dict]:
    """put's mtime as a float, and the record keys for an exact mtime_ns and a mode."""
    if mtime_ns is None:
        return (time.time() if mtime is None else float(mtime)), ({} if mode is None else {"mo": mode & 0o7777})
    extra = {"mn": int(mtime_ns)} if mode is None else {"mn": int(mtime_ns), "mo": mode & 0o7777}
    return (mtime_ns / 1e9 if mtime is None else float(mtime)), extra


@dataclass(frozen=True)
class FileInfo:
    name: str
    file_id: int
    size: int
    text_size: int
    format: str
    application: Optional[str]
    model: Optional[str]
    models: tuple
    day: Optional[str]
    mtime: float
    error: Optional[str]
    sha256: str
    messages: int = 0
    conversations: int = 0
    facts: dict = field(default_factory=dict, compare=False)   # stowfs.facts, from the record
    mtime_ns: int = 0       # integer ns (records without one: from mtime)
    mode: int = 0o644       # st_mode permission bits (records without one: 0644)


@dataclass(frozen=True)
class PutResult:
    name: str
    file_id: int
    size: int
    new_bytes: int
    dedup_bytes: int
    format: str
    error: Optional[str]
    replaced: bool


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName("empty name")
    name = name.strip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise InvalidName(f"invalid name: {name!r}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"name is not valid UTF-8: {name!r}") from None
    if len(raw) > limits.MAX_NAME_BYTES or any(len(p.encode("utf-8", "surrogateescape")) > limits.MAX_NAME_COMPONENT for p in parts):
        raise InvalidName(f"name too long: {name[:80]!r}...")
    return name


def _seg_value(block: int, slot: int, refs: int, kind: int, length: int,
               delta: Optional[tuple[int, bytes]] = None) -> bytes:
    """A segment index entry; delta = (depth, base hash) for a segment kept as a delta."""
    v = encode_uvarints((block, slot, refs, kind, length))
    if delta is not None:
        v += encode_uvarints((DELTA, delta[0])) + delta[1]
    return v


def _seg_parse(v) -> tuple[list[int], Optional[tuple[int, bytes]]]:
    out, pos = [], 0
    for _ in range(5):
        n, pos = get_uvarint(v, pos)
        out.append(n)
    if pos == len(v):
        return out, None
    tag, pos = get_uvarint(v, pos)
    depth, pos = get_uvarint(v, pos)
    if tag != DELTA or len(v) - pos != 16:
        raise Corrupt(f"unknown segment encoding {tag}")
    return out, (depth, bytes(v[pos:]))


def _seg_fields(v) -> list[int]:
    """(block, slot, refcount, kind, length) of a segment index entry."""
    return _seg_parse(v)[0]


def _seg_delta(v) -> Optional[tuple[int, bytes]]:
    """(depth, base hash) when the segment is kept as a delta, else None."""
    return _seg_parse(v)[1]


def _seg_with(v, *, refs: Optional[int] = None, block: Optional[int] = None,
              slot: Optional[int] = None) -> bytes:
    """The same entry with its refcount or place changed, its encoding kept."""
    (b, sl, r, kind, length), delta = _seg_parse(v)
    return _seg_value(b if block is None else block, sl if slot is None else slot,
                      r if refs is None else refs, kind, length, delta)


def _empty_counters() -> dict:
    k = len(KIND_NAMES)
    return {"files": 0, "naive": 0, "conversations": 0, "messages": 0, "parse_errors": 0,
            "occ": [0] * k, "occ_bytes": [0] * k, "uniq": [0] * k, "uniq_bytes": [0] * k,
            "blocks": 0, "block_bytes": 0, "block_raw": 0,
            "deltas": 0, "delta_raw": 0, "delta_bytes": 0, "substring_blocks": 0}


class _Recent:
    """A small bounded map, oldest entry dropped first (no recency update on get)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        return self._d.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            if len(self._d) > self.limit:
                self._d.popitem(last=False)


class _BlockCache:
    """Decoded blocks, least recently used dropped first, bounded in bytes (or by the one
    block last decoded, when that alone is larger than the limit)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._d: OrderedDict[int, tuple[bytes, list[int]]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        n = len(value[0])
        if n > self.limit:
            # a block larger than the whole cache is still kept, alone: else a small cache
            # decodes the same 4 MiB block again for every file in it (--cache-mb 3: a cold
            # cat of the chats mount ran for over 10 minutes instead of 3 s). Memory stays
            # bounded: the limit, or one block (MAX_BLOCK_RAW) when that is larger.
            with self._lock:
                self._d.clear()
                self._d[key] = value
                self._size = n
            return
        with self._lock:
            if key in self._d:
                return
            self._d[key] = value
            self._size += n
            while self._size > self.limit:
                _, old = self._d.popitem(last=False)
                self._size -= len(old[0])

    def reserve(self, n: int) -> None:
        """Drop what put() of n bytes would drop, before they are decoded: the same
        blocks stay, but a full cache and the block being decoded are not held at once."""
        with self._lock:
            while self._d and self._size + n > self.limit:
                _, old = self._d.popitem(last=False)
                self._size -= len(old[0])

    def drop(self, key) -> None:
        with self._lock:
            v = self._d.pop(key, None)
            if v is not None:
                self._size -= len(v[0])


class _Packer:
    """New segments on their way into blocks.

    A private packer (one put) writes each block as soon as it is full, in the put's own
    transaction. A shared packer (the small files of one put_many batch, each in its own
    child transaction) only collects: blocks are written in the parent transaction
    between two files and at the end, so a file that fails and rolls back takes exactly
    its own segments out (restore) and a block never holds a rolled-back file's bytes.
    Sharing matters for many small files: one block per file costs a page or more each
    and compresses poorly (measured in the README's store paragraph)."""

    def __init__(self, store: "Store", shared: bool):
        self.s = store
        self.shared = shared
        self.full: list[tuple[int, list[bytes]]] = []   # shared: full blocks not written yet
        self.segs: list[bytes] = []
        self.raw = 0
        self.block_id: Optional[int] = None
        self.pending: dict[bytes, bytes] = {}           # decoded bytes of unwritten segments
        self._order: list[bytes] = []

    def add(self, txn, c: dict, h: bytes, data: bytes, stored: bytes) -> tuple[int, int]:
        """Place a segment (stored = its bytes as kept: itself or a delta); returns
        (block id, slot). txn is the transaction the caller writes the index entry in."""
        if self.block_id is None:
            self.block_id = self.s._next(txn, b"next_block")
        place = (self.block_id, len(self.segs))
        self.segs.append(stored)
        self.raw += len(stored)
        self.pending[h] = data
        self._order.append(h)
        if self.raw >= limits.BLOCK_TARGET:
            if self.shared:
                self.full.append((self.block_id, self.segs))
            else:
                self._write(txn, c, self.block_id, self.segs)
                self.pending, self._order = {}, []
            self.segs, self.raw, self.block_id = [], 0, None
        return place

    def mark(self):
        return (len(self.full), list(self.segs), self.raw, self.block_id, len(self._order))

    def restore(self, m) -> None:
        nfull, segs, raw, block_id, norder = m
        del self.full[nfull:]
        self.segs, self.raw, self.block_id = segs, raw, block_id
        for h in self._order[norder:]:
            self.pending.pop(h, None)
        del self._order[norder:]

    def _write(self, txn, c: dict, block_id: int, segs: list[bytes]) -> None:
        self.s._write_block(txn, block_id, segs, c, limits.LEVEL_INGEST_V2, self.s._block_dicts(txn))

    def flush(self, txn, c: Optional[dict] = None, everything: bool = True) -> None:
        """Write the full blocks (and, with everything, the open one) in txn."""
        own = c is None
        if own and (self.full or (everything and self.segs)):
            c = self.s._counters(txn)
        for block_id, segs in self.full:
            self._write(txn, c, block_id, segs)
        self.full = []
        if everything and self.segs:
            self._write(txn, c, self.block_id, self.segs)
            self.segs, self.raw, self.block_id = [], 0, None
        if everything:
            self.pending, self._order = {}, []
        if own and c is not None:
            self.s._save_counters(txn, c)


class _Ingest:
    """One put's view of the write transaction: dedups segments, packs new ones."""

    def __init__(self, store: "Store", txn, packer: Optional[_Packer] = None):
        self.s = store
        self.txn = txn
        self.seen: set[bytes] = set()
        self.occ = Counter()
        self.occ_bytes = Counter()
        self.new_bytes = 0
        self.dedup_bytes = 0
        self.packer = packer if packer is not None else _Packer(store, shared=False)
        self.c = store._counters(txn)

    def store_segment(self, data: bytes, kind: int) -> bytes:
        h = segment_hash(data)
        self.occ[kind] += 1
        self.occ_bytes[kind] += len(data)
        self.add(h, data, kind)
        return h

    def _ref(self, h: bytes, v: bytes) -> None:
        (block, slot, refs, k, ln), _ = _seg_parse(v)
        if refs == 0:
            self.c["uniq"][k] += 1
            self.c["uniq_bytes"][k] += ln
        self.txn.put(h, _seg_with(v, refs=refs + 1), db=self.s._segs)

    def add(self, h: bytes, data: bytes, kind: int, sig: Optional[bytes] = None) -> None:
        """Reference segment h (= segment_hash(data)) once more for this file. sig is its
        MinHash signature when the planner computed it."""
        if h in self.seen:
            self.dedup_bytes += len(data)
            return
        self.seen.add(h)
        txn, segs = self.txn, self.s._segs
        v = txn.get(h, db=segs)
        if v is not None:
            self._ref(h, v)
            self.dedup_bytes += len(data)
            return
        near = self.s.near_threshold > 0 and neardup.delta_candidate(kind, len(data))
        if near and sig is None:
            sig = neardup.signature(data)
        delta = self._delta(data, sig) if near else None
        stored = data if delta is None else delta[0]
        block, slot = self.packer.add(txn, self.c, h, data, stored)
        if delta is not None:
            _stored, base, depth = delta
            self._ref(base, txn.get(base, db=segs))
            txn.put(h, _seg_value(block, slot, 1, kind, len(data), (depth, base)), db=segs)
            self.c["deltas"] += 1
            self.c["delta_raw"] += len(data)
            self.c["delta_bytes"] += len(stored)
        else:
            txn.put(h, _seg_value(block, slot, 1, kind, len(data)), db=segs)
        if near:
            self._index_near(h, sig)
        self.new_bytes += len(data)
        self.c["uniq"][kind] += 1
        self.c["uniq_bytes"][kind] += len(data)

    def _bucket(self, bk: bytes) -> list[bytes]:
        """The hash prefixes in one LSH bucket (at most LSH_BUCKET: see _index_near)."""
        out, nb = [], neardup.BAND_KEY_BYTES
        cur = self.txn.cursor(db=self.s._near)
        ok = cur.set_range(bk)
        while ok and len(out) < limits.LSH_BUCKET and cur.key()[:nb] == bk:
            out.append(cur.key()[nb:])
            ok = cur.next()
        return out

    def _index_near(self, h: bytes, sig: bytes) -> None:
        """Add h to its LSH buckets. A bucket that already holds LSH_BUCKET segments is
        left as it is: they stand for that group of near-copies well enough, and it keeps
        both the index and each lookup bounded (a log of 100,000 near-identical lines
        would otherwise make every lookup read them all)."""
        for bk in neardup.band_keys(sig):
            if len(self._bucket(bk)) < limits.LSH_BUCKET:
                self.txn.put(bk + h[:_NEAR_PREFIX], b"", db=self.s._near)
        self.s._sigs.put(h, sig)

    def _delta(self, data: bytes, sig: bytes) -> Optional[tuple[bytes, bytes, int]]:
        """(payload, base hash, depth) when a stored near-duplicate makes data much
        smaller as a delta than as a plain frame, else None. Candidates come from the
        LSH entries, most shared bands first; each one tried costs a delta encode, so at
        most DELTA_CANDIDATES are, and the first good one wins."""
        txn, s = self.txn, self.s
        votes: Counter = Counter()
        for bk in neardup.band_keys(sig):
            for prefix in self._bucket(bk):
                votes[prefix] += 1
        if not votes:
            return None
        plain = None
        tried = 0
        seg_cur = txn.cursor(db=s._segs)
        for prefix, _ in votes.most_common(8 * limits.DELTA_CANDIDATES):
            if tried >= limits.DELTA_CANDIDATES:
                break
            if not (seg_cur.set_range(prefix) and seg_cur.key()[:len(prefix)] == prefix):
                continue                       # deleted by gc since (stale LSH entry)
            base_h, v = bytes(seg_cur.key()), seg_cur.value()
            d = _seg_delta(v)
            if d is not None and d[0] >= limits.DELTA_MAX_DEPTH:
                continue
            base = self.packer.pending.get(base_h)
            if base is None:
                base = s._segment(txn, base_h)
            base_sig = s._sigs.get(base_h)
            if base_sig is None:
                base_sig = neardup.signature(base)
            if neardup.similarity(sig, base_sig) < s.near_threshold:
                continue
            tried += 1
            payload = encode_delta(data, base)
            if plain is None:
                plain = len(s._dicts.compressor(limits.LEVEL_INGEST_V2, None).compress(data))
            if len(payload) <= limits.DELTA_KEEP * plain:
                return payload, base_h, (0 if d is None else d[0]) + 1
        return None

    def flush(self) -> None:
        """Write what this put's private packer still holds (a shared packer is flushed
        by put_many, between files)."""
        if not self.packer.shared:
            self.packer.flush(self.txn, self.c)


class SegmentProbe:
    """Which segments a store does not hold yet, asked from a planning worker process:
    its own read-only view of the environment (opened in the worker: an environment
    must not cross a fork), one short read transaction per group of files."""
    _open: dict = {}

    def __init__(self, path: str):
        self.env = lmdb.open(str(Path(path) / "lmdb"), readonly=True, lock=True, max_dbs=16,
                             readahead=False, max_readers=256)
        self.db = self.env.open_db(b"segments", create=False)
        self._txn = None

    @classmethod
    def shared(cls, path: str) -> "SegmentProbe":
        probe = cls._open.get(path)
        if probe is None:
            probe = cls._open[path] = cls(path)
        return probe

    def begin(self):
        try:
            self._txn = self.env.begin(db=self.db)
        except lmdb.MapResizedError:            # the writer grew the map: adopt its size
            self.env.set_mapsize(0)
            self._txn = self.env.begin(db=self.db)
        txn = self._txn
        return lambda h: txn.get(h) is None

    def end(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


def _planned(items, workers: int, signatures):
    """(name, src, mtime, size, Plan | None | error) for each item, in order. Plans are
    made in worker processes (spawned: an LMDB environment must not cross a fork) with a
    bounded number of files and bytes in flight, or here when workers == 0."""
    from collections import deque
    bytes_max = 64 << 20

    def prepared():
        for name, src, mtime in items:
            try:
                name = check_name(name)
                size = os.path.getsize(src)
            except StowError as e:
                yield name, src, mtime, 0, e
                continue
            except OSError as e:
                yield name, src, mtime, 0, StowError(f"cannot read {src}: {e.strerror}")
                continue
            yield name, src, time.time() if mtime is None else float(mtime), size, None

    if workers <= 0:
        for name, src, mtime, size, err in prepared():
            if err is None:
                try:
                    err = plan_path(name, src, mtime, bool(signatures))
                except OSError as e:
                    err = StowError(f"cannot read {src}: {e.strerror}")
            yield name, src, mtime, size, err
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    group_files, group_bytes = 32, 4 << 20
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        window: deque = deque()       # (rows of one group, future of their plans or None)
        inflight = 0
        group: list = []

        def plannable(row) -> bool:
            return row[4] is None and row[3] <= limits.MAX_PARSE_BYTES

        def submit():
            nonlocal group
            todo = [(r[0], r[1], r[2]) for r in group if plannable(r)]
            window.append((group, pool.submit(plan_paths, todo, signatures) if todo else None))
            group = []

        def settle():
            nonlocal inflight
            rows, fut = window.popleft()
            plans = iter(fut.result() if fut is not None else ())
            for row in rows:
                inflight -= row[3]
                yield row[:4] + ((next(plans) if plannable(row) else row[4]),)

        for row in prepared():
            group.append(row)
            inflight += row[3]
            if len(group) >= group_files or sum(r[3] for r in group) >= group_bytes:
                submit()
            while window and (len(window) > 2 * workers or inflight >= bytes_max):
                yield from settle()
        if group:
            submit()
        while window:
            yield from settle()


class Store:
    def __init__(self, path, *, readonly: bool = False, create: bool = True,
                 cache_bytes: int = limits.BLOCK_CACHE_BYTES,
                 near_threshold: float = limits.NEAR_THRESHOLD):
        """near_threshold: estimated Jaccard similarity at which a stored segment is
        tried as the base of a delta for a new one (0 turns near-dedup off)."""
        if not 0.0 <= near_threshold <= 1.0:
            raise StowError("near-duplicate threshold must be between 0 and 1")
        self.path = Path(path)
        self.readonly = readonly
        self.near_threshold = near_threshold
        if not self.path.is_dir():
            if readonly or not create:
                raise NotFound(f"no store at {self.path}")
            try:
                self.path.mkdir(parents=True, mode=0o700)     # a store is its owner's alone
            except OSError as e:
                raise StowError(f"cannot create store at {self.path}: {e.strerror}") from None
        envdir = self.path / "lmdb"
        if readonly and not envdir.is_dir():
            raise NotFound(f"no store at {self.path}")
        self._lockf = self._take_lock(fcntl.LOCK_SH, "is being compacted by another process")
        envdir.mkdir(mode=0o700, exist_ok=True)
        try:
            cur = (envdir / "data.mdb").stat().st_size
        except FileNotFoundError:
            cur = 0
        map_size = max(limits.MAP_SIZE_INITIAL, -(-2 * cur // limits.MAP_SIZE_STEP) * limits.MAP_SIZE_STEP)
        try:
            self.env = lmdb.open(str(envdir), map_size=map_size, max_dbs=16, readonly=readonly,
                                 readahead=False, meminit=False, max_readers=256, lock=True,
                                 mode=0o600)
        except lmdb.Error as e:
            self._lockf.close()
            raise StowError(f"cannot open store at {self.path}: {e}") from None
        self.env.reader_check()
        self._gate = threading.Condition()
        self._active = 0
        self._growing = False
        self._cache = _BlockCache(cache_bytes)
        self._sigs = _Recent(limits.SIGNATURE_CACHE)   # signatures of recent segments
        self._groups = _Recent(limits.HEADER_GROUP_CACHE)  # decoded manifest groups
        self._tl = threading.local()                    # .packer: put_many's shared packer
        self._dicts = Dictionaries()
        open_db = lambda name, **kw: self.env.open_db(name, create=not readonly, **kw)  # noqa: E731
        try:
            self._meta = open_db(b"meta")
            self._blocks = open_db(b"blocks", integerkey=False)
            self._segs = open_db(b"segments")
            self._mans = open_db(b"manifests")
            self._names = open_db(b"names")
            self._dictdb = open_db(b"dicts")
            self._index = open_db(b"index")
            self._near = self._open_optional(b"near")
        except lmdb.Error as e:
            self.close()
            raise StowError(f"store at {self.path} is not readable: {e}") from None
        if not readonly:
            self._init_format()
        else:
            self._check_format()

    # ----------------------------------------------------------------- derived data
    def aux_read(self, name: str, fn):
        """fn(txn, db) in a read transaction over the named database `aux:<name>`, where
        another module keeps data derived from the stored files (the search index).
        The store never reads it, and it must be rebuildable from the files. Returns
        None, without calling fn, when the database does not exist yet."""
        db = self._aux_db(name, create=False)
        return None if db is None else self._read(lambda txn: fn(txn, db))

    def aux_write(self, name: str, fn):
        """fn(txn, db) in one write transaction over `aux:<name>` (created if missing)."""
        db = self._aux_db(name, create=True)
        return self._write(lambda txn: fn(txn, db))

    def _aux_db(self, name: str, create: bool):
        dbs = self.__dict__.setdefault("_aux", {})
        if name not in dbs:
            try:
                dbs[name] = self.env.open_db(b"aux:" + name.encode(), create=create and not self.readonly)
            except lmdb.NotFoundError:
                return None
        return dbs[name]

    # ----------------------------------------------------------------- plumbing
    def _open_optional(self, name: bytes):
        """A database added after the first stores were made: created when the store is
        writable; None when a read-only open finds an older store without it (only
        writers use these)."""
        if not self.readonly:
            return self.env.open_db(name, create=True)
        try:
            return self.env.open_db(name, create=False)
        except lmdb.NotFoundError:
            return None
    def _take_lock(self, mode: int, what: str):
        f = open(os.open(self.path / "stowfs.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise Busy(f"store {self.path} {what}") from None
        return f

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
        f = getattr(self, "_lockf", None)
        if f is not None:
            f.close()
            self._lockf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _enter(self):
        with self._gate:
            while self._growing:
                self._gate.wait()
            self._active += 1

    def _leave(self):
        with self._gate:
            self._active -= 1
            self._gate.notify_all()

    def _read(self, fn):
        """Run fn(txn) in a short read transaction."""
        self._enter()
        try:
            for _ in range(3):
                try:
                    with self.env.begin(buffers=False) as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    self._adopt_map_size()
        finally:
            self._leave()
        raise StowError("store map keeps being resized by another process")

    def _write(self, fn):
        """Run fn(txn) in one write transaction; grow the map and retry when full."""
        if self.readonly:
            from ..errors import ReadOnly
            raise ReadOnly("store opened read-only")
        for _ in range(64):
            self._enter()
            try:
                with self.env.begin(write=True) as txn:
                    self._tl.writing = True     # (no cached manifest groups, see _group)
                    try:
                        result = fn(txn)
                        self._bump(txn)
                    finally:
                        self._tl.writing = False
                return result
            except lmdb.MapFullError:
                grow = True
            except lmdb.MapResizedError:
                grow = False
            except lmdb.Error as e:
                if "No space left" in str(e) or "ENOSPC" in str(e) or getattr(e, "errno", None) == 28:
                    raise StoreFull(f"disk full: nothing was stored ({self.path})") from None
                raise
            finally:
                self._leave()
            if grow:
                self._grow_map()
            else:
                self._adopt_map_size()
        raise StoreFull("store map cannot grow further")

    def _exclusive(self, fn):
        with self._gate:
            self._growing = True
            while self._active:
                self._gate.wait()
            try:
                fn()
            finally:
                self._growing = False
                self._gate.notify_all()

    def _grow_map(self):
        def grow():
            size = self.env.info()["map_size"] + limits.MAP_SIZE_STEP
            if size > limits.MAP_SIZE_MAX:
                raise StoreFull(f"store reached its size limit ({limits.MAP_SIZE_MAX} bytes)")
            self.env.set_mapsize(size)
        self._exclusive(grow)

    def _adopt_map_size(self):
        self._exclusive(lambda: self.env.set_mapsize(0))

    def _init_format(self):
        def init(txn):
            v = txn.get(b"format", db=self._meta)
            if v is None:
                txn.put(b"format", _u64(FORMAT_VERSION), db=self._meta)
                txn.put(b"created", _u64(int(time.time())), db=self._meta)
            elif _U64.unpack(v)[0] > FORMAT_VERSION:
                raise StowError(f"store format {_U64.unpack(v)[0]} is newer than this stowfs ({FORMAT_VERSION})")
            elif _U64.unpack(v)[0] < 2:
                self._index_to_bitmaps(txn)
                txn.put(b"format", _u64(FORMAT_VERSION), db=self._meta)
        self._write(init)

    def _index_to_bitmaps(self, txn) -> None:
        """Format 1 -> 2: one index entry per file becomes a bitmap per 256 file ids."""
        shards: dict[bytes, bytearray] = {}
        for k, v in list(txn.cursor(db=self._index)):
            k = bytes(k)
            if v:
                continue
            shard, bit = divmod(_U64.unpack(k[-8:])[0], limits.INDEX_SHARD)
            bits = shards.setdefault(k[:-8] + _u64(shard), bytearray(limits.INDEX_SHARD // 8))
            bits[bit >> 3] |= 1 << (bit & 7)
            txn.delete(k, db=self._index)
        for key, bits in shards.items():
            txn.put(key, bytes(bits), db=self._index)

    def _check_format(self):
        v = self._read(lambda txn: txn.get(b"format", db=self._meta))
        if v is None:
            raise NotFound(f"no store at {self.path}")
        if _U64.unpack(v)[0] > FORMAT_VERSION:
            raise StowError(f"store format {_U64.unpack(v)[0]} is newer than this stowfs ({FORMAT_VERSION})")

    def _next(self, txn, key: bytes) -> int:
        v = txn.get(key, db=self._meta)
        n = _U64.unpack(v)[0] if v else 1
        txn.put(key, _u64(n + 1), db=self._meta)
        return n

    def _bump(self, txn):
        v = txn.get(b"generation", db=self._meta)
        txn.put(b"generation", _u64((_U64.unpack(v)[0] if v else 0) + 1), db=self._meta)

    def _counters(self, txn) -> dict:
        v = txn.get(b"counters", db=self._meta)
        c = _empty_counters()
        if v:
            c.update(unpack(v))
        return c

    def _save_counters(self, txn, c: dict) -> None:
        txn.put(b"counters", pack(c), db=self._meta)

    @property
    def generation(self) -> int:
        v = self._read(lambda txn: txn.get(b"generation", db=self._meta))
        return _U64.unpack(v)[0] if v else 0

    # ----------------------------------------------------------------- blocks
    def _dict_bytes(self, txn, dict_id: int) -> bytes:
        v = txn.get(struct.pack(">I", dict_id), db=self._dictdb)
        if v is None:
            raise Corrupt(f"dictionary {dict_id} is missing")
        return unpack(v)["bytes"]

    def _ingest_dict(self, txn) -> Optional[int]:
        v = txn.get(b"ingest_dict", db=self._meta)
        return _U64.unpack(v)[0] if v else None

    def _substring_dict(self, txn) -> Optional[int]:
        v = txn.get(b"substring_dict", db=self._meta)
        return _U64.unpack(v)[0] if v else None

    def _substring_ids(self, txn) -> list[int]:
        """Every substring dictionary still stored (the current one last)."""
        v = txn.get(b"substring_dicts", db=self._meta)
        return unpack(v) if v else []

    def _block_dicts(self, txn) -> list[Optional[int]]:
        """The dictionaries a new block is tried with: the trained one, and the shared
        substrings when there are any (the smaller frame wins)."""
        out = [self._ingest_dict(txn)]
        sub = self._substring_dict(txn)
        if sub is not None:
            out.append(sub)
        return out

    def _compress_block(self, txn, raw: bytes, level: int, dict_ids) -> bytes:
        best = None
        for did in dict.fromkeys(dict_ids):
            if did is not None:
                self._dicts.ensure(did, lambda did=did: self._dict_bytes(txn, did))
            frame = encode_frame(raw, self._dicts, level, did)
            if best is None or len(frame) < len(best):
                best = frame
        return best

    def _count_block(self, txn, frame: bytes, raw_len: int, c: dict, sign: int = 1) -> None:
        c["blocks"] += sign
        c["block_bytes"] += sign * len(frame)
        c["block_raw"] += sign * raw_len
        did = frame_dict_id(frame)
        if did is not None and did in self._substring_ids(txn):
            c["substring_blocks"] += sign

    def _write_block(self, txn, block_id: int, segs: list[bytes], c: dict, level: int,
                     dict_ids) -> None:
        raw = build_pack(segs)
        frame = self._compress_block(txn, raw, level, dict_ids)
        txn.put(_u64(block_id), frame, db=self._blocks)
        self._count_block(txn, frame, len(raw), c)

    def _block(self, txn, block_id: int) -> tuple[bytes, list[int]]:
        hit = self._cache.get(block_id)
        if hit is not None:
            return hit
        frame = txn.get(_u64(block_id), db=self._blocks)
        if frame is None:
            raise Corrupt(f"block {block_id} is missing")
        dict_id = frame_dict_id(frame)
        if dict_id is not None:
            self._dicts.ensure(dict_id, lambda: self._dict_bytes(txn, dict_id))
        self._cache.reserve(frame_raw_size(frame))   # the peak: the limit, not limit + a block
        raw = decode_frame(frame, self._dicts)
        value = (raw, parse_pack(raw))
        self._cache.put(block_id, value)
        return value

    def _segment(self, txn, h: bytes, _depth: int = 0) -> bytes:
        packer = getattr(self._tl, "packer", None)
        if packer is not None:                  # put_many: maybe in a block not written yet
            data = packer.pending.get(h)
            if data is not None:
                return data
        v = txn.get(h, db=self._segs)
        if v is None:
            raise Corrupt(f"segment {h.hex()} is missing")
        (block, slot, _refs, _kind, length), delta = _seg_parse(v)
        raw, offs = self._block(txn, block)
        if slot + 1 >= len(offs):
            raise Corrupt(f"segment {h.hex()}: block {block} has no slot {slot}")
        seg = raw[offs[slot]:offs[slot + 1]]
        if delta is not None:
            if _depth >= limits.DELTA_MAX_DEPTH or delta[0] > limits.DELTA_MAX_DEPTH:
                raise Corrupt(f"segment {h.hex()}: delta chain deeper than {limits.DELTA_MAX_DEPTH}")
            seg = decode_delta(seg, self._segment(txn, delta[1], _depth + 1), length)
        if len(seg) != length or segment_hash(seg) != h:
            self._cache.drop(block)
            raise Corrupt(f"segment {h.hex()} in block {block} does not match its hash")
        return seg

    # ----------------------------------------------------------------- manifests
    def _manifest_header(self, v: bytes, txn) -> dict:
        """A stored header: msgpack, or (first byte 0, which no msgpack map starts with)
        uvarint dictionary id + zstd frame made with the store's manifest dictionary."""
        try:
            if v[:1] == b"\0":
                did, pos = get_uvarint(v, 1)
                self._dicts.ensure(did, lambda: self._dict_bytes(txn, did))
                v = self._dicts.decompressor(did).decompress(v[pos:], max_output_size=1 << 20)
            return unpack(v)
        except Corrupt:
            raise
        except Exception as e:
            raise Corrupt(f"manifest does not decode: {e}") from None

    def _encode_header(self, txn, header: dict) -> bytes:
        """Headers of one store are alike (keys, formats, models, dates): once compact has
        trained a manifest dictionary they are stored compressed with it (measured: 275 ->
        124 bytes a file on api-log, 195 -> 107 on chats)."""
        raw = pack(header)
        v = txn.get(b"manifest_dict", db=self._meta)
        if v is None:
            return raw
        did = _U64.unpack(v)[0]
        self._dicts.ensure(did, lambda: self._dict_bytes(txn, did))
        return b"\0" + encode_uvarints([did]) + self._dicts.compressor(limits.LEVEL_COMPACT, did).compress(raw)

    # A manifest entry is one header (msgpack map, or b"\0" + dictionary-compressed) or a
    # group of headers: b"\x01" + frame (codec.py) of a msgpack list [fid, packed header, ...],
    # keyed by its last file id. A decoded group keeps the packed headers (bytes), so it
    # costs memory about its raw size; a header is unpacked when asked for.
    def _group(self, txn, key, v) -> dict[int, bytes]:
        """A group's packed headers by file id. Cached for read transactions by (key,
        store generation): every write transaction bumps the generation, so in a read
        snapshot the pair names one content. A write transaction decodes afresh (it may
        have rewritten the group itself)."""
        writing = getattr(self._tl, "writing", False)
        ck = None if writing else (bytes(key), bytes(txn.get(b"generation", db=self._meta) or b""))
        hit = None if ck is None else self._groups.get(ck)
        if hit is None:
            try:
                flat = unpack(decode_frame(v[1:], self._dicts))
                hit = dict(zip(flat[::2], flat[1::2]))
            except Exception as e:
                raise Corrupt(f"manifest group does not decode: {e}") from None
            if ck is not None:
                self._groups.put(ck, hit)
        return hit

    def _encode_group(self, items: dict[int, bytes], level: int = limits.LEVEL_INGEST_V2) -> bytes:
        """A group in the frame envelope (codec.py). Rewrites between compacts use the
        ingest level: at level 19 removing one file of a 256-file group took 10.7 ms
        instead of 0.8 (compact writes its groups at level 19)."""
        flat = []
        for fid in sorted(items):
            flat += [fid, items[fid]]
        return _GROUP + encode_frame(pack(flat), self._dicts, level)

    def _group_of(self, txn, fid: int):
        """(key, packed headers by id) of the group whose range holds fid, or (None, None)."""
        cur = txn.cursor(db=self._mans)
        if not cur.set_range(_u64(fid)):
            return None, None
        v = cur.value()
        if v[:1] != _GROUP:
            return None, None
        return bytes(cur.key()), self._group(txn, cur.key(), v)

    @staticmethod
    def _unpack_header(raw: bytes) -> dict:
        try:
            return unpack(raw)
        except Exception as e:
            raise Corrupt(f"manifest does not decode: {e}") from None

    def _header(self, txn, fid: int) -> Optional[dict]:
        """The header of file fid (a fresh dict: callers may change it), or None."""
        v = txn.get(_u64(fid), db=self._mans)
        if v is not None and v[:1] != _GROUP:
            return self._manifest_header(v, txn)
        _key, group = self._group_of(txn, fid)
        raw = group.get(fid) if group else None
        return self._unpack_header(raw) if raw is not None else None

    def _put_header(self, txn, fid: int, header: dict) -> None:
        key, group = self._group_of(txn, fid)
        if group is not None and fid in group:
            txn.put(key, self._encode_group({**group, fid: pack(header)}), db=self._mans)
        else:
            txn.put(_u64(fid), self._encode_header(txn, header), db=self._mans)

    def _delete_header(self, txn, fid: int) -> None:
        v = txn.get(_u64(fid), db=self._mans)
        if v is not None and v[:1] != _GROUP:
            txn.delete(_u64(fid), db=self._mans)
            return
        key, group = self._group_of(txn, fid)
        if group is None or fid not in group:
            return
        rest = {i: raw for i, raw in group.items() if i != fid}
        if rest:
            txn.put(key, self._encode_group(rest), db=self._mans)
        else:
            txn.delete(key, db=self._mans)

    def _iter_headers(self, txn) -> Iterator[dict]:
        """Every header, in file id order."""
        for k, v in txn.cursor(db=self._mans):
            if v[:1] == _GROUP:
                g = self._group(txn, k, v)
                for fid in sorted(g):
                    yield self._unpack_header(g[fid])
            else:
                yield self._manifest_header(v, txn)

    def _views(self, txn, header: dict) -> dict[str, PieceList]:
        if "pb" in header:                     # piece lists kept in the header itself
            seg = header["pb"]
        else:
            pl = header["pl"]
            seg = b"".join(self._segment(txn, pl[i:i + 16]) for i in range(0, len(pl), 16))
        try:
            return unpack_views(seg)
        except Exception as e:
            raise Corrupt(f"{header.get('n')}: piece lists do not decode: {e}") from None

    @staticmethod
    def _hashes(header: dict, views: dict[str, PieceList]) -> set[bytes]:
        pl = header.get("pl", b"")
        out = {pl[i:i + 16] for i in range(0, len(pl), 16)}
        for pl in views.values():
            out |= pl.all_hashes()
        return out

    @staticmethod
    def _info(h: dict) -> FileInfo:
        return FileInfo(name=h["n"], file_id=h["id"], size=h["sz"], text_size=h["ts"],
                        format=h["fm"], application=h.get("ap"), model=h.get("md"),
                        models=tuple(h.get("ms") or ()), day=h.get("dy"), mtime=h["mt"],
                        error=h.get("er"), sha256=h["sh"].hex(), messages=h.get("nm", 0),
                        conversations=h.get("nc", 0), facts=h.get("x") or {},
                        mtime_ns=h.get("mn", round(h["mt"] * 1e9)), mode=h.get("mo", 0o644))

    def _file_id(self, txn, name: str) -> Optional[int]:
        v = txn.get(name.encode("utf-8"), db=self._names)
        return _U64.unpack(v)[0] if v else None

    def _manifest(self, txn, name: str) -> dict:
        """The header of the file called name."""
        fid = self._file_id(txn, name)
        if fid is None:
            raise NotFound(f"no such file: {name}")
        h = self._header(txn, fid)
        if h is None:
            raise Corrupt(f"{name}: manifest {fid} is missing")
        return h

    # ----------------------------------------------------------------- writing
    def put(self, name: str, data: bytes, *, mtime: Optional[float] = None,
            mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> PutResult:
        name = check_name(name)
        mtime, extra = _times(mtime, mtime_ns, mode)
        if len(data) <= limits.MAX_PARSE_BYTES:
            plan = plan_bytes(name, data, mtime, self.near_threshold > 0)
            plan.meta.update(extra)
            work = lambda txn: self._apply(txn, plan)  # noqa: E731
        else:
            work = lambda txn: self._stream(txn, name, lambda: io.BytesIO(data), len(data), mtime, extra)  # noqa: E731
        result = self._write(work)
        self._maybe_train()
        return result

    def put_file(self, name: str, src, *, mtime: Optional[float] = None,
                 mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> PutResult:
        name = check_name(name)
        mtime, extra = _times(mtime, mtime_ns, mode)
        try:
            plan = plan_path(name, src, mtime, self.near_threshold > 0)
            if plan is not None:
                plan.meta.update(extra)
            size = plan.size if plan is not None else os.path.getsize(src)
        except OSError as e:
            raise NotFound(f"cannot read {src}: {e.strerror}") from None
        if plan is not None:
            work = lambda txn: self._apply(txn, plan)  # noqa: E731
        else:
            work = lambda txn: self._stream(txn, name, lambda: open(src, "rb"), size, mtime, extra)  # noqa: E731
        result = self._write(work)
        self._maybe_train()
        return result

    def put_many(self, items, *, workers: Optional[int] = None, batch_files: int = 256,
                 batch_bytes: int = 32 << 20):
        """Store many files: items are (name, source path, mtime or None). Yields
        (name, PutResult or StowError) in order.

        Files are planned (parsed, split, hashed: no store needed) in `workers` worker
        processes (default: one per CPU when there are enough files) while this process
        applies finished plans; they are committed in batches, one fsync per batch. Each
        file is its own child transaction, so a file that fails leaves nothing behind and
        does not spoil its batch, and each file is either wholly stored or not at all."""
        items = list(items)
        if workers is None:
            workers = (os.cpu_count() or 1) if len(items) >= 32 else 0
        batch, nbytes = [], 0

        def commit():
            def work(txn):
                out = []
                packer = _Packer(self, shared=True)   # small files share blocks
                self._tl.packer = packer
                try:
                    for name, w in batch:
                        if isinstance(w, BaseException):     # failed before it got here
                            out.append((name, w))
                            continue
                        mark = packer.mark()
                        try:
                            with self.env.begin(write=True, parent=txn) as child:
                                out.append((name, w(child, packer)))
                        except StowError as e:
                            packer.restore(mark)
                            out.append((name, e))
                        if packer.full:
                            packer.flush(txn, everything=False)
                    packer.flush(txn)
                finally:
                    self._tl.packer = None
                return out
            done = self._write(work)
            self._maybe_train()
            return done

        signatures = str(self.path) if self.near_threshold > 0 else False
        for name, src, mtime, size, plan in _planned(items, workers, signatures):
            if isinstance(plan, BaseException):
                w = plan                                 # keeps its place in the order
            elif plan is None:
                w = lambda txn, _packer, name=name, src=src, size=size, mtime=mtime: self._stream(  # noqa: E731
                    txn, name, lambda: open(src, "rb"), size, mtime)
            elif size > limits.SHARED_BLOCK_MAX_FILE:     # its own blocks, written as it goes
                w = lambda txn, _packer, plan=plan: self._apply(txn, plan)  # noqa: E731
            else:
                w = lambda txn, packer, plan=plan: self._apply(txn, plan, packer)  # noqa: E731
            batch.append((name, w))
            nbytes += size
            if len(batch) >= batch_files or nbytes >= batch_bytes or plan is None:
                yield from commit()
                batch, nbytes = [], 0
        if batch:
            yield from commit()

    def _apply(self, txn, plan: Plan, packer: Optional[_Packer] = None) -> PutResult:
        """Store a planned file inside a write transaction (its new segments go to
        packer's blocks when put_many shares one, else to blocks of its own)."""
        self._check_place(txn, plan.name)
        if plan.original.size != plan.size:
            raise StowError(f"{plan.name}: piece list does not add up to the file size")
        ing = _Ingest(self, txn, packer)
        sigs = plan.sigs
        for h, (data, kind) in plan.segments.items():
            ing.add(h, data, kind, sigs.get(h))
        ing.occ, ing.occ_bytes = plan.occ, plan.occ_bytes
        ing.dedup_bytes += plan.repeat_bytes
        ing.flush()
        return self._record_file(txn, ing, plan.name, plan.size, plan.mtime, plan.sha, plan.meta,
                                 plan.text.size, plan.pieces)

    def _stream(self, txn, name: str, opener, size: int, mtime: float, extra=None) -> PutResult:
        """Store a file too large to hold in memory, a window at a time (not parsed)."""
        self._check_place(txn, name)
        ing = _Ingest(self, txn)
        parsed = unparsed(size)
        opl, tpl, pieces, sha, nread = split_views(None, opener, parsed, ing.store_segment)
        if nread != size or opl.size != size:
            raise StowError(f"{name}: size changed while it was being stored")
        ing.flush()
        return self._record_file(txn, ing, name, size, mtime, sha, {**describe(parsed), **(extra or {})},
                                 tpl.size, pieces)

    def _record_file(self, txn, ing: "_Ingest", name: str, size: int, mtime: float, sha: bytes,
                     meta: dict, text_size: int, pieces: bytes) -> PutResult:
        """Write the manifest, name and index entries, replacing an older file of that name."""
        c = ing.c
        old = self._file_id(txn, name)
        if old is not None:
            self._unlink(txn, old, c)
        fid = self._next(txn, b"next_file")
        header = {"n": name, "id": fid, "sz": size, "ts": text_size, **meta, "mt": float(mtime),
                  "sh": sha, "pl": pieces,
                  "ko": [[k, ing.occ[k], ing.occ_bytes[k]] for k in sorted(ing.occ)]}
        self._put_header(txn, fid, header)
        txn.put(name.encode("utf-8"), _u64(fid), db=self._names)
        self._index_add(txn, header, fid)
        c["files"] += 1
        c["naive"] += size
        c["conversations"] += header["nc"]
        c["messages"] += header["nm"]
        c["parse_errors"] += 1 if header["er"] else 0
        for k, n in ing.occ.items():
            c["occ"][k] += n
            c["occ_bytes"][k] += ing.occ_bytes[k]
        self._save_counters(txn, c)
        return PutResult(name, fid, size, ing.new_bytes, ing.dedup_bytes, header["fm"],
                         header["er"], old is not None)

    def _check_place(self, txn, name: str) -> None:
        """name must not be a directory, and no parent of it may be a file."""
        key = name.encode("utf-8")
        cur = txn.cursor(db=self._names)
        if cur.set_range(key + b"/") and cur.key().startswith(key + b"/"):
            raise Exists(f"{name} is a directory")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if txn.get(parent.encode("utf-8"), db=self._names) is not None:
                raise Exists(f"{parent} is a file, not a directory")

    @staticmethod
    def _index_prefixes(h: dict) -> list[bytes]:
        """The index keys' prefixes b"field\\0value\\0" a file's header belongs under."""
        out = []
        for field, value in (("model", h.get("md")), ("app", h.get("ap")), ("day", h.get("dy"))):
            if value:
                v = str(value).replace("\0", "").encode("utf-8", "replace")[:400]
                out.append(field.encode() + b"\0" + v + b"\0")
        return out

    def _index_add(self, txn, h: dict, fid: int) -> None:
        shard, bit = divmod(fid, limits.INDEX_SHARD)
        for pfx in self._index_prefixes(h):
            key = pfx + _u64(shard)
            bits = bytearray(txn.get(key, db=self._index) or bytes(limits.INDEX_SHARD // 8))
            bits[bit >> 3] |= 1 << (bit & 7)
            txn.put(key, bytes(bits), db=self._index)

    def _index_remove(self, txn, h: dict, fid: int) -> None:
        shard, bit = divmod(fid, limits.INDEX_SHARD)
        for pfx in self._index_prefixes(h):
            key = pfx + _u64(shard)
            v = txn.get(key, db=self._index)
            if v is not None:
                bits = bytearray(v)
                bits[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
                if any(bits):
                    txn.put(key, bytes(bits), db=self._index)
                else:
                    txn.delete(key, db=self._index)

    @staticmethod
    def _index_ids(key: bytes, value: bytes, pfx_len: int) -> list[int]:
        """The file ids one index entry stands for."""
        n = _U64.unpack(key[pfx_len:])[0]
        if not value:                                     # format 1: one entry per file
            return [n]
        base = n * limits.INDEX_SHARD
        return [base + i * 8 + j for i, byte in enumerate(value) if byte
                for j in range(8) if byte >> j & 1]

    def _unlink(self, txn, fid: int, c: dict) -> dict:
        """Drop a file's manifest and its references (segments stay until gc)."""
        h = self._header(txn, fid)
        if h is None:
            raise Corrupt(f"manifest {fid} is missing")
        for hsh in self._hashes(h, self._views(txn, h)):
            sv = txn.get(hsh, db=self._segs)
            if sv is None:
                raise Corrupt(f"{h['n']}: segment {hsh.hex()} is missing")
            block, slot, refs, kind, ln = _seg_fields(sv)
            if refs <= 1:
                c["uniq"][kind] -= 1
                c["uniq_bytes"][kind] -= ln
            txn.put(hsh, _seg_with(sv, refs=max(refs - 1, 0)), db=self._segs)
        self._delete_header(txn, fid)
        txn.delete(h["n"].encode("utf-8"), db=self._names)
        self._index_remove(txn, h, fid)
        c["files"] -= 1
        c["naive"] -= h["sz"]
        c["conversations"] -= h.get("nc", 0)
        c["messages"] -= h.get("nm", 0)
        c["parse_errors"] -= 1 if h.get("er") else 0
        for k, n, b in h.get("ko", ()):
            c["occ"][k] -= n
            c["occ_bytes"][k] -= b
        return h

    def remove(self, name: str) -> None:
        name = check_name(name)

        def work(txn):
            fid = self._file_id(txn, name)
            if fid is None:
                raise NotFound(f"no such file: {name}")
            c = self._counters(txn)
            self._unlink(txn, fid, c)
            self._save_counters(txn, c)
        self._write(work)

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        if old == new:
            self.info(old)
            return

        def work(txn):
            fid = self._file_id(txn, old)
            if fid is None:
                raise NotFound(f"no such file: {old}")
            self._check_place(txn, new)
            c = self._counters(txn)
            other = self._file_id(txn, new)
            if other is not None:
                self._unlink(txn, other, c)
            h = self._header(txn, fid)
            if h is None:
                raise Corrupt(f"{old}: manifest {fid} is missing")
            h["n"] = new
            self._put_header(txn, fid, h)
            txn.delete(old.encode("utf-8"), db=self._names)
            txn.put(new.encode("utf-8"), _u64(fid), db=self._names)
            self._save_counters(txn, c)
        self._write(work)

    # ----------------------------------------------------------------- reading
    def info(self, name: str) -> FileInfo:
        name = check_name(name)
        return self._info(self._read(lambda txn: self._manifest(txn, name)))

    def info_by_id(self, file_id: int) -> FileInfo:
        def work(txn):
            h = self._header(txn, file_id)
            if h is None:
                raise NotFound(f"no file with id {file_id}")
            return h
        return self._info(self._read(work))

    def reader(self, name: str, view: str = "original") -> "ViewReader":
        name = check_name(name)
        if view not in VIEWS:
            raise InvalidName(f"unknown view {view!r} (views: {', '.join(VIEWS)})")
        views = self._read(lambda txn: self._views(txn, self._manifest(txn, name)))
        return ViewReader(self, views["o" if view == "original" else "t"])

    def get(self, name: str, view: str = "original") -> bytes:
        if view not in VIEWS:
            from .. import views
            if view not in views.VIEWS:
                raise InvalidName(f"unknown view {view!r} (views: original, {', '.join(views.VIEWS)})")
            return views.render(view, self.get(name), name)
        r = self.reader(name, view)
        return r.read(0, r.size)

    def iter_files(self, prefix: str = "") -> Iterator[FileInfo]:
        """Every stored file whose name starts with prefix, sorted by name, a batch at a time
        (no transaction is held between batches)."""
        start = prefix.encode("utf-8")
        pfx = start
        while True:
            def batch(txn, start=start):
                out = []
                cur = txn.cursor(db=self._names)
                if not cur.set_range(start):
                    return out
                for k, v in cur:
                    if not k.startswith(pfx):
                        break
                    if k == start and out == [] and start != pfx:
                        continue
                    m = self._header(txn, _U64.unpack(v)[0])
                    if m is not None:
                        out.append((k, self._info(m)))
                    if len(out) >= 256:
                        break
                return out
            rows = self._read(batch)
            for _, info in rows:
                yield info
            if len(rows) < 256:
                return
            start = rows[-1][0]

    def listdir(self, dirpath: str = "") -> list[tuple[str, Optional[FileInfo]]]:
        prefix = (dirpath.strip("/") + "/") if dirpath.strip("/") else ""
        pfx = prefix.encode("utf-8")

        def work(txn):
            out = []
            cur = txn.cursor(db=self._names)
            ok = cur.set_range(pfx)
            while ok:
                k = cur.key()
                if not k.startswith(pfx):
                    break
                rest = k[len(pfx):]
                slash = rest.find(b"/")
                if slash >= 0:
                    child = rest[:slash]
                    out.append((child.decode("utf-8"), None))
                    ok = cur.set_range(pfx + child + b"0")  # '0' sorts right after '/'
                    continue
                m = self._header(txn, _U64.unpack(cur.value())[0])
                if m is not None:
                    out.append((rest.decode("utf-8"), self._info(m)))
                ok = cur.next()
            return out
        return self._read(work)

    def is_dir(self, path: str) -> bool:
        p = path.strip("/")
        if not p:
            return True
        pfx = (p + "/").encode("utf-8")

        def work(txn):
            cur = txn.cursor(db=self._names)
            return cur.set_range(pfx) and cur.key().startswith(pfx)
        return self._read(work)

    def index_values(self, key: str) -> list[str]:
        pfx = key.encode() + b"\0"

        def work(txn):
            out = []
            cur = txn.cursor(db=self._index)
            ok = cur.set_range(pfx)
            while ok and cur.key().startswith(pfx):
                value = cur.key()[len(pfx):-9]
                out.append(value.decode("utf-8", "replace"))
                ok = cur.set_range(pfx + value + b"\x01")  # skip the rest of this value's ids
            return out
        return self._read(work)

    def index_files(self, key: str, value: str) -> list[FileInfo]:
        pfx = key.encode() + b"\0" + value.encode("utf-8") + b"\0"

        def work(txn):
            out = []
            cur = txn.cursor(db=self._index)
            ok = cur.set_range(pfx)
            while ok and cur.key().startswith(pfx) and len(cur.key()) == len(pfx) + 8:
                for fid in self._index_ids(cur.key(), cur.value(), len(pfx)):
                    m = self._header(txn, fid)
                    if m is not None:
                        out.append(self._info(m))
                ok = cur.next()
            return out
        return sorted(self._read(work), key=lambda i: i.name)

    # ----------------------------------------------------------------- dictionaries
    def _maybe_train(self) -> None:
        def due(txn):
            c = self._counters(txn)
            live = sum(c["uniq_bytes"])
            last = txn.get(b"trained_at", db=self._meta)
            last = _U64.unpack(last)[0] if last else 0
            if live < limits.DICT_TRAIN_MIN_BYTES:
                return False
            return last == 0 or live >= limits.DICT_RETRAIN_FACTOR * last
        if self._read(due):
            self.train(rotate=True)

    def _sample_segments(self, txn, budget: int) -> list[bytes]:
        """Up to budget bytes of live segments, spread over the store (newest blocks first)."""
        samples, total = [], 0
        cur = txn.cursor(db=self._blocks)
        if not cur.last():
            return samples
        while total < budget:
            block_id = _U64.unpack(cur.key())[0]
            raw, offs = self._block(txn, block_id)
            for i in range(len(offs) - 1):
                seg = raw[offs[i]:offs[i + 1]]
                if 8 <= len(seg) <= 64 << 10 and seg[:4] != _ZSTD_MAGIC:   # not a delta
                    samples.append(seg)
                    total += len(seg)
            if not cur.prev():
                break
        return samples

    def train(self, kind: Optional[int] = None, rotate: bool = False) -> Optional[int]:
        """Train a dictionary from the store's newest segments and make it the one new
        blocks use. Returns its id, or None when there is not enough content.

        rotate=True (the automatic retraining as the store grows) adopts the new
        dictionary only when content has drifted: when it compresses a held-out tenth of
        the newest segments at least DICT_ROTATE_GAIN smaller than the current one.
        Blocks keep naming the dictionary they were made with; compact drops the ones no
        block needs any more."""
        import zstandard
        samples = self._read(lambda txn: self._sample_segments(txn, limits.DICT_SAMPLE_BYTES))
        if sum(map(len, samples)) < 64 << 10 or len(samples) < 16:
            return None
        held = samples[::10]
        learn = [x for i, x in enumerate(samples) if i % 10] if rotate else samples
        try:
            total = sum(map(len, learn))
            size = max(4 << 10, min(limits.DICT_SIZE, total // 32))
            d = zstandard.train_dictionary(size, learn, k=256, d=8)
        except zstandard.ZstdError:
            return None
        raw = d.as_bytes()
        current = self._read(self._ingest_dict)
        if rotate and current is not None:
            self._dicts.ensure(current, lambda: self._read(lambda txn: self._dict_bytes(txn, current)))
            old = self._dicts.compressor(limits.LEVEL_INGEST_V2, current)
            new = zstandard.ZstdCompressor(level=limits.LEVEL_INGEST_V2, dict_data=zstandard.ZstdCompressionDict(raw))
            old_size = sum(len(old.compress(x)) for x in held)
            new_size = sum(len(new.compress(x)) for x in held)
            if new_size > (1 - limits.DICT_ROTATE_GAIN) * old_size:
                def keep(txn):      # no drift: keep the current one, look again later
                    c = self._counters(txn)
                    txn.put(b"trained_at", _u64(max(sum(c["uniq_bytes"]), 1)), db=self._meta)
                self._write(keep)
                return None

        def work(txn):
            did = self._next(txn, b"next_dict")
            txn.put(struct.pack(">I", did), pack({"kind": kind, "bytes": raw, "created": time.time(),
                                                  "samples": len(samples)}), db=self._dictdb)
            txn.put(b"ingest_dict", _u64(did), db=self._meta)
            c = self._counters(txn)
            txn.put(b"trained_at", _u64(max(sum(c["uniq_bytes"]), 1)), db=self._meta)
            return did
        return self._write(work)

    # ----------------------------------------------------------------- segments
    def iter_segments(self) -> Iterator[tuple[bytes, int, int, int, Optional[bytes]]]:
        """Every stored segment as (hash, kind, length, refcount, delta base or None), in
        hash order, a batch at a time (no transaction is held between batches). The
        refcount counts files and deltas made against the segment."""
        start = b""
        while True:
            def batch(txn, start=start):
                out = []
                cur = txn.cursor(db=self._segs)
                ok = cur.set_range(start)
                while ok and len(out) < 4096:
                    k = bytes(cur.key())
                    if k != start:
                        (_b, _s, refs, kind, length), delta = _seg_parse(cur.value())
                        out.append((k, kind, length, refs, None if delta is None else delta[1]))
                    ok = cur.next()
                return out
            rows = self._read(batch)
            yield from rows
            if len(rows) < 4095:
                return
            start = rows[-1][0]

    def segment(self, h: bytes) -> bytes:
        """A segment's bytes by hash (checked against it; Corrupt when damaged)."""
        return self._read(lambda txn: self._segment(txn, h))

    # ----------------------------------------------------------------- shared substrings
    def train_substrings(self, sample_count: int = limits.SUBSTRING_SAMPLES,
                         min_occurrences: int = limits.SUBSTRING_MIN_OCCURRENCES) -> int:
        """Promote the substrings (at least 16 tokens' worth of bytes) that occur in at
        least min_occurrences of up to sample_count live content segments, and make them
        the registry that blocks written from now on are tried with. Existing frames are
        not touched. Returns how many were promoted; 0 leaves the registry as it was."""
        from . import substrings as sub
        if sample_count < 1:
            raise StowError("sample_count must be at least 1")
        if min_occurrences < 2:
            raise StowError("min_occurrences must be at least 2")

        def collect(txn):
            text, tokens = [], []
            for h, v in txn.cursor(db=self._segs):
                (_b, _s, refs, kind, length), _d = _seg_parse(v)
                if refs == 0 or kind in (SKELETON, PIECES, VIEW) or length > limits.SUBSTRING_MAX_SAMPLE:
                    continue
                if kind == TOKENS:
                    if length >= sub.MIN_TOKEN_BYTES:
                        tokens.append(self._segment(txn, bytes(h)))
                elif length >= sub.MIN_TEXT_BYTES:
                    text.append(self._segment(txn, bytes(h)))
                if len(text) + len(tokens) >= sample_count:
                    break
            return text, tokens
        text, tokens = self._read(collect)
        found = []
        if len(text) >= min_occurrences:
            found += sub.promote(text, min_occurrences)
        if len(tokens) >= min_occurrences:
            found += sub.promote(tokens, min_occurrences, sub.MIN_TOKEN_BYTES, binary=True)
        if not found:
            return 0
        items = [s for s, _ in found]

        def work(txn):
            did = self._next(txn, b"next_dict")
            txn.put(struct.pack(">I", did), pack({
                "kind": "substrings", "bytes": sub.dictionary_bytes(items), "items": items,
                "samples": [n for _, n in found], "created": time.time(),
                "trained_on": len(text) + len(tokens)}), db=self._dictdb)
            txn.put(b"substring_dict", _u64(did), db=self._meta)
            txn.put(b"substring_dicts", pack(self._substring_ids(txn) + [did]), db=self._meta)
        self._write(work)
        return len(items)

    def substrings(self) -> list[dict]:
        """The current registry: [{"bytes", "samples"}], most shared first."""
        def work(txn):
            did = self._substring_dict(txn)
            if did is None:
                return []
            v = txn.get(struct.pack(">I", did), db=self._dictdb)
            if v is None:
                raise Corrupt(f"substring dictionary {did} is missing")
            d = unpack(v)
            return [{"bytes": b, "samples": n} for b, n in zip(d["items"], d["samples"])]
        return self._read(work)

    def compact_substrings(self, level: int = limits.LEVEL_COMPACT) -> dict:
        """Re-encode the blocks written without the current substrings with them, where
        that makes the block smaller. Blocks already made with a substring registry are
        skipped, and so are the deltas inside blocks (their bytes are kept as they are)."""
        def ids(txn):
            return [_U64.unpack(k)[0] for k in txn.cursor(db=self._blocks).iternext(values=False)]
        block_ids = self._read(ids)
        out = {"rewritten": 0, "kept": 0, "skipped_substring_blocks": 0, "bytes_saved": 0}
        for i in range(0, len(block_ids), 64):
            def work(txn, batch=block_ids[i:i + 64]):
                sub = self._substring_dict(txn)
                if sub is None:
                    return
                subs = set(self._substring_ids(txn))
                c = self._counters(txn)
                for bid in batch:
                    frame = txn.get(_u64(bid), db=self._blocks)
                    if frame is None:
                        continue
                    if frame_dict_id(frame) in subs:
                        out["skipped_substring_blocks"] += 1
                        continue
                    raw, _offs = self._block(txn, bid)
                    new = self._compress_block(txn, raw, level, [sub])
                    if len(new) < len(frame):
                        txn.put(_u64(bid), new, db=self._blocks)
                        self._count_block(txn, frame, len(raw), c, -1)
                        self._count_block(txn, new, len(raw), c)
                        out["rewritten"] += 1
                        out["bytes_saved"] += len(frame) - len(new)
                    else:
                        out["kept"] += 1
                self._save_counters(txn, c)
            self._write(work)
        return out

    def gc_substrings(self) -> int:
        """Delete the substring registries no block uses (the current one too, when no
        block uses it). Returns how many were dropped."""
        def work(txn):
            used = {frame_dict_id(f) for f in txn.cursor(db=self._blocks).iternext(keys=False)}
            ids = self._substring_ids(txn)
            drop = [d for d in ids if d not in used]
            for d in drop:
                txn.delete(struct.pack(">I", d), db=self._dictdb)
            if drop:
                txn.put(b"substring_dicts", pack([d for d in ids if d in used]), db=self._meta)
                if self._substring_dict(txn) in drop:
                    txn.delete(b"substring_dict", db=self._meta)
            return len(drop)
        return self._write(work)

    # ----------------------------------------------------------------- stats
    def disk_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.path / "lmdb"):
            for f in files:
                try:
                    st = os.lstat(os.path.join(root, f))
                except FileNotFoundError:
                    continue
                total += st.st_blocks * 512
        return total

    def stats(self) -> dict:
        c = self._read(self._counters)
        ndicts = self._read(lambda txn: txn.stat(self._dictdb)["entries"])
        disk = self.disk_bytes()
        occ, uniq = sum(c["occ"]), sum(c["uniq"])
        occ_b, uniq_b = sum(c["occ_bytes"]), sum(c["uniq_bytes"])
        kinds = {}
        for k, name in enumerate(KIND_NAMES):
            if c["occ"][k] or c["uniq"][k]:
                kinds[name] = {"segments": c["occ"][k], "segment_bytes": c["occ_bytes"][k],
                               "unique_segments": c["uniq"][k], "unique_bytes": c["uniq_bytes"][k],
                               "dedup_ratio": round(c["occ_bytes"][k] / c["uniq_bytes"][k], 3)
                               if c["uniq_bytes"][k] else None}
        return {
            "files": c["files"], "conversations": c["conversations"], "messages": c["messages"],
            "unparsed_files": c["parse_errors"],
            "segments": occ, "unique_segments": uniq, "segment_bytes": occ_b, "unique_bytes": uniq_b,
            "dedup_ratio": round(occ_b / uniq_b, 3) if uniq_b else None,
            "blocks": c["blocks"], "block_bytes": c["block_bytes"], "block_raw_bytes": c["block_raw"],
            "compression_ratio": round(c["block_raw"] / c["block_bytes"], 3) if c["block_bytes"] else None,
            "dictionaries": ndicts,
            "deltas": c["deltas"], "delta_raw_bytes": c["delta_raw"], "delta_bytes": c["delta_bytes"],
            "substrings": len(self.substrings()), "substring_blocks": c["substring_blocks"],
            "naive_bytes": c["naive"], "disk_bytes": disk,
            "ratio": round(c["naive"] / disk, 3) if disk else None,
            "savings_percent": round(100 * (1 - disk / c["naive"]), 2) if c["naive"] else None,
            "by_kind": kinds,
        }


def stats_json(stats: dict) -> bytes:
    """The one spelling of the stats as JSON: `stowfs stats --json` and MOUNT/stats.json."""
    import json
    return (json.dumps(stats, indent=2) + "\n").encode()


class ViewReader:
    """Reads any byte range of one view, decoding only the pieces that range touches."""

    def __init__(self, store: Store, pl: PieceList):
        self._s = store
        self._pl = pl
        self.size = pl.size
        self._layout = None
        self._last = (-1, b"")
        self._last_chunk = (-1, b"")

    def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        if self._layout is None:
            self._layout = self._pl.layout()
        starts, gap_starts, chunk_starts = self._layout
        pl = self._pl
        return self._s._read(lambda txn: self._collect(txn, offset, end, starts, gap_starts, chunk_starts, pl))

    def _collect(self, txn, offset, end, starts, gap_starts, chunk_starts, pl) -> bytes:
        out = []
        k = bisect_right(starts, offset) - 1
        nelem = len(starts) - 1
        pos = offset
        while pos < end and k < nelem:
            e0, e1 = starts[k], starts[k + 1]
            lo, hi = pos - e0, min(end, e1) - e0
            if hi > lo:
                if k % 2 == 0:
                    g = k // 2
                    out.append(self._skeleton(txn, gap_starts[g] + lo, gap_starts[g] + hi, chunk_starts, pl))
                else:
                    out.append(self._rendered(txn, k // 2, pl)[lo:hi])
            pos = e1
            k += 1
        return b"".join(out)

    def _rendered(self, txn, i: int, pl: PieceList) -> bytes:
        if self._last[0] == i:
            return self._last[1]
        seg = self._s._segment(txn, pl.hashes[16 * i:16 * i + 16])
        data = render(seg, pl.styles[i])
        if len(data) != pl.outlens[i]:
            raise Corrupt("a stored piece renders to the wrong length")
        self._last = (i, data)
        return data

    def _skeleton(self, txn, lo: int, hi: int, chunk_starts, pl) -> bytes:
        out = []
        j = bisect_right(chunk_starts, lo) - 1
        while lo < hi:
            c0 = chunk_starts[j]
            # the gaps between pieces mostly fall in the chunk the last one used: keep
            # it, verified once, instead of fetching and hashing it again (measured:
            # decoding every file of the sessions bench corpus 36 -> 81 MB/s)
            if self._last_chunk[0] == j:
                chunk = self._last_chunk[1]
            else:
                chunk = self._s._segment(txn, pl.skel_hashes[16 * j:16 * j + 16])
                self._last_chunk = (j, chunk)
            part = chunk[lo - c0:hi - c0]
            out.append(part)
            lo += len(part)
            j += 1
        return b"".join(out)
