"""Every failure is one line a person can act on, with its exit status, and no traceback.

The command line runs in a subprocess against the module's real server
(tests/client/conftest.py): refusals by the TLS layer on either side, by
the handler, and each HTTP status of the protocol.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from gsitransfer.testca import Issued, make_server_cert, write_certs
from tests.support.http import request
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

from .support import announce, make_files, tls_env


def one_line(result) -> str:
    """The single stderr line of a failed run (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gsitransfer: ")
    return lines[0][len("gsitransfer: "):]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the network -----------------------------------------------------------------------


def test_unreachable_server(run_cli, tmp_path):
    """Nobody listening: connection refused, exit 4."""
    port = closed_port()
    result = run_cli("ls", f"http://127.0.0.1:{port}/data")
    assert result.returncode == 4
    assert one_line(result) == f"cannot connect to 127.0.0.1:{port}: connection refused (is the server running there?)"


def test_wrong_scheme_is_explained(run_cli, servers):
    """Plain HTTP to the TLS port: the server hangs up, and the hint says to use https://."""
    port = servers.process.url("https").rsplit(":", 1)[1]
    result = run_cli("ls", f"http://127.0.0.1:{port}/data")
    assert result.returncode == 4
    assert one_line(result) == f"127.0.0.1:{port} closed the connection without answering (if it speaks TLS there, use https://)"


# -- TLS: the server refuses us ---------------------------------------------------------------


@pytest.mark.parametrize("user, why", [
    ("mallory", "it does not trust the CA that issued our certificate (unknown CA)"),
    ("revoked", "our certificate has been revoked (certificate revoked)"),
])
def test_server_refuses_our_certificate(run_cli, servers, test_pki, user, why):
    """The server's alert is told as the server's refusal, with its reason and our credential."""
    files = test_pki.users[user]
    result = run_cli("ls", "--cert", str(files.cert), "--key", str(files.key), "--ca-dir", str(test_pki.ca_dir),
                     f"{servers.https}/data")
    assert result.returncode == 4
    assert one_line(result) == f"TLS: the server refused us: {why} (our credential: {files.cert})"


def test_expired_proxy(run_cli, servers, test_pki, tmp_path):
    """An expired proxy named by X509_USER_PROXY is caught before connecting: renew that file. Exit 3."""
    proxy = test_pki.users["alice"].expired_proxy
    env = {**tls_env(tmp_path, test_pki), "X509_USER_PROXY": str(proxy)}
    result = run_cli("ls", f"{servers.https}/data", env=env)
    assert result.returncode == 3
    line = one_line(result)
    assert line.startswith(f"your proxy {proxy} expired at ")
    assert line.endswith(f" UTC: renew it with grid-proxy-init -out {proxy} "
                         f"(this test CA's: scripts/make-test-ca --out {test_pki.directory} --renew alice)")


# -- TLS: we refuse the server ------------------------------------------------------------------


def test_server_certificate_from_an_unknown_ca(run_cli, servers, test_pki):
    """Trusting only another CA, we refuse the server and name its issuer and our trust."""
    result = run_cli("ls", "--proxy", str(test_pki.users["alice"].proxy), "--ca-file", str(test_pki.untrusted.cert),
                     f"{servers.https}/data")
    assert result.returncode == 4
    assert one_line(result) == (
        f"TLS: we refused the server: the server's certificate was issued by a CA we do not trust "
        f"(issuer {test_pki.root.dn}; trust: CA file {test_pki.untrusted.cert} (--ca-dir/--ca-file))")


@pytest.fixture(scope="module")
def misnamed(test_pki, tmp_path_factory):
    """A server whose certificate (by the trusted root) is for gsitransfer.invalid only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    work = tmp_path_factory.mktemp("misnamed")
    root = Issued(x509.load_pem_x509_certificate(test_pki.root.cert.read_bytes()),
                  serialization.load_pem_private_key(test_pki.root.key.read_bytes(), None))
    key = serialization.load_pem_private_key(test_pki.server_key.read_bytes(), None)
    cert = write_certs(work / "misnamed.pem", make_server_cert(root, key, hostnames=("gsitransfer.invalid",),
                                                               addresses=()).cert)
    process = ServerProcess(work, ["--https", "tcp:0:interface=127.0.0.1", "--cert", str(cert),
                                   "--key", str(test_pki.server_key), "--ca-dir", str(test_pki.ca_dir),
                                   "--store", f"data={work / 'store'}"]).start()
    yield process
    process.stop()


def test_server_name_mismatch(run_cli, misnamed, test_pki):
    """A certificate for another name: we refuse, saying which names it is for."""
    result = run_cli("ls", "--proxy", str(test_pki.users["alice"].proxy), "--ca-dir", str(test_pki.ca_dir),
                     f"{misnamed.url('https')}/data")
    assert result.returncode == 4
    assert one_line(result) == ("TLS: we refused the server: the server's certificate is for gsitransfer.invalid, "
                                "not 127.0.0.1 (server name mismatch)")


# -- the handler and the protocol's statuses ------------------------------------------------------


def test_handler_refusal_one_line_per_file_and_a_hint(run_cli, servers, test_pki, tmp_path):
    """Another file under a taken name: the handler's error_reason, then what to do about it; exit 1."""
    env = tls_env(tmp_path, test_pki)
    [path] = make_files(tmp_path, 1, 100)
    assert run_cli("upload", f"{servers.https}/data", str(path), env=env).returncode == 0
    path.write_bytes(b"another content under the same name")
    again = run_cli("upload", f"{servers.https}/data", str(path), env=env)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.splitlines() == [
        f"gsitransfer: Upload error for file {path.name}: a file named {path.name} already exists",
        "gsitransfer: hint: a different file is stored under that name: upload under another name "
        "(--as NEWNAME) or ask the server's administrator to remove it",
    ]


def test_403_not_the_owner(run_cli, servers, test_pki, tmp_path):
    """Another user's transfer: 403 with the server's reason."""
    key = announce(servers, test_pki, [("owned-by-alice.bin", b"a")])
    bob = test_pki.users["bob"]
    result = run_cli("status", "--proxy", str(bob.proxy), "--ca-dir", str(test_pki.ca_dir),
                     f"{servers.https}/data/{key}")
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("403 ") and line.endswith(f"(GET {servers.https}/data/{key})")


def test_404_no_such_file(run_cli, servers, test_pki, tmp_path):
    """A file that is not there: 404 and the server's reason; nothing is written locally."""
    result = run_cli("download", f"{servers.https}/data/no-such-file.csv", env=tls_env(tmp_path, test_pki))
    assert result.returncode == 1
    assert one_line(result) == f"404 no file 'no-such-file.csv' (GET {servers.https}/data/no-such-file.csv)"
    assert not any(p.name.startswith(".no-such-file") for p in tmp_path.iterdir())


def test_409_cancel_while_a_file_is_arriving(run_cli, servers, tmp_path):
    """Cancelling a transfer whose body is on its way: 409 and why."""
    body = b"[manifest]\nnum_files = 1\n\n[0]\nname = slow-%d.bin\nsize = 1000000\nchecksum = %s\n" % (
        time.monotonic_ns(), b"0" * 32)
    key = request(servers.http, "POST", "/data/manifest", body).fields()["transfer_key"]
    host, port = servers.http.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sending:
        sending.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode()
                        + b"x" * 1000)
        wait_for_state(servers.http, key, "receiving")
        result = run_cli("cancel", f"{servers.http}/data/{key}")
    assert result.returncode == 1
    assert one_line(result) == (f"409 a file of this transfer is arriving: cancel after it ends "
                                f"(DELETE {servers.http}/data/{key})")


