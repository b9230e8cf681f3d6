"""How a file's bytes become a piece list (see pieces.py), and how a view is built.

- JSON-like files (the first byte that is not white space is '{' or '['): every string
  literal of at least MIN_SEGMENT bytes, and every array of at least MIN_TOKENS integers,
  becomes its own segment; the rest is skeleton. This needs no successful parse, so it
  works for JSON, JSONL, truncated or otherwise broken JSON alike, and it streams: a JSON
  string literal never spans a newline, so the file is processed a window of whole lines
  at a time.
- Text formats a parser understood (aider Markdown): each message body is a segment.
- Anything else: all skeleton, i.e. content-defined chunks.
"""
from __future__ import annotations

import json
import re

from .. import limits
from .pieces import (ASSISTANT, OTHER, RAW, ROLE_KIND, TOKENS, TOOL, PieceListBuilder,
                     json_string_style, token_lines, token_style)
from ..conversation import Parsed, TOOL_CALL, TOOL_RESULT, THINKING
from ..packing import encode_uvarints

_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|\[\s*[0-9][0-9,\s]*\]', re.DOTALL)
_DIGITS = re.compile(rb"[0-9]+")
_BOM = b"\xef\xbb\xbf"


def looks_like_json(head: bytes) -> bool:
    head = head[3:] if head.startswith(_BOM) else head
    s = head.lstrip(b" \t\r\n")
    return s[:1] in (b"{", b"[")


def content_kinds(parsed: Parsed | None) -> dict[str, int]:
    """Map each content string of the parsed conversations to its segment kind."""
    kinds: dict[str, int] = {}
    if parsed is None:
        return kinds
    for conv in parsed.conversations:
        for msg in conv.messages:
            role_kind = OTHER if msg.event else ROLE_KIND.get(msg.role, OTHER)
            for part in msg.parts:
                if part.text is None:
                    continue
                if part.kind in (TOOL_CALL, TOOL_RESULT):
                    kinds[part.text] = TOOL
                elif part.kind == THINKING:
                    kinds[part.text] = ASSISTANT
                else:
                    kinds.setdefault(part.text, role_kind)
    return kinds


def split_json(window: bytes, b: PieceListBuilder, kinds: dict[str, int]) -> None:
    """Split one window of whole lines of a JSON-like file into b."""
    pos = 0
    min_raw = limits.MIN_SEGMENT + 2
    for m in _LITERAL.finditer(window):
        s, e = m.span()
        if e - s < min_raw:
            continue
        lit = window[s:e]
        if lit[0] == 0x22:  # '"'
            if e - s > 6 * limits.MAX_SEGMENT + 2:
                continue
            try:
                value = json.loads(lit.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            seg = value.encode("utf-8", "surrogatepass")
            if len(seg) < limits.MIN_SEGMENT or len(seg) > limits.MAX_SEGMENT:
                continue
            style = json_string_style(value, lit)
            kind = kinds.get(value, OTHER)
        else:
            ids = [int(d) for d in _DIGITS.findall(lit)]
            if len(ids) < limits.MIN_TOKENS:
                continue
            style = token_style(ids, lit)
            seg = encode_uvarints(ids)
            kind = TOKENS
            if style is None and b"\n" in lit:    # pretty-printed: one id a line
                inner = token_lines(ids, lit)
                if inner is None:
                    continue
                a, z, style = inner
                s, e = s + a, s + z
        if style is None:
            continue
        b.gap(window[pos:s])
        b.ref(seg, style, e - s, kind)
        pos = e
    b.gap(window[pos:])


def split_stream(read, b: PieceListBuilder, kinds: dict[str, int], jsonish: bool) -> None:
    """Feed a file (read(n) -> bytes) through the splitter a window at a time."""
    if not jsonish:
        while True:
            data = read(limits.READ_WINDOW)
            if not data:
                return
            b.gap(data)
    carry = b""
    while True:
        data = read(limits.READ_WINDOW)
        if not data:
            if carry:
                split_json(carry, b, kinds)
            return
        buf = carry + data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) > limits.MAX_LINE_BYTES:
                b.gap(buf)   # one enormous line: skeleton chunks only
                carry = b""
            else:
                carry = buf
            continue
        split_json(buf[:cut], b, kinds)
        carry = buf[cut:]


def split_spans(data: bytes, spans, b: PieceListBuilder) -> None:
    """Text formats: each message span of the original bytes is one segment."""
    pos = 0
    for start, end, role in spans:
        if start < pos or end > len(data) or end - start < limits.MIN_SEGMENT \
                or end - start > limits.MAX_SEGMENT:
            continue
        b.gap(data[pos:start])
        b.ref(data[start:end], RAW, end - start, ROLE_KIND.get(role, OTHER))
        pos = end
    b.gap(data[pos:])


def build_view(fragments, b: PieceListBuilder, kinds: dict[str, int]) -> None:
    """A rendered view: content fragments become refs (deduplicated with the original's
    segments, same bytes, same hash), decoration goes to the view's skeleton."""
    pending = []
    for text, is_content in fragments:
        if is_content:
            seg = text.encode("utf-8", "surrogatepass")
            if limits.MIN_SEGMENT <= len(seg) <= limits.MAX_SEGMENT:
                if pending:
                    b.gap("".join(pending).encode("utf-8", "surrogatepass"))
                    pending = []
                b.ref(seg, RAW, len(seg), kinds.get(text, OTHER))
                continue
        pending.append(text)
    if pending:
        b.gap("".join(pending).encode("utf-8", "surrogatepass"))
