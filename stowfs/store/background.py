"""Background compaction for a mounted store: when nothing has been written for
IDLE_SECONDS, bring the store to its compacted form a step at a time (compaction.steps:
each step one short write transaction, readers never blocked), and stop between steps
as soon as anything else writes. So a store fed only through inbox/ ends up as small as
one that `stowfs compact` was run on, with no command.

kill -9 at any moment is safe: each step commits whole or not at all, and a step
rewrites a frame with the same decoded bytes (same content hash) or drops bytes no
record uses.
"""
from __future__ import annotations

import logging
import threading
from typing import Optional

from .. import limits
from . import compaction

log = logging.getLogger("stowfs.compactor")


class BackgroundCompactor:
    def __init__(self, store, idle_seconds: float = limits.IDLE_COMPACT_SECONDS):
        self.store = store
        self.idle = idle_seconds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.passes = 0
        self.steps = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stowfs-compactor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        last_seen = self.store.generation
        done_at = None               # generation right after our last complete pass
        quiet_since = 0.0
        tick = min(1.0, self.idle / 4) if self.idle > 0 else 0.05
        while not self._stop.wait(tick):
            try:
                gen = self.store.generation
                if gen != last_seen:
                    last_seen, quiet_since = gen, 0.0
                    continue
                quiet_since += tick
                if quiet_since < self.idle or gen == done_at:
                    continue
                done_at = self._pass()
                last_seen = self.store.generation
            except Exception:
                log.exception("background compaction failed; it will try again when idle")
                quiet_since = 0.0

    def _pass(self) -> Optional[int]:
        """One compaction pass; returns the generation it left, or None when it was
        interrupted by another writer (then it resumes at the next idle time)."""
        expected = self.store.generation
        for step in compaction.steps(self.store):
            self.steps += 1
            if self._stop.is_set():
                return None
            now = self.store.generation
            # our step bumped the generation by its commits (or less); more: someone wrote
            if now > expected + step["commits"]:
                log.info("background compaction paused: the store is being written")
                return None
            expected = now
        self.passes += 1
        reclaimed = self.store.reclaim()
        log.info("background compaction pass %d done (%d steps so far)%s", self.passes, self.steps,
                 "; free pages given back" if reclaimed else "")
        return self.store.generation
