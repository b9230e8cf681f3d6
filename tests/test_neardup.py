"""MinHash signatures and LSH banding (stowfs/neardup.py) on real text."""
from __future__ import annotations

import random

import pytest

from stowfs import neardup as nd

from realdata import corpus_dir


@pytest.fixture(scope="module")
def text() -> bytes:
    return (corpus_dir() / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_bytes()


def _edit(data: bytes, n: int, rnd: random.Random) -> bytes:
    v = bytearray(data)
    for _ in range(n):
        p = rnd.randrange(len(v))
        v[p:p + 1] = b"#"
    return bytes(v)


def test_signature_is_deterministic_and_fixed_size(text):
    s = nd.signature(text[:5000])
    assert s == nd.signature(bytes(text[:5000]))
    assert len(s) == 4 * nd.NUM_BINS


def test_near_duplicates_score_high_and_share_a_band(text):
    rnd = random.Random(7)
    for _ in range(20):
        o = rnd.randrange(len(text) - 8192)
        base = text[o:o + 8192]
        var = _edit(base, 3, rnd)
        a, b = nd.signature(base), nd.signature(var)
        assert nd.similarity(a, b) >= 0.85
        assert set(nd.band_keys(a)) & set(nd.band_keys(b))


def test_unrelated_text_scores_low(text):
    a = nd.signature(text[10_000:18_000])
    b = nd.signature(text[900_000:908_000])
    assert nd.similarity(a, b) < 0.3
    assert not set(nd.band_keys(a)) & set(nd.band_keys(b))


def test_similarity_follows_the_amount_of_change(text):
    base = text[300_000:316_384]
    rnd = random.Random(3)
    sims = [nd.similarity(nd.signature(base), nd.signature(_edit(base, n, rnd))) for n in (1, 50, 400)]
    assert sims[0] > sims[1] > sims[2]


def test_lsh_finds_variants_above_threshold(text):
    rnd = random.Random(11)
    lsh = nd.LSH(threshold=0.8)
    bases = [text[o:o + 4096] for o in range(0, 40 * 4096, 4096)]
    for i, b in enumerate(bases):
        lsh.add(i, nd.signature(b))
    assert len(lsh) == len(bases)
    hits = 0
    for i, b in enumerate(bases):
        found = lsh.candidates(nd.signature(_edit(b, 2, rnd)))
        hits += i in found
        assert all(s >= 0.8 for s in found.values())
        assert set(found) <= {i}
    assert hits >= 38


def test_tiny_inputs_have_no_bands():
    assert nd.band_keys(nd.signature(b"short")) == []
    with pytest.raises(ValueError):
        nd.LSH(threshold=0)


def test_planning_workers_sign_only_segments_the_store_lacks(tmp_path):
    """Plans made for a store (worker processes pass its directory) carry MinHash
    signatures only for segments it does not hold yet: a session stored again after it
    grew needs none for its old turns, which are exact duplicates."""
    from stowfs.planner import plan_paths
    from stowfs.store import Store
    src = max((corpus_dir() / "claude-code-spotter").rglob("*.jsonl"), key=lambda p: p.stat().st_size)
    lines = src.read_bytes().splitlines(keepends=True)
    old, grown = tmp_path / "old.jsonl", tmp_path / "grown.jsonl"
    old.write_bytes(b"".join(lines[: len(lines) // 2]))
    grown.write_bytes(b"".join(lines))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def planned(path):      # in a spawned worker, as Store.put_many plans
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(plan_paths, [("g.jsonl", str(grown), 0.0)], path).result()[0]
    with Store(tmp_path / "s") as s:
        fresh = planned(str(s.path))
        s.put_file("old.jsonl", old)
        again = planned(str(s.path))
        stored = set(s._read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=s._segs)]))
    assert fresh.sigs and set(fresh.sigs) <= set(fresh.segments)
    assert again.sigs and not set(again.sigs) & stored      # nothing signed twice
    assert set(again.sigs) == {h for h in fresh.sigs if h not in stored}


def test_planning_worker_follows_the_store_as_it_grows(tmp_path):
    """A worker's view of the store was opened when the file was small; after the writer
    grows the data file past that view's map, the worker still plans (it adopts the
    map size instead of failing the ingest)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    from stowfs.planner import plan_paths
    from stowfs.store import Store
    src = max((corpus_dir() / "claude-code-spotter").rglob("*.jsonl"), key=lambda p: p.stat().st_size)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    with Store(tmp_path / "s") as s, \
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        first = pool.submit(plan_paths, [("a.jsonl", str(src), 0.0)], str(s.path)).result()[0]
        s.put_file("big.bin", big)
        assert (s.path / "lmdb" / "data.mdb").stat().st_size > 20 << 20
        again = pool.submit(plan_paths, [("a.jsonl", str(src), 0.0)], str(s.path)).result()[0]
    assert first.sigs and again.sigs == first.sigs
