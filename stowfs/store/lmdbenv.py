"""The store's LMDB environment: opening it (private permissions, map size), short read
and write transactions (the map grows when full), and the `meta` table.

Only this module calls lmdb.open. Nothing here knows what the other tables hold; where
they live (which database, which key prefix) is keyspace.py's.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
from pathlib import Path

import lmdb

from .. import limits
from ..errors import Busy, Corrupt, NotFound, ReadOnly, StoreFull, StowError
from ..packing import pack, unpack
from . import keyspace, mapguard

# what the LMDB library says of a damaged file (zeroed meta pages, a page of the wrong
# type or past the end): Corrupt wherever an open, a read or a write meets it
DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError)

AUX_PREFIX = b"aux:"     # named databases of data derived elsewhere (Store.aux_read)
MAX_DBS = 32            # the store's database, a format-3 store's five while converted, aux:<name>
_U64 = struct.Struct(">Q")
log = logging.getLogger(__name__)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b) -> int:
    if b is None or len(b) != 8:
        raise ValueError("not a u64")
    return _U64.unpack(b)[0]


def map_size_for(file_size: int) -> int:
    """The map for a data file of this size: room to grow (twice the file), and at least
    as far past its end as a damaged 32-bit value size can reach (mapguard)."""
    step = limits.MAP_SIZE_STEP
    want = max(limits.MAP_SIZE_INITIAL, 2 * file_size, file_size + mapguard.REACH)
    return -(-want // step) * step


def private_dir(path: Path) -> None:
    """Create path (and parents) as a directory only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def private_file(path: Path) -> None:
    try:
        os.chmod(path, 0o600)
    except FileNotFoundError:
        pass


def disk_full(e: BaseException) -> bool:
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or "ENOSPC" in str(e)


