"""The pyfuse3 adapter, called directly (no mount): replies, errno mapping, robustness."""
from __future__ import annotations

import errno
import logging
import os
import threading
import stat
from types import SimpleNamespace

import pytest

pyfuse3 = pytest.importorskip("pyfuse3")
import trio  # noqa: E402

from stowfs import fuse_ops  # noqa: E402
from stowfs.errors import Busy, Corrupt, StoreFull  # noqa: E402
from stowfs.fs import Filesystem  # noqa: E402
from stowfs.fs.names import ROOT_INO, TOP  # noqa: E402
from stowfs.memstore import MemoryStore  # noqa: E402
from test_fs_model import Recorder, analyze, conv  # noqa: E402


@pytest.fixture
def store():
    return MemoryStore(analyze=analyze)


@pytest.fixture
def ops(store, tmp_path):
    return fuse_ops.Operations(Filesystem(store, tmp_path / "spool", notifier=Recorder()))


def call(fn, *args):
    return trio.run(lambda: fn(*args))


def fuse_errno(fn, *args) -> int:
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fn, *args)
    return ei.value.errno


def lookup_path(ops, path: str) -> pyfuse3.EntryAttributes:
    attr = ops.fs.getattr(ROOT_INO)
    ino = ROOT_INO
    for part in path.split("/"):
        attr = call(ops.lookup, ino, part.encode(), None)
        ino = attr.st_ino
    return attr


def test_lookup_getattr_read(ops, store):
    data = conv("hello")
    store.put("d/x.json", data)
    attr = lookup_path(ops, "conversations/d/x.json")
    assert stat.S_ISREG(attr.st_mode) and attr.st_size == len(data)
    assert attr.entry_timeout >= 60 and attr.attr_timeout >= 60      # immutable: cache long
    assert call(ops.getattr, attr.st_ino, None).st_size == len(data)
    fi = call(ops.open, attr.st_ino, os.O_RDONLY, None)
    assert fi.keep_cache and not fi.direct_io
    assert call(ops.read, fi.fh, 0, 100000) == data
    assert call(ops.read, fi.fh, 5, 3) == data[5:8]
    call(ops.release, fi.fh)
    link = lookup_path(ops, "by-model/m-1/d%2Fx.json")
    assert call(ops.readlink, link.st_ino, None) == b"../../conversations/d/x.json"


def test_errno_mapping(ops, store, monkeypatch):
    store.put("x.json", conv("x"))
    assert fuse_errno(ops.lookup, TOP["conversations"], b"nope", None) == errno.ENOENT
    ino = lookup_path(ops, "conversations/x.json").st_ino
    assert fuse_errno(ops.open, ino, os.O_WRONLY, None) == errno.EROFS
    assert fuse_errno(ops.mkdir, TOP["text"], b"d", 0o755, None) == errno.EROFS
    assert fuse_errno(ops.symlink, TOP["inbox"], b"l", b"t", None) == errno.EPERM
    assert fuse_errno(ops.link, ino, TOP["inbox"], b"l", None) == errno.EPERM
    assert fuse_errno(ops.mknod, TOP["conversations"], b"n", stat.S_IFIFO, 0, None) == errno.EROFS
    assert fuse_errno(ops.unlink, TOP["text"], b"x.json.txt", None) == errno.EROFS
    assert fuse_errno(ops.rename, TOP["conversations"], b"x.json", TOP["inbox"], b"y", 0, None) == errno.EXDEV
    assert fuse_errno(ops.rename, TOP["conversations"], b"x.json", TOP["conversations"], b"y",
                      pyfuse3.RENAME_EXCHANGE, None) == errno.EINVAL
    assert fuse_errno(ops.getattr, 123456, None) == errno.ENOENT
    assert fuse_errno(ops.read, 999, 0, 10) == errno.EBADF
    for exc, code in ((Busy("busy"), errno.EBUSY), (StoreFull("full"), errno.ENOSPC)):
        monkeypatch.setattr(ops.fs.store, "info", lambda *a, e=exc: (_ for _ in ()).throw(e))
        assert fuse_errno(ops.lookup, TOP["conversations"], b"x.json", None) == code


