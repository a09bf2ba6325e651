"""twistd accessgrid-transfer refuses a bad configuration with one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gsitransfer.testca import TestPKI

REPO = Path(__file__).resolve().parents[2]


def run_twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = (
        "import sys; from twisted.scripts.twistd import run; "
        "sys.argv = ['twistd', '-n', '--pidfile=', '--logfile=-'] + sys.argv[1:]; run()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "accessgrid-transfer", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )


def tls_args(pki: TestPKI, tmp_path: Path, **override: str) -> list[str]:
    options = {
        "--https": "tcp:0:interface=127.0.0.1",
        "--cert": str(pki.server_cert),
        "--key": str(pki.server_key),
        "--ca-dir": str(pki.ca_dir),
        "--store": f"data={tmp_path / 'store'}",
    }
    options.update(override)
    return [item for pair in options.items() for item in pair]


@pytest.mark.parametrize(
    "case",
    ["missing cert", "missing key", "mismatched key", "expired cert", "empty CA dir", "bad gridmap",
     "no listener", "bad store", "bad handler"],
)
def test_one_line_and_nonzero_exit(test_pki, tmp_path, case):
    """Each start-up problem is one line on stderr naming it, exit status != 0, no traceback."""
    empty = tmp_path / "empty-ca"
    empty.mkdir()
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text('"/CN=unterminated alice\n')
    other_key = test_pki.users["alice"].key
    args = {
        "missing cert": tls_args(test_pki, tmp_path, **{"--cert": str(tmp_path / "nope.pem")}),
        "missing key": tls_args(test_pki, tmp_path, **{"--key": str(tmp_path / "nope.key")}),
        "mismatched key": tls_args(test_pki, tmp_path, **{"--key": str(other_key)}),
        "expired cert": tls_args(test_pki, tmp_path, **{"--cert": str(test_pki.server_expired_cert)}),
        "empty CA dir": tls_args(test_pki, tmp_path, **{"--ca-dir": str(empty)}),
        "bad gridmap": tls_args(test_pki, tmp_path) + ["--gridmap", str(gridmap)],
        "no listener": ["--store", f"data={tmp_path}"],
        "bad store": ["--http", "tcp:0", "--store", "data=/proc/forbidden/store"],
        "bad handler": ["--http", "tcp:0", "--handler", "data=no.such.module:factory"],
    }[case]
    result = run_twistd(tmp_path, *args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("accessgrid-transfer: error: ")
    assert "Traceback" not in result.stdout + result.stderr
