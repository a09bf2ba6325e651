"""One-line DNs (against the openssl CLI), RFC 3820 proxy detection, and chain -> identity."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from gsitransfer.identity import (
    POLICY_INDEPENDENT,
    POLICY_INHERIT_ALL,
    POLICY_LIMITED,
    _SHORT_NAMES,
    format_dn,
    identity_from_chain,
    is_proxy,
    parse_proxy_cert_info,
    proxy_cert_info,
    proxy_policy,
)
from gsitransfer.testca import (
    Issued,
    KeyPool,
    make_ca,
    make_name,
    make_proxy,
    make_user_cert,
    person_name,
    proxy_cert_info_der,
)

A = x509.NameAttribute


@pytest.fixture(scope="module")
def keys() -> KeyPool:
    """One shared key per role: these tests are about names, not keys."""
    return KeyPool(shared_roles=("ca", "user", "proxy", "proxy2"))


@pytest.fixture(scope="module")
def ca(keys: KeyPool) -> Issued:
    return make_ca(make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.COMMON_NAME, "DN Test CA")]), keys.key("ca"))


def self_signed(name: x509.Name, keys: KeyPool) -> x509.Certificate:
    key = keys.key("user")
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def openssl_subject(cert: x509.Certificate, tmp_path: Path) -> str:
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-subject", "-nameopt", "compat"],
                         capture_output=True, check=True, timeout=30).stdout.decode("latin-1")
    assert out.startswith("subject=") and out.endswith("\n")
    return out[len("subject="):-1]


NAMES = {
    "simple": person_name("Alice Example"),
    "multi-valued RDN": make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, "Grid Test")],
                                  [(NameOID.USER_ID, "dave"), (NameOID.COMMON_NAME, "Dave Example")]),
    "multi-valued RDN, three": make_name([(NameOID.COMMON_NAME, "x"), (NameOID.SURNAME, "y"), (NameOID.EMAIL_ADDRESS, "z@a")]),
    "UTF-8": person_name("José Müller"),
    "CJK and emoji": person_name("山田 太郎 🙂"),
    "slash": person_name("R/D"),
    "comma": person_name("Doe, John"),
    "plus": person_name("a+b"),
    "equals": person_name("a=b"),
    "backslash": person_name("back\\slash\\"),
    "quotes and specials": person_name('"q" <a> #1 ;x'),
    "spaces": person_name("  lead and trail  "),
    "control characters": person_name("tab\there\x7f"),
    "BMPString": x509.Name([A(NameOID.COMMON_NAME, "Bmp é", _type=_ASN1Type.BMPString)]),
    "UniversalString": x509.Name([A(NameOID.COMMON_NAME, "Uni", _type=_ASN1Type.UniversalString)]),
    "T61String": x509.Name([A(NameOID.COMMON_NAME, "T61", _type=_ASN1Type.T61String)]),
    "IA5String email, DC": x509.Name([A(NameOID.DOMAIN_COMPONENT, "org"), A(NameOID.DOMAIN_COMPONENT, "example"),
                                      A(NameOID.EMAIL_ADDRESS, "a@example.org")]),
    "serialNumber, ST, L, unknown OID": x509.Name([
        A(NameOID.STATE_OR_PROVINCE_NAME, "Illinois"), A(NameOID.LOCALITY_NAME, "Chicago"),
        A(NameOID.SERIAL_NUMBER, "1234"), A(x509.ObjectIdentifier("1.2.3.4.5.6"), "private"),
    ]),
    "proxy-like": x509.Name([*person_name("Alice").rdns, x509.RelativeDistinguishedName([A(NameOID.COMMON_NAME, "123")])]),
    "empty": x509.Name([]),
}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("case", list(NAMES))
def test_format_dn_matches_openssl_compat(case: str, keys: KeyPool, tmp_path: Path) -> None:
    """format_dn prints exactly what `openssl x509 -noout -subject -nameopt compat` prints."""
    cert = self_signed(NAMES[case], keys)
    assert format_dn(cert.subject) == openssl_subject(cert, tmp_path)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_every_short_name_matches_openssl(keys: KeyPool, tmp_path: Path) -> None:
    """Every attribute short name in the table is the one openssl prints."""
    name = x509.Name([A(x509.ObjectIdentifier(oid), "v") for oid in _SHORT_NAMES
                      if oid not in ("2.5.4.6", "1.3.6.1.4.1.311.60.2.1.3")])  # 2-letter countries below
    cert = self_signed(name, keys)
    assert format_dn(cert.subject) == openssl_subject(cert, tmp_path)


def test_format_dn_examples_from_the_spec() -> None:
    """The spec's examples: plain, multi-valued (DER order), escaped / and +, UTF-8 as \\xHH."""
    assert format_dn(person_name("Alice Example")) == "/C=US/O=Grid Test/OU=People/CN=Alice Example"
    dave = make_name([(NameOID.COMMON_NAME, "Dave Example"), (NameOID.USER_ID, "dave")])
    assert format_dn(dave) == "/UID=dave+CN=Dave Example"  # DER order, not the order given
    assert format_dn(make_name([(NameOID.COMMON_NAME, "a/b+c,d=e\\f")])) == "/CN=a\\/b\\+c,d=e\\f"
    assert format_dn(make_name([(NameOID.COMMON_NAME, "José Müller")])) == "/CN=Jos\\xC3\\xA9 M\\xC3\\xBCller"


