"""Issue 12's bounds on a connection, in memory: heads parsed in linear work, oversized heads answered
431 and closed (plain HTTP and both TLS transports), and the waits for a first and a next request,
and a connection's age, bounded on a Clock.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.task import Clock

from gsitransfer.fastpaths import FastPaths
from gsitransfer.store import DirectoryStore
from gsitransfer.testca import TestPKI, make_test_pki
from gsitransfer.testing import MemoryHandler, MemoryTLSClient, SiteConnection
from gsitransfer.tls import ServerTLS, TrustConfig
from gsitransfer.web import GSIHTTPTransferServer, HTTPTransferServer
from gsitransfer.web._keepalive import MAX_HEADER_LINES, PlainGet, parse_plain_get

from .wire import channel, get, split

SMALL = b"a small file\n" * 10

#: a resumed download asking for 5,000 ranges: one header line of about 50 KB (twisted.web's limit: 16 KiB)
LONG_RANGE = (
    b"GET /data/small.bin HTTP/1.1\r\nHost: t\r\nRange: bytes="
    + b",".join(b"%d-%d" % (i * 10, i * 10 + 5) for i in range(5000))
    + b"\r\n\r\n"
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    (root / "small.bin").write_bytes(SMALL)
    return root


def plain_server(store: Path, **options: Any) -> HTTPTransferServer:
    server = HTTPTransferServer(public_url="http://test", **options)
    server.RegisterPrefix("data", DirectoryStore(str(store)))
    return server


def connect(server: HTTPTransferServer) -> SiteConnection:
    """A connection to ``server`` whose timers all run on the connection's Clock."""
    clock = Clock()
    return SiteConnection(server.site(clock), clock)


def closed(conn: SiteConnection) -> bool:
    return bool(conn.transport.disconnecting or conn.transport.disconnected)


# -- finding 1: the keep-alive fast path's head parser does linear work --------------------------------

#: what parse_plain_get may call: bytes methods that make one pass over their input (no regular expression,
#: nothing that backtracks), and constant-time builtins
LINEAR_OPERATIONS = {
    "len", "bytes.startswith", "bytes.endswith", "bytes.find", "bytes.translate", "bytes.count",
    "bytes.split", "bytes.partition", "bytes.strip", "bytes.lower", "list.append", "tuple.__new__",
    "PlainGet.__new__", "list.pop", "mappingproxy.get",
}


def operations(head: bytes) -> tuple[Any, list[str]]:
    """What ``parse_plain_get(head)`` returns and every function it calls (Python and C), in order."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            calls.append(getattr(arg, "__qualname__", repr(arg)))
        elif event == "call":
            calls.append("PlainGet.__new__" if frame.f_code is PlainGet.__new__.__code__ else frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        parsed = parse_plain_get(head)
    finally:
        sys.setprofile(None)
    return parsed, calls[1:-1]  # (the first is parse_plain_get itself, the last sys.setprofile)


@pytest.mark.parametrize("spaces", [1000, 4000])
def test_head_parse_work_does_not_grow_with_a_value(spaces):
    """A header value with n or 2n spaces: the same calls, each a single-pass bytes method (never a regex)."""
    head = b"GET /data/x HTTP/1.1\r\nHost: t\r\nUser-Agent: a" + b" " * spaces + b"b \r\n\r\n"
    double = head.replace(b" " * spaces, b" " * (2 * spaces))
    parsed, calls = operations(head)
    parsed_double, calls_double = operations(double)
    assert parsed is not None and parsed.header(b"user-agent") == b"a" + b" " * spaces + b"b"
    assert parsed_double is not None
    assert set(calls) <= LINEAR_OPERATIONS, sorted(set(calls) - LINEAR_OPERATIONS)
    assert calls == calls_double


def test_head_parse_work_grows_linearly_with_lines():
    """k, 2k and 3k header lines: each k lines add the same number of calls (linear, not quadratic)."""
    k = MAX_HEADER_LINES // 4

    def head(lines: int) -> bytes:
        return b"GET /data/x HTTP/1.1\r\n" + b"".join(b"X-%d: v \r\n" % i for i in range(lines)) + b"\r\n"

    counts = [len(operations(head(n * k))[1]) for n in (1, 2, 3)]
    assert counts[2] - counts[1] == counts[1] - counts[0] > 0


def test_one_large_read_of_short_lines_is_split_in_linear_work(store):
    """One read of n or 2n short header lines: the bytes twisted.web's line splitter copies double, not quadruple."""

    def copied(lines: int) -> int:
        conn = connect(plain_server(store))
        parser = channel(conn)
        parser.maxHeaders = parser.totalHeadersSize = 10**9  # (this connection's bounds out of the way)
        copies: list[int] = []
        received = parser.lineReceived

        def counting(line: bytes) -> None:
            copies.append(len(line) + len(parser._buffer))  # each split copies the line and the rest
            received(line)

        parser.lineReceived = counting
        conn.send(b"GET /data/small.bin HTTP/1.1\r\n" + b"X: 1\r\n" * lines + b"\r\n")
        assert split(conn.output())[0] == b"HTTP/1.1 200 OK"
        return sum(copies)

    assert copied(10_000) < 2.5 * copied(5_000)


