"""Format detection by content, and the never-raising `parse` entry point.

Order: empty -> not UTF-8 (binary / opaque) -> JSON document -> JSONL -> Markdown (aider)
-> plain text. JSON values are then matched against the known shapes; anything else is
returned as a non-conversation with a one-line reason in Parsed.error.

Non-conversation labels: "empty", "binary", "opaque" (not UTF-8), "json", "jsonl", "text".
"""
from __future__ import annotations

import contextlib
import gc
import threading
import json
import re
from collections import Counter
from typing import Any, Optional

from ..conversation import Conversation, Parsed
from . import agent_sessions as agents
from . import aider, chat_api, exports, other_agents, sharegpt, stowken

MESSAGES_JSONL = "messages-jsonl"
MIXED_JSONL = "mixed-jsonl"

_FIRST_NON_WS = re.compile(r"[^ \t\r\n]")
_BAD_LINES_TOLERATED = 0.01      # JSONL: skip up to 1% unparseable lines (at least one)


def _fail(fmt: str, reason: str) -> Parsed:
    return Parsed(format=fmt, conversations=[], error=reason)


def _json_error(e: BaseException, prefix: str = "JSON") -> str:
    if isinstance(e, json.JSONDecodeError):
        msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Unterminated string starting at"
        return f"{prefix}: {msg} at line {e.lineno} column {e.colno}"
    if isinstance(e, RecursionError):
        return f"{prefix}: nested too deeply"
    msg = str(e).split(";")[0]     # int max-str-digits: keep the first clause
    return f"{prefix}: {msg[:200]}"


def parse(data: bytes, name: str = "") -> Parsed:
    """Detect the format of `data` by content and parse it. Never raises.

    `name` is informational only: detection never looks at it. The cyclic garbage
    collector is paused while parsing (json.loads of a large file creates millions of
    containers and the collector would otherwise rescan them over and over: ~3x slower);
    nothing here creates reference cycles, and the previous state is restored.
    """
    with _gc_paused():
        try:
            return _partial(_parse(data if isinstance(data, bytes) else bytes(data)))
        except Exception as e:  # noqa: BLE001 - contract: never raise on any input
            reason = f"parser error: {type(e).__name__}: {e}"[:240].replace("\n", " ")
            return _fail("opaque", reason)


