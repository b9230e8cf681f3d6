"""The readable transcript view (stowfs.views.text)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from stowfs.conversation import (ASSISTANT, IMAGE, TEXT, THINKING, TOKENS, TOOL_CALL,
                                 TOOL_RESULT, USER, Conversation, Message, Parsed, Part)
from stowfs.formats import parse
from stowfs.views.text import render, render_bytes

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(),
                                  reason=f"corpus not found at {CORPUS}")

CONTENT_KINDS = (TEXT, THINKING, TOOL_RESULT)


def corpus_conversation_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    out = []
    for p in sorted(CORPUS.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md") and p.name != "SOURCE.md" \
                and "README" not in p.name:
            out.append(str(p.relative_to(CORPUS)))
    return out


@lru_cache(maxsize=None)
def parsed(rel: str) -> Parsed:
    return parse((CORPUS / rel).read_bytes(), rel)


def content_strings(p: Parsed) -> list[str]:
    """Every non-empty content string of the Parts, in document order."""
    return [part.text for c in p.conversations for m in c.messages for part in m.parts
            if part.kind in CONTENT_KINDS and part.text]


@needs_corpus
@pytest.mark.parametrize("rel", corpus_conversation_files())
def test_corpus_rendering(rel):
    p = parsed(rel)
    assert p.is_conversation, p.error
    fragments = list(render(p))
    # deterministic
    assert fragments == list(render(p))
    out = render_bytes(p)
    assert out == render_bytes(p)
    assert out == b"".join(f.encode("utf-8", "surrogatepass") for f, _ in fragments)
    # the content fragments are exactly the Parts' strings, all of them, in order
    assert [f for f, is_content in fragments if is_content] == content_strings(p)
    # every message has a header
    headers = sum(1 for f, c in fragments if not c and f.startswith("["))
    assert headers >= p.message_count()
    if len(p.conversations) > 1:
        assert sum(1 for f, _ in fragments if f.startswith("=== conversation ")) == \
            len(p.conversations)
    assert b"/9j/4AAQ" not in out            # no base64 image data


@needs_corpus
def test_claude_code_transcript_shape():
    out = render_bytes(parsed("claude-code-spotter/transcripts/tool_heavy.jsonl")).decode()
    # one conversation: a header with its id, application, model and start time
    assert out.startswith("=== d6e0bada-1959-4eec-a9d2-0bfade768d8f · claude-code · "
                          "claude-opus-4-6 · 2026-02-10T22:57:51.291Z ===\n\n"
                          "[user] 2026-02-10T22:57:54.684Z\nstart phoenix in background\n")
    assert '→ tool Bash {"command": "mix phx.server", ' in out
    assert "\n← result Bash\nCommand running in background" in out
    assert "[thinking]\nThe user wants me to research" in out


@needs_corpus
def test_exchanges_transcript_images_and_tools():
    out = render_bytes(parsed("api-cassettes-pydantic-ai/exchanges.jsonl")).decode()
    assert "[image: image/jpeg, 31812 bytes]" in out
    assert "→ tool get_something_by_name {\"foo\":\"bar\"}" in out
    assert "=== conversation 1/68 · msg_01UUPT9QdZnZSRzcQJkjG25U · anthropic" in out


@needs_corpus
def test_aider_transcript_user_lines_without_markers():
    out = render_bytes(parsed("aider-chat-history/examples/pong.md")).decode()
    assert out.startswith("=== aider ===\n\n[tool]\n$ aider\n\n[user]\n"
                          "can you make a simple game of pong")


def test_opaque_renders_nothing():
    for data in (b"", b"not a conversation", b'{"a": 1}', b"\xff\xfe"):
        p = parse(data)
        assert list(render(p)) == [] and render_bytes(p) == b""


def test_tokens_images_and_tool_calls():
    conv = Conversation(model="m", messages=[
        Message(role=USER, parts=[Part(kind=TOKENS, tokens=[1, 22, 333])]),
        Message(role=ASSISTANT, name="bot", timestamp="2026-01-01T00:00:00Z", model="other",
                parts=[Part(kind=THINKING, text="hmm"),
                       Part(kind=TEXT, text="look"),
                       Part(kind=IMAGE, media_type="image/png", ref="10 bytes"),
                       Part(kind=TOOL_CALL, name="Read", call_id="c1",
                            text='{\n  "file_path": "/x"\n}'),
                       Part(kind=TOOL_CALL, name="apply_patch", call_id="c2",
                            text="*** Begin Patch\n+x\n*** End Patch")]),
        Message(role=USER, parts=[Part(kind=TOOL_RESULT, call_id="c1", text="line 1"),
                                  Part(kind=TOOL_RESULT, call_id="c1", text="line 2"),
                                  Part(kind=TOOL_RESULT, call_id="c2", text="", is_error=True)]),
    ])
    out = render_bytes(Parsed(format="stowken", conversations=[conv])).decode()
    assert out == (
        "=== m ===\n\n"
        "[user]\n[tokens: 3 ids]\n1 22 333\n\n"
        "[assistant: bot] 2026-01-01T00:00:00Z (other)\n"
        "[thinking]\nhmm\n[/thinking]\nlook\n[image: image/png, 10 bytes]\n"
        '→ tool Read {"file_path": "/x"}\n'
        "→ tool apply_patch\n*** Begin Patch\n+x\n*** End Patch\n\n"
        "[user]\n← result Read\nline 1\nline 2\n← result apply_patch (error)\n\n")


def test_content_fragments_are_unmodified():
    text = "  leading and trailing spaces  \n\n"
    p = Parsed(format="x", conversations=[Conversation(messages=[
        Message(role=USER, parts=[Part(kind=TEXT, text=text)])])])
    content = [f for f, is_content in render(p) if is_content]
    assert content == [text] and content[0] is text


def test_lone_surrogates_encode_with_surrogatepass():
    p = parse(b'{"messages": [{"role": "user", "name": "\\udfff", '
              b'"content": "a\\ud800b"}]}')
    out = render_bytes(p)
    assert "a\ud800b".encode("utf-8", "surrogatepass") in out
    assert out == b"".join(f.encode("utf-8", "surrogatepass") for f, _ in render(p))


def test_json_escapes_are_decoded():
    doc = {"messages": [{"role": "user", "content": "tab\there \"quoted\" é ✓ \u2028"}]}
    out = render_bytes(parse(json.dumps(doc).encode())).decode()
    assert "tab\there \"quoted\" é ✓ \u2028" in out


def test_rendering_is_deterministic_across_processes():
    """The store keeps the text view's size from ingest and renders it again on every read:
    the same bytes must give the same view in any process (hash seeds vary set order)."""
    import subprocess
    import sys
    from pathlib import Path
    fixtures = Path(__file__).resolve().parent / "fixtures" / "formats"
    code = (
        "import hashlib, sys, pathlib\n"
        "from stowfs.formats import parse\n"
        "from stowfs.views.text import render_bytes\n"
        "h = hashlib.sha256()\n"
        "for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
        "    h.update(render_bytes(parse(p.read_bytes())))\n"
        "print(h.hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", code, str(fixtures)], check=True,
                              capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "3")}
    assert len(digests) == 1
