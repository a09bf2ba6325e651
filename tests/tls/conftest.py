"""Fixtures for the TLS tests: a test PKI on disk and a real mutual-TLS echo server.

``test_pki`` (session) is a :class:`gsitransfer.testca.TestPKI` minted once into
a temporary directory (never into the repository). Its attributes:

* ``ca_dir`` -- Globus trusted directory: ``<hash>.0`` (root and intermediate CA),
  ``<hash>.r0`` (their CRLs), ``<hash>.signing_policy``, ``<hash>.namespaces``; ``ca_file`` -- both CA
  certificates in one PEM file;
* ``root``, ``intermediate``, ``untrusted`` -- :class:`CAFiles` (``dn``,
  ``hash``, ``cert``, ``key``, ``crl``); the untrusted CA is in neither
  ``ca_dir`` nor ``ca_file``; ``crls`` -- CRL path by CA label;
* ``server_cert`` / ``server_key`` -- localhost, 127.0.0.1, ::1;
  ``server_expired_cert`` -- same key, expired yesterday;
* ``users[name]`` -- :class:`UserFiles` with ``dn``, ``issuer_dn``, ``serial``,
  ``cert``, ``key`` and the grid-proxy-init style files ``proxy``,
  ``limited_proxy``, ``independent_proxy`` (+ ``independent_proxy_dn``),
  ``proxy_of_proxy``, ``expired_proxy`` (None for an expired user).

The users (``users[name].dn`` in one-line form):

* ``alice``, ``bob`` -- ``/C=US/O=Grid Test/OU=People/CN=Alice Example`` (Bob
  Example): plain users of the root CA;
* ``carol`` -- ``/C=US/O=Grid Test/OU=Intermediate People/CN=Carol Example``,
  issued by the intermediate CA;
* ``dave`` -- ``/C=US/O=Grid Test/OU=People/UID=dave+CN=Dave Example``
  (multi-valued RDN);
* ``jose`` -- ``/C=US/O=Grid Test/OU=People/CN=Jos\\xC3\\xA9 M\\xC3\\xBCller`` (UTF-8);
* ``odd`` -- ``/C=US/O=Grid Test/OU=R\\/D, Labs/CN=Odd\\/Name, Jr. \\+1 = \\x``
  (``/ , + = \\`` inside values);
* ``expired`` -- expired a month ago (no proxy files);
* ``revoked`` -- listed in the root CA's CRL (its proxies too, by chain);
* ``revoked-inter`` -- listed in the intermediate CA's CRL;
* ``mallory`` -- ``/C=XX/O=Untrusted Test/CN=Mallory``, issued by the untrusted CA.

``echo_server`` (session) is a subprocess (tests/tls/tls_echo_server.py) serving
``server_protocol_factory(ServerTLS, ..., bulk=...)`` on 127.0.0.1 with ``test_pki``;
``tls_handshake(port, cert, key, ...)`` connects with Python's ``ssl`` and
returns a :class:`Handshake`. Tests that change the PKI copy it first with
``copy_pki``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gsitransfer.testca import TestPKI, make_test_pki, rich_test_users
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
ECHO_SERVER = Path(__file__).with_name("tls_echo_server.py")
TIMEOUT = 15.0


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A rich test PKI (see the module docstring), minted once per session."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=rich_test_users(), share_keys=True)


def copy_pki(pki: TestPKI, destination: Path) -> TestPKI:
    """A copy of ``pki`` under ``destination`` (to revoke or break things in)."""
    shutil.copytree(pki.directory, destination)

    def moved(path: Path | None) -> Path | None:
        return destination / path.relative_to(pki.directory) if path is not None else None

    def move_all(value: object) -> object:
        changes = {name: moved(getattr(value, name)) for name in value.__dataclass_fields__  # type: ignore[attr-defined]
                   if isinstance(getattr(value, name), Path)}
        return replace(value, **changes)  # type: ignore[type-var]

    return replace(
        move_all(pki),  # type: ignore[arg-type]
        root=move_all(pki.root), intermediate=move_all(pki.intermediate), untrusted=move_all(pki.untrusted),
        users={name: move_all(user) for name, user in pki.users.items()},
    )


# ---------------------------------------------------------------------------
# The echo server in a child process
# ---------------------------------------------------------------------------


class EchoServer:
    """tests/tls/tls_echo_server.py in a child process; every wait is bounded."""

    def __init__(self, workdir: Path, *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.log_path = workdir / f"echo-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.process = subprocess.Popen(
            [sys.executable, str(ECHO_SERVER), *args], stdin=subprocess.PIPE,
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
        )
        match = self.wait_for(lambda text: re.search(r"^port: (\d+)$", text, re.M))
        self.port = int(match.group(1))
        #: True when the server runs the bulk transport (``--bulk`` and fast paths not turned off)
        self.bulk = "transport: BulkTLSFactory" in self.log()

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, found: Callable[[str], object], timeout: float = TIMEOUT) -> object:
        """Poll the log until ``found(log)`` is truthy (at most ``timeout`` seconds); return it."""

        def check() -> object:
            result = found(self.log())
            if not result and self.process.poll() is not None:
                raise RuntimeError(f"echo server exited ({self.process.returncode}):\n{self.log()}")
            return result

        try:
            return wait_for(check, timeout, "the echo server's log", interval=0.02)
        except AssertionError as error:
            raise TimeoutError(f"{error}:\n{self.log()}") from None

    def reload(self) -> bool:
        """Call ServerTLS.reload() in the server; its result."""
        done = len(re.findall(r"^reloaded: ", self.log(), re.M))
        assert self.process.stdin is not None
        self.process.stdin.write(b"reload\n")
        self.process.stdin.flush()
        results = self.wait_for(lambda text: (found := re.findall(r"^reloaded: (\w+)$", text, re.M))[done:] and found)
        return results[done] == "True"  # type: ignore[index]

    def stop(self) -> None:
        """Close stdin (the server stops) and reap it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log.close()


