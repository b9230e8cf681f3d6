"""The formats recognised for issue 13, on fixtures built from their public documentation
(tests/fixtures/formats/SOURCES.md says where each shape comes from): labels, models,
roles, and what the text view shows. Completeness over every file is
tests/test_completeness.py; this file checks structure and placement."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stowfs.conversation import ASSISTANT, IMAGE, SYSTEM, THINKING, TOOL, TOOL_CALL, TOOL_RESULT, USER
from stowfs.formats import parse
from stowfs.views.text import render_bytes

FIX = Path(__file__).resolve().parent / "fixtures" / "formats"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def load(name: str):
    data = (FIX / name).read_bytes()
    p = parse(data, name)
    return p, render_bytes(p).decode("utf-8")


# (fixture, format, application, model of the first conversation, number of conversations)
EXPECTED = [
    ("llamafactory_v1_messages.jsonl", "llamafactory-messages-jsonl", "llamafactory", None, 2),
    ("preference_sharegpt.json", "preference", "preference", None, 2),
    ("preference_trl.jsonl", "preference-jsonl", "preference", None, 3),
    ("preference_hh_rlhf.jsonl", "preference", "preference", None, 1),
    ("preference_openai_dpo.jsonl", "preference", "preference", None, 1),
    ("kto_unpaired.jsonl", "prompt-completion-jsonl", "prompt-completion", None, 2),
    ("sharegpt_tool_calls.json", "sharegpt", "sharegpt", None, 1),
    ("chatgpt_conversations.json", "chatgpt-export", "chatgpt", "gpt-4o", 1),
    ("claude_ai_conversations.json", "claude-ai-export", "claude.ai", None, 1),
    ("claude_code_v1_sidechains.jsonl", "claude-code-jsonl", "claude-code",
     "claude-sonnet-4-20250514", 1),
    ("claude_code_2_0_merged_sidechain.jsonl", "claude-code-jsonl", "claude-code",
     "claude-sonnet-4-5-20250929", 1),
    ("claude_code_2_1_attachments.jsonl", "claude-code-jsonl", "claude-code", "claude-opus-4-6", 1),
    ("anthropic_stream_events.jsonl", "anthropic-stream-events", "anthropic",
     "claude-sonnet-4-5-20250929", 1),
    ("anthropic_stream.sse", "anthropic-messages-sse", "anthropic",
     "claude-sonnet-4-5-20250929", 1),
    ("openai_responses_stream_events.jsonl", "openai-responses-stream-events",
     "openai-responses", "gpt-4.1-2025-04-14", 1),
    ("openai_chat_chunks.jsonl", "openai-chat-stream-chunks", "openai", "gpt-4o-mini", 1),
    ("kimi_cli_context.jsonl", "kimi-cli-context-jsonl", "kimi-cli", None, 1),
    ("copilot_cli_events.jsonl", "copilot-cli-events-jsonl", "copilot-cli", "claude-sonnet-4.5", 1),
    ("copilot_cli_events_subagent.jsonl", "copilot-cli-events-jsonl", "copilot-cli",
     "claude-opus-4.7", 1),
    ("cline_api_conversation_history.json", "cline-api-history", "cline", None, 1),
    ("roo_api_conversation_history.json", "cline-api-history", "cline", None, 1),
    ("continue_session.json", "continue-session", "continue", "GPT-4o", 1),
]


def test_every_fixture_is_listed_with_its_source():
    sources = (FIX / "SOURCES.md").read_text()
    names = sorted(p.name for p in FIX.iterdir() if p.suffix != ".md")
    assert names == sorted(e[0] for e in EXPECTED)
    for name in names:
        assert f"`{name}`" in sources


@pytest.mark.parametrize("name,fmt,app,model,n", EXPECTED)
def test_labels(name, fmt, app, model, n):
    p, text = load(name)
    assert (p.format, p.error, p.partial) == (fmt, None, None)
    assert len(p.conversations) == n
    assert all(c.application == app for c in p.conversations)
    assert p.conversations[0].model == model
    # one header per conversation, the model in it when known
    assert text.count("\n=== ") + text.startswith("=== ") == n
    if model:
        assert f" · {model}" in text.split("\n", 1)[0]


def test_detection_ignores_the_file_name():
    for name, fmt, *_ in EXPECTED:
        data = (FIX / name).read_bytes()
        assert parse(data, "x.bin").format == parse(data, "conversations.json").format == fmt


def test_value_parts_reasoning_and_tool_calls():
    p, text = load("llamafactory_v1_messages.jsonl")
    msgs = p.conversations[0].messages
    assert msgs[0].name == "tools" and '"name": "multiply"' in msgs[0].parts[0].text
    kinds = [part.kind for part in msgs[3].parts]
    assert kinds == [THINKING, "text", TOOL_CALL]
    assert msgs[3].parts[2].name == "multiply" and json.loads(msgs[3].parts[2].text) == {"a": 6,
                                                                                         "b": 8}
    assert "[attachment" not in text
    assert "[image: image/png, images/receipt.png]" in text
    assert '→ tool multiply {"a": 6, "b": 8}' in text


def test_preference_answers_are_marked():
    p, text = load("preference_sharegpt.json")
    labels = [(m.role, m.label) for m in p.conversations[1].messages]
    assert labels == [(SYSTEM, None), (USER, None), (ASSISTANT, "chosen"), (ASSISTANT, "rejected")]
    assert "[assistant · chosen]\nAir scatters" in text
    assert "[assistant · rejected]\nBecause it reflects the ocean." in text
    # full conversations in chosen / rejected: the shared prompt once, "messages" not again
    p, text = load("preference_trl.jsonl")
    assert text.count("Write a haiku about rain.") == 1
    assert text.count("Soft rain on tin roofs") == 1
    # HH-RLHF transcripts: shared turns once, the last answers marked
    p, text = load("preference_hh_rlhf.jsonl")
    roles = [(m.role, m.label) for m in p.conversations[0].messages]
    assert roles == [(USER, None), (ASSISTANT, None), (USER, None), (ASSISTANT, "chosen"),
                     (ASSISTANT, "rejected")]
    assert "Human:" not in text
    p, _ = load("preference_openai_dpo.jsonl")
    assert [m.label for m in p.conversations[0].messages] == [None, "chosen", "rejected"]
    p, text = load("kto_unpaired.jsonl")
    assert "[assistant · desirable]\nIt is blue." in text
    assert "[assistant · undesirable]\n green." in text


def test_sharegpt_function_call_and_observation():
    p, text = load("sharegpt_tool_calls.json")
    roles = [m.role for m in p.conversations[0].messages]
    assert roles == [SYSTEM, SYSTEM, USER, ASSISTANT, TOOL, ASSISTANT]
    assert "[function_call]" not in text and "[observation]" not in text
    assert ('→ tool convert_currency {"amount": 500, "from_currency": "USD", '
            '"to_currency": "EUR"}') in text
    assert '← result convert_currency\n{"converted_amount": 425.50' in text
    assert "[system: tools]\n[{\"name\": \"convert_currency\"" in text


def test_chatgpt_export_thread_branch_tool_and_image():
    p, text = load("chatgpt_conversations.json")
    conv = p.conversations[0]
    assert conv.title == "Parabola plot" and conv.started == "2023-11-14T22:13:20Z"
    main = [m for m in conv.messages if m.sidechain is None]
    assert [m.role for m in main] == [USER, ASSISTANT, TOOL, ASSISTANT, USER, ASSISTANT]
    assert main[1].parts[0].kind == TOOL_CALL and main[1].parts[0].name == "python"
    assert main[2].parts[0].kind == TOOL_RESULT and main[2].parts[0].text == "9.0"
    branch = [m for m in conv.messages if m.sidechain == "branch"]
    assert [p.text for m in branch for p in m.parts] == ["The maximum is 9 (first try)."]
    # the branch sits where it forks: after the tool result, before the current answer
    assert text.index("──── begin branch") < text.index("The parabola peaks at 9")
    assert text.index("← result python") < text.index("──── begin branch")
    assert "[image: file-service://file-AbC123, 80211 bytes, 640x480]" in text
    assert main[4].parts[0].kind == IMAGE


def test_claude_ai_export():
    p, text = load("claude_ai_conversations.json")
    conv = p.conversations[0]
    assert conv.title == "Regex for dates" and [m.role for m in conv.messages] == [USER, ASSISTANT]
    assert "[attachment: text/plain, notes.txt, 43 bytes]\nDates look like" in text
    assert "← result repl\ntrue" in text
    assert "[thinking: summary]\nChoosing a simple date pattern." in text


def test_claude_code_inline_sidechains_nest_under_their_task_call():
    p, text = load("claude_code_v1_sidechains.jsonl")
    conv = p.conversations[0]
    side = [m.sidechain for m in conv.messages]
    assert side == [None, None] + ["subagent Find config loading"] * 4 + \
        ["subagent Find cache clearing"] * 4 + [None, None]
    # the subagent's prompt is not read as the user's
    assert [m.role for m in conv.messages if m.sidechain is None] == [USER, ASSISTANT, USER,
                                                                      ASSISTANT]
    first, second = text.index("begin subagent Find config"), text.index("begin subagent Find cache")
    assert text.index("→ tool Task") < first < text.index("end subagent Find config") < second
    assert text.index("end subagent Find cache") < text.index("← result Task")
    assert "[↳ user] 2025-06-26T11:14:06.000Z\nSearch the codebase" in text
    # their API calls count in the session's usage
    assert conv.usage["output_tokens"] == 5 * 6


def test_claude_code_2_0_sidechain_lines_found_by_agent_id():
    """Subagent lines merged into the main file (2.0, agentId on each line, the chain's
    first line missing): one block, right after the Task call the agentId answered."""
    p, text = load("claude_code_2_0_merged_sidechain.jsonl")
    msgs = p.conversations[0].messages
    assert [(m.role, m.sidechain) for m in msgs] == [
        (USER, None), (ASSISTANT, None),
        (ASSISTANT, "subagent general-purpose: Research border colours"),
        (USER, "subagent general-purpose: Research border colours"),
        (USER, None), (ASSISTANT, None)]
    assert "agent_id" not in p.conversations[0].metadata     # the session is no subagent


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
def test_claude_code_2x_agent_progress_nests_the_subagent():
    rel = "claude-code-spotter/transcripts/4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
    p = parse((CORPUS / rel).read_bytes())
    conv = p.conversations[0]
    assert conv.model == "claude-opus-4-6"        # the session's model, not its subagent's
    idx = [i for i, m in enumerate(conv.messages) if m.sidechain]
    assert idx and idx == list(range(idx[0], idx[-1] + 1))     # one block
    before = conv.messages[idx[0] - 1]
    assert any(part.kind == TOOL_CALL and part.call_id == "toolu_017pLRuPHYTX5t99EnLyV53m"
               for part in before.parts)
    assert conv.messages[idx[0]].sidechain.startswith("subagent ")


def test_claude_code_attachments_in_order():
    p, text = load("claude_code_2_1_attachments.jsonl")
    msgs = p.conversations[0].messages
    got = [(m.role, m.name, m.label) for m in msgs]
    assert got == [(SYSTEM, "hook_success", None), (USER, None, None), (ASSISTANT, None, None),
                   (SYSTEM, "hook_additional_context", None), (USER, None, None),
                   (USER, None, "queued"), (SYSTEM, "edited_text_file", None),
                   (ASSISTANT, None, None)]
    assert "[user · queued] 2026-02-19T02:00:05.000Z\nand convert the prices to euros" in text
    assert "[system: edited_text_file] 2026-02-19T02:00:05.500Z\n/w/docs/plan.md\n1\t# Plan" in text
    assert "Remember: prices are stored in cents." in text


def test_stream_event_logs_are_assembled():
    p, text = load("anthropic_stream_events.jsonl")
    (msg,) = p.conversations[0].messages
    assert [part.kind for part in msg.parts] == [THINKING, "text", TOOL_CALL]
    assert msg.parts[1].text == "Okay, let's check the weather for San Francisco, CA:"
    assert '→ tool get_weather {"location": "San Francisco, CA"}' in text
    assert p.conversations[0].usage["output_tokens"] == 89
    p, text = load("openai_responses_stream_events.jsonl")
    assert [m.parts[0].text for m in p.conversations[0].messages] == [
        "Hi there! How can I assist you today?"]
    assert p.conversations[0].usage["total_tokens"] == 48
    p, text = load("openai_chat_chunks.jsonl")
    assert "Hello from the stream.\n→ tool lookup {\"q\": \"stream chunks\"}" in text


def test_responses_stream_without_its_final_event():
    lines = (FIX / "openai_responses_stream_events.jsonl").read_bytes().splitlines()[:-1]
    p = parse(b"\n".join(lines[:6]) + b"\n")          # cut before output_text.done
    assert p.format == "openai-responses-stream-events"
    assert p.conversations[0].messages[0].parts[0].text == "Hi there! How can I assist you today?"


def test_other_agents():
    p, text = load("kimi_cli_context.jsonl")
    conv = p.conversations[0]
    assert [m.role for m in conv.messages] == [SYSTEM, USER, ASSISTANT, TOOL, ASSISTANT]
    assert conv.usage == {"context_tokens": 5410}
    assert "[thinking]\nI can use the shell tool" in text and "← result Shell" in text
    p, text = load("copilot_cli_events.jsonl")
    conv = p.conversations[0]
    assert conv.id == "b0c3d1e2-0000-4000-8000-00000000c0b1"
    assert text.count("→ tool view") == 1                    # announced once, not twice
    assert "← result view\n1. # Project" in text
    assert "<current_datetime>" not in text
    p, text = load("roo_api_conversation_history.json")
    assert "[thinking]\nRenaming needs a shell command." in text
    assert p.conversations[0].started == "2025-09-09T06:40:00Z"
    p, text = load("continue_session.json")
    assert "[attachment: context, net.py (12-30)]\nfor attempt in range(3):" in text
    assert text.count("RETRIES = 3") == 1         # the tool message, not its state again
    assert "<system>...</system>" not in text     # prompt logs are not the conversation


def test_server_tool_results_one_line_each_and_separated():
    resp = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "server_tool_use", "id": "srv_1", "name": "web_search",
                 "input": {"query": "today"}},
                {"type": "web_search_tool_result", "tool_use_id": "srv_1", "content": [
                    {"type": "web_search_result", "title": "A", "url": "https://a.example"},
                    {"type": "web_search_result", "title": "B", "url": "https://b.example",
                     "encrypted_content": "xyz"}]},
                {"type": "text", "text": "Here is what happened."}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 2}}
    text = render_bytes(parse(json.dumps(resp).encode())).decode()
    assert ("← result web_search\nA https://a.example\nB https://b.example\n\n"
            "Here is what happened.\n") in text
    assert "xyz" not in text


def test_images_show_their_media_type():
    req = {"model": "claude-x", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpeg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "AAAA"}},
        {"type": "text", "text": "what are these?"}]}]}
    text = render_bytes(parse(json.dumps(req).encode())).decode()
    assert "[image: image/jpeg, https://example.com/cat.jpeg]" in text
    assert "[image: image/webp, 3 bytes]" in text


def test_partial_files_are_labelled_and_keep_their_text():
    good = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
    row = {"question": "why?", "answer": "because"}           # a row of an unknown dataset
    data = (json.dumps(good) + "\n" + json.dumps(row) + "\n").encode()
    p = parse(data)
    assert p.is_conversation and p.partial and p.issue.startswith("partial text view: ")
    assert p.partial == ("1 of 2 lines with text are not conversations (JSONL, 1 lines of "
                         "objects with keys question, answer)")
    assert b"hello there" in render_bytes(p)
    arr = json.dumps([good, row]).encode()
    assert "1 of 2 array entries with text are not conversations" in parse(arr).partial
    # entries with nothing a message could say (a polled status, an image download in an
    # API log) leave the file whole
    status = {"request": "", "status": 200, "response": {"status": "in_progress", "output": []}}
    assert parse((json.dumps(good) + "\n" + json.dumps(status) + "\n").encode()).partial is None


def test_ls_errors_says_what_opaque_and_partial_files_look_like(tmp_path):
    good = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.jsonl").write_text(
        '{"event": "open", "at": 1}\n{"event": "close", "at": 2}\n')
    (tmp_path / "in" / "mixed.jsonl").write_text(json.dumps(good) + '\n{"question": "q?"}\n')
    (tmp_path / "in" / "fine.json").write_text(json.dumps(good))
    store = tmp_path / "store"
    run = [sys.executable, "-m", "stowfs"]
    r = subprocess.run(run + ["ingest", str(store), str(tmp_path / "in")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "1 stored as opaque" in r.stdout and "1 with a partial text view" in r.stdout
    r = subprocess.run(run + ["ls", str(store), "--errors"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split("\t", 1) for line in r.stdout.strip().split("\n"))
    assert set(lines) == {"in/events.jsonl", "in/mixed.jsonl"}
    assert lines["in/events.jsonl"].endswith("JSONL, 2 lines of objects with keys event, at")
    assert lines["in/mixed.jsonl"].startswith("partial text view: 1 of 2 lines")
    r = subprocess.run(run + ["cat", str(store), "in/mixed.jsonl", "--view", "text"],
                       capture_output=True, text=True)
    assert "hello there" in r.stdout


# --- the parsers on arbitrary values spelled with the formats' own keys ---------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEYS = ["role", "content", "type", "value", "from", "conversations", "chosen", "rejected",
         "prompt", "completion", "label", "messages", "mapping", "current_node", "children",
         "parent", "message", "author", "parts", "content_type", "chat_messages", "sender",
         "text", "attachments", "history", "sessionId", "toolCalls", "data", "toolRequests",
         "input", "preferred_output", "non_preferred_output", "tools", "name", "arguments",
         "tool_calls", "id", "recipient", "attachment", "isSidechain", "uuid", "parentUuid",
         "thinking", "summaries", "delta", "index", "response", "output", "ts", "think",
         "token_count", "kto_tag", "images", "workspaceDirectory", "contextItems",
         "toolCallStates", "reasoning", "system", "instruction", "sequence_number", "object"]
_VALS = ["user", "assistant", "tool", "human", "gpt", "function_call", "observation", "text",
         "reasoning", "tool_call", "message_start", "content_block_delta", "response.created",
         "chat.completion.chunk", "queued_command", "attachment", "progress", "agent_progress",
         "session.start", "user.message", "assistant.message", "tool.execution_complete",
         "_usage", "_checkpoint", "thinking", "tool_use", "tool_result", "image", "code",
         "multimodal_text", "thoughts", "\n\nHuman: hi\n\nAssistant: yo"]
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(_VALS),
                  st.text(max_size=4))
_value = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.sampled_from(_KEYS), c, max_size=5)),
    max_leaves=25)


def test_unhashable_type_values_are_no_parser_error():
    for doc in (b'{"type": []}', b'{"type": {}, "payload": 1}', b'[{"role": "user", "content": [{"type": []}]}]'):
        assert not (parse(doc).error or "").startswith("parser error")


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=_value, jsonl=st.booleans())
def test_format_shaped_noise_never_reaches_the_catch_all(value, jsonl):
    doc = json.dumps(value)
    p = parse(((doc + "\n") * 2 if jsonl else doc).encode())
    assert not (p.error or "").startswith("parser error"), p.error
    render_bytes(p)


def test_copilot_subagents_nest_and_cut_streams_keep_their_text():
    lines = [
        {"type": "user.message", "data": {"content": "hi"}},
        {"type": "assistant.message_delta", "data": {"messageId": "m1", "deltaContent": "Hel"}},
        {"type": "assistant.message", "data": {"messageId": "m1", "content": "Hello",
                                               "toolRequests": [{"toolCallId": "t1", "name": "task",
                                                                 "arguments": {"prompt": "look"}}]}},
        {"type": "assistant.message", "data": {"messageId": "m2", "content": "sub says",
                                               "parentToolCallId": "t1"}},
        {"type": "tool.execution_complete", "data": {"toolCallId": "t1", "success": True,
                                                     "result": {"content": "done"}}},
        {"type": "assistant.message_delta", "data": {"messageId": "m3", "deltaContent": "cut sh"}},
    ]
    p = parse("\n".join(json.dumps(x) for x in lines).encode())
    msgs = p.conversations[0].messages
    assert [(m.role, m.sidechain) for m in msgs] == [
        (USER, None), (ASSISTANT, None), (ASSISTANT, "subagent task"), (TOOL, None),
        (ASSISTANT, None)]
    text = render_bytes(p).decode()
    assert text.count("Hel") == 1 and "cut sh" in text     # deltas only where no final message


def test_copilot_real_shape_with_a_subagent():
    p, text = load("copilot_cli_events_subagent.jsonl")
    conv = p.conversations[0]
    got = [(m.role, m.sidechain, m.model) for m in conv.messages]
    assert got == [(SYSTEM, None, None), (USER, None, None),
                   (ASSISTANT, None, "claude-opus-4.7"),
                   (ASSISTANT, "subagent Explore Agent", "claude-haiku-4.5"),
                   (TOOL, "subagent Explore Agent", None),
                   (ASSISTANT, "subagent Explore Agent", "claude-haiku-4.5"),
                   (TOOL, None, None), (ASSISTANT, None, "claude-opus-4.7")]
    assert conv.usage == {"inputTokens": 81666 + 17050, "outputTokens": 521 + 226}
    assert text.count("Count the lines of hello.py") == 1     # hook copies not shown
    assert "reasoningOpaque" not in text and "EqgDCkgIDhAB" not in text


def test_claude_code_line_kinds_not_known_make_the_file_partial():
    lines = [{"type": "user", "uuid": "a", "sessionId": "s",
              "message": {"role": "user", "content": "hi"}},
             {"type": "teammate-message", "uuid": "b", "sessionId": "s",
              "message": {"role": "user", "content": "from a teammate"}},
             {"type": "file-history-snapshot", "messageId": "a", "snapshot": {}}]
    p = parse("\n".join(json.dumps(x) for x in lines).encode())
    assert p.is_conversation
    assert p.partial == "Claude Code lines of a kind not shown: 1 teammate-message"


def test_codex_item_kinds_not_known_make_the_file_partial():
    lines = [{"timestamp": "2026-01-01T00:00:00Z", "type": "session_meta",
              "payload": {"id": "s1", "cwd": "/w"}},
             {"timestamp": "2026-01-01T00:00:01Z", "type": "response_item",
              "payload": {"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "hi"}]}},
             {"timestamp": "2026-01-01T00:00:02Z", "type": "response_item",
              "payload": {"type": "hologram", "text": "something new"}}]
    p = parse("\n".join(json.dumps(x) for x in lines).encode())
    assert p.format == "codex-rollout-jsonl"
    assert p.partial == "Codex items of a kind not shown: 1 hologram"
