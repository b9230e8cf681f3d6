"""The store: one LMDB environment holding a content stream cut into compressed blocks
(blocks.py), per-file records packed in groups (records.py), a packed name table
(names.py) and a dedup index of content-defined anchors (anchors.py).

`Store` is the thin facade the CLI, the mount and the tests use; each module behind it
owns one job. The stored format is written down in FORMAT.md beside this file.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .. import limits
from ..conversation import PARTIAL
from ..errors import Corrupt, Exists, InvalidName, NotFound, StoreFull, StowError
from ..facts import views_fact
from . import blocks, keyspace, records
from .anchors import Index
from .appender import Appender
from .ingest import Prepared, Writer, prepare, prepare_large, prepare_many, prepare_path
from .lmdbenv import AUX_PREFIX, Env, from_u64, meta_get, meta_put, u64
from .names import Names
from .records import Groups, Record, group_of

FORMAT_VERSION = 7
DEFAULT_MODE = 0o644
log = logging.getLogger(__name__)


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
    checksum: str
    messages: int = 0
    conversations: int = 0
    facts: dict = field(default_factory=dict, compare=False)
    mtime_ns: int = 0
    mode: int = DEFAULT_MODE

    def view_size(self, view: str) -> Optional[int]:
        """The stored size of a view, or None when it must be measured (unknown view,
        or stored by an older renderer)."""
        if view == "original":
            return self.size
        from .. import views
        v = views.VIEWS.get(view)
        got = views_fact(self.facts).get(view)
        if v is None or not got or got[0] != v.version:
            return None
        return got[1]


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
    unchanged: bool = False


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName("empty name")
    name = name.strip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise InvalidName(f"invalid name: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"name is not valid UTF-8: {name!r}") from None
    if len(name.encode("utf-8")) > limits.MAX_NAME_BYTES:
        raise InvalidName(f"name too long ({len(name.encode())} bytes, at most "
                          f"{limits.MAX_NAME_BYTES}): {name[:60]!r}...")
    for p in parts:
        if len(p.encode("utf-8")) > limits.MAX_NAME_COMPONENT:
            raise InvalidName(f"name component too long ({len(p.encode())} bytes, at most "
                              f"{limits.MAX_NAME_COMPONENT}): {p[:60]!r}...")
    return name


def _info(r: Record, name: Optional[str] = None) -> FileInfo:
    """The FileInfo of r, named name (else r.name)."""
    facts = r.lazy_facts()      # made from the group's packed column when looked into
    tv = views_fact(facts).get("text")
    return FileInfo(name=r.name if name is None else name, file_id=r.file_id, size=r.size, text_size=tv[1] if tv else 0,
                    format=r.format, application=r.application, model=r.model,
                    models=tuple(r.models or ()), day=r.day, mtime=r.mtime_ns / 1e9,
                    error=r.error, checksum=r.checksum.hex(), messages=r.messages,
                    conversations=r.conversations, facts=facts, mtime_ns=r.mtime_ns, mode=r.mode)


def _stored(r) -> int:
    v = (r.facts or {}).get("stored")
    return v if isinstance(v, int) else 0


def _join(a: list, b: list) -> list:
    """Extents a then b, merged where they touch."""
    out = [tuple(e) for e in a]
    for pos, n in b:
        if out and out[-1][0] + out[-1][1] == pos:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((pos, n))
    return out


def _counters0() -> dict:
    return {"files": 0, "bytes": 0, "conversations": 0, "messages": 0, "unparsed": 0,
            "stream_bytes": 0, "dedup_bytes": 0}


def _now_ns() -> int:
    return time.time_ns()


class Store:
    def __init__(self, path, *, readonly: bool = False, create: bool = True,
                 cache_bytes: int = limits.BLOCK_CACHE_BYTES, block_size: Optional[int] = None,
                 level: Optional[int] = None, **_legacy):
        """block_size: positions per content block for a new store (default
        limits.BLOCK_SIZE). level: zstd level of blocks written by ingest."""
        self.path = Path(path)
        self.readonly = readonly
        self._background = threading.Lock()    # held by a prefetch while it reads; close waits
        self._closed = False
        self._prefetched = None         # the generation a listing last asked a prefetch at
        from .upgrade import open_tables, upgrade_if_needed
        if not readonly:
            upgrade_if_needed(self.path)
        self._env = Env(self.path, readonly, create)
        try:
            # the format the tables are in: 4, or 3 until an open can convert it (upgrade.py)
            self.stored_format = open_tables(self._env, None if readonly else
                                             lambda txn: self._create(txn, block_size))
            self.env = self._env.env
            self._tables = self._env.tables
            self._meta, self._blocks = self._tables["meta"], self._tables["blocks"]
            self._init_format()
        except BaseException:
            self._env.close()
            raise
        self.block_size = self._read(lambda txn: meta_get(txn, self._meta, b"config"))["block_size"]
        self.level = limits.LEVEL_INGEST if level is None else level
        self._preparer = None
        self._lean = False                    # defer_block_merges()
        # room for two whole blocks and their frames once reads need it: a file whose
        # repeats were stored once in an earlier block reads from two blocks at a time, and
        # a cache that holds only one decodes them from their starts by turns (cold cat of
        # chats with 32 MiB: 424 MB decoded, 1.9 s; two blocks: 32 MB, 0.6 s); until then
        # one (DecodedCache's floor)
        one = self.block_size + (self.block_size >> 2)
        self.cache = blocks.DecodedCache(max(cache_bytes, limits.MIN_DECODED_BLOCKS * one), floor=one)
        self._bind_tables()
        self._wlock = threading.RLock()
        self._changed = False                 # the current write transaction changed something
        self._not_files: set = set()          # _check_place: parents known not to be files
        self._derived = (None, None)          # (generation, {key: {value: [ids]}})

    # ----------------------------------------------------------------- plumbing
    def _create(self, txn, block_size: Optional[int]) -> None:
        """A new store's meta, in the transaction that creates its databases."""
        meta = self._env.tables["meta"]
        if meta.get(txn, b"format") is None:
            meta.put(txn, b"format", u64(FORMAT_VERSION))
            meta_put(txn, meta, b"config", {"block_size": block_size or limits.BLOCK_SIZE,
                                           "created": int(time.time())})
            meta_put(txn, meta, b"counters", _counters0())
            meta_put(txn, meta, b"next_file", 1)

    def _init_format(self) -> None:
        def check(txn):
            v = self._meta.get(txn, b"format")
            if v is None:
                raise NotFound(f"no store at {self.path}")
            n = from_u64(v)
            if n > FORMAT_VERSION:
                raise StowError(f"store format {n} is newer than this stowfs ({FORMAT_VERSION})")
            if n != self.stored_format:
                raise Corrupt(f"store says format {n}, its tables are format {self.stored_format}'s")
            cfg = meta_get(txn, self._meta, b"config")
            if not isinstance(cfg, dict) or not isinstance(cfg.get("block_size"), int) \
                    or not 1 << 16 <= cfg["block_size"] <= limits.MAX_FRAME_RAW:
                raise Corrupt("store configuration is missing or damaged")
        self._env.read(check)

    def _read(self, fn):
        return self._env.read(fn)

    def close(self) -> None:
        with self._background:          # a prefetch reading now ends first; none starts after
            self._closed = True
        if self._preparer is not None:
            self._preparer.close()
            self._preparer = None
        self._env.close()
        self.env = None

    def drop_mapped(self) -> None:
        """Give back the store file's pages this process has mapped (lmdbenv.Env.drop_mapped):
        a long-running reader calls it now and then."""
        self._env.drop_mapped()

    def release_caches(self) -> None:
        """Let go of the decoded blocks this process keeps (two 16 MiB blocks and more
        after a long read) and of its decoded record groups and name pages (~0.5 MB a
        group): a long-running reader calls it when it has been idle. The next read
        decodes again."""
        self.cache.clear()
        self._groups.release()
        self._names.release()

    def prepare_in_child(self, idle: float = 20.0) -> None:
        """put_file() from now on parses and takes facts in a child process that exits
        after `idle` seconds without work (a long-running process stays small)."""
        from .pipeline import ChildPreparer
        self._preparer = ChildPreparer(idle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def generation(self) -> int:
        return self._read(lambda txn: meta_get(txn, self._meta, b"generation", 0))

    def disk_bytes(self) -> int:
        return self._env.disk_bytes()

    def defer_block_merges(self) -> None:
        """From now on this process holds only what it appended since its last save,
        never seals the open block, and leaves a block that fills up as its fragments,
        for the background compaction to merge (see appender.py: a lean appender). For
        the mount, which runs for days: it no longer holds the open block (up to 16 MiB)
        nor compresses a whole block itself."""
        with self._wlock:
            self._lean = True
            self._writer = None

    def decode_blocks_ahead(self) -> None:
        """From now on a read of a part of a file that starts a block checked as stored
        has the rest of the block decoded in steps on the decode-ahead thread
        (blocks.StreamReader.ahead_on_read). For the mount, whose READs of a large file
        go on through the block (the kernel's read-ahead): they find their bytes decoded
        or wait only for the step that reaches them. Not for a command that reads and
        exits (it would wait for the whole block at exit)."""
        self._reader.ahead_on_read = True
        # the decode-ahead thread starts now, not at the first listing's prefetch, which
        # waited ~2 ms for it to start while the kernel waited for the listing
        blocks.in_background(lambda: None)

    @property
    def stored_check(self) -> bool:
        """Blocks are written checked as stored (format 6: frames.ZSTD_STORED_CHECK); a
        store of an older format, which another process of older code may have open, is
        written as that format."""
        return self.stored_format >= 6

    def writer(self) -> Writer:
        if self._writer is None:
            app = Appender(self._blocks, self._meta, self.block_size, self.level, lean=self._lean,
                           stored_check=self.stored_check)
            self._writer = Writer(app, Index(self._tables["anchors"], planes=self.stored_format >= 5), self._reader)
        return self._writer

    def _write(self, fn, *, stream: bool = False, seal=False, alone: bool = False):
        """fn(txn) in one write transaction; with stream, the content writer is brought
        in step first and saves what fn appended before the commit (seal: a bool, or a
        function asked once fn has run, for a batch that learns only then whether it is
        the last); alone: fn stores one file and may write filled blocks as it goes
        (bounded memory)."""
        with self._wlock:
            if stream:
                self.writer().own_txn = alone
            def work(txn):
                self._groups.dirty = {}
                self._names.dirty = {}
                self._not_files = set()
                try:
                    if not stream:
                        out = fn(txn)
                    else:
                        w = self.writer()
                        w.begin(txn)
                        mark = w.mark()
                        try:
                            out = fn(txn)
                            self._changed = self._changed or w.dirty()
                            last = seal() if callable(seal) else seal
                            w.save(txn, wait=last, seal=last)
                        except BaseException:
                            w.rollback(mark)
                            raise
                    self._changed = self._changed or bool(self._groups.dirty or self._names.dirty)
                    self._groups.flush(txn, limits.LEVEL_META_LIVE)
                    self._names.flush(txn, limits.LEVEL_META_LIVE)
                    return out
                finally:
                    self._groups.dirty = {}
                    self._names.dirty = {}
            self._changed = not stream
            try:
                return self._env.write(work, changed=lambda: self._changed)
            except BaseException:
                if stream and self._writer is not None:
                    self._writer.app.forget()
                raise
            finally:
                if self._writer is not None:
                    self._writer.own_txn = False

    # ----------------------------------------------------------------- derived data
    def aux_read(self, name: str, fn):
        """fn(txn, db) in a read transaction over the named database `aux:<name>`, where
        another module keeps data derived from the stored files (the search index).
        The store never reads it, and it must be rebuildable from the files. Returns
        None, without calling fn, when the database does not exist yet."""
        key = AUX_PREFIX + name.encode()
        if self._env.open_optional(key, create=False) is None:
            return None
        return self._read(lambda txn: fn(txn, self._env.db[key]))   # (the handle of now)

    def aux_write(self, name: str, fn):
        """fn(txn, db) in one write transaction over `aux:<name>` (created if missing)."""
        key = AUX_PREFIX + name.encode()
        self._env.open_optional(key, create=True)
        return self._write(lambda txn: fn(txn, self._env.db[key]))

    # ----------------------------------------------------------------- records
    def _record(self, txn, name: str) -> Record:
        fid = self._names.lookup(txn, name)
        if fid is None:
            raise NotFound(f"no such file: {name}")
        r = self._groups.get(txn, fid)
        if r is None or r.file_id != fid:
            raise Corrupt(f"{name}: its record ({fid}) is missing; the name table or the "
                          "record group is damaged")
        return r.named(name)

    def _version(self, txn, name: str, fid: int, groups: Optional[dict] = None) -> Record:
        """The record of file fid, a version of name, found without the name lookup;
        NotFound once that version is gone. groups: record groups already loaded in this
        transaction (kept across calls: many files read at once)."""
        r = self._loaded(txn, fid, groups)
        if r is None or r.file_id != fid:
            raise NotFound(f"{name}: this version (file {fid}) is no longer stored")
        return r

    def _loaded(self, txn, fid: int, groups: Optional[dict] = None) -> Optional[Record]:
        """File fid's record. groups: the record groups loaded in this transaction so far
        (kept across calls: a listing, many files read at once), each loaded once."""
        gid = group_of(fid)
        recs = groups.get(gid) if groups is not None else None
        if recs is None:
            recs = self._groups.load(txn, gid)
            if groups is not None:
                groups[gid] = recs
        return recs.get(fid)

    def _record_by_id(self, txn, fid: int) -> Optional[Record]:
        r = self._groups.get(txn, fid)
        if r is None:
            return None
        name = self._id_names(txn).get(fid)
        if name is None:
            raise Corrupt(f"record {fid} has no name in the name table")
        return r.named(name)

    def _id_names(self, txn) -> dict:
        """{file id: name}, from the name table, kept until the store changes."""
        gen = meta_get(txn, self._meta, b"generation", 0)
        got = getattr(self, "_idn", None)
        if got is None or got[0] != gen:
            got = (gen, {fid: n for n, fid in self._names.iterate(txn)})
            self._idn = got
        return got[1]

    def _check_place(self, txn, name: str) -> None:
        """name must not be a directory, and no parent of it may be a file."""
        below = self._names.first_from(txn, name + "/")
        if below is not None and below.startswith(name + "/"):
            raise Exists(f"{name} is a directory")
        parts = name.split("/")
        seen = self._not_files      # parents checked in this write transaction
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                continue
            if self._names.lookup(txn, parent) is not None:
                raise Exists(f"{parent} is a file, so {name} cannot be stored")
            # stays true in this transaction: a file of this name would be a directory
            # with names below it, refused above
            seen.add(parent)

    def _counters(self, txn) -> dict:
        c = _counters0()
        c.update(meta_get(txn, self._meta, b"counters", {}))
        return c

    def _count(self, c: dict, r: Record, sign: int) -> None:
        c["files"] += sign
        c["bytes"] += sign * r.size
        c["conversations"] += sign * r.conversations
        c["messages"] += sign * r.messages
        c["unparsed"] += sign * (1 if r.error and not r.error.startswith(PARTIAL) else 0)

    def _put_record(self, txn, r: Record) -> None:
        self._groups.set(txn, r)

    def _drop_record(self, txn, fid: int) -> Optional[Record]:
        return self._groups.drop(txn, fid)

    def _same_bytes(self, txn, r: Record, data: Optional[bytes], path: Optional[str]) -> bool:
        """True when the stored file r holds exactly these bytes (compared, not hashed);
        with data longer than r, whether data starts with r's bytes."""
        off, step = 0, 64 << 10        # small first: a replaced file differs early
        f = open(path, "rb") if data is None else None
        try:
            for pos, n in r.extents:
                while n > 0:
                    take = min(n, step)
                    step = min(step * 4, limits.READ_WINDOW)
                    stored = self.writer().read(txn, pos, take)
                    mine = data[off:off + take] if f is None else f.read(take)
                    if stored != mine:
                        return False
                    off, pos, n = off + take, pos + take, n - take
            return True
        finally:
            if f is not None:
                f.close()

    def _apply(self, txn, p: Prepared, data: Optional[bytes], path: Optional[str]) -> PutResult:
        name = p.name
        self._check_place(txn, name)
        try:
            old = self._record(txn, name)
        except NotFound:
            old = None
        c = self._counters(txn)
        if old is not None and old.size == p.size and old.checksum == p.checksum \
                and self._same_bytes(txn, old, data, path):
            if (old.mtime_ns, old.mode) != (p.mtime_ns, p.mode):
                self._put_record(txn, old.replace(mtime_ns=p.mtime_ns, mode=p.mode))
            return PutResult(name, old.file_id, p.size, 0, p.size, old.format, old.error, True, True)
        w = self.writer()
        grown = data is not None and old is not None and 0 < old.size < p.size \
            and self._same_bytes(txn, old, data, None)
        if grown:
            # the file grew (an append, a session that went on): keep what it had
            extents, new, dup = w.store_bytes(txn, memoryview(data)[old.size:])
            extents = _join(old.extents, extents)
            dup += old.size
        elif data is not None:
            extents, new, dup = w.store_bytes(txn, data, p.anchors)
        else:
            extents, new, dup = w.store_file(txn, path, p.size)
        if sum(n for _, n in extents) != p.size:
            raise StowError(f"{name}: stored {sum(n for _, n in extents)} bytes of {p.size}")
        fid = meta_get(txn, self._meta, b"next_file", 1)
        meta_put(txn, self._meta, b"next_file", fid + 1)
        m = p.meta
        # what the file brought to the stream (a grown file: with what it had), for the
        # attribution of disk bytes by `stowfs query`
        facts = dict(p.facts, stored=new + (_stored(old) if grown else 0))
        r = Record(fid, name, p.size, p.mtime_ns, p.mode, m["format"], m["application"], m["model"],
                   m["models"], m["day"], m["error"], m["messages"], m["conversations"], facts,
                   p.checksum, list(extents))
        if old is not None:
            self._drop_record(txn, old.file_id)
            self._count(c, old, -1)
        self._put_record(txn, r)
        self._names.put(txn, name, fid)
        self._count(c, r, +1)
        c["stream_bytes"] += new
        c["dedup_bytes"] += dup
        meta_put(txn, self._meta, b"counters", c)
        return PutResult(name, fid, p.size, new, dup, r.format, r.error, old is not None)

    # ----------------------------------------------------------------- writing
    @staticmethod
    def _times(mtime, mtime_ns) -> int:
        if mtime_ns is not None:
            return int(mtime_ns)
        if mtime is not None:
            return int(round(float(mtime) * 1e9))
        return _now_ns()

    def put(self, name: str, data: bytes, *, mtime: Optional[float] = None,
            mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> PutResult:
        name = check_name(name)
        data = bytes(data)
        t = self._times(mtime, mtime_ns)
        mode = DEFAULT_MODE if mode is None else stat_mod.S_IMODE(mode)
        if len(data) <= limits.MAX_PARSE_BYTES:
            p = prepare(name, data, t, mode)
        else:
            from .ingest import describe, unparsed
            p = Prepared(name, len(data), t, mode, describe(unparsed(len(data))), {},
                         records.checksum(data))
        return self._write(lambda txn: self._apply(txn, p, data, None), stream=True, alone=True)

    def put_file(self, name: str, src, *, mtime: Optional[float] = None,
                 mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> PutResult:
        name = check_name(name)
        try:
            st = os.stat(src)
            t = self._times(mtime, mtime_ns if mtime_ns is not None or mtime is not None else st.st_mtime_ns)
            mode = stat_mod.S_IMODE(st.st_mode) if mode is None else stat_mod.S_IMODE(mode)
            if self._preparer is None:
                p, data = prepare_path(name, str(src), t, mode)
            else:
                p, data = self._preparer.prepare(name, str(src), t, mode), None
                if p.size <= limits.MAX_PARSE_BYTES:
                    with open(src, "rb") as f:
                        data = f.read()
                    if len(data) != p.size or records.checksum(data) != p.checksum:
                        # changed between the child's read and ours (a writer appending):
                        # read and described here, in one go
                        p, data = prepare_path(name, str(src), t, mode)
        except OSError as e:
            raise NotFound(f"cannot read {src}: {e.strerror}") from None
        if data is not None and len(data) != p.size:
            raise StowError(f"{src} changed while it was read")
        return self._write(lambda txn: self._apply(txn, p, data, None if data is not None else str(src)),
                           stream=True, alone=True)

    def put_many(self, items, *, workers: Optional[int] = None, batch_files: int = 4096,
                 batch_bytes: int = limits.BATCH_BYTES):
        """Store many files: items are (name, source path, mtime or None[, mode]).
        Yields (name, PutResult or StowError) in order.

        Files are prepared (parsed, facts taken) in `workers` processes while this one
        stores them; they are committed in batches, one fsync per batch. Each file is
        its own child transaction: one that fails leaves nothing behind. The open block
        is sealed into one frame at the ingest level at the end."""
        from .pipeline import Batches, prepared_stream
        batches = Batches(prepared_stream(list(items), workers), batch_files, batch_bytes)
        while True:
            big = batches.next_alone()
            if big is not None:     # a large file goes in a transaction of its own
                name, path, p = big
                try:
                    yield name, self._write(lambda txn: self._apply(txn, p, None, path),
                                            stream=True, alone=True)
                except StoreFull:
                    raise
                except StowError as e:
                    yield name, e
                continue
            yield from self._commit_batch(batches)
            if batches.ended:
                break
        # sealing rewrote the open block's fragments as one frame, leaving their pages
        # free: the caller gives them back with reclaim() once it has written all it will
        # (`stowfs ingest` does, after the search index)

    def _commit_batch(self, batches):
        """The next batch in one write transaction, each file stored as it arrives from
        the workers: storing overlaps preparing (with the whole batch prepared first, the
        workers sat idle while it was stored: chats 4.2 s of 10 s). The last batch seals."""
        def work(txn):
            out = []
            w = self.writer()
            for name, path, p in batches.rows():
                if not isinstance(p, BaseException):
                    try:
                        check_name(name)
                    except StowError as e:
                        p = e
                if isinstance(p, BaseException):
                    out.append((name, p))
                    continue
                mark, gmark, nmark = w.mark(), self._groups.mark(), self._names.mark()
                try:
                    with self.env.begin(write=True, parent=txn) as child:
                        data = None
                        if p.size <= limits.MAX_PARSE_BYTES:
                            with open(path, "rb") as f:
                                data = f.read()
                            if len(data) != p.size or records.checksum(data) != p.checksum:
                                raise StowError(f"{path} changed while it was being stored")
                        out.append((name, self._apply(child, p, data, None if data is not None else path)))
                except StowError as e:
                    w.rollback(mark)
                    self._groups.rollback(gmark)
                    self._names.rollback(nmark)
                    out.append((name, e))
                except OSError as e:
                    w.rollback(mark)
                    self._groups.rollback(gmark)
                    self._names.rollback(nmark)
                    out.append((name, StowError(f"cannot read {path}: {e.strerror}")))
            return out
        out = self._write(work, stream=True, seal=lambda: batches.ended)
        batches.committed()
        return out

    def free_share(self) -> float:
        """The share of the LMDB file's pages that are free (what reclaim gives back)."""
        return self._env.free_share()

    def reclaim(self, slack: float = limits.RECLAIM_SLACK) -> bool:
        """Give the LMDB file's free pages back to the disk (a compacting copy that takes
        the file's place), when they are more than `slack` of it and no other process
        has the store open. True if it did."""
        if self.readonly:
            return False
        if self._env.free_share() < slack:
            return False
        with self._wlock:
            return self._env.compact_copy(on_swap=self._reopen_handles)

    def _reopen_handles(self) -> None:
        self.env = self._env.env
        self._tables = self._env.tables
        self._meta, self._blocks = self._tables["meta"], self._tables["blocks"]
        self.cache.clear()
        self._bind_tables()

    def _bind_tables(self) -> None:
        """The readers and writers over the tables (again after a compacting copy swapped
        the file: the handles are new)."""
        before = getattr(self, "_reader", None)
        self._reader = blocks.StreamReader(self._blocks, self.block_size, self.cache, self._env.drop_mapped_here)
        self._reader.ahead_on_read = before is not None and before.ahead_on_read
        self._groups = Groups(self._tables["groups"], refs=self.stored_format >= 5,
                              packed=self.stored_format >= 7)
        self._names = Names(self._tables["names"])
        self._writer: Optional[Writer] = None

    def seal(self) -> None:
        """Rewrite the open block's fragments as one frame at the ingest level (end of
        an ingest: what a plain `ingest` leaves is close to what compaction gives)."""
        if self.readonly:
            return

        def work(txn):
            w = self.writer()
            w.app.save(txn, wait=True)
            if w.app.seal(txn):
                self._changed = True
        self._write(work, stream=True)

    def remove(self, name: str) -> None:
        name = check_name(name)

        def work(txn):
            r = self._record(txn, name)
            self._names.delete(txn, name)
            self._drop_record(txn, r.file_id)
            c = self._counters(txn)
            self._count(c, r, -1)
            meta_put(txn, self._meta, b"counters", c)
        self._write(work)

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        if old == new:
            return

        def work(txn):
            r = self._record(txn, old)
            self._check_place(txn, new)
            c = self._counters(txn)
            repl = self._names.lookup(txn, new)
            if repl is not None:
                gone = self._record(txn, new)
                self._drop_record(txn, gone.file_id)
                self._count(c, gone, -1)
            self._names.delete(txn, old)
            self._names.put(txn, new, r.file_id)
            self._put_record(txn, r.replace(name=new))
            meta_put(txn, self._meta, b"counters", c)
        self._write(work)

    def set_attributes(self, name: str, *, mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> FileInfo:
        """Change a stored file's mtime or permission bits (no content is touched)."""
        name = check_name(name)

        def work(txn):
            r = self._record(txn, name)
            r2 = r.replace(mtime_ns=r.mtime_ns if mtime_ns is None else int(mtime_ns),
                           mode=r.mode if mode is None else stat_mod.S_IMODE(mode))
            self._put_record(txn, r2)
            return _info(r2)
        return self._write(work)

    # ----------------------------------------------------------------- reading
    def info(self, name: str) -> FileInfo:
        name = check_name(name)
        return _info(self._read(lambda txn: self._record(txn, name)))

    def info_by_id(self, file_id: int) -> FileInfo:
        def work(txn):
            r = self._record_by_id(txn, file_id)
            if r is None:
                raise NotFound(f"no file with id {file_id}")
            return r
        return _info(self._read(work))

    def reader(self, name: str, view: str = "original", file_id: Optional[int] = None):
        """A reader of a view of name; with file_id, of that version of it, found by its
        record without the name lookup (the mount's open files: NotFound once that
        version is gone, whatever name now holds)."""
        name = check_name(name)
        if view != "original":
            from .. import views
            if view not in views.VIEWS:
                raise InvalidName(f"unknown view {view!r} (views: original, {', '.join(views.VIEWS)})")
        if file_id is None:
            rec = self._read(lambda txn: self._record(txn, name))
        else:
            rec = self._read(lambda txn: self._version(txn, name, file_id))
        r = FileReader(self, rec, name)
        if view == "original":
            return r
        return BytesReader(views.render(view, r.read(0, r.size), name))

    def read_files(self, files: list[tuple[str, int]]) -> list:
        """The whole bytes of each (name, file id): that version, as Store.reader(name,
        file_id=) reads it, all in one transaction (a fragment is found once for the
        files it holds). Each item is the bytes, or the StowError that file met (NotFound
        once that version is gone); one file's failure is not the others'."""
        def work(txn):
            out, found, groups = [], {}, {}
            for name, fid in files:
                try:
                    r = self._version(txn, name, fid, groups)
                    partly: list = []
                    data = b"".join(self._reader.read(txn, pos, n, found, partly=partly)
                                    for pos, n in r.extents)
                    if len(data) != r.size:
                        raise Corrupt(f"{name}: decoded {len(data)} bytes, expected {r.size}")
                    out.append(records.check_bytes(name, data, r.checksum) if partly else data)
                except StowError as e:
                    out.append(e)
            self._reader.decode_ahead(found)
            return out
        return self._env.read(work, buffers=True)

    def prefetch(self, file_id: int) -> None:
        """Begin decoding the block the file's bytes begin in, in the background, when no
        block is decoded yet: the kernel just listed a directory, and a reader going
        through it (`find | xargs cat` lists every directory before its first read)
        then finds the block decoded and checked, not waits ~30 ms for it. Once a
        generation: a store whose blocks are all too small to cache keeps its cache
        empty, and every listing decoded a record group in the background for nothing
        (a warm listing is meant to read no record)."""
        if self.cache.empty():
            gen = self.generation
            if gen != self._prefetched:
                self._prefetched = gen
                blocks.in_background(self._prefetch, file_id)

    def _prefetch(self, file_id: int) -> None:
        def work(txn):
            r = self._groups.get(txn, file_id)
            if r is not None and r.extents:
                self._reader.ahead_at(txn, r.extents[0][0])
        with self._background:
            if self._closed:            # unmounted meanwhile
                return
            try:
                self._env.read(work, buffers=True)
            except StowError as e:      # the read that needs it reports the damage
                log.debug("prefetch of file %d: %s", file_id, e)
            except Exception:           # a bug: said, not shared with any reader
                log.exception("prefetch of file %d failed", file_id)

    def get(self, name: str, view: str = "original") -> bytes:
        r = self.reader(name, view)
        return r.read(0, r.size)

    def view_size(self, info: FileInfo, view: str) -> int:
        got = info.view_size(view)
        return got if got is not None else len(self.get(info.name, view))

    def read_extents(self, extents, offset: int, size: int, ready: bool = False,
                     whole: bool = False, partly: Optional[list] = None) -> Optional[bytes]:
        """Bytes [offset, offset+size) of a file made of these extents. ready: only if
        the decoded-block cache holds them checked (else None; nothing is decoded): a
        read quick enough for a thread that must not wait. whole: only from fragments
        checked whole against their frame hash (a part of a file, which no file
        checksum covers: FileReader.read). partly: see StreamReader.read."""
        def work(txn):
            parts, found = [], {}       # a fragment found once for the extents it holds
            pos, want = 0, size
            for spos, n in extents:
                if want <= 0:
                    break
                if offset + size - want >= pos + n:
                    pos += n
                    continue
                a = max(offset + size - want - pos, 0)
                take = min(n - a, want)
                parts.append(self._reader.read(txn, spos + a, take, found, ready, whole, partly))
                want -= take
                pos += n
            return parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            return self._env.read(work, buffers=True)
        except blocks.NotReady:
            return None

    def iter_files(self, prefix: str = "") -> Iterator[FileInfo]:
        """Every stored file whose name starts with prefix, sorted by name, a batch at a
        time (no transaction is held between batches)."""
        start = prefix
        first = True
        while True:
            def batch(txn, start=start, first=first):
                out = []
                for name, fid in self._names.iterate(txn, start):
                    if not name.startswith(prefix):
                        break
                    if not first and name == start:
                        continue
                    r = self._groups.get(txn, fid)
                    if r is None:
                        raise Corrupt(f"{name}: the name table and the records disagree")
                    out.append(_info(r, name))
                    if len(out) >= 256:
                        break
                return out
            rows = self._read(batch)
            yield from rows
            if len(rows) < 256:
                return
            start, first = rows[-1].name, False

    def listdir(self, dirpath: str = "", reuse=None,
                below: Optional[dict] = None) -> list[tuple[str, Optional[FileInfo]]]:
        """(name, FileInfo) of each file directly in dirpath, (name, None) of each
        directory, in name order. reuse(full name, file id), when given, may return what
        the caller already holds of that file as current: it stands in the place of the
        FileInfo, and the file's record is not read (a warm `find` lists every directory
        again: the mount then decodes no record group). below, when given, gets each
        directory's count of files at any depth (the names under it are gone through
        anyway): no more than its own listing will hold."""
        prefix = (dirpath.strip("/") + "/") if dirpath.strip("/") else ""

        def work(txn):
            out, last_dir, groups = [], None, {}
            if below is not None:
                below.clear()
            for name, fid in self._names.iterate(txn, prefix):
                if not name.startswith(prefix):
                    break
                rest = name[len(prefix):]
                slash = rest.find("/")
                if slash >= 0:
                    child = rest[:slash]
                    if child != last_dir:
                        out.append((child, None))
                        last_dir = child
                    if below is not None:
                        below[child] = below.get(child, 0) + 1
                    continue
                held = reuse(name, fid) if reuse is not None else None
                if held is not None:
                    out.append((rest, held))
                    continue
                r = self._loaded(txn, fid, groups)     # a group loaded once a listing
                if r is None:
                    raise Corrupt(f"{name}: the name table and the records disagree")
                out.append((rest, _info(r, name)))
            return out
        return self._read(work)

    def is_dir(self, path: str) -> bool:
        p = path.strip("/")
        if not p:
            return True

        def work(txn):
            for name, _ in self._names.iterate(txn, p + "/"):
                return name.startswith(p + "/")
            return False
        return self._read(work)

    def _index(self) -> dict:
        """{key: {value: [file ids]}} for model, app, day; derived from the records and
        kept until the store changes."""
        gen = self.generation
        if self._derived[0] == gen:
            return self._derived[1]
        idx: dict = {"model": {}, "app": {}, "day": {}}

        def work(txn):
            for gid in list(self._groups.all_ids(txn)):
                for r in self._groups.load(txn, gid).values():
                    for m in (r.models or ([r.model] if r.model else [])):
                        idx["model"].setdefault(m, []).append(r.file_id)
                    if r.application:
                        idx["app"].setdefault(r.application, []).append(r.file_id)
                    if r.day:
                        idx["day"].setdefault(r.day, []).append(r.file_id)
        self._read(work)
        self._derived = (gen, idx)
        return idx

    def index_values(self, key: str) -> list[str]:
        return sorted(self._index().get(key, {}))

    def index_files(self, key: str, value: str) -> list[FileInfo]:
        ids = self._index().get(key, {}).get(value, [])
        out = []
        for fid in ids:
            try:
                out.append(self.info_by_id(fid))
            except NotFound:
                pass
        return sorted(out, key=lambda i: i.name)

    def iter_records(self) -> Iterator[Record]:
        """Every record, group by group (for maintenance and reports)."""
        gids = self._read(lambda txn: list(self._groups.all_ids(txn)))
        for gid in gids:
            recs = self._read(lambda txn, gid=gid: self._groups.load(txn, gid))
            yield from (recs[k] for k in sorted(recs))

    # ----------------------------------------------------------------- stats
    def table_bytes(self) -> dict:
        """Bytes of LMDB pages each table uses (what `du` sees, by table; tables that
        share a database share its leaf and branch pages: keyspace.pages), then each
        derived `aux:<name>` database this process has opened."""
        def work(txn):
            psize = txn.stat(self._meta.db)["psize"]
            out = {name: int(round(n * psize)) for name, n in keyspace.pages(txn, self._tables).items()}
            for name, db in self._env.db.items():
                if name.startswith(AUX_PREFIX):
                    s = txn.stat(db)
                    out[name.decode()] = (s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]) * s["psize"]
            return out
        return self._env.read(work, buffers=True)      # values measured, not copied

    def block_stats(self) -> dict:
        def work(txn):
            n = frames_bytes = raw = low = 0
            from . import frames as fr
            for k, v in self._blocks.cursor(txn):
                hd = fr.header(v, fr.BLOCK, int.from_bytes(k, "big"))
                n += 1
                frames_bytes += len(v)
                raw += hd.raw_len
                low += 0 if blocks.final(hd, limits.LEVEL_COMPACT, self.stored_check) else 1
            return {"fragments": n, "stored_bytes": frames_bytes, "raw_bytes": raw, "low_level_fragments": low}
        return self._read(work)

    def stats(self) -> dict:
        c = self._read(self._counters)
        disk = self.disk_bytes()
        b = self.block_stats()
        tables = self.table_bytes()
        content = tables.get("blocks", 0)
        return {
            "store_format": self.stored_format,
            "files": c["files"], "conversations": c["conversations"], "messages": c["messages"],
            "unparsed_files": c["unparsed"], "naive_bytes": c["bytes"], "disk_bytes": disk,
            "ratio": round(c["bytes"] / disk, 3) if disk else None,
            "savings_percent": round(100 * (1 - disk / c["bytes"]), 2) if c["bytes"] else None,
            "stream_bytes": b["raw_bytes"], "dedup_bytes_at_ingest": c["dedup_bytes"],
            "dedup_ratio": round(c["bytes"] / b["raw_bytes"], 3) if b["raw_bytes"] else None,
            "block_fragments": b["fragments"], "block_bytes": b["stored_bytes"],
            "compression_ratio": round(b["raw_bytes"] / b["stored_bytes"], 3) if b["stored_bytes"] else None,
            "uncompacted_fragments": b["low_level_fragments"],
            "free_page_share": round(self.free_share(), 4),
            "table_bytes": tables,
            "metadata_share": round(1 - content / sum(tables.values()), 4) if sum(tables.values()) else None,
        }


def stats_json(stats: dict) -> bytes:
    """The one spelling of the stats as JSON: `stowfs stats --json` and MOUNT/stats.json."""
    import json
    return (json.dumps(stats, indent=2) + "\n").encode()


class FileReader:
    """Reads any byte range of a stored file, decoding only the blocks it touches."""

    def __init__(self, store: Store, r: Record, name: str):
        self._s = store
        self.file_id = r.file_id
        self.size = r.size
        self._extents = r.extents
        self._checksum = r.checksum
        self._name = name
        self._checked_whole: Optional[bytes] = None    # see _whole_checked

    def read(self, offset: int, size: int) -> bytes:
        """The bytes [offset, offset+size). The whole file is checked against its
        record's checksum unless every fragment it came from matched its frame hash; a
        part of it comes only from fragments so matched (one checked as stored is, before
        its decode; one checked decoded is decoded whole first): the pieces' own hashes
        do not cover the fragment's ranges, so a damaged range would hand out other bytes
        of a sound payload (FORMAT.md, "What a read checks")."""
        if offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        if self._checked_whole is not None:
            return self._checked_whole[offset:offset + size]
        if offset == 0 and size == self.size:
            partly: list = []
            data = self._s.read_extents(self._extents, 0, size, partly=partly)
            return records.check_bytes(self._name, data, self._checksum) if partly else data
        try:
            return self._s.read_extents(self._extents, offset, size, whole=True)
        except blocks.Unmatched:
            return self._whole_checked()[offset:offset + size]

    def _whole_checked(self) -> bytes:
        """The whole file, checked against its checksum, and kept: a part of it comes
        from a fragment whose whole does not match its frame hash though its pieces do
        (a damaged hash or range: the pieces vouch for the payload, not for where the
        file's bytes lie in it). Its checksum vouches for the file, read whole, as it
        does for every file read whole; so `cat` and the mount give what verify found
        readable. Larger files than limits.UNMATCHED_WHOLE_MAX fail (verify names them)."""
        if self.size > limits.UNMATCHED_WHOLE_MAX:
            raise Corrupt(f"{self._name}: its block is damaged (does not match its hash) and "
                          "the file is too large to be checked whole")
        data = self._s.read_extents(self._extents, 0, self.size, partly=[True])
        self._checked_whole = records.check_bytes(self._name, data, self._checksum)
        return self._checked_whole

    def read_ready(self, offset: int, size: int):
        """read(), if the bytes are decoded (and checked as read() checks them) already;
        else None, and nothing is decoded. From a block decoded in steps, the bytes are
        a read-only memoryview of it (no copy): pass them on, do not keep them (they
        keep the whole block)."""
        if offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        if self._checked_whole is not None:
            return self._checked_whole[offset:offset + size]
        entire = offset == 0 and size == self.size
        partly: Optional[list] = [] if entire else None
        data = self._s.read_extents(self._extents, offset, size, ready=True, whole=not entire,
                                    partly=partly)
        if partly and data is not None:
            return records.check_bytes(self._name, data, self._checksum)
        return data


class BytesReader:
    def __init__(self, data: bytes):
        self._d = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self._d[offset:offset + size]

    read_ready = read
