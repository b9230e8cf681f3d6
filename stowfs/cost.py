"""`stowfs cost` and MOUNT/reports/cost.txt: what the recorded usage cost, from records.

Usage comes from the "usage" fact (stowfs.usage), prices from a dated table shipped in
the package (stowfs/data/prices.json: its "as_of" and "source" are printed with every
report), overridden model by model by a user file of the same shape: --prices FILE, else
$STOWFS_PRICES, else ~/.config/stowfs/prices.json when it exists.

A model is priced when its name (lower case, vendor prefix such as "anthropic/" dropped)
is a table key, or a key followed by a snapshot suffix: a date (-20250929,
-2024-08-06), -latest, -preview..., -exp.... Nothing else is guessed: a model with no
price is listed under "unknown models" with its tokens, and its cost is left out of the
totals (which say so).
"""
from __future__ import annotations

import json
import os
import re
from importlib import resources
from typing import Optional

from .errors import StowError
from .tokens import group_key
from .usage import FIELDS

_SUFFIX = re.compile(r"^-(\d{8}|\d{4}-\d{2}-\d{2}|latest|preview.*|exp.*)$")
PRICE_FIELDS = ("input", "cache_write", "cache_read", "output")


def user_price_file() -> Optional[str]:
    env = os.environ.get("STOWFS_PRICES")
    if env:
        return env
    path = os.path.join(os.path.expanduser("~"), ".config", "stowfs", "prices.json")
    return path if os.path.isfile(path) else None


def load_prices(path: Optional[str] = None) -> dict:
    """The shipped table, with the user's file (path, or user_price_file()) laid over it."""
    table = json.loads(resources.files("stowfs").joinpath("data/prices.json").read_text("utf-8"))
    table["overrides"] = None
    path = path or user_price_file()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                user = json.load(f)
        except OSError as e:
            raise StowError(f"cannot read price file {path}: {e.strerror}") from e
        except ValueError as e:
            raise StowError(f"price file {path} is not JSON: {e}") from e
        models = user.get("models") if isinstance(user, dict) else None
        if not isinstance(models, dict):
            raise StowError(f"price file {path}: no \"models\" object")
        for name, p in models.items():
            if not isinstance(p, dict) or not all(isinstance(p.get(k), (int, float)) for k in ("input", "output")):
                raise StowError(f"price file {path}: model {name!r} needs numeric input and output prices")
        table["models"] = {**table["models"], **{k.lower(): v for k, v in models.items()}}
        table["overrides"] = {"file": path, "as_of": user.get("as_of"), "models": len(models)}
    return table


def price_of(model: str, table: dict) -> Optional[dict]:
    models = table["models"]
    m = model.lower().rsplit("/", 1)[-1]
    if m in models:
        return models[m]
    best = None
    for key in models:
        if m.startswith(key) and _SUFFIX.match(m[len(key):]) and (best is None or len(key) > len(best)):
            best = key
    return models[best] if best else None


def cost_of(row: list, price: dict) -> float:
    """Dollars for [input, cache_write, cache_read, output, calls] at price (per 1M)."""
    inp, cw, cr, out = row[:4]
    return (inp * price["input"] + cw * price.get("cache_write", price["input"])
            + cr * price.get("cache_read", price["input"]) + out * price["output"]) / 1e6


def compute(store, prefix: str = "", by: Optional[str] = "model", prices: Optional[dict] = None,
            lazy: bool = False) -> dict:
    """Tokens and cost per group (model, app, day or file) from the files' usage facts
    (lazy: take them now for files stored before the usage fact existed)."""
    from .facts import PENDING
    from .tokens import fact_of, lazy_facts
    table = prices or load_prices()
    groups: dict[str, dict] = {}
    unknown: dict[str, list] = {}
    files = 0
    for info in store.iter_files(prefix):
        f = getattr(info, "facts", None) or {}
        # usage is taken at ingest: only files stored before it existed lack it
        if lazy and info.error is None and PENDING not in f and fact_of(info) is None:
            f = lazy_facts(store, info)
        usage = f.get("usage")
        if not isinstance(usage, dict) or not usage:
            continue
        files += 1
        for model, row in usage.items():
            key = model if by == "model" else group_key(info, by)
            g = groups.setdefault(key, {"files": set(), **dict.fromkeys(FIELDS, 0),
                                        "cost": 0.0, "unpriced_tokens": 0})
            g["files"].add(info.name)
            for i, f in enumerate(FIELDS):
                g[f] += row[i]
            price = price_of(model, table)
            if price is None:
                u = unknown.setdefault(model, [0] * len(FIELDS))
                for i in range(len(FIELDS)):
                    u[i] += row[i]
                g["unpriced_tokens"] += sum(row[:4])
            else:
                g["cost"] += cost_of(row, price)
    out_groups = {}
    for key in sorted(groups, key=lambda k: -groups[k]["cost"]):
        g = groups[key]
        g["files"] = len(g["files"])
        g["cost"] = round(g["cost"], 6)
        out_groups[key] = g
    total = {f: sum(g[f] for g in out_groups.values()) for f in FIELDS}
    total["cost"] = round(sum(g["cost"] for g in out_groups.values()), 6)
    total["unpriced_tokens"] = sum(g["unpriced_tokens"] for g in out_groups.values())
    return {"by": by, "files": files, "currency": table.get("currency", "USD"),
            "prices": {"as_of": table.get("as_of"), "source": table.get("source"),
                       "overrides": table.get("overrides")},
            "groups": out_groups, "total": total,
            "unknown_models": {m: dict(zip(FIELDS, row)) for m, row in sorted(unknown.items())}}


def render_text(r: dict) -> str:
    lines = [f"cost by {r['by']}: {r['files']} files with recorded usage; prices as of "
             f"{r['prices']['as_of']} ({r['currency']} per 1M tokens, stowfs/data/prices.json)"
             + (f", overridden by {r['prices']['overrides']['file']}" if r["prices"]["overrides"] else "")]
    head = f"{'':<40} {'input':>12} {'cache write':>12} {'cache read':>12} {'output':>10} {'calls':>7} {'cost':>11}"
    lines.append(head)

    def row(name, g):
        cost = f"${g['cost']:,.4f}" + ("*" if g.get("unpriced_tokens") else " ")
        return (f"{name[:40]:<40} {g['input']:>12,} {g['cache_write']:>12,} {g['cache_read']:>12,} "
                f"{g['output']:>10,} {g['calls']:>7,} {cost:>11}")
    for name, g in r["groups"].items():
        lines.append(row(name, g))
    lines.append(row("total", r["total"]))
    if r["unknown_models"]:
        lines.append("")
        lines.append("* unknown models (no price in the table; their tokens are not in the cost):")
        for m, u in r["unknown_models"].items():
            lines.append(f"  {m}: {u['input']:,} input, {u['cache_write']:,} cache write, "
                         f"{u['cache_read']:,} cache read, {u['output']:,} output, {u['calls']:,} calls")
    return "\n".join(lines) + "\n"


def render_json(r: dict) -> str:
    return json.dumps(r, indent=2) + "\n"
