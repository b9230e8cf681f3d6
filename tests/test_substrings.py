"""The shared-substring registry (Stowken's contract) and dictionary rotation."""
from __future__ import annotations

import json
import random
import struct

import pytest

from realdata import corpus_dir
from stowfs import substrings
from stowfs.codec import frame_dict_id
from stowfs.maintenance import compact, gc, verify
from stowfs.store import Store


def prompt_text() -> str:
    """About 250 tokens of real text: a ShareGPT reply of 1,000-1,400 bytes."""
    recs = json.loads((corpus_dir() / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_text())
    for rec in recs:
        for m in rec["conversations"]:
            if 1000 <= len(m["value"].encode()) <= 1400 and m["value"].count(" ") > 150:
                return m["value"]
    pytest.skip("no suitable message in the corpus subset")


def conversations(n: int, seed: int = 1) -> list[bytes]:
    """n chat files whose system prompts are one real text with a few words changed
    (a date, a user name, a ticket number), each with its own real user question."""
    recs = json.loads((corpus_dir() / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_text())
    questions = [m["value"] for r in recs for m in r["conversations"][:1] if 200 < len(m["value"]) < 2000]
    base = prompt_text().split(" ")
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        w = list(base)
        for _ in range(3):
            w[rnd.randrange(len(w))] = f"2026-11-{rnd.randrange(1, 29):02d}"
        out.append(json.dumps({"model": "gpt-4o", "messages": [
            {"role": "system", "content": " ".join(w)},
            {"role": "user", "content": questions[i % len(questions)]}]}, indent=2).encode())
    return out


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s", near_threshold=0)     # substrings alone, no deltas
    yield s
    s.close()


def test_promotion_finds_the_shared_runs_of_varied_prompts():
    files = conversations(30)
    prompts = [json.loads(f)["messages"][0]["content"].encode() for f in files]
    found = substrings.promote(prompts, min_occurrences=5)
    assert found
    for s, n in found:
        assert len(s) >= substrings.MIN_TEXT_BYTES and n >= 5
        assert sum(1 for p in prompts if s in p) == n
    # the promoted runs cover most of the prompt that all variants share
    assert sum(len(s) for s, _ in found) > 0.5 * len(prompts[0])


def test_promotion_of_token_ids():
    from stowfs.packing import encode_uvarints
    rnd = random.Random(5)
    prefix = [rnd.randrange(50_000) for _ in range(40)]
    samples = [encode_uvarints(prefix + [rnd.randrange(50_000) for _ in range(30)]) for _ in range(12)]
    found = substrings.promote(samples, min_occurrences=10, window=substrings.MIN_TOKEN_BYTES, binary=True)
    assert found and all(len(s) >= substrings.MIN_TOKEN_BYTES for s, _ in found)
    assert any(s in encode_uvarints(prefix) or encode_uvarints(prefix[5:]) in s for s, _ in found)


def test_empty_store_trains_to_nothing(store):
    assert store.train_substrings(sample_count=100, min_occurrences=3) == 0
    assert store.substrings() == []


def test_train_store_reopen_compact_gc(tmp_path):
    files = conversations(30)
    path = tmp_path / "s"
    with Store(path, near_threshold=0) as s:
        for i, f in enumerate(files[:29]):
            s.put(f"day1/c{i}.json", f)
        blocks_before = s._read(lambda txn: [bytes(v) for v in txn.cursor(db=s._blocks).iternext(keys=False)])
        n = s.train_substrings(sample_count=1000, min_occurrences=5)
        assert n > 0
        reg = s.substrings()
        assert len(reg) == n
        assert all(len(r["bytes"]) >= substrings.MIN_TEXT_BYTES and r["samples"] >= 5 for r in reg)
        # training changes no existing frame
        assert s._read(lambda txn: [bytes(v) for v in txn.cursor(db=s._blocks).iternext(keys=False)]) == blocks_before
        # a conversation stored after training round-trips, through the substrings
        r = s.put("day2/new.json", files[29])
        assert s.get("day2/new.json") == files[29]
        assert s.stats()["substring_blocks"] >= 1
    with Store(path, near_threshold=0) as s:                  # reopen keeps the registry
        assert s.substrings() == reg
        before = s.stats()["block_bytes"]
        result = s.compact_substrings()
        assert result["rewritten"] > 0 and result["skipped_substring_blocks"] >= 1
        assert s.stats()["block_bytes"] < before
        for i, f in enumerate(files[:29]):
            assert s.get(f"day1/c{i}.json") == f
        assert gc(s) is not None
        assert s.gc_substrings() == 0                           # still used: kept
        assert s.substrings() == reg
        assert verify(s)["ok"]
        for name in [i.name for i in s.iter_files()]:
            s.remove(name)
        gc(s)
        assert s.gc_substrings() == 1 and s.substrings() == []
        assert verify(s)["ok"]


def test_compact_substrings_skips_delta_frames(tmp_path):
    """A store with deltas: compact_substrings rewrites blocks, never a delta's bytes."""
    from stowfs.store import _seg_parse
    files = conversations(30)
    with Store(tmp_path / "s") as s:
        long = prompt_text() * 3
        s.put("a.json", json.dumps({"messages": [{"role": "system", "content": long}]}).encode())
        s.put("b.json", json.dumps({"messages": [{"role": "system", "content": long.replace("the", "teh", 2)}]}).encode())
        for i, f in enumerate(files):
            s.put(f"c{i}.json", f)
        deltas = s._read(lambda txn: {bytes(h): bytes(v) for h, v in txn.cursor(db=s._segs)
                                     if _seg_parse(v)[1] is not None})
        assert deltas
        s.train_substrings(sample_count=1000, min_occurrences=5)
        s.compact_substrings()
        for h, v in deltas.items():
            now = s._read(lambda txn: bytes(txn.get(h, db=s._segs)))
            assert _seg_parse(now)[1] == _seg_parse(v)[1]
        assert verify(s)["ok"]


def test_dictionaries_rotate_when_content_drifts(tmp_path):
    from realdata import sharegpt_records, openai_form
    chats = [json.dumps(openai_form(r), indent=2).encode() for r in sharegpt_records(400)]
    session = (corpus_dir() / "claude-code-spotter" / "transcripts" / "tool_heavy.jsonl").read_bytes()
    aider = (corpus_dir() / "aider-chat-history" / "chat-history.md").read_bytes()
    with Store(tmp_path / "s", near_threshold=0) as s:
        for i, c in enumerate(chats):
            s.put(f"chats/{i}.json", c)
        assert s._read(s._ingest_dict) is not None, "no dictionary was trained from 400 chats"
        s.train(rotate=True)           # more content than at the first training: may be better
        first = s._read(s._ingest_dict)
        assert s.train(rotate=True) is None              # same content: no drift, kept
        assert s._read(s._ingest_dict) == first
        s.put("aider.md", aider)
        s.put("session.jsonl", session)
        second = s.train(rotate=True)                     # markdown and tool output now
        assert second is not None and s._read(s._ingest_dict) == second
        used = s._read(lambda txn: {frame_dict_id(f) for f in txn.cursor(db=s._blocks).iternext(keys=False)})
        assert first in used                               # old blocks still name it
        assert s.stats()["dictionaries"] >= 2
        for i, c in enumerate(chats[:50]):
            assert s.get(f"chats/{i}.json") == c
    compact(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        used = s._read(lambda txn: {frame_dict_id(f) for f in txn.cursor(db=s._blocks).iternext(keys=False)})
        kept = s._read(lambda txn: {struct.unpack(">I", k)[0] for k in txn.cursor(db=s._dictdb).iternext(values=False)})
        assert first not in kept or first in used          # dropped once no block needs it
        assert s.get("aider.md") == aider and s.get("session.jsonl") == session
        assert verify(s)["ok"]


def test_train_command(tmp_path):
    import subprocess
    import sys
    store = tmp_path / "s"
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(conversations(30)):
        (src / f"c{i}.json").write_bytes(f)
    cli = [sys.executable, "-m", "stowfs"]
    subprocess.run([*cli, "ingest", str(store), str(src), "-q", "--near-threshold", "0"], check=True)
    p = subprocess.run([*cli, "train", str(store), "--json", "--min-occurrences", "5"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["substrings"] > 0 and out["substring_bytes"] >= substrings.MIN_TEXT_BYTES
    with Store(store) as s:
        assert len(s.substrings()) == out["substrings"]
    p = subprocess.run([*cli, "train", str(store), "--min-occurrences", "1"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = subprocess.run([*cli, "ingest", str(store), str(src), "--near-threshold", "2"], capture_output=True, text=True)
    assert p.returncode == 2 and "threshold" in p.stderr
