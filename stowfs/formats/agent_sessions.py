"""Coding-agent session logs: Claude Code JSONL, Codex CLI rollout JSONL, Gemini CLI JSON.

Each `parse_*` function takes already-decoded JSON (a list of line objects, or the session
object) and returns one Conversation. `session_kind(lines)` tells which JSONL dialect a
list of line objects is, if any.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Optional

from ..conversation import (ASSISTANT, SYSTEM, TEXT, THINKING, TOOL, TOOL_CALL, USER,
                            Conversation, Message, Part)
from .chat_api import ItemsBuilder
from .common import (add_usage, compact_json, content_parts, finish, function_response_parts,
                     main_model, time_range)

CLAUDE_CODE = "claude-code-jsonl"
CODEX = "codex-rollout-jsonl"
GEMINI_CLI = "gemini-cli-json"
GEMINI_CLI_LOGS = "gemini-cli-logs"

_CC_META_TYPES = ("summary", "file-history-snapshot", "queue-operation", "last-prompt",
                  "progress", "system", "custom-title", "attachment")
# line kinds parse_claude_code knows: shown (user, assistant, system, summary, attachment,
# agent_progress) or bookkeeping with nothing a message says
_CC_KNOWN = ("user", "assistant", "system", "summary", "attachment", "progress",
             "file-history-snapshot", "queue-operation", "last-prompt", "custom-title",
             "ai-title", "pr-link", "agent-name", "tag")
_CODEX_TYPES = ("session_meta", "response_item", "event_msg", "turn_context", "compacted")
_CODEX_LEGACY_ITEMS = ("message", "function_call", "function_call_output", "reasoning",
                       "custom_tool_call", "custom_tool_call_output", "local_shell_call")


def _s(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


def is_claude_code_line(d: dict) -> bool:
    t = d.get("type")
    if t in ("user", "assistant"):
        return isinstance(d.get("message"), dict) and (
            "uuid" in d or "sessionId" in d or "parentUuid" in d)
    if t in _CC_META_TYPES:
        return any(k in d for k in ("sessionId", "leafUuid", "uuid", "messageId", "lastPrompt"))
    return False


def is_codex_line(d: dict) -> bool:
    return d.get("type") in _CODEX_TYPES and "payload" in d


def session_kind(lines: list) -> Optional[str]:
    """CLAUDE_CODE, CODEX or None, judged on the first object lines."""
    seen = 0
    legacy_codex = False
    for d in lines:
        if not isinstance(d, dict):
            continue
        if is_codex_line(d):
            return CODEX
        if is_claude_code_line(d):
            return CLAUDE_CODE
        if seen == 0 and "id" in d and "timestamp" in d and "type" not in d \
                and ("instructions" in d or "git" in d):
            legacy_codex = True      # old Codex: header line, then bare Responses items
        elif legacy_codex and d.get("type") in _CODEX_LEGACY_ITEMS:
            return CODEX
        seen += 1
        if seen >= 20:
            break
    return None


# --- Claude Code ----------------------------------------------------------------------

class _Thread:
    """Claude Code lines -> messages of one thread (the main one, or a nested one)."""

    def __init__(self) -> None:
        self.msgs: list[Message] = []
        self.usage_by_id: dict[str, Any] = {}
        self.usage: dict[str, int] = {}
        self.last_id: Optional[str] = None

    def add(self, d: dict) -> None:
        msgs = self.msgs
        ts = _s(d.get("timestamp"))
        t = d.get("type")
        m = d.get("message")
        if t == "assistant" and isinstance(m, dict):
            mid = _s(m.get("id"))
            parts = content_parts(m.get("content"))
            model = _s(m.get("model"))
            if mid is not None and mid == self.last_id and msgs and msgs[-1].role == ASSISTANT:
                msgs[-1].parts.extend(parts)        # one API message streamed over lines
            else:
                msgs.append(Message(role=ASSISTANT, parts=parts, timestamp=ts, model=model))
            self.last_id = mid
            if mid is not None:
                self.usage_by_id[mid] = m.get("usage")   # repeated per line: count once
            else:
                add_usage(self.usage, m.get("usage"))
            return
        if t == "user" and isinstance(m, dict):
            role = m.get("role") if isinstance(m.get("role"), str) else USER
            msgs.append(Message(role=role, parts=content_parts(m.get("content")), timestamp=ts))
        elif t == "system" and isinstance(d.get("content"), str) and d["content"]:
            msgs.append(Message(role=SYSTEM, parts=[Part(kind=TEXT, text=d["content"])],
                                name=_s(d.get("subtype")), timestamp=ts, event=True))
        elif t == "summary" and isinstance(d.get("summary"), str):
            msgs.append(Message(role=SYSTEM, parts=[Part(kind=TEXT, text=d["summary"])],
                                name="summary", timestamp=ts, event=True))
        elif t == "attachment" and isinstance(d.get("attachment"), dict):
            msg = _attachment(d["attachment"], ts)
            if msg is None:
                return
            msgs.append(msg)
        else:
            return
        self.last_id = None

    def total_usage(self) -> dict[str, int]:
        out = dict(self.usage)
        for u in self.usage_by_id.values():
            add_usage(out, u)
        return out


# attachment keys whose strings are what the attachment says, in this order
_ATTACH_TEXT = ("prompt", "command", "snippet", "content", "stdout", "stderr", "planContent",
                "text", "message", "additionalContext", "file")


def _attachment_texts(value: Any, out: list[Part], depth: int = 0) -> None:
    if isinstance(value, str):
        if value:
            out.append(Part(kind=TEXT, text=value))
    elif isinstance(value, list) and depth < 4:
        if value and all(isinstance(b, dict) and "type" in b for b in value):
            out.extend(content_parts(value))           # content blocks
        else:
            for v in value:
                _attachment_texts(v, out, depth + 1)
    elif isinstance(value, dict) and depth < 4:
        for key in _ATTACH_TEXT:
            if key in value:
                _attachment_texts(value[key], out, depth + 1)


def _attachment(a: dict, ts: Optional[str]) -> Optional[Message]:
    """A Claude Code 2.1 `attachment` line: a prompt queued while the agent was busy
    (queued_command), a file the user edited (edited_text_file), a hook's output
    (hook_*), a file or plan read into the context, ..."""
    kind = _s(a.get("type")) or "attachment"
    parts: list[Part] = []
    for key in ("filename", "filePath", "planFilePath", "hookName"):
        if isinstance(a.get(key), str) and a[key]:
            parts.append(Part(kind=TEXT, text=a[key]))
            break
    _attachment_texts(a, parts)
    if kind == "queued_command":
        mode = _s(a.get("commandMode"))
        label = "queued" if mode in (None, "prompt") else f"queued {mode}"
        return Message(role=USER, parts=parts, timestamp=ts, label=label)
    if not parts:
        return None
    return Message(role=SYSTEM, parts=parts, name=kind, timestamp=ts, event=True)


def _task_calls(msgs: list[Message]) -> dict[str, tuple[int, Part]]:
    """call id -> (index of the message holding it, the call) for every tool call."""
    out = {}
    for i, m in enumerate(msgs):
        for p in m.parts:
            if p.kind == TOOL_CALL and p.call_id:
                out[p.call_id] = (i, p)
    return out


def _subagent_label(call: Optional[Part], fallback: str) -> str:
    if call is not None and call.text:
        try:
            args = json.loads(call.text)
        except (ValueError, RecursionError):
            args = None
        if isinstance(args, dict):
            bits = [x for x in (args.get("subagent_type"), args.get("description"))
                    if isinstance(x, str) and x]
            if bits:
                return "subagent " + ": ".join(bits)
    return fallback


def parse_claude_code(lines: list) -> Conversation:
    """A Claude Code session. Subagent threads kept in the same file — `isSidechain` lines
    (Claude Code <= 1.0 writes them inline; 2.0 files merged with their subagents' have
    them with an `agentId`) and the `agent_progress` lines of 2.x, which copy a running
    subagent's messages — are nested blocks placed right after the message with the Task
    call that started them: matched by the agentId on the line with the Task's result,
    by the call's prompt, or by its tool-use id."""
    conv = Conversation(application="claude-code")
    main = _Thread()
    stamps: list[str] = []
    all_side = all(d.get("isSidechain") is True for d in lines
                   if isinstance(d, dict) and d.get("type") in ("user", "assistant"))
    # nested threads: key -> (thread, main message count when it began, call id if known)
    nested: dict[str, tuple[_Thread, int, Optional[str]]] = {}
    side_root: dict[str, str] = {}             # sidechain line uuid -> its thread's key
    agent_call: dict[str, str] = {}            # agentId -> the Task call whose result it gave
    unknown: dict[str, int] = {}
    for d in lines:
        if not isinstance(d, dict):
            continue
        ts = _s(d.get("timestamp"))
        if ts:
            stamps.append(ts)
        if conv.id is None and isinstance(d.get("sessionId"), str):
            conv.id = d["sessionId"]
        for key, meta in (("cwd", "cwd"), ("gitBranch", "git_branch"), ("version", "version"),
                          ("agentId", "agent_id"), ("slug", "slug")):
            if meta not in conv.metadata and isinstance(d.get(key), str) and d[key] and (
                    key != "agentId" or all_side):
                conv.metadata[meta] = d[key]
        if d.get("isSidechain") is True:
            conv.metadata["sidechain"] = True
        data = d.get("data")
        if d.get("type") == "progress" and isinstance(data, dict) \
                and data.get("type") == "agent_progress" and isinstance(data.get("message"), dict):
            call = _s(d.get("parentToolUseID")) or "?"
            key = "call:" + call
            if key not in nested:
                nested[key] = (_Thread(), len(main.msgs), call)
            nested[key][0].add(data["message"])
            continue
        if d.get("isSidechain") is True and not all_side and d.get("type") != "progress":
            uuid, parent = _s(d.get("uuid")), _s(d.get("parentUuid"))
            agent = _s(d.get("agentId"))           # 2.0: the subagent's id on each line
            key = ("side:agent:" + agent) if agent else \
                side_root.get(parent or "") or "side:" + (uuid or str(len(nested)))
            if uuid:
                side_root[uuid] = key
            if key not in nested:
                nested[key] = (_Thread(), len(main.msgs), None)
            nested[key][0].add(d)
            continue
        agent = _s(d.get("agentId"))
        if agent and agent not in agent_call and isinstance(d.get("message"), dict):
            for b in d["message"].get("content") or []:      # the Task result it answered
                if isinstance(b, dict) and b.get("type") == "tool_result" \
                        and isinstance(b.get("tool_use_id"), str):
                    agent_call[agent] = b["tool_use_id"]
                    break
        t = d.get("type")
        if not (isinstance(t, str) and t in _CC_KNOWN) and (
                isinstance(d.get("message"), dict) or isinstance(d.get("content"), str)):
            unknown[str(t)] = unknown.get(str(t), 0) + 1     # a line kind not known here
        main.add(d)
    conv.usage = main.total_usage()
    msgs = main.msgs
    conv.model = main_model(msgs)          # the session's own model, not its subagents'
    if nested:
        calls = _task_calls(msgs)
        by_prompt: dict[str, str] = {}
        for cid, (_, part) in calls.items():
            try:
                args = json.loads(part.text or "")
            except (ValueError, RecursionError):
                continue
            if isinstance(args, dict) and isinstance(args.get("prompt"), str):
                by_prompt.setdefault(args["prompt"], cid)
        inserts: list[tuple[int, int, list[Message]]] = []
        for order, (key, (thread, began, call_id)) in enumerate(nested.items()):
            if key.startswith("side:"):
                add_usage(conv.usage, thread.total_usage())    # only here, not elsewhere
                call_id = agent_call.get(key[len("side:agent:"):]) \
                    if key.startswith("side:agent:") else None
                first = next((p.text for m in thread.msgs[:1] for p in m.parts if p.text), None)
                by_text = by_prompt.pop(first, None) if first is not None else None
                call_id = call_id or by_text
            where = calls.get(call_id or "")
            pos = where[0] + 1 if where is not None else began
            label = _subagent_label(where[1] if where else None,
                                    "subagent" if call_id is None else f"subagent {call_id}")
            for m in thread.msgs:
                m.sidechain = label
            inserts.append((pos, order, thread.msgs))
        for pos, _, block in sorted(inserts, key=lambda x: (-x[0], -x[1])):
            msgs[pos:pos] = block
    conv.messages = msgs
    conv.started, conv.ended = time_range(stamps)
    if unknown:
        conv.metadata["partial"] = "Claude Code lines of a kind not shown: " + ", ".join(
            f"{n} {t}" for t, n in unknown.items())
    return finish(conv)


