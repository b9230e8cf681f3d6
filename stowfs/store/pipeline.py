"""Preparing many files in worker processes while the main process stores them."""
from __future__ import annotations

import os
from collections import deque
from typing import Optional

from ..errors import StowError
from .ingest import prepare_many


class _Failed(BaseException):
    def __init__(self, name, path, err):
        super().__init__(str(err))
        self.name, self.path, self.err = name, path, err


def _row(item) -> tuple:
    name, path, mtime = item[0], item[1], item[2]
    mode = item[3] if len(item) > 3 else None
    st = os.stat(path)
    mtime_ns = st.st_mtime_ns if mtime is None else int(round(float(mtime) * 1e9))
    return name, str(path), mtime_ns, (st.st_mode & 0o7777) if mode is None else (mode & 0o7777)


def prepared_stream(items: list, workers: Optional[int]):
    """Yield (name, path, Prepared or StowError) for each item, in order."""
    rows = []
    for item in items:
        try:
            rows.append(_row(item))
        except OSError as e:
            rows.append(_Failed(item[0], str(item[1]), StowError(f"cannot read {item[1]}: {e.strerror}")))
    if workers is None:
        workers = (os.cpu_count() or 1) if len(rows) >= 32 else 0
    groups, cur, size = [], [], 0
    for r in rows:
        cur.append(r)
        if not isinstance(r, BaseException):
            try:
                size += os.path.getsize(r[1])
            except OSError:
                pass
        if len(cur) >= 64 or size >= 8 << 20:
            groups.append(cur)
            cur, size = [], 0
    if cur:
        groups.append(cur)

    def run(group):
        ok = [r for r in group if not isinstance(r, BaseException)]
        return iter(prepare_many(ok))

    def emit(group, results):
        for r in group:
            if isinstance(r, _Failed):
                yield r.name, r.path, r.err
            else:
                p = next(results)
                yield r[0], r[1], p

    if workers <= 0 or len(groups) <= 1:
        for g in groups:
            yield from emit(g, run(g))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        pending = deque()
        it = iter(groups)
        for g in it:
            pending.append((g, ex.submit(prepare_many, [r for r in g if not isinstance(r, BaseException)])))
            if len(pending) >= 2 * workers:
                break
        while pending:
            g, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(prepare_many, [r for r in nxt if not isinstance(r, BaseException)])))
            yield from emit(g, iter(fut.result()))
