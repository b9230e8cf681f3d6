"""Inode numbers and entry names of the mount: pure functions, no state.

Inode numbers (64-bit, below 2**63 so they also serve as readdir offsets):

    1 .. 15                  the root and the fixed top-level entries (TOP)
    16 + file_id*8 + code    a stored file seen through one view (code: FILE_CODES); a
                             file_id is never reused and a replaced file gets a new one,
                             so these are stable across remounts and never reused
    [2**62, 2**62 + 2**61)   directories of the store views: a hash of (view, path), so
                             stable across remounts with no table
    [2**62 + 2**61, 2**63)   inbox/ entries: a per-mount counter seeded with the clock

Flat names: by-model/MODEL/, by-app/APP/, by-day/DAY/ and errors/ are flat directories.
A stored path (or a metadata value) becomes one entry name by percent-encoding '%' as
'%25' and '/' as '%2F' (and a whole name '.' or '..' as '%2E...'); nothing else changes,
so projects/a/x.jsonl shows as projects%2Fa%2Fx.jsonl. The encoding is a bijection:
unflat() rejects names flat() would never produce.
"""
from __future__ import annotations

import hashlib
import re
import time

ROOT_INO = 1
TOP = {  # name -> inode, in the order ls shows them unsorted
    "inbox": 2, "conversations": 3, "text": 4, "by-model": 5, "by-app": 6, "by-day": 7,
    "errors": 8, "stats.json": 9, "reports": 10,
}
STATS_INO = TOP["stats.json"]
REPORTS_INO = TOP["reports"]
REPORT_FILES = {  # reports/ entries (stowfs.reports) -> inode; all fixed, below FILE_BASE
    "dups.txt": 11, "prompts.txt": 12, "near-dups.txt": 13, "reports.json": 14,
}
BY_KEYS = {"by-model": "model", "by-app": "app", "by-day": "day"}   # view -> Store index key

FILE_BASE = 16
FILE_CODES = {"conversations": 0, "text": 1, "errors": 2, "link": 3}
DIR_BASE = 1 << 62
DIR_SPAN = 1 << 61
INBOX_BASE = DIR_BASE + DIR_SPAN
NAME_MAX = 255


def file_ino(file_id: int, view: str) -> int:
    return FILE_BASE + file_id * 8 + FILE_CODES[view]


def dir_ino(view: str, path: str) -> int:
    """Inode of directory `path` ('' = the view's top directory) of a store view."""
    if not path:
        return TOP[view]
    h = hashlib.blake2b(f"{view}\0{path}".encode("utf-8", "surrogateescape"), digest_size=8)
    return DIR_BASE + (int.from_bytes(h.digest(), "big") % DIR_SPAN)


class InboxInodes:
    """Counter for inbox/ entries: never reused within a mount, and seeded with the clock
    in microseconds so a later mount starts above anything an earlier one handed out."""

    def __init__(self) -> None:
        self._next = INBOX_BASE + (time.time_ns() // 1000) % (DIR_SPAN // 2)

    def __call__(self) -> int:
        self._next += 1
        return self._next


_ESCAPE = {"%": "%25", "/": "%2F"}
_UNESCAPE = re.compile(r"%(25|2F|2E)")


def flat(path: str) -> str:
    if path in (".", ".."):
        return path.replace(".", "%2E")
    return path.replace("%", "%25").replace("/", "%2F")


def unflat(name: str) -> str | None:
    """The path a flat name stands for, or None if flat() never produces `name`."""
    path = _UNESCAPE.sub(lambda m: {"25": "%", "2F": "/", "2E": "."}[m.group(1)], name)
    return path if path and flat(path) == name else None


def fits(name: str) -> bool:
    """Whether `name` can be one directory entry."""
    return 0 < len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX


def join(dirpath: str, name: str) -> str:
    return f"{dirpath}/{name}" if dirpath else name


def split(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


def link_target(path: str) -> str:
    """Target of by-*/VALUE/FLAT: relative, two levels up to the mount root."""
    return "../../conversations/" + path


# search/QUERY/ and the analytics reports (issue 15): fixed nodes whose inodes are hashed
# into the directory range, so they take none of the few small fixed numbers.
def _hashed_ino(name: str) -> int:
    return dir_ino("fixed", name)


TOP["search"] = _hashed_ino("search")          # search/QUERY/FLAT -> ../../conversations/PATH
REPORT_FILES["by-model.txt"] = _hashed_ino("reports/by-model.txt")
REPORT_FILES["by-model.json"] = _hashed_ino("reports/by-model.json")


def search_query(name: str) -> str:
    """The query a search/ entry name stands for: '/' cannot be in a name, so it is
    spelled %2F (and '%' as %25) as in the flat names; any other name is the query."""
    q = unflat(name)
    return q if q is not None else name