# --- Codex CLI ------------------------------------------------------------------------

def parse_codex(lines: list) -> Conversation:
    conv = Conversation(application="codex-cli")
    unknown: dict[str, int] = {}
    b = ItemsBuilder()
    stamps: list[str] = []
    model: Optional[str] = None
    events: list[Message] = []          # event_msg copies, used only if there are no items
    have_items = False
    for d in lines:
        if not isinstance(d, dict):
            continue
        ts = _s(d.get("timestamp"))
        if ts:
            stamps.append(ts)
        t, p = d.get("type"), d.get("payload")
        if not isinstance(p, dict):
            if t in _CODEX_LEGACY_ITEMS and b.add(d, ts, model):
                have_items = True
            elif "instructions" in d and conv.id is None:        # legacy header line
                conv.id = _s(d.get("id"))
                if isinstance(d.get("instructions"), str) and d["instructions"]:
                    b.messages.append(Message(role=SYSTEM, parts=content_parts(
                        d["instructions"]), name="instructions", timestamp=ts))
            continue
        if t == "session_meta":
            conv.id = conv.id or _s(p.get("id") or p.get("session_id"))
            for key in ("cwd", "cli_version", "originator", "model_provider", "source"):
                if isinstance(p.get(key), str):
                    conv.metadata.setdefault(key, p[key])
            instr = p.get("base_instructions", p.get("instructions"))
            if isinstance(instr, dict):
                instr = instr.get("text")
            if isinstance(instr, str) and instr and not any(
                    m.name == "instructions" for m in b.messages):
                b.messages.append(Message(role=SYSTEM, parts=content_parts(instr),
                                          name="instructions", timestamp=ts))
        elif t == "turn_context":
            model = _s(p.get("model")) or model
        elif t == "response_item":
            if b.add(p, ts, model):
                have_items = True
            else:
                kind = str(p.get("type"))
                unknown[kind] = unknown.get(kind, 0) + 1
        elif t == "compacted":
            if isinstance(p.get("message"), str) and p["message"]:
                b.messages.append(Message(role=SYSTEM, parts=content_parts(p["message"]),
                                          name="compacted", timestamp=ts))
        elif t == "event_msg":
            pt = p.get("type")
            if pt == "token_count" and isinstance(p.get("info"), dict):
                total = p["info"].get("total_token_usage")
                if isinstance(total, dict):        # cumulative: keep the last one
                    conv.usage = {}
                    add_usage(conv.usage, total)
            elif pt in ("user_message", "agent_message") and isinstance(p.get("message"), str):
                role = USER if pt == "user_message" else ASSISTANT
                events.append(Message(role=role, parts=content_parts(p["message"]),
                                      timestamp=ts, model=model if role == ASSISTANT else None))
            elif pt == "agent_reasoning" and isinstance(p.get("text"), str):
                events.append(Message(role=ASSISTANT, parts=[Part(kind=THINKING, text=p["text"])],
                                      timestamp=ts, model=model))
    conv.messages = b.messages
    if not have_items:
        conv.messages.extend(events)
    conv.started, conv.ended = time_range(stamps)
    if unknown:
        conv.metadata["partial"] = "Codex items of a kind not shown: " + ", ".join(
            f"{n} {k}" for k, n in unknown.items())
    return finish(conv, model)


