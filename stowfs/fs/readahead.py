"""Read-ahead across files: which stored files to hand the kernel before it asks.

A reader that goes through a directory in its listed order (`grep -r`, `find | xargs
cat`, `cp -r`, `tar`) costs the daemon a READ round trip per file: cat of the 5,000 chat
files made 5,000 READs, about a third of the time of a cold cat. Once two files of a
listing (conversations/, text/ or another view's folder) are opened one after the
other, the files that follow it are decoded (or rendered) and placed
in the kernel's page cache (the adapter's notify_store), up to FILES ahead of the last
one opened; the reader's open then finds the bytes there (stored files are opened with
keep_cache) and no READ is sent.

This class only keeps the order: the inodes of each listing the kernel took, where the
reader is in it, and the queue of inodes to place. Filesystem.push_batch decides whether
an inode still qualifies (known to the kernel, not open, not opened or placed since the
kernel last let pages go, small) and decodes it.
Thread-safe (listings are taken in worker threads).
"""
from __future__ import annotations

import threading
from array import array
from collections import OrderedDict, deque
from typing import Callable, Optional

FILES = 16                # files placed ahead of the last one opened
KEPT_ENTRIES = 1 << 16    # listing entries kept (8 bytes each), oldest listings dropped first


class _Listing:
    __slots__ = ("inos", "cursor", "queued_to", "streak")

    def __init__(self, inos: array):
        self.inos = inos
        self.cursor = -1        # index of the file opened last
        self.queued_to = 0      # indices below this were queued already
        self.streak = 0         # files opened in listed order, ending at cursor


class Readahead:
    def __init__(self, files: int = FILES, kept_entries: int = KEPT_ENTRIES,
                 wanted: Optional[Callable[[int], bool]] = None):
        """wanted(ino): whether an inode may still be placed; one that may not is never
        queued (a reader going through warm files again would otherwise queue one at
        every open, and wake the placing task for nothing)."""
        self.files = files
        self.wanted = wanted
        self.kept_entries = kept_entries
        self._dirs: OrderedDict[int, _Listing] = OrderedDict()
        self._kept = 0
        self._queue: deque[int] = deque(maxlen=4 * files)   # unplaced ones go, oldest first
        self._lock = threading.Lock()

    def listed(self, dir_ino: int, file_inos: list[int]) -> None:
        """The kernel took this listing of dir_ino (its files, in listed order). A new
        listing of the same directory starts over; an unchanged one keeps its place."""
        inos = array("q", file_inos)
        with self._lock:
            old = self._dirs.pop(dir_ino, None)
            if old is not None:
                self._kept -= len(old.inos)
                if old.inos == inos:
                    self._dirs[dir_ino] = old
                    self._kept += len(old.inos)
                    return
            self._dirs[dir_ino] = _Listing(inos)
            self._kept += len(inos)
            while self._kept > self.kept_entries and len(self._dirs) > 1:
                _, gone = self._dirs.popitem(last=False)
                self._kept -= len(gone.inos)

    def opened(self, dir_ino: int, ino: int) -> bool:
        """A file of dir_ino was opened. Returns whether inodes were queued."""
        with self._lock:
            lst = self._dirs.get(dir_ino)
            if lst is None:
                return False
            self._dirs.move_to_end(dir_ino)
            i = lst.cursor + 1
            if i < len(lst.inos) and lst.inos[i] == ino:
                lst.streak += 1
            else:
                try:
                    i = lst.inos.index(ino)
                except ValueError:
                    return False
                lst.streak = 1
                lst.queued_to = i + 1
            lst.cursor = i
            if lst.streak < 2:          # one open is not yet an order
                return False
            lo, hi = max(lst.queued_to, i + 1), min(len(lst.inos), i + 1 + self.files)
            if lo >= hi:
                return False
            lst.queued_to = hi
            due = lst.inos[lo:hi] if self.wanted is None else [n for n in lst.inos[lo:hi] if self.wanted(n)]
            self._queue.extend(due)
            return bool(due)

    def restart(self) -> None:
        """Forget where readers are in every listing and what was queued (the kernel let
        its pages go: files queued before may be due again)."""
        with self._lock:
            for lst in self._dirs.values():
                lst.cursor, lst.queued_to, lst.streak = -1, 0, 0
            self._queue.clear()

    def take(self) -> Optional[int]:
        """The next inode to place, or None."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def pending(self) -> bool:
        return bool(self._queue)
