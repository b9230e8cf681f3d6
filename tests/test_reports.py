"""Reports (stowfs/reports.py) on real data: through the core, the CLI and the mount."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from realdata import corpus_dir
from stowfs import reports
from stowfs.store import Store

CLI = [sys.executable, "-m", "stowfs"]


def real_messages(n: int, min_len: int = 3000) -> list[str]:
    """n distinct long messages with no 200-character opening in common (ShareGPT holds
    copies of the same reply)."""
    recs = json.loads((corpus_dir() / "sharegpt-v3-subset" / "sharegpt_v3_first_1366.json").read_text())
    out, seen = [], set()
    for r in recs:
        for m in r["conversations"]:
            v = m["value"]
            if len(v.encode()) >= min_len and v[:200] not in seen and not any(v[:200] in o for o in out):
                seen.add(v[:200])
                out.append(v)
    if len(out) < n:
        pytest.skip("not enough long messages in the corpus subset")
    return out[:n]


def chat(system: str, user: str) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": system},
                                                      {"role": "user", "content": user}]}).encode()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s")
    yield s
    s.close()


def test_dups_counts_files_and_saved_bytes(store):
    system, *users = real_messages(5)
    for i, u in enumerate(users[:3]):
        store.put(f"c{i}.json", chat(system, u))
    r = reports.dups(store)
    top = r["top"][0]
    assert top["content"] == reports.content_id(system)
    assert top["files"] == 3 and top["saved_bytes"] == 2 * len(system.encode())
    assert top["kind"] == "system" and top["preview"][:20] == " ".join(system.split())[:20]
    assert r["saved_bytes"] >= top["saved_bytes"]


def test_preview_is_one_printable_line():
    p = reports.preview(b"Kept model as \x1b[1mDefault\x1b[22m\n\tnext line" + b"x" * 500)
    assert p.isprintable() and "\x1b" not in p and len(p) <= reports.PREVIEW
    assert p.startswith("Kept model as [1mDefault [22m next line")


def test_prompts_audit_lists_each_prompt_with_its_files_and_variants(store):
    a, b, user = real_messages(3)
    words = a.split(" ")
    words[30] = "2026-11-22"
    variant = " ".join(words)
    for i in range(4):
        store.put(f"a{i}.json", chat(a, user + str(i) * 60))
    store.put("v.json", chat(variant, user))
    store.put("b.json", chat(b, user))
    r = reports.prompts(store)
    by = {i["content"]: i for i in r["items"]}
    ha, hv, hb = (reports.content_id(x) for x in (a, variant, b))
    assert by[ha]["files"] == 4 and by[hv]["files"] == 1 and by[hb]["files"] == 1
    assert r["items"][0]["content"] == ha                      # most used first
    assert hv in [v["content"] for v in by[ha]["variants"]]
    assert hb not in [v["content"] for v in by[ha]["variants"]]
    assert "not listed" in r["note"]


def test_prompts_audit_leaves_out_claude_code_log_lines(store):
    """Claude Code's `system` lines (a command's stdout, hook summaries) and `summary`
    lines are the app's log, not system prompts: they are stored and shown in the
    transcript, but the prompt audit does not list them."""
    src = corpus_dir() / "claude-code-spotter" / "transcripts"
    lines = []
    for p in sorted(src.rglob("*.jsonl")):
        for line in p.read_text().splitlines():
            d = json.loads(line)
            if d.get("type") == "system" and len(d.get("content") or "") >= 60:
                lines.append(line)
    if not lines:
        pytest.skip("no long Claude Code system lines in the corpus")
    data = ("\n".join(lines) + "\n").encode()
    store.put("cc.jsonl", data)
    assert store.get("cc.jsonl") == data
    assert json.loads(lines[0])["content"].split("\n")[0][:40] in store.get("cc.jsonl", view="text").decode()
    assert reports.prompts(store)["items"] == []
    store.put("p.json", chat("You are a careful reviewer of pull requests; " * 3, "hello"))
    assert len(reports.prompts(store)["items"]) == 1


def test_near_dup_clusters_on_real_sessions(tmp_path):
    with Store(tmp_path / "s") as s:
        for p in sorted((corpus_dir() / "aider-chat-history").rglob("*.md")):
            s.put_file(str(p.relative_to(corpus_dir())), p)
        r = reports.near_dups(s, threshold=0.8)
        assert r["clusters"] > 0 and r["compared_contents"] > 0
        for c in r["top"]:
            assert c["variants"] and all(v["similarity"] >= 0.8 for v in c["variants"])
            assert c["cluster_bytes"] == c["bytes"] + sum(v["bytes"] for v in c["variants"])
        text = reports.near_dups_text(r)
        assert text.count("\n  ~ ") == sum(len(c["variants"]) for c in r["top"])


def test_report_commands(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    system, *users = real_messages(4)
    for i, u in enumerate(users):
        (src / f"c{i}.json").write_bytes(chat(system, u))
    store = tmp_path / "s"
    subprocess.run([*CLI, "ingest", str(store), str(src), "-q"], check=True)
    for cmd in (["dups"], ["prompts"], ["near-dups", "--threshold", "0.9"]):
        p = subprocess.run([*CLI, *cmd, str(store), "--json"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        json.loads(p.stdout)
        t = subprocess.run([*CLI, *cmd, str(store)], capture_output=True, text=True, timeout=120)
        assert t.returncode == 0 and t.stdout.strip()
    p = subprocess.run([*CLI, "dups", str(store), "--json"], capture_output=True, text=True)
    assert json.loads(p.stdout)["top"][0]["files"] == 3
    p = subprocess.run([*CLI, "near-dups", str(store), "--threshold", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    p = subprocess.run([*CLI, "dups", str(tmp_path / "nostore")], capture_output=True, text=True)
    assert p.returncode == 2 and "no store" in p.stderr


@pytest.mark.mount
def test_reports_under_the_mount(mount):
    src = corpus_dir() / "claude-code-spotter" / "transcripts"
    subprocess.run(["cp", "-r", str(src), str(mount / "inbox" / "t")], check=True, timeout=300)
    mount.settled()
    for name in ("dups.txt", "prompts.txt", "near-dups.txt", "reports.json"):
        path = mount / "reports" / name
        data = subprocess.run(["cat", str(path)], capture_output=True, check=True, timeout=120).stdout
        assert len(data) == os.stat(path).st_size > 0
    r = json.loads((mount / "reports" / "reports.json").read_text())
    cli = subprocess.run([*CLI, "dups", str(mount.store), "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(cli.stdout) == r["dups"]
    assert sorted(os.listdir(mount / "reports")) == ["by-model.json", "by-model.txt", "cost.json", "cost.txt",
                                                     "dups.txt", "near-dups.txt", "prompts.txt", "reports.json"]
