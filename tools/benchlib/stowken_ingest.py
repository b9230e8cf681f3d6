"""Feed a corpus folder to Stowken (run with the bench venv's python, where stowken is).

    python stowken_ingest.py ingest SRC VAULT   -> last stdout line: JSON ingest summary
    python stowken_ingest.py verify SRC VAULT   -> last stdout line: JSON text round-trip check

Stowken stores conversations (``{"id", "model", "application", "messages": [{"role",
"content"}]}``), not files, so each file is turned into the conversation it holds: its
role/text turns (tool calls and results as their text). Everything else in the file
(other JSON fields, formatting, non-message lines) is not given to Stowken and cannot come
back from it; files with no turns are counted as not ingestible.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROLES = {"user", "assistant", "system"}


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for b in content:
            if isinstance(b, str):
                parts.append(b)
            elif isinstance(b, dict):
                if isinstance(b.get("text"), str):
                    parts.append(b["text"])
                elif isinstance(b.get("thinking"), str):
                    parts.append(b["thinking"])
                elif b.get("type") == "tool_use":
                    parts.append(json.dumps(b.get("input"), ensure_ascii=False))
                elif b.get("type") == "tool_result":
                    parts.append(_text(b.get("content")))
        return "\n".join(p for p in parts if p)
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _turn(role, content) -> dict | None:
    text = _text(content)
    if not text:
        return None
    return {"role": role if role in ROLES else "user", "content": text}


def conversation(path: Path, rel: str) -> dict | None:
    """The conversation a corpus file holds, in Stowken's input form, or None."""
    raw = path.read_bytes()
    turns: list[dict] = []
    model = None
    try:
        doc = json.loads(raw)
        docs = None
    except ValueError:
        doc = None
        docs = []
        for line in raw.splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                pass
    if isinstance(doc, dict) and "request" in doc and "response" in doc:  # proxy log
        req, resp = doc["request"], doc["response"]
        model = req.get("model")
        turns = [_turn(m.get("role"), m.get("content")) for m in req.get("messages", [])]
        for c in resp.get("choices", []):
            turns.append(_turn("assistant", c.get("message", {}).get("content")))
    elif isinstance(doc, dict) and isinstance(doc.get("messages"), list):  # OpenAI / Gemini
        model = doc.get("model")
        for m in doc["messages"]:
            role = m.get("role") or {"gemini": "assistant"}.get(m.get("type"), m.get("type"))
            turns.append(_turn(role, m.get("content")))
            model = model or m.get("model")
    elif docs:  # agent session JSONL (Claude Code, Codex CLI)
        for d in docs:
            if not isinstance(d, dict):
                continue
            msg = d.get("message")
            if d.get("type") in ("user", "assistant") and isinstance(msg, dict):
                turns.append(_turn(msg.get("role", d["type"]), msg.get("content")))
                model = model or msg.get("model")
            p = d.get("payload")
            if d.get("type") == "response_item" and isinstance(p, dict):
                if p.get("type") == "message":
                    turns.append(_turn(p.get("role"), p.get("content")))
                elif p.get("type") == "function_call":
                    turns.append(_turn("assistant", p.get("arguments")))
                elif p.get("type") == "function_call_output":
                    turns.append(_turn("user", p.get("output")))
            if d.get("type") == "turn_context" and isinstance(p, dict):
                model = model or p.get("model")
    turns = [t for t in turns if t]
    if not turns:
        return None
    return {"id": conv_id(rel), "model": model or "unknown", "application": "stowfs-bench", "messages": turns}


def conv_id(rel: str) -> str:
    """Stowken keeps one manifest file per id, so an id cannot hold a '/'."""
    return rel.replace("/", "__")


def files(src: Path):
    for p in sorted(src.rglob("*")):
        if p.is_file():
            yield p, p.relative_to(src).as_posix()


def ingest(src: Path, vault_path: Path) -> dict:
    import stowken

    vault = stowken.Stowken.open(str(vault_path))
    vault.set_embed_on_store(False)
    stored = skipped = failed = 0
    in_bytes = text_bytes = 0
    errors: dict[str, int] = {}
    t = time.perf_counter()
    for p, rel in files(src):
        in_bytes += p.stat().st_size
        conv = conversation(p, rel)
        if conv is None:
            skipped += 1
            continue
        try:
            vault.store(conv)
            stored += 1
            text_bytes += sum(len(m["content"].encode()) for m in conv["messages"])
        except Exception as e:  # noqa: BLE001 - counted and reported
            failed += 1
            key = str(e)[:120]
            errors[key] = errors.get(key, 0) + 1
    seconds = time.perf_counter() - t
    st = vault.stats()
    return {"stored_conversations": stored, "files_without_turns": skipped, "store_errors": failed,
            "error_samples": dict(list(errors.items())[:3]), "input_bytes": in_bytes,
            "turn_text_bytes": text_bytes, "ingest_seconds": round(seconds, 3),
            "stowken_storage_bytes": st.storage_bytes, "stowken_total_tokens": st.total_tokens,
            "stowken_dedup_ratio": st.dedup_ratio}


def verify(src: Path, vault_path: Path) -> dict:
    import stowken

    vault = stowken.Stowken.open(str(vault_path))
    ok = bad = missing = 0
    for p, rel in files(src):
        conv = conversation(p, rel)
        if conv is None:
            continue
        got = vault.retrieve_batch([conv["id"]])
        if not got:
            missing += 1
            continue
        texts = [t["text"] for t in got[0]["turns"]]
        if texts == [m["content"] for m in conv["messages"]]:
            ok += 1
        else:
            bad += 1
    return {"text_roundtrip_ok": ok, "text_roundtrip_mismatch": bad, "missing": missing}


def main(argv):
    cmd, src, vault = argv[1], Path(argv[2]), Path(argv[3])
    res = ingest(src, vault) if cmd == "ingest" else verify(src, vault)
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv)
