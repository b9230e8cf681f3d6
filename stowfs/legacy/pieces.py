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
from ..packing import decode_uvarints, encode_uvarints, get_uvarint, pack, put_uvarint, unpack

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
TOKENS_LINES = 32    # 32 + I: the ids of a pretty-printed array, one a line indented by I
                     # spaces ("1,\n    2,\n    3": the brackets stay in the skeleton)
TOKENS_LINES_MAX_INDENT = 255 - TOKENS_LINES

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
    if TOKENS_LINES <= style <= 255:
        sep = b",\n" + b" " * (style - TOKENS_LINES)
        return sep.join(str(i).encode() for i in decode_uvarints(seg))
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


def token_lines(ids: list[int], literal: bytes) -> tuple[int, int, int] | None:
    """For a pretty-printed array literal ("[\n  1,\n  2\n]"): (start, end, style) of the
    part from the first id to the last that TOKENS_LINES + indent spells, or None."""
    start = len(literal) - len(literal[1:].lstrip()) if literal[:1] == b"[" else -1
    end = len(literal.rstrip(b"]").rstrip())
    nl = literal.find(b",\n", start)
    if start < 1 or nl < 0:
        return None
    indent = len(literal) - nl - 2 - len(literal[nl + 2:].lstrip(b" "))
    if indent > TOKENS_LINES_MAX_INDENT:
        return None
    style = TOKENS_LINES + indent
    if render(encode_uvarints(ids), style) != literal[start:end]:
        return None
    return start, end, style


@dataclass
class PieceList:
    skel_hashes: bytes = b""                          # 16 bytes per skeleton chunk
    skel_lens: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)     # n+1 gap lengths
    hashes: bytes = b""                               # 16 bytes per ref
    styles: bytes = b""
    outlens: list[int] = field(default_factory=list)  # rendered length of each ref
    size: int = 0
    events: bytes = b""          # order skeleton chunks (S) and refs (R) were made in

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
        self._events = bytearray()     # b"S" per skeleton chunk, b"R" per ref, in order
        self._chunker = StreamChunker(self._chunk)

    def _chunk(self, data: bytes) -> None:
        self._skel += self._store(data, self._kind)
        self._pl.skel_lens.append(len(data))
        self._events += b"S"

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
        self._events += b"R"

    def finish(self) -> PieceList:
        self._chunker.finish()
        pl = self._pl
        pl.gaps.append(self._gap)
        pl.hashes = bytes(self._hashes)
        pl.skel_hashes = bytes(self._skel)
        pl.styles = bytes(self._styles)
        pl.events = bytes(self._events)
        return pl


# The stored form of both views' piece lists (format 2). It is a stream of records in
# the order the file was split, original view first, so a file that grew (a session
# appended to, rewritten with one more turn) writes the same bytes as before up to its
# old end: content-defined chunks of this stream (PIECES segments) are then shared with
# the older version, and only the chunks around the changes are new.
#
#   0xC1 (a byte msgpack never uses, so format 1 blobs, which are msgpack maps, differ)
#   records, per view:  S  uvarint length, 16-byte hash         a skeleton chunk
#                       R  uvarint gap, style, uvarint length,  a reference by hash
#                          16-byte hash
#                       P  uvarint gap, style, uvarint length,  a reference to the same
#                          uvarint i                            segment as original ref i
#                       E  uvarint last gap, uvarint size       end of the view
_MAGIC2 = 0xC1


def pack_views(original: PieceList, text: PieceList) -> bytes:
    out = bytearray([_MAGIC2])
    first: dict[bytes, int] = {}
    for i, h in enumerate(original.ref_hashes()):
        first.setdefault(h, i)
    for pl, positions in ((original, None), (text, first)):
        ev = pl.events if len(pl.events) == len(pl.skel_lens) + len(pl.outlens) \
            else b"S" * len(pl.skel_lens) + b"R" * len(pl.outlens)
        si = ri = 0
        for e in ev:
            if e == 0x53:      # S
                out += b"S"
                put_uvarint(out, pl.skel_lens[si])
                out += pl.skel_hashes[16 * si:16 * si + 16]
                si += 1
                continue
            h = pl.hashes[16 * ri:16 * ri + 16]
            pos = positions.get(h) if positions is not None else None
            out += b"R" if pos is None else b"P"
            put_uvarint(out, pl.gaps[ri])
            out.append(pl.styles[ri])
            put_uvarint(out, pl.outlens[ri])
            if pos is None:
                out += h
            else:
                put_uvarint(out, pos)
            ri += 1
        out += b"E"
        put_uvarint(out, pl.gaps[-1] if pl.gaps else 0)
        put_uvarint(out, pl.size)
    return bytes(out)


def _read_view(blob: bytes, pos: int, orig: "PieceList | None") -> tuple[PieceList, int]:
    skel_hashes, hashes, styles, events = bytearray(), bytearray(), bytearray(), bytearray()
    skel_lens, gaps, outlens = [], [], []
    while True:
        tag = blob[pos]
        pos += 1
        if tag == 0x53:                                   # S
            n, pos = get_uvarint(blob, pos)
            skel_lens.append(n)
            skel_hashes += blob[pos:pos + 16]
            pos += 16
            events.append(tag)
        elif tag in (0x52, 0x50):                         # R, P
            g, pos = get_uvarint(blob, pos)
            gaps.append(g)
            styles.append(blob[pos])
            n, pos = get_uvarint(blob, pos + 1)
            outlens.append(n)
            if tag == 0x52:
                hashes += blob[pos:pos + 16]
                pos += 16
            else:
                i, pos = get_uvarint(blob, pos)
                if orig is None or 16 * i + 16 > len(orig.hashes):
                    raise ValueError("reference to a missing original piece")
                hashes += orig.hashes[16 * i:16 * i + 16]
            events.append(0x52)
        elif tag == 0x45:                                 # E
            g, pos = get_uvarint(blob, pos)
            size, pos = get_uvarint(blob, pos)
            gaps.append(g)
            pl = PieceList(bytes(skel_hashes), skel_lens, gaps, bytes(hashes), bytes(styles),
                           outlens, size, bytes(events))
            if len(pl.skel_hashes) != 16 * len(skel_lens) or len(pl.hashes) != 16 * len(outlens):
                raise ValueError("truncated piece list")
            if sum(gaps) + sum(outlens) != size or sum(skel_lens) != sum(gaps):
                raise ValueError("piece list does not add up")
            return pl, pos
        else:
            raise ValueError(f"unknown piece record 0x{tag:02x}")


def _pack_views_v1(original: PieceList, text: PieceList) -> bytes:
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
    if blob[:1] == bytes([_MAGIC2]):
        try:
            o, pos = _read_view(blob, 1, None)
            t, pos = _read_view(blob, pos, o)
        except IndexError:
            raise ValueError("truncated piece list") from None
        if pos != len(blob):
            raise ValueError("trailing bytes after the piece lists")
        return {"o": o, "t": t}
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
