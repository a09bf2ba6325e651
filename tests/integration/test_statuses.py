"""Every status of the wire protocol (SPEC §3), each from a real HTTP exchange on 127.0.0.1.

Header-level refusals are proven to come before the body: the client sends the
headers only and must get its answer without sending a byte of body.
"""

from __future__ import annotations

import email.utils
import hashlib
import base64
import json
import socket
import time

import pytest

from tests.support.http import manifest_for, parse_raw, post_manifest, raw_exchange, request
from tests.support.server import ServerProcess

CONTENT = b"spam and eggs\n" * 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("statuses")
    args = [
        "--http", "tcp:0:interface=127.0.0.1",
        "--store", f"data={work / 'store'}",
        "--trusted-proxy", "127.0.0.1",
        "--max-manifest-bytes", "4096",
        "--max-files", "5",
        "--handler", "perm=tests.support.handlers:permissive",
        "--handler", "nofile=tests.support.handlers:no_filename",
        "--handler", "broken=tests.support.handlers:broken",
    ]
    process = ServerProcess(work, args, env={"GSITRANSFER_TEST_STORE": str(work / "h")}).start()
    yield process
    process.stop()
    assert "Unhandled Error" not in process.log_text()


@pytest.fixture
def base(server) -> str:
    return server.url("http")


def unique(name: str) -> str:
    return f"{time.monotonic_ns()}-{name}"


def head_only(base: str, method: str, path: str, headers: dict[str, str]) -> int:
    """Send only a request head (no body, no Expect); return the status answered."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    data = raw_exchange(base, ("\r\n".join(lines) + "\r\n\r\n").encode(), timeout=5)
    responses = parse_raw(data)
    assert responses, f"no answer before the body was sent: {data!r}"
    return responses[-1].status


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Bytes from ``sock`` up to and including ``marker`` (the socket's timeout bounds each read)."""
    received = b""
    while marker not in received:
        data = sock.recv(4096)
        assert data, f"connection closed before {marker!r}: {received!r}"
        received += data
    return received[: received.index(marker) + len(marker)]


# -- manifests -----------------------------------------------------------------


def test_manifest_accepted(base):
    """A good manifest gets 200, return_code 0 and a URL-safe key."""
    answer = request(base, "POST", "/data/manifest", manifest_for([(unique("a"), b"x")]))
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    fields = answer.fields()
    assert fields["return_code"] == "0" and len(fields["transfer_key"]) == 32


def test_manifest_refused_by_handler(base):
    """A name that exists with other bytes is refused: 200, return_code 1, the seed's error_reason."""
    name = unique("dup")
    key = post_manifest(base, "data", [(name, b"abc")])
    assert request(base, "POST", f"/data/{key}/0", b"abc").status == 200
    answer = request(base, "POST", "/data/manifest", manifest_for([(name, b"abd")]))
    assert answer.status == 200
    assert answer.fields()["return_code"] == "1"
    assert answer.fields()["error_reason"].startswith(f"Upload error for file {name}")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"garbage", "key = value"),
        (b"[manifest]\nnum_files = 1\n", "no section [0]"),
        (b"[manifest]\nnum_files = 1\n[0]\nname = ../etc/passwd\nsize = 1\nchecksum = " + b"0" * 32, "unsafe"),
        (manifest_for([("same", b"1"), ("same", b"2")]), "twice"),
        (manifest_for([(f"f{i}", b"") for i in range(6)]), "too many files"),
    ],
)
def test_manifest_breaking_a_rule_is_400(base, body, reason):
    """Unparsable or rule-breaking manifests get 400 with a plain-text reason."""
    answer = request(base, "POST", "/data/manifest", body)
    assert answer.status == 400 and reason in answer.text
    assert "Traceback" not in answer.text


def test_manifest_over_limit_is_413_from_headers(base):
    """A manifest body over the limit is refused from its Content-Length alone."""
    assert head_only(base, "POST", "/data/manifest", {"Content-Length": "5000"}) == 413


def test_chunked_manifest_over_limit_is_413(base):
    """A chunked manifest is cut off with 413 once it passes the limit."""
    chunk = b"#" * 3000
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    head = b"POST /data/manifest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    responses = parse_raw(raw_exchange(base, head + body))
    assert responses[-1].status == 413


def test_chunked_manifest_accepted(base):
    """A manifest sent with chunked encoding (no Content-Length) is accepted."""
    body = manifest_for([(unique("c"), b"q")])
    head = b"POST /data/manifest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    responses = parse_raw(raw_exchange(base, data))
    assert responses[-1].status == 200 and b"return_code: 0" in responses[-1].body


def test_handler_bug_is_500_without_traceback(base):
    """An unexpected handler exception is 500 with a generic line, no details leaked."""
    answer = request(base, "POST", "/broken/manifest", manifest_for([("a", b"1")]))
    assert answer.status == 500
    assert "Traceback" not in answer.text and "secret detail" not in answer.text


