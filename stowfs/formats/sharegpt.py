"""Chat datasets: ShareGPT ({"id", "conversations": [{"from", "value"}]}), Alpaca
({"instruction", "input", "output"}), and preference / completion rows.

ShareGPT as LLaMA-Factory writes it (data/README.md of hiyouga/LLaMA-Factory): besides
human / gpt / system turns, `function_call` turns (value: JSON {"name", "arguments"}) and
`observation` turns (the tool's output), a row-level `system` prompt and `tools` (the
function schemas, a JSON string or a list). Those become tool calls, tool results, a
system message and a "tools" message.

Preference rows (one answer marked chosen, one rejected; Message.label says which):
  - ShareGPT style: {"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}}
  - Alpaca style: {"instruction", "input", "chosen": str, "rejected": str}
  - TRL style: {"prompt": str | [messages], "chosen": str | [messages], "rejected": ...},
    also with the full conversations in chosen / rejected (UltraFeedback's {"prompt",
    "messages", "chosen", "rejected"}): the turns both share are the prompt, shown once
  - Anthropic HH-RLHF: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}
  - OpenAI preference fine-tuning: {"input": {"messages", "tools"}, "preferred_output":
    [messages], "non_preferred_output": [messages]}
KTO rows ({"prompt", "completion", "label": bool}, or ShareGPT with "kto_tag") mark the
answer "desirable" / "undesirable"; TRL prompt-completion rows have no label.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from ..conversation import (ASSISTANT, BLOB, IMAGE, SYSTEM, TEXT, TOOL, USER, Conversation,
                            Message, Part)
from .common import compact_json, content_parts, finish, result_parts, tool_calls_from_value

SHAREGPT = "sharegpt"
ALPACA = "alpaca"
PREFERENCE = "preference"
COMPLETION = "prompt-completion"

ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "chatgpt": ASSISTANT,
         "bing": ASSISTANT, "bard": ASSISTANT, "assistant": ASSISTANT, "model": ASSISTANT,
         "system": SYSTEM, "tool": TOOL, "observation": TOOL, "function_response": TOOL,
         "tool_response": TOOL, "ipython": TOOL}
_CALL_ROLES = {"function_call", "tool_call", "tool_calls"}


def _s(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


def is_sharegpt(d: dict) -> bool:
    turns = d.get("conversations")
    if not isinstance(turns, list):
        return False
    if not turns:
        return True
    first = next((t for t in turns if isinstance(t, dict)), None)
    return first is not None and ("from" in first or "value" in first)


def _turn(turn: Any, last_call: list[Optional[str]]) -> Optional[Message]:
    """One ShareGPT turn {"from", "value"}; last_call[0] is the latest call's tool name."""
    if not isinstance(turn, dict):
        return None
    frm = turn.get("from")
    if frm is None:
        frm = turn.get("role")
    key = frm.lower() if isinstance(frm, str) else None
    value = turn.get("value")
    if value is None and "value" not in turn:
        value = turn.get("content")
    if key in _CALL_ROLES:
        parts = tool_calls_from_value(value) if value is not None else []
        names = [p.name for p in parts if p.name]
        last_call[0] = names[-1] if names else None
        return Message(role=ASSISTANT, parts=parts, label=None)
    role = ROLES.get(key, frm) if key is not None else "unknown"
    if role == TOOL:
        return Message(role=TOOL, parts=result_parts(value, None, last_call[0], False))
    return Message(role=role, parts=content_parts(value) if value is not None else [])


def sharegpt_messages(turns: Any) -> list[Message]:
    last_call: list[Optional[str]] = [None]
    items = turns if isinstance(turns, list) else [turns]
    return [m for m in (_turn(t, last_call) for t in items) if m is not None]


def _tools_message(tools: Any) -> Optional[Message]:
    """The row's function schemas, shown once before the conversation."""
    if isinstance(tools, str) and tools.strip():
        return Message(role=SYSTEM, name="tools", event=True, parts=[Part(kind=TEXT, text=tools)])
    if isinstance(tools, list) and tools:
        return Message(role=SYSTEM, name="tools", event=True,
                       parts=[Part(kind=TEXT, ref=compact_json(t)) for t in tools])
    return None


def _head(d: dict) -> list[Message]:
    out = []
    system = d.get("system")
    if isinstance(system, str) and system:
        out.append(Message(role=SYSTEM, parts=content_parts(system)))
    tools = _tools_message(d.get("tools"))
    if tools is not None:
        out.append(tools)
    return out


def _media(d: dict, msgs: list[Message]) -> None:
    """LLaMA-Factory's multimodal rows: "images" / "videos" / "audios" (paths or URLs) belong
    to the first user message (its text holds the <image> placeholders)."""
    if "images" not in d and "videos" not in d and "audios" not in d:
        return
    from .common import guess_media
    first = next((m for m in msgs if m.role == USER), None)
    if first is None:
        return
    for key, kind in (("images", IMAGE), ("videos", BLOB), ("audios", BLOB)):
        items = d.get(key)
        for ref in items if isinstance(items, list) else []:
            if isinstance(ref, str):
                first.parts.append(Part(kind=kind, media_type=guess_media(ref), ref=ref))


def _id(conv: Conversation, d: dict) -> None:
    for key in ("id", "prompt_id", "conversation_id"):
        cid = d.get(key)
        if isinstance(cid, str) or (type(cid) is int and abs(cid) < 10 ** 18):
            conv.id = str(cid)
            return


