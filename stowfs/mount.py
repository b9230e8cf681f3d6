"""`stowfs mount` and `stowfs umount`.

mount checks what it can in the calling process (mount point, store, whether the store
is already mounted; it refuses a mount point that is the store, lies inside it, holds it,
or is not empty unless -o nonempty: the daemon would deadlock on its own mount or hide
files), then daemonizes *before* anything opens LMDB (an environment must
not cross fork()). The daemon opens the store, recovers the spool, mounts, and only then
reports "ready" through a pipe; the calling process waits on that pipe, so `stowfs mount`
returns once the mount is usable, and any error (busy store, failed mount) reaches the
user as one line with exit code 2. The daemon ingests inbox/ files once they have settled
(--settle seconds without a writer or a change), and at unmount whatever it holds.
SIGINT/SIGTERM/SIGHUP unmount cleanly; SIGUSR1 logs how
many requests of each kind the daemon has handled, and how many files it placed in the
page cache ahead of readers ("placed-ahead"; so does the unmount). The daemon
logs to STORE/mount.log (or --log FILE; stderr with -f).

umount runs `fusermount3 -u` (falling back to umount(8)) and waits for the daemon to
finish, so the store is free when it returns.

Also runnable as `python -m stowfs.mount {mount,umount} ...`.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import limits

log = logging.getLogger("stowfs.mount")

READY_TIMEOUT = 120.0   # seconds the calling process waits for the daemon's mount
UMOUNT_WAIT = 600.0     # seconds umount waits for the daemon to finish (and free the store)
LOCK_NAME = "mount.lock"
SPOOL_NAME = "spool"
LOG_NAME = "mount.log"


DEFAULT_SETTLE = 2.0     # = stowfs.fs.inbox.DEFAULT_QUIET (not imported: the checks need no FUSE)


class MountError(Exception):
    """A failure explained in one line."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"not a number of seconds (0 to 86400): {text!r}")
    return value


def _err(msg: str) -> int:
    print(f"stowfs: error: {msg}", file=sys.stderr)
    return 2


# ====================================================================== arguments
def add_arguments(mount_parser: argparse.ArgumentParser, umount_parser: argparse.ArgumentParser) -> None:
    p = mount_parser
    p.add_argument("store", help="store directory (a new store is created on first use)")
    p.add_argument("mountpoint", help="empty directory to mount on")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (log to stderr) instead of daemonizing")
    p.add_argument("--debug", action="store_true", help="debug logging (and FUSE debug output with -f)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="FUSE mount options, comma-separated (e.g. allow_other; nonempty: mount over a "
                        "directory that has files in it); repeatable")
    p.add_argument("--cache-mb", dest="cache_mb", type=int, default=48, metavar="MB",
                   help="memory for decoded data, in MiB: five sixths for decoded blocks (at least "
                        "two blocks, 40 MiB), the rest for rendered views and whole decoded files "
                        "read in several requests (default: 48; the kernel's page cache keeps file "
                        "contents too)")
    p.add_argument("--idle-compact", dest="idle_compact", type=float, default=None, metavar="S",
                   help="compact the store in the background once nothing was written for S seconds "
                        f"(default: {limits.IDLE_COMPACT_SECONDS:g})")
    p.add_argument("--settle", type=_seconds, default=DEFAULT_SETTLE, metavar="SECONDS",
                   help="ingest an inbox/ file once no writer has it open and it has not changed "
                        f"for this long (default: {DEFAULT_SETTLE:g}; fsync() ingests at once)")
    p.add_argument("--log", metavar="FILE", help=f"daemon log file (default: STORE/{LOG_NAME})")
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)   # tests: MemoryStore
    umount_parser.add_argument("mountpoint", help="where a store is mounted")


# ====================================================================== checks
def _mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) of every mount, with /proc/mounts' octal escapes decoded."""
    out = []
    unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)  # noqa: E731
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append((unescape(parts[0]), unescape(parts[1]), parts[2]))
    return out


def mount_entry(mountpoint: str):
    mp = os.path.abspath(mountpoint)
    for entry in _mounts():
        if entry[1] == mp:
            return entry
    return None


