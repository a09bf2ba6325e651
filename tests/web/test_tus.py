"""tus 1.0 creation, termination, expiration and discovery at /<prefix>/, in memory (real files, no sockets)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from gsitransfer.manifest import ManifestLimits
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.tus import MAX_METADATA_PAIRS, metadata_md5, parse_metadata
from tests.support.deferreds import result_of
from gsitransfer.web.status import BadRequest

from .wire import Seen, get

BODY = bytes(range(256)) * 300  # 76,800 bytes
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Seen:
    return Seen(str(tmp_path / "store"))


@pytest.fixture
def server(store: Seen) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", store)
    return s


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def exchange(server: HTTPTransferServer, data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send ``data`` on a new connection; the answer split (status line, headers lower-cased, body)."""
    conn = SiteConnection(server.site())
    conn.send(data)
    conn.clock.advance(0)
    head, _, body = conn.output().partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = (line.split(b": ", 1) for line in lines)
    return status, {name.lower(): value for name, value in fields}, body


def create(length: int = len(BODY), metadata: str | None = None, *extra: str) -> bytes:
    if metadata is None:
        metadata = f"filename {b64('f.bin')}"
    lines = ["POST /data/ HTTP/1.1", "Host: t", "Content-Length: 0", "Tus-Resumable: 1.0.0", f"Upload-Length: {length}"]
    if metadata:
        lines.append(f"Upload-Metadata: {metadata}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def patch(path: str, offset: int, body: bytes, *extra: str) -> bytes:
    lines = [f"PATCH {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", "Tus-Resumable: 1.0.0",
             "Content-Type: application/offset+octet-stream", f"Upload-Offset: {offset}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def created(server: HTTPTransferServer, data: bytes | None = None) -> str:
    """Create an upload; the path of its Location."""
    status, headers, _ = exchange(server, data or create())
    assert status.startswith(b"HTTP/1.1 201"), status
    location = headers[b"location"].decode()
    assert location.startswith("http://test/data/")
    return location[len("http://test"):]


def test_options_on_the_prefix_advertises_tus(server):
    """OPTIONS /data/: 204, Tus-Version, the four extensions, checksum algorithms, no Tus-Max-Size when unlimited."""
    status, headers, body = exchange(server, get("/data/", method="OPTIONS"))
    assert status == b"HTTP/1.1 204 No Content" and body == b""
    assert headers[b"tus-version"] == b"1.0.0" and headers[b"tus-resumable"] == b"1.0.0"
    assert headers[b"tus-extension"] == b"creation,termination,expiration,checksum"
    assert headers[b"tus-checksum-algorithm"] == b"md5,sha1,sha256"
    assert headers[b"allow"] == b"GET, HEAD, POST, PROPFIND, OPTIONS"
    assert b"tus-max-size" not in headers


def test_options_names_the_size_limit(server):
    """With a transfer size limit, Tus-Max-Size is that limit."""
    server.engine.manifest_limits = ManifestLimits(max_total_size=5000)
    assert exchange(server, get("/data/", method="OPTIONS"))[1][b"tus-max-size"] == b"5000"


def test_creation_then_patches_store_the_file_with_the_computed_md5(server, store, tmp_path):
    """Creation without md5: 201 + Location + Upload-Expires; two PATCH pieces store the file; CanUpload saw
    no checksum, CompleteUpload the MD5 computed, and the store lists it."""
    status, headers, _ = exchange(server, create())
    assert status.startswith(b"HTTP/1.1 201") and headers[b"tus-resumable"] == b"1.0.0"
    assert headers[b"upload-expires"].endswith(b"GMT") and headers[b"content-length"] == b"0"
    path = headers[b"location"].decode()[len("http://test"):]
    assert exchange(server, get(path, "Tus-Resumable: 1.0.0", method="HEAD"))[1][b"upload-offset"] == b"0"
    status, headers, _ = exchange(server, patch(path, 0, BODY[:30_000]))
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"30000"
    status, headers, _ = exchange(server, patch(path, 30_000, BODY[30_000:]))
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"%d" % len(BODY)
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY
    can = [info for name, info in store.seen if name == "CanUpload"]
    done = [info for name, info in store.seen if name == "CompleteUpload"]
    assert can[0]["checksum"] is None and can[0]["size"] == len(BODY)
    assert done[0]["checksum"] == MD5
    listing = json.loads(exchange(server, get("/data/"))[2])
    assert [(f["name"], f["checksum"]) for f in listing["files"]] == [("f.bin", MD5)]


@pytest.mark.parametrize("md5", [b64(MD5), b64(bytes.fromhex(MD5))])
def test_creation_with_md5_checks_the_whole_file(server, tmp_path, md5):
    """md5 metadata (base64 of the hex, or of the 16 bytes): a wrong last byte is 422, offset 0; right bytes store."""
    path = created(server, create(len(BODY), f"filename {b64('f.bin')},md5 {md5}"))
    status, headers, body = exchange(server, patch(path, 0, BODY[:-1] + b"\x00"))
    assert status.startswith(b"HTTP/1.1 422") and b"checksum mismatch" in body
    assert exchange(server, get(path, method="HEAD"))[1][b"upload-offset"] == b"0"
    assert exchange(server, patch(path, 0, BODY))[0].startswith(b"HTTP/1.1 204")
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (create().replace(b"Tus-Resumable: 1.0.0\r\n", b""), b"400", b"tus-resumable: 1.0.0"),
        (create().replace(b"Tus-Resumable: 1.0.0", b"Tus-Resumable: 0.2.2"), b"412", b"1.0.0"),
        (create().replace(b"Upload-Length: 76800", b"Upload-Defer-Length: 1"), b"400", b"upload-defer-length"),
        (create().replace(b"Upload-Length: 76800\r\n", b""), b"400", b"upload-length is required"),
        (create().replace(b"Upload-Length: 76800", b"Upload-Length: -5"), b"400", b"decimal"),
        (create(metadata=""), b"400", b"filename"),
        (create(metadata="filename !!!"), b"400", b"not base64"),
        (create(metadata=f"filename {b64('a')},filename {b64('b')}"), b"400", b"twice"),
        (create(metadata=f"filename {b64('../x')}"), b"400", b"unsafe"),
        (create(metadata=f"filename {b64('f.bin')},md5 {b64('xyz')}"), b"400", b"md5"),
        (create(metadata="k " + "A" * 9000), b"400", b"longer than"),
        (create(metadata=",".join(f"k{n}" for n in range(MAX_METADATA_PAIRS + 1))), b"400", b"pairs"),
        (create().replace(b"Content-Length: 0", b"Content-Length: 3") + b"abc", b"400", b"creation-with-upload"),
    ],
)
def test_creation_refused_from_its_headers(server, data, status, reason):
    """A creation refused from its headers: 400 or 412, one plain line naming what is wrong."""
    got, headers, body = exchange(server, data)
    assert got.split(b" ")[1] == status, (got, body)
    assert reason in body.lower() and body.count(b"\n") == 1
    assert headers[b"tus-resumable"] == b"1.0.0"


