"""Per-file records, packed GROUP_FILES to a compressed group (as squashfs packs its
inode table): everything `stat`, `ls -l` and a read need, with no content hash per
piece: the content is addressed by stream position.

Stored form (table `groups`): key u64be group id (= file id >> GROUP_BITS), value
frame(tag GROUP, group id, payload = msgpack list of records). A record is a msgpack
list:

    [file id, size, mtime_ns, mode, format, application, model, [models],
     day, error, messages, conversations, {facts}, checksum, extents]

stored column by column (all file ids, then all sizes, ...). The name is not in the
record: it is in the name table, the only way to a record (a record found by id gets
its name from there).

- checksum: BLAKE2b-32 of the file's bytes (verify rebuilds every file against it);
- extents: per extent zigzag(position - end of the previous) and length, as uvarints.

Two layouts, named by the frame's extra (FORMAT.md, "Records"): format 7 packs the
columns (PACKED, columns.py: numbers in byte planes, facts only where present, a
file's last extent length left to its size); formats 2-6 wrote msgpack lists (file ids
as deltas). Both are read; a store writes the one its format has.

A read reaches a record through its name; the record holds its id, the group frame
its group id, and both frames are hash-checked, so a damaged table fails loudly.
"""
from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Mapping
from typing import Optional

from .. import limits
from ..errors import Corrupt
from ..packing import get_uvarint, pack, put_uvarint, unpack, unpack_list
from . import columns, frames
from .tables import FrameCache, ThreadDirty

_KEY = struct.Struct(">Q")


CHECKSUM_SIZE = 4


def checksum(data) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()


def check_bytes(name: str, data, ck: bytes):
    """data, a whole file read back, if it matches its record's checksum ck."""
    if checksum(data) != ck:
        raise Corrupt(f"{name}: its bytes do not match its checksum")
    return data


def encode_extents(extents: list[tuple[int, int]], prev: int = 0) -> bytes:
    """prev: the position the first extent is relative to (the end of the previous
    record's last extent: files stored one after the other then cost a zero)."""
    out = bytearray()
    put_uvarint(out, len(extents))
    for pos, length in extents:
        d = pos - prev
        put_uvarint(out, columns.zigzag(d))
        put_uvarint(out, length)
        prev = pos + length
    return bytes(out)


def decode_extents(buf: bytes, prev: int = 0) -> list[tuple[int, int]]:
    n, p = get_uvarint(buf, 0)
    out = []
    for _ in range(n):
        z, p = get_uvarint(buf, p)
        length, p = get_uvarint(buf, p)
        pos = prev + columns.unzigzag(z)
        out.append((pos, length))
        prev = pos + length
    if p != len(buf):
        raise ValueError("trailing bytes")
    return out


