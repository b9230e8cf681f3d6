"""Hostile input, crashes, corruption and concurrency, through the real CLI."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import _alive, _descendants, outliving
from realdata import corpus_files
from realdata import corpus_dir
from stowfs.store import Store

CLI = [sys.executable, "-m", "stowfs"]


def run(*args, input=None, check=True, timeout=600):
    p = subprocess.run([*CLI, *map(str, args)], input=input, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"stowfs {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr.decode()}")
    return p


HOSTILE = {
    "empty.json": b"",
    "truncated.json": b'{"model": "gpt-4", "messages": [{"role": "user", "content": "' + b"abc " * 40,
    "invalid-utf8.json": b'{"messages": [{"role": "user", "content": "caf\xe9 ' + b"x" * 60 + b'"}]}',
    "binary.bin": bytes(range(256)) * 64,
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "nan.json": b'{"model": "m", "messages": [{"role": "user", "content": "' + b"n" * 60 + b'"}], "t": NaN}',
    "dupkeys.json": b'{"model": "a", "model": "b", "messages": [{"role": "user", "content": "' + b"d" * 60
                    + b'", "content": "' + b"e" * 60 + b'"}]}',
    "hugenum.json": b'{"messages": [], "n": ' + b"9" * 50_000 + b"}",
    "lone-surrogate.json": b'{"messages": [{"role": "user", "content": "\\ud800 ' + b"s" * 60 + b'"}]}',
    "bom.json": b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user", "content": "' + b"b" * 60 + b'"}]}',
    "crlf.jsonl": b'{"a": "' + b"r" * 60 + b'"}\r\n{"a": "' + b"r" * 60 + b'"}\r\n',
    "escapes.json": json.dumps({"messages": [{"role": "user", "content": "<tag> & \u2028 é/" * 8}]}).encode(),
    "go-style.json": b'{"content": "\\u003ctag\\u003e \\u0026 ' + b"g" * 60 + b'"}',
    "php-style.json": b'{"content": "http:\\/\\/example.com\\/' + b"p" * 60 + b' caf\\u00e9"}',
    "upper-hex.json": b'{"content": "caf\\u00E9 ' + b"u" * 60 + b'"}',
}


def test_hostile_inputs_are_stored_losslessly_with_a_reason(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name, data in HOSTILE.items():
        (src / name).write_bytes(data)
    store = tmp_path / "store"
    p = run("ingest", store, src, "--json")
    summary = json.loads(p.stdout)
    assert summary["files"] == len(HOSTILE) and summary["failed"] == 0
    assert b"Traceback" not in p.stderr
    for name, data in HOSTILE.items():
        assert run("cat", store, f"in/{name}").stdout == data, name
    errors = run("ls", store, "--errors").stdout.decode().splitlines()
    reasons = dict(line.split("\t", 1) for line in errors)
    for name in ("in/empty.json", "in/truncated.json", "in/invalid-utf8.json", "in/binary.bin"):
        assert name in reasons and reasons[name].strip(), name
    assert run("verify", store).returncode == 0


def test_errors_are_one_line_with_exit_codes(tmp_path):
    store = tmp_path / "store"
    p = run("cat", store, "nope", check=False)
    assert p.returncode == 2 and p.stderr.decode().count("\n") == 1 and b"Traceback" not in p.stderr
    p = run("ingest", store, tmp_path / "missing", check=False)
    assert p.returncode == 2 and b"no such file" in p.stderr
    p = run("rm", store, "nope", check=False)
    assert p.returncode == 1


def _big_jsonl(path, size: int) -> None:
    """A session file of `size` bytes built from real Claude Code lines, each line made
    unique (as a real long session's are) but sharing its message content."""
    lines = (corpus_dir() / "claude-code-spotter" / "transcripts" / "tool_heavy.jsonl").read_bytes().splitlines()
    written = i = 0
    with open(path, "wb") as f:
        while written < size:
            line = lines[i % len(lines)].replace(b'"uuid":"', b'"uuid":"%08d-' % i, 1) + b"\n"
            f.write(line)
            written += len(line)
            i += 1


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.slow
def test_one_gigabyte_file_streams_in_bounded_memory(tmp_path):
    big = tmp_path / "big.jsonl"
    _big_jsonl(big, 1 << 30)
    store = tmp_path / "store"
    # the peak of the ingest's own process tree: measured in a fresh parent, so the
    # children of tests run before (an export, an embedding) do not count
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", probe, *CLI, "ingest", str(store), str(big), "-q"],
                       capture_output=True, text=True, check=True, timeout=1800)
    peak_kb = int(p.stdout.split()[-1])
    assert peak_kb < 600 * 1024, f"ingest of 1 GiB peaked at {peak_kb // 1024} MiB"
    out = tmp_path / "back"
    with open(out, "wb") as f:
        subprocess.run([*CLI, "cat", str(store), "big.jsonl"], stdout=f, check=True, timeout=600)
    assert _sha256(out) == _sha256(big)
    with Store(store) as s:
        assert s.disk_bytes() < (1 << 30) // 20   # repetitive content: stored many times smaller


