"""An AccessGrid 2.x-style client against a real server: upload, download, trusted-proxy DN."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.server import ServerProcess

from .ag_client import AGClient, file_md5, write_manifest
from .helpers import calls, recording_args, recording_env, running, server_args

ODD_NAME = "50% off report.txt"


def make_files(directory: Path) -> list[Path]:
    """Two files to upload, one whose name has a ``%`` and a space."""
    directory.mkdir()
    plain = directory / "results.bin"
    plain.write_bytes(os.urandom(300_000))
    odd = directory / ODD_NAME
    odd.write_bytes(b"percent % and space \x00\xff" * 1000)
    return [plain, odd]


def assert_round_trip(client: AGClient, files: list[Path], downloads: Path) -> None:
    downloads.mkdir()
    for path in files:
        answer = client.download(path.name, downloads / path.name)
        assert answer.status == 200, answer.text
        assert int(answer.headers["content-length"]) == path.stat().st_size
        assert (downloads / path.name).read_bytes() == path.read_bytes()


def test_manifest_is_what_configparser_writes(tmp_path: Path) -> None:
    """The AG client's manifest keeps ``%`` literal and has a [manifest] and one section per file."""
    files = make_files(tmp_path / "up")
    text = write_manifest(files).decode()
    assert text.startswith("[manifest]\nnum_files = 2\n\n[0]\nname = results.bin\n")
    assert f"name = {ODD_NAME}\n" in text
    assert f"checksum = {file_md5(files[1])}\n" in text


def test_ag_client_uploads_and_downloads_byte_identical(tmp_path: Path) -> None:
    """Two files, one named with ``%`` and a space, go up AG-style and come back byte-identical."""
    store = tmp_path / "store"
    files = make_files(tmp_path / "up")
    with running(ServerProcess(tmp_path, server_args(store))) as server:
        client = AGClient(server.url())
        key = client.upload(files)
        assert key
        for path in files:
            assert (store / path.name).read_bytes() == path.read_bytes()
        assert_round_trip(client, files, tmp_path / "down")


def test_trusted_proxy_dn_reaches_the_handler(tmp_path: Path) -> None:
    """Through --trusted-proxy 127.0.0.1, X-Client-DN is the identity every callback sees."""
    store, record = tmp_path / "store", tmp_path / "record.jsonl"
    files = make_files(tmp_path / "up")
    dn = "/C=US/O=Grid Test/OU=People/CN=Alice Example"
    args = recording_args("--trusted-proxy", "127.0.0.1")
    with running(ServerProcess(tmp_path, args, env=recording_env(store, record))) as server:
        client = AGClient(server.url(), dn=dn)
        client.upload(files)
        assert_round_trip(client, files, tmp_path / "down")
    for callback in ("CanUpload", "AddPendingUpload", "GetUploadFilename", "CompleteUpload"):
        seen = calls(record, callback)
        assert sorted(c["argument"] for c in seen) == sorted(p.name for p in files), callback
        assert {c["dn"] for c in seen} == {dn}, callback
    assert {c["dn"] for c in calls(record, "GetDownloadFilename")} == {dn}


def test_dn_header_is_ignored_without_trusted_proxy(tmp_path: Path) -> None:
    """A server with no --trusted-proxy ignores X-Client-DN: the handler sees an anonymous client."""
    store, record = tmp_path / "store", tmp_path / "record.jsonl"
    files = make_files(tmp_path / "up")
    with running(ServerProcess(tmp_path, recording_args(), env=recording_env(store, record))) as server:
        client = AGClient(server.url(), dn="/CN=Mallory")
        client.upload(files)
        assert_round_trip(client, files, tmp_path / "down")
    lines = calls(record, "CanUpload") + calls(record, "CompleteUpload")
    assert len(lines) == 4
    assert {c["dn"] for c in lines} == {None}
