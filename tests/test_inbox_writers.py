"""inbox/ with the clients people use to put files into a directory (issue 12), on a real
mount against real files of ../shared/corpus: appends, rsync, editors, temp file + rename,
touch, cp -a, tar, unzip, git clone, the same name opened again and again, kill -9 before
a file settled. Each test checks what the store holds afterwards: bytes, names, modes and
mtimes (integer ns), against the source or against what the same client does in a plain
directory."""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from conftest import CORPUS, _alive

pytestmark = pytest.mark.mount

SETTLE = "0.3"          # seconds: short, so the tests do not wait long for ingests
SESSION = CORPUS / "claude-code-spotter" / "transcripts" / "short.jsonl"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (tools/test installs it with apt-get)")
    if not CORPUS.is_dir():
        pytest.skip(f"the real corpus is not at {CORPUS}")


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert r.returncode == 0, f"{cmd}: exit {r.returncode}: {r.stderr}"
    return r


def wait_for(pred, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def waiting(m) -> list[str]:
    return m.waiting()


def settle(m, timeout=60.0) -> None:
    m.settled(timeout)


def stored(m) -> dict:
    """name -> (FileInfo, bytes) of everything the store holds (read beside the mount)."""
    from stowfs.store import Store
    with Store(m.store, readonly=True) as s:
        return {i.name: (i, s.get(i.name)) for i in s.iter_files()}


def tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def same_file(info, data: bytes, src: Path, mode=True) -> None:
    st = src.stat()
    assert data == src.read_bytes(), info.name
    assert info.mtime_ns == st.st_mtime_ns, (info.name, info.mtime_ns, st.st_mtime_ns)
    if mode:
        assert info.mode == stat.S_IMODE(st.st_mode), (info.name, oct(info.mode), oct(st.st_mode))


@pytest.fixture
def m(mounter):
    mount = mounter()
    mount.start("--settle", SETTLE)
    yield mount


# ---------------------------------------------------------------------- appends
def test_appends_never_lose_data(m, tmp_path):
    """`cat part >> x` three times (the last after x was ingested), and a logger that opens,
    appends one line and closes, again and again."""
    need("bash")
    data = SESSION.read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}"
        p.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append(p)
    target = m / "inbox" / "s.jsonl"
    run("bash", "-c", f"cat {parts[0]} >> {target} && cat {parts[1]} >> {target}")
    assert (m / "conversations" / "s.jsonl").read_bytes() == data[:cuts[2]]   # from close() on
    settle(m)
    run("bash", "-c", f"cat {parts[2]} >> {target}")          # appends to the stored file
    assert (m / "conversations" / "s.jsonl").read_bytes() == data
    logger = textwrap.dedent("""
        import sys, time
        src, dest = sys.argv[1], sys.argv[2]
        for i, line in enumerate(open(src, "rb")):
            with open(dest, "ab") as f:
                f.write(line)
            if i % 10 == 9:
                time.sleep(0.4)          # let it settle now and then: appends go on
    """)
    exchanges = CORPUS / "api-cassettes-pydantic-ai" / "exchanges.jsonl"
    lines = exchanges.read_bytes().splitlines(keepends=True)[:40]
    src = tmp_path / "ex.jsonl"
    src.write_bytes(b"".join(lines))
    run(sys.executable, "-c", logger, src, m / "inbox" / "ex.jsonl")
    settle(m)
    got = stored(m)
    assert got["s.jsonl"][1] == data
    assert got["ex.jsonl"][1] == src.read_bytes()
    assert set(got) == {"s.jsonl", "ex.jsonl"}


