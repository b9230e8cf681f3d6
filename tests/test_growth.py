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
