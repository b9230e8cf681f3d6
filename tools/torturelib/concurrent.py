"""Concurrent writers and readers on one store.

CLI: W `stowfs ingest` processes at once (each its own real files under its own prefix,
several overlapping in content so dedup races), while readers `cat` and `ls` what is
already acknowledged in a loop. Every read must return the original bytes; afterwards
every file of every finished ingest reads back byte for byte and verify is clean.

Mount: writers `cp` files into inbox/ (one of them the largest file: a long write
transaction) while readers read conversations/ and grep text/, and a watcher reads
stats.json and reports/ over and over until the mount has stored every copy; every
copy whose close() returned reads back byte for byte; the daemon stays up and answers.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from .common import (CLEANUP, Mount, Tally, check_files, list_names, log_crashes, read_file,
                     start, start_writer, stowfs, writer_results)


def _reader_loop(store: Path, acked: dict[str, bytes], stop: threading.Event, tally: Tally,
                 lock: threading.Lock, rng: random.Random) -> None:
    while not stop.is_set():
        with lock:
            pool = list(acked.items())
        if not pool:
            time.sleep(0.05)
            continue
        name, want = rng.choice(pool)
        r = stowfs("cat", store, "--", name)
        with lock:
            tally.tried += 1
            if r.crash():
                tally.add("crashed", f"reader: {r.crash()}")
            elif r.rc == 0 and r.out != want:
                tally.add("wrong", f"reader: {name}: {len(r.out)} bytes, not the {len(want)} stored")
            elif r.rc != 0:
                tally.add("lost", f"reader during writes: {name}: {r.text.strip()}")
        if rng.random() < 0.3:
            r = stowfs("ls", store)
            if r.crash():
                with lock:
                    tally.add("crashed", f"reader ls: {r.crash()}")


def cli(work: Path, files: list[Path], writers: int, rng: random.Random, tally: Tally) -> None:
    data = {p: p.read_bytes() for p in files}
    store = work / "cli-store"
    base = files[:5]
    r = stowfs("ingest", store, *base, "--prefix", "base", "-q")
    if r.rc != 0:
        tally.add("crashed" if r.crash() else "failed", f"base ingest: {r.crash() or r.text}")
        return
    acked = {f"base/{p.name}": data[p] for p in base}
    lock, stop = threading.Lock(), threading.Event()
    readers = [threading.Thread(target=_reader_loop, args=(store, acked, stop, tally, lock,
                                                           random.Random(rng.random())), daemon=True)
               for _ in range(2)]
    for t in readers:
        t.start()
    procs = []
    for w in range(writers):
        batch = rng.sample(files, min(len(files), rng.randint(4, 12)))
        procs.append((w, batch, start("ingest", store, *batch, "--prefix", f"w{w}", "-q")))
    for w, batch, p in procs:
        try:
            p.wait(600)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            tally.add("crashed", f"writer {w} hung (10 min)")
        CLEANUP.done(p)
        err = p.stderr.read().decode("utf-8", "replace")
        p.stderr.close()
        tally.tried += len(batch)
        if "Traceback" in err or "internal error" in err or p.returncode < 0:
            tally.add("crashed", f"writer {w}: exit {p.returncode}: {err.strip().splitlines()[-1:]}")
        elif p.returncode != 0:
            tally.add("lost", f"writer {w}: exit {p.returncode}: {err.strip()[-300:]}", n=len(batch))
        else:
            with lock:
                acked.update({f"w{w}/{q.name}": data[q] for q in batch})
    time.sleep(1)
    stop.set()
    for t in readers:
        t.join()
    names, lr = list_names(store)
    if names is None:
        tally.add("crashed" if lr.crash() else "lost", f"ls after concurrent writers: {lr.crash() or lr.text}")
        return
    for nm in acked:
        if nm not in names:
            tally.add("lost", f"{nm}: its ingest exited 0 but it is not listed")
    check_files(store, {k: v for k, v in acked.items() if k in names}, tally, what="after concurrent writers: ")
    v = stowfs("verify", store)
    if v.crash():
        tally.add("crashed", v.crash())
    elif v.rc != 0:
        tally.add("failed", f"verify after concurrent writers: exit {v.rc}: {v.out.decode()[-300:]}")
    tally.note(f"CLI: {writers} concurrent ingests + 2 readers; {len(acked)} acknowledged files checked")


def _cat(path: Path, m: Mount, timeout: float = 120):
    """(exit status, stdout, stderr) of `cat path` on the mount; None if it hung. Then the
    daemon is killed: a request it never answers leaves cat waiting where no signal
    reaches it, until the daemon is gone."""
    p = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        if m.alive():
            os.kill(m.pid, signal.SIGKILL)
        p.kill()
        p.communicate()
        return None


def mount(work: Path, files: list[Path], writers: int, rng: random.Random, tally: Tally) -> None:
    data = {p: p.read_bytes() for p in files}
    store, mp = work / "mount-store", work / "mnt-concurrent"
    m = Mount(store, mp)
    r = m.start()
    if r.rc != 0:
        tally.add("crashed", f"mount: {r.crash() or r.text}")
        return
    acked: dict[str, bytes] = {}
    lock, stop = threading.Lock(), threading.Event()

    def reader():
        while not stop.is_set():
            with lock:
                pool = list(acked.items())
            if pool:
                rel, want = rng.choice(pool)
                got, err = read_file(mp / rel)
                with lock:
                    tally.tried += 1
                    if got is None:
                        tally.add("lost", f"mount reader: {rel}: {err}")
                    elif got != want:
                        tally.add("wrong", f"mount reader: {rel}: {len(got)} bytes, {len(want)} written")
            g = subprocess.run(["grep", "-rlc", "the", str(mp / "text")], capture_output=True, timeout=300)
            if g.returncode not in (0, 1):
                with lock:
                    tally.add("failed", f"grep -r text/: exit {g.returncode}: {g.stderr.decode()[-200:]}")
            time.sleep(0.05)

    def watcher():
        # what the mount makes of the whole store (counters, token facts, reports), read
        # over and over while the writers store files: once, a read of stats.json made
        # the daemon wait for its own writer for good
        while not stop.is_set():
            for rel in ("stats.json", "reports/cost.txt"):
                c = _cat(mp / rel, m)
                if c is None:
                    with lock:
                        tally.add("crashed", f"cat {rel} hung while writers stored files (the daemon is killed)")
                    stop.set()
                    return
                rc, out, err = c
                with lock:
                    tally.tried += 1
                    if rc != 0 or not out:
                        tally.add("failed", f"cat {rel}: exit {rc}: {err.decode()[-200:]}")
                    elif rel == "stats.json":
                        try:
                            json.loads(out)
                        except ValueError as e:
                            tally.add("wrong", f"stats.json is not JSON: {e}")
    rt = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    rt.append(threading.Thread(target=watcher, daemon=True))
    for t in rt:
        t.start()
    try:
        ws = []
        largest = max(files, key=lambda q: q.stat().st_size)
        for w in range(writers):
            batch = rng.sample(files, min(len(files), rng.randint(5, 15)))
            if w == 0 and largest not in batch:
                # a long write transaction (the watcher's reads meet it)
                batch.append(largest)
            items = [(q, f"mw{w}/{j}-{q.name}") for j, q in enumerate(batch)]
            ws.append((items, start_writer(mp / "inbox", items)))
        for items, p in ws:
            res, hung = writer_results(p, timeout=600)
            if hung:
                tally.add("crashed", "a mount writer hung")
            for q, rel in items:
                tally.tried += 1
                if res.get(rel) == "ok":
                    with lock:
                        acked[f"conversations/{rel}"] = data[q]
                else:
                    tally.add("lost", f"mount writer: {rel}: {res.get(rel, 'never written')}")
        # the watcher goes on while the mount stores what the writers left in inbox/
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            c = _cat(mp / "stats.json", m)
            if c is None:
                with lock:
                    tally.add("crashed", "cat stats.json hung while the mount stored inbox files (the daemon is killed)")
                break
            try:
                st = json.loads(c[1])
            except ValueError:
                break       # (the watcher says what it got)
            if st.get("files", 0) >= len(acked):
                break
            time.sleep(0.2)
        stop.set()
        for t in rt:
            t.join(300)
        for rel, want in acked.items():
            got, err = read_file(mp / rel)
            if got is None:
                tally.add("lost", f"{rel}: {err}")
            elif got != want:
                tally.add("wrong", f"{rel}: {len(got)} bytes, {len(want)} written")
        if not m.alive():
            tally.add("crashed", "the daemon died")
    finally:
        stop.set()
        u = m.umount()
        if u.rc != 0:
            tally.add("failed", f"umount: {u.text.strip()}")
    for c in log_crashes(m.log_since(0))[:5]:
        tally.add("crashed", f"daemon log: {c}")
    tally.note(f"mount: {writers} writers into inbox/ + 2 readers (cat, grep -r text/) + stats.json and reports/ read over and over; {len(acked)} copies checked")


def run(work: Path, quick: bool, rng: random.Random, tally: Tally, files: list[Path], scale: dict) -> None:
    cli(work, files, scale["writers"], rng, tally)
    mount(work, files, scale["mount_writers"], rng, tally)