# --- Gemini CLI -----------------------------------------------------------------------

def is_gemini_cli(d: dict) -> bool:
    msgs = d.get("messages")
    if not isinstance(d.get("sessionId"), str) or not isinstance(msgs, list):
        return False
    if "projectHash" in d or "startTime" in d:
        return True
    first = next((m for m in msgs if isinstance(m, dict)), None)
    return first is not None and "type" in first and "role" not in first


def parse_gemini_cli(d: dict) -> Conversation:
    conv = Conversation(application="gemini-cli", id=d["sessionId"],
                        started=_s(d.get("startTime")), ended=_s(d.get("lastUpdated")))
    for key in ("projectHash", "kind"):
        if isinstance(d.get(key), str):
            conv.metadata[key] = d[key]
    for m in d["messages"]:
        if not isinstance(m, dict):
            continue
        t, ts = m.get("type"), _s(m.get("timestamp"))
        if t == "user":
            conv.messages.append(Message(role=USER, parts=content_parts(m.get("content")),
                                         timestamp=ts))
            continue
        if t not in ("gemini", "model", "assistant"):
            conv.messages.append(Message(role=SYSTEM, parts=content_parts(m.get("content")),
                                         name=_s(t), timestamp=ts))
            continue
        parts: list[Part] = []
        for th in m.get("thoughts") or []:
            if isinstance(th, dict) and isinstance(th.get("description"), str):
                parts.append(Part(kind=THINKING, text=th["description"],
                                  name=_s(th.get("subject"))))
        parts.extend(content_parts(m.get("content")))
        results: list[Part] = []
        calls = m.get("toolCalls") if isinstance(m.get("toolCalls"), list) else []
        for tc in calls:
            if not isinstance(tc, dict):
                continue
            parts.append(Part(kind=TOOL_CALL, name=_s(tc.get("name")), call_id=_s(tc.get("id")),
                              text=compact_json(tc.get("args", {}))))
            for r in tc.get("result") or []:
                if isinstance(r, dict) and isinstance(r.get("functionResponse"), dict):
                    results.extend(function_response_parts(r["functionResponse"]))
        add_usage(conv.usage, m.get("tokens"))
        conv.messages.append(Message(role=ASSISTANT, parts=parts, timestamp=ts,
                                     model=_s(m.get("model"))))
        if results:
            conv.messages.append(Message(role=TOOL, parts=results, timestamp=ts))
    return finish(conv)


def is_gemini_cli_logs(items: list) -> bool:
    first = next((x for x in items if isinstance(x, dict)), None)
    return first is not None and isinstance(first.get("sessionId"), str) \
        and "messageId" in first and "message" in first


def parse_gemini_cli_logs(items: list) -> list[Conversation]:
    """logs.json: [{sessionId, messageId, type, message, timestamp}] -> one per session."""
    by_session: dict[str, Conversation] = defaultdict(lambda: Conversation(
        application="gemini-cli"))
    for x in items:
        if not isinstance(x, dict) or not isinstance(x.get("sessionId"), str):
            continue
        conv = by_session[x["sessionId"]]
        conv.id = x["sessionId"]
        t = x.get("type")
        role = USER if t == "user" else ASSISTANT if t in ("gemini", "model") else \
            t if isinstance(t, str) else USER
        conv.messages.append(Message(role=role, parts=content_parts(x.get("message")),
                                     timestamp=_s(x.get("timestamp"))))
    return [finish(c) for c in by_session.values()]
