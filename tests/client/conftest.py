"""Fixtures of the client tests.

* ``test_pki`` -- the session's rich test PKI (from tests/tls/conftest.py);
* ``memory`` -- a real ``HTTPTransferServer`` with a ``DirectoryStore`` under
  ``data``, served by a real ``TransferSite`` to Twisted's real ``Agent``, in
  memory (``tests.client.memory``): the fast layer;
* ``servers`` -- (module) one real server process on 127.0.0.1 with both
  variants, ``--http`` and ``--https`` (mutual TLS, trusting ``test_pki``):
  ``data`` is a directory store, ``perm`` a store whose manifests are never
  refused (to reach 507 at the body);
* ``run_cli`` -- ``python -m gsitransfer.cli ARGS`` in a subprocess with a
  clean Globus environment (temporary HOME, no X509_* variables) plus what
  the test adds.

Plain helper functions the tests share are in ``tests.client.support``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import twisted.internet._producer_helpers as producer_helpers

from gsitransfer.client.session import inline_runner
from gsitransfer.store import DirectoryStore
from gsitransfer.testca import TestPKI
from gsitransfer.web import HTTPTransferServer
from tests.support.server import ServerProcess
from tests.tls.conftest import test_pki  # noqa: F401 -- the session PKI fixture

from .memory import MemoryAgent
from .support import clean_env

CLI_TIMEOUT = 60.0


@dataclass
class Memory:
    """An in-memory server and a client for it."""

    server: HTTPTransferServer
    agent: MemoryAgent
    store: Path

    def options(self) -> dict[str, object]:
        """Keyword arguments that point an api function at this server."""
        return {"http": self.agent.client(), "reactor": self.agent.reactor}

    def blocking(self) -> dict[str, object]:
        """The same, for functions that also run blocking work (MD5s)."""
        return {**self.options(), "run_blocking": inline_runner}


@pytest.fixture
def memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Memory:
    """A real TransferSite and Agent joined in memory; base URL http://test."""
    server = HTTPTransferServer(public_url="http://test")
    store = tmp_path / "store"
    server.RegisterPrefix("data", DirectoryStore(str(store)))
    agent = MemoryAgent(server.site())
    monkeypatch.setattr(producer_helpers, "cooperate", agent.cooperate)
    return Memory(server, agent, store)


@dataclass
class Servers:
    """One server process with both variants."""

    process: ServerProcess
    store: Path
    pki: TestPKI

    @property
    def https(self) -> str:
        """The mutual-TLS base URL (by name: the server certificate is for localhost)."""
        return self.process.url("https").replace("127.0.0.1", "localhost")

    @property
    def http(self) -> str:
        return self.process.url("http")


def server_args(pki: TestPKI, store: Path, *extra: str) -> list[str]:
    return [
        "--http", "tcp:0:interface=127.0.0.1", "--https", "tcp:0:interface=127.0.0.1",
        "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
        "--store", f"data={store}", "--handler", "perm=tests.support.handlers:permissive", *extra,
    ]


def start_servers(work: Path, pki: TestPKI, *extra: str) -> Servers:
    store = work / "store"
    process = ServerProcess(work, server_args(pki, store, *extra),
                            env={"GSITRANSFER_TEST_STORE": str(work / "perm")}).start()
    return Servers(process, store, pki)


@pytest.fixture(scope="module")
def servers(test_pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:  # noqa: F811
    """The module's server (HTTP and mutual TLS on 127.0.0.1)."""
    running = start_servers(tmp_path_factory.mktemp("servers"), test_pki)
    yield running
    running.process.stop()
    assert "Unhandled Error" not in running.process.log_text()


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the command line in a subprocess (cwd: the test's directory)."""
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, env: dict[str, str] | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gsitransfer.cli", *args], cwd=tmp_path,
            env=env if env is not None else clean_env(home, **extra),
            capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
        )

    return run
