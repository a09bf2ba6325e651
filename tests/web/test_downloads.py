"""Downloads in memory: ranges, conditional answers, the push producer, checksum cache, access log."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from twisted.internet.address import IPv4Address
from twisted.web.http import combinedLogFormatter
from twisted.web.test.requesthelper import DummyRequest

from gsitransfer.identity import ANONYMOUS
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.accesslog import access_line
from gsitransfer.web.download import UNSATISFIABLE, parse_range
from gsitransfer.web.filebody import DOWNLOAD_CHUNK, SMALL_BODY

from .wire import channel, get, split

BIG = os.urandom(3 * DOWNLOAD_CHUNK + 12345)
SMALL = b"small file\n" * 100


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    s = DirectoryStore(str(tmp_path / "store"))
    (tmp_path / "store" / "big.bin").write_bytes(BIG)
    (tmp_path / "store" / "small.txt").write_bytes(SMALL)
    return s


@pytest.fixture
def server(store: DirectoryStore) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", store)
    return s


def tcp_like(conn: SiteConnection) -> SiteConnection:
    """Make the in-memory transport pause its producer on a large write, as a TCP transport does."""
    write = conn.transport.write

    def write_and_pause(data: bytes) -> None:
        write(data)
        if len(data) > 65536 and conn.transport.producer is not None:
            conn.transport.producer.pauseProducing()

    conn.transport.write = write_and_pause
    return conn


def drain(conn: SiteConnection, limit: int = 1000) -> list[int]:
    """Let the transport ask for more until the answer is complete; the output size after each step."""
    sizes = [len(conn.output())]
    for _ in range(limit):
        if channel(conn)._requestProducer is None:  # the answer is complete
            return sizes
        conn.transport.producer.resumeProducing()
        sizes.append(len(conn.output()))
    raise AssertionError("the download never completed")


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        (b"bytes=0-9", (0, 10)),
        (b"bytes=5-", (5, 95)),
        (b"bytes=90-200", (90, 10)),
        (b"bytes=-10", (90, 10)),
        (b"bytes=-1000", (0, 100)),
        (b"BYTES = 0-0", (0, 1)),
        (b"bytes=100-", UNSATISFIABLE),
        (b"bytes=-0", UNSATISFIABLE),
        (b"bytes=0-1,5-6", None),
        (b"bytes=9-3", None),
        (b"bytes=x-3", None),
        (b"bytes=-", None),
        (b"items=0-1", None),
        (b"bytes=5", None),
    ],
)
def test_parse_range(header, expected):
    """One well-formed byte range is honoured; anything else is the whole file; past the end is 416."""
    assert parse_range(header, 100) == expected


def test_small_file_is_one_write(server):
    """A file of at most SMALL_BODY bytes is answered at once, with every download header."""
    assert len(SMALL) <= SMALL_BODY
    conn = SiteConnection(server.site())
    conn.send(get("/data/small.txt"))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK" and body == SMALL
    assert headers[b"content-length"] == b"%d" % len(SMALL)
    assert headers[b"content-type"] == b"text/plain"
    assert headers[b"accept-ranges"] == b"bytes"
    assert headers[b"etag"].startswith(b'"') and b"last-modified" in headers
    assert channel(conn)._requestProducer is None


def test_large_file_one_chunk_per_transport_request(server):
    """A large file goes out one chunk each time the transport asks: memory bounded, body exact."""
    conn = tcp_like(SiteConnection(server.site()))
    conn.send(get("/data/big.bin"))
    sizes = drain(conn)
    assert max(after - before for before, after in zip(sizes, sizes[1:])) <= DOWNLOAD_CHUNK
    assert sizes[0] <= DOWNLOAD_CHUNK + 1024
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK" and body == BIG
    assert headers[b"content-type"] == b"application/octet-stream"


def test_large_range_206_and_keep_alive(server):
    """A range of a large file is a 206 with Content-Range; the next request is answered after it."""
    conn = SiteConnection(server.site())
    conn.send(get("/data/big.bin", "Range: bytes=1000-") + get("/data/small.txt"))
    drain(conn)
    first, _, rest = conn.output().partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 206")
    assert b"content-range: bytes 1000-%d/%d" % (len(BIG) - 1, len(BIG)) in first.lower()
    assert rest[: len(BIG) - 1000] == BIG[1000:]
    assert rest[len(BIG) - 1000:].startswith(b"HTTP/1.1 200 OK")
    assert rest.endswith(SMALL)


def test_unsatisfiable_head_and_not_modified(server):
    """416 with bytes */size; HEAD has the length and no body; a matching ETag is 304."""
    conn = SiteConnection(server.site())
    conn.send(get("/data/big.bin", "Range: bytes=99999999-"))
    status, headers, body = split(conn.output())
    assert status.startswith(b"HTTP/1.1 416") and headers[b"content-range"] == b"bytes */%d" % len(BIG)
    head = SiteConnection(server.site())
    head.send(get("/data/big.bin", method="HEAD"))
    status, headers, body = split(head.output())
    assert status == b"HTTP/1.1 200 OK" and body == b"" and headers[b"content-length"] == b"%d" % len(BIG)
    again = SiteConnection(server.site())
    again.send(get("/data/big.bin", f"If-None-Match: {headers[b'etag'].decode()}"))
    assert split(again.output())[0].startswith(b"HTTP/1.1 304")


def test_dropped_connection_closes_the_file(server):
    """A client gone mid-download: the producer stops and closes its file."""
    conn = tcp_like(SiteConnection(server.site()))
    conn.send(get("/data/big.bin"))
    producer = channel(conn)._requestProducer
    assert producer is not None and producer._fd is not None
    conn.drop()
    assert producer._fd is None


def test_checksum_cache_never_serves_a_stale_checksum(store, tmp_path, monkeypatch):
    """A repeated download asks the database once; a file rewritten in place is looked up again."""
    path = tmp_path / "store" / "big.bin"
    store.metadata.mark_stored("big.bin", None, size=len(BIG), md5=hashlib.md5(BIG).hexdigest(),
                               mtime_ns=path.stat().st_mtime_ns, now=0.0)
    asked = []
    real_get = store.metadata.get
    monkeypatch.setattr(store.metadata, "get", lambda name: asked.append(name) or real_get(name))
    assert store.GetDownloadFilename(ANONYMOUS, "big.bin").checksum == hashlib.md5(BIG).hexdigest()
    assert store.GetDownloadFilename(ANONYMOUS, "big.bin").checksum == hashlib.md5(BIG).hexdigest()
    assert asked == ["big.bin"]
    before = path.stat()
    path.write_bytes(bytes(len(BIG)))  # same size; put the old mtime back
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    store.GetDownloadFilename(ANONYMOUS, "big.bin")  # the same size and mtime: the stored rule decides
    assert asked == ["big.bin", "big.bin"]
    path.write_bytes(b"shorter")
    assert store.GetDownloadFilename(ANONYMOUS, "big.bin").checksum is None


@pytest.mark.parametrize(
    "uri, agent",
    [(b"/data/x.bin", b"curl/8"), (b'/data/"q\'\\\xff', b"a\tb\"c'"), (b"/d", None)],
)
def test_access_line_is_twisted_combined_format(uri, agent):
    """The access log line is byte for byte twisted.web's combined format, escapes included."""
    request = DummyRequest([b""])
    request.uri, request.method, request.clientproto, request.code = uri, b"GET", b"HTTP/1.1", 200
    request.sentLength = 123
    request.client = IPv4Address("TCP", "10.0.0.1", 1234)
    if agent is not None:
        request.requestHeaders.setRawHeaders(b"user-agent", [agent])
    stamp = "[24/Nov/2026:00:00:00 +0000]"
    assert access_line(stamp, request) == combinedLogFormatter(stamp, request)