def _check_mountpoint(mountpoint: str) -> str:
    mp = os.path.abspath(mountpoint)
    entry = mount_entry(mp)
    if entry is not None:
        if _is_stale(entry):
            raise MountError(f"{mp} is a stale mount (its daemon died): run `stowfs umount {mp}` first")
        raise MountError(f"{mp} is already mounted")
    try:
        os.stat(mp)
    except FileNotFoundError:
        # like the store, a missing mount point is made on first use when its parent exists
        try:
            os.mkdir(mp)
        except FileNotFoundError:
            raise MountError(f"mount point {mp} does not exist (nor does its parent)") from None
        except OSError as e:
            raise MountError(f"cannot create mount point {mp}: {e.strerror}") from None
    except OSError as e:
        raise MountError(f"cannot use mount point {mp}: {e.strerror}") from None
    if not os.path.isdir(mp):
        raise MountError(f"mount point {mp} is not a directory")
    return mp


def _check_places(mp: str, store: str) -> None:
    """Refuse a mount point the daemon would deadlock on: the store, inside it, or holding
    it (the store's own files would be behind the mount)."""
    m, s = os.path.realpath(mp), os.path.realpath(store)
    if m == s:
        raise MountError(f"mount point {mp} is the store itself: mount it somewhere else")
    if m.startswith(s.rstrip("/") + "/"):
        raise MountError(f"mount point {mp} lies inside the store {store}: mount it somewhere else")
    if s.startswith(m.rstrip("/") + "/"):
        raise MountError(f"store {store} lies inside the mount point {mp}: the mount would hide it")


def _check_empty(mp: str, options: list[str]) -> None:
    """Refuse to hide files under the mount, unless -o nonempty asks for it."""
    if "nonempty" not in _option_set(options):
        with os.scandir(mp) as it:
            if any(True for _ in it):
                raise MountError(f"mount point {mp} is not empty (-o nonempty mounts over its files)")


def _option_set(options: list[str]) -> set[str]:
    return {o.strip() for group in options or [] for o in group.split(",") if o.strip()}


def _is_stale(entry) -> bool:
    """Whether a FUSE mount has lost its daemon. A stat of the mount point may be answered
    from the kernel's cache, so look up a name that cannot be cached (in a thread: a hung
    daemon must not hang us)."""
    if not entry[2].startswith("fuse"):
        return False
    pid = _daemon_pid(entry)
    if pid and _alive(pid):
        return False
    result = []

    def probe():
        try:
            os.stat(os.path.join(entry[1], f".stowfs-probe-{os.getpid()}"))
        except OSError as e:
            result.append(e.errno)
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(5)
    return result == [errno.ENOTCONN]


def _check_store(store: str, memory: bool) -> Path:
    """The store directory; a new store is made on first use, with its parents (as
    `stowfs ingest` does), or in an empty directory."""
    path = Path(store).absolute()
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)      # only its owner reads a store
        except OSError as e:
            raise MountError(f"no store at {path}, and it cannot be created: {e.strerror}") from None
    if not path.is_dir():
        raise MountError(f"{path} is not a store directory")
    if not memory and not (path / "lmdb").is_dir():
        if any(p.name not in (SPOOL_NAME, SPOOL_NAME + ".tmp", LOG_NAME, LOCK_NAME) for p in path.iterdir()):
            raise MountError(f"{path} is not a stowfs store (and not empty)")
    return path


