"""The quick tier of tools/torture (kills, corruption, hostile inputs, concurrency, disk
full, permissions, a short mount soak) through the real CLI and mount: it must report
zero lost, zero wrong, zero crashed and no failed check. The full tier and its figures
are in the README (`tools/torture`)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from realdata import corpus_dir

REPO = Path(__file__).resolve().parents[1]


def test_torture_quick_tier_loses_nothing_and_never_lies(tmp_path):
    corpus_dir()     # skips with a message when ../shared/corpus is absent
    if not os.path.exists("/dev/fuse"):
        pytest.skip("FUSE is not available: the torture suite needs real mounts")
    out = tmp_path / "torture.json"
    p = subprocess.run([sys.executable, str(REPO / "tools" / "torture"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "STOWFS_TORTURE_NO_VENV": "1"})
    report = p.stdout + p.stderr
    lines = re.findall(r"^(\w+): tried (\d+), lost (\d+), wrong (\d+), crashed (\d+)", p.stdout, re.M)
    assert lines, f"no test reported its figures:\n{report[-4000:]}"
    results = json.loads(out.read_text())["tests"]
    assert {t["test"] for t in results} == {"kills", "corrupt", "hostile", "concurrent", "diskfull", "perms", "soak"}
    for t in results:
        assert t["tried"] > 0 or any("SKIPPED" in n for n in t["notes"]), f"{t['test']} tried nothing:\n{report}"
    bad = [t for t in results if t["lost"] or t["wrong"] or t["crashed"] or t["failed"]]
    assert not bad and p.returncode == 0, f"torture quick tier failed:\n{report[-8000:]}"
