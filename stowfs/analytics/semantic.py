"""Semantic search, clusters and outliers over conversations, offline.

The model: WordLlama's `l2_supercat` static token embeddings (256 dimensions), whose
weights and tokenizer ship inside the `wordllama` wheel (`pip install 'stowfs[semantic]'`).
A text's vector is the mean of its tokens' vectors, normalised: no network, no GPU, no
download. (wordllama's own loader looks for the tokenizer in a folder the wheel does not
use and then tries to download it; we load the shipped files directly.)

What is embedded: each conversation of each stored file. Its vector is the normalised sum
of two normalised parts, the first user request and the rest of its text (both cut to
MAX_CHARS), so a conversation is found by what it was asked and by what it is about.

Storage: the store's `aux:embed` database, derived and rebuildable like the search index:

    b"m"                  {"v", "model", "dim", "gen": store generation last in step}
    b"f" + u64 file id    {"n": conversations, "q": int8 vectors (n x dim, row-major),
                           "s": float16 scale per vector}   (int8: x ~= q * s)

`embed(store)` embeds the files not embedded yet and drops the ids that are gone;
`stowfs embed` runs it, and search/cluster/outliers run it first.

Clusters (as Stowken defines them): k-means++ seeding and Lloyd iterations on the
normalised vectors with cosine similarity (spherical k-means), deterministic for a seed.
Outlier score = 1 - cosine to the nearest centroid.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..conversation import USER
from ..errors import NotFound, StowError
from ..packing import pack, unpack

DB = "embed"
VERSION = 1
MAX_CHARS = 4000
MODEL_NAME = "wordllama-l2_supercat-256"
INSTALL_HINT = "pip install 'stowfs[semantic]'  (or: pip install wordllama)"
_U64 = struct.Struct(">Q")


# ====================================================================== the model
class Model:
    """WordLlama's shipped static embeddings: mean of token vectors, normalised."""

    def __init__(self):
        try:
            import wordllama
            from safetensors import safe_open
            from tokenizers import Tokenizer
        except ImportError:
            raise StowError(f"semantic search needs the Python package 'wordllama': {INSTALL_HINT}") from None
        from pathlib import Path
        root = Path(wordllama.__file__).parent
        weights = root / "weights" / "l2_supercat_256.safetensors"
        tok = next((p for p in (root / "tokenizers" / "l2_supercat_tokenizer_config.json",
                                root / "tokenizer" / "l2_supercat_tokenizer_config.json") if p.exists()), None)
        if not weights.exists() or tok is None:
            raise StowError(f"the installed wordllama has no shipped l2_supercat weights/tokenizer "
                            f"under {root}: {INSTALL_HINT}")
        with safe_open(str(weights), framework="np", device="cpu") as f:
            self.table = np.ascontiguousarray(f.get_tensor("embedding.weight").astype(np.float32))
        self.tok = Tokenizer.from_file(str(tok))
        self.tok.no_truncation()
        self.tok.no_padding()
        self.dim = self.table.shape[1]
        self.name = MODEL_NAME

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (float32, len(texts) x dim); an empty text gives a zero vector."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self.tok.encode_batch([t[:MAX_CHARS] for t in texts], add_special_tokens=False)
        nv = self.table.shape[0]
        for i, e in enumerate(encs):
            ids = np.asarray(e.ids, dtype=np.int64)
            if ids.size == 0:
                continue
            np.clip(ids, 0, nv - 1, out=ids)
            v = self.table[ids].mean(axis=0)
            n = float(np.linalg.norm(v))
            if n > 0:
                out[i] = v / n
        return out


_model_lock = threading.Lock()
_model: Optional[Model] = None


def model() -> Model:
    global _model
    with _model_lock:
        if _model is None:
            _model = Model()
        return _model


def available() -> bool:
    try:
        import wordllama  # noqa: F401
        return True
    except ImportError:
        return False


# ====================================================================== texts
def conversation_texts(conv) -> tuple[str, str]:
    """(first user request, the rest) of a conversation's text parts."""
    first, rest, size = None, [], 0
    for m in conv.messages:
        if m.event:
            continue
        text = "\n".join(p.text for p in m.parts if p.kind == "text" and p.text)
        if not text:
            continue
        if first is None and m.role == USER:
            first = text
            continue
        if size < MAX_CHARS:
            rest.append(text)
            size += len(text)
    return first or "", "\n".join(rest)


def conversation_vectors(m: Model, parsed) -> np.ndarray:
    firsts, rests = [], []
    for c in parsed.conversations:
        f, r = conversation_texts(c)
        firsts.append(f)
        rests.append(r)
    v = m.embed(firsts) + m.embed(rests)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


def quantize(v: np.ndarray) -> tuple[bytes, bytes]:
    scale = np.abs(v).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.round(v / scale[:, None]).astype(np.int8)
    return q.tobytes(), scale.astype(np.float16).tobytes()


