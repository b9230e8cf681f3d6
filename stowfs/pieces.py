"""Piece lists: how one view of a file is rebuilt from stored segments.

A view's bytes are ``gap_0 ref_0 gap_1 ref_1 ... ref_{n-1} gap_n``. The gaps, concatenated,
form the *skeleton stream*, stored as content-defined chunks (segments of kind SKELETON).
Each ref names a segment by hash and a *style* that turns the segment's bytes into the
exact bytes that stood in the file (a JSON string literal with its escaping, a token-id
array, or the bytes as they are). Every ref is checked at ingest: a string whose original
spelling no style reproduces stays in the skeleton, so rebuilds are exact by construction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import accumulate

from .chunker import StreamChunker
from .packing import decode_uvarints, encode_uvarints, pack, unpack

# Segment kinds (stats and dictionaries are kept per kind).
OTHER, SYSTEM, USER, ASSISTANT, TOOL, SKELETON, BLOB, TOKENS, VIEW, PIECES = range(10)
KIND_NAMES = ["other", "system", "user", "assistant", "tool", "skeleton", "blob", "tokens", "view",
              "pieces"]
ROLE_KIND = {"system": SYSTEM, "developer": SYSTEM, "user": USER, "human": USER,
             "assistant": ASSISTANT, "model": ASSISTANT, "gpt": ASSISTANT, "tool": TOOL}

# Styles: how a segment's bytes are spelled in the view.
RAW = 0          # as they are
JSON = 1         # json.dumps(ensure_ascii=False): Python, JavaScript, serde_json, ...
JSON_ASCII = 2   # json.dumps(ensure_ascii=True): Python's default
JSON_HTML = 3    # Go's encoding/json: <, >, &, U+2028, U+2029 escaped
JSON_SLASH = 4   # PHP's json_encode: ASCII-escaped and '/' as '\/'
TOKENS_COMPACT = 8   # [1,2,3]   (segment holds uvarint token ids)
TOKENS_SPACED = 9    # [1, 2, 3]

_GO = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                     "\u2028": "\\u2028", "\u2029": "\\u2029"})


def render(seg: bytes, style: int) -> bytes:
    if style == RAW:
        return seg
    if style <= JSON_SLASH:
        s = seg.decode("utf-8", "surrogatepass")
        if style == JSON:
            out = json.dumps(s, ensure_ascii=False)
        elif style == JSON_ASCII:
            out = json.dumps(s)
        elif style == JSON_HTML:
            out = json.dumps(s, ensure_ascii=False).translate(_GO)
        else:
            out = json.dumps(s).replace("/", "\\/")
        return out.encode("utf-8", "surrogatepass")
    if style in (TOKENS_COMPACT, TOKENS_SPACED):
        sep = b"," if style == TOKENS_COMPACT else b", "
        return b"[" + sep.join(str(i).encode() for i in decode_uvarints(seg)) + b"]"
    raise ValueError(f"unknown style {style}")


def json_string_style(value: str, literal: bytes) -> int | None:
    """The style that spells value exactly as literal, or None."""
    for style in (JSON, JSON_ASCII, JSON_HTML, JSON_SLASH):
        try:
            if render(value.encode("utf-8", "surrogatepass"), style) == literal:
                return style
        except UnicodeError:
            return None
    return None


def token_style(ids: list[int], literal: bytes) -> int | None:
    seg = encode_uvarints(ids)
    for style in (TOKENS_COMPACT, TOKENS_SPACED):
        if render(seg, style) == literal:
            return style
    return None


@dataclass
class PieceList:
    skel_hashes: bytes = b""                          # 16 bytes per skeleton chunk
    skel_lens: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)     # n+1 gap lengths
    hashes: bytes = b""                               # 16 bytes per ref
    styles: bytes = b""
    outlens: list[int] = field(default_factory=list)  # rendered length of each ref
    size: int = 0

    def to_obj(self) -> list:
        return [self.skel_hashes, encode_uvarints(self.skel_lens), encode_uvarints(self.gaps),
                self.hashes, self.styles, encode_uvarints(self.outlens), self.size]

    @classmethod
    def from_obj(cls, o) -> "PieceList":
        return cls(o[0], decode_uvarints(o[1]), decode_uvarints(o[2]), o[3], o[4],
                   decode_uvarints(o[5]), o[6])

    def ref_hashes(self) -> list[bytes]:
        h = self.hashes
        return [h[i:i + 16] for i in range(0, len(h), 16)]

    def skel_chunk_hashes(self) -> list[bytes]:
        h = self.skel_hashes
        return [h[i:i + 16] for i in range(0, len(h), 16)]

    def all_hashes(self) -> set[bytes]:
        return set(self.ref_hashes()) | set(self.skel_chunk_hashes())

    def layout(self) -> tuple[list[int], list[int], list[int]]:
        """(element starts in the output, gap starts in the skeleton, skeleton chunk starts).
        Elements alternate gap, ref, gap, ..., gap."""
        lens = [0] * (2 * len(self.gaps) - 1) if self.gaps else []
        lens[0::2] = self.gaps
        lens[1::2] = self.outlens
        starts = [0, *accumulate(lens)]
        gap_starts = [0, *accumulate(self.gaps)]
        chunk_starts = [0, *accumulate(self.skel_lens)]
        return starts, gap_starts, chunk_starts


class PieceListBuilder:
    """Collects gaps and refs; stores segments through store_segment(data, kind) -> hash."""

    def __init__(self, store_segment, skeleton_kind: int = SKELETON):
        self._store = store_segment
        self._kind = skeleton_kind
        self._pl = PieceList(gaps=[])
        self._hashes = bytearray()
        self._skel = bytearray()
        self._styles = bytearray()
        self._gap = 0
        self._chunker = StreamChunker(self._chunk)

    def _chunk(self, data: bytes) -> None:
        self._skel += self._store(data, self._kind)
        self._pl.skel_lens.append(len(data))

    def gap(self, data) -> None:
        if data:
            self._gap += len(data)
            self._pl.size += len(data)
            self._chunker.feed(data)

    def ref(self, seg: bytes, style: int, out_len: int, kind: int) -> None:
        pl = self._pl
        pl.gaps.append(self._gap)
        self._gap = 0
        self._hashes += self._store(seg, kind)
        self._styles.append(style)
        pl.outlens.append(out_len)
        pl.size += out_len

    def finish(self) -> PieceList:
        self._chunker.finish()
        pl = self._pl
        pl.gaps.append(self._gap)
        pl.hashes = bytes(self._hashes)
        pl.skel_hashes = bytes(self._skel)
        pl.styles = bytes(self._styles)
        return pl


def pack_views(original: PieceList, text: PieceList) -> bytes:
    """Both views' piece lists, as stored. The text view quotes the original's segments,
    so its references are written as positions in the original's list where they can be
    (a varint: index + 1) and as hashes only where they cannot (0): hashes are random
    bytes no compressor shrinks, 16 of them per message per view."""
    first: dict[bytes, int] = {}
    for i, h in enumerate(original.ref_hashes()):
        first.setdefault(h, i)
    index, extra = [], bytearray()
    for h in text.ref_hashes():
        i = first.get(h)
        if i is None:
            index.append(0)
            extra += h
        else:
            index.append(i + 1)
    t = text.to_obj()
    t[3] = bytes(extra)
    return pack({"o": original.to_obj(), "t": t, "ti": encode_uvarints(index)})


def unpack_views(blob: bytes) -> dict[str, PieceList]:
    d = unpack(blob)
    views = {"o": PieceList.from_obj(d["o"]), "t": PieceList.from_obj(d["t"])}
    if "ti" in d:
        orig, extra = views["o"].hashes, views["t"].hashes
        out, e = bytearray(), 0
        for i in decode_uvarints(d["ti"]):
            if i:
                out += orig[16 * (i - 1):16 * i]
            else:
                out += extra[e:e + 16]
                e += 16
        views["t"].hashes = bytes(out)
    return views
