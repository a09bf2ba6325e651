"""An unmodified tus client (tuspy, over requests) with a client certificate, against a real mutual-TLS server:
discovery, creation, multi-chunk uploads, resuming after a cut connection, termination, 460, identity (SPEC 7.2)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from gsitransfer.testca import TestPKI, make_test_pki
from tests.support.relay import CuttingRelay
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

from .helpers import running

SIZE = 2 * 1024 * 1024 + 4321
CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=("alice", "bob"), share_keys=True)


@pytest.fixture
def server(tmp_path: Path, pki: TestPKI, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """A mutual-TLS server with a directory store at ``data``; requests (tuspy) trusts the test CA."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_file))
    args = [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir), "--store", f"data={tmp_path / 'store'}",
    ]
    with running(ServerProcess(tmp_path, args)) as process:
        yield process


def base_of(server: ServerProcess) -> str:
    return server.url("https").replace("127.0.0.1", "localhost")


def cert(pki: TestPKI, name: str) -> tuple[str, str]:
    user = pki.users[name]
    return (str(user.cert), str(user.key))


def source(tmp_path: Path, seed: int, size: int = SIZE) -> Path:
    path = tmp_path / f"src-{seed}.bin"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def uploader(base: str, pki: TestPKI, path: Path, user: str = "alice", **options: Any) -> Any:
    client = tus_client.TusClient(f"{base}/data/", client_cert=cert(pki, user))
    return client.uploader(str(path), chunk_size=CHUNK, metadata={"filename": path.name}, **options)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_options_advertise_tus_over_mutual_tls(server: ServerProcess, pki: TestPKI) -> None:
    """OPTIONS /data/ with a client certificate: 204 with Tus-Version, the extensions and checksum algorithms."""
    answer = requests.options(f"{base_of(server)}/data/", cert=cert(pki, "alice"), timeout=15)
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Extension"] == "creation,termination,expiration,checksum"
    assert answer.headers["Tus-Checksum-Algorithm"] == "md5,sha1,sha256"
    assert "POST" in answer.headers["Allow"]