def test_creation_of_an_existing_name_is_409_and_a_handler_refusal_403(server, tmp_path):
    """A name the store already has: 409 with its reason; a hidden name the store refuses: 403."""
    (tmp_path / "store").mkdir(exist_ok=True)
    (tmp_path / "store" / "f.bin").write_bytes(b"x")
    status, _, body = exchange(server, create())
    assert status.startswith(b"HTTP/1.1 409") and b"already exists" in body
    status, _, body = exchange(server, create(metadata=f"filename {b64('ok.bin')}", ).replace(b"76800", b"1" * 21))
    assert status.startswith(b"HTTP/1.1 400")


def test_creation_over_the_size_limit_is_413(server):
    """An Upload-Length over the size limit (Tus-Max-Size) is 413 as tus requires, nothing registered."""
    server.engine.manifest_limits = ManifestLimits(max_total_size=1000)
    status, _, body = exchange(server, create(5000))
    assert status.startswith(b"HTTP/1.1 413") and b"Tus-Max-Size: 1000" in body
    assert list(server.engine.transfers.expired(float("inf"))) == []


def test_a_second_creation_of_the_same_name_takes_it_over(server):
    """The same identity creating the same name again takes it over: the old URL is 404, the new one works."""
    first = created(server)
    assert exchange(server, patch(first, 0, BODY[:1000]))[0].startswith(b"HTTP/1.1 204")
    second = created(server)
    assert second != first
    assert exchange(server, get(first, method="HEAD"))[0].startswith(b"HTTP/1.1 404")
    assert exchange(server, get(second, method="HEAD"))[1][b"upload-offset"] == b"0"


def test_termination_cancels_the_file(server, store, tmp_path):
    """DELETE on an upload: 204, the partial removed, CancelPendingUpload called; the URL is 404 after; again 404."""
    path = created(server)
    exchange(server, patch(path, 0, BODY[:20_000]))
    assert [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".gsitransfer")]
    status, headers, body = exchange(server, get(path, "Tus-Resumable: 1.0.0", method="DELETE"))
    assert status.startswith(b"HTTP/1.1 204") and body == b"" and headers[b"tus-resumable"] == b"1.0.0"
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".gsitransfer") and "partial" in p.name]
    assert exchange(server, get(path, method="HEAD"))[0].startswith(b"HTTP/1.1 404")
    assert exchange(server, get(path, method="DELETE"))[0].startswith(b"HTTP/1.1 404")
    key = path.split("/")[2]
    assert not result_of(server.engine.is_live_transfer(key))
    assert created(server)  # the name is free again


def test_termination_of_a_stored_file_is_409(server, tmp_path):
    """DELETE on the upload URL of a stored file: 409, the file stays."""
    path = created(server)
    exchange(server, patch(path, 0, BODY))
    status, _, body = exchange(server, get(path, method="DELETE"))
    assert status.startswith(b"HTTP/1.1 409") and b"already stored" in body
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_another_identity_is_403_on_head_patch_delete(server):
    """An upload created by one identity: HEAD, PATCH and DELETE by another are 403; the owner still resumes."""
    path = created(server)
    trusted = HTTPTransferServer(public_url="http://test", trusted_proxies=["127.0.0.1"])
    trusted.RegisterPrefix("data", server.engine.handler_for("data"))
    trusted.engine.transfers = server.engine.transfers
    mallory = "X-Client-DN: /CN=Mallory"
    for data in (get(path, mallory, method="HEAD"), patch(path, 0, b"x", mallory), get(path, mallory, method="DELETE")):
        status, _, body = exchange(trusted, data)
        assert status.startswith(b"HTTP/1.1 403"), (data[:20], status)
    assert exchange(server, get(path, method="HEAD"))[1][b"upload-offset"] == b"0"


