"""Personal chat exports: ChatGPT's and Claude.ai's `conversations.json`.

ChatGPT (Settings > Data controls > Export): a JSON array of conversations {id /
conversation_id, title, create_time, update_time, current_node, default_model_slug,
mapping: {node id: {id, parent, children, message}}}; a message is {author: {role, name},
create_time, content: {content_type, parts | text | ...}, metadata: {model_slug, ...},
recipient}. The conversation is the path from the root to `current_node`; the other
branches (an edited prompt, a regenerated answer) are kept as nested blocks labelled
"branch" right after the message where they fork, so nothing of the file is left out.
An assistant message addressed to a tool (`recipient` other than "all") is a tool call,
a `tool` message that tool's result.

Claude.ai (Settings > Privacy > Export data): a JSON array of conversations {uuid, name,
created_at, updated_at, chat_messages: [{uuid, sender: human | assistant, text,
content: [text | thinking | tool_use | tool_result blocks], created_at, attachments:
[{file_name, file_type, file_size, extracted_content}], files}]}.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from ..conversation import (ASSISTANT, BLOB, IMAGE, SYSTEM, TEXT, THINKING, TOOL, TOOL_CALL,
                            TOOL_RESULT, USER, Conversation, Message, Part)
from .common import compact_json, content_parts, finish, iso_from_unix

CHATGPT = "chatgpt-export"
CLAUDE_AI = "claude-ai-export"

_WS = re.compile(r"\s+")


def _s(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


# --- ChatGPT ---------------------------------------------------------------------------

def is_chatgpt(d: dict) -> bool:
    return isinstance(d.get("mapping"), dict) and (
        "current_node" in d or "create_time" in d or "conversation_id" in d)


def _chatgpt_parts(content: Any, recipient: Optional[str], role: str,
                   author: Optional[str], unknown: set) -> list[Part]:
    """The parts of one message's `content` {content_type, ...}."""
    if not isinstance(content, dict):
        return content_parts(content)
    ct = content.get("content_type")
    texts: list[Part] = []
    if isinstance(content.get("parts"), list):
        for p in content["parts"]:
            if isinstance(p, str):
                if p:
                    texts.append(Part(kind=TEXT, text=p))
            elif isinstance(p, dict):
                texts.extend(_asset(p))
            elif p is not None:
                texts.append(Part(kind=BLOB, ref=compact_json(p)))
    elif ct == "thoughts" and isinstance(content.get("thoughts"), list):
        for th in content["thoughts"]:
            if isinstance(th, dict):
                text = th.get("content")
                texts.append(Part(kind=THINKING, text=text if isinstance(text, str) else None,
                                  name=_s(th.get("summary")), ref=None if isinstance(text, str)
                                  else "empty"))
    else:
        for key in ("text", "content", "result", "summary", "model_set_context",
                    "user_profile", "user_instructions"):
            v = content.get(key)
            if isinstance(v, str) and v:
                texts.append(Part(kind=THINKING if ct == "reasoning_recap" else TEXT, text=v))
        for key in ("title", "url"):
            v = content.get(key)
            if isinstance(v, str) and v and ct == "tether_quote":
                texts.append(Part(kind=TEXT, text=v))
    if not texts and ct not in (None, "text", "multimodal_text", "thoughts"):
        # a content type not known here: show what it holds, and say it may be in part
        texts.append(Part(kind=BLOB, media_type=_s(ct), ref=compact_json(
            {k: v for k, v in content.items() if k != "content_type"})))
        unknown.add(str(ct))
    if role == ASSISTANT and recipient and recipient != "all":
        # code or a query for a tool: the call's arguments, shown verbatim
        return [Part(kind=TOOL_CALL, name=recipient, text=p.text) if p.kind == TEXT else p
                for p in texts] or [Part(kind=TOOL_CALL, name=recipient, text="")]
    if role == TOOL:
        return [Part(kind=TOOL_RESULT, name=author, text=p.text) if p.kind == TEXT else p
                for p in texts]
    return texts


def _asset(p: dict) -> list[Part]:
    """A non-text entry of `parts`: an image / file pointer, or audio with a transcript."""
    ct = _s(p.get("content_type")) or "attachment"
    out: list[Part] = []
    size = p.get("size_bytes")
    desc = [x for x in (_s(p.get("asset_pointer")),
                        f"{size} bytes" if type(size) is int else None) if x]
    if type(p.get("width")) is int and type(p.get("height")) is int:
        desc.append(f"{p['width']}x{p['height']}")
    meta = p.get("metadata") if isinstance(p.get("metadata"), dict) else {}
    media = _s(p.get("mime_type")) or _s(meta.get("mime_type"))
    kind = IMAGE if "image" in ct else BLOB
    out.append(Part(kind=kind, media_type=media or (None if kind == IMAGE else ct),
                    ref=", ".join(desc) or None))
    for key in ("text", "transcript"):           # audio_transcription parts
        if isinstance(p.get(key), str) and p[key]:
            out.append(Part(kind=TEXT, text=p[key]))
    return out


def _chatgpt_message(node: dict, unknown: set) -> Optional[Message]:
    m = node.get("message")
    if not isinstance(m, dict):
        return None
    author = m.get("author") if isinstance(m.get("author"), dict) else {}
    role = _s(author.get("role")) or "unknown"
    name = _s(author.get("name"))
    meta = m.get("metadata") if isinstance(m.get("metadata"), dict) else {}
    parts = _chatgpt_parts(m.get("content"), _s(m.get("recipient")), role, name, unknown)
    if not parts and role == SYSTEM:
        return None                           # the empty root system message
    return Message(role=role, parts=parts, name=name if role != TOOL else None,
                   timestamp=iso_from_unix(m.get("create_time")),
                   model=_s(meta.get("model_slug")) if role == ASSISTANT else None,
                   event=bool(meta.get("is_visually_hidden_from_conversation")))


