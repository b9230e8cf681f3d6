"""Frames: the self-describing envelope of every stored value of format 3.

    frame = tag u8 | key u64be | codec u8 | level u8 | uvarint raw length
            | uvarint extra length | extra | hash 16 | payload

- tag says what the frame holds (BLOCK, GROUP, NAMES, ANCHORS). Tags are forever; the
  format-2 tags 0x00-0x1f stay reserved for `stowfs.legacy.codec`.
- key is the frame's own address (block id, group id, ...): a read checks that the
  frame it reached is the one it asked for, so a damaged LMDB key or a crossed pointer
  fails loudly instead of handing back another value.
- codec: RAW (payload is the bytes), ZSTD (one zstd frame) or ZSTD_STORED_CHECK (one
  zstd frame, checked as stored: format 6's blocks); level is informational (the
  background compactor raises frames written at a low level).
- extra: tag-specific bytes kept uncompressed (a block's live ranges).
- hash: BLAKE2b-128 over (tag, key, extra, decoded payload), or with ZSTD_STORED_CHECK
  over (tag, key, extra, stored payload). A decoded payload is checked after the decode:
  one pass over every decoded byte (a 16 MiB block: ~18 ms here, as long as the decode).
  A stored one is checked before it is decoded, over bytes several times fewer, and
  then whatever it decodes to is sound (a zstd frame decodes one way only): a read of a
  part of a block may take its bytes as soon as they are decoded. A frame that does not
  match raises Corrupt.

Every decode is bounded by limits.MAX_FRAME_RAW.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import struct
import threading
from dataclasses import dataclass

import zstandard as zstd

from .. import limits
from ..errors import Corrupt
from ..packing import get_uvarint, put_uvarint
from . import zstream

log = logging.getLogger(__name__)

BLOCK, GROUP, NAMES, ANCHORS = 0x20, 0x21, 0x22, 0x23
TAG_NAMES = {BLOCK: "block", GROUP: "record group", NAMES: "name page", ANCHORS: "anchor run"}
RAW, ZSTD, ZSTD_STORED_CHECK = 0, 1, 2
HASH_SIZE = 16
_KEY = struct.Struct(">Q")
_local = threading.local()


def content_hash(tag: int, key: int, extra: bytes, raw) -> bytes:
    h = hashlib.blake2b(digest_size=HASH_SIZE, person=b"stowfs-frame-3")
    h.update(bytes([tag]))
    h.update(_KEY.pack(key))
    h.update(extra)
    h.update(raw)
    return h.digest()


def compressor(level: int, size: int) -> zstd.ZstdCompressor:
    """A compressor with a window as large as the input (capped), so a whole block is one
    match window, and a checksum of its own. A thread keeps the last one of each level
    for inputs up to 128 KiB (records, name pages: at most 3 MiB of state); larger ones
    are made each time. The state of one sized for 1 MiB is 11 MiB at level 9 and 18 MiB
    at level 19, for a 16 MiB block 27 and 98 MiB, and a thread used to keep one per
    level and window size it had met (the daemon grew by tens of MiB while storing inbox
    files)."""
    wlog = max(10, min(limits.ZSTD_MAX_WINDOW_LOG, (max(size, 1) - 1).bit_length()))
    cache = _local.__dict__.setdefault("c", {})
    got = cache.get(level)
    if got is not None and got[0] == wlog:
        return got[1]
    params = zstd.ZstdCompressionParameters.from_level(
        level, window_log=wlog, write_checksum=1, write_content_size=1)
    c = zstd.ZstdCompressor(compression_params=params)
    if wlog <= 17:
        cache[level] = (wlog, c)
    else:
        cache.pop(level, None)
    return c


def decompressor() -> zstd.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstd.ZstdDecompressor(max_window_size=1 << limits.ZSTD_MAX_WINDOW_LOG)
    return d


def encode(tag: int, key: int, raw: bytes, level: int, extra: bytes = b"",
           extra_of=None) -> bytes:
    """A frame holding raw, compressed at level (0: stored raw). extra_of(payload, codec)
    gives the extra of a frame whose extra depends on its stored payload (a block's
    piece hashes); a zstd payload is then ZSTD_STORED_CHECK, its hash over the payload
    as stored."""
    if len(raw) > limits.MAX_FRAME_RAW:
        raise ValueError(f"frame of {len(raw)} bytes is over MAX_FRAME_RAW")
    payload, codec = raw, RAW
    if level > 0 and raw:
        comp = compressor(level, len(raw)).compress(raw)
        if len(comp) < len(raw):
            payload, codec = comp, ZSTD if extra_of is None else ZSTD_STORED_CHECK
    if extra_of is not None:
        extra = extra_of(payload, codec)
    head = bytearray([tag])
    head += _KEY.pack(key)
    head += bytes([codec, level if codec != RAW else 0])
    put_uvarint(head, len(raw))
    put_uvarint(head, len(extra))
    head += extra
    head += content_hash(tag, key, extra, raw if codec == ZSTD else payload)
    return bytes(head) + payload


@dataclass(frozen=True)
class Header:
    tag: int
    key: int
    codec: int
    level: int
    raw_len: int
    extra: bytes
    hash: bytes
    body: int          # offset of the payload in the frame


def header(frame, tag: int, key: int) -> Header:
    """Parse and check a frame's header: it must be a `tag` frame for `key`."""
    try:
        if frame is None:       # a key a cursor listed, which a lookup then did not find
            raise ValueError("listed but not found (the table's structure is damaged)")
        if len(frame) < 11 or frame[0] != tag:
            raise ValueError(f"tag 0x{frame[0] if frame else 0:02x}, expected 0x{tag:02x}")
        got = _KEY.unpack_from(frame, 1)[0]
        if got != key:
            raise ValueError(f"the frame says it is {got}")
        codec, level = frame[9], frame[10]
        raw_len, pos = get_uvarint(frame, 11)
        n_extra, pos = get_uvarint(frame, pos)
        extra = bytes(frame[pos:pos + n_extra])
        pos += n_extra
        h = bytes(frame[pos:pos + HASH_SIZE])
        pos += HASH_SIZE
        if codec not in (RAW, ZSTD, ZSTD_STORED_CHECK) or len(h) != HASH_SIZE or len(extra) != n_extra:
            raise ValueError("bad header")
        if raw_len > limits.MAX_FRAME_RAW:
            raise ValueError(f"declares {raw_len} bytes, over the limit")
        if codec == RAW and len(frame) - pos != raw_len:
            raise ValueError("raw payload of the wrong length")
    except (ValueError, IndexError, struct.error) as e:
        raise Corrupt(f"{TAG_NAMES.get(tag, hex(tag))} {key} is damaged: {e}") from None
    return Header(tag, key, codec, level, raw_len, extra, h, pos)


