"""Storing files that grow: piece lists shared between versions, near-duplicate deltas."""
from __future__ import annotations

import pytest

from realdata import corpus_dir
from stowfs.pieces import (PieceList, _pack_views_v1, pack_views, unpack_views)
from stowfs.planner import plan_bytes
from stowfs.store import Store

SESSION = ("claude-code-spotter", "transcripts", "4d5611e5-241a-462a-8d15-5122611a9569.jsonl")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def session_lines() -> list[bytes]:
    return corpus_dir().joinpath(*SESSION).read_bytes().splitlines(keepends=True)


def unique_bytes(store: Store, kind: str) -> int:
    return store.stats()["by_kind"].get(kind, {}).get("unique_bytes", 0)


def test_grown_session_shares_its_piece_list_chunks(store):
    lines = session_lines()
    v1, v2 = b"".join(lines[:-5]), b"".join(lines)
    store.put("day1/s.jsonl", v1)
    before = unique_bytes(store, "pieces")
    store.put("day2/s.jsonl", v2)
    added = unique_bytes(store, "pieces") - before
    # the whole piece list is tens of KB; a grown version adds the chunks at its end
    assert before > 30_000
    assert added < before / 4
    assert store.get("day1/s.jsonl") == v1 and store.get("day2/s.jsonl") == v2


def test_piece_list_format_round_trips_and_format_1_still_reads():
    data = b"".join(session_lines()[:200])
    plan = plan_bytes("s.jsonl", data, 0.0)
    for blob in (pack_views(plan.original, plan.text), _pack_views_v1(plan.original, plan.text)):
        views = unpack_views(blob)
        for got, want in ((views["o"], plan.original), (views["t"], plan.text)):
            assert isinstance(got, PieceList)
            assert (got.hashes, got.skel_hashes, got.gaps, got.outlens, got.styles, got.size) == \
                (want.hashes, want.skel_hashes, want.gaps, want.outlens, want.styles, want.size)


@pytest.mark.parametrize("cut", [1, 2, 7, 50])
def test_damaged_piece_list_is_refused(cut):
    plan = plan_bytes("s.jsonl", b"".join(session_lines()[:50]), 0.0)
    blob = pack_views(plan.original, plan.text)
    with pytest.raises(ValueError):
        unpack_views(blob[:-cut])


# ---------------------------------------------------------------- near-duplicate deltas

def real_text(min_len: int = 6000) -> str:
    """A long real assistant message from the ShareGPT subset."""
    import json
    recs = json.loads((corpus_dir() / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_text())
    for rec in recs:
        for m in rec["conversations"]:
            if len(m["value"].encode()) >= min_len and m["value"].count(" ") > 500:
                return m["value"]
    pytest.skip("no long message in the corpus subset")


def as_file(system: str, user: str = "Summarise the document above in three bullet points.") -> bytes:
    import json
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": system},
                                                      {"role": "user", "content": user}]},
                      indent=2).encode()


