"""The filesystem model: the store shown as a tree of inodes. No FUSE library here.

    /                       root (read-only: EROFS)
    inbox/                  writable: spool files and what is stored at the same paths;
                            a file is ingested once it has settled or on fsync (inbox.py)
    conversations/PATH      original bytes            (inode 16 + file_id*8 + 0); a spool
                            file waiting to be ingested is served from the spool
    text/PATH.txt           readable transcript       (... + 1)
    FOLDER/PATH SUFFIX      every other view of the registry (stowfs.views): compact/PATH.jsonl
                            (... + 4), lean/PATH (... + 5); sized from the "views" fact
    budget/N/PATH.txt       the transcript trimmed to N tokens, any N (views/budget.py):
                            rendered on lookup, kept in the decoded-bytes cache
    errors/FLAT.txt         why PATH is not a conversation (... + 2)
    by-model/MODEL/FLAT     symlink ../../conversations/PATH (... + 3); same for by-app/APP/
                            and by-day/YYYY-MM-DD/
    stats.json              Store.stats() as JSON
    reports/                dups.txt, prompts.txt, near-dups.txt, reports.json (stowfs.reports),
                            cost.txt, cost.json (stowfs.cost),
                            by-model.txt, by-model.json (stowfs.analytics.query),
                            computed when the store has changed since they were last read
    search/QUERY/FLAT       symlink ../../conversations/PATH for each file whose text view
                            holds QUERY (stowfs.analytics.search_index; '/' spelled %2F)

FLAT is the stored path with '%' and '/' percent-encoded (names.flat), so the by-* and
errors/ directories are flat and each entry maps back to exactly one stored path.

The model is synchronous and thread-safe: the adapter (stowfs.fuse_ops) runs the calls
that may block (open, uncached read, flush of a written file, unlink, rename, readdir
from the start, refresh) in worker threads, and the quick ones on the event loop. Each
store call opens and closes its own transaction. Errors are raised as OSError(errno) or
stowfs.errors.StowError (which carry .errno); anything else is a bug.

Memory: the inode table holds only what the kernel references (lookup counts, dropped by
forget); directory listings are built per opendir from Store.listdir / index_files; the
only other caches are the bounded LRU of decoded bytes and a few per-generation values.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from typing import Callable, Iterator, Optional

from ..store import stats_json
from ..errors import Corrupt, InvalidName, NotFound, StowError
from ..analytics import search_index as _search_index   # search/ (imported here, not in a handler)
from .cache import ByteLRU
from .inbox import DEFAULT_QUIET, Inbox
from .names import (BUDGET, BUDGET_LISTED, BY_KEYS, FILE_CODES, FOLDER_SUFFIX, REPORT_FILES, ROOT_INO,
                    STATS_INO, STORE_FOLDERS, TOP, budget_of, budget_view, dir_ino, file_ino,
                    fits, flat, join, link_target, search_query, split, unflat)
from .node import DIR, FILE, LINK, Attr, DirHandle, FileMeta, Handle, Node, accmode_writes, fs_error
from .readahead import Readahead

log = logging.getLogger(__name__)

# Files up to this size are decoded whole on open and served from the LRU; larger ones are
# read range by range (ViewReader.read decodes only what a range touches).
SMALL_FILE = 256 << 10      # decoded inline by the adapter, see small()
SMALL_DIR = 128             # entries of a directory the adapter lists inline, see small_dir()
KEPT_LISTING = 64           # entries of a directory whose listing is kept per store generation
LOST_OPENS = 8              # two READs of warm files this close: the kernel let pages go
WHOLE_LIMIT = 16 << 20
STORE_VIEWS = STORE_FOLDERS        # folder -> view, every view of the registry (names.py)
PLACE_BATCH = 8                     # files read ahead are decoded this many at a time
READER_VIEWS = ("original", "text")  # decoded range by range; the others are rendered whole
BUDGET_ENTRY_TIMEOUT = 1.0          # budget/ names are not invalidated when a file changes
INBOX_VIEWS = ("inbox", "spool", "inbox-error", "stats", "report")   # nodes with no stored record
_COMPUTED = ("stats", "report")         # files made from the whole store when asked for
_COMPUTED_PARENTS = ("root", "reports")     # directories holding them


class Notifier:
    """Where the model reports kernel cache entries that went stale. The FUSE adapter
    forwards these to the kernel; tests record them."""

    def entry(self, parent_ino: int, name: str) -> None:
        pass


render_stats = stats_json   # stats.json: the same bytes `stowfs stats --json` prints


def error_text(info) -> bytes:
    return f"{info.name}: {info.error}\n".encode("utf-8", "surrogateescape")


def index_value(info, key: str) -> Optional[str]:
    return {"model": info.model, "app": info.application, "day": info.day}[key]


class Filesystem:
    def __init__(self, store, spool_dir, *, cache_bytes: int = 64 << 20,
                 notifier: Optional[Notifier] = None, uid: Optional[int] = None,
                 gid: Optional[int] = None, settle: float = DEFAULT_QUIET):
        self.store = store
        self.notifier = notifier or Notifier()
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.cache = ByteLRU(cache_bytes)
        self._last_read: Optional[float] = None      # monotonic time of the last read (release_idle)
        self.whole_limit = min(WHOLE_LIMIT, max(cache_bytes // 4, 1 << 20))
        self.mount_time = time.time_ns()
        self._lock = threading.RLock()
        self.inbox = Inbox(store, spool_dir, self._lock, quiet=settle,
                           on_conv=self._conv_changed, on_store=self._changed)
        self._nodes: dict[int, Node] = {ROOT_INO: Node(ROOT_INO, DIR, "root", "")}
        for name, ino in TOP.items():
            view = "stats" if ino == STATS_INO else name
            self._nodes[ino] = self.inbox.top if name == "inbox" else \
                Node(ino, FILE if ino == STATS_INO else DIR, view, "")
        for name, ino in REPORT_FILES.items():
            self._nodes[ino] = Node(ino, FILE, "report", name)
        self._fixed = set(self._nodes)
        self._handles: dict[int, object] = {}
        self._next_fh = 0
        self._memos: dict[str, tuple[int, object, int]] = {}   # generation, value, made (ns)
        self._stale_sizes: dict[tuple, int] = {}
        self._seen_generation = store.generation
        self.readahead = Readahead(wanted=self._placeable)
        self.epoch = 0          # read-ahead epoch: see _pages_lost
        self._opens = 0         # stored files opened, ever
        self._lost_at = -LOST_OPENS - 1     # self._opens at the last READ of a warm file

    # ================================================================== inode table
    def _node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise fs_error(errno.ENOENT, f"unknown inode {ino}") from None

    def remember(self, node: Node) -> Node:
        """The kernel now holds one more reference to node (lookup, readdirplus, create)."""
        with self._lock:
            known = self._nodes.get(node.ino)
            if known is None:
                self._nodes[node.ino] = known = node
            elif known is not node and node.view not in INBOX_VIEWS:
                known.path, known.info = node.path, node.info   # e.g. renamed since
                known.checked = node.checked
            known.nlookup += 1
            return known

    def forget(self, ino: int, n: int) -> None:
        with self._lock:
            node = self._nodes.get(ino)
            if node is None or ino in self._fixed:
                return
            node.nlookup -= n
            if node.nlookup <= 0:
                del self._nodes[ino]
                if node.view == "inbox":
                    self.inbox.forget(node)

    def known_inodes(self) -> int:
        return len(self._nodes)

    def _add_handle(self, h) -> int:
        with self._lock:
            self._next_fh += 1
            self._handles[self._next_fh] = h
            return self._next_fh

    def _handle(self, fh: int):
        try:
            return self._handles[fh]
        except KeyError:
            raise fs_error(errno.EBADF) from None

    # ================================================================== store helpers
    def _info(self, path: str):
        try:
            return self.store.info(path)
        except (NotFound, InvalidName):
            return None

    def _memo(self, key: str, fn: Callable):
        """fn() cached until the store's generation changes (any process, any change)."""
        gen = self.store.generation
        hit = self._memos.get(key)
        if hit is not None and hit[0] == gen:
            return hit[1]
        value = fn()
        self._memos[key] = (gen, value, time.time_ns())
        return value

    def _computed(self, node: Node) -> tuple[bytes, int]:
        """stats.json's or a report's bytes, and the time they were made: their mtime,
        the same until the store changes (it was the time of each getattr, and `tar`
        said "file changed as we read it" of every one)."""
        if node.view == "stats":
            data, key = self._stats_json(), "stats"
        else:
            data, key = self._report(node.path), "report:" + node.path
        hit = self._memos.get(key)
        return data, hit[2] if hit is not None and hit[1] is data else time.time_ns()

    def _stats_json(self) -> bytes:
        from ..tokens import add_to_stats
        return self._memo("stats", lambda: render_stats(add_to_stats(self.store, self.store.stats())))

    def _report(self, name: str) -> bytes:
        from .. import reports
        if name in ("cost.txt", "cost.json"):
            from .. import cost
            render = cost.render_text if name == "cost.txt" else cost.render_json
            return self._memo("report:" + name, lambda: render(cost.compute(self.store)).encode())
        if name == "reports.json":
            return self._memo("report:" + name, lambda: reports.render_all_json(self.store))
        if name.startswith("by-model."):
            from ..analytics import query
            fn = query.by_model_json if name.endswith(".json") else query.by_model_text
            return self._memo("report:" + name, lambda: fn(self.store))
        return self._memo("report:" + name, lambda: reports.render_text(self.store, name[:-4]))

    def _index_values(self, key: str) -> set:
        return self._memo("values:" + key, lambda: set(self.store.index_values(key)))

    # ------------------------------------------------------------------ search/ (issue 15)
    SEARCHES_KEPT = 8            # listings kept (each up to one FileInfo per stored file)

    def _search_files(self, query: str) -> list:
        """FileInfo of the files whose text view holds query, kept per store generation
        for the last SEARCHES_KEPT queries."""
        from ..analytics import search_index
        from ..errors import StowError
        try:
            search_index.sync(self.store)     # first: its writes move the generation
            files = self._memo("search:" + query,
                               lambda: search_index.matching_files(self.store, query, do_sync=False))
        except StowError as e:
            raise fs_error(errno.EINVAL, str(e)) from None
        keys = [k for k in self._memos if k.startswith("search:")]
        for k in keys[:-self.SEARCHES_KEPT]:
            self._memos.pop(k, None)
        return files

    def _search_hit(self, query: str, info) -> bool:
        """Whether search/QUERY/ lists info: from the kept listing when current, else by
        reading that one file's text (a lookup never runs a whole search)."""
        from ..analytics import search_index
        from ..errors import StowError
        hit = self._memos.get("search:" + query)
        if hit is not None and hit[0] == self.store.generation:
            return any(i.file_id == info.file_id for i in hit[1])
        try:
            return search_index.file_matches(self.store, info, query)
        except StowError as e:
            raise fs_error(errno.EINVAL, str(e)) from None

    def stop_background(self) -> None:
        """Let the background search-index sync finish; the daemon calls this before it
        closes the store."""
        syncer = self.__dict__.get("_syncer")
        if syncer is not None:
            syncer.stop()

    def _search_synced(self) -> None:
        """Bring the search index up to date in the background (after an ingest)."""
        syncer = self.__dict__.get("_syncer")
        if syncer is None:
            syncer = self._syncer = _search_index.Syncer(self.store, log)
        syncer.kick()

    def _error_files(self) -> list:
        # TODO(store): an index of errored files would avoid this scan (cached per generation).
        return self._memo("errors", lambda: [i for i in self.store.iter_files() if i.error])

    def _file_node(self, view: str, info, gen: int = -1) -> Node:
        """gen: the store generation read before info was looked up (info is current as
        of it: open() need not look the record up again while the store is unchanged)."""
        kind = LINK if view == "link" else FILE
        return Node(file_ino(info.file_id, view), kind, view, info.name, self._meta(info), checked=gen)

    # ------------------------------------------------------------ registry views, budget/
    def _view_size(self, info, folder: str) -> int:
        """Size of a stored file's view: from its record; a view whose stored size is of
        an older renderer version (or missing) is rendered once and its size kept."""
        view = STORE_VIEWS[folder]
        if view == "original":
            return info.size
        if view == "text":
            return info.text_size
        from ..views import VIEWS
        stored = info.view_size(view)
        if stored is not None and stored[0] == VIEWS[view].version:
            return stored[1]
        key = ("size", info.file_id, view)
        size = self._stale_sizes.get(key)
        if size is None:
            size = len(self._render_view(info, view))
            with self._lock:
                if len(self._stale_sizes) > 100_000:
                    self._stale_sizes.clear()
                self._stale_sizes[key] = size
        return size

    def _render_view(self, info, view: str) -> bytes:
        """A rendered view (a registry view or budget:N) of one stored file, through the
        decoded-bytes cache."""
        key = (info.file_id, view)
        data = self.cache.get(key)
        if data is None:
            n = budget_of(view)
            if n is None:
                data = self.store.get(info.name, view=view)
            else:
                from ..formats import parse
                from ..views import budget
                original = self.store.get(info.name)
                data = budget.render(parse(original, info.name), n)
            self.cache.put(key, data)
        return data

    def _budget_dir(self, name: str) -> Optional[Node]:
        from ..views.budget import parse_budget
        try:
            n = parse_budget(name)
        except ValueError:
            return None
        return self._dir_node(budget_view(n), "")

    def _meta(self, info) -> FileMeta:
        """The FileMeta of a stored file's record: the one its known nodes (any view)
        already share when they stand for the same version under the same name."""
        for view in FILE_CODES:
            node = self._nodes.get(file_ino(info.file_id, view))
            if node is not None and node.info is not None and node.info.name == info.name:
                return node.info
        return FileMeta(info)

    @staticmethod
    def _dir_node(view: str, path: str) -> Node:
        return Node(dir_ino(view, path), DIR, view, path)

    # ================================================================== attributes
    def getattr(self, ino: int) -> Attr:
        return self._attr(self._node(ino))

    def _attr(self, node: Node) -> Attr:
        v = node.view
        if v == "inbox":
            return self.inbox.attr(node)
        if v == "spool":
            attr = self.inbox.alias_attr(node)
            if attr is None:     # ingested meanwhile: the stored file, as the alias now
                info = self._info(node.path)
                if info is None:
                    raise fs_error(errno.ENOENT)
                attr = Attr(node.ino, stat.S_IFREG | info.mode, info.size, info.mtime_ns,
                            entry_timeout=0, attr_timeout=0)
            return attr
        if v == "inbox-error":
            return Attr(node.ino, stat.S_IFREG | 0o444, len(self.inbox.error_text(node.path)),
                        self.inbox.error_time(node.path), attr_timeout=0, entry_timeout=0)
        if node.kind == DIR:
            perm = 0o755 if v in ("inbox", "conversations") else 0o555
            return Attr(node.ino, stat.S_IFDIR | perm, 0, self.mount_time)
        if v in _COMPUTED:
            data, made = self._computed(node)
            return Attr(node.ino, stat.S_IFREG | 0o444, len(data), made, attr_timeout=0)
        info = node.info
        if node.kind == LINK:
            return Attr(node.ino, stat.S_IFLNK | 0o777, len(link_target(info.name).encode()), info.mtime_ns)
        if v == "conversations":      # the original keeps the mode it was written with
            return Attr(node.ino, stat.S_IFREG | info.mode, info.size, info.mtime_ns)
        if v in STORE_VIEWS:
            return Attr(node.ino, stat.S_IFREG | 0o444, self._view_size(info, v), info.mtime_ns)
        if budget_of(v) is not None:
            size = len(self._render_view(info, v))
            return Attr(node.ino, stat.S_IFREG | 0o444, size, info.mtime_ns,
                        entry_timeout=BUDGET_ENTRY_TIMEOUT)
        return Attr(node.ino, stat.S_IFREG | 0o444, len(error_text(info)), info.mtime_ns)

    def readlink(self, ino: int) -> str:
        node = self._node(ino)
        if node.kind != LINK:
            raise fs_error(errno.EINVAL)
        return link_target(node.info.name)

    # ================================================================== names
    def lookup(self, parent: int, name: str) -> tuple[Node, Attr]:
        """Resolve name in parent; the caller must remember() the node once the kernel has it."""
        node = self._child(self._node(parent), name)
        return node, self._attr(node)

    def _child(self, d: Node, name: str) -> Node:
        if d.kind != DIR:
            raise fs_error(errno.ENOTDIR)
        v = d.view
        if v == "root":
            if name in TOP:
                return self._nodes[TOP[name]]
        elif v == "inbox":
            return self.inbox.child(d, name)
        elif v == "reports":
            if name in REPORT_FILES:
                return self._nodes[REPORT_FILES[name]]
        elif v == "search":
            if not d.path:
                return self._dir_node(v, search_query(name))
            path = unflat(name)
            info = self._info(path) if path is not None else None
            if info is not None and self._search_hit(d.path, info):
                return self._file_node("link", info)
        elif v == "conversations":
            path = join(d.path, name)
            alias = self.inbox.alias(path)     # written, not ingested yet: the spool file
            if alias is not None:
                return alias
            gen = self.store.generation
            info = self._info(path)
            if info is not None:
                return self._file_node(v, info, gen)
            if self._conv_is_dir(path):
                return self._dir_node(v, path)
        elif v in STORE_VIEWS or budget_of(v) is not None:
            suffix = FOLDER_SUFFIX.get(v, ".txt")
            if suffix and name.endswith(suffix):
                info = self._info(join(d.path, name[:-len(suffix)]))
                if info is not None:
                    return self._file_node(v, info)
            elif not suffix:
                info = self._info(join(d.path, name))
                if info is not None:
                    return self._file_node(v, info)
            path = join(d.path, name)
            if self.store.is_dir(path):
                return self._dir_node(v, path)
        elif v == BUDGET:
            node = self._budget_dir(name)
            if node is not None:
                return node
        elif v == "errors":
            path = unflat(name[:-4]) if name.endswith(".txt") else None
            failed = self.inbox.error_node(path) if path else None
            if failed is not None:
                return failed
            info = self._info(path) if path else None
            if info is not None and info.error:
                return self._file_node(v, info)
        elif v in BY_KEYS:
            key = BY_KEYS[v]
            value = unflat(name)
            if value is not None and not d.path:
                if value in self._index_values(key):
                    return self._dir_node(v, value)
            elif value is not None:
                info = self._info(value)
                if info is not None and index_value(info, key) == d.path:
                    return self._file_node("link", info)
        raise fs_error(errno.ENOENT)

    def _list(self, d: Node) -> list[tuple[str, Node]]:
        v = d.view
        if v == "root":
            return [(name, self._nodes[ino]) for name, ino in TOP.items()]
        if v == "inbox":
            return self.inbox.list(d)
        if v == "reports":
            return [(name, self._nodes[ino]) for name, ino in REPORT_FILES.items()]
        out = []
        if v in STORE_VIEWS or budget_of(v) is not None:
            suffix = FOLDER_SUFFIX.get(v, ".txt")
            spooled = self.inbox.pending_entries(d.path) if v == "conversations" else {}
            gen = self.store.generation
            nodes = self._nodes

            def held(name: str, fid: int) -> Optional[Node]:
                # the node of this very version, current as of this generation (a record
                # changes only with the generation): its record need not be read again
                node = nodes.get(file_ino(fid, v))
                if node is not None and node.checked == gen and node.info is not None \
                        and node.info.name == name:
                    return node
                return None
            below: dict = {}
            for name, item in self.store.listdir(d.path, reuse=held, below=below):
                if name in spooled:
                    continue
                if item is None:
                    sub = self._dir_node(v, join(d.path, name))
                    sub = nodes.get(sub.ino, sub)
                    sub.holds = below.get(name, -1)
                    out.append((name, sub))
                elif isinstance(item, Node):
                    out.append((name + suffix, item))
                else:
                    out.append((name + suffix, self._file_node(v, item, gen)))
            for name, alias in spooled.items():
                out.append((name, alias if alias is not None else self._dir_node(v, join(d.path, name))))
        elif v == BUDGET:
            out = [(str(n), self._dir_node(budget_view(n), "")) for n in BUDGET_LISTED]
        elif v == "errors":
            failed = {}
            for path in list(self.inbox.failures):
                node = self.inbox.error_node(path)
                if node is not None:
                    failed[flat(path) + ".txt"] = node
            out = [(flat(i.name) + ".txt", self._file_node(v, i)) for i in self._error_files()
                   if flat(i.name) + ".txt" not in failed]
            out += list(failed.items())
        elif v == "search":
            out = [] if not d.path else \
                [(flat(i.name), self._file_node("link", i)) for i in self._search_files(d.path)]
        elif v in BY_KEYS:
            key = BY_KEYS[v]
            if not d.path:
                out = [(flat(value), self._dir_node(v, value))
                       for value in sorted(self._index_values(key)) if value]
            else:
                out = [(flat(i.name), self._file_node("link", i))
                       for i in self.store.index_files(key, d.path)]
        return out

    # ================================================================== directories
    def opendir(self, ino: int) -> int:
        node = self._node(ino)
        if node.kind != DIR:
            raise fs_error(errno.ENOTDIR)
        return self._add_handle(DirHandle(node))

    def readdir(self, fh: int, start_id: int) -> Iterator[tuple[str, Node, Attr, int]]:
        """Entries after start_id as (name, node, attr, next_id). The listing is taken
        when a handle starts reading (start_id 0) and kept with the handle, so a name
        created or removed meanwhile never makes another entry appear twice or go
        missing; an offset is a position in that listing. Entries come in name order:
        the order ingest stores files in, so `find`, `grep -r` and `cp -r` read the
        stream front to back (in inode order, directories came in hash order, and a cold
        `cat` of chats decoded its blocks again and again: 4.1 s against 0.6 s)."""
        dh = self._handle(fh)
        if start_id == 0 or not dh.entries:
            # conversations/ and errors/ also show the inbox's spool files and failures
            gen, memo = (self.store.generation, self.inbox.epoch), dh.node.listing
            if memo is not None and memo[0] == gen:
                dh.entries = memo[1]
                self._listed(dh)
                return self._readdir_entries(dh, start_id)
            seen, entries = set(), []
            for name, node in self._list(dh.node):
                if name not in seen and fits(name):
                    seen.add(name)
                    entries.append((name, node))
            entries.sort(key=lambda e: e[0])
            dh.entries = entries
            dh.node.listed = len(entries)
            if dh.node.view != "inbox" and len(entries) <= KEPT_LISTING:
                # grep -r and find open each directory anew: a small listing is kept
                # until the store changes (the inbox changes without it)
                dh.node.listing = (gen, entries)
            self._listed(dh)
        return self._readdir_entries(dh, start_id)

    def _readdir_entries(self, dh: DirHandle, start_id: int):
        if dh.node.view in _COMPUTED_PARENTS:
            # their files' sizes are those of stats.json and the reports, made here (in
            # the adapter's worker thread), not while the reply is filled
            return iter(list(self._entries(dh, start_id)))
        return self._entries(dh, start_id)

    def _listed(self, dh: DirHandle) -> None:
        if dh.node.view in STORE_VIEWS:           # the order a reader may follow (readahead.py)
            files = [n for _, n in dh.entries if n.kind == FILE]
            self.readahead.listed(dh.node.ino, [n.ino for n in files])
            if files and files[0].info is not None:
                self.store.prefetch(files[0].info.file_id)

    def _entries(self, dh: DirHandle, first: int):
        for i in range(first, len(dh.entries)):
            name, node = dh.entries[i]
            try:
                attr = self._attr(node)
            except FileNotFoundError:
                continue     # an inbox file that went away meanwhile
            yield name, node, attr, i + 1

    def small_dir(self, fh: int) -> bool:
        """Whether fh is a directory that had at most SMALL_DIR entries when last listed,
        or, never listed, held at most SMALL_DIR files at any depth when its parent was
        (about 10 µs an entry: quick enough to list without leaving the caller's thread;
        `find` of a deep tree of small directories waited for a worker thread at each:
        ~0.2 ms, a third of a cold walk of the sessions corpus)."""
        h = self._handles.get(fh)
        if not isinstance(h, DirHandle) or budget_of(h.node.view) is not None \
                or h.node.view in _COMPUTED_PARENTS:
            return False
        n = h.node.listed if h.node.listed >= 0 else h.node.holds
        return 0 <= n <= SMALL_DIR

    def renders(self, ino: int, name: Optional[str] = None) -> bool:
        """Whether a getattr of ino, or a lookup of name in ino, may render a file
        (budget/N/: sizes are known only once rendered; stats.json and reports/ are made
        from every record of the store, ~0.1-1 s on a large one, again after every
        change): the adapter runs those in a worker thread, so no other request waits."""
        node = self._nodes.get(ino)
        if node is None:
            return False
        if budget_of(node.view) is not None:
            return True
        if name is None:
            return node.view in _COMPUTED
        return node.view == "reports" or node.view == "root" and TOP.get(name) == STATS_INO

    def releasedir(self, fh: int) -> None:
        with self._lock:
            self._handles.pop(fh, None)

    # ================================================================== files
    def open(self, ino: int, flags: int) -> tuple[int, bool, bool]:
        """Open ino; returns (fh, keep_cache, direct_io). Quick: a stored file is decoded
        at its first read(), which the adapter runs off the event loop."""
        node = self._node(ino)
        if node.view == "inbox":
            return self._add_handle(self.inbox.open(node, flags)), False, False
        if node.view == "spool":
            h = self.inbox.open_alias(node, flags)
            if h is None:        # ingested meanwhile: the stored file has the same bytes
                return self._open_stored(node, "conversations"), False, False
            return self._add_handle(h), False, False
        if node.kind == DIR:
            raise fs_error(errno.EISDIR)
        if accmode_writes(flags):
            raise fs_error(errno.EROFS, "only inbox/ is writable")
        if node.view == "inbox-error":
            return self._add_handle(Handle(node, data=self.inbox.error_text(node.path))), False, True
        if node.view == "stats":
            return self._add_handle(Handle(node, data=self._stats_json())), False, True
        if node.view == "report":
            return self._add_handle(Handle(node, data=self._report(node.path))), False, True
        if node.view == "errors":
            return self._add_handle(Handle(node, data=error_text(node.info))), True, False
        if node.kind != FILE:
            raise fs_error(errno.EINVAL)
        # A warm file is opened again and again (grep -r, cat): while the store's
        # generation has not moved since the last check, node.info is still current and
        # the lookup of the file's record can be skipped. The generation is read first,
        # so a change racing with the check only makes the next open check again.
        if node.view == "conversations" and self.inbox.spooled(node.path):
            raise fs_error(errno.ESTALE)     # written again: the spool file is what it shows now
        gen = self.store.generation
        if node.checked != gen:
            current = self._info(node.path)
            if current is None or current.file_id != node.info.file_id:
                # Replaced or removed since the kernel looked it up: ESTALE makes the
                # kernel look the name up again and open what it names now.
                raise fs_error(errno.ESTALE)
            node.checked = gen
        fh = self._open_stored(node, node.view)
        if node.view in STORE_VIEWS:
            # counted before the reply: while the kernel may read a file it is never
            # placed ahead (see push_batch)
            h = self._handles[fh]
            with self._lock:
                node.opens += 1
                h.counted = True
                self._opens += 1
            if node.seen != self.epoch:
                node.seen = self.epoch
                self.readahead.opened(dir_ino(node.view, split(node.path)[0]), node.ino)
            else:
                # opened again (a warm reader): nothing follows it that the first open did
                # not queue, and the kernel holds its pages (keep_cache); a READ of it
                # says otherwise (read_cached)
                h.expect_cached = True
        return fh, True, False

    def _placeable(self, ino: int) -> bool:
        """Whether push_batch may still place ino (its cheap tests; push_batch has them all)."""
        node = self._nodes.get(ino)
        return node is not None and self._may_place(node)

    def _may_place(self, node: Node) -> bool:
        """Not open now (no READ of it can be in flight: the kernel sends RELEASE only
        once its last READ is answered), and neither opened nor placed in this
        read-ahead epoch (the kernel holds its pages, as far as the mount knows)."""
        epoch = self.epoch
        return node.opens == 0 and node.seen != epoch and node.placed != epoch

    def _pages_lost(self, node: Node) -> None:
        """A file opened again in this read-ahead epoch was asked for by a READ from its
        start: the kernel let its pages go (memory pressure, drop_caches). When another
        did within LOST_OPENS opens before, the kernel let many go: a new epoch begins,
        files opened or placed before may be placed again (once not open), and the
        reader's order is picked up from this file. A reader going through warm files
        sends no READ (or a stray one: 2-15 in a warm cat of chats' 5,000 files on this
        machine), and re-placing every file after such a one was wasted work."""
        if self._opens - self._lost_at > LOST_OPENS:
            self._lost_at = self._opens
            return
        self._lost_at = -LOST_OPENS - 1
        self.epoch += 1
        self.readahead.restart()
        node.seen = self.epoch
        self.readahead.opened(dir_ino(node.view, split(node.path)[0]), node.ino)

    def push_batch(self, limit: int = PLACE_BATCH) -> list[tuple[int, bytes]]:
        """(inode, bytes) of the next stored files (any view of conversations/, text/,
        ...) to place in the kernel's page cache ahead of a reader (readahead.py), up to
        limit of them; [] when none is due. The originals among them are decoded in one
        store transaction (Store.read_files).

        Only a file the kernel knows (listed or looked up), up to SMALL_FILE bytes, not
        open now, and neither opened nor placed in this read-ahead epoch (_may_place,
        _pages_lost). Not open now is what makes placing safe: the kernel locks a page
        while a READ of it is in flight, and placing into it waits for that READ, which
        the event loop would never answer if it were the one placing. There is no READ
        without an open handle (the kernel sends RELEASE only once the handle's last
        READ is answered), and OPEN is answered on the event loop (the count is taken
        before the reply), so the adapter must place each file on the event loop, right
        after unopened(ino) said yes, with no await in between (a file may be opened
        while the batch is decoded). A file that does not decode is skipped (its READ
        reports the damage)."""
        picked: list[tuple[int, Node, Handle]] = []
        while len(picked) < limit:
            ino = self.readahead.take()
            if ino is None:
                break
            node = self._nodes.get(ino)
            if node is None or node.view not in STORE_VIEWS or node.kind != FILE \
                    or not self._may_place(node) or node.nlookup <= 0 or node.info is None \
                    or self.inbox.spooled(node.path):
                continue
            node.placed = self.epoch
            meta = node.info
            try:
                size = self._view_size(meta, node.view)
            except (OSError, StowError) as e:
                log.debug("readahead of %s skipped: %s", node.path, e)
                continue
            if size <= SMALL_FILE:
                picked.append((ino, node, Handle(node, key=(meta.file_id, STORE_VIEWS[node.view]),
                                                 size=size, info=meta)))
        if not picked:
            return []
        stored = [(node.path, h.info.file_id) for _, node, h in picked
                  if h.key[1] == "original" and self.cache.get(h.key) is None]
        try:
            decoded = dict(zip((fid for _, fid in stored), self.store.read_files(stored))) if stored else {}
        except StowError as e:          # e.g. a damaged table: each file alone, below
            log.debug("readahead batch: %s", e)
            decoded = {}
        out = []
        for ino, node, h in picked:
            try:
                data = decoded.get(h.info.file_id) if h.key[1] == "original" else None
                if isinstance(data, Exception):
                    raise data
                if data is None:
                    data = self._decode_whole(h, keep=False)
                elif len(data) != h.size:
                    raise fs_error(errno.ESTALE)
                out.append((ino, data))
            except (OSError, StowError) as e:
                log.debug("readahead of %s skipped: %s", node.path, e)
        return out

    def unopened(self, ino: int) -> bool:
        """Whether ino is not open and was not opened in this read-ahead epoch
        (push_batch: then it may be placed now)."""
        node = self._nodes.get(ino)
        return node is not None and node.opens == 0 and node.seen != self.epoch

    def _open_stored(self, node: Node, folder: str) -> int:
        """A handle on view folder of the stored file node.path (node.info, or as stored
        now when node is a spool alias)."""
        meta = node.info
        if meta is None:
            info = self._info(node.path)
            if info is None:
                raise fs_error(errno.ENOENT)
            meta = self._meta(info)
        view = STORE_VIEWS.get(folder) or folder     # budget:N has no folder entry
        if folder in STORE_VIEWS:
            size = self._view_size(meta, folder)
        else:
            size = len(self._render_view(meta, view))
        return self._add_handle(Handle(node, key=(meta.file_id, view), size=size, info=meta))

    def _reader(self, h: Handle):
        with h.lock:
            if h.reader is None:
                # of the version open() checked, by its record (no name lookup)
                try:
                    reader = self.store.reader(h.node.path, h.key[1], file_id=h.info.file_id)
                except NotFound:
                    raise fs_error(errno.ESTALE) from None
                if reader.size != h.size:
                    raise fs_error(errno.ESTALE)
                h.reader = reader
            return h.reader

    def _decode_whole(self, h: Handle, keep: bool = True) -> bytes:
        data = self.cache.get(h.key)
        if data is None and h.key[1] not in READER_VIEWS:
            data = self._render_view(h.info, h.key[1])
            if len(data) != h.size:
                raise fs_error(errno.ESTALE, f"{h.node.path}: view {h.key[1]} changed size")
        if data is None:
            reader = self._reader(h)
            with h.lock:
                data = reader.read(0, h.size)
            if len(data) != h.size:
                raise Corrupt(f"{h.node.path}: decoded {len(data)} bytes, expected {h.size}")
            if keep:
                self.cache.put(h.key, data)
        return data

    def small(self, fh: int) -> bool:
        """Whether fh is a stored file small enough to decode without leaving the caller's
        thread (SMALL_FILE bytes)."""
        h = self._handles.get(fh)
        return h is not None and h.fd < 0 and h.size <= SMALL_FILE

    def read_cached(self, fh: int, offset: int, size: int) -> Optional[bytes]:
        """The bytes if they can be served without I/O, else None (then call read())."""
        h = self._handle(fh)
        self._last_read = time.monotonic()
        if h.expect_cached and offset == 0:
            h.expect_cached = False
            self._pages_lost(h.node)
        if h.data is not None:
            return h.data[offset:offset + size]
        if h.key is not None:
            data = self.cache.get(h.key)
            if data is not None:
                return data[offset:offset + size]
        return None

    def read_ready(self, fh: int, offset: int, size: int) -> Optional[bytes]:
        """read()'s bytes if they are at hand decoded: a large stored file read before
        (its reader made), whose blocks the store's cache holds decoded and checked.
        Nothing is decoded and no lock waited for, so the event loop may call it: the
        hand-off of a READ to a worker thread and back cost more than copying 128 KiB.
        Else None: call read()."""
        h = self._handles.get(fh)
        if h is None or h.reader is None or h.fd >= 0 or not h.lock.acquire(blocking=False):
            return None
        try:
            self._last_read = time.monotonic()
            return h.reader.read_ready(offset, size)
        finally:
            h.lock.release()

    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        self._last_read = time.monotonic()
        if h.data is not None:
            return h.data[offset:offset + size]
        if h.fd >= 0:
            return self.inbox.read(h, offset, size)
        if offset >= h.size:
            return b""
        if h.size <= self.whole_limit or h.key[1] not in READER_VIEWS:
            if offset == 0 and size >= h.size and h.key[1] in READER_VIEWS:
                # One read takes the whole file: the kernel keeps it in its page cache
                # (keep_cache), so a copy in ours would be dropped unused. Only files
                # read in several requests are worth keeping decoded.
                return self._decode_whole(h, keep=False)
            return self._decode_whole(h)[offset:offset + size]
        reader = self._reader(h)
        with h.lock:
            return reader.read(offset, size)

    def is_inbox(self, ino: int) -> bool:
        node = self._nodes.get(ino)
        return node is not None and node.view == "inbox"

    def open_blocks(self, ino: int, flags: int) -> bool:
        """Whether open(ino, flags) may take a while (copy a stored file into the spool, make
        stats.json or a report from the whole store)."""
        node = self._nodes.get(ino)
        return node is not None and (node.view in _COMPUTED
                                     or node.view == "inbox" and self.inbox.open_blocks(node, flags))

    def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        if h.fd < 0 or not h.writable:
            raise fs_error(errno.EBADF)
        return self.inbox.write(h, offset, data)

    def fsync(self, fh: int) -> None:
        """fsync(): an inbox file reaches the disk and is ingested now."""
        h = self._handle(fh)
        if h.fd >= 0:
            self._ingested(self.inbox.fsync(h))

    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is not None and h.counted:
                h.node.opens -= 1
        if h is not None and h.fd >= 0:
            self.inbox.release(h)

    def release_all(self) -> None:
        """At unmount, once the kernel is gone: the handles it never released are closed. A
        RELEASE still queued when the session ended (cp closed its file, then SIGTERM came)
        or a writer of a detached mount left its inbox file counted as written to, and
        settle(everything=True) passed it over."""
        with self._lock:
            handles = list(self._handles)
        for fh in handles:
            if isinstance(self._handles.get(fh), DirHandle):
                self.releasedir(fh)
            else:
                self.release(fh)

    def settle(self, everything: bool = False) -> int:
        """Ingest the inbox files that have settled (everything: all that no writer holds,
        as at unmount). Returns how many were stored."""
        n = 0
        for p in self.inbox.due(everything=everything):
            result = self.inbox.ingest(p)
            if result is not None:
                n += 1
                self._ingested(result)
        self.inbox.prune()      # the spool directories stored files emptied: into the record
        return n

    def _ingested(self, result) -> None:
        if result is not None:
            self._changed(*result)

    def _conv_is_dir(self, path: str) -> bool:
        return self.store.is_dir(path) or self.inbox.pending_dir(path)

    def _conv_changed(self, path: str) -> None:
        """What conversations/path shows changed between a spool file and the store."""
        d, name = split(path)
        self.notifier.entry(dir_ino("conversations", d), name)
        if self.inbox.pending_dir(d) or self._info(path) is not None:
            return                    # still there: its directories are too
        while d and not self._conv_is_dir(d):
            parent, name = split(d)
            self.notifier.entry(dir_ino("conversations", parent), name)
            d = parent

    # ================================================================== changes
    def create(self, parent: int, name: str, mode: int, flags: int) -> tuple[int, Node, Attr]:
        d = self._writable_dir(parent)
        h = self.inbox.create(d, name, mode, flags)
        return self._add_handle(h), h.node, self.inbox.attr(h.node, h.fd)

    def mkdir(self, parent: int, name: str, mode: int) -> tuple[Node, Attr]:
        node = self.inbox.mkdir(self._writable_dir(parent), name, mode)
        return node, self.inbox.attr(node)

    def mknod(self, parent: int, name: str) -> None:
        """symlink, link, mknod: only regular files and directories can be stored."""
        self._writable_dir(parent)
        raise fs_error(errno.EPERM, "inbox/ holds regular files and directories only")

    def _writable_dir(self, parent: int) -> Node:
        d = self._node(parent)
        if d.kind != DIR:
            raise fs_error(errno.ENOTDIR)
        if d.view != "inbox":
            raise fs_error(errno.EROFS, "only inbox/ is writable")
        return d

    def setattr(self, ino: int, fh: Optional[int] = None, *, size=None, mode=None,
                atime_ns=None, mtime_ns=None) -> Attr:
        """truncate, chmod, utime: inbox/ only (ownership changes are accepted and ignored)."""
        node = self._node(ino)
        if node.view != "inbox":
            if size is None and mode is None and atime_ns is None and mtime_ns is None:
                return self._attr(node)         # chown and the like: accepted, ignored
            raise fs_error(errno.EROFS, "only inbox/ is writable")
        h = self._handles.get(fh) if fh is not None else None
        fd = h.fd if isinstance(h, Handle) else -1
        return self.inbox.setattr(node, fd, size=size, mode=mode, atime_ns=atime_ns, mtime_ns=mtime_ns,
                                  pending=h.pending if isinstance(h, Handle) else None)

    def unlink(self, parent: int, name: str) -> None:
        """rm: in inbox/ drops the spool file; in conversations/ deletes the conversation."""
        d = self._node(parent)
        if d.view == "inbox":
            self.inbox.unlink(d, name)
            return
        node = self._child(d, name)
        if d.view != "conversations":
            raise fs_error(errno.EROFS, "only conversations/ and inbox/ entries can be removed")
        if node.kind == DIR:
            raise fs_error(errno.EISDIR)
        if node.view == "spool":        # not ingested yet: rm of inbox/PATH
            self.inbox.unlink(self.inbox.node(d.path) or self.inbox.top, name)
            # the kernel's inbox/ entry of it, which this rm did not go through (kept, it
            # held the mount's node of a file that no longer exists: ~90 a minute in a soak)
            inbox_dir = self.inbox.known_dir(d.path)
            if inbox_dir is not None:
                self.notifier.entry(inbox_dir, name)
            return
        self.store.remove(node.path)
        # Keep the kernel's entries of directories this emptied: `rm -r` rmdirs them next.
        self._changed(node.path, node.info, None,
                      dir_views=tuple(f for f in STORE_VIEWS if f != "conversations"))

    def rmdir(self, parent: int, name: str) -> None:
        d = self._node(parent)
        if d.view == "inbox":
            self.inbox.rmdir(d, name)
            return
        if d.view != "conversations":
            self._child(d, name)
            raise fs_error(errno.EROFS, "only conversations/ and inbox/ entries can be removed")
        path = join(d.path, name)
        if self._info(path) is not None:
            raise fs_error(errno.ENOTDIR)
        if self.store.is_dir(path):
            raise fs_error(errno.ENOTEMPTY)
        # A directory of conversations/ exists while a file lies under it: once its last
        # file is removed it is gone already, which is what rmdir asked for.
        self._gone_dirs(path)

    def rename(self, p1: int, n1: str, p2: int, n2: str, *, noreplace: bool = False,
               exchange: bool = False) -> None:
        d1, d2 = self._node(p1), self._node(p2)
        if exchange:
            raise fs_error(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        if d1.view == d2.view == "inbox":
            self.inbox.rename(d1, n1, d2, n2, noreplace)
            return
        src = self._child(d1, n1)
        if d1.view != "conversations":
            raise fs_error(errno.EROFS, "only conversations/ and inbox/ entries can be renamed")
        if d2.view != "conversations":
            raise fs_error(errno.EXDEV)
        if src.view == "spool" or self.inbox.pending_dir(src.path):
            raise fs_error(errno.EBUSY, "not ingested yet: rename it in inbox/")
        dst_path = join(d2.path, n2)
        dst_info = self._info(dst_path)
        if noreplace and (dst_info is not None or self.store.is_dir(dst_path)):
            raise fs_error(errno.EEXIST)
        if src.kind == FILE:
            if self.store.is_dir(dst_path):
                raise fs_error(errno.EISDIR)
            self._move(src.info, dst_path, dst_info)
            return
        if dst_info is not None:
            raise fs_error(errno.ENOTDIR)
        if self.store.is_dir(dst_path):
            raise fs_error(errno.ENOTEMPTY)
        if dst_path == src.path or dst_path.startswith(src.path + "/"):
            raise fs_error(errno.EINVAL)
        # One store rename per file: not atomic as a whole (each file moves atomically).
        for info in list(self.store.iter_files(src.path + "/")):
            self._move(info, dst_path + info.name[len(src.path):], None)
        # Directory inodes are derived from their path: the kernel's entry for the new name
        # still holds the old directory's inode, so make it look the name up again.
        with self._lock:
            moved = self._nodes.get(src.ino)
            if moved is not None:
                moved.path = dst_path        # serves the new path until the kernel forgets it
        parent, name = split(dst_path)
        for view in STORE_VIEWS:
            self.notifier.entry(dir_ino(view, parent), name)

    def _move(self, info, new_path: str, replaced) -> None:
        self.store.rename(info.name, new_path)
        new = self._info(new_path)
        meta = FileMeta(new) if new is not None else None
        with self._lock:   # the kernel moved its entry: the inodes now stand for new_path
            for view in FILE_CODES:
                node = self._nodes.get(file_ino(info.file_id, view))
                if node is not None and meta is not None:
                    node.path, node.info = new_path, meta
        self._changed(info.name, info, None)
        self._changed(new_path, replaced, new)

    def statfs(self):
        return os.statvfs(self.inbox.root)

    # ================================================================== invalidation
    def _dentries(self, path: str, info) -> set[tuple[int, str]]:
        """The kernel entries that show stored file `path` (with metadata `info`)."""
        d, base = split(path)
        out = {(dir_ino(folder, d), base + FOLDER_SUFFIX[folder]) for folder in STORE_VIEWS}
        if info is not None:
            if info.error:
                out.add((TOP["errors"], flat(path) + ".txt"))
            for view, key in BY_KEYS.items():
                value = index_value(info, key)
                if value:
                    out.add((dir_ino(view, value), flat(path)))
            # search/QUERY/ directories the kernel holds (a snapshot: no lock taken here)
            out.update((n.ino, flat(path)) for n in list(self._nodes.values())
                       if n.view == "search" and n.kind == DIR and n.path)
        return out

    def _changed(self, path: str, old, new, dir_views=tuple(STORE_VIEWS)) -> None:
        """Stored file `path` changed from old to new (None: absent): tell the kernel."""
        if old is not None and new is not None and old.file_id == new.file_id and old.name == new.name:
            return
        for parent, name in self._dentries(path, old) | (self._dentries(path, new) if new else set()):
            self.notifier.entry(parent, name)
        if new is None:
            # inbox/ shows stored files too: without this the kernel kept the entry (and
            # the mount its node) of every file ever copied in and since removed
            d, base = split(path)
            inbox_dir = self.inbox.known_dir(d)
            if inbox_dir is not None:
                self.notifier.entry(inbox_dir, base)
            self._gone_dirs(d, dir_views)
            if old is not None:
                for view, key in BY_KEYS.items():
                    value = index_value(old, key)
                    if value and value not in self._index_values(key):
                        self.notifier.entry(TOP[view], flat(value))

    def _gone_dirs(self, path: str, views=tuple(STORE_VIEWS)) -> None:
        """Invalidate path and its ancestors in conversations/ and text/ while they no longer exist."""
        while path and not self.store.is_dir(path):
            parent, name = split(path)
            for view in views:
                self.notifier.entry(dir_ino(view, parent), name)
            path = parent

    def release_idle(self, idle: float) -> bool:
        """When nothing was read for `idle` seconds, let the decoded data go (the store's
        decoded blocks, the view and whole-file cache): an idle daemon holds its own
        memory only, not the last blocks it read. Returns whether it did."""
        if self._last_read is None or time.monotonic() - self._last_read < idle:
            return False
        self._last_read = None
        self.store.release_caches()
        self.cache.clear()
        return True

    def drop_mapped(self) -> None:
        """Give back the store's pages mapped by reads (Store.drop_mapped), so that the
        daemon's RSS is its own memory and not the store it read."""
        self.store.drop_mapped()

    def refresh(self) -> bool:
        """If the store changed (this or another process), invalidate what the kernel
        holds that no longer matches. Returns whether the generation had changed."""
        gen = self.store.generation
        if gen == self._seen_generation:
            return False
        self._seen_generation = gen
        with self._lock:
            nodes = [n for n in self._nodes.values()
                     if n.ino not in self._fixed and n.view not in INBOX_VIEWS]
        for parent, name in self.inbox.gone():
            self.notifier.entry(parent, name)
        for n in nodes:
            if n.kind == DIR:
                if budget_of(n.view) is not None:
                    if n.path and not self.store.is_dir(n.path):
                        parent, name = split(n.path)
                        self.notifier.entry(dir_ino(n.view, parent), name)
                elif n.view in STORE_VIEWS:
                    if not self.store.is_dir(n.path):
                        self._gone_dirs(n.path)
                elif n.view in BY_KEYS and n.path not in self._index_values(BY_KEYS[n.view]):
                    self.notifier.entry(TOP[n.view], flat(n.path))
            else:
                current = self._info(n.path)
                if current is None or current.file_id != n.info.file_id:
                    self._changed(n.path, n.info, current)
        return True