def decode(frame, tag: int, key: int) -> tuple[Header, bytes]:
    """The checked header and decoded payload of a frame."""
    hd = header(frame, tag, key)
    if hd.codec == ZSTD_STORED_CHECK:
        if not stored_matches(frame, hd):
            raise Corrupt(f"{TAG_NAMES.get(hd.tag, hex(hd.tag))} {hd.key} is damaged "
                          "(its stored payload does not match its hash)")
        raw = payload(frame, hd)
        if len(raw) != hd.raw_len:
            raise Corrupt(f"{TAG_NAMES.get(hd.tag, hex(hd.tag))} {hd.key} decodes to "
                          f"{len(raw)} bytes, not the {hd.raw_len} it declares")
        return hd, raw
    raw = payload(frame, hd)
    check(hd, raw)
    return hd, raw


def stored_matches(frame, hd: Header) -> bool:
    """Whether a ZSTD_STORED_CHECK frame's stored payload and extra match its hash."""
    return content_hash(hd.tag, hd.key, hd.extra, memoryview(frame)[hd.body:]) == hd.hash


def payload(frame, hd: Header) -> bytes:
    """A frame's payload, decoded in one call (not checked against its hash yet)."""
    body = memoryview(frame)[hd.body:]
    if hd.codec == RAW:
        return bytes(body)
    try:
        return decompressor().decompress(body, max_output_size=hd.raw_len)
    except zstd.ZstdError as e:
        raise Corrupt(f"{TAG_NAMES.get(hd.tag, hex(hd.tag))} {hd.key} does not decode: {e}") from None