@pytest.mark.parametrize(
    "target, sent, referrer, agent",
    [(b"/data/x.bin", 123, b"http://r/", b"curl/8"), (b'/data/"q\'\\\xff', 0, None, b"a\tb\"c'"), (b"/d", 5, None, None),
     (b"/d", 5, b"r" * 300, b"a" * 300)],
)
def test_plain_get_line_is_the_combined_line(target, sent, referrer, agent):
    """The keep-alive shortcut's log line is the combined line of the same GET."""
    from gsitransfer.web.accesslog import combined_line, plain_get_line

    client = IPv4Address("TCP", "10.0.0.1", 1234)
    stamp = "[24/Nov/2026:00:00:00 +0000]"
    assert plain_get_line(stamp, client, target, sent, referrer, agent) == combined_line(
        stamp, client, b"GET", target, b"HTTP/1.1", 200, sent, referrer, agent
    )


# -- issue 12, finding 7: a stored file never runs on the server's origin ------------------------


ACTIVE_NAMES = ["page.html", "page.htm", "x.xhtml", "pic.svg", "feed.xml", "run.js", "style.xsl", "a b é.html"]


@pytest.mark.parametrize("name", ACTIVE_NAMES)
@pytest.mark.parametrize("size", [len(SMALL), len(BIG)], ids=["small", "large"])
def test_active_types_are_attachments(store, server, name, size):
    """HTML, SVG, XML, scripts: nosniff, a sandboxing CSP and an RFC 6266 attachment, on the small and large paths."""
    body = (SMALL if size == len(SMALL) else BIG)
    (Path(store.root) / name).write_bytes(body)
    conn = tcp_like(SiteConnection(server.site()))
    conn.send(get("/data/" + quote(name)))
    drain(conn)
    status, headers, received = split(conn.output())
    assert status == b"HTTP/1.1 200 OK" and received == body
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-security-policy"] == b"default-src 'none'; sandbox"
    assert headers[b"content-disposition"] == (b"attachment; filename*=UTF-8''" + quote(name).encode()).lower()


