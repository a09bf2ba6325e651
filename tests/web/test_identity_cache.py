"""The mutual-TLS identity is derived once per connection, then remembered."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from gsitransfer.identity import IdToken
from gsitransfer.tls import peer
from gsitransfer.web.peers import CertificateIdentity


class FakeConnection:
    """Stands for an SSL.Connection (weak-referenceable)."""


def request_on(connection: FakeConnection) -> SimpleNamespace:
    transport = SimpleNamespace(getHandle=lambda: connection)
    return SimpleNamespace(channel=SimpleNamespace(transport=transport))


def test_identity_derived_once_per_connection(monkeypatch):
    """Later requests on a connection reuse its identity; another connection derives its own."""
    derived: list[FakeConnection] = []

    def derive(connection: FakeConnection) -> IdToken:
        derived.append(connection)
        return IdToken(dn=f"/CN=user{len(derived)}")

    monkeypatch.setattr(peer, "identity_from_connection", derive)
    source = CertificateIdentity()
    first, second = FakeConnection(), FakeConnection()
    assert source.identify(request_on(first)).dn == "/CN=user1"
    assert source.identify(request_on(first)).dn == "/CN=user1"
    assert source.identify(request_on(second)).dn == "/CN=user2"
    assert derived == [first, second]
    del first, derived[:]
    gc.collect()
    assert len(source._known) == 1  # a closed connection is forgotten with it