def _lock_store(path: Path):
    """Hold STORE/mount.lock for the life of the mount: one mount per store (the spool is
    its alone). Raises MountError naming the holder."""
    f = open(os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
    deadline = None
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
        # "pid N at MOUNTPOINT": a daemon whose mount point is already gone is finishing
        # (umount returns before it has closed the store): wait for it a little
        _, _, mp = holder.partition(" at ")
        if mp and not os.path.ismount(mp):
            deadline = deadline or time.monotonic() + 10
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
        f.close()
        raise MountError(f"store {path} is busy: already mounted ({holder})")


def _fuse_options(args, store: Path) -> set[str]:
    opts = {"default_permissions", "subtype=stowfs",
            "fsname=stowfs:" + str(store).replace("\\", "\\\\").replace(",", "\\,")}
    opts.update(_option_set(args.options) - {"nonempty"})   # ours: FUSE 3 has no such option
    if args.debug and args.foreground:
        opts.add("debug")
    return opts


# ====================================================================== mount
def cmd_mount(args) -> int:
    try:
        _check_places(os.path.abspath(args.mountpoint), os.path.abspath(args.store))
        mp = _check_mountpoint(args.mountpoint)
        _check_empty(mp, args.options)
        store = _check_store(args.store, getattr(args, "memory", False))
        _lock_store(store).close()      # early, friendly check; the daemon takes it for real
    except MountError as e:
        return _err(str(e))
    if args.foreground:
        return _serve(args, store, mp, _report_stderr)
    return _daemonize(args, store, mp)


def _report_stderr(error):
    if error:
        print(f"stowfs: error: {error}", file=sys.stderr)


def _daemonize(args, store: Path, mp: str) -> int:
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:   # first child: new session, then the daemon as a grandchild
        code = 2
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                code = _daemon_child(args, store, mp, w)
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    msg, deadline = b"", time.monotonic() + READY_TIMEOUT
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                return _err(f"the mount did not become ready in {READY_TIMEOUT:.0f}s (see {_log_path(args, store)})")
            chunk = f.read(4096)
            if not chunk:
                break
            msg += chunk
    text = msg.decode("utf-8", "replace").strip()
    if text == "ready":
        return 0
    if text.startswith("error: "):
        return _err(text[len("error: "):])
    return _err(f"the mount daemon died before the mount was ready (see {_log_path(args, store)})")


def _log_path(args, store: Path) -> str:
    return os.path.abspath(args.log) if getattr(args, "log", None) else str(store / LOG_NAME)


def _daemon_child(args, store: Path, mp: str, ready_fd: int) -> int:
    """Runs in the daemon: stdio to /dev/null and the log, then serve."""
    os.chdir("/")
    logf = _log_path(args, store)
    fd = os.open(logf, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(fd, 2)      # whatever bypasses logging (a C library, a fatal error) lands in the log
    os.close(null)
    os.close(fd)

    def report(error):
        nonlocal ready_fd
        if ready_fd < 0:
            return
        try:
            os.write(ready_fd, b"ready\n" if error is None else f"error: {error}\n".encode())
        finally:
            os.close(ready_fd)
            ready_fd = -1
    return _serve(args, store, mp, report)


def _setup_logging(args) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.debug else logging.INFO)
    if not args.debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def _limit_malloc_growth() -> None:
    """Worker threads that each allocate and free multi-MB buffers make glibc open an arena
    per thread and raise its mmap threshold, so freed blocks stay in the heap: RSS far
    above the configured caches (measured on 17,671 chats files: peak 316 MB, 244 MB with
    these settings, same speed). Two arenas and a fixed 128 KiB threshold fix both."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        logging.getLogger("stowfs").info("not glibc: malloc left as it is")
        return
    M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
    libc.mallopt(M_ARENA_MAX, 2)
    libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)


def _serve(args, store: Path, mp: str, report) -> int:
    """Open the store, mount, serve until unmounted or signalled. report(None) once the
    mount is ready, report(message) if it never will be."""
    _setup_logging(args)
    # Whatever the daemon creates in the store (spool/, spool files and directories, the
    # log) is its owner's alone, whatever the umask it was started with: a spool file is
    # a conversation in clear.
    os.umask(0o077)
    try:
        import pyfuse3
        import trio
        from .fs import Filesystem
        from .fuse_ops import KernelNotifier, Operations, settle_inbox, watch_store
    except ImportError as e:
        report(f"FUSE support is not installed ({e.name}): pip install 'stowfs[fuse]'")
        return 2
    from .errors import StowError

    lock = st = compactor = None
    try:
        lock = _lock_store(store)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} at {mp}\n")
        lock.flush()
        budget = max(3, args.cache_mb) << 20
        _limit_malloc_growth()
        if getattr(args, "memory", False):
            from .memstore import MemoryStore
            st = MemoryStore(store)
        else:
            from .store import Store
            st = Store(store, create=True, cache_bytes=budget * 5 // 6)
            st.prepare_in_child()   # parsing and token counts of inbox files: not in the daemon
            st.defer_block_merges() # nor the open block, nor compressing whole blocks
            st.decode_blocks_ahead()
        fs = Filesystem(st, store / SPOOL_NAME, cache_bytes=budget // 6, notifier=KernelNotifier(),
                        settle=getattr(args, "settle", DEFAULT_SETTLE))
        found, leftovers = fs.inbox.recover()
        if found or leftovers:
            log.info("spool recovery: %d files written before to ingest, %d leftovers stay in inbox/",
                     found, len(leftovers))
        ops = Operations(fs)
        pyfuse3.init(ops, mp, _fuse_options(args, store))
        if hasattr(st, "block_stats"):          # the real store (not the memory twin)
            from .store.background import BackgroundCompactor
            compactor = BackgroundCompactor(st, getattr(args, "idle_compact", None) or limits.IDLE_COMPACT_SECONDS)
            compactor.start()
    except BaseException as e:
        if isinstance(e, (MountError, StowError)):
            msg = str(e)
        elif isinstance(e, OSError):
            msg = f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))
        elif isinstance(e, RuntimeError):
            msg = f"cannot mount on {mp}: {e}"
        else:
            log.exception("mount failed")
            msg = f"mount failed: {e!r}"
        log.error("mount failed: %s", msg)
        report(msg)
        if compactor is not None:
            compactor.stop()
        _close(st, lock)
        return 2

    log.info("mounted %s at %s (pid %d)", store, mp, os.getpid())
    code = 0
    try:
        trio.run(_main, ops, report, (watch_store, settle_inbox))
    except BaseException:
        log.exception("the FUSE main loop failed")
        code = 2
    finally:
        _drain_notifications()
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmounting failed")
        fs.stop_background()        # the search index's background sync, before the store goes
        _settle_all(fs)
        if compactor is not None:
            compactor.stop()
        _close(st, lock)
        _log_requests(ops)
        log.info("unmounted %s", mp)
    return code


def _drain_notifications(timeout: float = 5.0) -> None:
    """Let pyfuse3's notify thread submit what is queued before the session goes away.
    invalidate_entry_async requests wait in that thread's queue, which pyfuse3 ends (a
    None after them) when main() returns; one still queued when pyfuse3.close() destroys
    the session is written to no session (EINVAL, logged as an error: seen when SIGTERM
    came right after an inbox file was ingested)."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.endswith("(_notify_loop)"):
            t.join(timeout)
            if t.is_alive():
                log.warning("kernel notifications still pending after %.0f s; unmounting", timeout)