class Record:
    """One file's record. A record is not changed once made (`replace` makes another),
    so it keeps the forms encode_group needs: its facts flattened and its extents
    encoded (after a given position). A mount stores inbox files one transaction each,
    and each rewrites the file's whole group: flattening every record's facts again
    was two thirds of storing a file (12 ms a file in a group of 500).

    A decoded record does not hold its facts: it points at its group's facts column
    (`_src`), and `facts` is made from there when asked for. Decoded groups are cached
    (limits.GROUP_CACHE), and the nested dicts of every record's facts were most of a
    reading daemon's memory: 150 MiB after a cat of a 17,671-file store."""
    __slots__ = ("file_id", "name", "size", "mtime_ns", "mode", "format", "application", "model",
                 "models", "day", "error", "messages", "conversations", "_facts", "checksum",
                 "_ext", "_flat", "_enc", "_src")
    FIELDS = ("file_id", "name", "size", "mtime_ns", "mode", "format", "application", "model",
              "models", "day", "error", "messages", "conversations", "facts", "checksum")
    STORED = FIELDS[:1] + FIELDS[2:]        # the name lives in the name table only

    def __init__(self, file_id, name, size, mtime_ns, mode, format, application, model, models,
                 day, error, messages, conversations, facts, checksum, extents=None):
        self.file_id, self.name, self.size, self.mtime_ns, self.mode = file_id, name, size, mtime_ns, mode
        self.format, self.application, self.model, self.models = format, application, model, models
        self.day, self.error, self.messages, self.conversations = day, error, messages, conversations
        self._facts, self.checksum = facts, checksum
        self._ext = extents if extents is not None else []
        self._flat: Optional[dict] = None                # flat_facts()
        self._enc: Optional[tuple[int, bytes]] = None    # (prev, encode_extents(extents, prev))
        self._src: Optional[tuple] = None                # (facts column, position): decoded

    @property
    def extents(self) -> list:
        return self._ext

    @property
    def facts(self) -> dict:
        if self._src is not None:
            col, i = self._src
            return _unflatten(self._flat) if self._flat is not None else col.nested(i)
        return self._facts

    def lazy_facts(self):
        """facts, or for a decoded record a LazyFacts of them (built when looked into)."""
        if self._src is not None and self._flat is None:
            return LazyFacts(*self._src)
        return self.facts

    def replace(self, **kw) -> "Record":
        r = Record.__new__(Record)
        for f in Record.__slots__:
            setattr(r, f, getattr(self, f))
        if "facts" in kw:
            r._facts, r._flat, r._src = kw.pop("facts"), None, None
        if "extents" in kw:
            r._ext, r._enc = kw.pop("extents"), None
        for f, v in kw.items():
            if f not in self.FIELDS:
                raise TypeError(f"Record has no field {f!r}")
            setattr(r, f, v)
        return r

    def to_list(self) -> list:
        """The stored fields in column order (facts and extents: see encode_group)."""
        return [None if f == "facts" else getattr(self, f) for f in self.STORED] + [None]

    def named(self, name: str) -> "Record":
        return self.replace(name=name)

    def flat_facts(self) -> dict:
        if self._flat is None:
            if self._src is not None:
                col, i = self._src
                self._flat = col.row(i)
            else:
                fl: dict = {}
                _flatten(self._facts or {}, "", fl)
                self._flat = fl
        return self._flat

    def encoded_extents(self, prev: int) -> bytes:
        if self._enc is None or self._enc[0] != prev:
            self._enc = (prev, encode_extents(self._ext, prev))
        return self._enc[1]



def group_of(file_id: int) -> int:
    return file_id >> limits.GROUP_BITS


_SEP = "\x00"


def _flatten(d: dict, prefix: str, out: dict) -> None:
    for k, v in d.items():
        if isinstance(v, dict) and v:
            _flatten(v, prefix + str(k) + _SEP, out)
        else:
            out[prefix + str(k)] = v


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        parts = path.split(_SEP)
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def _facts_columns(flats: list, sizes: list, refs: bool) -> list:
    """The facts column, from each record's flattened facts, as [paths, [column per
    path], [absent per path]]: each fact of every record next to the same fact of the
    others (sizes next to sizes) compresses far better than maps. With refs (format 5,
    written by compaction), a fourth item names for each path the column its numbers
    are stored against (see _choose_ref)."""
    paths = sorted({p for fl in flats for p in fl})
    values = [[fl.get(p) for fl in flats] for p in paths]
    cols = [paths, values, [[i for i, fl in enumerate(flats) if p not in fl] for p in paths]]
    if refs:
        chosen, stored = [], []
        for i in range(len(paths)):
            j = _choose_ref(values, i, sizes)
            chosen.append(j)
            base = sizes if j == SIZE_REF else values[j] if j is not None else None
            stored.append(values[i] if base is None else [_delta(v, r) for v, r in zip(values[i], base)])
        if any(j is not None for j in chosen):
            cols[1] = stored
            cols.append(chosen)
    return cols


# Format 5: a numeric fact is often another plus a little (a view's size is the file's
# size, less what the view drops; the lean view's token count equals the original's). A
# column can be stored as its difference from the file sizes (SIZE_REF) or from a column
# before it (its index), number for number: _delta/_undelta, exact for any values (a pair
# that is not two ints, or two lists of one length, or a list ending in an int and an
# int, is stored as it is, and reads back as it is).
SIZE_REF = -1
_REF_SAMPLE = 64            # records a reference is chosen on
_INT64 = 1 << 63


