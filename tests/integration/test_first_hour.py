"""Issue 13 against a real server (twistd subprocess, real sockets) with curl and a raw TLS ClientHello.

A mistyped prefix is 404 naming the real ones; ``GET /`` lists them; TLS to the
plain port fails at once with a plain-HTTP hint; re-uploading an identical
file is "already stored"; ``Prefer: handling=strict`` makes ``curl -f`` fail
on a refused manifest; URLs name the host the client used.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.server import ServerProcess

from .helpers import running, server_args

#: curl's bound on each command: far below the server's shortest default timeout (30 s)
CURL = ["curl", "-sS", "--max-time", "10"]
NOT_TLS = "this port speaks plain HTTP, not TLS: use http:// (or the server's TLS port for https://)"
CONTENT = b"id,value\n1,42\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One plain-HTTP server with default timeouts, prefixes data and more."""
    tmp = tmp_path_factory.mktemp("first-hour")
    args = server_args(tmp / "store", "--store", f"more={tmp / 'more'}")
    with running(ServerProcess(tmp, args)) as process:
        yield process


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl, bounded in time; its result whatever the exit code."""
    return subprocess.run([*CURL, *args], capture_output=True, text=True, timeout=30)


def fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_mistyped_prefix_is_404_naming_the_prefixes(server):
    """curl on /nosuch/ (listing, file, manifest): 404 and the one line naming /data/ and /more/ (was 500)."""
    base = server.url()
    for prefix, args in (
        ("nosuch", [f"{base}/nosuch/"]),
        ("dta", [f"{base}/dta/x.csv"]),
        ("dta", ["--data-binary", "x", f"{base}/dta/manifest"]),
    ):
        answer = curl("-w", "%{http_code}", *args)
        assert answer.stdout == f"no such prefix /{prefix}/; this server has /data/ /more/\n404", answer.stdout
    assert "Traceback" not in server.log_text()


def test_root_lists_the_prefixes(server):
    """curl / : 200 application/json {"prefixes": ["/data/", "/more/"]}."""
    answer = curl("-w", "\n%{content_type} %{http_code}", f"{server.url()}/")
    body, _, tail = answer.stdout.rpartition("\n")
    assert tail == "application/json 200"
    assert json.loads(body) == {"prefixes": ["/data/", "/more/"]}


def client_hello() -> bytes:
    """A real ClientHello, as Python's ssl module sends it first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_client_hello_on_the_plain_port_is_answered_at_once(server):
    """A raw ClientHello to the plain port: the 400 and the close arrive within 10 s (the shortest default
    timeout is 30 s, so no timeout fired), and the server logs no timeout."""
    host, port = server.url().split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(client_hello())
        answer = b""
        while True:
            chunk = sock.recv(65536)  # socket.timeout (10 s) would fail the test
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    assert b"Content-Type: text/plain; charset=utf-8" in lines and b"Connection: close" in lines
    assert body.decode() == NOT_TLS + "\n"
    assert "not complete after" not in server.log_text()


def test_curl_https_to_the_plain_port_fails_at_once(server):
    """curl https:// against the plain port: a TLS error (exit 35) well inside curl's 10 s bound, not a timeout (28)."""
    answer = curl(server.url().replace("http://", "https://") + "/data/")
    assert answer.returncode == 35, answer.stderr


def manifest_of(name: str, data: bytes) -> bytes:
    return f"[manifest]\nnum_files = 1\n\n[0]\nname = {name}\nsize = {len(data)}\nchecksum = {hashlib.md5(data).hexdigest()}\n".encode()


def test_reuploading_an_identical_file_is_already_stored(server, tmp_path):
    """The same file again: already_stored: 0 in the manifest answer; its body, sent anyway, gets the normal 200."""
    base = f"{server.url()}/data"
    data = tmp_path / "results.csv"
    data.write_bytes(CONTENT)
    (tmp_path / "m.ini").write_bytes(manifest_of("results.csv", CONTENT))
    first = fields(curl("--data-binary", f"@{tmp_path / 'm.ini'}", f"{base}/manifest").stdout)
    stored = curl("-X", "POST", "-T", str(data), f"{base}/{first['transfer_key']}/0").stdout
    again = curl("--data-binary", f"@{tmp_path / 'm.ini'}", f"{base}/manifest").stdout
    lines = again.splitlines()
    assert lines[0] == "return_code: 0" and lines[2] == "already_stored: 0", again
    key = fields(again)["transfer_key"]
    assert curl("-X", "POST", "-T", str(data), f"{base}/{key}/0").stdout == stored
    state = json.loads(curl(f"{base}/{key}").stdout)
    assert state["complete"] is True and state["files"][0]["state"] == "stored"


def test_strict_preference_makes_curl_fail_on_a_refusal(server, tmp_path):
    """curl -f with Prefer: handling=strict exits 22 on a taken name (409, the reason on stderr's status);
    without it the refusal is 200 return_code 1, as AccessGrid clients expect."""
    base = f"{server.url()}/data"
    (tmp_path / "a.ini").write_bytes(manifest_of("taken.csv", b"first\n"))
    (tmp_path / "b.ini").write_bytes(manifest_of("taken.csv", b"second\n"))
    (tmp_path / "one.csv").write_bytes(b"first\n")
    key = fields(curl("--data-binary", f"@{tmp_path / 'a.ini'}", f"{base}/manifest").stdout)["transfer_key"]
    curl("-X", "POST", "-T", str(tmp_path / "one.csv"), f"{base}/{key}/0")
    strict = ["-H", "Prefer: handling=strict", "--data-binary", f"@{tmp_path / 'b.ini'}", f"{base}/manifest"]
    failed = curl("-f", *strict)
    assert failed.returncode == 22 and "409" in failed.stderr
    shown = curl("-i", *strict).stdout
    assert "HTTP/1.1 409 Conflict" in shown and "Preference-Applied: handling=strict" in shown
    assert shown.endswith("Upload error for file taken.csv: a file named taken.csv already exists\n")
    lenient = curl("-f", "--data-binary", f"@{tmp_path / 'b.ini'}", f"{base}/manifest")
    assert lenient.returncode == 0 and fields(lenient.stdout)["return_code"] == "1"


def test_urls_name_the_host_the_client_used(server, tmp_path):
    """Uploading to http://localhost:PORT gives url: http://localhost:PORT/data/... (not the listener's 127.0.0.1)."""
    port = server.url().rsplit(":", 1)[1]
    base = f"http://localhost:{port}/data"
    data = tmp_path / "local.csv"
    data.write_bytes(b"local\n")
    (tmp_path / "m.ini").write_bytes(manifest_of("local.csv", b"local\n"))
    key = fields(curl("--data-binary", f"@{tmp_path / 'm.ini'}", f"{base}/manifest").stdout)["transfer_key"]
    answer = fields(curl("-X", "POST", "-T", str(data), f"{base}/{key}/0").stdout)
    assert answer["url"] == f"http://localhost:{port}/data/local.csv"
    assert json.loads(curl(f"{base}/{key}").stdout)["files"][0]["url"] == answer["url"]


def test_cli_upload_to_localhost_prints_localhost_urls(server, tmp_path):
    """The real gsitransfer command uploading to http://localhost:PORT prints the file's URL on localhost."""
    port = server.url().rsplit(":", 1)[1]
    data = tmp_path / "cli.csv"
    data.write_bytes(b"from the command line\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("X509_")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gsitransfer.cli", "upload", f"http://localhost:{port}/data", str(data)],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"http://localhost:{port}/data/cli.csv" in result.stdout
    assert "127.0.0.1" not in result.stdout