# ---------------------------------------------------------------------- rsync
def test_rsync_real_names_and_an_unchanged_second_run_transfers_nothing(m):
    need("rsync")
    r = run("rsync", "-a", "--stats", f"{CORPUS}/", m / "inbox" / "dst/")
    assert re.search(r"Number of regular files transferred: [1-9]", r.stdout)
    src = tree(CORPUS)
    for rel, p in src.items():          # at once, from the spool or the store
        assert (m / "conversations" / "dst" / rel).read_bytes() == p.read_bytes(), rel
    settle(m)
    got = stored(m)
    assert set(got) == {f"dst/{rel}" for rel in src}       # no temp names (.name.XXXXXX)
    for rel, p in src.items():
        same_file(*got[f"dst/{rel}"], p)
        st = (m / "conversations" / "dst" / rel).stat()  # shown as stored
        assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
    r = run("rsync", "-a", "--stats", f"{CORPUS}/", m / "inbox" / "dst/")
    assert "Number of regular files transferred: 0" in r.stdout, r.stdout
    assert waiting(m) == []                                 # and nothing to ingest again
    assert {i.file_id for i, _ in stored(m).values()} == {i.file_id for i, _ in got.values()}


def test_a_stored_tree_keeps_its_directories_without_spool_directories(m):
    """Once a copied tree is stored, its spool directories go into a record (each was a
    4 KiB directory entry in the store for good): inbox/ shows them as before, with the
    mode and mtime rsync gave them, also after a remount, and they behave as directories
    (an empty one stays, rmdir, mv, writing into one again)."""
    need("rsync")
    run("rsync", "-a", f"{CORPUS}/", m / "inbox" / "dst/")
    (m / "inbox" / "dst" / "empty").mkdir(mode=0o750)
    (m / "inbox" / "dst" / "empty" / "deeper").mkdir()
    settle(m)
    spool = m.store / "spool"
    assert wait_for(lambda: sorted(str(p.relative_to(spool)) for p in spool.rglob("*"))
                    == ["dst", "dst/empty", "dst/empty/deeper"])      # made, never written into
    src_dirs = {str(p.relative_to(CORPUS)): p for p in CORPUS.rglob("*") if p.is_dir()}
    for round_ in ("mounted", "remounted"):
        for rel, p in src_dirs.items():
            st = (m / "inbox" / "dst" / rel).stat()
            assert stat.S_ISDIR(st.st_mode), rel
            assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == \
                (p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode)), (round_, rel)
        assert stat.S_IMODE((m / "inbox" / "dst" / "empty").stat().st_mode) == 0o750
        assert [p.name for p in (m / "inbox" / "dst" / "empty").iterdir()] == ["deeper"]
        if round_ == "mounted":
            m.umount()
            m.start("--settle", SETTLE)
    assert set(stored(m)) == {f"dst/{rel}" for rel in tree(CORPUS)}
    with pytest.raises(OSError):
        (m / "inbox" / "dst" / "empty").rmdir()             # not empty
    (m / "inbox" / "dst" / "empty" / "deeper").rmdir()
    run("mv", m / "inbox" / "dst" / "empty", m / "inbox" / "dst" / "moved")
    assert (m / "inbox" / "dst" / "moved").is_dir() and not (m / "inbox" / "dst" / "empty").exists()
    (m / "inbox" / "dst" / "moved" / "new.json").write_bytes(SESSION.read_bytes())
    assert stat.S_IMODE((m / "inbox" / "dst" / "moved").stat().st_mode) == 0o750
    settle(m)
    assert stored(m)["dst/moved/new.json"][1] == SESSION.read_bytes()
    (m / "inbox" / "dst" / "moved" / "new.json").unlink()
    (m / "inbox" / "dst" / "moved").rmdir()
    assert not (m / "inbox" / "dst" / "moved").exists()
    assert "moved" not in {p.name for p in (m / "inbox" / "dst").iterdir()}


