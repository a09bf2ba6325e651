"""Real transfers against a real server on 127.0.0.1: the command line and the blocking API.

Mutual TLS with a proxy (its whole chain sent), and the plain HTTP variant
with no credential at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from gsitransfer.cli import main
from gsitransfer.client import sync
from gsitransfer.client.progress import NullProgress
from gsitransfer.client.session import make_http_client
from gsitransfer.client.tls import GSIClientPolicy
from gsitransfer.client.credentials import Credential, Trust, load_credential

from .support import announce, make_files, tls_env

COMMANDS = ["upload", "download", "ls", "status", "cancel"]


def test_parallel_upload_then_download_back_over_mutual_tls(run_cli, servers, test_pki, tmp_path):
    """Several files go up at once (-j 3) over mutual TLS; each comes back byte-identical and verified."""
    env = tls_env(tmp_path, test_pki)
    files = make_files(tmp_path / "up", 5, 600_000)
    result = run_cli("-j", "3", "upload", f"{servers.https}/data", *[str(p) for p in files], env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [p.name for p in files]
    assert all(line.endswith(f"/data/{p.name}") for line, p in zip(lines, files))
    assert result.stderr == ""  # no progress bars: stderr is not a terminal
    (tmp_path / "down").mkdir()
    for path in files:
        got = run_cli("--json", "download", f"{servers.https}/data/{path.name}", str(tmp_path / "down"), env=env)
        assert got.returncode == 0, got.stderr
        answer = json.loads(got.stdout)
        assert answer["verified"] is True and answer["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
        assert (tmp_path / "down" / path.name).read_bytes() == path.read_bytes()
    assert sorted(os.listdir(tmp_path / "down")) == sorted(p.name for p in files)  # no temporaries left


def test_plain_http_needs_no_credential(run_cli, servers, tmp_path):
    """Against the HTTP variant nothing about certificates is looked up; the owner is anonymous."""
    [path] = make_files(tmp_path, 1, 10_000)
    result = run_cli("-v", "upload", f"{servers.http}/data", str(path))
    assert result.returncode == 0, result.stderr
    assert "plain HTTP: no credential is sent" in result.stderr
    listing = json.loads(run_cli("--json", "ls", f"{servers.http}/data").stdout)
    entry = next(f for f in listing["files"] if f["name"] == path.name)
    assert entry["owner"] is None and entry["size"] == 10_000
    got = run_cli("-q", "download", f"{servers.http}/data/{path.name}", "copy.dat")
    assert got.returncode == 0 and got.stdout == "" and got.stderr == ""
    assert (tmp_path / "copy.dat").read_bytes() == path.read_bytes()


def test_upload_json_and_quiet(run_cli, servers, test_pki, tmp_path):
    """--json prints one document with the transfer key and each file's URL; -q prints nothing."""
    env = tls_env(tmp_path, test_pki)
    a, b = make_files(tmp_path, 2, 1000)
    result = run_cli("--json", "upload", f"{servers.https}/data", str(a), env=env)
    document = json.loads(result.stdout)
    assert document["ok"] is True and len(document["transfer_key"]) == 32
    assert document["files"][0]["url"].endswith(f"/data/{a.name}") and document["files"][0]["attempts"] == 1
    quiet = run_cli("-q", "upload", f"{servers.https}/data", str(b), env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_ls_shows_names_sizes_owners_and_times(run_cli, servers, test_pki, tmp_path):
    """The human listing is a table with owner DN and UTC time; --json has the same fields."""
    env = tls_env(tmp_path, test_pki)
    [path] = make_files(tmp_path, 1, 2048)
    assert run_cli("upload", f"{servers.https}/data", str(path), env=env).returncode == 0
    table = run_cli("ls", f"{servers.https}/data", env=env).stdout.splitlines()
    assert table[0].split() == ["SIZE", "MODIFIED", "(UTC)", "OWNER", "NAME"]
    row = next(line for line in table if line.endswith(path.name))
    assert "2.0 KiB" in row and test_pki.users["alice"].dn in row
    document = json.loads(run_cli("--json", "ls", f"{servers.https}/data", env=env).stdout)
    entry = next(f for f in document["files"] if f["name"] == path.name)
    assert set(entry) == {"name", "size", "md5", "owner", "modified", "uploaded", "url"}


def test_status_and_cancel_from_the_command_line(run_cli, servers, test_pki, tmp_path):
    """status lists each file's state; cancel ends the transfer; status then fails with 404."""
    env = tls_env(tmp_path, test_pki)
    key = announce(servers, test_pki, [("pending-one.bin", b"abc")])
    status = run_cli("status", f"{servers.https}/data/{key}", env=env)
    assert status.returncode == 0, status.stderr
    assert f"transfer {key} in /data/" in status.stdout and "pending" in status.stdout
    assert json.loads(run_cli("--json", "status", f"{servers.https}/data/{key}", env=env).stdout)["transfer_key"] == key
    cancel = run_cli("cancel", f"{servers.https}/data/{key}", env=env)
    assert (cancel.returncode, cancel.stdout) == (0, f"cancelled {key}\n")
    gone = run_cli("status", f"{servers.https}/data/{key}", env=env)
    assert gone.returncode == 1 and gone.stderr.startswith("gsitransfer: 404 no such transfer")


def test_checksum_failure_is_retried_against_the_real_server(servers, test_pki, tmp_path):
    """Blocking API over mutual TLS: a body corrupted on its first attempt is refused (422) and re-sent."""
    alice = test_pki.users["alice"]
    policy = GSIClientPolicy(load_credential(Credential(alice.proxy, alice.proxy, "test")),
                             Trust(test_pki.ca_dir, None, "test"))
    http = sync.call(lambda: make_http_client(tls=policy))
    [path] = make_files(tmp_path, 1, 300_000)
    content = path.read_bytes()

    def corrupt_first(path: Path, attempt: int):
        return io.BytesIO(bytes([content[0] ^ 1]) + content[1:] if attempt == 1 else content)

    restarts: list[str] = []

    class Progress(NullProgress):
        def file_restarted(self, name: str, reason: str) -> None:
            restarts.append(reason)

    report = sync.upload_files(f"{servers.https}/data", [path], http=http, open_body=corrupt_first,
                               progress=Progress())
    assert report.files[0].attempts == 2 and restarts and restarts[0].startswith("422 checksum mismatch")
    assert (servers.store / path.name).read_bytes() == content


def test_help_as_a_program(run_cli):
    """`gsitransfer --help` (a real process) lists the commands and exits 0."""
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: gsitransfer") and all(c in result.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    """`gsitransfer COMMAND --help` explains the command, its options and the exit statuses; exit 0."""
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: gsitransfer {command}")
    assert "exit status" in text and "--json" in text and "--proxy" in text
