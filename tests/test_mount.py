"""Mounted end to end: real `stowfs mount`, real cp / cat / cmp / grep / ls / rm / mv."""
from __future__ import annotations

import errno
import filecmp
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import CORPUS, _alive

pytestmark = pytest.mark.mount


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    if check:
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


def sharegpt_files(dest: Path, n: int) -> list[Path]:
    """n real ShareGPT conversations from the corpus, one file each."""
    items = json.loads((CORPUS / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_bytes())
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, item in enumerate(items[:n]):
        p = dest / f"conv{i:04d}.json"
        p.write_text(json.dumps(item, indent=1))
        out.append(p)
    return out


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def store_files(store: Path) -> dict:
    from stowfs.store import Store
    with Store(store) as s:
        return {i.name: i for i in s.iter_files()}


# ---------------------------------------------------------------------- the corpus
def test_cp_corpus_then_cmp_and_grep(mount):
    run("cp", "-r", CORPUS, mount / "inbox" / "corpus")
    for src in corpus_files():       # from close() on (served from the spool until ingested)
        rel = src.relative_to(CORPUS)
        run("cmp", src, mount / "conversations" / "corpus" / rel)
    mount.settled()
    # inbox/ shows what is stored, at the same paths; the spool holds nothing more
    for src in corpus_files():
        rel = src.relative_to(CORPUS)
        run("cmp", src, mount / "inbox" / "corpus" / rel)
    assert [p for p in (mount.store / "spool").rglob("*") if p.is_file()] == []
    hits = run("grep", "-rl", "doesnt seem to start", mount / "text").stdout.split()
    rels = {str(Path(h).relative_to(mount / "text")) for h in hits}
    assert "corpus/claude-code-spotter/transcripts/short.jsonl.txt" in rels
    for rel in rels:
        assert b"doesnt seem to start" in (CORPUS / rel[len("corpus/"):-len(".txt")]).read_bytes()
    # every by-* link resolves to a conversation; errors/ names real files
    for top in ("by-model", "by-app", "by-day"):
        links = [p for p in (mount / top).rglob("*") if p.is_symlink()]
        assert links, top
        for link in links:
            assert os.readlink(link).startswith("../../conversations/")
            assert link.resolve().is_file()
    assert any((mount / "by-app").iterdir())
    for e in (mount / "errors").iterdir():
        assert e.read_text().strip()
    # stat sizes are exact (no decode to stat)
    for src in corpus_files()[:20]:
        rel = src.relative_to(CORPUS)
        assert (mount / "conversations" / "corpus" / rel).stat().st_size == src.stat().st_size
    mount.umount()
    # the mount and the store agree byte for byte
    from stowfs.store import Store
    mount.start()
    with Store(mount.store, readonly=True) as s:
        for info in list(s.iter_files())[:40]:
            assert (mount / "text" / (info.name + ".txt")).read_bytes() == s.get(info.name, "text")
            assert (mount / "conversations" / info.name).read_bytes() == s.get(info.name)


def test_files_read_again_after_the_page_cache_was_dropped_are_placed_ahead_again(mounter, tmp_path):
    """A warm second cat costs no placing; once the kernel let the pages go (the page
    cache dropped under the running mount), a cat in listed order finds the files placed
    ahead again, while a reader in reverse order opens them at the same time: the same
    bytes for both, nothing hangs."""
    drop = Path("/proc/sys/vm/drop_caches")
    if not os.access(drop, os.W_OK):
        pytest.skip("needs root to drop the page cache")
    files = sharegpt_files(tmp_path / "sg", 300)
    m = mounter()
    subprocess.run([*m.cmd, "ingest", str(m.store), str(tmp_path / "sg"), "-q"], check=True, timeout=300)
    m.start()
    d = m / "conversations" / "sg"
    order = [d / n for n in os.listdir(d)]
    want = b"".join((tmp_path / "sg" / p.name).read_bytes() for p in order)
    cat = f"find {d} -type f -print0 | xargs -0 cat"
    assert subprocess.run(cat, shell=True, capture_output=True, timeout=120, check=True).stdout == want
    first = m.requests()
    assert subprocess.run(cat, shell=True, capture_output=True, timeout=120, check=True).stdout == want
    warm = m.requests()
    assert warm["placed-ahead"] - first["placed-ahead"] < len(files) // 4, warm
    drop.write_text("1\n")
    back = subprocess.Popen(f"ls {d} | sort -r | sed 's|^|{d}/|' | xargs cat", shell=True,
                            stdout=subprocess.PIPE)
    got = subprocess.run(cat, shell=True, capture_output=True, timeout=120, check=True).stdout
    rev, _ = back.communicate(timeout=120)
    assert got == want and back.returncode == 0
    assert rev == b"".join((tmp_path / "sg" / p.name).read_bytes() for p in sorted(order, reverse=True))
    after = m.requests()
    assert after["placed-ahead"] - warm["placed-ahead"] > len(files) // 3, after


def test_a_reader_going_through_a_directory_finds_the_files_placed_ahead(mounter, tmp_path):
    """Reading a directory's files in listed order (find | xargs cat, grep -r), the
    files after the first two are in the page cache before they are opened: far fewer
    READs than files, the same bytes. Readers in other orders at the same time (one
    opens files the daemon is placing) never hang and read the same bytes."""
    import random
    files = sharegpt_files(tmp_path / "sg", 400)
    m = mounter()
    subprocess.run([*m.cmd, "ingest", str(m.store), str(tmp_path / "sg"), "-q"], check=True, timeout=300)
    m.start()
    d = m / "conversations" / "sg"
    order = [d / n for n in os.listdir(d)]             # the order find and grep -r take
    assert sorted(p.name for p in order) == [p.name for p in files]
    out = subprocess.run(f"find {d} -type f -print0 | xargs -0 cat", shell=True, capture_output=True,
                         timeout=120, check=True).stdout
    assert out == b"".join((tmp_path / "sg" / p.name).read_bytes() for p in order)
    counts = m.requests()
    assert counts["open"] >= len(files)
    assert counts.get("read", 0) < len(files) // 4, counts
    assert counts["placed-ahead"] > len(files) // 2, counts
    # grep -r over text/ (rendered from the original) the same way
    t = m / "text" / "sg"
    hits = subprocess.run(["grep", "-r", "-l", "-F", "the", str(t)], capture_output=True, timeout=120).stdout
    assert hits.split(b"\n")[0].startswith(str(t).encode())
    after = m.requests()
    assert after.get("read", 0) - counts.get("read", 0) < len(files) // 4, after
    assert after["placed-ahead"] - counts["placed-ahead"] > len(files) // 2, after
    # other orders at once, on a fresh mount (nothing in the page cache)
    m.umount()
    m.start()
    want = {p.name: p.read_bytes() for p in files}
    shuffled = list(want)
    random.Random(7).shuffle(shuffled)
    readers = [subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cmd in (
        f"find {d} -type f -print0 | xargs -0 cat",
        f"ls {d} | sort -r | sed 's|^|{d}/|' | xargs cat",
        f"grep -r -c -F conversations {d}",
        f"cd {d} && cat {' '.join(shuffled)}",
    )]
    outs = [r.communicate(timeout=120) for r in readers]
    assert all(r.returncode == 0 for r in readers), [o[1] for o in outs]
    assert outs[0][0] == b"".join(want[p.name] for p in order)
    assert outs[1][0] == b"".join(want[n] for n in sorted(want, reverse=True))
    assert outs[3][0] == b"".join(want[n] for n in shuffled)
    for p in order:
        assert p.read_bytes() == want[p.name]


def test_large_files_read_in_ranges(mounter):
    m = mounter()
    m.start("--cache-mb", "4")       # whole-file decode limit ~1 MiB: ranges are decoded
    big = [CORPUS / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json",
           CORPUS / "aider-chat-history" / "chat-history.md"]
    for src in big:
        run("cp", src, m / "inbox")
    for src in big:
        run("cmp", src, m / "conversations" / src.name)
        with open(m / "conversations" / src.name, "rb") as f:   # random access
            f.seek(src.stat().st_size // 2)
            assert f.read(5000) == src.read_bytes()[src.stat().st_size // 2:][:5000]


# ---------------------------------------------------------------------- concurrency
def test_parallel_writers_and_readers(mount, tmp_path):
    files = sharegpt_files(tmp_path / "src", 240)
    groups = [files[i::4] for i in range(4)]
    for i, g in enumerate(groups):
        (mount / "inbox" / f"w{i}").mkdir()
    stop = threading.Event()
    reader_errors = []

    def reader():
        while not stop.is_set():
            for cmd in (["ls", "-R", mount / "conversations"], ["cat", mount / "stats.json"]):
                r = run(*cmd, check=False)
                if r.returncode:
                    reader_errors.append(r.stderr)
            for p in list((mount / "conversations").rglob("*.json"))[:20]:
                r = run("cat", p, check=False)
                if r.returncode:
                    reader_errors.append(r.stderr)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        writers = [subprocess.Popen(["cp", *map(str, g), str(mount / "inbox" / f"w{i}")],
                                    stderr=subprocess.PIPE, text=True) for i, g in enumerate(groups)]
        for w in writers:
            _, err = w.communicate(timeout=180)
            assert w.returncode == 0, err
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert reader_errors == []
    for i, g in enumerate(groups):
        for src in g:
            assert filecmp.cmp(src, mount / "conversations" / f"w{i}" / src.name, shallow=False)
    mount.settled()
    assert sorted(os.listdir(mount / "inbox")) == ["w0", "w1", "w2", "w3"]
    assert sum(len(os.listdir(mount / "inbox" / f"w{i}")) for i in range(4)) == len(files)
    assert json.loads((mount / "stats.json").read_text())["files"] == len(files)


WRITER = textwrap.dedent("""
    import os, sys
    src, dest = sys.argv[1], sys.argv[2]
    for name in sorted(os.listdir(src)):
        data = open(os.path.join(src, name), "rb").read()
        try:
            fd = os.open(os.path.join(dest, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            for off in range(0, len(data), 4096):
                os.write(fd, data[off:off + 4096])
            os.close(fd)
        except OSError:
            break
        print(name, flush=True)
""")


def test_kill9_during_writes_then_remount(mounter, tmp_path):
    m = mounter()
    m.start()
    src = tmp_path / "src"
    files = {p.name: p for p in sharegpt_files(src, 400)}
    w = subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(m / "inbox")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    closed = []
    for line in w.stdout:
        closed.append(line.strip())
        if len(closed) == 60:
            m.expected_errors.append(".")      # the daemon dies mid-request: anything goes
            m.kill9()
            break
    w.kill()
    w.communicate()
    assert not m.mounted() and not _alive(m.pid)
    m.start()
    for name in closed:                       # every file whose close() returned: there, intact
        assert filecmp.cmp(files[name], m / "conversations" / name, shallow=False), name
    m.settled()                               # the spool files are ingested at the next mount
    for name, p in files.items():             # the rest: every acknowledged byte, in order
        stored = m / "conversations" / name
        if stored.exists():
            assert p.read_bytes().startswith(stored.read_bytes()), name
    assert set(store_files(m.store)) >= set(closed)
    m.expected_errors.clear()
    m.umount()


# ---------------------------------------------------------------------- changes
def test_rm_replace_rename(mount, tmp_path):
    a, b = sharegpt_files(tmp_path / "src", 2)
    (mount / "inbox" / "d").mkdir()
    run("cp", a, mount / "inbox" / "d" / "x.json")
    x = mount / "conversations" / "d" / "x.json"
    assert x.read_bytes() == a.read_bytes()       # from the spool
    mount.settled()
    assert x.read_bytes() == a.read_bytes()       # stored: now in the kernel page cache
    text_before = (mount / "text" / "d" / "x.json.txt").read_bytes()
    # replace: the same path written again shows the new bytes at once
    run("cp", b, mount / "inbox" / "d" / "x.json")
    assert x.read_bytes() == b.read_bytes()
    mount.settled()
    assert x.read_bytes() == b.read_bytes()
    assert (mount / "text" / "d" / "x.json.txt").read_bytes() != text_before
    # rename, then rename a directory
    run("mv", x, mount / "conversations" / "d" / "y.json")
    assert not x.exists()
    assert (mount / "conversations" / "d" / "y.json").read_bytes() == b.read_bytes()
    assert (mount / "text" / "d" / "y.json.txt").exists()
    run("mv", mount / "conversations" / "d", mount / "conversations" / "e")
    assert (mount / "conversations" / "e" / "y.json").read_bytes() == b.read_bytes()
    assert not (mount / "conversations" / "d").exists()
    # rm -r removes the conversations and their directory
    run("rm", "-r", mount / "conversations" / "e")
    assert list((mount / "conversations").iterdir()) == []
    assert list((mount / "text").iterdir()) == []
    assert list((mount / "by-day").iterdir()) == []
    # inbox: mkdir persists, rename within inbox, rm
    assert list((mount / "inbox").iterdir()) == [mount / "inbox" / "d"]   # the mkdir'ed one
    assert list((mount / "inbox" / "d").iterdir()) == []
    (mount / "inbox" / "keep" / "sub").mkdir(parents=True)
    assert (mount / "inbox" / "keep" / "sub").is_dir()
    run("mv", mount / "inbox" / "keep", mount / "inbox" / "kept")
    assert (mount / "inbox" / "kept" / "sub").is_dir()
    run("rmdir", mount / "inbox" / "kept" / "sub")


def test_read_only_places(mount, tmp_path):
    (a,) = sharegpt_files(tmp_path / "src", 1)
    run("cp", a, mount / "inbox" / "a.json")
    mount.settled()
    for cmd, path in ((["touch"], "conversations/a.json"), (["mkdir"], "text/d"),
                      (["touch"], "stats.json"), (["rm", "-f"], "text/a.json.txt"),
                      (["touch"], "conversations/new.json"), (["mkdir"], "conversations/d"),
                      (["ln", "-s", "x"], "inbox/link")):
        r = run(*cmd, mount / path, check=False)
        assert r.returncode != 0, (cmd, path)
        assert "Read-only file system" in r.stderr or "Operation not permitted" in r.stderr, r.stderr
    with pytest.raises(OSError) as ei:
        open(mount / "conversations" / "a.json", "r+b")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(OSError) as ei:
        os.rename(mount / "inbox", mount / "conversations" / "x")
    assert ei.value.errno in (errno.EROFS, errno.EXDEV)


def test_errors_entry_and_stats(mount, tmp_path):
    before = json.loads((mount / "stats.json").read_text())
    p = tmp_path / "notes.bin"
    p.write_bytes(bytes(range(256)) * 10)
    run("cp", p, mount / "inbox")
    assert (mount / "conversations" / "notes.bin").read_bytes() == p.read_bytes()
    mount.settled()
    err = mount / "errors" / "notes.bin.txt"
    assert err.is_file() and "notes.bin" in err.read_text()
    after = json.loads((mount / "stats.json").read_text())
    assert after != before and after["files"] == before["files"] + 1


def test_stats_and_reports_hold_still_for_tar_until_the_store_changes(mount, tmp_path):
    """stats.json and reports/ keep one mtime until the store changes (it was the time
    of each getattr: `tar` said "file changed as we read it" of every one, exit 1)."""
    a, b = sharegpt_files(tmp_path / "src", 2)
    run("cp", a, mount / "inbox" / "a.json")
    mount.settled()
    t = run("tar", "cf", str(tmp_path / "x.tar"), "stats.json", "reports", cwd=mount.path, check=False)
    assert t.returncode == 0 and not t.stderr, t.stderr
    before = (mount / "stats.json").stat().st_mtime_ns
    time.sleep(0.05)
    assert (mount / "stats.json").stat().st_mtime_ns == before
    run("cp", b, mount / "inbox" / "b.json")
    mount.settled()
    assert wait_for(lambda: json.loads((mount / "stats.json").read_text())["files"] == 2)
    assert (mount / "stats.json").stat().st_mtime_ns > before


def test_other_process_ingest_is_seen(mount, tmp_path):
    from stowfs.store import Store
    a, b = sharegpt_files(tmp_path / "src", 2)
    run("cp", a, mount / "inbox" / "x.json")
    mount.settled()
    x = mount / "conversations" / "x.json"
    assert x.read_bytes() == a.read_bytes()
    with Store(mount.store) as s:                # like `stowfs ingest` while mounted
        s.put_file("x.json", str(b))
        s.put_file("other.json", str(a))
    assert wait_for(lambda: x.read_bytes() == b.read_bytes(), 5)
    assert (mount / "conversations" / "other.json").read_bytes() == a.read_bytes()


def test_an_unmounted_store_keeps_no_lmdb_lock_file(mounter, tmp_path):
    """LMDB's lock file (lmdb/lock.mdb, 8 KiB, no data) is there while the daemon, its
    background compaction child or another process has the store open; the last of them
    to close removes it, so an unmounted store is its data file alone."""
    from stowfs.store import Store
    m = mounter()
    m.start("--idle-compact", "0.2", "--settle", "0.2")
    lock = m.store / "lmdb" / "lock.mdb"
    a, b = sharegpt_files(tmp_path / "src", 2)
    run("cp", a, m / "inbox" / "a.json")
    m.settled()
    with Store(m.store) as s:                   # closes while the daemon has the store open
        s.put_file("b.json", str(b))
    assert lock.exists()
    assert wait_for(lambda: "background compaction pass 1 done" in m.log_text(), 60), m.log_text()[-2000:]
    m.umount()
    assert sorted(p.name for p in (m.store / "lmdb").iterdir()) == ["data.mdb"]
    m.start()
    assert (m / "conversations" / "a.json").read_bytes() == a.read_bytes()
    assert (m / "conversations" / "b.json").read_bytes() == b.read_bytes()
    m.umount()
    assert not lock.exists()


# ---------------------------------------------------------------------- mount and umount
def test_mount_errors_are_one_line(mounter, tmp_path):
    (tmp_path / "a-file").write_text("x")
    m = mounter(tmp_path / "a-file" / "store")    # cannot be created: its parent is a file
    r = m.start(check=False)
    assert r.returncode == 2 and r.stderr.startswith("stowfs: error: ") and r.stderr.count("\n") == 1
    assert "no store" in r.stderr
    deep = mounter(tmp_path / "missing" / "parents" / "store")   # first use: made with parents
    deep.start()
    deep.umount()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("not a store")
    r = mounter(tmp_path / "junk").start(check=False)
    assert r.returncode == 2 and "not a stowfs store" in r.stderr
    fresh = mounter(tmp_path / "new-store")   # first use: created
    fresh.start()
    fresh.umount()
    m = mounter()
    m.start()
    other = mounter(m.store)                    # the same store again: busy
    r = other.start(check=False)
    assert r.returncode == 2 and "busy" in r.stderr and r.stderr.count("\n") == 1
    r = run(*m.cmd, "mount", m.store, m.path, check=False)   # already mounted there
    assert r.returncode == 2 and "already mounted" in r.stderr
    m.expected_errors.append(".")
    os.kill(m.pid, signal.SIGKILL)              # a crashed daemon leaves a stale mount
    assert wait_for(lambda: not _alive(m.pid))
    fresh_store = tmp_path / "another"
    fresh_store.mkdir()
    r = run(*m.cmd, "mount", fresh_store, m.path, check=False)
    assert r.returncode == 2 and "stale" in r.stderr and r.stderr.count("\n") == 1
    run(*m.cmd, "umount", m.path)               # umount clears a stale mount
    assert not m.mounted()
    r = run(*m.cmd, "umount", m.path, check=False)
    assert r.returncode == 2 and "not mounted" in r.stderr


def test_sigterm_unmounts_cleanly(mount):
    run("cp", CORPUS / "claude-code-spotter" / "transcripts" / "short.jsonl", mount / "inbox")
    os.kill(mount.pid, signal.SIGTERM)        # before it settled: ingested at unmount
    assert wait_for(lambda: not mount.mounted() and not _alive(mount.pid), 10)
    assert "SIGTERM: unmounting" in mount.log_text()
    assert "short.jsonl" in store_files(mount.store)
    mount.start()
    assert (mount / "conversations" / "short.jsonl").stat().st_size > 0
    mount.umount()


def test_sigterm_ingests_an_inbox_file_whose_release_never_came(mount):
    """The kernel sends RELEASE after close() returns; a SIGTERM between the two (seen on a
    loaded machine) or a writer that still holds the file ends the session with the file
    counted as written to. Once the kernel is gone no writer can write: it is stored."""
    text = (CORPUS / "claude-code-spotter" / "transcripts" / "short.jsonl").read_bytes()
    fd = os.open(mount / "inbox" / "held.jsonl", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, text)
        os.kill(mount.pid, signal.SIGTERM)
        assert wait_for(lambda: not mount.mounted() and not _alive(mount.pid), 10)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass                                # ENOTCONN: the session is gone
    assert "held.jsonl" in store_files(mount.store)
    mount.start()
    assert (mount / "conversations" / "held.jsonl").read_bytes() == text
    mount.umount()


def test_mount_and_cli_agree(mount, tmp_path):
    cli = Path(sys.executable).with_name("stowfs")
    if not cli.exists():
        pytest.skip("the stowfs CLI is not installed")
    src = CORPUS / "claude-code-spotter" / "transcripts"
    run("cp", "-r", src, mount / "inbox" / "t")
    mount.settled()
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    for name in names:
        for view, path in (("original", mount / "conversations" / "t" / name),
                           ("text", mount / "text" / "t" / (name + ".txt"))):
            out = subprocess.run([cli, "cat", "--view", view, mount.store, f"t/{name}"],
                                 capture_output=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert out.stdout == path.read_bytes(), (view, name)
    cli_stats = json.loads(run(cli, "stats", "--json", mount.store).stdout)
    mount_stats = json.loads((mount / "stats.json").read_text())
    on_disk = {"disk_bytes", "ratio", "savings_percent"}     # the daemon's log grows meanwhile
    assert {k: v for k, v in cli_stats.items() if k not in on_disk} == \
        {k: v for k, v in mount_stats.items() if k not in on_disk}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_disk_full_gives_enospc(mounter, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", small)
    try:
        m = mounter(small / "store")
        m.start()
        big = CORPUS / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json"
        m.expected_errors.append(r"not stored: a write failed \(No space left on device\)")
        r = run("cp", big, m / "inbox", check=False)
        assert r.returncode != 0 and "No space left on device" in r.stderr
        assert not (m / "conversations" / big.name).exists()      # nothing half-stored
        run("rm", m / "inbox" / big.name)                          # the partial spool file
        ok = CORPUS / "claude-code-spotter" / "transcripts" / "short.jsonl"
        run("cp", ok, m / "inbox")                                 # and the mount goes on
        run("cmp", ok, m / "conversations" / "short.jsonl")
        m.umount()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_missing_mount_point_is_made_when_its_parent_exists(mounter, tmp_path):
    m = mounter()
    m.path.rmdir()                              # as on a fresh machine: ~/convos not there yet
    m.start()
    assert m.mounted() and (m.path / "inbox").is_dir()
    r = run(*m.cmd, "mount", m.store, tmp_path / "no" / "such" / "dir", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_mount_refuses_places_it_would_deadlock_on_or_hide(mounter, tmp_path):
    m = mounter()
    cases = [(m.store, m.store, "is the store itself"),
             (m.store, m.store / "inside", "lies inside the store"),
             (tmp_path / "outer" / "store", tmp_path / "outer", "lies inside the mount point")]
    (tmp_path / "outer").mkdir()
    for store, mp, why in cases:
        r = run(*m.cmd, "mount", store, mp, check=False)
        assert r.returncode == 2 and why in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("stowfs: error: ")
    assert os.listdir(m.store) == [] and os.listdir(tmp_path / "outer") == []   # nothing made
    (m.path / "mine.txt").write_text("a file the mount would hide")
    r = m.start(check=False)
    assert r.returncode == 2 and "is not empty" in r.stderr and "-o nonempty" in r.stderr
    assert r.stderr.count("\n") == 1 and not m.mounted()
    m.start("-o", "nonempty")                    # asked for: mounted over it
    assert {"by-app", "by-day", "by-model", "conversations", "errors", "inbox", "reports", "stats.json",
            "text"} <= set(os.listdir(m.path))
    m.umount()
    assert (m.path / "mine.txt").read_text() == "a file the mount would hide"
    (m.path / "mine.txt").unlink()
