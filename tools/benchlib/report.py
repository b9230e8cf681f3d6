"""Reports of a bench run: ``results.json`` (every figure), ``results.md`` (one Markdown
table per corpus) and PNG charts (size ratio; cat and grep times) drawn with matplotlib.

matplotlib is used from the running interpreter if it has it, else from the bench venv
(installed there if missing): ``python -m benchlib.report charts RESULTS.json OUTDIR``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


def fmt_t(t: dict | None) -> str:
    if not t:
        return "–"
    if len(t.get("runs", ())) == 1:
        return f"{t['median']:.3g} (1 run)"
    return f"{t['median']:.3g} ({t['min']:.3g}–{t['max']:.3g})"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def cell(text) -> str:
    """A Markdown table cell: pipes escaped."""
    return str(text).replace("|", "\\|")


def corpus_table(name: str, c: dict) -> str:
    lines = [f"### {name}: {c['files']:,} files, {fmt_bytes(c['raw_bytes'])} "
             f"({c['raw_bytes']:,} bytes)", "",
             f"Timings in seconds: median (min–max) of {c['runs']} interleaved runs "
             f"(create: {c.get('create_runs', c['runs'])}; size references once). "
             f"Cold = {'page cache dropped + ' if c.get('cold_cache_dropped') else ''}fresh mount. "
             f"grep word: `{c['grep_word']}`.", "",
             "| system | status | on disk | ratio | create s | MB/s in | mount s | ls -R cold / warm | "
             "cat all cold / warm | grep -r cold / warm | peak RSS MiB | bytes check |",
             "|---|---|---:|---:|---|---:|---|---|---|---|---:|---|"]
    for s in c["systems"].values():
        if s["status"] == "skipped":
            lines.append(f"| {cell(s['label'])} | skipped: {cell(s.get('reason', ''))} |" + " |" * 10)
            continue
        cold, warm = s.get("cold", {}), s.get("warm", {})
        if s["kind"] == "archive" and "extract_all_s" in s:
            ex = s["extract_all_s"]
            cat = f"extract: {fmt_t(ex['cold'])} / {fmt_t(ex['warm'])}"
        else:
            cat = f"{fmt_t(cold.get('cat'))} / {fmt_t(warm.get('cat'))}"
        corr = s.get("correct")
        if s["kind"] == "store":
            tc = s.get("text_check", {})
            check = (f"text only: {tc.get('text_roundtrip_ok', 0)} ok, "
                     f"{tc.get('text_roundtrip_mismatch', 0)} differ" if "error" not in tc else "error")
        elif corr:
            check = "ok" if corr["ok"] else (f"WRONG: {corr['wrong_bytes']} wrong, "
                                             f"{corr['missing']} missing, {corr['extra']} extra")
        else:
            check = "–"
        status = s["status"] if s["status"] == "ok" else f"**{s['status']}**: {cell(s.get('reason', '')[:160])}"
        rss = s.get("daemon_peak_rss_MiB")
        ratio = f"{s['ratio']:.2f}x" if s.get("ratio") else "–"
        lines.append(f"| {cell(s['label'])} | {status} | {fmt_bytes(s.get('bytes_on_disk'))} | {ratio} | "
                     f"{fmt_t(s.get('create_s'))} | {s.get('ingest_MBps', '–')} | {fmt_t(s.get('mount_s'))} | "
                     f"{fmt_t(cold.get('ls'))} / {fmt_t(warm.get('ls'))} | {cat} | "
                     f"{fmt_t(cold.get('grep'))} / {fmt_t(warm.get('grep'))} | "
                     f"{rss if rss is not None else '–'} | {check} |")
    notes = [f"- **{cell(s['label'])}**: {s['notes']}" + (f" ({json.dumps(s['extra'])})" if s.get("extra") else "")
             for s in c["systems"].values() if s.get("notes")]
    return "\n".join(lines + ["", *notes, ""])


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [f"# stowfs bench ({'quick' if meta['quick'] else 'full'}, seed {meta['seed']})", "",
           f"Machine: {meta['machine']}. Started {meta['started']}, took {meta['seconds']:.0f} s.", ""]
    for k, st in results["corpora_built"].items():
        out.append(f"- corpus **{k}**: {st['files']:,} files, {st['bytes']:,} bytes (built in {st['build_seconds']} s)")
    out.append("")
    for name, c in results["corpora"].items():
        out.append(corpus_table(name, c))
    if results.get("skipped"):
        out += ["## Skipped systems", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()] + [""]
    if results.get("charts_note"):
        out += [f"Charts: {results['charts_note']}", ""]
    return "\n".join(out)


def _vs_plain(s: dict, plain: dict, phase: str, op: str) -> str:
    """'1.04 s (18x)': a median and its ratio to the plain directory's, same run."""
    t = s.get(phase, {}).get(op)
    p = plain.get(phase, {}).get(op) if plain else None
    if not t:
        return "–"
    if not p or not p.get("median"):
        return f"{t['median']:.3g} s"
    return f"{t['median']:.3g} s ({t['median'] / p['median']:.1f}x)"