def _settle_all(fs) -> None:
    """At unmount, ingest what the inbox holds (the kernel is gone: no notifications, and
    no writer can write any more). A failure leaves the spool file for the next mount."""
    from .fs import Notifier
    fs.notifier = Notifier()
    try:
        fs.release_all()
        n = fs.settle(everything=True)
        if n:
            log.info("ingested %d inbox files at unmount", n)
    except Exception:
        log.exception("ingesting inbox files at unmount failed; they stay in the spool")


def _close(st, lock) -> None:
    if st is not None:
        st.close()
    if lock is not None:
        lock.seek(0)
        lock.truncate()
        lock.close()


def _log_requests(ops) -> None:
    # placed-ahead: not a request, the files handed to the kernel before it asked
    items = sorted(ops.requests.items()) + [("placed-ahead", ops.placed)]
    log.info("requests handled: %s", ", ".join(f"{k} {n}" for k, n in items))


async def _main(ops, report, tasks) -> None:
    import pyfuse3
    import trio

    async def stop_on_signal():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                       signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:     # diagnostics: what the kernel asked so far
                    _log_requests(ops)
                    continue
                log.info("%s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        for task in tasks:
            nursery.start_soon(task, ops.fs)
        nursery.start_soon(ops.place_ahead)
        report(None)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


# ====================================================================== umount
def cmd_umount(args) -> int:
    mp = os.path.abspath(args.mountpoint)
    entry = mount_entry(mp)
    if entry is None:
        return _err(f"{mp} is not mounted")
    daemon = _daemon_pid(entry)
    if shutil.which("fusermount3"):
        cmd = ["fusermount3", "-u", mp]
    elif shutil.which("fusermount"):
        cmd = ["fusermount", "-u", mp]
    else:
        cmd = ["umount", mp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and cmd[0] != "umount" and os.geteuid() == 0:
        r = subprocess.run(["umount", mp], capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        why = why[-1] if why else f"{cmd[0]} failed"
        if "busy" in why.lower():
            why = f"{mp} is busy (a process is using it); close it and retry"
        return _err(why)
    if daemon:      # it ingests what inbox/ still holds before it exits: the store is free after
        deadline = time.monotonic() + UMOUNT_WAIT
        while time.monotonic() < deadline and _alive(daemon):
            time.sleep(0.05)
    return 0


def _daemon_pid(entry) -> int:
    """The pid of the daemon serving this mount, from STORE/mount.lock (0 if unknown)."""
    source = entry[0]
    if not source.startswith("stowfs:"):
        return 0
    try:
        text = (Path(source[len("stowfs:"):]) / LOCK_NAME).read_text()
    except OSError:
        return 0
    m = re.match(r"pid (\d+) at (.*)$", text.strip())
    return int(m.group(1)) if m and m.group(2) == entry[1] else 0


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not: nobody may reap a double-forked daemon)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(") ")[2][:1] not in ("Z", "X")
    except OSError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stowfs.mount")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount a store")
    u = sub.add_parser("umount", help="unmount")
    add_arguments(m, u)
    args = parser.parse_args(argv)
    return cmd_mount(args) if args.command == "mount" else cmd_umount(args)


if __name__ == "__main__":
    sys.exit(main())
