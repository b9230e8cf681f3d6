"""inbox/: the writable part of the mount, an ordinary directory over a spool (STORE/spool/).

What inbox/PATH shows: the spool file or directory PATH if there is one (being written,
or waiting to be ingested), else the stored file PATH (its stored size, mtime and mode),
else the directory PATH of the store. So inbox/ holds everything stored, at the same
relative paths, and a second `rsync -a SRC/ inbox/dst/` finds every unchanged file there.

Writing: a file is written to its spool file as the bytes arrive (pwrite, no copy in
memory). Opening a stored file for writing without O_TRUNC first copies its stored bytes
into the spool ("copy-up"), so appends add to the stored content; truncate, chmod and
utime on a stored file do the same. Renames and removals act on both the spool and the
store, as in one directory: `mv inbox/a inbox/b` renames a stored a, or moves a spool a
(and drops a stored a it replaced); `rm inbox/a` removes both.

Ingest: a spool file is stored once it has *settled* -- no writer has it open and it has
not changed for `quiet` seconds -- or when a writer calls fsync(). Then it is put into the
store with its mtime (integer ns) and mode, and the spool file is removed. Until then
conversations/PATH serves the spool file itself (an "alias" node), so from close() on a
file reads back byte for byte there. A settled file whose name matches LEFTOVERS (editor
swap files, lock files, temp files of rsync, git and Python) is never stored: those exist
only while a writer works. An ingest that fails is logged, listed in errors/, and its
spool file stays (tried again once it changes).

Directories: a spool directory holds what is being written under it. Once it is empty
(its files stored), `prune()` moves it into a record (dirrecord.py, STORE/spool.dirs),
and removes it: a directory entry costs 4 KiB on disk for good, more
than a compressed session (a copied ~/.claude/projects has one or two directories a
session). A recorded directory is a directory of inbox/ with its mode and mtime, as the
spool directory was; writing under it makes its spool directory again, with its mode.

Crash safety: acknowledged write() bytes are in the spool file (the page cache of the
store's filesystem), so they survive kill -9 of the daemon; recover() at the next mount
finds every spool file and lets it settle and be ingested. fsync() also fsyncs the spool
file and its directory, so the bytes survive a power loss before they are ingested.
"""
from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import InvalidName, NotFound, StowError
from .dirrecord import DirRecord
from .names import TOP, InboxInodes, join, split
from .node import DIR, FILE, INBOX_TIMEOUT, Attr, Handle, Node, accmode_writes, fs_error

log = logging.getLogger(__name__)
INBOX_INO = TOP["inbox"]
DEFAULT_QUIET = 2.0          # seconds a closed file must stay unchanged before it is ingested
COPY_CHUNK = 1 << 20

# Names of files that exist only while a writer works: never ingested, never shown under
# conversations/ (they stay in inbox/ while they exist). The one list of them.
LEFTOVERS = (
    ".*.sw?", ".*.sv?",      # vim swap files (.x.swp, .x.swo, ..., .x.swx probe)
    "*~",                    # editor backups (vim, emacs)
    ".#*", "#*#",            # emacs lock and auto-save files
    "*.lock",                # git (index.lock, HEAD.lock, config.lock), package managers
)
LEFTOVER_RES = (
    r"\..+\.[A-Za-z0-9]{6}",                               # rsync's temp file .NAME.XXXXXX
    r"tmp_(obj|pack|idx|rev|mtimes|bitmap)_[A-Za-z0-9]+",  # git's object and pack temp files
    r"tmp[a-z0-9_]{8}",                                    # Python tempfile.mkstemp()
)
_LEFTOVER = re.compile("|".join([fnmatch.translate(p) for p in LEFTOVERS] +
                                [f"(?:{r})\\Z" for r in LEFTOVER_RES]), re.S)


def p_alias(pending: dict, node: Node) -> bool:
    """Whether node is still the alias of a pending spool file (call under the lock)."""
    p = pending.get(node.path)
    return p is not None and p.alias is node


def is_leftover(path: str) -> bool:
    """Whether a file at path is a writer's leftover, by its name (LEFTOVERS)."""
    return _LEFTOVER.match(path.rpartition("/")[2]) is not None


