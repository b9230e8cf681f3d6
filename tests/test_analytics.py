"""Analytics, export, full-text and semantic search (issue 15) on real data.

- query: totals equal `stats`/`ls`; each group equals the files with that model/app/day.
- export: JSONL, the HF dataset and Parquet hold the same records; --dedup-pairs keeps a
  conversation stored twice once; record messages equal the parsed conversation's text.
- search: exactly the files whose text view holds the phrase (what `grep -F` over text/
  finds), for phrases cut anywhere in real text, before and after rm, replace, rename.
- semantic: a conversation's first request ranks it top-3 for most of the ShareGPT subset;
  clusters and outliers are deterministic for a seed.
"""
from __future__ import annotations

import collections
import json
import random
import re

import pytest

from realdata import corpus_dir, openai_form, sharegpt_records
from stowfs import Store, cli
from stowfs.analytics import export, query, search_index, semantic
from stowfs.errors import StowError
from stowfs.formats import parse


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory):
    corpus = corpus_dir()
    path = tmp_path_factory.mktemp("corpus") / "store"
    assert run_cli("ingest", path, corpus, "-q", "--index") == 0
    return path


def texts(store) -> dict[str, bytes]:
    return {i.name: store.get(i.name, view="text") for i in store.iter_files()}


# ====================================================================== query
def test_query_totals_match_stats_and_ls(corpus_store, capsys):
    with Store(corpus_store) as s:
        infos = list(s.iter_files())
        stats = s.stats()
        r = query.query(s, ("model", "app", "day"))
    t = r["total"]
    assert t["files"] == stats["files"] == len(infos)
    assert t["conversations"] == stats["conversations"]
    assert t["messages"] == stats["messages"]
    assert t["original_bytes"] == stats["naive_bytes"]
    assert t["stored_bytes"] == stats["disk_bytes"]
    assert sum(g["stored_bytes"] for g in r["groups"]) == pytest.approx(stats["disk_bytes"], abs=len(r["groups"]))
    # every group is exactly the files with that model / app / day
    expect = collections.Counter((i.model or "-", i.application or "-", i.day or "-") for i in infos)
    got = {(g["model"], g["app"], g["day"]): g["files"] for g in r["groups"]}
    assert got == dict(expect)
    for g in r["groups"]:
        members = [i for i in infos if (i.model or "-", i.application or "-", i.day or "-") ==
                   (g["model"], g["app"], g["day"])]
        assert g["messages"] == sum(i.messages for i in members)
        assert g["original_bytes"] == sum(i.size for i in members)
    # each record keeps what its file added to the stream: attribution follows it, not size
    assert r["attribution"] == "recorded"
    assert sum(i.facts["stored"] for i in infos) == stats["stream_bytes"]
    # the CLI prints the same numbers
    assert run_cli("query", corpus_store, "--group-by", "app", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"]["files"] == len(infos)
    assert {g["app"]: g["files"] for g in out["groups"]} == \
        dict(collections.Counter(i.application or "-" for i in infos))
    assert run_cli("query", corpus_store, "--group-by", "kind,format", "--csv") == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("kind,format,files,")
    assert rows[-1].startswith("TOTAL,TOTAL,%d," % len(infos))


def test_query_filters(corpus_store):
    with Store(corpus_store) as s:
        infos = list(s.iter_files())
        app = next(i.application for i in infos if i.application == "claude-code")
        r = query.query(s, ("model",), apps={app})
        assert r["total"]["files"] == sum(1 for i in infos if i.application == app)
        days = sorted(i.day for i in infos if i.day)
        mid = days[len(days) // 2]
        r = query.query(s, (), since=mid)
        assert r["total"]["files"] == sum(1 for i in infos if i.day and i.day >= mid)
        r = query.query(s, (), until=mid, kinds={"session"})
        assert r["total"]["files"] == sum(1 for i in infos if i.day and i.day <= mid
                                          and query.kind_of(i) == "session")
        with pytest.raises(StowError):
            query.query(s, (), since="yesterday")
        with pytest.raises(StowError):
            query.parse_groups("model,colour")


def test_query_on_many_files(tmp_path):
    recs = sharegpt_records(400)
    s = Store(tmp_path / "s")
    models = ["gpt-4", "gpt-3.5-turbo", "claude-3"]
    for n, rec in enumerate(recs):
        s.put(f"c/{n:04d}.json", json.dumps(openai_form(rec, models[n % 3])).encode())
    r = query.query(s, ("model",))
    stats = s.stats()
    assert r["total"]["files"] == stats["files"] == 400
    assert r["total"]["messages"] == stats["messages"]
    assert {g["model"]: g["files"] for g in r["groups"]} == \
        dict(collections.Counter(models[n % 3] for n in range(400)))
    assert r["attribution"] == "recorded"       # put() through the API records it too
    s.close()


# ====================================================================== export
def _chat_text(conv) -> list[str]:
    out = []
    for m in conv.messages:
        if m.event or m.role in ("system", "developer", "tool"):
            continue
        t = "\n".join(p.text for p in m.parts if p.kind == "text" and p.text)
        if t:
            out.append(t)
    return out


def test_export_records_are_the_parsed_text(corpus_store, tmp_path):
    out = tmp_path / "all.jsonl"
    with Store(corpus_store) as s:
        summary = export.export(s, str(out), "jsonl")
        recs = export.read_back(str(out), "jsonl")
        assert summary["records"] == len(recs) > 0
        by_source = collections.defaultdict(list)
        for r in recs:
            by_source[r["source"]].append(r)
        for name, rs in by_source.items():
            parsed = parse(s.get(name), name)
            info = s.info(name)
            for r in rs:
                conv = parsed.conversations[r["conversation"]]
                got = [m["content"] for m in r["messages"] if m["role"] != "tool" and m.get("content")]
                assert got == _chat_text(conv), name
                assert r.get("day") == info.day and r["format"] == parsed.format
                results = [p for mm in conv.messages if not mm.event and mm.role not in ("system", "developer")
                           for p in mm.parts if p.kind == "tool_result"]
                assert [m.get("tool_call_id") for m in r["messages"] if m["role"] == "tool" and
                        "tool_call_id" in m] == [p.call_id for p in results if p.call_id]
                for m in r["messages"]:
                    for c in m.get("tool_calls", ()):
                        assert c["type"] == "function" and set(c["function"]) == {"name", "arguments"}
        assert any(m["role"] == "tool" and m.get("tool_call_id") for r in recs for m in r["messages"])
        assert any("tool_calls" in m for r in recs for m in r["messages"])


def _have(*mods) -> bool:
    try:
        for m in mods:
            __import__(m)
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _have("pyarrow", "datasets"),
                    reason="export extra not installed: pip install 'stowfs[export]' (pyarrow, datasets)")
def test_export_jsonl_hf_parquet_hold_the_same_records(corpus_store, tmp_path):
    with Store(corpus_store) as s:
        kw = dict(apps={"claude-code", "anthropic", "codex-cli", "gemini-cli"}, include_system=True)
        sums = [export.export(s, str(tmp_path / "x.jsonl"), "jsonl", **kw),
                export.export(s, str(tmp_path / "x.parquet"), "parquet", **kw),
                export.export(s, str(tmp_path / "x-hf"), "hf", **kw)]
    a = export.read_back(str(tmp_path / "x.jsonl"), "jsonl")
    b = export.read_back(str(tmp_path / "x.parquet"), "parquet")
    c = export.read_back(str(tmp_path / "x-hf"), "hf")
    assert len(a) > 10 and a == b == c
    assert sums[0]["records"] == sums[1]["records"] == sums[2]["records"] == len(a)
    import pyarrow.parquet as pq
    f = pq.ParquetFile(str(tmp_path / "x.parquet"))
    assert f.metadata.num_rows == len(a)
    assert {"messages", "model", "app", "source", "day"} <= set(f.schema_arrow.names)


def test_export_dedup_pairs_keeps_a_twice_stored_conversation_once(tmp_path):
    rec = sharegpt_records(3)
    s = Store(tmp_path / "s")
    body = json.dumps(openai_form(rec[0])).encode()
    s.put("a/one.json", body)
    s.put("b/same-again.json", body)
    s.put("c/other.json", json.dumps(openai_form(rec[1])).encode())
    out = tmp_path / "o.jsonl"
    plain = export.export(s, str(out), "jsonl")
    assert plain["records"] == 3
    d = export.export(s, str(out), "jsonl", dedup_pairs=True)
    recs = export.read_back(str(out), "jsonl")
    assert d["records"] == 2 and sorted(r["source"] for r in recs) == ["a/one.json", "c/other.json"]
    assert d["pairs"] == plain["pairs"] and d["unique_pairs"] == d["pairs"] - d["pairs_dropped"]
    assert d["pairs_dropped"] == len(export.pairs_of(export.chat_messages(
        parse(body, "x").conversations[0])))
    p = export.export(s, str(out), "jsonl", dedup_pairs=True, pairs=True)
    recs = export.read_back(str(out), "jsonl")
    assert p["records"] == len(recs) == d["unique_pairs"]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in recs)
    assert len({(r["messages"][0]["content"], r["messages"][1]["content"]) for r in recs}) == len(recs)
    assert export.export(s, str(out), "jsonl", max_records=1)["records"] == 1
    s.close()


