"""The store core, without FUSE: lossless round trips on real data, dedup across formats,
removal, gc, compact, verify."""
from __future__ import annotations

import hashlib
import json

import pytest

from realdata import corpus_dir, corpus_files, openai_form, sharegpt_records
from stowfs.codec import segment_hash
from stowfs.errors import Exists, InvalidName, NotFound
from stowfs.maintenance import compact, gc, verify
from stowfs.store import Store, _seg_delta, _seg_fields, _u64


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def refcount(store: Store, content: bytes):
    """How many stored files use content (its refcount less the deltas based on it)."""
    h = segment_hash(content)
    v = store._read(lambda txn: txn.get(h, db=store._segs))
    if v is None:
        return None
    deltas = store._read(lambda txn: sum(1 for _, e in txn.cursor(db=store._segs)
                                         if (_seg_delta(e) or (0, b""))[1] == h))
    return _seg_fields(v)[2] - deltas


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
        assert info.sha256 == hashlib.sha256(data).hexdigest()
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
    for i, rec in enumerate(recs):
        data = json.dumps(openai_form(rec), indent=2, ensure_ascii=False).encode()
        originals[f"chats/{i:05d}.json"] = data
        store.put(f"chats/{i:05d}.json", data)
    jsonl = b"".join(json.dumps(openai_form(r)).encode() + b"\n" for r in recs)
    store.put("chats.jsonl", jsonl)
    for name, data in originals.items():
        assert store.get(name) == data
    assert store.get("chats.jsonl") == jsonl
    s = store.stats()
    # the JSONL repeats every message of the 2,000 files: it must cost (almost) nothing new
    assert s["dedup_ratio"] > 1.8
    assert s["messages"] >= 2 * sum(len(r["conversations"]) for r in recs)


def test_one_conversation_in_four_formats_is_stored_once(store):
    rec = json.loads((corpus_dir() / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_text())[3]
    oa = openai_form(rec)
    forms = {
        "pretty.json": json.dumps(oa, indent=2, ensure_ascii=False),
        "compact.json": json.dumps(oa, separators=(",", ":")),          # \u escapes, no spaces
        "sharegpt.json": json.dumps(rec, indent=4),
        "keys-reordered.json": json.dumps({"messages": [{"content": m["content"], "role": m["role"]}
                                                        for m in oa["messages"]], "model": oa["model"]}),
    }
    for name, text in forms.items():
        store.put(name, text.encode())
    for name, text in forms.items():
        assert store.get(name) == text.encode()
    for m in rec["conversations"]:
        value = m["value"].encode()
        if len(value) >= 48:
            assert refcount(store, value) == len(forms), m["value"][:60]


def test_grown_claude_session_costs_only_its_new_turns(store):
    p = corpus_dir() / "claude-code-spotter" / "transcripts" / "4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
    lines = p.read_bytes().splitlines(keepends=True)
    v1 = b"".join(lines[:-3])
    v2 = b"".join(lines)
    store.put("day1/session.jsonl", v1)
    r2 = store.put("day2/session.jsonl", v2)
    new_lines = sum(map(len, lines[-3:]))
    # the new turns, plus the skeleton chunk(s) around the end of the file
    assert r2.new_bytes < new_lines + 4 * 64 * 1024
    assert r2.dedup_bytes > 0.8 * len(v1)
    assert store.get("day1/session.jsonl") == v1 and store.get("day2/session.jsonl") == v2


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
    # every spelling json.dumps writes (one line, compact, one id a line at any indent)
    # shares one segment of the ids
    from stowfs.packing import encode_uvarints
    assert refcount(store, encode_uvarints(ids)) == 4
    assert refcount(store, encode_uvarints(ids[::-1])) == 4


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
    freed = gc(store)
    assert freed["segments_freed"] >= 1
    s = store.stats()
    assert s["unique_segments"] == 0 and s["blocks"] == 0
    assert verify(store)["ok"]


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


def test_index_bitmaps_across_shards_removal_and_format_1_entries(store, tmp_path):
    """The model/app/day index keeps a bitmap per 256 file ids: files on both sides of a
    shard boundary are listed, removing the last file of a value drops the value, and an
    entry written by format 1 (one key per file) still lists and is removed with its file."""
    from stowfs.store import _u64
    path = corpus_dir() / "agent-history-redacted" / "claude-session-01.jsonl"
    src = path.read_bytes()
    names = [f"s/{i:03d}.jsonl" for i in range(300)]
    for _ in store.put_many([(n, path, None) for n in names], workers=0):
        pass
    assert [i.name for i in store.index_files("app", "claude-code")] == names
    entries = store._read(lambda txn: [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store._index)])
    assert len(entries) <= 2 * 3 and all(len(v) == 32 for _, v in entries)
    for n in names[:299]:
        store.remove(n)
    assert [i.name for i in store.index_files("app", "claude-code")] == names[299:]
    store.remove(names[299])
    assert "claude-code" not in store.index_values("app")
    assert store._read(lambda txn: txn.stat(store._index)["entries"]) == 0
    # a store of format 1: one key per file, ending in the file id, value empty
    for n in ("old/a.jsonl", "old/b.jsonl"):
        store.put(n, src)
    fids = sorted(store.info(n).file_id for n in ("old/a.jsonl", "old/b.jsonl"))

    def to_format_1(txn):
        for k, _ in list(txn.cursor(db=store._index)):
            txn.delete(k, db=store._index)
            for fid in fids:
                txn.put(bytes(k[:-8]) + _u64(fid), b"", db=store._index)
        txn.put(b"format", _u64(1), db=store._meta)
    store._write(to_format_1)
    path_ = store.path
    store.close()
    with Store(path_, readonly=True) as ro:
        assert [i.name for i in ro.index_files("app", "claude-code")] == ["old/a.jsonl", "old/b.jsonl"]
    with Store(path_) as rw:          # opened for writing: converted to bitmaps
        assert all(len(v) == 32 for _, v in rw._read(lambda txn: list(txn.cursor(db=rw._index))))
        assert [i.name for i in rw.index_files("app", "claude-code")] == ["old/a.jsonl", "old/b.jsonl"]
        rw.remove("old/a.jsonl")
        assert [i.name for i in rw.index_files("app", "claude-code")] == ["old/b.jsonl"]


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
        headers = s._read(lambda txn: [h["n"] for h in s._iter_headers(txn)])
        assert sorted(headers) == sorted(i.name for i in s.iter_files()), "no orphaned header"
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
        assert again.new_bytes < 0.2 * max(again.size, 1) + 4096


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