def summary(results: dict) -> str:
    """The short table the README shows: per corpus and system, size ratio, create time,
    cat and grep of every file warm and cold (with the ratio to the plain directory
    measured in the same run) and daemon peak RSS; failed and skipped systems listed."""
    meta = results["meta"]
    out = [f"{'Quick' if meta['quick'] else 'Full'} run, seed {meta['seed']}, {meta['started']}, "
           f"{meta['seconds'] / 60:.0f} min; {meta['machine']}.", ""]
    for name, c in results["corpora"].items():
        plain = c["systems"].get("plain", {})
        out += [f"**{name}**: {c['files']:,} files, {fmt_bytes(c['raw_bytes'])}", "",
                "| system | ratio | create s | cat warm | cat cold | grep -r warm | grep -r cold | RSS MiB |",
                "|---|---:|---:|---|---|---|---|---:|"]
        for key, s in c["systems"].items():
            if s["status"] == "skipped":
                out.append(f"| {cell(s['label'])} | skipped: {cell(s.get('reason', ''))} | | | | | | |")
                continue
            if s["status"] != "ok" and key != "plain":
                out.append(f"| {cell(s['label'])} | **{s['status']}** | | | | | | |")
                continue
            if s["kind"] == "archive":
                ex = s.get("extract_all_s", {})
                catw = f"extract {ex['warm']['median']:.3g} s" if ex.get("warm") else "–"
                catc = f"extract {ex['cold']['median']:.3g} s" if ex.get("cold") else "–"
            else:
                catw, catc = _vs_plain(s, plain, "warm", "cat"), _vs_plain(s, plain, "cold", "cat")
            ratio = f"{s['ratio']:.2f}x" if s.get("ratio") else "–"
            create = s.get("create_s", {}).get("median")
            rss = s.get("daemon_peak_rss_MiB")
            out.append(f"| {cell(s['label'])} | {ratio} | {create:.3g} | {catw} | {catc} | "
                       f"{_vs_plain(s, plain, 'warm', 'grep')} | {_vs_plain(s, plain, 'cold', 'grep')} | "
                       f"{rss if rss is not None else '–'} |" if create is not None else
                       f"| {cell(s['label'])} | {ratio} | – | {catw} | {catc} | – | – | – |")
        out.append("")
    return "\n".join(out)


def write(results: dict, out: Path, env=None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["charts_note"] = charts(results, out, env)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    (out / "summary.md").write_text(summary(results))


# ------------------------------------------------------------------ charts

def charts(results: dict, out: Path, env=None) -> str:
    """Draw the charts here if matplotlib imports, else in the bench venv. Returns a note."""
    tmp = out / "results.json"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    if importlib.util.find_spec("matplotlib") is not None:
        return draw(results, out)
    if env is None:
        return "skipped: matplotlib not installed"
    if not env.venv_has("matplotlib"):
        err = env.pip_install("matplotlib")
        if err:
            return f"skipped: {err}"
    r = subprocess.run([str(env.venv_python()), "-m", "benchlib.report", "charts", str(tmp), str(out)],
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if r.returncode != 0:
        return f"skipped: chart drawing failed: {r.stderr.strip()[-300:]}"
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "drawn"


def draw(results: dict, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, c in results["corpora"].items():
        systems = [s for s in c["systems"].values() if s["status"] == "ok" and s.get("ratio")]
        if not systems:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        labels = [s["system"] for s in systems]
        ratios = [s["ratio"] for s in systems]
        bars = ax.bar(labels, ratios, color="#4472c4")
        ax.bar_label(bars, fmt="%.1fx", fontsize=8)
        ax.set_ylabel("raw bytes / bytes on disk")
        ax.set_title(f"{name}: size ratio ({fmt_bytes(c['raw_bytes'])} raw)")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        p = out / f"{name}-size-ratio.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p.name)

        timed = [s for s in c["systems"].values() if s["status"] == "ok" and (s.get("warm") or s.get("cold"))]
        if not timed:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, op, title in ((axes[0], "cat", "cat of every file"), (axes[1], "grep", "grep -r")):
            xs = range(len(timed))
            w = 0.4
            for off, mode, color in ((-w / 2, "cold", "#c00000"), (w / 2, "warm", "#70ad47")):
                med = [s.get(mode, {}).get(op, {}).get("median", 0) for s in timed]
                lo = [m - s.get(mode, {}).get(op, {}).get("min", m) for m, s in zip(med, timed)]
                hi = [s.get(mode, {}).get(op, {}).get("max", m) - m for m, s in zip(med, timed)]
                ax.bar([x + off for x in xs], med, w, yerr=[lo, hi], capsize=3, color=color, label=mode)
            ax.set_xticks(list(xs), [s["system"] for s in timed], rotation=30)
            ax.set_ylabel("seconds (median, min–max)")
            ax.set_title(f"{name}: {title}")
            ax.legend()
        fig.tight_layout()
        p = out / f"{name}-read-grep.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p.name)
    return f"{len(files)} PNG files: {', '.join(files)}"


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "charts":
        print(draw(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])))
    else:
        sys.exit("usage: python -m benchlib.report charts RESULTS.json OUTDIR")
