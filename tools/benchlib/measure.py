"""Measuring the peers on one corpus: sizes, create time, mount time, ``ls -R``, ``cat``
of every file and ``grep -r`` cold and warm, daemon peak RSS, and correctness.

Rules:
- every timing is the median of ``runs`` (>= 3) runs, kept with its min and max; the
  one exception is the create time of the size references (per-file zstd, tar|zstd,
  tar|xz), which are created once: their size is the figure, and recompressing a
  corpus three times with xz -9e would take most of the time budget;
- runs are interleaved: run i of every system happens before run i+1 of any, in an
  order rotated each round, so machine drift hits every system alike;
- cold = page cache dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, as root) and a
  fresh mount; warm = the same mount again after one unmeasured pass;
- correctness: the sha256 of every file read through the system equals the original's,
  and no file is missing or extra; a system that returns wrong bytes is marked failed;
- every mount is unmounted in a ``finally`` and every daemon waited for.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .corpora import file_hashes
from .procs import CommandFailed, peak_rss_kib, run_checked

# rare but present in every corpus, so grep reads every file to the end
GREP_WORD = "timeout"
OPS = ("ls", "cat", "grep")


def timing(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 4), "min": round(min(samples), 4),
            "max": round(max(samples), 4), "runs": [round(s, 4) for s in samples]}


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False if not allowed (not root)."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def op_command(op: str, root: Path) -> list[str]:
    r = str(root) + "/"  # the trailing slash follows a symlinked root (restic's latest)
    if op == "ls":
        return ["bash", "-c", f"ls -R {shq(r)} > /dev/null"]
    if op == "cat":
        return ["bash", "-o", "pipefail", "-c", f"find {shq(r)} -type f -print0 | xargs -0 -r cat > /dev/null"]
    if op == "grep":
        return ["bash", "-c", f"grep -r -l -F {shq(GREP_WORD)} {shq(r)} | wc -l"]
    raise ValueError(op)


def run_op(op: str, root: Path) -> tuple[float, str]:
    t = time.perf_counter()
    r = run_checked(op_command(op, root), timeout=3600)
    return time.perf_counter() - t, r.stdout.strip()


def compare(expected: dict[str, str], got: dict[str, str]) -> dict:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    return {"ok": not (missing or extra or wrong), "files_checked": len(got),
            "files_expected": len(expected), "missing": len(missing), "extra": len(extra),
            "wrong_bytes": len(wrong), "examples": (missing + extra + wrong)[:5]}


class CorpusRun:
    """Measures a list of created peers on one corpus source folder."""

    def __init__(self, src: Path, peers: list, work: Path, runs: int = 3, log=print,
                 create_runs: int | None = None):
        self.src = Path(src)
        self.peers = peers
        self.work = Path(work)
        self.runs = max(3, runs)
        self.create_runs = self.runs if create_runs is None else max(1, create_runs)
        self.log = log
        self.results: dict[str, dict] = {p.name: {"system": p.name, "label": p.label, "kind": p.kind,
                                                  "notes": p.notes, "status": "ok"} for p in peers}
        self.expected = file_hashes(self.src)
        self.raw_bytes = sum(f.stat().st_size for f in self.src.rglob("*") if f.is_file())
        self.can_drop = os.geteuid() == 0

    # ------------------------------------------------------------------ helpers
    def _alive(self, kinds=None):
        return [p for p in self.peers if self.results[p.name]["status"] == "ok"
                and (kinds is None or p.kind in kinds)]

    def _fail(self, peer, why: str):
        self.log(f"    {peer.name}: FAILED {why}")
        self.results[peer.name]["status"] = "failed"
        self.results[peer.name]["reason"] = why[-800:]

    def _rounds(self, peers, runs: int | None = None):
        """Yield (round, peer) with the peer order rotated every round."""
        for i in range(self.runs if runs is None else runs):
            k = i % len(peers) if peers else 0
            for p in peers[k:] + peers[:k]:
                yield i, p

    def _mp(self, peer) -> Path:
        return self.work / "mnt" / peer.name

    # ------------------------------------------------------------------ phases
    def create_all(self):
        samples: dict[str, list[float]] = {p.name: [] for p in self.peers}
        for i, p in self._rounds(self.peers, self.create_runs):
            if self.results[p.name]["status"] != "ok" or (i > 0 and not p.repeat_create):
                continue
            self.log(f"    create {p.name} (run {i + 1}/{self.create_runs if p.repeat_create else 1})")
            try:
                samples[p.name].append(p.create(self.src, self.work / "sys" / p.name))
            except Exception as e:  # noqa: BLE001 - a failing system is reported, not fatal
                self._fail(p, f"create: {e}")
        for p in self._alive():
            r = self.results[p.name]
            r["create_s"] = timing(samples[p.name])
            r["bytes_on_disk"] = p.size_on_disk()
            r["ratio"] = round(self.raw_bytes / r["bytes_on_disk"], 3) if r["bytes_on_disk"] else None
            r["ingest_MBps"] = round(self.raw_bytes / 1e6 / r["create_s"]["median"], 3)
            if p.extra:
                r["extra"] = dict(p.extra)

    def verify_archives(self):
        """Size references: extract everything (timed, cold and warm) and check the bytes."""
        peers = self._alive({"archive"})
        if peers:
            self.log(f"    extract {', '.join(p.name for p in peers)} (cold and warm)")
        cold = {p.name: [] for p in peers}
        warm = {p.name: [] for p in peers}
        for mode, store in (("cold", cold), ("warm", warm)):
            for _, p in self._rounds(peers):
                if self.results[p.name]["status"] != "ok":
                    continue
                dest = Path(tempfile.mkdtemp(dir=self.work, prefix=f"x-{p.name}-"))
                try:
                    # the previous round's files may still be being written back:
                    # not in this round's time
                    os.sync()
                    if mode == "cold":
                        drop_caches()
                    t = time.perf_counter()
                    p.extract(dest)
                    store[p.name].append(time.perf_counter() - t)
                    if "correct" not in self.results[p.name]:
                        c = compare(self.expected, file_hashes(dest))
                        self.results[p.name]["correct"] = c
                        if not c["ok"]:
                            self._fail(p, f"wrong bytes after extract: {c}")
                except Exception as e:  # noqa: BLE001
                    self._fail(p, f"extract: {e}")
                finally:
                    shutil.rmtree(dest, ignore_errors=True)
        for p in self._alive({"archive"}):
            self.results[p.name]["extract_all_s"] = {"cold": timing(cold[p.name]), "warm": timing(warm[p.name])}

    def _mount(self, p) -> float:
        t = time.perf_counter()
        p.mount(self._mp(p))
        return time.perf_counter() - t

    def _sample_rss(self, p):
        pid = p.daemon_pid()
        if pid:
            kib = peak_rss_kib(pid)
            if kib is not None:
                r = self.results[p.name]
                r["daemon_peak_rss_MiB"] = max(r.get("daemon_peak_rss_MiB", 0), round(kib / 1024, 1))

    def _umount(self, p):
        self._sample_rss(p)
        p.umount()

    def measure_mounts(self):
        peers = self._alive({"dir", "mount"})
        try:
            # correctness first, on a fresh mount: a wrong system is failed, not timed
            for p in peers:
                self.log(f"    mount {p.name}, sha256 of every file")
                try:
                    self._mount(p)
                    c = compare(self.expected, file_hashes(p.root()))
                    self.results[p.name]["correct"] = c
                    if not c["ok"]:
                        self._fail(p, f"wrong bytes through the mount: {c}")
                except Exception as e:  # noqa: BLE001
                    self._fail(p, f"mount/read: {e}")
                    p.umount()
            peers = self._alive({"dir", "mount"})
            self._warm(peers)
            self._cold(peers)
            self._grep_check(peers)
        finally:
            for p in self.peers:
                try:
                    self._umount(p)
                except Exception as e:  # noqa: BLE001
                    self.log(f"    umount {p.name}: {e}")

    def _warm(self, peers):
        for op in OPS:
            self.log(f"    warm {op}: {len(peers)} systems x {self.runs} runs")
            samples = {p.name: [] for p in peers}
            for p in peers:  # one unmeasured pass fills the caches
                run_op(op, p.root())
            for _, p in self._rounds(peers):
                dt, out = run_op(op, p.root())
                samples[p.name].append(dt)
                if op == "grep":
                    self.results[p.name]["grep_files"] = int(out or 0)
            for p in peers:
                self.results[p.name].setdefault("warm", {})[op] = timing(samples[p.name])

    def _cold(self, peers):
        mount_s = {p.name: [] for p in peers}
        for op in OPS:
            self.log(f"    cold {op} (fresh mount, caches dropped): {len(peers)} systems x {self.runs} runs")
            samples = {p.name: [] for p in peers}
            for _, p in self._rounds(peers):
                try:
                    self._umount(p)
                    drop_caches()
                    mount_s[p.name].append(self._mount(p))
                    samples[p.name].append(run_op(op, p.root())[0])
                except CommandFailed as e:
                    self.log(f"    cold {op} {p.name}: {e}")
            for p in peers:
                if samples[p.name]:
                    self.results[p.name].setdefault("cold", {})[op] = timing(samples[p.name])
        for p in peers:
            if p.kind == "mount" and mount_s[p.name]:
                self.results[p.name]["mount_s"] = timing(mount_s[p.name])

    def _grep_check(self, peers):
        ref = self.results.get("plain", {}).get("grep_files")
        if ref is None:
            return
        for p in peers:
            got = self.results[p.name].get("grep_files")
            if got is not None and got != ref:
                self._fail(p, f"grep -rl found {got} files, the plain directory {ref}")

    def measure_stores(self):
        for p in self._alive({"store"}):
            try:
                self.results[p.name]["text_check"] = p.verify_text()
            except Exception as e:  # noqa: BLE001
                self.results[p.name]["text_check"] = {"error": str(e)[-300:]}

    def run(self) -> dict:
        self.log(f"  corpus {self.src.name}: {len(self.expected)} files, {self.raw_bytes:,} bytes")
        self.create_all()
        self.verify_archives()
        self.measure_mounts()
        self.measure_stores()
        return {"files": len(self.expected), "raw_bytes": self.raw_bytes, "runs": self.runs,
                "create_runs": self.create_runs,
                "cold_cache_dropped": self.can_drop, "grep_word": GREP_WORD,
                "systems": self.results}


def shq(s) -> str:
    import shlex
    return shlex.quote(str(s))