def test_rsync_inplace_and_a_changed_file(m, tmp_path):
    need("rsync")
    src = tmp_path / "src"
    shutil.copytree(CORPUS / "claude-code-spotter" / "transcripts", src)
    run("rsync", "-a", f"{src}/", m / "inbox" / "t/")
    settle(m)
    victim = sorted(src.rglob("*.jsonl"))[0]
    with open(victim, "ab") as f:                            # a session that grew
        f.write(SESSION.read_bytes()[:2000])
    os.utime(victim, ns=(1_700_000_000_111_222_333, 1_700_000_000_111_222_333))
    r = run("rsync", "-a", "--inplace", "--no-whole-file", "--stats", f"{src}/", m / "inbox" / "t/")
    assert "Number of regular files transferred: 1" in r.stdout, r.stdout
    settle(m)
    got = stored(m)
    for rel, p in tree(src).items():
        same_file(*got[f"t/{rel}"], p)


# ---------------------------------------------------------------------- temp file + rename
WRITER = textwrap.dedent("""
    import os, sys, tempfile
    src, dest_dir, name = sys.argv[1], sys.argv[2], sys.argv[3]
    data = open(src, "rb").read()
    for i in range(3):                   # save three times, as an app writing its state does
        fd, tmp = tempfile.mkstemp(dir=dest_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) * (i + 1) // 3])
            f.flush()
            if i == 1:
                os.fsync(f.fileno())     # an fsync'ed temp file is not stored either
        os.replace(tmp, os.path.join(dest_dir, name))
""")


def test_tempfile_and_os_replace(m):
    (m / "inbox" / "app").mkdir()
    run(sys.executable, "-c", WRITER, SESSION, m / "inbox" / "app", "state.jsonl")
    assert (m / "conversations" / "app" / "state.jsonl").read_bytes() == SESSION.read_bytes()
    settle(m)
    got = stored(m)
    assert list(got) == ["app/state.jsonl"] and got["app/state.jsonl"][1] == SESSION.read_bytes()
    assert os.listdir(m / "inbox" / "app") == ["state.jsonl"]
    run(sys.executable, "-c", WRITER, SESSION, m / "inbox" / "app", "state.jsonl")   # onto the stored one
    settle(m)
    assert list(stored(m)) == ["app/state.jsonl"]


# ---------------------------------------------------------------------- editors
def test_vim_saves_and_its_swap_files_are_never_stored(m, tmp_path):
    vim = shutil.which("vim") or shutil.which("vim.tiny")
    if vim is None:
        pytest.skip("needs vim or vim.tiny (tools/test installs vim-tiny with apt-get)")
    shutil.copy(SESSION, m / "inbox" / "s.jsonl")
    os.chmod(m / "inbox" / "s.jsonl", 0o644)       # the corpus files are read-only
    settle(m)
    # edit: delete the first line and save; vim writes .s.jsonl.swp while it works
    run(vim, "-u", "NONE", "-i", "NONE", "-es", "-c", "1d", "-c", "wq", m / "inbox" / "s.jsonl",
        stdin=subprocess.DEVNULL)
    expected = b"".join(SESSION.read_bytes().splitlines(keepends=True)[1:])
    assert (m / "conversations" / "s.jsonl").read_bytes() == expected
    # a swap file left by an editor that died stays in inbox/ and is never stored
    (m / "inbox" / ".s.jsonl.swp").write_bytes(b"b0VIM 9.0" + bytes(100))
    (m / "inbox" / "s.jsonl~").write_bytes(SESSION.read_bytes())
    time.sleep(float(SETTLE) * 3)
    settle(m)
    got = stored(m)
    assert list(got) == ["s.jsonl"] and got["s.jsonl"][1] == expected
    assert sorted(os.listdir(m / "inbox")) == [".s.jsonl.swp", "s.jsonl", "s.jsonl~"]
    assert os.listdir(m / "conversations") == ["s.jsonl"]
    assert os.listdir(m / "errors") == []
    for name in (".s.jsonl.swp", "s.jsonl~"):
        os.unlink(m / "inbox" / name)
    assert sorted(os.listdir(m / "inbox")) == ["s.jsonl"]


