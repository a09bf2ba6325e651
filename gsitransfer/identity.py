"""The ``id_token`` value handed to every handler callback.

An :class:`IdToken` is immutable. ``dn`` is the authenticated subject in
OpenSSL's one-line slash form (``/C=US/O=Grid Test/CN=Alice``), or ``None``
for an anonymous client. On a TLS listener the other fields describe the
verified client chain; with a grid-mapfile ``username`` is the mapped account.

It also owns how an identity is derived from a verified certificate chain:

* :func:`format_dn` -- a ``cryptography`` name in OpenSSL's one-line form,
  byte for byte what ``openssl x509 -noout -subject -nameopt compat`` prints;
* :func:`is_proxy`, :func:`proxy_policy`, :func:`proxy_cert_info` -- RFC 3820
  proxy certificates (the ProxyCertInfo extension decoded here);
* :func:`identity_from_chain` -- the chain walk ``grid-proxy-info -identity``
  does: from the leaf, the first certificate that is not a proxy, unless an
  independent proxy (its own identity) comes first.

This module imports neither OpenSSL nor Twisted; only ``cryptography``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Sequence

from cryptography import x509


@dataclass(frozen=True)
class IdToken:
    """Who is asking: the seed's ``id_token``."""

    dn: str | None
    #: verified chain, leaf first (``cryptography`` certificates); empty on plain HTTP
    chain: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    #: True when the client authenticated with a (RFC 3820) proxy certificate
    proxy: bool = False
    #: True when any proxy in the chain is a limited proxy
    limited_proxy: bool = False
    #: one-line DN of the end-entity certificate's issuer
    issuer: str | None = None
    #: not-after of the end-entity certificate (timezone-aware UTC)
    not_after: datetime.datetime | None = None
    #: first local account mapped by the grid-mapfile, when one is configured
    username: str | None = None

    @cached_property
    def person(self) -> str | None:
        """The DN per-identity limits and transfer ownership count against.

        The end-entity certificate the chain comes from (the first certificate
        from the leaf that is not a proxy), so every proxy of one user,
        independent ones included, is that user, as dCache maps a proxy to its
        end-entity certificate's DN for authorization. ``dn`` when there is no
        chain (plain HTTP identities, tokens built by hand).
        """
        for cert in self.chain:
            if proxy_cert_info(cert) is None:
                return format_dn(cert.subject)
        return self.dn

    @property
    def anonymous(self) -> bool:
        """True when no identity was established."""
        return self.dn is None

    def with_username(self, username: str | None) -> "IdToken":
        """A copy of this token carrying the grid-mapfile account."""
        return replace(self, username=username)


ANONYMOUS = IdToken(dn=None)


# ---------------------------------------------------------------------------
# The one-line DN (what ``openssl x509 -noout -subject -nameopt compat`` prints)
# ---------------------------------------------------------------------------
#
# Rules, as OpenSSL's ``X509_NAME_oneline`` applies them to the content octets
# of each attribute value (so a BMPString prints as its raw UTF-16 bytes):
#
# * every RDN starts with ``/``; further attributes of a multi-valued RDN are
#   joined with ``+``, in DER order (the order of the encoded SET);
# * the attribute type is OpenSSL's short name (``CN``, ``emailAddress``,
#   ``UID``), or the dotted OID when OpenSSL has no name for it;
# * ``/`` and ``+`` inside a value are escaped with a backslash; ``,``, ``=``
#   and ``\`` are not;
# * bytes below 0x20 or above 0x7E are written ``\xHH`` (upper-case hex).