def _subtree(mapping: dict, start: str, label: str, out: list[Message], limit: int,
             unknown: set) -> None:
    """Every message under `start` (itself included), depth first, labelled as a branch."""
    stack = [start]
    seen = 0
    while stack and seen < limit:
        nid = stack.pop()
        seen += 1
        node = mapping.get(nid)
        if not isinstance(node, dict):
            continue
        msg = _chatgpt_message(node, unknown)
        if msg is not None:
            msg.sidechain = label
            out.append(msg)
        kids = node.get("children")
        if isinstance(kids, list):
            stack.extend(k for k in reversed(kids) if isinstance(k, str))


def parse_chatgpt(d: dict) -> Conversation:
    conv = Conversation(application="chatgpt", title=_s(d.get("title")))
    conv.id = _s(d.get("conversation_id")) or _s(d.get("id"))
    mapping = d["mapping"]
    # the current thread: from current_node up to the root
    path: list[str] = []
    cur = d.get("current_node")
    if not isinstance(cur, str) or cur not in mapping:       # no pointer: newest leaf
        leaves = [k for k, n in mapping.items() if isinstance(n, dict) and not n.get("children")]
        cur = leaves[-1] if leaves else None
    guard = set()
    while isinstance(cur, str) and cur in mapping and cur not in guard:
        guard.add(cur)
        path.append(cur)
        node = mapping[cur]
        cur = node.get("parent") if isinstance(node, dict) else None
    path.reverse()
    on_path = set(path)
    # roots that do not lead to the current node (rare: orphaned nodes)
    roots = [k for k, n in mapping.items() if isinstance(n, dict) and n.get("parent") is None
             and k not in on_path]
    limit = len(mapping) + 1
    unknown: set[str] = set()
    for nid in path:
        node = mapping[nid]
        msg = _chatgpt_message(node, unknown)
        if msg is not None:
            conv.messages.append(msg)
        kids = node.get("children") if isinstance(node.get("children"), list) else []
        for k in kids:
            if isinstance(k, str) and k not in on_path:
                _subtree(mapping, k, "branch", conv.messages, limit, unknown)
    for r in roots:
        _subtree(mapping, r, "branch", conv.messages, limit, unknown)
    if unknown:
        conv.metadata["partial"] = ("ChatGPT content types shown as raw JSON: "
                                    + ", ".join(sorted(unknown)))
    conv.started = iso_from_unix(d.get("create_time"))
    conv.ended = iso_from_unix(d.get("update_time"))
    return finish(conv, d.get("default_model_slug"))


# --- Claude.ai -------------------------------------------------------------------------

def is_claude_ai(d: dict) -> bool:
    return isinstance(d.get("chat_messages"), list) and ("uuid" in d or "name" in d)


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _claude_message(m: dict) -> Message:
    sender = m.get("sender")
    role = USER if sender == "human" else ASSISTANT if sender == "assistant" else \
        sender if isinstance(sender, str) else "unknown"
    parts: list[Part] = []
    blocks = m.get("content")
    for block in blocks if isinstance(blocks, list) else [blocks] if blocks else []:
        parts.extend(content_parts(block))
        if isinstance(block, dict) and isinstance(block.get("summaries"), list):
            for sm in block["summaries"]:          # thinking blocks' one-line summaries
                if isinstance(sm, dict) and isinstance(sm.get("summary"), str) and sm["summary"]:
                    parts.append(Part(kind=THINKING, name="summary", text=sm["summary"]))
    text = m.get("text")
    if isinstance(text, str) and text.strip():
        shown = _norm(" ".join(p.text for p in parts if p.text))
        if _norm(text) not in shown:     # older exports: text only; else text adds to blocks
            parts.append(Part(kind=TEXT, text=text))
    for key in ("attachments", "files"):
        for a in m.get(key) or []:
            if not isinstance(a, dict):
                continue
            size = a.get("file_size")
            desc = ", ".join(x for x in (_s(a.get("file_name")),
                                         f"{size} bytes" if type(size) is int else None) if x)
            media = _s(a.get("file_type")) or _s(a.get("file_kind"))
            kind = IMAGE if media and media.startswith("image") else BLOB
            parts.append(Part(kind=kind, media_type=media, ref=desc or None))
            if isinstance(a.get("extracted_content"), str) and a["extracted_content"]:
                parts.append(Part(kind=TEXT, text=a["extracted_content"]))
    return Message(role=role, parts=parts, timestamp=_s(m.get("created_at")))


def parse_claude_ai(d: dict) -> Conversation:
    conv = Conversation(application="claude.ai", id=_s(d.get("uuid")), title=_s(d.get("name")),
                        started=_s(d.get("created_at")), ended=_s(d.get("updated_at")))
    summary = d.get("summary")
    if isinstance(summary, str) and summary:
        conv.messages.append(Message(role=SYSTEM, name="summary", event=True,
                                     parts=[Part(kind=TEXT, text=summary)]))
    conv.messages.extend(_claude_message(m) for m in d["chat_messages"] if isinstance(m, dict))
    return finish(conv, d.get("model"))