def test_no_exception_escapes(ops, store, monkeypatch, caplog):
    store.put("x.json", conv("x"))

    def bug(*a):
        raise ValueError("a bug")
    monkeypatch.setattr(ops.fs.store, "info", bug)
    with caplog.at_level(logging.ERROR, logger="stowfs.fuse_ops"):
        assert fuse_errno(ops.lookup, TOP["conversations"], b"x.json", None) == errno.EIO
    assert "a bug" in caplog.text and "Traceback" in caplog.text
    monkeypatch.setattr(ops.fs.store, "info", lambda *a: (_ for _ in ()).throw(Corrupt("bad frame")))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="stowfs.fuse_ops"):
        assert fuse_errno(ops.lookup, TOP["conversations"], b"x.json", None) == errno.EIO
    assert "bad frame" in caplog.text


def test_inbox_create_write_settle_ingests(ops, store):
    fi, attr = call(ops.create, TOP["inbox"], b"new.json", 0o644, os.O_WRONLY | os.O_CREAT, None)
    assert not fi.keep_cache and attr.st_size == 0
    data = conv("written")
    assert call(ops.write, fi.fh, 0, data) == len(data)
    fields = SimpleNamespace(update_size=False, update_mode=True, update_atime=False,
                             update_mtime=True, update_uid=False, update_gid=False)
    new = pyfuse3.EntryAttributes()
    new.st_mode, new.st_mtime_ns = stat.S_IFREG | 0o640, 1_600_000_000_123_456_789
    got = call(ops.setattr, attr.st_ino, new, fields, fi.fh, None)
    assert got.st_size == len(data) and got.st_mtime_ns == 1_600_000_000_123_456_789
    assert fuse_errno(ops.flush, fi.fh) == errno.ENOSYS     # the kernel stops sending FLUSH
    call(ops.release, fi.fh)
    assert list(store.iter_files()) == []                    # closed, not settled yet
    conv_attr = lookup_path(ops, "conversations/new.json")   # served from the spool
    assert conv_attr.st_size == len(data) and conv_attr.attr_timeout == 0
    fi = call(ops.open, conv_attr.st_ino, os.O_RDONLY, None)
    assert not fi.keep_cache and call(ops.read, fi.fh, 0, 1 << 20) == data
    call(ops.release, fi.fh)
    ops.fs.settle(everything=True)
    info = store.info("new.json")
    assert store.get("new.json") == data and (info.mtime_ns, info.mode) == (1_600_000_000_123_456_789, 0o640)
    assert (TOP["conversations"], "new.json") in ops.fs.notifier.entries
    stored = lookup_path(ops, "conversations/new.json")
    assert stored.st_mtime_ns == 1_600_000_000_123_456_789 and stored.st_mode == stat.S_IFREG | 0o640


def test_settle_task_ingests_in_the_background(store, tmp_path):
    from test_fs_model import Recorder as Rec
    fs = Filesystem(store, tmp_path / "spool", notifier=Rec(), settle=0.05)
    ops = fuse_ops.Operations(fs)

    async def main():
        fi, _ = await ops.create(TOP["inbox"], b"bg.json", 0o644, os.O_WRONLY | os.O_CREAT, None)
        await ops.write(fi.fh, 0, conv("bg"))
        await ops.release(fi.fh)
        with trio.move_on_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fuse_ops.settle_inbox, fs)
                while not list(store.iter_files()):
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
    trio.run(main)
    assert store.get("bg.json") == conv("bg")


