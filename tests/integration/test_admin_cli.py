"""gsitransfer-admin against real servers: explain agrees with a real handshake for every test credential; transfers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gsitransfer.events import key_hash
from gsitransfer.testca import TestPKI, UserSpec, make_test_pki, person_name, user_spec
from tests.support.server import ServerProcess

from .ag_client import write_manifest
from .helpers import running, server_args

ADMIN = [sys.executable, "-m", "gsitransfer.admin"]
USERS = (
    user_spec("alice"),
    user_spec("bob"),  # not in the grid-mapfile
    UserSpec("revoked", person_name("revoked"), revoked=True),
    UserSpec("expired", person_name("expired"), expired=True),
    UserSpec("stranger", person_name("stranger"), ca="untrusted"),
)


def credentials(pki: TestPKI) -> dict[str, tuple[Path, Path]]:
    """(certificate file, key file) of each credential to try; a proxy file is both."""
    found: dict[str, tuple[Path, Path]] = {}
    for name, files in pki.users.items():
        found[f"{name} certificate"] = (files.cert, files.key)
        for kind in ("proxy", "limited_proxy", "independent_proxy", "proxy_of_proxy", "expired_proxy"):
            path = getattr(files, kind)
            if path is not None and name in ("alice", "revoked"):
                found[f"{name} {kind}"] = (path, path)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp_path = tmp_path_factory.mktemp("admin")
    pki = make_test_pki(tmp_path / "pki", users=USERS, share_keys=True)
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text("".join(f'"{files.dn}" {name}\n' for name, files in pki.users.items() if name != "bob"))
    store = tmp_path / "store"
    args = [
        *server_args(store), "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert),
        "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir), "--gridmap", str(gridmap),
    ]
    with running(ServerProcess(tmp_path, args)) as server:
        yield pki, gridmap, server, store


def server_accepts(pki: TestPKI, server: ServerProcess, cert: Path, key: Path) -> bool:
    """A real request with the credential: accepted when the listing is 200 (refused: a failed handshake or 403)."""
    url = server.url("https").replace("127.0.0.1", "localhost") + "/data/"
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--cacert", str(pki.ca_file), "--cert", str(cert), "--key", str(key),
         "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=60,
    )
    return result.returncode == 0 and result.stdout == "200"


def test_explain_agrees_with_the_server_for_every_test_credential(site) -> None:  # type: ignore[no-untyped-def]
    """Each credential (good, proxies, limited, independent, revoked, expired, untrusted, grid-mapfile miss): same decision."""
    pki, gridmap, server, _ = site
    decisions = {}
    for label, (cert, key) in credentials(pki).items():
        explained = subprocess.run([*ADMIN, "explain", "--ca-dir", str(pki.ca_dir), "--gridmap", str(gridmap), str(cert)],
                                   capture_output=True, text=True, timeout=60)
        assert explained.returncode in (0, 1), explained.stderr
        accepted = server_accepts(pki, server, cert, key)
        assert (explained.returncode == 0) == accepted, f"{label}: explain said\n{explained.stdout}server accepted: {accepted}"
        decisions[label] = explained.stdout.splitlines()[0]
    assert decisions["alice certificate"] == "decision: accepted"
    assert "certificate revoked" in decisions["revoked certificate"]
    assert "certificate has expired" in decisions["expired certificate"] and "at depth 0" in decisions["expired certificate"]
    assert "unable to get local issuer certificate" in decisions["stranger certificate"]
    assert "not in the grid-mapfile" in decisions["bob certificate"]
    assert "certificate has expired" in decisions["alice expired_proxy"]


def test_explain_lines_and_json(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The limited proxy's identity, flags and account; --json; an unreadable file is one line and exit 2."""
    pki, gridmap, _, _ = site
    limited = pki.users["alice"].limited_proxy
    shown = subprocess.run([*ADMIN, "explain", "--ca-dir", str(pki.ca_dir), "--gridmap", str(gridmap), str(limited)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert f"identity: {pki.users['alice'].dn} (proxy, limited proxy)" in shown.stdout
    assert "account:  alice (grid-mapfile" in shown.stdout and "proxy (RFC 3820, limited)" in shown.stdout
    as_json = subprocess.run([*ADMIN, "explain", "--json", "--ca-dir", str(pki.ca_dir), str(limited)],
                             capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["accepted"] is True
    missing = subprocess.run([*ADMIN, "explain", str(tmp_path / "none.pem")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "No such file" in missing.stderr
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    bad = subprocess.run([*ADMIN, "explain", "--ca-dir", str(pki.ca_dir), str(not_pem)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "no PEM certificate" in bad.stderr
    later = subprocess.run([*ADMIN, "explain", "--ca-dir", str(pki.ca_dir), "--at", "2030-01-01T00:00:00Z",
                            str(pki.users["alice"].cert)], capture_output=True, text=True, timeout=60)
    assert later.returncode == 1 and "certificate has expired" in later.stdout


def test_transfers_lists_and_cancels(tmp_path: Path) -> None:
    """A live transfer is listed by its key hash with its files; --cancel ends it and the server cancels its file."""
    store = tmp_path / "store"
    state = tmp_path / "transfers.sqlite"
    args = server_args(store, "--state", str(state), "--reload-interval", "1")
    data = tmp_path / "a.dat"
    data.write_bytes(b"a" * 100)
    with running(ServerProcess(tmp_path, args)) as server:
        manifest = tmp_path / "m.ini"
        manifest.write_bytes(write_manifest([data]))
        answer = subprocess.run(["curl", "-sS", "--data-binary", f"@{manifest}", server.url("http") + "/data/manifest"],
                                capture_output=True, text=True, timeout=60).stdout
        key = dict(line.split(": ", 1) for line in answer.splitlines())["transfer_key"]
        listed = subprocess.run([*ADMIN, "transfers", "--state", str(state)], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert key_hash(key) in listed.stdout and key not in listed.stdout
        assert "pending   0/100 a.dat" in listed.stdout
        cancel = subprocess.run([*ADMIN, "transfers", "--state", str(state), "--cancel", key_hash(key)],
                                capture_output=True, text=True, timeout=60)
        assert cancel.returncode == 0, cancel.stderr
        for _ in range(200):  # the server's sweep runs every --reload-interval (1 s here)
            if "transfer key(s) expired" in server.log_text():
                break
            __import__("time").sleep(0.05)
        assert "1 transfer key(s) expired" in server.log_text()
        again = subprocess.run([*ADMIN, "transfers", "--state", str(state)], capture_output=True, text=True, timeout=60)
        assert "no live transfers" in again.stdout
        upload = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-T", str(data),
                                 f"{server.url('http')}/data/{key}/0"], capture_output=True, text=True, timeout=60)
        assert upload.stdout == "404"
