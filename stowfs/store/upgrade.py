"""Opening an older store.

Format 4, 5 or 6 -> 7 (`open_tables`): the format number only (see _to_newest), while
no other process has the store open; until then the store is read and written as the
format it is in (format 4: no facts stored against others, no anchor planes; 4 and 5: no
blocks checked as stored; 4 to 6: record groups as msgpack lists, not packed).

Format 3 -> 4 (`open_tables`): the five named databases of format 3 become key ranges of
one (keyspace.py). In place, in one LMDB write transaction: every entry is copied under
its table's tag byte into `store`, the five are dropped, `format` becomes 4. Frames are
not touched (a frame's key never included the tag). Atomic: a crash leaves format 3 or 4.
Then a compacting copy gives the old databases' pages back to the disk.
Only done while no other process has the store open (its map and database handles are
format 3's); until then, and in a read-only open, the store is read and written as
format 3, table for table the same entries.

Format 1/2 -> 4 (`upgrade_if_needed`): a store written by the segment store of stowfs 0.1
is read with `stowfs.legacy` and every file copied, with its name, mtime and bytes, into
a new environment beside it; the new one then takes the old one's place.

Crash-safe by renames: the new environment is built in `lmdb.upgrading/`; once every file
is in it (and read back against the old one's SHA-256), `lmdb` becomes `lmdb.format2`,
`lmdb.upgrading` becomes `lmdb`, and `lmdb.format2` is removed. A crash before the
first rename leaves the old store as it was (the half-built one is discarded at the next
open); a crash between the renames is finished at the next open.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import sys
import time
from pathlib import Path

import lmdb

from .. import limits
from ..errors import Corrupt, NotFound, StoreFull, StowError
from . import keyspace, lmdbenv, mapguard

OLD = "lmdb.format2"
NEW = "lmdb.upgrading"


def stored_format(envdir: Path):
    """The format number a store's environment says it has, or None (no store)."""
    if not (envdir / "data.mdb").exists():
        return None
    data = envdir / "data.mdb"
    try:
        env = lmdb.open(str(envdir), readonly=True, max_dbs=32, lock=False,
                        map_size=lmdbenv.map_size_for(data.stat().st_size))
    except lmdb.Error as e:
        if "already open" in str(e):
            return None                     # this process has it open: it is current
        # a zeroed or damaged meta page: the writable open said "internal error" where
        # the read-only one says damaged
        if isinstance(e, lmdbenv.DAMAGE):
            raise Corrupt(f"store structure damaged: {e}") from None
        raise StowError(f"cannot open store at {envdir.parent}: {e}") from None
    span = mapguard.Span(str(data))
    span.guard()
    try:
        try:
            with env.begin() as txn:
                names = {bytes(k) for k in txn.cursor().iternext(keys=True, values=False)}
            if keyspace.STORE_DB in names:
                db, key = keyspace.STORE_DB, bytes([keyspace.TAGS["meta"]]) + b"format"
            else:
                db, key = b"meta", b"format"
            meta = env.open_db(db, create=False)
            with env.begin() as txn:
                v = txn.get(key, db=meta)
        except lmdb.NotFoundError:
            return None
        except lmdb.Error as e:             # a damaged page of the main database
            raise Corrupt(f"store structure damaged: {e}") from None
        if span.faults:
            raise Corrupt("store structure damaged: a value reaches past the end of the store file")
        return struct.unpack(">Q", v)[0] if v and len(v) == 8 else None
    finally:
        span.settle()
        span.close()
        env.close()


def upgrade_if_needed(path: Path) -> bool:
    envdir, old, new = path / "lmdb", path / OLD, path / NEW
    if not envdir.exists() and old.exists() and new.exists():
        old.rename(envdir)                  # crashed between the renames, before the second
    if envdir.exists() and old.exists():
        shutil.rmtree(old)                  # crashed after the renames
    if new.exists() and envdir.exists() and (stored_format(envdir) or 3) < 3:
        shutil.rmtree(new)                  # a half-built upgrade: start again
    fmt = stored_format(envdir) if envdir.exists() else None
    if fmt is None or fmt >= 3:
        return False
    from . import FORMAT_VERSION
    print(f"stowfs: upgrading the store at {path} from format {fmt} to {FORMAT_VERSION} ...", file=sys.stderr)
    _copy(path, new)
    envdir.rename(old)
    new.rename(envdir)
    shutil.rmtree(old)
    return True


def _copy(path: Path, new: Path) -> None:
    from ..legacy.store import Store as LegacyStore
    from . import Store
    tmp = path / "upgrade-work"
    if tmp.exists():
        shutil.rmtree(tmp)
    old = LegacyStore(path, readonly=True)
    try:
        target_root = tmp
        target_root.mkdir(mode=0o700)
        dst = Store(target_root)
        try:
            for info in old.iter_files():
                data = old.get(info.name)
                if hashlib.sha256(data).hexdigest() != info.sha256:
                    raise Corrupt(f"{info.name}: reads back wrong from the old store; not upgraded")
                dst.put(info.name, data, mtime=info.mtime)
            dst.seal()
        finally:
            dst.close()
    finally:
        old.close()
    (tmp / "lmdb").rename(new)
    shutil.rmtree(tmp)


