"""Format 1/2 -> 3: a store written by the segment store of stowfs 0.1 is read with
`stowfs.legacy` and every file copied, with its name, mtime and bytes, into a new
environment beside it; the new one then takes the old one's place.

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
from pathlib import Path

import lmdb

from ..errors import Corrupt
from . import lmdbenv, mapguard

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
        raise
    span = mapguard.Span(str(data))
    span.guard()
    try:
        try:
            meta = env.open_db(b"meta", create=False)
            with env.begin() as txn:
                v = txn.get(b"format", db=meta)
        except lmdb.NotFoundError:
            return None
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
    print(f"stowfs: upgrading the store at {path} from format {fmt} to 3 ...", file=sys.stderr)
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
