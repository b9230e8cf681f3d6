"""Background compaction for a mounted store: when nothing has been written for
IDLE_SECONDS, bring the store to its compacted form a step at a time (compaction.steps:
each step one short write transaction, readers never blocked), and stop between steps
as soon as anything else writes. So a store fed only through inbox/ ends up as small as
one that `stowfs compact` was run on, with no command.

The steps run in a child process that opens the store itself (LMDB serves several
processes) and exits after the pass: compressing 16 MiB blocks at level 19 takes about
100 MiB of zstd state, which the daemon would otherwise carry (measured on the chats
corpus copied into inbox/: the daemon peaked at 268 MiB during the pass and stayed at
181 MiB after it). The daemon then gives the free pages back (`reclaim`, which needs the
store to itself).

kill -9 at any moment is safe: each step commits whole or not at all, and a step
rewrites a frame with the same decoded bytes (same content hash) or drops bytes no
record uses. The child leaves when the daemon is gone (pipeline._exit_with).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
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
        self._unreclaimed = False    # the last pass's free pages are not given back yet

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
                if quiet_since < self.idle:
                    continue
                if gen == done_at:
                    if self._unreclaimed and self._reclaim():   # another process had it open then
                        log.info("free pages given back after pass %d", self.passes)
                    continue
                done_at = self._pass()
                last_seen = self.store.generation
            except Exception:
                log.exception("background compaction failed; it will try again when idle")
                quiet_since = 0.0

    def _pass(self) -> Optional[int]:
        """One compaction pass (in a child); returns the generation it left, or None when
        it was interrupted by another writer (then it resumes at the next idle time)."""
        ctx = multiprocessing.get_context("forkserver")
        mine, theirs = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_pass, args=(str(self.store.path), self.store.generation,
                                                      theirs, os.getpid()),
                            name="stowfs-compactor", daemon=True)
        child.start()
        theirs.close()
        try:
            while not mine.poll(0.2):
                if self._stop.is_set() or not child.is_alive():
                    break
            got = mine.recv() if mine.poll(0) else None
        except EOFError:
            got = None
        finally:
            if child.is_alive() and got is None:
                child.kill()                # between or inside a step: both are safe
            child.join(10)
            mine.close()
        if got is None:
            if not self._stop.is_set():
                raise RuntimeError(f"the compaction child exited with {child.exitcode}")
            return None
        steps, done, error = got
        self.steps += steps
        if error:
            raise RuntimeError(error)
        if not done:
            log.info("background compaction paused: the store is being written")
            return None
        self.passes += 1
        reclaimed = self._reclaim()
        log.info("background compaction pass %d done (%d steps so far)%s", self.passes, self.steps,
                 "; free pages given back" if reclaimed else "")
        return self.store.generation

    def _reclaim(self) -> bool:
        """Give the free pages back (Store.reclaim). That needs the store alone: the pass's
        own child may still be exiting on a busy machine (its join waits 10 s), or another
        process has the store open, so a pass that could not is tried again at each idle
        tick after it, not only after the next write (the free pages stayed, 59% of the
        file, and the mount's idle-compaction test failed under load)."""
        reclaimed = self.store.reclaim()
        self._unreclaimed = not reclaimed and self.store.free_share() >= limits.RECLAIM_SLACK
        return reclaimed


def _child_pass(path: str, expected: int, conn, parent: int) -> None:
    """The steps of one pass, in the child: sends (steps, completed, error)."""
    from . import Store
    from .pipeline import _exit_with
    _exit_with(parent)
    steps, done, error = 0, False, None
    try:
        with Store(path) as store:
            for step in compaction.steps(store):
                steps += 1
                now = store.generation
                # our step bumped the generation by its commits (or less); more: someone wrote
                if now > expected + step["commits"]:
                    break
                expected = now
            else:
                done = True
    except Exception as e:              # reported by the daemon's log, with its kind
        error = f"{type(e).__name__}: {e}"
    try:
        conn.send((steps, done, error))
        conn.close()
    except OSError:                     # the daemon is gone (killed, or stopped the pass)
        pass
