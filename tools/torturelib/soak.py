"""A mount under steady load: writers copy real files into inbox/ (and remove some of
what they stored), readers cat conversations/ and text/ and list the tree, for a fixed
time, while the daemon's RSS is sampled every second.

Every read of a stored file must return its bytes; the daemon must stay up; and its
memory must stay flat: the highest RSS of the last third of the run may exceed the
highest of the first third (after a warm-up) by at most 25% + 16 MiB, and its anonymous
memory (its own, not the store pages it maps) by at most 10% + 8 MiB. The flatness
checks are made only when the run lasts 5 minutes or more (shorter ones report figures).
"""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from .common import Mount, Tally, log_crashes, read_file, start_writer, writer_results


def run(work: Path, quick: bool, rng: random.Random, tally: Tally, files: list[Path], scale: dict) -> None:
    seconds = scale["soak_seconds"]
    data = {p: p.read_bytes() for p in files}
    store, mp = work / "store", work / "mnt-soak"
    m = Mount(store, mp)
    r = m.start()
    if r.rc != 0:
        tally.add("crashed", f"mount: {r.crash() or r.text}")
        return
    acked: dict[str, bytes] = {}
    lock, stop = threading.Lock(), threading.Event()
    counts = {"copies": 0, "reads": 0, "text reads": 0, "removed": 0, "listings": 0}
    rss: list[tuple[float, int]] = []
    anon: list[int] = []
    t0 = time.monotonic()

    def writer(wid: int):
        wr = random.Random(rng.random())
        k = 0
        while not stop.is_set():
            batch = wr.sample(files, wr.randint(1, 6))
            items = [(q, f"soak/w{wid}/{k}-{j}-{q.name}") for j, q in enumerate(batch)]
            k += 1
            res, hung = writer_results(start_writer(mp / "inbox", items), timeout=600)
            with lock:
                if hung:
                    tally.add("crashed", "soak: a writer hung")
                for q, rel in items:
                    tally.tried += 1
                    counts["copies"] += 1
                    if res.get(rel) == "ok":
                        acked[rel] = data[q]
                    else:
                        tally.add("lost", f"soak: copy {rel}: {res.get(rel, 'never written')}")
                # keep the store from growing without end: remove a few older files
                if len(acked) > 400:
                    for rel in wr.sample(sorted(acked), 20):
                        try:
                            os.unlink(mp / "conversations" / rel)
                            del acked[rel]
                            counts["removed"] += 1
                        except OSError as e:
                            tally.add("failed", f"soak: rm conversations/{rel}: {e}")

    def reader():
        rr = random.Random(rng.random())
        while not stop.is_set():
            with lock:
                pool = list(acked.items())
            if not pool:
                time.sleep(0.05)
                continue
            rel, want = rr.choice(pool)
            got, err = read_file(mp / "conversations" / rel)
            with lock:
                tally.tried += 1
                counts["reads"] += 1
                still = rel in acked
                if got is None and still:
                    tally.add("lost", f"soak: read {rel}: {err}")
                elif got is not None and got != want:
                    tally.add("wrong", f"soak: read {rel}: {len(got)} bytes, {len(want)} stored")
            if rr.random() < 0.3:
                t, err = read_file(mp / "text" / (rel + ".txt"))
                with lock:
                    counts["text reads"] += 1
                    if err and err != "ENOENT" and rel in acked:
                        tally.add("failed", f"soak: text/{rel}.txt: {err}")
            if rr.random() < 0.05:
                sum(len(fs) for _, _, fs in os.walk(mp / "conversations"))
                with lock:
                    counts["listings"] += 1


    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(2)] + \
              [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            if not m.alive():
                tally.add("crashed", f"soak: the daemon died after {time.monotonic() - t0:.0f} s")
                break
            rss.append((time.monotonic() - t0, m.rss_kib()))
            anon.append(m.rss_kib("RssAnon"))
    finally:
        stop.set()
        for t in threads:
            t.join(600)
        m.umount()
    for c in log_crashes(m.log_since(0))[:3]:
        tally.add("crashed", f"daemon log: {c}")
    if rss:
        warm = [v for t, v in rss if t >= seconds * 0.1]
        third = max(1, len(warm) // 3)
        first, last = max(warm[:third]), max(warm[-third:])
        tally.note(f"{seconds} s, 2 writers + 2 readers: {counts['copies']} copies, {counts['reads']} reads, "
                   f"{counts['text reads']} text/ reads, {counts['removed']} removed, {counts['listings']} full listings")
        tally.note(f"daemon RSS: {rss[0][1] // 1024} MiB at start, peak {max(v for _, v in rss) // 1024} MiB; "
                   f"highest in the first third {first // 1024} MiB, in the last third {last // 1024} MiB")
        sixth = max(1, len(rss) // 6)
        tally.note("daemon RSS, highest in each sixth of the run: " + ", ".join(
            f"{max(v for _, v in rss[i:i + sixth]) // 1024}" for i in range(0, len(rss), sixth)) + " MiB; "
            "of it anonymous (not mapped store pages): " + ", ".join(
            f"{max(anon[i:i + sixth]) // 1024}" for i in range(0, len(anon), sixth)) + " MiB")
        if seconds >= 300 and last > first * 1.25 + 16 * 1024:
            tally.add("failed", f"daemon RSS grew: {first // 1024} MiB -> {last // 1024} MiB")
        # the daemon's own memory (not the store pages it maps) is held to a closer bound
        warm_anon = [a for (t, _), a in zip(rss, anon) if t >= seconds * 0.1]
        if seconds >= 300 and warm_anon:
            third = max(1, len(warm_anon) // 3)
            a_first, a_last = max(warm_anon[:third]), max(warm_anon[-third:])
            if a_last > a_first * 1.1 + 8 * 1024:
                tally.add("failed", f"daemon anonymous memory grew: {a_first // 1024} MiB -> "
                                    f"{a_last // 1024} MiB")
