"""Mounted: search/QUERY/ lists exactly the files `grep -rlF QUERY text/` finds, also after
rm, replace and rename through the mount; reports/by-model.* agree with `stowfs query`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS

pytestmark = pytest.mark.mount

PHRASES = ["TypeError: cannot", "def __init__(self", "import numpy", "ndarray", "rrorHandl",
           "zzz-not-there-zzz", "the user", "tool_use", "Hello"]


def run(*cmd, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r


def grep_files(mount, phrase: str) -> set[str]:
    r = run("grep", "-rlF", "--", phrase, mount / "text", check=False)
    assert r.returncode in (0, 1), r.stderr
    return {str(Path(p).relative_to(mount / "text"))[:-len(".txt")] for p in r.stdout.splitlines()}


def search_files(mount, phrase: str) -> set[str]:
    d = mount / "search" / phrase.replace("%", "%25").replace("/", "%2F")
    out = set()
    for e in os.listdir(d):
        target = os.readlink(d / e)
        assert target.startswith("../../conversations/")
        path = target[len("../../conversations/"):]
        assert (d / e).resolve() == (mount / "conversations" / path).resolve()
        out.add(path)
    return out


def check(mount) -> None:
    for q in PHRASES:
        assert search_files(mount, q) == grep_files(mount, q), q


def test_search_folder_is_grep(mount, tmp_path):
    if not CORPUS.is_dir():
        pytest.skip(f"real corpus not found at {CORPUS}")
    for sub in ("claude-code-spotter", "api-cassettes-pydantic-ai", "agent-history-redacted"):
        run("cp", "-r", CORPUS / sub, mount / "inbox" / sub)
    mount.settled()                 # stored once settled (not at close)
    check(mount)
    conv = mount / "conversations"
    files = sorted(p for p in conv.rglob("*") if p.is_file())
    # rm, replace (the same path written again with other content), rename
    run("rm", files[0])
    other = next(p for p in (CORPUS / "claude-code-spotter").rglob("*.jsonl")
                 if p.read_bytes() != files[1].read_bytes())
    run("cp", other, mount / "inbox" / files[1].relative_to(conv))
    mount.settled()
    run("mv", files[2], conv / "renamed.jsonl")
    check(mount)
    # the reports/by-model files say what `stowfs query --group-by model` says
    report = json.loads((mount / "reports" / "by-model.json").read_text())
    exe = Path(sys.executable).with_name("stowfs")
    cli = json.loads(run(exe, "query", mount.store, "--group-by", "model", "--json").stdout)
    assert {g["model"]: g["files"] for g in report["groups"]} == \
        {g["model"]: g["files"] for g in cli["groups"]}
    text = (mount / "reports" / "by-model.txt").read_text()
    assert text.splitlines()[0].split()[:3] == ["model", "files", "convs"]
    assert len(text.encode()) == (mount / "reports" / "by-model.txt").stat().st_size
