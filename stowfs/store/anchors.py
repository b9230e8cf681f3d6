"""The dedup index: content-defined anchors of the stream, so a long repeat of bytes
stored before (a history resent in every logged request, a session copied as it grew,
the same file under two names) is found and stored once.

An anchor is a position whose 32-byte window hashes to a value with its top
ANCHOR_BITS bits zero, about one every 2**ANCHOR_BITS bytes; the same content has its
anchors in the same places wherever it occurs. The index maps the 32-bit key of each
anchor's window to the stream position where that window was first stored. At ingest,
a new file's anchors are looked up; each hit is checked byte for byte and extended in
both directions (ingest.py), so a match is exact and as long as the repeat really is.
Short repeats (< MIN_MATCH) are left to zstd, which sees them inside a block.

The window hash is a position-weighted sum of a fixed random table, computed for every
position at once with numpy prefix sums (h_i = sum_{j<W} j * T[b_{i+j}]).

Stored form (table `anchors`): runs, one value each, key u64be run id,
value frame(tag ANCHORS, run id, payload = n x u32 key (sorted) | n x 5-byte position
(little-endian)). A writer appends one run per transaction with what it stored; runs
are merged into one when there are more than ANCHOR_RUNS_MAX, and rebuilt without
anchors in dropped bytes by the compactor. The index is derived data: `verify` and the
compactor can rebuild it from the stream.
"""
from __future__ import annotations

import hashlib
import struct

from .. import limits
from ..errors import Corrupt
from . import frames

class _Numpy:
    """numpy, imported at first use: a mount that only reads never needs it (15 MiB
    resident). The first attribute taken replaces this stand-in with the module."""

    def __getattr__(self, name):
        import numpy
        globals()["np"] = numpy
        return getattr(numpy, name)


np = _Numpy()


def preload() -> None:
    """Import numpy now (a process about to fork workers that will find anchors)."""
    np.zeros

W = limits.ANCHOR_WINDOW
_KEY = struct.Struct(">Q")
_MUL = _T = _IDX = None


def _table():
    raw = b"".join(hashlib.blake2b(bytes([i]), digest_size=8, person=b"stowfs-anchor").digest()
                   for i in range(256))
    return np.frombuffer(raw, dtype="<u8").copy()


