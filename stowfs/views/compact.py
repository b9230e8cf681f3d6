"""`compact/PATH.jsonl`: the conversation only (tokenopt's default mode), the same shape
for every input format. One JSON object per line:

    {"type": "message", "role": "user" | "assistant", "text": "..."}
    {"type": "tool_mark", "tool": "Bash", "description": "Run the tests", "count": 3}
    {"type": "conversation", "index": 2, "of": 5, "id": "..."}   (files holding several)

- user and assistant text verbatim: a message's text parts joined by a blank line (a
  message without text writes no line);
- each tool call whose arguments carry an agent-written `description` (Claude Code's
  Bash, Task/Agent, WebFetch ..., any format's JSON arguments) becomes a tool_mark;
  adjacent identical marks (same tool, same description) become one with a `count`
  ("count" only appears when it is above 1);
- tool calls without a description, every tool result, thinking, system and developer
  messages and app events (Claude Code `system`/`summary` lines) are dropped.

Stats (exact, per file): entries_in (messages of the parse), entries_out (lines
written), bytes_in, bytes_out, tool_marks, tool_marks_batched (marks folded into the one
before), tool_calls_dropped, tool_results_dropped, system_dropped, thinking_dropped.
"""
from __future__ import annotations

import json
from typing import Optional

from ..conversation import ASSISTANT, TEXT, THINKING, TOOL_CALL, TOOL_RESULT, USER, Parsed

VERSION = 1
KEPT_ROLES = (USER, ASSISTANT)


def _line(obj: dict) -> bytes:
    try:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:       # a lone surrogate: escape it, the line stays valid JSON
        return (json.dumps(obj) + "\n").encode("ascii")


def description(args: Optional[str]) -> Optional[str]:
    """The agent-written description in a tool call's JSON arguments, if any."""
    if not args or "description" not in args:
        return None
    try:
        value = json.loads(args)
    except (ValueError, RecursionError):
        return None
    d = value.get("description") if isinstance(value, dict) else None
    return d if isinstance(d, str) and d.strip() else None


def render_with_stats(parsed: Parsed, data: bytes) -> tuple[bytes, dict]:
    stats = dict.fromkeys(("entries_in", "entries_out", "bytes_in", "bytes_out", "tool_marks",
                           "tool_marks_batched", "tool_calls_dropped", "tool_results_dropped",
                           "system_dropped", "thinking_dropped"), 0)
    stats["bytes_in"] = len(data)
    out: list[dict] = []
    total = len(parsed.conversations)
    for index, conv in enumerate(parsed.conversations, 1):
        if total > 1:
            head = {"type": "conversation", "index": index, "of": total}
            if conv.id:
                head["id"] = conv.id
            out.append(head)
        for msg in conv.messages:
            stats["entries_in"] += 1
            keep = msg.role in KEPT_ROLES and not msg.event
            texts = []
            for part in msg.parts:
                if part.kind == TEXT and part.text:
                    if keep:
                        texts.append(part.text)
                elif part.kind == TOOL_CALL:
                    desc = description(part.text)
                    if desc is None:
                        stats["tool_calls_dropped"] += 1
                        continue
                    if texts:   # text before the call keeps its place
                        out.append({"type": "message", "role": msg.role, "text": "\n\n".join(texts)})
                        texts = []
                    mark = {"type": "tool_mark", "tool": part.name or "?", "description": desc}
                    stats["tool_marks"] += 1
                    prev = out[-1] if out else None
                    if prev is not None and prev.get("type") == "tool_mark" and \
                            prev["tool"] == mark["tool"] and prev["description"] == desc:
                        prev["count"] = prev.get("count", 1) + 1
                        stats["tool_marks_batched"] += 1
                    else:
                        out.append(mark)
                elif part.kind == TOOL_RESULT:
                    stats["tool_results_dropped"] += 1
                elif part.kind == THINKING:
                    stats["thinking_dropped"] += 1
            if texts:
                out.append({"type": "message", "role": msg.role, "text": "\n\n".join(texts)})
            if not keep:
                stats["system_dropped"] += 1
    body = b"".join(_line(o) for o in out)
    stats["entries_out"] = len(out)
    stats["bytes_out"] = len(body)
    return body, stats


def render(parsed: Parsed, data: bytes) -> bytes:
    return render_with_stats(parsed, data)[0]


def _view():
    from . import View
    return View("compact", "compact", ".jsonl", VERSION, render, lambda p: p.is_conversation,
                render_with_stats)


VIEW = _view()
