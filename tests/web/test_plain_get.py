"""The keep-alive fast path (gsitransfer.web._keepalive): what it takes, and that it answers as twisted.web does.

The equivalence tests build two servers over one store, one with every fast
path (``FastPaths()``) and one with none (``FastPaths.none()``: twisted.web's
path), and compare the bytes on the wire and the access log lines.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.web import http

from gsitransfer.errors import NotAuthorized
from gsitransfer.fastpaths import FastPaths
from gsitransfer.handler import DownloadTarget
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web._keepalive import MAX_HEAD, parse_plain_get
from gsitransfer.web.filebody import SMALL_BODY
from gsitransfer.web.request import TransferRequest

from .wire import channel, get, split

SMALL = os.urandom(5000)
LARGE = os.urandom(SMALL_BODY + 1)


#: every fast path, the keep-alive GET's included
FAST = FastPaths()
#: no fast path: twisted.web's path, the reference
PLAIN = FastPaths.none()


def fill_store(store: Path) -> Path:
    """The files the tests ask for, in a new directory ``store``."""
    store.mkdir()
    (store / "small.bin").write_bytes(SMALL)
    (store / "page.html").write_bytes(b"<p>hello</p>\n")
    (store / "large.bin").write_bytes(LARGE)
    (store / "empty.bin").write_bytes(b"")
    (store / "sub").mkdir()
    (store / "sub" / "a b.txt").write_bytes(b"spaced\n")
    return store


def serving(store: Path, fast_paths: FastPaths | None = None) -> HTTPTransferServer:
    """A server of ``store`` under /data/, trusting 127.0.0.1 as a proxy (default fast paths: the environment's)."""
    s = HTTPTransferServer(public_url="http://test", trusted_proxies=["127.0.0.1"], fast_paths=fast_paths)
    s.RegisterPrefix("data", DirectoryStore(str(store)))
    return s


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fill_store(tmp_path / "store")


@pytest.fixture
def server(store: Path) -> HTTPTransferServer:
    return serving(store)


# -- the parser -------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, close",
    [
        (b"GET /data/x HTTP/1.1\r\nHost: t\r\n\r\n", False),
        (b"GET /data/x?y=1 HTTP/1.1\r\n\r\n", False),
        (b"GET /data/x HTTP/1.1\r\nConnection: close\r\n\r\n", True),
        (b"GET /data/x HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", False),
        (b"GET /data/x HTTP/1.1\r\nconnection: Keep-Alive CLOSE\r\n\r\n", True),
        (b"GET /data/x HTTP/1.1\r\nUser-Agent:  curl/8 \t\r\nAccept: */*\r\n\r\n", False),
    ],
)
def test_plain_heads_taken(head, close):
    """A plain GET head is taken, with its target and whether it asks to close."""
    parsed = parse_plain_get(head)
    assert parsed is not None and parsed.close is close
    assert parsed.target == head.split(b" ")[1]


def test_header_values_as_twisted_strips_them():
    """Header values lose the spaces and tabs around them, names are lower-cased, as twisted.web reads them."""
    parsed = parse_plain_get(b"GET /d/x HTTP/1.1\r\nUser-Agent: \t a b \t\r\nX-Empty:\r\n\r\n")
    assert parsed is not None
    assert parsed.headers == ((b"user-agent", b"a b"), (b"x-empty", b""))
    assert parsed.header(b"user-agent") == b"a b" and parsed.header(b"referer") is None


@pytest.mark.parametrize(
    "head",
    [
        b"HEAD /data/x HTTP/1.1\r\n\r\n",
        b"POST /data/x HTTP/1.1\r\n\r\n",
        b"GET /data/x HTTP/1.0\r\n\r\n",
        b"GET http://t/data/x HTTP/1.1\r\n\r\n",
        b"GET  /data/x HTTP/1.1\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nHost: t\r\n",  # incomplete
        b"GET /data/x HTTP/1.1\r\n\r\nGET /data/y HTTP/1.1\r\n\r\n",  # pipelined
        b"GET /data/x HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nIf-None-Match: \"a\"\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nIf-Modified-Since: x\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nBad name: x\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\n: x\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nX: a\nb\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
        b"GET /data/x HTTP/1.1\r\n" + b"X: a\r\n" * 65 + b"\r\n",
    ],
)
def test_everything_else_declined(head):
    """Any other head (method, version, target, header or size) is declined: twisted.web's path takes it."""
    assert parse_plain_get(head) is None


