"""The pyfuse3 adapter: translates kernel requests to the filesystem model (stowfs.fs).

This is the only module that imports pyfuse3. Each handler is a few lines: decode the
name, call the model (in a worker thread when it may block), build the reply with the
one _getattr helper. Every handler goes through @_handler: a StowError or OSError
becomes its errno; anything else is logged with its traceback and becomes EIO, because
an exception escaping a pyfuse3 handler ends the main loop and kills the mount.
"""
from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import threading
from typing import Optional

import pyfuse3
import trio

from . import limits
from .errors import StowError, disk_full
from .fs import Attr, Filesystem, Notifier
from .fs.names import fits

log = logging.getLogger(__name__)
fsdecode, fsencode = os.fsdecode, os.fsencode


def _handler(fn):
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args):
        self.requests[name] += 1
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except StowError as e:
            if e.errno == errno.EIO:
                log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            if not e.errno:
                log.exception("%s: unexpected error", fn.__name__)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception as e:
            if disk_full(getattr(self.fs.store, "path", None)):   # the engine's EIO of a full disk
                log.warning("%s: no space left on device (%s)", fn.__name__, e)
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("%s%r: unexpected error", fn.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


async def _blocking(fn, *args, **kw):
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


class KernelNotifier(Notifier):
    """Forwards stale entries to the kernel, asynchronously: the synchronous form can
    deadlock when called while a related request is being handled."""

    def __init__(self):
        self._lock = threading.Lock()   # pyfuse3 starts its notify thread lazily, unguarded

    def entry(self, parent_ino: int, name: str) -> None:
        if not fits(name):
            return      # longer than NAME_MAX: the kernel never held it (it refuses to drop it)
        with self._lock:
            pyfuse3.invalidate_entry_async(parent_ino, fsencode(name), ignore_enoent=True)


class Operations(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(self, fs: Filesystem):
        super().__init__()
        self.fs = fs
        self.requests = collections.Counter()   # handled requests by kind (diagnostics, tests)
        self.placed = 0                         # files placed in the page cache ahead (place_ahead)
        self._ahead: Optional[trio.Event] = None

    def _getattr(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = a.entry_timeout
        e.attr_timeout = a.attr_timeout
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = self.fs.uid
        e.st_gid = self.fs.gid
        e.st_rdev = 0
        e.st_size = a.size
        e.st_blksize = 4096
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.mtime_ns
        return e

    def _entry(self, node, attr: Attr) -> pyfuse3.EntryAttributes:
        """Reply for a request that hands the kernel a new reference to node."""
        self.fs.remember(node)
        return self._getattr(attr)

    # ------------------------------------------------------------------ names and attributes
    @_handler
    async def lookup(self, parent_inode, name, ctx):
        name = fsdecode(name)
        if self.fs.renders(parent_inode, name):     # budget/N/, stats.json, reports/
            return self._entry(*await _blocking(self.fs.lookup, parent_inode, name))
        return self._entry(*self.fs.lookup(parent_inode, name))

    @_handler
    async def forget(self, inode_list):
        for ino, n in inode_list:
            self.fs.forget(ino, n)

    @_handler
    async def getattr(self, inode, ctx):
        if self.fs.renders(inode):
            return self._getattr(await _blocking(self.fs.getattr, inode))
        return self._getattr(self.fs.getattr(inode))

    @_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {}
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if kw and self.fs.is_inbox(inode):    # may copy a stored file into the spool first
            return self._getattr(await _blocking(self.fs.setattr, inode, fh, **kw))
        return self._getattr(self.fs.setattr(inode, fh, **kw))

    @_handler
    async def readlink(self, inode, ctx):
        return fsencode(self.fs.readlink(inode))

    @_handler
    async def statfs(self, ctx):
        st, out = self.fs.statfs(), pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(st, field))
        return out

    # ------------------------------------------------------------------ directories
    @_handler
    async def opendir(self, inode, ctx):
        return self.fs.opendir(inode)

    @_handler
    async def readdir(self, fh, start_id, token):
        if start_id == 0 and not self.fs.small_dir(fh):
            # (re)reading a directory may take a while; one that was small when last
            # listed is listed here: cheaper than the hand-off to a worker thread and back
            entries = await _blocking(self.fs.readdir, fh, start_id)
        else:
            entries = self.fs.readdir(fh, start_id)
        for name, node, attr, next_id in entries:
            if not pyfuse3.readdir_reply(token, fsencode(name), self._getattr(attr), next_id):
                break
            self.fs.remember(node)

    @_handler
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    # ------------------------------------------------------------------ files
    @_handler
    async def open(self, inode, flags, ctx):
        # No decode here: with keep_cache the kernel serves a warm file from its page
        # cache and sends no READ at all, so decoding at open would be wasted work; the
        # first READ decodes (off the event loop), see read().
        if self.fs.open_blocks(inode, flags):     # a copy into the spool, a report made
            fh, keep_cache, direct_io = await _blocking(self.fs.open, inode, flags)
        else:
            fh, keep_cache, direct_io = self.fs.open(inode, flags)
        if self._ahead is not None and self.fs.readahead.pending():
            self._ahead.set()
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=direct_io)

    @_handler
    async def read(self, fh, off, size):
        data = self.fs.read_cached(fh, off, size)
        if data is None:
            if self.fs.small(fh):
                # a small file decodes in well under a millisecond (at worst one block):
                # cheaper here than the hand-off to a worker thread and back
                data = self.fs.read(fh, off, size)
            else:
                data = self.fs.read_ready(fh, off, size)
                if data is None:
                    data = await _blocking(self.fs.read, fh, off, size)
        return data

    @_handler
    async def write(self, fh, off, buf):
        return self.fs.write(fh, off, buf)

    @_handler
    async def flush(self, fh):
        # Nothing happens at close(): written data is in the spool at write() and ingested
        # once settled. ENOSYS makes the kernel stop sending FLUSH on this connection, a
        # round trip saved at every close() (reads included).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_handler
    async def fsync(self, fh, datasync):
        await _blocking(self.fs.fsync, fh)

    @_handler
    async def release(self, fh):
        self.fs.release(fh)

    async def place_ahead(self) -> None:
        """Place the files a reader is about to open in the kernel's page cache
        (Filesystem.push_batch, fs/readahead.py), between requests: on the event loop,
        which is what makes it safe (see push_batch): a file opened while its batch was
        decoded is not placed, and nothing awaits between that check and the placing. A
        checkpoint after each file, so that requests wait for at most one placing (and
        one batch's decoding). A kernel without notify_store ends it."""
        while True:
            self._ahead = trio.Event()
            await self._ahead.wait()
            while True:
                try:
                    batch = self.fs.push_batch()
                except Exception:
                    log.exception("readahead failed")
                    batch = []
                if not batch:
                    break
                for ino, data in batch:
                    if not self.fs.unopened(ino):
                        continue
                    try:
                        pyfuse3.notify_store(ino, 0, data)
                        self.placed += 1
                    except OSError as e:
                        if e.errno == errno.ENOSYS:
                            log.info("the kernel cannot take data ahead (notify_store): no readahead")
                            self._ahead = None
                            return
                        # ENOENT: the kernel let the inode go meanwhile
                    await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ changes
    @_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, node, attr = self.fs.create(parent_inode, fsdecode(name), mode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._entry(node, attr)

    @_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(*self.fs.mkdir(parent_inode, fsdecode(name), mode))

    @_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self.fs.mknod(parent_inode, fsdecode(name))

    @_handler
    async def symlink(self, parent_inode, name, target, ctx):
        self.fs.mknod(parent_inode, fsdecode(name))

    @_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.fs.mknod(new_parent_inode, fsdecode(new_name))

    @_handler
    async def unlink(self, parent_inode, name, ctx):
        await _blocking(self.fs.unlink, parent_inode, fsdecode(name))

    @_handler
    async def rmdir(self, parent_inode, name, ctx):
        await _blocking(self.fs.rmdir, parent_inode, fsdecode(name))

    @_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await _blocking(self.fs.rename, parent_inode_old, fsdecode(name_old),
                        parent_inode_new, fsdecode(name_new),
                        noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                        exchange=bool(flags & pyfuse3.RENAME_EXCHANGE))


async def settle_inbox(fs: Filesystem) -> None:
    """Ingest inbox files once they have settled (Filesystem.settle), off the event loop."""
    interval = min(0.5, max(0.05, fs.inbox.quiet / 4))
    while True:
        await trio.sleep(interval)
        if fs.inbox.due():
            try:
                await _blocking(fs.settle)
            except Exception:
                log.exception("ingesting settled inbox files failed")


async def watch_store(fs: Filesystem, interval: float = 1.0) -> None:
    """Notice changes made to the store by other processes (e.g. `stowfs ingest` while
    mounted) and invalidate what the kernel caches of them; and give back the store's
    pages that reads mapped."""
    while True:
        await trio.sleep(interval)
        try:
            await _blocking(fs.refresh)
            await _blocking(fs.drop_mapped)
            fs.release_idle(limits.IDLE_RELEASE_SECONDS)
        except Exception:
            log.exception("refreshing after a store change failed")
