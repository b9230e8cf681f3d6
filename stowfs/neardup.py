"""Near-duplicate detection: MinHash signatures over byte shingles, and LSH banding.

A segment's *shingles* are all its 8-byte windows. Its signature is a one-permutation
MinHash: each shingle is hashed once, the hash picks one of NUM_BINS bins and the smallest
value per bin is kept. Two signatures agree in a bin with probability about the Jaccard
similarity of the two shingle sets, so the share of agreeing bins estimates it.

LSH: the first BANDS * ROWS bins are cut into BANDS bands; two segments whose signatures
agree on a whole band become candidates (probability 1 - (1 - J**ROWS)**BANDS: 0.88 at
J = 0.8, 0.99 at J = 0.9, 0.23 at J = 0.5). Candidates are then filtered by the estimated
similarity, and the store keeps a delta only when it is really smaller, so a false
candidate costs time, never bytes.

The shingle hashing runs vectorised in numpy: about 50 us for a 4 KiB segment on a
loaded 2-core machine, where a Python loop over its 4,000 windows takes milliseconds.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

from . import limits

SHINGLE = 8
SAMPLE = 8                   # one window in SAMPLE is kept (a power of two)
NUM_BINS = 32
BANDS = 4
ROWS = 4
BAND_KEY_BYTES = 4           # hash of (band number, the band's values)
EMPTY = 0xFFFFFFFF


# Chat messages (user, assistant) are neither delta bases nor deltas: near copies of a
# whole message are rare there, an LSH entry costs 18 bytes a band, and signing every
# message cost 11% of the chats corpus's ingest CPU for no byte saved (measured).
def delta_candidate(kind: int, length: int) -> bool:
    """Whether a new segment of this kind and length is signed, looked up for a near
    copy to delta against, and indexed as a base for later ones."""
    from .legacy.pieces import ASSISTANT, USER      # format 2's segment kinds
    return kind not in (USER, ASSISTANT) and limits.DELTA_MIN <= length <= limits.DELTA_MAX


@lru_cache(maxsize=None)
def _np():
    """numpy and the constants, imported at the first signature: reading a store (cat,
    the mount) never needs them, and numpy costs ~0.1 s and ~15 MB to import."""
    import numpy as np
    return np, {"empty": np.uint32(EMPTY), "m1": np.uint64(0x9E3779B97F4A7C15),
                "m2": np.uint64(0xBF58476D1CE4E5B9), "m3": np.uint64(0x94D049BB133111EB),
                "ids": np.arange(NUM_BINS, dtype=np.uint64),
                "edges": np.arange(NUM_BINS, dtype=np.uint64) << np.uint64(59)}


def _shingle_hashes(data: bytes):
    """Hashes of a sample of data's 8-byte windows: all windows are read as little-endian
    uint64s (eight strided views, no copy per window), mixed with splitmix64's finaliser,
    and those whose hash falls in a fixed 1/SAMPLE of the hash space are kept. The sample
    depends only on a window's content, so two inputs keep the same windows where they
    agree, and Jaccard similarity of the samples estimates that of all windows."""
    np, c = _np()
    if len(data) < SHINGLE:
        data = data + bytes(SHINGLE - len(data))
    parts = []
    for o in range(SHINGLE):
        n = (len(data) - o) // SHINGLE
        if n > 0:
            parts.append(np.frombuffer(data, dtype="<u8", count=n, offset=o))
    h = np.concatenate(parts)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * c["m2"]
        h = (h ^ (h >> np.uint64(27))) * c["m3"]
        h = h ^ (h >> np.uint64(31))
    kept = h[(h & np.uint64(SAMPLE - 1)) == 0]
    with np.errstate(over="ignore"):
        return kept * c["m1"]


def signature(data: bytes) -> bytes:
    """The MinHash signature of data: NUM_BINS little-endian uint32 values."""
    np, c = _np()
    h = _shingle_hashes(data)
    # Keep the bin (top 5 bits) and the value (low 32 bits); after sorting, the first
    # entry of each bin's run is that bin's minimum.
    key = np.sort(h & np.uint64(0xF8000000FFFFFFFF))
    starts = np.searchsorted(key, c["edges"])
    sig = np.full(NUM_BINS, c["empty"], dtype=np.uint32)
    if len(key) == 0:
        return sig.astype("<u4").tobytes()
    found = starts < len(key)
    firsts = key[np.minimum(starts, len(key) - 1)]
    hit = found & ((firsts >> np.uint64(59)) == c["ids"])
    sig[hit] = (firsts[hit] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return sig.astype("<u4").tobytes()


def _arr(sig: bytes):
    np, _c = _np()
    return np.frombuffer(sig, dtype="<u4")


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of the shingle sets behind two signatures."""
    x, y = _arr(a), _arr(b)
    used = (x != EMPTY) | (y != EMPTY)
    n = int(used.sum())
    if n == 0:
        return 1.0
    return float(((x == y) & used).sum()) / n


def band_keys(sig: bytes) -> list[bytes]:
    """The LSH keys of a signature, one per band (bands with an empty bin are skipped:
    tiny inputs are not worth a delta)."""
    x = _arr(sig)
    out = []
    for b in range(BANDS):
        band = x[b * ROWS:(b + 1) * ROWS]
        if (band == EMPTY).any():
            continue
        out.append(hashlib.blake2b(bytes([b]) + band.tobytes(), digest_size=BAND_KEY_BYTES).digest())
    return out


class LSH:
    """In-memory LSH index: add(key, sig); candidates(sig) -> keys whose estimated
    similarity to sig is at least the threshold."""

    def __init__(self, threshold: float = 0.5):
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self._buckets: dict[bytes, list] = {}
        self._sigs: dict = {}

    def __len__(self) -> int:
        return len(self._sigs)

    def add(self, key, sig: bytes) -> None:
        if key in self._sigs:
            return
        self._sigs[key] = sig
        for bk in band_keys(sig):
            self._buckets.setdefault(bk, []).append(key)

    def candidates(self, sig: bytes) -> dict:
        """{key: estimated similarity} for keys at or above the threshold."""
        out = {}
        for bk in band_keys(sig):
            for key in self._buckets.get(bk, ()):
                if key not in out:
                    s = similarity(sig, self._sigs[key])
                    if s >= self.threshold:
                        out[key] = s
        return out
