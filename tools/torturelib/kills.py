"""kill -9 of `stowfs ingest` and of the mount daemon at random moments.

Ingest: files an ingest that finished (exit 0) stored are acknowledged; after each kill
every acknowledged file must still read back byte for byte, the store must open for
readers, and a file a killed ingest left listed must read back whole (never half-stored).
Some kills hit the very first ingest into a new store.

Daemon: a writer copies real files into inbox/ as `cp` would; the daemon is killed at a
random moment; after a remount every file whose close() returned must read back byte for
byte from conversations/, and what an interrupted copy left there must be a prefix of
its file (acknowledged writes are ingested from the spool).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from .common import (CLEANUP, Mount, Tally, check_files, list_names, log_crashes, read_file,
                     start, start_writer, stowfs, writer_results)


def _pick(rng, files, k):
    return rng.sample(files, min(k, len(files)))


def ingest_kills(work: Path, files: list[Path], n: int, rng: random.Random, tally: Tally) -> None:
    data = {p: p.read_bytes() for p in files}
    store = work / "kill-ingest"
    acked: dict[str, bytes] = {}
    # how long an ingest of a typical batch takes, to kill anywhere inside it
    t0 = time.monotonic()
    r = stowfs("ingest", store, *files[:6], "--prefix", "base", "-q")
    if r.rc != 0 or r.crash():
        tally.add("crashed" if r.crash() else "failed", f"first ingest: {r.crash() or r.text}")
        return
    acked.update({f"base/{p.name}": data[p] for p in files[:6]})
    span = max(0.5, (time.monotonic() - t0) * 1.5)
    fresh = fresh_unreadable = 0
    for i in range(n):
        first = i % 10 == 9          # a tenth of the kills hit the first ingest of a new store
        target = work / f"kill-fresh-{fresh}" if first else store
        batch = _pick(rng, files, rng.randint(2, 10))
        prefix = f"k{i}"
        p = start("ingest", target, *batch, "--prefix", prefix, "-q")
        time.sleep(rng.uniform(0, span))
        finished = p.poll() is not None
        p.kill()
        p.wait()
        CLEANUP.done(p)
        err = p.stderr.read().decode("utf-8", "replace")
        p.stderr.close()
        if finished:
            if p.returncode == 0 and not first:
                acked.update({f"{prefix}/{q.name}": data[q] for q in batch})
            if "Traceback" in err or "internal error" in err:
                tally.add("crashed", f"ingest {prefix}: {err.strip().splitlines()[-1]}")
            continue                  # not a kill: the ingest was done
        tally.tried += 1
        names, lr = list_names(target)
        if lr.crash():
            tally.add("crashed", f"after kill {i}: {lr.crash()}")
            continue
        if names is None:
            if first and "no store" in lr.text:
                pass              # killed before the store existed: nothing to read
            else:
                tally.add("lost", f"after kill {i}{' of a first ingest' if first else ''}: "
                          f"`ls` fails: {lr.text.strip()[:200]}")
                fresh_unreadable += first
            if first:
                fresh += 1
            continue
        # whatever the killed ingest left listed must be whole
        left = {nm: data[q] for q in batch for nm in [f"{prefix}/{q.name}"] if nm in names}
        if left:
            check_files(target, left, tally, what=f"kill {i}, listed after the kill: ", missing_is="lost")
        if first:
            fresh += 1
            continue
        missing = [nm for nm in acked if nm not in names]
        for nm in missing[:50]:
            tally.add("lost", f"after kill {i}: acknowledged {nm} no longer listed")
        if i % 5 == 0 or i == n - 1:     # the full byte check every few kills (and at the end)
            check_files(store, {k: v for k, v in acked.items() if k in names}, tally, what=f"after kill {i}: ")
        if rng.random() < 0.3:            # a completed ingest now and then: more acknowledged files
            batch = _pick(rng, files, 4)
            r = stowfs("ingest", store, *batch, "--prefix", f"ok{i}", "-q")
            if r.crash():
                tally.add("crashed", r.crash())
            elif r.rc == 0:
                acked.update({f"ok{i}/{q.name}": data[q] for q in batch})
    v = stowfs("verify", store)
    if v.crash():
        tally.add("crashed", v.crash())
    elif v.rc != 0:
        tally.add("failed", f"verify after {n} ingest kills: exit {v.rc}: {v.out.decode()[-300:]}")
    tally.note(f"ingest kills: {len(acked)} acknowledged files checked; {fresh} kills of a first ingest, "
               f"after {fresh_unreadable} of which the new store did not open for readers")


def daemon_kills(work: Path, files: list[Path], n: int, rng: random.Random, tally: Tally) -> None:
    data = {p: p.read_bytes() for p in files}
    store = work / "kill-daemon"
    mp = work / "mnt-kill"
    m = Mount(store, mp)
    acked: dict[str, bytes] = {}
    partial: dict[str, bytes] = {}
    span = 1.5
    for i in range(n):
        r = m.start()
        if r.rc != 0:
            tally.add("crashed", f"mount after kill {i}: {r.crash() or r.text.strip()}")
            m.kill9()
            continue
        mark = m.log_mark()
        batch = _pick(rng, files, rng.randint(3, 12))
        items = [(q, f"d{i}/{j}-{q.name}") for j, q in enumerate(batch)]
        w = start_writer(mp / "inbox", items, chunk=rng.choice([4096, 65536, 1 << 20]))
        time.sleep(rng.uniform(0.05, span))
        if m.alive():
            tally.tried += 1
        m.kill9(unmount=False)       # the writer must see the dead mount, not the directory under it
        res, hung = writer_results(w, timeout=60)
        m.lazy_umount()
        if hung:
            tally.add("crashed", f"kill {i}: a writer hung after the daemon died")
        stray = [p for p in mp.rglob("*")]
        if stray:       # written under the mount point: the check itself would be wrong
            raise RuntimeError(f"files under the unmounted mount point: {stray[:3]}")
        for q, rel in items:
            if res.get(rel) == "ok":
                acked[f"conversations/{rel}"] = data[q]
            else:
                partial[f"conversations/{rel}"] = data[q]
        crashes = log_crashes(m.log_since(mark))
        for c in crashes[:3]:
            tally.add("crashed", f"daemon log before kill {i}: {c}")
    # one last mount: the spool is recovered; everything acknowledged must be there
    r = m.start()
    if r.rc != 0:
        tally.add("crashed", f"final mount: {r.crash() or r.text.strip()}")
        m.kill9()
        return
    try:
        for rel, want in acked.items():
            got, err = read_file(mp / rel)
            if got is None:
                tally.add("lost", f"{rel}: close() returned before the kill, now {err}")
            elif got != want:
                tally.add("wrong", f"{rel}: {len(got)} bytes read, {len(want)} written and acknowledged")
        for rel, want in partial.items():
            got, err = read_file(mp / rel)
            if got is not None and want[:len(got)] != got:
                tally.add("wrong", f"{rel} (interrupted copy): {len(got)} bytes that are not a prefix of the file")
    finally:
        u = m.umount()
        if u.rc != 0:
            tally.add("failed", f"umount: {u.text.strip()}")
    for c in log_crashes(m.log_since(0))[:3]:
        tally.add("crashed", f"daemon log: {c}")
    tally.note(f"daemon kills: {len(acked)} acknowledged copies checked, {len(partial)} interrupted ones")


def run(work: Path, quick: bool, rng: random.Random, tally: Tally, files: list[Path], scale: dict) -> None:
    for part, fn, n in (("ingest", ingest_kills, scale["ingest_kills"]),
                        ("daemon", daemon_kills, scale["daemon_kills"])):
        before = (tally.tried, tally.lost, tally.wrong, tally.crashed, tally.failed)
        fn(work, files, n, rng, tally)
        d = [a - b for a, b in zip((tally.tried, tally.lost, tally.wrong, tally.crashed, tally.failed), before)]
        tally.note(f"{part} kills: tried {d[0]}, lost {d[1]}, wrong {d[2]}, crashed {d[3]}, failed checks {d[4]}")
