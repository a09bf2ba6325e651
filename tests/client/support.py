"""Helpers the client tests share (plain functions; the fixtures are in conftest.py).

* :func:`clean_env` -- an environment without Globus variables, for a CLI run;
* :func:`tls_env` -- the same with alice's proxy and the test CAs (mutual TLS);
* :func:`make_files` -- distinct files of a given size to upload;
* :func:`announce` -- a manifest posted as alice with a plain HTTP helper (not
  the client under test); the transfer key.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Protocol

from gsitransfer.testca import TestPKI
from tests.support.http import client_tls, request
from tests.support.server import REPO


class HasHTTPSURL(Protocol):
    """A running server's mutual-TLS base URL (conftest's ``Servers``)."""

    @property
    def https(self) -> str: ...


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without any Globus variable, HOME at ``home``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("X509_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def make_files(directory: Path, count: int, size: int) -> list[Path]:
    """``count`` files of ``size`` bytes in ``directory``, with unique names and distinct contents."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    paths = []
    for number in range(count):
        path = directory / f"part-{tag}-{number}.dat"
        path.write_bytes(os.urandom(size // 2) + bytes([number]) * (size - size // 2))
        paths.append(path)
    return paths


def tls_env(tmp_path: Path, pki: TestPKI) -> dict[str, str]:
    """A clean environment whose Globus variables point at alice's proxy and the test CAs."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return clean_env(home, X509_USER_PROXY=str(pki.users["alice"].proxy), X509_CERT_DIR=str(pki.ca_dir))


def announce(servers: HasHTTPSURL, pki: TestPKI, files: list[tuple[str, bytes]], prefix: str = "data",
             sizes: dict[str, int] | None = None, checksums: dict[str, str] | None = None) -> str:
    """Post a manifest as alice (test helper, not the client under test); the transfer key."""
    lines = [f"[manifest]\nnum_files = {len(files)}\n"]
    for num, (name, content) in enumerate(files):
        size = (sizes or {}).get(name, len(content))
        md5 = (checksums or {}).get(name, hashlib.md5(content).hexdigest())
        lines.append(f"[{num}]\nname = {name}\nsize = {size}\nchecksum = {md5}\n")
    alice = pki.users["alice"]
    answer = request(servers.https, "POST", f"/{prefix}/manifest", "\n".join(lines).encode(),
                     tls=client_tls(pki.ca_file, alice.proxy))
    assert answer.status == 200 and answer.fields().get("return_code") == "0", answer.text
    return answer.fields()["transfer_key"]


__all__ = ["announce", "clean_env", "make_files", "tls_env"]
