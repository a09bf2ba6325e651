"""PUT /<prefix>/<name> in memory (real files, no sockets): the same callbacks, refusals from the headers, 201."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from gsitransfer.manifest import ManifestLimits
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer

from .wire import Seen, answers

BODY = bytes(range(256)) * 300  # 76,800 bytes
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Seen:
    return Seen(str(tmp_path / "store"))


def make_server(store: Seen, limits: ManifestLimits | None = None) -> HTTPTransferServer:
    server = HTTPTransferServer(public_url="http://test", **({} if limits is None else {"manifest_limits": limits}))
    # a body of unknown size is written by threads, which do not run in memory: here on the reactor's
    server.offload_threshold = None
    server.RegisterPrefix("data", store)
    return server


@pytest.fixture
def server(store: Seen) -> HTTPTransferServer:
    return make_server(store)


def put_head(name: str, *extra: str, length: int | None = len(BODY)) -> bytes:
    lines = [f"PUT /data/{name} HTTP/1.1", "Host: t"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def chunked(body: bytes, piece: int = 10_000) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece]) for i in range(0, len(body), piece))
    return out + b"0\r\n\r\n"


def put(server: HTTPTransferServer, name: str, *extra: str, body: bytes = BODY) -> tuple[bytes, dict[bytes, bytes], bytes]:
    conn = SiteConnection(server.site())
    conn.send(put_head(name, *extra, length=len(body)) + body)
    conn.clock.advance(0)
    return answers(conn.output())[-1]


def get_etag(server: HTTPTransferServer, name: str) -> bytes:
    conn = SiteConnection(server.site())
    conn.send(f"GET /data/{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    conn.clock.advance(0)
    status, headers, _ = answers(conn.output())[0]
    assert status.startswith(b"HTTP/1.1 200"), status
    return headers[b"etag"]


def test_put_stores_the_file_201_with_etag_and_location(server, store, tmp_path):
    """A PUT goes through CanUpload (checksum None), is stored with its computed MD5, 201 with GET's ETag and the URL."""
    status, headers, body = put(server, "run%201.dat")
    assert status == b"HTTP/1.1 201 Created", body
    assert (tmp_path / "store" / "run 1.dat").read_bytes() == BODY
    assert headers[b"location"] == b"http://test/data/run%201.dat"
    assert headers[b"etag"] == get_etag(server, "run%201.dat")
    assert body == f"stored run 1.dat: {len(BODY)} bytes, md5 {MD5}\n".encode()
    (_, can), (_, complete) = store.seen
    assert (can["name"], can["size"], can["checksum"]) == ("run 1.dat", len(BODY), None)
    assert (complete["size"], complete["checksum"]) == (len(BODY), MD5)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.mark.parametrize("field", [
    f"Content-MD5: {md5_b64(BODY)}",
    f"Repr-Digest: md5=:{md5_b64(BODY)}:",
    f"Content-Digest: md5=:{md5_b64(BODY)}:",
])
def test_an_md5_sent_is_the_one_canupload_sees(server, store, field):
    """Content-MD5, Repr-Digest md5 or Content-Digest md5: CanUpload gets that MD5; the body is checked against it."""
    status, _, body = put(server, "a.dat", field)
    assert status == b"HTTP/1.1 201 Created", body
    assert store.seen[0][1]["checksum"] == MD5


@pytest.mark.parametrize("field", [
    f"Content-MD5: {md5_b64(BODY[1:])}",
    "Content-Digest: sha-256=:" + base64.b64encode(hashlib.sha256(BODY[1:]).digest()).decode() + ":",
    "Digest: adler32=00000001",
])
def test_a_wrong_digest_is_422_and_nothing_is_published(server, tmp_path, field):
    """A body that fails any digest sent is 422; no file under the name, no temporary file left."""
    status, _, body = put(server, "bad.dat", field)
    assert status.startswith(b"HTTP/1.1 422"), body
    assert b"checksum mismatch" in body
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".gsitransfer-store.sqlite")) == []


def test_an_existing_name_is_409_and_412_with_if_none_match(server, tmp_path):
    """The directory store refuses a name that exists (409); If-None-Match: * makes it 412; the file is untouched."""
    assert put(server, "x.dat")[0].startswith(b"HTTP/1.1 201")
    status, _, body = put(server, "x.dat", body=b"other")
    assert status.startswith(b"HTTP/1.1 409"), body
    assert b"already exists" in body
    status, _, body = put(server, "x.dat", "If-None-Match: *", body=b"other")
    assert status.startswith(b"HTTP/1.1 412"), body
    assert (tmp_path / "store" / "x.dat").read_bytes() == BODY
    assert put(server, "y.dat", "If-None-Match: *")[0].startswith(b"HTTP/1.1 201")


def test_the_same_bytes_with_their_md5_are_already_stored(server):
    """A PUT of the same bytes with their MD5 is 200 'already stored' (dedupe), not a conflict."""
    assert put(server, "same.dat")[0].startswith(b"HTTP/1.1 201")
    status, _, body = put(server, "same.dat", f"Content-MD5: {md5_b64(BODY)}")
    assert status.startswith(b"HTTP/1.1 200"), body
    assert b"already stored" in body