# -- header-level upload refusals, before the body -----------------------------------


@pytest.fixture
def pending(base) -> tuple[str, str]:
    """A fresh transfer of one file (CONTENT), owned by anonymous."""
    name = unique("file.bin")
    return post_manifest(base, "data", [(name, CONTENT)]), name


def test_unknown_prefix_404(base, pending):
    """POST to an unknown prefix: 404 before the body."""
    key, _ = pending
    assert head_only(base, "POST", f"/nope/{key}/0", {"Content-Length": str(len(CONTENT))}) == 404


def test_unknown_key_404(base):
    """POST with an unknown key: 404 before the body."""
    assert head_only(base, "POST", "/data/" + "A" * 32 + "/0", {"Content-Length": "10"}) == 404


def test_unknown_file_number_404(base, pending):
    """POST with a file number outside the manifest: 404 before the body."""
    key, _ = pending
    for num in ("1", "x", "-1"):
        assert head_only(base, "POST", f"/data/{key}/{num}", {"Content-Length": str(len(CONTENT))}) == 404


def test_other_identity_403(base):
    """The manifest's uploader is Alice; Bob (and anonymous) get 403 before the body."""
    alice = {"X-Client-DN": "/O=Grid/CN=Alice"}
    key = post_manifest(base, "data", [(unique("a"), CONTENT)], headers=alice)
    length = {"Content-Length": str(len(CONTENT))}
    assert head_only(base, "POST", f"/data/{key}/0", {**length, "X-Client-DN": "/O=Grid/CN=Bob"}) == 403
    assert head_only(base, "POST", f"/data/{key}/0", length) == 403
    assert request(base, "POST", f"/data/{key}/0", CONTENT, alice).status == 200


def test_handler_refused_403(base):
    """GetUploadFilename returning None: 403 before the body."""
    key = post_manifest(base, "nofile", [(unique("a"), CONTENT)])
    assert head_only(base, "POST", f"/nofile/{key}/0", {"Content-Length": str(len(CONTENT))}) == 403


def test_already_stored_409(base, pending):
    """A file already stored: 409 before the body."""
    key, _ = pending
    assert request(base, "POST", f"/data/{key}/0", CONTENT).status == 200
    assert head_only(base, "POST", f"/data/{key}/0", {"Content-Length": str(len(CONTENT))}) == 409