# ---------------------------------------------------------------------- times and modes
def test_touch_chmod_and_cp_a_keep_mode_and_mtime_exactly(m, tmp_path):
    src = tmp_path / "private.jsonl"
    shutil.copy(SESSION, src)
    os.chmod(src, 0o600)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_612_345_678_987_654_321))
    run("cp", "-a", src, m / "inbox")
    st = (m / "conversations" / "private.jsonl").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, 1_612_345_678_987_654_321)
    run("touch", m / "inbox" / "new")                        # a new empty file
    run("touch", "-d", "@1650000000.5", m / "inbox" / "private.jsonl")   # utime of a stored file
    settle(m)
    got = stored(m)
    info, data = got["private.jsonl"]
    assert data == src.read_bytes() and info.mode == 0o600 and info.mtime_ns == 1_650_000_000_500_000_000
    assert got["new"][1] == b"" and abs(got["new"][0].mtime_ns - time.time_ns()) < 60 * 10**9
    run("chmod", "640", m / "inbox" / "private.jsonl")       # chmod of a stored file
    settle(m)
    info, data = stored(m)["private.jsonl"]
    assert (info.mode, info.mtime_ns, data) == (0o640, 1_650_000_000_500_000_000, src.read_bytes())
    st = (m / "conversations" / "private.jsonl").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_650_000_000_500_000_000)
    st = (m / "inbox" / "private.jsonl").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_650_000_000_500_000_000)


def test_tar_and_unzip_as_in_a_plain_directory(m, tmp_path):
    need("tar", "unzip", "zip")
    part = CORPUS / "api-cassettes-pydantic-ai"
    archive = tmp_path / "a.tar"
    run("tar", "-C", part.parent, "-cf", archive, part.name)
    zipped = tmp_path / "a.zip"
    run("zip", "-qrX", zipped, part.name, cwd=part.parent)
    plain = tmp_path / "plain"
    plain.mkdir()
    for where in (plain, m / "inbox"):
        (where / "t").mkdir()
        (where / "z").mkdir()
        run("tar", "-C", where / "t", "-xf", archive)
        run("unzip", "-q", zipped, "-d", where / "z")
    settle(m)
    got = stored(m)
    expect = {f"{d}/{rel}": p for d in ("t", "z") for rel, p in tree(plain / d).items()}
    assert set(got) == set(expect)
    for name, p in expect.items():
        same_file(*got[name], p)        # bytes, mode and mtime as the client set them


# ---------------------------------------------------------------------- the same name again
def test_open_for_write_200_times(m):
    script = textwrap.dedent("""
        import sys, time
        dest, src = sys.argv[1], open(sys.argv[2], "rb").read()
        for i in range(200):
            with open(dest, "w") as f:
                f.write(f"{i}\\n")
            if i % 50 == 25:
                time.sleep(0.6)          # settles (is ingested) now and then
        with open(dest, "wb") as f:
            f.write(src)
    """)
    run(sys.executable, "-c", script, m / "inbox" / "again.jsonl", SESSION)
    settle(m)
    assert stored(m)["again.jsonl"][1] == SESSION.read_bytes()


# ---------------------------------------------------------------------- git
def test_git_clone_into_inbox(m, tmp_path):
    need("git")
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "agent-history-redacted", repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    run("git", "init", "-q", repo, env=env)
    run("git", "-C", repo, "add", ".", env=env)
    run("git", "-C", repo, "commit", "-qm", "corpus", env=env)
    run("git", "clone", "-q", repo, m / "inbox" / "r", env=env)
    assert run("git", "-C", m / "inbox" / "r", "status", "--porcelain", env=env).stdout == ""
    run("git", "-C", m / "inbox" / "r", "fsck", "--strict", env=env)
    settle(m)
    got = stored(m)
    for rel, p in tree(CORPUS / "agent-history-redacted").items():
        assert got[f"r/{rel}"][1] == p.read_bytes()
    assert "r/.git/HEAD" in got and "r/.git/index" in got
    from stowfs.fs.inbox import is_leftover
    assert [n for n in got if is_leftover(n)] == []           # no *.lock, no tmp_obj_*
    assert run("git", "-C", m / "conversations" / "r", "log", "--oneline", env=env).stdout.strip()