def two_words_changed(text: str) -> str:
    words = text.split(" ")
    words[40], words[len(words) // 2] = "Wednesday", "2026-11-22"
    return " ".join(words)


def stored_pair(store: Store) -> tuple[str, str]:
    """A real text as a.json and, as b.json, the same text with two words changed."""
    canonical = real_text()
    variant = two_words_changed(canonical)
    store.put("a.json", as_file(canonical))
    store.put("b.json", as_file(variant))
    return canonical, variant


def seg_entry(store: Store, content: str):
    from stowfs.codec import segment_hash
    from stowfs.store import _seg_parse
    v = store._read(lambda txn: txn.get(segment_hash(content.encode()), db=store._segs))
    return None if v is None else _seg_parse(v)


def test_variant_differing_in_two_tokens_is_a_delta_that_round_trips(store):
    from stowfs.maintenance import verify
    canonical = real_text()
    variant = two_words_changed(canonical)
    a, b = as_file(canonical), as_file(variant)
    store.put("a.json", a)
    r = store.put("b.json", b)
    (_blk, _slot, refs, _kind, length), delta = seg_entry(store, variant)
    assert delta is not None, "the variant was stored whole"
    depth, base = delta
    assert depth == 1 and length == len(variant.encode())
    (_, _, base_refs, _, _), _ = seg_entry(store, canonical)
    assert base_refs == 2                    # file a + the delta
    assert r.new_bytes >= len(variant.encode())
    stats = store.stats()
    assert stats["deltas"] == 1 and stats["delta_bytes"] < 0.05 * len(variant.encode())
    assert store.get("a.json") == a and store.get("b.json") == b
    assert verify(store)["ok"]


def test_removing_the_base_file_never_breaks_the_delta(store):
    from stowfs.maintenance import gc, verify
    canonical, variant = stored_pair(store)
    store.remove("a.json")
    gc(store)
    assert seg_entry(store, canonical) is not None      # kept for the delta
    assert store.get("b.json") == as_file(variant)
    assert verify(store)["ok"]
    store.remove("b.json")
    freed = gc(store)
    assert seg_entry(store, canonical) is None and seg_entry(store, variant) is None
    assert freed["segments_freed"] >= 2
    assert store.stats()["unique_segments"] == 0 and verify(store)["ok"]


def test_delta_chains_stay_bounded_and_compact_makes_them_plain(tmp_path):
    from stowfs import limits
    from stowfs.maintenance import compact, verify
    text = real_text()
    versions = [text]
    for i in range(8):
        words = versions[-1].split(" ")
        words[10 + 37 * i] = f"edit{i}"
        versions.append(" ".join(words))
    with Store(tmp_path / "s") as s:
        for i, v in enumerate(versions):
            s.put(f"v{i}.json", as_file(v))
        depths = [(seg_entry(s, v)[1] or (0,))[0] for v in versions]
        assert max(depths) <= limits.DELTA_MAX_DEPTH and sum(d > 0 for d in depths) >= 6
        for i, v in enumerate(versions):
            assert s.get(f"v{i}.json") == as_file(v)
    compact(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        assert all(seg_entry(s, v)[1] is None for v in versions)
        assert s.stats()["deltas"] == 0
        for i, v in enumerate(versions):
            assert s.get(f"v{i}.json") == as_file(v)
        assert verify(s)["ok"]


def test_a_damaged_base_makes_the_delta_fail_loudly(store):
    from stowfs.codec import build_pack, decode_frame, encode_frame, parse_pack
    from stowfs.errors import Corrupt
    from stowfs.maintenance import verify
    from stowfs.store import _u64
    canonical, variant = stored_pair(store)
    (blk, slot, *_), _ = seg_entry(store, canonical)

    def damage(txn):
        raw = decode_frame(txn.get(_u64(blk), db=store._blocks), store._dicts)
        offs = parse_pack(raw)
        segs = [bytearray(raw[offs[i]:offs[i + 1]]) for i in range(len(offs) - 1)]
        segs[slot][100] ^= 0x01
        txn.put(_u64(blk), encode_frame(build_pack([bytes(x) for x in segs]), store._dicts, 3), db=store._blocks)
    store._write(damage)
    store._cache = type(store._cache)(store._cache.limit)
    with pytest.raises(Corrupt):
        store.get("b.json")
    report = verify(store)
    assert not report["ok"] and "b.json" in report["damaged_files"]


def test_threshold_zero_turns_deltas_off(tmp_path):
    canonical = real_text()
    with Store(tmp_path / "s", near_threshold=0) as s:
        s.put("a.json", as_file(canonical))
        s.put("b.json", as_file(two_words_changed(canonical)))
        assert s.stats()["deltas"] == 0
    with pytest.raises(Exception):
        Store(tmp_path / "s", near_threshold=1.5)
