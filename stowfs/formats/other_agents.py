"""Other coding agents' logs: Kimi CLI, GitHub Copilot CLI, Cline / Roo Code, Continue.

- Kimi CLI `context.jsonl` (kimi_cli/soul/context.py): one message per line, {"role":
  "user" | "assistant" | "tool", "content": str | [{"type": "text", "text"} | {"type":
  "think", "think"}], "tool_calls", "tool_call_id"}, plus bookkeeping lines whose role
  starts with "_": {"role": "_system_prompt", "content"}, {"role": "_usage",
  "token_count"}, {"role": "_checkpoint", "id"}.
- Copilot CLI `~/.copilot/session-state/<id>/events.jsonl`: {"type", "data", "id",
  "timestamp", "parentId"} events; session.start {sessionId, copilotVersion, startTime,
  selectedModel}, user.message {content, attachments}, assistant.message {content,
  toolRequests: [{toolCallId, name, arguments}], reasoningText}, assistant.reasoning
  {content}, tool.execution_start {toolCallId, toolName, arguments},
  tool.execution_complete {toolCallId, success, result: {content, detailedContent},
  error: {message}}, session.info / session.error / session.warning {message},
  session.model_change {newModel}, system.message {role, content}, subagent.started
  {toolCallId, agentDisplayName}; a subagent's events carry data.parentToolCallId (the
  `task` call that runs it) and are nested under it. hook.* events copy a call's
  arguments and result for the hook: not shown again.
- Cline / Roo Code `tasks/<id>/api_conversation_history.json`: a JSON array of Anthropic
  messages ({role, content: str | blocks}, Roo adds "ts"), in which Roo also keeps
  Responses-style reasoning items ({"type": "reasoning", "summary", "encrypted_content"})
  between messages.
- Continue `~/.continue/sessions/<id>.json`: {sessionId, title, workspaceDirectory,
  history: [{message: {role: user | assistant | thinking | tool | system, content: str |
  parts, toolCalls, toolCallId}, contextItems: [{name, description, content}],
  reasoning: {text}, toolCallStates: [{toolCallId, toolCall, status, output: [items]}]}],
  mode, chatModelTitle (the model's display name: the conversation's model), usage}.
"""
from __future__ import annotations

from typing import Any, Optional

from ..conversation import (ASSISTANT, BLOB, SYSTEM, TEXT, THINKING, TOOL, TOOL_CALL,
                            TOOL_RESULT, USER, Conversation, Message, Part)
from .common import (add_usage, compact_json, content_parts, finish, iso_from_unix,
                     result_parts, time_range)

KIMI = "kimi-cli-context-jsonl"
COPILOT = "copilot-cli-events-jsonl"
CLINE = "cline-api-history"
CONTINUE = "continue-session"


