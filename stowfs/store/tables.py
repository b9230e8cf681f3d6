"""What the packed tables (record groups, name pages) share: decoded frames cached by
their content hash, and a write transaction's changes kept for its own thread only."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Optional


class FrameCache:
    """Decoded frames by content hash, LRU, thread-safe. A hash names the content, so an
    entry never goes stale: a rewritten frame has a new hash."""

    def __init__(self, limit: int):
        self._d: "OrderedDict[bytes, Any]" = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, h: bytes, decode: Callable[[], Any]) -> Any:
        with self._lock:
            got = self._d.get(h)
            if got is not None:
                self._d.move_to_end(h)
                return got
        got = decode()                 # outside the lock: decodes may run side by side
        self.put(h, got)
        return got

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def put(self, h: bytes, value: Any) -> None:
        with self._lock:
            self._d[h] = value
            self._d.move_to_end(h)
            while len(self._d) > self._limit:
                self._d.popitem(last=False)


class ThreadDirty:
    """`dirty`: the changes of the write transaction running in this thread (readers in
    other threads never see them); `undo`: a log of them for a table that takes back
    the last ones (a file that failed in a batch), emptied whenever dirty is replaced."""

    def __init__(self):
        self._tl = threading.local()

    @property
    def dirty(self) -> dict:
        d: Optional[dict] = getattr(self._tl, "d", None)
        if d is None:
            d = self._tl.d = {}
        return d

    @dirty.setter
    def dirty(self, value: dict) -> None:
        self._tl.d = value
        self._tl.undo = []

    @property
    def undo(self) -> list:
        u: Optional[list] = getattr(self._tl, "undo", None)
        if u is None:
            u = self._tl.undo = []
        return u