def wait_for_state(base: str, key: str, state: str, timeout: float = 10.0) -> None:
    """Wait until the first file of transfer ``key`` is in ``state`` (as the server reports it)."""

    def reached() -> bool:
        files = json.loads(request(base, "GET", f"/data/{key}").body)["files"]
        return bool(files[0]["state"] == state)

    wait_for(reached, timeout, f"the file to become {state}")


def test_422_the_file_is_not_the_announced_one(run_cli, servers, test_pki, tmp_path):
    """Sending a file whose MD5 is not the manifest's: 422, and the client says the file differs."""
    [path] = make_files(tmp_path, 1, 5000)
    key = announce(servers, test_pki, [(path.name, path.read_bytes())], checksums={path.name: "0" * 32})
    result = run_cli("upload", f"--transfer-key={key}", f"{servers.https}/data", str(path),
                     env=tls_env(tmp_path, test_pki))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"gsitransfer: {path.name}: 422 checksum mismatch")
    assert lines[0].endswith(f"-- {path} is not the file the manifest announced (did it change after its MD5 was taken?)")
    assert lines[1] == (f"gsitransfer: 1 of 1 files failed (transfer {key}: re-send them with: "
                        f"gsitransfer upload --transfer-key={key} URL FILE...)")


def test_507_not_enough_space(run_cli, servers, test_pki, tmp_path):
    """A file larger than the server's free space (a sparse 8 TiB file): 507, decided before the body."""
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as out:
        out.truncate(8 * 2**40)
    key = announce(servers, test_pki, [("huge.bin", b"")], prefix="perm", sizes={"huge.bin": 8 * 2**40},
                   checksums={"huge.bin": "0" * 32})
    started = time.monotonic()
    result = run_cli("upload", f"--transfer-key={key}", f"{servers.https}/perm", str(huge),
                     env=tls_env(tmp_path, test_pki))
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Unhandled" not in result.stderr, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("gsitransfer: huge.bin: 507 ") and "space" in first


def test_json_errors_are_machine_readable(run_cli, servers, test_pki, tmp_path):
    """With --json a failure is also a JSON document on stdout with the exit code."""
    result = run_cli("--json", "download", f"{servers.https}/data/absent.bin", env=tls_env(tmp_path, test_pki))
    document = json.loads(result.stdout)
    assert document["exit_code"] == 1 and document["error"].startswith("404 ")


def test_debug_shows_the_traceback(run_cli, tmp_path):
    """--debug adds the traceback to the one-line message."""
    result = run_cli("--debug", "ls", f"http://127.0.0.1:{closed_port()}/data")
    assert result.returncode == 4 and "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("gsitransfer: cannot connect to")


def test_no_credential_found(run_cli, servers, tmp_path):
    """https:// with nothing to authenticate with: where it looked and what to do; exit 3."""
    if Path(f"/tmp/x509up_u{os.getuid()}").exists():
        pytest.skip("a real default proxy exists here")
    result = run_cli("ls", f"{servers.https}/data")
    assert result.returncode == 3
    assert one_line(result).startswith("no credential: X509_USER_PROXY is not set")


def test_bad_usage_exits_2(run_cli):
    """A malformed --md5 is a usage error."""
    result = run_cli("download", "--md5", "xyz", "http://127.0.0.1:1/data/a")
    assert result.returncode == 2 and "not an MD5" in result.stderr



