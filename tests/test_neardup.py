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
