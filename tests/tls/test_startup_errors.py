"""twistd accessgrid-transfer refuses a bad configuration with one line and a non-zero exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from gsitransfer.testca import TestPKI
from tests.support.server import ServerProcess

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
    (tmp_path / "store").mkdir(exist_ok=True)
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


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused start (exit status 1, no traceback, nothing in the log's lines)."""
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "stderr#error" not in result.stdout  # not inside a timestamped log line
    return errors[0]


def test_a_missing_store_directory_names_create_store(tmp_path):
    """--store data=<missing dir>: one line naming --create-store, exit 1, and the directory is not made."""
    missing = tmp_path / "no" / "such" / "dir"
    line = one_line(run_twistd(tmp_path, "--http", "tcp:0:interface=127.0.0.1", "--store", f"data={missing}"))
    assert line == (f"accessgrid-transfer: error: store directory {missing} does not exist "
                    "(create it, or give --create-store)")
    assert not (tmp_path / "no").exists()


def test_a_missing_state_directory_names_create_store(tmp_path):
    """--state in a missing directory: the same line for that directory."""
    (tmp_path / "store").mkdir()
    state = tmp_path / "state" / "keys.sqlite"
    line = one_line(run_twistd(tmp_path, "--http", "tcp:0:interface=127.0.0.1",
                               "--store", f"data={tmp_path / 'store'}", "--state", str(state)))
    assert line == (f"accessgrid-transfer: error: directory {state.parent} of --state does not exist "
                    "(create it, or give --create-store)")


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    """--store data=<a file>: one line saying it is not a directory (even with --create-store)."""
    plain = tmp_path / "plain"
    plain.write_text("not a directory")
    line = one_line(run_twistd(tmp_path, "--http", "tcp:0:interface=127.0.0.1",
                               "--store", f"data={plain}", "--create-store"))
    assert line == f"accessgrid-transfer: error: store directory {plain} is not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any directory")
def test_a_store_directory_this_account_cannot_write_is_refused(tmp_path):
    """An existing store directory without write permission: one line naming the account."""
    store = tmp_path / "store"
    store.mkdir(mode=0o555)
    line = one_line(run_twistd(tmp_path, "--http", "tcp:0:interface=127.0.0.1", "--store", f"data={store}"))
    assert line == (f"accessgrid-transfer: error: store directory {store} is not readable and writable "
                    f"by this process (uid {os.geteuid()})")


def test_create_store_makes_the_directories_mode_0750(test_pki, tmp_path):
    """--create-store makes the missing store directories (parents too), mode 0750, and the server starts."""
    store = tmp_path / "made" / "store"
    server = ServerProcess(tmp_path, ["--http", "tcp:0:interface=127.0.0.1", "--store", f"data={store}",
                                      "--create-store"], make_stores=False).start()
    try:
        assert server.url("http").startswith("http://127.0.0.1:")
    finally:
        server.stop()
    for directory in (tmp_path / "made", store):
        assert directory.stat().st_mode & 0o777 == 0o750
    assert (store / ".gsitransfer-store.sqlite").exists()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_plain_line(test_pki, tmp_path, taken_port, scheme, workers):
    """A listener's port already in use: one plain stderr line naming the option to change, exit 1."""
    endpoint = f"tcp:{taken_port}:interface=127.0.0.1"
    args = tls_args(test_pki, tmp_path, **{"--https": "tcp:0:interface=127.0.0.1"})
    args += ["--http", "tcp:0:interface=127.0.0.1", "--workers", workers]
    args[args.index(f"--{scheme}") + 1] = endpoint
    variable = "HTTPS_PORT" if scheme == "https" else "HTTP_PORT"
    assert one_line(run_twistd(tmp_path, *args)) == (
        f"accessgrid-transfer: error: cannot listen on {endpoint}: address already in use "
        f"(choose another with --{scheme}, or {variable}=... scripts/serve)"
    )


def test_a_port_in_use_stops_a_daemon_too(tmp_path, taken_port):
    """Without -n: twistd's waiting parent is told (exit 1, not a hang) and the log file has the whole line."""
    (tmp_path / "store").mkdir()
    endpoint = f"tcp:{taken_port}:interface=127.0.0.1"
    log = tmp_path / "twistd.log"
    code = ("import sys; from twisted.scripts.twistd import run; "
            "sys.argv = ['twistd', '--pidfile=', '--logfile=" + str(log) + "'] + sys.argv[1:]; run()")
    result = subprocess.run(
        [sys.executable, "-c", code, "accessgrid-transfer", "--http", endpoint, "--store", f"data={tmp_path / 'store'}"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "An error has occurred: b'accessgrid-transfer: error: cannot listen on " in result.stderr
    line = (f"accessgrid-transfer: error: cannot listen on {endpoint}: address already in use "
            "(choose another with --http, or HTTP_PORT=... scripts/serve)")
    assert line in log.read_text()
