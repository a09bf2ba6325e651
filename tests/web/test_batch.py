"""Atomic batches over HTTP (SPEC 7.4), in memory (real files, no sockets): ``state: verified`` until the last
file, downloads 404 until then, all published together; 400 for an unknown ``commit``; 422 and cancel."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from gsitransfer.manifest import Manifest
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from tests.support.batch_handlers import RecordingStore

from .wire import get, split

FILES = {"a.bin": bytes(range(256)) * 40, "b.bin": b"b" * 5000, "c.bin": b"c" * 77}
NAMES = list(FILES)


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(str(tmp_path / "store"))


@pytest.fixture
def server(store: RecordingStore) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", store)
    return s


def exchange(server: HTTPTransferServer, data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send ``data`` on a new connection; the answer split (status line, headers, body)."""
    conn = SiteConnection(server.site())
    conn.send(data)
    conn.clock.advance(0)
    return split(conn.output())


def manifest_body(commit: str = "atomic") -> bytes:
    plain = Manifest.of(*((name, len(data), hashlib.md5(data).hexdigest()) for name, data in FILES.items()))
    return dataclasses.replace(plain, commit=commit).to_ini().encode()


def post_manifest(server: HTTPTransferServer, body: bytes) -> tuple[bytes, bytes]:
    head = f"POST /data/manifest HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    status, _, answer = exchange(server, head + body)
    return status, answer


@pytest.fixture
def key(server: HTTPTransferServer) -> str:
    status, answer = post_manifest(server, manifest_body())
    assert status.startswith(b"HTTP/1.1 200"), answer
    return dict(line.split(": ", 1) for line in answer.decode().splitlines())["transfer_key"]


def post_file(server: HTTPTransferServer, key: str, num: int, data: bytes | None = None) -> tuple[bytes, bytes]:
    body = FILES[NAMES[num]] if data is None else data
    head = f"POST /data/{key}/{num} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    status, _, answer = exchange(server, head + body)
    return status, answer


def states(server: HTTPTransferServer, key: str) -> list[tuple[str, int]]:
    status, _, body = exchange(server, get(f"/data/{key}"))
    assert status.startswith(b"HTTP/1.1 200")
    return [(f["state"], f["offset"]) for f in json.loads(body)["files"]]


def downloads(server: HTTPTransferServer) -> list[bytes]:
    """The status code of a GET of each file of the batch."""
    return [exchange(server, get(f"/data/{name}"))[0].split(b" ")[1] for name in NAMES]


def test_unknown_commit_is_400_listing_the_allowed(server):
    """``commit = later`` in [manifest]: 400 with one line naming each and atomic."""
    status, answer = post_manifest(server, manifest_body("later"))
    assert status.startswith(b"HTTP/1.1 400")
    assert answer == b"commit in [manifest] must be one of each, atomic, not 'later'\n"


def test_verified_until_the_last_then_stored(server, key, store, tmp_path):
    """Each POST but the last answers 200 ``state: verified`` and its download is 404; the last answers
    ``state: stored``, then every file downloads and CompleteUpload ran for each in file order."""
    status, answer = post_file(server, key, 2)
    assert status.startswith(b"HTTP/1.1 200")
    assert answer.decode().splitlines()[0] == "return_code: 0"
    assert answer.decode().splitlines()[-1] == "state: verified"
    status, answer = post_file(server, key, 0)
    assert answer.decode().splitlines()[-1] == "state: verified"
    assert states(server, key) == [("verified", len(FILES["a.bin"])), ("pending", 0), ("verified", 77)]
    assert downloads(server) == [b"404", b"404", b"404"]
    assert store.names("CompleteUpload") == []
    status, answer = post_file(server, key, 1)
    assert status.startswith(b"HTTP/1.1 200") and answer.decode().splitlines()[-1] == "state: stored"
    assert downloads(server) == [b"200", b"200", b"200"]
    assert states(server, key) == [("stored", len(data)) for data in FILES.values()]
    assert store.names("CompleteUpload") == NAMES
    for name, data in FILES.items():
        assert (tmp_path / "store" / name).read_bytes() == data


