"""Where each named database of an LMDB file lives, page by page, without stowfs.

Reads the on-disk format of LMDB 0.9 (little-endian, 64-bit): the newer of the two meta
pages gives the roots of the free list and of the main database; every leaf node of the
main database flagged F_SUBDATA is a named database (its key is the name, its value an
MDB_db with its own root). Walking each tree yields its branch, leaf and overflow pages
and, on leaves, the file offsets of every node's key and value. Nothing here knows which
databases stowfs keeps, so it keeps working when the store's tables change; the walk is
checked against the lmdb module's own listing of the keys (walk_checked). A database
that holds several tables as key ranges (one leading byte each) can be split into them
(by_lead_byte).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2, P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
PAGEHDRSZ = 16
NODESIZE = 8
MDB_MAGIC = 0xBEEFC0DE
_DB = struct.Struct("<IHHQQQQQ")      # md_pad, md_flags, md_depth, branch, leaf, overflow, entries, root
P_INVALID = 0xFFFFFFFFFFFFFFFF


@dataclass
class Node:
    key: tuple[int, int]          # file offset, length
    value: tuple[int, int]        # file offset, length (of the node's inline data)
    overflow: int = -1            # first page of the value when it lives in overflow pages
    raw_key: bytes = b""
    subdata: bool = False         # a named database's record (in the main database)
    big: tuple[int, int] = (0, 0)  # file offset, length of a value kept in overflow pages


@dataclass
class Page:
    pgno: int
    kind: str                     # "branch", "leaf", "overflow"
    npages: int = 1
    nodes: list[Node] = field(default_factory=list)
    owner: bytes = b""            # an overflow page's: the key of the node whose value it holds


@dataclass
class Database:
    name: str                     # "<free>", "<main>", or the named database's key
    flags: int
    entries: int
    pages: list[Page] = field(default_factory=list)

    def data_bytes(self) -> int:
        return sum(p.npages for p in self.pages)


class Layout:
    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        self.psize = self._page_size()
        self.meta = self._newest_meta()
        self.databases: dict[str, Database] = {}
        free, main = self.meta["dbs"]
        self.databases["<free>"] = self._walk("<free>", free)
        self.databases["<main>"] = self._walk("<main>", main)
        for node in [n for p in self.databases["<main>"].pages if p.kind == "leaf" for n in p.nodes]:
            off, n = node.value
            if node.subdata and n == _DB.size:
                name = node.raw_key.decode("utf-8", "surrogateescape")
                self.databases[name] = self._walk(name, _DB.unpack_from(self.data, off))

    # ------------------------------------------------------------------ meta
    def _page_size(self) -> int:
        # meta page 0: header, then mm_magic, mm_version, mm_address, mm_mapsize, dbs[2], ...
        magic, = struct.unpack_from("<I", self.data, PAGEHDRSZ)
        if magic != MDB_MAGIC:
            raise ValueError("not an LMDB file (or meta page 0 damaged)")
        # the free DB's md_pad holds the page size
        return _DB.unpack_from(self.data, PAGEHDRSZ + 24)[0]

    def _newest_meta(self) -> dict:
        best = None
        for i in (0, 1):
            base = i * self.psize + PAGEHDRSZ
            magic, version = struct.unpack_from("<II", self.data, base)
            if magic != MDB_MAGIC:
                continue
            dbs = [_DB.unpack_from(self.data, base + 24 + k * _DB.size) for k in (0, 1)]
            last_pg, txnid = struct.unpack_from("<QQ", self.data, base + 24 + 2 * _DB.size)
            m = {"page": i, "dbs": dbs, "last_pg": last_pg, "txnid": txnid}
            if best is None or txnid > best["txnid"]:
                best = m
        if best is None:
            raise ValueError("no valid meta page")
        return best

    def meta_pages(self) -> list[int]:
        return [0, 1]

    # ------------------------------------------------------------------ trees
    def _walk(self, name: str, db) -> Database:
        pad, flags, depth, _b, _l, _o, entries, root = db
        out = Database(name, flags, entries)
        if root == P_INVALID:
            return out
        stack, seen = [root], set()
        while stack:
            pgno = stack.pop()
            if pgno in seen or pgno * self.psize >= len(self.data):
                continue
            seen.add(pgno)
            base = pgno * self.psize
            _pg, _pad, pflags, lower, upper = struct.unpack_from("<QHHHH", self.data, base)
            if pflags & P_BRANCH:
                page = Page(pgno, "branch")
                for ptr in self._ptrs(base, lower):
                    lo, hi, nflags, ksize = struct.unpack_from("<HHHH", self.data, base + ptr)
                    child = lo | (hi << 16) | (nflags << 32)
                    koff = base + ptr + NODESIZE
                    page.nodes.append(Node((koff, ksize), (koff, 0)))
                    stack.append(child)
                out.pages.append(page)
            elif pflags & P_LEAF:
                page = Page(pgno, "leaf")
                if pflags & P_LEAF2:          # fixed-size keys of a DUPFIXED sub-page
                    out.pages.append(page)
                    continue
                for ptr in self._ptrs(base, lower):
                    lo, hi, nflags, ksize = struct.unpack_from("<HHHH", self.data, base + ptr)
                    dsize = lo | (hi << 16)
                    koff = base + ptr + NODESIZE
                    voff = koff + ksize
                    node = Node((koff, ksize), (voff, dsize), raw_key=self.data[koff:koff + ksize])
                    node.subdata = bool(nflags & F_SUBDATA) and not (nflags & F_DUPDATA)
                    if nflags & F_BIGDATA:
                        ov, = struct.unpack_from("<Q", self.data, voff)
                        node.overflow = ov
                        node.value = (voff, 8)
                        npages, = struct.unpack_from("<I", self.data, ov * self.psize + 12)
                        out.pages.append(Page(ov, "overflow", npages, owner=node.raw_key))
                        # an overflow value: its bytes start after the page header
                        node.big = (ov * self.psize + PAGEHDRSZ, dsize)
                    page.nodes.append(node)
                out.pages.append(page)
        return out

    def _ptrs(self, base: int, lower: int):
        n = max(0, (lower - PAGEHDRSZ) >> 1)
        return struct.unpack_from(f"<{n}H", self.data, base + PAGEHDRSZ) if n else ()

    def leaf_keys(self, name: str) -> list[bytes]:
        return sorted(n.raw_key for p in self.databases[name].pages if p.kind == "leaf" for n in p.nodes)


def by_lead_byte(db: Database) -> dict[int, Database]:
    """The pages of a database that keeps several tables as key ranges (each key led by
    its table's byte), by that byte: a leaf page goes with every table it holds entries
    of (with those entries only), an overflow page with the key it belongs to. Branch
    pages belong to all of them: they stay out."""
    out: dict[int, Database] = {}

    def part(b: int) -> Database:
        return out.setdefault(b, Database(f"{db.name}[{b:#04x}]", db.flags, 0))
    for p in db.pages:
        if p.kind == "overflow" and p.owner:
            part(p.owner[0]).pages.append(p)
        elif p.kind == "leaf":
            for b in sorted({n.raw_key[0] for n in p.nodes if n.raw_key}):
                part(b).pages.append(Page(p.pgno, p.kind, p.npages,
                                          [n for n in p.nodes if n.raw_key[:1] == bytes([b])]))
    return out


def walk_checked(path: str) -> Layout:
    """The layout of the LMDB file at path, checked against what the lmdb module lists:
    the same named databases, and in each one the same keys. Raises AssertionError if the
    walk and lmdb disagree (then the targeted corruptions would aim at the wrong bytes)."""
    import lmdb
    lay = Layout(path)
    env = lmdb.open(os.path.dirname(path), readonly=True, lock=False, max_dbs=256, subdir=True)
    try:
        with env.begin() as txn:
            main_keys = [k for k, _ in txn.cursor()]
        assert sorted(main_keys) == lay.leaf_keys("<main>"), "main database keys differ from the walk"
        names = [n for n in lay.databases if not n.startswith("<")]
        for name in names:
            db = env.open_db(name.encode("utf-8", "surrogateescape"), create=False)
            with env.begin(db=db) as txn:
                keys = sorted(k for k, _ in txn.cursor())
            if lay.databases[name].flags & 0x04:      # MDB_DUPSORT: keys repeat in sub-pages
                keys = sorted(set(keys))
            assert keys == lay.leaf_keys(name), f"database {name!r}: keys differ from the walk"
    finally:
        env.close()
    return lay