def test_export_says_how_to_install_a_missing_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name.split(".")[0] == "pyarrow":
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    import importlib
    monkeypatch.setattr(importlib, "import_module", lambda n: no_pyarrow(n))
    with pytest.raises(StowError, match=r"stowfs\[export\]"):
        export.need("pyarrow.parquet")


# ====================================================================== search
def phrases(all_text: dict[str, bytes], n: int, seed: int) -> list[str]:
    """Phrases cut at random places (mid-word too) out of real text, plus near misses."""
    rng = random.Random(seed)
    names = [k for k, v in all_text.items() if v]
    out = []
    while len(out) < n:
        data = all_text[rng.choice(names)]
        i = rng.randrange(len(data))
        piece = data[i:i + rng.choice((3, 5, 8, 13, 21, 34))].decode("utf-8", "ignore")
        piece = piece.split("\n")[0]
        if len(piece) >= 3:
            out.append(piece)
            if rng.random() < 0.3:
                out.append(piece[:-1] + ("Q" if piece[-1] != "Q" else "q"))   # often absent
    return out + ["TypeError: cannot", "def __init__(self", "zzz-not-there-zzz", "the", "::", " a "]


def check_search_is_grep(store, qs) -> None:
    all_text = texts(store)
    for q in qs:
        want = {n for n, t in all_text.items() if q.encode("utf-8", "surrogatepass") in t}
        got = {h.name for h in search_index.search(store, q, files_only=True)}
        assert got == want, q


