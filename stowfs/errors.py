"""Errors the store raises. The CLI turns them into one-line messages and exit codes; the
FUSE layer maps each to an errno (see ERRNO)."""
from __future__ import annotations

import errno


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
