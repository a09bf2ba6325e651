"""Issue 12 finding 4: every proxy of a user, independent ones too, is that user for quotas and ownership."""

from __future__ import annotations

import pytest
from cryptography.x509.oid import NameOID

from gsitransfer import IdToken, NotAuthorized, QuotaExceeded, TransferEngine
from gsitransfer.identity import POLICY_INDEPENDENT, identity_from_chain
from gsitransfer.testca import Issued, KeyPool, make_ca, make_name, make_proxy, make_user_cert, person_name
from tests.support.deferreds import result_of
from tests.unit.test_manifest_load import PerFileHandler, manifest


@pytest.fixture(scope="module")
def keys() -> KeyPool:
    """One shared key per role: these tests are about names, not keys."""
    return KeyPool(shared_roles=("ca", "user", "proxy", "proxy2"))


@pytest.fixture(scope="module")
def alice(keys: KeyPool) -> Issued:
    """Alice's user certificate from a test CA."""
    ca = make_ca(make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.COMMON_NAME, "Person CA")]), keys.key("ca"))
    return make_user_cert(ca, person_name("Alice Example"), keys.key("user"))


def independent_token(alice: Issued, keys: KeyPool, role: str) -> IdToken:
    """The IdToken the TLS layer builds for a fresh independent proxy of Alice."""
    proxy = make_proxy(alice, keys.key(role), policy=POLICY_INDEPENDENT)
    return identity_from_chain([proxy.cert, *proxy.chain])


def engine(**options: object) -> TransferEngine:
    """An engine with one prefix, ``data``."""
    server = TransferEngine(clock=lambda: 1000.0, **options)  # type: ignore[arg-type]
    server.register("data", PerFileHandler())
    return server


def test_independent_proxies_share_their_users_quota(alice: Issued, keys: KeyPool) -> None:
    """Two independent proxies (two DNs) of one user count against one --max-pending-files."""
    first, second = independent_token(alice, keys, "proxy"), independent_token(alice, keys, "proxy2")
    assert first.dn != second.dn
    server = engine(max_pending_files=3)
    assert result_of(server.post_manifest("data", manifest(0, 0, stem="a"), first)).accepted
    with pytest.raises(QuotaExceeded, match="2 pending, this manifest adds 2, at most 3"):
        result_of(server.post_manifest("data", manifest(0, 0, stem="b"), second))


def test_independent_proxy_cannot_take_a_dn_extending_its_users(alice: Issued, keys: KeyPool) -> None:
    """A key of a user whose DN is Alice's plus one CN is not the key of Alice's independent proxy of that DN."""
    proxy = independent_token(alice, keys, "proxy")
    other = IdToken(dn=proxy.dn)  # an end-entity certificate that happens to carry that DN
    server = engine()
    key = result_of(server.post_manifest("data", manifest(0, stem="x"), other)).transfer_key
    assert key is not None
    with pytest.raises(NotAuthorized):
        result_of(server.transfer_status("data", key, proxy))
    mine = result_of(server.post_manifest("data", manifest(0, stem="y"), proxy)).transfer_key
    assert mine is not None
    assert result_of(server.transfer_status("data", mine, IdToken(dn=alice.dn)))["owner"] == alice.dn
