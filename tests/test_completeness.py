"""The text view's completeness guarantee, tested generically.

For every real file of ../shared/corpus and every fixture of tests/fixtures/formats that a
parser accepts, every human-readable string of the input that belongs to a message —
text, reasoning, tool arguments and results, answers — appears in the text view, after
JSON unescaping and whitespace normalisation. A parser that drops content fails here; a
file whose text view is known to lack something must say so in Parsed.partial (then it
is listed in errors/ and skipped here).

Which strings belong to a message is decided HERE, from the input alone, never from what
the parser made of it: one walk over the decoded JSON (each line of a JSONL file) that
takes the string values under the keys messages keep their content in (CONTENT_KEYS),
and every string inside a tool call's arguments. What is left out is listed below with
the reason: ids, hashes, signatures, base64 data, timestamps and such are not under
those keys to begin with. Tool arguments are shown as one line of JSON, so a string
inside them may appear JSON-escaped; both spellings are accepted. Text formats (aider
Markdown): every line of every session, less aider's own markers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stowfs.formats import parse
from stowfs.views.text import render_bytes

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT.parents[1] / "shared" / "corpus"
FIXTURES = ROOT / "fixtures" / "formats"

# Keys whose string values (or lists of strings) are message content.
CONTENT_KEYS = {
    "text", "content", "value", "parts", "message", "prompt", "completion",  # text
    "thinking", "think", "reasoning", "reasoning_content", "reasoningText",  # reasoning
    "refusal", "chosen", "rejected", "instruction", "input", "output", "system",
    "arguments", "args", "result", "detailedContent",                        # tool calls / results
    "snippet", "stdout", "stderr", "extracted_content", "delta", "summary",
    "user_profile", "user_instructions",
}
# Keys holding a tool call's arguments as an object: every string inside counts.
ARG_KEYS = {"input", "args", "arguments", "parameters"}
# Subtrees that are not messages, with why.
SKIP_KEYS = {
    "toolUseResult",      # Claude Code: structured copy of the tool_result next to it
    "normalizedMessages",  # Claude Code agent_progress: normalised copies of data.message
    "snapshot",           # Claude Code file-history backups (file contents, not messages)
    "metadata",           # exports' and datasets' bookkeeping (ChatGPT search results, ...)
    "usage", "usageMetadata", "tokens",   # token counts
    "tools", "functions", "tool_choice",  # function schemas: not messages (datasets show them)
    "signature", "encrypted_content", "reasoningOpaque", "encrypted",  # opaque blobs
    "partial_json",       # stream fragments of tool arguments: the assembled call is shown
    "promptLogs",         # Continue: raw prompts the extension sent (copies of the history)
    "toolTelemetry",      # Copilot CLI
    "resultDisplay",      # Gemini CLI: a display copy of the tool result
    "transformedContent",  # Copilot CLI: the prompt with reminders appended
    "source",             # image / document data
}
# Claude Code / Codex / Copilot line kinds that are no message: progress of a running
# command or hook, queue bookkeeping, file snapshots, token counts, turn markers.
SKIP_LINE_TYPES = {"file-history-snapshot", "queue-operation", "last-prompt", "custom-title",
                   "ai-title", "pr-link", "turn_context", "assistant.turn_start",
                   "assistant.turn_end", "session.start", "tool.execution_start",
                   "hook.start", "hook.end",        # Copilot: a hook's copy of a call
                   "session.shutdown", "subagent.started", "subagent.completed"}
CODEX_EVENT_MESSAGES = {"user_message", "agent_message", "agent_reasoning"}

_WS = re.compile(r"\s+")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def norm(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _walk(value, key, in_args, out: list) -> None:
    if isinstance(value, dict):
        t = value.get("type")
        if t in SKIP_LINE_TYPES:
            return
        if t == "progress":          # Claude Code: only a subagent's messages are messages
            data = value.get("data")
            if isinstance(data, dict) and data.get("type") == "agent_progress":
                _walk(data.get("message"), "message", False, out)
            return
        if t == "event_msg" and isinstance(value.get("payload"), dict) \
                and value["payload"].get("type") not in CODEX_EVENT_MESSAGES:
            return
        for k, v in value.items():
            if k in SKIP_KEYS and not in_args:
                continue
            _walk(v, k, in_args or (k in ARG_KEYS and isinstance(v, dict)), out)
    elif isinstance(value, list):
        for v in value:
            _walk(v, key, in_args, out)
    elif isinstance(value, str):
        if not value.strip():
            return
        if not (in_args or key in CONTENT_KEYS or key in ARG_KEYS):
            return
        if value.lstrip()[:1] in ("{", "["):
            try:
                inner = json.loads(value)
            except (ValueError, RecursionError):
                inner = None
            if isinstance(inner, (dict, list)):   # JSON text (arguments, a call, a result):
                _walk(inner, key, True, out)      # shown as it is, or decoded: its strings
                return
        if in_args or key in CONTENT_KEYS:
            if key in ("chosen", "rejected") and _HH_TURN.match(value):
                out.extend(_HH_TURN.split(value)[2::2])    # the turns of an HH-RLHF transcript
            else:
                out.append(value)


def message_strings(data: bytes) -> list[str]:
    """The strings of a JSON or JSONL file that belong to messages (see module doc)."""
    text = data.decode("utf-8", "surrogatepass").lstrip("\ufeff")
    out: list[str] = []
    try:
        values = [json.loads(text)]
    except ValueError:
        values = []
        for line in text.split("\n"):
            if line.strip():
                if line.startswith("data:"):       # an SSE body: its events' payloads
                    line = line[5:]
                try:
                    values.append(json.loads(line))
                except ValueError:
                    continue          # a line the parser skips too (truncated last line)
    for v in values:
        _walk(v, None, False, out)
    return out


_AIDER_MARK = re.compile(r"^(#### ?|> ?)")


def aider_strings(data: bytes) -> list[str]:
    """Every line of every aider session, without aider's markers (front matter before the
    first session or message is no message)."""
    out = []
    started = False
    for line in data.decode("utf-8").split("\n"):
        if line.startswith("# aider chat started at ") or line.startswith("#### "):
            started = True
            if line.startswith("# aider chat"):
                continue
        if not started or re.fullmatch(r"\s*</?div[^>]*>\s*", line):
            continue
        line = _AIDER_MARK.sub("", line)
        if line.strip():
            out.append(line)
    return out


def missing_strings(data: bytes) -> tuple[object, list[str]]:
    p = parse(data)
    if not p.is_conversation or p.partial:
        return p, []
    shown = norm(render_bytes(p).decode("utf-8", "surrogatepass"))
    needles = aider_strings(data) if p.format == "aider-markdown" else message_strings(data)
    missing = []
    pos = 0
    for s in needles:
        n = norm(s)
        if not n:
            continue
        at = shown.find(n, pos)
        if at < 0:
            at = shown.find(n)
        if at < 0:
            esc = norm(json.dumps(s, ensure_ascii=False)[1:-1])
            at = shown.find(esc)
            n = esc
        if at < 0:
            missing.append(s)
        else:
            pos = at + len(n)
    return p, missing


def _files() -> list[Path]:
    out = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.suffix != ".md")
    if CORPUS.is_dir():
        out += sorted(p for p in CORPUS.rglob("*") if p.is_file())
    return out


def _id(p: Path) -> str:
    base = FIXTURES if FIXTURES in p.parents else CORPUS
    return str(p.relative_to(base))


def test_corpus_is_there_or_skipped():
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}: only the fixtures are checked")
    assert any(CORPUS.rglob("*.jsonl"))


@pytest.mark.parametrize("path", _files(), ids=_id)
def test_every_message_string_is_in_the_text_view(path):
    data = path.read_bytes()
    p, missing = missing_strings(data)
    if FIXTURES in path.parents:
        assert p.is_conversation, f"{path.name}: {p.error}"    # every fixture is a format
        assert not p.partial, p.partial
    shown = [s[:120] for s in missing[:5]]
    assert not missing, f"{len(missing)} message strings missing from the text view: {shown}"


def test_no_real_file_is_partial():
    """Every corpus file a parser accepts is rendered in full (so none is skipped above)."""
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    partial = {_id(p): parse(p.read_bytes()).partial for p in CORPUS.rglob("*") if p.is_file()}
    assert {k: v for k, v in partial.items() if v} == {}


def test_the_check_catches_a_dropped_string():
    """The test is not vacuous: content a parser drops is reported."""
    row = {"conversations": [{"from": "human", "value": "a question"},
                             {"from": "gpt", "value": "an answer"}],
           "chosen": {"from": "gpt", "value": "the chosen answer"},
           "rejected": {"from": "gpt", "value": "the rejected answer"}}
    data = json.dumps(row).encode()
    assert "the rejected answer" in message_strings(data)
    _, missing = missing_strings(data)
    assert missing == []
    import stowfs.formats.sharegpt as sg
    real = sg.parse_preference
    try:                               # a parser that forgets the rejected answer
        def thinned(d):
            conv = real(d)
            conv.messages = [m for m in conv.messages if m.label != "rejected"]
            return conv
        sg.parse_preference = thinned
        _, missing = missing_strings(data)
    finally:
        sg.parse_preference = real
    assert missing == ["the rejected answer"]


def test_tool_arguments_count_escaped_or_not():
    req = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "sh", "arguments": "{\n \"cmd\": \"echo \\\"hi\\\"\\nls\"\n}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "hi\nfile"}]}
    data = json.dumps(req).encode()
    assert 'echo "hi"\nls' in message_strings(data)
    _, missing = missing_strings(data)
    assert missing == []


# --- the same guarantee on generated rows of the documented shapes -------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")


def _openai(t):
    return {"model": "gpt-4o", "messages": [
        {"role": "system", "content": t[0]},
        {"role": "user", "content": [{"type": "text", "text": t[1]}]},
        {"role": "assistant", "content": t[2], "reasoning_content": t[3],
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": json.dumps({"q": t[4]})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": t[5]}]}


def _anthropic(t):
    return {"model": "claude-x", "system": t[0], "messages": [
        {"role": "user", "content": t[1]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": t[2], "signature": "sig"},
            {"type": "text", "text": t[3]},
            {"type": "tool_use", "id": "u1", "name": "g", "input": {"path": t[4]}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "u1",
                                      "content": [{"type": "text", "text": t[5]}]}]}]}


def _sharegpt_preference(t):
    return {"conversations": [
        {"from": "system", "value": t[0]}, {"from": "human", "value": t[1]},
        {"from": "function_call", "value": json.dumps({"name": "h", "arguments": {"x": t[2]}})},
        {"from": "observation", "value": t[3]}],
        "chosen": {"from": "gpt", "value": t[4]}, "rejected": {"from": "gpt", "value": t[5]}}


def _value_parts(t):
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "value": t[0]}]},
        {"role": "assistant", "content": [
            {"type": "reasoning", "value": t[1]}, {"type": "text", "value": t[2]},
            {"type": "tool_call", "value": json.dumps({"name": "k", "arguments": {"a": t[3]}})}]},
        {"role": "tool", "content": [{"type": "text", "value": t[4]}]},
        {"role": "assistant", "content": [{"type": "text", "value": t[5]}]}]}


def _chatgpt(t):
    def node(i, parent, kids, role, text, model=None):
        return {"id": i, "parent": parent, "children": kids, "message": {
            "id": i, "author": {"role": role}, "create_time": 1.0,
            "content": {"content_type": "text", "parts": [text]},
            "metadata": {"model_slug": model} if model else {}}}
    return {"title": t[0], "create_time": 1.0, "current_node": "c", "mapping": {
        "a": node("a", None, ["b"], "user", t[1]),
        "b": node("b", "a", ["c", "d"], "user", t[2]),
        "c": node("c", "b", [], "assistant", t[3], "gpt-4o"),
        "d": node("d", "b", [], "assistant", t[4], "gpt-4o")}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from([_openai, _anthropic, _sharegpt_preference, _value_parts,
                              _chatgpt]),
       texts=st.lists(_text, min_size=6, max_size=6), ascii_only=st.booleans(),
       jsonl=st.booleans())
def test_generated_rows_render_every_string(shape, texts, ascii_only, jsonl):
    row = shape(texts)
    doc = json.dumps(row, ensure_ascii=ascii_only)
    data = (doc + "\n" + doc + "\n" if jsonl else doc).encode("utf-8")
    p, missing = missing_strings(data)
    assert p.is_conversation and not p.partial, (p.format, p.error, p.partial)
    assert missing == []
