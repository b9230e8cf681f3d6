"""`stowfs export`: chat-format training records out of the store.

Each stored file is read back with Store.get(), parsed (stowfs.formats) and turned into
one record per conversation (or, with --pairs, one per (user, assistant) pair):

    {"messages": [{"role", "content", "name", "tool_call_id", "tool_calls"}],
     "model", "app", "source" (stored path), "day", "format", "conversation" (its index
     in the file)}

Messages are in the OpenAI chat shape: an assistant's tool calls are
`tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]` and every
tool result is a `{"role": "tool", "tool_call_id", "content"}` message of its own,
whatever the source format. Text parts of a message are joined with "\\n"; thinking,
images and attachments are left out; system messages only with include_system; a
message that has nothing left (an app's event log line, pre-tokenized ids with no text,
an image alone) is dropped. Keys that are None are left out of JSONL lines; Parquet and
the Hugging Face dataset have the same fields with nulls.

Pairs: a user message with text and the first assistant message with text after it
(before the next user text). dedup_pairs drops a pair already exported, across the whole
store (64-bit hashes of the pair kept in memory: ~60 bytes per unique pair). Without
--pairs, a conversation is dropped when it has pairs and every one of them was seen.

Writers stream: JSONL a line at a time, Parquet a row group of ROW_GROUP records at a
time, the HF dataset through `datasets.Dataset.from_generator` (Arrow files written as it
goes) and `save_to_disk`. Memory stays bounded by one file's parse and one row group.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Optional

from ..conversation import ASSISTANT, SYSTEM, TEXT, TOOL, TOOL_CALL, TOOL_RESULT, USER
from ..errors import NotFound, StowError

ROW_GROUP = 1000
FORMATS = ("jsonl", "hf", "parquet")
INSTALL_HINT = "pip install 'stowfs[export]'  (or: pip install pyarrow datasets)"


def need(module: str):
    """Import an optional dependency of the export extra, or say how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StowError(f"this export format needs the Python package {module.split('.')[0]!r}: "
                        f"{INSTALL_HINT}") from None


# ====================================================================== records
def _text(parts, kind=TEXT) -> str:
    return "\n".join(p.text for p in parts if p.kind == kind and p.text)


def chat_messages(conv, include_system: bool = False) -> list[dict]:
    """A parsed conversation as OpenAI-shaped chat messages."""
    out = []
    for m in conv.messages:
        if m.event:
            continue
        role = m.role
        if role == SYSTEM and not include_system:
            continue
        if role in ("developer",) and not include_system:
            continue
        results = [p for p in m.parts if p.kind == TOOL_RESULT]
        calls = [p for p in m.parts if p.kind == TOOL_CALL]
        text = _text(m.parts)
        for p in results:
            out.append({"role": TOOL, "content": p.text or "", "name": p.name or m.name,
                        "tool_call_id": p.call_id, "tool_calls": None})
        if role == TOOL and results:
            continue        # a tool message: its results are above
        if not text and not calls:
            continue
        msg = {"role": role, "content": text, "name": m.name, "tool_call_id": None, "tool_calls": None}
        if calls:
            msg["tool_calls"] = [{"id": c.call_id or "", "type": "function",
                                  "function": {"name": c.name or "", "arguments": c.text or "{}"}}
                                 for c in calls]
        out.append(msg)
    return out


def pairs_of(messages: list[dict]) -> list[tuple[str, str]]:
    """(user text, assistant text) pairs: each user text and the first assistant text after
    it, before the next user text."""
    out, pending = [], None
    for m in messages:
        if m["role"] == USER and m["content"]:
            pending = m["content"]
        elif m["role"] == ASSISTANT and m["content"] and pending is not None:
            out.append((pending, m["content"]))
            pending = None
    return out


