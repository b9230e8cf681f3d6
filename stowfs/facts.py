"""Small per-file facts, stored in the file's record.

A provider owns one key. It gets the parse and the original bytes and returns something
msgpack can hold (ints, strings, lists, dicts) and that is small: a few numbers, not the
content. The store keeps the result in the file's record, and `FileInfo.facts` gives it
back without any decode, so `stat`, `ls -l`, `stats`, `tokens`, `cost` and `query`
answer from records alone.

Two kinds of provider:
- taken at ingest (`compute`): what the mount needs the moment a file is stored, such as
  the size of each view (`views`) and the usage a log reports (`usage`);
- taken later (`later=True`, `compute_later`): costly ones that nothing needs at once,
  such as exact token counts (`tokens`: two tokenizers to load and every view to count,
  about half of what preparing a file cost). Ingest stores the record with
  facts[PENDING] = 1 instead, and compaction (`stowfs compact`, or the mount when it is
  idle) takes them and puts them in the record (stowfs.store.latefacts). A reader that
  needs them before that takes them itself and may keep them in the aux database
  STAGED (`stage`, by file id, which is never reused), which compaction then folds into
  the record and clears (`unstage`).

Providers must be total (any Parsed, opaque ones included) and deterministic (the
same bytes give the same facts). A provider's key is forever; when what it computes
changes meaning, give it a new key, or put a version inside its value that readers
check (`views` does: a record whose renderer version is old is re-measured on read).
"""
from __future__ import annotations

from typing import Any, Callable

from .conversation import Parsed
from .packing import pack, unpack

Provider = Callable[[Parsed, bytes], Any]
PROVIDERS: dict[str, Provider] = {}
LATER: dict[str, Provider] = {}
PENDING = "pending"         # the record's later facts are not taken yet
STAGED = "token-facts"      # aux database: file id -> later facts a reader took early


def provider(key: str, later: bool = False) -> Callable[[Provider], Provider]:
    """Register fn as the provider of facts[key] (later: taken after ingest)."""
    def register(fn: Provider) -> Provider:
        if key in PROVIDERS or key in LATER or key == PENDING:
            raise ValueError(f"fact {key!r} has a provider already")
        (LATER if later else PROVIDERS)[key] = fn
        return fn
    return register


def _run(providers: dict, parsed: Parsed, data: bytes) -> dict:
    out = {}
    for key, fn in providers.items():
        value = fn(parsed, data)
        if value is not None:
            out[key] = value
    return out


def compute(parsed: Parsed, data: bytes) -> dict:
    """The facts taken at ingest, and the mark that the later ones are still to take
    (a None answer is left out)."""
    preload()
    out = _run(PROVIDERS, parsed, data)
    if LATER:
        out[PENDING] = 1
    return out


def compute_later(parsed: Parsed, data: bytes) -> dict:
    """The facts taken after ingest (a None answer is left out)."""
    preload()
    return _run(LATER, parsed, data)


def compute_all(parsed: Parsed, data: bytes) -> dict:
    """Every fact, none left for later."""
    preload()
    return {**_run(PROVIDERS, parsed, data), **_run(LATER, parsed, data)}


def later_keys() -> frozenset:
    """The keys of the facts taken after ingest."""
    preload()
    return frozenset(LATER)


def _staged_key(file_id: int) -> bytes:
    return int(file_id).to_bytes(8, "big")


def staged(store) -> dict[int, dict]:
    """{file id: facts} a reader took early and kept (`stage`), every one of them: only
    files not compacted since they were counted have one."""
    got = store.aux_read(STAGED, lambda txn, db: {int.from_bytes(k, "big"): unpack(bytes(v))
                                                  for k, v in txn.cursor(db=db)})
    return got or {}


def staged_one(store, file_id: int):
    """The facts kept for one file (None: none)."""
    raw = store.aux_read(STAGED, lambda txn, db: txn.get(_staged_key(file_id), db=db))
    return None if raw is None else unpack(bytes(raw))


def stage(store, file_id: int, got: dict) -> None:
    """Keep facts a reader took early (a writable store only; else nothing is kept)."""
    if not getattr(store, "readonly", True):
        store.aux_write(STAGED, lambda txn, db: txn.put(_staged_key(file_id), pack(got), db=db))


def unstage(store, file_ids) -> None:
    """Drop what was kept for these files (their records hold it now). Writes only when
    there is something to drop: the aux database is not made for nothing."""
    have = staged(store)
    gone = [f for f in file_ids if f in have]
    if gone:
        store.aux_write(STAGED, lambda txn, db: [txn.delete(_staged_key(f), db=db) for f in gone])


def preload() -> None:
    """Import the modules that register providers (once)."""
    from . import views  # noqa: F401  (registers "views")
    from . import tokens, usage  # noqa: F401  (register "tokens", "usage")


def views_fact(facts) -> dict:
    """facts["views"] ({view: [renderer version, size]}) of a file's facts, or {}: from a
    dict, or from a map that gives it without building the rest (the store's LazyFacts,
    a decoded record's)."""
    lazy = getattr(facts, "views", None)
    if lazy is not None:
        return lazy()
    return (facts or {}).get("views") or {}