@pytest.mark.parametrize("request_head", [
    get("/data/small.txt"), get("/data/big.bin"), get("/data/big.bin", "Range: bytes=0-9"),
    get("/data/big.bin", method="HEAD"), get("/data/big.bin", "Range: bytes=99999999-"),
])
def test_every_download_is_nosniff(server, request_head):
    """Every download answer (200, 206, 416, HEAD) carries nosniff and the CSP; inert types are not attachments."""
    conn = tcp_like(SiteConnection(server.site()))
    conn.send(request_head)
    drain(conn)
    _, headers, _ = split(conn.output())
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-security-policy"] == b"default-src 'none'; sandbox"
    assert b"content-disposition" not in headers


# -- issue 12, finding 8: If-Range ----------------------------------------------------------------


def test_if_range_of_a_replaced_file_is_the_whole_file(store, server):
    """A resumed download whose file changed since (ETag or date validator): 200 with the whole new file, not 206."""
    path = Path(store.root) / "grows.bin"
    path.write_bytes(BIG[:50_000])
    os.utime(path, (1_700_000_000, 1_700_000_000))
    first = SiteConnection(server.site())
    first.send(get("/data/grows.bin"))
    drain(first)
    _, old, _ = split(first.output())
    for validator in (old[b"etag"], old[b"last-modified"]):
        conn = SiteConnection(server.site())
        conn.send(get("/data/grows.bin", "Range: bytes=1000-", "If-Range: " + validator.decode()))
        drain(conn)
        status, _, body = split(conn.output())
        assert status.startswith(b"HTTP/1.1 206") and body == BIG[1000:50_000]
    path.write_bytes(BIG[:60_000][::-1])  # replaced: another content, another mtime
    os.utime(path, (1_700_000_100, 1_700_000_100))
    for validator in (old[b"etag"], old[b"last-modified"], b'W/' + old[b"etag"], b"not a date"):
        conn = SiteConnection(server.site())
        conn.send(get("/data/grows.bin", "Range: bytes=1000-", "If-Range: " + validator.decode()))
        drain(conn)
        status, headers, body = split(conn.output())
        assert status == b"HTTP/1.1 200 OK" and body == BIG[:60_000][::-1], validator
        assert b"content-range" not in headers


def test_range_with_thousands_of_digits_is_not_an_error():
    """Offsets of thousands of digits (past Python's int limit) read as past any file, never an exception."""
    huge = b"9" * 5000
    assert parse_range(b"bytes=" + huge + b"-", 100) == UNSATISFIABLE
    assert parse_range(b"bytes=0-" + huge, 100) == (0, 100)
    assert parse_range(b"bytes=-" + huge, 100) == (0, 100)
    assert parse_range(b"bytes=" + b"0" * 5000 + b"5-9", 100) == (5, 5)