def dequantize(q: bytes, s: bytes, dim: int) -> np.ndarray:
    qa = np.frombuffer(q, dtype=np.int8).reshape(-1, dim).astype(np.float32)
    sa = np.frombuffer(s, dtype=np.float16).astype(np.float32)
    v = qa * sa[:, None]
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


# ====================================================================== sync
def _meta(txn, db) -> Optional[dict]:
    v = txn.get(b"m", db=db)
    if v is None:
        return None
    m = unpack(v)
    return m if m.get("v") == VERSION and m.get("model") == MODEL_NAME else None


def _ids(txn, db) -> set[int]:
    out = set()
    cur = txn.cursor(db=db)
    ok = cur.set_range(b"f")
    while ok and cur.key()[:1] == b"f":
        out.add(_U64.unpack(cur.key()[1:9])[0])
        ok = cur.next()
    return out


def in_step(store) -> bool:
    """Whether the embeddings were last synced at the store's current generation."""
    if not hasattr(store, "aux_read"):
        return False
    meta = store.aux_read(DB, _meta)
    return meta is not None and meta.get("gen") == store.generation


def embed(store, progress: Optional[Callable[[int, int], None]] = None, batch_files: int = 64) -> dict:
    """Embed the conversations of files not embedded yet; drop ids that are gone."""
    from ..formats import parse
    gen = store.generation
    st = store.aux_read(DB, lambda txn, db: (_meta(txn, db), _ids(txn, db)))
    meta, have = st if st is not None else (None, set())
    out = {"embedded": 0, "conversations": 0, "dropped": 0}
    if meta is not None and meta.get("gen") == gen:
        return out
    m = model()
    if meta is None:
        have = set()
    live = {i.file_id: i for i in store.iter_files()}
    gone = have - live.keys()
    todo = sorted(fid for fid in live.keys() - have)
    writes = 0
    pending: list[tuple[int, bytes]] = []

    def flush(first: bool = False):
        nonlocal writes, pending
        rows = pending

        def work(txn, db):
            if _meta(txn, db) is None:     # new index or another model: start over
                cur = txn.cursor(db=db)
                if cur.first():
                    while cur.delete():
                        pass
            for fid in gone if first else ():
                txn.delete(b"f" + _U64.pack(fid), db=db)
            for fid, v in rows:
                txn.put(b"f" + _U64.pack(fid), v, db=db)
            txn.put(b"m", pack({"v": VERSION, "model": MODEL_NAME, "dim": m.dim, "gen": -1}), db=db)
        store.aux_write(DB, work)
        writes += 1
        pending = []

    flush(first=True)
    out["dropped"] = len(gone)
    for n, fid in enumerate(todo, 1):
        info = live[fid]
        vec = np.zeros((0, m.dim), dtype=np.float32)
        if not info.error and info.conversations:
            try:
                parsed = parse(store.get(info.name), info.name)
            except NotFound:
                continue
            if parsed.is_conversation:
                vec = conversation_vectors(m, parsed)
        q, s = quantize(vec) if len(vec) else (b"", b"")
        pending.append((fid, pack({"n": len(vec), "q": q, "s": s})))
        out["embedded"] += 1
        out["conversations"] += len(vec)
        if len(pending) >= batch_files:
            flush()
        if progress:
            progress(n, len(todo))
    if pending:
        flush()

    def stamp(txn, db):
        mm = _meta(txn, db) or {"v": VERSION, "model": MODEL_NAME, "dim": m.dim}
        mm["gen"] = gen + writes + 1
        txn.put(b"m", pack(mm), db=db)
    store.aux_write(DB, stamp)
    return out


@dataclass
class Vectors:
    file_ids: np.ndarray       # per row: file id
    conv: np.ndarray           # per row: conversation index in its file
    v: np.ndarray              # rows x dim, unit vectors


def vectors(store, sync_first: bool = True) -> Vectors:
    if sync_first and not store.readonly:
        embed(store)

    def work(txn, db):
        meta = _meta(txn, db)
        if meta is None:
            return None
        dim = meta["dim"]
        fids, convs, parts = [], [], []
        cur = txn.cursor(db=db)
        ok = cur.set_range(b"f")
        while ok and cur.key()[:1] == b"f":
            fid = _U64.unpack(cur.key()[1:9])[0]
            d = unpack(cur.value())
            if d["n"]:
                parts.append(dequantize(d["q"], d["s"], dim))
                fids.extend([fid] * d["n"])
                convs.extend(range(d["n"]))
            ok = cur.next()
        v = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
        return Vectors(np.array(fids, dtype=np.int64), np.array(convs, dtype=np.int64), v)
    r = store.aux_read(DB, work)
    if r is None:
        raise StowError("no embeddings in this store yet: run `stowfs embed STORE`")
    # rows of files gone since (a read-only store cannot sync) and empty conversations
    # (no text: a zero vector, similar to nothing) are left out
    live = {i.file_id for i in store.iter_files()}
    keep = np.array([f in live for f in r.file_ids], dtype=bool) if len(r.file_ids) else np.zeros(0, bool)
    if len(keep):
        keep &= np.linalg.norm(r.v, axis=1) > 0
    return Vectors(r.file_ids[keep], r.conv[keep], r.v[keep])


