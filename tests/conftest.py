"""Shared fixtures: real mounts that never outlive a test.

`mounter` starts `stowfs mount` (or `python -m stowfs.mount` until the CLI has it), waits
for the mount with a timeout, and in teardown always runs `fusermount3 -u -z` and kills a
daemon that is still alive. Every test mount lives under MOUNT_BASE, and stale ones from
an earlier crashed run are swept at session start. A test fails if its daemon log shows
a traceback or an ERROR line it did not declare as expected.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")
MOUNT_BASE = Path(tempfile.gettempdir()) / "stowfs-test-mounts"
MOUNT_TIMEOUT = 60


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def _stowfs_command() -> list[str]:
    """The `stowfs` CLI once it has `mount`; the mount module directly until then."""
    exe = Path(sys.executable).with_name("stowfs")
    if exe.exists():
        r = subprocess.run([str(exe), "mount", "--help"], capture_output=True, text=True)
        if r.returncode == 0 and "--cache-mb" in r.stdout:
            return [str(exe)]
    return [sys.executable, "-m", "stowfs.mount"]


def _mounts_under(base: Path) -> list[str]:
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
            if mp.startswith(str(base) + "/"):
                out.append(mp)
    return out


def _daemon_pid(store: Path) -> int:
    try:
        m = re.match(r"pid (\d+)", (store / "mount.lock").read_text())
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def _descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc), children first."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def outliving(pids: list[int], timeout: float) -> list[int]:
    """Those of pids still running after up to timeout seconds (then killed, so that no
    test leaves a process behind)."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def pytest_sessionstart(session):
    """Sweep mounts a crashed earlier run left behind: those whose test session (the pid
    in the mount point's name) is gone. Another test session running at the same time
    keeps its mounts."""
    for mp in _mounts_under(MOUNT_BASE):
        owner = Path(mp).name.split("-")[0]
        if not (owner.isdigit() and _alive(int(owner))):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)


class Mount:
    def __init__(self, store: Path, path: Path, log: Path, cmd: list[str]):
        self.store, self.path, self.log, self.cmd = store, path, log, cmd
        self.pid = 0
        self.expected_errors: list[str] = []   # regexes of log lines a test provokes on purpose

    def __truediv__(self, other) -> Path:
        return self.path / other

    def start(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.cmd, "mount", str(self.store), str(self.path), "--log", str(self.log), *extra],
                           capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        if check:
            assert r.returncode == 0, f"mount failed: {r.stderr}\n{self.log_text()}"
            assert self.mounted(), "mount returned 0 but nothing is mounted"
            self.pid = _daemon_pid(self.store)
            assert self.pid and _alive(self.pid), "daemon not running after mount"
        return r

    def waiting(self) -> list[str]:
        """inbox/ files written but not ingested yet (spool files other than leftovers)."""
        from stowfs.fs.inbox import is_leftover
        spool = self.store / "spool"
        out = []
        # os.walk, not rglob: the daemon removes emptied spool directories meanwhile
        for dirpath, _dirs, files in os.walk(spool):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), spool)
                if not is_leftover(rel):
                    out.append(rel)
        return out

    def settled(self, timeout: float = 60) -> None:
        """Wait until what was written to inbox/ is ingested: a file is stored once it has
        settled (closed and unchanged for --settle seconds), not at close()."""
        deadline = time.monotonic() + timeout
        while self.waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.waiting(), f"not ingested after {timeout} s: {self.waiting()[:10]}"

    def requests(self) -> dict[str, int]:
        """The daemon's counts of requests handled by kind, and of files it placed in the
        page cache ahead of readers ("placed-ahead"): asked for with SIGUSR1."""
        before = self.log_text().count("requests handled:")
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self.log_text().count("requests handled:") <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        line = self.log_text().split("requests handled: ")[-1].splitlines()[0]
        return {k: int(n) for k, n in (item.rsplit(" ", 1) for item in line.split(", "))}

    def mounted(self) -> bool:
        return str(self.path) in _mounts_under(MOUNT_BASE)

    def umount(self) -> None:
        r = subprocess.run([*self.cmd, "umount", str(self.path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not self.mounted()
        assert not (self.pid and _alive(self.pid)), "daemon still running after umount"

    def kill9(self) -> None:
        kids = _descendants(self.pid)       # e.g. the inbox's preparing child and its forkserver
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        left = outliving(kids, deadline - time.monotonic())
        assert not left, f"processes of the killed daemon still running: {left}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def unexpected_log_lines(self) -> list[str]:
        bad = []
        for line in self.log_text().splitlines():
            if ("Traceback" in line or " ERROR " in line or " CRITICAL " in line) and \
                    not any(re.search(p, line) for p in self.expected_errors):
                bad.append(line)
        return bad

    def cleanup(self) -> None:
        if self.mounted():
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        pid = self.pid or _daemon_pid(self.store)
        deadline = time.monotonic() + 10
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        try:
            self.path.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="session")
def stowfs_cmd() -> list[str]:
    return _stowfs_command()


@pytest.fixture
def mounter(tmp_path, stowfs_cmd):
    """mounter(store=None) -> an unmounted Mount; call .start(). Always cleaned up."""
    if not _fuse_usable():
        pytest.skip("FUSE is not available")
    made: list[Mount] = []

    def make(store: Path | None = None) -> Mount:
        if store is None:
            store = tmp_path / f"store{len(made)}"
            store.mkdir()
        MOUNT_BASE.mkdir(exist_ok=True)
        mp = MOUNT_BASE / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        mp.mkdir()
        m = Mount(store, mp, tmp_path / f"daemon{len(made)}.log", stowfs_cmd)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.cleanup()
    problems = [line for m in made for line in m.unexpected_log_lines()]
    if problems:
        pytest.fail("daemon log shows unexpected errors:\n" + "\n".join(problems[:20]) +
                    "\n--- full log ---\n" + "\n".join(m.log_text()[-6000:] for m in made))


@pytest.fixture
def mount(mounter) -> Mount:
    m = mounter()
    m.start()
    return m
