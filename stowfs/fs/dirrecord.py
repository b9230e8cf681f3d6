"""The directories of inbox/ that have no spool directory (inbox.Inbox.prune): their
paths, modes and mtimes, in one small file, STORE/spool.dirs (JSON: {path: [mode,
mtime_ns]}), written to a new file and renamed over it, so a crash leaves the old record
or the new one. A directory entry on disk costs 4 KiB for good; a record entry ~60 bytes.

Kept in memory with an index of each directory's children, so listing a directory does
not scan every record. A change of structure (add, drop, move) is written at once; a
changed mode or mtime (rsync -a sets every directory's at the end of a run) only at the
next `save()`, which the inbox calls after each ingest round and at unmount.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from .names import split

log = logging.getLogger(__name__)


class DirRecord:
    def __init__(self, path: Path):
        self.path = path
        self._d: dict[str, list] = {}
        self._children: dict[str, set] = {}
        self._dirty = False
        for rel, attrs in self._load().items():
            self._set(rel, attrs)

    def _load(self) -> dict:
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8", errors="surrogateescape"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("%s cannot be read (%s): the empty directories of inbox/ it kept are not shown",
                      self.path, e)
            return {}
        if not isinstance(rec, dict):
            return {}
        return {k: v for k, v in rec.items() if isinstance(k, str) and k and isinstance(v, list)
                and len(v) == 2 and all(type(x) is int for x in v)}

    def save(self) -> None:
        """Write the record if it changed since it was last written."""
        if not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps(self._d, ensure_ascii=True, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._dirty = False

    def __contains__(self, rel: str) -> bool:
        return rel in self._d

    def get(self, rel: str) -> Optional[list]:
        """[mode, mtime_ns] of a recorded directory."""
        return self._d.get(rel)

    def children(self, rel: str) -> list[str]:
        return list(self._children.get(rel, ()))

    def has_below(self, rel: str) -> bool:
        """Whether a recorded directory lies below rel."""
        return bool(self._children.get(rel))

    def under(self, rel: str) -> list[str]:
        """rel (if recorded) and every recorded directory below it."""
        out, todo = [], [rel]
        while todo:
            d = todo.pop()
            if d in self._d:
                out.append(d)
            todo.extend(d + "/" + c if d else c for c in self._children.get(d, ()))
        return out

    def _set(self, rel: str, attrs: list) -> None:
        self._d[rel] = attrs
        parent, name = split(rel)
        self._children.setdefault(parent, set()).add(name)

    def add(self, entries: dict) -> None:
        """Record directories ({rel: [mode, mtime_ns]}), written at once."""
        for rel, attrs in entries.items():
            self._set(rel, attrs)
        self._dirty = True
        self.save()

    def _drop(self, rel: str) -> Optional[list]:
        attrs = self._d.pop(rel, None)
        if attrs is not None:
            parent, name = split(rel)
            kids = self._children.get(parent)
            if kids is not None:
                kids.discard(name)
                if not kids:
                    del self._children[parent]
            self._dirty = True
        return attrs

    def pop(self, rel: str) -> Optional[list]:
        """Drop a recorded directory (written at once); its attributes, or None."""
        attrs = self._drop(rel)
        self.save()
        return attrs

    def move(self, src: str, dst: str) -> None:
        """src and the recorded directories below it, to dst (written at once)."""
        moved = {r: self._d[r] for r in self.under(src)}
        if not moved:
            return
        for r in moved:
            self._drop(r)
        self.add({dst + r[len(src):]: attrs for r, attrs in moved.items()})

    def set_attrs(self, rel: str, mode: Optional[int], mtime_ns: Optional[int]) -> None:
        """A recorded directory's new mode or mtime (written at the next save())."""
        attrs = self._d[rel]
        if mode is not None:
            attrs[0] = mode
        if mtime_ns is not None:
            attrs[1] = mtime_ns
        self._dirty = True
