"""A store fed only through inbox/ compacts itself when the mount is idle: it ends up
within 1.15x of what `stowfs compact` gives, every file byte-exact, and kill -9 in the
middle of it loses nothing."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from realdata import corpus_dir
from stowfs.store import frames, records

CLI = [sys.executable, "-m", "stowfs"]
pytestmark = pytest.mark.mount


def du(path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def wait_compacted(m, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = json.loads((m / "stats.json").read_text())
        if st["uncompacted_fragments"] == 0 and st["block_fragments"] <= (st["stream_bytes"] >> 24) + 1 \
                and st["free_page_share"] < 0.2:
            return st
        time.sleep(0.5)
    raise AssertionError(f"not compacted after {timeout} s: {st}")


def copy_tree(src, dst) -> list:
    names = []
    for p in sorted(src.rglob("*")):
        if p.is_file():
            rel = p.relative_to(src)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)
            names.append(rel)
    return names


def test_inbox_store_compacts_itself_when_idle(mounter, tmp_path):
    src = corpus_dir() / "claude-code-spotter"
    m = mounter()
    m.start("--idle-compact", "1")
    names = copy_tree(src, m / "inbox" / "cc")
    m.settled()
    st = wait_compacted(m)
    assert st["files"] == len(names)
    for rel in names:
        assert (m / "conversations" / "cc" / rel).read_bytes() == (src / rel).read_bytes()
    m.umount()
    live = du(m.store)
    assert subprocess.run([*CLI, "verify", str(m.store)], capture_output=True).returncode == 0
    # within 1.15x of what `stowfs compact` makes of the same store (its directory holds
    # the inbox's spool directories too: 4 KiB each, a tenth of so small a store) ...
    subprocess.run([*CLI, "compact", str(m.store)], check=True, capture_output=True)
    assert live <= 1.15 * du(m.store), (live, du(m.store))
    # ... and its LMDB file within 1.15x of the same files ingested and compacted
    ref = tmp_path / "ref"
    subprocess.run([*CLI, "ingest", str(ref), str(src), "-q"], check=True)
    subprocess.run([*CLI, "compact", str(ref)], check=True, capture_output=True)
    assert du(m.store / "lmdb") <= 1.15 * du(ref / "lmdb"), (du(m.store / "lmdb"), du(ref / "lmdb"))


def test_kill_9_during_background_compaction_loses_nothing(mounter):
    src = corpus_dir() / "claude-code-spotter"
    m = mounter()
    rnd = random.Random(3)
    m.start("--idle-compact", "0.2", "--settle", "0.2")
    names = copy_tree(src, m / "inbox" / "cc")
    m.settled()
    for _ in range(4):
        time.sleep(rnd.uniform(0.1, 1.5))      # somewhere in the pass, or after it
        m.kill9()
        assert subprocess.run([*CLI, "verify", str(m.store)], capture_output=True).returncode == 0
        m.start("--idle-compact", "0.2", "--settle", "0.2")
    m.settled()
    wait_compacted(m)
    for rel in names:
        assert (m / "conversations" / "cc" / rel).read_bytes() == (src / rel).read_bytes()


def test_a_mounted_format_5_store_becomes_format_7_and_its_blocks_are_rewritten_when_idle(mounter, tmp_path):
    """An upgrade as a user meets it: the store the code before format 6 wrote
    (tests/fixtures/format5-store), mounted. The mount has it alone, so it becomes
    the newest format; reads are right throughout; the idle compaction rewrites its
    blocks checked as stored (stats.json: nothing left to compact) and its record
    groups packed (format 7); verify is clean."""
    import hashlib
    import lmdb
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    store = tmp_path / "old5"
    shutil.copytree(os.path.join(fixtures, "format5-store"), store)
    expected = json.loads(open(os.path.join(fixtures, "format5-store.json")).read())["files"]
    m = mounter(store)
    m.start("--idle-compact", "1")
    for name, e in expected.items():
        assert hashlib.sha256((m / "conversations" / name).read_bytes()).hexdigest() == e["sha256"]
    deadline = time.monotonic() + 120                # (64 KiB blocks: wait_compacted's
    while True:                                       # one-block bound does not apply)
        st = json.loads((m / "stats.json").read_text())
        if st["uncompacted_fragments"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert st["uncompacted_fragments"] == 0 and st["block_fragments"] == 3
    assert st["store_format"] == 7 and st["files"] == len(expected)
    for name, e in expected.items():
        assert hashlib.sha256((m / "conversations" / name).read_bytes()).hexdigest() == e["sha256"]
    m.umount()
    env = lmdb.open(str(store / "lmdb"), readonly=True, lock=False, max_dbs=8)
    with env.begin() as txn:
        db = env.open_db(b"store", txn=txn, create=False)
        codecs = {bytes(v)[9] for k, v in txn.cursor(db=db) if k[:1] == b"\x02"}
        layouts = {frames.header(bytes(v), frames.GROUP, int.from_bytes(k[1:], "big")).extra
                   for k, v in txn.cursor(db=db) if k[:1] == b"\x03"}
    env.close()
    assert codecs == {2} and layouts == {records.PACKED}
    assert subprocess.run([*CLI, "verify", str(store)], capture_output=True).returncode == 0
