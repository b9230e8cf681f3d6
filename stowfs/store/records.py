"""Per-file records, packed GROUP_FILES to a compressed group (as squashfs packs its
inode table): everything `stat`, `ls -l` and a read need, with no content hash per
piece: the content is addressed by stream position.

Stored form (database `groups`): key u64be group id (= file id >> GROUP_BITS), value
frame(tag GROUP, group id, payload = msgpack list of records). A record is a msgpack
list:

    [file id, size, mtime_ns, mode, format, application, model, [models],
     day, error, messages, conversations, {facts}, checksum, extents]

stored column by column (all file ids, as deltas, then all sizes, ...). The name is not
in the record: it is in the name table, the only way to a record (a record found by
id gets its name from there).

- checksum: BLAKE2b-32 of the file's bytes (verify rebuilds every file against it);
- extents: uvarint count, then per extent zigzag(position - end of the previous) and
  length, as uvarints: a file stored in one piece costs three or four bytes.

A read reaches a record through its name; the record holds its id, the group frame
its group id, and both frames are hash-checked, so a damaged table fails loudly.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Optional

from .. import limits
from ..errors import Corrupt
from ..packing import get_uvarint, pack, put_uvarint, unpack
from . import frames
from .tables import FrameCache, ThreadDirty

_KEY = struct.Struct(">Q")


CHECKSUM_SIZE = 4


def checksum(data) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()


def encode_extents(extents: list[tuple[int, int]], prev: int = 0) -> bytes:
    """prev: the position the first extent is relative to (the end of the previous
    record's last extent: files stored one after the other then cost a zero)."""
    out = bytearray()
    put_uvarint(out, len(extents))
    for pos, length in extents:
        d = pos - prev
        put_uvarint(out, (d << 1) if d >= 0 else ((-d << 1) - 1))
        put_uvarint(out, length)
        prev = pos + length
    return bytes(out)


def decode_extents(buf: bytes, prev: int = 0) -> list[tuple[int, int]]:
    n, p = get_uvarint(buf, 0)
    out = []
    for _ in range(n):
        z, p = get_uvarint(buf, p)
        length, p = get_uvarint(buf, p)
        pos = prev + ((z >> 1) if not z & 1 else -((z + 1) >> 1))
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
    was two thirds of storing a file (12 ms a file in a group of 500)."""
    __slots__ = ("file_id", "name", "size", "mtime_ns", "mode", "format", "application", "model",
                 "models", "day", "error", "messages", "conversations", "facts", "checksum",
                 "_ext", "_flat", "_enc")
    FIELDS = ("file_id", "name", "size", "mtime_ns", "mode", "format", "application", "model",
              "models", "day", "error", "messages", "conversations", "facts", "checksum")
    STORED = FIELDS[:1] + FIELDS[2:]        # the name lives in the name table only

    def __init__(self, file_id, name, size, mtime_ns, mode, format, application, model, models,
                 day, error, messages, conversations, facts, checksum, extents=None):
        self.file_id, self.name, self.size, self.mtime_ns, self.mode = file_id, name, size, mtime_ns, mode
        self.format, self.application, self.model, self.models = format, application, model, models
        self.day, self.error, self.messages, self.conversations = day, error, messages, conversations
        self.facts, self.checksum = facts, checksum
        self._ext = extents if extents is not None else []
        self._flat: Optional[dict] = None                # flat_facts()
        self._enc: Optional[tuple[int, bytes]] = None    # (prev, encode_extents(extents, prev))

    @property
    def extents(self) -> list:
        return self._ext

    def replace(self, **kw) -> "Record":
        d = {f: getattr(self, f) for f in self.FIELDS}
        d.update(kw)
        d.setdefault("extents", self._ext)
        return Record(**d)

    def to_list(self) -> list:
        return [getattr(self, f) for f in self.STORED] + [None]   # extents: encode_group

    def named(self, name: str) -> "Record":
        return self.replace(name=name)

    def flat_facts(self) -> dict:
        if self._flat is None:
            fl: dict = {}
            _flatten(self.facts or {}, "", fl)
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


def _facts_columns(flats: list) -> list:
    """The facts column, from each record's flattened facts, as [paths, [column per
    path], [absent per path]]: each fact of every record next to the same fact of the
    others (sizes next to sizes) compresses far better than maps."""
    paths = sorted({p for fl in flats for p in fl})
    missing = [p for p in paths]                  # a record without a path: None, and listed
    return [paths, [[fl.get(p) for fl in flats] for p in paths],
            [[i for i, fl in enumerate(flats) if p not in fl] for p in missing]]


def _facts_rows(col: list, n: int) -> list:
    """[(facts, flattened facts)] of each record, from the facts column."""
    paths, values, absent = col
    flats = [dict() for _ in range(n)]
    for p, vals, gone in zip(paths, values, absent):
        gone = set(gone)
        for i, v in enumerate(vals):
            if i not in gone:
                flats[i][p] = v
    return [(_unflatten(fl), fl) for fl in flats]


def encode_group(gid: int, recs: dict[int, Record], level: int) -> bytes:
    """Columns, not rows: each field of every record together (names next to names,
    sizes next to sizes) compresses far better. File ids are stored as deltas."""
    order = [recs[k] for k in sorted(recs)]
    rows = [r.to_list() for r in order]
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(15)]
    ids = cols[0]
    cols[0] = [ids[0]] + [b - a for a, b in zip(ids, ids[1:])] if ids else []
    cols[12] = _facts_columns([r.flat_facts() for r in order])
    ext, prev = [], 0
    for r in order:
        ext.append(r.encoded_extents(prev))
        e = r.extents
        if e:
            prev = e[-1][0] + e[-1][1]
    cols[14] = ext
    return frames.encode(frames.GROUP, gid, pack(cols), level)


def decode_group(frame, gid: int) -> dict[int, Record]:
    _, raw = frames.decode(frame, frames.GROUP, gid)
    try:
        cols = unpack(raw)
        if not isinstance(cols, list) or len(cols) != 15:
            raise ValueError("bad columns")
        cols[12] = _facts_rows(cols[12], len(cols[0]))
        if len({len(c) for c in cols}) != 1:
            raise ValueError("columns differ in length")
        ids, acc = [], 0
        for i, d in enumerate(cols[0]):
            acc = d if i == 0 else acc + d
            ids.append(acc)
        cols[0] = ids
        out, prev = {}, 0
        for v in zip(*cols):
            v = list(v)
            ext = decode_extents(v[14], prev)
            facts, flat = v[12]
            v[12] = facts
            r = Record(v[0], None, *v[1:14], extents=ext)
            r._flat, r._enc = flat, (prev, bytes(v[14]))
            if ext:
                prev = ext[-1][0] + ext[-1][1]
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

    def __init__(self, db, cache_entries: int = limits.GROUP_CACHE):
        super().__init__()
        self.db = db
        self._cache = FrameCache(cache_entries)

    def load(self, txn, gid: int) -> dict[int, Record]:
        d = self.dirty.get(gid)
        if d is not None:
            return d
        frame = txn.get(_KEY.pack(gid), db=self.db)
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
            frame = encode_group(gid, recs, level)
            txn.put(key, frame, db=self.db)
            # the next read of this group needs no decode
            self._cache.put(frames.header(frame, frames.GROUP, gid).hash, dict(recs))
        else:
            txn.delete(key, db=self.db)

    def all_ids(self, txn):
        cur = txn.cursor(db=self.db)
        for k, _ in cur:
            yield _KEY.unpack(k)[0]
