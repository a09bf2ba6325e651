"""The GSI variant end to end: twistd with --https, real handshakes and uploads on 127.0.0.1.

Every identity case goes through a real TLS handshake and a real upload; the
DN asserted is the one the handler callbacks received (recorded by
tests.support.handlers:recording), and it is compared with what openssl and
grid-proxy-info print where they are installed. Every refusal must reach no
handler callback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gsitransfer.testca import TestPKI, revoke
from tests.support.http import client_tls, manifest_for, post_manifest, request
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for
from .conftest import copy_pki

HAVE_OPENSSL = shutil.which("openssl") is not None
HAVE_GLOBUS = shutil.which("grid-proxy-init") is not None and shutil.which("grid-proxy-info") is not None


def gsi_args(pki: TestPKI, *extra: str) -> list[str]:
    return [
        "--https", "tcp:0:interface=127.0.0.1",
        "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir),
        "--handler", "data=tests.support.handlers:recording",
        *extra,
    ]


class GSIServer:
    def __init__(self, work: Path, pki: TestPKI, *extra: str) -> None:
        self.store = work / "store"
        self.record = work / "record.jsonl"
        self.pki = pki
        self.process = ServerProcess(
            work,
            gsi_args(pki, *extra),
            env={"GSITRANSFER_TEST_STORE": str(self.store), "GSITRANSFER_TEST_RECORD": str(self.record)},
        ).start()
        self.base = self.process.url("https").replace("127.0.0.1", "localhost")

    def records(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def upload(self, cert: Path, key: Path | None = None, headers: dict[str, str] | None = None) -> str:
        """Upload one new file as this credential; return the name."""
        tls = client_tls(self.pki.ca_file, cert, key)
        name = f"f-{time.monotonic_ns()}.txt"
        content = name.encode() * 3
        announced = request(self.base, "POST", "/data/manifest", manifest_for([(name, content)]), headers, tls=tls)
        refuse_if_forbidden(announced.status, announced.text)
        assert announced.status == 200 and announced.fields().get("return_code") == "0", announced.text
        transfer_key = announced.fields()["transfer_key"]
        answer = request(self.base, "POST", f"/data/{transfer_key}/0", content, headers, tls=tls)
        refuse_if_forbidden(answer.status, answer.text)
        assert answer.status == 200, answer.text
        download = request(self.base, "GET", f"/data/{name}", tls=tls)
        refuse_if_forbidden(download.status, download.text)
        assert download.body == content
        return name

    def dns_seen(self, name: str) -> set[str | None]:
        return {r["dn"] for r in self.records() if r["argument"] == name}

    def stop(self) -> None:
        self.process.stop()
        log = self.process.log_text()
        assert "Unhandled Error" not in log
        # an accepted session closed by the client is not logged as a refusal
        assert "decode error" not in log


def refuse_if_forbidden(status: int, text: str) -> None:
    """A 403 is a refusal like a refused handshake (PermissionError is an OSError).

    A reload that lands after a connection's handshake re-judges that
    connection at its next request (403) instead of refusing the handshake.
    """
    if status == 403:
        raise PermissionError(text)


@pytest.fixture(scope="module")
def gsi(test_pki: TestPKI, tmp_path_factory: pytest.TempPathFactory):
    server = GSIServer(tmp_path_factory.mktemp("gsi"), test_pki)
    yield server
    server.stop()


def openssl_subject(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "compat", "-in", str(cert)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return out.split("subject=", 1)[1]


def grid_proxy_identity(proxy: Path) -> str:
    return subprocess.run(
        ["grid-proxy-info", "-file", str(proxy), "-identity"], capture_output=True, text=True, check=True
    ).stdout.strip()


IDENTITY_MATRIX = [
    ("alice", "cert"),
    ("alice", "proxy"),
    ("alice", "proxy_of_proxy"),
    ("alice", "limited_proxy"),
    ("alice", "independent_proxy"),
    ("carol", "cert"),
    ("carol", "proxy"),
    ("dave", "cert"),
    ("jose", "cert"),
    ("jose", "proxy"),
    ("odd", "cert"),
    ("odd", "proxy"),
]


@pytest.mark.parametrize("user, credential", IDENTITY_MATRIX)
def test_identity_matrix(gsi, test_pki, user, credential):
    """The handler sees the end-entity DN (an independent proxy: its own), as grid-proxy-info prints it."""
    files = test_pki.users[user]
    path = getattr(files, credential)
    key = files.key if credential == "cert" else None
    name = gsi.upload(path, key)
    expected = files.independent_proxy_dn if credential == "independent_proxy" else files.dn
    assert gsi.dns_seen(name) == {expected}
    records = [r for r in gsi.records() if r["argument"] == name]
    assert all(r["proxy"] == (credential != "cert") for r in records)
    assert all(r["limited_proxy"] == (credential == "limited_proxy") for r in records)
    if HAVE_OPENSSL and credential == "cert":
        assert openssl_subject(files.cert) == expected
    if HAVE_GLOBUS and credential != "cert":
        assert grid_proxy_identity(path) == expected


@pytest.mark.skipif(not HAVE_GLOBUS, reason="globus-proxy-utils not installed")
def test_proxy_made_by_grid_proxy_init(gsi, test_pki, tmp_path):
    """A proxy made by grid-proxy-init itself authenticates as its user."""
    alice = test_pki.users["alice"]
    proxy = tmp_path / "x509up_test"
    env = dict(os.environ, X509_CERT_DIR=str(test_pki.ca_dir))
    subprocess.run(
        ["grid-proxy-init", "-cert", str(alice.cert), "-key", str(alice.key), "-out", str(proxy), "-hours", "1"],
        env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    name = gsi.upload(proxy)
    assert gsi.dns_seen(name) == {alice.dn} == {grid_proxy_identity(proxy)}


def test_spoofed_x_client_dn_is_ignored(gsi, test_pki):
    """On TLS an X-Client-DN header never changes the identity."""
    alice = test_pki.users["alice"]
    name = gsi.upload(alice.cert, alice.key, headers={"X-Client-DN": test_pki.users["bob"].dn})
    assert gsi.dns_seen(name) == {alice.dn}


REFUSED = [
    ("no client certificate", None, None),
    ("untrusted CA", "mallory", "cert"),
    ("expired certificate", "expired", "cert"),
    ("expired proxy", "alice", "expired_proxy"),
    ("revoked user", "revoked", "cert"),
    ("revoked user's proxy", "revoked", "proxy"),
    ("revoked intermediate user", "revoked-inter", "cert"),
]


@pytest.mark.parametrize("case, user, credential", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_at_the_handshake(gsi, test_pki, case, user, credential):
    """Each bad credential is refused by TLS and reaches no handler callback."""
    before = len(gsi.records())
    if user is None:
        tls = client_tls(test_pki.ca_file)
    else:
        files = test_pki.users[user]
        path = getattr(files, credential)
        tls = client_tls(test_pki.ca_file, path, files.key if credential == "cert" else None)
    with pytest.raises(OSError):
        request(gsi.base, "POST", "/data/manifest", b"[manifest]\nnum_files = 1\n", tls=tls)
    assert len(gsi.records()) == before


def test_curl_with_capath(gsi, test_pki, tmp_path):
    """curl --cert/--key/--capath against the Globus CA directory uploads and downloads."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    alice = test_pki.users["alice"]
    content = os.urandom(300_000)
    source = tmp_path / "curl-gsi.bin"
    source.write_bytes(content)
    import hashlib

    manifest = tmp_path / "m.ini"
    manifest.write_text(
        f"[manifest]\nnum_files = 1\n\n[0]\nname = curl-gsi.bin\nsize = {len(content)}\n"
        f"checksum = {hashlib.md5(content).hexdigest()}\n"
    )
    for credential in (["--cert", str(alice.cert), "--key", str(alice.key)],
                       ["--cert", str(alice.proxy), "--key", str(alice.proxy)]):
        base = ["curl", "-sS", "--fail-with-body", "--capath", str(test_pki.ca_dir), *credential]
        if credential[1] == str(alice.proxy):
            source_name = "curl-gsi-proxy.bin"
            manifest.write_text(manifest.read_text().replace("curl-gsi.bin", source_name))
        else:
            source_name = "curl-gsi.bin"
        answer = subprocess.run(
            [*base, "--data-binary", f"@{manifest}", f"{gsi.base}/data/manifest"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        key = dict(line.split(": ", 1) for line in answer.splitlines())["transfer_key"]
        subprocess.run([*base, "-X", "POST", "-T", str(source), f"{gsi.base}/data/{key}/0"],
                       capture_output=True, timeout=30, check=True)
        back = tmp_path / ("back-" + source_name)
        subprocess.run([*base, "-o", str(back), f"{gsi.base}/data/{source_name}"],
                       capture_output=True, timeout=30, check=True)
        assert back.read_bytes() == content
        assert gsi.dns_seen(source_name) == {alice.dn}


def test_descriptors_are_https(gsi, test_pki):
    """The upload answer gives an https:// download URL."""
    alice = test_pki.users["alice"]
    tls = client_tls(test_pki.ca_file, alice.cert, alice.key)
    key = post_manifest(gsi.base, "data", [("desc.txt", b"d")], tls=tls)
    answer = request(gsi.base, "POST", f"/data/{key}/0", b"d", tls=tls)
    assert answer.fields()["url"].startswith("https://")


def test_gridmap(test_pki, tmp_path):
    """With a grid-mapfile, a listed DN is served with its account; others get 403, no callback."""
    gridmap = tmp_path / "grid-mapfile"
    alice, bob = test_pki.users["alice"], test_pki.users["bob"]
    gridmap.write_text(f'# test map\n"{alice.dn}" alice_local,other\n')
    server = GSIServer(tmp_path, test_pki, "--gridmap", str(gridmap))
    try:
        name = server.upload(alice.cert, alice.key)
        assert {r["username"] for r in server.records() if r["argument"] == name} == {"alice_local"}
        before = len(server.records())
        tls = client_tls(test_pki.ca_file, bob.cert, bob.key)
        answer = request(server.base, "POST", "/data/manifest", b"[manifest]\nnum_files = 1\n", tls=tls)
        assert answer.status == 403 and "grid-mapfile" in answer.text
        assert request(server.base, "GET", "/data/", tls=tls).status == 403
        assert len(server.records()) == before
    finally:
        server.stop()


@pytest.mark.parametrize("trigger", ["sighup", "periodic"])
def test_revocation_without_restart(test_pki, tmp_path, trigger):
    """Revoke a user, replace the CRL, SIGHUP (or wait for the periodic reload): refused next time."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    extra = ("--reload-interval", "1") if trigger == "periodic" else ()
    server = GSIServer(tmp_path, pki, *extra)
    try:
        alice, bob = pki.users["alice"], pki.users["bob"]
        server.upload(alice.cert, alice.key)
        revoke(pki.directory, "alice")
        if trigger == "sighup":
            server.process.signal(signal.SIGHUP)

        def refused() -> bool:
            try:
                server.upload(alice.proxy)
            except OSError:
                return True
            return False

        wait_for(refused, 15, "alice's proxy to be refused after the CRL was replaced and the reload", interval=0.2)
        with pytest.raises(OSError):
            server.upload(alice.cert, alice.key)
        server.upload(bob.cert, bob.key)
    finally:
        server.stop()
