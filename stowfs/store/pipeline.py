"""Preparing many files in worker processes while the main process stores them."""
from __future__ import annotations

import os
from collections import deque
from typing import Optional

from .. import limits
from ..errors import StowError
from .ingest import Prepared, preload, prepare_many


class _Failed(BaseException):
    def __init__(self, name, path, err):
        super().__init__(str(err))
        self.name, self.path, self.err = name, path, err


def _row(item) -> tuple:
    """(name, path, mtime_ns, mode) for prepare_many, and the file's size."""
    name, path, mtime = item[0], item[1], item[2]
    mode = item[3] if len(item) > 3 else None
    st = os.stat(path)
    mtime_ns = st.st_mtime_ns if mtime is None else int(round(float(mtime) * 1e9))
    return (name, str(path), mtime_ns, (st.st_mode & 0o7777) if mode is None else (mode & 0o7777)), st.st_size


def _exit_with(parent: int, forked: bool = False) -> None:
    """Worker initializer: leave when the process that started the pool is gone. A
    forkserver's workers are children of the forkserver, not of that process; after a
    kill -9 of it they would wait forever on a queue whose write end they hold
    themselves (and keep the forkserver alive with them). A forked worker is its child
    and holds its descriptors too (the store's lock among them): the kernel kills it
    with its parent (PR_SET_PDEATHSIG); the watch below is the fallback."""
    import threading
    import time

    if forked:
        _die_with_parent(parent)

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    threading.Thread(target=watch, daemon=True, name="stowfs-parent-watch").start()


def _die_with_parent(parent: int) -> None:
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return                                            # not Linux: the watch does it
    if os.getppid() != parent:                            # it died before the prctl
        os._exit(0)


def _start_method(fork_ok: bool) -> str:
    """How the workers start. "fork" when allowed and this process runs one thread (the
    CLI's ingest): the workers begin at once with what this process has imported
    (prepare's modules, imported here first), where a forkserver starts an interpreter
    and every worker imports them again (api-log ingest on 2 cores: 0.99 -> 0.80 s).
    Otherwise the forkserver: a fork copies locks that another thread may hold (the
    mount's daemon; a second put_many after blocks were compressed in threads)."""
    import threading
    return "fork" if fork_ok and threading.active_count() == 1 else "forkserver"


def _pool(workers: int, fork_ok: bool = False):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    method = _start_method(fork_ok)
    if method == "fork":
        preload()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_exit_with, initargs=(os.getpid(), method == "fork"))


def _groups(rows: list, sizes: list) -> list:
    """Rows cut into the tasks handed to the workers: at most PREPARE_GROUP_FILES files
    or about PREPARE_GROUP_BYTES each. Small, because the store takes a task's files
    only once the whole task is prepared, and the workers should finish together (at
    64 files or 8 MiB the 82 sessions made five tasks of 6-28 files, 1-4 s each); large
    enough that a task's round trip costs little."""
    groups, cur, size = [], [], 0
    for r, n in zip(rows, sizes):
        cur.append(r)
        size += n
        if len(cur) >= limits.PREPARE_GROUP_FILES or size >= limits.PREPARE_GROUP_BYTES:
            groups.append((cur, size))
            cur, size = [], 0
    if cur:
        groups.append((cur, size))
    return groups


def prepared_stream(items: list, workers: Optional[int]):
    """Yield (name, path, Prepared or StowError) for each item, in order."""
    rows, sizes = [], []
    for item in items:
        try:
            row, size = _row(item)
        except OSError as e:
            row, size = _Failed(item[0], str(item[1]), StowError(f"cannot read {item[1]}: {e.strerror}")), 0
        rows.append(row)
        sizes.append(size)
    if workers is None:
        workers = (os.cpu_count() or 1) if len(rows) >= 32 else 0
    groups = _groups(rows, sizes)

    def ok(group):
        return [r for r in group if not isinstance(r, BaseException)]

    def emit(group, results):
        for r in group:
            if isinstance(r, _Failed):
                yield r.name, r.path, r.err
            else:
                p = next(results)
                yield r[0], r[1], p

    if workers <= 0 or len(groups) <= 1:
        for g, _ in groups:
            yield from emit(g, iter(prepare_many(ok(g))))
        return
    with _pool(workers, fork_ok=True) as ex:
        # the workers run ahead of the stores (by bytes: a batch commit, which does not
        # take rows, must not leave them idle), in order of the rows
        pending, ahead = deque(), 0
        for g, size in groups:
            while pending and ahead + size > limits.PREPARE_AHEAD_BYTES:
                g0, size0, fut = pending.popleft()
                ahead -= size0
                yield from emit(g0, iter(fut.result()))
            pending.append((g, size, ex.submit(prepare_many, ok(g))))
            ahead += size
        while pending:
            g0, _, fut = pending.popleft()
            yield from emit(g0, iter(fut.result()))


