"""The Stowken conversation form: {"id", "application", "model", "tokenizer",
"messages": [{"role", "content": str | [token ids], "name", "tool_call_id"}], "metadata"}.

Token-id content becomes Part(kind=TOKENS, tokens=[...]) with the exact ids. The file's own
"application" is kept when it has one (falling back to "stowken"); "tokenizer" and the
scalar entries of "metadata" go to Conversation.metadata.
"""
from __future__ import annotations

from ..conversation import Conversation
from .chat_api import chat_messages
from .common import finish

STOWKEN = "stowken"
_INT_LIMIT = 2 ** 63


def is_stowken(d: dict) -> bool:
    if not isinstance(d.get("messages"), list):
        return False
    return "tokenizer" in d or "application" in d


def _scalar(v: object) -> bool:
    if isinstance(v, (str, bool, float)) or v is None:
        return True
    return type(v) is int and -_INT_LIMIT <= v < _INT_LIMIT


def parse_stowken(d: dict) -> Conversation:
    app = d.get("application")
    conv = Conversation(application=app if isinstance(app, str) and app else "stowken")
    cid = d.get("id")
    if isinstance(cid, str) or (type(cid) is int and abs(cid) < _INT_LIMIT):
        conv.id = str(cid)
    meta = d.get("metadata")
    if isinstance(meta, dict):
        conv.metadata.update((k, v) for k, v in meta.items() if isinstance(k, str) and _scalar(v))
    if isinstance(d.get("tokenizer"), str):
        conv.metadata["tokenizer"] = d["tokenizer"]
    for key in ("started", "ended"):
        if isinstance(d.get(key), str):
            setattr(conv, key, d[key])
    conv.messages = chat_messages(d["messages"])
    model = d.get("model")
    if isinstance(model, str) and model:
        conv.model = model
    return finish(conv)
