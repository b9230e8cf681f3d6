"""Reports over a store: what deduplication saves, the system prompts in use, and the
near-duplicates. Each report is computed from the segment index in short read
transactions (Store.iter_segments), reading segment bytes only for what it shows or
compares, and renders as text (for people) or JSON (for scripts); the CLI (`stowfs dups`,
`prompts`, `near-dups`) and the mount (`reports/`) print the same bytes.
"""
from __future__ import annotations

import heapq
import json

from . import limits, neardup
from .pieces import KIND_NAMES, SYSTEM, TOKENS

PREVIEW = 72


def preview(data: bytes, kind: int) -> str:
    """One printable line: the start of a segment's text (token ids as a count)."""
    if kind == TOKENS:
        from .packing import decode_uvarints
        try:
            return f"[{len(decode_uvarints(data))} token ids]"
        except ValueError:
            return "[token ids]"
    text = data[:4 * PREVIEW].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)   # no terminal escapes
    text = " ".join(text.split())
    return text[:PREVIEW - 1] + "…" if len(text) > PREVIEW else text


def _file_refs(store) -> dict:
    """hash -> [kind, length, files using it]: the refcount less the deltas based on it.
    Each report takes these as rows= so several reports share one scan."""
    rows, deltas = {}, {}
    for h, kind, length, refs, base in store.iter_segments():
        rows[h] = [kind, length, refs]
        if base is not None:
            deltas[base] = deltas.get(base, 0) + 1
    for base, n in deltas.items():
        if base in rows:
            rows[base][2] -= n
    return rows


def dups(store, top: int = 20, rows: dict | None = None) -> dict:
    """The segments stored once for the most references: each with the bytes that storing
    it once saves ((files - 1) * length)."""
    rows = _file_refs(store) if rows is None else rows
    best = heapq.nlargest(top, ((max(refs - 1, 0) * length, h) for h, (kind, length, refs) in rows.items()
                                if refs > 1))
    items = []
    for saved, h in best:
        kind, length, refs = rows[h]
        items.append({"segment": h.hex(), "kind": KIND_NAMES[kind], "bytes": length, "files": refs,
                      "saved_bytes": saved, "preview": preview(store.segment(h), kind)})
    total = sum(max(r - 1, 0) * ln for _k, ln, r in rows.values())
    return {"segments": len(rows), "shared_segments": sum(1 for r in rows.values() if r[2] > 1),
            "saved_bytes": total, "top": items}


def prompts(store, threshold: float = 0.8, rows: dict | None = None) -> dict:
    """Every distinct system prompt (system-role content of MIN_SEGMENT bytes or more,
    which the store keeps as a segment), how many files use it, and which other prompts
    are near-variants of it."""
    rows = _file_refs(store) if rows is None else rows
    found = [(h, length, refs) for h, (kind, length, refs) in rows.items() if kind == SYSTEM and refs > 0]
    found.sort(key=lambda r: (-r[2], -r[1], r[0]))
    lsh = neardup.LSH(threshold)
    sigs = {}
    for h, length, _refs in found:
        if length >= limits.MIN_SEGMENT * 4:
            sigs[h] = neardup.signature(store.segment(h))
            lsh.add(h, sigs[h])
    items = []
    for h, length, refs in found:
        variants = []
        if h in sigs:
            variants = sorted(((s, k) for k, s in lsh.candidates(sigs[h]).items() if k != h), reverse=True)
        items.append({"segment": h.hex(), "bytes": length, "files": refs,
                      "preview": preview(store.segment(h), SYSTEM),
                      "variants": [{"segment": k.hex(), "similarity": round(s, 3)} for s, k in variants]})
    return {"prompts": len(items), "min_bytes": limits.MIN_SEGMENT,
            "note": f"system prompts shorter than {limits.MIN_SEGMENT} bytes stay inline in their files "
                    "and are not listed", "items": items}


