"""The mutual-TLS identity is derived once per connection, then remembered."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

from gsitransfer.identity import IdToken
from gsitransfer.tls import peer
from gsitransfer.web.identity_sources import CertificateIdentity


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
    gone = weakref.ref(first)
    del first, derived[:]
    gc.collect()
    assert gone() is None  # the source holds no connection: it is forgotten with it


def test_identity_kept_for_connections_without_attributes(monkeypatch):
    """A connection object that takes no attribute still has its identity remembered, weakly."""

    class Slotted:
        __slots__ = ("__weakref__",)

    derived: list[object] = []
    monkeypatch.setattr(peer, "identity_from_connection", lambda c: derived.append(c) or IdToken(dn="/CN=s"))
    source = CertificateIdentity()
    connection = Slotted()
    assert source.identify(request_on(connection)) is source.identify(request_on(connection))
    assert derived == [connection]
    del connection, derived[:]
    gc.collect()
    assert len(source._known) == 0


def test_connections_with_the_same_chain_share_one_token(monkeypatch):
    """Two connections presenting the same chain get the very same token; another chain its own."""
    tokens = {"a": IdToken(dn="/CN=a"), "b": IdToken(dn="/CN=b")}
    chains = {}

    def derive(connection: FakeConnection) -> IdToken:
        # a fresh but equal token per connection, as identity_from_connection makes
        return IdToken(dn=tokens[chains[connection]].dn)

    monkeypatch.setattr(peer, "identity_from_connection", derive)
    source = CertificateIdentity()
    first, second, other = FakeConnection(), FakeConnection(), FakeConnection()
    chains.update({first: "a", second: "a", other: "b"})
    one = source.identify(request_on(first))
    assert source.identify(request_on(second)) is one
    assert source.identify(request_on(other)) is not one
    assert source.identify(request_on(other)).dn == "/CN=b"