def test_format_dn_of_certificate_and_of_built_name_agree(ca: Issued, keys: KeyPool) -> None:
    """A name read back from a certificate formats like the name it was built from."""
    name = make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.COMMON_NAME, "Dave"), (NameOID.USER_ID, "d")])
    cert = make_user_cert(ca, name, keys.key("user")).cert
    assert format_dn(cert.subject) == format_dn(name) == "/C=US/CN=Dave+UID=d"  # shorter encoding first


# ---------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice(ca: Issued, keys: KeyPool) -> Issued:
    return make_user_cert(ca, person_name("Alice Example"), keys.key("user"))


def test_is_proxy_and_policy(alice: Issued, keys: KeyPool) -> None:
    """is_proxy and proxy_policy read the RFC 3820 ProxyCertInfo extension."""
    assert not is_proxy(alice.cert) and proxy_policy(alice.cert) is None
    for policy in (POLICY_INHERIT_ALL, POLICY_LIMITED, POLICY_INDEPENDENT):
        proxy = make_proxy(alice, keys.key("proxy"), policy=policy).cert
        assert is_proxy(proxy) and proxy_policy(proxy) == policy
        assert proxy.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")).critical


def test_proxy_cert_info_path_length_round_trips(alice: Issued, keys: KeyPool) -> None:
    """pCPathLenConstraint is encoded and decoded, and absent means no limit."""
    info = proxy_cert_info(make_proxy(alice, keys.key("proxy"), path_length=3).cert)
    assert info is not None and (info.path_length, info.policy_language) == (3, POLICY_INHERIT_ALL)
    assert parse_proxy_cert_info(proxy_cert_info_der(POLICY_LIMITED)).path_length is None
    assert parse_proxy_cert_info(proxy_cert_info_der(path_length=300)).path_length == 300


def test_proxy_cert_info_with_policy_bytes() -> None:
    """A ProxyPolicy carrying a policy OCTET STRING is decoded."""
    der = bytes.fromhex("3013" "3011" "0608" "2b06010505071501" "0405") + b"hello"
    der = bytes([0x30, len(der) - 2]) + der[2:]
    info = parse_proxy_cert_info(der)
    assert (info.policy_language, info.policy) == (POLICY_INHERIT_ALL, b"hello")


@pytest.mark.parametrize("der", ["", "3000", "0500", "30030201ff", "30050201013000", "3007300506032b0681", "3009300706032b060104ff"])
def test_malformed_proxy_cert_info_is_a_value_error(der: str) -> None:
    """Malformed ProxyCertInfo DER raises ValueError."""
    with pytest.raises(ValueError):
        parse_proxy_cert_info(bytes.fromhex(der))


