"""What every torture test shares: the CLI, real data, mounts, tallies, and cleaning up.

Tests drive only the `stowfs` command line, the mount and files on disk, never the
store's Python internals, so they run unchanged against any store behind the same CLI.
Everything a run makes lives under one work directory, and every mount, tmpfs and child
process it starts is registered here and undone at exit (also on Ctrl-C and SIGTERM).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = (REPO.parent / "shared" / "corpus")
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")
CLI = [sys.executable, "-m", "stowfs"]
STOWFS_SRC = REPO          # the checkout whose stowfs package the CLI runs (--stowfs-repo)
CMD_TIMEOUT = 300


# ====================================================================== cleanup
class Cleanup:
    """Mounts, tmpfs, processes and directories to undo, newest first."""

    def __init__(self):
        self._lock = threading.Lock()
        self.mounts: list[str] = []
        self.tmpfs: list[str] = []
        self.procs: dict[int, subprocess.Popen] = {}
        self.dirs: list[str] = []

    def proc(self, p: subprocess.Popen) -> subprocess.Popen:
        with self._lock:
            self.procs[p.pid] = p
        return p

    def done(self, p: subprocess.Popen) -> None:
        with self._lock:
            self.procs.pop(p.pid, None)

    def run_mounts(self) -> None:
        """Unmount what a test left mounted (between tests)."""
        for mp in reversed(self.mounts):
            if is_mounted(mp):
                subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        self.mounts.clear()

    def run(self) -> None:
        with self._lock:
            procs, self.procs = list(self.procs.values()), {}
        for p in procs:
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for mp in reversed(self.mounts):
            if is_mounted(mp):
                subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        self.mounts.clear()
        for mp in reversed(self.tmpfs):
            if is_mounted(mp):
                subprocess.run(["umount", "-l", mp], capture_output=True)
        self.tmpfs.clear()
        for d in reversed(self.dirs):
            rmtree(d)
        self.dirs.clear()


CLEANUP = Cleanup()


def rmtree(path) -> None:
    """rm -rf (shutil.rmtree recurses in Python: a 1,000-deep tree breaks it)."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


def is_mounted(mp: str) -> bool:
    mp = os.path.abspath(mp)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1]) == mp:
                return True
    return False


class Skip(Exception):
    """A test that cannot run here (not root, no FUSE): reported, not failed."""


# ====================================================================== tallies
@dataclass
class Tally:
    """The four figures a test reports, plus checks that fail without fitting them (an
    unclear error message, a mode bit, damage verify did not report), with examples."""
    name: str
    tried: int = 0
    lost: int = 0
    wrong: int = 0
    crashed: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, kind: str, example: str, n: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 3:
            ex.append(example[:600])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def line(self) -> str:
        return f"tried {self.tried}, lost {self.lost}, wrong {self.wrong}, crashed {self.crashed}"

    def ok(self) -> bool:
        return not (self.lost or self.wrong or self.crashed or self.failed)

    def report(self) -> str:
        out = [f"{self.name}: {self.line()}" + (f"; failed checks {self.failed}" if self.failed else "")
               + f"  ({self.seconds:.0f} s)"]
        for n in self.notes:
            out.append(f"    {n}")
        for kind in ("lost", "wrong", "crashed", "failed"):
            for ex in self.examples.get(kind, []):
                out.append(f"    e.g. {kind}: {ex}")
        return "\n".join(out)

    def as_json(self) -> dict:
        return {"test": self.name, "tried": self.tried, "lost": self.lost, "wrong": self.wrong,
                "crashed": self.crashed, "failed": self.failed, "seconds": round(self.seconds, 1),
                "notes": self.notes, "examples": self.examples}


# ====================================================================== the CLI
@dataclass
class Result:
    args: list
    rc: int
    out: bytes
    err: bytes
    hung: bool = False

    @property
    def text(self) -> str:
        return self.err.decode("utf-8", "replace")

    def crash(self) -> str | None:
        """Why this run counts as a crash (traceback, signal, hang), or None."""
        if self.hung:
            return f"hung (killed after timeout): stowfs {' '.join(map(str, self.args))[:200]}"
        if self.rc < 0:
            return f"killed by signal {signal.Signals(-self.rc).name}: stowfs {' '.join(map(str, self.args))[:200]}: {self.text[-300:]}"
        if b"Traceback (most recent call last)" in self.err:
            return f"traceback from stowfs {' '.join(map(str, self.args))[:200]}: {last_lines(self.text)}"
        if b"stowfs: internal error:" in self.err:      # a bug the CLI caught and put in one line
            return f"internal error from stowfs {' '.join(map(str, self.args))[:200]}: {last_lines(self.text, 1)}"
        if self.rc not in (0, 1, 2):
            return f"exit {self.rc} from stowfs {' '.join(map(str, self.args))[:200]}: {self.text[-300:]}"
        return None


