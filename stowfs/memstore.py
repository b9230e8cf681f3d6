"""MemoryStore: the in-memory twin of stowfs.Store (plain dicts, no compression).

It implements the public API of stowfs.store.Store (see that module) so the filesystem
model and its tests run without LMDB, without a disk and without a mount, the way
dulwich's MemoryObjectStore stands beside its DiskObjectStore. It keeps no secondary
indexes: every listing is a scan, which is fine for a test twin.

Views: 'original' is the stored bytes; 'text' is stowfs.views.text.render_bytes of
stowfs.formats.parse(data) when those exist (else empty). Tests that need metadata
without the real parsers pass analyze=, a function data, name -> Analysis.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

from .errors import Exists, InvalidName, NotFound, StowError
from .store import FileInfo, PutResult, check_name

VIEWS = ("original", "text")


@dataclass(frozen=True)
class Analysis:
    """What MemoryStore records about one file's content."""
    format: str = "opaque"
    error: Optional[str] = None
    application: Optional[str] = None
    models: tuple = ()
    day: Optional[str] = None
    text: bytes = b""


def default_analyze(data: bytes, name: str) -> Analysis:
    """Parse with stowfs.formats and render with stowfs.views.text, as the real store does."""
    try:
        from .formats import parse
        from .views.text import render_bytes
    except ImportError:
        return Analysis(error="no parser available")
    parsed = parse(data, name)
    conv0 = parsed.conversations[0] if parsed.conversations else None
    day = conv0.started[:10] if conv0 is not None and conv0.started and len(conv0.started) >= 10 else None
    app = next((c.application for c in parsed.conversations if c.application), None)
    return Analysis(format=parsed.format, error=parsed.issue, application=app,
                    models=tuple(parsed.models()), day=day,
                    text=render_bytes(parsed) if parsed.is_conversation else b"")


def _text_version() -> int:
    from .views import VIEWS
    return VIEWS["text"].version


class MemoryViewReader:
    def __init__(self, data: bytes):
        self._data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset:offset + max(size, 0)] if offset >= 0 else b""

    read_ready = read


