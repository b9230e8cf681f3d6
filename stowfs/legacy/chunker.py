"""Content-defined chunking for skeleton streams and opaque files.

Cut points are chosen after anchor bytes (newline, NUL, '}' or ',') whose preceding 32
bytes hash to a fixed pattern, between CHUNK_MIN and CHUNK_MAX bytes apart. Because the
decision depends only on nearby content, an insertion early in a file moves only the
chunks around it: the rest deduplicates. Long runs without an anchor are cut at CHUNK_MAX.
The per-byte scan runs in the regex engine and zlib, not in Python.
"""
from __future__ import annotations

import re
import zlib

from .. import limits

_ANCHOR = re.compile(rb"[\n\x00},]")
_WINDOW = 32
_MASK = 0x3F  # one anchor in 64 qualifies


def cut_points(buf, final: bool, lo: int = limits.CHUNK_MIN, hi: int = limits.CHUNK_MAX,
               mask: int = _MASK) -> list[int]:
    """End offsets of the chunks that can be cut from buf. With final=False the tail that
    could still grow into a longer chunk is left uncut (its start is the last cut)."""
    n = len(buf)
    pos = 0
    cuts: list[int] = []
    while pos < n:
        if n - pos <= lo:
            if final:
                cuts.append(n)
            break
        limit = pos + hi
        cut = None
        for m in _ANCHOR.finditer(buf, pos + lo, min(limit, n)):
            e = m.end()
            if zlib.crc32(buf[e - _WINDOW:e]) & mask == 0:
                cut = e
                break
        if cut is None:
            if limit <= n:
                cut = limit
            elif final:
                cut = n
            else:
                break
        cuts.append(cut)
        pos = cut
    return cuts


class StreamChunker:
    """Feed bytes in, get whole chunks out; finish() flushes the rest."""

    def __init__(self, emit):
        self._emit = emit
        self._buf = bytearray()

    def feed(self, data) -> None:
        self._buf += data
        if len(self._buf) >= 2 * limits.CHUNK_MAX:
            self._cut(final=False)

    def finish(self) -> None:
        self._cut(final=True)

    def _cut(self, final: bool) -> None:
        buf = self._buf
        start = 0
        for end in cut_points(buf, final):
            self._emit(bytes(buf[start:end]))
            start = end
        del buf[:start]
