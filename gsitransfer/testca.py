"""A test PKI minted with ``cryptography``: CAs, host and user certificates,
RFC 3820 proxies and CRLs, written in the Globus trusted-directory layout.

Used by ``scripts/make-test-ca`` and by the tests. **Test only**: the keys are
unencrypted and the CA is as trustworthy as the directory it lives in.

What this module owns:

* minting (:func:`make_ca`, :func:`make_server_cert`, :func:`make_user_cert`,
  :func:`make_proxy`, :func:`make_crl`), each returning an :class:`Issued`;
* OpenSSL's subject hash (:func:`subject_hash`, what ``openssl x509 -hash``
  prints) computed in Python from the canonical encoding of the name;
* the layout on disk, made by :func:`make_test_pki`::

      <dir>/ca/                 trusted CA directory (X509_CERT_DIR):
                                <hash>.0 certificate, <hash>.r0 CRL,
                                <hash>.signing_policy (Globus EACL) and
                                <hash>.namespaces (IGTF): each CA may sign
                                /C=US/O=Grid Test/*
      <dir>/ca-bundle.pem       the trusted CA certificates in one PEM file
      <dir>/private/<hash>.key  the CA keys (0600, directory 0700)
      <dir>/server/             hostcert.pem, hostkey.pem, hostcert-expired.pem
                                (RSA-2048, or ECDSA P-256 with server_key_type="ec")
      <dir>/users/<name>/       usercert.pem, userkey.pem and the proxies
                                proxy.pem, proxy-limited.pem,
                                proxy-independent.pem, proxy-of-proxy.pem,
                                proxy-expired.pem (grid-proxy-init format)
      <dir>/untrusted/          a CA that is *not* in ca/, for refusal tests
      <dir>/.gsitransfer-test-ca  the marker: a test CA made here

* :func:`revoke`, :func:`add_user` and :func:`renew` (proxies, certificates and
  CRLs re-issued in place, the CAs kept), which work on such a directory later,
  and :func:`main`, the ``make-test-ca`` command line; ``<dir>/.gsitransfer-test-ca``
  (:data:`MARKER`) marks a directory made here, the only kind ever renewed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gsitransfer.identity import (
    POLICY_INDEPENDENT,
    POLICY_INHERIT_ALL,
    POLICY_LIMITED,
    PROXY_CERT_INFO_OID,
    format_dn,
    name_rdns,
)

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: accepted values of ``make_test_pki(server_key_type=...)`` and ``--server-key-type``
SERVER_KEY_TYPES = ("rsa", "ec")

UTC = datetime.timezone.utc
ORGANIZATION = "Grid Test"
#: the signing policy of every test CA allows subjects under this one-line prefix
SUBJECT_NAMESPACE = f"/C=US/O={ORGANIZATION}/*"

ROOT, INTERMEDIATE, UNTRUSTED = "root", "intermediate", "untrusted"

#: file in a PKI directory that says make_test_pki made it: only such a directory is renewed
MARKER = ".gsitransfer-test-ca"
MARKER_TEXT = ("This directory holds a TEST certificate authority made by gsitransfer's\n"
               "make-test-ca. scripts/serve and make-test-ca --renew* renew only a directory\n"
               "with this file. Never trust this CA in production.\n")

#: what renewal re-issues: proxies that expire within an hour, certificates within
#: 30 days (users' are valid 365, the server's 825), CRLs within 7 days (valid 30)
PROXY_MARGIN = datetime.timedelta(hours=1)
CERT_MARGIN = datetime.timedelta(days=30)
CRL_MARGIN = datetime.timedelta(days=7)

# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def make_name(*rdns: Sequence[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    """A name from RDNs, each a sequence of (oid, value) pairs (several = multi-valued)."""
    return x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in rdn])
         for rdn in rdns]
    )


def person_name(common_name: str, unit: str = "People") -> x509.Name:
    """``/C=US/O=Grid Test/OU=<unit>/CN=<common_name>``."""
    return make_name(
        [(NameOID.COUNTRY_NAME, "US")],
        [(NameOID.ORGANIZATION_NAME, ORGANIZATION)],
        [(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)],
        [(NameOID.COMMON_NAME, common_name)],
    )


# ---------------------------------------------------------------------------
# DER pieces cryptography does not write for us
# ---------------------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def _der_integer(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def proxy_cert_info_der(policy: str = POLICY_INHERIT_ALL, path_length: int | None = None) -> bytes:
    """DER of an RFC 3820 ProxyCertInfo extension value."""
    path = _der_integer(path_length) if path_length is not None else b""
    return _der(0x30, path + _der(0x30, _der_oid(policy)))


# ---------------------------------------------------------------------------
# OpenSSL's subject hash (X509_NAME_hash)
# ---------------------------------------------------------------------------

#: string types OpenSSL canonicalises (ASN1_MASK_CANON), with how their octets decode
_CANONICAL_TYPES = {
    12: "utf-8",  # UTF8String
    19: "latin-1",  # PrintableString
    20: "latin-1",  # T61String (OpenSSL treats it as Latin-1)
    22: "latin-1",  # IA5String
    26: "latin-1",  # VisibleString
    28: "utf-32-be",  # UniversalString
    30: "utf-16-be",  # BMPString
}
_ASCII_SPACE = b" \t\n\v\f\r"


def _canonical_value(tag: int, value: bytes) -> tuple[int, bytes]:
    encoding = _CANONICAL_TYPES.get(tag)
    if encoding is None:
        return tag, value
    text = value.decode(encoding).encode("utf-8").strip(_ASCII_SPACE)
    out = bytearray()
    position = 0
    while position < len(text):
        octet = text[position]
        if octet in _ASCII_SPACE:
            out.append(0x20)
            while position < len(text) and text[position] in _ASCII_SPACE:
                position += 1
            continue
        out.append(octet + 32 if 0x41 <= octet <= 0x5A else octet)
        position += 1
    return 12, bytes(out)


def canonical_name_der(name: x509.Name) -> bytes:
    """OpenSSL's canonical encoding of ``name`` (what X509_NAME_hash digests).

    Each string value becomes a lower-cased UTF8String with leading and trailing
    white space removed and inner runs collapsed to one space; each RDN is a DER
    SET OF (members sorted); the RDNs are concatenated without the SEQUENCE header.
    """
    sets = []
    for rdn in name_rdns(name):
        members = sorted(
            _der(0x30, _der_oid(entry.oid) + _der(*_canonical_value(entry.tag, entry.value)))
            for entry in rdn
        )
        sets.append(_der(0x31, b"".join(members)))
    return b"".join(sets)


def subject_hash(name: x509.Name) -> str:
    """``openssl x509 -hash`` of a certificate with this subject: 8 lower-case hex."""
    digest = hashlib.sha1(canonical_name_der(name)).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


class KeyPool:
    """Hands out keys, generating each once: RSA, or ECDSA P-256 for the roles in ``ec_roles``.

    ``key(role, name)`` returns one key per (role, name); roles listed in
    ``shared_roles`` get one key per role instead (tests share the user and
    proxy keys to stay fast: RSA-2048 generation is the slow part).
    """

    def __init__(self, key_size: int = 2048, shared_roles: Iterable[str] = (),
                 ec_roles: Iterable[str] = ()) -> None:
        self._key_size = key_size
        self._shared = frozenset(shared_roles)
        self._ec = frozenset(ec_roles)
        self._keys: dict[tuple[str, str], Key] = {}

    def key(self, role: str, name: str = "") -> Key:
        """The key for ``name`` in ``role`` (made on first use)."""
        slot = (role, "" if role in self._shared else name)
        if slot not in self._keys:
            self._keys[slot] = (ec.generate_private_key(ec.SECP256R1()) if role in self._ec else
                                rsa.generate_private_key(public_exponent=65537, key_size=self._key_size))
        return self._keys[slot]


# ---------------------------------------------------------------------------
# Minting
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key, and the chain above it (issuer first, up to the root)."""

    cert: x509.Certificate
    key: Key
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def dn(self) -> str:
        """The subject in one-line form."""
        return format_dn(self.cert.subject)


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC).replace(microsecond=0)


