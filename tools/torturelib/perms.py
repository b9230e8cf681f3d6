"""Other users must not read the store: modes on disk and access as `nobody`.

A store is created by `stowfs ingest` and by `stowfs mount` under umask 022 (the usual
default, which would leave new files world-readable); while the mount runs and a copy
into inbox/ is still open (its spool file exists), every directory under the store must
be 0700 and every file 0600 (no group or other bits; inside spool/, which is 0700, inbox
files keep the mode their writer asked for). Then, as the user nobody (setpriv),
reading the LMDB file, `stowfs cat` and reading the mount must all fail, with one clear
line from the CLI and no traceback. A read that succeeds is a leak (a failed check).
"""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

from . import common
from .common import CLEANUP, Mount, Skip, Tally, log_crashes, stowfs


def _modes(store: Path) -> list[str]:
    """Paths under the store readable by group or others. Inside spool/ (itself 0700, so
    no one else can reach what it holds), an inbox file and directory keep the mode their
    writer asked for: it is what inbox/ shows and what the file is stored with."""
    bad = []
    spool = store / "spool"
    for root, dirs, files in os.walk(store):
        for n in dirs + files:
            p = Path(root) / n
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            if spool in p.parents and not spool.stat().st_mode & 0o077:
                continue
            if st.st_mode & 0o077:
                bad.append(f"{p.relative_to(store.parent)} {stat.filemode(st.st_mode)}")
    st = store.stat()
    if st.st_mode & 0o077:
        bad.insert(0, f"{store.name}/ {stat.filemode(st.st_mode)}")
    return bad


def _as_nobody(*cmd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *cmd],
                          capture_output=True, timeout=timeout, cwd="/")


def run(work: Path, quick: bool, rng, tally: Tally, files: list[Path], scale: dict) -> None:
    if os.geteuid() != 0:
        raise Skip("needs root (to act as another user with setpriv)")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user 'nobody'") from None
    os.chmod(work, 0o755)
    os.chmod(work.parent, 0o755)
    sample = [p for p in files if p.stat().st_size < 50000][:3]
    cli_ok = _as_nobody(sys.executable, "-c", "pass").returncode == 0
    if not cli_ok:
        tally.note(f"the CLI as nobody: not run ({sys.executable} is not executable for nobody); "
                   "files and the mount are")
    leaks: list[str] = []
    for how in ("ingest", "mount"):
        store, mp = work / f"store-{how}", work / f"mnt-{how}"
        m = Mount(store, mp, log=None)
        m.log = store / "mount.log" if how == "mount" else work / "ingest-mount.log"
        if how == "ingest":
            r = stowfs("ingest", store, *sample, "-q", umask=0o022)
            if r.rc != 0:
                tally.add("failed", f"ingest: {r.text}")
                continue
            r = m.start(umask=0o022)
        else:
            r = stowfs("mount", store, mp, umask=0o022, timeout=120)   # default log: STORE/mount.log
            CLEANUP.mounts.append(str(mp))
            m.pid = m.daemon_pid() if r.rc == 0 else 0
        if r.rc != 0:
            tally.add("crashed" if r.crash() else "failed", f"mount ({how}): {r.crash() or r.text}")
            continue
        try:
            # a copy in progress: its spool file exists while it is open
            fd = os.open(mp / "inbox" / "open-copy.json", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, sample[0].read_bytes())
            os.mkdir(mp / "inbox" / "sub", 0o755)
            fd2 = os.open(mp / "inbox" / "sub" / "x.json", os.O_WRONLY | os.O_CREAT, 0o666)
            os.write(fd2, b"{}")
            tally.tried += 1
            bad = _modes(store)
            for b in bad[:8]:
                tally.add("failed", f"store made by {how} under umask 022: {b} (want 0700 / 0600)")
            if bad:
                tally.note(f"{how}: {len(bad)} paths readable by group or others: "
                           + ", ".join(b.split()[0] for b in bad[:12]))
            os.close(fd)
            os.close(fd2)
            name = sample[0].name
            if how == "mount":
                name = "open-copy.json"
            # as nobody: the LMDB file, the CLI, the mount
            data_files = sorted(store.rglob("data.mdb"))
            checks = [("read data.mdb", ["head", "-c", "64", str(data_files[0])] if data_files else ["true"]),
                      ("list the store directory", ["ls", str(store)]),
                      ("stowfs cat", [sys.executable, "-m", "stowfs", "cat", str(store), name]),
                      ("stowfs ls", [sys.executable, "-m", "stowfs", "ls", str(store)]),
                      ("read conversations/ on the mount", ["cat", str(mp / "conversations" / name)]),
                      ("list the mount", ["ls", str(mp / "conversations")])]
            for what, cmd in checks:
                if "stowfs" in what and not cli_ok:
                    continue
                tally.tried += 1
                env_cmd = ["env", f"PYTHONPATH={common.STOWFS_SRC}", *cmd]
                r = _as_nobody(*env_cmd)
                err = r.stderr.decode("utf-8", "replace")
                if "Traceback" in err:
                    tally.add("crashed", f"{how}: as nobody, {what}: {err.strip().splitlines()[-1]}")
                elif r.returncode == 0 and (r.stdout or what.startswith("list")):
                    tally.add("failed", f"store made by {how}: nobody could {what} "
                              f"({len(r.stdout)} bytes: {r.stdout[:60]!r})")
                    leaks.append(f"{how}: {what}")
                elif "stowfs" in what and r.returncode != 0 and len(err.strip().splitlines()) != 1:
                    tally.add("failed", f"{how}: as nobody, {what}: not one line: {err[-300:]!r}")
        finally:
            m.umount()
        for c in log_crashes(m.log_since(0))[:3]:
            tally.add("crashed", f"daemon log: {c}")
    tally.note("nobody could: " + ("; ".join(leaks) if leaks else "nothing (every access refused)"))
