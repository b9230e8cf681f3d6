"""Compaction: bringing a live store to its final form, a step at a time, while it is in
use (the mount runs it when idle; `stowfs compact` runs it to the end).

Each step is one write transaction and leaves a store that reads the same bytes:
- drop bytes no record uses any more (a fragment is rewritten with fewer ranges;
  positions never move, so no record changes);
- merge a block's fragments into one frame, and raise frames written at a low level to
  the compaction level (same decoded bytes), checked as stored (format 6);
- take the facts ingest left for later (token counts: latefacts.py) into the records;
- rewrite record groups and name pages at the compaction level;
- merge the anchor runs, without anchors in dropped bytes.
Finally, when no other process has the store open, a compacting copy gives the LMDB
file's free pages back to the disk.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Iterator, Optional

from .. import limits
from . import blocks, frames, latefacts, records
from .lmdbenv import meta_get, meta_put


def live_ranges(store) -> dict[int, list[tuple[int, int]]]:
    """{block id: sorted, merged block-relative live ranges} over every record."""
    B = store.block_size
    per: dict[int, list] = {}
    for r in store.iter_records():
        for pos, n in r.extents:
            while n > 0:
                bid, off = divmod(pos, B)
                take = min(n, B - off)
                per.setdefault(bid, []).append((off, off + take))
                pos += take
                n -= take
    out = {}
    for bid, iv in per.items():
        iv.sort()
        merged = []
        for a, b in iv:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out[bid] = [(a, b - a) for a, b in merged]
    return out


def _intersect(ranges, live) -> list[tuple[int, int]]:
    starts = [a for a, _ in live]
    out = []
    for start, length in ranges:
        end = start + length
        i = max(bisect_right(starts, start) - 1, 0)
        while i < len(live) and live[i][0] < end:
            a, b = max(start, live[i][0]), min(end, live[i][0] + live[i][1])
            if a < b:
                out.append((a, b - a))
            i += 1
    return out


def block_ids(store) -> list[int]:
    def work(txn):
        ids = []
        for k in store._blocks.cursor(txn).iternext(keys=True, values=False):
            bid = int.from_bytes(k, "big") >> 16
            if not ids or ids[-1] != bid:
                ids.append(bid)
        return ids
    return store._read(work)


def _slice(raw, ranges, keep) -> bytes:
    """The bytes of the `keep` ranges out of raw, which holds `ranges` concatenated."""
    starts, offs, acc = [], [], 0
    for s, n in ranges:
        starts.append(s)
        offs.append(acc)
        acc += n
    out = bytearray()
    for s, n in keep:
        i = bisect_right(starts, s) - 1
        p = offs[i] + s - starts[i]
        out += raw[p:p + n]
    return bytes(out)


def compact_block(store, bid: int, live: Optional[list], level: int) -> Optional[dict]:
    """One step: block bid as one frame at `level` holding only its live bytes (live=None:
    keep every byte). Returns what changed, or None when it was final already."""
    def plan(txn):
        """(fragments, their ranges, the ranges to keep), or None when the block is final
        already: known from the fragments' headers, nothing decoded."""
        frs = blocks.fragments(txn, store._blocks, bid)
        if not frs:
            return None
        ranges = [r for frag, _ in frs for r in frag.ranges]
        keep = ranges if live is None else _intersect(ranges, live)
        hd0 = frs[0][0].hd
        if len(frs) == 1 and keep == ranges and blocks.final(hd0, level, store.stored_check):
            return None
        return frs, ranges, keep

    # A pass over a compacted store finds every block final. Looked at in a read
    # transaction first: a write, even one that changes nothing, moves the store's
    # generation, and the mount then looks every file's record up again at its next
    # open (the first idle pass of a mount of all ShareGPT decoded its 8 blocks, 128 MiB,
    # and did that).
    if store._read(plan) is None:
        return None

    def work(txn):
        got = plan(txn)
        if got is None:
            return None
        frs, ranges, keep = got
        raw = bytearray()
        for frag, frame in frs:
            raw += store._reader.whole(frag, frame)
        old_bytes = sum(len(f) for _, f in frs)
        for frag, _ in frs:
            store._blocks.delete(txn, blocks.key_bytes(frag.key))
        new_bytes = 0
        if keep:
            body = _slice(raw, ranges, keep)
            merged = []
            for s, n in keep:
                if merged and merged[-1][0] + merged[-1][1] == s:
                    merged[-1] = (merged[-1][0], merged[-1][1] + n)
                else:
                    merged.append((s, n))
            key = blocks.frag_key(bid, 0)
            frame = blocks.encode_fragment(key, merged, body, level, store.stored_check)
            store._blocks.put(txn, blocks.key_bytes(key), frame)
            new_bytes = len(frame)
        st = meta_get(txn, store._meta, b"stream", {"end": 0, "epoch": 0})
        st["epoch"] += 1                 # a writer's cached open block is stale now
        meta_put(txn, store._meta, b"stream", st)
        return {"fragments": len(frs), "dropped": len(raw) - sum(n for _, n in keep),
                "bytes_before": old_bytes, "bytes_after": new_bytes}
    return store._write(work)