def find(data, bits: int = limits.ANCHOR_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(positions int64, keys uint32) of data's anchors, in order.

    Each pass is written into a buffer made before (out=), and the top-bits test is one
    comparison: the passes over every position are most of an ingest worker's time
    here (api-log: 0.20 -> 0.14 s, the same anchors)."""
    global _MUL, _T, _IDX
    if _T is None:
        _MUL, _T = np.uint64(0x9E3779B97F4A7C15), _table()
        _IDX = np.arange(limits.ANCHOR_SCAN_CHUNK + W, dtype=np.uint64)
    n = len(data)
    if n < W:
        return np.zeros(0, np.int64), np.zeros(0, np.uint32)
    pos_out, key_out = [], []
    step = limits.ANCHOR_SCAN_CHUNK
    below = np.uint64(1 << (64 - bits))         # top `bits` bits zero
    buf = np.frombuffer(data, dtype=np.uint8)
    with np.errstate(over="ignore"):
        for lo in range(0, n - W + 1, step):
            hi = min(n, lo + step + W - 1)
            size = hi - lo
            idx = _IDX[:size]
            v = _T[buf[lo:hi]]
            s1 = np.empty(size + 1, np.uint64)
            s1[0] = 0
            np.cumsum(v, out=s1[1:])
            np.multiply(v, idx, out=v)
            s2 = np.empty(size + 1, np.uint64)
            s2[0] = 0
            np.cumsum(v, out=s2[1:])
            m = size - W + 1
            # h_i = (s2[i+W] - s2[i]) - i * (s1[i+W] - s1[i])
            h = np.subtract(s2[W:W + m], s2[:m])
            t = np.subtract(s1[W:W + m], s1[:m])
            np.multiply(t, idx[:m], out=t)
            np.subtract(h, t, out=h)
            np.multiply(h, _MUL, out=h)
            sel = np.flatnonzero(h < below)
            if len(sel):
                pos_out.append(sel.astype(np.int64) + lo)
                key_out.append((h[sel] >> np.uint64(16)).astype(np.uint32))
    if not pos_out:
        return np.zeros(0, np.int64), np.zeros(0, np.uint32)
    pos = np.concatenate(pos_out)
    keys = np.concatenate(key_out)
    # a run of one repeated byte makes every position there an anchor: keep one per gap
    keep = np.ones(len(pos), bool)
    keep[1:] = np.diff(pos) >= limits.ANCHOR_MIN_GAP
    return pos[keep], keys[keep]


PLANES = b"\x01"      # the frame's extra for the format-5 layout (see below)


def encode_run(run_id: int, keys: np.ndarray, positions: np.ndarray, planes: bool = False) -> bytes:
    """A run's frame. Format 4 layout (extra empty, stored raw): n x u32le key (sorted)
    then n x 5-byte little-endian position, in key order. planes (format 5, extra
    PLANES, zstd): the same numbers with each key as its difference from the key
    before, cut into byte planes (every number's byte 0, then every byte 1, ...): the
    high bytes of sorted keys and of positions repeat, and compress (api-log's index:
    9,918 B raw, 6,673 B so)."""
    order = np.argsort(keys, kind="stable")
    k = keys[order].astype("<u4")
    p = positions[order].astype("<u8").view(np.uint8).reshape(-1, 8)[:, :5]
    if not planes:
        return frames.encode(frames.ANCHORS, run_id, k.tobytes() + p.tobytes(), 0)
    d = np.diff(k.astype(np.int64), prepend=0).astype("<u4")
    raw = d.view(np.uint8).reshape(-1, 4).T.tobytes() + p.T.tobytes()
    return frames.encode(frames.ANCHORS, run_id, raw, limits.LEVEL_COMPACT, PLANES)


def decode_run(frame, run_id: int) -> tuple[np.ndarray, np.ndarray]:
    hd, raw = frames.decode(frame, frames.ANCHORS, run_id)
    if len(raw) % 9 or hd.extra not in (b"", PLANES):
        raise Corrupt(f"anchor run {run_id} is damaged (length)")
    n = len(raw) // 9
    if hd.extra == PLANES:
        b = np.frombuffer(raw, dtype=np.uint8)
        d = b[:4 * n].reshape(4, n).T.copy().view("<u4").reshape(n)
        keys = np.cumsum(d, dtype=np.uint64).astype(np.uint32)
        p5 = b[4 * n:].reshape(5, n).T
    else:
        keys = np.frombuffer(raw, dtype="<u4", count=n).astype(np.uint32)
        p5 = np.frombuffer(raw, dtype=np.uint8, offset=4 * n).reshape(n, 5)
    if n and np.any(keys[1:] < keys[:-1]):
        raise Corrupt(f"anchor run {run_id} is damaged (order)")
    p8 = np.zeros((n, 8), np.uint8)
    p8[:, :5] = p5
    return keys, p8.view("<u8").reshape(n).astype(np.int64)


class Index:
    """The anchor runs of a store, loaded once and kept in step with it, plus the
    anchors this writer added and has not saved yet."""

    def __init__(self, table, planes: bool = False):
        """planes: write runs in the format-5 layout (encode_run)."""
        self.table, self.planes = table, planes
        self.runs: dict[int, tuple[bytes, np.ndarray, np.ndarray]] = {}
        self.pending: dict[int, int] = {}
        self._added: list[int] = []     # pending's keys in the order added (mark/rollback)

    def begin(self, txn) -> None:
        """Bring the loaded runs in step with the store."""
        seen = set()
        for k, v in self.table.cursor(txn):
            run_id = _KEY.unpack(k)[0]
            seen.add(run_id)
            hd = frames.header(v, frames.ANCHORS, run_id)
            have = self.runs.get(run_id)
            if have is None or have[0] != hd.hash:
                keys, pos = decode_run(v, run_id)
                self.runs[run_id] = (hd.hash, keys, pos)
        for gone in set(self.runs) - seen:
            del self.runs[gone]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """For each key, a stored position with that key, or -1."""
        out = np.full(len(keys), -1, np.int64)
        for _, rk, rp in self.runs.values():
            if not len(rk) or not len(keys):
                continue
            i = np.searchsorted(rk, keys)
            i[i >= len(rk)] = len(rk) - 1
            hit = (rk[i] == keys) & (out < 0)
            out[hit] = rp[i[hit]]
        return out

    def add(self, key: int, pos: int) -> None:
        if key not in self.pending:
            self.pending[key] = pos
            self._added.append(key)

    def mark(self) -> int:
        """A point to roll back to: how many anchors are pending (a copy of them, taken
        before every file of a batch, grew with the batch: 0.3 s of storing 5,000 chats).
        Marks are taken within one transaction, before it saves."""
        return len(self._added)

    def rollback(self, m: int) -> None:
        for key in self._added[m:]:
            del self.pending[key]
        del self._added[m:]

    def save(self, txn) -> None:
        if not self.pending:
            return
        cur = self.table.cursor(txn)
        run_id = _KEY.unpack(cur.key())[0] + 1 if cur.last() else 0
        keys = np.fromiter(self.pending.keys(), np.uint32, len(self.pending))
        pos = np.fromiter(self.pending.values(), np.int64, len(self.pending))
        frame = encode_run(run_id, keys, pos, self.planes)
        self.table.put(txn, _KEY.pack(run_id), frame)
        k2, p2 = decode_run(frame, run_id)
        self.runs[run_id] = (frames.header(frame, frames.ANCHORS, run_id).hash, k2, p2)
        self.pending, self._added = {}, []
        if len(self.runs) > limits.ANCHOR_RUNS_MAX:
            # tiered: merge the small runs into one, leave the largest (what compaction
            # merged) alone, so a small ingest never rewrites the whole index
            biggest = max(self.runs, key=lambda r: len(self.runs[r][1]))
            self.merge(txn, only=[r for r in self.runs if r != biggest])

    def merge(self, txn, keep=None, only=None) -> None:
        """Rewrite every run (or the runs `only`) as one (keep(positions) -> bool mask
        drops anchors)."""
        ids = sorted(self.runs if only is None else only)
        if not ids:
            return
        keys = np.concatenate([self.runs[r][1] for r in ids])
        pos = np.concatenate([self.runs[r][2] for r in ids])
        if keep is not None and len(pos):
            m = keep(pos)
            keys, pos = keys[m], pos[m]
        # one position per key: the earliest stored
        order = np.lexsort((pos, keys))
        keys, pos = keys[order], pos[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        keys, pos = keys[first], pos[first]
        top = max(self.runs)
        for run_id in ids:
            self.table.delete(txn, _KEY.pack(run_id))
            del self.runs[run_id]
        run_id = top + 1
        frame = encode_run(run_id, keys, pos, self.planes)
        self.table.put(txn, _KEY.pack(run_id), frame)
        k2, p2 = decode_run(frame, run_id)
        self.runs[run_id] = (frames.header(frame, frames.ANCHORS, run_id).hash, k2, p2)