def near_dups(store, threshold: float = 0.8, top: int = 20,
              min_bytes: int = limits.DELTA_MIN, rows: dict | None = None) -> dict:
    """Clusters of near-duplicate segments (estimated Jaccard >= threshold): a canonical
    segment (the most used, then the longest) and its variants, largest clusters first.
    Only segments of min_bytes or more are compared; memory holds signatures, not bytes."""
    rows = _file_refs(store) if rows is None else rows
    cands = sorted(((h, kind, length, refs) for h, (kind, length, refs) in rows.items()
                    if length >= min_bytes and refs > 0),
                   key=lambda r: (-r[3], -r[2], r[0]))
    lsh = neardup.LSH(threshold)
    sigs = {}
    for h, _kind, _length, _refs in cands:
        sigs[h] = neardup.signature(store.segment(h))
        lsh.add(h, sigs[h])
    taken: set = set()
    clusters = []
    for h, kind, length, refs in cands:
        if h in taken:
            continue
        members = {k: s for k, s in lsh.candidates(sigs[h]).items() if k != h and k not in taken}
        if not members:
            continue
        taken.add(h)
        taken.update(members)
        variants = sorted(members.items(), key=lambda kv: (-kv[1], kv[0]))
        clusters.append({"canonical": h.hex(), "kind": KIND_NAMES[kind], "bytes": length, "files": refs,
                         "preview": preview(store.segment(h), kind),
                         "variants": [{"segment": k.hex(), "bytes": rows[k][1], "similarity": round(s, 3)}
                                      for k, s in variants],
                         "cluster_bytes": length + sum(rows[k][1] for k in members)})
    clusters.sort(key=lambda c: (-c["cluster_bytes"], c["canonical"]))
    return {"threshold": threshold, "compared_segments": len(cands), "clusters": len(clusters),
            "top": clusters[:top]}


# ------------------------------------------------------------------ rendering
def _n(x: int) -> str:
    return f"{x:,}"


def dups_text(r: dict) -> str:
    out = [f"{_n(r['shared_segments'])} of {_n(r['segments'])} segments are shared by several files; "
           f"storing each once saves {_n(r['saved_bytes'])} bytes", "",
           f"{'saved':>12} {'files':>6} {'bytes':>9}  kind       preview"]
    for i in r["top"]:
        out.append(f"{_n(i['saved_bytes']):>12} {i['files']:>6} {_n(i['bytes']):>9}  {i['kind']:<10} {i['preview']}")
    return "\n".join(out) + "\n"


def prompts_text(r: dict) -> str:
    out = [f"{r['prompts']} distinct system prompts ({r['note']})", "",
           f"{'files':>6} {'bytes':>9}  {'segment':<12} preview"]
    for i in r["items"]:
        out.append(f"{i['files']:>6} {_n(i['bytes']):>9}  {i['segment'][:12]} {i['preview']}")
        for v in i["variants"]:
            out.append(f"{'':>17}~ {v['segment'][:12]} similarity {v['similarity']:.2f}")
    return "\n".join(out) + "\n"


def near_dups_text(r: dict) -> str:
    out = [f"{r['clusters']} clusters of near-duplicate segments among {_n(r['compared_segments'])} "
           f"segments of {_n(limits.DELTA_MIN)}+ bytes (similarity >= {r['threshold']})", ""]
    for c in r["top"]:
        out.append(f"{c['canonical'][:12]} {c['kind']:<10} {_n(c['bytes']):>9} bytes, {c['files']} file{'' if c['files'] == 1 else 's'}: {c['preview']}")
        for v in c["variants"]:
            out.append(f"  ~ {v['segment'][:12]} {_n(v['bytes']):>9} bytes, similarity {v['similarity']:.2f}")
    return "\n".join(out) + "\n"


def as_json(r: dict) -> str:
    return json.dumps(r, indent=2, ensure_ascii=False) + "\n"


REPORTS = {"dups": (dups, dups_text), "prompts": (prompts, prompts_text),
           "near-dups": (near_dups, near_dups_text)}


def render_all_json(store) -> bytes:
    rows = _file_refs(store)       # one pass over the segment index for all three
    return as_json({name: fn(store, rows=rows) for name, (fn, _text) in REPORTS.items()}).encode()


def render_text(store, name: str) -> bytes:
    fn, text = REPORTS[name]
    return text(fn(store)).encode("utf-8", "replace")
