"""The upload state machine (gsitransfer.web.upload): its transition table, and each end driven in memory.

Every test ends by checking that nothing of the upload is left: no body in
flight in the engine, no request counted as active, no temporary file, and
the file either stored or pending again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from gsitransfer.filesink import is_temporary_name
from gsitransfer.manifest import Manifest
from gsitransfer.testing import MemoryHandler, SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.upload import TRANSITIONS, UploadReceiver, UploadState

from .wire import channel, upload_head

BODY = b"state machine\n" * 100
EVENTS = ("accept", "end", "commit", "refuse", "lose")
ENDS = (UploadState.COMMITTED, UploadState.REFUSED, UploadState.LOST)


@dataclass
class DecidingLater(MemoryHandler):
    """A MemoryHandler whose GetUploadFilename answers with a Deferred the test fires."""

    decisions: list[tuple["defer.Deferred[str | None]", str]] = field(default_factory=list)

    def GetUploadFilename(self, id_token: Any, file_info: dict[str, Any]) -> "defer.Deferred[str | None]":
        path = super().GetUploadFilename(id_token, file_info)
        decision: defer.Deferred[str | None] = defer.Deferred()
        self.decisions.append((decision, path))
        return decision


@pytest.fixture
def handler(tmp_path: Path) -> DecidingLater:
    (tmp_path / "files").mkdir()
    return DecidingLater(str(tmp_path / "files"))


@pytest.fixture
def server(handler: DecidingLater) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", handler)
    return s


@pytest.fixture
def key(engine, anonymous) -> str:
    manifest = Manifest.of(("f.bin", len(BODY), hashlib.md5(BODY).hexdigest())).to_ini().encode()
    return engine.post_manifest("data", manifest, anonymous).result.transfer_key


def receiver_of(conn: SiteConnection) -> UploadReceiver:
    """The upload receiver of the request being answered on ``conn``."""
    receiver = channel(conn).requests[-1].receiver
    assert isinstance(receiver, UploadReceiver)
    return receiver


def start_upload(server: HTTPTransferServer, key: str, first_bytes: bytes = b"") -> tuple[Any, SiteConnection, UploadReceiver]:
    """A new connection sending the upload's head (and ``first_bytes`` of its body); its site, connection, receiver."""
    site = server.site()
    conn = SiteConnection(site)
    conn.send(upload_head(key, len(BODY)) + first_bytes)
    return site, conn, receiver_of(conn)


def file_state(server: HTTPTransferServer, key: str) -> str:
    return server.transfers.states(key)[0].value


def assert_nothing_left(engine: Any, site: Any, handler: DecidingLater) -> None:
    """No body in flight, no request counted as active, no temporary file beside the handler's files."""
    assert engine.uploads_in_flight() == 0
    assert site.active_requests == 0
    assert [p.name for p in Path(handler.root).iterdir() if is_temporary_name(p.name)] == []


# -- the table ------------------------------------------------------------------------


def reachable(start: UploadState) -> set[UploadState]:
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for event in EVENTS:
            after = TRANSITIONS.get((state, event))
            if after is not None and after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


def test_table_is_the_documented_machine():
    """Forward only: accept, end, commit; refuse from every live state; lose until the body is in; the ends take nothing."""
    assert TRANSITIONS[(UploadState.DECIDING, "accept")] is UploadState.RECEIVING
    assert TRANSITIONS[(UploadState.RECEIVING, "end")] is UploadState.VERIFYING
    assert TRANSITIONS[(UploadState.VERIFYING, "commit")] is UploadState.COMMITTED
    live = [state for state in UploadState if state not in ENDS]
    assert all(TRANSITIONS[(state, "refuse")] is UploadState.REFUSED for state in live)
    assert {state for state, event in TRANSITIONS if event == "lose"} == {UploadState.DECIDING, UploadState.RECEIVING}
    assert all(TRANSITIONS[(state, "lose")] is UploadState.LOST for state in (UploadState.DECIDING, UploadState.RECEIVING))
    assert not [pair for pair in TRANSITIONS if pair[0] in ENDS]
    assert {event for _, event in TRANSITIONS} <= set(EVENTS)
    assert reachable(UploadState.DECIDING) == set(UploadState)
    assert all(reachable(state) & set(ENDS) for state in UploadState)  # every state can end