def test_compact_compresses_headers_and_everything_still_works(tmp_path):
    recs = sharegpt_records(120)
    path = tmp_path / "store"
    originals = {f"c/{i:03d}.json": json.dumps(openai_form(r), indent=2).encode() for i, r in enumerate(recs)}
    with Store(path) as s:
        for name, data in originals.items():
            s.put(name, data)
        before = {n: s.info(n) for n in originals}
    compact(path)
    with Store(path) as s:
        entries = s._read(lambda txn: [bytes(v) for _, v in txn.cursor(db=s._mans)])
        assert len(entries) == 1 and entries[0][:1] == b"\1", "one compressed group of headers"
        assert all("pb" in h and "pl" not in h for h in s._read(lambda txn: list(s._iter_headers(txn)))), \
            "small piece lists no other file shares move into their headers"
        assert {n: s.info(n) for n in originals} == before
        assert all(s.get(n) == data for n, data in originals.items())
        assert [n for n, _ in s.listdir("c")] == sorted(n.split("/")[1] for n in originals)
        assert len(s.index_files("model", "gpt-3.5-turbo")) == len(originals)
        s.rename("c/000.json", "d/moved.json")
        assert s.get("d/moved.json") == originals["c/000.json"]
        s.remove("c/001.json")
        r = s.put("new.json", originals["c/002.json"])        # new header, same dictionary
        assert s.info("new.json").sha256 == before["c/002.json"].sha256 and r.new_bytes < 4096
        assert s._read(lambda txn: txn.get(b"\0" * 7 + b"\1", db=s._mans)) is None  # in the group
        raw = s._read(lambda txn: txn.get(_u64(s.info("new.json").file_id), db=s._mans))
        assert raw is not None and raw[:1] == b"\0", "a later header: its own entry, compressed"
        s.put("c/003.json", originals["c/004.json"])          # replace a grouped file
        assert s.get("c/003.json") == originals["c/004.json"]
        for n in list(originals)[5:]:                          # empty the group
            s.remove(n)
        assert [i.name for i in s.iter_files("c/")] == ["c/002.json", "c/003.json", "c/004.json"]
        assert verify(s)["ok"]
        gc(s)
        assert verify(s)["ok"]
        for n in ("c/002.json", "c/003.json", "c/004.json", "d/moved.json", "new.json"):
            s.remove(n)
        assert s._read(lambda txn: txn.stat(s._mans)["entries"]) == 0
        assert verify(s)["ok"] and s.stats()["files"] == 0
    compact(path)
    with Store(path) as s:
        assert verify(s)["ok"] and list(s.iter_files()) == []


def test_block_cache_makes_room_before_a_block_is_decoded():
    """reserve(n) drops what put() of n bytes would drop, so the cache and the block being
    decoded never exceed the limit together; the blocks kept are the same."""
    from stowfs.store import _BlockCache
    a, b = _BlockCache(10), _BlockCache(10)
    for c in (a, b):
        for key in range(3):
            c.put(key, (b"x" * 3, [0, 3]))
        c.get(0)                              # 1 is now the least recently used
    a.reserve(4)
    assert list(a._d) == [2, 0] and a._size == 6
    a.put(3, (b"y" * 4, [0, 4]))
    b.put(3, (b"y" * 4, [0, 4]))
    assert list(a._d) == list(b._d) == [2, 0, 3] and a._size == b._size == 10
    a.reserve(11)                             # more than the limit: kept alone, so all go
    assert list(a._d) == [] and a._size == 0
    a.put(4, (b"z" * 11, [0, 11]))
    assert a.get(4) is not None and a._size == 11
    a.put(5, (b"w" * 12, [0, 12]))            # the next large one replaces it
    assert list(a._d) == [5] and a._size == 12
    a.put(6, (b"v" * 3, [0, 3]))              # a small one pushes it out, as any LRU would
    assert list(a._d) == [6] and a._size == 3
