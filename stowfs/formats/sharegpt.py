"""Flat chat datasets: ShareGPT ({"id", "conversations": [{"from", "value"}]}) and Alpaca
({"instruction", "input", "output"})."""
from __future__ import annotations

from typing import Any

from ..conversation import ASSISTANT, SYSTEM, TOOL, USER, Conversation, Message
from .common import content_parts, finish

SHAREGPT = "sharegpt"
ALPACA = "alpaca"

ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "chatgpt": ASSISTANT,
         "bing": ASSISTANT, "bard": ASSISTANT, "assistant": ASSISTANT, "model": ASSISTANT,
         "system": SYSTEM, "tool": TOOL, "observation": TOOL, "function_response": TOOL}


def is_sharegpt(d: dict) -> bool:
    turns = d.get("conversations")
    if not isinstance(turns, list):
        return False
    if not turns:
        return True
    first = next((t for t in turns if isinstance(t, dict)), None)
    return first is not None and ("from" in first or "value" in first)


def parse_sharegpt(d: dict) -> Conversation:
    conv = Conversation(application="sharegpt")
    cid = d.get("id")
    if isinstance(cid, str) or (type(cid) is int and abs(cid) < 10 ** 18):
        conv.id = str(cid)
    for turn in d["conversations"]:
        if not isinstance(turn, dict):
            continue
        frm = turn.get("from")
        role = ROLES.get(frm.lower(), frm) if isinstance(frm, str) else "unknown"
        value = turn.get("value")
        conv.messages.append(Message(role=role, parts=content_parts(value) if isinstance(
            value, str) else []))
    return finish(conv, d.get("model"))


def is_alpaca(d: dict) -> bool:
    return isinstance(d.get("instruction"), str) and isinstance(d.get("output"), str)


def parse_alpaca(d: dict) -> Conversation:
    conv = Conversation(application="alpaca")
    system = d.get("system")
    if isinstance(system, str) and system:
        conv.messages.append(Message(role=SYSTEM, parts=content_parts(system)))
    parts = content_parts(d["instruction"])
    inp: Any = d.get("input")
    if isinstance(inp, str) and inp:
        parts += content_parts(inp)
    conv.messages.append(Message(role=USER, parts=parts))
    conv.messages.append(Message(role=ASSISTANT, parts=content_parts(d["output"])))
    return finish(conv)
