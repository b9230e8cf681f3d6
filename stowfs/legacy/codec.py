"""Frames: the self-describing envelope of every stored block, and the pack format inside.

A frame is ``tag byte | tag-specific header | payload``. Tags are forever: new ones may be
added, old ones stay readable.

    0x00 RAW        payload is the decoded bytes
    0x01 ZSTD       payload is one zstd frame (content size and checksum included)
    0x02 ZSTD_DICT  uvarint dictionary id, then one zstd frame made with that dictionary
    0x10 DELTA      a segment kept as a zstd frame made with another segment (its base)
                    as a raw-content dictionary; the segment index names the base
    (0x11.. reserved)

A block's decoded bytes are a *pack* of segments: ``uvarint n | n x uvarint length | bytes``.
Segments are addressed by BLAKE2b-128 of their own bytes (see segment_hash); the block
that holds them is an implementation detail recorded in the segment index.

Every decode is bounded by MAX_BLOCK_RAW; a frame that fails to decode raises Corrupt.
"""
from __future__ import annotations

import hashlib
import threading
from array import array

import zstandard as zstd

from .. import limits
from ..errors import Corrupt
from ..packing import get_uvarint, put_uvarint

RAW, ZSTD, ZSTD_DICT, DELTA = 0x00, 0x01, 0x02, 0x10
KNOWN_TAGS = {RAW: "raw", ZSTD: "zstd", ZSTD_DICT: "zstd+dict", DELTA: "delta"}

HASH_SIZE = 16


def segment_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


class Dictionaries:
    """Dictionaries by id (loaded once, through the caller's transaction); zstd contexts
    per thread, since a context must not be used by two threads at once."""

    def __init__(self):
        self._dicts: dict[int, zstd.ZstdCompressionDict] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def ensure(self, dict_id: int, load) -> None:
        if dict_id not in self._dicts:
            d = zstd.ZstdCompressionDict(load())
            with self._lock:
                self._dicts.setdefault(dict_id, d)

    def get(self, dict_id: int) -> zstd.ZstdCompressionDict:
        try:
            return self._dicts[dict_id]
        except KeyError:
            raise Corrupt(f"dictionary {dict_id} is not loaded") from None

    def compressor(self, level: int, dict_id: int | None) -> zstd.ZstdCompressor:
        cache = self._local.__dict__.setdefault("c", {})
        key = (level, dict_id)
        c = cache.get(key)
        if c is None:
            kw = dict(level=level, write_checksum=True, write_content_size=True)
            if dict_id is not None:
                kw["dict_data"] = self.get(dict_id)
            c = cache[key] = zstd.ZstdCompressor(**kw)
        return c

    def decompressor(self, dict_id: int | None) -> zstd.ZstdDecompressor:
        cache = self._local.__dict__.setdefault("d", {})
        d = cache.get(dict_id)
        if d is None:
            kw = {}
            if dict_id is not None:
                kw["dict_data"] = self.get(dict_id)
            d = cache[dict_id] = zstd.ZstdDecompressor(**kw)
        return d


def encode_frame(raw: bytes, dicts: Dictionaries, level: int, dict_id: int | None = None) -> bytes:
    """Compress raw into a frame; falls back to RAW when compression does not help."""
    if len(raw) > limits.MAX_BLOCK_RAW:
        raise ValueError("block larger than MAX_BLOCK_RAW")
    comp = dicts.compressor(level, dict_id).compress(raw)
    head = bytearray()
    if dict_id is None:
        head.append(ZSTD)
    else:
        head.append(ZSTD_DICT)
        put_uvarint(head, dict_id)
    if len(head) + len(comp) >= len(raw) + 1:
        return bytes([RAW]) + raw
    return bytes(head) + comp


def frame_dict_id(frame: bytes) -> int | None:
    if frame and frame[0] == ZSTD_DICT:
        return get_uvarint(frame, 1)[0]
    return None


