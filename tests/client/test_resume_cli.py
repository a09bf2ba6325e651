"""Issue 14 at the command line: the real ``gsitransfer`` resuming uploads on a real server over mutual TLS.

The tests marked "server" below need the server side of issue 14 (HEAD and
PATCH on ``/<prefix>/<key>/<n>``, a cut-off POST keeping what arrived, the
take-over and its ``resume_from`` line, ``offset`` in the transfer's state);
against a server without it they are skipped, saying so. The others need
only the client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
import pytest

from gsitransfer.cli import main
from tests.support.http import client_tls, request
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

from .conftest import CLI_TIMEOUT, Servers
from .support import Relay, announce, make_files, tls_env

MiB = 1024 * 1024
SIZE = 64 * MiB


@pytest.fixture
def resumable(servers: Servers, test_pki) -> Servers:
    """The server, if it resumes uploads (HEAD on a file URL answers Upload-Offset); else the test is skipped."""
    name = f"probe-{os.urandom(4).hex()}.bin"
    key = announce(servers, test_pki, [(name, b"x")])
    tls = client_tls(test_pki.ca_file, test_pki.users["alice"].proxy)
    answer = request(servers.https, "HEAD", f"/data/{key}/0", tls=tls)
    request(servers.https, "DELETE", f"/data/{key}", tls=tls)
    if answer.status != 200 or "upload-offset" not in answer.headers:
        pytest.skip(f"needs the resumable server of issue 14 (HEAD /data/KEY/0 answered {answer.status})")
    return servers


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gsitransfer.cli", *args]


def big_file(tmp_path: Path, name: str) -> tuple[Path, str]:
    path = tmp_path / name
    with open(path, "wb") as stream:
        for _ in range(SIZE // (4 * MiB)):
            stream.write(os.urandom(4 * MiB))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_sigint_mid_upload_then_the_same_command_sends_only_the_rest(resumable, test_pki, tmp_path):
    """server: Ctrl-C at ~16 MiB of 64 MiB (a slow link), the same command again: only the rest crosses; MD5 right."""
    path, md5 = big_file(tmp_path, f"big-{os.urandom(4).hex()}.bin")
    env = tls_env(tmp_path, test_pki)
    port = int(resumable.https.rsplit(":", 1)[1])
    slow = Relay(port, rate=4 * MiB)
    try:
        first = subprocess.Popen(cli("upload", f"{slow.url('https')}/data", str(path)), cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: slow.upstream >= 16 * MiB or first.poll() is not None, 60, "16 MiB on the slow link")
            assert first.poll() is None, first.communicate()
            first.send_signal(signal.SIGINT)
            out, err = first.communicate(timeout=CLI_TIMEOUT)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 130, err
        assert err.splitlines()[-1] == ("gsitransfer: interrupted (the server keeps what it received: "
                                        "run the same command again to continue)")
        wait_for(lambda: slow.open == 0, 30, "the cut connection to close")
        crossed_first = slow.upstream
    finally:
        slow.close()
    assert crossed_first < SIZE

    counted = Relay(port)
    try:
        again = subprocess.run(cli("upload", f"{counted.url('https')}/data", str(path)), cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=CLI_TIMEOUT)
        crossed_again = counted.upstream
    finally:
        counted.close()
    assert again.returncode == 0, again.stderr
    notice = re.fullmatch(rf"gsitransfer: {re.escape(path.name)}: resumed at (\d+\.\d)% "
                          r"\((\d+\.\d) MiB held by the server\)", again.stderr.strip())
    assert notice, again.stderr
    held = float(notice.group(2)) * MiB  # to 0.1 MiB
    assert 8 * MiB <= held <= crossed_first + 0.05 * MiB
    # the second run sent the rest and little more (TLS records, headers, the manifest)
    assert SIZE - held - 0.05 * MiB <= crossed_again < SIZE - held + 2 * MiB
    assert hashlib.md5((resumable.store / path.name).read_bytes()).hexdigest() == md5


def test_the_client_rides_out_a_server_killed_mid_file(resumable, test_pki, tmp_path):
    """server: SIGKILL at ~8 MiB of 32 MiB, a new server on the same store: the same run continues (HEAD, PATCH)."""
    content = os.urandom(32 * MiB)
    path = tmp_path / f"killed-{os.urandom(4).hex()}.bin"
    path.write_bytes(content)
    store = tmp_path / "store"
    store.mkdir()
    args = ["--https", "tcp:0:interface=127.0.0.1", "--cert", str(test_pki.server_cert),
            "--key", str(test_pki.server_key), "--ca-dir", str(test_pki.ca_dir), "--store", f"data={store}"]
    first = ServerProcess(tmp_path / "first", args).start()
    second: ServerProcess | None = None
    link = Relay(int(first.url("https").rsplit(":", 1)[1]), rate=4 * MiB)
    try:
        upload = subprocess.Popen(cli("--json", "upload", f"{link.url('https')}/data", str(path)), cwd=tmp_path,
                                  env=tls_env(tmp_path, test_pki), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            wait_for(lambda: link.upstream >= 8 * MiB or upload.poll() is not None, 60, "8 MiB sent")
            first.kill()
            second = ServerProcess(tmp_path / "second", args).start()
            link.target = int(second.url("https").rsplit(":", 1)[1])
            link.rate = None
            out, err = upload.communicate(timeout=CLI_TIMEOUT)
        finally:
            if upload.poll() is None:
                upload.kill()
    finally:
        link.close()
        first.stop()
        if second is not None:
            second.stop()
    assert upload.returncode == 0, err
    [sent] = json.loads(out)["files"]
    assert sent["attempts"] == 2 and sent["resumed_from"] == 0
    # the first try's bytes, then only what the killed server had not made durable
    assert len(content) < sent["bytes_sent"] < 2 * len(content) - 4 * MiB
    assert (store / path.name).read_bytes() == content


def cut_post(server: Servers, test_pki, key: str, content: bytes, keep: int) -> None:
    """POST the file's body to /data/KEY/0 with its whole Content-Length, send ``keep`` bytes, hang up."""
    tls = client_tls(test_pki.ca_file, test_pki.users["alice"].proxy)
    port = int(server.https.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with tls.wrap_socket(raw, server_hostname="localhost") as stream:
            stream.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(content)}\r\n"
                           "Content-Type: application/octet-stream\r\n\r\n".encode() + content[:keep])
            try:
                stream.unwrap()
            except (OSError, ssl.SSLError):
                pass