class _Recorder(http.Request):
    """What twisted.web's own parser made of a head."""

    seen: list[tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bool]] = []

    def process(self) -> None:
        headers = [(name.lower(), value) for name, values in self.requestHeaders.getAllRawHeaders() for value in values]
        closing = self.responseHeaders.getRawHeaders(b"connection") == [b"close"]
        self.seen.append((self.method, self.uri, self.clientproto, headers, closing))
        self.finish()


_TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12)
_NAMES = st.one_of(
    _TOKEN,
    st.sampled_from(["Host", "User-Agent", "Referer", "Connection", "Range", "Content-Length", "Bad Name", "", "X\x00"]),
)
_VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=20),
    st.sampled_from(["close", "keep-alive", " close ", "Keep-Alive, close", "bytes=0-1", "0"]),
)
_TARGETS = st.one_of(st.sampled_from(["/data/x", "/data/a%20b?q=1", "/", "*", "http://h/x"]), st.text(max_size=10).map(lambda t: "/" + t))


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "GET", "HEAD", "get"]),
    target=_TARGETS,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
    headers=st.lists(st.tuples(_NAMES, _VALUES, st.sampled_from([": ", ":", ":\t", " : "])), max_size=6),
)
def test_taken_heads_read_as_twisted_reads_them(method, target, version, headers):
    """Whatever head the shortcut takes, twisted.web parses to the same target, headers and persistence."""
    lines = [f"{method} {target} {version}"] + [f"{name}{sep}{value}" for name, value, sep in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    parsed = parse_plain_get(head)
    if parsed is None:
        return
    _Recorder.seen = []
    channel = http.HTTPChannel()
    channel.requestFactory = _Recorder
    channel.makeConnection(StringTransport())
    channel.dataReceived(head)
    assert len(_Recorder.seen) == 1, channel.transport.value()
    seen_method, uri, proto, seen_headers, closing = _Recorder.seen[0]
    assert (seen_method, uri, proto) == (b"GET", parsed.target, b"HTTP/1.1")
    assert seen_headers == sorted(parsed.headers, key=lambda h: [n for n, _ in parsed.headers].index(h[0]))
    assert closing is parsed.close


# -- the same answer as twisted.web's path ------------------------------------------

_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


class _LogFile:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def _exchange(server: HTTPTransferServer, *requests: bytes) -> tuple[bytes, list[str], int, bool]:
    """The output (Date blanked), access log lines, Requests made and whether the connection is closing."""
    made: list[TransferRequest] = []

    class CountedRequest(TransferRequest):
        def __init__(self, *args, **kwargs) -> None:
            made.append(self)
            super().__init__(*args, **kwargs)

    site = server.site()
    site.requestFactory = CountedRequest
    log = _LogFile()
    site._logFile, site._logDateTime = log, "[24/Nov/2026:00:00:00 +0000]"
    conn = SiteConnection(site)
    for data in requests:
        conn.send(data)
    closing = conn.transport.disconnecting
    return _DATE.sub(b"\r\nDate: -\r\n", conn.output()), log.lines, len(made), closing


@pytest.mark.parametrize(
    "requests",
    [
        [get("/data/small.bin")],
        [get("/data/small.bin", "User-Agent: curl/8.5", "Referer: http://x/\"q\"")],
        [get("/data/page.html?x=1"), get("/data/small.bin")],
        [get("/data/small.bin", "Connection: close")],
        [get("/data/sub/a%20b.txt", "Connection: keep-alive")],
        [get("/data/small.bin", "X-Client-DN: /CN=alice")],
    ],
)
def test_same_bytes_and_log_as_twisted_web(store, requests):
    """Answered by the shortcut (no Request made), with the bytes and log lines twisted.web's path gives."""
    fast = _exchange(serving(store, FAST), *requests)
    slow = _exchange(serving(store, PLAIN), *requests)
    assert fast[2] == 0 and slow[2] == len(requests)
    assert fast[0] == slow[0] and fast[1] == slow[1] and fast[3] == slow[3]
    assert split(fast[0])[0] == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/data/large.bin"),
        get("/data/empty.bin"),
        get("/data/sub"),
        get("/data/missing.bin"),
        get("/data/small.bin", "Range: bytes=0-9"),
        get("/data/small.bin", method="HEAD"),
        get("/data/../etc/passwd"),
        get("/nope/small.bin"),
        get("/data/small.bin") + get("/data/page.html"),
    ],
)
def test_declined_requests_answered_by_twisted_web(store, request_bytes):
    """What the shortcut declines goes twisted.web's way, with the same answer as without the shortcut."""
    fast = _exchange(serving(store, FAST), request_bytes)
    slow = _exchange(serving(store, PLAIN), request_bytes)
    assert fast[2] >= 1 and fast[0] == slow[0] and fast[1] == slow[1]


