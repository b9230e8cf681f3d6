"""The `stowfs` command line: argparse subcommands over stowfs.Store.

Exit codes: 0 ok, 1 done with warnings (some inputs failed, verify found damage), 2 error.
Errors print one line on stderr; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import StoreFull, StowError

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
    kw = {}
    if getattr(args, "near_threshold", None) is not None:
        kw["near_threshold"] = args.near_threshold
    return Store(args.store, readonly=readonly, **kw)


def _inputs(paths: list[str]) -> list[tuple[str, str]]:
    """(source path, stored name) pairs; a directory keeps its relative paths under its own
    name, as `cp -r` would."""
    out = []
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            base = os.path.basename(p.rstrip("/")) or "root"
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    src = os.path.join(root, f)
                    if os.path.isfile(src) and not os.path.islink(src):
                        out.append((src, base + "/" + os.path.relpath(src, p).replace(os.sep, "/")))
        elif os.path.isfile(p):
            out.append((p, os.path.basename(p)))
        else:
            raise StowError(f"no such file or directory: {p}")
    return out


def cmd_ingest(args) -> int:
    items = _inputs(args.paths)
    if args.prefix:
        items = [(src, args.prefix.strip("/") + "/" + name) for src, name in items]
    sizes = [os.path.getsize(src) for src, _ in items]
    results, failures = [], []
    prog = Progress(len(items), sum(sizes), not args.json and not args.quiet)
    t0 = time.monotonic()
    with _open(args) as store:
        todo = ((name, src, os.path.getmtime(src)) for src, name in items)
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
    total = sum(r.size for r in results)
    summary = {
        "files": len(results), "failed": len(failures), "bytes": total,
        "new_bytes": sum(r.new_bytes for r in results),
        "dedup_bytes": sum(r.dedup_bytes for r in results),
        "replaced": sum(r.replaced for r in results),
        "unparsed": sum(1 for r in results if r.error),
        "seconds": round(dt, 3), "mb_per_s": round(total / dt / 1e6, 2) if dt > 0 else None,
        "failures": failures,
    }
    summary.update(analytics)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"ingested {summary['files']} files, {_human(total)} in {dt:.1f}s "
              f"({_human(total / dt if dt else 0)}/s): {_human(summary['new_bytes'])} new content, "
              f"{_human(summary['dedup_bytes'])} already stored"
              + (f", {summary['replaced']} replaced" if summary["replaced"] else "")
              + (f", {summary['unparsed']} stored as opaque (see `stowfs ls --errors`)" if summary["unparsed"] else "")
              + (f", {len(failures)} FAILED" if failures else ""))
    return EXIT_WARN if failures else EXIT_OK


def _after_ingest(store, results, args) -> dict:
    """Derived data kept in step with what was just stored: what each file added (for
    `query`), the search index, and embeddings when asked."""
    from .analytics import query, search_index
    out = {}
    query.record_added(store, results)
    if not getattr(args, "no_index", False):
        t = time.monotonic()
        search_index.sync(store)
        out["index_seconds"] = round(time.monotonic() - t, 3)
    if getattr(args, "embed", False):
        from .analytics import semantic
        t = time.monotonic()
        semantic.embed(store)
        out["embed_seconds"] = round(time.monotonic() - t, 3)
    return out


def _info_dict(i) -> dict:
    return {"name": i.name, "size": i.size, "text_size": i.text_size, "format": i.format,
            "application": i.application, "model": i.model, "day": i.day,
            "messages": i.messages, "conversations": i.conversations,
            "mtime": i.mtime, "sha256": i.sha256, "error": i.error}


def cmd_ls(args) -> int:
    with _open(args, readonly=True) as store:
        infos = [i for i in store.iter_files(args.prefix or "") if not args.errors or i.error]
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=2))
        return EXIT_OK
    for i in infos:
        if args.errors:
            print(f"{i.name}\t{i.error}")
        elif args.long:
            print(f"{i.size:>12} {i.format:<20} {(i.model or '-'):<28} {i.name}")
        else:
            print(i.name)
    return EXIT_OK


def cmd_cat(args) -> int:
    out = sys.stdout.buffer
    with _open(args, readonly=True) as store:
        for name in args.names:
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
    with _open(args, readonly=True) as store:
        s = store.stats()
    if args.json:
        from .store import stats_json
        sys.stdout.buffer.write(stats_json(s))
        return EXIT_OK
    print(f"files            {s['files']} ({s['conversations']} conversations, {s['messages']} messages, "
          f"{s['unparsed_files']} stored opaque)")
    print(f"original bytes   {_human(s['naive_bytes'])}")
    print(f"on disk          {_human(s['disk_bytes'])}  ratio {s['ratio']}x, saves {s['savings_percent']}%")
    print(f"segments         {s['segments']} referenced, {s['unique_segments']} unique "
          f"(dedup {s['dedup_ratio']}x)")
    print(f"blocks           {s['blocks']}: {_human(s['block_raw_bytes'])} -> {_human(s['block_bytes'])} "
          f"(compression {s['compression_ratio']}x, {s['dictionaries']} dictionaries)")
    for kind, k in s["by_kind"].items():
        print(f"  {kind:<10} {k['segments']:>9} refs {_human(k['segment_bytes']):>10}   "
              f"{k['unique_segments']:>9} unique {_human(k['unique_bytes']):>10}  dedup {k['dedup_ratio']}x")
    return EXIT_OK


def cmd_verify(args) -> int:
    from .maintenance import verify
    with _open(args, readonly=True) as store:
        report = verify(store, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for p in report["problems"]:
            print(f"DAMAGED: {p}")
        print(f"checked {report['files']} files, {report['segments']} segments, {report['blocks']} blocks: "
              + ("OK" if report["ok"] else f"{len(report['damaged_files'])} damaged files, "
                 f"{len(report['problems'])} problems"))
    return EXIT_OK if report["ok"] else EXIT_WARN


def cmd_gc(args) -> int:
    from .maintenance import gc
    with _open(args) as store:
        r = gc(store)
    print(json.dumps(r, indent=2) if args.json else
          f"freed {r['segments_freed']} segments ({_human(r['bytes_freed'])}), "
          f"{r['blocks_deleted']} blocks deleted, {r['blocks_rewritten']} rewritten")
    return EXIT_OK


def cmd_compact(args) -> int:
    from .maintenance import compact
    r = compact(args.store, level=args.level, progress=not args.json)
    print(json.dumps(r, indent=2) if args.json else
          f"compacted: {_human(r['disk_before'])} -> {_human(r['disk_after'])} on disk, "
          f"{r['blocks_before']} -> {r['blocks_after']} blocks, {r['dictionaries']} dictionaries")
    return EXIT_OK


def cmd_train(args) -> int:
    with _open(args) as s:
        out = {}
        if not args.substrings_only:
            out["dictionary"] = s.train()
        if not args.no_substrings:
            out["substrings"] = s.train_substrings(args.samples, args.min_occurrences)
            out["substring_bytes"] = sum(len(r["bytes"]) for r in s.substrings()) if out["substrings"] else 0
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    if "dictionary" in out:
        print(f"dictionary: {'trained, id ' + str(out['dictionary']) if out['dictionary'] else 'not enough content to train one'}")
    if "substrings" in out:
        print(f"substrings: {out['substrings']} promoted ({_human(out['substring_bytes'])})" if out["substrings"]
              else f"substrings: none occur in {args.min_occurrences} samples; registry unchanged")
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
    sp.add_argument("--near-threshold", type=float, default=None, metavar="J",
                    help="estimated Jaccard similarity at which a stored segment is tried as a delta "
                    "base for a new one (default 0.5; 0 turns near-dedup off)")
    sp.add_argument("--no-index", action="store_true",
                    help="do not bring the search index up to date now (the next search does)")
    sp.add_argument("--embed", action="store_true",
                    help="also embed the new conversations for semantic search (needs stowfs[semantic])")

    sp = cmd("ls", cmd_ls, "list stored files")
    sp.add_argument("store")
    sp.add_argument("prefix", nargs="?", help="only names starting with this")
    sp.add_argument("-l", "--long", action="store_true", help="size, format and model too")
    sp.add_argument("--errors", action="store_true", help="only files not parsed as conversations, with why")
    sp.add_argument("--json", action="store_true")

    sp = cmd("cat", cmd_cat, "write stored files to stdout")
    sp.add_argument("store")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("--view", choices=("original", "text"), default="original",
                    help="original bytes (default) or the readable transcript")

    sp = cmd("rm", cmd_rm, "remove stored files (space is freed by gc)")
    sp.add_argument("store")
    sp.add_argument("names", nargs="+", metavar="NAME")

    sp = cmd("stats", cmd_stats, "how much is stored and how much it saves")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("verify", cmd_verify, "check every block, segment and file; exit 1 names damaged files")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("gc", cmd_gc, "free segments no stored file uses any more")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")

    sp = cmd("compact", cmd_compact, "repack everything into large blocks at a high zstd level, "
             "in file order; give free space back to the disk (needs the store unmounted)")
    sp.add_argument("store")
    sp.add_argument("--level", type=int, default=None, help="zstd level (default 19)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("train", cmd_train, "train the block dictionary and the shared-substring registry "
             "from the store's own content (later blocks use them when smaller)")
    sp.add_argument("store")
    sp.add_argument("--samples", type=int, default=2000, help="segments sampled for substrings (default 2000)")
    sp.add_argument("--min-occurrences", type=int, default=3,
                    help="distinct samples a substring must occur in to be promoted (default 3)")
    sp.add_argument("--no-substrings", action="store_true", help="only the dictionary")
    sp.add_argument("--substrings-only", action="store_true", help="only the substrings")
    sp.add_argument("--json", action="store_true")

    sp = cmd("dups", cmd_dups, "the segments stored once for the most files, with the bytes that saves")
    sp.add_argument("store")
    sp.add_argument("-n", "--top", type=int, default=20, help="how many (default 20)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("prompts", cmd_prompts, "system-prompt audit: each distinct system prompt, how many files "
             "use it, and its near-variants")
    sp.add_argument("store")
    sp.add_argument("--threshold", type=float, default=0.8, help="similarity of a variant (default 0.8)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("near-dups", cmd_near_dups, "clusters of near-duplicate segments: a canonical one and its "
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
    except StowError as e:
        if getattr(args, "debug", False):
            raise
        print(f"stowfs: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        if getattr(args, "debug", False):
            raise
        print(f"stowfs: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