def test_tuspy_creates_and_uploads_in_chunks(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """tuspy with Alice's certificate: creation, nine PATCH chunks with sha1 Upload-Checksum; the stored file is
    byte-identical, the store records Alice as owner and the MD5 the server computed."""
    path = source(tmp_path, 1)
    upload = uploader(base_of(server), pki, path, upload_checksum=True)
    upload.upload()
    url = upload.url
    assert urlsplit(url).path.startswith("/data/") and url.endswith("/0")
    assert md5_of(tmp_path / "store" / path.name) == md5_of(path)
    listing = requests.get(f"{base_of(server)}/data/", cert=cert(pki, "alice"), timeout=15).json()
    [entry] = [f for f in listing["files"] if f["name"] == path.name]
    assert entry["checksum"] == md5_of(path) and entry["owner"] == pki.users["alice"].dn
    head = requests.head(url, cert=cert(pki, "alice"), headers={"Tus-Resumable": "1.0.0"}, timeout=15)
    assert head.headers["Upload-Offset"] == str(SIZE) and "Upload-Expires" in head.headers
    assert head.headers["Upload-Metadata"] == "filename " + base64.b64encode(path.name.encode()).decode()


def test_tuspy_resumes_after_the_connection_is_cut(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """The connection is cut mid-upload (a relay drops it after ~1.1 MB): a new tuspy Uploader given the URL asks
    the offset, sends only the rest, and the stored file is right."""
    path = source(tmp_path, 2)
    port = int(urlsplit(server.url("https")).port or 0)
    with CuttingRelay(("127.0.0.1", port), cut_after=1_100_000) as relay:
        base = f"https://localhost:{relay.port}"
        first = uploader(base, pki, path)
        with pytest.raises(TusCommunicationError):
            first.upload()
        assert relay.cuts == 1
        url = first.url
        # the server keeps the cut piece once it sees the cut (with --workers, on the worker that had it)
        state_url = f"{base_of(server)}{urlsplit(url).path.rsplit('/', 1)[0]}"
        wait_for(lambda: requests.get(state_url, cert=cert(pki, "alice"), timeout=15).json()["files"][0]["state"]
                 == "pending", 10, "the cut piece to be kept")
        before = relay.sent
        again = uploader(base, pki, path, url=url)
        held = again.offset
        assert CHUNK <= held < SIZE
        again.upload()
        assert relay.sent - before < SIZE - held + 64 * 1024  # the rest and the requests' heads, not the whole file
    assert md5_of(tmp_path / "store" / path.name) == md5_of(path)


def test_termination_removes_the_upload(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """Half an upload, then DELETE on its URL: 204; HEAD is 404 after, the partial is gone, the name is free."""
    path = source(tmp_path, 3)
    upload = uploader(base_of(server), pki, path)
    upload.upload(stop_at=CHUNK * 2)
    url = upload.url
    alice = cert(pki, "alice")
    answer = requests.delete(url, cert=alice, headers={"Tus-Resumable": "1.0.0"}, timeout=15)
    assert answer.status_code == 204 and answer.headers["Tus-Resumable"] == "1.0.0"
    assert requests.head(url, cert=alice, timeout=15).status_code == 404
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".gsitransfer") and "part" in p.name]
    uploader(base_of(server), pki, path).upload()
    assert md5_of(tmp_path / "store" / path.name) == md5_of(path)


def test_wrong_upload_checksum_is_460(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """A PATCH whose Upload-Checksum does not match its body: 460, its bytes dropped (the offset stays)."""
    path = source(tmp_path, 4, 100_000)
    upload = uploader(base_of(server), pki, path)
    upload.upload(stop_at=40_000)
    url = upload.url
    alice = cert(pki, "alice")
    held = int(requests.head(url, cert=alice, timeout=15).headers["Upload-Offset"])
    body = path.read_bytes()[held:held + 10_000]
    wrong = "sha256 " + base64.b64encode(hashlib.sha256(body + b"x").digest()).decode()
    headers = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
               "Upload-Offset": str(held), "Upload-Checksum": wrong}
    answer = requests.patch(url, data=body, cert=alice, headers=headers, timeout=15)
    assert answer.status_code == 460 and answer.text == "checksum mismatch\n"
    assert requests.head(url, cert=alice, timeout=15).headers["Upload-Offset"] == str(held)


def test_another_identity_is_refused(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """Bob may not HEAD, PATCH or DELETE Alice's upload (403); Alice then finishes it."""
    path = source(tmp_path, 5, 300_000)
    upload = uploader(base_of(server), pki, path)
    upload.upload(stop_at=CHUNK)
    url = upload.url
    bob = cert(pki, "bob")
    tus = {"Tus-Resumable": "1.0.0"}
    assert requests.head(url, cert=bob, headers=tus, timeout=15).status_code == 403
    piece = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(CHUNK)}
    assert requests.patch(url, data=b"x" * 10, cert=bob, headers=piece, timeout=15).status_code == 403
    assert requests.delete(url, cert=bob, headers=tus, timeout=15).status_code == 403
    uploader(base_of(server), pki, path, url=url).upload()
    assert md5_of(tmp_path / "store" / path.name) == md5_of(path)
    state = json.loads(requests.get(f"{base_of(server)}/data/", cert=cert(pki, "alice"), timeout=15).text)
    assert any(f["name"] == path.name for f in state["files"])


def test_tuspy_with_a_proxy_file(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """tuspy given alice's grid-proxy-init file (certificate, key and chain in one): the upload is alice's."""
    proxy = pki.users["alice"].proxy
    assert proxy is not None
    path = source(tmp_path, 6, 500_000)
    client = tus_client.TusClient(f"{base_of(server)}/data/", client_cert=str(proxy))
    client.uploader(str(path), chunk_size=CHUNK, metadata={"filename": path.name}).upload()
    listing = requests.get(f"{base_of(server)}/data/", cert=cert(pki, "alice"), timeout=15).json()
    [entry] = [f for f in listing["files"] if f["name"] == path.name]
    assert entry["owner"] == pki.users["alice"].dn and entry["checksum"] == md5_of(path)


def test_tuspy_uploads_an_empty_file(server: ServerProcess, pki: TestPKI, tmp_path: Path) -> None:
    """tuspy sends only the creation for an empty file: the server stores it then and there."""
    path = source(tmp_path, 7, 0)
    uploader(base_of(server), pki, path).upload()
    assert (tmp_path / "store" / path.name).read_bytes() == b""
