"""Views: renderings of a stored file, each a pure function of its original bytes.

A view is registered here with the folder it appears under in the mount, the suffix its
files get, and a version. The store never stores a view's bytes: a read renders it from
the original (the mount caches the result). What is stored is each view's size, taken at
ingest by the "views" fact ({name: [version, size]}), so `stat` and `ls -l` need no
decode. When a renderer changes, bump its version: sizes stored under an older version
are measured again on first use instead of being trusted.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

from ..conversation import Parsed


@dataclass(frozen=True)
class View:
    name: str                              # as in Store.get(name, view=...)
    folder: str                            # mount folder: MOUNT/<folder>/PATH<suffix>
    suffix: str                            # appended to the stored path ("" keeps it)
    version: int                           # bump when the rendering changes
    render: Callable[[Parsed, bytes], bytes]
    applies: Callable[[Parsed], bool]      # False: the file has no such view (size 0)
    # (bytes, stats) in one pass, for views that count what they changed (compact, lean);
    # render is then derived from it
    render_stats: Optional[Callable[[Parsed, bytes], tuple]] = None


VIEWS: dict[str, View] = {}


def register(view: View) -> View:
    if view.name in VIEWS or view.name == "original":
        raise ValueError(f"view {view.name!r} exists already")
    VIEWS[view.name] = view
    return view


def render(view: str, data: bytes, name: str = "", parsed: Optional[Parsed] = None) -> bytes:
    """The bytes of a view of a file whose original bytes are data."""
    v = VIEWS[view]
    if parsed is None:
        from ..formats import parse
        parsed = parse(data, name)
    return v.render(parsed, data) if v.applies(parsed) else b""


_memo = threading.local()


def _rendered(view: str, parsed: Parsed, data: bytes) -> tuple:
    """(bytes, stats or None) of a view, rendered once per (parsed, data) pair: the
    facts providers of one file ("views", "tokens") share the renderings."""
    m = getattr(_memo, "last", None)
    if m is None or m[0] is not parsed or m[1] is not data:
        m = _memo.last = (parsed, data, {})
    hit = m[2].get(view)
    if hit is None:
        v = VIEWS[view]
        if not v.applies(parsed):
            hit = (b"", None)
        elif v.render_stats is not None:
            hit = v.render_stats(parsed, data)
        else:
            hit = (v.render(parsed, data), None)
        m[2][view] = hit
    return hit


def rendered(view: str, parsed: Parsed, data: bytes) -> bytes:
    return _rendered(view, parsed, data)[0]


def render_stats(view: str, parsed: Parsed, data: bytes) -> Optional[dict]:
    return _rendered(view, parsed, data)[1]


def sizes(parsed: Parsed, data: bytes) -> dict:
    """{view: [version, size]} for every registered view (the "views" fact)."""
    return {v.name: [v.version, len(rendered(v.name, parsed, data))] for v in VIEWS.values()}


def _register_builtin() -> None:
    from . import text
    register(View("text", "text", ".txt", 2, lambda p, _d: text.render_bytes(p),
                  lambda p: p.is_conversation))
    from . import compact, lean
    register(compact.VIEW)
    register(lean.VIEW)


_register_builtin()

from .. import facts as _facts  # noqa: E402

_facts.provider("views")(sizes)
