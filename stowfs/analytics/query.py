"""`stowfs query`: conversations, messages, tokens and bytes per group of files.

Answered from the files' records alone (Store.iter_files: FileInfo and its facts), never
a decode, so it costs one pass over the records. Per group:

    files, conversations, messages   counted at ingest
    tokens                           the text view's tokens from FileInfo.facts["tokens"]
                                     when the token counter has recorded them (exact); the
                                     text view's bytes otherwise
                                     ("tokens_exact" says which, per group)
    original_bytes                   the files' sizes
    stored_bytes                     the store's bytes on disk shared out in proportion to
                                     the new content each file brought when it was stored
                                     (PutResult.new_bytes, kept in each record as
                                     facts["stored"]; older stores kept it in `aux:added`);
                                     a file with no such record (stored before either)
                                     weighs its size times the store's average share of
                                     new bytes
                                     ("attribution": recorded, mixed or pro-rata)
    dedup_savings                    original_bytes - stored_bytes

Groups: model, app (application), kind, day, format. kind is what sort of log a file
is, from its detected format: "session" (coding-agent sessions: Claude Code, Codex,
Gemini CLI, aider), "api-log" (recorded API requests/responses and streams), "chat"
(chat exports and training sets: ShareGPT, OpenAI/Anthropic message files, Stowken),
"opaque" (not parsed as a conversation).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ..errors import StowError

GROUP_KEYS = ("model", "app", "kind", "day", "format")
NONE = "-"

_SESSION = ("claude-code", "codex", "gemini", "aider")
_API = ("api", "exchange", "sse", "stream", "request", "response", "completion", "anthropic-messages")


def kind_of(info) -> str:
    if info.error:
        return "opaque"
    f = (info.format or "").lower()
    if any(s in f for s in _SESSION):
        return "session"
    if any(s in f for s in _API):
        return "api-log"
    return "chat"


def tokens_of(info) -> tuple[int, bool]:
    """(tokens, exact): the recorded token count of the file's text view (the token
    counter's fact), else the bytes of its text view: either way the transcript."""
    t = (info.facts or {}).get("tokens")
    n = _token_number(t)
    if n is not None:
        return n, True
    return (info.text_size if not info.error else 0), False


def _token_number(t) -> Optional[int]:
    if isinstance(t, dict) and isinstance(t.get("views"), dict):
        # the token counter's fact: {"v", "enc", "views": {"original": n, "text": n, ...}}
        n = t["views"].get("text")
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    if isinstance(t, bool):
        return None
    if isinstance(t, int):
        return t
    if isinstance(t, dict):
        for key in ("original", "total", "tokens", "count", "o", "n"):
            if key in t:
                n = _token_number(t[key])
                if n is not None:
                    return n
    if isinstance(t, (list, tuple)) and t and all(isinstance(x, int) for x in t[:2]):
        return t[-1] if len(t) == 2 else None     # [encoding-version, n]
    return None


def value_of(info, key: str) -> str:
    if key == "model":
        return info.model or NONE
    if key == "app":
        return info.application or NONE
    if key == "kind":
        return kind_of(info)
    if key == "day":
        return info.day or NONE
    if key == "format":
        return info.format or NONE
    raise StowError(f"unknown group {key!r} (groups: {', '.join(GROUP_KEYS)})")


@dataclass
class Row:
    group: tuple
    files: int = 0
    conversations: int = 0
    messages: int = 0
    tokens: int = 0
    tokens_exact_files: int = 0
    original_bytes: int = 0
    stored_bytes: float = 0.0
    recorded_stored: int = 0
    _ids: list = field(default_factory=list, repr=False)

    def add(self, info) -> None:
        self.files += 1
        self.conversations += info.conversations
        self.messages += info.messages
        n, exact = tokens_of(info)
        self.tokens += n
        self.tokens_exact_files += exact
        self.original_bytes += info.size


def parse_groups(spec: Optional[str]) -> tuple[str, ...]:
    if not spec:
        return ()
    keys = tuple(k.strip() for k in spec.split(",") if k.strip())
    for k in keys:
        if k not in GROUP_KEYS:
            raise StowError(f"unknown group {k!r} (groups: {', '.join(GROUP_KEYS)})")
    return keys


def _check_day(d: Optional[str], what: str) -> Optional[str]:
    if d is None:
        return None
    import datetime
    try:
        datetime.date.fromisoformat(d)
    except ValueError:
        raise StowError(f"{what} wants a day as YYYY-MM-DD, not {d!r}") from None
    return d


def make_filter(*, models=None, apps=None, kinds=None, since=None, until=None, formats=None):
    """A predicate on FileInfo for the filters (a day filter drops files with no day)."""
    since, until = _check_day(since, "--since"), _check_day(until, "--until")

    def passes(i) -> bool:
        if models and not (i.model in models or any(m in models for m in (i.models or ()))):
            return False
        if apps and i.application not in apps:
            return False
        if kinds and kind_of(i) not in kinds:
            return False
        if formats and i.format not in formats:
            return False
        if (since or until) and not i.day:
            return False
        if since and i.day < since:
            return False
        if until and i.day > until:
            return False
        return True
    return passes


def select(infos: Iterable, **filters):
    passes = make_filter(**filters)
    return (i for i in infos if passes(i))


ADDED_DB = "added"


def _added(store) -> dict[int, int]:
    """What each file added, from the `aux:added` entries that stores written before the
    records kept facts["stored"] may still hold."""
    from ..packing import decode_uvarints

    def work(txn, db):
        return {int.from_bytes(k, "big"): decode_uvarints(v)[0] for k, v in txn.cursor(db=db)}
    if not hasattr(store, "aux_read"):      # the in-memory twin keeps no derived data
        return {}
    return store.aux_read(ADDED_DB, work) or {}