def _partial(parsed: Parsed) -> Parsed:
    """Lift what parsers noted on a conversation (metadata "partial") to the file."""
    notes = [c.metadata.pop("partial") for c in parsed.conversations if "partial" in c.metadata]
    if notes and parsed.partial is None:
        more = f" (and {len(notes) - 1} more conversations)" if len(notes) > 1 else ""
        parsed.partial = str(notes[0]) + more
    return parsed


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic collector while any thread is parsing; the last parser to finish
    restores the state the first one found (a plain disable/enable pair per call would
    let two overlapping parses leave it off for good)."""
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


def _parse(data: bytes) -> Parsed:
    if not data:
        return _fail("empty", "empty file")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = str(memoryview(data)[bom:], "utf-8")
    except UnicodeDecodeError as e:
        pos = e.start + bom
        if b"\x00" in data[:8192]:
            return _fail("binary", f"binary data (not UTF-8 text at byte {pos})")
        return _fail("opaque", f"not valid UTF-8 at byte {pos}")
    m = _FIRST_NON_WS.search(text)
    if m is None:
        return _fail("text", "only whitespace")
    if "\x00" in text[:8192]:
        return _fail("binary", f"binary data (NUL byte at byte {data.index(0)})")
    if text[m.start()] in "{[":
        return _parse_json_text(text, m.start())
    if text.startswith(("event:", "data:", ":"), m.start()):
        streamed = chat_api.stream_response(text[m.start():])     # a recorded SSE body
        if streamed is not None:
            kind, body = streamed
            conv = chat_api.build_conversation(kind, None, chat_api._Resp(kind, body))
            if conv.messages:
                return Parsed(format=kind + "-sse", conversations=[conv])
    if aider.looks_like_aider(text):
        return aider.parse_aider(data, bom)
    return _fail("text", "text, not a recognised conversation format")


def _parse_json_text(text: str, start: int) -> Parsed:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            eol = text.find("\n", start)
            first = text[start:eol if eol >= 0 else len(text)]
            try:
                json.loads(first)
            except (ValueError, RecursionError):
                return _fail("opaque", _json_error(e))
            return _parse_jsonl(text)
        return _fail("opaque", _json_error(e))
    except (ValueError, RecursionError) as e:
        return _fail("opaque", _json_error(e))
    return parse_value(value)


# --- one JSON value -------------------------------------------------------------------

def recognise_object(d: dict) -> Optional[tuple[str, Conversation]]:
    """(format, Conversation) when one JSON object is a whole conversation."""
    if stowken.is_stowken(d):
        return stowken.STOWKEN, stowken.parse_stowken(d)
    if agents.is_gemini_cli(d):
        return agents.GEMINI_CLI, agents.parse_gemini_cli(d)
    if sharegpt.is_preference(d):
        return sharegpt.PREFERENCE, sharegpt.parse_preference(d)
    if sharegpt.is_sharegpt(d):
        return sharegpt.SHAREGPT, sharegpt.parse_sharegpt(d)
    if sharegpt.is_alpaca(d):
        return sharegpt.ALPACA, sharegpt.parse_alpaca(d)
    if exports.is_chatgpt(d):
        return exports.CHATGPT, exports.parse_chatgpt(d)
    if exports.is_claude_ai(d):
        return exports.CLAUDE_AI, exports.parse_claude_ai(d)
    if other_agents.is_continue(d):
        return other_agents.CONTINUE, other_agents.parse_continue(d)
    found = chat_api.recognise(d)
    if found is None and sharegpt.is_completion(d):
        return sharegpt.COMPLETION, sharegpt.parse_completion(d)
    return found


def _message_list(items: list) -> Parsed:
    """A bare list of chat messages (with, at most, bookkeeping entries): one conversation."""
    if all(map(other_agents.is_message, items)) and not any(
            isinstance(x, dict) and "ts" in x for x in items[:20]):
        d = {"messages": items}
        kind = chat_api.request_kind(d) or chat_api.OPENAI_CHAT
        conv = chat_api.build_conversation(kind, d, None)
        fmt = conv.metadata.pop("format", kind)
        if conv.application in ("openai", "anthropic") and other_agents._mentions_cline_tags(
                [x for x in items if isinstance(x, dict)]):
            conv.application, fmt = "cline", other_agents.CLINE
        return Parsed(format=fmt, conversations=[conv])
    conv = other_agents.messages_with_bookkeeping(items)
    return Parsed(format=conv.metadata.pop("format"), conversations=[conv])


def parse_value(value: Any) -> Parsed:
    """Parse an already-decoded JSON document."""
    if isinstance(value, dict):
        if agents.is_claude_code_line(value) or agents.is_codex_line(value):
            return _parse_lines([value])            # a one-line session log
        found = recognise_object(value)
        if found is not None:
            return Parsed(format=found[0], conversations=[found[1]])
        return _fail("json", "no recognised conversation format: " + describe_value(value))
    if isinstance(value, list):
        if not value:
            return _fail("json", "empty JSON array")
        if agents.is_gemini_cli_logs(value):
            return Parsed(format=agents.GEMINI_CLI_LOGS,
                          conversations=agents.parse_gemini_cli_logs(value))
        if other_agents.mostly_messages(value):
            return _message_list(value)
        labels: Counter[str] = Counter()
        convs = []
        rest = []
        for item in value:
            found = recognise_object(item) if isinstance(item, dict) else None
            if found is not None:
                labels[found[0]] += 1
                convs.append(found[1])
            elif _has_text(item):
                rest.append(item)
        if not convs:
            return _fail("json", "no recognised conversation format: " + describe_value(value))
        label = labels.most_common(1)[0][0] if len(labels) == 1 else "mixed-json"
        parsed = Parsed(format=label, conversations=convs)
        if rest:
            parsed.partial = (f"{len(rest)} of {len(value)} array entries with text are not "
                              f"conversations ({describe_value(rest)})")
        return parsed
    return _fail("json", f"JSON {type(value).__name__}, not a conversation")


# --- JSONL ----------------------------------------------------------------------------

def _parse_jsonl(text: str) -> Parsed:
    lines = text.split("\n")
    values: list[Any] = []
    numbers: list[int] = []
    bad: list[tuple[int, BaseException]] = []
    loads = json.loads
    for i, line in enumerate(lines):
        if not line or line.isspace():
            continue
        try:
            values.append(loads(line))
            numbers.append(i + 1)
        except (ValueError, RecursionError) as e:
            bad.append((i + 1, e))
    if bad:
        lineno, err = bad[0]
        if not values or len(bad) > max(1, int(len(values) * _BAD_LINES_TOLERATED)):
            return _fail("opaque", _json_error(err, f"JSONL line {lineno}"))
    parsed = _parse_lines(values, numbers)
    if bad and parsed.conversations:
        skipped = [n for n, _ in bad]
        for conv in parsed.conversations:
            conv.metadata["skipped_lines"] = skipped
        parsed.partial = parsed.partial or (
            f"{len(skipped)} line(s) not JSON, left out (line {skipped[0]}: "
            f"{_json_error(bad[0][1], 'JSON')})")
    return parsed


def _parse_lines(values: list, numbers: Optional[list[int]] = None) -> Parsed:
    kind = agents.session_kind(values)
    if kind == agents.CLAUDE_CODE:
        return Parsed(format=kind, conversations=[agents.parse_claude_code(values)])
    if kind == agents.CODEX:
        return Parsed(format=kind, conversations=[agents.parse_codex(values)])
    events = chat_api.event_log_kind(values)
    if events is not None:
        convs = chat_api.event_log(values, events)
        if convs:
            return Parsed(format=events, conversations=convs)
    if other_agents.copilot_kind(values):
        return Parsed(format=other_agents.COPILOT,
                      conversations=[other_agents.parse_copilot(values)])
    labels: Counter[str] = Counter()
    convs = []
    rest = []
    for idx, value in enumerate(values):
        found = recognise_object(value) if isinstance(value, dict) else None
        if found is None:
            if _has_text(value):
                rest.append(value)
            continue
        label, conv = found
        labels[label] += 1
        if numbers is not None:
            conv.metadata["line"] = numbers[idx]
        convs.append(conv)
    if convs:
        label = labels.most_common(1)[0][0] + "-jsonl" if len(labels) == 1 else MIXED_JSONL
        parsed = Parsed(format=label, conversations=convs)
        if rest:
            parsed.partial = (f"{len(rest)} of {len(values)} lines with text are not "
                              f"conversations ({describe_lines(rest)})")
        return parsed
    if values and other_agents.mostly_messages(values):
        parsed = _message_list(values)
        if parsed.format != other_agents.KIMI:
            parsed.format = MESSAGES_JSONL
        return parsed
    return _fail("jsonl", "JSONL but no recognised conversation format: " + describe_lines(values))


_TEXT_KEYS = ("messages", "content", "text", "value", "conversations", "prompt", "completion",
              "chosen", "rejected", "output", "input", "instruction", "question", "answer",
              "response", "message", "parts")


def _has_text(value: Any, depth: int = 0) -> bool:
    """Whether an entry left out of a file's conversations holds anything a message could
    say: a non-blank string under a key messages keep text in (a polled status or a
    downloaded image in an API log holds none, a row of an unknown dataset does)."""
    if depth > 6:
        return False
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _TEXT_KEYS and isinstance(v, str) and v.strip():
                return True
            if isinstance(v, (dict, list)) and _has_text(v, depth + 1):
                return True
        return False
    if isinstance(value, list):
        return any(_has_text(v, depth + 1) for v in value[:50])
    return isinstance(value, str) and depth == 0 and bool(value.strip())


# --- what an unrecognised file looks like ---------------------------------------------

_MAX_KEYS = 12


def _keys(objs: list) -> str:
    """The keys of some objects, most common first (first seen breaks ties)."""
    counts: Counter[str] = Counter()
    for o in objs[:200]:
        counts.update(k if len(k) <= 40 else k[:37] + "..." for k in o if isinstance(k, str))
    keys = [k for k, _ in counts.most_common()]
    more = len(keys) - _MAX_KEYS
    shown = ", ".join(_one_line(k) for k in keys[:_MAX_KEYS])
    return shown + (f" (+{more} more)" if more > 0 else "") if keys else "no keys"


def _types(objs: list) -> str:
    """', "type": a, b, c' when the objects carry a string "type" (an event log's kinds)."""
    counts: Counter[str] = Counter(o["type"] for o in objs[:500]
                                   if isinstance(o.get("type"), str) and len(o["type"]) <= 40)
    if not counts:
        return ""
    names = [_one_line(t) for t, _ in counts.most_common(8)]
    return "; \"type\": " + ", ".join(names) + (" ..." if len(counts) > 8 else "")


def _one_line(s: str) -> str:
    return s.replace("\n", " ").replace("\r", " ")


def describe_value(value: Any) -> str:
    """What a JSON document looks like, for a user to ask for its format."""
    if isinstance(value, dict):
        return f"JSON object with keys {_keys([value])}"
    if isinstance(value, list):
        objs = [v for v in value if isinstance(v, dict)]
        if objs and len(objs) == len(value):
            return f"JSON array of {len(value)} objects with keys {_keys(objs)}{_types(objs)}"
        kinds = Counter(type(v).__name__ for v in value)
        return "JSON array of " + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return f"JSON {type(value).__name__}"


def describe_lines(values: list) -> str:
    objs = [v for v in values if isinstance(v, dict)]
    if objs:
        other = len(values) - len(objs)
        return (f"JSONL, {len(objs)} lines of objects with keys {_keys(objs)}{_types(objs)}"
                + (f", and {other} other lines" if other else ""))
    kinds = Counter(type(v).__name__ for v in values)
    return "JSONL of " + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
