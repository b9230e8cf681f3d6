"""The filesystem model (stowfs.fs) over MemoryStore: no FUSE, no mount."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import time

import pytest
from hypothesis import given, settings, strategies as st

from stowfs.errors import NotFound
from stowfs.fs import Filesystem, Notifier
from stowfs.fs.inbox import is_leftover
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
        fs.release(fh)


def write_inbox(fs, path: str, data: bytes, chunk: int = 1000, settle: bool = True) -> None:
    """What cp does: create, write, close (release); then, unless told not to, let the
    inbox settle as if the quiet time had passed."""
    d, _, name = path.rpartition("/")
    parent, _ = walk(fs, "inbox/" + d)
    fh, node, _ = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fs.remember(node)
    for off in range(0, len(data), chunk):
        fs.write(fh, off, data[off:off + chunk])
    fs.release(fh)
    if settle:
        fs.settle(everything=True)


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    return ei.value.errno


# ---------------------------------------------------------------------- tree
def test_root_layout(fs):
    assert set(listdir(fs, "")) == {"inbox", "conversations", "text", "by-model", "by-app",
                                    "by-day", "errors", "stats.json", "reports",
                                    "compact", "lean", "budget", "search"}
    assert set(listdir(fs, "reports")) == {"dups.txt", "prompts.txt", "near-dups.txt", "reports.json",
                                           "cost.txt", "cost.json", "by-model.txt", "by-model.json"}
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
    assert attr.size == len(data) and attr.mode & 0o7777 == info.mode == 0o644   # stored mode
    assert attr.mtime_ns == info.mtime_ns
    assert walk(fs, "text/proj/a/x.json.txt")[1].mode & 0o7777 == 0o444
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
    assert before["dups"]["shared_contents"] == 0
    store.put("a.json", conv("the same long question asked twice, word for word " * 3))
    store.put("b.json", conv("the same long question asked twice, word for word " * 3))
    after = json.loads(cat(fs, "reports/reports.json"))
    assert after["dups"]["shared_contents"] == 1 and after["dups"]["top"][0]["files"] == 2
    text = cat(fs, "reports/dups.txt")
    assert fs.getattr(REPORT_FILES["dups.txt"]).size == len(text) and b"saves" in text
    assert errno_of(walk, fs, "reports/other.txt") == errno.ENOENT
    assert errno_of(fs.open, REPORT_FILES["dups.txt"], os.O_WRONLY) == errno.EROFS


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


def test_readdir_keeps_its_listing_and_goes_in_name_order(fs, store):
    for i in reversed(range(30)):                   # stored last to first
        store.put(f"f{i:02}.json", conv(str(i)))
    store.put("d/x.json", conv("x"))
    ino, _ = walk(fs, "conversations")
    fh = fs.opendir(ino)
    first = list(fs.readdir(fh, 0))[:10]
    resume = first[-1][3]
    # entries removed/added meanwhile do not shift the others of this handle's listing
    store.remove(first[1][0])
    store.put("e-new.json", conv("new"))
    rest = [e[0] for e in fs.readdir(fh, resume)]
    names = [e[0] for e in first] + rest
    assert names == sorted(names) == ["d"] + [f"f{i:02}.json" for i in range(30)]
    fh2 = fs.opendir(ino)                           # a new listing sees the changes
    assert [e[0] for e in fs.readdir(fh2, 0)] == \
        ["d", "e-new.json"] + [f"f{i:02}.json" for i in range(1, 30)]
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


def test_a_large_file_is_read_at_hand_only_where_its_block_is_decoded(tmp_path):
    """read_ready (what the adapter tries on the event loop before handing a READ to a
    worker thread) gives read()'s bytes where the store's cache holds them decoded and
    checked as read() checks a part of a file (its blocks against their frame hash), and
    None everywhere else, decoding nothing. (For blocks checked as decoded, format 5 and
    before, a part comes only from a block decoded whole: tests/test_store.py.)"""
    from stowfs.maintenance import compact
    from stowfs.store import Store
    st = Store(tmp_path / "st", block_size=1 << 20)
    data = conv(*["m%05d %s " % (i, "x" * (i % 97)) * 9 for i in range(4000)])
    small = conv("a file in the large one's first block")
    st.put("a-small.json", small)
    st.put("big.json", data)
    st.close()
    compact(tmp_path / "st")
    st = Store(tmp_path / "st")
    fs = Filesystem(st, tmp_path / "spool", cache_bytes=4 << 20)   # whole_limit 1 MiB
    try:
        assert len(data) > 2 * fs.whole_limit
        ino, _ = walk(fs, "conversations/big.json")
        fh, _, _ = fs.open(ino, os.O_RDONLY)
        mid, near = (1 << 20) + 5000, 5000                       # in its second and first block
        assert fs.read_ready(fh, mid, 4096) is None               # not read yet: no reader
        assert fs.read(fh, mid, 4096) == data[mid:mid + 4096]     # the second block, whole
        assert fs.read_ready(fh, mid + 4096, 4096) == data[mid + 4096:mid + 8192]
        assert fs.read_ready(fh, near, 4096) is None              # not decoded there
        # the first block partly decoded, by a whole read of a file in it: checked as
        # stored (format 6), what it decoded serves a part of another file as well
        assert cat(fs, "conversations/a-small.json") == small
        assert fs.read_ready(fh, near, 4096) == data[near:near + 4096]
        assert fs.read(fh, near, 4096) == data[near:near + 4096]
        assert fs.read_ready(fh, near, 4096) == data[near:near + 4096]
        # its last block is a small fragment (decoded at each read, never cached)
        end = len(data) - 100
        assert fs.read(fh, end, 4096) == data[end:]
        assert fs.read_ready(fh, end, 4096) is None
        assert fs.read_ready(fh, len(data), 10) == b""
        st.release_caches()
        assert fs.read_ready(fh, 0, 4096) is None                # let go: read() decodes
        assert fs.read(fh, 0, 4096) == data[:4096]
        fs.release(fh)
    finally:
        st.close()


def test_only_files_read_in_parts_are_kept_decoded(fs, store, monkeypatch):
    small, parts = conv("x"), conv(*["m%04d " % i * 20 for i in range(100)])
    assert len(small) < 4096 < len(parts) < fs.whole_limit      # cat() reads 4096 at a time
    store.put("s.json", small)
    store.put("p.json", parts)
    decoded = []
    real = store.reader
    monkeypatch.setattr(store, "reader", lambda path, view, **kw: decoded.append(path) or real(path, view, **kw))
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
    monkeypatch.setattr(store, "listdir", lambda path, **kw: listed.append(path) or real(path, **kw))
    for _ in range(3):
        assert list(listdir(fs, "conversations/d")) == ["a.json"]
    assert listed == ["d"]
    store.put("d/b.json", conv("y"))              # any change moves the generation
    assert sorted(listdir(fs, "conversations/d")) == ["a.json", "b.json"]
    assert listed == ["d", "d"]

def test_read_only_errnos(fs, store):
    """Writes to read-only parts answer EROFS; only inbox/ is writable."""
    store.put("a.json", conv("x"))
    conv_dir, _ = walk(fs, "conversations")
    ino, _ = walk(fs, "conversations/a.json")
    assert errno_of(fs.open, ino, os.O_WRONLY) == errno.EROFS
    assert errno_of(fs.open, ino, os.O_RDWR) == errno.EROFS
    assert errno_of(fs.create, conv_dir, "n.json", 0o644, os.O_WRONLY) == errno.EROFS
    assert errno_of(fs.create, ROOT_INO, "n.json", 0o644, os.O_WRONLY) == errno.EROFS
    assert errno_of(fs.mkdir, TOP["text"], "d", 0o755) == errno.EROFS
    assert errno_of(fs.setattr, ino, size=0) == errno.EROFS
    assert errno_of(fs.unlink, TOP["text"], "a.json.txt") == errno.EROFS
    assert errno_of(fs.unlink, ROOT_INO, "stats.json") == errno.EROFS
    assert errno_of(fs.rmdir, ROOT_INO, "inbox") == errno.EROFS
    assert errno_of(fs.mknod, conv_dir, "l") == errno.EROFS
    assert errno_of(fs.mknod, TOP["inbox"], "l") == errno.EPERM
    assert errno_of(fs.rename, conv_dir, "a.json", TOP["text"], "b") == errno.EXDEV
    assert errno_of(fs.rename, TOP["text"], "a.json.txt", TOP["text"], "b") == errno.EROFS


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


def test_a_removed_file_leaves_no_inbox_entry_behind(fs, store):
    """inbox/ shows stored files too: a file copied in and later removed (rm in
    conversations/, or by another process) has its inbox/ entry dropped in the kernel,
    which then forgets the node (a soak kept one for every file ever copied in)."""
    fs.remember(fs.mkdir(TOP["inbox"], "w", 0o755)[0])
    write_inbox(fs, "w/a.json", conv("x"))
    inbox_w, _ = walk(fs, "inbox/w")
    walk(fs, "inbox/w/a.json")
    d, _ = walk(fs, "conversations/w")
    fs.notifier.entries.clear()
    fs.unlink(d, "a.json")
    assert (inbox_w, "a.json") in fs.notifier.entries
    write_inbox(fs, "w/b.json", conv("y"))
    fs.notifier.entries.clear()
    store.remove("w/b.json")                      # another process
    fs.refresh()
    assert (inbox_w, "b.json") in fs.notifier.entries
    # copied in and removed through conversations/ before it settled (a spool file only)
    write_inbox(fs, "w/c.json", conv("z"), settle=False)
    walk(fs, "inbox/w/c.json")
    fs.notifier.entries.clear()
    fs.unlink(d, "c.json")
    assert (inbox_w, "c.json") in fs.notifier.entries


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
    for _ in range(3):      # opens after the lookup, store unchanged: no lookup of the record
        fs.release(fs.open(ino, os.O_RDONLY)[0])
    assert looked == []
    # a change anywhere in the store moves its generation: the next open checks again
    store.put("a.json", conv("y"))
    assert errno_of(fs.open, ino, os.O_RDONLY) == errno.ESTALE
    assert looked == ["a.json"]
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
def spool_files(tmp_path) -> list[str]:
    root = tmp_path / "spool"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def open_inbox(fs, path: str, flags: int) -> int:
    ino, _ = walk(fs, "inbox/" + path)
    fh, _, _ = fs.open(ino, flags)
    return fh


def test_inbox_file_is_served_from_the_spool_until_it_settles(fs, store, tmp_path):
    data = conv("a" * 5000)
    fs.mkdir(TOP["inbox"], "sub", 0o755)
    write_inbox(fs, "sub/x.json", data, settle=False)
    assert list(store.iter_files()) == []                    # closed: not ingested yet
    ino, attr = walk(fs, "conversations/sub/x.json")         # ... but there, from the spool
    assert ino >= INBOX_BASE and attr.size == len(data) and attr.attr_timeout == 0
    assert cat(fs, "conversations/sub/x.json") == data
    assert set(listdir(fs, "conversations")) == {"sub"}
    assert fs.settle() == 0                                  # the quiet time has not passed
    fs.inbox.quiet = 0
    fs.notifier.entries.clear()
    assert fs.settle() == 1
    info = store.info("sub/x.json")
    assert store.get("sub/x.json") == data and spool_files(tmp_path) == []
    assert (dir_ino("conversations", "sub"), "x.json") in fs.notifier.entries
    assert walk(fs, "conversations/sub/x.json")[0] == file_ino(info.file_id, "conversations")
    # inbox/ shows what is stored at the same path, with its stored size, mtime and mode
    shown = listdir(fs, "inbox/sub")["x.json"]
    assert (shown.size, shown.mtime_ns, shown.mode & 0o7777) == (info.size, info.mtime_ns, info.mode)
    assert listdir(fs, "inbox").keys() == {"sub"}


def test_alias_ingested_between_lookup_and_open_shows_the_stored_file(fs, store):
    """The kernel looked conversations/x.json up while it was a spool file; the settler
    stores it before the getattr and open that follow: both answer with the stored file
    (an ESTALE here reached readers when the kernel's single retry met the race again)."""
    data = conv("b" * 3000)
    write_inbox(fs, "x.json", data, settle=False)
    alias, attr = walk(fs, "conversations/x.json")
    assert alias >= INBOX_BASE and attr.size == len(data)
    fs.settle(everything=True)
    assert store.get("x.json") == data
    attr = fs.getattr(alias)
    assert attr.size == len(data) and attr.attr_timeout == 0 and attr.entry_timeout == 0
    fh, keep, direct = fs.open(alias, os.O_RDONLY)
    assert not keep
    assert fs.read(fh, 0, 1 << 20) == data
    fs.release(fh)
    store.remove("x.json")                       # removed since: ENOENT, not stale bytes
    assert errno_of(fs.getattr, alias) == errno.ENOENT
    assert errno_of(fs.open, alias, os.O_RDONLY) == errno.ENOENT


def test_inbox_keeps_mode_and_mtime_ns(fs, store):
    inbox = TOP["inbox"]
    fh, node, _ = fs.create(inbox, "m.json", 0o600, os.O_WRONLY | os.O_CREAT)
    fs.remember(node)
    fs.write(fh, 0, conv("m"))
    fs.setattr(node.ino, fh, mode=stat.S_IFREG | 0o640, mtime_ns=1_600_000_000_123_456_789)
    fs.release(fh)
    fs.settle(everything=True)
    info = store.info("m.json")
    assert (info.mode, info.mtime_ns) == (0o640, 1_600_000_000_123_456_789)
    attr = walk(fs, "conversations/m.json")[1]
    assert (attr.mode & 0o7777, attr.mtime_ns) == (0o640, 1_600_000_000_123_456_789)
    # chmod and utime of a stored file: stored again with the new mode and time, same bytes
    ino, _ = walk(fs, "inbox/m.json")
    fs.setattr(ino, None, mode=stat.S_IFREG | 0o604)
    fs.setattr(ino, None, mtime_ns=1_700_000_000_000_000_001)
    fs.settle(everything=True)
    again = store.info("m.json")
    assert (again.mode, again.mtime_ns, store.get("m.json")) == (0o604, 1_700_000_000_000_000_001, conv("m"))


def test_inbox_append_adds_to_the_stored_content(fs, store, tmp_path):
    write_inbox(fs, "log.jsonl", b'{"a": 1}\n')
    assert store.get("log.jsonl") == b'{"a": 1}\n' and spool_files(tmp_path) == []
    for line in (b'{"b": 2}\n', b'{"c": 3}\n'):               # what `echo line >> f` does
        fh = open_inbox(fs, "log.jsonl", os.O_WRONLY | os.O_APPEND)
        fs.write(fh, 0, line)        # O_APPEND: at the end whatever the offset
        fs.release(fh)
    assert cat(fs, "conversations/log.jsonl") == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'
    fs.settle(everything=True)
    assert store.get("log.jsonl") == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'
    fh = open_inbox(fs, "log.jsonl", os.O_WRONLY | os.O_TRUNC)  # truncate: replaces
    fs.write(fh, 0, b"new\n")
    fs.release(fh)
    fs.settle(everything=True)
    assert store.get("log.jsonl") == b"new\n"
    fh = open_inbox(fs, "log.jsonl", os.O_RDWR)                 # opened, not changed: no new version
    fid = store.info("log.jsonl").file_id
    fs.release(fh)
    fs.settle(everything=True)
    assert store.info("log.jsonl").file_id == fid and spool_files(tmp_path) == []


def test_inbox_replace_existing(fs, store):
    store.put("x.json", conv("old"))
    ino, _ = walk(fs, "conversations/x.json")
    fs.notifier.entries.clear()
    write_inbox(fs, "x.json", conv("new"), settle=False)
    assert (TOP["conversations"], "x.json") in fs.notifier.entries   # now the spool file
    assert errno_of(fs.open, ino, os.O_RDONLY) == errno.ESTALE       # the kernel looks it up again
    assert cat(fs, "conversations/x.json") == conv("new")
    fs.settle(everything=True)
    assert store.get("x.json") == conv("new")
    assert walk(fs, "conversations/x.json")[0] not in (ino,)


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
    fs.rename(d, "f", inbox, "g")                 # rename while open: stored under the new name
    fs.release(fh)
    fs.settle(everything=True)
    assert store.get("g") == b"hello" and [i.name for i in store.iter_files()] == ["g"]
    assert errno_of(fs.rmdir, inbox, "nope") == errno.ENOENT
    fh, node, _ = fs.create(d, "h", 0o644, os.O_WRONLY)
    fs.write(fh, 0, b"x")
    fs.unlink(d, "h")                            # removed before it settled: never stored
    fs.release(fh)
    fs.settle(everything=True)
    with pytest.raises(NotFound):
        store.info("d/h")
    fs.rmdir(inbox, "d")
    assert listdir(fs, "inbox").keys() == {"g"}   # the stored file, at its path
    # a stored file renamed and removed through inbox/: as in any directory
    fs.rename(inbox, "g", inbox, "g2")
    assert [i.name for i in store.iter_files()] == ["g2"] and store.get("g2") == b"hello"
    fs.unlink(inbox, "g2")
    assert list(store.iter_files()) == [] and listdir(fs, "inbox") == {}
    store.put("sd/a.json", conv("a"))
    assert errno_of(fs.rmdir, inbox, "sd") == errno.ENOTEMPTY
    assert errno_of(fs.mkdir, inbox, "sd", 0o755) == errno.EEXIST


def test_rename_a_directory_half_stored_half_spooled(fs, store, tmp_path):
    store.put("d/a.json", conv("a"))
    d, _ = walk(fs, "inbox/d")
    write_inbox(fs, "d/b.json", conv("b"), settle=False)
    fs.rename(TOP["inbox"], "d", TOP["inbox"], "e")
    assert [i.name for i in store.iter_files()] == ["e/a.json"]
    assert set(listdir(fs, "inbox/e")) == {"a.json", "b.json"}
    assert set(listdir(fs, "conversations")) == {"e"}
    assert cat(fs, "conversations/e/b.json") == conv("b")
    fs.settle(everything=True)
    assert sorted(i.name for i in store.iter_files()) == ["e/a.json", "e/b.json"]
    assert spool_files(tmp_path) == []


def test_temp_file_renamed_onto_a_stored_name(fs, store, tmp_path):
    """rsync and tempfile + os.replace: the temp name is never stored, the real one is."""
    store.put("d/x.json", conv("old"))
    d, _ = walk(fs, "inbox/d")
    for tmp in (".x.json.Ab12Cd", "tmpk3j_h5g2"):
        fh, node, _ = fs.create(d, tmp, 0o600, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        fs.write(fh, 0, conv("new " + tmp))
        fs.release(fh)
        assert tmp not in listdir(fs, "conversations/d")      # a leftover's name: not shown
        fs.settle(everything=True)
        assert tmp in listdir(fs, "inbox/d")                   # ... and not stored
        fs.rename(d, tmp, d, "x.json")
        assert cat(fs, "conversations/d/x.json") == conv("new " + tmp)
        fs.settle(everything=True)
        assert [i.name for i in store.iter_files()] == ["d/x.json"]
        assert store.get("d/x.json") == conv("new " + tmp)
    assert spool_files(tmp_path) == []


def test_leftovers_are_never_stored(fs, store, tmp_path):
    names = [".x.json.swp", ".x.json.swx", "x.json~", ".#x.json", "#x.json#", "index.lock",
             ".x.json.AbC123", "tmp_pack_Xy12Zq", "tmp_obj_abcDEF", "tmpa1b2c3d4"]
    for name in names:
        assert is_leftover("some/dir/" + name), name
        write_inbox(fs, name, b"scratch")
    for name in ("x.json", ".bashrc", "notes.md", "session.jsonl", "a.lock.json", "tmp.json",
                 ".x.json.seven77"):
        assert not is_leftover(name), name
    fs.settle(everything=True)
    assert list(store.iter_files()) == []
    assert listdir(fs, "conversations") == {} and listdir(fs, "errors") == {}
    assert set(listdir(fs, "inbox")) == set(names)           # they stay while they exist
    for name in names:                                       # fsync makes them durable only
        fh = open_inbox(fs, name, os.O_WRONLY)
        fs.fsync(fh)
        fs.release(fh)
    assert list(store.iter_files()) == []


def test_a_stored_file_renamed_to_a_backup_name_is_not_stored_under_it(fs, store, tmp_path):
    """What an editor does on save: x -> x~, write x, remove x~."""
    store.put("x.json", conv("old"))
    fs.rename(TOP["inbox"], "x.json", TOP["inbox"], "x.json~")
    assert list(store.iter_files()) == [] and spool_files(tmp_path) == ["x.json~"]
    assert cat(fs, "inbox/x.json~") == conv("old")
    write_inbox(fs, "x.json", conv("new"))
    fs.unlink(TOP["inbox"], "x.json~")
    assert [i.name for i in store.iter_files()] == ["x.json"] and store.get("x.json") == conv("new")
    assert spool_files(tmp_path) == []


def test_fsync_ingests_now(fs, store, tmp_path):
    fh, node, _ = fs.create(TOP["inbox"], "s.json", 0o644, os.O_WRONLY | os.O_CREAT)
    fs.write(fh, 0, conv("one"))
    fs.fsync(fh)                                  # still open: stored anyway
    assert store.get("s.json") == conv("one") and spool_files(tmp_path) == ["s.json"]
    fs.write(fh, len(conv("one")), b"\n")         # written on after fsync: stored once settled
    fs.release(fh)
    fs.settle(everything=True)
    assert store.get("s.json") == conv("one") + b"\n" and spool_files(tmp_path) == []


def test_same_name_opened_for_write_again_and_again(fs, store):
    for i in range(50):
        if i % 7 == 3:
            fs.settle(everything=True)            # sometimes it settled in between
        try:
            ino, _ = walk(fs, "inbox/again.json")
            fh, _, _ = fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        except OSError as e:
            assert e.errno == errno.ENOENT and i == 0
            fh, node, _ = fs.create(TOP["inbox"], "again.json", 0o644, os.O_WRONLY | os.O_CREAT)
            fs.remember(node)
        fs.write(fh, 0, conv(str(i)))
        fs.release(fh)
    fs.settle(everything=True)
    assert store.get("again.json") == conv("49")


def test_writers_race_a_settling_inbox(fs, store):
    """Opens for write, appends, truncates and touches while another thread ingests
    whatever settles at once (quiet time 0): no ENOENT, nothing lost."""
    import threading
    fs.inbox.quiet = 0
    stop, errors, ingested = threading.Event(), [], []

    def settler():
        while not stop.is_set():
            try:
                ingested.append(fs.settle())
            except Exception as e:      # noqa: BLE001 - reported below
                errors.append(e)
    t = threading.Thread(target=settler)
    t.start()
    try:
        write_inbox(fs, "r.jsonl", b"", settle=False)
        expect = b""
        for i in range(300):
            ino, _ = walk(fs, "inbox/r.jsonl")
            line = f'{{"i": {i}}}\n'.encode()
            if i % 50 == 49:
                fh, _, _ = fs.open(ino, os.O_WRONLY | os.O_TRUNC)
                expect = b""
            else:
                fh, _, _ = fs.open(ino, os.O_WRONLY | os.O_APPEND)
            fs.write(fh, 0, line)
            expect += line
            fs.release(fh)
            if i % 7 == 0:
                fs.setattr(ino, None, mtime_ns=1_600_000_000 * 10**9 + i)
            if i % 20 == 10:
                time.sleep(0.02)         # the settler's turn: ingested, then appended to
    finally:
        stop.set()
        t.join()
    assert errors == [] and sum(ingested) >= 2       # it did settle in between, repeatedly
    fs.settle(everything=True)
    assert store.get("r.jsonl") == expect
    assert cat(fs, "conversations/r.jsonl") == expect


def test_an_open_for_write_and_a_truncate_hold_the_copy_they_made_against_a_settle(fs, store, monkeypatch):
    """A stored file opened for write (or truncated) is copied into the spool first. A
    settle right after the copy, before the writer holds it, ingested it and removed
    it: the open tried again, three times, then failed with EAGAIN. The writer now
    holds the copy under the lock that made it."""
    fs.inbox.quiet = 0
    write_inbox(fs, "r.jsonl", b'{"i": 0}\n')
    assert store.get("r.jsonl") == b'{"i": 0}\n'
    real, settled = fs.inbox._copy_up, []

    def copy_up_then_settle(*a, **kw):
        got = real(*a, **kw)
        settled.append(fs.settle())             # what a settling thread could do here
        return got
    monkeypatch.setattr(fs.inbox, "_copy_up", copy_up_then_settle)
    ino, _ = walk(fs, "inbox/r.jsonl")
    fh, _, _ = fs.open(ino, os.O_WRONLY | os.O_APPEND)
    fs.write(fh, 9, b'{"i": 1}\n')
    fs.release(fh)
    fs.settle(everything=True)
    assert len(settled) == 1 and store.get("r.jsonl") == b'{"i": 0}\n{"i": 1}\n'
    fs.setattr(ino, None, size=0)                # truncate: copied up (empty), then held
    fs.settle(everything=True)
    assert len(settled) == 2 and store.get("r.jsonl") == b""


def test_a_directory_keeps_its_mtime_when_its_subdirectories_are_stored_at_different_times(fs, store):
    """rsync -a sets a directory's mtime after its contents. An emptied spool directory
    goes into the record; removing it changed its parent's mtime, and the parent, put in
    the record later with its other subdirectories, showed the time of that removal."""
    d = fs.remember(fs.mkdir(TOP["inbox"], "d", 0o755)[0]).ino
    for sub in ("a", "b"):
        fs.remember(fs.mkdir(d, sub, 0o755)[0])
    write_inbox(fs, "d/a/x.json", b'{"x": 1}', settle=False)
    write_inbox(fs, "d/b/y.json", b'{"y": 2}', settle=False)
    ino, _ = walk(fs, "inbox/d")
    fs.setattr(ino, None, mtime_ns=1_600_000_000_000_000_007)
    yino, _ = walk(fs, "inbox/d/b/y.json")
    fh, _, _ = fs.open(yino, os.O_WRONLY | os.O_APPEND)     # y stays unsettled meanwhile
    fs.settle(everything=True)                  # x stored, d/a pruned into the record
    assert store.get("d/a/x.json") == b'{"x": 1}' and "d/b/y.json" not in {i.name for i in store.iter_files()}
    assert walk(fs, "inbox/d")[1].mtime_ns == 1_600_000_000_000_000_007
    fs.release(fh)
    fs.settle(everything=True)                  # y stored, d/b and d pruned
    assert store.get("d/b/y.json") == b'{"y": 2}'
    assert walk(fs, "inbox/d")[1].mtime_ns == 1_600_000_000_000_000_007


NAMES = ["a.json", "b.json", "d/c.json", "d/.c.json.Xy12Zq", "a.json~"]
NAME = st.sampled_from(NAMES[:3]) | st.sampled_from(NAMES)     # mostly real names
OPS = st.one_of(
    st.tuples(st.just("write"), NAME, st.binary(max_size=40), st.booleans()),
    st.tuples(st.just("rename"), NAME, NAME),
    st.tuples(st.just("unlink"), NAME),
    st.tuples(st.just("fsync"), NAME),
    st.tuples(st.just("settle")))


@given(st.lists(OPS, max_size=30))
@settings(max_examples=400, deadline=None)
def test_inbox_behaves_like_a_directory(tmp_path_factory, ops):
    """Any sequence of writes (truncating or appending), renames, removals, fsyncs and
    settles: inbox/ reads like a plain directory after the same steps, conversations/
    shows every file that is not a leftover, and in the end the store holds exactly those."""
    store = MemoryStore(analyze=analyze)
    spool = tmp_path_factory.mktemp("spool")
    fs = Filesystem(store, spool, notifier=Recorder(), settle=3600)
    fs.mkdir(TOP["inbox"], "d", 0o755)
    ref: dict[str, bytes] = {}

    def ino_of(path):
        try:
            return walk(fs, "inbox/" + path)[0]
        except FileNotFoundError:
            return None

    for op in ops:
        kind, name = op[0], (op[1] if len(op) > 1 else None)
        if kind == "write":
            data, append = op[2], op[3]
            ino = ino_of(name)
            if ino is None:
                d, _, base = name.rpartition("/")
                fh, node, _ = fs.create(walk(fs, "inbox/" + d)[0], base, 0o644, os.O_WRONLY | os.O_CREAT)
                fs.remember(node)
            else:
                fh, _, _ = fs.open(ino, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
            fs.write(fh, 0, data)
            fs.release(fh)
            ref[name] = (ref.get(name, b"") if append else b"") + data
        elif kind == "rename" and name in ref:
            dst = op[2]
            (d1, _, b1), (d2, _, b2) = name.rpartition("/"), dst.rpartition("/")
            fs.rename(walk(fs, "inbox/" + d1)[0], b1, walk(fs, "inbox/" + d2)[0], b2)
            ref[dst] = ref.pop(name)
        elif kind == "unlink" and name in ref:
            d, _, base = name.rpartition("/")
            fs.unlink(walk(fs, "inbox/" + d)[0], base)
            del ref[name]
        elif kind == "fsync" and name in ref:
            fh, _, _ = fs.open(ino_of(name), os.O_WRONLY)
            fs.fsync(fh)
            fs.release(fh)
        elif kind == "settle":
            fs.settle(everything=True)
        for n in NAMES:
            if n in ref:
                assert cat(fs, "inbox/" + n) == ref[n], (op, n)
                if not is_leftover(n):
                    assert cat(fs, "conversations/" + n) == ref[n], (op, n)
            else:
                assert ino_of(n) is None, (op, n)
    fs.settle(everything=True)
    assert {i.name: store.get(i.name) for i in store.iter_files()} == \
        {n: data for n, data in ref.items() if not is_leftover(n)}


def test_inbox_write_error_is_reported_and_nothing_stored(fs, store, monkeypatch, caplog):
    fh, node, _ = fs.create(TOP["inbox"], "f.json", 0o644, os.O_WRONLY)
    fs.write(fh, 0, b"part")

    def full(fd, data, off):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)
    assert errno_of(fs.write, fh, 4, b"more") == errno.ENOSPC
    monkeypatch.undo()
    fs.release(fh)
    fs.settle(everything=True)
    assert list(store.iter_files()) == []
    assert "f.json" in caplog.text and "incomplete" in caplog.text
    assert b"f.json: not stored: a write failed (No space left on device)" in cat(fs, "errors/f.json.txt")
    assert "f.json" in listdir(fs, "inbox")


def test_failed_ingest_is_logged_listed_and_retried_after_a_change(fs, store, monkeypatch, caplog):
    from stowfs.errors import StoreFull

    def full(*a, **kw):
        raise StoreFull("store is full")
    monkeypatch.setattr(store, "put_file", full)
    write_inbox(fs, "f.json", conv("data"))
    assert "inbox/f.json: not stored: store is full" in caplog.text
    assert listdir(fs, "errors").keys() == {"f.json.txt"}
    assert cat(fs, "errors/f.json.txt") == b"inbox/f.json: not stored: store is full\n"
    ino, attr = walk(fs, "errors/f.json.txt")
    time.sleep(0.01)            # its mtime is when it failed: it holds still for tar
    assert fs.getattr(ino).mtime_ns == attr.mtime_ns <= time.time_ns() - 10**7
    assert cat(fs, "conversations/f.json") == conv("data")   # still there, from the spool
    monkeypatch.undo()
    assert fs.settle(everything=True) == 0                # not retried while unchanged
    ino, _ = walk(fs, "inbox/f.json")
    fs.setattr(ino, None, mtime_ns=1_650_000_000 * 10**9)  # touch: tried again
    assert fs.settle(everything=True) == 1
    assert store.get("f.json") == conv("data") and listdir(fs, "errors") == {}


def test_spool_recovery(store, tmp_path):
    """What a kill -9 leaves in the spool is ingested at the next mount."""
    spool = tmp_path / "spool"
    (spool / "sub").mkdir(parents=True)
    (spool / "sub" / "done.json").write_bytes(conv("done"))
    (spool / "partial.json").write_bytes(b'{"messa')
    (spool / ".partial.json.swp").write_bytes(b"vim")
    (spool / "emptydir").mkdir()
    store.put("sub/done.json", conv("done"))          # committed before the crash
    fs = Filesystem(store, spool, settle=0)
    found, leftovers = fs.inbox.recover()
    assert found == 2 and leftovers == [".partial.json.swp"]
    assert cat(fs, "conversations/partial.json") == b'{"messa'
    assert fs.settle() == 2
    assert store.get("partial.json") == b'{"messa' and store.get("sub/done.json") == conv("done")
    assert spool_files(tmp_path) == [".partial.json.swp"]
    assert set(listdir(fs, "inbox")) == {"sub", "partial.json", ".partial.json.swp", "emptydir"}


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


def test_an_idle_mount_lets_its_decoded_data_go(tmp_path):
    """Once nothing was read for a while, the decoded blocks and the whole-file cache are
    let go (the daemon's memory at rest is its own); reads decode again afterwards."""
    from stowfs.store import Store
    st = Store(tmp_path / "st")
    parts = conv(*["m%05d " % i * 20 for i in range(2000)])     # > 64 KiB: its block is cached
    small = conv("x")
    st.put("p.json", parts)
    st.put("s.json", small)
    fs = Filesystem(st, tmp_path / "spool", cache_bytes=4 << 20)
    try:
        assert 64 << 10 < len(parts) < fs.whole_limit
        assert fs.release_idle(0) is False                  # nothing read yet
        assert cat(fs, "conversations/p.json") == parts
        assert fs.cache.size == len(parts) and len(st.cache._d) == 1
        assert fs.release_idle(60) is False                 # read just now
        assert fs.cache.size == len(parts) and len(st.cache._d) == 1
        assert fs.release_idle(0) is True
        assert fs.cache.size == 0 and len(st.cache._d) == 0
        assert fs.release_idle(0) is False                  # once per idle spell
        assert cat(fs, "conversations/p.json") == parts
        assert cat(fs, "conversations/s.json") == small
        assert len(st.cache._d) == 1
    finally:
        st.close()


def test_the_directory_record_keeps_children_and_writes_structure_at_once(tmp_path):
    from stowfs.fs.dirrecord import DirRecord
    path = tmp_path / "spool.dirs"
    r = DirRecord(path)
    r.add({"a": [0o755, 1], "a/b": [0o700, 2], "a/b/c": [0o750, 3], "x": [0o755, 4]})
    assert sorted(r.children("")) == ["a", "x"] and r.children("a") == ["b"]
    assert DirRecord(path).get("a/b/c") == [0o750, 3]            # written at once
    r.move("a/b", "y")
    assert sorted(r.under("y")) == ["y", "y/c"] and not r.has_below("a") and "a/b" not in r
    assert sorted(DirRecord(path).children("")) == ["a", "x", "y"]
    r.set_attrs("x", 0o700, 9)
    assert DirRecord(path).get("x") == [0o755, 4]                # an attribute: at the next save
    r.save()
    assert DirRecord(path).get("x") == [0o700, 9]
    assert r.pop("y/c") == [0o750, 3] and not r.has_below("y")
    path.write_text("{not json")
    assert DirRecord(path).children("") == []                   # damaged: logged, empty


# ---------------------------------------------------------------------- read-ahead
def push_next(fs):
    """The next one file fs.push_batch places, or None when none is due."""
    while True:
        got = fs.push_batch(1)
        if got:
            return got[0]
        if not fs.readahead.pending():
            return None


def test_readahead_queues_what_follows_once_two_files_are_opened_in_order():
    from stowfs.fs.readahead import Readahead
    ra = Readahead(files=3)
    ra.listed(7, [10, 11, 12, 13, 14, 15, 16])
    assert not ra.opened(7, 10) and ra.take() is None        # one open is not an order
    assert ra.opened(7, 11)
    assert [ra.take(), ra.take(), ra.take(), ra.take()] == [12, 13, 14, None]
    assert ra.opened(7, 12) and [ra.take(), ra.take()] == [15, None]   # one more, not again
    assert not ra.opened(7, 10)                               # a jump starts over
    assert not ra.opened(8, 11)                               # a directory never listed
    ra.opened(7, 11)
    assert [ra.take(), ra.take(), ra.take()] == [12, 13, 14]   # queued again: Filesystem decides
    ra.listed(7, [10, 11, 12, 13, 14, 15, 16])                # the same listing keeps its place
    assert ra.opened(7, 12) and [ra.take(), ra.take()] == [15, None]
    ra.listed(7, [10, 12, 13])                                # a new one starts over
    assert not ra.opened(7, 12)


def test_readahead_keeps_listings_within_its_bound():
    from stowfs.fs.readahead import Readahead
    ra = Readahead(files=2, kept_entries=10)
    ra.listed(1, [1, 2, 3, 4, 5, 6])
    ra.listed(2, [7, 8, 9, 10, 11, 12])                        # 12 entries: the first goes
    assert not ra.opened(1, 1) and not ra.opened(1, 2)
    ra.opened(2, 7)
    assert ra.opened(2, 8) and [ra.take(), ra.take()] == [9, 10]


def test_files_read_in_listed_order_are_placed_ahead_once_and_never_after_an_open(fs, store):
    """What push_batch hands the adapter, one file at a time: the next files of the listing a reader goes
    through, with their bytes; never one that was opened (the kernel may be reading
    it), never one twice, never one the kernel does not know, never a large one."""
    data = {f"d/f{i:02d}.json": conv(f"message {i}" * (i + 1)) for i in range(30)}
    data["d/f25.json"] = b"x" * (300 << 10)                      # over SMALL_FILE
    for name, d in data.items():
        store.put(name, d)
    names = sorted(listdir(fs, "conversations/d"))
    assert push_next(fs) is None
    inos = {}
    for n in names[:2]:
        inos[n] = walk(fs, f"conversations/d/{n}")[0]
        fh, keep_cache, _ = fs.open(inos[n], os.O_RDONLY)
        assert keep_cache
        fs.release(fh)
    placed = {}
    while (got := push_next(fs)) is not None:
        placed[got[0]] = got[1]
    want = {walk(fs, f"conversations/d/{n}")[0]: data[f"d/{n}"] for n in names[2:18]}
    assert placed == want                                       # the next 16, bytes and all
    # a file opened before its turn is not placed; placed ones are not placed again
    late = walk(fs, f"conversations/d/{names[19]}")[0]
    fs.release(fs.open(walk(fs, f"conversations/d/{names[2]}")[0], os.O_RDONLY)[0])
    fs.release(fs.open(late, os.O_RDONLY)[0])                    # a jump
    fs.release(fs.open(walk(fs, f"conversations/d/{names[20]}")[0], os.O_RDONLY)[0])
    rest = []
    while (got := push_next(fs)) is not None:
        rest.append(got[0])
    assert late not in rest and not set(rest) & set(placed)
    big = walk(fs, "conversations/d/f25.json")[0]
    assert big not in rest and big not in placed
    # the open of names[2] moved the window on by one (names[18]); the jump to names[19]
    # and the next open start a new order after it
    assert rest == [walk(fs, f"conversations/d/{n}")[0] for n in [names[18]] + names[21:37] if n != "f25.json"]
    # text/ (a view rendered from the original) the same way
    listdir(fs, "text/d")
    for n in names[:2]:
        fs.release(fs.open(walk(fs, f"text/d/{n}.txt")[0], os.O_RDONLY)[0])
    got = push_next(fs)
    assert got == (walk(fs, f"text/d/{names[2]}.txt")[0], cat(fs, f"text/d/{names[2]}.txt"))
    while push_next(fs) is not None:
        pass
    # forgotten by the kernel: not placed
    store.put("e/a.json", conv("a"))
    store.put("e/b.json", conv("b"))
    store.put("e/c.json", conv("c"))
    listdir(fs, "conversations/e")
    c = walk(fs, "conversations/e/c.json")[0]
    fs.forget(c, 10)
    for n in ("a.json", "b.json"):
        fs.release(fs.open(walk(fs, f"conversations/e/{n}")[0], os.O_RDONLY)[0])
    assert push_next(fs) is None


def test_a_warm_listing_reads_no_record_and_a_change_is_listed_anew(tmp_path, monkeypatch):
    """`find` and `grep -r` list every directory again on each run (the kernel keeps no
    listing): a file the kernel holds, unchanged since, is listed from the node the mount
    holds, without its record group (decoding those was a quarter of a warm `find | xargs
    cat`). Once the store changes, every file is looked up again, and a replaced file
    is listed with its new size and mtime."""
    from stowfs.store import Store, records
    st = Store(tmp_path / "st")
    for i in range(80):                     # above KEPT_LISTING: no memo of the listing
        st.put(f"d/f{i:02d}.json", conv(f"message {i}"), mtime=1_000_000 + i)
    fs = Filesystem(st, tmp_path / "spool", cache_bytes=1 << 20)
    decoded = []
    real = records.decode_group
    monkeypatch.setattr(records, "decode_group", lambda *a: decoded.append(a[1]) or real(*a))
    try:
        first = listdir(fs, "conversations/d")
        from stowfs.store import blocks
        blocks._ahead_pool().submit(lambda: None).result()     # its prefetch is done
        st._groups._cache.clear()           # what a busy mount's bounded cache comes to
        decoded.clear()
        again = listdir(fs, "conversations/d")
        assert again == first
        assert decoded == []
        new = conv("a longer message than before")
        st.put("d/f07.json", new, mtime=2_000_000)
        changed = listdir(fs, "conversations/d")
        assert decoded                      # the store moved: records are read again
        assert changed["f07.json"].size == len(new) != first["f07.json"].size
        assert changed["f07.json"].mtime_ns == 2_000_000 * 10**9
        assert {k: v for k, v in changed.items() if k != "f07.json"} == \
            {k: v for k, v in first.items() if k != "f07.json"}
        assert cat(fs, "conversations/d/f07.json") == new
    finally:
        st.close()


def test_warm_files_read_again_in_order_queue_nothing_to_place(fs, store):
    """A reader going through files it read before: they were opened (or placed), so the
    read-ahead queues none of them and the placing task is never woken for nothing."""
    for i in range(30):
        store.put(f"d/f{i:02d}.json", conv(f"message {i}"))
    names = sorted(listdir(fs, "conversations/d"))
    for n in names:
        fs.release(fs.open(walk(fs, f"conversations/d/{n}")[0], os.O_RDONLY)[0])
        while push_next(fs) is not None:
            pass
    listdir(fs, "conversations/d")
    for n in names:
        fs.release(fs.open(walk(fs, f"conversations/d/{n}")[0], os.O_RDONLY)[0])
        assert not fs.readahead.pending()


def test_files_read_again_after_the_kernel_let_their_pages_go_are_placed_again(fs, store):
    """A reader going through files it read before sends no READ while the kernel holds
    their pages (keep_cache). Once it lets them go (memory pressure), the first READ of a
    file opened again starts a new read-ahead epoch: the files after it are placed again,
    except one open now (the kernel may be reading it)."""
    data = {f"d/f{i:02d}.json": conv(f"message {i}") for i in range(30)}
    for name, d in data.items():
        store.put(name, d)
    names = sorted(listdir(fs, "conversations/d"))
    ino = {n: walk(fs, f"conversations/d/{n}")[0] for n in names}
    for n in names:                                         # the first pass
        fs.release(fs.open(ino[n], os.O_RDONLY)[0])
        while push_next(fs) is not None:
            pass
    held, _, _ = fs.open(ino[names[6]], os.O_RDONLY)        # another reader has it open
    # warm: the kernel serves the reads; nothing is queued, the epoch stays
    fh, _, _ = fs.open(ino[names[0]], os.O_RDONLY)
    fs.release(fh)
    assert not fs.readahead.pending() and fs.epoch == 0
    # one READ of a file it was given before, here and there: no new epoch
    def read_again(n):
        fh, _, _ = fs.open(ino[n], os.O_RDONLY)
        assert fs.read_cached(fh, 0, 4096) in (None, data[f"d/{n}"])
        assert fs.read(fh, 0, 4096) == data[f"d/{n}"]
        fs.release(fh)
    read_again(names[20])
    for n in names[21:21 + 9]:
        fs.release(fs.open(ino[n], os.O_RDONLY)[0])
    assert fs.epoch == 0 and not fs.readahead.pending()
    # the pages are gone: the kernel READs the files it was given before, one by one
    read_again(names[0])
    assert fs.epoch == 0
    read_again(names[1])
    assert fs.epoch == 1                                    # the second in order: placing starts
    read_again(names[2])
    assert fs.epoch == 1                                    # opened in this epoch: no new one
    placed = {}
    while (got := push_next(fs)) is not None:
        placed[got[0]] = got[1]
    assert placed == {ino[n]: data[f"d/{n}"] for n in names[3:19] if n != names[6]}
    assert not fs.unopened(ino[names[6]])
    fs.release(held)
    # placed in this epoch, opened for the first time in it: it moves the order on
    fh, _, _ = fs.open(ino[names[3]], os.O_RDONLY)
    fs.release(fh)
    assert fs.epoch == 1


def test_a_file_opened_while_its_batch_was_decoded_is_not_placed(fs, store):
    """push_batch decodes several files ahead; one the kernel opens before the adapter
    places it must not be placed (unopened() says so right before the placing)."""
    data = {f"d/f{i:02d}.json": conv(f"message {i}") for i in range(12)}
    for name, d in data.items():
        store.put(name, d)
    names = sorted(listdir(fs, "conversations/d"))
    for n in names[:2]:
        fs.release(fs.open(walk(fs, f"conversations/d/{n}")[0], os.O_RDONLY)[0])
    batch = fs.push_batch(4)
    want = [walk(fs, f"conversations/d/{n}")[0] for n in names[2:6]]
    assert [ino for ino, _ in batch] == want
    assert [d for _, d in batch] == [data[f"d/{n}"] for n in names[2:6]]
    assert all(fs.unopened(ino) for ino in want)
    fs.release(fs.open(want[1], os.O_RDONLY)[0])           # the reader got there first
    assert [fs.unopened(ino) for ino in want] == [True, False, True, True]


def test_a_listing_starts_decoding_the_first_block_when_none_is_decoded(tmp_path, monkeypatch):
    """A cold `find | xargs cat` lists every directory before its first read: the block
    its first file begins in is decoded and checked in the background meanwhile (~30 ms
    for 16 MiB), not after the first READ. Only while no block is decoded: a listing of
    a warm mount decodes nothing."""
    from realdata import openai_form, sharegpt_records
    from stowfs.store import Store, blocks, compaction
    st = Store(tmp_path / "st")
    try:
        for i, r in enumerate(sharegpt_records(200)):
            st.put(f"d/f{i:03d}.json", json.dumps(openai_form(r)).encode())
        compaction.compact(st)              # one block, one frame: decoded as a whole
        st.release_caches()
        started = []
        real = blocks._decode_whole
        monkeypatch.setattr(blocks, "_decode_whole", lambda *a: started.append(a[1]) or real(*a))
        fs = Filesystem(st, tmp_path / "spool", cache_bytes=4 << 20)
        listdir(fs, "conversations/d")
        blocks._ahead_pool().submit(lambda: None).result()     # the background work is done
        blocks._ahead_pool().submit(lambda: None).result()
        assert len(started) == 1
        decs = list(st.cache._d.values())
        assert len(decs) == 1 and decs[0].whole_ok          # decoded and checked, no read yet
        listdir(fs, "conversations")
        listdir(fs, "conversations/d")
        blocks._ahead_pool().submit(lambda: None).result()
        blocks._ahead_pool().submit(lambda: None).result()
        assert len(started) == 1                            # decoded already: nothing more
        assert cat(fs, "conversations/d/f000.json") == st.get("d/f000.json")
    finally:
        st.close()