def test_readdir_resumes_and_counts_lookups(ops, store, monkeypatch):
    for i in range(10):
        store.put(f"f{i}.json", conv(str(i)))
    got = []

    def reply(token, name, attr, next_id):
        if len(got) >= token:                  # token: how many entries fit this time
            return False
        got.append((name, attr.st_ino, next_id))
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = call(ops.opendir, TOP["conversations"], None)
    before = ops.fs.known_inodes()
    call(ops.readdir, fh, 0, 4)
    assert len(got) == 4 and ops.fs.known_inodes() == before + 4
    call(ops.readdir, fh, got[-1][2], 100)
    call(ops.releasedir, fh)
    names = [g[0] for g in got]
    assert sorted(names) == sorted(f"f{i}.json".encode() for i in range(10))
    assert [g[1] for g in got] == sorted(g[1] for g in got)          # offsets: inode order
    call(ops.forget, [(ino, 1) for _, ino, _ in got])
    assert ops.fs.known_inodes() == before


def test_statfs(ops):
    st = call(ops.statfs, None)
    assert st.f_bsize > 0 and st.f_namemax >= 255


def test_requests_are_counted_by_kind(ops, store):
    store.put("x.json", conv("x"))
    attr = lookup_path(ops, "conversations/x.json")
    fi = call(ops.open, attr.st_ino, os.O_RDONLY, None)
    call(ops.read, fi.fh, 0, 4096)
    fuse_errno(ops.flush, fi.fh)
    call(ops.release, fi.fh)
    fuse_errno(ops.lookup, TOP["conversations"], b"missing.json", None)    # errors count too
    assert dict(ops.requests) == {"lookup": 3, "open": 1, "read": 1, "flush": 1, "release": 1}


def counted_hand_offs(monkeypatch) -> list:
    """The names of the model's methods the adapter hands to a worker thread, in order."""
    handed_off = []
    real = fuse_ops._blocking

    async def counting(fn, *args, **kw):
        handed_off.append(fn.__name__)
        return await real(fn, *args, **kw)
    monkeypatch.setattr(fuse_ops, "_blocking", counting)
    return handed_off


def test_a_directory_small_when_last_listed_is_listed_inline(ops, store, monkeypatch):
    """readdir from the start hands a directory to a worker thread only the first time
    and when it was big: the listing of a small one costs less than the hand-off."""
    from stowfs.fs import model
    monkeypatch.setattr(model, "SMALL_DIR", 3)
    for i in range(2):
        store.put(f"small/f{i}.json", conv(str(i)))
    for i in range(5):
        store.put(f"big/f{i}.json", conv(str(i)))
    monkeypatch.setattr(pyfuse3, "readdir_reply", lambda token, name, attr, next_id: True)
    handed_off = counted_hand_offs(monkeypatch)

    def listing(path):
        fh = call(ops.opendir, lookup_path(ops, path).st_ino, None)
        call(ops.readdir, fh, 0, None)
        call(ops.releasedir, fh)
    for _ in range(2):
        listing("conversations/small")
        listing("conversations/big")
    assert handed_off == ["readdir", "readdir", "readdir"]   # small: once; big: each time


def test_a_directory_its_parents_listing_found_small_is_listed_inline_the_first_time(ops, store, monkeypatch):
    """A parent's listing counts the files below each of its directories, at any depth
    (no more than the directory's own listing can hold), so `find` of a deep tree of
    small directories is not handed to a worker thread at each one; a directory found
    big, or not yet counted, still is."""
    from stowfs.fs import model
    monkeypatch.setattr(model, "SMALL_DIR", 3)
    store.put("small/a/b/f0.json", conv("0"))
    store.put("small/f1.json", conv("1"))
    for i in range(4):
        store.put(f"big/f{i}.json", conv(str(i)))
    replied = []
    monkeypatch.setattr(pyfuse3, "readdir_reply",
                        lambda token, name, attr, next_id: replied.append(name) or True)
    handed_off = counted_hand_offs(monkeypatch)

    def listing(path):
        replied.clear()
        fh = call(ops.opendir, lookup_path(ops, path).st_ino, None)
        call(ops.readdir, fh, 0, None)
        call(ops.releasedir, fh)
        return sorted(replied)
    assert listing("conversations") == [b"big", b"small"]
    assert handed_off == ["readdir"]            # not counted: conversations/ itself
    assert listing("conversations/small") == [b"a", b"f1.json"]
    assert listing("conversations/small/a") == [b"b"]
    assert listing("conversations/small/a/b") == [b"f0.json"]
    assert handed_off == ["readdir"]            # 2, 1 and 1 files below: inline
    assert listing("conversations/big") == [f"f{i}.json".encode() for i in range(4)]
    assert handed_off == ["readdir", "readdir"]  # 4 files below: handed off


