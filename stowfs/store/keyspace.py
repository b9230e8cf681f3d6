"""The store's tables as key ranges of one LMDB database (format 4): each table's entries
are stored under its tag byte followed by the table's own key, so a small store pays for
one B-tree instead of five (a compacted store's named database costs at least one nearly
empty leaf page; its values are mostly in overflow pages).

A `Table` is what the store modules read and write through: get, put, delete, replace
and a cursor that sees only the table's keys (without the tag) and behaves at the
table's ends as a cursor of a database of its own. A format-3 store keeps each table
in a database of its own: its Tables have an empty prefix and hand out LMDB's cursors.

Only this module knows the tag bytes (FORMAT.md lists them).
"""
from __future__ import annotations

STORE_DB = b"store"
TAGS = {"meta": 0x01, "blocks": 0x02, "groups": 0x03, "names": 0x04, "anchors": 0x05}
FORMAT3_DBS = tuple(n.encode() for n in TAGS)      # format 3: a named database each


class Table:
    """One table: the LMDB database handle it lives in and its key prefix (b"" for a
    database of its own)."""
    __slots__ = ("name", "db", "prefix")

    def __init__(self, name: str, db, prefix: bytes = b""):
        self.name, self.db, self.prefix = name, db, prefix

    def get(self, txn, key: bytes):
        return txn.get(self.prefix + key, db=self.db)

    def put(self, txn, key: bytes, value, **kw) -> bool:
        return txn.put(self.prefix + key, value, db=self.db, **kw)

    def delete(self, txn, key: bytes) -> bool:
        return txn.delete(self.prefix + key, db=self.db)

    def replace(self, txn, key: bytes, value):
        """Put value, returning the value it replaced (None if none)."""
        return txn.replace(self.prefix + key, value, db=self.db)

    def cursor(self, txn):
        if not self.prefix:
            return txn.cursor(db=self.db)
        return Cursor(txn.cursor(db=self.db), self.prefix)

    def count(self, txn) -> int:
        if not self.prefix:
            return txn.stat(self.db)["entries"]
        return sum(1 for _ in self.cursor(txn).iternext(keys=True, values=False))