class Env:
    """One LMDB environment with its named databases (self.db[name]) and the store's
    tables in them (self.tables[name], keyspace.Table)."""

    def __init__(self, path: Path, readonly: bool, create: bool):
        self.path = Path(path)
        self.readonly = readonly
        if not self.path.is_dir():
            if readonly or not create:
                raise NotFound(f"no store at {self.path}")
            try:
                private_dir(self.path)
            except OSError as e:
                raise StowError(f"cannot create store at {self.path}: {e.strerror}") from None
        envdir = self.path / "lmdb"
        if readonly and not envdir.is_dir():
            raise NotFound(f"no store at {self.path}")
        self._lockf = self._take_lock(fcntl.LOCK_SH, "is being compacted by another process")
        try:
            if not readonly:
                private_dir(envdir)
            try:
                self.env = lmdb.open(str(envdir), map_size=self._map_size(), max_dbs=MAX_DBS,
                                     readonly=readonly, readahead=False, meminit=False,
                                     max_readers=limits.MAX_READERS, lock=True, mode=0o600, subdir=True)
            except lmdb.Error as e:
                if disk_full(e):
                    raise StoreFull(f"no space left on device: cannot open the store at {self.path}") from None
                if isinstance(e, DAMAGE):
                    raise Corrupt(f"store structure damaged: {e}") from None    # e.g. zeroed meta pages
                raise StowError(f"cannot open store at {self.path}: {e}") from None
            if not readonly:
                for f in ("data.mdb", "lock.mdb"):
                    private_file(envdir / f)
            self.env.reader_check()
        except BaseException:
            self._lockf.close()
            raise
        self._span = mapguard.Span(str(envdir / "data.mdb"))
        self._span.guard()
        self._gate = threading.Condition()
        self._active = 0
        self._growing = False
        self.db: dict[bytes, object] = {}
        self.tables: dict[str, keyspace.Table] = {}
        # LMDB: a transaction that opens a database handle must end before another
        # transaction of the process opens one. Taken only inside a transaction already
        # begun, so no thread holds it while it waits for the writer lock or the gate.
        self._dbi_lock = threading.Lock()

    def open_databases(self, names, init=None) -> None:
        """Open the named databases; when writable, create them and run init(txn) in the
        same transaction, so a new store appears whole or not at all."""
        try:
            if self.readonly:
                # a store another process is creating right now has its directory before
                # its databases (one transaction later): wait a moment for it
                deadline = time.monotonic() + 3.0
                while True:
                    try:
                        with self._dbi_lock:
                            for n in names:
                                # (a read-only environment: open_db's own transaction
                                # is a reader, which never waits for a writer)
                                self.db[n] = self.env.open_db(n, create=False)
                        break
                    except lmdb.NotFoundError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            else:
                with self.env.begin(write=True) as txn, self._dbi_lock:
                    for n in names:
                        self.db[n] = self.env.open_db(n, txn=txn, create=True)
                    for n in txn.cursor().iternext(keys=True, values=False):
                        n = bytes(n)    # the other named databases (aux:): see open_optional
                        if n.startswith(AUX_PREFIX) and n not in self.db:
                            try:
                                self.db[n] = self.env.open_db(n, txn=txn, create=False)
                            except (lmdb.NotFoundError, lmdb.IncompatibleError):
                                pass    # a damaged entry: derived data, the store opens without
                                        # it and its first use says what is wrong
                    self.tables = keyspace.tables(self.db)
                    if init is not None:
                        init(txn)
            self.tables = keyspace.tables(self.db)
        except lmdb.NotFoundError:
            raise NotFound(f"no store at {self.path} (database missing)") from None
        except lmdb.Error as e:
            raise StowError(f"store at {self.path} is not readable: {e}") from None

    def database_names(self) -> set[bytes]:
        """The names of the environment's named databases (the keys of LMDB's main
        database, which holds nothing else); Corrupt when its pages are damaged."""
        return self.read(lambda txn: {bytes(k) for k in txn.cursor().iternext(keys=True, values=False)})

    def open_optional(self, name: bytes, create: bool):
        """The handle of the named database `name`, created when create (and writable);
        None when it does not exist and is not to be created.

        Never through `Environment.open_db` alone in a writable environment: that
        begins a write transaction of its own and waits for LMDB's writer lock holding
        the GIL. While another thread of the process wrote (the mount storing an inbox
        file), that thread could never take the GIL back to finish, and the process hung
        for good (a `cat stats.json` during an rsync into inbox/). Here a reader, which
        never waits for a writer, looks for the database, and a handle is opened in a
        write transaction begun by `begin()`, which lets the GIL go while it waits (LMDB
        keeps a handle only from a committed write transaction: a reader's is dropped).
        The databases that exist when the store opens are opened then (open_databases),
        so the mount waits for no writer to read them."""
        db = self.db.get(name)
        if db is not None:
            return db
        if not (create and not self.readonly) and not self.read(lambda txn: txn.get(name) is not None):
            return None     # (the main database holds the names of the others)
        if self.readonly:
            with self._dbi_lock:
                db = self.env.open_db(name, create=False)   # its own transaction is a reader
        else:
            def open_handle(txn):
                with self._dbi_lock:
                    try:
                        return self.env.open_db(name, txn=txn, create=create)
                    except lmdb.NotFoundError:
                        return None     # dropped since it was looked for
            db = self.write(open_handle, changed=lambda: False)
            if db is None:
                return None
        self.db[name] = db
        return db

    def _take_lock(self, mode: int, what: str):
        lock = self.path / "stowfs.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            if self.readonly and e.errno in (errno.EACCES, errno.EROFS):
                fd = os.open(lock, os.O_RDONLY)
            else:
                raise StowError(f"cannot open {lock}: {e.strerror}") from None
        f = os.fdopen(fd, "rb")
        # the exclusive lock is held only while a compacting copy replaces the data file
        # (seconds for a large store), a format is converted, or the last process to close
        # removes the reader table (a moment): wait for it rather than fail
        deadline = time.monotonic() + limits.SWAP_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(f, mode | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    raise Busy(f"store {self.path} {what}") from None
                time.sleep(0.05)

    def alone(self, fn) -> bool:
        """fn() holding the exclusive store lock: no other process has the store open
        meanwhile. False, without running fn, when one has (or the store is read-only).
        Waits for its turn (_converted)."""
        if self.readonly:
            return False
        return self._converted(fn, wait=True)

    def _converted(self, fn, wait: bool) -> bool:
        """fn() holding the exclusive store lock, if this process can convert its shared
        lock to it now; False, without running fn, if it cannot.

        This process's shared lock is converted to the exclusive one and back. flock
        converts by dropping the lock first: two processes trying at once could each see
        the other's lock gone for a moment and one change the file under the other's map.
        So attempts take turns on a second lock file, held until the shared lock is back
        (a failed attempt takes it back before the next may try). wait: for the turn,
        else False at once when another process has it (a conversion may hold it for
        seconds: a compacting copy)."""
        with open(os.open(self.path / "upgrade.lock", os.O_RDWR | os.O_CREAT, 0o600), "rb") as turn:
            try:
                fcntl.flock(turn, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(self._lockf, fcntl.LOCK_SH)
                return False
            try:
                fn()
            finally:
                fcntl.flock(self._lockf, fcntl.LOCK_SH)
            return True

    def close(self) -> None:
        span = getattr(self, "_span", None)
        if span is not None:
            span.close()
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
        f = getattr(self, "_lockf", None)
        if f is not None:
            self._drop_reader_table()
            f.close()
            self._lockf = None

    def _drop_reader_table(self) -> None:
        """Remove lmdb/lock.mdb (LMDB's reader table, 8 KiB, no data) when this process,
        its environment closed, is the last to have the store open: a closed store is its
        data file alone. LMDB makes the file again at the next open, a read-only one too
        (and resets it at the first open anyway), so a read-only process removes it as
        well; the stored data is not touched. Never waits for the turn and never fails:
        the file stays when another process has the store open or the turn, or cannot be
        removed (a read-only filesystem)."""
        def unlink():
            try:
                os.unlink(self.path / "lmdb" / "lock.mdb")
            except OSError as e:
                log.debug("%s: LMDB's lock file stays: %s", self.path, e)
        try:
            self._converted(unlink, wait=False)
        except OSError as e:            # upgrade.lock cannot be made (a read-only store)
            log.debug("%s: LMDB's lock file stays: %s", self.path, e)

    # ------------------------------------------------------------ transactions
    def _enter(self):
        with self._gate:
            while self._growing:
                self._gate.wait()
            self._active += 1

    def _leave(self):
        with self._gate:
            self._active -= 1
            self._gate.notify_all()

    def read(self, fn, buffers: bool = False):
        """fn(txn) in a short read transaction; Corrupt if it touched the map past the end
        of the file (mapguard). buffers: values are memoryviews into the map, valid only
        inside fn (the read path: no copy of a block frame per read); else bytes."""
        for _ in range(3):
            self._enter()
            faults = self._span.faults
            try:
                with self.env.begin(buffers=buffers) as txn:
                    out = fn(txn)
                self._faulted(faults)
                return out
            except lmdb.MapResizedError:
                pass
            except lmdb.Error as e:
                self._faulted(faults)
                raise Corrupt(f"store structure damaged: {e}") from None
            finally:
                self._span.settle()
                self._leave()
            self._adopt_map_size()
        raise StowError("store map keeps being resized by another process")

    def write(self, fn, changed=None):
        """fn(txn) in one write transaction; the map grows and fn runs again when full.
        fn must not keep state from a failed try (everything it wrote is rolled back).
        The generation is bumped unless changed() says nothing was written (then the
        commit writes no page either)."""
        if self.readonly:
            raise ReadOnly("store opened read-only")
        for _ in range(64):
            self._enter()
            faults = self._span.faults
            try:
                with self.env.begin(write=True) as txn:
                    result = fn(txn)
                    self._faulted(faults)
                    if changed is None or changed():
                        bump(txn, self.tables["meta"])
                return result
            except lmdb.BadDbiError:
                # another process created the databases while this one opened them:
                # take fresh handles and run fn again
                grow = None
            except lmdb.MapFullError:
                grow = True
            except lmdb.MapResizedError:
                grow = False
            except lmdb.Error as e:
                if disk_full(e):
                    raise StoreFull(f"no space left on device: nothing was stored ({self.path})") from None
                if isinstance(e, DAMAGE):
                    # a damaged page a write met (the read path says the same): nothing
                    # was written; it was "internal error" on the CLI
                    self._faulted(faults)
                    raise Corrupt(f"store structure damaged: {e}") from None
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise StoreFull(f"no space left on device: nothing was stored ({self.path})") from None
                raise
            finally:
                self._span.settle()
                self._leave()
            if grow is None:
                names = list(self.db)
                self.db = {}
                self._exclusive(lambda: self.open_databases(names))
            elif grow:
                self._exclusive(self._grow)
            else:
                self._adopt_map_size()
        raise StoreFull("store map cannot grow further")

    def drop_mapped(self) -> None:
        """Give back the pages of the data file this process has touched: every page a
        read touches stays mapped, and counted in the process's RSS, until the map is
        closed, so a daemon's RSS grew with the store it read (a cold cat of a 21 MB
        store left 17 MiB of it resident). They stay in the page cache, as a pread()'s
        would. Runs as a reader, so the map cannot move meanwhile."""
        if self.env is None:
            return
        self._enter()
        try:
            self._span.drop_resident()
        finally:
            self._leave()

    def drop_mapped_here(self) -> None:
        """drop_mapped, from inside a transaction of this process (which already keeps the
        map from moving; entering again could wait on a growth that waits on us)."""
        if self.env is not None:
            self._span.drop_resident()

    def _faulted(self, before: int) -> None:
        if self._span.faults != before:
            raise Corrupt("store structure damaged: a value reaches past the end of the store "
                          "file (a damaged page)")

    def _exclusive(self, fn):
        with self._gate:
            self._growing = True
            while self._active:
                self._gate.wait()
            try:
                fn()
            finally:
                if self.env is not None:
                    self._span.refresh()         # the map may have moved
                self._growing = False
                self._gate.notify_all()

    def _grow(self):
        size = max(self.env.info()["map_size"] + limits.MAP_SIZE_STEP, self._map_size())
        if size > limits.MAP_SIZE_MAX:
            raise StoreFull(f"store reached its size limit ({limits.MAP_SIZE_MAX} bytes)")
        self.env.set_mapsize(size)

    def _adopt_map_size(self):
        self._exclusive(lambda: self.env.set_mapsize(0))

    def free_share(self) -> float:
        """The share of the data file that is free pages (what a compacting copy drops)."""
        info, st = self.env.info(), self.env.stat()
        used = 0
        with self.env.begin() as txn:
            dbs = [st] + [txn.stat(db) for db in self.db.values()]
        for s in dbs:
            used += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        total = info["last_pgno"] + 1
        return max(0.0, 1 - (used + 2) / total) if total else 0.0

    def compact_copy(self, on_swap=None) -> bool:
        """Replace the data file with a compacting copy of it, when no other process has
        the store open (else False). Readers and writers of this process wait, until
        on_swap() (run before they go on) has taken the new database handles."""
        done = [False]

        def swap():
            envdir = self.path / "lmdb"
            tmp = self.path / "lmdb.compacting"
            import shutil
            if tmp.exists():
                shutil.rmtree(tmp)
            private_dir(tmp)
            self.env.copy(str(tmp), compact=True)
            private_file(tmp / "data.mdb")
            names = list(self.db)
            self.env.close()
            os.replace(tmp / "data.mdb", envdir / "data.mdb")
            shutil.rmtree(tmp)
            self.env = lmdb.open(str(envdir), map_size=self._map_size(), max_dbs=MAX_DBS,
                                 readonly=False, readahead=False, meminit=False, max_readers=limits.MAX_READERS,
                                 lock=True, mode=0o600, subdir=True)
            self.db = {}
            self.open_databases(names)
            if on_swap is not None:
                on_swap()
            done[0] = True
        return self.alone(lambda: self._exclusive(swap)) and done[0]

    def _map_size(self) -> int:
        try:
            cur = (self.path / "lmdb" / "data.mdb").stat().st_size
        except FileNotFoundError:
            cur = 0
        return map_size_for(cur)

    def disk_bytes(self) -> int:
        """The bytes the environment keeps on disk: its files but the reader table
        (lock.mdb), which is there only while the store is open (close)."""
        total = 0
        for f in (self.path / "lmdb").iterdir():
            if f.name == "lock.mdb":
                continue
            try:
                total += f.stat().st_blocks * 512
            except FileNotFoundError:
                pass
        return total


# ------------------------------------------------------------------ meta
def _meta_sum(key: bytes, body: bytes) -> bytes:
    import hashlib
    return hashlib.blake2b(key + b"\0" + body, digest_size=8).digest()


def meta_get(txn, meta, key: bytes, default=None):
    """A meta value (meta: the meta Table): msgpack followed by BLAKE2b-64 of (key, NUL,
    msgpack), checked."""
    v = meta.get(txn, key)
    if v is None:
        return default
    v = bytes(v)
    body, check = v[:-8], v[-8:]
    try:
        if len(v) < 9 or _meta_sum(key, body) != check:
            raise ValueError("checksum")
        return unpack(body)
    except Exception:
        raise Corrupt(f"store metadata {key.decode()!r} is damaged") from None


def meta_put(txn, meta, key: bytes, value) -> None:
    body = pack(value)
    meta.put(txn, key, body + _meta_sum(key, body))


def bump(txn, meta) -> int:
    g = meta_get(txn, meta, b"generation", 0) + 1
    meta_put(txn, meta, b"generation", g)
    return g