# ---------------------------------------------------------------------- kill -9
KEEP_OPEN = textwrap.dedent("""
    import os, sys
    data = open(sys.argv[1], "rb").read()
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    n = os.write(fd, data[: len(data) // 2])      # acknowledged, never closed
    print(n, flush=True)
    sys.stdin.read()
""")


def test_kill9_between_write_and_settle_then_remount(mounter, tmp_path):
    m = mounter()
    m.start("--settle", "600")                   # nothing settles before the kill
    files = tree(CORPUS / "claude-code-spotter")
    for rel, p in files.items():
        dest = m / "inbox" / "cc" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
    big = CORPUS / "aider-chat-history" / "chat-history.md"
    w = subprocess.Popen([sys.executable, "-c", KEEP_OPEN, str(big), str(m / "inbox" / "open.md")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    acked = int(w.stdout.readline())
    assert stored(m) == {}                       # closed, acknowledged, not ingested yet
    m.expected_errors.append(".")                # the daemon dies mid-request: anything goes
    m.kill9()
    w.kill()
    w.communicate()
    assert not m.mounted() and not _alive(m.pid)
    m.expected_errors.clear()
    m.start("--settle", SETTLE)
    settle(m)
    got = stored(m)
    assert set(got) == {f"cc/{rel}" for rel in files} | {"open.md"}
    for rel, p in files.items():
        same_file(*got[f"cc/{rel}"], p)
    assert got["open.md"][1] == big.read_bytes()[:acked] and got["open.md"][0].mode == 0o640
    m.umount()


# ---------------------------------------------------------------------- failures
def test_a_failed_ingest_is_logged_and_listed_in_errors(m):
    """Another process stores a file `a` while inbox/a/b.jsonl waits to be ingested: that
    ingest cannot happen (a is a file). It is logged, shown in errors/, kept in inbox/."""
    from stowfs.store import Store
    (m / "inbox" / "a").mkdir()
    with open(m / "inbox" / "a" / "b.jsonl", "wb") as f:
        f.write(SESSION.read_bytes())
        with Store(m.store) as s:            # before it settles
            s.put("a", b"a file where a directory should be")
    m.expected_errors.append(r"inbox/a/b\.jsonl: not stored")
    assert wait_for(lambda: "inbox/a/b.jsonl: not stored" in m.log_text(), 30)
    entry = m / "errors" / "a%2Fb.jsonl.txt"
    assert wait_for(entry.exists, 10)
    assert entry.read_text().startswith("inbox/a/b.jsonl: not stored: ")
    assert (m / "inbox" / "a" / "b.jsonl").read_bytes() == SESSION.read_bytes()


def test_writes_to_read_only_parts_answer_erofs(m):
    shutil.copy(SESSION, m / "inbox" / "s.jsonl")
    settle(m)
    for cmd, path in ((["touch"], "conversations/new.jsonl"), (["mkdir"], "text/d"),
                      (["touch"], "conversations/s.jsonl"), (["rm", "-f"], "text/s.jsonl.txt"),
                      (["mkdir"], "conversations/d"), (["touch"], "stats.json")):
        r = run(*cmd, m / path, check=False)
        assert r.returncode != 0 and "Read-only file system" in r.stderr, (cmd, path, r.stderr)
    r = run("bash", "-c", f"echo x > {m / 'conversations' / 's.jsonl'}", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr


# ---------------------------------------------------------------------- FLUSH
def test_flush_is_answered_once_and_never_sent_again(m):
    run("cp", "-r", CORPUS / "claude-code-spotter", m / "inbox" / "cc")
    settle(m)
    names = sorted(tree(CORPUS / "claude-code-spotter"))
    for _ in range(2):
        run("cat", *[m / "conversations" / "cc" / n for n in names])
    counts = m.requests()
    assert counts.get("flush", 0) == 1, counts        # ENOSYS once: the kernel stops asking
    assert counts["open"] >= 2 * len(names) and counts["release"] >= 2 * len(names)