def last_lines(text: str, n: int = 2) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def stowfs(*args, timeout: float = CMD_TIMEOUT, user: str | None = None, umask: int | None = None,
           stdout=None) -> Result:
    """Run `stowfs ARGS` to completion (killed after timeout: counted as hung)."""
    cmd = [*CLI, *map(str, args)]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *cmd]
    pre = (lambda: os.umask(umask)) if umask is not None else None
    p = CLEANUP.proc(subprocess.Popen(cmd, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, preexec_fn=pre, cwd="/",
                                      env={**os.environ, "PYTHONPATH": str(STOWFS_SRC)}))
    try:
        out, err = p.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        hung = True
    CLEANUP.done(p)
    return Result(list(args), p.returncode, out or b"", err or b"", hung)


def start(*args, umask: int | None = None) -> subprocess.Popen:
    """Start `stowfs ARGS` in the background (registered for cleanup)."""
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return CLEANUP.proc(subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd="/",
                                         preexec_fn=pre, env={**os.environ, "PYTHONPATH": str(STOWFS_SRC)}))


def list_names(store) -> tuple[list[str] | None, Result]:
    r = stowfs("ls", store, "--json")
    if r.rc != 0:
        return None, r
    try:
        return [e["name"] for e in json.loads(r.out)], r
    except (ValueError, KeyError, TypeError):
        return None, r


def check_files(store, expected: dict[str, bytes], tally: Tally, *, what: str = "",
                missing_is: str | None = "lost") -> dict[str, str]:
    """Read every name in expected with `stowfs cat` and compare with its bytes.

    Returns {name: outcome} for the names that did not read back byte for byte:
    "wrong" (exit 0, other bytes: counted in tally.wrong), "failed: MESSAGE" (a loud
    failure: counted as missing_is unless None), "crashed" (counted in tally.crashed).
    One `cat` of all names first; on a difference, the file where it starts is read
    alone and the rest again, so a damaged store costs one run per affected file. When
    three files in a row fail with the same message that names none of them (the store
    as a whole does not open) the rest are taken to fail with it too. A message that
    names its file ("no such file: c/x") says nothing of the next one: a damaged key
    that misleads the name lookup of some names leaves others found, and taking them
    as failed too counted one such file as lost that read back intact."""
    names = list(expected)
    bad: dict[str, str] = {}
    same, last = 0, None          # how many files in a row failed the same way, and how
    while names:
        if same >= 3:
            kind, msg = last
            for n in names:
                bad[n] = "crashed" if kind == "crashed" else f"failed: {msg}"
                if kind == "crashed" or missing_is:
                    tally.add(kind if kind == "crashed" else missing_is, f"{what}{n}: {msg}")
            break
        r = stowfs("cat", store, "--", *names)
        want = b"".join(expected[n] for n in names)
        if r.rc == 0 and r.out == want:
            break
        # the file where the output stops matching
        pos = next((i for i, (a, b) in enumerate(zip(r.out, want)) if a != b), min(len(r.out), len(want)))
        acc, k = 0, len(names) - 1
        for j, n in enumerate(names):
            if pos < acc + len(expected[n]):
                k = j
                break
            acc += len(expected[n])
        n = names[k]
        one = stowfs("cat", store, "--", n)
        crash = one.crash()
        outcome = None
        if crash:
            bad[n] = "crashed"
            tally.add("crashed", f"{what}{n}: {crash}")
            outcome = ("crashed", crash.replace(n, "NAME"))
        elif one.rc == 0 and one.out != expected[n]:
            bad[n] = "wrong"
            first = next((i for i, (a, b) in enumerate(zip(one.out, expected[n])) if a != b),
                         min(len(one.out), len(expected[n])))
            tally.add("wrong", f"{what}{n}: exit 0 with {len(one.out)} bytes that differ from the "
                      f"original's {len(expected[n])} (first difference at byte {first})")
        elif one.rc != 0:
            msg = last_lines(one.text, 1)
            bad[n] = f"failed: {msg}"
            if missing_is:
                tally.add(missing_is, f"{what}{n}: {msg}")
            outcome = ("failed", msg.replace(n, "NAME")) if n not in msg else None
        same = same + 1 if outcome is not None and outcome == last else (1 if outcome else 0)
        last = outcome
        names = names[k + 1:]
    return bad


# ====================================================================== real data
def corpus_files(max_bytes: int = 1 << 30, *, exclude_big: int = 1 << 30) -> list[Path]:
    if not CORPUS.is_dir():
        raise SystemExit(f"torture: no corpus at {CORPUS} (real data is needed)")
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.stat().st_size <= exclude_big)
    out, total = [], 0
    for p in files:
        if total + p.stat().st_size > max_bytes:
            continue
        out.append(p)
        total += p.stat().st_size
    return out


def sharegpt_records(n: int, rng: random.Random) -> list[bytes]:
    """n real ShareGPT conversations from the corpus subset, each as its own JSON file."""
    path = CORPUS / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json"
    recs = json.loads(path.read_bytes())
    picks = rng.sample(range(len(recs)), min(n, len(recs)))
    return [json.dumps(recs[i], ensure_ascii=False, indent=1).encode() for i in picks]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ====================================================================== mounts
