"""The readable transcript shown as `text/PATH.txt` (what users grep).

Layout: a header line for each conversation, then one block per message, blocks
separated by a blank line:

    === id · application · model · started · title ===     (what the file says of each;
                                                  "conversation i/N" first when it has several)

    [role] 2026-02-12T16:02:25.284Z (model)      header: role (":" name if the message has
                                                  one; " · label" for chosen / rejected /
                                                  queued ...), timestamp if known, model if
                                                  it differs from the conversation's
    <parts, each ending in a newline>

A nested thread (Message.sidechain: a subagent's run, a branch of a chat export) opens
with a "──── begin LABEL ────" line, its messages' headers start with "[↳ ", and it closes
with "──── end LABEL ────".

Parts:
    TEXT         the text, verbatim
    THINKING     a "[thinking]" line ("[thinking: subject]" when it has one), the text, and
                 a "[/thinking]" line; "[thinking: redacted]" when there is no text
    TOOL_CALL    "→ tool NAME ARGS" on one line; ARGS is the arguments as compact one-line
                 JSON, complete (never truncated), \\uXXXX escapes decoded. Arguments that
                 are not JSON (e.g. a raw patch) follow verbatim on the next lines instead
    TOOL_RESULT  a "← result NAME" line (NAME found from the matching call when the result
                 has none; " (error)" if flagged), once per run of parts of the same call,
                 then the text verbatim, or a one-line summary for structured results (a
                 search result each); a blank line ends the run when more parts follow
    IMAGE        "[image: media/type, N bytes]" or "[image: URL]" (never the data)
    BLOB         "[attachment: media/type, description]"
    TOKENS       "[tokens: N ids]" line, then the ids separated by spaces on one line

Non-conversation files (Parsed.error set or no conversations) render as nothing.

`render` yields (fragment, is_content). is_content is True only for TEXT, THINKING and
TOOL_RESULT strings yielded exactly as they are in the Part (never modified, never
empty); everything else (headers, newlines, tool calls, token ids, summaries) is
decoration. Deterministic: the output depends only on the Parsed value.

Encoding: strings from JSON may hold lone surrogates ("\\ud800"). Every fragment, content
or decoration, is encoded with .encode("utf-8", "surrogatepass") — the same as the storage
layer does for content fragments — so render_bytes never fails and equals the
concatenation of the encoded fragments (a lone surrogate becomes its 3-byte form).
"""
from __future__ import annotations

import json
from typing import Iterator, Optional

from ..conversation import (BLOB, IMAGE, TEXT, THINKING, TOKENS, TOOL_CALL, TOOL_RESULT,
                            Conversation, Message, Parsed, Part)

Fragment = tuple[str, bool]

ENCODING = "utf-8"
ERRORS = "surrogatepass"


def render(parsed: Parsed) -> Iterator[Fragment]:
    """Yield the transcript of `parsed` as (fragment, is_content) pairs."""
    if parsed.error is not None or not parsed.conversations:
        return
    convs = parsed.conversations
    total = len(convs)
    for index, conv in enumerate(convs, 1):
        head = _separator(conv, index, total)
        if head:
            yield head, False
        yield from _conversation(conv)


def render_bytes(parsed: Parsed) -> bytes:
    """The transcript as bytes (UTF-8, lone surrogates encoded with surrogatepass)."""
    return b"".join(text.encode(ENCODING, ERRORS) for text, _ in render(parsed))


def _separator(conv: Conversation, index: int, total: int) -> str:
    bits = [f"conversation {index}/{total}"] if total > 1 else []
    for value in (conv.id, conv.application, conv.model, conv.started, conv.title):
        if value:
            bits.append(_one_line(str(value)))
    return "=== " + " · ".join(bits) + " ===\n\n" if bits else ""


def _one_line(s: str) -> str:
    return s.replace("\r", " ").replace("\n", " ")


