"""Column codecs of the packed record group (format 7, records.py): a column of
integers as byte planes, a column present in some records only as a presence bitmap
and its present values, a file's extents with the last length left to its size.

Why: a group of 512 records was msgpack of 15 lists, compressed. msgpack spends a type
byte or more on every number and every 4-byte checksum, and a fact most records lack
listed every record that lacked it. In byte planes the high bytes of a column are runs
of zeros zstd takes for nothing; a file stored in one piece after the one before it
costs two bytes of extents, not four or five. On api-log (1,402 records) the groups went
from 42.6 KB in 11 LMDB pages to 28.7 KB in 8.

Integers (`pack_ints`): `mode u8 | width u8 | width planes of n bytes`. Each value is
made a zigzag integer, of the value itself (mode 0) or of its difference from the value
before it (mode 1; the first from 0); plane b holds byte b (little-endian) of every
zigzag value. The encoder picks the mode whose values take fewer bits on the first 65.
"""
from __future__ import annotations

import sys
from array import array
from itertools import accumulate

from ..packing import get_uvarint, put_uvarint

PLAIN, DELTA = 0, 1
_CAST = {1: "B", 2: "H", 4: "I", 8: "Q"}


def zigzag(d: int) -> int:
    return (d << 1) if d >= 0 else ((-d << 1) - 1)


def unzigzag(z: int) -> int:
    return (z >> 1) ^ -(z & 1)


def all_ints(vals) -> bool:
    return set(map(type, vals)) == {int}        # booleans are not integers here


def _zigzag(values) -> list:
    return [v << 1 if v >= 0 else (~v << 1) | 1 for v in values]     # zigzag(), inline: per column


def _diffs(values: list) -> list:
    return [b - a for a, b in zip([0] + values[:-1], values)]


_SAMPLE = 64        # values the mode is chosen on (a group rewritten per inbox file)


def pack_ints(values: list) -> bytes:
    head = values[:_SAMPLE + 1]
    mode = DELTA if (sum(map(int.bit_length, _zigzag(_diffs(head))))
                     < sum(map(int.bit_length, _zigzag(head)))) else PLAIN
    zs = _zigzag(_diffs(values) if mode == DELTA else values)
    width = max(1, (max(zs, default=0).bit_length() + 7) >> 3)
    if width <= 8:
        words = array("Q", zs).tobytes()
        if sys.byteorder == "big":
            words = b"".join(z.to_bytes(8, "little") for z in zs)
        planes = b"".join(words[b::8] for b in range(width))
    else:
        data = b"".join(z.to_bytes(width, "little") for z in zs)
        planes = b"".join(data[b::width] for b in range(width))
    return bytes((mode, width)) + planes


def unpack_ints(buf, n: int) -> list:
    """n values from pack_ints' bytes; ValueError if buf is not n of them."""
    if len(buf) < 2 or buf[0] not in (PLAIN, DELTA) or buf[1] < 1:
        raise ValueError("bad integer column")
    mode, width = buf[0], buf[1]
    if len(buf) != 2 + width * n:
        raise ValueError("integer column of the wrong length")
    wide = next((w for w in (1, 2, 4, 8) if w >= width), None) if sys.byteorder == "little" else None
    if wide is None:
        data = bytearray(width * n)
        for b in range(width):
            data[b::width] = buf[2 + b * n:2 + (b + 1) * n]
        zs = [int.from_bytes(data[i:i + width], "little") for i in range(0, len(data), width)]
    else:
        data = bytearray(wide * n)
        for b in range(width):        # the planes interleaved into machine words, in C
            data[b::wide] = buf[2 + b * n:2 + (b + 1) * n]
        zs = memoryview(data).cast(_CAST[wide]).tolist() if n else []
    vals = [(z >> 1) ^ -(z & 1) for z in zs]
    return list(accumulate(vals)) if mode == DELTA else vals


def presence(n: int, absent) -> bytes:
    """Bit i (bit i & 7 of byte i >> 3) set: record i has the value."""
    out = bytearray(b"\xff" * (n >> 3))
    if n & 7:
        out.append((1 << (n & 7)) - 1)
    for i in absent:
        out[i >> 3] &= ~(1 << (i & 7))
    return bytes(out)


def present_positions(bits, n: int) -> list:
    if len(bits) != (n + 7) >> 3:
        raise ValueError("presence bitmap of the wrong length")
    return [i for i in range(n) if bits[i >> 3] >> (i & 7) & 1]


# a column of values present in some records: [kind, data]
ANY, INTS, INT_LISTS = 0, 1, 2


def pack_values(vals: list) -> list:
    """The present values of a column: integers as one pack_ints, lists of integers of
    one length as one pack_ints per item, anything else as it is."""
    if vals:
        types = set(map(type, vals))
        if types == {int}:
            return [INTS, pack_ints(vals)]
        if types == {list} and len(set(map(len, vals))) == 1 and vals[0]:
            items = [list(t) for t in zip(*vals)]
            if all(all_ints(t) for t in items):
                return [INT_LISTS, [pack_ints(t) for t in items]]
    return [ANY, vals]


def unpack_values(col, n: int) -> list:
    kind, data = col
    if kind == INTS:
        return unpack_ints(data, n)
    if kind == INT_LISTS:
        if not isinstance(data, list) or not data:
            raise ValueError("bad list column")
        return [list(t) for t in zip(*(unpack_ints(d, n) for d in data))]
    if kind == ANY and isinstance(data, list) and len(data) == n:
        return data
    raise ValueError("bad value column")


def pack_extents(records_extents, sizes) -> bytes:
    """Every record's extents, one after the other: uvarint (2 x count + explicit), then
    per extent uvarint zigzag(position - end of the extent before) and uvarint length,
    but for the last extent when explicit is 0: its length is then the file's size less
    the other lengths. The first extent of the group is relative to 0."""
    out = bytearray()
    prev = 0
    for ext, size in zip(records_extents, sizes):
        n = len(ext)
        explicit = int(n > 0 and sum(ln for _, ln in ext) != size)
        put_uvarint(out, 2 * n + explicit)
        for k, (pos, ln) in enumerate(ext):
            put_uvarint(out, zigzag(pos - prev))
            if explicit or k < n - 1:
                put_uvarint(out, ln)
            prev = pos + ln
    return bytes(out)


def unpack_extents(buf, sizes) -> list:
    out = []
    p = prev = 0
    for size in sizes:
        c, p = get_uvarint(buf, p)
        n, explicit = c >> 1, c & 1
        ext, left = [], size
        for k in range(n):
            z, p = get_uvarint(buf, p)
            if explicit or k < n - 1:
                ln, p = get_uvarint(buf, p)
                left -= ln
            else:
                ln = left
                if ln < 0:
                    raise ValueError("extents longer than the file")
            pos = prev + unzigzag(z)
            ext.append((pos, ln))
            prev = pos + ln
        out.append(ext)
    if p != len(buf):
        raise ValueError("trailing bytes after the extents")
    return out