def test_kill_9_during_ingest_leaves_a_clean_store(tmp_path):
    big = tmp_path / "big.jsonl"
    _big_jsonl(big, 300 << 20)
    small = corpus_dir() / "agent-history-redacted" / "claude-session-01.jsonl"
    store = tmp_path / "store"
    run("ingest", store, small)
    proc = subprocess.Popen([*CLI, "ingest", str(store), str(big), "-q"])
    time.sleep(3)
    assert proc.poll() is None, "ingest finished before it could be killed; make the file bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run("verify", store).returncode == 0
    names = run("ls", store).stdout.decode().split()
    assert names == ["claude-session-01.jsonl"]
    assert run("cat", store, "claude-session-01.jsonl").stdout == small.read_bytes()
    run("ingest", store, big, "-q")
    assert run("ls", store).stdout.decode().split() == ["big.jsonl", "claude-session-01.jsonl"]


def test_kill_9_of_a_many_file_ingest_takes_its_workers_with_it(tmp_path):
    """A many-file ingest forks its preparing workers (no forkserver in between); killed
    with kill -9, its workers go with it, and the store is clean and takes the files."""
    root = corpus_dir()
    src = tmp_path / "src"
    files = [p for p in corpus_files() if p.stat().st_size < (1 << 20)]
    for copy in range(30):              # real files under many names: long enough to kill
        for p in files:
            dst = src / f"c{copy}" / p.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    store = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "ingest", str(store), str(src), "-q"])
    kids, deadline = [], time.monotonic() + 60
    while len(kids) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
        kids = _descendants(proc.pid)
    assert proc.poll() is None, "ingest finished before its workers were seen; give it more files"
    for k in kids:
        with open(f"/proc/{k}/cmdline", "rb") as f:
            assert b"forkserver" not in f.read(), "the CLI's workers should be forked from it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = outliving(kids, 10)
    assert not left, f"workers of the killed ingest still running: {left}"
    assert run("verify", store).returncode == 0
    run("ingest", store, src, "-q")
    for p in files[:20]:
        rel = f"src/c7/{p.relative_to(root)}"
        assert run("cat", store, rel).stdout == p.read_bytes()


