"""The twistd plugin in this process: ``tap.Options`` and ``tap.makeService``.

Nothing here starts a process or listens: the options are parsed, the
servers built (stores in a temporary directory, certificates minted by
``gsitransfer.testca``) and the service inspected.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest
from twisted.python import usage

from gsitransfer import tap
from gsitransfer.fastpaths import ENVIRONMENT_VARIABLE, FastPaths
from gsitransfer.service import TransferService
from gsitransfer.testca import TestPKI, make_test_pki
from gsitransfer.workers import SupervisorService

HTTP = "tcp:0:interface=127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A test PKI (server certificate, trusted CA directory) minted once for the module."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=(), share_keys=True)


@pytest.fixture(autouse=True)
def fast_paths_not_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees no ``GSITRANSFER_FAST_PATHS`` unless it sets one (CI runs with it off)."""
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)


@pytest.fixture(autouse=True)
def signal_mask_restored() -> Iterator[None]:
    """makeService blocks SIGHUP until the service starts (it never starts here): give the mask back."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


def parsed(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def store_args(tmp_path: Path, *prefixes: str) -> list[str]:
    args: list[str] = []
    for prefix in prefixes:
        (tmp_path / prefix).mkdir(exist_ok=True)
        args += ["--store", f"{prefix}={tmp_path / prefix}"]
    return args


def https_args(pki: TestPKI) -> list[str]:
    return [
        "--https", HTTP,
        "--cert", str(pki.server_cert),
        "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir),
    ]


def test_options_parse_listeners_stores_handlers_and_numbers(tmp_path: Path) -> None:
    """Repeatable options collect in order; numbers are parsed; defaults stay."""
    options = parsed(
        "--http", HTTP, "--http", "tcp:0",
        *store_args(tmp_path, "data", "more"),
        "--handler", "perm=tests.support.handlers:permissive",
        "--trusted-proxy", "10.0.0.0/8",
        "--idle-timeout", "12.5", "--max-files", "7",
    )
    assert options["http"] == [HTTP, "tcp:0"]
    assert options["https"] == []
    assert options["stores"] == [("data", str(tmp_path / "data")), ("more", str(tmp_path / "more"))]
    assert options["handlers"] == [("perm", "tests.support.handlers:permissive")]
    assert options["trusted_proxies"] == ["10.0.0.0/8"]
    assert options["idle-timeout"] == 12.5
    assert options["max-files"] == 7
    assert options["workers"] == 1
    assert options["crl-policy"] == "if-present"
    assert not options["no-fast-paths"]
    assert options.argv[:2] == ["--http", HTTP]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--store", "d=x"], "nothing to listen on: give --http and/or --https"),
        (["--http", HTTP], "nothing to serve: give --store PREFIX=DIR or --handler"),
        (["--http", HTTP, "--store", "d=x", "--store", "d=y"], "prefix registered twice: d"),
        (["--http", HTTP, "--store", "nodirectory"], "--store wants PREFIX=DIRECTORY, got 'nodirectory'"),
        (["--http", HTTP, "--store", "a/b=x"], "--store: prefix 'a/b' must be one path segment"),
        (["--http", HTTP, "--handler", "p=module"], "--handler wants PREFIX=package.module:factory, got 'p=module'"),
        (["--https", HTTP, "--store", "d=x"], "--https needs --cert and --key"),
        (["--https", HTTP, "--cert", "c", "--key", "k", "--store", "d=x"], "--https needs --ca-dir and/or --ca-file"),
        (["--http", HTTP, "--store", "d=x", "--crl-policy", "sometimes"], "--crl-policy is if-present or strict"),
        (
            ["--https", HTTP, "--cert", "c", "--key", "k", "--ca-dir", "d", "--store", "d=x",
             "--trusted-proxy", "127.0.0.1"],
            "--trusted-proxy applies to --http listeners only",
        ),
        (["--http", HTTP, "--store", "d=x", "--workers", "0"], f"--workers is between 1 and {tap.MAX_WORKERS}"),
        (["--http", HTTP, "--store", "d=x", "--workers", "many"], "--workers wants a whole number, got 'many'"),
        (["--http", HTTP, "--store", "d=x", "--idle-timeout", "soon"], "--idle-timeout wants a number, got 'soon'"),
        (["--http", HTTP, "--store", "d=x", "--idle-timeout", "0"], "--idle-timeout must be positive"),
        (["--http", HTTP, "--store", "d=x", "--shutdown-grace", "-1"], "--shutdown-grace must not be negative"),
        (["--http", HTTP, "--store", "d=x", "--min-body-rate", "-1"], "--min-body-rate must not be negative"),
        (["--http", HTTP, "--store", "d=x", "--max-pending-files", "-1"], "--max-pending-files must not be negative"),
        (["--http", "8080", "--store", "d=x"], "endpoint '8080' is not a Twisted endpoint string (e.g. tcp:8080)"),
    ],
)
def test_bad_options_are_one_line_and_exit_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every usage problem is one line on stderr naming it, and exit status 2."""
    with pytest.raises(SystemExit) as exited:
        parsed(*argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"{tap.PROGRAM}: error: {message}\n"


def test_post_options_raises_usage_error_with_the_message() -> None:
    """The check itself raises UsageError (``parseOptions`` turns it into the line)."""
    options = tap.Options()
    options["stores"].append(("data", "x"))
    with pytest.raises(usage.UsageError, match="^nothing to listen on: give --http and/or --https$"):
        options.postOptions()


def test_make_service_single_process_builds_one_http_server_with_every_prefix(tmp_path: Path) -> None:
    """One process: a TransferService whose one server serves each --store prefix on the --http endpoint."""
    options = parsed("--http", HTTP, *store_args(tmp_path, "data", "more"))
    made = tap.makeService(options)
    assert isinstance(made, TransferService)
    assert not isinstance(made, SupervisorService)
    [server] = made.servers
    assert server.scheme == "http"
    assert server.prefixes() == ["data", "more"]
    assert made.endpoints == [(server, HTTP)]
    assert made.reload_interval == options["reload-interval"]
    assert made.shutdown_grace == options["shutdown-grace"]
    assert (tmp_path / "data" / ".gsitransfer-transfers.sqlite").exists()


def test_make_service_with_https_and_http_builds_both_servers(tmp_path: Path, pki: TestPKI) -> None:
    """--https and --http: a GSI server and a plain one, sharing the prefixes, each on its endpoints."""
    options = parsed(*https_args(pki), "--http", "tcp:0", *store_args(tmp_path, "data"))
    made = tap.makeService(options)
    assert isinstance(made, TransferService)
    https, http = made.servers
    assert (https.scheme, http.scheme) == ("https", "http")
    assert https.prefixes() == http.prefixes() == ["data"]
    assert made.endpoints == [(https, HTTP), (http, "tcp:0")]
    assert https.transfers is http.transfers


@pytest.mark.parametrize(
    ("argv", "environment", "expected"),
    [
        ([], None, FastPaths()),
        ([], "on", FastPaths()),
        ([], "off", FastPaths.none()),
        (["--no-fast-paths"], None, FastPaths.none()),
        (["--no-fast-paths"], "on", FastPaths.none()),
    ],
)
def test_fast_paths_come_from_the_option_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: TestPKI,
    argv: list[str], environment: str | None, expected: FastPaths,
) -> None:
    """--no-fast-paths or GSITRANSFER_FAST_PATHS=off: every server gets FastPaths.none(); else all on."""
    if environment is not None:
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, environment)
    options = parsed(*https_args(pki), "--http", HTTP, *store_args(tmp_path, "data"), *argv)
    assert options.fast_paths() == expected
    made = tap.makeService(options)
    assert isinstance(made, TransferService)
    assert [server.fast_paths for server in made.servers] == [expected, expected]  # type: ignore[attr-defined]
    assert [server.access_line_writer for server in made.servers] == [None, None]  # type: ignore[attr-defined]