# -- each end, through a site ----------------------------------------------------------


def test_committed(server, engine, handler, key):
    """Accepted, received, verified: COMMITTED, 200, the file stored; a late loss changes nothing."""
    site, conn, receiver = start_upload(server, key)
    assert receiver.state is UploadState.DECIDING and file_state(server, key) == "receiving"
    decision, path = handler.decisions[0]
    decision.callback(path)
    assert receiver.state is UploadState.RECEIVING
    conn.send(BODY)
    assert receiver.state is UploadState.COMMITTED
    assert conn.output().startswith(b"HTTP/1.1 200")
    assert Path(path).read_bytes() == BODY and file_state(server, key) == "stored"
    conn.drop()
    assert receiver.state is UploadState.COMMITTED and file_state(server, key) == "stored"
    assert_nothing_left(engine, site, handler)


def test_lost_while_deciding_undoes_the_late_decision(server, engine, handler, key):
    """The client goes while the handler decides: LOST; the acceptance arriving later is undone, the file pending again."""
    site, conn, receiver = start_upload(server, key, BODY[:10])
    assert receiver.state is UploadState.DECIDING
    conn.drop()
    assert receiver.state is UploadState.LOST
    assert file_state(server, key) == "receiving"  # the engine still waits for the handler's answer
    decision, path = handler.decisions[0]
    decision.callback(path)
    assert receiver.state is UploadState.LOST and receiver.sink is None
    assert file_state(server, key) == "pending"
    assert not Path(path).exists() and conn.output() == b""
    assert_nothing_left(engine, site, handler)


def test_lost_while_receiving(server, engine, handler, key):
    """The client goes mid-body: LOST, the temporary file removed, the file pending again."""
    site, conn, receiver = start_upload(server, key)
    decision, path = handler.decisions[0]
    decision.callback(path)
    conn.send(BODY[:100])
    assert receiver.state is UploadState.RECEIVING
    conn.drop()
    assert receiver.state is UploadState.LOST
    assert file_state(server, key) == "pending" and not Path(path).exists()
    assert_nothing_left(engine, site, handler)


def test_refused_after_the_body(server, engine, handler, key):
    """The whole body is in before the handler refuses it: REFUSED, 403, the file pending, the connection kept."""
    site, conn, receiver = start_upload(server, key, BODY)
    assert receiver.state is UploadState.DECIDING and receiver.body_in
    decision, path = handler.decisions[0]
    decision.callback(None)  # the handler refuses the file
    assert receiver.state is UploadState.REFUSED
    assert conn.output().startswith(b"HTTP/1.1 403")
    assert not conn.transport.disconnecting
    assert file_state(server, key) == "pending" and not Path(path).exists()
    assert_nothing_left(engine, site, handler)


def test_refused_while_verifying(server, engine, handler, key):
    """A body whose checksum is wrong: REFUSED after the body (422), nothing stored, the file pending again."""
    site, conn, receiver = start_upload(server, key)
    decision, path = handler.decisions[0]
    decision.callback(path)
    conn.send(bytes(len(BODY)))
    assert receiver.state is UploadState.REFUSED
    assert conn.output().startswith(b"HTTP/1.1 422")
    assert file_state(server, key) == "pending" and not Path(path).exists()
    assert_nothing_left(engine, site, handler)


def test_refused_while_deciding_before_the_body(server, engine, handler, key):
    """The handler refuses before any body byte: REFUSED, 403, the connection closed, the file pending."""
    site, conn, receiver = start_upload(server, key)
    decision, path = handler.decisions[0]
    decision.callback(None)
    conn.clock.advance(0)  # a refusal before the body goes out on the next turn
    assert receiver.state is UploadState.REFUSED
    assert conn.output().startswith(b"HTTP/1.1 403") and conn.transport.disconnecting
    assert file_state(server, key) == "pending"
    conn.drop()
    assert_nothing_left(engine, site, handler)