def server_args(pki: TestPKI, *, ca_dir: bool = True, ca_file: bool = False,
                crl_policy: str = "if-present") -> list[str]:
    """Command-line arguments for the echo server on ``pki``."""
    args = ["--cert", str(pki.server_cert), "--key", str(pki.server_key), "--crl-policy", crl_policy]
    if ca_dir:
        args += ["--ca-dir", str(pki.ca_dir)]
    if ca_file:
        args += ["--ca-file", str(pki.ca_file)]
    return args


@pytest.fixture(scope="session", params=["twisted-tls", "bulk-tls"])
def echo_server(
    test_pki: TestPKI, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[EchoServer]:
    """The echo server trusting ``test_pki.ca_dir`` (default CRL policy).

    Twice: through Twisted's TLSMemoryBIOFactory (the handshake watched by an
    info callback) and through the bulk transport (the handshake reported by
    the transport; Twisted's again with ``GSITRANSFER_FAST_PATHS=off``), so
    every check of identity and refusal logs holds for both.
    """
    extra = ("--bulk",) if request.param == "bulk-tls" else ()
    server = EchoServer(tmp_path_factory.mktemp("echo"), *server_args(test_pki), *extra)
    yield server
    server.stop()


@pytest.fixture
def start_echo_server(tmp_path: Path) -> Iterator[Callable[..., EchoServer]]:
    """Start extra echo servers (stopped at the end of the test)."""
    started: list[EchoServer] = []

    def start(*args: str) -> EchoServer:
        server = EchoServer(tmp_path / "echo", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """What a client saw: the identity lines written back, or the error."""

    accepted: bool
    fields: dict[str, str] = field(default_factory=dict)
    error: str = ""
    #: the client's local port, to find this connection in the server log
    local_port: int = 0


def tls_handshake(
    port: int, cert: Path | None = None, key: Path | None = None, *, ca_file: Path,
    max_version: ssl.TLSVersion | None = None, timeout: float = TIMEOUT,
) -> Handshake:
    """Connect to 127.0.0.1:``port`` with ``cert``/``key`` (a proxy file works as both)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca_file))
    if max_version is not None:
        context.maximum_version = max_version
    if cert is not None:
        context.load_cert_chain(str(cert), str(key or cert))
    data, error, local_port = b"", "", 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            local_port = raw.getsockname()[1]
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                while chunk := tls.recv(65536):
                    data += chunk
    except (OSError, ssl.SSLError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    fields = dict(line.split(": ", 1) for line in data.decode("utf-8").splitlines() if ": " in line)
    return Handshake("dn" in fields, fields, error, local_port)