def test_arriving_on_another_connection_409(base, pending):
    """While one connection sends a file, a second gets 409; the first then completes."""
    key, name = pending
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as first:
        first.sendall(
            f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(CONTENT)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        # the server answers 100 Continue once it has accepted the body: the file is now receiving
        assert read_until(first, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
        first.sendall(CONTENT[:100])
        assert head_only(base, "POST", f"/data/{key}/0", {"Content-Length": str(len(CONTENT))}) == 409
        first.sendall(CONTENT[100:])
        answer = read_until(first, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
    assert request(base, "GET", f"/data/{name}").body == CONTENT


def test_no_content_length_411(base, pending):
    """A chunked file body (no Content-Length): 411 before the body."""
    key, _ = pending
    assert head_only(base, "POST", f"/data/{key}/0", {"Transfer-Encoding": "chunked"}) == 411


def test_length_differs_400(base, pending):
    """Content-Length different from the manifest size: 400 before the body."""
    key, _ = pending
    assert head_only(base, "POST", f"/data/{key}/0", {"Content-Length": str(len(CONTENT) + 1)}) == 400


def test_not_enough_space_507(base):
    """A file larger than the free space: 507 before the body."""
    huge = 10**15
    body = (
        "[manifest]\nnum_files = 1\n\n[0]\nname = huge\nsize = %d\nchecksum = %s\n" % (huge, "0" * 32)
    ).encode()
    answer = request(base, "POST", "/perm/manifest", body)
    key = answer.fields()["transfer_key"]
    assert head_only(base, "POST", f"/perm/{key}/0", {"Content-Length": str(huge)}) == 507


def test_checksum_mismatch_422_then_retry(base, pending):
    """Wrong bytes: 422, nothing stored, the file stays pending and can be sent again."""
    key, name = pending
    corrupt = bytes([CONTENT[0] ^ 1]) + CONTENT[1:]
    answer = request(base, "POST", f"/data/{key}/0", corrupt)
    assert answer.status == 422 and "checksum" in answer.text
    assert request(base, "GET", f"/data/{name}").status == 404
    assert json.loads(request(base, "GET", f"/data/{key}").body)["files"][0]["state"] == "pending"
    assert request(base, "POST", f"/data/{key}/0", CONTENT).status == 200
    assert request(base, "GET", f"/data/{name}").body == CONTENT


def test_expect_continue_accepted(base, pending):
    """Expect: 100-continue gets 100 once the upload is accepted, then 200."""
    key, _ = pending
    head = (
        f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(CONTENT)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(CONTENT)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")


def test_expect_continue_refused(base):
    """Expect: 100-continue on a refused upload gets the final status and no 100."""
    head = (
        "POST /data/" + "B" * 32 + "/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    responses = parse_raw(raw_exchange(base, head))
    assert [r.status for r in responses] == [404]


# -- downloads -----------------------------------------------------------------


@pytest.fixture
def stored(base) -> str:
    name = unique("dl.bin")
    key = post_manifest(base, "data", [(name, CONTENT)])
    assert request(base, "POST", f"/data/{key}/0", CONTENT).status == 200
    return name


def test_download_headers(base, stored):
    """GET: 200 with Content-Length, Last-Modified, ETag, Accept-Ranges and Repr-Digest."""
    answer = request(base, "GET", f"/data/{stored}")
    assert answer.status == 200 and answer.body == CONTENT
    assert answer.headers["content-length"] == str(len(CONTENT))
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["etag"].startswith('"')
    assert email.utils.parsedate_to_datetime(answer.headers["last-modified"])
    digest = base64.b64encode(hashlib.md5(CONTENT).digest()).decode()
    assert answer.headers["repr-digest"] == f"md5=:{digest}:"


def test_head(base, stored):
    """HEAD: the GET headers, no body."""
    answer = request(base, "HEAD", f"/data/{stored}")
    assert answer.status == 200 and answer.body == b""
    assert answer.headers["content-length"] == str(len(CONTENT))


def test_range_206(base, stored):
    """Range: 206 with just those bytes; beyond the end: 416."""
    answer = request(base, "GET", f"/data/{stored}", headers={"Range": "bytes=5-14"})
    assert answer.status == 206 and answer.body == CONTENT[5:15]
    assert answer.headers["content-range"] == f"bytes 5-14/{len(CONTENT)}"
    assert request(base, "GET", f"/data/{stored}", headers={"Range": "bytes=999999-"}).status == 416


def test_conditional_304(base, stored):
    """If-None-Match with the ETag, or If-Modified-Since: 304 and no body."""
    first = request(base, "GET", f"/data/{stored}")
    again = request(base, "GET", f"/data/{stored}", headers={"If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b""
    since = request(base, "GET", f"/data/{stored}", headers={"If-Modified-Since": first.headers["last-modified"]})
    assert since.status == 304


def test_download_missing_404(base):
    """A file that does not exist: 404 with a reason."""
    answer = request(base, "GET", "/data/no-such-file")
    assert answer.status == 404 and answer.text.strip()


@pytest.mark.parametrize(
    "path",
    [
        "/data/%2e%2e/%2e%2e/etc/passwd",
        "/data/..%2f..%2fetc%2fpasswd",
        "/data/a%2fb",
        "/data/%00",
        "/data/.gsitransfer-store.sqlite",
        "/data/.gsitransfer-transfers.sqlite",
        "/data/%c0%ae%c0%ae/etc/passwd",
    ],
)
def test_download_never_leaves_the_store(base, path):
    """Decoded dots, encoded slashes, NUL, overlong UTF-8, server files: never served."""
    answer = raw_exchange(base, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status = parse_raw(answer)[-1].status
    assert status in (400, 404)


def test_method_not_allowed_405(base):
    """A method a path does not take: 405 with Allow."""
    answer = request(base, "PATCH", "/data/x", b"1")
    assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD, PUT, DELETE, PROPFIND, OPTIONS"


def test_body_on_get_over_limit_413(base):
    """A large body on a GET is refused from its headers."""
    assert head_only(base, "GET", "/data/x", {"Content-Length": str(10**9)}) == 413


# -- beyond AccessGrid: state, cancel, listing ------------------------------------------


def test_transfer_state_and_cancel(base, pending):
    """GET /<prefix>/<key> is the JSON state; DELETE cancels; then the key is 404."""
    key, name = pending
    state = json.loads(request(base, "GET", f"/data/{key}").body)
    assert state["files"][0]["name"] == name and state["files"][0]["state"] == "pending"
    assert request(base, "DELETE", f"/data/{key}").status == 200
    assert request(base, "GET", f"/data/{key}").status == 404
    assert head_only(base, "POST", f"/data/{key}/0", {"Content-Length": str(len(CONTENT))}) == 404


def test_listing(base, stored):
    """GET /<prefix>/ lists the stored files as JSON, server files hidden."""
    answer = request(base, "GET", "/data/")
    listing = json.loads(answer.body)
    names = [f["name"] for f in listing["files"]]
    assert stored in names and not any(n.startswith(".gsitransfer") for n in names)


def test_keep_alive_after_success(base, stored):
    """Several requests on one connection are answered in order."""
    data = (f"GET /data/{stored} HTTP/1.1\r\nHost: x\r\n\r\n" * 2).encode()
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"HTTP/1.1 200") < 2 or len(received) < 2 * len(CONTENT):
            assert time.monotonic() < deadline
            received += sock.recv(65536)
    assert received.count(b"HTTP/1.1 200") == 2