# -- finding 12: an over-long head is answered 431 and the connection closed, on every transport --------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=("alice",), share_keys=True)


def refused_431(answer: bytes, reason: bytes) -> bool:
    status, headers, body = split(answer)
    return (
        status == b"HTTP/1.1 431 Request Header Fields Too Large"
        and headers[b"content-type"] == b"text/plain; charset=utf-8"
        and headers[b"connection"] == b"close"
        and body == reason + b"\n"
    )


@pytest.mark.parametrize(
    "fast_paths", [FastPaths(), FastPaths(bulk_tls=False), FastPaths.none()],
    ids=["bulk TLS", "Twisted's TLS", "no fast path"],
)
def test_overlong_header_line_over_tls_is_431_and_closed(pki, tmp_path, fast_paths):
    """A 50 KB Range line under mutual TLS: 431 with its reason and the server's close_notify at once, TCP soon after."""
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key), TrustConfig(ca_dir=str(pki.ca_dir)))
    server = GSIHTTPTransferServer(tls, public_url="https://test", fast_paths=fast_paths)
    server.RegisterPrefix("data", MemoryHandler(str(tmp_path)))
    clock = Clock()
    alice = pki.users["alice"]
    client = MemoryTLSClient(server.protocol_factory(clock), str(alice.cert), str(alice.key), clock)
    client.handshake()
    client.send(LONG_RANGE)
    assert refused_431(client.received(), b"request header line is longer than 16384 bytes")
    assert client.connection.get_shutdown() & SSL.RECEIVED_SHUTDOWN  # the server closed its TLS side
    clock.advance(channel_of(client).abortTimeout)  # a client that never answers close_notify: cut off
    assert client.transport.disconnected


def channel_of(client: MemoryTLSClient) -> Any:
    return client.protocol.wrappedProtocol


@pytest.mark.parametrize("fast_paths", [FastPaths(), FastPaths.none()], ids=["fast paths", "plain paths"])
def test_overlong_header_line_over_http_is_431_and_closed(store, fast_paths):
    """The same head on plain HTTP: 431 with its reason, then the connection closes."""
    conn = connect(plain_server(store, fast_paths=fast_paths))
    conn.send(LONG_RANGE)
    assert refused_431(conn.output(), b"request header line is longer than 16384 bytes")
    assert closed(conn)


@pytest.mark.parametrize(
    "head, reason",
    [
        (b"GET /data/small.bin HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(20))
         + b"\r\n", b"request head is larger than 16384 bytes"),
        (b"GET /data/small.bin HTTP/1.1\r\n" + b"X: 1\r\n" * 501 + b"\r\n",
         b"request head has more than 500 header lines"),
        (b"GET /data/small.bin HTTP/1.1\r\nX: 1\r\n" + b" folded\r\n" * 3000 + b"\r\n",
         b"request head has more than 500 header lines"),
    ],
    ids=["18 KB of headers", "501 headers", "3000 folded lines"],
)
def test_oversized_heads_are_431_with_a_reason(store, head, reason):
    """Too many header bytes or lines (folded ones count): 431 and one line saying which bound, then closed."""
    conn = connect(plain_server(store))
    conn.send(head)
    assert refused_431(conn.output(), reason)
    assert closed(conn)


def test_content_length_of_thousands_of_digits_is_413(store):
    """A Content-Length of 5000 digits (past Python's int limit) is 413 with its reason, never an exception."""
    conn = connect(plain_server(store))
    conn.send(b"POST /data/manifest HTTP/1.1\r\nHost: t\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n")
    status, _, body = split(conn.output())
    assert status == b"HTTP/1.1 413 Request Entity Too Large" and body == b"Content-Length of 5000 digits\n"
    assert closed(conn)