def _delta(v, r):
    tv, tr = type(v), type(r)
    if tv is int and tr is int:
        return v - r
    if tv is list and tr is list and len(v) == len(r):
        return [_delta(a, b) for a, b in zip(v, r)]
    if tv is list and v and type(v[-1]) is int and tr is int:
        return v[:-1] + [v[-1] - r]
    return v


def _undelta(d, r):
    td, tr = type(d), type(r)
    if td is int and tr is int:
        return d + r
    if td is list and tr is list and len(d) == len(r):
        return [_undelta(a, b) for a, b in zip(d, r)]
    if td is list and d and type(d[-1]) is int and tr is int:
        return d[:-1] + [d[-1] + r]
    return d


def _cost(x) -> int:
    """About the bits x takes in msgpack: what a reference must make smaller."""
    t = type(x)
    if t is int:
        return (x if x >= 0 else ~x).bit_length() + 2
    if t is list:
        return 1 + sum(_cost(y) for y in x)
    return 8


def _fits(x) -> bool:
    t = type(x)
    if t is int:
        return -_INT64 <= x < _INT64
    if t is list:
        return all(_fits(y) for y in x)
    return True


def _choose_ref(values: list, i: int, sizes: list):
    """The reference column i is stored against (SIZE_REF, or an index below i), chosen
    on the first records: the one that makes its numbers cheapest by a tenth at least,
    or None. Only one whose differences all fit msgpack's integers for every record."""
    col = values[i]
    sample = col[:_REF_SAMPLE]
    best, best_cost = None, 0.9 * sum(_cost(v) for v in sample)
    if not any(type(v) in (int, list) for v in sample):
        return None
    for j in [SIZE_REF] + list(range(i)):
        base = sizes if j == SIZE_REF else values[j]
        c = sum(_cost(_delta(v, r)) for v, r in zip(sample, base))
        if c < best_cost:
            best, best_cost = j, c
    if best is not None:
        base = sizes if best == SIZE_REF else values[best]
        if not all(_fits(_delta(v, r)) for v, r in zip(col, base)):
            return None
    return best


