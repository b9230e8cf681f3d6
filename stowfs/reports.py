"""Reports over a store: what the repeats are, the system prompts in use, and the
near-duplicates. Message identity is derived, not stored: each report parses the stored
files (one pass, shared by all three when the mount renders them together) and
identifies each piece of message content of MIN_CONTENT bytes or more by the BLAKE2b-128
of its UTF-8 (`content_id`). Rendered as text (for people) or JSON (for scripts); the CLI
(`stowfs dups`, `prompts`, `near-dups`) and the mount (`reports/`) print the same bytes.
"""
from __future__ import annotations

import hashlib
import heapq
import json

from . import neardup
from .conversation import PARTIAL, SYSTEM, TEXT, THINKING, TOKENS, TOOL_CALL, TOOL_RESULT

PREVIEW = 72
MIN_CONTENT = 48            # shorter content is not listed
NEAR_MIN = 2 << 10          # near-dups compares content of this size and more


def content_id(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def preview(data, kind: str = "text") -> str:
    """One printable line: the start of some content (token ids as a count)."""
    if kind == "tokens":
        return f"[{data} token ids]" if isinstance(data, int) else "[token ids]"
    if isinstance(data, bytes):
        data = data[:4 * PREVIEW].decode("utf-8", "replace")
    text = data[:4 * PREVIEW]
    text = "".join(ch if ch.isprintable() else " " for ch in text)   # no terminal escapes
    text = " ".join(text.split())
    return text[:PREVIEW - 1] + "…" if len(text) > PREVIEW else text


def _kind(role: str, part) -> str:
    if part.kind in (TOOL_RESULT,):
        return "tool"
    if part.kind == TOOL_CALL:
        return "tool-call"
    if part.kind == THINKING:
        return "thinking"
    if part.kind == TOKENS:
        return "tokens"
    return role if role in ("system", "user", "assistant", "tool") else "other"


def scan(store) -> dict:
    """content id -> [kind, bytes, files using it, text]: every piece of message content of
    MIN_CONTENT bytes or more in every stored file (events are not system prompts)."""
    from .formats import parse
    rows: dict = {}
    for info in store.iter_files():
        if info.error and not info.error.startswith(PARTIAL):
            continue
        parsed = parse(store.get(info.name), info.name)
        seen = set()
        for conv in parsed.conversations:
            for m in conv.messages:
                for part in m.parts:
                    if part.kind == TOKENS and part.tokens is not None:
                        text = ",".join(map(str, part.tokens))
                    elif part.kind in (TEXT, THINKING, TOOL_RESULT, TOOL_CALL) and part.text:
                        text = part.text
                    else:
                        continue
                    raw = len(text.encode("utf-8", "surrogatepass"))
                    if raw < MIN_CONTENT:
                        continue
                    kind = _kind(m.role, part)
                    if kind == "system" and m.event:
                        kind = "other"
                    cid = content_id(text)
                    row = rows.get(cid)
                    if row is None:
                        rows[cid] = row = [kind, raw, 0, text]
                    if cid not in seen:
                        row[2] += 1
                        seen.add(cid)
    return rows


def dups(store, top: int = 20, rows: dict | None = None) -> dict:
    """The content found in the most files: each with the bytes that keeping it once
    saves ((files - 1) * length)."""
    rows = scan(store) if rows is None else rows
    best = heapq.nlargest(top, ((max(n - 1, 0) * length, cid) for cid, (kind, length, n, _t) in rows.items()
                                if n > 1))
    items = []
    for saved, cid in best:
        kind, length, n, text = rows[cid]
        items.append({"content": cid, "kind": kind, "bytes": length, "files": n,
                      "saved_bytes": saved, "preview": preview(text, kind)})
    total = sum(max(n - 1, 0) * ln for _k, ln, n, _t in rows.values())
    return {"contents": len(rows), "shared_contents": sum(1 for r in rows.values() if r[2] > 1),
            "saved_bytes": total, "top": items}


def prompts(store, threshold: float = 0.8, rows: dict | None = None) -> dict:
    """Every distinct system prompt (MIN_CONTENT bytes or more), how many files use it,
    and which other prompts are near-variants of it."""
    rows = scan(store) if rows is None else rows
    found = [(cid, length, n) for cid, (kind, length, n, _t) in rows.items() if kind == "system" and n > 0]
    found.sort(key=lambda r: (-r[2], -r[1], r[0]))
    lsh = neardup.LSH(threshold)
    sigs = {}
    for cid, length, _n in found:
        if length >= MIN_CONTENT * 4:
            sigs[cid] = neardup.signature(rows[cid][3].encode("utf-8", "surrogatepass"))
            lsh.add(cid, sigs[cid])
    items = []
    for cid, length, n in found:
        variants = []
        if cid in sigs:
            variants = sorted(((s, k) for k, s in lsh.candidates(sigs[cid]).items() if k != cid), reverse=True)
        items.append({"content": cid, "bytes": length, "files": n, "preview": preview(rows[cid][3]),
                      "variants": [{"content": k, "similarity": round(s, 3)} for s, k in variants]})
    return {"prompts": len(items), "min_bytes": MIN_CONTENT,
            "note": f"system prompts shorter than {MIN_CONTENT} bytes are not listed", "items": items}


def near_dups(store, threshold: float = 0.8, top: int = 20,
              min_bytes: int = NEAR_MIN, rows: dict | None = None) -> dict:
    """Clusters of near-duplicate content (estimated Jaccard >= threshold): a canonical
    one (the most used, then the longest) and its variants, largest clusters first."""
    rows = scan(store) if rows is None else rows
    cands = sorted(((cid, kind, length, n) for cid, (kind, length, n, _t) in rows.items()
                    if length >= min_bytes and n > 0),
                   key=lambda r: (-r[3], -r[2], r[0]))
    lsh = neardup.LSH(threshold)
    sigs = {}
    for cid, _kind, _length, _n in cands:
        sigs[cid] = neardup.signature(rows[cid][3].encode("utf-8", "surrogatepass"))
        lsh.add(cid, sigs[cid])
    taken: set = set()
    clusters = []
    for cid, kind, length, n in cands:
        if cid in taken:
            continue
        members = {k: s for k, s in lsh.candidates(sigs[cid]).items() if k != cid and k not in taken}
        if not members:
            continue
        taken.add(cid)
        taken.update(members)
        variants = sorted(members.items(), key=lambda kv: (-kv[1], kv[0]))
        clusters.append({"canonical": cid, "kind": kind, "bytes": length, "files": n,
                         "preview": preview(rows[cid][3], kind),
                         "variants": [{"content": k, "bytes": rows[k][1], "similarity": round(s, 3)}
                                      for k, s in variants],
                         "cluster_bytes": length + sum(rows[k][1] for k in members)})
    clusters.sort(key=lambda c: (-c["cluster_bytes"], c["canonical"]))
    return {"threshold": threshold, "compared_contents": len(cands), "clusters": len(clusters),
            "top": clusters[:top]}


# ------------------------------------------------------------------ rendering
def _n(x: int) -> str:
    return f"{x:,}"


def dups_text(r: dict) -> str:
    out = [f"{_n(r['shared_contents'])} of {_n(r['contents'])} pieces of message content are found in "
           f"several files; keeping each once saves {_n(r['saved_bytes'])} bytes", "",
           f"{'saved':>12} {'files':>6} {'bytes':>9}  kind       preview"]
    for i in r["top"]:
        out.append(f"{_n(i['saved_bytes']):>12} {i['files']:>6} {_n(i['bytes']):>9}  {i['kind']:<10} {i['preview']}")
    return "\n".join(out) + "\n"


def prompts_text(r: dict) -> str:
    out = [f"{r['prompts']} distinct system prompts ({r['note']})", "",
           f"{'files':>6} {'bytes':>9}  {'content':<12} preview"]
    for i in r["items"]:
        out.append(f"{i['files']:>6} {_n(i['bytes']):>9}  {i['content'][:12]} {i['preview']}")
        for v in i["variants"]:
            out.append(f"{'':>17}~ {v['content'][:12]} similarity {v['similarity']:.2f}")
    return "\n".join(out) + "\n"


def near_dups_text(r: dict) -> str:
    out = [f"{r['clusters']} clusters of near-duplicate content among {_n(r['compared_contents'])} "
           f"pieces of {_n(NEAR_MIN)}+ bytes (similarity >= {r['threshold']})", ""]
    for c in r["top"]:
        out.append(f"{c['canonical'][:12]} {c['kind']:<10} {_n(c['bytes']):>9} bytes, {c['files']} file{'' if c['files'] == 1 else 's'}: {c['preview']}")
        for v in c["variants"]:
            out.append(f"  ~ {v['content'][:12]} {_n(v['bytes']):>9} bytes, similarity {v['similarity']:.2f}")
    return "\n".join(out) + "\n"


def as_json(r: dict) -> str:
    return json.dumps(r, indent=2, ensure_ascii=False) + "\n"


REPORTS = {"dups": (dups, dups_text), "prompts": (prompts, prompts_text),
           "near-dups": (near_dups, near_dups_text)}


def render_all_json(store) -> bytes:
    rows = scan(store)             # one pass over the stored files for all three
    return as_json({name: fn(store, rows=rows) for name, (fn, _text) in REPORTS.items()}).encode()


def render_text(store, name: str) -> bytes:
    fn, text = REPORTS[name]
    return text(fn(store)).encode("utf-8", "replace")
