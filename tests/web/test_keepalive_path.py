"""The keep-alive GET path: synchronous handlers, one write per small answer, lazy timers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gsitransfer.errors import FileNotFound, NotAuthorized
from gsitransfer.handler import DownloadTarget
from gsitransfer.identity import ANONYMOUS
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer, channel as channel_module
from gsitransfer.web.routes import FileRoute, path_segments, route_target
from gsitransfer.web.status import BadRequest

from .wire import channel, get, split

SMALL = os.urandom(5000)


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    s = DirectoryStore(str(tmp_path / "store"))
    (tmp_path / "store" / "small.bin").write_bytes(SMALL)
    return s


@pytest.fixture
def server(store: DirectoryStore) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", store)
    return s


class Handler:
    """GetDownloadFilename answering as told: a value, a Deferred, a coroutine or an exception."""

    def __init__(self, path: str, how: str) -> None:
        self.path, self.how = path, how
        self.pending: defer.Deferred[str] | None = None

    def GetDownloadFilename(self, id_token, url_path):
        if self.how == "value":
            return self.path
        if self.how == "target":
            return DownloadTarget(self.path, hashlib.md5(SMALL).hexdigest())
        if self.how == "none":
            return None
        if self.how == "raise":
            raise NotAuthorized("not yours")
        if self.how == "coroutine":
            async def answer() -> str:
                return self.path
            return answer()
        self.pending = defer.Deferred()
        return self.pending


def test_small_answer_is_one_transport_write(server):
    """Head and body of a small file go to the transport in one write, and the connection stays open."""
    conn = SiteConnection(server.site())
    writes: list[bytes] = []
    write = conn.transport.write
    conn.transport.write = lambda data: (writes.append(data), write(data))[1]
    conn.send(get("/data/small.bin"))
    assert len(writes) == 1
    status, headers, body = split(writes[0])
    assert status == b"HTTP/1.1 200 OK" and body == SMALL
    assert headers[b"content-length"] == b"%d" % len(SMALL) and b"etag" in headers
    conn.send(get("/data/small.bin"))
    assert len(writes) == 2 and split(writes[1])[2] == SMALL


@pytest.mark.parametrize("how", ["value", "target", "coroutine", "deferred"])
def test_handler_answers_now_or_later(tmp_path, how):
    """A handler answering at once, with a coroutine or with a Deferred fired later: the file is served."""
    path = tmp_path / "f.bin"
    path.write_bytes(SMALL)
    server = HTTPTransferServer(public_url="http://test")
    handler = Handler(str(path), how)
    server.RegisterPrefix("h", handler)
    conn = SiteConnection(server.site())
    conn.send(get("/h/f.bin"))
    if how == "deferred":
        assert conn.output() == b""
        handler.pending.callback(str(path))
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK" and body == SMALL
    assert (b"repr-digest" in headers) == (how == "target")


@pytest.mark.parametrize("how, code", [("none", b"404"), ("raise", b"403")])
def test_handler_refusal_is_a_status(tmp_path, how, code):
    """A synchronous None is 404 and a raised NotAuthorized 403, as through the Deferred path."""
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("h", Handler(str(tmp_path / "f.bin"), how))
    conn = SiteConnection(server.site())
    conn.send(get("/h/f.bin"))
    assert split(conn.output())[0].split(b" ")[1] == code


def test_resolve_download_still_gives_a_deferred(engine):
    """The core's Deferred API is unchanged: it fires with the target, or fails with the error."""
    fired = engine.resolve_download("data", "small.bin", ANONYMOUS)
    assert fired.result.path.endswith("small.bin")
    for prefix, name in (("data", "missing.bin"), ("nope", "x")):
        failed = engine.resolve_download(prefix, name, ANONYMOUS)
        assert failed.addErrback(lambda failure: failure.check(FileNotFound)).result is FileNotFound


def test_tls_buffers_released_only_after_a_quiet_spell(server, monkeypatch):
    """The first request releases at once; requests in quick succession keep the buffers until a quiet spell."""
    released: list[object] = []
    monkeypatch.setattr(channel_module, "release_idle_buffers", released.append)
    clock = Clock()
    conn = SiteConnection(server.site(), clock)
    after = channel(conn).release_after
    for _ in range(3):
        conn.send(get("/data/small.bin"))
        clock.advance(after / 2)
    assert released == [conn.transport]
    clock.advance(after)
    assert released == [conn.transport] * 2
    clock.advance(10 * after)
    conn.send(get("/data/small.bin"))
    assert released == [conn.transport] * 3
    clock.advance(10 * after)
    assert released == [conn.transport] * 3


def test_released_not_while_a_head_is_arriving(server, monkeypatch):
    """Half a request head when the quiet spell ends: the buffers are kept."""
    released: list[object] = []
    monkeypatch.setattr(channel_module, "release_idle_buffers", released.append)
    clock = Clock()
    conn = SiteConnection(server.site(), clock)
    conn.send(get("/data/small.bin"))
    conn.send(get("/data/small.bin"))
    conn.send(b"GET /data/sma")
    clock.advance(channel(conn).release_after)
    assert released == [conn.transport]


def test_head_deadline_only_for_an_incomplete_head(server):
    """A whole head in one read schedules no head deadline; a partial one does, and it still applies."""
    clock = Clock()
    conn = SiteConnection(server.site(), clock)
    conn.send(get("/data/small.bin"))
    assert channel(conn)._head_timer is None
    conn.send(b"GET /data/small.bin HTTP/1.1\r\nHo")
    assert channel(conn)._head_timer is not None
    clock.advance(channel(conn).head_timeout)
    assert conn.transport.disconnecting or conn.transport.disconnected


def test_active_requests_counted_until_the_answer_ends(server):
    """The site counts a request while it is answered, and not after it ends or its client leaves."""
    site = server.site()
    path = server.LookupPrefix("data").root
    handler = Handler(os.path.join(path, "small.bin"), "deferred")
    server.RegisterPrefix("slow", handler)
    conn = SiteConnection(site)
    conn.send(get("/data/small.bin"))
    assert site.active_requests == 0
    conn.send(get("/slow/small.bin"))
    assert site.active_requests == 1
    conn.drop()
    assert site.active_requests == 0


def test_routes_remembered_per_method_and_path():
    """The same method and path give the same route; the query does not matter; long paths still route."""
    assert route_target(b"GET", b"/data/a.bin?x=1") == route_target(b"GET", b"/data/a.bin")
    assert path_segments(b"/data/a%20b.bin") == [b"data", b"a b.bin"]
    assert route_target(b"GET", b"/data/a%20b.bin") == FileRoute("data", "a b.bin")
    long_name = "n" * 600
    assert route_target(b"GET", b"/data/" + long_name.encode()) == FileRoute("data", long_name)
    assert isinstance(route_target(b"GET", b"data"), BadRequest)