def test_make_service_with_workers_builds_a_supervisor_without_starting_it(tmp_path: Path) -> None:
    """--workers 2: a SupervisorService holding the servers and the arguments its workers get."""
    argv = ["--http", HTTP, *store_args(tmp_path, "data"), "--workers", "2", "--no-fast-paths"]
    made = tap.makeService(parsed(*argv))
    assert isinstance(made, SupervisorService)
    assert made.worker_count == 2
    assert made.workers == {}
    assert made.argv == argv
    [server] = made.servers
    assert server.prefixes() == ["data"]
    assert made.endpoints == [(server, HTTP)]
    assert server.fast_paths == FastPaths.none()  # type: ignore[attr-defined]


def test_make_service_reports_a_handler_that_cannot_be_made_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --handler whose module does not import is one line and exit status 1."""
    options = parsed("--http", HTTP, "--handler", "p=gsitransfer_no_such_module:factory", "--state",
                     str(tmp_path / "state.sqlite"))
    with pytest.raises(SystemExit) as exited:
        tap.makeService(options)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{tap.PROGRAM}: error: cannot import gsitransfer_no_such_module: ")
    assert err.count("\n") == 1


def test_build_servers_raises_config_error_for_an_unusable_certificate(tmp_path: Path, pki: TestPKI) -> None:
    """A --cert that does not exist is a ConfigError naming the problem, before anything listens."""
    args = https_args(pki)
    args[args.index("--cert") + 1] = str(tmp_path / "missing.pem")
    options = parsed(*args, *store_args(tmp_path, "data"))
    with pytest.raises(tap.ConfigError) as error:
        tap.build_servers(options)
    assert "\n" not in str(error.value)