def _validity(
    not_before: datetime.datetime | None, not_after: datetime.datetime | None, days: float
) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before if not_before is not None else _now() - datetime.timedelta(hours=1)
    end = not_after if not_after is not None else start + datetime.timedelta(days=days)
    return start, end


def _builder(
    subject: x509.Name, issuer: x509.Name, key: Key, validity: tuple[datetime.datetime, datetime.datetime],
    serial: int | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )


def _key_usage(*, sign: bool = False, encipher: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False, key_encipherment=encipher,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def _identifiers(builder: x509.CertificateBuilder, key: Key, issuer_key: Key) -> x509.CertificateBuilder:
    return builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
    )


def make_ca(
    subject: x509.Name, key: Key, *, issuer: Issued | None = None,
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
) -> Issued:
    """A root CA (self-signed) or, with ``issuer``, an intermediate CA."""
    signer_key = issuer.key if issuer else key
    builder = _builder(subject, issuer.cert.subject if issuer else subject, key,
                       _validity(not_before, not_after, 3650))
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(_key_usage(ca=True), critical=True)
    cert = _identifiers(builder, key, signer_key).sign(signer_key, hashes.SHA256())
    return Issued(cert, key, (issuer.cert, *issuer.chain) if issuer else ())


def _end_entity(
    ca: Issued, subject: x509.Name, key: Key, usages: list[x509.ObjectIdentifier],
    validity: tuple[datetime.datetime, datetime.datetime],
    extra: Sequence[x509.ExtensionType] = (),
) -> Issued:
    builder = _builder(subject, ca.cert.subject, key, validity)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    # keyEncipherment (RSA key transport) means nothing for an EC key: digitalSignature only
    encipher = not isinstance(key, ec.EllipticCurvePrivateKey)
    builder = builder.add_extension(_key_usage(sign=True, encipher=encipher), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    cert = _identifiers(builder, key, ca.key).sign(ca.key, hashes.SHA256())
    return Issued(cert, key, (ca.cert, *ca.chain))


def make_server_cert(
    ca: Issued, key: Key, *, hostnames: Sequence[str] = ("localhost",),
    addresses: Sequence[str] = ("127.0.0.1", "::1"),
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
) -> Issued:
    """A host certificate (serverAuth and clientAuth) for ``hostnames`` and ``addresses``."""
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    subject = person_name(hostnames[0], unit="Services")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _end_entity(ca, subject, key, usages, _validity(not_before, not_after, 825),
                       [x509.SubjectAlternativeName(names)])


def make_user_cert(
    ca: Issued, subject: x509.Name, key: Key, *,
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
) -> Issued:
    """A user (end-entity) certificate for client authentication."""
    return _end_entity(ca, subject, key, [ExtendedKeyUsageOID.CLIENT_AUTH],
                       _validity(not_before, not_after, 365))


def make_proxy(
    issuer: Issued, key: Key, *, policy: str = POLICY_INHERIT_ALL, path_length: int | None = None,
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
) -> Issued:
    """An RFC 3820 proxy signed by ``issuer`` (a user certificate or another proxy).

    Its subject is the issuer's subject plus one ``CN=<serial number>`` RDN, as
    ``grid-proxy-init`` makes it; ProxyCertInfo is critical; no basicConstraints.
    """
    serial = secrets.randbits(31) | (1 << 30)
    subject = x509.Name([*issuer.cert.subject.rdns,
                         x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])])
    start = not_before if not_before is not None else _now() - datetime.timedelta(minutes=5)
    end = not_after if not_after is not None else start + datetime.timedelta(hours=12)
    end = min(end, issuer.cert.not_valid_after_utc) if not_after is None else end
    builder = _builder(subject, issuer.cert.subject, key, (start, end), serial)
    builder = builder.add_extension(
        x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info_der(policy, path_length)),
        critical=True,
    )
    builder = builder.add_extension(_key_usage(sign=True, encipher=True), critical=True)
    cert = builder.sign(issuer.key, hashes.SHA256())
    return Issued(cert, key, (issuer.cert, *issuer.chain))