def test_search_equals_grep_F_on_text(corpus_store):
    with Store(corpus_store) as s:
        r = search_index.sync(s)
        assert r["indexed"] == 0 and r["dropped"] == 0   # `stowfs ingest --index` indexed everything
        assert search_index.in_step(s)
        all_text = texts(s)
        check_search_is_grep(s, phrases(all_text, 80, seed=1))
        # hits: the message's role and the phrase inside the snippet
        hits = search_index.search(s, "TypeError", per_file=10**6)
        assert hits and all("TypeError" in h.snippet for h in hits)
        assert all(h.message is not None and h.role for h in hits)
        only = search_index.search(s, "TypeError", role="assistant", per_file=10**6)
        assert only and {h.role for h in only} == {"assistant"}
        assert {(h.name, h.message) for h in only} <= {(h.name, h.message) for h in hits}
        # a hit's message number points at that message's block in the text view
        h = only[0]
        starts = search_index.message_starts(s, h.name, len(all_text[h.name]))
        assert starts[h.message - 1][0] <= h.offset and starts[h.message - 1][1] == "assistant"
        # regex: the files where re.search finds it
        rx = r"Type[A-Z][a-z]+: cannot \w+"
        want = {n for n, t in all_text.items() if re.search(rx.encode(), t)}
        got = {h.name for h in search_index.search(s, rx, regex=True, files_only=True)}
        assert got == want and got
        with pytest.raises(StowError):
            search_index.search(s, "two\nlines")