def state(server: Servers, test_pki, key: str) -> dict:
    tls = client_tls(test_pki.ca_file, test_pki.users["alice"].proxy)
    answer = request(server.https, "GET", f"/data/{key}", headers={"Accept": "application/json"}, tls=tls)
    assert answer.status == 200, answer.text
    return json.loads(answer.body)


def test_status_shows_the_offset_and_transfer_key_continues_from_it(resumable, test_pki, tmp_path, run_cli):
    """server: a POST cut at 3 MiB: status says held, upload --transfer-key --json sends the rest (PATCH)."""
    content = os.urandom(8 * MiB)
    path = tmp_path / f"cut-{os.urandom(4).hex()}.bin"
    path.write_bytes(content)
    key = announce(resumable, test_pki, [(path.name, content)])
    cut_post(resumable, test_pki, key, content, 3 * MiB)
    offset = wait_for(lambda: state(resumable, test_pki, key)["files"][0].get("offset"), 15, "the held offset")
    assert 0 < offset <= 3 * MiB
    env = tls_env(tmp_path, test_pki)
    status = run_cli("status", f"{resumable.https}/data/{key}", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1].endswith(f"{path.name}  held {offset / MiB:.1f} MiB "
                                                   f"({offset / len(content) * 100:.1f}%)")
    result = run_cli("--json", "upload", f"--transfer-key={key}", f"{resumable.https}/data", str(path), env=env)
    assert result.returncode == 0, result.stderr
    [sent] = json.loads(result.stdout)["files"]
    assert sent["resumed_from"] == offset and sent["bytes_sent"] == len(content) - offset and sent["attempts"] == 1
    assert (resumable.store / path.name).read_bytes() == content