class MemoryStore:
    """Same API and error behaviour as stowfs.store.Store, held in dicts."""

    def __init__(self, path=None, *, readonly: bool = False, create: bool = True,
                 cache_bytes: int = 0, analyze: Callable[[bytes, str], Analysis] = default_analyze):
        self.path = path
        self.readonly = readonly
        self._analyze = analyze
        self._files: dict[str, tuple[FileInfo, bytes, bytes]] = {}   # name -> (info, original, text)
        self._next_id = 1
        self._generation = 0
        self._lock = threading.RLock()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing
    def put(self, name: str, data: bytes, *, mtime: Optional[float] = None,
            mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> PutResult:
        name = check_name(name)
        data = bytes(data)
        a = self._analyze(data, name)
        with self._lock:
            self._check_place(name)
            old = self._files.get(name)
            fid = self._next_id
            self._next_id += 1
            if mtime_ns is None:
                mtime_ns = time.time_ns() if mtime is None else int(round(float(mtime) * 1e9))
            info = FileInfo(name=name, file_id=fid, size=len(data), text_size=len(a.text),
                            format=a.format, application=a.application,
                            model=a.models[0] if a.models else None, models=tuple(a.models),
                            day=a.day, mtime=mtime_ns / 1e9, error=a.error,
                            checksum=hashlib.blake2b(data, digest_size=4).hexdigest(),
                            facts={"views": {"text": [_text_version(), len(a.text)]}},
                            mtime_ns=mtime_ns, mode=0o644 if mode is None else mode & 0o7777)
            self._files[name] = (info, data, a.text)
            self._generation += 1
        return PutResult(name, fid, len(data), len(data), 0, a.format, a.error, old is not None)

    def put_file(self, name: str, src_path, *, mtime: Optional[float] = None,
                 mtime_ns: Optional[int] = None, mode: Optional[int] = None) -> PutResult:
        import os
        try:
            with open(src_path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except OSError as e:
            raise NotFound(f"cannot read {src_path}: {e.strerror}") from None
        if mtime_ns is None and mtime is None:
            mtime_ns = st.st_mtime_ns
        return self.put(name, data, mtime=mtime, mtime_ns=mtime_ns,
                        mode=st.st_mode if mode is None else mode)

    def _check_place(self, name: str) -> None:
        if self._is_dir(name):
            raise Exists(f"{name} is a directory")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self._files:
                raise Exists(f"{parent} is a file, not a directory")

    def remove(self, name: str) -> None:
        name = check_name(name)
        with self._lock:
            if self._files.pop(name, None) is None:
                raise NotFound(f"no such file: {name}")
            self._generation += 1

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        with self._lock:
            if old not in self._files:
                raise NotFound(f"no such file: {old}")
            if old == new:
                return
            self._check_place(new)
            info, data, text = self._files.pop(old)
            self._files[new] = (replace(info, name=new), data, text)
            self._generation += 1

    # ------------------------------------------------------------------ reading
    def _entry(self, name: str):
        name = check_name(name)
        with self._lock:
            try:
                return self._files[name]
            except KeyError:
                raise NotFound(f"no such file: {name}") from None

    def info(self, name: str) -> FileInfo:
        return self._entry(name)[0]

    def info_by_id(self, file_id: int) -> FileInfo:
        with self._lock:
            for info, _, _ in self._files.values():
                if info.file_id == file_id:
                    return info
        raise NotFound(f"no file with id {file_id}")

    def reader(self, name: str, view: str = "original", file_id: Optional[int] = None) -> MemoryViewReader:
        if view not in VIEWS:
            raise InvalidName(f"unknown view {view!r}")
        info, data, text = self._entry(name)
        if file_id is not None and info.file_id != file_id:
            raise NotFound(f"{name}: this version (file {file_id}) is no longer stored")
        return MemoryViewReader(data if view == "original" else text)

    def read_files(self, files: list) -> list:
        """As Store.read_files."""
        out = []
        for name, fid in files:
            try:
                r = self.reader(name, file_id=fid)
                out.append(r.read(0, r.size))
            except StowError as e:
                out.append(e)
        return out

    def get(self, name: str, view: str = "original") -> bytes:
        r = self.reader(name, view)
        return r.read(0, r.size)

    def aux_read(self, name: str, fn):
        """No derived data is kept here: like a store whose aux database does not exist."""
        return None

    def release_caches(self) -> None:
        """Nothing decoded is kept apart from the files themselves."""

    def drop_mapped(self) -> None:
        """Nothing is mapped."""

    def iter_files(self, prefix: str = "") -> Iterator[FileInfo]:
        with self._lock:
            infos = [e[0] for n, e in self._files.items() if n.startswith(prefix)]
        return iter(sorted(infos, key=lambda i: i.name))

    def prefetch(self, file_id: int) -> None:
        """As Store.prefetch: nothing to decode here."""

    def listdir(self, dirpath: str = "", reuse=None, below: Optional[dict] = None) -> list:
        """As Store.listdir (reuse and below included)."""
        d = dirpath.strip("/")
        prefix = d + "/" if d else ""
        out: dict = {}
        if below is not None:
            below.clear()
        for info in self.iter_files(prefix):
            rest = info.name[len(prefix):]
            child, slash, _ = rest.partition("/")
            if slash and below is not None:
                below[child] = below.get(child, 0) + 1
            held = reuse(info.name, info.file_id) if reuse is not None and not slash else None
            out[child] = None if slash else info if held is None else held
        return sorted(out.items(), key=lambda e: e[0])

    def _is_dir(self, path: str) -> bool:
        p = path.strip("/")
        if not p:
            return True
        return any(n.startswith(p + "/") for n in self._files)

    def is_dir(self, path: str) -> bool:
        with self._lock:
            return self._is_dir(path)

    def index_values(self, key: str) -> list[str]:
        return sorted({v for info in self.iter_files() if (v := _index_value(info, key))})

    def index_files(self, key: str, value: str) -> list[FileInfo]:
        return [info for info in self.iter_files() if _index_value(info, key) == value]

    @property
    def generation(self) -> int:
        return self._generation

    def stats(self) -> dict:
        infos = list(self.iter_files())
        size = sum(i.size for i in infos)
        return {"files": len(infos), "unparsed_files": sum(1 for i in infos if i.error),
                "naive_bytes": size, "disk_bytes": size, "generation": self._generation}

    def verify(self):
        return {"ok": True, "files": len(self._files)}

    def gc(self) -> dict:
        return {}

    def compact(self) -> dict:
        return {}


def _index_value(info: FileInfo, key: str) -> Optional[str]:
    return {"model": info.model, "app": info.application, "day": info.day}[key]