class Cursor:
    """An LMDB cursor over the keys that start with prefix, given without it.

    It moves as an LMDB cursor of a database holding only those keys: at the table's
    ends it fails where that one would, and an unpositioned cursor moves on from where
    it failed as LMDB's does (after next() ran off the end, prev() gives the entry
    before the last; after set_range past the end, prev() gives the last; iterating
    starts again from the first). One case LMDB leaves to its page layout: next() after
    a failed set_key gives the first entry after the key here (LMDB: that one, or the
    one after it when the key would sit at the start of a page); prev(), the one before.
    No caller moves from a failed set_key."""
    __slots__ = ("_c", "_p", "_hi", "_state")

    # never placed; on an entry; failed at an entry; failed just before an entry; past the end
    _FRESH, _AT, _OFF, _BEFORE, _END = range(5)

    def __init__(self, cur, prefix: bytes):
        if len(prefix) != 1 or prefix[0] == 0xFF:
            raise ValueError("a table prefix is one byte below 0xff")
        self._c, self._p, self._hi = cur, prefix, bytes([prefix[0] + 1])
        self._state = self._FRESH

    def _mine(self, ok: bool) -> bool:
        return ok and self._c.key()[:1] == self._p

    def _place(self, ok: bool) -> bool:
        """The state after a seek that found ok (an entry of this table) or not (past
        the table's end)."""
        self._state = self._AT if ok else self._END
        return ok

    # ------------------------------------------------------------ positioning
    def first(self) -> bool:
        if self._mine(self._c.set_range(self._p)):
            return self._place(True)
        self._state = self._FRESH                   # an empty table: everything fails
        return False

    def last(self) -> bool:
        c = self._c
        ok = c.prev() if c.set_range(self._hi) else c.last()
        if self._mine(ok):
            return self._place(True)
        self._state = self._FRESH
        return False

    def set_range(self, key) -> bool:
        return self._place(self._mine(self._c.set_range(self._p + key)))

    def set_key(self, key) -> bool:
        want = self._p + key
        if not self._mine(self._c.set_range(want)):
            return self._place(False)
        if self._c.key() == want:
            return self._place(True)
        self._state = self._BEFORE                  # between the entries around key
        return False

    def next(self) -> bool:
        st = self._state
        if st == self._FRESH:
            return self.first()
        if st == self._END:
            return False
        if st == self._BEFORE:
            self._state = self._AT
            return True
        return self._step(self._c.next, self._OFF)

    def prev(self) -> bool:
        st = self._state
        if st == self._FRESH or st == self._END:
            return self.last()
        return self._step(self._c.prev, self._BEFORE if st == self._BEFORE else self._OFF)

    def _step(self, move, failed: int) -> bool:
        here = bytes(self._c.key())
        if self._mine(move()):
            self._state = self._AT
            return True
        # off the table: back to the entry it was at, unpositioned (as LMDB stays)
        self._c.set_key(here)
        self._state = failed
        return False

    # ------------------------------------------------------------ reading
    def key(self):
        return self._c.key()[1:] if self._state == self._AT else b""

    def value(self):
        return self._c.value() if self._state == self._AT else b""

    def item(self):
        return (self.key(), self.value())

    def iternext(self, keys: bool = True, values: bool = True):
        if self._state != self._AT:
            self.first()
        while self._state == self._AT:
            if keys and values:
                yield self.item()
            elif keys:
                yield self.key()
            else:
                yield self.value()
            self.next()

    __iter__ = iternext

    def close(self) -> None:
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tables(dbs: dict) -> dict[str, Table]:
    """The store's tables over its open databases: format 4's one database when it is
    open, else format 3's database per table (those of them that are open)."""
    if STORE_DB in dbs:
        return {name: Table(name, dbs[STORE_DB], bytes([tag])) for name, tag in TAGS.items()}
    return {name: Table(name, dbs[name.encode()]) for name in TAGS if name.encode() in dbs}


# LMDB's page layout (0.9): a page header of 16 bytes, 8 bytes of node header before a
# key; a value that would make its node larger than NODEMAX goes to overflow pages of its
# own and leaves an 8-byte page number on the leaf; each node costs a 2-byte slot too.
_PAGEHDR, _NODEHDR = 16, 8


def _entry_pages(klen: int, vlen: int, psize: int) -> tuple[int, int]:
    """(bytes on its leaf page, overflow pages) of one entry."""
    nodemax = (((psize - _PAGEHDR) // 2) & -2) - 2
    node, over = _NODEHDR + klen + vlen, 0
    if node > nodemax:
        over = (_PAGEHDR - 1 + vlen) // psize + 1
        node -= vlen - 8
    return node + (node & 1) + 2, over


def pages(txn, tables: dict[str, Table]) -> dict[str, float]:
    """The pages each table takes (what `du` sees, by table). A table with a database of
    its own: that database's pages. Tables sharing one: each its values' overflow pages
    and, of the leaf and branch pages, a share in proportion to the bytes its entries
    take on leaves. The shares add up to the database's pages."""
    out: dict[str, float] = {}
    shared: dict[int, list[Table]] = {}
    for name, t in tables.items():
        if t.prefix:
            shared.setdefault(id(t.db), []).append(t)
        else:
            s = txn.stat(t.db)
            out[name] = s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
    for ts in shared.values():
        s = txn.stat(ts[0].db)
        leaf: dict[str, int] = {}
        for t in ts:
            on_leaf = over = 0
            for k, v in t.cursor(txn):
                a, b = _entry_pages(len(t.prefix) + len(k), len(v), s["psize"])
                on_leaf, over = on_leaf + a, over + b
            leaf[t.name], out[t.name] = on_leaf, over
        tree, total = s["branch_pages"] + s["leaf_pages"], sum(leaf.values())
        for t in ts:
            out[t.name] += tree * leaf[t.name] / total if total else 0.0
    return out
