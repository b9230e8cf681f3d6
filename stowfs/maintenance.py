"""Whole-store work: verify, gc and compact. Each walks the store once and reports numbers."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import lmdb

from . import limits
from .codec import (build_pack, decode_frame, encode_frame, frame_dict_id, frame_raw_size,
                    parse_pack, segment_hash)
from .errors import Corrupt, StowError
from .packing import pack
from . import neardup
from .store import (_NEAR_PREFIX, Store, ViewReader, _seg_delta, _seg_fields, _seg_parse,
                    _seg_value, _seg_with, _u64, _U64)


def _say(enabled: bool, msg: str) -> None:
    if enabled and sys.stderr.isatty():
        sys.stderr.write(f"\r{msg:<70}")
        sys.stderr.flush()


def verify(store: Store, progress: bool = False) -> dict:
    """Check that every block decodes, every segment matches its hash, every manifest's
    segments exist and are counted, and every file rebuilds to its recorded SHA-256."""
    problems: list[str] = []
    damaged: set[str] = set()
    bad_segments: set[bytes] = set()
    by_block: dict[int, list[tuple[int, bytes, int]]] = defaultdict(list)
    stored_refs: dict[bytes, int] = {}
    deltas: dict[bytes, bytes] = {}              # delta segment -> its base
    counted: dict[bytes, int] = defaultdict(int)

    def load_segments(txn):
        for h, v in txn.cursor(db=store._segs):
            try:
                (block, slot, refs, _kind, length), delta = _seg_parse(v)
            except (Corrupt, ValueError) as e:
                problems.append(f"segment {h.hex()}: index entry does not decode: {e}")
                bad_segments.add(h)
                continue
            by_block[block].append((slot, h, length))
            stored_refs[h] = refs
            if delta is not None:
                deltas[h] = delta[1]
                counted[delta[1]] += 1           # a delta holds a reference on its base
    store._read(load_segments)

    block_ids = store._read(lambda txn: [_U64.unpack(k)[0] for k in txn.cursor(db=store._blocks).iternext(values=False)])
    for n, block_id in enumerate(block_ids):
        _say(progress, f"verify: block {n + 1}/{len(block_ids)}")

        def check(txn, block_id=block_id):
            frame = txn.get(_u64(block_id), db=store._blocks)
            did = frame_dict_id(frame)
            if did is not None:
                store._dicts.ensure(did, lambda: store._dict_bytes(txn, did))
            raw = decode_frame(frame, store._dicts)
            return raw, parse_pack(raw)
        try:
            raw, offs = store._read(check)
        except Corrupt as e:
            problems.append(f"block {block_id}: {e}")
            bad_segments.update(h for _, h, _ in by_block.get(block_id, ()))
            continue
        for slot, h, length in by_block.get(block_id, ()):
            if h in deltas:
                continue                         # checked below, once every block is
            if slot + 1 >= len(offs) or offs[slot + 1] - offs[slot] != length \
                    or segment_hash(raw[offs[slot]:offs[slot + 1]]) != h:
                problems.append(f"segment {h.hex()} in block {block_id} does not match its hash")
                bad_segments.add(h)
    for h, base in deltas.items():
        if h in bad_segments:
            continue
        if base not in stored_refs:
            problems.append(f"segment {h.hex()}: its delta base {base.hex()} is missing")
            bad_segments.add(h)
            continue
        try:
            store._read(lambda txn, h=h: store._segment(txn, h))
        except Corrupt as e:
            problems.append(f"segment {h.hex()} (delta): {e}")
            bad_segments.add(h)
    known_blocks = set(block_ids)
    for block_id, entries in by_block.items():
        if block_id not in known_blocks:
            problems.append(f"block {block_id} is missing ({len(entries)} segments)")
            bad_segments.update(h for _, h, _ in entries)
    store._cache = type(store._cache)(store._cache.limit)  # verify reads from disk, not memory
    store._groups = type(store._groups)(store._groups.limit)

    files = 0
    fids = store._read(lambda txn: [(k, v) for k, v in txn.cursor(db=store._names)])
    for n, (name_b, fid_b) in enumerate(fids):
        name = name_b.decode("utf-8", "replace")
        _say(progress, f"verify: file {n + 1}/{len(fids)}")
        files += 1
        try:
            header = store._read(lambda txn: store._header(txn, _U64.unpack(fid_b)[0]))
            if header is None:
                problems.append(f"{name}: manifest missing")
                damaged.add(name)
                continue
            pl = header.get("pl", b"")
            if any(pl[i:i + 16] in bad_segments for i in range(0, len(pl), 16)):
                raise Corrupt("its piece lists are damaged")
            views = store._read(lambda txn: store._views(txn, header))
        except (Corrupt, ValueError, KeyError) as e:
            problems.append(f"{name}: {e}")
            damaged.add(name)
            continue
        for h in store._hashes(header, views):
            counted[h] += 1
            if h not in stored_refs:
                problems.append(f"{name}: segment {h.hex()} is missing")
                damaged.add(name)
            elif h in bad_segments:
                damaged.add(name)
        if name in damaged:
            continue
        try:
            digest = hashlib.sha256()
            for view in ("o", "t"):
                r = ViewReader(store, views[view])
                pos = 0
                while pos < r.size:
                    chunk = r.read(pos, 8 << 20)
                    if not chunk:
                        raise Corrupt("short read")
                    if view == "o":
                        digest.update(chunk)
                    pos += len(chunk)
            if digest.digest() != header["sh"]:
                raise Corrupt("rebuilt bytes do not match the recorded SHA-256")
        except Corrupt as e:
            problems.append(f"{name}: {e}")
            damaged.add(name)
    named = {_U64.unpack(fid_b)[0] for _, fid_b in fids}
    try:
        orphans = store._read(lambda txn: [(h["id"], h.get("n")) for h in store._iter_headers(txn)
                                           if h["id"] not in named])
    except Corrupt as e:
        orphans = []
        problems.append(f"manifests: {e}")
    for fid, name in orphans:
        problems.append(f"manifest {fid} ({name}) belongs to no name")
    for h, refs in stored_refs.items():
        if refs != counted.get(h, 0):
            problems.append(f"segment {h.hex()}: reference count {refs}, used by {counted.get(h, 0)} "
                            "files and deltas")
    _say(progress, "")
    if progress and sys.stderr.isatty():
        sys.stderr.write("\r")
    return {"ok": not problems, "files": files, "segments": len(stored_refs), "blocks": len(block_ids),
            "damaged_files": sorted(damaged), "problems": problems}


def _pack_blocks(store: Store, txn, items, c: dict, level: int, dict_id, target: int) -> list[int]:
    """Write the segments items [(kind, hash, stored bytes, index entry)] into new blocks
    of about target bytes, in the order given; point their index entries at the new
    places (a delta stays a delta: its stored bytes are copied as they are). Returns the
    new block ids."""
    groups: list[list] = []
    cur, size = [], 0
    for item in items:
        if cur and size + len(item[2]) > target:
            groups.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += len(item[2])
    if cur:
        groups.append(cur)

    dict_ids = dict_id if isinstance(dict_id, list) else [dict_id]
    for did in dict_ids:        # loaded here: the worker threads must not use txn
        if did is not None:
            store._dicts.ensure(did, lambda did=did: store._dict_bytes(txn, did))

    def compress(group):
        raw = build_pack([seg for _, _, seg, _ in group])
        return store._compress_block(txn, raw, level, dict_ids), len(raw)

    new_ids = []
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for group, (frame, rawlen) in zip(groups, pool.map(compress, groups)):
            bid = store._next(txn, b"next_block")
            txn.put(_u64(bid), frame, db=store._blocks)
            store._count_block(txn, frame, rawlen, c)
            for slot, (_kind, h, _seg, v) in enumerate(group):
                txn.put(h, _seg_with(v, block=bid, slot=slot), db=store._segs)
            new_ids.append(bid)
    return new_ids


def _drop_block(store: Store, txn, block_id: int, c: dict) -> None:
    frame = txn.get(_u64(block_id), db=store._blocks)
    if frame is None:
        return
    raw_len = frame_raw_size(frame)
    txn.delete(_u64(block_id), db=store._blocks)
    store._cache.drop(block_id)
    store._count_block(txn, frame, raw_len, c, -1)


def gc(store: Store, sparse: float = 0.5) -> dict:
    """Delete segments no file uses; delete blocks left empty; repack blocks that are
    mostly dead. One write transaction."""

    def work(txn):
        c = store._counters(txn)
        live: dict[int, list] = defaultdict(list)
        dead_bytes: dict[int, int] = defaultdict(int)
        freed = freed_bytes = 0
        # Dead segments; a dead delta gives back its reference on its base, which may
        # die in turn.
        dead: set[bytes] = set()
        todo = [bytes(h) for h, v in txn.cursor(db=store._segs) if _seg_fields(v)[2] == 0]
        while todo:
            h = todo.pop()
            if h in dead:
                continue
            dead.add(h)
            (_b, _s, _r, _k, length), delta = _seg_parse(txn.get(h, db=store._segs))
            if delta is None:
                continue
            c["deltas"] -= 1
            c["delta_raw"] -= length
            bv = txn.get(delta[1], db=store._segs)
            if bv is None:
                raise Corrupt(f"segment {h.hex()}: its delta base is missing")
            _bb, _bs, brefs, bkind, blen = _seg_fields(bv)
            txn.put(delta[1], _seg_with(bv, refs=max(brefs - 1, 0)), db=store._segs)
            if brefs <= 1:
                c["uniq"][bkind] -= 1
                c["uniq_bytes"][bkind] -= blen
                todo.append(delta[1])
        for h, v in txn.cursor(db=store._segs):
            block, slot, refs, kind, length = _seg_fields(v)
            if h in dead:
                freed += 1
                freed_bytes += length
                dead_bytes[block] += length
            else:
                live[block].append((slot, kind, bytes(h), v, length))
        for h in dead:
            txn.delete(h, db=store._segs)
        _drop_near_entries(store, txn, dead)
        deleted = rewritten = 0
        moving = []
        for block in sorted(dead_bytes):
            entries = live.get(block, [])
            live_bytes = sum(e[4] for e in entries)
            if not entries:
                _drop_block(store, txn, block, c)
                deleted += 1
            elif live_bytes < sparse * (live_bytes + dead_bytes[block]):
                raw, offs = store._block(txn, block)
                for slot, kind, h, v, _ in sorted(entries):
                    moving.append((kind, h, bytes(raw[offs[slot]:offs[slot + 1]]), v))
                _drop_block(store, txn, block, c)
                rewritten += 1
        if moving:
            _pack_blocks(store, txn, moving, c, limits.LEVEL_INGEST, store._block_dicts(txn),
                         limits.BLOCK_TARGET)
        store._save_counters(txn, c)
        return {"segments_freed": freed, "bytes_freed": freed_bytes, "blocks_deleted": deleted,
                "blocks_rewritten": rewritten}
    return store._write(work)


def _compact_dict(store: Store, txn, items, level: int):
    """The dictionary compact writes blocks with: none, the newest trained one or the
    shared substrings, whichever makes compact's first block smallest (on 4 MiB blocks
    a dictionary rarely pays; when content drifted to where the newest one does, it is
    used, and older dictionaries no block needs are dropped afterwards)."""
    cands = [None] + [d for d in store._block_dicts(txn) if d is not None]
    if len(cands) == 1:
        return None
    sample, size = [], 0
    for item in items:
        sample.append(item[2])
        size += len(item[2])
        if size >= limits.BLOCK_TARGET_COMPACT:
            break
    raw = build_pack(sample)
    sizes = {d: len(store._compress_block(txn, raw, level, [d])) for d in cands}
    return min(cands, key=lambda d: (sizes[d], d is not None))


def _undelta_order(store: Store, txn, rows: list, c: dict) -> tuple[list, set]:
    """compact's segment order with every delta placed right after its base, and the
    bases that only deltas kept alive left out. Each delta gives back its reference on
    its base (compact stores it plain). Returns (rows in order, hashes of dead bases)."""
    children: dict[bytes, list] = defaultdict(list)
    by_hash = {}
    for row in rows:
        by_hash[row[3]] = row
        d = _seg_delta(row[4])
        if d is not None:
            children[d[1]].append(row)
    dead: set[bytes] = set()
    for base, kids in children.items():
        v = txn.get(base, db=store._segs)
        if v is None:
            raise Corrupt(f"segment {base.hex()}: a delta's base is missing")
        _b, _s, refs, kind, length = _seg_fields(v)
        refs = max(refs - len(kids), 0)
        txn.put(base, _seg_with(v, refs=refs), db=store._segs)
        if refs == 0:
            dead.add(base)
            c["uniq"][kind] -= 1
            c["uniq_bytes"][kind] -= length
    c["deltas"] = c["delta_raw"] = c["delta_bytes"] = 0      # every delta is stored plain now
    order: list = []
    placed: set[bytes] = set()

    def emit(row):
        stack = [row]
        while stack:
            r = stack.pop()
            if r[3] in placed:
                continue
            placed.add(r[3])
            if r[3] not in dead:
                order.append(r)
            stack.extend(reversed(children.get(r[3], ())))
    for row in rows:
        d = _seg_delta(row[4])
        if d is None or d[1] not in by_hash:
            emit(row)
    for row in rows:            # deltas whose base chain is broken: in their own place
        emit(row)
    return order, dead


def _drop_near_entries(store: Store, txn, dead: set[bytes]) -> None:
    """Delete the LSH entries of deleted segments (matched by the hash prefix, which is
    all an entry keeps; an entry whose prefix a live segment shares stays)."""
    if not dead:
        return
    n = _NEAR_PREFIX
    prefixes = {h[:n] for h in dead}
    cur = txn.cursor(db=store._segs)
    prefixes = {p for p in prefixes if not (cur.set_range(p) and cur.key()[:n] == p)}
    if not prefixes:
        return
    nb = neardup.BAND_KEY_BYTES
    stale = [bytes(k) for k in txn.cursor(db=store._near).iternext(values=False) if k[nb:] in prefixes]
    for k in stale:
        txn.delete(k, db=store._near)


def _inline_piece_lists(store: Store, txn, c: dict) -> int:
    """Move each file's piece lists into its header when no other file uses them and
    they are small (INLINE_PIECES): their segments (and index entries) go at the next
    gc, their bytes compress with the neighbouring headers in a group. Piece lists that
    grown versions of a session share stay segments. Returns the files changed."""
    changed = 0
    for h in list(store._iter_headers(txn)):
        pl = h.get("pl")
        if not pl:
            continue
        hashes = [pl[i:i + 16] for i in range(0, len(pl), 16)]
        entries = [txn.get(x, db=store._segs) for x in hashes]
        if any(e is None for e in entries):
            raise Corrupt(f"{h['n']}: piece-list segment missing")
        fields = [_seg_fields(e) for e in entries]
        if any(f[2] != 1 for f in fields) or sum(f[4] for f in fields) > limits.INLINE_PIECES:
            continue
        h["pb"] = b"".join(store._segment(txn, x) for x in hashes)
        del h["pl"]
        for x, e, (_b, _s, _r, kind, length) in zip(hashes, entries, fields):
            txn.put(x, _seg_with(e, refs=0), db=store._segs)
            c["uniq"][kind] -= 1
            c["uniq_bytes"][kind] -= length
        store._put_header(txn, h["id"], h)
        changed += 1
    return changed


def _group_headers(store: Store, txn) -> None:
    """Pack every header into groups of HEADER_GROUP_FILES consecutive files, or fewer
    when their headers add up to HEADER_GROUP_BYTES (one compressed entry each, keyed by
    the group's last file id)."""
    packed = [(h["id"], pack(h)) for h in store._iter_headers(txn)]
    txn.drop(store._mans, delete=False)
    group: dict = {}
    size = 0
    for n, (fid, raw) in enumerate(packed):
        group[fid] = raw
        size += len(raw)
        if len(group) >= limits.HEADER_GROUP_FILES or size >= limits.HEADER_GROUP_BYTES \
                or n == len(packed) - 1:
            txn.put(_u64(fid), store._encode_group(group, limits.LEVEL_COMPACT), db=store._mans)
            group, size = {}, 0


def _train_manifest_dict(store: Store, txn) -> None:
    """Train the manifest dictionary on this store's headers, for the headers of files
    stored after this compact (stores with fewer than 64 files: too few to train on)."""
    import zstandard
    rows = [(h["id"], h) for h in store._iter_headers(txn)]
    if len(rows) < 64:
        return
    samples = [pack(h) for _, h in rows[::max(1, len(rows) // 8000)]]
    size = max(2 << 10, min(16 << 10, sum(map(len, samples)) // 16))
    d = zstandard.train_dictionary(size, samples, k=64, d=8)
    did = store._next(txn, b"next_dict")
    txn.put(struct.pack(">I", did), pack({"kind": "manifest", "bytes": d.as_bytes(),
                                          "samples": len(samples)}), db=store._dictdb)
    txn.put(b"manifest_dict", _u64(did), db=store._meta)


def _drop_unused_dicts(store: Store, txn) -> None:
    """Delete dictionaries that no block names, except the ones new blocks and
    manifests use."""
    used = {frame_dict_id(f) for f in txn.cursor(db=store._blocks).iternext(keys=False)}
    used.add(store._ingest_dict(txn))
    used.add(store._substring_dict(txn))
    v = txn.get(b"manifest_dict", db=store._meta)
    if v is not None:
        used.add(_U64.unpack(v)[0])
    for key in list(txn.cursor(db=store._dictdb).iternext(values=False)):
        if struct.unpack(">I", key)[0] not in used:
            txn.delete(key, db=store._dictdb)
    subs = store._substring_ids(txn)
    if any(d not in used for d in subs):
        txn.put(b"substring_dicts", pack([d for d in subs if d in used]), db=store._meta)


DB_NAMES = (b"meta", b"blocks", b"segments", b"manifests", b"names", b"dicts", b"index", b"near")


def _copy_env(store: Store, dest) -> None:
    """Copy every database into a new environment in key order (appends: full pages, no
    free pages), then fsync it."""
    info = store.env.info()
    out = lmdb.open(str(dest), map_size=info["map_size"], max_dbs=12, readahead=False, meminit=False,
                    sync=True)
    try:
        with store.env.begin() as src:
            for name in DB_NAMES:
                sdb = store.env.open_db(name, txn=src, create=False)
                ddb = out.open_db(name)
                batch, size = [], 0
                for kv in src.cursor(db=sdb):
                    batch.append(kv)
                    size += len(kv[0]) + len(kv[1])
                    if len(batch) >= 8192 or size > (64 << 20):
                        with out.begin(write=True, db=ddb) as dtx:
                            dtx.cursor(db=ddb).putmulti(batch, append=True)
                        batch, size = [], 0
                if batch:
                    with out.begin(write=True, db=ddb) as dtx:
                        dtx.cursor(db=ddb).putmulti(batch, append=True)
        out.sync(True)
    finally:
        out.close()


def compact(path, level: int | None = None, progress: bool = False) -> dict:
    """Rewrite every live segment into large blocks in file order at a high zstd level,
    drop dictionaries no block needs, then rewrite the LMDB file without free pages.
    Needs the store to itself (not mounted, no other stowfs process)."""
    level = limits.LEVEL_COMPACT if level is None else level
    store = Store(path)
    try:
        store._lockf.close()
        store._lockf = store._take_lock(fcntl.LOCK_EX, "is in use by another process (mounted?); "
                                        "unmount it first")
        disk_before = store.disk_bytes()
        blocks_before = store._read(lambda txn: txn.stat(store._blocks)["entries"])
        def inline(txn):
            c = store._counters(txn)
            if _inline_piece_lists(store, txn, c):
                store._save_counters(txn, c)
        _say(progress, "compact: moving small piece lists into headers")
        store._write(inline)
        _say(progress, "compact: collecting garbage")
        gc(store)
        # File order: the segments in the order files first stored them (old block, slot),
        # all kinds together. Measured on the chats bench corpus against grouping by kind:
        # 5% smaller (a reply compresses against its question) and a cold read of every
        # file 15% faster (one small file's pieces sit in one block, not in five).
        rows = []

        def collect(txn):
            for h, v in txn.cursor(db=store._segs):
                block, slot, refs, kind, length = _seg_fields(v)
                rows.append((block, slot, kind, h, v, length))
        store._read(collect)
        rows.sort()

        def repack(txn):
            c = store._counters(txn)
            old_blocks = [_U64.unpack(k)[0] for k in txn.cursor(db=store._blocks).iternext(values=False)]
            order, dead = _undelta_order(store, txn, rows, c)
            _say(progress, "compact: repacking")
            batch, size = [], 0
            choice = []
            for block, slot, kind, h, v, length in order:
                if _seg_delta(v) is not None:
                    # a delta becomes plain again, right behind its base: in one large
                    # block zstd -19 finds the match itself (measured smaller than
                    # keeping the delta), and a read decodes no chain
                    data = store._segment(txn, h)
                    (_b, _s, refs, kind, length), _ = _seg_parse(txn.get(h, db=store._segs))
                    batch.append((kind, h, data, _seg_value(0, 0, refs, kind, length)))
                else:
                    raw, offs = store._block(txn, block)
                    v = txn.get(h, db=store._segs)     # its refcount may have changed
                    batch.append((kind, h, bytes(raw[offs[slot]:offs[slot + 1]]), v))
                size += length
                if size >= 4 * limits.BLOCK_TARGET_COMPACT:
                    choice = choice or [_compact_dict(store, txn, batch, level)]
                    _pack_blocks(store, txn, batch, c, level, choice, limits.BLOCK_TARGET_COMPACT)
                    batch, size = [], 0
            if batch:
                choice = choice or [_compact_dict(store, txn, batch, level)]
                _pack_blocks(store, txn, batch, c, level, choice, limits.BLOCK_TARGET_COMPACT)
            for b in old_blocks:
                _drop_block(store, txn, b, c)
            for h in dead:
                txn.delete(h, db=store._segs)
            _drop_near_entries(store, txn, dead)
            # rewrite the segment index in key order so its pages are full
            index = list(txn.cursor(db=store._segs))
            txn.drop(store._segs, delete=False)
            txn.cursor(db=store._segs).putmulti(index, append=True)
            _train_manifest_dict(store, txn)
            _group_headers(store, txn)
            _drop_unused_dicts(store, txn)
            store._save_counters(txn, c)
        store._write(repack)
        _say(progress, "compact: rewriting the store file")
        envdir = store.path / "lmdb"
        tmp = store.path / "lmdb.compact"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _copy_env(store, tmp)
        except lmdb.Error as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StowError(f"compact: copying the store failed: {e}") from None
        store.env.close()
        store.env = None
        os.replace(tmp / "data.mdb", envdir / "data.mdb")
        shutil.rmtree(tmp, ignore_errors=True)
        dfd = os.open(envdir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        store.close()
    with Store(path, readonly=True) as s2:
        blocks_after = s2._read(lambda txn: txn.stat(s2._blocks)["entries"])
        dictionaries = s2._read(lambda txn: txn.stat(s2._dictdb)["entries"])
        disk_after = s2.disk_bytes()
    _say(progress, "")
    if progress and sys.stderr.isatty():
        sys.stderr.write("\r")
    return {"disk_before": disk_before, "disk_after": disk_after, "blocks_before": blocks_before,
            "blocks_after": blocks_after, "dictionaries": dictionaries, "level": level}
