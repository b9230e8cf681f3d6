"""aider's `.aider.chat.history.md` (Markdown), split into sessions and messages.

How aider writes it (aider/io.py):
- `# aider chat started at YYYY-MM-DD HH:MM:SS` opens a session;
- user input: every line `#### <line>  ` (two trailing spaces = Markdown line break);
- tool/status output: `> <text>  ` — only the first line of a multi-line output gets
  the `> `, the two trailing spaces end it;
- assistant replies: plain Markdown, verbatim.

Messages: consecutive user lines form one user message; tool outputs (also across blank
lines) form one `tool` message; the text between them is an assistant message (text
before the first user message of a session, e.g. Jekyll front matter in published
transcripts, belongs to no message; inside a session, text before its first user
message, as when aider fixes lint errors on its own, is an assistant message). Lines that are only `<div ...>` / `</div>` wrappers
(aider's website examples) are treated like blank lines.

Part texts: assistant text is exactly the bytes of its span; user and tool texts have the
`#### ` / `> ` markers and the two trailing spaces removed. Parsed.spans lists
(start, end, role) byte ranges of every message body in the original file (markers
included, trailing newline excluded), increasing and non-overlapping.

Known limits: a `#### ` line without the two trailing spaces (hand-written headings, a few
old aider versions) is read as assistant text; a `> ` line inside an assistant reply that
ends in two spaces is read as tool output.
"""
from __future__ import annotations

import re
from typing import Optional

from ..conversation import ASSISTANT, TOOL, USER, Conversation, Message, Parsed, Part, TEXT

AIDER = "aider-markdown"

_HEADER = b"# aider chat started at "
_DETECT_HEADER = re.compile(r"(?m)^# aider chat started at ")
_DETECT_USER = re.compile(r"(?m)^#### [^\n]*  \r?$")
_DETECT_TOOL = re.compile(r"(?m)^> [^\n]*  \r?$")
_MODEL = re.compile(r"^(?:Main model|Models?): (\S+)", re.M)
_TOKEN_USAGE = re.compile(r"^Tokens: ([\d.,]+)(k|M)? sent(?:.*?, ([\d.,]+)(k|M)? received)?",
                          re.M)


def looks_like_aider(text: str) -> bool:
    if _DETECT_HEADER.search(text):
        return True
    return bool(_DETECT_USER.search(text)) and bool(_DETECT_TOOL.search(text))


_NON_WS = re.compile(rb"[^ \t\r\n]")
_TWO_SPACES_EOL = re.compile(rb"  \r?$", re.M)
_USER_MARK = re.compile(rb"\n#### ?")
_TOOL_MARK = re.compile(rb"\n> ?")
_USER_LINE = rb"\#\#\#\#(?:\ [^\n]*)?\ \ \r?$"
_TOOL_LINE = rb">(?:\ [^\n]*)?\ \ \r?$"
# Marker lines; consecutive user lines / complete tool lines are matched as one run.
_MARKERS = re.compile(rb"""^(?=[\#><])(?:
  (?P<head>\#\ aider\ chat\ started\ at\ [^\n]*)$
 |(?P<user>""" + _USER_LINE + rb"""(?:\n""" + _USER_LINE + rb""")*)
 |(?P<tool>""" + _TOOL_LINE + rb"""(?:\n""" + _TOOL_LINE + rb""")*)
 |(?P<toolstart>>(?:\ [^\n]*)?$)
 |(?P<div></?div[^\n]*>[ \t]*\r?$)
)""", re.M | re.X)


def _number(num: Optional[str], unit: Optional[str]) -> int:
    if not num:
        return 0
    try:
        value = float(num.replace(",", ""))
    except ValueError:
        return 0
    return int(value * {"k": 1_000, "M": 1_000_000}.get(unit or "", 1))