def test_search_stays_right_after_rm_replace_rename(tmp_path):
    corpus = corpus_dir()
    s = Store(tmp_path / "s")
    files = sorted(p for p in (corpus / "claude-code-spotter").rglob("*.jsonl"))[:6]
    recs = sharegpt_records(30)
    for p in files:
        s.put_file("cc/" + p.name, p)
    for n, r in enumerate(recs):
        s.put(f"sg/{n:03d}.json", json.dumps(openai_form(r)).encode())
    search_index.sync(s)
    qs = phrases(texts(s), 40, seed=2)
    check_search_is_grep(s, qs)
    s.remove("cc/" + files[0].name)
    s.rename("sg/001.json", "moved/001.json")
    s.put("sg/002.json", json.dumps(openai_form(recs[29])).encode())     # replaced
    s.put("sg/new.json", json.dumps(openai_form(sharegpt_records(31)[30])).encode())
    check_search_is_grep(s, qs + phrases(texts(s), 20, seed=3))
    assert search_index.in_step(s)
    # the index only forgot ids and added new ones: nothing stale is listed
    st = search_index.state(s)
    assert st.indexed() == {i.file_id for i in s.iter_files()}
    s.close()


def test_small_syncs_merge_and_rebuild(tmp_path):
    recs = sharegpt_records(40)
    s = Store(tmp_path / "s")
    for n, r in enumerate(recs):                     # one sync per file, as the mount does
        s.put(f"{n:03d}.json", json.dumps(openai_form(r)).encode())
        search_index.sync(s)
    st = search_index.state(s)
    assert len(st.segments) < search_index.MERGE_MIN + 1
    assert st.indexed() == {i.file_id for i in s.iter_files()}
    for n in range(0, 40, 2):
        s.remove(f"{n:03d}.json")
    search_index.sync(s)
    qs = phrases(texts(s), 30, seed=4)
    check_search_is_grep(s, qs)
    before = {q: {h.name for h in search_index.search(s, q, files_only=True)} for q in qs}
    search_index.rebuild(s)
    assert before == {q: {h.name for h in search_index.search(s, q, files_only=True)} for q in qs}
    s.close()


def test_search_reads_unindexed_files_of_a_read_only_store(tmp_path):
    recs = sharegpt_records(10)
    path = tmp_path / "s"
    with Store(path) as s:
        for n, r in enumerate(recs[:5]):
            s.put(f"{n}.json", json.dumps(openai_form(r)).encode())
        search_index.sync(s)
        for n, r in enumerate(recs[5:], 5):
            s.put(f"{n}.json", json.dumps(openai_form(r)).encode())
    with Store(path, readonly=True) as ro:
        assert not search_index.in_step(ro)
        check_search_is_grep(ro, phrases(texts(ro), 30, seed=5))


def test_cli_search(corpus_store, capsys):
    assert run_cli("search", corpus_store, "TypeError: cannot", "--json") == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and all("TypeError: cannot" in h["snippet"] for h in hits)
    assert run_cli("search", corpus_store, "zzz-not-there-zzz") == 1


# ====================================================================== semantic
needs_wordllama = pytest.mark.skipif(not semantic.available(),
                                     reason="semantic extra not installed: pip install 'stowfs[semantic]' (wordllama)")