def test_metadata_parsing():
    """Upload-Metadata: keys with and without values; md5 as hex text or 16 raw bytes; malformed refused."""
    assert parse_metadata(b"filename ZmlsZQ==, empty,md5 " + b64(MD5).encode()) == {
        "filename": b"file", "empty": b"", "md5": MD5.encode()
    }
    assert metadata_md5(MD5.upper().encode()) == MD5 == metadata_md5(bytes.fromhex(MD5))
    with pytest.raises(BadRequest):
        parse_metadata(b"f\x01 AA==")
    with pytest.raises(BadRequest):
        metadata_md5(b"g" * 32)


def test_a_second_creation_with_md5_starts_at_zero(server, tmp_path):
    """Re-creating a name with the same md5 takes it over but carries no bytes: a tus client starts at 0."""
    metadata = f"filename {b64('f.bin')},md5 {b64(MD5)}"
    first = created(server, create(len(BODY), metadata))
    exchange(server, patch(first, 0, BODY[:25_000]))
    second = created(server, create(len(BODY), metadata))
    assert exchange(server, get(first, method="HEAD"))[0].startswith(b"HTTP/1.1 404")
    assert exchange(server, get(second, method="HEAD"))[1][b"upload-offset"] == b"0"
    assert exchange(server, patch(second, 0, BODY))[0].startswith(b"HTTP/1.1 204")
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_termination_while_the_body_arrives_is_409(server):
    """DELETE while a PATCH body is arriving on another connection: 409; the upload goes on and finishes."""
    path = created(server)
    arriving = SiteConnection(server.site())
    arriving.send(patch(path, 0, BODY)[: -len(BODY) + 10_000])
    arriving.clock.advance(0)
    status, _, body = exchange(server, get(path, method="DELETE"))
    assert status.startswith(b"HTTP/1.1 409") and b"arriving" in body
    arriving.send(BODY[10_000:])
    arriving.clock.advance(0)
    assert arriving.output().startswith(b"HTTP/1.1 204")


def test_an_empty_file_is_stored_at_creation(server, store, tmp_path):
    """Upload-Length 0: the file is stored by the creation itself (tus clients send no PATCH), 201, offset 0 = length;
    CompleteUpload gets the empty file's MD5."""
    status, headers, _ = exchange(server, create(0, f"filename {b64('empty.bin')}"))
    assert status.startswith(b"HTTP/1.1 201") and headers[b"location"].endswith(b"/0")
    assert (tmp_path / "store" / "empty.bin").read_bytes() == b""
    path = headers[b"location"].decode()[len("http://test"):]
    head = exchange(server, get(path, method="HEAD"))[1]
    assert head[b"upload-offset"] == head[b"upload-length"] == b"0"
    assert [info["checksum"] for name, info in store.seen if name == "CompleteUpload"] == [hashlib.md5(b"").hexdigest()]


def test_an_expired_upload_is_404_and_its_partial_goes(server, tmp_path):
    """Past Upload-Expires the upload URL is 404 for HEAD, PATCH and DELETE; the expiry sweep removes the partial."""
    path = created(server)
    exchange(server, patch(path, 0, BODY[:5000]))
    assert [p for p in (tmp_path / "store").iterdir() if p.name.endswith(".partial")]
    later = server.engine.clock() + 2 * 86400
    server.engine.clock = lambda: later
    for data in (get(path, method="HEAD"), patch(path, 5000, BODY[5000:6000]), get(path, method="DELETE")):
        assert exchange(server, data)[0].startswith(b"HTTP/1.1 404")
    server.engine.expire_transfers()
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.endswith(".partial")]


def test_head_echoes_the_creation_metadata_to_its_owner_only(server):
    """HEAD on a created upload carries the Upload-Metadata it was created with; another identity's 403 does not."""
    metadata = f"filename {b64('f.bin')},filetype {b64('application/x-hdf5')},flag"
    path = created(server, create(len(BODY), metadata))
    status, headers, _ = exchange(server, get(path, method="HEAD"))
    assert status.startswith(b"HTTP/1.1 200") and headers[b"upload-metadata"] == metadata.encode()
    trusted = HTTPTransferServer(public_url="http://test", trusted_proxies=["127.0.0.1"])
    trusted.RegisterPrefix("data", server.engine.handler_for("data"))
    trusted.engine.transfers = server.engine.transfers
    status, headers, _ = exchange(trusted, get(path, "X-Client-DN: /CN=Mallory", method="HEAD"))
    assert status.startswith(b"HTTP/1.1 403") and b"upload-metadata" not in headers