def check(hd: Header, raw) -> None:
    if len(raw) != hd.raw_len or content_hash(hd.tag, hd.key, hd.extra, raw) != hd.hash:
        raise Corrupt(f"{TAG_NAMES.get(hd.tag, hex(hd.tag))} {hd.key} is damaged "
                      "(its content does not match its hash)")


def chunk_hashes(raw, step: int) -> bytes:
    """8-byte BLAKE2b of each `step`-byte piece of raw: what lets a partial decode check
    what it hands out before the whole frame is decoded."""
    mv = memoryview(raw)
    return b"".join(hashlib.blake2b(mv[i:i + step], digest_size=8).digest()
                    for i in range(0, len(raw), step))


class PartialDecoder:
    """Decodes a frame's payload a piece at a time, so a read near the start of a large
    block does not decode all of it. Bytes are handed out only once checked: each
    `step`-byte piece against its own 8-byte hash (`pieces`), the whole against the
    frame hash when the end is reached. A damaged piece raises Corrupt. A whole that
    does not match while every piece does is `unmatched`, not an error here: the payload
    is sound, but the frame's `extra` (a fragment's ranges) or its hash is not, and only
    what a file's own checksum vouches for may be taken from it (the caller's part).

    A ZSTD_STORED_CHECK frame is checked as stored, before anything is decoded: the
    whole against the frame hash (then every decoded byte is sound, and `whole_ok` holds
    from the start), else each `step`-byte piece of the stored payload against its hash,
    and only the sound pieces before the first damaged one are ever decoded."""

    def __init__(self, frame, hd: Header, pieces: bytes, step: int):
        self.hd = hd
        self.buf = bytearray()
        self.checked = 0                 # bytes of buf checked so far
        self.lock = threading.Lock()     # readers of one cached block take turns
        self._pieces, self._step = pieces, step
        stored = len(frame) - hd.body
        if len(pieces) != 8 * (-(-(stored if hd.codec == ZSTD_STORED_CHECK else hd.raw_len) // step)):
            raise Corrupt(f"{TAG_NAMES[hd.tag]} {hd.key} is damaged (piece hashes)")
        self._frame = frame
        self._pos = hd.body
        self._whole = False              # the whole payload checked against the frame hash
        self._unmatched = False          # ... and found not to match it
        self._reader = None              # the stream decoder, made when first needed
        self.ahead = None                # an Event while another thread decodes the whole (adopt)
        self._steps = None               # a Condition on lock while that thread decodes in steps
        self.hashing = None              # an Event while that thread checks the whole it adopted
        self._stored = self._sound = stored     # stored payload bytes; those a decode may take
        if hd.codec == ZSTD_STORED_CHECK:
            self._check_stored(memoryview(frame)[hd.body:])

    def _check_stored(self, body) -> None:
        """A ZSTD_STORED_CHECK frame: the whole stored payload against the frame hash (one
        pass over the compressed bytes), else piece by piece, how far it is sound."""
        if content_hash(self.hd.tag, self.hd.key, self.hd.extra, body) == self.hd.hash:
            self._whole = True
            return
        step, sound = self._step, 0
        for a in range(0, len(body), step):
            i = a // step
            if hashlib.blake2b(body[a:a + step], digest_size=8).digest() != self._pieces[8 * i:8 * i + 8]:
                break
            sound = min(a + step, len(body))
        self._sound = sound
        self._unmatched = sound == len(body)

    def stream_state(self) -> int:
        """Memory the stream decoder holds: its window, which zstd sizes to the payload
        (the frame says how large that is) and fills as it decodes, so its resident part
        is about what was decoded so far."""
        return len(self.buf) if self._reader is not None else 0

    @property
    def whole_ok(self) -> bool:
        """The whole payload is decoded and matched the frame hash; for a frame checked as
        stored, the stored payload did (from the start): either way its `extra` is sound,
        and every byte of buf up to `checked`."""
        return self._whole

    @property
    def unmatched(self) -> bool:
        """The whole payload is decoded and does not match the frame hash (see the class;
        whether its pieces all check is known once need() reached the end)."""
        return self._unmatched

    @property
    def done(self) -> bool:
        """Nothing left to decode (what is not checked yet is checked as it is needed)."""
        return self._frame is None

    def need(self, end: int) -> None:
        """Decode and check at least up to offset end of the payload (or all of it).
        Only the pieces that reach below end are checked here: a damaged piece past what
        a read needs fails the read that needs it, not this one (else whether a file
        reads would depend on the order files are read in).

        Streaming keeps the decoder's window (as large as the block) beside the bytes
        decoded so far: up to twice the block in memory. So once a read needs more than
        a quarter of the payload, the rest is decoded in one call into one buffer, and
        the stream and the frame are let go.

        While another thread decodes the whole (blocks.decode_ahead), a read past what
        is checked waits for its result, whatever it needs: decoding on beside it would
        hold the stream's window and its output next to that thread's whole copy (a cold
        cat of the sessions corpus peaked 16 MiB higher), for bytes the whole brings a
        few milliseconds later. Call holding the lock: the waiting lets it go, as that
        thread takes it to hand its result over."""
        raw_len = self.hd.raw_len
        end = min(end, raw_len)
        if self.checked >= end:
            return
        if self.ahead is not None and self.hd.codec != RAW and self._frame is not None:
            if self._steps is not None:
                while self._steps is not None and self.checked < end:
                    self._steps.wait()
            else:
                self._wait(self.ahead)
            if self.checked >= end:
                return
        if self.hd.codec == ZSTD_STORED_CHECK:
            self._need_stored(end)
            return
        self._decode_to(end, self._want(end))
        if end == raw_len and not self._whole and self._frame is None and len(self.buf) == raw_len:
            if self.hashing is not None:     # the decode-ahead thread is checking the whole
                self._wait(self.hashing)
                if self._whole:
                    return
            # the whole at once, one pass over it (not every piece and then the whole);
            # if it does not match, the pieces say whether the payload is damaged
            if not self._unmatched and self._matches(self.buf):
                self.checked, self._whole = raw_len, True
                return
        self._check_pieces(end)
        if self.checked < end:
            raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} is truncated")
        if self.checked == raw_len and not self._whole and not self._unmatched:
            if self._matches(self.buf):
                self._whole = True
                self._frame = self._reader = None

    def _decode_to(self, end: int, want: int) -> None:
        """Decode until buf holds want bytes or the frame is used up: the rest at once when
        decodes_whole(end), else a step of the stored frame at a time, never past the
        stored bytes found sound (a frame checked as stored with a damaged piece)."""
        stop = self.hd.body + self._sound
        try:
            if self.decodes_whole(end):
                self._decode_rest()
            while len(self.buf) < want and self._frame is not None:
                if self._pos >= stop:
                    if stop < len(self._frame):
                        raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} is damaged at offset "
                                      f"{self._sound} of its stored payload")
                    break
                if self.hd.codec == RAW:
                    self.buf += memoryview(self._frame)[self._pos:]
                    self._pos = len(self._frame)
                else:
                    if self._reader is None:
                        self._reader = zstd.ZstdDecompressor(
                            max_window_size=1 << limits.ZSTD_MAX_WINDOW_LOG).decompressobj()
                    chunk = memoryview(self._frame)[self._pos:min(self._pos + limits.PARTIAL_DECODE_STEP, stop)]
                    self._pos += len(chunk)
                    self.buf += self._reader.decompress(chunk)
                if len(self.buf) > self.hd.raw_len:
                    raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} decodes to more than it declares")
            if self._frame is not None and self._pos >= len(self._frame):
                # all of it decoded (a step of highly repetitive input decodes to MBs):
                # the stream, its window and the frame are let go
                self._frame = self._reader = None
        except zstd.ZstdError as e:
            raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} does not decode: {e}") from None

    def _need_stored(self, end: int) -> None:
        """need() of a ZSTD_STORED_CHECK frame: whatever is decoded is checked."""
        self._decode_to(end, end)
        if self._frame is None and len(self.buf) != self.hd.raw_len:
            raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} decodes to {len(self.buf)} bytes, "
                          f"not the {self.hd.raw_len} it declares")
        self.checked = len(self.buf)
        if self.checked < end:
            raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} is truncated")

    def _matches(self, raw) -> bool:
        """Whether raw, the whole payload, matches the frame hash (else: unmatched)."""
        if len(raw) == self.hd.raw_len \
                and content_hash(self.hd.tag, self.hd.key, self.hd.extra, raw) == self.hd.hash:
            return True
        self._unmatched = True
        return False

    def _wait(self, event) -> None:
        """Wait for the decode-ahead thread's event, letting the lock go meanwhile (that
        thread takes it to hand its result over). Called holding the lock."""
        self.lock.release()
        try:
            event.wait()
        finally:
            self.lock.acquire()

    def _want(self, end: int) -> int:
        """What need(end) decodes to: whole pieces, as each is checked whole (a frame
        checked as stored: end)."""
        if self.hd.codec == ZSTD_STORED_CHECK:
            return min(end, self.hd.raw_len)
        return min(-(-min(end, self.hd.raw_len) // self._step) * self._step, self.hd.raw_len)

    def decodes_whole(self, end: int) -> bool:
        """Whether need(end) decodes the rest of the payload in one call (into a new
        buffer as large as the payload) rather than a step further along the stream."""
        return (self.hd.codec != RAW and self._frame is not None and self.checked < end
                and self._want(end) > self.hd.raw_len // 4 and self._all_sound())

    def _all_sound(self) -> bool:
        return self._sound == self._stored

    def frame_left(self):
        """The compressed frame while some of it is not decoded yet (else None; also for
        a frame checked as stored with a damaged piece: only its sound part is decoded)."""
        if self.hd.codec == RAW or self._frame is None or (self.hd.codec == ZSTD and self._whole):
            return None
        return self._frame if self._all_sound() else None

    def adopt(self, raw) -> bool:
        """Take raw, the whole payload decoded elsewhere (blocks.decode_ahead, not
        holding the lock), in place of the stream. Its pieces are checked as reads reach
        them, as the stream's are (whole_checked spares that). Refused (False) when
        nothing is left to decode, or raw is not as long as declared or does not hold
        what was handed out. Call holding the lock."""
        if self._frame is None or len(raw) != self.hd.raw_len \
                or not raw.startswith(memoryview(self.buf)[:self.checked]):
            return False
        self.buf = raw
        self._frame = self._reader = None
        if self.hd.codec == ZSTD_STORED_CHECK:     # decoded from stored bytes found sound
            self.checked = self.hd.raw_len
        return True

    def may_step(self) -> bool:
        """Whether decode_in_steps would decode this frame: checked as stored and found
        sound, nothing of it decoded yet, libzstd there."""
        return (self.hd.codec == ZSTD_STORED_CHECK and self._whole and isinstance(self._frame, bytes)
                and self.hd.raw_len > 0 and not self.buf and self._reader is None
                and zstream.available())

    @property
    def fixed(self) -> bool:
        """buf never changes size, nor a byte once checked (decoded in steps into a map
        of the payload's size): a view of it may be handed out instead of a copy."""
        return isinstance(self.buf, mmap.mmap)

    def begin_ahead(self, steps_only: bool = False):
        """Mark the frame as decoded by the decode-ahead thread (blocks.decode_ahead),
        holding the lock: from now on a read that would decode it waits for that thread
        (need): for the step that reaches its end if the frame is one decode_in_steps
        decodes, else for the whole. Returns the Event set when that thread is done, or
        None when there is nothing to decode ahead (decoded, or being decoded ahead
        already; with steps_only, also a frame not decoded in steps)."""
        if self.frame_left() is None or self.ahead is not None:
            return None
        steps = self.may_step()
        if steps_only and not steps:
            return None
        self.ahead = threading.Event()
        if steps:
            self._steps = threading.Condition(self.lock)
        return self.ahead

    def cancel_ahead(self):
        """begin_ahead undone, holding the lock (the thread will not run): the reads
        waiting go on and decode for themselves. Returns the Event to set."""
        ahead, self.ahead = self.ahead, None
        steps, self._steps = self._steps, None
        if steps is not None:
            steps.notify_all()
        return ahead

    def decode_in_steps(self) -> bool:
        """The decode-ahead thread's decode of a frame planned so (begin_ahead): into a
        buffer as long as the payload, from PARTIAL_DECODE_STEP stored bytes at a time
        (doubling up to AHEAD_STEP_MAX: each step takes the GIL back once), each step's bytes
        handed out as soon as it is decoded (zstream.py). What it decodes is sound, as
        every decode of a stored payload that matched. Returns False, having done
        nothing, for a frame begin_ahead did not plan so: then decode it whole. If the
        decode fails, the reads start again from the beginning on their own, and meet
        the error. Call with self.ahead set (no read decodes meanwhile), not holding
        the lock."""
        with self.lock:
            if self._steps is None:
                return False
        frame, hd = self._frame, self.hd
        ok, into = False, None
        try:
            # an anonymous map, not a bytearray: bytearray(n) zeroes all of it holding
            # the GIL (16 MiB: ~5 ms in which the thread answering requests waited);
            # a map's pages are zero as zstd first writes them, without the GIL
            out = mmap.mmap(-1, hd.raw_len, flags=mmap.MAP_PRIVATE)
            with self.lock:
                self.buf, self.checked = out, 0
            into = zstream.Into(out, limits.ZSTD_MAX_WINDOW_LOG)
            pos, step = hd.body, limits.PARTIAL_DECODE_STEP
            while pos < len(frame):
                nxt = min(pos + step, len(frame))
                step = min(2 * step, limits.AHEAD_STEP_MAX)
                n = into.feed(frame, pos, nxt)
                pos = nxt
                with self.lock:
                    self.checked = n
                    self._steps.notify_all()
            ok = into.finished and into.decoded == hd.raw_len
            if not ok:
                log.debug("%s %d decodes to %d bytes in steps, not %d", TAG_NAMES[hd.tag], hd.key,
                          into.decoded, hd.raw_len)
        except zstream.ZstreamError as e:
            log.debug("%s %d does not decode in steps: %s", TAG_NAMES[hd.tag], hd.key, e)
        finally:
            if into is not None:
                into.close()
            with self.lock:
                steps, self._steps = self._steps, None
                if ok:
                    self.checked = hd.raw_len
                    self._frame = self._reader = None
                else:                    # the reads decode it themselves, from the start
                    self.buf, self.checked = bytearray(), 0
                steps.notify_all()
        return True

    def whole_checked(self, raw) -> None:
        """raw, adopted, was found equal to the frame hash: every piece is checked. Call
        holding the lock."""
        if self.buf is raw and not self._whole:
            self.checked, self._whole = self.hd.raw_len, True

    def _decode_rest(self) -> None:
        self._reader = None             # the stream's window goes before the whole is made
        raw = payload(self._frame, self.hd)
        if len(raw) != self.hd.raw_len:
            raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} decodes to {len(raw)} bytes, "
                          f"not the {self.hd.raw_len} it declares")
        if not raw.startswith(memoryview(self.buf)[:self.checked]):     # what was handed out
            raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} decodes two ways")
        self.buf = raw
        self._frame = self._reader = None
        if self.hd.codec == ZSTD_STORED_CHECK:     # decoded from stored bytes found sound
            self.checked = self.hd.raw_len
            return
        # One pass of the frame hash checks every piece at once (the pieces were a second
        # pass over the whole block). If it fails, the pieces say which part is damaged:
        # a read of the parts that are not still succeeds.
        if self._matches(raw):
            self.checked = self.hd.raw_len
            self._whole = True

    def _check_pieces(self, end: int) -> None:
        step = self._step
        while True:
            a = self.checked
            b = min(a + step, self.hd.raw_len)
            if b > len(self.buf) or a >= b or a >= end:
                return
            i = a // step
            if hashlib.blake2b(memoryview(self.buf)[a:b], digest_size=8).digest() != self._pieces[8 * i:8 * i + 8]:
                raise Corrupt(f"{TAG_NAMES[self.hd.tag]} {self.hd.key} is damaged at offset {a}")
            self.checked = b