def test_input_after_an_oversized_line_is_never_parsed(store):
    """What follows the refused line (here a second request) is dropped, never answered."""
    conn = connect(plain_server(store))
    conn.send(b"GET /data/small.bin HTTP/1.1\r\nX: " + b"a" * 20_000)
    conn.send(b"\r\n\r\n" + get("/data/small.bin"))
    assert conn.output().count(b"HTTP/1.1 ") == 1


# -- finding 13: the waits for a first and a next request, and a connection's age ------------------------


def test_first_request_wait_is_bounded(store):
    """A connection that sends nothing is closed after --first-request-timeout (60 s), not the idle timeout."""
    conn = connect(plain_server(store))
    conn.clock.advance(59)
    assert not closed(conn)
    conn.clock.advance(1)
    assert closed(conn)


def test_first_request_wait_starts_after_the_tls_handshake(pki, tmp_path):
    """Under TLS the wait for the first request starts when the handshake ends."""
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key), TrustConfig(ca_dir=str(pki.ca_dir)))
    server = GSIHTTPTransferServer(tls, public_url="https://test")
    server.RegisterPrefix("data", MemoryHandler(str(tmp_path)))
    clock = Clock()
    alice = pki.users["alice"]
    client = MemoryTLSClient(server.protocol_factory(clock), str(alice.cert), str(alice.key), clock)
    clock.advance(20)  # within the handshake's 30 s
    client.handshake()
    clock.advance(59)
    assert not client.protocol.disconnecting
    clock.advance(1)
    assert client.protocol.disconnecting


@pytest.mark.parametrize("fast_paths", [FastPaths(), FastPaths.none()], ids=["fast paths", "plain paths"])
def test_wait_between_requests_is_bounded(store, fast_paths):
    """After an answer, the next request must begin within --keepalive-timeout (75 s)."""
    conn = connect(plain_server(store, fast_paths=fast_paths))
    for _ in range(2):
        conn.clock.advance(50)
        conn.send(get("/data/small.bin"))
        assert split(conn.output())[0] == b"HTTP/1.1 200 OK"
    conn.clock.advance(74)
    assert not closed(conn)
    conn.clock.advance(1)
    assert closed(conn)


def test_a_request_begun_has_the_idle_timeout(store):
    """Once a request's first byte is in, silence is bounded by --idle-timeout, not by the shorter waits."""
    conn = connect(plain_server(store, idle_timeout=200, head_timeout=1000))
    conn.send(b"GET /data/small.bin HTTP/1.1\r\nHo")
    conn.clock.advance(199)
    assert not closed(conn)
    conn.clock.advance(1)
    assert closed(conn)


def test_waits_never_longer_than_the_idle_timeout(store):
    """With --idle-timeout 10, a silent new connection is closed after 10 s."""
    conn = connect(plain_server(store, idle_timeout=10))
    conn.clock.advance(10)
    assert closed(conn)


@pytest.mark.parametrize("fast_paths", [FastPaths(), FastPaths.none()], ids=["fast paths", "plain paths"])
def test_an_old_connection_closes_between_requests(store, fast_paths):
    """A busy connection past --max-connection-age is closed once idle, though its requests kept it alive."""
    conn = connect(plain_server(store, fast_paths=fast_paths, max_connection_age=100))
    for _ in range(3):
        conn.send(get("/data/small.bin"))
        assert not closed(conn)
        conn.clock.advance(40)
    assert closed(conn)  # at 100 s, between requests


def test_an_old_connection_finishes_its_request_first(store):
    """Past its maximum age mid-request, the connection answers (with Connection: close) and then closes."""
    conn = connect(plain_server(store, max_connection_age=100))
    conn.clock.advance(50)
    conn.send(get("/data/small.bin"))
    conn.clock.advance(49)
    conn.send(b"GET /data/small.bin HTTP/1.1\r\nHo")
    conn.clock.advance(2)
    assert not closed(conn)
    conn.send(b"st: t\r\n\r\n")
    status, headers, body = split(conn.output().split(SMALL, 1)[1])
    assert status == b"HTTP/1.1 200 OK" and body == SMALL and headers[b"connection"] == b"close"
    assert closed(conn)
    assert channel(conn)._age_timer is None
