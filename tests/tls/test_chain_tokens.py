"""The identity of a verified chain is derived once per context and chain, then looked up by DER."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from gsitransfer import identity
from gsitransfer.testca import TestPKI
from gsitransfer._internals import verified_chain_der_from_openssl
from gsitransfer.tls import peer
from gsitransfer.tls.context import ServerTLS, TrustConfig
from gsitransfer.tls.peer import ChainTokens, identity_from_connection, verified_chain, verified_chain_der
from .memory_tls import pump


def _connect(tls: ServerTLS, pki: TestPKI, cert: Path, key: Path | None = None) -> SSL.Connection:
    """The server end of an in-memory handshake on ``tls``'s current context, with this credential."""
    server = tls.serverConnectionForTLS(SimpleNamespace())
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.use_certificate_chain_file(str(cert))
    context.use_privatekey_file(str(key or cert))
    context.load_verify_locations(str(pki.ca_file))
    client = SSL.Connection(context, None)
    client.set_connect_state()
    pump(client, server)
    return server


@pytest.fixture
def tls(test_pki: TestPKI) -> ServerTLS:
    return ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(ca_dir=str(test_pki.ca_dir)))


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the chains actually parsed into a token."""
    count: list[int] = []
    real = identity.identity_from_chain

    def counting(chain):  # type: ignore[no-untyped-def]
        count.append(len(chain))
        return real(chain)

    monkeypatch.setattr(peer, "identity_from_chain", counting)
    return count


def test_equal_chains_share_one_token_derived_once(tls: ServerTLS, test_pki: TestPKI, derivations: list[int]) -> None:
    """Two connections with the same proxy chain get the same token; the chain is parsed once."""
    alice = test_pki.users["alice"]
    first = identity_from_connection(_connect(tls, test_pki, alice.proxy))
    second = identity_from_connection(_connect(tls, test_pki, alice.proxy))
    assert second is first
    assert derivations == [len(first.chain)]
    assert first == identity.identity_from_chain(first.chain)
    assert first.dn == alice.dn and first.proxy


def test_different_chains_get_their_own_tokens(tls: ServerTLS, test_pki: TestPKI, derivations: list[int]) -> None:
    """The user certificate, its proxy, its limited proxy and another user are four identities."""
    alice, bob = test_pki.users["alice"], test_pki.users["bob"]
    tokens = [
        identity_from_connection(_connect(tls, test_pki, alice.cert, alice.key)),
        identity_from_connection(_connect(tls, test_pki, alice.proxy)),
        identity_from_connection(_connect(tls, test_pki, alice.limited_proxy)),
        identity_from_connection(_connect(tls, test_pki, bob.cert, bob.key)),
    ]
    assert [(t.dn, t.proxy, t.limited_proxy) for t in tokens] == [
        (alice.dn, False, False), (alice.dn, True, False), (alice.dn, True, True), (bob.dn, False, False)]
    assert len(derivations) == 4
    assert len(tls.context.get_app_data()) == 4


def test_the_token_holds_the_chain_just_verified(tls: ServerTLS, test_pki: TestPKI) -> None:
    """A looked-up token's chain is byte for byte the connection's verified chain."""
    alice = test_pki.users["alice"]
    identity_from_connection(_connect(tls, test_pki, alice.proxy_of_proxy))
    connection = _connect(tls, test_pki, alice.proxy_of_proxy)
    token = identity_from_connection(connection)
    assert token.chain == tuple(verified_chain(connection))
    assert verified_chain_der(connection) == tuple(cert.public_bytes(Encoding.DER) for cert in token.chain)


def test_a_reload_starts_a_new_cache(tls: ServerTLS, test_pki: TestPKI, derivations: list[int]) -> None:
    """Each context has its own ChainTokens: after a reload the chain is derived again."""
    alice = test_pki.users["alice"]
    before = identity_from_connection(_connect(tls, test_pki, alice.proxy))
    old = tls.context.get_app_data()
    assert tls.reload(force=True)
    assert isinstance(tls.context.get_app_data(), ChainTokens) and tls.context.get_app_data() is not old
    after = identity_from_connection(_connect(tls, test_pki, alice.proxy))
    assert after == before and after is not before
    assert len(derivations) == 2


def test_the_cache_is_bounded_least_recently_used_first(tls: ServerTLS, test_pki: TestPKI,
                                                         derivations: list[int]) -> None:
    """With room for two chains, a third evicts the one used longest ago."""
    tls.context.set_app_data(ChainTokens(size=2))
    alice, bob, carol = (test_pki.users[name] for name in ("alice", "bob", "carol"))

    def token_of(user):  # type: ignore[no-untyped-def]
        return identity_from_connection(_connect(tls, test_pki, user.cert, user.key))

    token_of(alice), token_of(bob), token_of(alice)  # alice is now the most recent
    token_of(carol)  # evicts bob
    assert len(derivations) == 3
    token_of(alice)
    assert len(derivations) == 3
    token_of(bob)
    assert len(derivations) == 4
    assert len(tls.context.get_app_data()) == 2


def test_a_context_without_chain_tokens_derives_every_time(test_pki: TestPKI, derivations: list[int]) -> None:
    """identity_from_connection works on any context; without a ChainTokens it parses each time."""
    tls = ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(ca_dir=str(test_pki.ca_dir)))
    tls.context.set_app_data(None)
    alice = test_pki.users["alice"]
    first = identity_from_connection(_connect(tls, test_pki, alice.proxy))
    second = identity_from_connection(_connect(tls, test_pki, alice.proxy))
    assert first == second and first is not second
    assert len(derivations) == 2


def test_direct_chain_read_gives_pyopenssls_der(tls: ServerTLS, test_pki: TestPKI) -> None:
    """The chain read straight from OpenSSL's stack is, certificate for certificate, pyOpenSSL's DER."""
    from OpenSSL import crypto

    alice = test_pki.users["alice"]
    for cert, key in ((alice.cert, alice.key), (alice.proxy, None), (alice.proxy_of_proxy, None)):
        server = _connect(tls, test_pki, cert, key)
        expected = tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in server.get_verified_chain())
        assert verified_chain_der_from_openssl(server) == expected == verified_chain_der(server)
        assert len(expected) >= 2
