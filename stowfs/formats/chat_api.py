"""Provider API payloads: requests, responses (also SSE streams) and logged request/response pairs.

Covers OpenAI Chat Completions (and the compatible Groq / Mistral / OpenRouter APIs),
Anthropic Messages, OpenAI Responses and Gemini generateContent. A request gives the
history it sends; a response adds the assistant message(s) it returned. `recognise(obj)`
turns one JSON object (a request, a response, or {"request": ..., "response": ...}) into
(format label, Conversation), or None when the object is none of these.

`ItemsBuilder` (Responses API items -> Messages) is reused by the Codex CLI parser.
"""
from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import urlsplit

from ..conversation import (ASSISTANT, SYSTEM, TEXT, THINKING, TOOL, TOOL_CALL, USER,
                            Conversation, Message, Part)
from .common import (add_usage, compact_json, content_parts, finish, iso_from_unix,
                     result_parts)

OPENAI_CHAT = "openai-chat"
ANTHROPIC = "anthropic-messages"
RESPONSES = "openai-responses"
GEMINI = "gemini-api"
EXCHANGE = "api-exchange"
VALUE_PARTS = "llamafactory-messages"    # OpenAI-style rows whose parts are {"type", "value"}
ANTHROPIC_EVENTS = "anthropic-stream-events"
RESPONSES_EVENTS = "openai-responses-stream-events"
CHAT_CHUNKS = "openai-chat-stream-chunks"

APPLICATION = {OPENAI_CHAT: "openai", ANTHROPIC: "anthropic", RESPONSES: "openai-responses",
               GEMINI: "gemini-api", VALUE_PARTS: "llamafactory"}

_ANTHROPIC_BLOCKS = ("tool_use", "tool_result", "thinking", "redacted_thinking", "document",
                     "server_tool_use", "web_search_tool_result", "mcp_tool_use",
                     "mcp_tool_result", "compaction")
_OPENAI_ROLES = ("system", "developer", "tool", "function")