def test_corrupted_frame_is_found_and_never_read_as_wrong_bytes(tmp_path):
    root = corpus_dir()
    store = tmp_path / "store"
    run("ingest", store, root / "agent-history-redacted", root / "aider-chat-history" / "examples")
    with Store(store) as s:
        victim = "examples/census.md"
        from stowfs.store import blocks
        pos = s._read(lambda txn: s._record(txn, victim)).extents[0][0]
        frame = s._read(lambda txn: bytes(blocks.fragments(txn, s._blocks, pos // s.block_size)[0][1]))
    data_file = store / "lmdb" / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    at = raw.find(frame)
    assert at >= 0
    raw[at + len(frame) // 2] ^= 0x5A
    data_file.write_bytes(bytes(raw))
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert victim in report["damaged_files"]
    p = run("cat", store, victim, check=False)
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    assert len(p.stdout) < (root / "aider-chat-history" / "examples" / "census.md").stat().st_size
    # files in other blocks still read
    ok = run("cat", store, "agent-history-redacted/codex-session-01.jsonl", check=False)
    if ok.returncode == 0:
        assert ok.stdout == (root / "agent-history-redacted" / "codex-session-01.jsonl").read_bytes()


def _spotter_store_with_damaged_block(tmp_path, damage) -> tuple:
    """(store, {name: bytes}): a compacted store of claude-code-spotter (3.7 MB: one
    block fragment, its large file read in parts) whose fragment frame was handed to
    damage(frame as a bytearray, offset of its extra_len field) and written back."""
    from stowfs.maintenance import compact
    from stowfs.packing import get_uvarint
    import lmdb
    root = corpus_dir()
    src = root / "claude-code-spotter"
    store = tmp_path / "store"
    run("ingest", store, src)
    compact(store)
    key = b"\x02" + (0).to_bytes(8, "big")              # block 0, fragment 0
    env = lmdb.open(str(store / "lmdb"), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"store")) as txn:
        v = bytearray(txn.get(key))
        _, at = get_uvarint(v, 11)                      # past raw_len
        damage(v, at)
        txn.put(key, bytes(v))
    env.close()
    return store, {str(p.relative_to(root)): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}


def test_a_damaged_fragment_range_never_shifts_a_file_into_other_bytes(tmp_path):
    """A block fragment's ranges map stream positions to its payload; its pieces' hashes
    cover the payload alone. A flipped gap (one byte, the ranges' total unchanged)
    shifted every later file onto its neighbours' bytes, with every piece sound: `cat`
    printed other bytes and exited 0. Now a whole file is checked against its record's
    checksum, and a part of one is read only from fragments checked whole against their
    frame hash: every file reads right or fails loudly, whichever way it is read."""
    from stowfs.packing import get_uvarint
    from stowfs.errors import Corrupt

    def gap(v: bytearray, at: int) -> None:
        _, i = get_uvarint(v, at)                       # extra_len
        n, i = get_uvarint(v, i)                        # ranges
        assert n == 1 and v[i] == 0                     # one range, from the block's start
        v[i] = 1
    store, want = _spotter_store_with_damaged_block(tmp_path, gap)
    shifted = 0
    with Store(store, readonly=True) as s:
        for name, data in want.items():
            r = s.reader(name)
            for how in ("whole", "parts"):
                try:
                    if how == "whole":
                        got = s.get(name)
                    else:
                        got = b"".join(r.read(o, 4096) for o in range(0, r.size, 4096))
                except Corrupt:
                    shifted += how == "whole"
                    continue
                assert got == data, (name, how)
        fids = [(n, s.info(n).file_id) for n in want]
        for (name, _), got in zip(fids, s.read_files(fids)):
            assert isinstance(got, Corrupt) or got == want[name], name
    assert shifted >= len(want) // 2
    p = run("cat", store, *want, check=False)
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    assert want[next(iter(want))].startswith(p.stdout) or not p.stdout
    failing = {n for n in want if run("cat", store, n, check=False).returncode != 0}
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1 and set(json.loads(p.stdout)["damaged_files"]) >= failing


def test_a_damaged_frame_hash_of_sound_content_loses_no_file(tmp_path):
    """A flipped byte in a block fragment's stored hash: its payload and ranges are
    sound, every piece checks, the whole does not match. Every file is read whole
    against its own checksum, as any file read whole is; a part of a file, which the
    frame hash alone vouched for, comes from the whole file so checked. `cat` of the
    file that reaches the block's end failed, and large files read in parts failed,
    while verify (which checks each file against its checksum) named none of them:
    the corruption torture's field-aware flips found it."""
    from stowfs.packing import get_uvarint

    def hash_byte(v: bytearray, at: int) -> None:
        extra_len, i = get_uvarint(v, at)
        v[i + extra_len + 5] ^= 0x40                    # a byte of the frame hash
    store, want = _spotter_store_with_damaged_block(tmp_path, hash_byte)
    assert max(len(d) for d in want.values()) > 1 << 20   # the CLI reads it in parts
    with Store(store, readonly=True) as s:
        for name, data in want.items():
            r = s.reader(name)
            assert s.get(name) == data
            assert b"".join(r.read(o, 4096) for o in range(0, r.size, 4096)) == data
        fids = [(n, s.info(n).file_id) for n in want]
        assert s.read_files(fids) == list(want.values())
    p = run("cat", store, *want, check=False)
    assert p.returncode == 0 and p.stdout == b"".join(want.values())
    p = run("verify", store, "--json", check=False)
    report = json.loads(p.stdout)
    assert p.returncode == 1 and report["damaged_files"] == []
    assert any("does not match its hash" in m for m in report["problems"])
    run("compact", store, check=False)                 # never rewritten as if it were sound
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1 and any("does not match its hash" in m for m in json.loads(p.stdout)["problems"])


def test_a_damaged_store_database_name_is_never_taken_for_a_new_store(tmp_path):
    """One flipped byte in the name of the `store` database, in LMDB's main database (a
    leaf key there): the writable open of the mount (and of `ingest`) saw no store
    database and made a new, empty one beside the damaged one. The store then read as
    empty and sound: verify said OK with 0 files, and the next compaction would have
    given the old pages away. Every command now fails loudly and writes nothing."""
    store, names, data_file, raw = _small_files_store(tmp_path)
    at = raw.find(b"\x05\x00store")                   # key size 5, then the name
    assert at >= 0 and raw.find(b"\x05\x00store", at + 1) < 0
    raw[at + 3] ^= 0x01                                 # "store" -> "suore"
    data_file.write_bytes(bytes(raw))
    before = data_file.read_bytes()
    for args in (("ls", store), ("cat", store, names[0]), ("ingest", store, corpus_files()[0])):
        p = run(*args, check=False)
        assert p.returncode == 2 and b"missing" in p.stderr and b"Traceback" not in p.stderr, args
    mp = tmp_path / "mp"
    mp.mkdir()
    p = run("mount", store, mp, check=False)
    try:
        assert p.returncode == 2 and b"missing" in p.stderr and not os.path.ismount(mp)
    finally:
        if os.path.ismount(mp):
            run("umount", mp, check=False)
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["structure_damaged"]
    assert data_file.read_bytes() == before


def test_zeroed_lmdb_meta_pages_make_every_command_say_damaged(tmp_path):
    """Both LMDB meta pages zeroed: the read-only commands said the store is damaged, and
    a writable open (`ingest`, the mount) died with "internal error: InvalidError"
    (the torture's writable-open check, 15 trials of the full tier)."""
    store, names, data_file, raw = _small_files_store(tmp_path)
    raw[:2 * 4096] = bytes(2 * 4096)
    data_file.write_bytes(bytes(raw))
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("ls", store), ("ingest", store, empty), ("verify", store)):
        p = run(*args, check=False)
        assert p.returncode in (1, 2) and b"damaged" in p.stdout + p.stderr, args
        assert b"internal error" not in p.stderr and b"Traceback" not in p.stderr, args


def test_a_zeroed_page_never_makes_a_writable_open_an_internal_error(tmp_path):
    """Each B-tree page of the store's database zeroed in turn, then `ingest` of an empty
    directory (a writable open, as the mount's): a damaged page the write transaction
    met (the appender's look at the open block) died as "internal error: CorruptedError"
    where every read-only command said the store is damaged (the corrupt torture's
    writable-open check, 11 of 200 targeted trials)."""
    import shutil
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from torturelib.lmdbpages import walk_checked
    import random
    small = [p for p in corpus_files() if p.stat().st_size <= (400 << 10)]
    files = sorted(random.Random("1-corrupt").sample(small, min(24, len(small))))  # the torture's
    store = tmp_path / "store"
    run("ingest", store, *files, "--prefix", "c")
    run("compact", store)
    lay = walk_checked(str(store / "lmdb" / "data.mdb"))
    pages = [p.pgno for p in lay.databases["store"].pages if p.kind != "overflow"]
    assert len(pages) >= 2                             # a branch page and its leaves
    empty = tmp_path / "empty"
    empty.mkdir()
    for pgno in pages:
        copy = tmp_path / f"zeroed-{pgno}"
        shutil.copytree(store, copy)
        with open(copy / "lmdb" / "data.mdb", "r+b") as f:
            f.seek(pgno * lay.psize)
            f.write(bytes(lay.psize))
        p = run("ingest", copy, empty, check=False)
        assert b"internal error" not in p.stderr and b"Traceback" not in p.stderr, (pgno, p.stderr)


def test_a_damaged_store_generation_is_reported_by_verify(tmp_path):
    """A flipped byte in the meta value `generation`: the mount reads it at every open
    and refused the store, while verify said OK (the full tier's mount phase)."""
    import lmdb
    store, names, data_file, raw = _small_files_store(tmp_path)
    env = lmdb.open(str(store / "lmdb"), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"store")) as txn:
        v = bytearray(txn.get(b"\x01generation"))
        v[0] ^= 0x01
        txn.put(b"\x01generation", bytes(v))
    env.close()
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1
    assert any("'generation' is damaged" in x for x in json.loads(p.stdout)["problems"])


def _small_files_store(tmp_path) -> tuple:
    """(store, names, data file, its bytes as a bytearray): a compacted store of 12 small
    real files (one record group, one name page)."""
    files = [p for p in corpus_files() if p.stat().st_size < (256 << 10)][:12]
    store = tmp_path / "store"
    run("ingest", store, *files, "--prefix", "c")
    run("compact", store)
    names = run("ls", store).stdout.decode().split()
    assert len(names) >= 8
    data_file = store / "lmdb" / "data.mdb"
    return store, names, data_file, bytearray(data_file.read_bytes())


def test_a_damaged_table_key_still_lets_verify_name_every_file(tmp_path):
    """One flipped bit in the tag byte of the record group's key (a compacted store of
    real files has one group): its table's cursor, which finds the table by a binary
    search, then saw no names at all, and verify failed without naming a file. It walks
    the whole database in leaf order now, and names every file whose record is gone."""
    store, names, data_file, raw = _small_files_store(tmp_path)
    key = b"\x09\x00" + b"\x03" + bytes(8)         # leaf node: key size 9, tag 0x03, group 0
    at = raw.find(key)
    assert at >= 0 and raw.find(key, at + 1) < 0
    raw[at + 2] ^= 0x04                               # tag 0x03 -> 0x07: a table that does not exist
    data_file.write_bytes(bytes(raw))
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    report = json.loads(p.stdout)
    assert sorted(report["damaged_files"]) == sorted(names)
    assert any("no table" in x for x in report["problems"])


@pytest.mark.parametrize("where", ["tag", "name", "frame hash"])
def test_a_name_page_under_a_damaged_key_still_has_its_files_named(tmp_path, where):
    """One flipped bit in the key of the only name page (a compacted store of real
    files): its tag byte into the anchors' range, or a byte of the first name. No lookup
    finds the page, so no file reads ("no such file"), and verify, which knows files by
    their names, named none of them (the corruption torture's field-aware seed 2 run).
    A sound page under a damaged key says what it is: its frame matches its hash and its
    first name gives the key it holds. verify now names every file on it. A page whose
    own hash is damaged is read unverified, for verify's report alone (flips read
    through a mount: every file EIO, verify naming none)."""
    from stowfs.packing import get_uvarint
    store, names, data_file, raw = _small_files_store(tmp_path)
    key = b"\x04" + names[0].encode()
    at = raw.find(len(key).to_bytes(2, "little") + key)
    assert at >= 0
    if where == "frame hash":
        frame = at + 2 + len(key)                        # the value follows its key
        assert raw[frame] == 0x22                        # a NAMES frame, stored in the leaf
        _, i = get_uvarint(raw, frame + 11)
        extra_len, i = get_uvarint(raw, i)
        raw[i + extra_len + 3] ^= 0x01
    else:
        raw[at + 2 + (0 if where == "tag" else 3)] ^= 0x01   # 0x04 -> 0x05, or "c/x" -> "c/y"
    data_file.write_bytes(bytes(raw))
    p = run("cat", store, names[-1], check=False)
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    p = run("verify", store, "--json", check=False)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    report = json.loads(p.stdout)
    assert sorted(report["damaged_files"]) == sorted(names)
    assert any(("damaged key" if where != "frame hash" else "damaged name page") in x
               for x in report["problems"])


HOLD_WRITER = """
import fcntl, os, sys, time, lmdb
lock = open(os.path.join(os.path.dirname(sys.argv[1]), "stowfs.lock"), "a+b")
fcntl.flock(lock, fcntl.LOCK_SH)    # as every process that opens the store (FORMAT.md)
env = lmdb.open(sys.argv[1], max_dbs=12)
txn = env.begin(write=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
txn.abort()
"""


def test_readers_work_while_a_writer_holds_the_store_and_a_second_writer_waits(tmp_path):
    root = corpus_dir()
    store = tmp_path / "store"
    f = root / "agent-history-redacted" / "codex-session-01.jsonl"
    run("ingest", store, f)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(store / "lmdb"), "3"],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"holding"
        t0 = time.monotonic()
        assert run("cat", store, "codex-session-01.jsonl").stdout == f.read_bytes()
        assert time.monotonic() - t0 < 2.5, "a reader waited for the writer"
        g = root / "agent-history-redacted" / "gemini-session-01.json"
        run("ingest", store, g)            # waits for the writer, then succeeds
        assert time.monotonic() - t0 >= 2.0
        assert run("cat", store, "gemini-session-01.json").stdout == g.read_bytes()
    finally:
        holder.kill()
        holder.wait()


