"""The benchmark corpus builders (tools/benchlib/corpora.py) are deterministic and write
valid JSON / JSONL made of the real data they are built from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

from benchlib import corpora  # noqa: E402


def _sharegpt() -> Path:
    try:
        return corpora.sharegpt_path()
    except corpora.CorpusUnavailable as e:
        pytest.skip(f"ShareGPT data absent: {e}")


def _shared() -> Path:
    shared = corpora.shared_dir()
    if not (shared / "corpus" / "claude-code-spotter").is_dir():
        pytest.skip(f"real sessions absent: {shared}/corpus/claude-code-spotter not found")
    return shared


def _build(kind, tmp_path, name, seed, size=None):
    return corpora.build(kind, tmp_path / name, seed=seed, quick=True, size=size)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind,size", [("chats", 12), ("api-log", 4)])
def test_sharegpt_corpora_are_deterministic(kind, size, tmp_path):
    _sharegpt()
    a = _build(kind, tmp_path, "a", 7, size)
    b = _build(kind, tmp_path, "b", 7, size)
    c = _build(kind, tmp_path, "c", 8, size)
    assert a["digest"] == b["digest"]
    assert a["digest"] != c["digest"]
    assert a["files"] == len(_files(tmp_path / "a")) > 0
    assert a["bytes"] == sum(p.stat().st_size for p in _files(tmp_path / "a"))
    for pa in _files(tmp_path / "a"):
        rel = pa.relative_to(tmp_path / "a")
        assert pa.read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_chats_are_openai_style_json(tmp_path):
    _sharegpt()
    st = _build("chats", tmp_path, "c", 3, 12)
    assert st["files"] == 12
    for p in _files(tmp_path / "c"):
        text = p.read_text(encoding="utf-8")
        doc = json.loads(text)
        assert text.startswith('{\n  "id"')  # pretty-printed
        assert doc["messages"], p
        for m in doc["messages"]:
            assert m["role"] in ("user", "assistant", "system")
            assert isinstance(m["content"], str)


def test_api_log_requests_repeat_the_history(tmp_path):
    _sharegpt()
    st = _build("api-log", tmp_path, "l", 3, 4)
    assert st["conversations"] == 4 and st["files"] == st["requests"] >= 8
    by_history: dict[str, list[dict]] = {}
    for p in _files(tmp_path / "l"):
        doc = json.loads(p.read_bytes())
        req, resp = doc["request"], doc["response"]
        assert req["messages"][0]["role"] == "system"
        assert len(req["messages"][0]["content"]) > 1000  # one of the long system prompts
        assert resp["model"] == req["model"]
        assert resp["choices"][0]["message"]["role"] == "assistant"
        by_history.setdefault(json.dumps(req["messages"][:2]), []).append(doc)
    # every conversation's later requests resend the earlier ones plus their answers
    for docs in by_history.values():
        docs.sort(key=lambda d: len(d["request"]["messages"]))
        for prev, nxt in zip(docs, docs[1:]):
            n = len(prev["request"]["messages"])
            assert nxt["request"]["messages"][:n] == prev["request"]["messages"]
            assert nxt["request"]["messages"][n] == prev["response"]["choices"][0]["message"]


def test_sessions_keep_real_files_and_grow_valid_jsonl(tmp_path):
    shared = _shared()
    a = _build("sessions", tmp_path, "a", 5, 4_500_000)
    b = _build("sessions", tmp_path, "b", 5, 4_500_000)
    assert a["digest"] == b["digest"]
    assert a["bytes"] >= 4_000_000
    for rel, src in corpora.real_sessions(shared):  # real files byte for byte
        assert (tmp_path / "a" / rel).read_bytes() == src.read_bytes()
    for p in _files(tmp_path / "a"):
        data = p.read_bytes()
        if p.suffix == ".jsonl":
            for line in data.splitlines():
                json.loads(line)
        else:
            json.loads(data)


def test_versions_are_growing_prefixes(tmp_path):
    _shared()
    a = _build("versions", tmp_path, "a", 1)
    b = _build("versions", tmp_path, "b", 2)  # no randomness in versions
    assert a["digest"] == b["digest"]
    snaps = sorted(p for p in (tmp_path / "a").iterdir())
    assert len(snaps) == len(corpora.VERSION_FRACTIONS)
    last = snaps[-1]
    for p in _files(last):
        rel = p.relative_to(last)
        full = p.read_bytes()
        sizes = []
        for s in snaps:
            part = (s / rel).read_bytes()
            assert full.startswith(part)
            sizes.append(len(part))
        assert sizes == sorted(sizes)
        if p.suffix == ".jsonl" and full.count(b"\n") >= 5:
            assert sizes[0] < sizes[-1]


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError):
        corpora.build("nope", tmp_path / "x")