def embedding_bytes(store) -> int:
    def work(txn, db):
        return sum(len(k) + len(v) for k, v in txn.cursor(db=db))
    return store.aux_read(DB, work) or 0


# ====================================================================== questions
def _label(store, fid: int, conv: int, cache: dict) -> tuple[str, str]:
    """(stored path, first request cut to one line) of a conversation."""
    from ..formats import parse
    try:
        info = store.info_by_id(fid)
    except NotFound:
        return "?", ""
    if fid not in cache:
        try:
            cache[fid] = parse(store.get(info.name), info.name)
        except NotFound:
            cache[fid] = None
    p = cache[fid]
    first = ""
    if p is not None and conv < len(p.conversations):
        first = conversation_texts(p.conversations[conv])[0]
    first = " ".join(first.split())
    return info.name, (first[:100] + "…") if len(first) > 100 else first


def search(store, query: str, top: int = 10, labels: bool = True) -> list[dict]:
    vs = vectors(store)
    if not query.strip():
        raise StowError("empty query")
    if not len(vs.v):
        return []
    q = model().embed([query])[0]
    sims = vs.v @ q
    order = np.argsort(-sims, kind="stable")[:top]
    cache: dict = {}
    out = []
    for i in order:
        fid, conv = int(vs.file_ids[i]), int(vs.conv[i])
        row = {"file_id": fid, "conversation": conv, "score": round(float(sims[i]), 4)}
        if labels:
            row["file"], row["first_request"] = _label(store, fid, conv, cache)
        out.append(row)
    return out


def kmeans(v: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means with k-means++ seeding: (centroids k x dim, labels)."""
    n = len(v)
    if n == 0:
        raise StowError("no embedded conversations to cluster")
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    cents = np.empty((k, v.shape[1]), dtype=np.float32)
    cents[0] = v[rng.integers(n)]
    d = 1.0 - v @ cents[0]
    for j in range(1, k):
        d2 = np.clip(d, 0, None) ** 2
        tot = float(d2.sum())
        idx = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
        cents[j] = v[idx]
        d = np.minimum(d, 1.0 - v @ cents[j])
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        new = np.argmax(v @ cents.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = v[labels == j]
            if len(members):
                c = members.sum(axis=0)
                nn = float(np.linalg.norm(c))
                if nn > 0:
                    cents[j] = c / nn
    return cents, labels


def cluster(store, k: int, seed: int = 0, show: int = 3) -> dict:
    if k < 1:
        raise StowError("-k must be at least 1")
    vs = vectors(store)
    cents, labels = kmeans(vs.v, k, seed)
    sims = vs.v @ cents.T
    cache: dict = {}
    clusters = []
    for j in range(len(cents)):
        idx = np.nonzero(labels == j)[0]
        if not len(idx):
            continue
        near = idx[np.argsort(-sims[idx, j], kind="stable")][:show]
        ex = []
        for i in near:
            name, first = _label(store, int(vs.file_ids[i]), int(vs.conv[i]), cache)
            ex.append({"file": name, "conversation": int(vs.conv[i]), "first_request": first,
                       "similarity": round(float(sims[i, j]), 4)})
        clusters.append({"cluster": j, "size": int(len(idx)),
                         "cohesion": round(float(sims[idx, j].mean()), 4), "examples": ex})
    clusters.sort(key=lambda c: (-c["size"], c["cluster"]))
    return {"k": len(cents), "seed": seed, "conversations": int(len(vs.v)), "clusters": clusters,
            "labels": [{"file_id": int(f), "conversation": int(c), "cluster": int(l)}
                       for f, c, l in zip(vs.file_ids, vs.conv, labels)]}


def outliers(store, k: int = 8, seed: int = 0, top: int = 10) -> dict:
    vs = vectors(store)
    cents, labels = kmeans(vs.v, k, seed)
    score = 1.0 - (vs.v @ cents.T).max(axis=1)
    order = np.argsort(-score, kind="stable")[:top]
    cache: dict = {}
    rows = []
    for i in order:
        name, first = _label(store, int(vs.file_ids[i]), int(vs.conv[i]), cache)
        rows.append({"file": name, "file_id": int(vs.file_ids[i]), "conversation": int(vs.conv[i]),
                     "score": round(float(score[i]), 4), "cluster": int(labels[i]),
                     "first_request": first})
    return {"k": len(cents), "seed": seed, "conversations": int(len(vs.v)), "outliers": rows}
