"""The store's tables as key ranges of one LMDB database (formats 4 to 6): each table's entries
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
        if prefix and (len(prefix) != 1 or prefix[0] == 0xFF):
            raise ValueError("a table prefix is one byte below 0xff")
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


# a Cursor's state: never placed; on an entry; failed at an entry (after next or prev);
# failed between two entries (after set_key), the LMDB cursor on the later one; past the end
_FRESH, _AT, _OFF, _BEFORE, _END = range(5)


class Cursor:
    """An LMDB cursor over the keys that start with prefix (one byte), given without it.

    It moves as an LMDB cursor of a database holding only those keys: at the table's
    ends it fails where that one would, and an unpositioned cursor moves on from where
    it failed as LMDB's does (after next() ran off the end, prev() gives the entry
    before the last; after set_range past the end, prev() gives the last; iterating
    starts again from the first). One case LMDB leaves to its page layout: next() after
    a failed set_key gives the first entry after the key here (LMDB: that one, or the
    one after it when the key would sit at the start of a page); prev(), the one before.
    No caller moves from a failed set_key."""
    __slots__ = ("_c", "_p", "_tag", "_hi", "_state")

    def __init__(self, cur, prefix: bytes):
        self._c, self._p, self._tag = cur, prefix, prefix[0]
        self._hi = bytes([prefix[0] + 1])
        self._state = _FRESH

    def _first_entry(self) -> bool:
        c = self._c
        return c.set_range(self._p) and c.key()[0] == self._tag

    def _last_entry(self) -> bool:
        c = self._c
        return (c.prev() if c.set_range(self._hi) else c.last()) and c.key()[0] == self._tag

    # ------------------------------------------------------------ positioning
    def first(self) -> bool:
        ok = self._first_entry()
        self._state = _AT if ok else _FRESH          # an empty table: everything fails
        return ok

    def last(self) -> bool:
        ok = self._last_entry()
        self._state = _AT if ok else _FRESH
        return ok

    def set_range(self, key) -> bool:
        c = self._c
        ok = c.set_range(self._p + key) and c.key()[0] == self._tag
        self._state = _AT if ok else _END
        return ok

    def set_key(self, key) -> bool:
        c = self._c
        want = self._p + key
        if not (c.set_range(want) and c.key()[0] == self._tag):
            self._state = _END
            return False
        ok = c.key() == want
        self._state = _AT if ok else _BEFORE
        return ok

    def next(self) -> bool:
        st = self._state
        if st == _AT or st == _OFF:
            c = self._c
            if c.next() and c.key()[0] == self._tag:
                self._state = _AT
                return True
            self._last_entry()          # it was on the last entry: it stays there, failed
            self._state = _OFF
            return False
        if st == _BEFORE:
            self._state = _AT
            return True
        if st == _END:
            return False
        return self.first()

    def prev(self) -> bool:
        st = self._state
        if st == _AT or st == _OFF or st == _BEFORE:
            c = self._c
            if c.prev() and c.key()[0] == self._tag:
                self._state = _AT
                return True
            self._first_entry()         # it was on (or before) the first entry: it stays
            self._state = _BEFORE if st == _BEFORE else _OFF
            return False
        return self.last()

    # ------------------------------------------------------------ reading
    def key(self):
        return self._c.key()[1:] if self._state == _AT else b""

    def value(self):
        return self._c.value() if self._state == _AT else b""

    def item(self):
        return (self.key(), self.value())

    def iternext(self, keys: bool = True, values: bool = True):
        if self._state != _AT:
            self.first()
        while self._state == _AT:
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
    """The store's tables over its open databases: formats 4 and 5's one database when it is
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