class FactsColumn:
    """A decoded group's facts column, kept packed (~25 bytes a record) and unpacked
    when a record's facts are asked for: unpacked, it is ~20 ints a record, which were
    most of what the cached groups held. The last two unpacked stay unpacked."""
    __slots__ = ("packed", "n", "gid", "sizes", "key", "layout", "leaves")
    # by the group frame's hash: it names the content (the packed column alone does not:
    # numbers stored against the file sizes read back differently in another group)
    _unpacked = FrameCache(2)

    def __init__(self, packed: bytes, n: int, gid: int, sizes: list, key: bytes,
                 layout: bytes = b""):
        self.packed, self.n, self.gid, self.sizes, self.key = packed, n, gid, sizes, key
        self.layout = layout
        self.leaves = None          # under(): (key, [(leaf, values, absent)])

    def column(self) -> tuple:
        """(paths, values per path, absent positions per path, each path's keys)."""
        return self._unpacked.get(self.key, self._unpack)

    def _unpack(self) -> tuple:
        try:
            cols = unpack(self.packed)
            if not isinstance(cols, list) or len(cols) not in (3, 4):
                raise ValueError("bad shape")
            paths, values, absent = cols[:3]
            refs = cols[3] if len(cols) == 4 else [None] * len(paths) if isinstance(paths, list) else None
            if self.layout == PACKED and isinstance(values, list) and isinstance(absent, list):
                values, absent = _present_to_full(values, absent, self.n)
            if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)
                    and isinstance(values, list) and isinstance(absent, list)
                    and isinstance(refs, list)
                    and len(values) == len(absent) == len(paths) == len(refs)
                    and all(isinstance(v, list) and len(v) == self.n for v in values)):
                raise ValueError("bad shape")
            for i, j in enumerate(refs):
                if j is None:
                    continue
                if type(j) is not int or not SIZE_REF <= j < i:
                    raise ValueError(f"bad reference {j!r}")
                base = self.sizes if j == SIZE_REF else values[j]
                values[i] = [_undelta(d, r) for d, r in zip(values[i], base)]
            return paths, values, [frozenset(a) for a in absent], [tuple(p.split(_SEP)) for p in paths]
        except Exception as e:
            raise Corrupt(f"record group {self.gid} is damaged: its facts: {e}") from None

    def row(self, i: int) -> dict:
        """Record i's flattened facts."""
        paths, values, absent, _ = self.column()
        return {p: vals[i] for p, vals, gone in zip(paths, values, absent) if i not in gone}

    def under(self, i: int, key: str) -> dict:
        """Record i's facts[key] when it is a map of leaves (the "views" fact), without
        the rest of its facts. The leaves' columns are found once a group and kept (a
        listing asks for every record's)."""
        got = self.leaves
        if got is None or got[0] != key:
            _, values, absent, keys = self.column()
            got = self.leaves = (key, [(ks[1], vals, gone) for ks, vals, gone in zip(keys, values, absent)
                                       if len(ks) == 2 and ks[0] == key])
        return {leaf: vals[i] for leaf, vals, gone in got[1] if i not in gone}

    def nested(self, i: int) -> dict:
        """Record i's facts, as _unflatten(row(i)) makes them, from the paths split once
        per group (a listing makes every record's: splitting each path again was a third
        of listing a directory the mount had not listed before)."""
        _, values, absent, keys = self.column()
        out: dict = {}
        for ks, vals, gone in zip(keys, values, absent):
            if i in gone:
                continue
            d = out
            for k in ks[:-1]:
                d = d.setdefault(k, {})
            d[ks[-1]] = vals[i]
        return out


class LazyFacts(Mapping):
    """A decoded record's facts as a read-only map, made into nested dicts only when
    looked into (then kept). A listing makes a FileInfo of every record, and the mount
    needs only the sizes of the views from its facts: building every record's nested
    facts was over half of listing all of chats' directories (44 of 77 ms)."""
    __slots__ = ("_col", "_i", "_d")

    def __init__(self, col: "FactsColumn", i: int):
        self._col, self._i, self._d = col, i, None

    def _dict(self) -> dict:
        if self._d is None:
            self._d = self._col.nested(self._i)
        return self._d

    def __getitem__(self, key):
        return self._dict()[key]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())

    def views(self) -> dict:
        """facts["views"] ({view: [renderer version, size]}), or {}."""
        if self._d is not None:
            return self._d.get("views") or {}
        return self._col.under(self._i, "views")


# A group frame's extra names its layout: empty, msgpack lists (formats 2-6); PACKED,
# the columns of columns.py (format 7).
PACKED = b"\x01"
_INT_COLS = (0, 1, 2, 3, 10, 11)     # ids, size, mtime_ns, mode, messages, conversations


def _full_to_present(values: list, absent: list, n: int) -> tuple[list, list]:
    """Facts columns of every record (None where absent) -> the present values packed
    (columns.pack_values) and a presence bitmap per path (nil: every record has it)."""
    out_v, out_p = [], []
    for vals, gone in zip(values, absent):
        if gone:
            g = set(gone)
            vals = [v for i, v in enumerate(vals) if i not in g]
        out_v.append(columns.pack_values(vals))
        out_p.append(columns.presence(n, gone) if gone else None)
    return out_v, out_p


def _present_to_full(values: list, pres: list, n: int) -> tuple[list, list]:
    if len(values) != len(pres):
        raise ValueError("bad shape")
    full, absent = [], []
    for col, bits in zip(values, pres):
        if bits is None:
            full.append(columns.unpack_values(col, n))
            absent.append([])
            continue
        at = columns.present_positions(bits, n)
        vals = columns.unpack_values(col, len(at))
        row = [None] * n
        for i, v in zip(at, vals):
            row[i] = v
        full.append(row)
        have = set(at)
        absent.append([i for i in range(n) if i not in have])
    return full, absent