class _Builder:
    """Turns the event stream (marker runs, text regions, blank regions) into messages."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.convs: list[Conversation] = []
        self.spans: list[tuple[int, int, str]] = []
        self.conv = Conversation(application="aider")      # preamble before any header
        self.convs.append(self.conv)
        self.seen_user = False
        self.in_session = True
        self.in_session = False         # after a "# aider chat started at" line
        self.role: Optional[str] = None
        self.start = self.end = 0
        self.blank = False              # blank line(s) since the current message's last line

    def flush(self) -> None:
        role, start, end = self.role, self.start, self.end
        self.role = None
        self.blank = False
        if role is None:
            return
        chunk = self.data[start:end]
        if role != ASSISTANT:       # drop the two-space line breaks, then the markers
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"  \n", b"\n")
            if chunk.endswith(b"  "):
                chunk = chunk[:-2]
            chunk = (_USER_MARK if role == USER else _TOOL_MARK).sub(b"\n", b"\n" + chunk)[1:]
        self.conv.messages.append(Message(role=role, parts=[Part(kind=TEXT,
                                                                 text=chunk.decode("utf-8"))]))
        self.spans.append((start, end, role))
        if role == USER:
            self.seen_user = True

    def session(self, started: Optional[str]) -> None:
        self.flush()
        self.conv = Conversation(application="aider", started=started)
        self.convs.append(self.conv)
        self.seen_user = False
        self.in_session = True

    def blank_lines(self) -> None:
        if self.role is not None:
            self.blank = True

    def text(self, start: int, end: int) -> None:
        if self.role != ASSISTANT:
            self.flush()
            if not self.seen_user and not self.in_session:
                return                  # front matter before any session or message
            self.role, self.start = ASSISTANT, start
        self.end = end
        self.blank = False

    def marker(self, role: str, start: int, end: int) -> None:
        """A user-line run or a tool output (tool outputs merge across blank lines)."""
        if self.role != role or (role == USER and self.blank):
            self.flush()
            self.role, self.start = role, start
        self.end = end
        self.blank = False

    def region(self, a: int, b: int) -> None:
        """The whole lines data[a:b] between two marker lines: blank lines and/or text."""
        if a >= b:
            return
        data = self.data
        m = _NON_WS.search(data, a, b)
        if m is None:
            self.blank_lines()
            return
        first = m.start()
        nl = data.rfind(b"\n", a, first)
        line_start = nl + 1 if nl >= 0 else a
        last = first + len(data[first:b].rstrip())        # end of the last non-blank char
        nl = data.find(b"\n", last, b)
        line_end = nl if nl >= 0 else b
        after = line_end + 1
        if data[line_end - 1:line_end] == b"\r":
            line_end -= 1
        if line_start > a:
            self.blank_lines()
        self.text(line_start, line_end)
        if after < b:
            self.blank_lines()


def parse_aider(data: bytes, bom: int = 0) -> Parsed:
    b = _Builder(data)
    # (a memoryview past the BOM, so that "^" matches on the first line)
    tokens = [(m.lastgroup, m.start() + bom, m.end() + bom)
              for m in _MARKERS.finditer(memoryview(data)[bom:])]
    n = len(tokens)
    pos = bom                           # start of the first line not yet handled
    i = 0
    while i < n:
        kind, start, end = tokens[i]
        i += 1
        if start < pos:                 # swallowed by a multi-line tool output
            continue
        b.region(pos, start)
        pos = end + 1
        if data[end - 1:end] == b"\r":
            end -= 1
        if kind == "head":
            stamp = data[start + len(_HEADER):end].decode("utf-8").strip()
            b.session(stamp.replace(" ", "T", 1) if stamp else None)
        elif kind == "user":
            b.marker(USER, start, end)
        elif kind == "tool":
            b.marker(TOOL, start, end)
        elif kind == "toolstart":
            # multi-line tool output: it ends at the first line ending in two spaces,
            # unless another marker line comes first
            limit = len(data)
            for k in range(i, n):
                if tokens[k][0] != "div":
                    limit = tokens[k][1]
                    break
            m = _TWO_SPACES_EOL.search(data, end, limit)
            if m is not None:
                end = m.end()
                pos = end + 1
                if data[end - 1:end] == b"\r":
                    end -= 1
            b.marker(TOOL, start, end)
        else:                           # <div> wrapper lines count as blank lines
            b.blank_lines()
    b.region(pos, len(data))
    b.flush()

    convs = b.convs
    if not convs[0].messages:
        convs = convs[1:]
    for conv in convs:
        for m in conv.messages:
            if m.role != TOOL:
                continue
            text = m.parts[0].text or ""
            if conv.model is None:
                found = _MODEL.search(text)
                if found:
                    conv.model = found.group(1).rstrip(",")
            if "Tokens: " in text:
                for t in _TOKEN_USAGE.finditer(text):
                    conv.usage["input_tokens"] = conv.usage.get("input_tokens", 0) + \
                        _number(t.group(1), t.group(2))
                    conv.usage["output_tokens"] = conv.usage.get("output_tokens", 0) + \
                        _number(t.group(3), t.group(4))
    if not any(c.messages for c in convs):
        return Parsed(format="text", error="Markdown with aider markers but no messages")
    return Parsed(format=AIDER, conversations=convs, spans=b.spans)