@pytest.fixture(scope="module")
def fast_and_plain(tmp_path_factory) -> tuple[HTTPTransferServer, HTTPTransferServer]:
    """Two servers of one store: every fast path, and none (shared by a Hypothesis test's examples)."""
    store = fill_store(tmp_path_factory.mktemp("equivalence") / "store")
    return serving(store, FAST), serving(store, PLAIN)


_GET_TARGETS = st.sampled_from(
    [
        "/data/small.bin", "/data/small.bin?x=1", "/data/page.html", "/data/sub/a%20b.txt", "/data/large.bin",
        "/data/empty.bin", "/data/sub", "/data/missing.bin", "/data/", "/data/%2e%2e/x", "/data/a%2fb",
        "/data/%ff", "/nope/small.bin", "/", "/data/" + "k" * 32,
    ]
)
_GET_HEADERS = st.lists(
    st.sampled_from(
        [
            "User-Agent: curl/8.5", "Referer: http://x/\"q\"", "Accept: */*", "Connection: close",
            "Connection: keep-alive", "X-Client-DN: /CN=alice", "Range: bytes=0-9", "If-None-Match: \"x\"",
            "Accept-Encoding: gzip", "X-Empty:",
        ]
    ),
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(requests=st.lists(st.tuples(_GET_TARGETS, _GET_HEADERS), min_size=1, max_size=3))
def test_fast_and_plain_paths_give_the_same_bytes(fast_and_plain, requests):
    """Any sequence of GETs on one connection: the same bytes, log lines and closing with every fast path as with none."""
    fast_server, plain_server = fast_and_plain
    heads = [get(target, *headers) for target, headers in requests]
    fast = _exchange(fast_server, *heads)
    plain = _exchange(plain_server, *heads)
    assert fast[0] == plain[0] and fast[1] == plain[1] and fast[3] == plain[3]
    assert plain[2] >= 1 and fast[2] <= plain[2]  # twisted.web answers every plain one; the fast path makes no more


class CountingHandler:
    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls = 0

    def GetDownloadFilename(self, id_token, url_path):
        self.calls += 1
        return self.answer(url_path)


@pytest.mark.parametrize(
    "answer, status",
    [
        (lambda path: None, b"404"),
        (lambda path: (_ for _ in ()).throw(NotAuthorized("not yours")), b"403"),
        (lambda path: "/nonexistent/file", b"404"),
        ("large", b"200"),
        ("deferred", b"200"),
        ("target", b"200"),
    ],
)
def test_handler_asked_once(tmp_path, answer, status):
    """The handler is asked once per request, whether the shortcut answers or hands its answer on."""
    from twisted.internet import defer

    large, small = tmp_path / "large.bin", tmp_path / "small.bin"
    large.write_bytes(LARGE)
    small.write_bytes(SMALL)
    if answer == "large":
        answer = lambda path: str(large)  # noqa: E731
    elif answer == "deferred":
        answer = lambda path: defer.succeed(str(small))  # noqa: E731
    elif answer == "target":
        answer = lambda path: DownloadTarget(str(small), hashlib.md5(SMALL).hexdigest())  # noqa: E731
    server = HTTPTransferServer(public_url="http://test")
    handler = CountingHandler(answer)
    server.RegisterPrefix("h", handler)
    conn = SiteConnection(server.site())
    conn.send(get("/h/f.bin"))
    assert split(conn.output())[0].split(b" ")[1] == status
    assert handler.calls == 1
    assert channel(conn).take_handler_answer() is None


def test_refused_identity_goes_the_long_way(server):
    """An identity source refusing the client: twisted.web's path answers 403, as without the shortcut."""
    site = server.site()

    class Refusing:
        def identify(self, request):
            raise NotAuthorized("no")

    site.identity = Refusing()
    conn = SiteConnection(site)
    conn.send(get("/data/small.bin"))
    assert split(conn.output())[0] == b"HTTP/1.1 403 Forbidden"


def test_connection_close_closes_after_the_answer(server):
    """Connection: close is answered, then the connection closes."""
    conn = SiteConnection(server.site())
    conn.send(get("/data/small.bin", "Connection: close"))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK" and headers[b"connection"] == b"close" and body == SMALL
    assert conn.transport.disconnecting
