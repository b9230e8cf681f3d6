"""Disk full: the store on a small tmpfs, filled by ingest and by inbox/.

Each pass mounts a tmpfs of a different size, stores a few real files that fit
(acknowledged), then ingests more than fits. The CLI must say "no space left on device"
in one line with exit 2 (no traceback); the mount must fail the copy with ENOSPC (not
EIO) and stay up. Afterwards every acknowledged file reads back byte for byte, and
verify is clean: a full disk must never damage what is stored. Needs root (mount -t tmpfs).
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from .common import (CLEANUP, CORPUS, Mount, Skip, Tally, check_files, is_mounted, log_crashes,
                     read_file, start_writer, stowfs, writer_results)

SIZES_MB = [3, 4, 5, 6, 8, 10, 12, 16, 20, 24]


def _tmpfs(path: Path, mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs ({r.stderr.strip()}): run as root")
    CLEANUP.tmpfs.append(str(path))


def _untmpfs(path: Path) -> None:
    if is_mounted(str(path)):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _filler(work: Path, mb: int) -> list[Path]:
    """The big real corpus files, then incompressible files (random bytes: real files
    compress and deduplicate too well to fill a disk quickly) of 2 x mb MiB in all."""
    out = sorted((p for p in CORPUS.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)[:3]
    rng = random.Random(mb)
    for k in range(2 * mb):
        p = work / f"random-{mb}-{k}.bin"
        if not p.exists():
            p.write_bytes(rng.randbytes(1 << 20))
        out.append(p)
    return out


def cli_pass(work: Path, i: int, mb: int, files: list[Path], tally: Tally) -> None:
    fs = work / f"tmpfs{i}"
    _tmpfs(fs, mb)
    try:
        store = fs / "store"
        base = files[:4]
        r = stowfs("ingest", store, *base, "--prefix", "base", "-q")
        if r.rc != 0:
            tally.add("crashed" if r.crash() else "failed", f"{mb} MiB: base ingest: {r.crash() or r.text}")
            return
        acked = {f"base/{p.name}": p.read_bytes() for p in base}
        tally.tried += 1
        fill = _filler(work, mb)
        r = stowfs("ingest", store, *fill, "--prefix", "fill", "-q")
        crash = r.crash()
        if crash:
            tally.add("crashed", f"{mb} MiB tmpfs: ingest on a full disk: {crash}")
        elif r.rc == 0:
            tally.note(f"{mb} MiB: everything fitted (no disk-full reached)")
        else:
            msg = r.text.strip()
            if r.rc != 2 or "no space left on device" not in msg.lower() or len(msg.splitlines()) != 1:
                tally.add("failed", f"{mb} MiB tmpfs: ingest on a full disk: exit {r.rc}: {msg[-300:]!r} "
                          "(want one line 'no space left on device', exit 2)")
        check_files(store, acked, tally, what=f"{mb} MiB, after disk full: ")
        v = stowfs("verify", store)
        if v.crash():
            tally.add("crashed", f"{mb} MiB: verify: {v.crash()}")
        elif v.rc != 0:
            tally.add("lost", f"{mb} MiB: verify after disk full: exit {v.rc}: {(v.out + v.err).decode()[-300:]}")
    finally:
        _untmpfs(fs)


def mount_pass(work: Path, i: int, mb: int, files: list[Path], tally: Tally) -> None:
    fs = work / f"tmpfs-m{i}"
    _tmpfs(fs, mb)
    mp = work / f"mnt-full{i}"
    m = Mount(fs / "store", mp, log=work / f"full{i}.log")   # the log off the full disk
    try:
        r = m.start()
        if r.rc != 0:
            tally.add("crashed" if r.crash() else "failed", f"{mb} MiB: mount: {r.crash() or r.text}")
            return
        data = {p: p.read_bytes() for p in files}
        base = [(p, f"base/{p.name}") for p in files[:4]]
        res, hung = writer_results(start_writer(mp / "inbox", base), timeout=300)
        acked = {rel: data[p] for p, rel in base if res.get(rel) == "ok"}
        fill = [(p, f"fill/{j}-{p.name}") for j, p in enumerate(_filler(work, mb))]
        tally.tried += 1
        res, hung = writer_results(start_writer(mp / "inbox", fill), timeout=600)
        if hung:
            tally.add("crashed", f"{mb} MiB: a copy into inbox/ hung on a full disk")
        errs = {v for v in res.values() if v != "ok"}
        if not errs:
            tally.note(f"{mb} MiB mount: everything fitted")
        elif errs - {"ENOSPC"}:
            tally.add("failed", f"{mb} MiB: copy into inbox/ on a full disk failed with {sorted(errs)} (want ENOSPC)")
        for p, rel in fill:
            if res.get(rel) == "ok":
                acked[rel] = data[p] if p in data else p.read_bytes()
        if not m.alive():
            tally.add("crashed", f"{mb} MiB: the daemon died on a full disk")
            return
        for rel, want in acked.items():
            got, err = read_file(mp / "conversations" / rel)
            if got is None:
                tally.add("lost", f"{mb} MiB mount: {rel}: close() returned 0, now {err}")
            elif got != want:
                tally.add("wrong", f"{mb} MiB mount: {rel}: other bytes")
    finally:
        m.umount()
        _untmpfs(fs)
    for c in log_crashes(m.log_since(0))[:3]:
        tally.add("crashed", f"{mb} MiB daemon log: {c}")


def run(work: Path, quick: bool, rng: random.Random, tally: Tally, files: list[Path], scale: dict) -> None:
    if os.geteuid() != 0:
        raise Skip("needs root (mount -t tmpfs)")
    small = sorted((p for p in files if p.stat().st_size < 50000), key=lambda p: p.name)
    n = scale["diskfull_passes"]
    for i in range(n):
        mb = SIZES_MB[i % len(SIZES_MB)]
        cli_pass(work, i, mb, small, tally)
        mount_pass(work, i, mb, small, tally)
    tally.note(f"{n} passes on tmpfs of {', '.join(str(SIZES_MB[i % len(SIZES_MB)]) for i in range(n))} MiB, "
               "each through the CLI and through inbox/")
