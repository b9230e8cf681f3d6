"""What a file becomes, computed without the store: parse it, split it into piece lists
for its views, hash every segment. Pure and picklable, so the CLI can plan files in
worker processes while the main process applies finished plans to LMDB.

The store applies a Plan in one write transaction (Store._apply); files too large to
hold in memory skip planning and stream straight through the splitter instead
(Store._stream), with the same split_views().
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from .. import limits
from .. import neardup
from .chunker import cut_points
from .codec import segment_hash
from ..conversation import Parsed
from .pieces import PIECES, VIEW, PieceList, PieceListBuilder, pack_views
from .splitter import build_view, content_kinds, looks_like_json, split_spans, split_stream


def describe(parsed: Parsed) -> dict:
    """The manifest fields that come from parsing."""
    models = parsed.models()
    conv0 = parsed.conversations[0] if parsed.conversations else None
    day = conv0.started[:10] if conv0 is not None and conv0.started and len(conv0.started) >= 10 else None
    app = next((c.application for c in parsed.conversations if c.application), None)
    return {"fm": parsed.format, "ap": app, "md": models[0] if models else None, "ms": models[:16],
            "dy": day, "er": parsed.issue, "nm": parsed.message_count(), "nc": len(parsed.conversations)}


def unparsed(size: int) -> Parsed:
    return Parsed(format="unparsed", error=f"larger than {limits.MAX_PARSE_BYTES} bytes "
                  f"({size} bytes): stored and deduplicated, not parsed as a conversation")


def split_file(opener, b: PieceListBuilder, kinds) -> tuple[bytes, int]:
    """Stream a file too large to hold through the splitter; returns (sha256, bytes read)."""
    h = hashlib.sha256()
    nread = 0
    with opener() as f:
        def read(n: int) -> bytes:
            nonlocal nread
            chunk = f.read(n)
            h.update(chunk)
            nread += len(chunk)
            return chunk
        head = read(4096)
        first = [head]
        split_stream(lambda n: first.pop() if first else read(n), b, kinds, looks_like_json(head))
    return h.digest(), nread


def split_views(data: Optional[bytes], opener, parsed: Parsed, store_segment):
    """Build the original and text piece lists, storing segments through store_segment
    (data -> hash). data=None streams the file from opener(). Returns (original, text,
    hashes of the piece-list segments, sha256, bytes read)."""
    kinds = content_kinds(parsed)
    orig = PieceListBuilder(store_segment)
    if data is None:
        sha, nread = split_file(opener, orig, kinds)
    else:
        sha, nread = hashlib.sha256(data).digest(), len(data)
        if parsed.spans:
            split_spans(data, parsed.spans, orig)
        else:
            split_stream(io.BytesIO(data).read, orig, kinds, looks_like_json(data[:4096]))
    opl = orig.finish()
    text = PieceListBuilder(store_segment, VIEW)
    if data is not None and parsed.is_conversation:
        from ..views.text import render
        build_view(render(parsed), text, kinds)
    tpl = text.finish()
    blob = pack_views(opl, tpl)
    # Content-defined chunks: a grown file's piece lists share all but their last chunks.
    cuts = cut_points(blob, True, limits.PIECES_CHUNK_MIN, limits.PIECES_CHUNK_MAX,
                      limits.PIECES_CHUNK_MASK)
    pieces = b"".join(store_segment(blob[a:b], PIECES) for a, b in zip([0, *cuts], cuts))
    return opl, tpl, pieces, sha, nread


class Recorder:
    """A store_segment that only hashes and remembers: each distinct segment once, in
    first-seen order, with occurrence counts per kind."""

    def __init__(self, signatures=True):
        """signatures: True (sign every delta candidate), False (none), or a predicate
        on a segment's hash saying whether it needs one (not when the store has it)."""
        self.segments: dict[bytes, tuple[bytes, int]] = {}
        self.sigs: dict[bytes, bytes] = {}
        self.occ: Counter = Counter()
        self.occ_bytes: Counter = Counter()
        self.repeat_bytes = 0
        self._signatures = signatures

    def __call__(self, data: bytes, kind: int) -> bytes:
        h = segment_hash(data)
        self.occ[kind] += 1
        self.occ_bytes[kind] += len(data)
        if h in self.segments:
            self.repeat_bytes += len(data)
        else:
            self.segments[h] = (data, kind)
            if (self._signatures and neardup.delta_candidate(kind, len(data))
                    and (self._signatures is True or self._signatures(h))):
                self.sigs[h] = neardup.signature(data)   # here, in the worker processes
        return h


@dataclass
class Plan:
    name: str
    size: int
    mtime: float
    sha: bytes
    meta: dict
    original: PieceList
    text: PieceList
    pieces: bytes
    segments: dict = field(default_factory=dict)
    occ: Counter = field(default_factory=Counter)
    occ_bytes: Counter = field(default_factory=Counter)
    repeat_bytes: int = 0
    sigs: dict = field(default_factory=dict)   # MinHash signatures of delta candidates


def plan_bytes(name: str, data: bytes, mtime: float, signatures=True) -> Plan:
    """signatures: compute MinHash signatures of delta candidates (not when the store
    does no near-dedup)."""
    from ..formats import parse
    parsed = parse(data, name)
    rec = Recorder(signatures)
    opl, tpl, pieces, sha, _ = split_views(data, None, parsed, rec)
    from .. import facts
    meta = describe(parsed)
    meta["x"] = facts.compute_all(parsed, data)
    return Plan(name, len(data), mtime, sha, meta, opl, tpl, pieces,
                rec.segments, rec.occ, rec.occ_bytes, rec.repeat_bytes, rec.sigs)


def plan_path(name: str, path: str, mtime: float, signatures=True) -> Optional[Plan]:
    """Plan a file on disk; None when it is too large to hold (the store streams it)."""
    if os.path.getsize(path) > limits.MAX_PARSE_BYTES:
        return None
    with open(path, "rb") as f:
        data = f.read(limits.MAX_PARSE_BYTES + 1)
    if len(data) > limits.MAX_PARSE_BYTES:
        return None
    return plan_bytes(name, data, mtime, signatures)


def plan_paths(items: list, signatures=True) -> list:
    """plan_path for a group of (name, path, mtime): one task per group keeps the cost of
    handing work to a process small next to the work. A file that cannot be read gets
    its error in its place. signatures may also be a store directory: then only
    segments that store does not hold yet are signed (a grown session's old turns are
    exact duplicates, no delta candidates; measured on the bench's sessions corpus:
    ingest 5.1-5.3 s -> 3.5-3.8 s, against 2.5-2.6 s with near-dedup off)."""
    from ..errors import StowError
    probe = None
    if isinstance(signatures, str):
        from .store import SegmentProbe
        probe = SegmentProbe.shared(signatures)
    out = []
    try:
        wanted = probe.begin() if probe is not None else signatures
        for name, path, mtime in items:
            try:
                out.append(plan_path(name, path, mtime, wanted))
            except StowError as e:
                out.append(e)
            except OSError as e:
                out.append(StowError(f"cannot read {path}: {e.strerror}"))
    finally:
        if probe is not None:
            probe.end()
    return out
