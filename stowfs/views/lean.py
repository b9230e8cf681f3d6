"""`lean/PATH`: every entry kept, in the original format, lean in tokens (tokenopt's
lossless mode). Valid JSON / JSONL of the same format as the original; a line (or a JSON
file) with nothing to change is written byte for byte as it was, so a file with nothing
to change is byte-identical to the original.

Transforms, each counted in the view's stats:
- ansi_stripped: ANSI escape sequences (CSI `ESC [ ... letter`, OSC `ESC ] ... BEL|ST`,
  two-byte `ESC x`) removed from every string;
- progress_collapsed: `\\r` progress frames: in each line of a string, what a terminal
  would overwrite (everything before the last bare `\\r`) removed; `\\r\\n` is a newline;
- images_elided: base64 image data (Anthropic `source.data`, Gemini `inlineData.data`,
  `data:image/...;base64,` URLs) replaced by `[image: TYPE, N b64 chars elided]`;
- reads_cut: outputs of a Read tool (Claude Code `Read`, Gemini `read_file`) over 120
  lines cut to their first and last 40 lines around `[... N lines cut (lean) ...]`;
- reminders_deduped: a `<system-reminder>...</system-reminder>` block seen before in the
  file replaced by `<system-reminder>[repeated: as at LOC]</system-reminder>`;
- tool_results_deduped: a tool-result string of 512 bytes or more seen before (as a tool
  result: Claude Code `tool_result` content and `toolUseResult`, Codex
  `function_call_output`, Gemini `toolCalls[].result`, OpenAI `tool` messages) replaced
  by `[repeated tool result: as at LOC]`.
LOC is "line N" (JSONL, 1-based, the same line in lean/ as in the original) or a JSON
pointer ("/messages/3/content/0/text") in a JSON file. A reference replaces a block only
when it is shorter. Non-JSON conversations (aider Markdown) get the string transforms
(ANSI, progress) on their text. Changed lines are written as compact one-line JSON in the
original's spelling (separators, ASCII escapes, a JSON file's indent).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Optional

from ..conversation import Parsed

VERSION = 1
READ_TOOLS = frozenset({"Read", "read_file", "ReadFile", "read_many_files"})
READ_MAX_LINES, READ_KEEP = 120, 40
DEDUP_MIN = 512
MAX_DEPTH = 100          # JSON nesting walked (deeper values are kept unchanged)

ANSI = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
DATA_URL = re.compile(r"^data:(image/[\w.+-]+);base64,([A-Za-z0-9+/=\s]+)$")
B64 = re.compile(r"^[A-Za-z0-9+/=\s]{64,}$")

STAT_KEYS = ("entries_in", "entries_out", "bytes_in", "bytes_out", "lines_changed",
             "ansi_stripped", "progress_collapsed", "images_elided", "reads_cut",
             "reminders_deduped", "tool_results_deduped")


class _Lean:
    def __init__(self) -> None:
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.reminders: dict[bytes, str] = {}
        self.results: dict[bytes, str] = {}
        self.read_ids: set = set()
        self.loc = ""

    # -------------------------------------------------------------- strings
    def text(self, s: str, tool: bool = False, read: bool = False, where: str = "") -> str:
        if "\x1b" in s:
            s, n = ANSI.subn("", s)
            self.stats["ansi_stripped"] += n
        if "\r" in s:
            s = self._progress(s)
        if s.startswith("data:image/"):
            m = DATA_URL.match(s)
            if m:
                self.stats["images_elided"] += 1
                return f"[image: {m.group(1)}, {len(m.group(2))} b64 chars elided]"
        if "<system-reminder>" in s:
            s = REMINDER.sub(self._reminder, s)
        if read and s.count("\n") > READ_MAX_LINES:
            lines = s.split("\n")
            if len(lines) > READ_MAX_LINES:
                cut = len(lines) - 2 * READ_KEEP
                s = "\n".join(lines[:READ_KEEP] + [f"[... {cut} lines cut (lean) ...]"] + lines[-READ_KEEP:])
                self.stats["reads_cut"] += 1
        if tool and len(s) >= DEDUP_MIN // 4:
            raw = s.encode("utf-8", "surrogatepass")
            if len(raw) >= DEDUP_MIN:
                key = hashlib.blake2b(raw, digest_size=16).digest()
                first = self.results.get(key)
                if first is None:
                    self.results[key] = self.here(where)
                else:
                    self.stats["tool_results_deduped"] += 1
                    return f"[repeated tool result: as at {first}]"
        return s

    def _progress(self, s: str) -> str:
        lines = s.split("\n")
        out = []
        for line in lines:
            crlf = line.endswith("\r")
            body = line[:-1] if crlf else line
            if "\r" in body:
                frames = body.split("\r")
                last = next((f for f in reversed(frames) if f), "")
                self.stats["progress_collapsed"] += len(frames) - 1
                body = last
            out.append(body + ("\r" if crlf else ""))
        return "\n".join(out)

    def _reminder(self, m: re.Match) -> str:
        block = m.group(0)
        key = hashlib.blake2b(block.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        first = self.reminders.get(key)
        if first is None:
            self.reminders[key] = self.loc
            return block
        ref = f"<system-reminder>[repeated: as at {first}]</system-reminder>"
        if len(ref) >= len(block):
            return block
        self.stats["reminders_deduped"] += 1
        return ref

    def here(self, where: str) -> str:
        return self.loc if self.loc.startswith("line") else (where or "/")

    # -------------------------------------------------------------- JSON values
    def value(self, v: Any, path: str, tool: bool = False, read: bool = False, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            return v            # kept as it is: no conversation format nests this deep
        if isinstance(v, str):
            if not self.loc.startswith("line"):
                self.loc = path or "/"
            return self.text(v, tool, read, path)
        if isinstance(v, list):
            return [self.value(x, f"{path}/{i}", tool, read, depth + 1) for i, x in enumerate(v)]
        if isinstance(v, dict):
            return self.obj(v, path, tool, read, depth + 1)
        return v

    def obj(self, d: dict, path: str, tool: bool, read: bool, depth: int = 0) -> dict:
        t = d.get("type")
        # remember which calls read files
        if t in ("tool_use", "function_call") and d.get("name") in READ_TOOLS:
            cid = d.get("id") or d.get("call_id")
            if isinstance(cid, str):
                self.read_ids.add(cid)
        image = self._image(d)
        if image is not None:
            return image
        out = {}
        for k, x in d.items():
            sub_tool, sub_read = tool, read
            if t == "tool_result" and k == "content":
                sub_tool = True
                sub_read = read or d.get("tool_use_id") in self.read_ids
            elif t == "function_call_output" and k == "output":
                sub_tool = True
                sub_read = read or d.get("call_id") in self.read_ids
            elif k == "toolUseResult":
                sub_tool = True
                sub_read = read or self._line_reads
            elif k in ("result", "resultDisplay") and "name" in d and "args" in d:   # Gemini CLI
                sub_tool = True
                sub_read = read or d.get("name") in READ_TOOLS
            elif k == "content" and d.get("role") == "tool":                        # OpenAI
                sub_tool = True
                sub_read = read or d.get("tool_call_id") in self.read_ids
            out[k] = self.value(x, f"{path}/{_escape(k)}", sub_tool, sub_read, depth)
        return out

    def _image(self, d: dict) -> Optional[dict]:
        src = d.get("source")
        if d.get("type") == "image" and isinstance(src, dict) and src.get("type") == "base64" \
                and isinstance(src.get("data"), str) and not src["data"].startswith("[image:"):
            new = dict(d)
            new["source"] = dict(src, data=f"[image: {src.get('media_type') or '?'}, "
                                           f"{len(src['data'])} b64 chars elided]")
            self.stats["images_elided"] += 1
            return new
        inline = d.get("inlineData") or d.get("inline_data")
        if isinstance(inline, dict) and isinstance(inline.get("data"), str) and B64.match(inline["data"]):
            mime = inline.get("mimeType") or inline.get("mime_type") or "?"
            if str(mime).startswith("image/"):
                new = dict(d)
                key = "inlineData" if "inlineData" in d else "inline_data"
                new[key] = dict(inline, data=f"[image: {mime}, {len(inline['data'])} b64 chars elided]")
                self.stats["images_elided"] += 1
                return new
        return None

    _line_reads = False

    def line_reads(self, d: Any) -> bool:
        """Whether a Claude Code line's tool_result answers a Read call (then its
        toolUseResult is that read's output too)."""
        if not isinstance(d, dict):
            return False
        msg = d.get("message")
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for b in content:
                if isinstance(b, dict) and b.get("type") == "tool_result" and b.get("tool_use_id") in self.read_ids:
                    return True
        return False