def test_stats_json_and_reports_are_made_in_a_worker_thread(ops, store, monkeypatch):
    """stats.json and reports/ are made from every record of the store (~0.1-1 s on a
    large one, again after every change): every request that makes one (the lookup, the
    listing of their directory, getattr, open) runs in a worker thread, so the mount
    answers other requests meanwhile. A file of conversations/ is served inline."""
    store.put("x.json", conv("x"))
    monkeypatch.setattr(pyfuse3, "readdir_reply", lambda token, name, attr, next_id: True)
    handed_off = counted_hand_offs(monkeypatch)
    made = []
    model = ops.fs

    def making(real):
        def wrapper(*a, **kw):
            made.append(threading.current_thread() is threading.main_thread())
            return real(*a, **kw)
        return wrapper
    monkeypatch.setattr(model, "_stats_json", making(model._stats_json))
    monkeypatch.setattr(model, "_report", making(model._report))
    for path in ("stats.json", "reports/cost.txt", "reports/by-model.json"):
        attr = lookup_path(ops, path)
        call(ops.getattr, attr.st_ino, None)
        fi = call(ops.open, attr.st_ino, os.O_RDONLY, None)
        assert call(ops.read, fi.fh, 0, 1 << 20)
        call(ops.release, fi.fh)
    for d in (pyfuse3.ROOT_INODE, TOP["reports"]):
        fh = call(ops.opendir, d, None)
        call(ops.readdir, fh, 0, None)
        call(ops.releasedir, fh)
    assert made and not any(made), "stats.json or a report was made on the event loop"
    assert {"lookup", "getattr", "open", "readdir"} <= set(handed_off)
    handed_off.clear()
    attr = lookup_path(ops, "conversations/x.json")
    call(ops.getattr, attr.st_ino, None)
    fi = call(ops.open, attr.st_ino, os.O_RDONLY, None)
    call(ops.release, fi.fh)
    assert handed_off == []


def test_unmount_waits_for_queued_kernel_notifications():
    """pyfuse3 submits invalidate_entry_async requests from a thread of its own; the
    daemon lets it finish before the session is destroyed (else they go to no session:
    EINVAL errors in the log). The thread is found by the name Python gives it."""
    import subprocess
    import sys
    import threading
    import time
    from stowfs import mount
    probe = ("import pyfuse3, threading, time\n"
             "pyfuse3.invalidate_entry_async(1, b'x', ignore_enoent=True)\n"
             "time.sleep(0.2)\n"
             "print([t.name for t in threading.enumerate()])\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert "(_notify_loop)'" in out.stdout, out.stdout + out.stderr

    done = []

    def notify_loop():          # stands in for pyfuse3's: still submitting when asked to stop
        time.sleep(0.3)
        done.append(True)
    t = threading.Thread(target=notify_loop, name="Thread-99 (_notify_loop)")
    t.start()
    mount._drain_notifications(timeout=5)
    assert done == [True] and not t.is_alive()


def test_kernel_notifier_skips_names_the_kernel_cannot_hold(monkeypatch):
    """A by-*/ link name is the whole flattened path: past NAME_MAX the kernel never held
    an entry for it and refuses the invalidation (pyfuse3 logged an ERROR each time)."""
    sent = []
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async",
                        lambda parent, name, ignore_enoent=False: sent.append((parent, name)))
    n = fuse_ops.KernelNotifier()
    n.entry(8, "a%2F" * 40 + "x.json")          # 166 bytes: sent
    n.entry(8, "d%2F" * 80 + "x.json")          # 326 bytes: skipped
    assert sent == [(8, ("a%2F" * 40 + "x.json").encode())]
