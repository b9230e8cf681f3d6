"""Every CLI subcommand has --help and is documented in the README."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stowfs.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_the_documented_commands_exist():
    assert set(subcommands()) >= {"mount", "umount", "ingest", "ls", "cat", "rm", "stats",
                                  "verify", "gc", "compact"}


@pytest.mark.parametrize("name", subcommands())
def test_subcommand_has_help_and_is_in_readme(name):
    p = subprocess.run([sys.executable, "-m", "stowfs", name, "--help"], capture_output=True, timeout=60)
    assert p.returncode == 0 and b"usage: stowfs " + name.encode() in p.stdout
    assert f"`stowfs {name}" in README, f"README does not document `stowfs {name}`"