def parse_sharegpt(d: dict) -> Conversation:
    conv = Conversation(application="sharegpt")
    _id(conv, d)
    conv.messages = _head(d) + sharegpt_messages(d["conversations"])
    _media(d, conv.messages)
    tag = d.get("kto_tag")
    if isinstance(tag, bool) and conv.messages and conv.messages[-1].role == ASSISTANT:
        conv.messages[-1].label = "desirable" if tag else "undesirable"
    return finish(conv, d.get("model"))


def is_alpaca(d: dict) -> bool:
    return isinstance(d.get("instruction"), str) and isinstance(d.get("output"), str)


def _alpaca_prompt(d: dict) -> list[Message]:
    out = []
    system = d.get("system")
    if isinstance(system, str) and system:
        out.append(Message(role=SYSTEM, parts=content_parts(system)))
    for pair in d.get("history") or []:       # LLaMA-Factory: [[instruction, response], ...]
        if isinstance(pair, list) and len(pair) == 2:
            out.append(Message(role=USER, parts=content_parts(pair[0])))
            out.append(Message(role=ASSISTANT, parts=content_parts(pair[1])))
    parts = content_parts(d["instruction"])
    inp: Any = d.get("input")
    if isinstance(inp, str) and inp:
        parts += content_parts(inp)
    out.append(Message(role=USER, parts=parts))
    return out


def parse_alpaca(d: dict) -> Conversation:
    conv = Conversation(application="alpaca")
    conv.messages = _alpaca_prompt(d)
    conv.messages.append(Message(role=ASSISTANT, parts=content_parts(d["output"])))
    return finish(conv)


# --- preference and completion rows ---------------------------------------------------

_PAIRS = (("chosen", "rejected"), ("preferred_output", "non_preferred_output"))
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def is_preference(d: dict) -> bool:
    return any(a in d and b in d for a, b in _PAIRS)


def is_completion(d: dict) -> bool:
    """TRL prompt-completion rows (KTO when they carry a boolean label)."""
    return "prompt" in d and "completion" in d and _is_text_or_messages(d["prompt"]) \
        and _is_text_or_messages(d["completion"])


def _is_text_or_messages(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(
        isinstance(m, dict) and ("role" in m or "from" in m) for m in v))


def _messages(value: Any, default_role: str) -> list[Message]:
    """A prompt or answer: text, one turn, or a list of OpenAI / ShareGPT messages."""
    from .chat_api import chat_messages
    if isinstance(value, str):
        if _HH_TURN.match(value):
            return _hh_messages(value)
        return [Message(role=default_role, parts=content_parts(value))]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return [] if value is None else [Message(role=default_role, parts=content_parts(value))]
    if any(isinstance(m, dict) and "from" in m for m in value):
        return sharegpt_messages(value)
    if all(isinstance(m, dict) and "role" in m for m in value):
        return chat_messages(value)
    return [Message(role=default_role, parts=content_parts(value))]


def _hh_messages(text: str) -> list[Message]:
    """Anthropic HH-RLHF text: "\\n\\nHuman: ...\\n\\nAssistant: ..." turns."""
    out = []
    marks = list(_HH_TURN.finditer(text))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = USER if m.group(1) == "Human" else ASSISTANT
        out.append(Message(role=role, parts=[Part(kind=TEXT, text=text[m.end():end])]))
    return out


def _same(a: Message, b: Message) -> bool:
    return a.role == b.role and a.parts == b.parts


def parse_preference(d: dict) -> Conversation:
    conv = Conversation(application=PREFERENCE)
    _id(conv, d)
    good_key, bad_key = next((a, b) for a, b in _PAIRS if a in d and b in d)
    prompt: list[Message] = []
    if good_key == "preferred_output":
        inp = d.get("input")
        if isinstance(inp, dict):
            prompt = _head(inp) + _messages(inp.get("messages"), USER)
    else:
        prompt = _head(d)
        if is_sharegpt(d):
            prompt += sharegpt_messages(d["conversations"])
        elif isinstance(d.get("instruction"), str):
            prompt = _alpaca_prompt(d)
        elif "prompt" in d:
            prompt += _messages(d["prompt"], USER)
        elif isinstance(d.get("question"), str):
            prompt += _messages(d["question"], USER)
    good = _messages(d[good_key], ASSISTANT)
    bad = _messages(d[bad_key], ASSISTANT)
    # Full conversations in chosen / rejected: the turns they share are the prompt.
    shared = 0
    while shared < min(len(good), len(bad)) - 1 and _same(good[shared], bad[shared]):
        shared += 1
    common = good[:shared]         # shown once, unless the prompt already holds them
    tail = prompt[len(prompt) - shared:] if shared and len(prompt) >= shared else []
    if common and not (tail and all(map(_same, tail, common))):
        prompt += common
    msgs = d.get("messages")
    if isinstance(msgs, list) and msgs and not is_sharegpt(d):
        extra = _messages(msgs, USER)        # UltraFeedback: "messages" repeats "chosen"
        if [m.parts for m in extra] != [m.parts for m in good] and \
                [m.parts for m in extra] != [m.parts for m in prompt]:
            prompt += extra
    for m in good[shared:]:
        m.label = "chosen"
    for m in bad[shared:]:
        m.label = "rejected"
    conv.messages = prompt + good[shared:] + bad[shared:]
    return finish(conv, d.get("model"))


def parse_completion(d: dict) -> Conversation:
    conv = Conversation(application=COMPLETION)
    _id(conv, d)
    answer = _messages(d["completion"], ASSISTANT)
    label = d.get("label")
    if isinstance(label, bool):
        for m in answer:
            m.label = "desirable" if label else "undesirable"
    conv.messages = _head(d) + _messages(d["prompt"], USER) + answer
    return finish(conv, d.get("model"))
