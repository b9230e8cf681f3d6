"""Token usage the files record, per model (the "usage" fact), read from the original bytes.

facts["usage"] = {MODEL: [input, cache_write, cache_read, output, calls]} where
    input        prompt tokens billed at the input price (cache reads and writes excluded)
    cache_write  prompt tokens written to a prompt cache (Anthropic cache creation)
    cache_read   prompt tokens read from a prompt cache
    output       completion tokens, reasoning/thinking included
    calls        model calls the numbers come from
Sources, each counted once:
- Claude Code: `message.usage` of assistant lines, once per `message.id` (a message
  streamed over several lines repeats its usage on each: the last one counts);
  input_tokens, cache_creation_input_tokens, cache_read_input_tokens, output_tokens.
- Codex CLI: `event_msg` `token_count` events: the growth of `info.total_token_usage`
  (cumulative; repeated events add nothing) is charged to the model of the latest
  `turn_context`; input_tokens includes cached_input_tokens.
- Gemini CLI: `messages[].tokens` {input (cached included), cached, output, thoughts, tool}.
- API responses anywhere in a JSON or JSONL file (an object with "usage" and "model"):
  Anthropic (input excludes cache), OpenAI Chat Completions (prompt_tokens with
  prompt_tokens_details.cached_tokens) and Responses (input_tokens with
  input_tokens_details.cached_tokens); Gemini's `usageMetadata` with `modelVersion`.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from . import facts
from .conversation import Parsed

UNKNOWN = "(unknown)"
FIELDS = ("input", "cache_write", "cache_read", "output", "calls")
_HINTS = (b'"usage"', b'"token_count"', b'"tokens"', b'"usageMetadata"')
MAX_DEPTH = 64


def _int(v: Any) -> int:
    return v if type(v) is int and 0 <= v < 2 ** 53 else 0


class Usage:
    def __init__(self) -> None:
        self.by_model: dict[str, list[int]] = {}

    def add(self, model: Optional[str], inp=0, cw=0, cr=0, out=0, calls=1) -> None:
        row = self.by_model.setdefault(model if isinstance(model, str) and model else UNKNOWN,
                                       [0, 0, 0, 0, 0])
        for i, v in enumerate((inp, cw, cr, out, calls)):
            row[i] += max(int(v), 0)

    def api(self, model: Optional[str], u: dict) -> None:
        """One API response's usage object (Anthropic or OpenAI spelling)."""
        if "prompt_tokens" in u or "completion_tokens" in u:            # OpenAI chat
            cached = _int((u.get("prompt_tokens_details") or {}).get("cached_tokens")) \
                if isinstance(u.get("prompt_tokens_details"), dict) else 0
            self.add(model, _int(u.get("prompt_tokens")) - cached, 0, cached, _int(u.get("completion_tokens")))
        elif "input_tokens_details" in u or "total_tokens" in u:        # OpenAI Responses
            det = u.get("input_tokens_details")
            cached = _int(det.get("cached_tokens")) if isinstance(det, dict) else 0
            self.add(model, _int(u.get("input_tokens")) - cached, 0, cached, _int(u.get("output_tokens")))
        elif "input_tokens" in u or "output_tokens" in u:                # Anthropic
            self.add(model, _int(u.get("input_tokens")), _int(u.get("cache_creation_input_tokens")),
                     _int(u.get("cache_read_input_tokens")), _int(u.get("output_tokens")))

    def gemini(self, model: Optional[str], u: dict) -> None:
        cached = _int(u.get("cachedContentTokenCount"))
        self.add(model, _int(u.get("promptTokenCount")) - cached + _int(u.get("toolUsePromptTokenCount")),
                 0, cached, _int(u.get("candidatesTokenCount")) + _int(u.get("thoughtsTokenCount")))

    def walk(self, v: Any, depth: int = 0) -> None:
        """API responses anywhere in a JSON value."""
        if depth > MAX_DEPTH:
            return
        if isinstance(v, dict):
            u = v.get("usage")
            if isinstance(u, dict) and isinstance(v.get("model"), str):
                self.api(v["model"], u)
            um = v.get("usageMetadata")
            if isinstance(um, dict):
                self.gemini(v.get("modelVersion") if isinstance(v.get("modelVersion"), str) else None, um)
            for k, x in v.items():
                if isinstance(x, (dict, list)) and not (k == "usage" or k == "usageMetadata"):
                    self.walk(x, depth + 1)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, (dict, list)):
                    self.walk(x, depth + 1)

    def fact(self) -> Optional[dict]:
        return {m: row for m, row in self.by_model.items() if any(row[:4])} or None