def open_tables(env, init=None) -> int:
    """Open the store's databases in env (env.db, env.tables); init(txn) writes a new
    store's meta (when writable). Returns the stored format the store is in: 6; or 5, 4
    or 3 for an older store not converted now (read-only, or another process has it open)."""
    names = _names(env)
    if keyspace.STORE_DB in names or b"meta" not in names:
        env.open_databases((keyspace.STORE_DB,), init)
        fmt = _format(env)
        return _newest(env, fmt) if fmt in (4, 5, 6) else fmt
    env.open_databases((b"meta",))
    fmt = _format(env)
    if fmt < 3:
        raise StowError(f"store format {fmt} needs an upgrade: open it writable once")
    env.open_databases(keyspace.FORMAT3_DBS)
    if fmt == 3 and not env.readonly:
        try:
            if env.alone(lambda: _to_format_4(env)):
                # the old databases' pages are free now: give them back to the disk
                if env.free_share() >= limits.RECLAIM_SLACK:
                    env.compact_copy()
                return _newest(env, 4)
        except StoreFull as e:
            print(f"stowfs: {env.path} stays in format 3 for now: {e}", file=sys.stderr)
    return 3


def _newest(env, fmt: int) -> int:
    """A format-4, 5 or 6 store made the newest format if this process has it alone
    (else it stays as it is); returns the format it is in."""
    from . import FORMAT_VERSION
    try:
        if env.alone(lambda: _to_newest(env)):
            return FORMAT_VERSION
    except StoreFull as e:
        print(f"stowfs: {env.path} stays in format {fmt} for now: {e}", file=sys.stderr)
    return fmt


def _format(env) -> int:
    v = env.read(lambda txn: env.tables["meta"].get(txn, b"format"))
    fmt = lmdbenv.from_u64(v) if v is not None and len(v) == 8 else None
    if fmt is None:
        raise Corrupt(f"store at {env.path}: its format is missing or damaged")
    return fmt


def _to_newest(env) -> None:
    """Format 4, 5 or 6 -> 7: only the number. Format 7 reads every older value as it
    is; what the later formats add are layouts older readers do not know (format 5: facts
    stored against each other, anchor runs in byte planes; format 6: blocks checked as
    stored; format 7: packed record groups), written from now on, so no process of the
    older code may have the store open (the caller holds it alone). Compaction rewrites
    blocks and groups in the new layouts."""
    from . import FORMAT_VERSION

    def work(txn):
        env.tables["meta"].put(txn, b"format", lmdbenv.u64(FORMAT_VERSION))
    env.write(work)


def _names(env) -> set:
    """The named databases; a read-only open waits a moment for a store another
    process is creating (its directory exists one transaction before its databases)."""
    deadline = time.monotonic() + 3.0
    while True:
        names = env.database_names()
        if keyspace.STORE_DB in names or b"meta" in names:
            return names
        if names:
            # Other databases but not the store's: the main database's record of it is
            # damaged (one flipped byte of its name). A writable open took this for a
            # new store and made an empty one beside it, and the store then read as
            # empty and sound (verify: OK, 0 files): never create over it.
            shown = ", ".join(repr(bytes(n)[:40]) for n in sorted(names)[:4])
            raise Corrupt(f"{env.path}: the store's database is missing, only {shown} is "
                          "there (a damaged name in LMDB's main database)")
        if not env.readonly:
            return names
        if time.monotonic() > deadline:
            raise NotFound(f"no store at {env.path} (database missing)")
        time.sleep(0.05)


def _to_format_4(env) -> None:
    """Format 3 -> 4 in one write transaction (see the module's doc), while no other
    process has the store open."""
    made = []

    def work(txn):
        # handles of this try: dropping a database closes its handle even when the
        # transaction is then given up (a full map: Env.write tries again)
        store = env.env.open_db(keyspace.STORE_DB, txn=txn, create=True)
        for name, tag in sorted(keyspace.TAGS.items(), key=lambda t: t[1]):
            db, prefix = env.env.open_db(name.encode(), txn=txn, create=False), bytes([tag])
            with txn.cursor(db=db) as src, txn.cursor(db=store) as dst:
                dst.putmulti(((prefix + k, v) for k, v in src), append=True)   # in key order
            txn.drop(db, delete=True)
        txn.put(bytes([keyspace.TAGS["meta"]]) + b"format", lmdbenv.u64(4), db=store)
        made[:] = [store]
    for n in keyspace.FORMAT3_DBS:
        env.db.pop(n)
    try:
        env.write(work, changed=lambda: False)
    except BaseException:
        env.open_databases(keyspace.FORMAT3_DBS)    # still format 3: its handles again
        raise
    env.db[keyspace.STORE_DB] = made[0]
    env.tables = keyspace.tables(env.db)