def frame_raw_size(frame: bytes) -> int:
    """The decoded size a frame declares, read from its header without decoding."""
    if not frame:
        raise Corrupt("empty frame")
    tag = frame[0]
    if tag == RAW:
        return len(frame) - 1
    pos = 1 if tag == ZSTD else get_uvarint(frame, 1)[1] if tag == ZSTD_DICT else None
    if pos is None:
        raise Corrupt(f"unknown frame tag 0x{tag:02x}")
    try:
        return zstd.frame_content_size(memoryview(frame)[pos:])
    except zstd.ZstdError as e:
        raise Corrupt(f"bad zstd frame: {e}") from None


def decode_frame(frame: bytes, dicts: Dictionaries) -> bytes:
    if not frame:
        raise Corrupt("empty frame")
    tag = frame[0]
    if tag == RAW:
        return bytes(frame[1:])
    if tag == ZSTD:
        dict_id, pos = None, 1
    elif tag == ZSTD_DICT:
        try:
            dict_id, pos = get_uvarint(frame, 1)
        except ValueError as e:
            raise Corrupt(f"bad frame header: {e}") from None
    else:
        raise Corrupt(f"unknown frame tag 0x{tag:02x}")
    body = memoryview(frame)[pos:]
    try:
        size = zstd.frame_content_size(body)
    except zstd.ZstdError as e:
        raise Corrupt(f"bad zstd frame: {e}") from None
    if size < 0 or size > limits.MAX_BLOCK_RAW:
        raise Corrupt(f"frame declares {size} bytes (limit {limits.MAX_BLOCK_RAW})")
    try:
        out = dicts.decompressor(dict_id).decompress(body, max_output_size=limits.MAX_BLOCK_RAW)
    except zstd.ZstdError as e:
        raise Corrupt(f"zstd frame does not decode: {e}") from None
    if len(out) != size:
        raise Corrupt("frame decoded to the wrong size")
    return out


def _delta_params(base_len: int, size: int, level: int) -> zstd.ZstdCompressionParameters:
    # the window must reach back over the whole base (zstd's --patch-from does the same)
    wl = max(10, min(27, (base_len + size).bit_length()))
    return zstd.ZstdCompressionParameters.from_level(level, window_log=wl, write_checksum=0,
                                                     write_content_size=1)


def encode_delta(data: bytes, base: bytes, level: int = limits.LEVEL_DELTA) -> bytes:
    """data as a zstd frame that uses base as a raw-content dictionary (no tag: the
    segment index says a segment is a delta and names its base)."""
    d = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    c = zstd.ZstdCompressor(compression_params=_delta_params(len(base), len(data), level), dict_data=d)
    return c.compress(data)


def decode_delta(payload: bytes, base: bytes, size: int) -> bytes:
    """The segment a delta payload rebuilds from its base; raises Corrupt when it does
    not decode to exactly size bytes."""
    try:
        d = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
        out = zstd.ZstdDecompressor(dict_data=d, max_window_size=1 << 27).decompress(
            payload, max_output_size=max(size, 1))
    except zstd.ZstdError as e:
        raise Corrupt(f"delta does not decode: {e}") from None
    if len(out) != size:
        raise Corrupt("delta decoded to the wrong size")
    return out


def build_pack(segments: list[bytes]) -> bytes:
    head = bytearray()
    put_uvarint(head, len(segments))
    for s in segments:
        put_uvarint(head, len(s))
    return bytes(head) + b"".join(segments)


def parse_pack(raw: bytes) -> array:
    """Offsets of the segments in a decoded pack: n+1 boundaries into raw. An array, not a
    list: the block cache keeps one per decoded block (8 bytes an offset instead of ~40)."""
    try:
        n, pos = get_uvarint(raw, 0)
        lens = []
        for _ in range(n):
            ln, pos = get_uvarint(raw, pos)
            lens.append(ln)
    except ValueError as e:
        raise Corrupt(f"bad pack header: {e}") from None
    offs = [pos]
    for ln in lens:
        pos += ln
        offs.append(pos)
    if pos != len(raw):
        raise Corrupt("pack lengths do not add up")
    return array("Q", offs)