def _pair_key(u: str, a: str) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(u.encode("utf-8", "surrogatepass"))
    h.update(b"\0\1\0")
    h.update(a.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


def _clean(msg: dict) -> dict:
    return {k: v for k, v in msg.items() if v is not None}


@dataclass
class Summary:
    files: int = 0
    records: int = 0
    conversations: int = 0
    messages: int = 0
    pairs: int = 0
    unique_pairs: int = 0
    pairs_dropped: int = 0
    content_bytes: int = 0
    unique_pair_bytes: int = 0
    skipped_files: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        # no tokenizer in the core: tokens are estimated as UTF-8 bytes / 4
        d["tokens_estimated"] = self.content_bytes // 4
        d["unique_pair_tokens_estimated"] = self.unique_pair_bytes // 4
        d.update(self.extra)
        return d


def records(store, *, models=None, apps=None, since=None, until=None, include_system=False,
            dedup_pairs=False, pairs=False, max_records: Optional[int] = None,
            summary: Optional[Summary] = None) -> Iterator[dict]:
    """The export's records, one at a time, in stored-name order."""
    from ..formats import parse
    from .query import make_filter
    s = summary if summary is not None else Summary()
    passes = make_filter(models=models, apps=apps, since=since, until=until)
    seen: set[int] = set()
    for info in store.iter_files():
        if max_records is not None and s.records >= max_records:
            return
        if info.error or not info.conversations or not passes(info):
            continue
        try:
            data = store.get(info.name)
        except NotFound:
            continue        # removed meanwhile
        parsed = parse(data, info.name)
        del data
        if not parsed.is_conversation:
            s.skipped_files += 1
            continue
        s.files += 1
        for ci, conv in enumerate(parsed.conversations):
            if max_records is not None and s.records >= max_records:
                return
            msgs = chat_messages(conv, include_system)
            if not msgs:
                continue
            base = {"model": conv.model or info.model, "app": conv.application or info.application,
                    "source": info.name, "day": info.day, "format": parsed.format, "conversation": ci}
            prs = pairs_of(msgs)
            fresh = []
            for u, a in prs:
                s.pairs += 1
                k = _pair_key(u, a)
                if k in seen:
                    s.pairs_dropped += 1
                    fresh.append(False)
                    continue
                seen.add(k)
                s.unique_pairs += 1
                s.unique_pair_bytes += len(u.encode("utf-8", "surrogatepass")) + len(a.encode("utf-8", "surrogatepass"))
                fresh.append(True)
            if pairs:
                for (u, a), new in zip(prs, fresh):
                    if dedup_pairs and not new:
                        continue
                    if max_records is not None and s.records >= max_records:
                        return
                    rec = dict(base, messages=[
                        {"role": USER, "content": u, "name": None, "tool_call_id": None, "tool_calls": None},
                        {"role": ASSISTANT, "content": a, "name": None, "tool_call_id": None, "tool_calls": None}])
                    _count(s, rec)
                    yield rec
                continue
            if dedup_pairs and prs and not any(fresh):
                continue
            rec = dict(base, messages=msgs)
            s.conversations += 1
            _count(s, rec)
            yield rec


def _count(s: Summary, rec: dict) -> None:
    s.records += 1
    s.messages += len(rec["messages"])
    for m in rec["messages"]:
        s.content_bytes += len((m["content"] or "").encode("utf-8", "surrogatepass"))
        for c in m.get("tool_calls") or ():
            s.content_bytes += len(c["function"]["arguments"].encode("utf-8", "surrogatepass"))


# ====================================================================== writers
def _arrow_schema(pa):
    call = pa.struct([("id", pa.string()), ("type", pa.string()),
                      ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
    msg = pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string()),
                     ("tool_call_id", pa.string()), ("tool_calls", pa.list_(call))])
    return pa.schema([("messages", pa.list_(msg)), ("model", pa.string()), ("app", pa.string()),
                      ("source", pa.string()), ("day", pa.string()), ("format", pa.string()),
                      ("conversation", pa.int32())])


