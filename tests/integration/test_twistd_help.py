"""``twistd accessgrid-transfer --version`` and ``--help``, as an administrator runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import twisted

from gsitransfer.options import HELP_SECTIONS, Options
from tests.support.server import REPO


def twistd(*args: str) -> subprocess.CompletedProcess[str]:
    """``twistd accessgrid-transfer ARGS`` (the real command line, in a subprocess)."""
    return subprocess.run(
        [sys.executable, "-m", "twisted", "accessgrid-transfer", *args],
        env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="100"),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_version_shows_gsitransfer_and_twisted():
    """--version: gsitransfer's version (pyproject.toml's) first, then Twisted's; exit 0."""
    with open(REPO / "pyproject.toml", "rb") as stream:
        expected = tomllib.load(stream)["project"]["version"]
    done = twistd("--version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"gsitransfer {expected}"
    assert lines[1] == f"Twisted {twisted.__version__}"
    assert lines[2].startswith("pyOpenSSL ") and lines[3].startswith("Python ")


def test_help_groups_every_option_once_under_its_heading():
    """--help: the five headings in order, and every option of the plugin listed exactly once."""
    done = twistd("--help")
    assert done.returncode == 0, done.stderr
    headings = [line for line in done.stdout.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert headings == [f"{heading}:" for heading, _ in HELP_SECTIONS]
    assert [h.split()[0].rstrip(":") for h in headings] == ["Listening", "Trust", "Storage", "Limits", "Operations"]
    listed = re.findall(r"^\s+--([a-z-]+)=?\s", done.stdout, re.MULTILINE)
    every = sorted(option.rstrip("=") for option in Options().longOpt)
    assert sorted(listed) == every
    assert len(listed) == len(set(listed))
    for heading, names in HELP_SECTIONS:
        section = done.stdout.split(f"{heading}:\n", 1)[1].split("\n\n", 1)[0]
        assert sorted(re.findall(r"^\s+--([a-z-]+)", section, re.MULTILINE)) == sorted(names)
