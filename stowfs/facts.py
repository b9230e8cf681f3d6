"""Small per-file facts computed once at ingest, stored in the file's record.

A provider owns one key. It gets the parse and the original bytes and returns something
msgpack can hold (ints, strings, lists, dicts) and that is small: a few numbers, not the
content. The store keeps `compute()`'s result in the file's record, and
`FileInfo.facts` gives it back without any decode, so `stat`, `ls -l`, `stats`,
`tokens`, `cost` and `query` answer from records alone.

Providers must be total (any Parsed, opaque ones included) and deterministic (the
same bytes give the same facts). A provider's key is forever; when what it computes
changes meaning, give it a new key, or put a version inside its value that readers
check (`views` does: a record whose renderer version is old is re-measured on read).
"""
from __future__ import annotations

from typing import Any, Callable

from .conversation import Parsed

Provider = Callable[[Parsed, bytes], Any]
PROVIDERS: dict[str, Provider] = {}


def provider(key: str) -> Callable[[Provider], Provider]:
    """Register fn as the provider of facts[key]."""
    def register(fn: Provider) -> Provider:
        if key in PROVIDERS:
            raise ValueError(f"fact {key!r} has a provider already")
        PROVIDERS[key] = fn
        return fn
    return register


def compute(parsed: Parsed, data: bytes) -> dict:
    """Every provider's fact for one file; a None answer is left out."""
    _load()
    out = {}
    for key, fn in PROVIDERS.items():
        value = fn(parsed, data)
        if value is not None:
            out[key] = value
    return out


def _load() -> None:
    """Import the modules that register providers (once)."""
    from . import views  # noqa: F401  (registers "views")
    from . import tokens, usage  # noqa: F401  (register "tokens", "usage")