def _encode_packed(order: list, refs: bool) -> list:
    """Format 7's columns (FORMAT.md, "Records")."""
    n = len(order)
    cols = [list(c) for c in zip(*(r.to_list() for r in order))] if order else [[] for _ in range(15)]
    sizes = cols[1]
    for c in _INT_COLS:
        cols[c] = columns.pack_values(cols[c])
    # models: 0 where they are [model] (or [] without a model), as nearly always
    cols[7] = [0 if ms == ([m] if m is not None else []) else ms for ms, m in zip(cols[7], cols[6])]
    f = _facts_columns([r.flat_facts() for r in order], sizes, refs)
    f[1], f[2] = _full_to_present(f[1], f[2], n)
    cols[12] = f
    cks = cols[13]
    cols[13] = b"".join(cks) if all(type(c) is bytes and len(c) == CHECKSUM_SIZE for c in cks) else cks
    cols[14] = columns.pack_extents([r.extents for r in order], sizes)
    return cols


def encode_group(gid: int, recs: dict[int, Record], level: int, refs: bool = False,
                 packed: bool = True) -> bytes:
    """Columns, not rows: each field of every record together (names next to names,
    sizes next to sizes) compresses far better. refs: numeric facts may be stored
    against another column (format 5; _facts_columns). packed: format 7's layout
    (columns.py); else format 6's msgpack lists, file ids stored as deltas."""
    order = [recs[k] for k in sorted(recs)]
    if packed:
        return frames.encode(frames.GROUP, gid, pack(_encode_packed(order, refs)), level, PACKED)
    rows = [r.to_list() for r in order]
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(15)]
    ids = cols[0]
    cols[0] = [ids[0]] + [b - a for a, b in zip(ids, ids[1:])] if ids else []
    cols[12] = _facts_columns([r.flat_facts() for r in order], cols[1], refs)
    ext, prev = [], 0
    for r in order:
        ext.append(r.encoded_extents(prev))
        e = r.extents
        if e:
            prev = e[-1][0] + e[-1][1]
    cols[14] = ext
    return frames.encode(frames.GROUP, gid, pack(cols), level)


def decode_group(frame, gid: int) -> dict[int, Record]:
    hd, raw = frames.decode(frame, frames.GROUP, gid)
    try:
        if hd.extra not in (b"", PACKED):
            raise ValueError(f"unknown layout {hd.extra.hex()}")
        cols = unpack_list(raw, keep_packed={12})
        if len(cols) != 15 or not isinstance(cols[4], list):
            raise ValueError("bad columns")
        n = len(cols[4])
        if hd.extra == PACKED:
            for c in _INT_COLS:
                cols[c] = columns.unpack_values(cols[c], n)
            cols[7] = [([m] if m is not None else []) if type(ms) is int and ms == 0 else ms
                       for ms, m in zip(cols[7], cols[6])]
            cks = cols[13]
            if type(cks) is bytes:
                if len(cks) != CHECKSUM_SIZE * n:
                    raise ValueError("checksums of the wrong length")
                cols[13] = [cks[i:i + CHECKSUM_SIZE] for i in range(0, len(cks), CHECKSUM_SIZE)]
            exts = columns.unpack_extents(cols[14], cols[1])
            encs = [None] * n
        else:
            ids, acc = [], 0
            for i, d in enumerate(cols[0]):
                acc = d if i == 0 else acc + d
                ids.append(acc)
            cols[0] = ids
            exts, encs, prev = [], [], 0
            for e in cols[14]:
                ext = decode_extents(e, prev)
                exts.append(ext)
                encs.append((prev, bytes(e)))
                if ext:
                    prev = ext[-1][0] + ext[-1][1]
        fcol = FactsColumn(cols[12], n, gid, cols[1], hd.hash, hd.extra)
        cols[12] = [None] * n
        for c in (4, 5, 6, 8):      # format, application, model, day: a few values, shared
            cols[c] = [sys.intern(v) if type(v) is str else v for v in cols[c]]
        cols[14] = exts
        if len({len(c) for c in cols}) != 1 or len(encs) != n:
            raise ValueError("columns differ in length")
        out = {}
        for i, v in enumerate(zip(*cols)):
            r = Record(v[0], None, *v[1:14], extents=v[14])
            r._src, r._enc = (fcol, i), encs[i]
            if group_of(r.file_id) != gid:
                raise ValueError(f"record {r.file_id} in group {gid}")
            out[r.file_id] = r
        return out
    except Corrupt:
        raise
    except Exception as e:
        raise Corrupt(f"record group {gid} is damaged: {e}") from None


