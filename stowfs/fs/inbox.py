"""inbox/: the writable part of the mount, backed by a spool directory (STORE/spool/).

The spool directory *is* the inbox tree: inbox/a/b.json is the spool file a/b.json, so
written data goes to disk as it arrives (never held whole in memory), empty directories
made with mkdir persist until removed, and whatever a crash leaves behind is found again
at the next mount. A file is ingested (Store.put_file) when its writer closes it; only
after the store has committed it is the spool file removed. At start-up, recover()
removes spool files the store already holds byte for byte (a crash between commit and
removal) and leaves the rest in inbox/ for the user to see; writing to one again, or
touching it, ingests it.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Optional

from ..errors import InvalidName, NotFound
from .names import TOP, InboxInodes, join, split
from .node import DIR, FILE, INBOX_TIMEOUT, Attr, Handle, Node, accmode_writes, fs_error

log = logging.getLogger(__name__)
INBOX_INO = TOP["inbox"]


class Inbox:
    def __init__(self, store, root, lock: threading.RLock):
        self.store = store
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = lock
        self._new_ino = InboxInodes()
        self.top = Node(INBOX_INO, DIR, "inbox", "")
        self._by_path: dict[str, Node] = {"": self.top}

    def _spool(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else str(self.root)

    # ------------------------------------------------------------------ names
    def node(self, rel: str) -> Optional[Node]:
        """The node of inbox path rel, or None if it does not exist."""
        try:
            st = os.lstat(self._spool(rel))
        except FileNotFoundError:
            st = None
        with self._lock:
            node = self._by_path.get(rel)
            if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                if node is not None and rel:
                    del self._by_path[rel]
                return None
            kind = DIR if stat.S_ISDIR(st.st_mode) else FILE
            if node is None or node.kind != kind:
                node = Node(self._new_ino(), kind, "inbox", rel)
                self._by_path[rel] = node
            return node

    def child(self, d: Node, name: str) -> Node:
        node = self.node(join(d.path, name))
        if node is None:
            raise fs_error(errno.ENOENT)
        return node

    def list(self, d: Node) -> list[tuple[str, Node]]:
        out = []
        with os.scandir(self._spool(d.path)) as it:
            names = [e.name for e in it]
        for name in names:
            node = self.node(join(d.path, name))
            if node is not None:
                out.append((name, node))
        return out

    def attr(self, node: Node, fd: int = -1) -> Attr:
        try:
            st = os.fstat(fd) if fd >= 0 else os.lstat(self._spool(node.path))
        except FileNotFoundError:
            raise fs_error(errno.ENOENT) from None
        return Attr(node.ino, st.st_mode, st.st_size, st.st_mtime,
                    entry_timeout=INBOX_TIMEOUT, attr_timeout=INBOX_TIMEOUT)

    @staticmethod
    def _check_name(name: str) -> None:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise fs_error(errno.EINVAL, "names in the store must be UTF-8") from None

    # ------------------------------------------------------------------ changes
    def create(self, d: Node, name: str, mode: int, flags: int) -> Handle:
        self._check_name(name)
        rel = join(d.path, name)
        oflags = os.O_RDWR | os.O_CREAT | (flags & (os.O_EXCL | os.O_TRUNC))
        fd = os.open(self._spool(rel), oflags, (mode & 0o777) | 0o600)
        node = self.node(rel)
        if node is None:   # removed between open and lstat: keep a node for the open fd
            node = Node(self._new_ino(), FILE, "inbox", rel, unlinked=True)
        with self._lock:
            node.dirty, node.failed, node.ingested = True, 0, False
            node.writers += 1
        return Handle(node, fd=fd, writable=True)

    def mkdir(self, d: Node, name: str, mode: int) -> Node:
        self._check_name(name)
        rel = join(d.path, name)
        os.mkdir(self._spool(rel), (mode & 0o777) | 0o700)
        node = self.node(rel)
        if node is None:
            raise fs_error(errno.ENOENT)
        return node

    def open(self, node: Node, flags: int) -> Handle:
        if node.kind == DIR:
            raise fs_error(errno.EISDIR)
        writable = accmode_writes(flags)
        fd = os.open(self._spool(node.path), os.O_RDWR if writable else os.O_RDONLY)
        if writable:
            with self._lock:
                node.writers += 1
        return Handle(node, fd=fd, writable=writable)

    def write(self, h: Handle, offset: int, data: bytes) -> int:
        if not h.writable:
            raise fs_error(errno.EBADF)
        try:
            n = os.pwrite(h.fd, data, offset)
        except OSError as e:
            h.node.failed = e.errno or errno.EIO
            raise
        h.node.dirty = True
        return n

    def read(self, h: Handle, offset: int, size: int) -> bytes:
        return os.pread(h.fd, size, offset)

    def setattr(self, node: Node, fd: int, size=None, mode=None, atime_ns=None, mtime_ns=None) -> Attr:
        target = fd if fd >= 0 else self._spool(node.path)
        if node.kind == DIR and size is not None:
            raise fs_error(errno.EISDIR)
        if size is not None:
            os.truncate(target, size)
            node.dirty, node.failed = True, 0
        if mode is not None:
            os.chmod(target, (mode & 0o777) | (0o700 if node.kind == DIR else 0o600))
        if atime_ns is not None or mtime_ns is not None:
            st = os.stat(target)
            os.utime(target, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                                 st.st_mtime_ns if mtime_ns is None else mtime_ns))
            if node.kind == FILE and mtime_ns is not None:
                node.dirty = True
        return self.attr(node, fd)

    def _forget_path(self, rel: str) -> None:
        """Drop rel (and everything under it) from the name map, marking the nodes gone."""
        with self._lock:
            for p in [p for p in self._by_path if p == rel or p.startswith(rel + "/")]:
                self._by_path.pop(p).unlinked = True

    def unlink(self, d: Node, name: str) -> Node:
        node = self.child(d, name)
        if node.kind == DIR:
            raise fs_error(errno.EISDIR)
        os.unlink(self._spool(node.path))
        self._forget_path(node.path)
        return node

    def rmdir(self, d: Node, name: str) -> None:
        node = self.child(d, name)
        if node.kind != DIR:
            raise fs_error(errno.ENOTDIR)
        os.rmdir(self._spool(node.path))
        self._forget_path(node.path)

    def rename(self, d1: Node, n1: str, d2: Node, n2: str, noreplace: bool) -> None:
        self._check_name(n2)
        src, dst = join(d1.path, n1), join(d2.path, n2)
        if self.node(src) is None:
            raise fs_error(errno.ENOENT)
        if noreplace and os.path.lexists(self._spool(dst)):
            raise fs_error(errno.EEXIST)
        os.rename(self._spool(src), self._spool(dst))
        with self._lock:
            if src == dst:
                return
            moved = {p: n for p, n in self._by_path.items() if p == src or p.startswith(src + "/")}
            for p in moved:
                del self._by_path[p]
            self._forget_path(dst)
            for p, n in moved.items():
                n.path = dst + p[len(src):]
                self._by_path[n.path] = n

    # ------------------------------------------------------------------ ingest
    @staticmethod
    def pending(h: Handle) -> bool:
        n = h.node
        return h.writable and n.dirty and not n.failed and not n.unlinked

    def ingest(self, h: Handle):
        """Store the handle's file under its inbox path and drop the spool file.
        Returns (path, old FileInfo or None, new FileInfo), or None if there was nothing to do."""
        node = h.node
        with self._lock:
            if not self.pending(h):
                return None
            path, ingested = node.path, node.ingested
            node.dirty = False
        # Once ingested, the spool file is gone but this fd may still write: read it via /proc.
        src = f"/proc/self/fd/{h.fd}" if ingested else self._spool(path)
        try:
            mtime = os.fstat(h.fd).st_mtime
            try:
                old = self.store.info(path)
            except (NotFound, InvalidName):
                old = None
            self.store.put_file(path, src, mtime=mtime)
            new = self.store.info(path)
        except BaseException:
            node.dirty = True
            raise
        with self._lock:
            if not ingested and node.path == path and not node.unlinked:
                try:
                    os.unlink(self._spool(path))
                except FileNotFoundError:
                    pass
                self._by_path.pop(path, None)
                node.ingested = True
        return path, old, new

    def flush(self, h: Handle):
        if h.writable and h.node.failed:
            raise fs_error(h.node.failed, "an earlier write failed; the file was not stored")
        if h.node.writers <= 1:
            return self.ingest(h)
        return None

    def release(self, h: Handle):
        """Close the handle. If another writer's flush deferred the ingest to this last
        writer and its flush has passed, ingest now (after close() returned: rare)."""
        result = None
        try:
            if h.writable:
                with self._lock:
                    h.node.writers -= 1
                    last = h.node.writers == 0
                if last and self.pending(h):
                    log.info("inbox/%s: ingesting at release (several writers)", h.node.path)
                    result = self.ingest(h)
        finally:
            os.close(h.fd)
            h.fd = -1
        return result

    # ------------------------------------------------------------------ start-up
    def recover(self) -> tuple[int, list[str]]:
        """Drop spool files the store already holds (a crash between commit and unlink);
        report the others, which stay in inbox/. Returns (removed, left)."""
        removed, left = 0, []
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, self.root)
                try:
                    info = self.store.info(rel)
                except (NotFound, InvalidName):
                    info = None
                if info is not None and os.path.getsize(full) == info.size and _same(full, self.store, rel):
                    os.unlink(full)
                    removed += 1
                else:
                    left.append(rel)
        for rel in left:
            log.warning("inbox/%s: left over from an earlier mount; not ingested (write or touch it to ingest)", rel)
        return removed, left

    def parent_of(self, node: Node) -> tuple[int, str]:
        """(parent inode, name) of an inbox node, for invalidating its entry."""
        d, name = split(node.path)
        with self._lock:
            parent = self._by_path.get(d)
        return (parent.ino if parent is not None else 0), name


def _same(path: str, store, name: str) -> bool:
    """True when the file at path holds exactly the bytes stored under name."""
    r = store.reader(name)
    pos = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if r.read(pos, len(block)) != block:
                return False
            pos += len(block)
    return pos == r.size