def _hf_features(datasets):
    from datasets import Features, Sequence, Value  # noqa: F401
    call = {"id": Value("string"), "type": Value("string"),
            "function": {"name": Value("string"), "arguments": Value("string")}}
    msg = {"role": Value("string"), "content": Value("string"), "name": Value("string"),
           "tool_call_id": Value("string"), "tool_calls": [call]}
    return datasets.Features({"messages": [msg], "model": Value("string"), "app": Value("string"),
                              "source": Value("string"), "day": Value("string"),
                              "format": Value("string"), "conversation": Value("int32")})


def _surrogate_safe(rec: dict) -> dict:
    """Arrow strings must be valid UTF-8: a lone surrogate (JSON "\\ud800") becomes U+FFFD."""
    def fix(v):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
                return v
            except UnicodeEncodeError:
                return v.encode("utf-8", "replace").decode("utf-8")
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return fix(rec)


def write_jsonl(recs, out) -> None:
    close = False
    if out == "-":
        f = sys.stdout
    else:
        f = open(out, "w", encoding="utf-8", errors="surrogatepass")
        close = True
    try:
        for r in recs:
            r = dict(r, messages=[_clean(m) for m in r["messages"]])
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if close:
            f.close()


def write_parquet(recs, out: str) -> None:
    pa = need("pyarrow")
    pq = need("pyarrow.parquet")
    schema = _arrow_schema(pa)
    tmp = out + ".part"
    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
    try:
        batch = []
        for r in recs:
            batch.append(_surrogate_safe(r))
            if len(batch) >= ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    except BaseException:
        writer.close()
        os.unlink(tmp)
        raise
    writer.close()
    os.replace(tmp, out)


_PENDING: dict = {}     # token -> record iterator (datasets pickles the generator function)


def _hf_gen(token):
    for r in _PENDING[token]:
        yield _surrogate_safe(r)


def write_hf(recs, out: str) -> None:
    datasets = need("datasets")
    need("pyarrow")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise StowError(f"{out} exists and is not an empty directory")
    features = _hf_features(datasets)
    work = tempfile.mkdtemp(prefix=".stowfs-export-", dir=os.path.dirname(os.path.abspath(out)) or ".")
    token = os.urandom(8).hex()
    _PENDING[token] = recs
    try:
        import datasets as ds
        ds.disable_progress_bars()
        # the token makes the generator's fingerprint unique: never a cached earlier export
        d = datasets.Dataset.from_generator(_hf_gen, features=features, cache_dir=work,
                                            gen_kwargs={"token": token})
        d.save_to_disk(out)
    finally:
        _PENDING.pop(token, None)
        shutil.rmtree(work, ignore_errors=True)


def export(store, out: str, fmt: str = "jsonl", **kw) -> dict:
    """Write the records to out in fmt; returns the summary."""
    import time
    if fmt not in FORMATS:
        raise StowError(f"unknown export format {fmt!r} (formats: {', '.join(FORMATS)})")
    if fmt == "parquet":                    # fail before reading the store
        need("pyarrow")
        need("pyarrow.parquet")
    if fmt == "hf":
        need("datasets")
        need("pyarrow")
    s = Summary()
    t0 = time.monotonic()
    recs = records(store, summary=s, **kw)
    {"jsonl": write_jsonl, "parquet": write_parquet, "hf": write_hf}[fmt](recs, out)
    s.seconds = round(time.monotonic() - t0, 3)
    s.extra = {"format": fmt, "out": out}
    return s.as_dict()


def read_back(path: str, fmt: str) -> list[dict]:
    """The records of an export, as plain dicts with None fields dropped (for checks)."""
    if fmt == "jsonl":
        with open(path, encoding="utf-8", errors="surrogatepass") as f:
            rows = [json.loads(line) for line in f]
    elif fmt == "parquet":
        pq = need("pyarrow.parquet")
        rows = pq.read_table(path).to_pylist()
    else:
        datasets = need("datasets")
        rows = list(datasets.load_from_disk(path))
    return [_normal(r) for r in rows]


def _normal(v):
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items() if x is not None and not (k == "tool_calls" and not x)}
    if isinstance(v, list):
        return [_normal(x) for x in v]
    return v