@pytest.mark.parametrize("target, extra, code, reason", [
    ("sub/f.dat", (), b"409", b"this store is flat"),
    ("f.dat", ("Content-Range: bytes 0-9/100",), b"400", b"Content-Range is not supported"),
    ("..", (), b"404", b""),
    ("CON.txt", (), b"400", b"reserved device name"),
    ("f.dat", ("Content-MD5: nope",), b"400", b""),
])
def test_refused_from_the_headers_before_any_body(server, store, target, extra, code, reason):
    """Bad names, partial PUTs and malformed digests are refused from the headers; Expect: 100-continue gets no 100."""
    conn = SiteConnection(server.site())
    conn.send(put_head(target, "Expect: 100-continue", *extra))
    found = answers(conn.output())
    assert len(found) == 1
    status, _, body = found[0]
    assert status.startswith(b"HTTP/1.1 " + code), (status, body)
    assert reason in body
    assert store.seen == []


def test_over_the_size_limit_is_413_from_the_headers(store):
    """Content-Length over the server's limit: 413 before CanUpload is asked."""
    server = make_server(store, ManifestLimits(max_file_size=1000))
    conn = SiteConnection(server.site())
    conn.send(put_head("big.dat", "Expect: 100-continue"))
    (status, _, body), = answers(conn.output())
    assert status.startswith(b"HTTP/1.1 413"), body
    assert store.seen == []


def test_expect_100_continue_after_the_decision_with_the_upload_url(server, tmp_path):
    """100 Continue only once accepted; it names the file's resumable upload URL; then 201."""
    conn = SiteConnection(server.site())
    conn.send(put_head("e.dat", "Expect: 100-continue"))
    (status, headers, _), = answers(conn.output())
    assert status == b"HTTP/1.1 100 Continue"
    assert headers[b"location"].startswith(b"http://test/data/") and headers[b"location"].endswith(b"/0")
    assert headers[b"tus-resumable"] == b"1.0.0"
    conn.send(BODY)
    conn.clock.advance(0)
    assert answers(conn.output())[-1][0] == b"HTTP/1.1 201 Created"
    assert (tmp_path / "store" / "e.dat").read_bytes() == BODY


def test_a_refused_put_with_expect_gets_no_100(server):
    """A name that exists, with Expect: 100-continue: the 409 is the only answer (the body is never asked for)."""
    assert put(server, "taken.dat")[0].startswith(b"HTTP/1.1 201")
    conn = SiteConnection(server.site())
    conn.send(put_head("taken.dat", "Expect: 100-continue"))
    (status, _, _), = answers(conn.output())
    assert status.startswith(b"HTTP/1.1 409")


def test_chunked_put_is_announced_without_a_size(server, store, tmp_path):
    """A chunked PUT: CanUpload sees size None; CompleteUpload the bytes stored; 201."""
    conn = SiteConnection(server.site())
    conn.send(put_head("c.dat", length=None) + chunked(BODY))
    conn.clock.advance(0)
    status, _, body = answers(conn.output())[-1]
    assert status == b"HTTP/1.1 201 Created", body
    assert (tmp_path / "store" / "c.dat").read_bytes() == BODY
    (_, can), (_, complete) = store.seen
    assert can["size"] is None and can["checksum"] is None
    assert (complete["size"], complete["checksum"]) == (len(BODY), MD5)


def test_chunked_put_over_the_limit_is_413_as_it_arrives(store, tmp_path):
    """A chunked body passing the server's size limit is 413 when it passes; nothing is published."""
    server = make_server(store, ManifestLimits(max_file_size=50_000))
    conn = SiteConnection(server.site())
    conn.send(put_head("c.dat", length=None) + chunked(BODY))
    conn.clock.advance(0)
    status, _, body = answers(conn.output())[-1]
    assert status.startswith(b"HTTP/1.1 413"), body
    assert not (tmp_path / "store" / "c.dat").exists()


def test_a_cut_put_resumes_with_head_and_patch(server, tmp_path):
    """A PUT cut off keeps what arrived: HEAD on the 100's Location tells the offset, a PATCH finishes the file."""
    conn = SiteConnection(server.site())
    conn.send(put_head("cut.dat", "Expect: 100-continue"))
    (_, headers, _), = answers(conn.output())
    upload = headers[b"location"].decode()[len("http://test"):]
    conn.send(BODY[:30_000])
    conn.drop()
    conn.clock.advance(0)
    head = SiteConnection(server.site())
    head.send(f"HEAD {upload} HTTP/1.1\r\nHost: t\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
    status, fields, _ = answers(head.output())[0]
    assert status.startswith(b"HTTP/1.1 200") and fields[b"upload-offset"] == b"30000"
    rest = BODY[30_000:]
    patch = SiteConnection(server.site())
    patch.send(
        (f"PATCH {upload} HTTP/1.1\r\nHost: t\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 30000\r\n"
         f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(rest)}\r\n\r\n").encode() + rest
    )
    patch.clock.advance(0)
    assert answers(patch.output())[-1][0].startswith(b"HTTP/1.1 204")
    assert (tmp_path / "store" / "cut.dat").read_bytes() == BODY


def test_put_again_by_the_same_identity_takes_a_cut_name_over(server, tmp_path):
    """A PUT cut off holds its name for its identity only: the same client PUTs it again and it is stored."""
    conn = SiteConnection(server.site())
    conn.send(put_head("again.dat") + BODY[:1000])
    conn.drop()
    conn.clock.advance(0)
    status, _, body = put(server, "again.dat")
    assert status == b"HTTP/1.1 201 Created", body
    assert (tmp_path / "store" / "again.dat").read_bytes() == BODY


def test_options_on_a_file_allows_put(server):
    """OPTIONS on a file path lists PUT in Allow (the route table's row)."""
    conn = SiteConnection(server.site())
    conn.send(b"OPTIONS /data/f.dat HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = answers(conn.output())[0]
    assert b"PUT" in headers[b"allow"].split(b", ")
