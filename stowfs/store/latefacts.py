"""Facts taken after ingest (the `later` providers of stowfs.facts: exact token counts),
as compaction steps that put them in the records.

Ingest stores a record with facts[PENDING] instead of them, so a file is stored without
loading a tokenizer or counting every view. A step here takes one record group: reads
the bytes of each of its pending files (checked against the record's checksum), parses
them, runs the later providers (or takes what a reader took early and staged in the aux
database facts.STAGED), and rewrites the group with the facts in place of the mark. The
facts are taken outside any transaction; the write transaction loads the group again
and fills only the records that are still the same file (same id and checksum, still
pending), so a file replaced meanwhile is left for the next pass. kill -9 at any moment
is safe: the group is rewritten whole or not at all, and a staged entry left behind is
only ever read for a record that lacks the facts.
"""
from __future__ import annotations

import logging
from typing import Optional

from .. import facts
from ..errors import Corrupt

log = logging.getLogger("stowfs.latefacts")


def pending_groups(store) -> list[int]:
    """Ids of the record groups that hold a record with its later facts still to take."""
    def work(txn):
        return [gid for gid in store._groups.all_ids(txn)
                if any(facts.PENDING in r.facts for r in store._groups.load(txn, gid).values())]
    return store._read(work)


def _take(store, todo: list) -> dict[int, tuple[bytes, dict]]:
    """{file id: (checksum, later facts)} of the pending files in todo."""
    from ..formats import parse
    from .records import check_bytes
    keys = facts.later_keys()
    staged = facts.staged(store)
    out = {}
    for fid, ck, name, extents, size in todo:
        early = staged.get(fid) or {}
        # what a reader took early, when it holds every later fact
        got = {k: early[k] for k in keys} if keys <= set(early) else None
        if got is None:
            data = store.read_extents(extents, 0, size)
            check_bytes(name, data, ck)
            try:
                got = facts.compute_later(parse(data, name), data)
            except Exception:       # a provider's bug must not stop compaction for good
                log.exception("%s: its later facts could not be taken; stored without them", name)
                got = {}
        out[fid] = (ck, got)
    return out


def fill_group(store, gid: int, level: int) -> Optional[dict]:
    """One step: the later facts of group gid's pending records taken and stored (the
    group rewritten at `level`). Returns what changed, or None when nothing was pending."""
    def find(txn):
        recs = store._groups.load(txn, gid)
        names = store._id_names(txn)
        todo = []
        for fid in sorted(recs):
            r = recs[fid]
            if facts.PENDING in r.facts:
                name = names.get(fid)
                if name is None:
                    raise Corrupt(f"record {fid} has no name in the name table")
                todo.append((fid, r.checksum, name, r.extents, r.size))
        return todo
    todo = store._read(find)
    if not todo:
        return None
    taken = _take(store, todo)

    def work(txn):
        recs = dict(store._groups.load(txn, gid))
        n = 0
        for fid, (ck, got) in taken.items():
            r = recs.get(fid)
            if r is None or r.checksum != ck or facts.PENDING not in r.facts:
                continue
            f = {k: v for k, v in r.facts.items() if k != facts.PENDING}
            f.update(got)
            recs[fid] = r.replace(facts=f)
            n += 1
        if n:
            store._groups.put(txn, recs, gid, level)
        return n
    n = store._write(work)
    g0 = store.generation
    facts.unstage(store, taken)         # folded into the records now
    return {"group": gid, "facts_taken": n, "commits": 1 + (store.generation != g0)}

