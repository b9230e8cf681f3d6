"""stowfs.store.zstream: one zstd frame decoded in steps into a buffer made beforehand."""
from __future__ import annotations

import json

import pytest
import zstandard

from realdata import openai_form, sharegpt_records
from stowfs.store import zstream

pytestmark = pytest.mark.skipif(not zstream.available(), reason="the system's libzstd.so.1 is not there")


def _real(n: int = 400) -> bytes:
    return b"".join(json.dumps(openai_form(r)).encode() + b"\n" for r in sharegpt_records(n))


def _frame(raw: bytes, level: int = 9) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=1, write_content_size=1)
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def test_a_frame_fed_in_steps_decodes_into_the_buffer_and_each_step_is_final():
    raw = _real()
    comp = _frame(raw)
    out = bytearray(len(raw))
    d = zstream.Into(out, 26)
    seen, pos = [], 0
    try:
        for step in (1, 7, 4096, 65536, len(comp)):
            end = min(pos + step, len(comp))
            n = d.feed(comp, pos, end)
            pos = end
            assert n >= (seen[-1][0] if seen else 0)
            seen.append((n, bytes(out[:n])))
            if pos == len(comp):
                break
        assert d.finished and d.decoded == len(raw)
    finally:
        d.close()
    assert bytes(out) == raw
    for n, got in seen:                 # what a step handed out never changed after
        assert got == raw[:n]
    out += b"x"                         # closed: the buffer may be resized again
    assert len(out) == len(raw) + 1


def test_a_damaged_or_cut_frame_fails_or_stays_unfinished():
    raw = _real(100)
    comp = _frame(raw)
    bad = bytearray(comp)
    bad[len(bad) // 2] ^= 0xFF
    out = bytearray(len(raw))
    d = zstream.Into(out, 26)
    try:
        with pytest.raises(zstream.ZstreamError):
            d.feed(bytes(bad), 0, len(bad))
    finally:
        d.close()
    out = bytearray(len(raw))
    d = zstream.Into(out, 26)
    try:
        d.feed(comp, 0, len(comp) - 10)
        assert not d.finished and d.decoded < len(raw)
        with pytest.raises(zstream.ZstreamError):      # trailing bytes after the frame
            d.feed(comp + b"\0\0\0\0", len(comp) - 10, len(comp) + 4)
    finally:
        d.close()


def test_a_frame_larger_than_the_buffer_fails():
    raw = _real(100)
    comp = _frame(raw)
    out = bytearray(len(raw) - 1)
    d = zstream.Into(out, 26)
    try:
        with pytest.raises(zstream.ZstreamError):
            d.feed(comp, 0, len(comp))
    finally:
        d.close()
