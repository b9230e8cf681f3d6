"""msgpack with the store's fixed options, and unsigned varints.

All stored structures go through pack()/unpack() so their options never drift:
bytes stay bytes, strings stay str, no ext types, bounded sizes on unpack.
"""
from __future__ import annotations

import msgpack

_MAX = 256 << 20


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def unpack(data: bytes):
    return msgpack.unpackb(
        data, raw=False, strict_map_key=False, use_list=True,
        max_bin_len=_MAX, max_str_len=_MAX,
        max_array_len=_MAX, max_map_len=_MAX,
    )


def unpack_list(data: bytes, keep_packed=frozenset()) -> list:
    """A packed list, with the items at positions in keep_packed left as their packed
    bytes (unpack() them when needed)."""
    u = msgpack.Unpacker(
        raw=False, strict_map_key=False, use_list=True, max_buffer_size=max(len(data), 1),
        max_bin_len=_MAX, max_str_len=_MAX, max_array_len=_MAX, max_map_len=_MAX,
    )
    u.feed(data)
    out = []
    for i in range(u.read_array_header()):
        if i in keep_packed:
            start = u.tell()
            u.skip()
            out.append(bytes(data[start:u.tell()]))
        else:
            out.append(u.unpack())
    if u.tell() != len(data):
        raise ValueError("trailing bytes after the list")
    return out


def put_uvarint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("uvarint must be >= 0")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def get_uvarint(buf, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        try:
            b = buf[pos]
        except IndexError:
            raise ValueError("truncated varint") from None
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7
        if shift > 640:
            raise ValueError("varint too long")


def encode_uvarints(values) -> bytes:
    out = bytearray()
    for v in values:
        put_uvarint(out, v)
    return bytes(out)


def decode_uvarints(buf) -> list[int]:
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        v, pos = get_uvarint(buf, pos)
        out.append(v)
    return out