def test_the_same_command_takes_over_and_reports_resumed_from(resumable, test_pki, tmp_path, run_cli):
    """server: a transfer left with 2 MiB held; the same upload again (a new manifest): --json resumed_from."""
    content = os.urandom(6 * MiB)
    path = tmp_path / f"again-{os.urandom(4).hex()}.bin"
    path.write_bytes(content)
    key = announce(resumable, test_pki, [(path.name, content)])
    cut_post(resumable, test_pki, key, content, 2 * MiB)
    offset = wait_for(lambda: state(resumable, test_pki, key)["files"][0].get("offset"), 15, "the held offset")
    result = run_cli("--json", "upload", f"{resumable.https}/data", str(path), env=tls_env(tmp_path, test_pki))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transfer_key"] != key
    [sent] = report["files"]
    assert sent["resumed_from"] == offset and sent["bytes_sent"] == len(content) - offset
    assert (resumable.store / path.name).read_bytes() == content


def test_a_connection_cut_mid_file_is_finished_by_the_same_run(servers, test_pki, tmp_path):
    """The link drops at 1 MiB of 4 MiB: the run pauses, asks (HEAD), and finishes: PATCH on a server that
    resumes, a whole POST said once on an older one; the stored file is right either way."""
    content = os.urandom(4 * MiB)
    path = tmp_path / f"cut-{os.urandom(4).hex()}.bin"
    path.write_bytes(content)
    port = int(servers.https.rsplit(":", 1)[1])
    link = Relay(port, cut_after=MiB)
    try:
        result = subprocess.run(cli("upload", f"{link.url('https')}/data", str(path)), cwd=tmp_path,
                                env=tls_env(tmp_path, test_pki), capture_output=True, text=True, timeout=CLI_TIMEOUT)
        crossed = link.upstream
    finally:
        link.close()
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"gsitransfer: {path.name}: ") and lines[0].endswith(" -- pausing 1 s; again")
    if "resumed at" in result.stderr:  # the resumable server
        assert lines[1:] == [f"gsitransfer: {path.name}: resumed at {lines[1].split(' at ')[1]}"]
        assert crossed < len(content) + 2 * MiB
    else:  # an older one
        assert lines[1:] == ["gsitransfer: the server does not resume uploads, or no longer knows the transfer "
                             "(HEAD answered 404): a file that is cut off is sent again whole"]
        assert crossed > len(content) + MiB
    assert (servers.store / path.name).read_bytes() == content


def test_no_resume_uploads_whole_files(servers, test_pki, tmp_path, run_cli):
    """--no-resume against the real server: the file is sent whole (bytes_sent = size) and stored."""
    content = os.urandom(300_000)
    path = tmp_path / f"whole-{os.urandom(4).hex()}.bin"
    path.write_bytes(content)
    result = run_cli("--json", "upload", "--no-resume", f"{servers.https}/data", str(path),
                     env=tls_env(tmp_path, test_pki))
    assert result.returncode == 0, result.stderr
    [sent] = json.loads(result.stdout)["files"]
    assert (sent["bytes_sent"], sent["resumed_from"], sent["attempts"]) == (300_000, 0, 1)
    assert (servers.store / path.name).read_bytes() == content


def test_upload_help_names_the_resume_options(capsys):
    """`gsitransfer upload --help` documents --no-resume and --retries (default 5)."""
    assert main(["upload", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-resume" in text and "(default 5)" in text


def test_atomic_upload_stores_every_file(run_cli, servers, test_pki, tmp_path):
    """`upload --atomic` against a real server: both files stored (published together at the last), exit 0."""
    env = tls_env(tmp_path, test_pki)
    files = make_files(tmp_path, 2, 7000)
    result = run_cli("--json", "upload", "--atomic", f"{servers.https}/data", *map(str, files), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    for path in files:
        fetched = run_cli("download", f"{servers.https}/data/{path.name}", str(tmp_path / "got"), env=env)
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "got").read_bytes() == path.read_bytes()
        (tmp_path / "got").unlink()