def _header(msg: Message, conv_model: Optional[str]) -> str:
    role = _one_line(msg.role)
    if msg.name:
        role += ": " + _one_line(msg.name)
    if msg.label:
        role += " · " + _one_line(msg.label)
    head = f"[↳ {role}]" if msg.sidechain else f"[{role}]"
    if msg.timestamp:
        head += " " + _one_line(msg.timestamp)
    if msg.model and msg.model != conv_model:
        head += f" ({_one_line(msg.model)})"
    return head + "\n"


def _conversation(conv: Conversation) -> Iterator[Fragment]:
    call_names: dict[str, str] = {}
    block: Optional[str] = None
    for msg in conv.messages:
        if msg.sidechain != block:
            if block is not None:
                yield f"──── end {_one_line(block)} ────\n\n", False
            if msg.sidechain is not None:
                yield f"──── begin {_one_line(msg.sidechain)} ────\n\n", False
            block = msg.sidechain
        yield _header(msg, conv.model), False
        yield from _parts(msg.parts, call_names)
        yield "\n", False
    if block is not None:
        yield f"──── end {_one_line(block)} ────\n\n", False


def _content(text: Optional[str]) -> Iterator[Fragment]:
    if text:
        yield text, True
        yield "\n", False


def _compact_args(text: Optional[str]) -> Optional[str]:
    """One-line JSON for tool arguments, or None when they are not JSON (shown raw)."""
    if text is None or text == "":
        return "{}"
    if "\n" not in text and "\r" not in text and "\\u" not in text:
        return text                 # one line, no \u escapes: shown as the input has it
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, RecursionError):
        return None


def _parts(parts: list[Part], call_names: dict[str, str]) -> Iterator[Fragment]:
    result_run: Optional[tuple[Optional[str], Optional[str]]] = None
    for part in parts:
        kind = part.kind
        if kind != TOOL_RESULT and result_run is not None:
            result_run = None
            yield "\n", False              # the result ends here, whatever follows
        if kind == TEXT:
            if part.text is not None:
                yield from _content(part.text)
            elif part.ref:
                yield f"[{_one_line(part.ref)}]\n", False
        elif kind == THINKING:
            label = f"[thinking: {_one_line(part.name)}]\n" if part.name else "[thinking]\n"
            if part.text:
                yield label, False
                yield from _content(part.text)
                yield "[/thinking]\n", False
            else:
                yield f"[thinking: {_one_line(part.ref or 'empty')}]\n", False
        elif kind == TOOL_CALL:
            name = part.name or "?"
            if part.call_id and part.name:
                call_names[part.call_id] = part.name
            args = _compact_args(part.text)
            if args is not None:
                yield f"→ tool {_one_line(name)} {args}\n", False
            else:
                yield f"→ tool {_one_line(name)}\n{part.text}\n", False
        elif kind == TOOL_RESULT:
            run = (part.call_id, part.name)
            if run != result_run:
                result_run = run
                name = (call_names.get(part.call_id) if part.call_id else None) or part.name
                head = "← result"
                if name:
                    head += " " + _one_line(name)
                if part.is_error:
                    head += " (error)"
                yield head + "\n", False
            if part.text is not None:
                yield from _content(part.text)
            elif part.ref:
                yield _one_line(part.ref) + "\n", False
        elif kind == TOKENS:
            ids = part.tokens or []
            yield f"[tokens: {len(ids)} ids]\n", False
            if ids:
                yield " ".join(map(str, ids)) + "\n", False
        elif kind in (IMAGE, BLOB):
            label = "image" if kind == IMAGE else "attachment"
            desc = ", ".join(_one_line(x) for x in (part.media_type, part.ref) if x)
            yield (f"[{label}: {desc}]\n" if desc else f"[{label}]\n"), False
        else:
            text = part.text if part.text is not None else part.ref
            yield f"[{_one_line(kind)}]\n", False
            if text:
                yield text + "\n", False