def _s(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


# --- message lists with bookkeeping entries (Kimi CLI, Cline / Roo) -------------------

def is_message(x: Any) -> bool:
    return isinstance(x, dict) and isinstance(x.get("role"), str) and not x["role"].startswith(
        "_") and ("content" in x or "tool_calls" in x)


def _is_bookkeeping(x: Any) -> bool:
    """An entry of a message list that is no chat message: Kimi's "_"-roles, Roo's
    reasoning items."""
    if not isinstance(x, dict):
        return False
    role = x.get("role")
    if isinstance(role, str) and role.startswith("_"):
        return True
    return "role" not in x and x.get("type") in ("reasoning", "item_reference")


def mostly_messages(items: list) -> bool:
    """True for a list of chat messages with, at most, bookkeeping entries between them."""
    found = False
    for x in items:
        if is_message(x):
            found = True
        elif not _is_bookkeeping(x):
            return False
    return found


def messages_with_bookkeeping(items: list) -> Conversation:
    """Kimi CLI context lines, or a Cline / Roo api_conversation_history.json."""
    from .chat_api import ANTHROPIC, OPENAI_CHAT, _looks_anthropic, chat_message
    kimi = any(isinstance(x, dict) and isinstance(x.get("role"), str) and x["role"].startswith("_")
               for x in items)
    msgs_only = [x for x in items if is_message(x)]
    cline = not kimi and (any(isinstance(x, dict) and "ts" in x for x in items[:20]) or
        _mentions_cline_tags(msgs_only))
    app = "kimi-cli" if kimi else "cline" if cline else None
    if app is None:
        app = "anthropic" if _looks_anthropic({"messages": msgs_only}) else "openai"
    conv = Conversation(application=app)
    stamps = []
    for x in items:
        if not isinstance(x, dict):
            continue
        role = x.get("role")
        if role == "_system_prompt":
            conv.messages.append(Message(role=SYSTEM, parts=content_parts(x.get("content"))))
        elif role == "_usage":
            if type(x.get("token_count")) is int:
                conv.usage["context_tokens"] = x["token_count"]     # cumulative: the last
        elif isinstance(role, str) and role.startswith("_"):
            continue                                               # _checkpoint
        elif x.get("type") == "reasoning" and "role" not in x:
            parts = [Part(kind=THINKING, text=p.text) for key in ("summary", "content")
                     for p in content_parts(x.get(key) or None) if p.text is not None]
            if parts:
                conv.messages.append(Message(role=ASSISTANT, parts=parts))
        else:
            msg = chat_message(x)
            if msg is not None:
                ts = x.get("ts")
                if type(ts) in (int, float):
                    msg.timestamp = iso_from_unix(ts / 1000 if ts > 10 ** 11 else ts)
                    stamps.append(msg.timestamp)
                conv.messages.append(msg)
    conv.started, conv.ended = time_range(stamps)
    conv.metadata["format"] = KIMI if kimi else CLINE if cline else (
        ANTHROPIC if app == "anthropic" else OPENAI_CHAT)
    return finish(conv)


def _mentions_cline_tags(msgs: list) -> bool:
    for m in msgs[:3]:
        c = m.get("content")
        texts = [c] if isinstance(c, str) else [b.get("text") for b in c if isinstance(b, dict)] \
            if isinstance(c, list) else []
        if any(isinstance(t, str) and ("<task>" in t or "<environment_details>" in t)
               for t in texts):
            return True
    return False


# --- Copilot CLI ----------------------------------------------------------------------

def is_copilot_event(d: Any) -> bool:
    t = d.get("type") if isinstance(d, dict) else None
    return isinstance(t, str) and isinstance(d.get("data"), dict) and t.split(".", 1)[0] in (
        "session", "user", "assistant", "tool", "system", "subagent", "hook") and "." in t


def copilot_kind(values: list) -> bool:
    firsts = [v for v in values[:20] if isinstance(v, dict)]
    return bool(firsts) and sum(map(is_copilot_event, firsts)) * 2 > len(firsts) and any(
        isinstance(v, dict) and v.get("type") in ("session.start", "user.message",
                                                  "assistant.message") for v in values[:200])


def _call_args(v: Any) -> str:
    return v if isinstance(v, str) else compact_json(v if v is not None else {})


def parse_copilot(values: list) -> Conversation:
    conv = Conversation(application="copilot-cli")
    stamps: list[str] = []
    model: Optional[str] = None
    called: set[str] = set()
    names: dict[str, str] = {}
    deltas: dict[str, list[str]] = {}          # messageId -> streamed text not yet final
    delta_at: dict[str, int] = {}
    final: set[str] = set()
    for ev in values:
        if not isinstance(ev, dict) or not isinstance(ev.get("data"), dict):
            continue
        t, d, ts = ev.get("type"), ev["data"], _s(ev.get("timestamp"))
        if ts:
            stamps.append(ts)
        before = len(conv.messages)
        if t == "session.start":
            conv.id = _s(d.get("sessionId")) or conv.id
            model = _s(d.get("selectedModel")) or model
            for key in ("copilotVersion", "producer"):
                if isinstance(d.get(key), str):
                    conv.metadata[key] = d[key]
            ctx = d.get("context")
            if isinstance(ctx, dict) and isinstance(ctx.get("cwd"), str):
                conv.metadata["cwd"] = ctx["cwd"]
        elif t == "session.model_change":
            model = _s(d.get("newModel")) or model
        elif t == "system.message":
            conv.messages.append(Message(role=_s(d.get("role")) or SYSTEM, timestamp=ts,
                                         parts=content_parts(d.get("content"))))
        elif t == "subagent.started":
            cid = _s(d.get("toolCallId"))
            agent = _s(d.get("agentDisplayName")) or _s(d.get("agentName"))
            if cid and agent:
                names[cid] = agent
        elif t == "session.shutdown" and not conv.usage:
            for metrics in (d.get("modelMetrics") or {}).values():
                if isinstance(metrics, dict):
                    add_usage(conv.usage, metrics.get("usage"))
        elif t == "user.message":
            parts = content_parts(d.get("content"))
            for a in d.get("attachments") or []:
                if isinstance(a, dict):
                    parts.append(Part(kind=BLOB, media_type=_s(a.get("type")),
                                      ref=_s(a.get("path")) or _s(a.get("displayName"))))
            conv.messages.append(Message(role=USER, parts=parts, timestamp=ts))
        elif t in ("assistant.message", "assistant.reasoning"):
            m = _s(d.get("model")) or model
            parts: list[Part] = []
            if t == "assistant.reasoning":
                if isinstance(d.get("content"), str) and d["content"]:
                    parts.append(Part(kind=THINKING, text=d["content"]))
            else:
                if isinstance(d.get("reasoningText"), str) and d["reasoningText"]:
                    parts.append(Part(kind=THINKING, text=d["reasoningText"]))
                if d.get("content"):
                    parts.extend(content_parts(d.get("content")))
                for r in d.get("toolRequests") or []:
                    if isinstance(r, dict):
                        cid = _s(r.get("toolCallId"))
                        if cid:
                            called.add(cid)
                            names[cid] = _s(r.get("name")) or ""
                        parts.append(Part(kind=TOOL_CALL, name=_s(r.get("name")), call_id=cid,
                                          text=_call_args(r.get("arguments"))))
            if parts:
                conv.messages.append(Message(role=ASSISTANT, parts=parts, timestamp=ts, model=m))
        elif t == "tool.execution_start":
            cid = _s(d.get("toolCallId"))
            if cid not in called:          # a call no assistant.message announced
                if cid:
                    called.add(cid)
                    names[cid] = _s(d.get("toolName")) or ""
                conv.messages.append(Message(role=ASSISTANT, timestamp=ts, model=model, parts=[
                    Part(kind=TOOL_CALL, name=_s(d.get("toolName")), call_id=cid,
                         text=_call_args(d.get("arguments")))]))
        elif t == "tool.execution_complete":
            cid = _s(d.get("toolCallId"))
            name = names.get(cid or "") or _s(d.get("toolName"))
            res = d.get("result")
            err = d.get("error")
            failed = d.get("success") is False
            parts = []
            if isinstance(res, dict):
                content = res.get("content")
                parts.extend(result_parts(content, cid, name, failed) if content is not None
                             else [])
                detail = res.get("detailedContent")
                if isinstance(detail, str) and detail and detail != content:
                    parts.append(Part(kind=TOOL_RESULT, text=detail, call_id=cid, name=name,
                                      is_error=failed))
            elif res is not None:
                parts.extend(result_parts(res, cid, name, failed))
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                parts.append(Part(kind=TOOL_RESULT, text=err["message"], call_id=cid, name=name,
                                  is_error=True))
            elif isinstance(err, str) and err:
                parts.append(Part(kind=TOOL_RESULT, text=err, call_id=cid, name=name,
                                  is_error=True))
            if not parts:
                parts.append(Part(kind=TOOL_RESULT, call_id=cid, name=name, is_error=failed,
                                  ref="failed" if failed else None))
            conv.messages.append(Message(role=TOOL, parts=parts, timestamp=ts))
        elif t in ("session.info", "session.error", "session.warning"):
            if isinstance(d.get("message"), str) and d["message"]:
                conv.messages.append(Message(role=SYSTEM, name=t.split(".", 1)[1], event=True,
                                             timestamp=ts,
                                             parts=[Part(kind=TEXT, text=d["message"])]))
        elif t == "assistant.usage":
            add_usage(conv.usage, d)
        elif t == "assistant.message_delta" and isinstance(d.get("deltaContent"), str):
            mid = _s(d.get("messageId")) or ""
            if mid not in deltas:
                delta_at[mid] = len(conv.messages)
            deltas.setdefault(mid, []).append(d["deltaContent"])
        if t == "assistant.message" and isinstance(d.get("messageId"), str):
            final.add(d["messageId"])
        parent = _s(d.get("parentToolCallId"))
        if parent:                  # a subagent's event: nested under the call that ran it
            for m in conv.messages[before:]:
                m.sidechain = f"subagent {names.get(parent) or parent}"
    # streamed text whose final assistant.message is missing (the log was cut short)
    for mid in sorted((m for m in deltas if m not in final), key=lambda m: -delta_at[m]):
        conv.messages.insert(delta_at[mid], Message(role=ASSISTANT, model=model, parts=[
            Part(kind=TEXT, text="".join(deltas[mid]))]))
    conv.started, conv.ended = time_range(stamps)
    return finish(conv, model)


# --- Continue -------------------------------------------------------------------------

def is_continue(d: dict) -> bool:
    h = d.get("history")
    return isinstance(h, list) and ("sessionId" in d or "workspaceDirectory" in d) and all(
        isinstance(x, dict) and isinstance(x.get("message"), dict) for x in h[:20])


def parse_continue(d: dict) -> Conversation:
    from .chat_api import chat_message
    conv = Conversation(application="continue", id=_s(d.get("sessionId")),
                        title=_s(d.get("title")))
    if isinstance(d.get("workspaceDirectory"), str):
        conv.metadata["cwd"] = d["workspaceDirectory"]
    answered = {h["message"].get("toolCallId") for h in d["history"]
                if isinstance(h, dict) and isinstance(h.get("message"), dict)
                and h["message"].get("role") == TOOL}
    for item in d["history"]:
        if not isinstance(item, dict) or not isinstance(item.get("message"), dict):
            continue
        m = dict(item["message"])
        role = m.get("role")
        if role == "thinking":
            parts = [Part(kind=THINKING, text=p.text, ref=p.ref) for p in
                     content_parts(m.get("content")) if p.kind == TEXT] or [
                Part(kind=THINKING, ref="redacted")]
            conv.messages.append(Message(role=ASSISTANT, parts=parts))
            continue
        if "toolCalls" in m and "tool_calls" not in m:
            m["tool_calls"] = m["toolCalls"]
        if "toolCallId" in m and "tool_call_id" not in m:
            m["tool_call_id"] = m["toolCallId"]
        if isinstance(m.get("content"), list):       # {"type": "imageUrl", "imageUrl": {url}}
            m["content"] = [dict(p, type="image_url", image_url=p["imageUrl"])
                            if isinstance(p, dict) and p.get("type") == "imageUrl" else p
                            for p in m["content"]]
        msg = chat_message(m)
        if msg is None:
            continue
        reasoning = item.get("reasoning")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str) \
                and reasoning["text"]:
            msg.parts.insert(0, Part(kind=THINKING, text=reasoning["text"]))
        for ci in item.get("contextItems") or []:
            if isinstance(ci, dict):
                desc = _s(ci.get("description")) or _s(ci.get("name"))
                msg.parts.append(Part(kind=BLOB, media_type="context", ref=desc))
                if isinstance(ci.get("content"), str) and ci["content"]:
                    msg.parts.append(Part(kind=TEXT, text=ci["content"]))
        conv.messages.append(msg)
        for st in item.get("toolCallStates") or []:
            if not isinstance(st, dict) or st.get("toolCallId") in answered:
                continue
            out = st.get("output")
            tc = st.get("toolCall") if isinstance(st.get("toolCall"), dict) else {}
            fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
            name = _s(fn.get("name"))
            parts = []
            for o in out if isinstance(out, list) else []:
                if isinstance(o, dict) and isinstance(o.get("content"), str):
                    parts.append(Part(kind=TOOL_RESULT, text=o["content"],
                                      call_id=_s(st.get("toolCallId")), name=name,
                                      is_error=st.get("status") == "errored"))
            if parts:
                conv.messages.append(Message(role=TOOL, parts=parts))
    add_usage(conv.usage, d.get("usage"))
    return finish(conv, d.get("chatModelTitle"))