def make_crl(
    ca: Issued, revoked_serials: Iterable[int] = (), *, number: int = 1,
    last_update: datetime.datetime | None = None, next_update: datetime.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL of ``ca`` revoking ``revoked_serials`` (valid 30 days by default)."""
    start = last_update if last_update is not None else _now() - datetime.timedelta(hours=1)
    end = next_update if next_update is not None else start + datetime.timedelta(days=30)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(start)
        .next_update(end)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(start).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` atomically (temporary name, then rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_certs(path: Path, *certs: x509.Certificate) -> Path:
    """PEM certificates, one after the other."""
    return write_file(path, b"".join(_pem(cert) for cert in certs))


def write_key(path: Path, key: Key) -> Path:
    """An unencrypted PEM private key, mode 0600."""
    return write_file(path, _key_pem(key), 0o600)


def write_proxy(path: Path, proxy: Issued) -> Path:
    """A proxy file as ``grid-proxy-init`` writes it: certificate, key, issuing
    certificates down to the user's (CA certificates left out), mode 0600."""
    issuers = []
    for cert in proxy.chain:
        issuers.append(cert)
        if not _is_proxy_cert(cert):
            break
    data = _pem(proxy.cert) + _key_pem(proxy.key) + b"".join(_pem(cert) for cert in issuers)
    return write_file(path, data, 0o600)


def _is_proxy_cert(cert: x509.Certificate) -> bool:
    return any(extension.oid == PROXY_CERT_INFO_OID for extension in cert.extensions)


def signing_policy(ca_dn: str, namespace: str = SUBJECT_NAMESPACE) -> str:
    """A Globus EACL signing policy letting the CA ``ca_dn`` sign ``namespace``."""
    return (
        f"# Signing policy of {ca_dn} (gsitransfer test CA: test only)\n"
        f"access_id_CA      X509         '{ca_dn}'\n"
        "pos_rights        globus        CA:sign\n"
        f"cond_subjects     globus       '\"{namespace}\"'\n"
    )


def namespaces(ca_dn: str, namespace: str = SUBJECT_NAMESPACE) -> str:
    """IGTF namespaces letting the CA ``ca_dn`` sign ``namespace`` (a ``*`` wildcard pattern)."""
    pattern = "".join(".*" if char == "*" else "\\" + char if char in ".\\[](){}+?|^$" else char
                      for char in namespace)
    return (
        f"# Namespaces of {ca_dn} (gsitransfer test CA: test only)\n"
        f'TO Issuer "{ca_dn}" \\\n'
        f'  PERMIT Subject "{pattern}"\n'
    )


def install_ca(ca_dir: Path, ca: Issued, crl: x509.CertificateRevocationList | None,
               namespace: str = SUBJECT_NAMESPACE) -> str:
    """Put ``ca`` (and its CRL) in a trusted directory as ``<hash>.0`` / ``.r0`` /
    ``.signing_policy`` / ``.namespaces`` (letting it sign ``namespace``); return the hash."""
    digest = subject_hash(ca.cert.subject)
    write_certs(ca_dir / f"{digest}.0", ca.cert)
    write_file(ca_dir / f"{digest}.signing_policy", signing_policy(ca.dn, namespace).encode())
    write_file(ca_dir / f"{digest}.namespaces", namespaces(ca.dn, namespace).encode())
    if crl is not None:
        write_crl(ca_dir / f"{digest}.r0", crl)
    return digest


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> Path:
    """A PEM CRL, replaced atomically (a reloading server never reads half of it)."""
    return write_file(path, crl.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------------------
# The test PKI
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSpec:
    """A user to mint: ``name`` is the directory under ``users/`` and the key in ``TestPKI.users``."""

    name: str
    subject: x509.Name
    #: which CA issues it: "root", "intermediate" or "untrusted" (a CA not in ca_dir)
    ca: str = ROOT
    #: the user certificate expired a month ago (its proxies are then not made)
    expired: bool = False
    #: listed in its CA's CRL
    revoked: bool = False


def user_spec(name: str) -> UserSpec:
    """The plain user ``name``: ``/C=US/O=Grid Test/OU=People/CN=<name>``, root CA."""
    return UserSpec(name, person_name(name))


def rich_test_users() -> tuple[UserSpec, ...]:
    """The users the test suite relies on (see tests/tls/conftest.py)."""
    people = "People"
    return (
        UserSpec("alice", person_name("Alice Example")),
        UserSpec("bob", person_name("Bob Example")),
        UserSpec("carol", person_name("Carol Example", unit="Intermediate People"), ca=INTERMEDIATE),
        UserSpec("dave", make_name(
            [(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, ORGANIZATION)],
            [(NameOID.ORGANIZATIONAL_UNIT_NAME, people)],
            [(NameOID.USER_ID, "dave"), (NameOID.COMMON_NAME, "Dave Example")])),
        UserSpec("jose", person_name("José Müller")),
        UserSpec("odd", person_name("Odd/Name, Jr. +1 = \\x", unit="R/D, Labs")),
        UserSpec("expired", person_name("Expired User"), expired=True),
        UserSpec("revoked", person_name("Revoked User"), revoked=True),
        UserSpec("revoked-inter", person_name("Revoked Intermediate User", unit="Intermediate People"),
                 ca=INTERMEDIATE, revoked=True),
        UserSpec("mallory", make_name([(NameOID.COUNTRY_NAME, "XX")],
                                      [(NameOID.ORGANIZATION_NAME, "Untrusted Test")],
                                      [(NameOID.COMMON_NAME, "Mallory")]), ca=UNTRUSTED),
    )


@dataclass(frozen=True)
class CAFiles:
    """One CA of the test PKI."""

    label: str
    dn: str
    hash: str
    cert: Path
    key: Path
    #: its CRL (``<hash>.r0`` in ca_dir), None for the untrusted CA
    crl: Path | None


@dataclass(frozen=True)
class UserFiles:
    """One user of the test PKI; every proxy file is in grid-proxy-init format."""

    name: str
    #: one-line DN of the user certificate (what identity_from_chain returns for it and its proxies)
    dn: str
    #: one-line DN of the issuing CA
    issuer_dn: str
    #: label of the issuing CA: "root", "intermediate" or "untrusted"
    ca: str
    serial: int
    cert: Path
    key: Path
    expired: bool
    revoked: bool
    #: inheritAll proxy; None for an expired user (same below)
    proxy: Path | None = None
    #: Globus limited proxy
    limited_proxy: Path | None = None
    #: independent proxy: its own identity
    independent_proxy: Path | None = None
    #: one-line DN of the independent proxy (user DN + /CN=<serial>)
    independent_proxy_dn: str | None = None
    #: an inheritAll proxy signed by ``proxy``'s certificate
    proxy_of_proxy: Path | None = None
    #: an inheritAll proxy that expired yesterday (user certificate still valid)
    expired_proxy: Path | None = None


@dataclass(frozen=True)
class TestPKI:
    """Paths of a test PKI made by :func:`make_test_pki`."""

    __test__ = False  # not a pytest test class

    directory: Path
    #: Globus trusted directory (X509_CERT_DIR): <hash>.0, <hash>.r0, <hash>.signing_policy, <hash>.namespaces
    ca_dir: Path
    #: PEM bundle of the trusted CA certificates (root and intermediate)
    ca_file: Path
    root: CAFiles
    intermediate: CAFiles
    #: a CA that is not trusted (not in ca_dir nor ca_file)
    untrusted: CAFiles
    #: host certificate for localhost, 127.0.0.1, ::1 (issued by the root)
    server_cert: Path
    server_key: Path
    #: the same host key with a certificate that expired yesterday
    server_expired_cert: Path
    users: Mapping[str, UserFiles] = field(default_factory=dict)

    @property
    def crls(self) -> Mapping[str, Path]:
        """CRL path of each trusted CA, by label."""
        return {ca.label: ca.crl for ca in (self.root, self.intermediate) if ca.crl is not None}


def _user_files(
    directory: Path, spec: UserSpec, ca: Issued, keys: KeyPool, now: datetime.datetime
) -> UserFiles:
    folder = directory / "users" / spec.name
    key = keys.key("user", spec.name)
    if spec.expired:
        user = make_user_cert(ca, spec.subject, key, not_before=now - datetime.timedelta(days=400),
                              not_after=now - datetime.timedelta(days=30))
    else:
        user = make_user_cert(ca, spec.subject, key, not_before=now - datetime.timedelta(hours=1))
    files = dict(
        name=spec.name, dn=user.dn, issuer_dn=format_dn(ca.cert.subject), ca=spec.ca,
        serial=user.cert.serial_number, cert=write_certs(folder / "usercert.pem", user.cert),
        key=write_key(folder / "userkey.pem", key), expired=spec.expired, revoked=spec.revoked,
    )
    if not spec.expired:
        files.update(_proxy_files(folder, user, keys, now))
    return UserFiles(**files)  # type: ignore[arg-type]


def _proxy_files(folder: Path, user: Issued, keys: KeyPool, now: datetime.datetime) -> dict[str, object]:
    proxy_key = keys.key("proxy", folder.name)
    start = now - datetime.timedelta(minutes=5)
    proxy = make_proxy(user, proxy_key, not_before=start)
    independent = make_proxy(user, proxy_key, policy=POLICY_INDEPENDENT, not_before=start)
    expired = make_proxy(user, proxy_key, not_before=now - datetime.timedelta(days=2),
                         not_after=now - datetime.timedelta(days=1))
    return dict(
        proxy=write_proxy(folder / "proxy.pem", proxy),
        limited_proxy=write_proxy(folder / "proxy-limited.pem",
                                  make_proxy(user, proxy_key, policy=POLICY_LIMITED, not_before=start)),
        independent_proxy=write_proxy(folder / "proxy-independent.pem", independent),
        independent_proxy_dn=independent.dn,
        proxy_of_proxy=write_proxy(folder / "proxy-of-proxy.pem",
                                   make_proxy(proxy, keys.key("proxy2", folder.name), not_before=start)),
        expired_proxy=write_proxy(folder / "proxy-expired.pem", expired),
    )


def _ca_subject(common_name: str, unit: str | None = None, organization: str = ORGANIZATION,
                country: str = "US") -> x509.Name:
    rdns: list[list[tuple[x509.ObjectIdentifier, str]]] = [
        [(NameOID.COUNTRY_NAME, country)], [(NameOID.ORGANIZATION_NAME, organization)]]
    if unit:
        rdns.append([(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)])
    rdns.append([(NameOID.COMMON_NAME, common_name)])
    return make_name(*rdns)


def make_test_pki(
    directory: str | os.PathLike[str], *, users: Iterable[UserSpec | str] = ("alice", "bob"),
    key_size: int = 2048, share_keys: bool = False, server_key_type: str = "rsa",
    now: datetime.datetime | None = None,
) -> TestPKI:
    """Mint a whole test PKI under ``directory`` (created if needed).

    ``users`` are :class:`UserSpec` values or plain names (see :func:`user_spec`).
    With ``share_keys`` every user shares one key and every proxy another (fast
    for tests; harmless because nothing here is secret). ``server_key_type``
    ``"ec"`` gives the host certificate an ECDSA P-256 key (the CAs, users and
    proxies stay RSA ``key_size``). ``now`` mints it as if at that time (a PKI minted
    two days ago has expired proxies: see :func:`renew`). It is marked as a test CA
    (:data:`MARKER`): only such a directory is ever renewed.
    """
    if server_key_type not in SERVER_KEY_TYPES:
        raise TestCAError(f"unknown server key type {server_key_type!r} (choose one of: "
                          f"{', '.join(SERVER_KEY_TYPES)})")
    base = Path(directory)
    specs = [spec if isinstance(spec, UserSpec) else user_spec(spec) for spec in users]
    keys = KeyPool(key_size, shared_roles=("user", "proxy", "proxy2") if share_keys else (),
                   ec_roles=("server",) if server_key_type == "ec" else ())
    now = now if now is not None else _now()
    start = now - datetime.timedelta(hours=1)
    root = make_ca(_ca_subject("Grid Test Root CA"), keys.key("ca", ROOT), not_before=start)
    intermediate = make_ca(_ca_subject("Grid Test Intermediate CA", unit="Intermediate"),
                           keys.key("ca", INTERMEDIATE), issuer=root, not_before=start)
    untrusted = make_ca(_ca_subject("Untrusted Test CA", organization="Untrusted Test", country="XX"),
                        keys.key("ca", UNTRUSTED), not_before=start)
    cas = {ROOT: root, INTERMEDIATE: intermediate, UNTRUSTED: untrusted}
    users_files = {spec.name: _user_files(base, spec, cas[spec.ca], keys, now) for spec in specs}
    server_cert, server_key = _write_server_files(base, root, keys.key("server", "localhost"), now)
    ca_files = {
        label: _write_ca(base, label, ca, [u.serial for u in users_files.values() if u.ca == label and u.revoked],
                         now)
        for label, ca in cas.items()
    }
    write_file(base / MARKER, MARKER_TEXT.encode())
    write_certs(base / "ca-bundle.pem", root.cert, intermediate.cert)
    return TestPKI(
        directory=base, ca_dir=base / "ca", ca_file=base / "ca-bundle.pem",
        root=ca_files[ROOT], intermediate=ca_files[INTERMEDIATE], untrusted=ca_files[UNTRUSTED],
        server_cert=server_cert, server_key=server_key,
        server_expired_cert=base / "server" / "hostcert-expired.pem",
        users=MappingProxyType(users_files),
    )


def _write_ca(base: Path, label: str, ca: Issued, revoked: Sequence[int], now: datetime.datetime) -> CAFiles:
    digest = subject_hash(ca.cert.subject)
    if label == UNTRUSTED:
        cert = write_certs(base / "untrusted" / "ca.pem", ca.cert)
        key = write_key(base / "untrusted" / "ca.key", ca.key)
        return CAFiles(label, ca.dn, digest, cert, key, None)
    _private_dir(base)
    install_ca(base / "ca", ca, make_crl(ca, revoked, last_update=now - datetime.timedelta(hours=1)))
    return CAFiles(label, ca.dn, digest, base / "ca" / f"{digest}.0",
                   write_key(base / "private" / f"{digest}.key", ca.key), base / "ca" / f"{digest}.r0")


def _private_dir(base: Path) -> Path:
    private = base / "private"
    private.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    return private


# ---------------------------------------------------------------------------
# Working on an existing test PKI
# ---------------------------------------------------------------------------


class TestCAError(ValueError):
    """The test PKI on disk cannot be used as asked (one-line message)."""

    __test__ = False


def _load_ca(pki_dir: Path, digest: str) -> Issued:
    cert_path = pki_dir / "ca" / f"{digest}.0"
    key_path = pki_dir / "private" / f"{digest}.key"
    if not cert_path.exists() or not key_path.exists():
        raise TestCAError(f"no CA with hash {digest} (and its key) in {pki_dir}")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TestCAError(f"{key_path}: not an RSA key")
    return Issued(cert, key)


def revoke(pki_dir: str | os.PathLike[str], user: str) -> Path:
    """Add ``user``'s certificate to its CA's CRL (``ca/<hash>.r0``, re-signed); return that path.

    A running server sees it after a reload (SIGHUP).
    """
    base = Path(pki_dir)
    cert_path = base / "users" / user / "usercert.pem"
    if not cert_path.exists():
        raise TestCAError(f"no user {user!r} in {base} ({cert_path} is missing)")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    digest = subject_hash(cert.issuer)
    ca = _load_ca(base, digest)
    crl_path = base / "ca" / f"{digest}.r0"
    serials, number = {cert.serial_number}, 1
    if crl_path.exists():
        old = x509.load_pem_x509_crl(crl_path.read_bytes())
        serials |= {entry.serial_number for entry in old}
        number = _crl_number(old) + 1
    return write_crl(crl_path, make_crl(ca, serials, number=number))


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _root_hash(base: Path) -> str:
    for path in sorted((base / "ca").glob("*.0")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.issuer == cert.subject and (base / "private" / f"{path.stem}.key").exists():
            return path.stem
    raise TestCAError(f"no root CA with its key in {base}")


def add_user(pki_dir: str | os.PathLike[str], name: str) -> UserFiles:
    """Issue the plain user ``name`` (and its proxies) from the root CA of an existing test PKI."""
    base = Path(pki_dir)
    if (base / "users" / name).exists():
        raise TestCAError(f"user {name!r} already exists in {base} (to renew its proxy and "
                          f"certificate: --renew {name})")
    ca = _load_ca(base, _root_hash(base))
    return _user_files(base, user_spec(name), ca, KeyPool(), _now())


def reissue_server_cert(pki_dir: str | os.PathLike[str], key_type: str = "rsa") -> tuple[Path, Path]:
    """Replace ``server/hostcert.pem``, ``hostkey.pem`` (and ``hostcert-expired.pem``) of an
    existing test PKI with a new ``key_type`` key ("rsa" or "ec"), issued by its root CA.

    Returns (certificate, key). A running server picks them up on its next reload.
    """
    if key_type not in SERVER_KEY_TYPES:
        raise TestCAError(f"unknown server key type {key_type!r} (choose one of: {', '.join(SERVER_KEY_TYPES)})")
    base = Path(pki_dir)
    root = _load_ca(base, _root_hash(base))
    key = KeyPool(ec_roles=("server",) if key_type == "ec" else ()).key("server", "localhost")
    return _write_server_files(base, root, key, _now())


def _write_server_files(base: Path, root: Issued, key: Key, now: datetime.datetime) -> tuple[Path, Path]:
    server = make_server_cert(root, key, not_before=now - datetime.timedelta(hours=1))
    expired = make_server_cert(root, key, not_before=now - datetime.timedelta(days=30),
                               not_after=now - datetime.timedelta(days=1))
    # the key first: a reload between the two renames sees a mismatch and keeps the old context
    key_path = write_key(base / "server" / "hostkey.pem", key)
    write_certs(base / "server" / "hostcert-expired.pem", expired.cert)
    return write_certs(base / "server" / "hostcert.pem", server.cert), key_path


# ---------------------------------------------------------------------------
# make-test-ca
# ---------------------------------------------------------------------------

_USER_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_GENERATED = ("ca", "ca-bundle.pem", "private", "server", "users", "untrusted", MARKER)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make-test-ca",
        description="Make a TEST certificate authority in the Globus layout: trusted "
        "directory with CRLs and signing policies, a localhost server certificate, "
        "user certificates and RFC 3820 proxies. Never use it in production.",
    )
    parser.add_argument("--out", default="certs", metavar="DIR", help="output directory (default: certs)")
    parser.add_argument("--user", action="append", default=[], metavar="NAME",
                        help="make user NAME (repeatable; default: alice and bob for a new CA)")
    parser.add_argument("--revoke", action="append", default=[], metavar="USER",
                        help="revoke USER: re-issue its CA's CRL (repeatable)")
    parser.add_argument("--renew", action="append", default=[], metavar="USER",
                        help="re-issue USER's proxies (12 h) in place, and its certificate (same key) "
                        "when that expires within 30 days; the CAs are kept (repeatable)")
    parser.add_argument("--renew-all", action="store_true",
                        help="--renew every user (revoked ones skipped); also re-issue the server "
                        "certificate (same key) when it expires within 30 days and CRLs within 7")
    parser.add_argument("--renew-expiring", action="store_true",
                        help="as --renew-all, but only proxies that expire within an hour (what "
                        "scripts/serve runs at start); quiet when nothing needs it")
    parser.add_argument("--force", action="store_true", help="replace an existing test CA in DIR")
    parser.add_argument("--server-key-type", choices=SERVER_KEY_TYPES, default=None,
                        help="key of the localhost server certificate: rsa (RSA-2048, default) or "
                        "ec (ECDSA P-256); on an existing test CA, re-issues the server "
                        "certificate and key with that type")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``make-test-ca``: returns the exit status; errors are one line on stderr."""
    options = _parser().parse_args(argv)
    try:
        renewing = bool(options.renew or options.renew_all or options.renew_expiring)
        if renewing and options.force:
            raise TestCAError("--renew* keeps the test CA: it cannot go with --force")
        if renewing:
            _renew(Path(options.out), options.renew, options.renew_all, options.renew_expiring)
        _run(Path(options.out), options.user, options.revoke, options.force, options.server_key_type,
             renewing=renewing)
    except (TestCAError, OSError, ValueError) as error:
        print(f"make-test-ca: error: {_one_line(error)}", file=sys.stderr)
        return 1
    return 0


def describe_key(public_key: object) -> str:
    """``RSA-2048``, ``ECDSA secp256r1``."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA {public_key.curve.name}"
    return type(public_key).__name__


def _one_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split())


def _check_user_name(name: str) -> str:
    if not _USER_NAME.match(name):
        raise TestCAError(f"bad user name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def _renew(out: Path, users: list[str], every: bool, only_expiring: bool) -> None:
    if not (out / "ca").exists():
        raise TestCAError(f"no test CA in {out}/ to renew: make one first (make-test-ca --out {out})")
    if only_expiring and not is_test_pki(out):
        print(f"{out}/ does not hold a test CA made by make-test-ca: not renewing anything there")
        return
    renewed = renew(out, users) if users and not every else []
    if every or only_expiring:
        renewed += renew(out, None, only_expiring=not every)
    for item in renewed:
        print(f"renewed {item.what:<18} {item.path}  until {_when(item.not_after)}  ({item.note})")
    if not renewed and not only_expiring:
        print(f"{out}/: nothing to renew")


def _run(out: Path, users: list[str], revocations: list[str], force: bool,
         server_key_type: str | None = None, *, renewing: bool = False) -> None:
    for name in [*users, *revocations]:
        _check_user_name(name)
    exists = (out / "ca").exists()
    if force or not exists:
        for name in _GENERATED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        pki = make_test_pki(out, users=users or ("alice", "bob"), server_key_type=server_key_type or "rsa")
        _report_pki(pki)
    else:
        if server_key_type:
            cert, key = reissue_server_cert(out, server_key_type)
            public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
            print(f"  server certificate    {cert}  key {key}  ({describe_key(public)}, re-issued)")
        for name in users:
            _report_user(add_user(out, name))
        if not users and not revocations and not server_key_type and not renewing:
            print(f"{out}/ already holds a test CA: nothing to do (use --force to remake it)")
    for name in revocations:
        crl = revoke(out, name)
        print(f"revoked {name}: CRL {crl} re-issued; send SIGHUP to a running server to apply it")


def _report_pki(pki: TestPKI) -> None:
    print(f"made a TEST CA in {pki.directory}/ (test only: never trust it in production)")
    print(f"  trusted CA directory  {pki.ca_dir}  (X509_CERT_DIR, --ca-dir)")
    print(f"  CA bundle             {pki.ca_file}  (--ca-file)")
    for ca in (pki.root, pki.intermediate):
        print(f"  {ca.label + ' CA':<21} {ca.dn}  ({ca.hash}.0, CRL {ca.hash}.r0)")
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    print(f"  server certificate    {pki.server_cert}  key {pki.server_key}  "
          f"(localhost, 127.0.0.1, ::1; {describe_key(cert.public_key())})")
    for user in pki.users.values():
        _report_user(user)


def _report_user(user: UserFiles) -> None:
    print(f"  user {user.name:<16} {user.dn}")
    print(f"  {'':<21} {user.cert.parent}/ usercert.pem userkey.pem proxy.pem (+ limited, independent, ...)")


# ---------------------------------------------------------------------------
# Renewal
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Renewed:
    """One file re-issued by :func:`renew`."""

    path: Path
    #: "proxies", "user certificate", "server certificate" or "CRL"
    what: str
    #: when the new file expires (a CRL: its next update)
    not_after: datetime.datetime
    note: str = ""


def is_test_pki(pki_dir: str | os.PathLike[str]) -> bool:
    """Whether ``pki_dir`` was made by :func:`make_test_pki` (it holds :data:`MARKER`).

    A directory made before the marker existed counts when its root CA is the
    test root (``/C=US/O=Grid Test/CN=Grid Test Root CA``) with its key in ``private/``.
    """
    base = Path(pki_dir)
    if (base / MARKER).is_file():
        return True
    try:
        digest = _root_hash(base)
    except (TestCAError, OSError, ValueError):
        return False
    cert = x509.load_pem_x509_certificate((base / "ca" / f"{digest}.0").read_bytes())
    return cert.subject == _ca_subject("Grid Test Root CA")


def renew(
    pki_dir: str | os.PathLike[str], users: Iterable[str] | None = None, *,
    only_expiring: bool = False, now: datetime.datetime | None = None,
) -> list[Renewed]:
    """Re-issue, in place, what a test PKI needs to keep working; the CAs are kept.

    ``users`` (None: every user under ``users/``; a revoked one is skipped) get new
    proxy files (all of them, new proxy keys, 12 hours) -- with ``only_expiring``
    only when ``proxy.pem`` expires within :data:`PROXY_MARGIN` -- and a new user
    certificate (same key, subject and CA, new serial, 365 days) when theirs expires
    within :data:`CERT_MARGIN`. With ``users=None`` the server certificate (same
    key) is re-issued when it expires within :data:`CERT_MARGIN`, and each CRL
    (same revoked serials, next number) when it expires within :data:`CRL_MARGIN`.
    Refuses a directory :func:`is_test_pki` does not recognise, a named user who is
    revoked, and an expired CA.
    """
    base = Path(pki_dir)
    now = now if now is not None else _now()
    if not is_test_pki(base):
        raise TestCAError(f"{base} does not hold a test CA made by make-test-ca: nothing renewed")
    renewed: list[Renewed] = []
    every = users is None
    names = sorted(path.name for path in (base / "users").iterdir() if path.is_dir()) \
        if every and (base / "users").is_dir() else list(users or ())
    for name in names:
        renewed += _renew_user(base, name, only_expiring=only_expiring, skip_revoked=every, now=now)
    if every:
        renewed += _renew_server(base, now)
        renewed += _renew_crls(base, now)
    return renewed


def _signer(base: Path, cert: x509.Certificate, now: datetime.datetime) -> Issued:
    """The CA (with its key) that issued ``cert``: a trusted one in ``ca/``, or the untrusted one."""
    digest = subject_hash(cert.issuer)
    untrusted = base / "untrusted" / "ca.pem"
    if not (base / "ca" / f"{digest}.0").exists() and untrusted.exists():
        ca_cert = x509.load_pem_x509_certificate(untrusted.read_bytes())
        ca_key = serialization.load_pem_private_key((base / "untrusted" / "ca.key").read_bytes(), None)
        if ca_cert.subject != cert.issuer or not isinstance(ca_key, rsa.RSAPrivateKey):
            raise TestCAError(f"no CA for {format_dn(cert.issuer)} in {base}")
        ca = Issued(ca_cert, ca_key)
    else:
        ca = _load_ca(base, digest)
    if ca.cert.not_valid_after_utc <= now:
        raise TestCAError(f"the test CA {ca.dn} expired on {_when(ca.cert.not_valid_after_utc)}: "
                          "make a new one with --force")
    if ca.cert.issuer != ca.cert.subject:
        parent = _signer(base, ca.cert, now)
        ca = Issued(ca.cert, ca.key, (parent.cert, *parent.chain))
    return ca


def _is_revoked(base: Path, cert: x509.Certificate) -> bool:
    crl_path = base / "ca" / f"{subject_hash(cert.issuer)}.r0"
    if not crl_path.exists():
        return False
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def _renew_user(base: Path, name: str, *, only_expiring: bool, skip_revoked: bool,
                now: datetime.datetime) -> list[Renewed]:
    folder = base / "users" / _check_user_name(name)
    cert_path, key_path = folder / "usercert.pem", folder / "userkey.pem"
    if not cert_path.exists() or not key_path.exists():
        raise TestCAError(f"no user {name!r} in {base} ({cert_path} or {key_path} is missing)")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if _is_revoked(base, cert):
        if skip_revoked:
            return []
        raise TestCAError(f"user {name!r} is revoked: not renewing it (make a new user with --user)")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TestCAError(f"{key_path}: not an RSA or EC key")
    ca = _signer(base, cert, now)
    renewed: list[Renewed] = []
    if cert.not_valid_after_utc - now < CERT_MARGIN:
        user = make_user_cert(ca, cert.subject, key, not_before=now - datetime.timedelta(hours=1))
        write_certs(cert_path, user.cert)
        renewed.append(Renewed(cert_path, "user certificate", user.cert.not_valid_after_utc, "same key"))
    else:
        user = Issued(cert, key, (ca.cert, *ca.chain))
    if renewed or not only_expiring or _expires_within(folder / "proxy.pem", now, PROXY_MARGIN):
        files = _proxy_files(folder, user, KeyPool(), now)
        proxy = files["proxy"]
        assert isinstance(proxy, Path)
        not_after = x509.load_pem_x509_certificates(proxy.read_bytes())[0].not_valid_after_utc
        renewed.append(Renewed(proxy, "proxies", not_after, "+ limited, independent, ..."))
    return renewed


def _expires_within(path: Path, now: datetime.datetime, margin: datetime.timedelta) -> bool:
    """Whether the first certificate in ``path`` expires within ``margin`` (or the file is missing)."""
    if not path.exists():
        return True
    return x509.load_pem_x509_certificates(path.read_bytes())[0].not_valid_after_utc - now < margin


def _renew_server(base: Path, now: datetime.datetime) -> list[Renewed]:
    cert_path, key_path = base / "server" / "hostcert.pem", base / "server" / "hostkey.pem"
    if not cert_path.exists() or not key_path.exists() or not _expires_within(cert_path, now, CERT_MARGIN):
        return []
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TestCAError(f"{key_path}: not an RSA or EC key")
    path, _ = _write_server_files(base, _signer(base, cert, now), key, now)
    new = x509.load_pem_x509_certificate(path.read_bytes())
    return [Renewed(path, "server certificate", new.not_valid_after_utc, "same key")]


def _renew_crls(base: Path, now: datetime.datetime) -> list[Renewed]:
    renewed = []
    for crl_path in sorted((base / "ca").glob("*.r0")):
        old = x509.load_pem_x509_crl(crl_path.read_bytes())
        next_update = old.next_update_utc
        if next_update is not None and next_update - now >= CRL_MARGIN:
            continue
        ca = _load_ca(base, crl_path.stem)
        crl = make_crl(ca, [entry.serial_number for entry in old], number=_crl_number(old) + 1,
                       last_update=now - datetime.timedelta(hours=1))
        write_crl(crl_path, crl)
        assert crl.next_update_utc is not None
        renewed.append(Renewed(crl_path, "CRL", crl.next_update_utc, "same revocations"))
    return renewed


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