def test_a_plain_manifest_answers_as_before(server):
    """Without ``commit = atomic`` an upload's answer has no ``state:`` line and the file is there at once."""
    status, answer = post_manifest(server, manifest_body("each"))
    key = dict(line.split(": ", 1) for line in answer.decode().splitlines())["transfer_key"]
    status, answer = post_file(server, key, 0)
    assert status.startswith(b"HTTP/1.1 200") and b"state:" not in answer
    assert downloads(server)[0] == b"200"


def test_the_last_file_by_patch_is_204_and_publishes(server, key):
    """The last file sent with PATCH: 204 (tus) with Upload-Offset its size; the batch is then stored."""
    post_file(server, key, 0)
    post_file(server, key, 1)
    body = FILES["c.bin"]
    head = (
        f"PATCH /data/{key}/2 HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\r\n"
    ).encode()
    status, headers, _ = exchange(server, head + body)
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"77"
    assert downloads(server) == [b"200", b"200", b"200"]


def test_a_verified_file_sent_again_is_409(server, key):
    """A second POST of a verified file: 409 with one line saying it waits for its batch."""
    post_file(server, key, 0)
    status, answer = post_file(server, key, 0)
    assert status.startswith(b"HTTP/1.1 409")
    assert answer == b"file is verified and waits for the rest of its batch\n"


def test_a_422_leaves_the_others_verified(server, key):
    """A wrong body for one file: 422, that file pending at offset 0, the other still verified, nothing published."""
    post_file(server, key, 0)
    status, answer = post_file(server, key, 1, b"x" * 5000)
    assert status.startswith(b"HTTP/1.1 422") and answer.startswith(b"checksum mismatch for b.bin")
    assert states(server, key) == [("verified", len(FILES["a.bin"])), ("pending", 0), ("pending", 0)]
    post_file(server, key, 2)
    assert downloads(server) == [b"404", b"404", b"404"]


def test_delete_of_the_key_removes_the_held_files(server, key, store, tmp_path):
    """DELETE of the transfer: none appear, nothing is left in the store but its database, CancelPendingUpload for each."""
    post_file(server, key, 0)
    post_file(server, key, 2)
    status, _, _ = exchange(server, get(f"/data/{key}", method="DELETE"))
    assert status.startswith(b"HTTP/1.1 2")
    assert downloads(server) == [b"404", b"404", b"404"]
    assert sorted(store.names("CancelPendingUpload")) == sorted(NAMES)
    assert [p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".gsitransfer-store")] == []


def test_the_same_batch_posted_again_carries_the_verified_files(server, key):
    """Posting the same batch again takes its names over: verified files are carried (resume_from = their size),
    an empty PATCH at that offset holds each again, and the rest publishes the batch."""
    post_file(server, key, 0)
    post_file(server, key, 1)
    status, answer = post_manifest(server, manifest_body())
    fields = dict(line.split(": ", 1) for line in answer.decode().splitlines())
    assert fields["resume_from"] == f"0={len(FILES['a.bin'])} 1=5000"
    new = fields["transfer_key"]
    assert exchange(server, get(f"/data/{key}"))[0].startswith(b"HTTP/1.1 404")
    for num in (0, 1):
        size = len(FILES[NAMES[num]])
        head = (
            f"PATCH /data/{new}/{num} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {size}\r\n\r\n"
        ).encode()
        status, headers, _ = exchange(server, head)
        assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"%d" % size
    assert states(server, new) == [("verified", len(FILES["a.bin"])), ("verified", 5000), ("pending", 0)]
    status, answer = post_file(server, new, 2)
    assert answer.decode().splitlines()[-1] == "state: stored"
    assert downloads(server) == [b"200", b"200", b"200"]


def test_held_files_are_neither_listed_nor_downloadable(server, key, tmp_path):
    """A verified file's held bytes (its partial) are not in the listing and cannot be fetched by their name."""
    post_file(server, key, 0)
    held = [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".partial")]
    assert len(held) == 1
    assert exchange(server, get(f"/data/{held[0]}"))[0].split(b" ")[1] in (b"403", b"404")
    status, _, listing = exchange(server, get("/data/", "Accept: application/json"))
    assert status.startswith(b"HTTP/1.1 200") and b"partial" not in listing and b"a.bin" not in listing