_ABSENT = object()      # in Groups' undo log: the record was not there


class Groups(ThreadDirty):
    """Read and write record groups. Decoded groups are cached by content hash; a write
    transaction changes groups in `dirty` and writes each once, at `flush`."""

    def __init__(self, table, cache_entries: int = limits.GROUP_CACHE, refs: bool = False,
                 packed: bool = False):
        """refs: groups written at the compaction level store facts against each other
        (format 5); packed: groups are written in format 7's layout."""
        super().__init__()
        self.table, self.refs, self.packed = table, refs, packed
        self._cache = FrameCache(cache_entries)

    def release(self) -> None:
        """Drop the decoded groups kept (and the facts columns unpacked)."""
        self._cache.clear()
        FactsColumn._unpacked.clear()

    def load(self, txn, gid: int) -> dict[int, Record]:
        d = self.dirty.get(gid)
        if d is not None:
            return d
        frame = self.table.get(txn, _KEY.pack(gid))
        if frame is None:
            return {}
        hd = frames.header(frame, frames.GROUP, gid)
        return self._cache.get(hd.hash, lambda: decode_group(frame, gid))

    def get(self, txn, file_id: int) -> Optional[Record]:
        return self.load(txn, group_of(file_id)).get(file_id)

    def set(self, txn, r: Record) -> None:
        recs = self._changing(txn, group_of(r.file_id))
        self.undo.append((group_of(r.file_id), r.file_id, recs.get(r.file_id, _ABSENT)))
        recs[r.file_id] = r

    def drop(self, txn, file_id: int) -> Optional[Record]:
        recs = self._changing(txn, group_of(file_id))
        self.undo.append((group_of(file_id), file_id, recs.get(file_id, _ABSENT)))
        return recs.pop(file_id, None)

    def _changing(self, txn, gid: int) -> dict[int, Record]:
        d = self.dirty
        if gid not in d:
            d[gid] = dict(self.load(txn, gid))
            self.undo.append((gid, None, _ABSENT))
        return d[gid]

    def mark(self) -> int:
        """A point to roll back to (a copy of the changed groups, taken before every file
        of a batch, grew with the batch: 0.1-0.2 s of storing 5,000 chats)."""
        return len(self.undo)

    def rollback(self, m: int) -> None:
        d, undo = self.dirty, self.undo
        while len(undo) > m:
            gid, fid, prev = undo.pop()
            if fid is None:
                del d[gid]
            elif prev is _ABSENT:
                d[gid].pop(fid, None)
            else:
                d[gid][fid] = prev

    def flush(self, txn, level: int) -> None:
        for gid, recs in self.dirty.items():
            self.put(txn, recs, gid, level)
        self.dirty = {}

    def put(self, txn, recs: dict[int, Record], gid: int, level: int) -> None:
        key = _KEY.pack(gid)
        if recs:
            frame = encode_group(gid, recs, level, self.refs and level >= limits.LEVEL_COMPACT,
                                 self.packed)
            self.table.put(txn, key, frame)
            # the next read of this group needs no decode
            self._cache.put(frames.header(frame, frames.GROUP, gid).hash, dict(recs))
        else:
            self.table.delete(txn, key)

    def all_ids(self, txn):
        for k in self.table.cursor(txn).iternext(keys=True, values=False):
            yield _KEY.unpack(k)[0]
