"""Running commands, and the FUSE plumbing every mounted peer shares: waiting for a
mount to serve, unmounting, and finding a mount's daemon process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


class CommandFailed(RuntimeError):
    pass


def run_checked(cmd: list[str], *, cwd=None, env=None, timeout: float = 3600,
                ok_codes=(0,)) -> subprocess.CompletedProcess:
    """Run ``cmd``; raise CommandFailed with its stderr tail unless its exit code is ok."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode not in ok_codes:
        tail = (r.stderr or r.stdout or "").strip()[-600:]
        raise CommandFailed(f"{' '.join(map(str, cmd))[:200]} -> exit {r.returncode}: {tail}")
    return r


def is_mounted(path: Path) -> bool:
    """True if ``path`` is a mount point (by /proc/self/mounts, which never blocks)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp == target:
                return True
    return False


def wait_mounted(mountpoint: Path, proc: subprocess.Popen, timeout: float, ready: callable) -> float:
    """Wait until ``mountpoint`` is mounted and ``ready()`` (a path) exists. A daemon that
    forks into the background may exit 0; any other exit is a failure. Returns seconds."""
    t = time.perf_counter()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        code = proc.poll()
        if code not in (None, 0):
            raise CommandFailed(f"mount process exited with {code}")
        if is_mounted(mountpoint) and os.path.exists(ready()):
            return time.perf_counter() - t
        time.sleep(0.02)
    raise CommandFailed(f"{mountpoint} not ready after {timeout:.0f} s")


def umount_path(mountpoint: Path) -> None:
    """Unmount a FUSE mount: a clean ``fusermount3 -u`` first, lazy (``-z``) if busy."""
    for _ in range(50):
        if not is_mounted(mountpoint):
            return
        r = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def pids_serving(mountpoint: Path) -> list[int]:
    """Processes whose command line names ``mountpoint`` (the FUSE daemon and wrappers)."""
    target = os.path.realpath(mountpoint)
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            args = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a and os.path.realpath(a.decode("utf-8", "replace")) == target for a in args):
            out.append(int(d))
    return out


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of ``pid`` in KiB, None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
