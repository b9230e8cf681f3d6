"""keyspace.Cursor against LMDB itself: a table kept under a prefix byte in a shared
database, between other tables' keys, must move exactly as a cursor of a database that
holds only that table (random operation sequences, trees of one page and of many)."""
from __future__ import annotations

import random

import lmdb
import pytest

from stowfs.store.keyspace import Cursor, Table, tables, TAGS, STORE_DB

OPS = ("first", "last", "next", "prev", "set_range", "set_key", "iter")


def _envs(tmp_path, keys, vsize, neighbours):
    env = lmdb.open(str(tmp_path / "e"), max_dbs=4, map_size=1 << 28)
    alone, shared = env.open_db(b"alone"), env.open_db(b"shared")
    with env.begin(write=True) as txn:
        for k in keys:
            v = k * (vsize // max(len(k), 1) + 1)
            txn.put(k, v, db=alone)
            txn.put(b"\x03" + k, v, db=shared)
        for tag in neighbours:                   # other tables on either side
            for i in range(60):
                txn.put(bytes([tag]) + b"n%03d" % i, b"x" * (vsize + i), db=shared)
    return env, alone, shared


def _probe(rng, keys):
    if keys and rng.random() < 0.4:
        k = rng.choice(keys)
        return k if rng.random() < 0.7 else k + b"\x00"
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 5)))


def _do(cur, op, arg):
    if op in ("set_range", "set_key"):
        out = getattr(cur, op)(arg)
    elif op == "iter":
        out = []
        for i, kv in enumerate(cur):
            out.append((bytes(kv[0]), bytes(kv[1])))
            if i == arg:
                break
    else:
        out = getattr(cur, op)()
    return out, bytes(cur.key()), bytes(cur.value())


@pytest.mark.parametrize("n,vsize,neighbours", [
    (0, 10, (0x02, 0x04)), (1, 10, (0x02, 0x04)), (7, 10, (0x02, 0x04)), (7, 10, ()),
    (7, 10, (0x02,)), (7, 10, (0x04,)), (300, 200, (0x02, 0x04)), (300, 3000, (0x02, 0x04)),
    (2000, 40, (0x02, 0x04)), (2000, 40, ())])
def test_a_prefixed_cursor_moves_as_a_database_of_its_own(tmp_path, n, vsize, neighbours):
    rng = random.Random(n * 7 + vsize + len(neighbours))
    keys = sorted({bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 9))) for _ in range(n)})
    env, alone, shared = _envs(tmp_path, keys, vsize, neighbours)
    with env.begin() as txn:
        for _ in range(300):
            a, b = txn.cursor(db=alone), Cursor(txn.cursor(db=shared), b"\x03")
            missed = False
            for _ in range(rng.randrange(1, 12)):
                op = rng.choice(OPS)
                arg = _probe(rng, keys) if op.startswith("set") else rng.randrange(0, 4)
                if op == "set_key" and not arg:
                    continue                  # LMDB refuses an empty key (no caller asks)
                if missed and op in ("next", "prev"):
                    continue                  # after a failed set_key LMDB's page layout decides
                want = _do(a, op, arg)
                assert _do(b, op, arg) == want, (op, arg)
                missed = op == "set_key" and not want[0]
    env.close()


def test_a_cursor_runs_off_its_table_at_both_ends(tmp_path):
    env, alone, shared = _envs(tmp_path, [b"a", b"b", b"c"], 10, (0x02, 0x04))
    with env.begin() as txn:
        c = Cursor(txn.cursor(db=shared), b"\x03")
        assert [bytes(k) for k, _ in c] == [b"a", b"b", b"c"]
        assert c.key() == b"" and not c.next()
        assert c.prev() and c.key() == b"b"          # as LMDB: from where it failed
        assert not c.set_range(b"d") and c.key() == b""
        assert c.prev() and c.key() == b"c"          # set_range past the end, then prev: the last
        assert c.first() and not c.prev() and c.key() == b""
        assert c.last() and c.key() == b"c" and not c.next()
        assert c.set_key(b"b") and c.value() == b"b" * 11
        assert not c.set_key(b"bb") and c.key() == b""
        assert c.next() and c.key() == b"c"          # between the entries around the key
        assert not c.set_key(b"bb") and c.prev() and c.key() == b"b"
        assert not c.set_key(b"0") and not c.prev() and c.next() and c.key() == b"a"
    env.close()


def test_a_table_reads_and_writes_only_its_own_keys(tmp_path):
    env = lmdb.open(str(tmp_path / "e"), max_dbs=4, map_size=1 << 24)
    t = tables({STORE_DB: env.open_db(STORE_DB)})
    assert {n: x.prefix for n, x in t.items()} == {n: bytes([v]) for n, v in TAGS.items()}
    with env.begin(write=True) as txn:
        for name, table in t.items():
            table.put(txn, b"k", name.encode())
        assert t["groups"].get(txn, b"k") == b"groups"
        assert t["groups"].replace(txn, b"k", b"g2") == b"groups"
        assert t["names"].delete(txn, b"k") and t["names"].get(txn, b"k") is None
        assert [t[n].count(txn) for n in TAGS] == [1, 1, 1, 0, 1]
        assert [bytes(k) for k, _ in t["anchors"].cursor(txn)] == [b"k"]
    env.close()
    t3 = Table("blocks", object())
    assert t3.prefix == b""


def test_pages_by_table_add_up_to_the_database_and_match_lmdb_s_overflow(tmp_path):
    from stowfs.store.keyspace import pages
    env = lmdb.open(str(tmp_path / "e"), max_dbs=8, map_size=1 << 28)
    shared = env.open_db(STORE_DB)
    t = tables({STORE_DB: shared})
    rng = random.Random(5)
    sizes = [rng.choice([1, 100, 2000, 2020, 2021, 2030, 2040, 4000, 4080, 4081, 9000, 70000])
             for _ in range(400)]
    alone = {}
    with env.begin(write=True) as txn:
        for i, n in enumerate(sizes):
            name = list(TAGS)[i % len(TAGS)]
            key = b"%08d" % i
            t[name].put(txn, key, b"v" * n)
            db = alone.setdefault(name, env.open_db(name.encode(), txn=txn))
            txn.put(key, b"v" * n, db=db)
    with env.begin() as txn:
        got = pages(txn, t)
        s = txn.stat(shared)
        assert abs(sum(got.values()) - (s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"])) < 1e-6
        own = pages(txn, {n: Table(n, db) for n, db in alone.items()})
        for name, db in alone.items():
            st = txn.stat(db)
            assert own[name] == st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            # the overflow pages counted per entry are LMDB's own (keys one byte longer
            # in the shared database: the rule is checked at both lengths)
            want = st["overflow_pages"]
            from stowfs.store.keyspace import _entry_pages
            assert sum(_entry_pages(8, len(v), st["psize"])[1] for _, v in txn.cursor(db=db)) == want
        assert sum(_entry_pages(9, n, s["psize"])[1] for n in sizes) == s["overflow_pages"]
    env.close()