#: OpenSSL 3.0's short names for the attribute types found in names.
_SHORT_NAMES: dict[str, str] = {
    **{f"2.5.4.{n}": sn for n, sn in {
        3: "CN", 4: "SN", 5: "serialNumber", 6: "C", 7: "L", 8: "ST", 9: "street",
        10: "O", 11: "OU", 12: "title", 13: "description", 14: "searchGuide",
        15: "businessCategory", 16: "postalAddress", 17: "postalCode",
        18: "postOfficeBox", 19: "physicalDeliveryOfficeName", 20: "telephoneNumber",
        21: "telexNumber", 22: "teletexTerminalIdentifier",
        23: "facsimileTelephoneNumber", 24: "x121Address",
        25: "internationaliSDNNumber", 26: "registeredAddress",
        27: "destinationIndicator", 28: "preferredDeliveryMethod",
        29: "presentationAddress", 30: "supportedApplicationContext", 31: "member",
        32: "owner", 33: "roleOccupant", 34: "seeAlso", 35: "userPassword",
        36: "userCertificate", 37: "cACertificate", 38: "authorityRevocationList",
        39: "certificateRevocationList", 40: "crossCertificatePair", 41: "name",
        42: "GN", 43: "initials", 44: "generationQualifier",
        45: "x500UniqueIdentifier", 46: "dnQualifier", 47: "enhancedSearchGuide",
        48: "protocolInformation", 49: "distinguishedName", 50: "uniqueMember",
        51: "houseIdentifier", 52: "supportedAlgorithms", 53: "deltaRevocationList",
        54: "dmdName", 65: "pseudonym", 72: "role", 97: "organizationIdentifier",
        98: "c3", 99: "n3", 100: "dnsName",
    }.items()},
    **{f"0.9.2342.19200300.100.1.{n}": sn for n, sn in {
        1: "UID", 2: "textEncodedORAddress", 3: "mail", 4: "info",
        5: "favouriteDrink", 6: "roomNumber", 7: "photo", 8: "userClass", 9: "host",
        10: "manager", 11: "documentIdentifier", 12: "documentTitle",
        13: "documentVersion", 14: "documentAuthor", 15: "documentLocation",
        20: "homeTelephoneNumber", 21: "secretary", 22: "otherMailbox",
        23: "lastModifiedTime", 24: "lastModifiedBy", 25: "DC", 26: "aRecord",
        27: "pilotAttributeType27", 28: "mXRecord", 29: "nSRecord", 30: "sOARecord",
        31: "cNAMERecord", 37: "associatedDomain", 38: "associatedName",
        39: "homePostalAddress", 40: "personalTitle", 41: "mobileTelephoneNumber",
        42: "pagerTelephoneNumber", 43: "friendlyCountryName", 44: "uid",
        45: "organizationalStatus", 46: "janetMailbox", 47: "mailPreferenceOption",
        48: "buildingName", 49: "dSAQuality", 50: "singleLevelQuality",
        51: "subtreeMinimumQuality", 52: "subtreeMaximumQuality",
        53: "personalSignature", 54: "dITRedirect", 55: "audio",
        56: "documentPublisher",
    }.items()},
    **{f"1.2.840.113549.1.9.{n}": sn for n, sn in {
        1: "emailAddress", 2: "unstructuredName", 3: "contentType",
        4: "messageDigest", 5: "signingTime", 6: "countersignature",
        7: "challengePassword", 8: "unstructuredAddress",
        9: "extendedCertificateAttributes", 14: "extReq", 15: "SMIME-CAPS",
        16: "SMIME", 20: "friendlyName", 21: "localKeyID",
    }.items()},
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}

_TAG_BIT_STRING = 0x03
_TAG_OID = 0x06
_TAG_SEQUENCE = 0x30
_TAG_SET = 0x31


@dataclass(frozen=True)
class NameEntry:
    """One attribute of a name, as it is encoded: what OpenSSL works from."""

    #: dotted attribute type, e.g. ``2.5.4.3``
    oid: str
    #: ASN.1 tag of the value (12 UTF8String, 19 PrintableString, 30 BMPString, ...)
    tag: int
    #: the value's content octets, exactly as encoded
    value: bytes