def _s(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


# --- OpenAI / Anthropic style message lists -------------------------------------------

def _tool_call_part(tc: Any) -> Optional[Part]:
    """OpenAI tool_calls entry {id, type: function, function: {name, arguments}}."""
    if not isinstance(tc, dict):
        return None
    fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
    args = fn.get("arguments")
    return Part(kind=TOOL_CALL, name=_s(fn.get("name")), call_id=_s(tc.get("id")),
                text=args if isinstance(args, str) else compact_json(args if args is not None
                                                                     else {}))


def chat_message(m: Any, model: Optional[str] = None) -> Optional[Message]:
    """One message of an OpenAI- or Anthropic-style `messages` list (also Stowken's)."""
    if not isinstance(m, dict):
        return None
    role = m.get("role")
    role = role if isinstance(role, str) else "unknown"
    content = m.get("content")
    name = _s(m.get("name"))
    if role in ("tool", "function"):
        parts = result_parts(content, _s(m.get("tool_call_id")), name, False)
    else:
        parts = []
        for key in ("reasoning_content", "reasoning"):
            r = m.get(key)
            if isinstance(r, str) and r:
                parts.append(Part(kind=THINKING, text=r))
        parts.extend(content_parts(content))
        if content is None and isinstance(m.get("refusal"), str):
            parts.extend(content_parts(m["refusal"]))
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            parts.extend(p for p in map(_tool_call_part, calls) if p is not None)
        if isinstance(m.get("function_call"), dict):
            p = _tool_call_part(m["function_call"])
            if p is not None:
                parts.append(p)
    return Message(role=role, parts=parts, name=name, model=model)


def chat_messages(msgs: list) -> list[Message]:
    return [msg for msg in map(chat_message, msgs) if msg is not None]


def _looks_anthropic(d: dict) -> bool:
    msgs = d["messages"]
    for m in msgs[:200]:
        if not isinstance(m, dict):
            continue
        if m.get("role") in _OPENAI_ROLES or "tool_calls" in m:
            return False
        c = m.get("content")
        if isinstance(c, list):
            for b in c:
                if isinstance(b, dict):
                    t = b.get("type")
                    if t in _ANTHROPIC_BLOCKS or (t == "image" and "source" in b):
                        return True
                    if t in ("image_url", "input_audio", "file"):
                        return False
    if "system" in d or "anthropic_version" in d:
        return True
    model = d.get("model")
    return isinstance(model, str) and model.lower().startswith("claude")


# --- OpenAI Responses items -----------------------------------------------------------

class ItemsBuilder:
    """Responses API items -> Messages. Consecutive assistant-side items (reasoning,
    assistant message, function/tool calls) are merged into one assistant message; each
    tool output becomes a `tool` message."""

    _SKIP = ("item_reference", "compaction", "compaction_summary", "ghost_snapshot")

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def _new(self, role: str, parts: list[Part], ts: Optional[str], model: Optional[str],
             name: Optional[str] = None) -> None:
        self.messages.append(Message(role=role, parts=parts, timestamp=ts, model=model,
                                     name=name))

    def _assistant(self, parts: list[Part], ts: Optional[str], model: Optional[str]) -> None:
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == ASSISTANT and (model is None or last.model in
                                                              (None, model)):
            last.parts.extend(parts)
            last.model = last.model or model
        else:
            self._new(ASSISTANT, parts, ts, model)

    def add(self, item: Any, ts: Optional[str] = None, model: Optional[str] = None) -> bool:
        """Add one item; False when it is not a Responses item at all."""
        if isinstance(item, str):
            self._new(USER, content_parts(item), ts, None)
            return True
        if not isinstance(item, dict):
            return False
        t, role = item.get("type"), item.get("role")
        if t == "message" or (t is None and isinstance(role, str)):
            parts = content_parts(item.get("content"))
            role = role if isinstance(role, str) else "unknown"
            if role == ASSISTANT:
                self._assistant(parts, ts, model)
            else:
                self._new(role, parts, ts, None)
        elif t == "reasoning":
            parts = []
            for key in ("summary", "content"):
                for p in content_parts(item.get(key) or None):
                    if p.text is not None:
                        parts.append(Part(kind=THINKING, text=p.text))
            if parts:
                self._assistant(parts, ts, model)
        elif t in ("function_call", "custom_tool_call"):
            args = item.get("arguments") if t == "function_call" else item.get("input")
            self._assistant([Part(kind=TOOL_CALL, name=_s(item.get("name")),
                                  call_id=_s(item.get("call_id") or item.get("id")),
                                  text=args if isinstance(args, str) else compact_json(args))],
                            ts, model)
        elif isinstance(t, str) and t.endswith("_call_output"):
            self._new(TOOL, result_parts(item.get("output"), _s(item.get("call_id")), None,
                                         item.get("status") == "failed"), ts, None)
        elif isinstance(t, str) and t.endswith("_call"):
            name = _s(item.get("name")) or t[: -len("_call")]
            args = item.get("arguments", item.get("action", item.get("input")))
            parts = [Part(kind=TOOL_CALL, name=name,
                          call_id=_s(item.get("call_id") or item.get("id")),
                          text=args if isinstance(args, str) else compact_json(
                              args if args is not None else {}))]
            if "output" in item and item["output"] is not None:   # mcp_call carries its result
                parts.extend(result_parts(item["output"], parts[0].call_id, name,
                                          bool(item.get("error"))))
            self._assistant(parts, ts, model)
        elif t in self._SKIP:
            pass
        else:
            return False
        return True


# --- requests -------------------------------------------------------------------------

def _has_role_dict(items: list) -> bool:
    return any(isinstance(x, dict) and isinstance(x.get("role"), str) for x in items[:50])


def request_kind(d: dict) -> Optional[str]:
    msgs = d.get("messages")
    if isinstance(msgs, list) and (_has_role_dict(msgs) or (not msgs and "model" in d)):
        return ANTHROPIC if _looks_anthropic(d) else OPENAI_CHAT
    if isinstance(d.get("input"), (str, list)) and ("model" in d or "instructions" in d
                                                    or "previous_response_id" in d):
        return RESPONSES
    contents = d.get("contents")
    if isinstance(contents, list) and (any(isinstance(x, dict) and "parts" in x
                                           for x in contents[:50])
                                       or (not contents and "model" in d)):
        return GEMINI
    return None


def _gemini_contents(contents: list, model: Optional[str] = None) -> list[Message]:
    out = []
    for c in contents:
        if isinstance(c, str):
            out.append(Message(role=USER, parts=content_parts(c)))
            continue
        if not isinstance(c, dict):
            continue
        role = c.get("role")
        if role == "model":
            role = ASSISTANT
        elif role == "function":
            role = TOOL
        elif not isinstance(role, str):
            role = USER
        out.append(Message(role=role, parts=content_parts(c.get("parts")),
                           model=model if role == ASSISTANT else None))
    return out


def request_messages(d: dict, kind: str) -> list[Message]:
    msgs: list[Message] = []
    if kind in (OPENAI_CHAT, ANTHROPIC):
        system = d.get("system")
        if system is not None and system != "" and system != []:
            msgs.append(Message(role=SYSTEM, parts=content_parts(system)))
        msgs.extend(chat_messages(d["messages"]))
    elif kind == RESPONSES:
        instr = d.get("instructions")
        if instr:
            msgs.append(Message(role=SYSTEM, parts=content_parts(instr)))
        b = ItemsBuilder()
        inp = d.get("input")
        for item in ([inp] if isinstance(inp, str) else inp):
            b.add(item)
        msgs.extend(b.messages)
    elif kind == GEMINI:
        si = d.get("systemInstruction", d.get("system_instruction"))
        if isinstance(si, dict):
            msgs.append(Message(role=SYSTEM, parts=content_parts(si.get("parts"))))
        elif isinstance(si, str):
            msgs.append(Message(role=SYSTEM, parts=content_parts(si)))
        msgs.extend(_gemini_contents(d["contents"]))
    return msgs


# --- responses ------------------------------------------------------------------------

def response_kind(d: dict) -> Optional[str]:
    obj = d.get("object")
    if isinstance(d.get("choices"), list) and (obj is None or (isinstance(obj, str) and
                                                               obj.startswith("chat."))):
        return OPENAI_CHAT
    if d.get("type") == "message" and "content" in d and d.get("role") == ASSISTANT:
        return ANTHROPIC
    if isinstance(d.get("output"), list) and (
            (isinstance(obj, str) and obj.startswith("response")) or "created_at" in d):
        return RESPONSES
    if isinstance(d.get("candidates"), list):
        return GEMINI
    return None


class _Resp:
    """What a response contributes to a conversation."""

    def __init__(self, kind: str, d: dict) -> None:
        self.kind = kind
        self.messages: list[Message] = []
        self.usage: dict[str, int] = {}
        model = d.get("model") if kind != GEMINI else d.get("modelVersion")
        self.model = _s(model)
        self.id = _s(d.get("id") if kind != GEMINI else d.get("responseId"))
        self.created = iso_from_unix(d.get("created", d.get("created_at")))
        if kind == OPENAI_CHAT:
            for ch in d["choices"]:
                if isinstance(ch, dict):
                    msg = chat_message(ch.get("message") if isinstance(ch.get("message"), dict)
                                       else {"role": ASSISTANT, "content": ch.get("text")},
                                       self.model)
                    if msg is not None:
                        self.messages.append(msg)
            add_usage(self.usage, d.get("usage"))
        elif kind == ANTHROPIC:
            self.messages.append(Message(role=ASSISTANT, parts=content_parts(d.get("content")),
                                         model=self.model))
            add_usage(self.usage, d.get("usage"))
        elif kind == RESPONSES:
            b = ItemsBuilder()
            for item in d["output"]:
                b.add(item, model=self.model)
            self.messages = b.messages
            add_usage(self.usage, d.get("usage"))
        elif kind == GEMINI:
            for cand in d["candidates"]:
                if isinstance(cand, dict) and isinstance(cand.get("content"), dict):
                    c = dict(cand["content"])
                    c["role"] = "model"
                    self.messages.extend(_gemini_contents([c], self.model))
            add_usage(self.usage, d.get("usageMetadata"))


def _sse_events(text: str) -> list[dict]:
    events = []
    for line in text.split("\n"):
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload.startswith("{"):
                try:
                    ev = json.loads(payload)
                except (ValueError, RecursionError):
                    continue
                if isinstance(ev, dict):
                    events.append(ev)
    return events


def _anthropic_stream(events: list[dict]) -> Optional[dict]:
    msg: Optional[dict] = None
    blocks: dict[int, dict] = {}
    partial: dict[int, list[str]] = {}
    for ev in events:
        et = ev.get("type")
        idx = ev.get("index")
        if et == "message_start" and isinstance(ev.get("message"), dict):
            msg = dict(ev["message"])
            msg["usage"] = dict(msg.get("usage") or {})
        elif et == "content_block_start" and type(idx) is int \
                and isinstance(ev.get("content_block"), dict):
            blocks[idx] = dict(ev["content_block"])
        elif et == "content_block_delta" and idx in blocks and isinstance(ev.get("delta"), dict):
            delta, block = ev["delta"], blocks[idx]
            dt = delta.get("type")
            for key, field in (("text_delta", "text"), ("thinking_delta", "thinking")):
                if dt == key and isinstance(delta.get(field), str):
                    block[field] = (block.get(field) or "") + delta[field]
            if dt == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                partial.setdefault(idx, []).append(delta["partial_json"])
        elif et == "message_delta" and msg is not None:
            if isinstance(ev.get("usage"), dict):
                msg["usage"].update(ev["usage"])
    if msg is None:
        return None
    for idx, chunks in partial.items():
        raw = "".join(chunks)
        try:
            blocks[idx]["input"] = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            blocks[idx]["input"] = raw
    msg["content"] = [blocks[i] for i in sorted(blocks)]
    return msg


def _openai_stream(events: list[dict]) -> Optional[dict]:
    head: Optional[dict] = None
    choices: dict[int, dict] = {}
    usage = None
    for ev in events:
        if head is None:
            head = ev
        if isinstance(ev.get("usage"), dict):
            usage = ev["usage"]
        for ch in ev.get("choices") or []:
            if not isinstance(ch, dict) or not isinstance(ch.get("delta"), dict):
                continue
            i = ch.get("index") if type(ch.get("index")) is int else 0
            acc = choices.setdefault(i, {"role": ASSISTANT, "content": "", "reasoning": "",
                                         "calls": {}})
            delta = ch["delta"]
            if isinstance(delta.get("content"), str):
                acc["content"] += delta["content"]
            for key in ("reasoning_content", "reasoning"):
                if isinstance(delta.get(key), str):
                    acc["reasoning"] += delta[key]
            for tc in delta.get("tool_calls") or []:
                if not isinstance(tc, dict):
                    continue
                j = tc.get("index") if type(tc.get("index")) is int else len(acc["calls"])
                call = acc["calls"].setdefault(j, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or _s(tc.get("id"))
                fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
                if isinstance(fn.get("name"), str):
                    call["name"] += fn["name"]
                if isinstance(fn.get("arguments"), str):
                    call["arguments"] += fn["arguments"]
    if head is None:
        return None
    out_choices = []
    for i in sorted(choices):
        acc = choices[i]
        m: dict[str, Any] = {"role": ASSISTANT, "content": acc["content"] or None}
        if acc["reasoning"]:
            m["reasoning_content"] = acc["reasoning"]
        if acc["calls"]:
            m["tool_calls"] = [{"id": c["id"], "type": "function",
                                "function": {"name": c["name"], "arguments": c["arguments"]}}
                               for _, c in sorted(acc["calls"].items())]
        out_choices.append({"index": i, "message": m})
    return {"object": "chat.completion", "id": head.get("id"), "model": head.get("model"),
            "created": head.get("created"), "choices": out_choices, "usage": usage}


def stream_response(text: str) -> Optional[tuple[str, dict]]:
    """Assemble an SSE stream body ("event: ..."/"data: ...") into a response object."""
    head = text.lstrip()[:6]
    if not (head.startswith("event:") or head.startswith("data:")):
        return None
    events = _sse_events(text)
    if not events:
        return None
    for ev in reversed(events):                 # Responses API: the final event has it all
        if isinstance(ev.get("type"), str) and ev["type"].startswith("response.") \
                and isinstance(ev.get("response"), dict) \
                and isinstance(ev["response"].get("output"), list):
            return RESPONSES, ev["response"]
    if any(ev.get("type") == "message_start" for ev in events):
        msg = _anthropic_stream(events)
        return (ANTHROPIC, msg) if msg is not None else None
    if any("choices" in ev for ev in events):
        resp = _openai_stream(events)
        return (OPENAI_CHAT, resp) if resp is not None else None
    if any("candidates" in ev for ev in events):   # Gemini streamGenerateContent?alt=sse
        merged: dict[str, Any] = {"candidates": []}
        for ev in events:
            if isinstance(ev.get("candidates"), list):
                merged["candidates"].extend(ev["candidates"])
            for key in ("usageMetadata", "modelVersion", "responseId"):
                if key in ev:
                    merged[key] = ev[key]
        return GEMINI, merged
    return None


# --- recorded event logs: one stream event per JSON line ------------------------------

_ANTHROPIC_EVENT_TYPES = ("message_start", "content_block_start", "content_block_delta",
                          "content_block_stop", "message_delta", "message_stop", "ping")


def event_log_kind(values: list) -> Optional[str]:
    """ANTHROPIC_EVENTS, RESPONSES_EVENTS or CHAT_CHUNKS when the lines of a JSONL file are
    the events of recorded API streams (what a client logs as it reads an SSE body)."""
    seen = 0
    for v in values[:20]:
        if not isinstance(v, dict):
            continue
        t = v.get("type")
        if t == "message_start" or (t in _ANTHROPIC_EVENT_TYPES and seen == 0 and
                                    any(isinstance(x, dict) and x.get("type") == "message_start"
                                        for x in values[:200])):
            return ANTHROPIC_EVENTS
        if isinstance(t, str) and t.startswith("response.") and (
                "sequence_number" in v or isinstance(v.get("response"), dict) or "delta" in v
                or "item" in v):
            return RESPONSES_EVENTS
        if v.get("object") == "chat.completion.chunk":
            return CHAT_CHUNKS
        seen += 1
    return None


def _split_at(values: list, starts) -> list[list[dict]]:
    """Events grouped per stream: a new group at each event for which starts(ev) holds."""
    groups: list[list[dict]] = []
    for v in values:
        if not isinstance(v, dict):
            continue
        if starts(v) or not groups:
            groups.append([])
        groups[-1].append(v)
    return groups


def _responses_stream(events: list[dict]) -> Optional[dict]:
    """A Responses API event stream -> the response object: the final event's when it has
    one, else assembled from response.output_item.done items and text deltas."""
    for ev in reversed(events):
        r = ev.get("response")
        if isinstance(r, dict) and isinstance(r.get("output"), list) and r["output"]:
            return r
    head: dict = {}
    items: dict[int, Any] = {}
    text: dict[int, list[str]] = {}
    reasoning: dict[int, list[str]] = {}
    for ev in events:
        t = ev.get("type")
        if isinstance(ev.get("response"), dict):
            head = ev["response"]
        idx = ev.get("output_index") if type(ev.get("output_index")) is int else 0
        if t in ("response.output_item.added", "response.output_item.done") \
                and isinstance(ev.get("item"), dict):
            items[idx] = ev["item"]
        elif t == "response.output_text.delta" and isinstance(ev.get("delta"), str):
            text.setdefault(idx, []).append(ev["delta"])
        elif t in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta") \
                and isinstance(ev.get("delta"), str):
            reasoning.setdefault(idx, []).append(ev["delta"])
    output = []
    for idx in sorted(set(items) | set(text) | set(reasoning)):
        item = items.get(idx)
        item = item if isinstance(item, dict) else {}
        if idx in reasoning and not item.get("summary"):       # item without its text
            output.append({"type": "reasoning",
                           "summary": [{"type": "summary_text", "text": "".join(reasoning[idx])}]})
            if item.get("type") == "reasoning":
                continue
        if idx in text and not item.get("content"):
            output.append({"type": "message", "role": ASSISTANT,
                           "content": [{"type": "output_text", "text": "".join(text[idx])}]})
            continue
        if item:
            output.append(item)
    if not head and not output:
        return None
    out = dict(head)
    out["output"] = output
    out.setdefault("object", "response")
    return out


def event_log(values: list, kind: str) -> list[Conversation]:
    """The conversations of a recorded event log: one per stream in it."""
    convs = []
    if kind == ANTHROPIC_EVENTS:
        for group in _split_at(values, lambda v: v.get("type") == "message_start"):
            msg = _anthropic_stream(group)
            if msg is not None:
                convs.append(build_conversation(ANTHROPIC, None, _Resp(ANTHROPIC, msg)))
    elif kind == RESPONSES_EVENTS:
        for group in _split_at(values, lambda v: v.get("type") == "response.created"):
            resp = _responses_stream(group)
            if resp is not None:
                convs.append(build_conversation(RESPONSES, None, _Resp(RESPONSES, resp)))
    elif kind == CHAT_CHUNKS:
        last: list[Optional[Any]] = [None]

        def new_id(v: dict) -> bool:
            changed = v.get("id") != last[0]
            last[0] = v.get("id")
            return changed
        for group in _split_at(values, new_id):
            resp = _openai_stream(group)
            if resp is not None:
                convs.append(build_conversation(OPENAI_CHAT, None, _Resp(OPENAI_CHAT, resp)))
    return [c for c in convs if c.messages]


# --- putting it together --------------------------------------------------------------

def _body(v: Any) -> Any:
    """A logged request/response body: unwrap {"body": ...} and JSON-in-a-string."""
    if isinstance(v, dict):
        for key in ("body", "parsed_body", "json"):
            if key in v and isinstance(v[key], (dict, str, list)) and not (
                    "messages" in v or "choices" in v or "content" in v):
                return _body(v[key])
        if set(v) == {"string"} and isinstance(v["string"], str):
            return _body(v["string"])
        return v
    if isinstance(v, str):
        s = v.lstrip()
        if s.startswith("{"):
            try:
                return json.loads(s)
            except (ValueError, RecursionError):
                return v
    return v


def has_value_parts(msgs: Any) -> bool:
    """True when a message list spells its content parts {"type", "value"} (LLaMA-Factory
    v1 and other dataset tools) rather than an API's {"type": "text", "text"}."""
    if not isinstance(msgs, list):
        return False
    for m in msgs[:50]:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list):
            for b in c[:8]:
                if isinstance(b, dict) and "value" in b and "text" not in b:
                    return True
    return False


def build_conversation(kind: str, req: Optional[dict], resp: Optional[_Resp]) -> Conversation:
    dataset = req is not None and kind == OPENAI_CHAT and has_value_parts(req.get("messages"))
    conv = Conversation(application=APPLICATION[VALUE_PARTS if dataset else kind])
    if dataset:
        conv.metadata["format"] = VALUE_PARTS
    if req is not None:
        conv.messages = request_messages(req, kind)
        if dataset:          # a training row: its function schemas are part of what it says
            from .sharegpt import _tools_message
            tools_msg = _tools_message(req.get("tools"))
            if tools_msg is not None:
                conv.messages.insert(0, tools_msg)
        tools = req.get("tools")
        if isinstance(tools, list):
            names = []
            for t in tools:
                if isinstance(t, dict):
                    fn = t.get("function") if isinstance(t.get("function"), dict) else t
                    n = fn.get("name") or t.get("type")
                    if isinstance(n, str):
                        names.append(n)
            if names:
                conv.metadata["tools"] = names
    if resp is not None:
        conv.messages.extend(resp.messages)
        conv.usage = resp.usage
        conv.id = resp.id
        conv.started = conv.ended = resp.created
    return finish(conv, (req or {}).get("model") or (resp.model if resp else None))


def _response(obj: Any) -> Optional[_Resp]:
    if isinstance(obj, str):
        streamed = stream_response(obj)
        return _Resp(*streamed) if streamed else None
    if isinstance(obj, dict):
        kind = response_kind(obj)
        if kind is not None:
            return _Resp(kind, obj)
    return None


def _error_message(body: Any) -> Optional[Message]:
    """An API error response ({"error": {"message", "failed_generation", ...}}) as an event:
    what the provider said, and what the model generated if the provider returns it."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None
    parts = [Part(kind=TEXT, text=err[k]) for k in ("message", "failed_generation")
             if isinstance(err.get(k), str) and err[k]]
    if not parts:
        return None
    return Message(role=SYSTEM, name="error", event=True, parts=parts)


def recognise(d: dict) -> Optional[tuple[str, Conversation]]:
    """(format, Conversation) for an API request, response, or logged pair; else None."""
    if "request" in d or "response" in d:
        req = _body(d.get("request"))
        req_kind = request_kind(req) if isinstance(req, dict) else None
        resp = _response(_body(d.get("response")))
        if req_kind is None and resp is None:
            return None
        kind = req_kind or resp.kind  # type: ignore[union-attr]
        conv = build_conversation(kind, req if req_kind else None, resp)
        if resp is None:
            err = _error_message(_body(d.get("response")))
            if err is not None:
                conv.messages.append(err)
        for key in ("method", "uri", "url", "status", "source_file", "index"):
            v = d.get(key)
            if isinstance(v, str) or (type(v) is int and -2 ** 63 <= v < 2 ** 63):
                conv.metadata[key] = v
        uri = d.get("uri") or d.get("url")
        if isinstance(uri, str):
            conv.metadata["provider"] = urlsplit(uri).hostname or ""
        if not conv.messages:
            return None
        return EXCHANGE, conv
    kind = request_kind(d)
    if kind is not None:
        conv = build_conversation(kind, d, None)
        return conv.metadata.pop("format", kind), conv
    resp = _response(d)
    if resp is not None:
        return resp.kind, build_conversation(resp.kind, None, resp)
    return None
