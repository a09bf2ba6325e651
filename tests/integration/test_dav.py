"""WebDAV over real mutual TLS: PROPFIND with curl, davix-ls and davix-rm with a grid proxy, DELETE rules.

gfal2 and rclone (which list, stat and delete with PROPFIND and DELETE too)
are in test_grid_clients.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from gsitransfer.testca import TestPKI, make_test_pki
from tests.support.server import ServerProcess

from .helpers import running, server_args

D = "{DAV:}"


class Site:
    """A server with mutual TLS over one directory store."""

    def __init__(self, pki: TestPKI, store: Path, server: ServerProcess) -> None:
        self.pki, self.store, self.server = pki, store, server
        self.base = server.url("https").replace("127.0.0.1", "localhost") + "/data/"

    def curl(self, *args: str, user: str = "alice") -> subprocess.CompletedProcess[bytes]:
        proxy = str(self.pki.users[user].proxy)
        tls = ["--cacert", str(self.pki.ca_file), "--cert", proxy, "--key", proxy]
        return subprocess.run(["curl", "-sS", "--max-time", "60", *tls, *args], capture_output=True, timeout=90)

    def grid_env(self, user: str = "alice") -> dict[str, str]:
        return dict(os.environ, X509_USER_PROXY=str(self.pki.users[user].proxy), X509_CERT_DIR=str(self.pki.ca_dir))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp_path = tmp_path_factory.mktemp("dav")
    pki = make_test_pki(tmp_path / "pki", users=("alice", "bob"), share_keys=True)
    store = tmp_path / "store"
    store.mkdir()
    args = [
        *server_args(store), "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert),
        "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
    ]
    with running(ServerProcess(tmp_path, args)) as server:
        yield Site(pki, store, server)


def _put(site: Site, name: str, data: bytes, user: str = "alice") -> None:
    proxy = str(site.pki.users[user].proxy)
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "--cacert", str(site.pki.ca_file), "--cert", proxy, "--key", proxy,
         "-T", "-", "-o", "/dev/null", "-w", "%{http_code}", site.base + urllib.parse.quote(name)],
        input=data, capture_output=True, timeout=90,
    )
    assert result.stdout == b"201", result.stderr


def test_curl_propfind_parses_as_multistatus(site: Site) -> None:
    """curl -X PROPFIND Depth 1 over mutual TLS: 207, XML with the collection and the files, sizes right."""
    _put(site, "pf one.dat", b"a" * 1234)
    result = site.curl("-X", "PROPFIND", "-H", "Depth: 1", "-w", "\n%{http_code}", site.base)
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"207", body
    root = ET.fromstring(body)
    sizes = {
        urllib.parse.unquote(response.findtext(f"{D}href") or ""): response.findtext(f".//{D}getcontentlength")
        for response in root.iter(f"{D}response")
    }
    assert "/data/" in sizes and sizes["/data/pf one.dat"] == "1234"


@pytest.mark.skipif(shutil.which("davix-ls") is None, reason="davix is not installed")
def test_davix_ls_and_rm_with_a_grid_proxy(site: Site) -> None:
    """davix-ls -P grid lists the prefix (long form with sizes); davix-rm by the uploader deletes, by another is refused."""
    _put(site, "davix-a.dat", b"x" * 5000)
    _put(site, "davix b.dat", b"y" * 7)
    listed = subprocess.run(["davix-ls", "-P", "grid", "-l", site.base], capture_output=True, text=True,
                            env=site.grid_env(), timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[-1]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "davix-a.dat" in lines and "5000" in lines["davix-a.dat"].split()
    # davix prints the last segment of each href as sent: percent-encoded (RFC 4918 hrefs are URIs)
    assert any(line.endswith("davix%20b.dat") for line in listed.stdout.splitlines())
    refused = subprocess.run(["davix-rm", "-P", "grid", site.base + "davix-a.dat"], capture_output=True, text=True,
                             env=site.grid_env("bob"), timeout=120)
    assert refused.returncode != 0 and (site.store / "davix-a.dat").exists()
    removed = subprocess.run(["davix-rm", "-P", "grid", site.base + "davix-a.dat"], capture_output=True, text=True,
                             env=site.grid_env(), timeout=120)
    assert removed.returncode == 0, removed.stderr
    assert not (site.store / "davix-a.dat").exists()


def test_delete_rules_over_tls(site: Site) -> None:
    """DELETE: another identity 403 (the file stays), the uploader 204, then 404; MKCOL 405; OPTIONS DAV: 1."""
    _put(site, "del.dat", b"z" * 10)
    other = site.curl("-X", "DELETE", "-w", "%{http_code}", "-o", "/dev/null", site.base + "del.dat", user="bob")
    assert other.stdout == b"403" and (site.store / "del.dat").exists()
    own = site.curl("-X", "DELETE", "-w", "%{http_code}", "-o", "/dev/null", site.base + "del.dat")
    assert own.stdout == b"204" and not (site.store / "del.dat").exists()
    again = site.curl("-X", "DELETE", "-w", "%{http_code}", "-o", "/dev/null", site.base + "del.dat")
    assert again.stdout == b"404"
    mkcol = site.curl("-X", "MKCOL", "-w", "%{http_code}", "-o", "/dev/null", site.base + "sub")
    assert mkcol.stdout == b"405"
    options = site.curl("-X", "OPTIONS", "-D", "-", "-o", "/dev/null", site.base + "x.dat").stdout.decode().lower()
    assert "dav: 1" in options and "propfind" in options