def name_rdns(name: x509.Name) -> tuple[tuple[NameEntry, ...], ...]:
    """The RDNs of ``name`` in DER order, each a tuple of its entries in DER order."""
    rdns = []
    for rdn_tag, rdn in _der_items(_der_single(name.public_bytes(), _TAG_SEQUENCE)):
        _expect(rdn_tag, _TAG_SET)
        rdns.append(tuple(_name_entry(tag, body) for tag, body in _der_items(rdn)))
    return tuple(rdns)


def _name_entry(tag: int, body: bytes) -> NameEntry:
    _expect(tag, _TAG_SEQUENCE)
    (oid_tag, oid), (value_tag, value) = _der_items(body)
    _expect(oid_tag, _TAG_OID)
    return NameEntry(oid=decode_oid(oid), tag=value_tag, value=value)


def attribute_short_name(oid: str) -> str:
    """OpenSSL's short name for an attribute type, or the dotted OID."""
    return _SHORT_NAMES.get(oid, oid)


def format_dn(name: x509.Name) -> str:
    """``name`` in OpenSSL's one-line slash form (``/C=US/O=Grid Test/CN=Alice``)."""
    parts: list[str] = []
    for rdn in name_rdns(name):
        for position, entry in enumerate(rdn):
            separator = "/" if position == 0 else "+"
            label = attribute_short_name(entry.oid)
            parts.append(f"{separator}{label}={_escape_value(_printed_octets(entry))}")
    return "".join(parts)


def _printed_octets(entry: NameEntry) -> bytes:
    """The octets OpenSSL prints: a BIT STRING without its unused-bits octet."""
    if entry.tag == _TAG_BIT_STRING and entry.value:
        return entry.value[1:]
    return entry.value


def _escape_value(octets: bytes) -> str:
    out: list[str] = []
    for octet in octets:
        if octet < 0x20 or octet > 0x7E:
            out.append(f"\\x{octet:02X}")
        elif octet in (0x2F, 0x2B):  # "/" and "+"
            out.append("\\" + chr(octet))
        else:
            out.append(chr(octet))
    return "".join(out)


# ---------------------------------------------------------------------------
# RFC 3820 proxy certificates
# ---------------------------------------------------------------------------

#: id-pe-proxyCertInfo (RFC 3820)
PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
#: the proxy inherits all rights of its issuer
POLICY_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
#: the proxy inherits no rights: it is an identity of its own
POLICY_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
#: Globus limited proxy (``grid-proxy-init -limited``)
POLICY_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"


@dataclass(frozen=True)
class ProxyCertInfo:
    """The decoded ProxyCertInfo extension of a proxy certificate."""

    #: pCPathLenConstraint: how many proxies may follow, or None for no limit
    path_length: int | None
    #: the policy language OID, dotted
    policy_language: str
    #: the policy itself (content of the OCTET STRING), when present
    policy: bytes | None = None


def proxy_cert_info(cert: x509.Certificate) -> ProxyCertInfo | None:
    """The certificate's ProxyCertInfo, or None when it is not an RFC 3820 proxy.

    Raises ValueError when the extension is present but malformed.
    """
    try:
        extension = cert.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    der = value.value if isinstance(value, x509.UnrecognizedExtension) else value.public_bytes()
    return parse_proxy_cert_info(der)


def parse_proxy_cert_info(der: bytes) -> ProxyCertInfo:
    """Decode the DER of a ProxyCertInfo extension value (RFC 3820 section 3.8).

    ::

        ProxyCertInfo ::= SEQUENCE {
            pCPathLenConstraint  INTEGER (0..MAX) OPTIONAL,
            proxyPolicy          ProxyPolicy }
        ProxyPolicy ::= SEQUENCE {
            policyLanguage       OBJECT IDENTIFIER,
            policy               OCTET STRING OPTIONAL }
    """
    items = _der_items(_der_single(der, _TAG_SEQUENCE))
    path_length = None
    if items and items[0][0] == 0x02:  # INTEGER
        path_length = _decode_unsigned(items[0][1])
        items = items[1:]
    if len(items) != 1 or items[0][0] != _TAG_SEQUENCE:
        raise ValueError("ProxyCertInfo: expected one ProxyPolicy")
    policy_items = _der_items(items[0][1])
    if not 1 <= len(policy_items) <= 2 or policy_items[0][0] != _TAG_OID:
        raise ValueError("ProxyCertInfo: malformed ProxyPolicy")
    policy = None
    if len(policy_items) == 2:
        _expect(policy_items[1][0], 0x04)  # OCTET STRING
        policy = policy_items[1][1]
    return ProxyCertInfo(path_length, decode_oid(policy_items[0][1]), policy)