def _escape(k: str) -> str:
    return k.replace("~", "~0").replace("/", "~1")


def _spelling(raw: bytes) -> dict:
    head = raw[:4096]
    compact = b'": ' not in head and b'", "' not in head
    ascii_ = not any(b >= 0x80 for b in raw) and b"\\u" in raw
    return {"separators": (",", ":") if compact else (", ", ": "), "ensure_ascii": ascii_}


def _dump(v: Any, spelling: dict, indent=None) -> bytes:
    try:
        return json.dumps(v, indent=indent, **spelling).encode("utf-8")
    except UnicodeEncodeError:      # lone surrogates: escaped, still valid JSON
        return json.dumps(v, indent=indent, **dict(spelling, ensure_ascii=True)).encode("ascii")


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _MISSING


_MISSING = object()


def render_with_stats(parsed: Parsed, data: bytes) -> tuple[bytes, dict]:
    lean = _Lean()
    st = lean.stats
    st["bytes_in"] = len(data)
    if _is_jsonl(data):
        out = _jsonl(lean, data)
    elif (whole := _loads(data) if data.lstrip()[:1] in (b"{", b"[") else _MISSING) is not _MISSING:
        # one JSON document
        st["entries_in"] = st["entries_out"] = 1
        new = lean.value(whole, "")
        if new == whole and not _changed(st):
            out = data
        else:
            indent = _indent(data)
            spelling = _spelling(data)
            if indent is not None:
                spelling["separators"] = (",", ": ")
            out = _dump(new, spelling, indent) + (b"\n" if data.endswith(b"\n") else b"")
            st["lines_changed"] = 1
    else:
        text = data.decode("utf-8", "surrogateescape")
        new = lean.text(text)
        lines = data.count(b"\n")
        st["entries_in"] = st["entries_out"] = lines + (0 if data.endswith(b"\n") else 1)
        out = data if new == text else new.encode("utf-8", "surrogateescape")
        st["lines_changed"] = int(out is not data)
    st["bytes_out"] = len(out)
    return out, st


def _changed(st: dict) -> bool:
    return any(st[k] for k in ("ansi_stripped", "progress_collapsed", "images_elided",
                               "reads_cut", "reminders_deduped", "tool_results_deduped"))


def _is_jsonl(data: bytes) -> bool:
    """A first line that is a whole JSON object, and more lines after it."""
    first, _, rest = data.lstrip().partition(b"\n")
    return first.strip()[:1] == b"{" and bool(rest.strip()) and _loads(first) is not _MISSING


def _indent(data: bytes):
    lines = data.split(b"\n", 2)
    if len(lines) < 2:
        return None
    second = lines[1]
    n = len(second) - len(second.lstrip(b" "))
    if n:
        return n
    if second.startswith(b"\t"):
        return "\t"
    return None


def _jsonl(lean: _Lean, data: bytes) -> bytes:
    st = lean.stats
    out = []
    for no, raw in enumerate(data.splitlines(keepends=True), 1):
        body = raw.rstrip(b"\r\n")
        end = raw[len(body):]
        st["entries_in"] += 1
        st["entries_out"] += 1
        if not body.strip():
            out.append(raw)
            continue
        d = _loads(body)
        if d is _MISSING:
            out.append(raw)
            continue
        lean.loc = f"line {no}"
        lean._line_reads = lean.line_reads(d)
        before = {k: st[k] for k in STAT_KEYS}
        try:
            new = lean.value(d, "")
            same = new == d and not any(st[k] != before[k] for k in STAT_KEYS)
            line = raw if same else _dump(new, _spelling(body)) + end
        except RecursionError:       # too deep to compare or write: kept as it was
            st.update(before)
            same, line = True, raw
        out.append(line)
        st["lines_changed"] += not same
    return b"".join(out)


def render(parsed: Parsed, data: bytes) -> bytes:
    return render_with_stats(parsed, data)[0]


def _view():
    from . import View
    return View("lean", "lean", "", VERSION, render, lambda p: p.is_conversation, render_with_stats)


VIEW = _view()
