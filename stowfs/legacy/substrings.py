"""Shared substrings: the long runs of bytes that many stored segments have in common
(a system prompt with the date changed, boilerplate a tool prints every time, the same
token-id prefix), found in a sample of segments and promoted to a registry.

Promotion: every sample is cut at content-defined anchors (a word start whose next 8
bytes hash to 0 mod ANCHOR_EVERY), and the window of `window` bytes after each anchor is
counted once per sample. A window that occurs in at least `min_occurrences` samples is a
seed; it is grown to the left and right, a step at a time, for as long as the longer
string still occurs in that many samples, and each maximal string is kept once (none
inside another). Because anchors depend on content only, two samples share the same
windows wherever they share text, at whatever offset.

The store turns a registry into a zstd raw-content dictionary (the promoted strings
concatenated, most shared first), which blocks written later use when it makes them
smaller; see Store.train_substrings.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter

# "16 tokens or an equivalent byte length": about 4 bytes a token for text; token-id
# segments hold uvarints (1-3 bytes an id), so 16 ids are about 32 bytes.
MIN_TEXT_BYTES = 64
MIN_TOKEN_BYTES = 32
ANCHOR_EVERY = 4
_WORD_START = re.compile(rb"(?<![A-Za-z0-9_])[A-Za-z0-9_]")
_GROW_STEP = 16
MAX_SUBSTRING = 64 << 10
MAX_SEEDS = 256                       # seeds grown per training, most shared first
MAX_REGISTRY_BYTES = 112 << 10        # the dictionary they make stays small


def _anchors(sample: bytes, window: int, binary: bool) -> set[bytes]:
    out = set()
    last = len(sample) - window
    if last < 0:
        return out
    if binary:
        # token ids: every byte position is a candidate start
        starts = range(0, last + 1)
    else:
        starts = (m.start() for m in _WORD_START.finditer(sample, 0, last + 1))
    for p in starts:
        if zlib.crc32(sample[p:p + 8]) % ANCHOR_EVERY == 0:
            out.add(sample[p:p + window])
    return out


def _occurs(s: bytes, samples: list[bytes], need: int) -> bool:
    n = 0
    for x in samples:
        if s in x:
            n += 1
            if n >= need:
                return True
    return False


def _grow(seed: bytes, samples: list[bytes], need: int) -> bytes:
    """The longest extension of seed (left and right) still in `need` samples: try
    growing by a step of bytes as some holder has them, halve the step when no
    extension is shared widely enough."""
    holders = [x for x in samples if seed in x]
    best = seed
    for direction in (1, -1):
        step = _GROW_STEP
        while step >= 1 and len(best) < MAX_SUBSTRING:
            tried: set[bytes] = set()
            extended = None
            for x in holders:
                start = x.find(best)
                if direction == 1:
                    cand = x[start:start + len(best) + step] if start + len(best) + step <= len(x) else None
                else:
                    cand = x[start - step:start + len(best)] if start >= step else None
                if cand is None or cand in tried:
                    continue
                tried.add(cand)
                if _occurs(cand, holders, need):
                    extended = cand
                    break
            if extended is None:
                step //= 2
            else:
                best = extended
                holders = [x for x in holders if best in x]
    return best


def promote(samples: list[bytes], min_occurrences: int, window: int = MIN_TEXT_BYTES,
            binary: bool = False) -> list[tuple[bytes, int]]:
    """The shared substrings of samples: [(bytes, samples it occurs in)], most shared
    first, each at least `window` bytes long and in at least min_occurrences samples."""
    if min_occurrences < 2:
        raise ValueError("min_occurrences must be at least 2")
    counts: Counter = Counter()
    for x in samples:
        counts.update(_anchors(x, window, binary))
    seeds = [w for w, n in counts.most_common() if n >= min_occurrences]
    found: list[bytes] = []
    grown = 0
    for seed in seeds:
        if any(seed in f for f in found):
            continue
        found.append(_grow(seed, samples, min_occurrences))
        grown += len(found[-1])
        if len(found) >= MAX_SEEDS or grown >= 2 * MAX_REGISTRY_BYTES:
            break
    found = sorted(set(found), key=len, reverse=True)
    kept: list[bytes] = []
    for f in found:
        if not any(f in k for k in kept):
            kept.append(f)
    scored = [(k, sum(1 for x in samples if k in x)) for k in kept]
    scored.sort(key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))
    out, total = [], 0
    for k, n in scored:
        if total + len(k) > MAX_REGISTRY_BYTES:
            continue
        out.append((k, n))
        total += len(k)
    return out


def dictionary_bytes(substrings: list[bytes]) -> bytes:
    """The raw-content dictionary of a registry. zstd matches recent dictionary bytes
    with shorter offsets, so the most shared strings go last. Starts with a newline so
    it can never be mistaken for a trained dictionary (those start with a magic number)."""
    return b"\n" + b"".join(reversed(substrings))