def query(store, group_by: tuple = (), **filters) -> dict:
    """{"groups": [...], "total": {...}, ...} for the files passing the filters."""
    for k in group_by:
        if k not in GROUP_KEYS:
            raise StowError(f"unknown group {k!r} (groups: {', '.join(GROUP_KEYS)})")
    rows: dict[tuple, Row] = {}
    total = Row(())
    added = _added(store)
    stored_of, size_of = {}, {}
    passes = make_filter(**filters)
    for i in store.iter_files():
        st = (i.facts or {}).get("stored")
        stored_of[i.file_id] = st if isinstance(st, int) else added.get(i.file_id)
        size_of[i.file_id] = i.size
        if not passes(i):
            continue
        key = tuple(value_of(i, k) for k in group_by)
        r = rows.get(key)
        if r is None:
            r = rows[key] = Row(key)
        r.add(i)
        r._ids.append(i.file_id)
        total.add(i)
        total._ids.append(i.file_id)
    disk = store.stats()["disk_bytes"]
    # Attribution: disk bytes shared in proportion to what each file added when stored;
    # a file with no record weighs its size times the recorded files' share of new bytes.
    rec = [f for f, v in stored_of.items() if v is not None]
    rec_size = sum(size_of[f] for f in rec)
    share = (sum(stored_of[f] for f in rec) / rec_size) if rec_size else 1.0
    weights = {f: (v if v is not None else size_of[f] * share) for f, v in stored_of.items()}
    basis = "pro-rata" if not rec else ("recorded" if len(rec) == len(stored_of) else "mixed")
    wsum = sum(weights.values())
    for r in list(rows.values()) + [total]:
        w = sum(weights[f] for f in r._ids)
        r.stored_bytes = disk * w / wsum if wsum else 0.0
    return {
        "group_by": list(group_by),
        "filters": {k: (sorted(v) if isinstance(v, (set, list, tuple)) else v)
                    for k, v in filters.items() if v},
        "attribution": basis,
        "disk_bytes": disk,
        "groups": [_row_dict(r, group_by) for _, r in sorted(rows.items())],
        "total": _row_dict(total, ()),
    }


def _row_dict(r: Row, group_by) -> dict:
    d = {k: v for k, v in zip(group_by, r.group)}
    stored = int(round(r.stored_bytes))
    d.update({
        "files": r.files, "conversations": r.conversations, "messages": r.messages,
        "tokens": r.tokens, "tokens_exact": r.files > 0 and r.tokens_exact_files == r.files,
        "original_bytes": r.original_bytes, "stored_bytes": stored,
        "dedup_savings": r.original_bytes - stored,
        "ratio": round(r.original_bytes / stored, 2) if stored else None,
    })
    return d


COLUMNS = ("files", "conversations", "messages", "tokens", "original_bytes", "stored_bytes",
           "dedup_savings", "ratio")


def as_json(result: dict) -> str:
    return json.dumps(result, indent=2) + "\n"


def as_csv(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    gb = result["group_by"]
    w.writerow(list(gb) + list(COLUMNS) + ["tokens_exact"])
    for g in result["groups"] + ([dict(result["total"], **{k: "TOTAL" for k in gb})] if gb else []):
        w.writerow([g[k] for k in gb] + [g[c] for c in COLUMNS] + [g["tokens_exact"]])
    if not gb:
        g = result["total"]
        w.writerow([g[c] for c in COLUMNS] + [g["tokens_exact"]])
    return buf.getvalue()


def as_text(result: dict) -> str:
    from ..cli import _human
    gb = result["group_by"]
    head = [k for k in gb] + ["files", "convs", "messages", "tokens", "original", "stored", "saved", "ratio"]
    rows = []
    for g in result["groups"] + [dict(result["total"], **{k: "" for k in gb}, _total=True)]:
        cells = [str(g[k]) for k in gb] + [
            str(g["files"]), str(g["conversations"]), str(g["messages"]),
            f"{g['tokens']}" + ("" if g["tokens_exact"] or not g["files"] else "*"),
            _human(g["original_bytes"]), _human(g["stored_bytes"]), _human(g["dedup_savings"]),
            f"{g['ratio']}x" if g["ratio"] else "-"]
        if g.get("_total") and gb:
            cells[0] = "TOTAL"
        rows.append(cells)
    if not gb:
        rows = rows[-1:]
    widths = [max(len(head[c]), *(len(r[c]) for r in rows)) for c in range(len(head))]
    ng = len(gb)
    fmt = lambda cells: "  ".join(c.ljust(widths[i]) if i < ng else c.rjust(widths[i])  # noqa: E731
                                  for i, c in enumerate(cells)).rstrip()
    lines = [fmt(head)] + [fmt(r) for r in rows]
    notes = []
    if any(not g["tokens_exact"] and g["files"] for g in result["groups"] + [result["total"]]):
        notes.append("* tokens not recorded for every file: text bytes counted instead")
    notes.append("stored: bytes on disk shared out " + {
        "recorded": "by the new content each file brought when stored",
        "mixed": "by the new content each file brought when stored (estimated for files stored "
                 "without a record)",
        "pro-rata": "pro rata of original bytes (no file has a record of what it added)"}[result["attribution"]])
    return "\n".join(lines + notes) + "\n"


def by_model_report(store) -> dict:
    """MOUNT/reports/by-model.json: the query grouped by model."""
    return query(store, ("model",))


def by_model_text(store) -> bytes:
    return as_text(by_model_report(store)).encode()


def by_model_json(store) -> bytes:
    return as_json(by_model_report(store)).encode()