class Batches:
    """The prepared stream of `put_many` cut into the batches it commits: a batch ends at
    `files` files or `nbytes` input bytes, before a file too large to share a
    transaction (limits.ALONE_BYTES: stored alone), or at the end of the stream. Rows are
    pulled while the batch's transaction stores them, so storing overlaps preparing."""

    def __init__(self, stream, files: int, nbytes: int):
        self._stream, self._files, self._nbytes = stream, files, nbytes
        self._rows: list = []       # the current batch, as far as it was pulled
        self._bytes = 0
        self._closed = False        # the current batch is complete
        self._alone = None          # a large file pulled, to store after the batch
        self.ended = False          # the stream is exhausted

    def _pull(self):
        try:
            return next(self._stream)
        except StopIteration:
            self.ended = True
            return None

    @staticmethod
    def _large(row) -> bool:
        return isinstance(row[2], Prepared) and row[2].size > limits.ALONE_BYTES

    def _add(self, row) -> None:
        self._rows.append(row)
        self._bytes += row[2].size if isinstance(row[2], Prepared) else 0
        if len(self._rows) >= self._files or self._bytes >= self._nbytes:
            self._closed = True

    def next_alone(self):
        """Pull the next batch's first row before its transaction begins (the store is not
        held while the workers start); a file to store alone is returned instead."""
        if self._alone is not None:
            row, self._alone = self._alone, None
            return row
        if self._rows or self.ended:
            return None
        row = self._pull()
        if row is not None:
            if self._large(row):
                return row
            self._add(row)
        return None

    def rows(self):
        """The current batch's rows: those pulled already (a transaction that runs again
        replays them), then the rest as the workers deliver them."""
        yield from list(self._rows)
        while not self._closed:
            row = self._pull()
            if row is None:
                return
            if self._large(row):
                self._alone, self._closed = row, True
                return
            self._add(row)
            yield row

    def committed(self) -> None:
        """The current batch is stored: the next one starts."""
        self._rows, self._bytes, self._closed = [], 0, False


class ChildPreparer:
    """Prepares one file at a time in a child process that exits when idle: parsing, view
    renders and token counting (the tokenizers alone are ~100 MiB) then never grow the
    long-running process that stores (the mount's daemon). Measured on 58 corpus files
    put one by one: 276 MiB resident in-process, the parent's share of it gone with the
    child. A child that dies is replaced once; then the file is prepared in-process."""

    def __init__(self, idle: float = 20.0):
        import threading
        self.idle = idle
        self._lock = threading.Lock()
        self._ex = None
        self._busy = 0
        self._timer = None

    def _executor(self):
        if self._ex is None:
            self._ex = _pool(1)
        return self._ex

    def prepare(self, name: str, path: str, mtime_ns: int, mode: int):
        """The Prepared of path (as ingest.prepare_path, without the bytes)."""
        from concurrent.futures.process import BrokenProcessPool
        if path.startswith("/proc/self/"):      # an open file of ours: the child reaches it so
            path = f"/proc/{os.getpid()}/" + path[len("/proc/self/"):]
        for attempt in (0, 1):
            with self._lock:
                ex = self._executor()
                self._busy += 1
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            try:
                out = ex.submit(prepare_many, [(name, path, mtime_ns, mode)]).result()[0]
                break
            except BrokenProcessPool:
                with self._lock:
                    if self._ex is ex:
                        self._ex = None
                        ex.shutdown(wait=False)
                out = None
            finally:
                self._release()
        if out is None:
            out = prepare_many([(name, path, mtime_ns, mode)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def _release(self) -> None:
        import threading
        with self._lock:
            self._busy -= 1
            if self._busy == 0 and self._ex is not None:
                self._timer = threading.Timer(self.idle, self._expire)
                self._timer.daemon = True
                self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._busy or self._ex is None:
                return
            ex, self._ex, self._timer = self._ex, None, None
        ex.shutdown(wait=True)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            ex, self._ex, self._timer = self._ex, None, None
        if ex is not None:
            ex.shutdown(wait=True)