def _loads(raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def extract(data: bytes, fmt: str = "") -> Optional[dict]:
    """{model: [input, cache_write, cache_read, output, calls]} of one file's bytes."""
    if not any(h in data for h in _HINTS):
        return None
    u = Usage()
    head = data.lstrip()[:1]
    lines = data.split(b"\n")
    first = _loads(lines[0]) if head == b"{" and len(lines) > 1 else None
    if isinstance(first, dict):
        _jsonl(u, lines)
    elif head in (b"{", b"["):
        doc = _loads(data)
        if doc is None:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("messages"), list) and "sessionId" in doc:
            _gemini_cli(u, doc)
        else:
            u.walk(doc)
    return u.fact()


def _jsonl(u: Usage, lines: list) -> None:
    claude: dict[str, tuple] = {}       # message id -> (model, usage), the last line wins
    codex_model = None
    codex_prev = None
    for raw in lines:
        if not any(h in raw for h in _HINTS) and b'"turn_context"' not in raw:
            continue
        d = _loads(raw)
        if not isinstance(d, dict):
            continue
        t = d.get("type")
        m = d.get("message")
        if t == "assistant" and isinstance(m, dict) and isinstance(m.get("usage"), dict):
            key = m.get("id") if isinstance(m.get("id"), str) else f"line:{id(raw)}"
            claude[key] = (m.get("model"), m["usage"])
            continue
        p = d.get("payload")
        if t == "turn_context" and isinstance(p, dict):
            codex_model = p.get("model") if isinstance(p.get("model"), str) else codex_model
            continue
        if t == "event_msg" and isinstance(p, dict) and p.get("type") == "token_count":
            info = p.get("info")
            total = info.get("total_token_usage") if isinstance(info, dict) else None
            if isinstance(total, dict):
                now = {k: _int(total.get(k)) for k in ("input_tokens", "cached_input_tokens", "output_tokens")}
                prev = codex_prev or dict.fromkeys(now, 0)
                delta = {k: now[k] - prev[k] for k in now}
                if any(v < 0 for v in delta.values()):     # counter restarted: count it anew
                    delta = now
                if any(delta.values()):
                    cached = delta["cached_input_tokens"]
                    u.add(codex_model, delta["input_tokens"] - cached, 0, cached, delta["output_tokens"])
                codex_prev = now
            continue
        if "sessionId" in d or "uuid" in d or "payload" in d:
            continue    # other agent-session lines (progress of subagents: their own files count)
        u.walk(d)
    for model, usage in claude.values():
        u.api(model, usage)


def _gemini_cli(u: Usage, doc: dict) -> None:
    for msg in doc["messages"]:
        if not isinstance(msg, dict) or not isinstance(msg.get("tokens"), dict):
            continue
        t = msg["tokens"]
        cached = _int(t.get("cached"))
        u.add(msg.get("model"), _int(t.get("input")) - cached + _int(t.get("tool")), 0, cached,
              _int(t.get("output")) + _int(t.get("thoughts")))


@facts.provider("usage")
def _fact(parsed: Parsed, data: bytes) -> Optional[dict]:
    return extract(data, parsed.format)
