"""Inode numbers and entry names of the mount: pure functions, no state.

Inode numbers (64-bit, below 2**63 so they also serve as readdir offsets):

    1 .. 15                  the root and the fixed top-level entries (TOP)
    16 + file_id*8 + code    a stored file seen through one view (code: FILE_CODES); a
                             file_id is never reused and a replaced file gets a new one,
                             so these are stable across remounts and never reused
    [2**62, 2**62 + 2**61)   directories of the store views: a hash of (view, path), so
                             stable across remounts with no table; also the top folders of
                             registry views and report files beyond the 15 fixed numbers
                             (a hash of their name) and budget/N/ files (a hash of N and
                             the file_id, which is never reused)
    [2**62 + 2**61, 2**63)   inbox/ entries: a per-mount counter seeded with the clock

Flat names: by-model/MODEL/, by-app/APP/, by-day/DAY/ and errors/ are flat directories.
A stored path (or a metadata value) becomes one entry name by percent-encoding '%' as
'%25' and '/' as '%2F' (and a whole name '.' or '..' as '%2E...'); nothing else changes,
so projects/a/x.jsonl shows as projects%2Fa%2Fx.jsonl. The encoding is a bijection:
unflat() rejects names flat() would never produce.
"""
from __future__ import annotations

import functools
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


def _hashed(key: str) -> int:
    h = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8)
    return DIR_BASE + (int.from_bytes(h.digest(), "big") % DIR_SPAN)


# --- every view of the registry (stowfs.views) gets its folder: MOUNT/<folder>/PATH<suffix>.
# Folder -> view name; conversations/ is the original. File codes 4..7 go to the views
# after text in registration order (so they are stable while the registry is).
def _view_folders() -> tuple[dict, dict]:
    from ..views import VIEWS
    folders, suffixes = {"conversations": "original"}, {"conversations": ""}
    for v in VIEWS.values():
        folders[v.folder] = v.name
        suffixes[v.folder] = v.suffix
        if v.folder not in TOP:
            TOP[v.folder] = _hashed("top\0" + v.folder)
        if v.folder not in FILE_CODES:
            code = max(FILE_CODES.values()) + 1
            if code >= 8:
                raise RuntimeError(f"view {v.name!r}: no inode code left (widen file_ino's stride)")
            FILE_CODES[v.folder] = code
    return folders, suffixes


STORE_FOLDERS, FOLDER_SUFFIX = _view_folders()

# budget/N/PATH.txt: the transcript trimmed to N tokens (stowfs.views.budget), any N.
BUDGET = "budget"
BUDGET_LISTED = (1000, 4000, 8000, 32000, 128000)    # what `ls budget/` shows; any N works
TOP[BUDGET] = _hashed("top\0" + BUDGET)
REPORT_FILES.update({"cost.txt": 15, "cost.json": _hashed("report\0cost.json")})


def budget_view(n: int) -> str:
    return f"{BUDGET}:{n}"


def budget_of(view: str):
    """N of a budget:N view name, else None."""
    return int(view[len(BUDGET) + 1:]) if view.startswith(BUDGET + ":") else None


def budget_file_ino(file_id: int, n: int) -> int:
    return _hashed(f"budget-file\0{n}\0{file_id}")


def file_ino(file_id: int, view: str) -> int:
    n = budget_of(view)
    if n is not None:
        return budget_file_ino(file_id, n)
    return FILE_BASE + file_id * 8 + FILE_CODES[view]


@functools.lru_cache(maxsize=4096)     # every open of a stored file asks for its directory's
def dir_ino(view: str, path: str) -> int:
    """Inode of directory `path` ('' = the view's top directory) of a store view."""
    if not path and view in TOP:
        return TOP[view]
    return _hashed(f"{view}\0{path}")


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