def rewrite_metadata(store, level: int) -> int:
    """Record groups and name pages at `level`, one transaction each kind."""
    packed = store._groups.packed

    def final_group(hd) -> bool:
        # a group of format 6's layout in a format-7 store is rewritten packed
        return hd.level >= level and (hd.extra == records.PACKED or not packed)

    def groups(txn):
        n = 0
        for gid in list(store._groups.all_ids(txn)):
            frame = store._groups.table.get(txn, records._KEY.pack(gid))
            if final_group(frames.header(frame, frames.GROUP, gid)):
                continue
            store._groups.put(txn, store._groups.load(txn, gid), gid, level)
            n += 1
        return n

    def names(txn):
        # a value in overflow pages takes whole pages, after a 16-byte page header
        return store._names.rewrite_all(txn, level, fit=store.env.stat()["psize"] - 16)

    def low(table, tag, key_of, final):
        def work(txn):
            for k, v in table.cursor(txn):
                hd = frames.header(v, tag, key_of(bytes(k)))
                if hd.codec != frames.RAW and not final(hd):
                    return True
            return False
        return store._read(work)
    from .names import frame_key
    n = 0
    if low(store._groups.table, frames.GROUP, lambda k: records._KEY.unpack(k)[0], final_group):
        n += store._write(groups)
    if low(store._names.table, frames.NAMES, frame_key, lambda hd: hd.level >= level):
        n += store._write(names)
    return n


def merge_anchors(store, live: dict) -> None:
    B = store.block_size

    def keep(pos):
        import numpy as np
        m = np.zeros(len(pos), bool)
        for i, p in enumerate(pos.tolist()):
            lv = live.get(p // B)
            if lv:
                off = p % B
                j = bisect_right([a for a, _ in lv], off) - 1
                m[i] = j >= 0 and off + 32 <= lv[j][0] + lv[j][1]
        return m

    def work(txn):
        idx = store.writer().index
        idx.begin(txn)
        idx.merge(txn, keep)
    store._write(work)


def steps(store, level: int = limits.LEVEL_COMPACT) -> Iterator[dict]:
    """Compaction as a sequence of steps (each already committed when yielded)."""
    live = live_ranges(store)
    end_block = store._read(lambda txn: meta_get(txn, store._meta, b"stream", {"end": 0}))["end"] // store.block_size
    dropped = 0
    for bid in block_ids(store):
        lv = live.get(bid, [])
        # the open block keeps its bytes past the last record (a writer may use them next)
        got = compact_block(store, bid, lv if bid != end_block else None, level)
        if got is not None:
            got["block"] = bid
            got["commits"] = 1
            dropped += got["dropped"]
            yield got
    for gid in latefacts.pending_groups(store):
        got = latefacts.fill_group(store, gid, level)
        if got is not None:
            yield got
    n = rewrite_metadata(store, level)
    if n:
        yield {"metadata_frames": n, "commits": 2}
    runs = store._read(lambda txn: store._tables["anchors"].count(txn))
    if runs > 1 or dropped:
        merge_anchors(store, live)
        yield {"anchors": True, "commits": 1}


def compact(store, level: int = limits.LEVEL_COMPACT, progress=None) -> dict:
    before = store.disk_bytes()
    frags_before = store.block_stats()["fragments"]
    dropped = rewritten = 0
    for st in steps(store, level):
        if "block" in st:
            rewritten += 1
            dropped += st["dropped"]
        if progress:
            progress(st)
    reclaimed = store.reclaim(slack=0.0)
    return {"disk_before": before, "disk_after": store.disk_bytes(),
            "blocks_before": frags_before, "blocks_after": store.block_stats()["fragments"],
            "blocks_rewritten": rewritten, "bytes_dropped": dropped,
            "free_pages_returned": reclaimed}
