"""Errors the store raises. The CLI turns them into one-line messages and exit codes; the
FUSE layer maps each to an errno (see ERRNO)."""
from __future__ import annotations

import errno
import os


class StowError(Exception):
    """Base class: a failure with a message fit for one line."""
    errno = errno.EIO


class NotFound(StowError, KeyError):
    errno = errno.ENOENT

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class Exists(StowError):
    errno = errno.EEXIST


class InvalidName(StowError):
    errno = errno.EINVAL


class StoreFull(StowError):
    """The disk (or the store's configured limit) is full; nothing was half-stored."""
    errno = errno.ENOSPC


class Corrupt(StowError):
    """Stored data failed its integrity check; never return wrong bytes."""
    errno = errno.EIO


class Busy(StowError):
    """Another process holds what this operation needs exclusively."""
    errno = errno.EBUSY


class ReadOnly(StowError):
    errno = errno.EROFS


class TooLarge(StowError):
    errno = errno.EFBIG


DISK_FULL_BYTES = 1 << 20    # less room than this for the store: its disk counts as full


def disk_full(path) -> bool:
    """Whether the file system holding path (or its nearest existing parent) has less
    than DISK_FULL_BYTES left for an unprivileged writer. Used to report a failure the
    storage engine gives as a plain I/O error as what it is: no space left on device."""
    if not path:
        return False
    path = os.path.abspath(os.fspath(path))
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_FULL_BYTES
