"""The `stowfs` command line: argparse subcommands over stowfs.Store.

Exit codes: 0 ok, 1 done with warnings (some inputs failed, verify found damage), 2 error.
Errors print one line on stderr; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import time

from .conversation import PARTIAL
from .errors import StoreFull, StowError, disk_full

EXIT_OK, EXIT_WARN, EXIT_ERROR = 0, 1, 2


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


class Progress:
    """A one-line progress bar on stderr, shown only on a terminal."""

    def __init__(self, total_items: int, total_bytes: int, enabled: bool):
        self.total_items, self.total_bytes = total_items, total_bytes
        self.items = self.bytes = 0
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0

    def step(self, nbytes: int) -> None:
        self.items += 1
        self.bytes += nbytes
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.items == self.total_items):
            self._last = now
            frac = self.bytes / self.total_bytes if self.total_bytes else 1.0
            bar = "#" * int(30 * frac)
            rate = self.bytes / max(now - self.t0, 1e-6)
            sys.stderr.write(f"\r[{bar:<30}] {self.items}/{self.total_items} files "
                             f"{_human(self.bytes)} {_human(rate)}/s ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _open(args, readonly: bool = False):
    from .store import Store
    return Store(args.store, readonly=readonly)


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _walk(top: str, base: str, out: list, skipped: list) -> None:
    """Every regular file under top, as (path, base/relative name), in sorted order. An
    explicit stack, not recursion: a tree 1,000 directories deep walks like a flat one.
    Symlinks are not followed and, like FIFOs, sockets and devices, are skipped (listed
    in skipped with why); an unreadable directory is skipped too."""
    stack = [(top, base)]
    while stack:
        path, name = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append((path, f"cannot read directory: {e.strerror}"))
            continue
        subdirs = []
        for e in entries:
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except OSError as err:
                skipped.append((e.path, err.strerror))
                continue
            if stat.S_ISDIR(mode):
                subdirs.append((e.path, name + "/" + e.name))
            elif stat.S_ISREG(mode):
                out.append((e.path, name + "/" + e.name))
            else:
                skipped.append((e.path, f"skipped: {_not_regular(mode)}"))
        stack.extend(reversed(subdirs))


def _inputs(paths: list[str], skipped: list | None = None) -> list[tuple[str, str]]:
    """(source path, stored name) pairs; a directory keeps its relative paths under its own
    name, as `cp -r` would. Entries inside directories that are not regular files go to
    skipped as (path, why)."""
    out = []
    skipped = [] if skipped is None else skipped
    for p in paths:
        p = os.path.abspath(p)
        try:
            st = os.stat(p)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise StowError(f"no such file or directory: {p}") from None
            raise StowError(f"{p}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            _walk(p, os.path.basename(p.rstrip("/")) or "root", out, skipped)
        elif stat.S_ISREG(st.st_mode):
            out.append((p, os.path.basename(p)))
        else:
            raise StowError(f"{p}: not a regular file or directory ({_not_regular(st.st_mode)})")
    return out


def cmd_ingest(args) -> int:
    skipped: list[tuple[str, str]] = []
    items = _inputs(args.paths, skipped)
    for path, why in skipped:
        print(f"stowfs: {os.fsencode(path).decode('utf-8', 'backslashreplace')}: {why}", file=sys.stderr)
    if args.prefix:
        items = [(src, args.prefix.strip("/") + "/" + name) for src, name in items]
    sizes = [os.path.getsize(src) for src, _ in items]
    results, failures = [], []
    prog = Progress(len(items), sum(sizes), not args.json and not args.quiet)
    t0 = time.monotonic()
    with _open(args) as store:
        todo = ((name, src, None) for src, name in items)
        by_name = {name: (src, size) for (src, name), size in zip(items, sizes)}
        for name, r in store.put_many(todo):
            src, size = by_name[name]
            if isinstance(r, StoreFull):
                raise r
            if isinstance(r, StowError):
                failures.append({"path": src, "error": str(r)})
                print(f"stowfs: {src}: {r}", file=sys.stderr)
            else:
                results.append(r)
            prog.step(size)
        prog.done()
        dt = time.monotonic() - t0
        analytics = _after_ingest(store, results, args)
        # the open block's fragments, rewritten as one frame at the end, and the index's
        # first pages left free pages: given back when no other process has the store open
        store.reclaim()
    total = sum(r.size for r in results)
    summary = {
        "files": len(results), "failed": len(failures), "bytes": total,
        "new_bytes": sum(r.new_bytes for r in results),
        "dedup_bytes": sum(r.dedup_bytes for r in results),
        "replaced": sum(r.replaced and not r.unchanged for r in results),
        "unchanged": sum(r.unchanged for r in results),
        "unparsed": sum(1 for r in results if r.error and not r.error.startswith(PARTIAL)),
        "partial": sum(1 for r in results if r.error and r.error.startswith(PARTIAL)),
        "seconds": round(dt, 3), "mb_per_s": round(total / dt / 1e6, 2) if dt > 0 else None,
        "failures": failures,
        "skipped": [{"path": p, "reason": why} for p, why in skipped],
    }
    summary.update(analytics)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"ingested {summary['files']} files, {_human(total)} in {dt:.1f}s "
              f"({_human(total / dt if dt else 0)}/s): {_human(summary['new_bytes'])} new content, "
              f"{_human(summary['dedup_bytes'])} already stored"
              + (f", {summary['replaced']} replaced" if summary["replaced"] else "")
              + (f", {summary['unchanged']} unchanged" if summary["unchanged"] else "")
              + (f", {summary['unparsed']} stored as opaque (see `stowfs ls --errors`)" if summary["unparsed"] else "")
              + (f", {summary['partial']} with a partial text view (see `stowfs ls --errors`)" if summary["partial"] else "")
              + (f", {len(failures)} FAILED" if failures else "")
              + (f", {len(skipped)} skipped (not regular files)" if skipped else ""))
    return EXIT_WARN if failures or skipped else EXIT_OK


def _after_ingest(store, results, args) -> dict:
    """Derived data kept in step with what was just stored: the search index, and
    embeddings when asked."""
    from .analytics import search_index
    out = {}
    # the search index is made by the first search (or --index): a store never searched
    # does not pay for it (a fifth of a compacted store); one that has it is kept in step
    if getattr(args, "index", False) or (not getattr(args, "no_index", False) and search_index.exists(store)):
        t = time.monotonic()
        search_index.sync(store)
        out["index_seconds"] = round(time.monotonic() - t, 3)
    if getattr(args, "embed", False):
        from .analytics import semantic
        t = time.monotonic()
        semantic.embed(store)
        out["embed_seconds"] = round(time.monotonic() - t, 3)
    return out


def _info_dict(i, staged=None) -> dict:
    from .tokens import fact_of
    t = fact_of(i) or (staged or {}).get(i.file_id)
    return {"name": i.name, "size": i.size, "text_size": i.text_size, "format": i.format,
            "application": i.application, "model": i.model, "day": i.day,
            "messages": i.messages, "conversations": i.conversations,
            "mtime": i.mtime, "mtime_ns": i.mtime_ns, "mode": oct(i.mode), "checksum": i.checksum,
            "error": i.error, "tokens": {"encoding": t["enc"], **t["views"]} if t else None}


def cmd_ls(args) -> int:
    with _open(args, readonly=True) as store:
        infos = [i for i in store.iter_files(args.prefix or "") if not args.errors or i.error]
        staged = {}
        if args.json or args.long:      # counts a `stowfs tokens` took before compaction did
            from .tokens import staged as staged_counts
            staged = staged_counts(store)
    if args.json:
        print(json.dumps([_info_dict(i, staged) for i in infos], indent=2))
        return EXIT_OK
    for i in infos:
        if args.errors:
            print(f"{i.name}\t{i.error}")
        elif args.long:
            from .tokens import fact_of
            t = fact_of(i) or staged.get(i.file_id)
            toks = f"{t['views']['original']:>10} {t['views'].get('compact', 0):>8}" if t else f"{'-':>10} {'-':>8}"
            print(f"{i.size:>12} {toks} {i.format:<20} {(i.model or '-'):<28} {i.name}")
        else:
            print(i.name)
    return EXIT_OK


def _rendered_view(store, name: str, view: str, encoding) -> bytes:
    """A registry view (compact, lean, ...) or budget:N of one stored file."""
    if view.startswith("budget:"):
        from .formats import parse
        from .views import budget
        try:
            n = budget.parse_budget(view[7:])
        except ValueError as e:
            raise StowError(str(e)) from None
        data = store.get(name)
        return budget.render(parse(data, name), n, encoding)
    return store.get(name, view=view)


def cmd_cat(args) -> int:
    out = sys.stdout.buffer
    if args.encoding and not args.view.startswith("budget:"):
        raise StowError("--encoding applies to --view budget:N only")
    with _open(args, readonly=True) as store:
        for name in args.names:
            if args.view not in ("original", "text"):
                out.write(_rendered_view(store, name, args.view, args.encoding))
                continue
            r = store.reader(name, args.view)
            pos = 0
            while pos < r.size:
                data = r.read(pos, 1 << 20)
                if not data:
                    raise StowError(f"{name}: short read at {pos}")
                out.write(data)
                pos += len(data)
    out.flush()
    return EXIT_OK


def _view_arg(value: str) -> str:
    from . import views
    if value in ("original", "text") or value in views.VIEWS:
        return value
    if value.startswith("budget:"):
        from .views import budget
        try:
            budget.parse_budget(value[7:])
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    raise argparse.ArgumentTypeError(f"unknown view {value!r} (original, {', '.join(views.VIEWS)}, budget:N)")


def cmd_rm(args) -> int:
    status = EXIT_OK
    with _open(args) as store:
        for name in args.names:
            try:
                store.remove(name)
            except StowError as e:
                print(f"stowfs: {name}: {e}", file=sys.stderr)
                status = EXIT_WARN
    return status


def cmd_stats(args) -> int:
    from .tokens import add_to_stats
    with _open(args, readonly=True) as store:
        s = add_to_stats(store, store.stats())
    if args.json:
        from .store import stats_json
        sys.stdout.buffer.write(stats_json(s))
        return EXIT_OK
    print(f"files            {s['files']} ({s['conversations']} conversations, {s['messages']} messages, "
          f"{s['unparsed_files']} stored opaque)")
    print(f"original bytes   {_human(s['naive_bytes'])}")
    print(f"on disk          {_human(s['disk_bytes'])}  ratio {s['ratio']}x, saves {s['savings_percent']}% "
          f"(stored format {s['store_format']})")
    print(f"content          {_human(s['stream_bytes'])} stored once ({_human(s['naive_bytes'] - s['stream_bytes'])} "
          f"were repeats, dedup {s['dedup_ratio']}x), in {s['block_fragments']} block frames of "
          f"{_human(s['block_bytes'])} (compression {s['compression_ratio']}x"
          + (f"; {s['uncompacted_fragments']} not compacted yet" if s['uncompacted_fragments'] else "") + ")")
    tb = s["table_bytes"]
    print("tables           " + ", ".join(f"{k} {_human(v)}" for k, v in tb.items())
          + f"  (metadata {100 * (s['metadata_share'] or 0):.1f}%)")
    t = s["tokens"]
    if t["files"]:
        views = ", ".join(f"{v} {n:,}" + (f" ({_change(t['reduction_percent'][v])})" if v in t["reduction_percent"] else "")
                          for v, n in t["views"].items())
        print(f"tokens           {views}  [{', '.join(f'{e}: {n} files' for e, n in t['encodings'].items())}]")
    if t.get("pending"):
        print(f"                 {t['pending']} files not counted yet (`stowfs compact` counts them, "
              "and a mount does when idle; `stowfs tokens` counts them now)")
    return EXIT_OK


def _change(reduction: float) -> str:
    """A reduction in percent as a change: 76.4 -> "-76.4%", 0 -> "0%", -3 -> "+3%"."""
    return "0%" if reduction == 0 else f"-{reduction}%" if reduction > 0 else f"+{-reduction}%"


def cmd_tokens(args) -> int:
    from . import tokens
    with _open(args) as store:      # writable: counts taken for files stored before them are kept
        r = tokens.aggregate(store, args.prefix or "", args.by, args.encoding, lazy=True)
    if args.json:
        print(json.dumps(r, indent=2))
        return EXIT_OK
    views = ["original", "text", "compact", "lean"]
    print(f"{'':<32} {'files':>6} " + " ".join(f"{v:>12}" for v in views) + "  encodings")
    for key, g in sorted(r["groups"].items()):
        cells = " ".join(f"{g['tokens'].get(v, 0):>12,}" for v in views)
        print(f"{key[:32]:<32} {g['files']:>6} {cells}  " + ", ".join(f"{e} {n}" for e, n in g["encodings"].items()))
        print(f"{'':<32} {'':>6} {'':>12} " + " ".join(f"{_change(g['reduction_percent'].get(v, 0)):>12}"
                                                         for v in views[1:]))
    for key, g in sorted(r["groups"].items()):
        for view, st in g["stats"].items():
            shown = ", ".join(f"{k} {v:,}" for k, v in st.items() if v and k not in ("bytes_in",))
            print(f"{view} ({key}): {shown}")
    if r["not_counted"]:
        print(f"{r['not_counted']} files not counted (not conversations, or stored before token counts)")
    return EXIT_OK


def cmd_cost(args) -> int:
    from . import cost
    prices = cost.load_prices(args.prices)
    with _open(args) as store:      # writable: usage read from files stored before it is kept
        r = cost.compute(store, args.prefix or "", args.by, prices, lazy=True)
    sys.stdout.write(cost.render_json(r) if args.json else cost.render_text(r))
    return EXIT_OK


def cmd_verify(args) -> int:
    from .store.verify import verify
    if not os.path.isdir(args.store):
        raise StowError(f"no store at {args.store}")
    report = verify(args.store)          # in a child process: a damaged store cannot crash us
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for p in dict.fromkeys(report["problems"]):
            print(f"DAMAGED: {p}")
        for name in report["damaged_files"]:
            print(f"damaged file: {name}")
        print(f"checked {report['files']} files, {report['fragments']} block frames: "
              + ("OK" if report["ok"] else f"{len(report['damaged_files'])} damaged files, "
                 f"{len(report['problems'])} problems"))
    return EXIT_OK if report["ok"] else EXIT_WARN


def cmd_gc(args) -> int:
    from .maintenance import gc
    with _open(args) as store:
        r = gc(store)
    print(json.dumps(r, indent=2) if args.json else
          f"freed {_human(r['bytes_freed'])} no file uses, "
          f"{r['blocks_deleted']} blocks deleted, {r['blocks_rewritten']} rewritten")
    return EXIT_OK


def cmd_compact(args) -> int:
    from .maintenance import compact
    r = compact(args.store, level=args.level, progress=not args.json)
    print(json.dumps(r, indent=2) if args.json else
          f"compacted: {_human(r['disk_before'])} -> {_human(r['disk_after'])} on disk, "
          f"{r['blocks_before']} -> {r['blocks_after']} block frames, {_human(r['bytes_dropped'])} "
          f"no file used dropped" + ("" if r["free_pages_returned"] else
                                     "; free pages kept (the store is open elsewhere: mounted?)"))
    return EXIT_OK


def _report(args, name: str, **kw) -> int:
    from . import reports
    fn, text = reports.REPORTS[name]
    with _open(args, readonly=True) as s:
        r = fn(s, **kw)
    sys.stdout.write(reports.as_json(r) if args.json else text(r))
    return EXIT_OK


def cmd_dups(args) -> int:
    return _report(args, "dups", top=args.top)


def cmd_prompts(args) -> int:
    return _report(args, "prompts", threshold=args.threshold)


def cmd_near_dups(args) -> int:
    if not 0 < args.threshold <= 1:
        raise StowError("--threshold must be in (0, 1]")
    return _report(args, "near-dups", threshold=args.threshold, top=args.top)


# ---------------------------------------------------------------- analytics (issue 15)
def _set(values):
    return set(values) if values else None


def _progress_fn(enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return None
    state = {"p": None}

    def step(done, total):
        if state["p"] is None:
            state["p"] = Progress(total, total, True)
        state["p"].step(1)
        if done == total:
            state["p"].done()
    return step


def cmd_query(args) -> int:
    from .analytics import query
    groups = query.parse_groups(args.group_by)
    with _open(args, readonly=True) as store:
        r = query.query(store, groups, models=_set(args.model), apps=_set(args.app),
                        kinds=_set(args.kind), since=args.since, until=args.until)
    sys.stdout.write(query.as_json(r) if args.json else query.as_csv(r) if args.csv else query.as_text(r))
    return EXIT_OK


def cmd_export(args) -> int:
    from .analytics import export
    if args.max is not None and args.max < 0:
        raise StowError("--max must be 0 or more")
    with _open(args, readonly=True) as store:
        s = export.export(store, args.out, args.format, models=_set(args.model), apps=_set(args.app),
                          since=args.since, until=args.until, include_system=args.include_system,
                          dedup_pairs=args.dedup_pairs, pairs=args.pairs, max_records=args.max)
    out = sys.stderr if args.out == "-" else sys.stdout
    if args.json:
        print(json.dumps(s, indent=2), file=out)
    else:
        print(f"exported {s['records']} records ({s['conversations']} conversations, {s['messages']} "
              f"messages) from {s['files']} files to {args.out} as {args.format} in {s['seconds']}s; "
              f"pairs: {s['pairs']} total, {s['unique_pairs']} unique"
              + (f", {s['pairs_dropped']} repeats dropped" if args.dedup_pairs else "")
              + f"; ~{s['tokens_estimated']} tokens exported (~{s['unique_pair_tokens_estimated']} "
              f"in unique pairs; estimated as UTF-8 bytes / 4)", file=out)
    return EXIT_OK


def _open_for_derived(args, in_step):
    """The store for a question answered from derived data (search index, embeddings):
    read-only when that data is in step (opening a store for writing moves its
    generation, which would make the next question sync again), else writable so it
    is brought up to date; read-only anyway when the store cannot be written (then
    files not indexed yet are read directly)."""
    from .store import Store
    ro = Store(args.store, readonly=True)
    try:
        fresh = in_step(ro)
    except BaseException:
        ro.close()
        raise
    if fresh:
        return ro
    ro.close()
    try:
        return Store(args.store, create=False)
    except (StowError, OSError):
        return Store(args.store, readonly=True)


def cmd_search(args) -> int:
    if args.semantic:
        from .analytics import semantic
        with _open_for_derived(args, semantic.in_step) as store:
            rows = semantic.search(store, args.query, top=args.top)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['score']:.3f}  {r['file']}#{r['conversation'] + 1}  {r['first_request']}")
        return EXIT_OK
    from .analytics import search_index
    with _open_for_derived(args, search_index.in_step) as store:
        if not store.readonly and not search_index.exists(store) and sys.stderr.isatty():
            print("stowfs: building the search index (the first search of this store; later "
                  "ingests keep it up to date)", file=sys.stderr)
        hits = search_index.search(store, args.query, regex=args.regex, ignore_case=args.ignore_case,
                                   role=args.role, models=_set(args.model), apps=_set(args.app),
                                   files_only=args.files_with_matches)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], indent=2, ensure_ascii=False))
    elif args.files_with_matches:
        for h in hits:
            print(h.name)
    else:
        for h in hits:
            where = f"#{h.message} [{h.role}]" if h.message is not None else ""
            print(f"{h.name}{where}: {h.snippet}")
    return EXIT_OK if hits else EXIT_WARN


def cmd_embed(args) -> int:
    from .analytics import semantic
    with _open(args) as store:
        t = time.monotonic()
        r = semantic.embed(store, progress=_progress_fn(not args.json))
        r["seconds"] = round(time.monotonic() - t, 3)
        r["embedding_bytes"] = semantic.embedding_bytes(store)
        r["disk_bytes"] = store.stats()["disk_bytes"]
    print(json.dumps(r, indent=2) if args.json else
          f"embedded {r['conversations']} conversations of {r['embedded']} new files in {r['seconds']}s "
          f"({r['dropped']} files gone); embeddings take {_human(r['embedding_bytes'])}")
    return EXIT_OK


def cmd_cluster(args) -> int:
    from .analytics import semantic
    with _open_for_derived(args, semantic.in_step) as store:
        r = semantic.cluster(store, args.k, seed=args.seed)
    if args.json:
        print(json.dumps(r, indent=2))
        return EXIT_OK
    print(f"{r['conversations']} conversations in {r['k']} clusters (seed {r['seed']})")
    for c in r["clusters"]:
        print(f"\ncluster {c['cluster']}: {c['size']} conversations, cohesion {c['cohesion']}")
        for e in c["examples"]:
            print(f"  {e['similarity']:.3f}  {e['file']}#{e['conversation'] + 1}  {e['first_request']}")
    return EXIT_OK


def cmd_outliers(args) -> int:
    from .analytics import semantic
    with _open_for_derived(args, semantic.in_step) as store:
        r = semantic.outliers(store, k=args.k, seed=args.seed, top=args.top)
    if args.json:
        print(json.dumps(r, indent=2))
        return EXIT_OK
    print(f"outlier score = 1 - cosine to the nearest of {r['k']} centroids (seed {r['seed']}), "
          f"{r['conversations']} conversations")
    for o in r["outliers"]:
        print(f"{o['score']:.3f}  {o['file']}#{o['conversation'] + 1}  {o['first_request']}")
    return EXIT_OK


def _add_analytics_commands(cmd) -> None:
    sp = cmd("query", cmd_query, "conversations, messages, tokens and bytes per model, app, kind, day "
             "or format, from the files' records (no decode)")
    sp.add_argument("store")
    sp.add_argument("--model", action="append", metavar="M", help="only files of this model (repeatable)")
    sp.add_argument("--app", action="append", metavar="A", help="only files of this application (repeatable)")
    sp.add_argument("--kind", action="append", metavar="K",
                    help="only files of this kind: session, api-log, chat, opaque (repeatable)")
    sp.add_argument("--since", metavar="YYYY-MM-DD", help="only files of this day or later")
    sp.add_argument("--until", metavar="YYYY-MM-DD", help="only files of this day or earlier")
    sp.add_argument("--group-by", metavar="KEYS", help="comma-separated: model,app,kind,day,format")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--csv", action="store_true")

    sp = cmd("export", cmd_export, "training data out of the store: chat-format records (messages, "
             "OpenAI tool calls) as JSONL, a Hugging Face dataset or Parquet")
    sp.add_argument("store")
    sp.add_argument("out", help="output file (jsonl, parquet; '-' = stdout for jsonl) or directory (hf)")
    sp.add_argument("--format", choices=("jsonl", "hf", "parquet"), default="jsonl",
                    help="jsonl (default); hf and parquet need stowfs[export]")
    sp.add_argument("--model", action="append", metavar="M")
    sp.add_argument("--app", action="append", metavar="A")
    sp.add_argument("--since", metavar="YYYY-MM-DD")
    sp.add_argument("--until", metavar="YYYY-MM-DD")
    sp.add_argument("--max", type=int, metavar="N", help="at most N records")
    sp.add_argument("--include-system", action="store_true", help="keep system (and developer) messages")
    sp.add_argument("--dedup-pairs", action="store_true",
                    help="drop (user, assistant) pairs already exported, across the whole store")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--pairs", action="store_true", help="one record per (user, assistant) pair")
    g.add_argument("--conversations", action="store_true", help="one record per conversation (default)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")

    sp = cmd("search", cmd_search, "full-text search of the text view from the store's index (or "
             "--semantic: by meaning); exit 1 when nothing matches")
    sp.add_argument("store")
    sp.add_argument("query", help="a phrase (found as grep -F finds it in text/), or a regex with --regex")
    sp.add_argument("--regex", action="store_true", help="QUERY is a Python regular expression")
    sp.add_argument("-i", "--ignore-case", action="store_true")
    sp.add_argument("--role", metavar="R", help="only matches in messages of this role")
    sp.add_argument("--model", action="append", metavar="M")
    sp.add_argument("--app", action="append", metavar="A")
    sp.add_argument("-l", "--files-with-matches", action="store_true", help="only the names of matching files")
    sp.add_argument("--semantic", action="store_true",
                    help="rank conversations by meaning (needs stowfs[semantic] and `stowfs embed`)")
    sp.add_argument("-n", "--top", type=int, default=10, help="semantic: how many (default 10)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("embed", cmd_embed, "embed new conversations for semantic search, clusters and outliers "
             "(offline model shipped in a package; needs stowfs[semantic])")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("cluster", cmd_cluster, "k-means++ clusters of the conversations' embeddings")
    sp.add_argument("store")
    sp.add_argument("-k", type=int, default=8, help="number of clusters (default 8)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (same seed, same clusters)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("outliers", cmd_outliers, "conversations farthest from every cluster: "
             "score = 1 - cosine to the nearest centroid")
    sp.add_argument("store")
    sp.add_argument("-k", type=int, default=8, help="clusters to measure against (default 8)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("-n", "--top", type=int, default=10, help="how many (default 10)")
    sp.add_argument("--json", action="store_true")


def cmd_mount(args) -> int:
    from . import mount
    return mount.cmd_mount(args)


def cmd_umount(args) -> int:
    from . import mount
    return mount.cmd_umount(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stowfs", description="LLM conversations stored compressed and "
                                "deduplicated, shown as ordinary files.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_, conflict_handler="resolve")
        sp.set_defaults(func=func)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
        return sp

    sp = cmd("mount", cmd_mount, "mount a store: every conversation as a file (created on first use)")
    up = cmd("umount", cmd_umount, "unmount a mounted store")
    try:
        from .mount import add_arguments
        add_arguments(sp, up)
    except ImportError:  # the mount needs the optional 'fuse' extra
        sp.add_argument("store")
        sp.add_argument("mountpoint")
        up.add_argument("mountpoint")

    sp = cmd("ingest", cmd_ingest, "store files and directories (directories keep their relative paths)")
    sp.add_argument("store", help="store directory (created on first use)")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--prefix", default="", help="store everything under this directory name")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    ix = sp.add_mutually_exclusive_group()
    ix.add_argument("--index", action="store_true",
                    help="build the search index now if the store has none (else the first search "
                         "does; once it exists every ingest keeps it up to date)")
    ix.add_argument("--no-index", action="store_true",
                    help="do not bring the search index up to date now (the next search does)")
    sp.add_argument("--embed", action="store_true",
                    help="also embed the new conversations for semantic search (needs stowfs[semantic])")

    sp = cmd("ls", cmd_ls, "list stored files")
    sp.add_argument("store")
    sp.add_argument("prefix", nargs="?", help="only names starting with this")
    sp.add_argument("-l", "--long", action="store_true",
                    help="size, tokens (original, compact; - when not counted), format and model too")
    sp.add_argument("--errors", action="store_true", help="only files not parsed as conversations (with why and what they look like) "
                    "or whose text view is partial")
    sp.add_argument("--json", action="store_true")

    sp = cmd("cat", cmd_cat, "write stored files to stdout")
    sp.add_argument("store")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("--view", type=_view_arg, default="original", metavar="VIEW",
                    help="original (default), text (the readable transcript), compact (the "
                    "conversation only, JSONL), lean (same format, lean in tokens) or budget:N "
                    "(the transcript trimmed to at most N tokens)")
    sp.add_argument("--encoding", choices=("cl100k_base", "o200k_base"), default=None,
                    help="with budget:N: count in this encoding instead of the file model's")

    sp = cmd("rm", cmd_rm, "remove stored files (space is freed by gc)")
    sp.add_argument("store")
    sp.add_argument("names", nargs="+", metavar="NAME")

    sp = cmd("stats", cmd_stats, "how much is stored and how much it saves")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("tokens", cmd_tokens, "exact token counts per view (original, text, compact, lean) "
             "and what each view removed, from the files' records")
    sp.add_argument("store")
    sp.add_argument("prefix", nargs="?", help="only names starting with this")
    sp.add_argument("--by", choices=("model", "app", "day", "file"), default=None, help="group the totals")
    sp.add_argument("--encoding", choices=("cl100k_base", "o200k_base"), default=None,
                    help="count every file in this encoding (decodes the files whose stored counts "
                    "use the other one); default: each file's model's encoding")
    sp.add_argument("--json", action="store_true")

    sp = cmd("cost", cmd_cost, "tokens and cost per model, app, day or file from the usage the "
             "files record, priced from the dated table shipped in the package")
    sp.add_argument("store")
    sp.add_argument("prefix", nargs="?", help="only names starting with this")
    sp.add_argument("--by", choices=("model", "app", "day", "file"), default="model", help="group by (default model)")
    sp.add_argument("--prices", metavar="FILE", default=None,
                    help="a price file laid over the shipped table (default: $STOWFS_PRICES, "
                    "else ~/.config/stowfs/prices.json when it exists)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("verify", cmd_verify, "check every table against the others and every file against its "
             "checksum; exit 1 names damaged files")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("gc", cmd_gc, "drop stored bytes no file uses any more (removed or replaced files)")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("compact", cmd_compact, "bring the store to its final form now: blocks as one frame each at "
             "a high zstd level, bytes no file uses dropped, metadata recompressed, free pages given back "
             "(works while mounted; the mount also does it by itself when idle)")
    sp.add_argument("store")
    sp.add_argument("--level", type=int, default=None, help="zstd level (default 19)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("dups", cmd_dups, "the message content found in the most files, with the bytes keeping it once saves")
    sp.add_argument("store")
    sp.add_argument("-n", "--top", type=int, default=20, help="how many (default 20)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("prompts", cmd_prompts, "system-prompt audit: each distinct system prompt, how many files "
             "use it, and its near-variants")
    sp.add_argument("store")
    sp.add_argument("--threshold", type=float, default=0.8, help="similarity of a variant (default 0.8)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("near-dups", cmd_near_dups, "clusters of near-duplicate message content: a canonical one and its "
             "variants with their estimated similarity")
    sp.add_argument("store")
    sp.add_argument("--threshold", type=float, default=0.8, help="estimated Jaccard similarity (default 0.8)")
    sp.add_argument("-n", "--top", type=int, default=20, help="how many clusters (default 20)")
    sp.add_argument("--json", action="store_true")
    _add_analytics_commands(cmd)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("stowfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except StoreFull as e:
        if getattr(args, "debug", False):
            raise
        print(f"stowfs: error: no space left on device ({e})", file=sys.stderr)
        return EXIT_ERROR
    except StowError as e:
        if getattr(args, "debug", False):
            raise
        print(f"stowfs: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        if getattr(args, "debug", False):
            raise
        if e.errno == errno.ENOSPC or disk_full(getattr(args, "store", None)):
            print(f"stowfs: error: no space left on device ({e.strerror or e})", file=sys.stderr)
            return EXIT_ERROR
        print(f"stowfs: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:          # a bug: one line, the traceback with --debug
        if getattr(args, "debug", False):
            raise
        # The storage engine can report a full disk as an I/O error of its commit (LMDB
        # writes its pages with pwrite and, on tmpfs, sees EIO). When the store's file
        # system has no room left, that is what the user must read.
        if disk_full(getattr(args, "store", None)):
            print(f"stowfs: error: no space left on device ({e})", file=sys.stderr)
            return EXIT_ERROR
        print(f"stowfs: internal error: {type(e).__name__}: {e} (--debug shows the traceback)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