class Mount:
    """A real `stowfs mount` of a store, unmounted (or cleaned up) whatever happens."""

    def __init__(self, store: Path, mp: Path, log: Path | None = None):
        self.store, self.mp = Path(store), Path(mp)
        self.log = log or self.store.parent / (self.store.name + ".mount.log")
        self.mp.mkdir(parents=True, exist_ok=True)
        self.pid = 0

    def start(self, *extra, umask: int | None = None) -> Result:
        CLEANUP.mounts.append(str(self.mp))
        r = stowfs("mount", self.store, self.mp, "--log", self.log, *extra, timeout=120, umask=umask)
        if r.rc == 0:
            self.pid = self.daemon_pid()
        return r

    def daemon_pid(self) -> int:
        for cand in self.store.rglob("mount.lock"):
            try:
                m = re.match(r"pid (\d+)", cand.read_text())
            except OSError:
                continue
            if m:
                return int(m.group(1))
        return 0

    def alive(self) -> bool:
        if not self.pid:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rpartition(") ")[2][:1] not in ("Z", "X")
        except OSError:
            return False

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The daemon's resident memory in KiB: VmRSS, or RssAnon (its own memory, without
        the mapped store pages and libraries that RssFile counts)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def kill9(self, unmount: bool = True) -> None:
        """SIGKILL the daemon and wait for it to die; then (unless unmount=False: call
        lazy_umount() once the processes using the mount are done) detach the dead mount.
        Detaching while a writer still runs would let it write to the directory under
        the mount point and "succeed"."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.pid = 0
        if unmount:
            self.lazy_umount()

    def lazy_umount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)

    def umount(self) -> Result:
        r = stowfs("umount", self.mp, timeout=120)
        if r.rc != 0 and is_mounted(str(self.mp)):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)
        deadline = time.monotonic() + 30
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            # a daemon that hung (it is what the run reports): none is left behind
            os.kill(self.pid, signal.SIGKILL)
            while self.alive() and time.monotonic() < deadline + 10:
                time.sleep(0.05)
            r.rc = r.rc or 1
            r.err += b"\nthe daemon did not end after the unmount: killed"
        return r

    def log_problems(self, expected: tuple[str, ...] = ()) -> list[str]:
        """Traceback / ERROR / CRITICAL lines of the daemon's log not declared expected."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        bad = []
        for line in text.splitlines():
            if ("Traceback" in line or " ERROR " in line or " CRITICAL " in line
                    or "Fatal Python error" in line or "Assertion" in line) \
                    and not any(re.search(p, line) for p in expected):
                bad.append(line.strip())
        return bad

    def log_mark(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def log_crashes(text: str, expected: tuple[str, ...] = ()) -> list[str]:
    """Tracebacks (as the log line before them + their exception line), fatal errors and
    CRITICAL lines of a daemon log."""
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or lines[j].startswith("\t")):
                j += 1
            exc = lines[j].strip() if j < len(lines) else "?"
            where = lines[i - 1].strip()[:160] if i else ""
            desc = f"{where} -> {exc}"
        elif "Fatal Python error" in line or " CRITICAL " in line:
            desc = line.strip()
        else:
            continue
        if not any(re.search(p, desc) for p in expected):
            out.append(desc)
    return out


# Writes files into a directory (an inbox/) the way `cp` does, and says which close()
# returned: run as a child so a dead daemon cannot hang the torture process itself.
WRITER = r"""
import os, sys, errno
dst, chunk = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    src, rel = line.rstrip("\n").split("\t", 1)
    path = os.path.join(dst, rel)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(src, "rb") as f:
            data = f.read()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(0, len(data), chunk):
                os.write(fd, data[i:i + chunk])
        finally:
            os.close(fd)
        print("ok\t" + rel, flush=True)
    except OSError as e:
        print("err\t%s\t%s" % (rel, errno.errorcode.get(e.errno, str(e.errno))), flush=True)
"""


def start_writer(dst: Path, items: list[tuple[Path, str]], chunk: int = 128 << 10) -> subprocess.Popen:
    p = CLEANUP.proc(subprocess.Popen([sys.executable, "-c", WRITER, str(dst), str(chunk)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    p.stdin.write("".join(f"{src}\t{rel}\n" for src, rel in items))
    p.stdin.close()
    p.stdin = None
    return p


def writer_results(p: subprocess.Popen, timeout: float = 120) -> tuple[dict[str, str], bool]:
    """{rel: "ok" | errno name} for the files the writer got to; hung = it had to be killed."""
    try:
        out, _ = p.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        hung = True
    CLEANUP.done(p)
    res = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0] == "ok" and len(parts) >= 2:
            res[parts[1]] = "ok"
        elif parts[0] == "err" and len(parts) >= 3:
            res[parts[1]] = parts[2]
    return res, hung


def read_file(path: Path) -> tuple[bytes | None, str | None]:
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        return None, errno.errorcode.get(e.errno, str(e.errno))


def workdir(base: str | None) -> Path:
    d = Path(tempfile.mkdtemp(prefix="stowfs-torture-", dir=base))
    os.chmod(d, 0o755)    # other users (the permission test) must be able to reach the store
    CLEANUP.dirs.append(str(d))
    return d