def test_proxy_subject_is_issuer_plus_one_cn(alice: Issued, keys: KeyPool) -> None:
    """A proxy's subject is its issuer's subject plus CN=<serial number>."""
    proxy = make_proxy(alice, keys.key("proxy"))
    assert format_dn(proxy.cert.subject) == f"{alice.dn}/CN={proxy.cert.serial_number}"


# ---------------------------------------------------------------------------
# Chain -> identity
# ---------------------------------------------------------------------------


def chain_of(issued: Issued) -> list[x509.Certificate]:
    return [issued.cert, *issued.chain]


def test_identity_of_a_user_certificate(alice: Issued, ca: Issued) -> None:
    """A plain user chain: dn, issuer and not_after are the user certificate's; not a proxy."""
    token = identity_from_chain(chain_of(alice))
    assert (token.dn, token.proxy, token.limited_proxy) == (alice.dn, False, False)
    assert token.issuer == ca.dn == "/C=US/CN=DN Test CA"
    assert token.not_after == alice.cert.not_valid_after_utc
    assert token.chain == (alice.cert, ca.cert)


def test_identity_of_a_proxy_is_the_user(alice: Issued, ca: Issued, keys: KeyPool) -> None:
    """A proxy chain names the user; proxy is set; issuer is the CA's."""
    token = identity_from_chain(chain_of(make_proxy(alice, keys.key("proxy"))))
    assert (token.dn, token.proxy, token.limited_proxy, token.issuer) == (alice.dn, True, False, ca.dn)
    assert token.not_after == alice.cert.not_valid_after_utc


def test_identity_of_a_proxy_of_a_proxy_is_the_user(alice: Issued, keys: KeyPool) -> None:
    """Delegating twice still names the user."""
    proxy = make_proxy(alice, keys.key("proxy"))
    token = identity_from_chain(chain_of(make_proxy(proxy, keys.key("proxy2"))))
    assert (token.dn, token.proxy, len(token.chain)) == (alice.dn, True, 4)


def test_limited_proxy_anywhere_in_the_chain_is_flagged(alice: Issued, keys: KeyPool) -> None:
    """A limited proxy, or any proxy made from one, sets limited_proxy."""
    limited = make_proxy(alice, keys.key("proxy"), policy=POLICY_LIMITED)
    assert identity_from_chain(chain_of(limited)).limited_proxy
    below = identity_from_chain(chain_of(make_proxy(limited, keys.key("proxy2"))))
    assert (below.dn, below.limited_proxy) == (alice.dn, True)


def test_independent_proxy_is_its_own_identity(alice: Issued, keys: KeyPool) -> None:
    """An independent proxy is the identity; a proxy delegated from it names it too."""
    independent = make_proxy(alice, keys.key("proxy"), policy=POLICY_INDEPENDENT)
    token = identity_from_chain(chain_of(independent))
    assert token.dn == independent.dn == f"{alice.dn}/CN={independent.cert.serial_number}"
    assert token.issuer == alice.dn and token.proxy
    below = identity_from_chain(chain_of(make_proxy(independent, keys.key("proxy2"))))
    assert below.dn == independent.dn


def test_independent_proxy_of_a_limited_proxy_is_still_limited(alice: Issued, keys: KeyPool) -> None:
    """limited_proxy is set when any proxy of the chain is limited, even above the identity."""
    limited = make_proxy(alice, keys.key("proxy"), policy=POLICY_LIMITED)
    independent = make_proxy(limited, keys.key("proxy2"), policy=POLICY_INDEPENDENT)
    token = identity_from_chain(chain_of(independent))
    assert (token.dn, token.limited_proxy) == (independent.dn, True)


def test_identity_from_an_empty_chain_is_a_value_error() -> None:
    """No certificate, no identity."""
    with pytest.raises(ValueError):
        identity_from_chain([])