@pytest.fixture(scope="module")
def sharegpt_store(tmp_path_factory):
    corpus = corpus_dir()
    path = tmp_path_factory.mktemp("sg") / "store"
    with Store(path) as s:
        s.put_file("sharegpt.json", corpus / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json")
    return path


@needs_wordllama
def test_first_request_finds_its_conversation(sharegpt_store):
    with Store(sharegpt_store) as s:
        r = semantic.embed(s)
        assert r["conversations"] > 1000
        vs = semantic.vectors(s)
        parsed = parse(s.get("sharegpt.json"), "sharegpt.json")
    m = semantic.model()
    row = {int(c): i for i, c in enumerate(vs.conv)}
    firsts = [(ci, semantic.conversation_texts(c)[0]) for ci, c in enumerate(parsed.conversations)]
    firsts = [(ci, f) for ci, f in firsts if f.strip() and ci in row]
    q = m.embed([f for _, f in firsts])
    sims = q @ vs.v.T
    top3 = sum(int((sims[k] > sims[k, row[ci]]).sum() < 3) for k, (ci, _) in enumerate(firsts))
    rate = top3 / len(firsts)
    print(f"first request ranks its conversation top-3: {top3}/{len(firsts)} = {rate:.3f}")
    assert rate >= 0.9
    # the CLI's semantic search ranks one of them first
    with Store(sharegpt_store) as s:
        ci, f = firsts[7]
        top = semantic.search(s, f, top=3)
    assert any(t["conversation"] == ci for t in top)


@needs_wordllama
def test_clusters_and_outliers_are_deterministic(sharegpt_store):
    with Store(sharegpt_store) as s:
        a = semantic.cluster(s, 6, seed=3)
        b = semantic.cluster(s, 6, seed=3)
        assert a == b and a["k"] == 6
        assert sum(c["size"] for c in a["clusters"]) == a["conversations"]
        o = semantic.outliers(s, k=6, seed=3, top=5)
        assert o == semantic.outliers(s, k=6, seed=3, top=5)
        vs = semantic.vectors(s)
    import numpy as np
    cents, labels = semantic.kmeans(vs.v, 6, seed=3)
    score = 1 - (vs.v @ cents.T).max(axis=1)
    assert [r["score"] for r in o["outliers"]] == [round(float(x), 4) for x in np.sort(score)[::-1][:5]]
    assert all(np.argmax(vs.v[i] @ cents.T) == labels[i] for i in range(0, len(labels), 50))


@needs_wordllama
def test_embeddings_follow_the_store(tmp_path):
    recs = sharegpt_records(12)
    with Store(tmp_path / "s") as s:
        for n, r in enumerate(recs[:10]):
            s.put(f"{n}.json", json.dumps(openai_form(r)).encode())
        assert semantic.embed(s)["embedded"] == 10
        assert semantic.embed(s)["embedded"] == 0          # in step: nothing to do
        s.remove("0.json")
        s.put("1.json", json.dumps(openai_form(recs[11])).encode())   # replaced: a new id
        r = semantic.embed(s)
        assert r["embedded"] == 1 and r["dropped"] == 2
        vs = semantic.vectors(s)
        assert set(vs.file_ids.tolist()) == {i.file_id for i in s.iter_files()}


def test_tokens_come_from_the_token_counters_fact():
    """The token counter (issue 14) records {"v", "enc", "views": {view: tokens}}; query
    counts the text view's tokens from it, and text bytes (not exact) without it."""
    from stowfs.store import FileInfo
    base = dict(name="x", file_id=1, size=100, text_size=40, format="openai-chat", application="openai",
                model="gpt-4", models=("gpt-4",), day="2026-01-01", mtime=0.0, error=None, checksum="00",
                messages=2, conversations=1)
    with_fact = FileInfo(**base, facts={"tokens": {"v": 1, "enc": "o200k_base",
                                                   "views": {"original": 31, "text": 12}}})
    assert query.tokens_of(with_fact) == (12, True)
    assert query.tokens_of(FileInfo(**base, facts={})) == (40, False)


def test_index_is_made_by_the_first_search_and_kept_by_later_ingests(tmp_path, capsys):
    """A plain ingest makes no index (a store never searched does not pay for it); the
    first search makes it; from then on each ingest keeps it in step."""
    files = sorted(p for p in corpus_dir().rglob("*.jsonl") if p.stat().st_size < 1 << 20)[:6]
    assert len(files) >= 4
    src = tmp_path / "src"
    src.mkdir()
    for p in files[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    store = tmp_path / "store"
    assert run_cli("ingest", store, src, "-q") == 0
    with Store(store, readonly=True) as s:
        assert not search_index.exists(s)
    word = "the"
    run_cli("search", store, word, "-l")
    capsys.readouterr()
    with Store(store, readonly=True) as s:
        assert search_index.exists(s) and search_index.in_step(s)
    more = tmp_path / "more"
    more.mkdir()
    for p in files[3:]:
        (more / p.name).write_bytes(p.read_bytes())
    assert run_cli("ingest", store, more, "-q") == 0
    with Store(store, readonly=True) as s:
        assert search_index.in_step(s)                 # the ingest kept it up to date
        assert search_index.state(s).indexed() == {i.file_id for i in s.iter_files()}
