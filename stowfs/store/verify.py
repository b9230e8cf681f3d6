"""verify: every table checked against the others, every file rebuilt against its
checksum, damaged files named.

The walk runs in a child process (`python -m stowfs.store.verify STORE`): a damaged LMDB
page can make the LMDB library abort the process, and then the parent still reports
"structure damaged" instead of dying with it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict

from ..errors import Corrupt, StowError


def walk(path: str) -> dict:
    """The checks themselves (in the child)."""
    from .. import limits
    from . import Store, blocks, records
    from .anchors import decode_run
    from .names import recover_page, salvage_page
    problems: list[str] = []
    damaged: set[str] = set()
    store = Store(path, readonly=True, cache_bytes=64 << 20)
    broken: list[str] = []
    known = {t.prefix for t in store._tables.values()}

    lost_names: dict[str, str] = {}     # names on sound pages no lookup reaches: why
    salvaged: list = []                 # [name, file id] read from damaged name pages

    def misplaced(k: bytes, v) -> None:
        """An entry that did not decode where it is: if it is a sound name page whose
        key is damaged, its names are the files no read finds any more."""
        got = recover_page(v)
        if got is not None:
            for n, _ in got[1]:
                lost_names.setdefault(n, f"{n}: its name page is stored under a damaged key "
                                         f"({k[:12].hex()}...): no lookup finds it")

    def scan(table, what: str) -> list:
        """A table's entries, as many as its B-tree gives: a damaged page stops the walk
        of that table (noted), not the whole verify, so the files it affects are still
        found by the checks that follow and named."""
        out: list = []

        def work(txn):
            if not table.prefix:                    # format 3: a database of its own
                for k, v in table.cursor(txn):
                    out.append((bytes(k), bytes(v)))
                return
            # Formats 4 and 5: every entry of the one database, in leaf order, sorted out
            # here by its tag byte. A table's own cursor finds its first key by a binary
            # search, which one damaged key (its tag byte flipped) can send past the
            # whole table: its files then went unnamed.
            cur = txn.cursor(db=table.db)
            if not cur.first():
                return
            for k in cur.iternext(keys=True, values=False):
                if k[:1] == table.prefix:
                    out.append((bytes(k[1:]), bytes(cur.value())))
                elif what == "blocks" and k[:1] not in known:
                    problems.append(f"store structure damaged: an entry under no table "
                                    f"(key {bytes(k[:9]).hex()}...): a damaged key")
                    misplaced(bytes(k), bytes(cur.value()))
        try:
            store._read(work)
        except Exception as e:      # lmdb.Error on a damaged page, Corrupt, ...
            problems.append(f"store structure damaged: the {what} table: {type(e).__name__}: {e}")
            broken.append(what)
        return out
    try:
        B = store.block_size
        # blocks: every fragment decodes whole and matches its hashes; coverage per block
        covered: dict[int, list] = defaultdict(list)
        bad_blocks: set[int] = set()
        unmatched: set[int] = set()     # blocks with a fragment that is (frames.PartialDecoder)
        nfrag = 0

        for k, v in scan(store._blocks, "blocks"):
            nfrag += 1
            key = int.from_bytes(k, "big") if len(k) == 8 else -1
            try:
                frag = blocks.parse_fragment(v, key)
                dec = blocks.new_decoder(frag, v)
                dec.need(frag.hd.raw_len)
                if dec.unmatched:
                    # every piece checks: the payload is sound, its ranges (or the hash)
                    # are not; a read takes from it only whole files that match their
                    # checksums, and those are checked below as every file is
                    problems.append(f"block fragment {key >> 16}.{key & 0xFFFF} is damaged (its "
                                    "content does not match its hash; its pieces do: each file "
                                    "in it is checked against its own checksum)")
                    unmatched.add(key >> 16)
                for s, n in frag.ranges:
                    covered[key >> 16].append((s, s + n))
            except Corrupt as e:
                problems.append(str(e))
                bad_blocks.add(key >> 16 if key >= 0 else -1)
                misplaced(store._blocks.prefix + k, v)
        # records
        recs: dict[int, records.Record] = {}

        for k, v in scan(store._tables["groups"], "record"):
            gid = int.from_bytes(k, "big") if len(k) == 8 else -1
            try:
                recs.update(records.decode_group(v, gid))
            except Corrupt as e:
                problems.append(str(e) + " (the files it describes cannot be read)")
                misplaced(store._tables["groups"].prefix + k, v)
        # names
        names: dict[str, int] = {}

        from .names import decode_page
        for k, v in scan(store._tables["names"], "name"):
            try:
                for n, fid in decode_page(k, v):
                    if n in names:
                        problems.append(f"{n}: listed twice in the name table")
                    names[n] = fid
            except Corrupt as e:
                problems.append(str(e) + " (names on it cannot be found)")
                misplaced(store._tables["names"].prefix + k, v)
                salvaged.extend(salvage_page(v))
        by_id = {}
        ids_named = defaultdict(list)
        for n, fid in names.items():
            ids_named[fid].append(n)
            r = recs.get(fid)
            if r is None:
                problems.append(f"{n}: the name table points at record {fid}, which does not exist")
                damaged.add(n)
            else:
                by_id[fid] = r.named(n)
        # every name looked up the way a read looks it up (binary searches through the
        # B-tree): the walk above goes leaf by leaf, and a damaged branch page can show it
        # every entry while a lookup lands on another page
        for n, fid in sorted(names.items()):
            try:
                got = store._read(lambda txn, n=n: store._record(txn, n).file_id)
            except Exception as e:
                problems.append(f"{n}: cannot be found by its name: {type(e).__name__}: {e}")
                damaged.add(n)
                continue
            if got != fid:
                problems.append(f"{n}: its name leads to record {got}; the name table holds {fid}")
                damaged.add(n)
        for fid, ns in ids_named.items():
            if len(ns) > 1:
                problems.append(f"record {fid} is named {len(ns)} times: {', '.join(ns[:4])}")
                damaged.update(ns)
        for fid in recs:
            if fid not in ids_named:
                problems.append(f"record {fid} is not reachable by any name (its name page is damaged?)")
        # anchors (derived, but must decode)

        for k, v in scan(store._tables["anchors"], "anchor"):
            try:
                decode_run(v, int.from_bytes(k, "big"))
            except Corrupt as e:
                problems.append(str(e) + " (dedup index: rebuilt by `stowfs compact`)")
                misplaced(store._tables["anchors"].prefix + k, v)
        for n, why in lost_names.items():
            if n not in names:
                problems.append(why)
                damaged.add(n)
        # names read from a damaged page, unverified: each named only when it leads to
        # a record that exists and no sound name reaches
        for n, fid in salvaged:
            if n not in names and n not in lost_names and fid in recs and fid not in ids_named:
                problems.append(f"{n}: on a damaged name page (read from it unverified): "
                                "no lookup finds it")
                damaged.add(n)
        # every file: extents inside stored ranges, bytes against the checksum
        import hashlib
        for r in sorted(by_id.values(), key=lambda r: r.name):
            try:
                if sum(n for _, n in r.extents) != r.size:
                    raise Corrupt(f"{r.name}: its extents do not add up to its size")
                if r.size > limits.UNMATCHED_WHOLE_MAX and any(
                        pos // B <= b <= (pos + n - 1) // B for pos, n in r.extents for b in unmatched):
                    raise Corrupt(f"{r.name}: its block is damaged (does not match its hash) and "
                                  "the file is too large to be checked whole")
                h = hashlib.blake2b(digest_size=records.CHECKSUM_SIZE)
                for pos, n in r.extents:
                    off = 0
                    while off < n:
                        take = min(n - off, 4 << 20)
                        h.update(store._read(lambda txn, p=pos + off, t=take: store._reader.read(txn, p, t)))
                        off += take
                if h.digest() != r.checksum:
                    raise Corrupt(f"{r.name}: its bytes do not match its checksum")
            except Corrupt as e:
                problems.append(str(e))
                damaged.add(r.name)
            except Exception as e:      # the LMDB library on a damaged page of a table it read
                problems.append(f"{r.name}: cannot be read: {type(e).__name__}: {e}")
                damaged.add(r.name)
        # every meta value but the format number carries its own check bytes; the mount
        # reads `generation` at every open, and a damaged one made it refuse a store
        # verify called sound
        from .lmdbenv import meta_get
        for k, _ in scan(store._meta, "meta"):
            if k != b"format":
                try:
                    store._read(lambda txn, k=k: meta_get(txn, store._meta, k))
                except Corrupt as e:
                    problems.append(f"store structure damaged: {e}")
        try:
            c = store._read(store._counters)
        except Exception as e:
            problems.append(f"store structure damaged: the counters: {type(e).__name__}: {e}")
            c = {"files": len(by_id), "bytes": sum(r.size for r in by_id.values())}
        if c["files"] != len(by_id) or c["bytes"] != sum(r.size for r in by_id.values()):
            problems.append(f"counters say {c['files']} files / {c['bytes']} bytes, records "
                            f"{len(by_id)} / {sum(r.size for r in by_id.values())} (stats only)")
        problems = list(dict.fromkeys(problems))
        return {"ok": not problems, "files": len(by_id), "blocks": len(covered) + len(bad_blocks),
                "fragments": nfrag, "problems": problems, "damaged_files": sorted(damaged),
                "structure_damaged": bool(broken)}
    finally:
        store.close()


def verify(path) -> dict:
    """Run the walk in a child process; a crash of the child is reported, not shared."""
    cmd = [sys.executable, "-m", "stowfs.store.verify", str(path)]
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run(cmd, capture_output=True, env=env)
    if p.returncode == 0 or p.returncode == 3:
        try:
            return json.loads(p.stdout)
        except ValueError:
            pass
    if p.returncode < 0:
        why = f"the walk was killed by {signal.Signals(-p.returncode).name}"
    else:
        tail = p.stderr.decode("utf-8", "replace").strip().splitlines()
        why = tail[-1] if tail else f"exit {p.returncode}"
    return {"ok": False, "files": 0, "blocks": 0, "fragments": 0, "structure_damaged": True,
            "problems": [f"store structure damaged: {why}"], "damaged_files": []}


def _main() -> int:
    path = sys.argv[1]
    try:
        report = walk(path)
    except StowError as e:
        report = {"ok": False, "files": 0, "blocks": 0, "fragments": 0, "structure_damaged": True,
                  "problems": [f"store structure damaged: {e}"], "damaged_files": []}
    except Exception as e:       # the LMDB library's own errors on a damaged file
        report = {"ok": False, "files": 0, "blocks": 0, "fragments": 0, "structure_damaged": True,
                  "problems": [f"store structure damaged: {type(e).__name__}: {e}"], "damaged_files": []}
    sys.stdout.write(json.dumps(report))
    return 0 if report["ok"] else 3


if __name__ == "__main__":
    sys.exit(_main())
