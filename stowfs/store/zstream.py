"""Decoding one zstd frame into a buffer made beforehand, a step at a time, with nothing
beside it: the decode-ahead thread hands out a block's first bytes while it decodes the
rest (blocks._decode_whole), without a window next to the output.

python-zstandard decodes a frame either in one call (nothing is usable until all of it
is decoded: ~18 ms for a 16 MiB block, which a cold reader waited for) or as a stream
whose window, as large as the block, sits beside the bytes decoded so far (twice the
block in memory). libzstd's streaming decoder with ZSTD_d_stableOutBuffer writes into
the caller's buffer and uses that buffer as its window, so decoding in steps costs what
decoding in one call does. The binding does not expose that parameter, so this module
calls the system's libzstd (libzstd1, which dpkg itself depends on) through ctypes; the
calls run without the GIL. Without the library, `available()` is False and callers
decode as before.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

_D_WINDOW_LOG_MAX = 100             # ZSTD_d_windowLogMax
_D_STABLE_OUT_BUFFER = 1001         # ZSTD_d_stableOutBuffer (ZSTD_d_experimentalParam2)


class ZstreamError(Exception):
    """The frame does not decode (the caller says which frame)."""


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


def _load() -> Optional[ctypes.CDLL]:
    for name in ("libzstd.so.1", ctypes.util.find_library("zstd")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.ZSTD_versionNumber.restype = ctypes.c_uint
            if lib.ZSTD_versionNumber() < 10404:     # ZSTD_d_stableOutBuffer: 1.4.4
                continue
            lib.ZSTD_createDCtx.restype = ctypes.c_void_p
            lib.ZSTD_createDCtx.argtypes = []
            lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
            lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
            lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
            lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OutBuffer),
                                                  ctypes.POINTER(_InBuffer)]
            lib.ZSTD_decompressStream.restype = ctypes.c_size_t
            lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
            lib.ZSTD_isError.restype = ctypes.c_uint
            lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
            lib.ZSTD_getErrorName.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


_lib = _load()


def available() -> bool:
    return _lib is not None


class Into:
    """Decodes one zstd frame, fed a piece at a time (`feed`), into out, a writable
    buffer (a bytearray, or the anonymous map PartialDecoder.decode_in_steps uses) as
    long as the frame decodes to. `decoded` is how much of out holds decoded bytes; they
    never change once written. `close()` gives the decoder back (also after an error);
    out may be resized or closed only after it."""

    def __init__(self, out, window_log_max: int):
        if _lib is None:
            raise ZstreamError("libzstd is not available")
        self._dctx = _lib.ZSTD_createDCtx()
        if not self._dctx:
            raise MemoryError("ZSTD_createDCtx")
        self._out_array = (ctypes.c_char * max(len(out), 1)).from_buffer(out) if out else None
        self._out = _OutBuffer(ctypes.addressof(self._out_array) if out else None, len(out), 0)
        self.finished = False
        try:
            self._set(_D_STABLE_OUT_BUFFER, 1)
            self._set(_D_WINDOW_LOG_MAX, window_log_max)
        except Exception:
            self.close()
            raise

    def _set(self, param: int, value: int) -> None:
        r = _lib.ZSTD_DCtx_setParameter(self._dctx, param, value)
        if _lib.ZSTD_isError(r):
            raise ZstreamError(_lib.ZSTD_getErrorName(r).decode())

    @property
    def decoded(self) -> int:
        return self._out.pos

    def feed(self, data: bytes, start: int, end: int) -> int:
        """Decode data[start:end] (data: bytes, kept alive by the caller meanwhile);
        returns `decoded`. Raises ZstreamError if the frame does not decode, or goes on
        past its end."""
        if self._dctx is None:
            raise ZstreamError("the decoder is closed")
        if self.finished and end > start:
            raise ZstreamError("bytes after the end of the frame")
        base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        inb = _InBuffer(base + start, end - start, 0)
        while inb.pos < inb.size:
            r = _lib.ZSTD_decompressStream(self._dctx, ctypes.byref(self._out), ctypes.byref(inb))
            if _lib.ZSTD_isError(r):
                raise ZstreamError(_lib.ZSTD_getErrorName(r).decode())
            if r == 0:                  # the frame is complete (and its checksum matched)
                self.finished = True
                if inb.pos < inb.size:
                    raise ZstreamError("bytes after the end of the frame")
                break
        return self._out.pos

    def close(self) -> None:
        if self._dctx is not None:
            _lib.ZSTD_freeDCtx(self._dctx)
            self._dctx = None
        self._out_array = None          # the buffer may be resized again
