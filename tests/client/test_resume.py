"""A download cut by a server crash is resumed with Range against the restarted server.

Over mutual TLS on 127.0.0.1: the blocking API downloads a 32 MiB file and
its progress callback SIGKILLs the server once 4 MiB have arrived. The
partial bytes stay in ``.<name>.gsitransfer-download`` with their resume
record; a new server on the same store (another port) then serves the rest
to ``gsitransfer download``, which sends ``Range``/``If-Range``, verifies
the MD5 and moves the file into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gsitransfer.client import sync
from gsitransfer.client.credentials import Credential, Trust, load_credential
from gsitransfer.client.errors import DownloadInterrupted
from gsitransfer.client.partial import PartialDownload
from gsitransfer.client.session import make_http_client
from gsitransfer.client.tls import GSIClientPolicy
from tests.support.server import ServerProcess

from .support import tls_env

MiB = 1024 * 1024
SIZE = 32 * MiB


def gsi_server(work: Path, pki, store: Path) -> ServerProcess:
    return ServerProcess(work, [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir), "--store", f"data={store}",
    ]).start()


def test_download_resumes_after_the_server_is_killed(run_cli, test_pki, tmp_path):
    """Server SIGKILLed mid-body: the partial file is kept, then resumed from the restarted server."""
    store = tmp_path / "store"
    store.mkdir()
    content = os.urandom(SIZE)
    (store / "big.bin").write_bytes(content)
    md5 = hashlib.md5(content).hexdigest()
    target = tmp_path / "big.bin"
    first = gsi_server(tmp_path / "first", test_pki, store)
    alice = test_pki.users["alice"]
    policy = GSIClientPolicy(load_credential(Credential(alice.proxy, alice.proxy, "test")),
                             Trust(test_pki.ca_dir, None, "test"))
    http = sync.call(lambda: make_http_client(tls=policy))

    def crash_server_midway(name: str, done: int, total: int | None) -> None:
        if done >= 4 * MiB:
            first.kill()

    try:
        with pytest.raises(DownloadInterrupted) as interrupted:
            sync.download_file(first.url("https").replace("127.0.0.1", "localhost") + "/data/big.bin", target,
                               checksum=md5, http=http, progress=crash_server_midway, retries=0)
    finally:
        first.stop()
    assert "run the same command again to resume" in interrupted.value.message
    partial = PartialDownload.beside(target)
    kept = partial.temp.stat().st_size
    assert 4 * MiB <= kept < SIZE and partial.meta.exists() and not target.exists()
    assert partial.temp.read_bytes() == content[:kept]

    second = gsi_server(tmp_path / "second", test_pki, store)
    try:
        url = second.url("https").replace("127.0.0.1", "localhost") + "/data/big.bin"
        result = run_cli("--json", "download", "--md5", md5, url, str(target), env=tls_env(tmp_path, test_pki))
    finally:
        second.stop()
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["resumed_from"] == kept and answer["verified"] is True and answer["size"] == SIZE
    assert target.read_bytes() == content
    assert not partial.temp.exists() and not partial.meta.exists()
