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
    kw = {}
    if getattr(args, "near_threshold", None) is not None:
        kw["near_threshold"] = args.near_threshold
    return Store(args.store, readonly=readonly, **kw)


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
    total = sum(r.size for r in results)
    summary = {
        "files": len(results), "failed": len(failures), "bytes": total,
        "new_bytes": sum(r.new_bytes for r in results),
        "dedup_bytes": sum(r.dedup_bytes for r in results),
        "replaced": sum(r.replaced for r in results),
        "unparsed": sum(1 for r in results if r.error),
        "seconds": round(dt, 3), "mb_per_s": round(total / dt / 1e6, 2) if dt > 0 else None,
        "failures": failures,
        "skipped": [{"path": p, "reason": why} for p, why in skipped],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"ingested {summary['files']} files, {_human(total)} in {dt:.1f}s "
              f"({_human(total / dt if dt else 0)}/s): {_human(summary['new_bytes'])} new content, "
              f"{_human(summary['dedup_bytes'])} already stored"
              + (f", {summary['replaced']} replaced" if summary["replaced"] else "")
              + (f", {summary['unparsed']} stored as opaque (see `stowfs ls --errors`)" if summary["unparsed"] else "")
              + (f", {len(failures)} FAILED" if failures else "")
              + (f", {len(skipped)} skipped (not regular files)" if skipped else ""))
    return EXIT_WARN if failures or skipped else EXIT_OK


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
    except Exception as e:
        # The storage engine can report a full disk as an I/O error of its commit (LMDB
        # writes its pages with pwrite and, on tmpfs, sees EIO). When the store's file
        # system has no room left, that is what the user must read; anything else is a
        # bug and keeps its traceback.
        if not getattr(args, "debug", False) and disk_full(getattr(args, "store", None)):
            print(f"stowfs: error: no space left on device ({e})", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
