"""The CLI's maintenance commands over the store: verify, gc, compact."""
from __future__ import annotations

from . import limits
from .store import Store
from .store import compaction
from .store.verify import verify as _verify


def verify(store: Store, progress: bool = False) -> dict:
    return _verify(store.path)


def gc(store: Store) -> dict:
    """Drop bytes no stored file uses (keeping each block's compression level)."""
    live = compaction.live_ranges(store)
    end_block = store._read(lambda txn: compaction.meta_get(txn, store._meta, b"stream", {"end": 0}))["end"] \
        // store.block_size
    dropped = rewritten = deleted = 0
    for bid in compaction.block_ids(store):
        if bid == end_block:
            continue
        lv = live.get(bid, [])
        got = compaction.compact_block(store, bid, lv, level=limits.LEVEL_INGEST)
        if got:
            dropped += got["dropped"]
            rewritten += 1 if got["bytes_after"] else 0
            deleted += 0 if got["bytes_after"] else 1
    compaction.merge_anchors(store, live)
    store.reclaim()
    return {"bytes_freed": dropped, "blocks_rewritten": rewritten, "blocks_deleted": deleted}


def compact(path, level: int | None = None, progress: bool = False) -> dict:
    with Store(path) as store:
        return compaction.compact(store, level or limits.LEVEL_COMPACT)
