"""Format detection and parsing (stowfs.formats): real corpus files and hostile inputs."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stowfs.conversation import (ASSISTANT, IMAGE, SYSTEM, TEXT, THINKING, TOKENS, TOOL,
                                 TOOL_CALL, TOOL_RESULT, USER, Parsed)
from stowfs.formats import NOT_CONVERSATION, parse

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(),
                                  reason=f"corpus not found at {CORPUS}")

CC_MAIN = "claude-code-spotter/transcripts/4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
CC_SUB = ("claude-code-spotter/transcripts/4d5611e5-241a-462a-8d15-5122611a9569/subagents/"
          "agent-a2898e3.jsonl")
EXCHANGES = "api-cassettes-pydantic-ai/exchanges.jsonl"
SHAREGPT = "sharegpt-v3-subset/sharegpt_v3_first_1366.json"
AIDER = "aider-chat-history/chat-history.md"

# path -> (format, application, minimum number of messages)
EXPECTED = {
    "agent-history-redacted/claude-session-01.jsonl": ("claude-code-jsonl", "claude-code", 2),
    "agent-history-redacted/codex-session-01.jsonl": ("codex-rollout-jsonl", "codex-cli", 4),
    "agent-history-redacted/gemini-session-01.json": ("gemini-cli-json", "gemini-cli", 2),
    CC_MAIN: ("claude-code-jsonl", "claude-code", 250),
    CC_SUB: ("claude-code-jsonl", "claude-code", 40),
    "claude-code-spotter/transcripts/4d5611e5-241a-462a-8d15-5122611a9569/subagents/"
    "agent-acompact-e1f845.jsonl": ("claude-code-jsonl", "claude-code", 2),
    "claude-code-spotter/transcripts/6c2214d7-b87e-4432-8e41-22ba294ea584/subagents/"
    "agent-afc096d.jsonl": ("claude-code-jsonl", "claude-code", 50),
    "claude-code-spotter/transcripts/short.jsonl": ("claude-code-jsonl", "claude-code", 5),
    "claude-code-spotter/transcripts/tool_heavy.jsonl": ("claude-code-jsonl", "claude-code", 15),
    EXCHANGES: ("api-exchange-jsonl", None, 150),
    SHAREGPT: ("sharegpt", "sharegpt", 9000),
    AIDER: ("aider-markdown", "aider", 5000),
    "aider-chat-history/examples/add-test.md": ("aider-markdown", "aider", 5),
    "aider-chat-history/examples/census.md": ("aider-markdown", "aider", 5),
    "aider-chat-history/examples/chat-transcript-css.md": ("aider-markdown", "aider", 5),
    "aider-chat-history/examples/complex-change.md": ("aider-markdown", "aider", 5),
    "aider-chat-history/examples/hello-world-flask.md": ("aider-markdown", "aider", 5),
    "aider-chat-history/examples/pong.md": ("aider-markdown", "aider", 5),
}


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file())


@lru_cache(maxsize=None)
def load(rel: str) -> tuple[bytes, Parsed]:
    data = (CORPUS / rel).read_bytes()
    return data, parse(data, rel)


def test_corpus_present_or_skipped():
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    missing = [rel for rel in EXPECTED if not (CORPUS / rel).is_file()]
    assert not missing


@needs_corpus
@pytest.mark.parametrize("rel", corpus_files())
def test_every_corpus_file_parses(rel):
    data, p = load(rel)
    assert isinstance(p, Parsed)
    if rel in EXPECTED:
        fmt, app, min_messages = EXPECTED[rel]
        assert p.error is None, p.error
        assert p.format == fmt
        assert p.is_conversation
        assert p.message_count() >= min_messages
        for conv in p.conversations:
            assert conv.application == app if app else conv.application
            for m in conv.messages:
                assert isinstance(m.role, str) and m.role
                for part in m.parts:
                    assert part.kind in (TEXT, THINKING, TOOL_CALL, TOOL_RESULT, IMAGE,
                                         TOKENS, "blob")
    else:
        # licences, READMEs, terminal dumps and VCR YAML cassettes are not conversations
        assert p.format in NOT_CONVERSATION
        assert p.error and "\n" not in p.error
        assert p.conversations == []


@needs_corpus
def test_claude_code_session():
    _, p = load(CC_MAIN)
    (conv,) = p.conversations
    assert conv.id == "4d5611e5-241a-462a-8d15-5122611a9569"
    assert conv.model == "claude-opus-4-6"
    assert conv.started == "2026-02-12T16:02:23.545Z"     # first line is a progress line
    assert conv.ended > conv.started
    assert conv.usage["output_tokens"] > 0 and conv.usage["cache_read_input_tokens"] > 0
    kinds = {part.kind for m in conv.messages for part in m.parts}
    assert {TEXT, THINKING, TOOL_CALL, TOOL_RESULT} <= kinds
    roles = {m.role for m in conv.messages}
    assert roles <= {USER, ASSISTANT, SYSTEM}
    # one API message streamed over several lines becomes one message
    assert sum(1 for m in conv.messages if m.role == ASSISTANT) < 254
    calls = {p.call_id for m in conv.messages for p in m.parts if p.kind == TOOL_CALL}
    results = {p.call_id for m in conv.messages for p in m.parts if p.kind == TOOL_RESULT}
    assert calls and results <= calls


@needs_corpus
def test_claude_code_subagent_is_sidechain():
    _, p = load(CC_SUB)
    assert p.conversations[0].metadata.get("sidechain") is True


@needs_corpus
def test_codex_messages_not_doubled():
    _, p = load("agent-history-redacted/codex-session-01.jsonl")
    (conv,) = p.conversations
    assert conv.model == "gpt-5.5" and conv.id == "019e9625-802f-7e91-840a-cfe88d14117a"
    texts = [part.text for m in conv.messages for part in m.parts]
    assert texts.count("[REDACTED_ASSISTANT_TEXT]") == 1
    assert texts.count("[REDACTED_PROMPT]") == 1
    assert conv.usage["total_tokens"] == 22549
    assert conv.messages[0].role == SYSTEM          # base_instructions


@needs_corpus
def test_gemini_cli_session():
    _, p = load("agent-history-redacted/gemini-session-01.json")
    (conv,) = p.conversations
    assert conv.model == "gemini-2.5-flash"
    assert [m.role for m in conv.messages] == [USER, ASSISTANT]
    thinking = conv.messages[1].parts[0]
    assert thinking.kind == THINKING and thinking.name == "Generating Specific Response"
    assert conv.usage["total"] == 4419
    assert conv.started == "2026-06-05T04:59:39.932Z"


@needs_corpus
def test_exchanges_one_conversation_per_exchange():
    data, p = load(EXCHANGES)
    lines = data.decode().splitlines()
    assert len(p.conversations) == 68          # 71 lines, 3 are image downloads / no body
    apps = {c.application for c in p.conversations}
    assert apps == {"anthropic", "openai", "openai-responses", "gemini-api"}
    for conv in p.conversations:
        line = json.loads(lines[conv.metadata["line"] - 1])
        assert conv.metadata["uri"] == line["uri"]
        assert conv.messages
    by_line = {c.metadata["line"]: c for c in p.conversations}
    # a streamed (SSE) Anthropic response is assembled into the assistant message
    streamed = by_line[14]
    assert streamed.messages[-1].role == ASSISTANT
    assert any(part.kind == TEXT and part.text for part in streamed.messages[-1].parts)
    # base64 image in an Anthropic request
    image = [part for m in by_line[23].messages for part in m.parts if part.kind == IMAGE]
    assert image and image[0].media_type == "image/jpeg" and image[0].ref.endswith("bytes")
    # OpenAI chat: tool calls in the request history and the response
    kinds = {part.kind for c in p.conversations if c.application == "openai"
             for m in c.messages for part in m.parts}
    assert {TOOL_CALL, TOOL_RESULT} <= kinds
    assert all(c.model for c in p.conversations)


@needs_corpus
def test_sharegpt_list():
    _, p = load(SHAREGPT)
    assert len(p.conversations) == 1366
    assert p.message_count() == 9437
    assert p.conversations[0].id == "QWJhYvA_0"
    assert {m.role for c in p.conversations for m in c.messages} <= {USER, ASSISTANT, SYSTEM}


@needs_corpus
def test_aider_sessions_and_spans():
    data, p = load(AIDER)
    assert len(p.conversations) == data.count(b"\n# aider chat started at ") + 1  # + preamble
    msgs = [m for c in p.conversations for m in c.messages]
    assert len(p.spans) == len(msgs)
    last_end = 0
    for (start, end, role), m in zip(p.spans, msgs):
        assert last_end <= start < end <= len(data)
        assert role == m.role
        body = data[start:end]
        if role == ASSISTANT:
            assert body.decode() == m.parts[0].text
        elif role == USER:
            assert body.startswith(b"####")
        else:
            assert body.startswith(b">")
        last_end = end
    second = p.conversations[1]
    assert second.started == "2024-08-05T19:33:02"
    assert second.model == "claude-3-5-sonnet-20240620"
    third = p.conversations[2]
    assert [m.role for m in third.messages][:3] == [TOOL, USER, ASSISTANT]
    assert third.messages[1].parts[0].text == \
        "Use the Spinner instead of the inlined custom spinner"
    assert third.usage == {"input_tokens": 5244, "output_tokens": 604}


@needs_corpus
def test_aider_example_with_front_matter():
    _, p = load("aider-chat-history/examples/pong.md")
    (conv,) = p.conversations
    assert conv.messages[0].role == TOOL
    assert conv.messages[1].role == USER
    assert conv.messages[1].parts[0].text == "can you make a simple game of pong with pygame?"
    assert "parent: Example" not in "".join(m.parts[0].text for m in conv.messages)


@needs_corpus
def test_claude_code_image_block_added_to_real_line():
    data = (CORPUS / "claude-code-spotter/transcripts/short.jsonl").read_bytes()
    lines = data.decode().splitlines()
    idx = next(i for i, line in enumerate(lines) if json.loads(line).get("type") == "user")
    obj = json.loads(lines[idx])
    content = obj["message"]["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    obj["message"]["content"] = blocks + [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0K" * 100}}]
    lines[idx] = json.dumps(obj)
    p = parse("\n".join(lines).encode())
    images = [part for m in p.conversations[0].messages for part in m.parts
              if part.kind == IMAGE]
    assert p.format == "claude-code-jsonl"
    assert len(images) == 1 and images[0].media_type == "image/png"
    assert images[0].ref == "600 bytes"


# --- invented edge cases --------------------------------------------------------------

def test_stowken_token_ids_exact():
    ids = [0, 1, 50256, 2 ** 31, 151643]
    doc = {"id": "c1", "application": "claude-code", "model": "m1", "tokenizer": "o200k_base",
           "messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": ids},
                        {"role": "assistant", "content": [7, 8, 9]},
                        {"role": "tool", "content": [3, 4], "tool_call_id": "t1",
                         "name": "Read"}],
           "metadata": {"source": "x", "nested": {"dropped": 1}}}
    p = parse(json.dumps(doc).encode())
    assert p.format == "stowken"
    (conv,) = p.conversations
    assert conv.application == "claude-code" and conv.model == "m1" and conv.id == "c1"
    assert conv.metadata == {"source": "x", "tokenizer": "o200k_base"}
    assert conv.messages[1].parts[0].kind == TOKENS
    assert conv.messages[1].parts[0].tokens == ids
    tool = conv.messages[3].parts[0]
    assert tool.kind == TOKENS and tool.tokens == [3, 4] and tool.call_id == "t1"


def test_openai_chat_request_with_tools():
    doc = {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {
                                         "url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "result"}]}
    p = parse(json.dumps(doc, indent=2).encode())
    assert p.format == "openai-chat"
    (conv,) = p.conversations
    assert conv.application == "openai" and conv.model == "gpt-4o"
    assert [m.role for m in conv.messages] == [SYSTEM, USER, ASSISTANT, TOOL]
    assert conv.messages[1].parts[1].kind == IMAGE
    assert conv.messages[1].parts[1].media_type == "image/png"
    call = conv.messages[2].parts[0]
    assert (call.kind, call.name, call.call_id, call.text) == (TOOL_CALL, "f", "c1",
                                                              "{\"a\": 1}")
    res = conv.messages[3].parts[0]
    assert (res.kind, res.call_id, res.text) == (TOOL_RESULT, "c1", "result")


def test_anthropic_request_response_pair():
    doc = {"request": {"model": "claude-x", "system": [{"type": "text", "text": "S"}],
                       "max_tokens": 10,
                       "messages": [{"role": "user", "content": "hi"}]},
           "response": {"id": "msg_1", "type": "message", "role": "assistant",
                        "model": "claude-x-1", "content": [
                            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                            {"type": "tool_use", "id": "tu", "name": "Read",
                             "input": {"file_path": "/x"}}],
                        "usage": {"input_tokens": 5, "output_tokens": 7,
                                  "cache_creation": {"x": 1}}}}
    p = parse(json.dumps(doc).encode())
    assert p.format == "api-exchange"
    (conv,) = p.conversations
    assert conv.application == "anthropic" and conv.id == "msg_1"
    assert conv.model == "claude-x-1"
    assert conv.usage == {"input_tokens": 5, "output_tokens": 7}
    assert [m.role for m in conv.messages] == [SYSTEM, USER, ASSISTANT]
    assert conv.messages[2].parts[1].text == '{"file_path": "/x"}'


def test_sharegpt_jsonl_and_bom_and_crlf():
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"},
                                             {"from": "gpt", "value": f"a{i}"}]}
            for i in range(3)]
    data = b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r) for r in rows).encode() + b"\r\n"
    p = parse(data)
    assert p.format == "sharegpt-jsonl"
    assert [c.id for c in p.conversations] == ["0", "1", "2"]
    assert [c.metadata["line"] for c in p.conversations] == [1, 2, 3]


def test_jsonl_truncated_last_line_is_tolerated():
    line = {"type": "user", "uuid": "u", "sessionId": "s", "timestamp": "2026-01-01T00:00:00Z",
            "message": {"role": "user", "content": "hello"}}
    data = (json.dumps(line) + "\n" + json.dumps(line)[:30]).encode()
    p = parse(data)
    assert p.format == "claude-code-jsonl"
    assert p.conversations[0].metadata["skipped_lines"] == [2]


def test_messages_jsonl():
    data = b'{"role": "user", "content": "a"}\n{"role": "assistant", "content": "b"}\n'
    p = parse(data)
    assert p.format == "messages-jsonl" and p.message_count() == 2


def test_lone_surrogate_content_is_kept():
    p = parse(b'{"messages": [{"role": "user", "content": "x\\ud800y"}]}')
    assert p.is_conversation
    assert p.conversations[0].messages[0].parts[0].text == "x\ud800y"


def test_nan_inside_a_conversation_is_accepted():
    p = parse(b'{"model": "m", "temperature": NaN, "messages": [{"role": "user", '
              b'"content": "hi"}]}')
    assert p.is_conversation


HOSTILE = {
    "empty": b"",
    "whitespace": b"  \n\t\n",
    "truncated json": b'{"messages": [{"role": "user", "content": "hel',
    "truncated json array": b'[{"id": "1", "conversations": [',
    "invalid utf-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "binary": bytes(range(256)) * 4,
    "nul in text": b"hello\x00world",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep unclosed": b"[" * 100_000,
    "deep nesting jsonl": b'{"a": 1}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n{}\n{}\n",
    "nan": b"[NaN, Infinity, -Infinity]",
    "duplicate keys": b'{"a": 1, "a": 2, "b": {"c": 1, "c": 2}}',
    "huge integer": b'{"messages": [{"role": "user", "content": "x"}], "n": '
                    + b"9" * 5000 + b"}",
    "bom only": b"\xef\xbb\xbf",
    "bom non-conversation": b'\xef\xbb\xbf{"hello": "world"}',
    "lone surrogate non-conversation": b'{"x": "\\udc80\\ud800"}',
    "scalar": b"42",
    "string": b'"just a string"',
    "empty object": b"{}",
    "empty array": b"[]",
    "messages not dicts": b'{"messages": [1, 2, 3]}',
    "plain text": b"hello world\nthis is not a chat\n",
    "markdown headings": b"# Title\n\n#### Section\n\n> quote\n\ntext\n",
    "jsonl garbage": b'{"a": 1}\n{"b": 2}\nnot json\nnot json either\n',
    "jsonl scalars": b"1\n2\n3\n",
    "utf-16": "{\"messages\": []}".encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_are_opaque_with_a_reason(name):
    p = parse(HOSTILE[name])
    assert isinstance(p, Parsed)
    assert p.conversations == []
    assert p.format in NOT_CONVERSATION
    assert isinstance(p.error, str) and p.error and "\n" not in p.error
    assert len(p.error) < 300


def test_error_messages_are_specific():
    assert parse(b"").error == "empty file"
    assert parse(b'{"a": "\xff"}').error == "not valid UTF-8 at byte 7"
    assert parse(b'{"a": 1,\n\n}').error.startswith("JSON: Expecting property name")
    assert "line 3" in parse(b'{"a": 1,\n\n}').error
    assert parse(b"[" * 100_000).error == "JSON: nested too deeply"
    assert "4300" in parse(b"[" + b"1" * 5000 + b"]").error
    assert parse(b'{"hello": 1}').error == \
        "no recognised conversation format: JSON object with keys hello"
    # what an unknown file looked like, so a user can ask for its format
    assert parse(b'[{"q": 1, "a": 2}, {"q": 3}]').error == (
        "no recognised conversation format: JSON array of 2 objects with keys q, a")
    lines = b'{"type": "ping", "at": 1}\n{"type": "pong", "at": 2}\n{"type": "ping"}\n'
    assert parse(lines).error == ("JSONL but no recognised conversation format: JSONL, 3 lines "
                                  'of objects with keys type, at; "type": ping, pong')


def test_nested_blocks_near_the_recursion_limit_do_not_raise():
    block = {"type": "text", "text": "x"}
    for _ in range(450):
        block = {"type": "tool_result", "tool_use_id": "t", "content": [block]}
    doc = {"model": "claude-x", "messages": [{"role": "user", "content": [block]}]}
    p = parse(json.dumps(doc).encode())
    assert isinstance(p, Parsed)          # a conversation, or opaque with a reason


def test_parse_accepts_bytes_like():
    assert parse(bytearray(b'[{"role": "user", "content": "hi"}]')).is_conversation
    assert parse(memoryview(b'[{"role": "user", "content": "hi"}]')).is_conversation


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    p = parse(data)
    assert isinstance(p, Parsed)
    if p.error is not None:
        assert p.conversations == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["role", "content", "messages", "type", "text", "model", "request",
                         "response", "conversations", "from", "value", "input", "output",
                         "choices", "message", "tool_calls", "function", "contents",
                         "parts", "candidates", "sessionId", "payload", "uuid", "id"]),
        children, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_shapes_never_raise(value):
    for data in (json.dumps(value).encode(),
                 (json.dumps(value) + "\n" + json.dumps(value)).encode()):
        p = parse(data)
        assert isinstance(p, Parsed)
        if p.error is None:
            assert p.format not in NOT_CONVERSATION


AIDER_SAMPLE = (b"# aider chat started at 2024-01-01 10:00:00\r\n\r\n> Aider v1  \r\n"
                b"> Model: gpt-4 with diff edit format  \r\n\r\n#### hello  \r\n#### there  \r\n"
                b"\r\nHi!\r\n\r\nHow are you?\r\n\r\n> Tokens: 1.2k sent, 30 received.  \r\n")


@pytest.mark.parametrize("variant", ["crlf", "bom", "lf-no-final-newline"])
def test_aider_line_endings_bom_and_spans(variant):
    data = {"crlf": AIDER_SAMPLE, "bom": b"\xef\xbb\xbf" + AIDER_SAMPLE,
            "lf-no-final-newline": AIDER_SAMPLE.replace(b"\r\n", b"\n").rstrip(b"\n")}[variant]
    p = parse(data)
    assert p.format == "aider-markdown"
    (conv,) = p.conversations
    assert conv.started == "2024-01-01T10:00:00" and conv.model == "gpt-4"
    assert conv.usage == {"input_tokens": 1200, "output_tokens": 30}
    assert [m.role for m in conv.messages] == [TOOL, USER, ASSISTANT, TOOL]
    assert conv.messages[1].parts[0].text == "hello\nthere"
    nl = b"\n" if variant == "lf-no-final-newline" else b"\r\n"
    spans = [data[s:e] for s, e, _ in p.spans]
    assert spans[1] == b"#### hello  " + nl + b"#### there  "
    assert spans[2] == b"Hi!" + nl + nl + b"How are you?"
    assert spans[2].decode() == conv.messages[2].parts[0].text
    assert spans[3] == b"> Tokens: 1.2k sent, 30 received.  "


def test_openai_responses_request_and_response():
    doc = {"request": {"model": "gpt-5", "instructions": "be nice",
                       "input": [{"role": "user", "content": "weather?"},
                                 {"type": "function_call", "name": "w", "call_id": "c",
                                  "arguments": "{}"},
                                 {"type": "function_call_output", "call_id": "c",
                                  "output": "sunny"}]},
           "response": {"id": "resp_1", "object": "response", "model": "gpt-5-x",
                        "created_at": 1700000000,
                        "output": [{"type": "reasoning", "summary": [
                            {"type": "summary_text", "text": "think"}]},
                            {"type": "message", "role": "assistant", "content": [
                                {"type": "output_text", "text": "It is sunny."}]}],
                        "usage": {"input_tokens": 3, "output_tokens": 4}}}
    p = parse(json.dumps(doc).encode())
    (conv,) = p.conversations
    assert conv.application == "openai-responses" and conv.model == "gpt-5-x"
    assert conv.started == "2023-11-14T22:13:20Z"
    assert [m.role for m in conv.messages] == [SYSTEM, USER, ASSISTANT, TOOL, ASSISTANT]
    assert [p.kind for p in conv.messages[4].parts] == [THINKING, TEXT]


def test_gemini_api_request():
    doc = {"contents": [{"role": "user", "parts": [{"text": "hi"}]},
                        {"role": "model", "parts": [{"functionCall": {"name": "f",
                                                                      "args": {"a": 1}}}]},
                        {"role": "user", "parts": [{"functionResponse": {
                            "name": "f", "response": {"output": "done"}}}]}],
           "systemInstruction": {"parts": [{"text": "sys"}]}}
    p = parse(json.dumps(doc).encode())
    assert p.format == "gemini-api"
    (conv,) = p.conversations
    assert [m.role for m in conv.messages] == [SYSTEM, USER, ASSISTANT, USER]
    res = conv.messages[3].parts[0]
    assert (res.kind, res.name, res.text) == (TOOL_RESULT, "f", "done")


def test_gemini_cli_tool_calls():
    doc = {"sessionId": "s", "projectHash": "h", "startTime": "t0", "lastUpdated": "t1",
           "messages": [{"id": "1", "timestamp": "t0", "type": "user", "content": "ls"},
                        {"id": "2", "timestamp": "t1", "type": "gemini", "content": "",
                         "model": "gemini-x", "toolCalls": [{
                             "id": "c", "name": "run_shell", "args": {"cmd": "ls"},
                             "result": [{"functionResponse": {
                                 "id": "c", "name": "run_shell",
                                 "response": {"output": "a.txt"}}}]}]},
                        {"id": "3", "timestamp": "t1", "type": "info", "content": "note"}]}
    p = parse(json.dumps(doc).encode())
    (conv,) = p.conversations
    assert [m.role for m in conv.messages] == [USER, ASSISTANT, TOOL, SYSTEM]
    assert conv.messages[2].parts[0].text == "a.txt"


def test_codex_legacy_and_event_fallback():
    lines = [{"timestamp": "t0", "type": "session_meta", "payload": {"id": "x"}},
             {"timestamp": "t1", "type": "event_msg",
              "payload": {"type": "user_message", "message": "hello"}},
             {"timestamp": "t2", "type": "event_msg",
              "payload": {"type": "agent_message", "message": "hi there"}}]
    p = parse("\n".join(map(json.dumps, lines)).encode())
    assert p.format == "codex-rollout-jsonl"
    assert [m.role for m in p.conversations[0].messages] == [USER, ASSISTANT]


def test_streamed_openai_chat_response_is_assembled():
    chunks = [{"id": "c", "object": "chat.completion.chunk", "model": "gpt-x", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "t", "function": {"name": "f", "arguments": "{\"a\""}}]}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ": 1}"}}]}}]}]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    doc = {"request": {"model": "gpt-x", "messages": [{"role": "user", "content": "q"}]},
           "response": sse}
    p = parse(json.dumps(doc).encode())
    last = p.conversations[0].messages[-1]
    assert [(x.kind, x.text) for x in last.parts] == [(TEXT, "Hello"), (TOOL_CALL, '{"a": 1}')]
