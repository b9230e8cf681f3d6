"""The bench's README summary table (tools/benchlib/report.py), on a made-up result."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from benchlib import report  # noqa: E402


def t(median: float) -> dict:
    return {"median": median, "min": median, "max": median, "runs": [median] * 3}


def results() -> dict:
    plain = {"label": "plain directory", "kind": "plain", "status": "ok", "ratio": 1.0,
             "create_s": t(0.5), "warm": {"cat": t(0.1), "grep": t(0.05)},
             "cold": {"cat": t(0.5), "grep": t(0.6)}}
    mount = {"label": "stowfs", "kind": "mount", "status": "ok", "ratio": 3.3, "create_s": t(12.0),
             "warm": {"cat": t(0.9), "grep": t(1.0)}, "cold": {"cat": t(3.0), "grep": t(3.3)},
             "daemon_peak_rss_MiB": 97.0}
    archive = {"label": "tar | xz -9e", "kind": "archive", "status": "ok", "ratio": 5.7,
               "create_s": t(26.0), "extract_all_s": {"warm": t(3.4), "cold": t(0.41)}}
    return {"meta": {"quick": False, "seed": 1, "started": "2026-11-22 16:48", "seconds": 1800,
                     "machine": "2 cores"},
            "corpora": {"chats": {"files": 5000, "raw_bytes": 35_000_000, "systems": {
                "plain": plain, "stowfs": mount, "tarxz": archive,
                "borg": {"label": "borg", "kind": "mount", "status": "failed"},
                "restic": {"label": "restic", "kind": "mount", "status": "skipped", "reason": "no apt"}}}}}


def test_summary_gives_ratios_to_the_plain_directory_of_the_same_run():
    text = report.summary(results())
    assert "Full run, seed 1" in text and "30 min" in text
    row = next(line for line in text.splitlines() if line.startswith("| stowfs"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3.30x" and cells[2] == "12"
    assert cells[3] == "0.9 s (9.0x)" and cells[4] == "3 s (6.0x)"
    assert cells[5] == "1 s (20.0x)" and cells[6] == "3.3 s (5.5x)" and cells[7] == "97.0"
    assert "extract 3.4 s" in text and "| tar \\| xz -9e | 5.70x |" in text
    assert "| borg | **failed** |" in text and "skipped: no apt" in text