WRITER_THREAD = """
import subprocess, sys, threading, time
from stowfs.store import Store
s = Store(sys.argv[1])
# another process makes a database after this one opened the store: its handle is
# opened at first use, while a thread of this process writes
subprocess.run([sys.executable, "-c", "import sys; from stowfs.store import Store; "
                "Store(sys.argv[1]).aux_write('there', lambda txn, db: txn.put(b'k', b'v', db=db))",
                sys.argv[1]], check=True)
inside = threading.Event()

def hold(txn):
    inside.set()
    time.sleep(0.5)     # lets the GIL go, and must take it back to end the transaction
    return "written"

written = []
t = threading.Thread(target=lambda: written.append(s._env.write(hold)))
t.start()
inside.wait()
missing = s.aux_read("missing", lambda txn, db: "found")    # at once: a reader
there = s.aux_read("there", lambda txn, db: bytes(txn.get(b"k", db=db)))
t.join()
s.aux_write("new", lambda txn, db: txn.put(b"k", b"v", db=db))
print(missing, there, written, s.aux_read("new", lambda txn, db: bytes(txn.get(b"k", db=db))))
"""


def test_a_database_handle_is_opened_while_another_thread_writes(tmp_path):
    """The mount reads stats.json on its event loop while a worker thread stores an inbox
    file: opening a database handle then waited for LMDB's writer lock holding the GIL,
    which the writing thread needed to finish, and the process hung for good."""
    p = subprocess.run([sys.executable, "-c", WRITER_THREAD, str(tmp_path / "s")],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    assert p.stdout.decode().split() == ["None", "b'v'", "['written']", "b'v'"]


def _blocks_value_sizes(data_file) -> list[int]:
    """File offsets of the size fields (mn_lo, mn_hi: 4 bytes before the flags) of the
    `blocks` leaf nodes (keys led by its tag, in the `store` database) whose values live
    in overflow pages."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from stowfs.store.keyspace import TAGS
    from torturelib.lmdbpages import walk_checked
    lay = walk_checked(str(data_file))
    return [node.key[0] - 8 for page in lay.databases["store"].pages if page.kind == "leaf"
            for node in page.nodes if node.overflow >= 0 and node.raw_key[0] == TAGS["blocks"]]


def test_a_value_size_past_the_end_of_the_file_is_damage_not_a_crash(tmp_path, mounter):
    """A flipped high byte of a blocks node's size makes LMDB hand out a value reaching
    past the end of the data file; the binding touches it as it fetches it, which was
    SIGBUS in `cat` (and would be in the daemon) before any check could run."""
    root = corpus_dir()
    src = root / "agent-history-redacted"
    store = tmp_path / "store"
    run("ingest", store, src)
    run("compact", store)
    data_file = store / "lmdb" / "data.mdb"
    sizes = _blocks_value_sizes(data_file)
    assert sizes, "no blocks value in overflow pages: the test store is too small"
    raw = bytearray(data_file.read_bytes())
    for at in sizes:
        raw[at + 3] |= 0x40          # + 1 GiB: far past the end of this file, inside the map
    data_file.write_bytes(bytes(raw))
    names = sorted(f"agent-history-redacted/{p.name}" for p in src.iterdir() if p.is_file())
    for n in names[:3]:
        p = run("cat", store, n, check=False)
        assert p.returncode == 2, (n, p.returncode, p.stderr[-300:])
        assert p.stderr.count(b"\n") == 1 and b"damaged" in p.stderr and b"Traceback" not in p.stderr
    v = run("verify", store, check=False)
    assert v.returncode == 1
    out = v.stdout.decode()
    assert "killed by" not in out and all(n in out for n in names), out[-2000:]
    m = mounter(store)
    m.start()
    m.expected_errors.append(r"damaged|EIO|Input/output")
    with pytest.raises(OSError) as e:
        (m / "conversations" / names[0]).read_bytes()
    assert e.value.errno == errno.EIO
    assert _alive(m.pid), "the daemon died reading a damaged store"
    assert sorted(os.listdir(m / "conversations" / "agent-history-redacted")) == sorted(Path(n).name for n in names)
    m.umount()


def test_verify_names_a_file_that_its_name_no_longer_reaches(tmp_path, monkeypatch):
    """verify walks the tables leaf by leaf; a read finds a file's record by binary
    searches through the B-tree, which a damaged branch page can send elsewhere while
    the walk still sees every entry (full torture tier: 22 files unreadable, verify said
    OK). So verify also looks every name up the way a read does, and names the files
    that lookup fails for (the failure forced here, in the walk's process)."""
    from stowfs.errors import Corrupt
    from stowfs.store import verify as verify_mod
    root = corpus_dir()
    files = [p for p in corpus_files() if p.stat().st_size < (256 << 10)][:6]
    store = tmp_path / "store"
    run("ingest", store, *files, "--prefix", "c")
    names = run("ls", store).stdout.decode().split()
    victim = names[2]
    real = Store._record

    def lookup(self, txn, name):
        if name == victim:
            raise Corrupt(f"{name}: its record (9) is missing; the name table or the record group is damaged")
        return real(self, txn, name)
    monkeypatch.setattr(Store, "_record", lookup)
    report = verify_mod.walk(str(store))
    assert not report["ok"] and report["damaged_files"] == [victim]


_READ_ALL = """
import json, sys
from stowfs.store import Store
out = {}
with Store(sys.argv[1], readonly=True) as s:
    for name in json.loads(sys.argv[2]):
        try:
            out[name] = ["bytes", s.get(name).hex()]
        except Exception as e:
            out[name] = ["error", type(e).__name__]
print(json.dumps(out))
"""


def test_a_damaged_branch_page_never_gives_wrong_bytes_and_verify_names_what_it_cost(tmp_path):
    """A real damaged branch page (the case the torture run found, tested above through a
    forced lookup failure): a store large enough for its table to have one, a child
    pointer sent to a neighbouring leaf. Reads of what that child held fail, none
    returns other bytes, and verify names exactly the files that do not read. When the
    lost leaf held the name pages themselves, no name reaches a file any more (`ls` lists
    nothing, `cat` says no such file): verify cannot name them, and fails on the counts
    of files the store keeps against the records it finds."""
    import shutil
    import struct
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from realdata import openai_form, sharegpt_records
    from torturelib.lmdbpages import walk_checked
    src = tmp_path / "src"
    want = {f"c/{i:04d}.json": json.dumps(openai_form(r)).encode()
            for i, r in enumerate(sharegpt_records(300))}
    s = Store(src)
    s.defer_block_merges()              # a fragment a file, as the mount stores inbox files
    for name, data in want.items():
        s.put(name, data)
    s.close()
    lay = walk_checked(str(src / "lmdb" / "data.mdb"))
    branch = [p for p in lay.databases["store"].pages if p.kind == "branch"]
    assert len(branch) == 1 and len(branch[0].nodes) > 10, "the table needs a branch page"
    nodes = branch[0].nodes
    # a child pointer sent to the child before it (fragments early and mid, the last
    # tables); then the last separator key raised to the anchors' tag: the walk still
    # sees every entry, but an exact lookup of a record group goes to the child before
    # and misses (verify said OK there before it looked every name up as a read does)
    for k, kind in ((1, "child"), (len(nodes) // 2, "child"), (len(nodes) - 1, "child"),
                    (len(nodes) - 1, "key")):
        store = tmp_path / f"s{k}{kind}"
        shutil.copytree(src, store)
        f = store / "lmdb" / "data.mdb"
        data = bytearray(f.read_bytes())
        if kind == "child":
            at = nodes[k].key[0] - 8                       # the node's mn_lo, mn_hi, mn_flags
            lo, hi, fl = struct.unpack_from("<HHH", data, nodes[k - 1].key[0] - 8)
            struct.pack_into("<HHH", data, at, lo, hi, fl)
        else:
            assert data[nodes[k].key[0]] < 0x05
            data[nodes[k].key[0]] = 0x05
        f.write_bytes(bytes(data))
        got = json.loads(subprocess.run([sys.executable, "-c", _READ_ALL, str(store), json.dumps(list(want))],
                                        capture_output=True, check=True, timeout=300).stdout)
        failed = sorted(n for n, (kind, _) in got.items() if kind == "error")
        assert all(bytes.fromhex(v) == want[n] for n, (kind, v) in got.items() if kind == "bytes"), k
        assert failed, f"child {k}: the damage cost nothing; the test damaged the wrong thing"
        v = run("verify", store, "--json", check=False)
        assert v.returncode != 0
        report = json.loads(v.stdout)
        if kind == "key" or run("ls", store).stdout.split():
            assert sorted(report["damaged_files"]) == failed, (k, kind)
        else:                                          # the name pages were under it
            assert k == len(nodes) - 1 and len(failed) == len(want)
            assert any(f"counters say {len(want)} files" in p for p in report["problems"])
