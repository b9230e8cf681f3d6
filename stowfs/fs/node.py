"""What the filesystem model hands out: nodes (what an inode stands for), attributes and
open-file handles. Plain data, no I/O."""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from ..facts import views_fact

DIR, FILE, LINK = "dir", "file", "link"

# Kernel cache lifetimes (seconds). Stored content is immutable per inode, so its entries
# and attributes may be cached for long: the model invalidates entries when a name is
# replaced or removed. inbox/ changes under writers (and its spool files shown under
# conversations/ until they are ingested); stats.json changes with the store.
LONG = 3600.0
INBOX_TIMEOUT = 1.0


def fs_error(code: int, detail: str = "") -> OSError:
    """The error the model raises: an OSError carrying the errno the kernel should see."""
    msg = os.strerror(code)
    return OSError(code, f"{msg}: {detail}" if detail else msg)


class FileMeta:
    """What a node needs of a stored file's record (store.FileInfo): name, identity, sizes,
    time, error and index values. The mount holds one per file the kernel references, for
    all of that file's views (see Filesystem._meta): slotted, index values interned, and
    without what only the CLI reads (SHA-256, models, counts): ~0.3 KB instead of ~1 KB."""
    __slots__ = ("name", "file_id", "size", "text_size", "mtime_ns", "mode", "error",
                 "model", "application", "day", "_views")

    def __init__(self, info):
        self.name = info.name
        self.file_id = info.file_id
        self.size = info.size
        self.text_size = info.text_size
        self.mtime_ns = getattr(info, "mtime_ns", None) or round(info.mtime * 1e9)
        self.mode = getattr(info, "mode", 0o644)
        self.error = info.error
        self.model = _intern(info.model)
        self.application = _intern(info.application)
        self.day = _intern(info.day)
        # (view, version, size, view, version, size, ...) of the registry views other than
        # text (the "views" fact): one flat tuple, not a dict of tuples (~0.3 KB a file less,
        # and the mount holds one per file the kernel references)
        stored = views_fact(getattr(info, "facts", None))
        self._views = tuple(x for k, v in stored.items() if k != "text" and len(v) == 2
                            for x in (_intern(k), v[0], v[1])) or None

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    def view_size(self, view: str) -> Optional[tuple[int, int]]:
        """(renderer version, size) of a registry view, as measured at ingest, or None."""
        t = self._views
        if t:
            for i in range(0, len(t), 3):
                if t[i] == view:
                    return t[i + 1], t[i + 2]
        return None

    def __repr__(self):
        return f"FileMeta({self.name!r}, file_id={self.file_id})"


def _intern(value: Optional[str]) -> Optional[str]:
    return sys.intern(value) if type(value) is str else value


@dataclass(eq=False, slots=True)
class Node:
    """One inode: a directory, file or symlink of one view ('conversations', 'text',
    'errors', 'by-model', ..., 'link' for the by-* symlinks, 'inbox', 'stats', 'root')."""
    ino: int
    kind: str
    view: str
    path: str                       # store path, metadata value or inbox-relative path
    info: Any = None                # FileMeta of stored files and links
    nlookup: int = 0                # how many references the kernel holds
    checked: int = -1               # store generation at which info was last found current
    listed: int = -1                # directories: entries at the last listing
    holds: int = -1                 # directories: files at any depth below, when the parent was listed
    listing: Any = None             # small directories: (store generation, entries)
    unlinked: bool = False          # inbox: removed or renamed over by the user
    opens: int = 0                  # stored files: handles open now (never placed while > 0)
    seen: int = -1                  # stored files: read-ahead epoch it was last opened in
    placed: int = -1                # stored files: read-ahead epoch it was placed ahead in


@dataclass
class Attr:
    ino: int
    mode: int
    size: int
    mtime_ns: int
    nlink: int = 1
    entry_timeout: float = LONG
    attr_timeout: float = LONG


@dataclass(eq=False, slots=True)
class Handle:
    """An open file."""
    node: Node
    data: Optional[bytes] = None    # whole content fixed at open (errors/, stats.json)
    reader: Any = None              # a store ViewReader (conversations/, text/)
    info: Any = None                # stored files: the FileMeta of the version opened
    key: Any = None                 # cache key of the decoded content
    size: int = 0
    fd: int = -1                    # inbox/: the spool file
    writable: bool = False
    pending: Any = None             # inbox/: the spool file's inbox.Pending (writable handles)
    counted: bool = False           # counted in node.opens (stored files)
    expect_cached: bool = False     # opened before in this read-ahead epoch: the kernel
                                    # should hold its pages (a READ says it let them go)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class DirHandle:
    node: Node
    entries: list = field(default_factory=list)   # [(name, Node)] sorted by name


def accmode_writes(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY

