"""`budget/N/PATH.txt`: the text transcript (stowfs.views.text) trimmed to at most N
tokens, exact, in the file's encoding (stowfs.tokens), for any N. In the spirit of
TokenPak's Budgeter: the budget is split into buckets with floors, filled in order of
what a reader of a past session needs most.

    state    the system prompt and the first user request (the task): up to 30% of
             the budget; a longer block keeps its head and tail around
             "[... K tokens cut ...]"
    recent   the last turn: the last user request and the final message, then the
             rest of the budget left by state, up to 30% + what state did not use
    evidence the other messages, newest first, each whole or not at all
    tools    each run of dropped messages becomes one line saying what was dropped,
             with the tool marks of the run (tool names and counts, and the
             agent-written descriptions while they fit):
             "[... 37 messages dropped (12 user, 25 assistant); tools: Bash x5: Run tests;
             Build, Read x7 ...]"; 10% of the budget (at most 400 tokens) is kept for them
The first line says what was kept: "[budget 8000 tokens, o200k_base: 41 of 310
messages, 3 trimmed, 266 dropped]". The result is counted again whole; if the joins
made it longer than N, it is rebuilt with a smaller budget until it fits, so the output
never exceeds N tokens (a budget below the size of that first line gets a cut first line).
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

from .. import tokens
from ..conversation import ASSISTANT, SYSTEM, TEXT, TOOL_CALL, USER, Parsed
from . import text as textview
from .compact import description

STATE_SHARE, RECENT_SHARE, TOOLS_SHARE, TOOLS_MAX = 0.30, 0.30, 0.10, 400
MIN_BUDGET, MAX_BUDGET = 1, 10 ** 9


class _Msg:
    __slots__ = ("role", "block", "tokens", "text_chars", "tools", "kept")

    def __init__(self, role, block, n, tools):
        self.role, self.block, self.tokens, self.tools = role, block, n, tools
        self.kept: Optional[str] = None      # None: dropped; else the text kept


def _messages(parsed: Parsed, enc: str) -> list[_Msg]:
    out = []
    total = len(parsed.conversations)
    for index, conv in enumerate(parsed.conversations, 1):
        call_names: dict = {}
        for j, msg in enumerate(conv.messages):
            block = textview._header(msg, conv.model) + \
                "".join(f for f, _ in textview._parts(msg.parts, call_names)) + "\n"
            if total > 1 and j == 0:
                block = textview._separator(conv, index, total) + block
            tools = [(p.name or "?", description(p.text)) for p in msg.parts if p.kind == TOOL_CALL]
            role = msg.role if not msg.event else "event"
            m = _Msg(role, block, tokens.count(block.encode("utf-8", "surrogatepass"), enc), tools)
            m.text_chars = any(p.kind == TEXT and p.text for p in msg.parts)
            out.append(m)
    return out


def _trim(block: str, k: int, enc: str) -> str:
    """block cut to at most ~k tokens: its head and tail around a marker."""
    ids = tokens.encode(block, enc)
    if len(ids) <= k:
        return block
    if k <= 12:
        return tokens.decode(ids[:max(k, 0)], enc) if k > 0 else ""
    marker_cost = 12
    room = k - marker_cost
    head = room * 2 // 3
    tail = room - head
    cut = len(ids) - head - tail
    return (tokens.decode(ids[:head], enc) + f"\n[... {cut} tokens cut ...]\n"
            + (tokens.decode(ids[-tail:], enc) if tail > 0 else "") + "\n\n")


def _fill(msgs: list[_Msg], idxs: list[int], cap: int, enc: str) -> int:
    """Keep msgs[idxs] within cap tokens: whole when they fit, else water-filled shares,
    the larger ones trimmed. Returns the tokens used."""
    if not idxs:
        return 0
    need = sum(msgs[i].tokens for i in idxs)
    if need <= cap:
        for i in idxs:
            msgs[i].kept = msgs[i].block
        return need
    share, left, todo = cap, list(idxs), []
    small = True
    while small and left:
        per = share // len(left)
        small = [i for i in left if msgs[i].tokens <= per]
        for i in small:
            msgs[i].kept = msgs[i].block
            share -= msgs[i].tokens
        left = [i for i in left if i not in small]
    per = share // len(left) if left else 0
    for i in left:
        msgs[i].kept = _trim(msgs[i].block, per, enc)
    return cap


def _gap_line(run: list[_Msg], detail: int) -> str:
    roles = Counter(m.role for m in run)
    who = ", ".join(f"{n} {r}" for r, n in roles.most_common())
    line = f"[... {len(run)} message{'s' if len(run) > 1 else ''} dropped ({who})"
    if detail > 0:
        names: Counter = Counter()
        descs: dict[str, list] = {}
        for m in run:
            for name, desc in m.tools:
                names[name] += 1
                if desc and detail > 1 and desc not in descs.setdefault(name, []) and len(descs[name]) < 3:
                    descs[name].append(desc)
        if names:
            bits = []
            for name, n in names.most_common(8):
                bit = f"{name} x{n}"
                if descs.get(name):
                    bit += ": " + "; ".join(d.replace("\n", " ")[:80] for d in descs[name])
                bits.append(bit)
            line += "; tools: " + ", ".join(bits)
    return line + " ...]\n\n"


def _assemble(msgs: list[_Msg], n: int, enc: str, detail: int) -> str:
    kept = sum(1 for m in msgs if m.kept is not None and m.kept is m.block)
    trimmed = sum(1 for m in msgs if m.kept is not None and m.kept is not m.block)
    dropped = sum(1 for m in msgs if m.kept is None)
    out = [f"[budget {n} tokens, {enc}: {kept} of {len(msgs)} messages"
           + (f", {trimmed} trimmed" if trimmed else "") + (f", {dropped} dropped" if dropped else "")
           + "]\n\n"]
    run: list[_Msg] = []
    for m in msgs:
        if m.kept is None:
            run.append(m)
            continue
        if run:
            out.append(_gap_line(run, detail))
            run = []
        out.append(m.kept)
    if run:
        out.append(_gap_line(run, detail))
    return "".join(out)


def _plan(msgs: list[_Msg], avail: int, enc: str) -> None:
    for m in msgs:
        m.kept = None
    n = len(msgs)
    requests = [i for i, m in enumerate(msgs) if m.role == USER and m.text_chars]
    system = next((i for i, m in enumerate(msgs) if m.role in (SYSTEM, "developer")), None)
    first_req = requests[0] if requests else None
    last_req = requests[-1] if requests else None
    last = n - 1
    state = sorted({i for i in (system, first_req) if i is not None})
    recent = sorted({i for i in (last_req, last) if i is not None and i not in state})
    tools_cap = min(int(avail * TOOLS_SHARE), TOOLS_MAX)
    used = _fill(msgs, state, int(avail * STATE_SHARE), enc)
    recent_cap = int(avail * RECENT_SHARE) + max(int(avail * STATE_SHARE) - used, 0)
    recent_cap = min(recent_cap, avail - used - tools_cap)
    used += _fill(msgs, recent, max(recent_cap, 0), enc)
    left = avail - used - tools_cap
    # evidence: the last turn's other messages and then older ones, newest first
    start = last_req if last_req is not None else 0
    order = list(range(last - 1, start, -1)) + list(range(start - 1, -1, -1))
    for i in order:
        m = msgs[i]
        if m.kept is None and m.tokens <= left:
            m.kept = m.block
            left -= m.tokens


def render_text(parsed: Parsed, n: int, enc: Optional[str] = None) -> str:
    if not MIN_BUDGET <= n <= MAX_BUDGET:
        raise ValueError(f"budget must be between {MIN_BUDGET} and {MAX_BUDGET} tokens")
    enc = enc or tokens.file_encoding(parsed)
    if not parsed.is_conversation:
        return ""
    msgs = _messages(parsed, enc)
    head_cost = tokens.count(f"[budget {n} tokens, {enc}: {len(msgs)} of {len(msgs)} messages, "
                             f"{len(msgs)} trimmed, {len(msgs)} dropped]\n\n", enc)
    avail = n - head_cost
    for attempt in range(12):
        _plan(msgs, max(avail, 0), enc)
        for detail in (2, 1, 0):
            out = _assemble(msgs, n, enc, detail)
            got = tokens.count(out, enc)
            if got <= n:
                return out
        avail -= (got - n) + 8 * (attempt + 1)
        if avail <= 0:
            break
    # nothing but the first line fits: that line, cut to n tokens
    for m in msgs:
        m.kept = None
    out = _assemble(msgs, n, enc, 0).split("\n", 1)[0] + "\n"
    ids = tokens.encode(out, enc)[:n]
    while ids:
        s = tokens.decode(ids, enc)
        if tokens.count(s, enc) <= n:
            return s
        ids = ids[:-1]
    return ""


def render(parsed: Parsed, n: int, enc: Optional[str] = None) -> bytes:
    return render_text(parsed, n, enc).encode("utf-8", "surrogatepass")


def parse_budget(value: str) -> int:
    """N of "budget:N" or of a budget/N/ directory name (digits only)."""
    if not value.isdigit() or value != str(int(value)):
        raise ValueError(f"not a token budget: {value!r}")
    n = int(value)
    if not MIN_BUDGET <= n <= MAX_BUDGET:
        raise ValueError(f"budget must be between {MIN_BUDGET} and {MAX_BUDGET} tokens")
    return n
