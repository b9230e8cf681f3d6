"""The filesystem model (stowfs.fs) over MemoryStore: no FUSE, no mount."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from stowfs.errors import NotFound
from stowfs.fs import Filesystem, Notifier
from stowfs.fs.names import (DIR_BASE, INBOX_BASE, ROOT_INO, TOP, dir_ino, file_ino, flat,
                             unflat)
from stowfs.memstore import Analysis, MemoryStore


def analyze(data: bytes, name: str) -> Analysis:
    """A tiny stand-in parser: JSON with 'messages' is a conversation."""
    try:
        obj = json.loads(data)
        msgs = obj["messages"]
    except (ValueError, KeyError, TypeError):
        return Analysis(error="not a conversation: no messages")
    text = "".join(f"[{m['role']}] {m['content']}\n" for m in msgs).encode()
    return Analysis(format="test-json", application=obj.get("app"),
                    models=tuple(obj.get("models", ())), day=obj.get("day"), text=text)


def conv(*contents, model="m-1", app="appA", day="2024-05-01") -> bytes:
    return json.dumps({"models": [model] if model else [], "app": app, "day": day,
                       "messages": [{"role": "user", "content": c} for c in contents]}).encode()


class Recorder(Notifier):
    def __init__(self):
        self.entries = []

    def entry(self, parent_ino, name):
        self.entries.append((parent_ino, name))


@pytest.fixture
def store():
    return MemoryStore(analyze=analyze)


@pytest.fixture
def fs(store, tmp_path):
    return Filesystem(store, tmp_path / "spool", cache_bytes=1 << 20, notifier=Recorder())


def walk(fs, path: str):
    """Resolve a '/'-separated path from the root, remembering nodes as the kernel would."""
    ino, attr = ROOT_INO, fs.getattr(ROOT_INO)
    for part in [p for p in path.split("/") if p]:
        node, attr = fs.lookup(ino, part)
        ino = fs.remember(node).ino
    return ino, attr


def listdir(fs, path: str) -> dict:
    ino, _ = walk(fs, path)
    fh = fs.opendir(ino)
    try:
        out = {}
        for name, node, attr, _ in fs.readdir(fh, 0):
            fs.remember(node)
            out[name] = attr
        return out
    finally:
        fs.releasedir(fh)


def cat(fs, path: str) -> bytes:
    ino, attr = walk(fs, path)
    fh, _, _ = fs.open(ino, os.O_RDONLY)
    try:
        out, off = b"", 0
        while True:
            chunk = fs.read_cached(fh, off, 4096)
            if chunk is None:
                chunk = fs.read(fh, off, 4096)
            if not chunk:
                return out
            out += chunk
            off += len(chunk)
    finally:
        fs.flush(fh)
        fs.release(fh)


def write_inbox(fs, path: str, data: bytes, chunk: int = 1000) -> None:
    """What cp does: create, write, close (flush then release)."""
    d, _, name = path.rpartition("/")
    parent, _ = walk(fs, "inbox/" + d)
    fh, node, _ = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fs.remember(node)
    for off in range(0, len(data), chunk):
        fs.write(fh, off, data[off:off + chunk])
    fs.flush(fh)
    fs.release(fh)


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    return ei.value.errno


# ---------------------------------------------------------------------- tree
def test_root_layout(fs):
    assert set(listdir(fs, "")) == {"inbox", "conversations", "text", "by-model", "by-app",
                                    "by-day", "errors", "stats.json", "reports", "search"}
    assert set(listdir(fs, "reports")) == {"dups.txt", "prompts.txt", "near-dups.txt", "reports.json",
                                           "by-model.txt", "by-model.json"}
    assert stat.S_ISDIR(fs.getattr(TOP["inbox"]).mode)
    assert stat.S_ISREG(fs.getattr(TOP["stats.json"]).mode)


def test_views_of_a_conversation(fs, store):
    data = conv("hello", "world")
    store.put("proj/a/x.json", data)
    info = store.info("proj/a/x.json")
    assert set(listdir(fs, "conversations")) == {"proj"}
    assert set(listdir(fs, "conversations/proj/a")) == {"x.json"}
    ino, attr = walk(fs, "conversations/proj/a/x.json")
    assert ino == file_ino(info.file_id, "conversations")
    assert attr.size == len(data) and attr.mode & 0o777 == 0o444
    assert cat(fs, "conversations/proj/a/x.json") == data
    assert cat(fs, "text/proj/a/x.json.txt") == b"[user] hello\n[user] world\n"
    assert walk(fs, "text/proj/a/x.json.txt")[1].size == info.text_size
    # by-*: flat names, relative symlinks to conversations/
    for top, value in (("by-model", "m-1"), ("by-app", "appA"), ("by-day", "2024-05-01")):
        assert set(listdir(fs, top)) == {value}
        assert set(listdir(fs, f"{top}/{value}")) == {"proj%2Fa%2Fx.json"}
        ino, attr = walk(fs, f"{top}/{value}/proj%2Fa%2Fx.json")
        assert stat.S_ISLNK(attr.mode)
        target = fs.readlink(ino)
        assert target == "../../conversations/proj/a/x.json"
        assert attr.size == len(target)
    assert listdir(fs, "errors") == {}


def test_errors_entry_for_non_conversation(fs, store):
    store.put("notes/readme.md", b"# just text\n")
    files = listdir(fs, "errors")
    assert list(files) == ["notes%2Freadme.md.txt"]
    body = cat(fs, "errors/notes%2Freadme.md.txt")
    assert body == b"notes/readme.md: not a conversation: no messages\n"
    assert files["notes%2Freadme.md.txt"].size == len(body)
    # still stored losslessly
    assert cat(fs, "conversations/notes/readme.md") == b"# just text\n"


def test_lookup_missing_and_errnos(fs, store):
    store.put("a.json", conv("x"))
    assert errno_of(walk, fs, "conversations/nope") == errno.ENOENT
    assert errno_of(walk, fs, "text/a.json") == errno.ENOENT         # needs .txt
    assert errno_of(walk, fs, "conversations/a.json/x") == errno.ENOTDIR
    assert errno_of(walk, fs, "errors/a.json.txt") == errno.ENOENT    # no error for it
    assert errno_of(walk, fs, "by-model/zzz") == errno.ENOENT
    assert errno_of(walk, fs, "by-model/m-1/other") == errno.ENOENT
    assert errno_of(walk, fs, "by-model/m-1/a%2ejson") == errno.ENOENT  # non-canonical


def test_stats_json(fs, store):
    before = json.loads(cat(fs, "stats.json"))
    store.put("a.json", conv("x"))
    after = json.loads(cat(fs, "stats.json"))
    assert before["files"] == 0 and after["files"] == 1
    assert fs.getattr(TOP["stats.json"]).size == len(cat(fs, "stats.json"))
    fh, keep, direct = fs.open(TOP["stats.json"], os.O_RDONLY)
    assert direct and not keep
    fs.release(fh)


def test_reports_follow_the_store(fs, store):
    from stowfs.fs.names import REPORT_FILES
    before = json.loads(cat(fs, "reports/reports.json"))
    assert before["dups"]["shared_segments"] == 0
    store.put("a.json", conv("same"))
    store.put("b.json", conv("same"))
    after = json.loads(cat(fs, "reports/reports.json"))
    assert after["dups"]["shared_segments"] == 1 and after["dups"]["top"][0]["files"] == 2
    text = cat(fs, "reports/dups.txt")
    assert fs.getattr(REPORT_FILES["dups.txt"]).size == len(text) and b"saves" in text
    assert errno_of(walk, fs, "reports/other.txt") == errno.ENOENT
    assert errno_of(fs.open, REPORT_FILES["dups.txt"], os.O_WRONLY) == errno.EACCES


def test_inode_numbers_stable_and_distinct(store, tmp_path):
    store.put("d/x.json", conv("x"))
    a = Filesystem(store, tmp_path / "s1")
    b = Filesystem(store, tmp_path / "s2")
    for path in ("conversations/d", "conversations/d/x.json", "text/d", "text/d/x.json.txt",
                 "by-model/m-1", "by-model/m-1/d%2Fx.json"):
        assert walk(a, path)[0] == walk(b, path)[0], path
    inos = [walk(a, p)[0] for p in ("conversations/d", "text/d", "conversations/d/x.json",
                                    "text/d/x.json.txt", "by-model/m-1", "by-app/appA")]
    assert len(set(inos)) == len(inos)
    assert dir_ino("conversations", "d") >= DIR_BASE
    # a replaced file gets a new inode; the old number is never handed out again
    old = walk(a, "conversations/d/x.json")[0]
    store.put("d/x.json", conv("y"))
    assert walk(a, "conversations/d/x.json")[0] != old


def test_readdir_offsets_are_stable_ids(fs, store):
    for i in range(30):
        store.put(f"f{i:02}.json", conv(str(i)))
    ino, _ = walk(fs, "conversations")
    fh = fs.opendir(ino)
    first = list(fs.readdir(fh, 0))[:10]
    resume = first[-1][3]
    # entries removed/added meanwhile do not shift the others
    store.remove(first[0][0])
    store.put("zz-new.json", conv("new"))
    fh2 = fs.opendir(ino)
    list(fs.readdir(fh2, 0))
    rest = [e[0] for e in fs.readdir(fh2, resume)]
    names = [e[0] for e in first] + rest
    assert len(names) == len(set(names))
    assert {f"f{i:02}.json" for i in range(30)} <= set(names)
    fs.releasedir(fh)
    fs.releasedir(fh2)


def test_forget_drops_inodes(fs, store):
    store.put("a.json", conv("x"))
    ino, _ = walk(fs, "conversations/a.json")
    base = fs.known_inodes()
    fs.forget(ino, 1)
    assert fs.known_inodes() == base - 1
    assert errno_of(fs.getattr, ino) == errno.ENOENT
    fs.forget(TOP["inbox"], 5)       # fixed inodes stay
    assert fs.getattr(TOP["inbox"])


def test_large_file_read_by_range(store, tmp_path):
    fs = Filesystem(store, tmp_path / "spool", cache_bytes=4 << 20)   # whole_limit 1 MiB
    data = conv(*["m%05d " % i * 20 for i in range(7000)])
    assert len(data) > fs.whole_limit
    store.put("big.json", data)
    assert cat(fs, "conversations/big.json") == data
    assert fs.cache.size == 0          # not decoded whole


def test_only_files_read_in_parts_are_kept_decoded(fs, store, monkeypatch):
    small, parts = conv("x"), conv(*["m%04d " % i * 20 for i in range(100)])
    assert len(small) < 4096 < len(parts) < fs.whole_limit      # cat() reads 4096 at a time
    store.put("s.json", small)
    store.put("p.json", parts)
    decoded = []
    real = store.reader
    monkeypatch.setattr(store, "reader", lambda path, view: decoded.append(path) or real(path, view))
    assert cat(fs, "conversations/s.json") == small
    # one read took it whole, the kernel's page cache keeps it (keep_cache): not ours too;
    # and the read at its end decodes nothing
    assert fs.cache.size == 0 and decoded == ["s.json"]
    assert cat(fs, "conversations/p.json") == parts
    assert fs.cache.size == len(parts) and decoded == ["s.json", "p.json"]   # decoded once


def test_the_views_of_a_file_share_one_record(fs, store, monkeypatch):
    """The mount holds a record per file the kernel references: one for all its views."""
    store.put("d/a.json", conv("x"))
    real = store.info      # a real store reads a new record from LMDB each time
    monkeypatch.setattr(store, "info", lambda path: dataclasses.replace(real(path)))
    c, _ = walk(fs, "conversations/d/a.json")
    t, _ = walk(fs, "text/d/a.json.txt")
    link, _ = walk(fs, "by-model/m-1/" + flat("d/a.json"))
    assert fs._node(c).info is fs._node(t).info is fs._node(link).info
    assert fs.getattr(t).size == store.info("d/a.json").text_size
    fs.rename(TOP["conversations"], "d", TOP["conversations"], "e")     # moved: still one
    assert fs._node(c).info is fs._node(t).info and fs._node(t).info.name == "e/a.json"
    _, attr = walk(fs, "conversations/e/a.json")
    assert attr.ino == c and cat(fs, "text/e/a.json.txt") == store.get("e/a.json", "text")

def test_a_small_listing_is_kept_until_the_store_changes(fs, store, monkeypatch):
    store.put("d/a.json", conv("x"))
    listed = []
    real = store.listdir
    monkeypatch.setattr(store, "listdir", lambda path: listed.append(path) or real(path))
    for _ in range(3):
        assert list(listdir(fs, "conversations/d")) == ["a.json"]
    assert listed == ["d"]
    store.put("d/b.json", conv("y"))              # any change moves the generation
    assert sorted(listdir(fs, "conversations/d")) == ["a.json", "b.json"]
    assert listed == ["d", "d"]

def test_read_only_errnos(fs, store):
    store.put("a.json", conv("x"))
    conv_dir, _ = walk(fs, "conversations")
    ino, _ = walk(fs, "conversations/a.json")
    assert errno_of(fs.open, ino, os.O_WRONLY) == errno.EACCES
    assert errno_of(fs.open, ino, os.O_RDWR) == errno.EACCES
    assert errno_of(fs.create, conv_dir, "n.json", 0o644, os.O_WRONLY) == errno.EACCES
    assert errno_of(fs.create, ROOT_INO, "n.json", 0o644, os.O_WRONLY) == errno.EACCES
    assert errno_of(fs.mkdir, TOP["text"], "d", 0o755) == errno.EACCES
    assert errno_of(fs.setattr, ino, size=0) == errno.EACCES
    assert errno_of(fs.unlink, TOP["text"], "a.json.txt") == errno.EACCES
    assert errno_of(fs.unlink, ROOT_INO, "stats.json") == errno.EACCES
    assert errno_of(fs.rmdir, ROOT_INO, "inbox") == errno.EACCES
    assert errno_of(fs.mknod, conv_dir, "l") == errno.EACCES
    assert errno_of(fs.mknod, TOP["inbox"], "l") == errno.EPERM
    assert errno_of(fs.rename, conv_dir, "a.json", TOP["text"], "b") == errno.EXDEV
    assert errno_of(fs.rename, TOP["text"], "a.json.txt", TOP["text"], "b") == errno.EACCES


# ---------------------------------------------------------------------- changes
def test_rm_and_rename_conversations(fs, store):
    store.put("d/a.json", conv("x"))
    store.put("d/b.json", conv("y"))
    d, _ = walk(fs, "conversations/d")
    fs.unlink(d, "a.json")
    assert [i.name for i in store.iter_files()] == ["d/b.json"]
    assert (dir_ino("by-model", "m-1"), "d%2Fa.json") in fs.notifier.entries
    assert (dir_ino("text", "d"), "a.json.txt") in fs.notifier.entries
    fs.rename(d, "b.json", TOP["conversations"], "top.json")
    assert [i.name for i in store.iter_files()] == ["top.json"]
    assert cat(fs, "conversations/top.json") == conv("y")
    # d/ vanished with its last file: rmdir of it succeeds (rm -r does that)
    fs.rmdir(TOP["conversations"], "d")
    assert errno_of(walk, fs, "conversations/d") == errno.ENOENT


def test_rename_directory_and_rmdir_nonempty(fs, store):
    store.put("d/a.json", conv("x"))
    store.put("d/e/b.json", conv("y"))
    assert errno_of(fs.rmdir, TOP["conversations"], "d") == errno.ENOTEMPTY
    walk(fs, "conversations/d")
    fs.rename(TOP["conversations"], "d", TOP["conversations"], "n")
    assert [i.name for i in store.iter_files()] == ["n/a.json", "n/e/b.json"]
    assert cat(fs, "conversations/n/e/b.json") == conv("y")


def test_open_of_replaced_inode_is_estale(fs, store):
    store.put("a.json", conv("x"))
    ino, _ = walk(fs, "conversations/a.json")
    store.put("a.json", conv("y"))
    assert errno_of(fs.open, ino, os.O_RDONLY) == errno.ESTALE
    # replaced between open and the first read: never the new bytes under the old inode
    ino, _ = walk(fs, "conversations/a.json")
    fh, _, _ = fs.open(ino, os.O_RDONLY)
    store.put("a.json", conv("zz"))
    assert fs.read_cached(fh, 0, 10) is None
    assert errno_of(fs.read, fh, 0, 10) == errno.ESTALE
    fs.release(fh)


def test_reopen_skips_the_record_only_while_the_store_is_unchanged(fs, store, monkeypatch):
    store.put("a.json", conv("x"))
    ino, _ = walk(fs, "conversations/a.json")
    looked = []
    real_info = store.info
    monkeypatch.setattr(store, "info", lambda path: looked.append(path) or real_info(path))
    for _ in range(3):      # warm re-opens: one lookup of the record, then none
        fs.release(fs.open(ino, os.O_RDONLY)[0])
    assert looked == ["a.json"]
    # a change anywhere in the store moves its generation: the next open checks again
    store.put("a.json", conv("y"))
    assert errno_of(fs.open, ino, os.O_RDONLY) == errno.ESTALE
    assert looked == ["a.json", "a.json"]
    ino, _ = walk(fs, "conversations/a.json")
    fh, _, _ = fs.open(ino, os.O_RDONLY)
    assert fs.read(fh, 0, 1 << 16) == conv("y")
    fs.release(fh)


def test_refresh_invalidates_external_changes(fs, store):
    store.put("d/a.json", conv("x"))
    walk(fs, "conversations/d/a.json")
    walk(fs, "text/d/a.json.txt")
    walk(fs, "by-model/m-1")
    fs.refresh()                        # catches up with the put above
    fs.notifier.entries.clear()
    assert not fs.refresh()
    store.remove("d/a.json")            # another process
    assert fs.refresh()
    got = set(fs.notifier.entries)
    assert (dir_ino("conversations", "d"), "a.json") in got
    assert (dir_ino("text", "d"), "a.json.txt") in got
    assert (TOP["conversations"], "d") in got
    assert (TOP["by-model"], "m-1") in got


# ---------------------------------------------------------------------- inbox
def test_inbox_write_ingests_on_close(fs, store, tmp_path):
    data = conv("a" * 5000)
    fs.mkdir(TOP["inbox"], "sub", 0o755)
    write_inbox(fs, "sub/x.json", data)
    assert store.get("sub/x.json") == data
    assert cat(fs, "conversations/sub/x.json") == data
    assert listdir(fs, "inbox/sub") == {}          # left inbox/, the directory stays
    assert not (tmp_path / "spool" / "sub" / "x.json").exists()


def test_inbox_replace_existing(fs, store):
    store.put("x.json", conv("old"))
    ino, _ = walk(fs, "conversations/x.json")
    fs.notifier.entries.clear()
    write_inbox(fs, "x.json", conv("new"))
    assert store.get("x.json") == conv("new")
    assert (TOP["conversations"], "x.json") in fs.notifier.entries
    assert walk(fs, "conversations/x.json")[0] != ino


def test_inbox_ops(fs, store):
    inbox = TOP["inbox"]
    fs.mkdir(inbox, "d", 0o755)
    d, _ = walk(fs, "inbox/d")
    assert d >= INBOX_BASE
    fh, node, _ = fs.create(d, "f", 0o644, os.O_WRONLY)
    fs.remember(node)
    fs.write(fh, 0, b"hello world")
    assert fs.getattr(node.ino).size == 11
    fs.setattr(node.ino, fh, size=5)
    assert fs.read(fh, 0, 100) == b"hello"
    fs.rename(d, "f", inbox, "g")                 # rename while open: ingested under the new name
    fs.flush(fh)
    fs.release(fh)
    assert store.get("g") == b"hello"
    assert errno_of(fs.rmdir, inbox, "nope") == errno.ENOENT
    fh, node, _ = fs.create(d, "h", 0o644, os.O_WRONLY)
    fs.write(fh, 0, b"x")
    fs.unlink(d, "h")                            # removed before close: not ingested
    fs.flush(fh)
    fs.release(fh)
    with pytest.raises(NotFound):
        store.info("d/h")
    fs.rmdir(inbox, "d")
    assert listdir(fs, "inbox") == {}


def test_inbox_write_error_is_reported_and_nothing_stored(fs, store, monkeypatch):
    fh, node, _ = fs.create(TOP["inbox"], "f.json", 0o644, os.O_WRONLY)
    fs.write(fh, 0, b"part")

    def full(fd, data, off):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)
    assert errno_of(fs.write, fh, 4, b"more") == errno.ENOSPC
    monkeypatch.undo()
    assert errno_of(fs.flush, fh) == errno.ENOSPC
    fs.release(fh)
    assert list(store.iter_files()) == []


def test_store_full_at_ingest_gives_enospc(fs, store, monkeypatch):
    from stowfs.errors import StoreFull

    def full(*a, **kw):
        raise StoreFull("store is full")
    monkeypatch.setattr(store, "put_file", full)
    fh, node, _ = fs.create(TOP["inbox"], "f.json", 0o644, os.O_WRONLY)
    fs.write(fh, 0, b"data")
    with pytest.raises(StoreFull) as ei:
        fs.flush(fh)
    assert ei.value.errno == errno.ENOSPC
    monkeypatch.undo()
    fs.release(fh)        # a later close (dup'd fd) would retry; the bytes are still in inbox/
    assert "f.json" in listdir(fs, "inbox") or store.get("f.json") == b"data"


def test_spool_recovery(store, tmp_path):
    spool = tmp_path / "spool"
    (spool / "sub").mkdir(parents=True)
    (spool / "sub" / "done.json").write_bytes(conv("done"))
    (spool / "partial.json").write_bytes(b'{"messa')
    (spool / "emptydir").mkdir()
    store.put("sub/done.json", conv("done"))          # committed before the crash
    fs = Filesystem(store, spool)
    removed, left = fs.inbox.recover()
    assert removed == 1 and left == ["partial.json"]
    assert set(listdir(fs, "inbox")) == {"sub", "partial.json", "emptydir"}
    # touching a leftover ingests it
    ino, _ = walk(fs, "inbox/partial.json")
    fh, _, _ = fs.open(ino, os.O_WRONLY)
    fs.setattr(ino, fh, mtime_ns=1_700_000_000 * 10**9)
    fs.flush(fh)
    fs.release(fh)
    assert store.get("partial.json") == b'{"messa'


def test_empty_file_is_ingested(fs, store):
    write_inbox(fs, "empty", b"")
    assert store.get("empty") == b""


# ---------------------------------------------------------------------- names
@given(st.text(min_size=1, max_size=40))
@settings(max_examples=300)
def test_flat_names_roundtrip(path):
    name = flat(path)
    assert "/" not in name
    assert name not in (".", "..")
    assert unflat(name) == path