def is_proxy(cert: x509.Certificate) -> bool:
    """True when ``cert`` carries the RFC 3820 ProxyCertInfo extension."""
    try:
        cert.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    except x509.ExtensionNotFound:
        return False
    return True


def proxy_policy(cert: x509.Certificate) -> str | None:
    """The proxy's policy language OID (see the ``POLICY_*`` constants), or None."""
    info = proxy_cert_info(cert)
    return info.policy_language if info is not None else None


# ---------------------------------------------------------------------------
# Chain -> identity
# ---------------------------------------------------------------------------


def identity_cert_index(chain: Sequence[x509.Certificate]) -> int:
    """Index in ``chain`` (leaf first) of the certificate that names the client.

    Walking from the leaf: the first certificate that is not a proxy, or an
    independent proxy (which is its own identity). Raises ValueError when the
    chain is empty or holds only delegating proxies.
    """
    for index, cert in enumerate(chain):
        info = proxy_cert_info(cert)
        if info is None or info.policy_language == POLICY_INDEPENDENT:
            return index
    raise ValueError("the certificate chain has no end-entity certificate")


def identity_from_chain(chain: Sequence[x509.Certificate]) -> IdToken:
    """The :class:`IdToken` of a verified chain (leaf first), as ``grid-proxy-info -identity``."""
    certs = tuple(chain)
    index = identity_cert_index(certs)
    subject = certs[index]
    return IdToken(
        dn=format_dn(subject.subject),
        chain=certs,
        proxy=is_proxy(certs[0]),
        limited_proxy=any(proxy_policy(cert) == POLICY_LIMITED for cert in certs),
        issuer=format_dn(subject.issuer),
        not_after=subject.not_valid_after_utc,
    )


# ---------------------------------------------------------------------------
# A minimal DER reader (definite lengths, low tag numbers: all X.509 needs here)
# ---------------------------------------------------------------------------


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) pairs of the DER elements concatenated in ``data``."""
    items = []
    position = 0
    while position < len(data):
        tag, content, position = _der_read(data, position)
        items.append((tag, content))
    return items


def _der_single(data: bytes, tag: int) -> bytes:
    """The content of ``data``, which must be exactly one element with ``tag``."""
    found, content, end = _der_read(data, 0)
    _expect(found, tag)
    if end != len(data):
        raise ValueError("DER: trailing data")
    return content


def _der_read(data: bytes, position: int) -> tuple[int, bytes, int]:
    if position + 2 > len(data):
        raise ValueError("DER: truncated element")
    tag, length = data[position], data[position + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER: high tag numbers are not supported")
    position += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or position + count > len(data):
            raise ValueError("DER: bad length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    end = position + length
    if end > len(data):
        raise ValueError("DER: truncated element")
    return tag, data[position:end], end


def _expect(found: int, wanted: int) -> None:
    if found != wanted:
        raise ValueError(f"DER: expected tag 0x{wanted:02x}, found 0x{found:02x}")


def _decode_unsigned(content: bytes) -> int:
    if not content or content[0] & 0x80:
        raise ValueError("DER: expected a non-negative INTEGER")
    return int.from_bytes(content, "big")


def decode_oid(content: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    arcs: list[int] = []
    value = 0
    for octet in content:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or content[-1] & 0x80:
        raise ValueError("DER: malformed OBJECT IDENTIFIER")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))
