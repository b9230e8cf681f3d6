"""The store core, without FUSE: lossless round trips on real data, dedup of long
repeats, removal, gc, compact, verify."""
from __future__ import annotations

import bisect
import json
import os

import pytest

from realdata import corpus_dir, corpus_files, openai_form, sharegpt_records
from stowfs.errors import Corrupt, Exists, InvalidName, NotFound
from stowfs.maintenance import compact, gc, verify
from stowfs.store import Store, records


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def test_every_corpus_file_round_trips(store):
    root = corpus_dir()
    files = corpus_files()
    for p in files:
        store.put_file(str(p.relative_to(root)), p)
    for p in files:
        data = p.read_bytes()
        name = str(p.relative_to(root))
        assert store.get(name) == data, name
        info = store.info(name)
        assert info.size == len(data)
        assert info.checksum == records.checksum(data).hex()
        assert len(store.get(name, "text")) == info.text_size
    assert verify(store)["ok"]


def test_reads_at_any_offset_match(store):
    p = corpus_dir() / "claude-code-spotter" / "transcripts" / "tool_heavy.jsonl"
    data = p.read_bytes()
    store.put_file("s.jsonl", p)
    r = store.reader("s.jsonl")
    for off, n in [(0, 1), (1, 4095), (4096, 131072), (len(data) - 10, 100), (len(data) // 2, 7),
                   (len(data), 10)]:
        assert r.read(off, n) == data[off:off + n]
    got = b"".join(r.read(o, 131072) for o in range(0, len(data), 131072))
    assert got == data


def test_sharegpt_2000_as_json_files_and_jsonl(tmp_path, store):
    recs = sharegpt_records(2000)
    assert len(recs) >= 2000
    originals = {}
    items = []
    for i, rec in enumerate(recs):
        data = json.dumps(openai_form(rec), indent=2, ensure_ascii=False).encode()
        originals[f"chats/{i:05d}.json"] = data
        (tmp_path / f"{i:05d}.json").write_bytes(data)
        items.append((f"chats/{i:05d}.json", tmp_path / f"{i:05d}.json", None))
    assert all(not isinstance(r, Exception) for _, r in store.put_many(items))
    # the same conversations again, as one JSONL file (same string spelling, other layout)
    jsonl = b"".join(json.dumps(openai_form(r), ensure_ascii=False).encode() + b"\n" for r in recs)
    store.seal()
    before = store.block_stats()["stored_bytes"]
    r = store.put("chats.jsonl", jsonl)
    store.seal()
    grew = store.block_stats()["stored_bytes"] - before
    import zstandard
    alone = len(zstandard.ZstdCompressor(level=9).compress(jsonl))
    for name, data in originals.items():
        assert store.get(name) == data
    assert store.get("chats.jsonl") == jsonl
    s = store.stats()
    # its long messages are found in the files stored before (short ones by zstd, in the
    # same block): it costs a fraction of what it costs alone
    assert r.dedup_bytes > 0.25 * len(jsonl)
    assert grew < 0.6 * alone, (grew, alone)
    assert s["messages"] >= 2 * sum(len(r["conversations"]) for r in recs)


def test_the_same_conversations_under_other_names_cost_nothing_new(store):
    """Long repeats are found through the anchor index and stored once: a copy of a
    file, and a file made of other files' bytes, add (almost) no stream bytes."""
    recs = sharegpt_records(60)
    blob = b"".join(json.dumps(openai_form(r), indent=2).encode() + b"\n" for r in recs)
    first = store.put("a.jsonl", blob)
    copy = store.put("b/copy.jsonl", blob)
    assert first.new_bytes == len(blob) and copy.new_bytes == 0 and copy.dedup_bytes == len(blob)
    parts = blob.split(b"\n")
    mixed = b"\n".join(parts[len(parts) // 2:] + parts[:len(parts) // 2])
    r = store.put("mixed.jsonl", mixed)
    assert r.new_bytes < 0.02 * len(mixed) + 8192
    for name, data in (("a.jsonl", blob), ("b/copy.jsonl", blob), ("mixed.jsonl", mixed)):
        assert store.get(name) == data


def test_grown_claude_session_costs_only_its_new_turns(store):
    p = corpus_dir() / "claude-code-spotter" / "transcripts" / "4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
    lines = p.read_bytes().splitlines(keepends=True)
    v1 = b"".join(lines[:-3])
    v2 = b"".join(lines)
    new_lines = sum(map(len, lines[-3:]))
    store.put("session.jsonl", v1)
    store.seal()
    before = store.block_stats()["stored_bytes"]
    r = store.put("session.jsonl", v2)          # the same name, grown: only the new lines
    assert r.new_bytes == new_lines and r.replaced
    # under another name (a dated copy): found through the anchors; what lies between
    # anchors where the old file repeated itself is stored again, and zstd sees it
    r2 = store.put("day2/session.jsonl", v2)
    assert r2.dedup_bytes > 0.95 * len(v2)
    store.seal()
    import zstandard
    assert store.block_stats()["stored_bytes"] - before < 2 * len(zstandard.ZstdCompressor(level=9).compress(
        b"".join(lines[-3:]))) + 16 * 1024
    assert store.get("session.jsonl") == v2 and store.get("day2/session.jsonl") == v2


def test_token_ids_come_back_as_the_same_ids(store):
    ids = list(range(50256, 50256 - 400, -3)) + [0, 1, 2, 100000]
    conv = {"id": "t1", "application": "test", "model": "gpt2", "tokenizer": "gpt2",
            "messages": [{"role": "user", "content": ids}, {"role": "assistant", "content": ids[::-1]},
                         {"role": "user", "content": "plain text " * 10}], "metadata": {}}
    spellings = {"a.json": json.dumps(conv), "b.json": json.dumps(conv, separators=(",", ":")),
                 "c.json": json.dumps(conv, indent=1), "d.json": json.dumps({"run": [conv]}, indent=4),
                 # one id a line, but not as json.dumps writes it: stays skeleton, lossless
                 "e.json": json.dumps(conv, indent=2).replace(",\n        1,\n", ",\n       1,\n")}
    assert spellings["e.json"] != json.dumps(conv, indent=2)
    for name, text in spellings.items():
        store.put(name, text.encode())
        back = json.loads(store.get(name))
        assert (back["run"][0] if "run" in back else back)["messages"][0]["content"] == ids
        assert store.get(name) == text.encode()


def test_a_batch_refuses_a_file_under_a_file_and_over_a_directory(store, tmp_path):
    """In one write transaction (a put_many batch), the parents checked for the first
    names are remembered; a file and a directory of the same name are still refused,
    whichever comes first."""
    src = tmp_path / "f.json"
    src.write_bytes(b'{"messages": [{"role": "user", "content": "hi"}]}')
    names = ["d/e/one", "d/e/two", "d/e", "d", "x", "x/y", "d/e/three"]
    got = dict(store.put_many([(n, src, None) for n in names], workers=0))
    assert [n for n in names if isinstance(got[n], Exists)] == ["d/e", "d", "x/y"]
    assert sorted(i.name for i in store.iter_files()) == ["d/e/one", "d/e/three", "d/e/two", "x"]


def test_replace_remove_rename_and_gc(store):
    store.put("a/x.json", b'{"model": "m", "messages": [{"role": "user", "content": "' + b"hello " * 20 + b'"}]}')
    with pytest.raises(Exists):
        store.put("a", b"file where a directory is")
    with pytest.raises(Exists):
        store.put("a/x.json/y", b"under a file")
    with pytest.raises(InvalidName):
        store.put("../up", b"x")
    r = store.put("a/x.json", b"replaced")
    assert r.replaced and store.get("a/x.json") == b"replaced"
    store.rename("a/x.json", "b/y.json")
    with pytest.raises(NotFound):
        store.info("a/x.json")
    assert store.get("b/y.json") == b"replaced"
    assert [n for n, _ in store.listdir("")] == ["b"]
    store.remove("b/y.json")
    with pytest.raises(NotFound):
        store.remove("b/y.json")
    assert store.stats()["files"] == 0
    store.put("c.json", b"later")          # the removed bytes are no longer the open block's
    big = os.urandom(store.block_size)     # fills the open block: the old one is closed
    store.put("big.bin", big)
    freed = gc(store)
    assert freed["bytes_freed"] >= len(b"replaced") and verify(store)["ok"]
    assert store.get("c.json") == b"later" and store.get("big.bin") == big


def test_listdir_and_index(store):
    root = corpus_dir()
    for p in (root / "agent-history-redacted").iterdir():
        store.put_file("ah/" + p.name, p)
    store.put_file("deep/a/b/c.jsonl", root / "agent-history-redacted" / "claude-session-01.jsonl")
    names = [n for n, i in store.listdir("ah")]
    assert names == sorted(p.name for p in (root / "agent-history-redacted").iterdir())
    assert store.listdir("") == [("ah", None), ("deep", None)]
    assert store.is_dir("deep/a") and not store.is_dir("deep/a/b/c.jsonl")
    apps = store.index_values("app")
    assert "claude-code" in apps
    assert {i.name for i in store.index_files("app", "claude-code")} >= {"ah/claude-session-01.jsonl",
                                                                         "deep/a/b/c.jsonl"}


def test_index_follows_removal(store):
    path = corpus_dir() / "agent-history-redacted" / "claude-session-01.jsonl"
    names = [f"s/{i:03d}.jsonl" for i in range(300)]
    for _ in store.put_many([(n, path, None) for n in names], workers=0):
        pass
    assert [i.name for i in store.index_files("app", "claude-code")] == names
    for n in names[:299]:
        store.remove(n)
    assert [i.name for i in store.index_files("app", "claude-code")] == names[299:]
    store.remove(names[299])
    assert "claude-code" not in store.index_values("app")


def test_grouped_headers_change_many_times_in_one_transaction(tmp_path):
    """After compact, one batch that replaces several files of one header group, one of
    them twice, and reads between writes never sees a stale group."""
    recs = sharegpt_records(40)
    path = tmp_path / "store"
    originals = {f"c/{i:02d}.json": json.dumps(openai_form(r)).encode() for i, r in enumerate(recs)}
    with Store(path) as s:
        for name, data in originals.items():
            s.put(name, data)
    compact(path)
    new = {}
    for i, n in enumerate(("c/00.json", "c/01.json", "c/00.json", "c/02.json")):
        p = tmp_path / f"new{i}.json"
        p.write_bytes(originals[f"c/{10 + i:02d}.json"])
        new[n] = (p, p.read_bytes())
    with Store(path) as s:
        assert s.info("c/03.json").name == "c/03.json"          # a read caches the group
        items = [(n, tmp_path / f"new{i}.json", None)
                 for i, n in enumerate(("c/00.json", "c/01.json", "c/00.json", "c/02.json"))]
        assert all(not isinstance(r, Exception) for _, r in s.put_many(items, workers=0))
        for n, (_p, data) in new.items():
            assert s.get(n) == data
        s.remove("c/03.json")
        with pytest.raises(NotFound):
            s.info("c/03.json")
        assert len(list(s.iter_files("c/"))) == len(originals) - 1
        ids = sorted(r.file_id for r in s.iter_records())
        assert ids == sorted(i.file_id for i in s.iter_files()), "no orphaned record"
        assert verify(s)["ok"]


def test_compact_shrinks_and_keeps_every_byte(tmp_path):
    root = corpus_dir()
    path = tmp_path / "store"
    files = [p for p in corpus_files() if p.stat().st_size < 2 << 20]
    with Store(path) as s:
        for p in files:
            s.put_file(str(p.relative_to(root)), p)
        before = s.disk_bytes()
    r = compact(path)
    assert r["disk_after"] < before
    with Store(path) as s:
        for p in files:
            assert s.get(str(p.relative_to(root))) == p.read_bytes()
        assert verify(s)["ok"]
        # still writable after compaction, and new content still deduplicates
        p = files[0]
        again = s.put("again", p.read_bytes())
        assert again.new_bytes < 0.2 * max(again.size, 1) + 8192


@pytest.mark.parametrize("workers", [0, 2])
def test_put_many_in_worker_processes_keeps_order_and_isolates_failures(tmp_path, workers):
    root = corpus_dir()
    files = corpus_files()
    items = [(str(p.relative_to(root)), str(p), None) for p in files]
    items.insert(3, ("../bad-name", str(files[0]), None))
    items.insert(7, ("missing.json", str(tmp_path / "no-such-file"), None))
    with Store(tmp_path / "store") as s:
        out = list(s.put_many(items, workers=workers, batch_files=16))
        assert [n for n, _ in out] == [n for n, _, _ in items]
        errors = {n for n, r in out if isinstance(r, Exception)}
        assert errors == {"../bad-name", "missing.json"}
        for p in files:
            assert s.get(str(p.relative_to(root))) == p.read_bytes()
        assert s.stats()["files"] == len(files)
        assert verify(s)["ok"]


def test_batches_end_where_put_many_commits_and_rows_come_as_prepared():
    """put_many stores each file in its batch's transaction as the workers deliver it (so
    storing overlaps preparing), and its batches end where they always did: at
    batch_files, at batch_bytes, before a file stored alone, at the end of the stream
    (that one seals). A transaction run again replays the rows it took."""
    from stowfs import limits
    from stowfs.store.ingest import Prepared
    from stowfs.store.pipeline import Batches

    def cut(sizes, files, nbytes):
        pulled = []

        def stream():
            for i, n in enumerate(sizes):
                pulled.append(f"f{i}")
                yield f"f{i}", f"/src/f{i}", Prepared(f"f{i}", n, 0, 0o644, {})
        b, out = Batches(stream(), files, nbytes), []
        while True:
            big = b.next_alone()
            if big is not None:
                out.append(("alone", big[0]))
                continue
            names = []
            for name, _, _ in b.rows():
                assert pulled[-1] == name           # nothing taken before it is stored
                names.append(name)
            assert [r[0] for r in b.rows()] == names
            out.append((names, b.ended))
            b.committed()
            if b.ended:
                return out

    assert cut([10, 10, 10, 10, limits.ALONE_BYTES + 1, 10, 50, 10, 10], 3, 60) == [
        (["f0", "f1", "f2"], False), (["f3"], False), ("alone", "f4"),
        (["f5", "f6"], False), (["f7", "f8"], True)]
    assert cut([10, 10, 10], 3, 60) == [(["f0", "f1", "f2"], False), ([], True)]
    assert cut([limits.ALONE_BYTES + 1], 3, 60) == [("alone", "f0"), ([], True)]


def test_name_pages_found_in_a_batch_are_those_of_the_full_walk(tmp_path):
    """In a write transaction the page of a name is found with one cursor step and this
    transaction's pages (Names._floor_page); it must be the page the merged walk over
    stored and changed pages finds, for names before, inside, between and after the
    pages, long names and pages deleted in the transaction included; and the walk must
    find every live name (a stored page deleted in the transaction made it skip the
    live page before it, which then held the names)."""
    root = corpus_dir()
    real = sorted(str(p.relative_to(root)) for p in corpus_files())
    long_dir = "/".join("d" * 200 for _ in range(3))
    names = sorted(set(real + [f"a/{i:04d}.json" for i in range(1500)]
                       + [f"{long_dir}/{i:03d}.json" for i in range(0, 60, 2)]))
    src = tmp_path / "f.json"
    src.write_bytes(b'{"x": 1}')
    with Store(tmp_path / "s") as store:
        list(store.put_many([(n, src, None) for n in names[::2]], workers=0))
        table = store._names
        probes = names[::3] + ["", "0", "a", "a/", "a/0700.json/", "zzz", f"{long_dir}/001.json",
                               f"{long_dir}/0", long_dir]

        def both(txn, name, live):
            fast = table._page_for(txn, name)
            table._floor_page = lambda *_a: None
            try:
                slow = table._page_for(txn, name)
            finally:
                del table._floor_page
            assert fast == slow, name
            first = live[bisect.bisect_left(live, name)] if name <= live[-1] else None
            assert table.first_from(txn, name) == first, name
            assert next((n for n, _ in table.iterate(txn, name)), None) == first, name

        def live_names(txn):
            keys = {k for k, _ in table.pages(txn)} - {k for k, v in table.dirty.items() if v is None}
            keys |= {k for k, v in table.dirty.items() if v is not None}
            out = [n for k in sorted(keys) for n, _ in table._entries(txn, k)]
            assert out == sorted(out)
            return out

        with store.env.begin(write=True) as txn:
            table.dirty = {}
            try:
                for i, n in enumerate(names[1::2] + [f"0/{i}" for i in range(40)]):
                    table.put(txn, n, 10 ** 6 + i)
                    if i % 7 == 0:
                        table.delete(txn, names[(i * 2) % len(names)])
                    if i % 150 == 0 or i > 790:
                        live = live_names(txn)
                        for probe in probes if i % 150 == 0 else probes[:8]:
                            both(txn, probe, live)
                live = live_names(txn)
                for probe in probes:
                    both(txn, probe, live)
            finally:
                table.dirty = {}
                txn.abort()


def test_anchor_rollback_restores_what_was_pending():
    """A file that fails in a batch takes back the anchors it added (the index keeps a
    log of them instead of a copy per file)."""
    from stowfs.store.anchors import Index
    ix = Index(None)
    for k in range(200):
        ix.add(k * 7919 % 1000, k)
    before = list(ix.pending.items())
    m = ix.mark()
    for k in range(150, 1500):
        ix.add(k, -k)
    inner = ix.mark()
    ix.add(5000, 1)
    ix.rollback(inner)
    assert 5000 not in ix.pending and 1499 in ix.pending
    ix.rollback(m)
    assert list(ix.pending.items()) == before


def test_record_group_rollback_restores_the_changed_groups(tmp_path):
    """A file that fails in a batch takes back its record changes (the groups keep a log
    of them instead of a copy of every changed group per file)."""
    root = corpus_dir()
    files = corpus_files()[:4]
    with Store(tmp_path / "s") as store:
        for p in files:
            store.put_file(str(p.relative_to(root)), p)
        groups = store._groups
        with store.env.begin(write=True) as txn:
            groups.dirty = {}
            try:
                recs = [store._record(txn, str(p.relative_to(root))) for p in files]
                groups.set(txn, recs[0].replace(mode=0o600))
                before = {g: dict(d) for g, d in groups.dirty.items()}
                m = groups.mark()
                groups.drop(txn, recs[1].file_id)
                groups.set(txn, recs[2].replace(mode=0o400))
                groups.set(txn, recs[3].replace(file_id=5 << 9))      # a group not changed yet
                assert groups.dirty != before
                groups.rollback(m)
                assert groups.dirty == before
                assert list(groups.dirty) == list(before)
            finally:
                groups.dirty = {}
                txn.abort()


def test_compact_and_everything_still_works(tmp_path):
    recs = sharegpt_records(120)
    path = tmp_path / "store"
    originals = {f"c/{i:03d}.json": json.dumps(openai_form(r), indent=2).encode() for i, r in enumerate(recs)}
    with Store(path) as s:
        for name, data in originals.items():
            s.put(name, data)
        before = {n: s.info(n) for n in originals}
        assert s.block_stats()["fragments"] > 1          # one fragment per put
    compact(path)
    with Store(path) as s:
        b = s.block_stats()
        assert b["fragments"] == 1 and b["low_level_fragments"] == 0
        assert {n: s.info(n) for n in originals} == before
        assert all(s.get(n) == data for n, data in originals.items())
        assert [n for n, _ in s.listdir("c")] == sorted(n.split("/")[1] for n in originals)
        assert len(s.index_files("model", "gpt-3.5-turbo")) == len(originals)
        s.rename("c/000.json", "d/moved.json")
        assert s.get("d/moved.json") == originals["c/000.json"]
        s.remove("c/001.json")
        s.put("new.json", originals["c/002.json"])
        assert s.info("new.json").checksum == before["c/002.json"].checksum
        s.put("c/003.json", originals["c/004.json"])
        assert s.get("c/003.json") == originals["c/004.json"]
        for n in list(originals)[5:]:
            s.remove(n)
        assert [i.name for i in s.iter_files("c/")] == ["c/002.json", "c/003.json", "c/004.json"]
        assert verify(s)["ok"]
        gc(s)
        assert verify(s)["ok"]
        for n in ("c/002.json", "c/003.json", "c/004.json", "d/moved.json", "new.json"):
            s.remove(n)
        assert verify(s)["ok"] and s.stats()["files"] == 0
    compact(path)
    with Store(path) as s:
        assert verify(s)["ok"] and list(s.iter_files()) == []


def test_reingest_of_an_unchanged_tree_adds_nothing(tmp_path):
    root = corpus_dir()
    files = [p for p in corpus_files() if p.stat().st_size < 4 << 20]
    items = [(str(p.relative_to(root)), str(p), None) for p in files]
    path = tmp_path / "store"
    with Store(path) as s:
        list(s.put_many(items, workers=0))
    compact(path)
    with Store(path) as s:
        before = s.disk_bytes()
        out = list(s.put_many(items, workers=0))
        assert all(r.unchanged for _, r in out)
        assert s.disk_bytes() <= before * 1.01
        # a touched file: its mtime changes, its bytes are not stored again
        os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns))
        r = s.put_file(items[0][0], files[0], mtime_ns=12345)
        assert r.unchanged and s.info(items[0][0]).mtime_ns == 12345


def test_mode_and_mtime_are_kept_exactly(store, tmp_path):
    p = tmp_path / "f.json"
    p.write_bytes(b'{"a": 1}')
    os.chmod(p, 0o600)
    os.utime(p, ns=(1, 1_700_000_000_123_456_789))
    store.put_file("f.json", p)
    i = store.info("f.json")
    assert i.mode == 0o600 and i.mtime_ns == 1_700_000_000_123_456_789
    store.set_attributes("f.json", mode=0o640, mtime_ns=5)
    i = store.info("f.json")
    assert i.mode == 0o640 and i.mtime_ns == 5


def test_a_large_file_fills_blocks_and_reads_across_them(tmp_path):
    with Store(tmp_path / "s", block_size=1 << 20) as s:
        data = b"".join(json.dumps(openai_form(r)).encode() + b"\n" for r in sharegpt_records(400))
        data += os.urandom(3 << 20)            # incompressible: several blocks for sure
        s.put("big.jsonl", data)
        r = s.reader("big.jsonl")
        for off in (0, (1 << 20) - 5, len(data) - 7, len(data) // 3):
            assert r.read(off, 4096) == data[off:off + 4096]
        assert s.get("big.jsonl") == data
        assert verify(s)["ok"]


def test_names_longer_than_an_lmdb_key(store):
    long_dir = "/".join("d" * 200 for _ in range(6))        # 1,205 bytes
    names = [f"{long_dir}/{i:03d}.json" for i in range(600)]   # several name pages
    for n in names:
        store.put(n, b'{"x": 1}')
    assert [i.name for i in store.iter_files(long_dir)] == names
    assert store.get(names[417]) == b'{"x": 1}'
    store.rename(names[0], "short.json")
    assert store.get("short.json") == b'{"x": 1}'
    with pytest.raises(InvalidName):
        store.put("x" * 256 + ".json", b"{}")


def test_long_name_sorting_before_its_key_page(tmp_path):
    """Names past LMDB's key length share a page key: one sorting before the first name
    of the page its key names belongs to the page before, alone (a put) or in a batch
    (put_many, pages changed in the transaction)."""
    long_dir = "/".join("d" * 200 for _ in range(3))         # 602 bytes: past the key
    src = tmp_path / "f.json"
    src.write_bytes(b'{"x": 1}')
    with Store(tmp_path / "s") as store:
        short = [f"a/{i:04d}.json" for i in range(700)]      # pages before the long ones
        later = [f"{long_dir}/{i:03d}.json" for i in range(100, 130)]
        list(store.put_many([(n, src, None) for n in short + later], workers=0))
        store.put(f"{long_dir}/050.json", b'{"y": 2}')       # alone: before later[0]
        list(store.put_many([(f"{long_dir}/0{i:02d}.json", src, None) for i in range(20)],
                            workers=0))                      # a batch of them
        names = sorted(short + later + [f"{long_dir}/050.json"] +
                       [f"{long_dir}/0{i:02d}.json" for i in range(20)])
        assert [i.name for i in store.iter_files()] == names
        for n in names:
            assert store.info(n).name == n
        assert store.get(f"{long_dir}/050.json") == b'{"y": 2}'
        assert verify(store)["ok"]
        # the pages themselves stay in order: each ends below the next one's first name
        from stowfs.store import names as name_table
        with store.env.begin() as txn:
            pages = [name_table.decode_page(k, v) for k, v in store._names.pages(txn)]
        assert len(pages) >= 2
        assert all(a[-1][0] < b[0][0] for a, b in zip(pages, pages[1:]))
        assert [e[0] for p in pages for e in p] == names


def test_put_file_prepared_in_a_child_process(tmp_path):
    """The mount's daemon prepares inbox files in a child that exits when idle: the
    records are those an in-process put gives, the bytes exact, and a file that changes
    between the child's read and the store's is described from the store's own read."""
    files = [p for p in corpus_files() if 1000 < p.stat().st_size < 2 << 20][:12]
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    try:
        b.prepare_in_child(idle=0.5)
        for i, p in enumerate(files):
            a.put_file(f"f/{i}", p, mtime_ns=1)
            b.put_file(f"f/{i}", p, mtime_ns=1)
        for i, p in enumerate(files):
            ia, ib = a.info(f"f/{i}"), b.info(f"f/{i}")
            assert b.get(f"f/{i}") == p.read_bytes()
            assert (ib.format, ib.messages, ib.model, ib.checksum) == (ia.format, ia.messages, ia.model, ia.checksum)
            assert {k: v for k, v in ib.facts.items() if k != "stored"} == \
                {k: v for k, v in ia.facts.items() if k != "stored"}
        child = b._preparer._ex
        assert child is not None
        import time
        for _ in range(100):                    # idle: the child is gone
            if b._preparer._ex is None:
                break
            time.sleep(0.05)
        assert b._preparer._ex is None
        # a writer appends between the child's read and the store's
        src = tmp_path / "grow.jsonl"
        src.write_bytes(b'{"role": "user", "content": "hi"}\n')
        real = b._preparer.prepare

        def racing(name, path, mtime_ns, mode):
            p = real(name, path, mtime_ns, mode)
            with open(src, "ab") as f:
                f.write(b'{"role": "assistant", "content": "hello"}\n')
            return p
        b._preparer.prepare = racing
        b.put_file("grow.jsonl", src)
        assert b.get("grow.jsonl") == src.read_bytes()
        info = b.info("grow.jsonl")
        assert info.size == src.stat().st_size and info.checksum == records.checksum(src.read_bytes()).hex()
        assert info.messages == 2
    finally:
        a.close()
        b.close()


def test_zstd_state_kept_per_thread_is_bounded():
    """Frames of every size, at two levels: a thread keeps at most one compressor per
    level, and none sized for more than 128 KiB (one sized for a 16 MiB block is 27 MiB of
    state at level 9 and 98 MiB at 19: a daemon kept them for its whole life)."""
    import threading

    from stowfs.store import frames

    kept = {}

    def work():
        for size in (100, 3_000, 70_000, 600_000, 2_500_000, 40, 900_000):
            for level in (9, 19):
                raw = os.urandom(64) * (size // 64)
                hd, back = frames.decode(frames.encode(frames.GROUP, size, raw, level), frames.GROUP, size)
                assert back == raw
        kept.update(frames._local.__dict__.get("c", {}))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert set(kept) <= {9, 19}
    assert all(w <= 17 and c.memory_size() <= 4 << 20 for w, c in kept.values())


def test_a_lean_writer_holds_only_what_it_has_not_saved(tmp_path):
    """The mount's writer (defer_block_merges): files put one transaction each, with long
    repeats of earlier ones (dedup reads them back from the open block's fragments, not
    from memory), over several 1 MiB blocks. It never holds more than one transaction's
    bytes, filled blocks stay as fragments, every file reads back, and compaction merges
    the fragments into one frame per block with the same bytes."""
    from stowfs import limits
    from stowfs.store import blocks

    recs = [json.dumps(openai_form(r)).encode() for r in sharegpt_records(300)]
    files, dedup = {}, 0
    with Store(tmp_path / "s", block_size=1 << 20) as s:
        s.defer_block_merges()
        for i, r in enumerate(recs):
            # every third file repeats an earlier one inside new bytes: a dedup match
            data = r + (recs[i // 3] if i % 3 == 0 else b"") + os.urandom(2_000).hex().encode()
            files[f"f{i:03d}.json"] = data
            dedup += s.put(f"f{i:03d}.json", data).dedup_bytes
            app = s.writer().app
            assert len(app.raw) == 0 and not app.full      # saved: nothing held
        assert dedup > 100_000
        # a file over two blocks: filled blocks written as it goes (flush_full); stored
        # again unchanged, then grown (both compare against what is stored)
        big = os.urandom(1_300_000).hex().encode()
        files["big.json"] = big
        s.put("big.json", big)
        assert s.put("big.json", big).new_bytes == 0
        files["big.json"] = big + b"more"
        assert s.put("big.json", big + b"more").new_bytes <= 100
        end_block = s.writer().app.open_id
        assert end_block >= 4, "the test must fill blocks"
        with s.env.begin() as txn:
            for bid in range(end_block):     # left as fragments: nothing at the ingest level
                assert {f.hd.level for f, _ in blocks.fragments(txn, s._blocks, bid)} <= {0, limits.LEVEL_FRAGMENT}
        for name, data in files.items():
            assert s.get(name) == data
        assert verify(s)["ok"]
        with s.env.begin() as txn:      # the binary search finds what a scan finds
            for bid in range(end_block + 1):
                frs = blocks.fragments(txn, s._blocks, bid)
                assert blocks.last_fragment_key(txn, s._blocks, bid) == frs[-1][0].key
                for off in list(range(0, 1 << 20, 997)) + [f.first for f, _ in frs] + [f.end - 1 for f, _ in frs]:
                    want = [f.key for f, _ in frs if f.first <= off < f.end]
                    got = blocks.find_fragment(txn, s._blocks, bid, off)
                    assert ([got[0].key] if got else []) == want, (bid, off)
    compact(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        with s.env.begin() as txn:
            for bid in range(end_block):
                (frag, _), = blocks.fragments(txn, s._blocks, bid)
                assert frag.hd.level in (0, limits.LEVEL_COMPACT)
        for name, data in files.items():
            assert s.get(name) == data
        assert verify(s)["ok"]


def test_small_fragments_are_not_cached_and_cached_ones_count_their_decoder(tmp_path):
    """Reads of a mount's open block (hundreds of fragments of a few KB) used to fill the
    decoded cache with one entry per fragment, each counted by its bytes only: the daemon
    grew by tens of MiB over a 30-minute soak. Small fragments are decoded per read now."""
    from stowfs import limits

    recs = [json.dumps(openai_form(r)).encode() for r in sharegpt_records(60)]
    with Store(tmp_path / "s") as s:
        s.defer_block_merges()
        for i, r in enumerate(recs):
            s.put(f"f{i}.json", r)
        s.cache.clear()
        for i, r in enumerate(recs):
            assert s.get(f"f{i}.json") == r
        assert len(s.cache._d) == 0
        big = os.urandom(100_000).hex().encode()      # new bytes: one fragment of 200 KB
        s.put("big.json", big)
        s.cache.clear()
        assert s.reader("big.json").read(0, 100) == big[:100]
        (dec,) = s.cache._d.values()
        assert dec.hd.raw_len >= limits.CACHED_FRAGMENT_MIN
        assert s.cache._cost(dec) >= len(dec.buf) + limits.DECODED_ENTRY_COST


def test_a_group_encoded_from_kept_forms_is_the_same_frame(tmp_path):
    """Records keep their facts flattened and extents encoded (a mount rewrites a whole
    group per inbox file): encoding a decoded group, with those kept forms or without,
    gives back the stored frame byte for byte, and a replaced record does not reuse its
    old forms."""
    from stowfs.store import frames

    recs = [json.dumps(openai_form(r)).encode() for r in sharegpt_records(120)]
    with Store(tmp_path / "s") as s:
        for i, r in enumerate(recs):
            s.put(f"f{i}.json", r)
        s.put("f3.json", recs[4] + b" ")            # replaced: new record, new facts
        with s.env.begin() as txn:
            for k, v in s._groups.table.cursor(txn):
                gid, frame = int.from_bytes(k, "big"), bytes(v)
                level = frames.header(frame, frames.GROUP, gid).level
                kept = records.decode_group(frame, gid)
                assert records.encode_group(gid, kept, level) == frame
                for r in kept.values():
                    r._flat = r._enc = None
                assert records.encode_group(gid, kept, level) == frame
                r = next(iter(kept.values()))
                r.flat_facts()
                changed = r.replace(facts={"x": {"y": 1}})
                assert changed.flat_facts() == {"x\x00y": 1}
        assert s.get("f3.json") == recs[4] + b" "


def test_a_stream_that_decoded_everything_lets_its_decoder_go():
    """Repetitive content decodes to MBs from one step of compressed input. Such a
    decoder kept its stream and frame, was counted at twice its bytes, and two blocks
    read by turns evicted each other at every read (cat of a 1 GiB session: 4 s -> minutes)."""
    from stowfs import limits
    from stowfs.store import blocks, frames

    raw = b'{"role":"user","content":"the same line again"}\n' * 90_000     # 4.3 MB
    key = blocks.frag_key(3, 0)
    frame = blocks.encode_fragment(key, [(0, len(raw))], raw, 3)
    assert len(frame) < limits.PARTIAL_DECODE_STEP
    frag = blocks.parse_fragment(frame, key)
    _, pieces = blocks.decode_extra(frag.hd.extra, frag.hd.raw_len, key)
    dec = frames.PartialDecoder(frame, frag.hd, pieces, limits.PIECE_HASH_STEP)
    dec.need(1000)
    assert dec.done and dec.stream_state() == 0
    assert blocks.DecodedCache._cost(dec) == len(raw) + limits.DECODED_ENTRY_COST
    dec.need(len(raw))
    assert bytes(dec.buf) == raw


def _blocks_of(s: Store, name: str) -> set[int]:
    ext = s._env.read(lambda txn: s._record(txn, name).extents)
    return {pos // s.block_size for pos, n in ext} | {(pos + n - 1) // s.block_size for pos, n in ext}


def test_a_small_file_does_not_reach_into_an_earlier_block_for_a_short_repeat(tmp_path):
    """A repeat found in an earlier block costs a reader a decode of that block: a file
    under limits.FAR_FILE stores a short one again (a cold cat of all ShareGPT files took
    4x longer for 1,108 of them); a larger file still takes it (a chat export of
    conversations stored one by one dedups against them)."""
    from stowfs import limits
    recs = [json.dumps(openai_form(r), indent=2, ensure_ascii=False).encode() for r in sharegpt_records(800)]
    a = next(r for r in recs if 8_000 < len(r) < 40_000)
    filler = [r for r in recs if r is not a]
    with Store(tmp_path / "s", block_size=1 << 20) as s:
        s.put("a.json", a)
        n = 0
        for i, r in enumerate(filler):                 # well past block 0
            s.put(f"f/{i}.json", r)
            n += len(r)
            if n > 3 << 20:
                break
        assert _blocks_of(s, "a.json") == {0}
        small = b'{"copy": 1}\n' + a
        r = s.put("small.json", small)
        assert 0 not in _blocks_of(s, "small.json") and r.dedup_bytes == 0
        big = a
        for more in reversed(filler):
            if len(big) >= limits.FAR_FILE:
                break
            big += b"\n" + more
        assert len(big) >= limits.FAR_FILE
        r = s.put("big.json", big)
        assert 0 in _blocks_of(s, "big.json") and r.dedup_bytes >= len(a)
        assert s.get("small.json") == small and s.get("big.json") == big


def test_decoded_records_keep_their_facts_packed(tmp_path):
    """A decoded group keeps its facts column packed; a record's facts are made when
    asked for, equal to what was stored (a reading daemon held every record's facts as
    nested dicts: most of its memory on a large store)."""
    recs = [json.dumps(openai_form(r)).encode() for r in sharegpt_records(40)]
    with Store(tmp_path / "s") as s:
        for i, r in enumerate(recs):
            s.put(f"f{i}.json", r)
        want = {i.name: i.facts for i in s.iter_files("")}
        assert all(want.values())
        with s.env.begin() as txn:
            k, v = next(iter(s._groups.table.cursor(txn)))
            gid, frame = int.from_bytes(k, "big"), bytes(v)
        group = records.decode_group(frame, gid)
        col = next(iter(group.values()))._src[0]
        # what the decoded group holds of the facts: the packed column, no dict per record
        assert isinstance(col, records.FactsColumn) and isinstance(col.packed, bytes)
        assert all(r._src[0] is col and r._facts is None and r._flat is None for r in group.values())
        names = s._env.read(lambda txn: s._id_names(txn))
        for fid, r in group.items():
            assert r.facts == want[names[fid]]


def test_the_mount_gives_back_the_store_pages_its_reads_mapped(tmp_path):
    """Pages of the store file a read touched stay mapped (and in the reader's RSS) until
    drop_mapped(); after it they are out of the map, and reads go on as before."""
    def mapped_kib(path: str) -> int:
        rss, ours = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5 and ":" in line.split()[3]:
                    ours = line.rstrip().endswith(path)
                elif ours and line.startswith("Rss:"):
                    rss += int(line.split()[1])
        return rss
    recs = [json.dumps(openai_form(r), indent=2).encode() for r in sharegpt_records(600)]
    with Store(tmp_path / "s") as s:
        for i, r in enumerate(recs):
            s.put(f"f{i}.json", r)
    compact(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        data_file = str(tmp_path / "s" / "lmdb" / "data.mdb")
        for i, r in enumerate(recs):
            assert s.get(f"f{i}.json") == r
        before = mapped_kib(data_file)
        assert before > 256
        s.drop_mapped()
        assert mapped_kib(data_file) < before / 4
        for i, r in enumerate(recs):
            assert s.get(f"f{i}.json") == r


def _facts_strategy():
    from hypothesis import strategies as st
    ints = st.one_of(st.integers(-5, 5000), st.integers(-(1 << 63), (1 << 64) - 1))
    leaf = st.one_of(ints, st.booleans(), st.none(), st.floats(allow_nan=False), st.text(max_size=3))
    value = st.one_of(leaf, st.lists(st.one_of(ints, st.none(), st.booleans()), max_size=4),
                      st.lists(st.lists(ints, max_size=3), max_size=3))
    return st.dictionaries(st.sampled_from(["a", "b", "c", "views", "tokens"]),
                           st.one_of(value, st.dictionaries(st.sampled_from(["x", "y", "lean"]), value, max_size=3)),
                           max_size=5)


def test_a_listing_makes_no_records_facts_until_they_are_looked_into(tmp_path, monkeypatch):
    """A listing gives a FileInfo of every file; the mount takes only the views' sizes
    from its facts, so the nested facts are made only when a caller looks into them,
    and then are the record's."""
    root = corpus_dir()
    files = [p for p in corpus_files() if p.stat().st_size < 1 << 20][:12]
    with Store(tmp_path / "s") as s:
        for p in files:
            s.put_file("d/" + str(p.relative_to(root)).replace("/", "_"), p)
    compact(tmp_path / "s")
    built = []
    real = records.FactsColumn.nested
    monkeypatch.setattr(records.FactsColumn, "nested", lambda self, i: built.append(i) or real(self, i))
    with Store(tmp_path / "s", readonly=True) as s:
        listed = dict(s.listdir("d"))
        sizes = {n: (i.text_size, i.view_size("lean"), i.view_size("compact")) for n, i in listed.items()}
        assert built == [] and any(t for t, _, _ in sizes.values())
        for n, info in listed.items():
            full = s.info("d/" + n)
            assert sizes[n] == (full.text_size, full.view_size("lean"), full.view_size("compact"))
            assert info.facts == full.facts and dict(info.facts) == full.facts
        assert built                            # looked into: made (and kept)
    assert len(files) == len(listed)


def test_facts_stored_against_each_other_read_back_exactly():
    """Format 5 stores a numeric fact as its difference from the file size or from
    another fact; any mix of values (huge, negative, bools, lists of other lengths,
    absent) must read back as it was."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from stowfs.store import frames

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), _facts_strategy()), min_size=1, max_size=40))
    def check(rows):
        recs = {}
        for i, (size, facts) in enumerate(rows):
            recs[1024 + i] = records.Record(1024 + i, None, size, 0, 0o644, "text", None, None, [], None,
                                            None, 0, 0, facts, b"\0\0\0\0", [(0, 0)])
        frame = records.encode_group(2, recs, 19, refs=True)
        got = records.decode_group(frame, 2)
        for fid, r in recs.items():
            assert got[fid].size == r.size and got[fid].facts == r.facts
        frames.decode(frame, frames.GROUP, 2)
    check()


def test_every_field_of_a_record_reads_back_from_either_group_layout():
    """Format 7's packed columns (and format 6's lists) read back every record as it
    was: ids with gaps, sizes and mtimes of any range, models that are and are not
    [model], checksums, extents that do and do not add up to the size (or none),
    positions going back, facts of any shape."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from stowfs.store import frames
    u64 = st.integers(0, (1 << 64) - 1)
    name = st.one_of(st.none(), st.sampled_from(["gpt-4o", "claude", "o3"]))
    extent = st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 20))
    row = st.tuples(st.integers(1, 40), u64, st.integers(-(1 << 63), (1 << 63) - 1),
                    st.integers(0, 0o7777), name, st.one_of(st.none(), st.lists(name, max_size=3)),
                    st.one_of(st.none(), st.integers(0, 10 ** 6)), st.binary(min_size=4, max_size=4),
                    st.lists(extent, max_size=4), st.booleans(), _facts_strategy())

    @settings(max_examples=150, deadline=None)
    @given(st.lists(row, min_size=1, max_size=40), st.booleans())
    def check(rows, refs):
        recs, fid = {}, 4096
        for gap, size, mtime, mode, model, models, msgs, ck, ext, whole, facts in rows:
            fid += gap
            if fid >= 4096 + 512:
                break
            if whole and ext:                   # extents that add up to the size
                size = sum(n for _, n in ext)
            if models is None:
                models = [model] if model is not None else []
            recs[fid] = records.Record(fid, None, size, mtime, mode, "text", None, model, models,
                                       None, None, msgs, 1, facts, ck, ext)
        for packed in (True, False):
            frame = records.encode_group(8, recs, 3, refs=refs, packed=packed)
            assert frames.header(frame, frames.GROUP, 8).extra == (records.PACKED if packed else b"")
            got = records.decode_group(frame, 8)
            assert sorted(got) == sorted(recs)
            for k, r in recs.items():
                g = got[k]
                for f in records.Record.STORED:
                    assert getattr(g, f) == getattr(r, f) and type(getattr(g, f)) is type(getattr(r, f)), f
                assert g.extents == [tuple(e) for e in r.extents]
    check()


def test_a_fact_stored_against_any_other_value_reads_back_exactly():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    ints = st.one_of(st.integers(-5, 5000), st.integers(-(1 << 62), 1 << 62))
    leaf = st.one_of(ints, st.booleans(), st.none(), st.floats(allow_nan=False), st.text(max_size=2))
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=8)

    @settings(max_examples=400, deadline=None)
    @given(value, value)
    def check(v, r):
        d = records._delta(v, r)
        assert records._undelta(d, r) == v and type(records._undelta(d, r)) is type(v)
    check()


def test_facts_like_the_real_ones_are_stored_against_each_other():
    """The views' sizes are stored against the file size, the lean view's token count
    against another count: a smaller group that reads back the same."""
    import msgpack
    from stowfs.packing import unpack_list
    from stowfs.store import frames
    recs = {}
    for i, r in enumerate(sharegpt_records(300)):
        data = json.dumps(openai_form(r), indent=2).encode()
        toks = len(data) // 4
        facts = {"views": {"lean": [1, len(data)], "text": [2, len(data) - 40 - i % 7]},
                 "tokens": {"views": {"original": toks, "lean": toks, "text": toks - 9}}, "stored": len(data)}
        recs[512 + i] = records.Record(512 + i, None, len(data), 0, 0o644, "openai", None, None, [], None,
                                       None, 1, 1, facts, b"\0\0\0\0", [(i * 10, len(data))])
    # format 6's msgpack lists, and format 7's packed columns (numbers in byte planes,
    # where a reference gains less: 5,191 -> 3,188 bytes and 2,554 -> 2,230)
    for layout, gain in ((False, 0.8), (True, 0.95)):
        plain = records.encode_group(1, recs, 19, packed=layout)
        packed = records.encode_group(1, recs, 19, refs=True, packed=layout)
        assert len(packed) < gain * len(plain)
        cols = unpack_list(frames.decode(packed, frames.GROUP, 1)[1])
        paths, _, _, refs = msgpack.unpackb(msgpack.packb(cols[12]))
        by = dict(zip(paths, refs))
        assert by["views\x00lean"] == -1 and by["stored"] == -1 and by["tokens\x00views\x00original"] is not None
        got = records.decode_group(packed, 1)
        assert all(got[k].facts == r.facts for k, r in recs.items())
    assert len(packed) < 0.75 * len(records.encode_group(1, recs, 19, refs=True, packed=False))


def test_the_decoded_block_cache_holds_one_block_until_reads_go_back(tmp_path):
    """Reading front to back keeps one decoded block; reads that go back to a block it
    dropped (files whose repeats are in an earlier block) make it keep two."""
    recs, total = [], 0
    for r in sharegpt_records(2000):        # two blocks and a few KB in a third
        if total > (2 << 20) + 20000:
            break
        recs.append(json.dumps(openai_form(r), indent=2).encode())
        total += len(recs[-1])
    with Store(tmp_path / "s", block_size=1 << 20) as s:
        for i, r in enumerate(recs):
            s.put(f"f{i:04d}.json", r)
    compact(tmp_path / "s")
    with Store(tmp_path / "s", readonly=True) as s:
        c = s.cache
        assert c.cap == c.floor < c.limit
        names = [i.name for i in s.iter_files()]
        assert s.block_stats()["fragments"] == 3             # blocks of 1 MiB, one fragment each
        for _ in range(2):          # the second pass decodes every block again, in order
            for name in names:
                assert s.get(name) == recs[int(name[1:5])]
                assert len(c._d) <= 2                       # a block, and the last (small)
            assert c.cap == c.floor
        first, last = names[0], names[len(names) * 3 // 4]
        for _ in range(3):                              # back and forth: first and second block
            s.get(first)
            s.get(last)
        assert c.cap == c.limit
        s.get(first)
        assert len(c._d) == 2
        s.release_caches()
        assert c.cap == c.floor and not c._d


def test_anchors_are_the_documented_window_hash():
    """anchors.find (numpy prefix sums over every position) gives what the module's
    definition says, computed here one window at a time on real bytes: the index of a
    store written before must keep matching what new ingests find."""
    import hashlib
    from stowfs import limits
    from stowfs.store import anchors
    M = 1 << 64
    table = [int.from_bytes(hashlib.blake2b(bytes([i]), digest_size=8, person=b"stowfs-anchor").digest(),
                            "little") for i in range(256)]
    W, bits = limits.ANCHOR_WINDOW, limits.ANCHOR_BITS
    for p in [p for p in corpus_files() if p.stat().st_size > 4096][:6]:
        data = p.read_bytes()[:24000]
        cand = []                       # (position, key) of every window whose top bits are zero
        for i in range(len(data) - W + 1):
            h = sum(j * table[data[i + j]] for j in range(W)) * 0x9E3779B97F4A7C15 % M
            if h >> (64 - bits) == 0:
                cand.append((i, (h >> 16) & 0xFFFFFFFF))
        # one per gap: a candidate closer than ANCHOR_MIN_GAP to the one before is dropped
        want = [c for k, c in enumerate(cand) if k == 0 or c[0] - cand[k - 1][0] >= limits.ANCHOR_MIN_GAP]
        pos, keys = anchors.find(data)
        assert list(zip(pos.tolist(), keys.tolist())) == want
        assert len(pos) > 0


def test_a_block_decoded_whole_is_checked_in_one_pass_and_damage_still_fails_only_its_reads():
    """A block checked decoded (format 5 and before; format 6 reads them as they are):
    once a read needs more than a quarter of a block, the block is decoded whole and
    checked against the frame hash in one pass (not piece by piece as well). A frame
    whose hash does not match falls back to the pieces: reads of sound pieces succeed,
    also the one that reaches the end, and the decoder says the whole is unmatched (the
    reader then takes only whole files checked against their checksums from it)."""
    import dataclasses
    from stowfs import limits
    from stowfs.errors import Corrupt
    from stowfs.store import blocks, frames

    raw = b"".join(json.dumps(openai_form(r)).encode() for r in sharegpt_records(400))[:3 * limits.PIECE_HASH_STEP + 999]
    key = blocks.frag_key(5, 0)
    frame = blocks.encode_fragment(key, [(0, len(raw))], raw, 3, stored_check=False)
    frag = blocks.parse_fragment(frame, key)
    _, pieces = blocks.decode_extra(frag.hd.extra, frag.hd.raw_len, key)
    dec = frames.PartialDecoder(frame, frag.hd, pieces, limits.PIECE_HASH_STEP)
    dec.need(len(raw) // 2)
    assert dec.checked == len(raw) and bytes(dec.buf) == raw

    wrong = dataclasses.replace(frag.hd, hash=bytes(16))
    dec = frames.PartialDecoder(frame, wrong, pieces, limits.PIECE_HASH_STEP)
    dec.need(len(raw) // 2)                        # decoded whole: the pieces it needs check
    assert dec.checked < len(raw) and bytes(dec.buf[:len(raw) // 2]) == raw[:len(raw) // 2]
    assert dec.unmatched and not dec.whole_ok
    dec.need(len(raw))
    assert dec.checked == len(raw) and bytes(dec.buf) == raw and not dec.whole_ok
    bad = bytearray(frame)
    bad[-40] ^= 0xFF                               # and a damaged piece still fails its read
    dec = frames.PartialDecoder(bytes(bad), wrong, pieces, limits.PIECE_HASH_STEP)
    with pytest.raises(Corrupt):
        dec.need(len(raw))


def test_a_compaction_pass_over_a_compacted_store_writes_nothing(tmp_path):
    """The mount's idle pass over a store that is compacted already: no step, and the
    generation stays (a write that changes nothing moved it, and the mount then looked
    every file's record up again at its next open)."""
    from stowfs.store import compaction
    files = corpus_files()
    root = corpus_dir()
    with Store(tmp_path / "s") as s:
        list(s.put_many([(str(p.relative_to(root)), str(p), None) for p in files], workers=0))
    compact(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        gen = s.generation
        assert list(compaction.steps(s)) == []
        assert s.generation == gen
        s.put("new.json", files[0].read_bytes() + b"\n")       # something to do again
        assert list(compaction.steps(s)) and s.generation > gen
        assert s.get("new.json") == files[0].read_bytes() + b"\n"


def test_a_reader_of_one_version_is_found_by_its_file_id(tmp_path):
    """Store.reader(name, view, file_id=): that version's bytes without the name lookup
    (the mount's open files); NotFound once that version was replaced or removed."""
    files = [p for p in corpus_files() if p.suffix in (".json", ".jsonl")][:2]
    a, b = files[0].read_bytes(), files[1].read_bytes()
    with Store(tmp_path / "s") as s:
        s.put("f.json", a)
        fid = s.info("f.json").file_id
        r = s.reader("f.json", file_id=fid)
        assert r.read(0, r.size) == a
        t = s.reader("f.json", "text", file_id=fid)
        assert t.read(0, t.size) == s.get("f.json", "text")
        s.put("f.json", b)
        with pytest.raises(NotFound):
            s.reader("f.json", file_id=fid)
        new = s.info("f.json").file_id
        assert s.reader("f.json", file_id=new).read(0, len(b)) == b
        s.remove("f.json")
        with pytest.raises(NotFound):
            s.reader("f.json", file_id=new)


def test_a_frame_a_cursor_listed_but_a_lookup_did_not_find_is_damage():
    """A damaged key can make a table's cursor list a key that a lookup then does not
    find: that is Corrupt (a clear error), not a TypeError from the header parse
    (`stowfs ls` crashed on such a store in the full torture tier)."""
    from stowfs.errors import Corrupt
    from stowfs.store import frames
    with pytest.raises(Corrupt, match="listed but not found"):
        frames.header(None, frames.NAMES, 7)


def test_many_files_read_in_one_transaction_are_each_their_own_version(tmp_path):
    """Store.read_files (the mount's read-ahead): the bytes of each (name, file id), as
    reader(file_id=) gives them, from a live store (many fragments) and a compacted
    one; a version that is gone is that item's NotFound, and the others still read."""
    from stowfs.store import compaction
    files = [p for p in corpus_files() if p.stat().st_size < 256 << 10][:40]
    with Store(tmp_path / "s") as s:
        for p in files:
            s.put(f"c/{p.name}", p.read_bytes())
        ids = [(f"c/{p.name}", s.info(f"c/{p.name}").file_id) for p in files]
        gone, replaced = ids[3], ids[7]
        s.remove(gone[0])
        s.put(replaced[0], b'{"replaced": true}\n')
        for _ in range(2):
            got = s.read_files(ids + [ids[0]])
            assert len(got) == len(ids) + 1
            for (name, fid), data in zip(ids + [ids[0]], got):
                if (name, fid) in (gone, replaced):
                    assert isinstance(data, NotFound)
                else:
                    assert data == s.get(name)
            compaction.compact(s)
        assert s.read_files([]) == []


def test_blocks_read_in_order_are_decoded_whole_ahead_and_only_if_they_check(tmp_path):
    """read_files (the mount's read-ahead) hands the blocks it touched to a background
    thread that decodes them whole; the whole is taken only when it matches the frame
    hash and holds what was handed out already. Reads give the same bytes either way."""
    import dataclasses
    from stowfs import limits
    from stowfs.store import blocks, compaction, frames

    records = sharegpt_records(300)
    with Store(tmp_path / "s") as s:
        for i, r in enumerate(records):
            s.put(f"c/{i:04d}.json", json.dumps(openai_form(r)).encode())
        compaction.compact(s)
        ids = [(f"c/{i:04d}.json", s.info(f"c/{i:04d}.json").file_id) for i in range(len(records))]
        assert s.read_files(ids[:1])[0] == s.get(ids[0][0])
        blocks._ahead_pool().submit(lambda: None).result()        # the decode ahead is done
        decs = list(s.cache._d.values())
        assert len(decs) == 1 and decs[0].hd.raw_len > 4 * limits.PIECE_HASH_STEP
        assert decs[0].done and decs[0].checked == decs[0].hd.raw_len
        assert [d for d in s.read_files(ids)] == [s.get(n) for n, _ in ids]

    raw = b"".join(json.dumps(openai_form(r)).encode() for r in sharegpt_records(900))[:5 * limits.PIECE_HASH_STEP + 999]
    assert len(raw) == 5 * limits.PIECE_HASH_STEP + 999      # a first piece is under a quarter
    key = blocks.frag_key(5, 0)
    frame = blocks.encode_fragment(key, [(0, len(raw))], raw, 3, stored_check=False)
    frag = blocks.parse_fragment(frame, key)
    _, pieces = blocks.decode_extra(frag.hd.extra, frag.hd.raw_len, key)
    dec = frames.PartialDecoder(frame, frag.hd, pieces, limits.PIECE_HASH_STEP)
    dec.need(100)
    assert not dec.done
    assert not dec.adopt(b"x" + raw[1:])                     # not what was handed out
    assert not dec.adopt(raw[:-1])                           # not the whole
    taken = bytes(bytearray(raw))                            # equal to raw, not raw itself
    assert dec.adopt(taken) and dec.done and dec.buf is taken
    assert dec.checked == limits.PIECE_HASH_STEP             # pieces checked as reads reach them
    assert not dec.adopt(raw)                                # nothing left to decode
    dec.need(3 * limits.PIECE_HASH_STEP)
    assert dec.checked == 3 * limits.PIECE_HASH_STEP
    dec.whole_checked(raw)                                   # not the bytes it holds: no effect
    assert dec.checked == 3 * limits.PIECE_HASH_STEP
    dec.whole_checked(taken)
    assert dec.checked == len(raw)
    # a read past what is checked while the background thread decodes the whole waits
    # for its result instead, the lock let go meanwhile: one whole copy in memory, not
    # two (a read of the whole), and no stream window and output beside it (a read of a
    # few pieces, under a quarter of the payload)
    import threading
    big = (raw * 3)[:12 * limits.PIECE_HASH_STEP + 999]
    key = blocks.frag_key(6, 0)
    bframe = blocks.encode_fragment(key, [(0, len(big))], big, 3, stored_check=False)
    bfrag = blocks.parse_fragment(bframe, key)
    _, bpieces = blocks.decode_extra(bfrag.hd.extra, bfrag.hd.raw_len, key)
    for end in (limits.PIECE_HASH_STEP + 10, len(big)):
        dec = frames.PartialDecoder(bframe, bfrag.hd, bpieces, limits.PIECE_HASH_STEP)
        dec.need(100)
        assert dec.checked == limits.PIECE_HASH_STEP < 2 * limits.PIECE_HASH_STEP <= len(big) // 4
        decoded = len(dec.buf)
        dec.ahead = ev = threading.Event()
        dec._decode_rest = lambda: pytest.fail("decoded the whole twice")
        got = []

        def reader():
            with dec.lock:
                dec.need(end)
                got.append(bytes(dec.buf[:end]))
        t = threading.Thread(target=reader)
        t.start()
        t.join(0.3)
        assert t.is_alive() and not got                      # waiting, not decoding
        with dec.lock:                                       # what _decode_whole does
            assert len(dec.buf) == decoded
            assert dec.adopt(big)
            dec.ahead = None
        ev.set()
        t.join(10)
        assert got == [big[:end]]
    # the cache makes room for a whole decode before it, also when the read's end is
    # under a quarter and only its last piece reaches over
    done = frames.PartialDecoder(bframe, bfrag.hd, bpieces, limits.PIECE_HASH_STEP)
    done.need(len(big))
    dec = frames.PartialDecoder(bframe, bfrag.hd, bpieces, limits.PIECE_HASH_STEP)
    end = 3 * limits.PIECE_HASH_STEP + 10
    assert end <= len(big) // 4 and dec.decodes_whole(end) and not dec.decodes_whole(100)
    C = blocks.DecodedCache
    assert C._growth(dec, end) == len(big) > 4 * C._growth(dec, 100)
    # room for the other block and a step of this one, not for a whole decode of it
    cap = C._cost(done) + C._cost(dec) + C._growth(dec, 100) + (1 << 10)
    cache = C(2 * cap, floor=cap)
    cache.put("done", done)
    cache.put("dec", dec)
    cache.reserve("dec", dec, 100)
    assert list(cache._d) == ["done", "dec"]
    cache.reserve("dec", dec, end)
    assert list(cache._d) == ["dec"]
    # a decode ahead that gave nothing (its whole did not check): the read decodes itself
    dec = frames.PartialDecoder(bframe, bfrag.hd, bpieces, limits.PIECE_HASH_STEP)
    dec.need(100)
    dec.ahead = ev = threading.Event()
    t = threading.Thread(target=lambda: (dec.lock.acquire(), dec.need(2 * limits.PIECE_HASH_STEP), dec.lock.release()))
    t.start()
    t.join(0.3)
    assert t.is_alive()
    with dec.lock:
        dec.ahead = None
    ev.set()
    t.join(10)
    assert not t.is_alive() and dec.checked == 2 * limits.PIECE_HASH_STEP and not dec.done
    # a frame whose whole does not match its hash is never taken whole
    cache = blocks.DecodedCache(64 << 20)
    wrong = dataclasses.replace(frag.hd, hash=bytes(16))
    dec = frames.PartialDecoder(frame, wrong, pieces, limits.PIECE_HASH_STEP)
    dec.need(100)
    cache.put("k", dec)
    dec.ahead = threading.Event()
    blocks._decode_whole(cache, "k", dec)
    assert dec.done and dec.ahead is None and dec.checked < len(raw)
    dec.need(5 * limits.PIECE_HASH_STEP)                     # every piece but the last checks
    dec.need(len(raw))                                       # so does the last; the whole does not
    assert dec.unmatched and not dec.whole_ok and bytes(dec.buf) == raw
    # a damaged piece in a frame decoded ahead fails the read that reaches it
    bad = bytearray(frame)
    bad[-40] ^= 0xFF
    dec = frames.PartialDecoder(bytes(bad), frag.hd, pieces, limits.PIECE_HASH_STEP)
    cache.put("k2", dec)
    dec.ahead = threading.Event()
    blocks._decode_whole(cache, "k2", dec)
    with pytest.raises(Corrupt):
        dec.need(len(raw))


def test_a_read_of_a_whole_block_waits_for_the_decode_ahead_threads_hash(monkeypatch):
    """The decode-ahead thread hands its whole payload over before it hashes it
    (PartialDecoder.hashing is set meanwhile). A read that needs the whole checked waits
    for that hash instead of making a second pass of its own beside it (16 MiB: ~20 ms
    here); if that hash did not match, the read checks the whole itself and fails."""
    import threading
    from stowfs import limits
    from stowfs.store import blocks, frames
    raw = b"".join(json.dumps(openai_form(r)).encode() for r in sharegpt_records(900))
    raw = (raw * 3)[:6 * limits.PIECE_HASH_STEP + 999]
    key = blocks.frag_key(7, 0)
    frame = blocks.encode_fragment(key, [(0, len(raw))], raw, 3, stored_check=False)
    frag = blocks.parse_fragment(frame, key)
    _, pieces = blocks.decode_extra(frag.hd.extra, frag.hd.raw_len, key)
    hashed = []
    real = frames.content_hash
    monkeypatch.setattr(frames, "content_hash",
                        lambda tag, key, extra, data: hashed.append(len(data)) or real(tag, key, extra, data))

    def handed_over(whole: bytes):
        """A decoder that handed out its first piece, then took whole from the thread,
        which is hashing it now."""
        dec = frames.PartialDecoder(frame, frag.hd, pieces, limits.PIECE_HASH_STEP)
        dec.need(100)
        with dec.lock:
            assert dec.adopt(whole)
            dec.hashing = threading.Event()
        return dec

    def read_all(dec, out: list):
        def run():
            with dec.lock:
                try:
                    dec.need(len(raw))
                    out.append(bytes(dec.buf))
                except Corrupt as e:
                    out.append(e)
        t = threading.Thread(target=run)
        t.start()
        t.join(0.3)
        assert t.is_alive() and not out                       # waiting for the thread's hash
        return t

    def thread_done(dec, matched: bool):                      # what _decode_whole ends with
        with dec.lock:
            if matched:
                dec.whole_checked(dec.buf)
            ev, dec.hashing = dec.hashing, None
        ev.set()

    whole = bytes(bytearray(raw))
    dec, got = handed_over(whole), []
    t = read_all(dec, got)
    thread_done(dec, matched=True)
    t.join(10)
    assert got == [raw] and dec.whole_ok and hashed == []     # no second pass
    damaged = bytearray(raw)
    damaged[-10] ^= 0x01                                      # past what was handed out
    dec, got = handed_over(bytes(damaged)), []
    t = read_all(dec, got)
    thread_done(dec, matched=False)
    t.join(10)
    assert hashed == [len(raw)] and isinstance(got[0], Corrupt) and not dec.whole_ok


def _stored_check_frame(n: int):
    """A BLOCK frame checked as stored (format 6) of n bytes of real chat JSON, with
    its fragment, piece hashes and raw bytes."""
    from stowfs.store import blocks, frames
    raw = b"".join(json.dumps(openai_form(r)).encode() for r in sharegpt_records(900))
    raw = (raw * (n // len(raw) + 1))[:n]
    key = blocks.frag_key(9, 0)
    frame = blocks.encode_fragment(key, [(0, len(raw))], raw, 3)
    frag = blocks.parse_fragment(frame, key)
    assert frag.hd.codec == frames.ZSTD_STORED_CHECK
    _, pieces = blocks.decode_extra(frag.hd.extra, frag.hd.raw_len, key)
    return frame, frag, pieces, raw


def _stored_checked_decoder(n_records: int = 900):
    """A block fragment of real chat JSON checked as stored, several decode steps long,
    and a fresh decoder of it."""
    from stowfs import limits
    from stowfs.store import blocks
    raw = b"".join(json.dumps(openai_form(r)).encode() for r in sharegpt_records(n_records))
    key = blocks.frag_key(9, 0)
    frame = blocks.encode_fragment(key, [(0, len(raw))], raw, 3, stored_check=True)
    frag = blocks.parse_fragment(frame, key)
    assert len(frame) - frag.hd.body > 4 * limits.PARTIAL_DECODE_STEP
    return raw, frag, frame, blocks.new_decoder(frag, frame)


def test_a_block_checked_as_stored_is_decoded_ahead_in_steps_and_a_read_waits_only_for_its_own(monkeypatch):
    """The decode-ahead thread decodes a block checked as stored a step at a time into
    one buffer (zstream), handing each step's bytes out as it goes: a cold reader of the
    first files waits for the first step, not for the whole block (mixed: ~20 ms). A
    read further on waits for the step that reaches it. If the decode in steps fails,
    the reads decode the block themselves and meet the error, if any."""
    import threading
    from stowfs.store import blocks, zstream
    if not zstream.available():
        pytest.skip("the system's libzstd.so.1 is not there")
    raw, frag, frame, dec = _stored_checked_decoder()
    calls, gate = [], threading.Event()
    real_feed = zstream.Into.feed

    def held_feed(self, data, start, end):      # the thread stops in its second step
        calls.append(start)
        if len(calls) == 2:
            gate.wait(30)
        return real_feed(self, data, start, end)
    monkeypatch.setattr(zstream.Into, "feed", held_feed)
    cache = blocks.DecodedCache(64 << 20)
    cache.put("k", dec)
    with dec.lock:
        assert dec.begin_ahead(steps_only=True) is not None
    t = threading.Thread(target=blocks._decode_whole, args=(cache, "k", dec))
    t.start()
    first = []

    def read_first():
        with dec.lock:
            dec.need(1000)
            first.append((bytes(dec.buf[:1000]), dec.checked, dec.done))
    r = threading.Thread(target=read_first)
    r.start()
    r.join(5)
    assert not r.is_alive() and not gate.is_set()   # served while the thread is held
    assert first == [(raw[:1000], first[0][1], False)] and 1000 <= first[0][1] < len(raw)
    got = []

    def read_all():
        with dec.lock:
            dec.need(len(raw))
            got.append(bytes(dec.buf))
    r = threading.Thread(target=read_all)
    r.start()
    r.join(0.3)
    assert r.is_alive() and not got                 # waiting for the steps to reach it
    gate.set()
    t.join(10)
    r.join(10)
    assert got == [raw] and dec.done and dec.whole_ok and dec.ahead is None

    # the decode in steps fails half way: the reads decode it themselves, from the start
    raw, frag, frame, dec = _stored_checked_decoder()
    calls.clear()

    def failing_feed(self, data, start, end):
        calls.append(start)
        if len(calls) == 2:
            raise zstream.ZstreamError("as if the library failed")
        return real_feed(self, data, start, end)
    monkeypatch.setattr(zstream.Into, "feed", failing_feed)
    cache.put("k2", dec)
    with dec.lock:
        assert dec.begin_ahead() is not None
    blocks._decode_whole(cache, "k2", dec)
    assert dec.ahead is None and not dec.done and dec.checked == 0
    with dec.lock:
        dec.need(len(raw))
        assert bytes(dec.buf) == raw and dec.whole_ok

    # a block whose stored bytes do not match its hash is never decoded in steps: only
    # its sound pieces are decoded, by the reads, as before
    raw, frag, frame, _ = _stored_checked_decoder()
    bad = bytearray(frame)
    bad[-100] ^= 0x01
    dec = blocks.new_decoder(frag, bytes(bad))
    with dec.lock:
        assert not dec.whole_ok and not dec.may_step()
        assert dec.begin_ahead(steps_only=True) is None

    # without the library: decoded whole ahead as before; steps_only asks for nothing
    monkeypatch.setattr(zstream, "_lib", None)
    raw, frag, frame, dec = _stored_checked_decoder()
    with dec.lock:
        assert dec.begin_ahead(steps_only=True) is None
        assert dec.begin_ahead() is not None and dec._steps is None
    cache.put("k3", dec)
    blocks._decode_whole(cache, "k3", dec)
    assert dec.done and bytes(dec.buf) == raw


def test_a_read_that_starts_a_block_in_the_mount_has_the_rest_decoded_ahead(tmp_path):
    """Store.decode_blocks_ahead (the mount): a read of a part of a file that starts a
    block leaves the rest of the block decoded by the decode-ahead thread, so the next
    READs (the kernel's read-ahead of a large file) find their bytes at hand. A whole
    file read does not (its reader may go to another block next), nor does a command
    that reads and exits (the default), which decodes only as far as it reads."""
    from stowfs.store import blocks, compaction, zstream
    if not zstream.available():
        pytest.skip("the system's libzstd.so.1 is not there")
    records = sharegpt_records(300)
    names = [f"c/{i:04d}.json" for i in range(len(records))]
    with Store(tmp_path / "s") as s:
        for name, r in zip(names, records):
            s.put(name, json.dumps(openai_form(r)).encode())
        compaction.compact(s)
        originals = {n: s.get(n) for n in names}
    for ahead, part in ((False, True), (True, False), (True, True)):
        with Store(tmp_path / "s") as s:
            if ahead:
                s.decode_blocks_ahead()
                s._bind_tables()        # as after a compacting copy: the mode stays
            first = s.reader(names[0])
            if part:
                assert first.read(0, 100) == originals[names[0]][:100]
            else:
                assert first.read(0, first.size) == originals[names[0]]
            ahead = ahead and part
            blocks._ahead_pool().submit(lambda: None).result()
            decs = list(s.cache._d.values())
            assert len(decs) == 1 and decs[0].hd.codec == 2
            assert decs[0].done == ahead
            last = s.reader(names[-1])
            ready = last.read_ready(0, last.size)
            assert (ready == originals[names[-1]]) if ahead else ready is None
            if ahead:       # a view of the block decoded in steps, not a copy, read-only
                assert isinstance(ready, memoryview) and ready.readonly
            assert [s.get(n) for n in names] == [originals[n] for n in names]


def test_a_block_checked_as_stored_is_sound_before_it_is_decoded_and_damage_stays_local(monkeypatch):
    """Format 6: the frame hash covers the stored (compressed) payload, checked once
    before any decode; then every decoded byte is sound and the ranges too (whole_ok
    from the start), so a read near the start decodes a step, not the block, and no
    decoded byte is hashed. A damaged stored piece: the sound pieces before it still
    decode (what they give is taken as a part whose ranges nobody vouches for), and
    nothing past it is ever handed to zstd. A damaged hash with every piece sound:
    unmatched, as with blocks checked decoded."""
    import dataclasses
    from stowfs import limits
    from stowfs.store import blocks, frames
    frame, frag, pieces, raw = _stored_check_frame(24 << 20)
    step = blocks.piece_step(frag.hd.codec)
    stored = len(frame) - frag.hd.body
    assert step == limits.STORED_PIECE_STEP and len(pieces) == 8 * -(-stored // step) >= 24
    hashed = []
    real = frames.content_hash
    monkeypatch.setattr(frames, "content_hash",
                        lambda tag, key, extra, data: hashed.append(len(data)) or real(tag, key, extra, data))
    dec = frames.PartialDecoder(frame, frag.hd, pieces, step)
    assert dec.whole_ok and hashed == [stored]                    # the stored bytes, once
    dec.need(1000)
    assert dec.checked >= 1000 and len(dec.buf) < len(raw) // 4 and not dec.done
    assert bytes(dec.buf[:1000]) == raw[:1000]
    dec.need(len(raw))
    assert dec.checked == len(raw) and bytes(dec.buf) == raw and dec.done
    assert hashed == [stored]                                     # nothing decoded was hashed
    # a damaged stored byte in the fifth piece: the pieces before it decode, no further
    bad = bytearray(frame)
    bad[frag.hd.body + 4 * step + 100] ^= 0x20
    dec = frames.PartialDecoder(bytes(bad), frag.hd, pieces, step)
    assert not dec.whole_ok and not dec.unmatched and dec.frame_left() is None
    dec.need(1000)
    assert bytes(dec.buf[:1000]) == raw[:1000]
    with pytest.raises(Corrupt, match="damaged at offset"):
        dec.need(len(raw))
    assert dec._pos <= frag.hd.body + 4 * step                      # nothing past it went to zstd
    assert bytes(dec.buf) == raw[:len(dec.buf)]
    # a damaged hash over sound pieces: unmatched, decodes whole, its ranges not vouched for
    wrong = dataclasses.replace(frag.hd, hash=bytes(16))
    dec = frames.PartialDecoder(frame, wrong, pieces, step)
    assert dec.unmatched and not dec.whole_ok
    dec.need(len(raw))
    assert bytes(dec.buf) == raw and not dec.whole_ok
    # every byte of the stored payload flipped in turn at a sample of offsets: never a
    # wrong byte, always Corrupt or the right ones
    for off in range(frag.hd.body, len(frame), len(frame) // 97):
        bad = bytearray(frame)
        bad[off] ^= 0x01
        try:
            dec = frames.PartialDecoder(bytes(bad), frag.hd, pieces, step)
            dec.need(len(raw))
        except Corrupt:
            continue
        pytest.fail(f"a flip at {off} read without error")


def test_a_part_of_a_file_in_a_block_checked_as_stored_is_read_without_decoding_the_block(tmp_path):
    """The mount reads a large file in parts (whole=True: from fragments whose ranges are
    vouched for). A block checked decoded had to be decoded whole for that; one checked
    as stored is vouched for before its decode, so a part near the start decodes a step."""
    from stowfs.store import compaction
    raw = b"".join(json.dumps(openai_form(r)).encode() for r in sharegpt_records(900))
    big = (raw * (12 * 1024 * 1024 // len(raw) + 1))[:12 * 1024 * 1024]
    with Store(tmp_path / "s") as s:
        s.put("big.json", big)
        compaction.compact(s)
        r = s.reader("big.json")
        assert r.read(4096, 131072) == big[4096:4096 + 131072]
        decs = list(s.cache._d.values())
        assert len(decs) == 1 and decs[0].whole_ok and len(decs[0].buf) < len(big) // 4
        assert r.read(len(big) - 5000, 131072) == big[-5000:]
        assert s.get("big.json") == big


def test_the_next_block_is_decoded_ahead_when_it_fits_beside_the_one_being_read(tmp_path):
    """In the mount, once a reader's block is decoded ahead, the next block's first
    fragment is too, if the cache holds it without dropping anything (a store's last,
    partly filled block): a large file that goes on into it, or the last files, find it
    decoded. A next block as large as the first is left for its reader (it would push
    the one being read out of the cache)."""
    from stowfs.store import blocks, compaction, zstream
    if not zstream.available():
        pytest.skip("the system's libzstd.so.1 is not there")
    records = sharegpt_records(300)
    names = [f"c/{i:04d}.json" for i in range(len(records))]
    data = {n: json.dumps(openai_form(r)).encode() for n, r in zip(names, records)}
    with Store(tmp_path / "probe") as s:
        for n in names:
            s.put(n, data[n])
        compaction.compact(s)
        stream = s.stats()["stream_bytes"]
    for share, decoded in ((0.85, 2), (0.5, 1)):        # a small tail block; a full next one
        path = tmp_path / f"s{share}"
        with Store(path, block_size=int(stream * share)) as s:
            for n in names:
                s.put(n, data[n])
            compaction.compact(s)
        with Store(path, cache_bytes=1 << 20) as s:     # the bound at its floor: 1.25 blocks
            s.decode_blocks_ahead()
            assert s.reader(names[0]).read(0, 100) == data[names[0]][:100]
            blocks._ahead_pool().submit(lambda: None).result()
            decs = sorted(s.cache._d.values(), key=lambda d: d.hd.key)
            assert len(decs) == decoded and all(d.done for d in decs)
            assert [d.hd.key >> 16 for d in decs] == list(range(decoded))
            assert [s.get(n) for n in names] == [data[n] for n in names]


# ------------------------------------------------------------ LMDB's reader table
# lmdb/lock.mdb (8 KiB, no data) is there only while a process has the store open: the
# last writable process to close removes it, when it finds itself alone (lmdbenv.Env.close).

HOLD_OPEN = """
import sys
from stowfs.store import Store
s = Store(sys.argv[1], readonly=sys.argv[2] == "ro")
print("open", flush=True)
sys.stdin.readline()
s.close()
"""


def _cli(*args):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "stowfs", *map(str, args)], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    return p


def test_a_closed_store_keeps_no_lmdb_lock_file_and_opens_again(tmp_path):
    src = corpus_dir() / "claude-code-spotter" / "transcripts"
    store, lock = tmp_path / "s", tmp_path / "s" / "lmdb" / "lock.mdb"
    _cli("ingest", store, src, "-q")
    assert sorted(p.name for p in (store / "lmdb").iterdir()) == ["data.mdb"]
    name, data = "transcripts/short.jsonl", (src / "short.jsonl").read_bytes()
    with Store(store) as s:                             # LMDB makes it again, private
        assert lock.exists() and os.stat(lock).st_mode & 0o777 == 0o600
        assert s.get(name) == data
        s.put("again.jsonl", data)
    assert not lock.exists()                            # alone at close: removed
    assert _cli("cat", store, "again.jsonl").stdout == data
    with Store(store, readonly=True) as s:
        assert s.get(name) == data and lock.exists()
    assert not lock.exists()                            # a read-only open alone: removed too
    _cli("stats", store)
    assert not lock.exists()
    _cli("compact", store)                              # the compacting copy reopens it
    assert not lock.exists()
    with Store(store) as s:
        assert s.get("again.jsonl") == data and verify(s)["ok"]
    assert not lock.exists()


@pytest.mark.parametrize("other", ["rw", "ro"])
def test_the_lmdb_lock_file_stays_while_another_process_has_the_store_open(tmp_path, other):
    import subprocess
    import sys
    store, lock = tmp_path / "s", tmp_path / "s" / "lmdb" / "lock.mdb"
    with Store(store) as s:
        s.put("a.json", b'{"a": 1}')
    assert not lock.exists()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(store), other],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"open\n"
        with Store(store) as s:
            s.put("b.json", b'{"b": 2}')
        assert lock.exists()                    # the other process still reads through it
        with Store(store, readonly=True) as s:
            assert s.get("a.json") == b'{"a": 1}'
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert not lock.exists()                    # the last one to close removes it
    with Store(store) as s:
        assert s.get("b.json") == b'{"b": 2}'
    assert not lock.exists()


def test_a_store_without_its_lmdb_lock_file_opens_read_only_on_a_read_only_mount(tmp_path):
    """LMDB runs a read-only open without the lock file where it cannot make one (EROFS)."""
    import subprocess
    store, ro = tmp_path / "s", tmp_path / "ro"
    with Store(store) as s:
        s.put("a.json", b'{"a": 1}')
    assert not (store / "lmdb" / "lock.mdb").exists()
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(store), str(ro)], capture_output=True).returncode:
        pytest.skip("needs a bind mount (root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        with Store(ro, readonly=True) as s:
            assert s.get("a.json") == b'{"a": 1}'
        assert not (ro / "lmdb" / "lock.mdb").exists()
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