@dataclass(eq=False)
class Pending:
    """A spool file: what is known about it between its first write and its ingest."""
    path: str
    version: int = 0                    # bumped at every change of content, mode or times
    changed: float = 0.0                # time.monotonic() of the last change or close
    writers: int = 0                    # open writable handles
    stored_version: int = -1            # the version the store holds under path (-1: none)
    failed_version: int = -1            # the version whose ingest failed (not retried)
    failed_ns: int = 0                  # when it failed: its errors/ entry's mtime
    write_error: int = 0                # errno of a failed write: the file is incomplete
    gone: bool = False                  # removed or renamed away
    alias: Optional[Node] = None        # its node under conversations/
    error_node: Optional[Node] = None   # its node under errors/ while its ingest failed

    def touch(self) -> None:
        self.version += 1
        self.changed = time.monotonic()


def _keeping_mtime(d: str, remove, path: str) -> None:
    """remove(path), an entry of directory d, leaving d's mtime as it was: in inbox/ the
    entry is still shown (rsync -a set the directory's time after its contents; a second
    run would set it again)."""
    st = os.lstat(d)
    remove(path)
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class Inbox:
    def __init__(self, store, root, lock: threading.RLock, *, quiet: float = DEFAULT_QUIET,
                 on_conv: Callable[[str], None] = lambda path: None,
                 on_store: Callable[[str, object, object], None] = lambda path, old, new: None):
        self.store = store
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root.with_name(self.root.name + ".tmp")   # copy-ups, same filesystem
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(exist_ok=True)
        self.quiet = quiet
        self.on_conv = on_conv        # conversations/PATH now shows something else
        self.on_store = on_store      # stored file PATH changed from old to new FileInfo
        self._lock = lock
        self._new_ino = InboxInodes()
        self.top = Node(INBOX_INO, DIR, "inbox", "")
        self._by_path: dict[str, Node] = {"": self.top}
        self._pending: dict[str, Pending] = {}
        self._dirs: dict[str, int] = {}     # directory -> spool files (not leftovers) under it
        self.failures: dict[str, str] = {}        # path -> why its ingest failed (errors/)
        # directories without a spool directory (prune): path -> [mode, mtime_ns]
        self._rec = DirRecord(self.root.with_name(self.root.name + ".dirs"))
        self._stored: list[str] = []        # spool files removed once stored, for prune()
        self.epoch = 0      # bumped whenever what conversations/ or errors/ show of the spool changes

    # ------------------------------------------------------------------ recorded directories
    def prune(self) -> int:
        """Move the spool directories above the spool files removed since (stored) that
        are empty now into the record (deepest first), so they cost no directory entry on
        disk; returns how many. Under the lock, as every place that makes a spool
        directory and something in it is. (Only their parents: a walk of the whole spool
        under the lock would hold up every request while thousands of files wait.)"""
        with self._lock:
            stored, self._stored = self._stored, []
            self._rec.save()                    # modes and mtimes set since
            empty: dict[str, None] = {}
            for rel in stored:
                d = split(rel)[0]
                while d and d not in empty:
                    try:
                        if os.listdir(self._spool(d)) and not all(
                                join(d, n) in empty for n in os.listdir(self._spool(d))):
                            break
                    except (FileNotFoundError, NotADirectoryError):
                        break
                    empty[d] = None
                    d = split(d)[0]
            if not empty:
                return 0
            attrs = {}
            for d in empty:
                st = os.lstat(self._spool(d))
                attrs[d] = [stat.S_IMODE(st.st_mode), st.st_mtime_ns]
            self._rec.add(attrs)
            for d in sorted(empty, key=lambda x: -x.count("/")):     # deepest first
                parent = split(d)[0]
                if parent in empty:             # its attributes are in the record already
                    os.rmdir(self._spool(d))
                    continue
                # a parent that stays keeps its mtime, as for a stored file: it goes into
                # the record only once its other subdirectories are stored, maybe much later
                _keeping_mtime(self._spool(parent), os.rmdir, self._spool(d))
            return len(empty)

    def _unlink_stored(self, rel: str) -> None:
        """Remove spool file rel, now stored (the caller holds the lock), leaving its
        directory's mtime as it was: in inbox/ the file is still there (rsync -a set the
        directory's time after its files; a second run would set it again)."""
        _keeping_mtime(os.path.dirname(self._spool(rel)), os.unlink, self._spool(rel))

    def _spool(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else str(self.root)

    def _info(self, rel: str):
        try:
            return self.store.info(rel)
        except (NotFound, InvalidName):
            return None

    # ------------------------------------------------------------------ names
    def _kind(self, rel: str) -> Optional[str]:
        """DIR, FILE or None: what inbox/rel is (spool first, then the store)."""
        try:
            st = os.lstat(self._spool(rel))
            if stat.S_ISREG(st.st_mode):
                return FILE
            if stat.S_ISDIR(st.st_mode):
                return DIR
        except FileNotFoundError:
            pass
        if not rel:
            return DIR
        if self._info(rel) is not None:
            return FILE
        return DIR if self.store.is_dir(rel) or rel in self._rec else None

    def _node_of(self, rel: str, kind: str) -> Node:
        with self._lock:
            node = self._by_path.get(rel)
            if node is None or node.kind != kind:
                node = Node(self._new_ino(), kind, "inbox", rel)
                self._by_path[rel] = node
            return node

    def node(self, rel: str) -> Optional[Node]:
        """The node of inbox path rel, or None if it does not exist."""
        kind = self._kind(rel)
        if kind is None:
            with self._lock:
                if rel and rel in self._by_path:
                    del self._by_path[rel]
            return None
        return self._node_of(rel, kind)

    def child(self, d: Node, name: str) -> Node:
        node = self.node(join(d.path, name))
        if node is None:
            raise fs_error(errno.ENOENT)
        return node

    def list(self, d: Node) -> list[tuple[str, Node]]:
        names = {}
        try:
            with os.scandir(self._spool(d.path)) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        names[e.name] = FILE
                    elif e.is_dir(follow_symlinks=False):
                        names[e.name] = DIR
        except (FileNotFoundError, NotADirectoryError):
            pass
        if d.path == "" or d.kind == DIR:
            try:
                for name, info in self.store.listdir(d.path):
                    names.setdefault(name, DIR if info is None else FILE)
            except (NotFound, InvalidName):
                pass
            with self._lock:
                for name in self._rec.children(d.path):
                    names.setdefault(name, DIR)
        return [(name, self._node_of(join(d.path, name), kind)) for name, kind in names.items()]

    def known_dir(self, rel: str) -> Optional[int]:
        """The inode of directory inbox/rel if the kernel holds it (a snapshot: no lock)."""
        n = self._by_path.get(rel)
        return n.ino if n is not None and n.kind == DIR else None

    def gone(self) -> list[tuple[int, str]]:
        """(directory inode, name) of each inbox/ file the kernel holds that is neither a
        spool file nor stored any more (removed by another process)."""
        with self._lock:
            files = [n.path for n in self._by_path.values() if n.kind == FILE and n.path]
        out = []
        for rel in files:
            if self._kind(rel) is None:
                d, name = split(rel)
                ino = self.known_dir(d)
                if ino is not None:
                    out.append((ino, name))
        return out

    def forget(self, node: Node) -> None:
        """The kernel holds no reference to node any more."""
        with self._lock:
            if node.path and self._by_path.get(node.path) is node:
                del self._by_path[node.path]

    def attr(self, node: Node, fd: int = -1) -> Attr:
        try:
            st = os.fstat(fd) if fd >= 0 else os.lstat(self._spool(node.path))
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                return Attr(node.ino, st.st_mode, st.st_size, st.st_mtime_ns,
                            entry_timeout=INBOX_TIMEOUT, attr_timeout=INBOX_TIMEOUT)
        except FileNotFoundError:
            pass
        if node.kind == FILE:
            info = self._info(node.path)
            if info is not None:
                return Attr(node.ino, stat.S_IFREG | info.mode, info.size, info.mtime_ns,
                            entry_timeout=INBOX_TIMEOUT, attr_timeout=INBOX_TIMEOUT)
        elif node.path in self._rec:
            mode, mtime_ns = self._rec.get(node.path)
            return Attr(node.ino, stat.S_IFDIR | mode, 0, mtime_ns,
                        entry_timeout=INBOX_TIMEOUT, attr_timeout=INBOX_TIMEOUT)
        elif not node.path or self.store.is_dir(node.path):
            st = os.lstat(self.root)
            return Attr(node.ino, stat.S_IFDIR | 0o755, 0, st.st_mtime_ns,
                        entry_timeout=INBOX_TIMEOUT, attr_timeout=INBOX_TIMEOUT)
        raise fs_error(errno.ENOENT)

    @staticmethod
    def _check_name(name: str) -> None:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise fs_error(errno.EINVAL, "names in the store must be UTF-8") from None

    # ------------------------------------------------------------------ conversations/ view
    def alias(self, rel: str) -> Optional[Node]:
        """conversations/rel's node while rel is a spool file waiting to be ingested."""
        if rel not in self._pending:    # the common case, answered without the lock
            return None
        with self._lock:
            p = self._pending.get(rel)
            if p is None or p.write_error or is_leftover(rel):
                return None          # not written whole, or never to be stored
            if p.alias is None:
                p.alias = Node(self._new_ino(), FILE, "spool", rel)
            return p.alias

    def spooled(self, rel: str) -> bool:
        """Whether conversations/rel is a spool file now (quick: no lock when none is)."""
        return self.alias(rel) is not None

    def alias_attr(self, node: Node) -> Optional[Attr]:
        """The spool file's attributes, or None once it has been ingested (the stored file
        under the same name is what the alias shows from then on)."""
        try:
            st = os.lstat(self._spool(node.path))
        except FileNotFoundError:
            # The settler unlinks the spool file and drops its entry under the lock, after
            # the store has it: once the lock is free, either the spool file is back
            # (written again) or the stored file is there.
            with self._lock:
                if p_alias(self._pending, node):
                    try:
                        st = os.lstat(self._spool(node.path))
                    except FileNotFoundError:
                        return None
                else:
                    return None
        # entry timeout 0: once the file is ingested, the next lookup must reach the stored
        # file's own inode
        return Attr(node.ino, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                    entry_timeout=0, attr_timeout=0)

    def open_alias(self, node: Node, flags: int) -> Optional[Handle]:
        """A handle on the spool file, or None once it has been ingested (then the caller
        opens the stored file: the same bytes)."""
        if accmode_writes(flags):
            raise fs_error(errno.EROFS, "conversations/ is read-only; write to inbox/")
        with self._lock:
            if not p_alias(self._pending, node):
                return None
            try:
                fd = self._open_spool(node.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        return Handle(node, fd=fd)

    def pending_entries(self, dirpath: str) -> dict[str, Optional[Node]]:
        """conversations/dirpath's entries that are spool files (name -> alias node) or
        directories holding some (name -> None)."""
        prefix = dirpath + "/" if dirpath else ""
        out: dict[str, Optional[Node]] = {}
        with self._lock:
            paths = [p for p in self._pending if p.startswith(prefix) and not is_leftover(p)]
        for path in paths:
            name, sep, _ = path[len(prefix):].partition("/")
            if sep:
                out.setdefault(name, None)
            else:
                node = self.alias(path)
                if node is not None:
                    out[name] = node
        return out

    def pending_dir(self, dirpath: str) -> bool:
        return dirpath in self._dirs

    def _add(self, p: Pending) -> None:
        """Enter p in the spool's records (the caller holds the lock)."""
        self._pending[p.path] = p
        self._count_dirs(p.path, 1)
        self.epoch += 1

    def _pop(self, path: str) -> Pending:
        p = self._pending.pop(path)
        self._count_dirs(path, -1)
        self.epoch += 1
        return p

    def _count_dirs(self, path: str, delta: int) -> None:
        if is_leftover(path):
            return
        d = split(path)[0]
        while d:
            n = self._dirs.get(d, 0) + delta
            if n > 0:
                self._dirs[d] = n
            else:
                self._dirs.pop(d, None)
            d = split(d)[0]

    # ------------------------------------------------------------------ errors/ view
    def error_node(self, path: str) -> Optional[Node]:
        with self._lock:
            p = self._pending.get(path)
            if p is None or path not in self.failures:
                return None
            if p.error_node is None:
                p.error_node = Node(self._new_ino(), FILE, "inbox-error", path)
            return p.error_node

    def error_time(self, path: str) -> int:
        """When path's ingest failed (now if it is not known): its errors/ entry's mtime,
        the same while the message is, so `tar` and `rsync` see a file that holds still."""
        p = self._pending.get(path)
        return p.failed_ns if p is not None and p.failed_ns and path in self.failures else time.time_ns()

    def error_text(self, path: str) -> bytes:
        why = self.failures.get(path, "stored since")
        return f"inbox/{path}: not stored: {why}\n".encode("utf-8", "surrogateescape")

    def _failed(self, p: Pending, why: str) -> None:
        log.error("inbox/%s: not stored: %s (the file stays in inbox/)", p.path, why)
        with self._lock:
            p.failed_version = p.version
            p.failed_ns = time.time_ns()
            self.failures[p.path] = why
            self.epoch += 1

    # ------------------------------------------------------------------ spool files
    def _open_spool(self, rel: str, flags: int, mode: int = 0o600) -> int:
        """os.open of a spool file whose mode may deny its owner (the daemon) access:
        the file keeps the user's exact mode, the daemon lifts it for the open."""
        path = self._spool(rel)
        try:
            return os.open(path, flags, mode)
        except PermissionError:
            if os.geteuid() == 0:
                raise
            st = os.stat(path)
            os.chmod(path, st.st_mode | 0o600)
            try:
                return os.open(path, flags & ~(os.O_CREAT | os.O_EXCL))
            finally:
                os.chmod(path, st.st_mode)

    def _pending_at(self, rel: str) -> Pending:
        """The Pending of spool file rel, made if new (the caller holds the lock)."""
        p = self._pending.get(rel)
        if p is None:
            p = Pending(rel, changed=time.monotonic())
            self._add(p)
            self.on_conv(rel)
        return p

    def _drop(self, rel: str) -> None:
        """Forget spool file rel (and any under it); the caller holds the lock."""
        for path in [q for q in self._pending if q == rel or q.startswith(rel + "/")]:
            p = self._pop(path)
            p.gone = True
            self.failures.pop(path, None)
            self.on_conv(path)

    def _make_parents(self, rel: str) -> None:
        """The spool directories above rel (the caller holds the lock); a recorded one
        comes back with its mode and leaves the record."""
        d = split(rel)[0]
        if d:
            self._make_dir(d)

    def _make_dir(self, d: str) -> None:
        if os.path.isdir(self._spool(d)):
            return
        parent = split(d)[0]
        if parent:
            self._make_dir(parent)
        os.mkdir(self._spool(d))
        rec = self._rec.pop(d)
        if rec is not None:
            os.chmod(self._spool(d), rec[0])

    def _copy_up(self, rel: str, truncate: bool, then=None):
        """Make spool file rel from the stored file rel (its bytes unless truncate, its
        mode and mtime), unless a spool file is there already. Returns its Pending, or
        then(Pending) run under the lock that made or found it: a settle cannot ingest
        and remove the spool file in between (at a quiet time of 0 it did, over and
        over, and an open for write failed with EAGAIN)."""
        info = self._info(rel)
        if info is None:
            raise fs_error(errno.ENOENT)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            if not truncate and info.size:
                reader = self.store.reader(rel, "original")
                for off in range(0, info.size, COPY_CHUNK):
                    data = reader.read(off, COPY_CHUNK)
                    if not data:
                        break
                    os.write(fd, data)
                if os.fstat(fd).st_size != info.size:
                    raise StowError(f"{rel}: stored size changed while it was copied")
            os.fchmod(fd, info.mode)
            if not truncate:
                os.utime(fd, ns=(info.mtime_ns, info.mtime_ns))
            os.close(fd)
            fd = -1
            with self._lock:
                p = self._spooled(rel)                 # made by another writer meanwhile?
                if p is None:
                    self._make_parents(rel)
                    os.rename(tmp, self._spool(rel))
                    tmp = None
                    p = self._pending_at(rel)
                    if not truncate and self._info(rel) is not None:
                        p.stored_version = p.version   # the same bytes as stored
                    else:
                        p.touch()
                return p if then is None else then(p)
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass

    # ------------------------------------------------------------------ changes
    def create(self, d: Node, name: str, mode: int, flags: int) -> Handle:
        self._check_name(name)
        rel = join(d.path, name)
        if self.store.is_dir(rel):
            raise fs_error(errno.EISDIR)
        oflags = os.O_RDWR | os.O_CREAT | (flags & (os.O_EXCL | os.O_TRUNC | os.O_APPEND))
        with self._lock:
            self._make_parents(rel)
            fd = self._open_spool(rel, oflags, 0o600)
            os.fchmod(fd, stat.S_IMODE(mode))
            node = self._node_of(rel, FILE)
            p = self._pending_at(rel)
            p.touch()
            p.writers += 1
            p.write_error = 0
        return Handle(node, fd=fd, writable=True, pending=p)

    def mkdir(self, d: Node, name: str, mode: int) -> Node:
        self._check_name(name)
        rel = join(d.path, name)
        with self._lock:
            if self._kind(rel) is not None:
                raise fs_error(errno.EEXIST)
            self._make_parents(rel)
            os.mkdir(self._spool(rel))
            os.chmod(self._spool(rel), stat.S_IMODE(mode))
        return self._node_of(rel, DIR)

    def open_blocks(self, node: Node, flags: int) -> bool:
        """Whether open() may copy a stored file into the spool (then run it in a thread)."""
        return accmode_writes(flags) or node.kind == FILE

    def open(self, node: Node, flags: int) -> Handle:
        if node.kind == DIR:
            raise fs_error(errno.EISDIR)
        rel = node.path
        if not accmode_writes(flags):
            with self._lock:
                if rel in self._pending or os.path.isfile(self._spool(rel)):
                    return Handle(node, fd=self._open_spool(rel, os.O_RDONLY))
            info = self._info(rel)
            if info is None:
                raise fs_error(errno.ENOENT)
            reader = self.store.reader(rel, "original")
            return Handle(node, reader=reader, key=(info.file_id, "original"), size=info.size)
        truncate = bool(flags & os.O_TRUNC)
        oflags = os.O_RDWR | (flags & (os.O_TRUNC | os.O_APPEND))

        def claim(p: Pending) -> Handle:        # under the lock: not ingested meanwhile
            fd = self._open_spool(rel, oflags)
            p.writers += 1
            if truncate:
                p.touch()
                p.write_error = 0
            return Handle(node, fd=fd, writable=True, pending=p)
        with self._lock:
            p = self._spooled(rel)
            if p is not None:
                return claim(p)
        return self._copy_up(rel, truncate, then=claim)     # a stored file: into the spool first

    def _spooled(self, rel: str) -> Optional[Pending]:
        """The Pending of spool file rel if there is one (the caller holds the lock)."""
        p = self._pending.get(rel)
        if p is not None and not p.gone and os.path.isfile(self._spool(rel)):
            return p
        if p is None and os.path.isfile(self._spool(rel)):
            return self._pending_at(rel)
        return None

    def write(self, h: Handle, offset: int, data: bytes) -> int:
        if not h.writable:
            raise fs_error(errno.EBADF)
        p = h.pending
        try:
            n = os.pwrite(h.fd, data, offset)
        except OSError as e:
            p.write_error = e.errno or errno.EIO
            raise
        p.touch()
        return n

    def read(self, h: Handle, offset: int, size: int) -> bytes:
        return os.pread(h.fd, size, offset)

    def setattr(self, node: Node, fd: int, size=None, mode=None, atime_ns=None, mtime_ns=None,
                pending: Optional[Pending] = None) -> Attr:
        rel = node.path
        if node.kind == DIR:
            if size is not None:
                raise fs_error(errno.EISDIR)
            with self._lock:
                if rel in self._rec and not os.path.isdir(self._spool(rel)):
                    self._rec.set_attrs(rel, None if mode is None else stat.S_IMODE(mode), mtime_ns)
                    return self.attr(node)
                self._make_dir(rel)            # a directory of the store: its attributes kept
                self._apply(self._spool(rel), size, mode, atime_ns, mtime_ns)
            return self.attr(node)

        def change(p: Pending, target):         # under the lock: not ingested meanwhile
            self._apply(target, size, mode, atime_ns, mtime_ns)
            if size == 0:
                p.write_error = 0
            p.touch()
            return self.attr(node, fd if target == fd else -1)
        with self._lock:
            if pending is not None and not pending.gone and fd >= 0:
                return change(pending, fd)      # a writable handle's own file
            p = self._spooled(rel)
            if p is not None:
                return change(p, self._spool(rel))
        # a stored file: into the spool first
        return self._copy_up(rel, truncate=size == 0, then=lambda p: change(p, self._spool(rel)))

    @staticmethod
    def _apply(target, size, mode, atime_ns, mtime_ns) -> None:
        if size is not None:
            os.truncate(target, size)
        if mode is not None:
            os.chmod(target, stat.S_IMODE(mode))
        if atime_ns is not None or mtime_ns is not None:
            st = os.stat(target)
            os.utime(target, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                                 st.st_mtime_ns if mtime_ns is None else mtime_ns))

    def unlink(self, d: Node, name: str) -> None:
        """rm inbox/PATH: the spool file and the stored file of that path."""
        rel = join(d.path, name)
        node = self.child(d, name)
        if node.kind == DIR:
            raise fs_error(errno.EISDIR)
        with self._lock:
            try:
                os.unlink(self._spool(rel))
            except FileNotFoundError:
                pass
            self._drop(rel)
            if self._by_path.get(rel) is node:
                del self._by_path[rel]
            old = self._info(rel)
            if old is not None:
                self.store.remove(rel)
        if old is not None:
            self.on_store(rel, old, None)

    def rmdir(self, d: Node, name: str) -> None:
        rel = join(d.path, name)
        node = self.child(d, name)
        if node.kind != DIR:
            raise fs_error(errno.ENOTDIR)
        if self.store.is_dir(rel):
            raise fs_error(errno.ENOTEMPTY)
        with self._lock:
            if self._rec.has_below(rel):
                raise fs_error(errno.ENOTEMPTY)
            if os.path.isdir(self._spool(rel)):
                os.rmdir(self._spool(rel))
            self._rec.pop(rel)
            if self._by_path.get(rel) is node:
                del self._by_path[rel]

    def rename(self, d1: Node, n1: str, d2: Node, n2: str, noreplace: bool) -> None:
        self._check_name(n2)
        src, dst = join(d1.path, n1), join(d2.path, n2)
        moves = []
        if is_leftover(dst) and not is_leftover(src) and not os.path.lexists(self._spool(src)) \
                and self._info(src) is not None:
            # a stored file becomes an editor's backup (vim: x -> x~, then writes x): it
            # moves into the spool, where leftovers live, instead of being stored as x~
            self._copy_up(src, truncate=False)
        with self._lock:
            kind = self._kind(src)
            if kind is None:
                raise fs_error(errno.ENOENT)
            if src == dst:
                return
            if dst.startswith(src + "/"):
                raise fs_error(errno.EINVAL)
            dkind = self._kind(dst)
            if dkind is not None:
                if noreplace:
                    raise fs_error(errno.EEXIST)
                if kind == DIR and dkind == FILE:
                    raise fs_error(errno.ENOTDIR)
                if kind == FILE and dkind == DIR:
                    raise fs_error(errno.EISDIR)
                if dkind == DIR and (self.store.is_dir(dst) or self._rec.has_below(dst)
                                     or (os.path.isdir(self._spool(dst)) and os.listdir(self._spool(dst)))):
                    raise fs_error(errno.ENOTEMPTY)
            if dkind == DIR:
                self._rec.pop(dst)              # replaced (empty)
            self._rec.move(src, dst)            # a recorded directory and those under it
            sspool, dspool = self._spool(src), self._spool(dst)
            if os.path.lexists(sspool):
                self._make_parents(dst)
                os.rename(sspool, dspool)       # replaces a spool file (or empty dir) at dst
            elif os.path.isfile(dspool):
                os.unlink(dspool)               # replaced by a stored file
            elif os.path.isdir(dspool):
                os.rmdir(dspool)
            # what the store holds under src moves along, unless a spool file now shadows it
            stored = ([self._info(src)] if kind == FILE else list(self.store.iter_files(src + "/")))
            for info in filter(None, stored):
                new = dst + info.name[len(src):]
                replaced = self._info(new)
                if os.path.isfile(self._spool(new)):
                    self.store.remove(info.name)
                    moves.append((info.name, info, None))
                else:
                    self.store.rename(info.name, new)
                    moves.append((info.name, info, None))
                    moves.append((new, replaced, self._info(new)))
            # the spool files' records and the kernel's nodes follow their files
            if kind == FILE:
                self._drop(dst)                 # the spool file replaced at dst
            for path in [q for q in self._pending if q == src or q.startswith(src + "/")]:
                p = self._pop(path)
                p.path = dst + path[len(src):]
                p.stored_version = -1
                p.failed_version = -1
                self.failures.pop(path, None)
                if p.alias is not None:
                    p.alias.path = p.path
                self._add(p)
                self.on_conv(path)
                self.on_conv(p.path)
            moved = {q: n for q, n in self._by_path.items() if q == src or q.startswith(src + "/")}
            for q in moved:
                del self._by_path[q]
            for q in [q for q in self._by_path if q == dst or q.startswith(dst + "/")]:
                self._by_path.pop(q).unlinked = True
            for q, n in moved.items():
                n.path = dst + q[len(src):]
                self._by_path[n.path] = n
        for path, old, new in moves:
            self.on_store(path, old, new)

    # ------------------------------------------------------------------ closing and ingest
    def release(self, h: Handle) -> None:
        try:
            if h.writable and h.pending is not None:
                with self._lock:
                    h.pending.writers -= 1
                    h.pending.changed = time.monotonic()
        finally:
            if h.fd >= 0:
                os.close(h.fd)
                h.fd = -1

    def fsync(self, h: Handle):
        """fsync(): the spool file and its directory reach the disk, then the file is
        ingested (a leftover is only made durable). Returns ingest()'s result."""
        if h.fd < 0:
            return None
        os.fsync(h.fd)
        with self._lock:
            p = h.pending or self._pending.get(h.node.path)
        if p is None or p.gone:
            return None
        d = p.path
        while d:                 # its directory entry, and those of directories made for it
            d = split(d)[0]
            dfd = os.open(self._spool(d), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return None if is_leftover(p.path) else self.ingest(p, force=True)

    def due(self, now: Optional[float] = None, everything: bool = False) -> list[Pending]:
        """Spool files that have settled: no writer, unchanged for `quiet` seconds, not a
        leftover, not failed at this version (everything: whatever has no writer)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [p for p in self._pending.values()
                    if p.writers <= 0 and p.failed_version != p.version
                    and (everything or now - p.changed >= self.quiet) and not is_leftover(p.path)]

    def ingest(self, p: Pending, force: bool = False):
        """Store spool file p under its path with its mtime and mode; remove the spool file
        if nothing changed meanwhile. Returns (path, old FileInfo or None, new FileInfo),
        or None if there was nothing to store."""
        with self._lock:
            if p.gone or self._pending.get(p.path) is not p or (p.writers > 0 and not force):
                return None
            path, version = p.path, p.version
            if p.write_error:
                why = f"a write failed ({os.strerror(p.write_error)}): the file is incomplete"
                fd = -1
            else:
                why = None
                try:
                    fd = self._open_spool(path, os.O_RDONLY)
                except FileNotFoundError:
                    self._drop(path)
                    return None
        if why is not None:
            self._failed(p, why)
            return None
        old = new = None
        try:
            if p.stored_version != version:
                st = os.fstat(fd)
                old = self._info(path)
                self.store.put_file(path, f"/proc/self/fd/{fd}", mtime_ns=st.st_mtime_ns,
                                    mode=stat.S_IMODE(st.st_mode))
                new = self._info(path)
        except (StowError, OSError) as e:
            self._failed(p, str(e) if isinstance(e, StowError) else (e.strerror or str(e)))
            return None
        finally:
            os.close(fd)
        stale = False
        with self._lock:
            if self._pending.get(path) is p and not p.gone:
                if self.failures.pop(path, None) is not None:
                    self.epoch += 1
                if p.version == version and p.writers <= 0:
                    self._unlink_stored(path)
                    self._drop(path)
                    self._stored.append(path)
                else:
                    p.stored_version = version     # stored; changed since: stays pending
            elif new is not None:
                stale = True   # removed or renamed away while being stored
        if stale:
            current = self._info(path)
            if current is not None and current.file_id == new.file_id:
                self.store.remove(path)
            self.on_store(path, new, None)
            return None
        return (path, old, new) if new is not None else None

    # ------------------------------------------------------------------ start-up
    def recover(self) -> tuple[int, list[str]]:
        """Find the spool files an earlier mount left (written, not yet ingested: a crash
        or an unmount while a writer held them): each settles and is ingested like a file
        just closed. Returns (files found, leftovers that will not be stored)."""
        found, leftovers = 0, []
        now = time.monotonic()
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                full = os.path.join(dirpath, f)
                if not os.path.isfile(full) or os.path.islink(full):
                    continue
                rel = os.path.relpath(full, self.root)
                with self._lock:
                    if rel not in self._pending:
                        self._add(Pending(rel, changed=now))
                if is_leftover(rel):
                    leftovers.append(rel)
                else:
                    found += 1
        for rel in leftovers:
            log.info("inbox/%s: a leftover of an editor or tool; stays in inbox/, never stored", rel)
        return found, leftovers
