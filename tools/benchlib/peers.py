"""The systems under comparison, one class each, behind one interface.

A peer is created from a source tree into its own work folder, reports the bytes it
wrote, and shows the files back either through a mount (``mount``/``umount``/``root``)
or, for the size references, by extracting them (``extract``). Timing, cache dropping,
memory and correctness checks live in ``measure.py``; this module only knows how to
drive each system.

Kinds:
  "dir"      the plain directory (baseline: no compression)
  "mount"    a filesystem that shows the files (squashfs, ratarmount, borg, restic, stowfs)
  "archive"  a size reference read back by extracting it (per-file zstd, tar|zstd, tar|xz)
  "store"    keeps conversations but not files (stowken): size and ingest rate only
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .procs import CommandFailed, is_mounted, pids_serving, run_checked, umount_path, wait_mounted

STOWKEN_HELPER = Path(__file__).with_name("stowken_ingest.py")


class PeerFailed(RuntimeError):
    """The system ran but did not do its job (the message says what)."""


class Env:
    """Where a bench run keeps its tools: the bench's own venv for pip-installed peers."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.venv = self.out / "venv"
        self._apt_updated = False

    @property
    def venv_bin(self) -> Path:
        return self.venv / "bin"

    def venv_python(self) -> Path:
        return self.venv_bin / "python"

    def ensure_venv(self) -> None:
        if not self.venv_python().exists():
            run_checked([sys.executable, "-m", "venv", str(self.venv)], timeout=300)

    def pip_install(self, *pkgs: str) -> str | None:
        """pip install into the bench venv; returns an error text or None."""
        try:
            self.ensure_venv()
            run_checked([str(self.venv_python()), "-m", "pip", "install", "-q", *pkgs], timeout=900)
        except Exception as e:  # noqa: BLE001 - reported as the skip reason
            return f"pip install {' '.join(pkgs)} failed: {str(e)[-400:]}"
        return None

    def venv_has(self, module: str) -> bool:
        if not self.venv_python().exists():
            return False
        r = subprocess.run([str(self.venv_python()), "-c", f"import {module}"], capture_output=True)
        return r.returncode == 0

    def apt_install(self, *pkgs: str) -> str | None:
        """apt-get install (root only); returns an error text or None."""
        if os.geteuid() != 0:
            return f"{' '.join(pkgs)} missing and not root (apt-get install {' '.join(pkgs)})"
        try:
            if not self._apt_updated:
                run_checked(["apt-get", "update", "-q"], timeout=600)
                self._apt_updated = True
            run_checked(["apt-get", "install", "-y", "-q", *pkgs], timeout=900,
                        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except Exception as e:  # noqa: BLE001
            return f"apt-get install {' '.join(pkgs)} failed: {str(e)[-400:]}"
        return None

    def need_binaries(self, binaries: dict[str, str]) -> str | None:
        """Install the Debian packages of the missing binaries ({binary: package})."""
        missing = {b: p for b, p in binaries.items() if shutil.which(b) is None}
        if not missing:
            return None
        err = self.apt_install(*sorted(set(missing.values())))
        if err:
            return err
        still = [b for b in missing if shutil.which(b) is None]
        return f"still missing after install: {', '.join(still)}" if still else None


def du_bytes(path: Path) -> int:
    """``du -sb``: apparent bytes of everything under ``path``."""
    out = run_checked(["du", "-sb", str(path)], timeout=600).stdout
    return int(out.split()[0])


class Peer:
    name = "?"
    label = "?"
    kind = "mount"
    notes = ""
    repeat_create = True  # False: created (and its create time taken) once per corpus

    def __init__(self, env: Env):
        self.env = env
        self.work: Path | None = None
        self.src: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.mountpoint: Path | None = None
        self.extra: dict = {}

    # -- setup
    def install_if_missing(self) -> str | None:
        return None

    # -- create
    def create(self, src: Path, work: Path) -> float:
        """Store ``src`` into ``work`` (emptied first); returns the seconds it took."""
        self.src = Path(src)
        self.work = Path(work)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        t = time.perf_counter()
        self._create()
        return time.perf_counter() - t

    def _create(self) -> None:
        raise NotImplementedError

    def size_on_disk(self) -> int:
        return du_bytes(self.stored_path())

    def stored_path(self) -> Path:
        return self.work / "data"

    # -- mount
    def mount_cmd(self, mountpoint: Path) -> list[str]:
        raise NotImplementedError

    def mount_env(self) -> dict | None:
        return None

    def mount(self, mountpoint: Path, timeout: float = 300) -> None:
        """Start the FUSE daemon in the foreground (our child) and wait until it serves."""
        self.mountpoint = Path(mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        log = open(self.work / "mount.log", "ab")
        self.proc = subprocess.Popen(self.mount_cmd(self.mountpoint), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=self.mount_env(),
                                     start_new_session=True)
        log.close()
        try:
            wait_mounted(self.mountpoint, self.proc, timeout, ready=self.ready_path)
        except CommandFailed:
            self.umount()
            tail = (self.work / "mount.log").read_bytes()[-600:].decode("utf-8", "replace")
            raise PeerFailed(f"mount failed: {tail.strip()}")

    def ready_path(self) -> Path:
        """A path that exists once the mount serves the corpus."""
        return self.root()

    def umount(self) -> None:
        if self.mountpoint is not None:
            umount_path(self.mountpoint)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.proc = None

    def daemon_pid(self) -> int | None:
        """The FUSE daemon: our child when it stays in the foreground, else found by its
        mount point."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        pids = pids_serving(self.mountpoint) if self.mountpoint else []
        return pids[0] if pids else None

    def root(self) -> Path:
        """The folder (in the mount, or on disk for the plain dir) holding the corpus files."""
        return self.mountpoint

    # -- archives
    def extract(self, dest: Path) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- baseline

class PlainDir(Peer):
    name, label, kind = "plain", "plain directory", "dir"
    notes = "cp -a of the corpus; reads straight from the local filesystem"

    def _create(self):
        run_checked(["cp", "-a", str(self.src), str(self.stored_path())])

    def mount(self, mountpoint, timeout=300):
        self.mountpoint = None

    def root(self):
        return self.stored_path()


# --------------------------------------------------------------------------- references

class PerFileZstd(Peer):
    name, label, kind = "zstd", "zstd -19 per file", "archive"
    repeat_create = False
    notes = "each file compressed on its own (zstd -19); no mount, read back by decompressing"

    def install_if_missing(self):
        return self.env.need_binaries({"zstd": "zstd"})

    def _create(self):
        run_checked(["zstd", "-19", "-q", "-r", self.src.name, "--output-dir-mirror",
                     str(self.stored_path())], cwd=self.src.parent)

    def extract(self, dest):
        tree = self.stored_path() / self.src.name
        run_checked(["zstd", "-d", "-q", "-r", ".", "--output-dir-mirror", str(dest)], cwd=tree)
        # --output-dir-mirror keeps the leading "."; file names lose ".zst"
        inner = Path(dest) / "."
        if inner.resolve() != Path(dest).resolve():  # pragma: no cover - zstd version quirk
            for p in inner.iterdir():
                p.rename(Path(dest) / p.name)


class TarZstd(Peer):
    name, label, kind = "tarzstd", "tar | zstd -19 --long=27", "archive"
    repeat_create = False
    notes = "one solid stream; size reference (no random access)"

    def install_if_missing(self):
        return self.env.need_binaries({"zstd": "zstd", "tar": "tar"})

    def stored_path(self):
        return self.work / "corpus.tar.zst"

    def _create(self):
        run_checked(["bash", "-o", "pipefail", "-c",
                     f"tar -C {q(self.src)} -cf - . | zstd -19 --long=27 -q -T1 -o {q(self.stored_path())}"])

    def extract(self, dest):
        run_checked(["bash", "-o", "pipefail", "-c",
                     f"zstd -dc --long=27 -q {q(self.stored_path())} | tar -C {q(dest)} -xf -"])


class TarXz(Peer):
    name, label, kind = "tarxz", "tar | xz -9e", "archive"
    repeat_create = False
    notes = "one solid stream; size reference (no random access)"

    def install_if_missing(self):
        return self.env.need_binaries({"xz": "xz-utils", "tar": "tar"})

    def stored_path(self):
        return self.work / "corpus.tar.xz"

    def _create(self):
        run_checked(["bash", "-o", "pipefail", "-c",
                     f"tar -C {q(self.src)} -cf - . | xz -9e -T1 > {q(self.stored_path())}"])

    def extract(self, dest):
        run_checked(["bash", "-o", "pipefail", "-c", f"xz -dc {q(self.stored_path())} | tar -C {q(dest)} -xf -"])


# --------------------------------------------------------------------------- mounted peers

class Squashfs(Peer):
    name, label = "squashfs", "squashfs (zstd-19, 128 KiB) + squashfuse"
    notes = "mksquashfs -comp zstd -Xcompression-level 19 (128 KiB blocks, the default); read-only image"
    block = None

    def install_if_missing(self):
        return self.env.need_binaries({"mksquashfs": "squashfs-tools", "squashfuse": "squashfuse",
                                       "fusermount3": "fuse3"})

    def stored_path(self):
        return self.work / "corpus.sqfs"

    def _create(self):
        run_checked(["mksquashfs", str(self.src), str(self.stored_path()), "-comp", "zstd",
                     "-Xcompression-level", "19", "-noappend", "-quiet", "-no-progress",
                     "-processors", "2"] + (["-b", self.block] if self.block else []))

    def mount_cmd(self, mp):
        return ["squashfuse", "-f", str(self.stored_path()), str(mp)]


class Squashfs1M(Squashfs):
    name, label = "squashfs-1m", "squashfs (zstd-19, 1 MiB) + squashfuse"
    notes = "mksquashfs -comp zstd -Xcompression-level 19 -b 1M (its best size setting); read-only image"
    block = "1M"


class Ratarmount(Peer):
    name, label = "ratarmount", "ratarmount over .tar.zst"
    notes = ("tar | pzstd -19 (independent frames, so ratarmount can seek); the SQLite index "
             "built by the first mount is part of create time and of the size")

    def install_if_missing(self):
        err = self.env.need_binaries({"pzstd": "zstd", "fusermount3": "fuse3"})
        if err:
            return err
        if not (self.env.venv_bin / "ratarmount").exists():
            err = self.env.pip_install("ratarmount")
            if err:
                return err
        return None if (self.env.venv_bin / "ratarmount").exists() else "ratarmount not found after pip install"

    def stored_path(self):
        return self.work / "store"

    def archive(self):
        return self.stored_path() / "corpus.tar.zst"

    def _create(self):
        self.stored_path().mkdir()
        run_checked(["bash", "-o", "pipefail", "-c",
                     f"tar -C {q(self.src)} -cf - . | pzstd -19 -p 2 -q -o {q(self.archive())}"])
        t = time.perf_counter()
        mp = self.work / "index-mnt"
        self.mount(mp)  # builds corpus.tar.zst.index.sqlite beside the archive
        self.umount()
        self.extra["index_build_seconds"] = round(time.perf_counter() - t, 3)

    def mount_cmd(self, mp):
        return [str(self.env.venv_bin / "ratarmount"), "-f", "--index-file",
                str(self.archive()) + ".index.sqlite", str(self.archive()), str(mp)]


class Borg(Peer):
    name, label = "borg", "borg (zstd,19) + borg mount"
    notes = "borg init -e none; borg create --compression zstd,19; borg mount (cache dir not counted)"

    def install_if_missing(self):
        return self.env.need_binaries({"borg": "borgbackup", "fusermount3": "fuse3"})

    def _env(self):
        return {**os.environ, "BORG_BASE_DIR": str(self.work / "borg-home"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def mount_env(self):
        return self._env()

    def stored_path(self):
        return self.work / "repo"

    def _create(self):
        run_checked(["borg", "init", "-e", "none", str(self.stored_path())], env=self._env())
        run_checked(["borg", "create", "--compression", "zstd,19", f"{self.stored_path()}::corpus", "."],
                    cwd=self.src, env=self._env())

    def mount_cmd(self, mp):
        return ["borg", "mount", "-f", f"{self.stored_path()}::corpus", str(mp)]


class Restic(Peer):
    name, label = "restic", "restic (max) + restic mount"
    notes = "restic repository v2, backup --compression max; restic mount shows snapshots/latest/"
    password = "stowfs-bench"

    def install_if_missing(self):
        err = self.env.need_binaries({"restic": "restic", "fusermount3": "fuse3"})
        if err:
            return err
        ver = run_checked(["restic", "version"]).stdout
        try:
            major, minor = (int(x) for x in ver.split()[1].split(".")[:2])
        except (IndexError, ValueError):
            return None
        if (major, minor) < (0, 14):
            return f"restic {major}.{minor} has no compression (needs 0.14+)"
        return None

    def _env(self):
        return {**os.environ, "RESTIC_PASSWORD": self.password,
                "RESTIC_CACHE_DIR": str(self.work / "cache"), "RESTIC_REPOSITORY": str(self.stored_path())}

    def mount_env(self):
        return self._env()

    def stored_path(self):
        return self.work / "repo"

    def _create(self):
        run_checked(["restic", "init", "-q", "--repository-version", "2"], env=self._env())
        run_checked(["restic", "backup", "-q", "--compression", "max", "."], cwd=self.src, env=self._env())

    def mount_cmd(self, mp):
        return ["restic", "mount", "--no-default-permissions", str(mp)]

    def root(self):
        return self.mountpoint / "snapshots" / "latest"


class Stowfs(Peer):
    """stowfs through its CLI. ``via="ingest"``: ``stowfs ingest STORE SRC``;
    ``via="inbox"``: mount an empty store and ``cp -r SRC MNT/inbox/``. Files then appear
    under ``MNT/conversations/<basename of SRC>/``."""

    kind = "mount"

    def __init__(self, env, via="ingest", compact=True):
        super().__init__(env)
        self.via = via
        self.do_compact = compact
        if via == "ingest":
            self.name = "stowfs" if compact else "stowfs-live"
            self.label = "stowfs (ingest + compact)" if compact else "stowfs (plain ingest)"
            self.notes = ("stowfs ingest STORE SRC, then stowfs compact" if compact
                          else "stowfs ingest STORE SRC, nothing else")
        else:
            self.name = "stowfs-inbox"
            self.label = "stowfs (cp -r into inbox/, idle)"
            self.notes = ("stowfs mount, cp -r SRC MNT/inbox/, then wait while the mount compacts "
                          "by itself when idle (no compact command)")

    def cli(self) -> list[str]:
        """$STOWFS_CLI, else ``stowfs`` on PATH, beside this python, or in the repo's .venv."""
        if os.environ.get("STOWFS_CLI"):
            return os.environ["STOWFS_CLI"].split()
        repo = Path(__file__).resolve().parents[2]
        for c in (shutil.which("stowfs"), Path(sys.executable).with_name("stowfs"),
                  repo / ".venv" / "bin" / "stowfs"):
            if c and Path(c).is_file() and os.access(c, os.X_OK):
                return [str(c)]
        return ["stowfs"]

    def install_if_missing(self):
        try:
            r = subprocess.run(self.cli() + ["--help"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"stowfs CLI not available yet ({e})"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).decode("utf-8", "replace").strip().splitlines()[-1:]
            return f"stowfs CLI not available yet ({' '.join(tail)[:200]})"
        for sub in ("ingest", "mount", "umount") + (("compact",) if self.do_compact else ()):
            r = subprocess.run(self.cli() + [sub, "--help"], capture_output=True, timeout=60)
            if r.returncode != 0:
                return f"stowfs CLI not available yet (no '{sub}' subcommand)"
        return None

    def stored_path(self):
        return self.work / "store"

    def _create(self):
        store = self.stored_path()
        if self.via == "ingest":
            run_checked(self.cli() + ["ingest", str(store), str(self.src)], timeout=7200)
        else:
            mp = self.work / "inbox-mnt"
            self.mount(mp, ready=mp / "inbox")
            try:
                run_checked(["cp", "-r", str(self.src), str(mp / "inbox") + "/"], timeout=7200)
                self._wait_inbox_empty(self.stored_path() / "spool")
                self._wait_idle_compaction(mp)
            finally:
                self.umount()
        if self.do_compact:
            t = time.perf_counter()
            run_checked(self.cli() + ["compact", str(store)], timeout=7200)
            self.extra["compact_seconds"] = round(time.perf_counter() - t, 3)

    @staticmethod
    def _wait_idle_compaction(mp: Path, timeout: float = 3600) -> None:
        """Until the mount's background compaction has nothing left to do."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                st = json.loads((mp / "stats.json").read_text())
            except (OSError, ValueError):
                st = {}
            if st.get("uncompacted_fragments", 1) == 0 and st.get("free_page_share", 1) < 0.2 \
                    and st.get("block_fragments", 2) <= (st.get("stream_bytes", 0) >> 24) + 1:
                return
            time.sleep(0.5)
        raise PeerFailed(f"background compaction not done after {timeout:.0f} s")

    @staticmethod
    def _wait_inbox_empty(path: Path, timeout: float = 3600) -> None:
        """Until the spool (STORE/spool) holds no file: inbox/ shows what is stored, so it
        never empties; files are ingested once settled."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not path.exists() or not any(p.is_file() for p in path.rglob("*")):
                return
            time.sleep(0.2)
        raise PeerFailed(f"inbox not drained after {timeout:.0f} s")

    def mount(self, mountpoint, timeout=300, ready=None):
        self._ready = ready
        super().mount(mountpoint, timeout)

    def ready_path(self):
        return self._ready if getattr(self, "_ready", None) else self.root()

    def mount_cmd(self, mp):
        # the plain-ingest row is read as ingest left it: no background compaction
        extra = ["--idle-compact", "86400"] if self.name == "stowfs-live" else []
        return self.cli() + ["mount", str(self.stored_path()), str(mp)] + extra

    def umount(self):
        if self.mountpoint is not None and is_mounted(self.mountpoint):
            subprocess.run(self.cli() + ["umount", str(self.mountpoint)], capture_output=True, timeout=120)
        super().umount()

    def root(self):
        return self.mountpoint / "conversations" / self.src.name


# --------------------------------------------------------------------------- stowken

class Stowken(Peer):
    """Stowken (PyPI ``stowken``) with its filesystem backend (``Stowken.open(path)``).

    It stores conversations as token-id segments (tiktoken cl100k by default) with
    segment dedup and zstd, and gives back role/text turns; it has no notion of files,
    so it cannot give back the original bytes, other JSON fields, formatting or
    non-conversation files, and it has no mount. Measured: storage size and ingest rate
    of the conversations extracted from each file."""

    name, label, kind = "stowken", "Stowken (filesystem backend)", "store"
    notes = ("keeps token ids of role/text turns, not files: no byte-exact read, no mount, "
             "no other JSON fields; size = du -sb of the vault")

    def install_if_missing(self):
        if not self.env.venv_has("stowken"):
            err = self.env.pip_install("stowken")
            if err:
                return err
        return None if self.env.venv_has("stowken") else "stowken does not import after pip install"

    def stored_path(self):
        return self.work / "vault"

    def _create(self):
        out = run_checked([str(self.env.venv_python()), str(STOWKEN_HELPER), "ingest",
                           str(self.src), str(self.stored_path())], timeout=7200).stdout
        self.extra.update(json.loads(out.strip().splitlines()[-1]))
        if self.extra["stored_conversations"] == 0:
            raise PeerFailed(f"stored no conversation: {self.extra.get('error_samples')}")

    def verify_text(self) -> dict:
        out = run_checked([str(self.env.venv_python()), str(STOWKEN_HELPER), "verify",
                           str(self.src), str(self.stored_path())], timeout=7200).stdout
        return json.loads(out.strip().splitlines()[-1])


def q(p) -> str:
    """Shell-quote a path."""
    import shlex
    return shlex.quote(str(p))


ALL = ("plain", "zstd", "tarzstd", "tarxz", "squashfs", "squashfs-1m", "ratarmount", "borg", "restic",
       "stowken", "stowfs", "stowfs-live", "stowfs-inbox")


def make(name: str, env: Env) -> Peer:
    classes = {"plain": PlainDir, "zstd": PerFileZstd, "tarzstd": TarZstd, "tarxz": TarXz,
               "squashfs": Squashfs, "squashfs-1m": Squashfs1M, "ratarmount": Ratarmount,
               "borg": Borg, "restic": Restic, "stowken": Stowken}
    if name == "stowfs":
        return Stowfs(env, via="ingest")
    if name == "stowfs-live":
        return Stowfs(env, via="ingest", compact=False)
    if name == "stowfs-inbox":
        return Stowfs(env, via="inbox", compact=False)
    if name not in classes:
        raise ValueError(f"unknown system {name!r} (one of {', '.join(ALL)})")
    return classes[name](env)
