"""Digests of file bodies: the header forms (RFC 9530, RFC 3230, RFC 1864, tus), hashers, formats.

Pure: no I/O but :func:`digest_file` (which reads a descriptor it is given),
no Twisted. The web layer uses it to verify a body against the digests its
request names (:func:`expected_digests`, :class:`BodyHashers`) and to answer
``Want-Repr-Digest`` and ``Want-Digest`` (:func:`wanted_digests`,
:func:`repr_digest_field`, :func:`digest_field`).

Algorithms (:data:`ALGORITHMS`), by their canonical names here: ``md5``,
``sha1`` (tus ``Upload-Checksum`` only), ``sha-256``, ``sha-512`` and
``adler32``. A digest is kept as lowercase hex of its bytes (adler32: its
4 bytes big-endian, i.e. the usual 8 hex digits).

Header rules:

* ``Content-Digest`` / ``Repr-Digest`` (RFC 9530): a structured-field
  dictionary (RFC 8941) whose values are byte sequences ``:<base64>:``;
  ``md5``, ``sha-256``, ``sha-512`` are checked (``adler``/``adler32`` too,
  as WLCG uses them); other keys are ignored, whatever their value.
* ``Digest`` (RFC 3230): ``alg=value`` items, comma-separated, algorithm
  names case-insensitive; ``md5``, ``sha-256``, ``sha-512`` base64
  (``md5`` also as 32 hex digits, as old DPM sent it), ``adler32`` 8 hex
  digits.
* ``Content-MD5`` (RFC 1864): base64 of the 16 bytes.
* ``Upload-Checksum`` (tus checksum extension): ``<md5|sha1|sha256> <base64>``.

A malformed value of a checked algorithm, a malformed field, or digest
fields none of whose algorithms is supported raise :class:`DigestError`
(the web layer answers 400). ``Want-*`` fields that do not parse are
ignored (:func:`wanted_digests` returns nothing for them): a download is
never refused for them.

Every parser here is linear in its input: one left-to-right pass with
``str`` methods that scan from a position (``find``, slices of one item);
no regular expression, nothing that backtracks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from .errors import ChecksumMismatch

MD5, SHA1, SHA256, SHA512, ADLER32 = "md5", "sha1", "sha-256", "sha-512", "adler32"
#: every algorithm this module hashes
ALGORITHMS = (SHA512, SHA256, MD5, ADLER32, SHA1)
#: what ``Repr-Digest`` is served with (RFC 9530 names)
REPR_ALGORITHMS = (SHA512, SHA256, MD5)
#: what ``Digest`` is served with (RFC 3230 names, lower case)
RFC3230_ALGORITHMS = (SHA512, SHA256, MD5, ADLER32)
#: digest bytes per algorithm
SIZES: Mapping[str, int] = MappingProxyType({MD5: 16, SHA1: 20, SHA256: 32, SHA512: 64, ADLER32: 4})

#: RFC 9530 dictionary keys checked on an upload (lower case by the grammar) -> algorithm
_SF_NAMES: Mapping[str, str] = MappingProxyType(
    {"md5": MD5, "sha-256": SHA256, "sha-512": SHA512, "adler": ADLER32, "adler32": ADLER32}
)
#: RFC 3230 names (compared lower-cased) -> algorithm
_RFC3230_NAMES: Mapping[str, str] = MappingProxyType({"md5": MD5, "sha-256": SHA256, "sha-512": SHA512, "adler32": ADLER32})
#: tus checksum extension names -> algorithm
TUS_NAMES: Mapping[str, str] = MappingProxyType({"md5": MD5, "sha1": SHA1, "sha256": SHA256})

_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_HEX = frozenset("0123456789abcdefABCDEF")
_LCALPHA = frozenset("abcdefghijklmnopqrstuvwxyz")
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.*")
#: an RFC 9110 token's characters
_TCHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
#: an RFC 8941 token's characters after its first
_SF_TOKEN_CHARS = _TCHARS | frozenset(":/")
_DIGITS = frozenset("0123456789")


class DigestError(ValueError):
    """A digest field that cannot be used: the message is one line for the client (400)."""


class NoUsableDigest(DigestError):
    """Digest fields were sent, but none names an algorithm checked here."""


#: what an upload may name, by preference (RFC 9530 ``Want-Content-Digest``), told with a NoUsableDigest
WANT_CONTENT_DIGEST = b"sha-256=10, sha-512=9, md5=1"


# -- hashers ----------------------------------------------------------------------------


class Hasher(Protocol):
    """What every running digest offers (``hashlib``'s objects and :class:`Adler32`)."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class Adler32:
    """A running Adler-32 (RFC 1950) with ``hashlib``'s ``update``/``digest``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 1

    def update(self, data: bytes, /) -> None:
        self.value = zlib.adler32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def new_hasher(algorithm: str) -> Hasher:
    """A fresh running digest for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm == ADLER32:
        return Adler32()
    if algorithm == SHA1:
        return hashlib.sha1(usedforsecurity=False)
    if algorithm == MD5:
        return hashlib.md5(usedforsecurity=False)
    if algorithm == SHA256:
        return hashlib.sha256()
    if algorithm == SHA512:
        return hashlib.sha512()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


@dataclass(frozen=True)
class Expected:
    """One digest a request names for its body."""

    algorithm: str
    #: the digest's bytes
    value: bytes
    #: the field it came in (``Content-Digest``, ``Digest``, ...), for the refusal's reason
    field: str


class BodyHashers:
    """The digests one request's body must have: fed like the MD5 (same thread, same chunks).

    One hasher per algorithm, however many fields name it. Made only when
    the request names a digest (:func:`body_hashers`), so a body without
    digest fields costs nothing here.
    """

    __slots__ = ("expected", "_hashers")

    def __init__(self, expected: Sequence[Expected]) -> None:
        self.expected = tuple(expected)
        self._hashers = {name: new_hasher(name) for name in dict.fromkeys(item.algorithm for item in self.expected)}

    def update(self, data: bytes) -> None:
        """Add ``data`` (the next bytes of the body) to every digest."""
        for hasher in self._hashers.values():
            hasher.update(data)

    def digests(self) -> dict[str, str]:
        """Each algorithm's digest of what was fed, lowercase hex."""
        return {name: hasher.digest().hex() for name, hasher in self._hashers.items()}

    def mismatch(self) -> str | None:
        """The reason the body fails a named digest (the first that fails), or None."""
        actual = {name: hasher.digest() for name, hasher in self._hashers.items()}
        for item in self.expected:
            if actual[item.algorithm] != item.value:
                return (
                    f"checksum mismatch: {item.algorithm} of the body is "
                    f"{_shown(item.algorithm, actual[item.algorithm])}, "
                    f"{item.field} says {_shown(item.algorithm, item.value)}"
                )
        return None

    def check(self) -> None:
        """Raise ChecksumMismatch (422) unless the body has every named digest."""
        reason = self.mismatch()
        if reason is not None:
            raise ChecksumMismatch(reason)


def body_hashers(expected: Sequence[Expected]) -> BodyHashers | None:
    """The hashers for ``expected``, or None (no objects at all) when it is empty."""
    return BodyHashers(expected) if expected else None


def _shown(algorithm: str, value: bytes) -> str:
    return value.hex() if algorithm == ADLER32 else base64.b64encode(value).decode("ascii")


class Stopped(Exception):
    """:func:`digest_file` was told to stop (the server is shutting down)."""


def digest_file(
    fd: int, algorithms: Iterable[str], chunk: int = 1 << 20, stop: Callable[[], bool] | None = None
) -> dict[str, str]:
    """Every algorithm's digest of the whole file open on ``fd`` (read with ``pread`` from 0), hex.

    One pass over the file, whatever the number of algorithms. Blocking:
    call it off the reactor thread for anything but a small file. ``stop``
    is asked before each chunk; when it says yes, :class:`Stopped` is raised.
    """
    hashers = {name: new_hasher(name) for name in algorithms}
    offset = 0
    while True:
        if stop is not None and stop():
            raise Stopped(f"stopped after {offset} bytes")
        data = os.pread(fd, chunk, offset)
        if not data:
            break
        offset += len(data)
        for hasher in hashers.values():
            hasher.update(data)
    return {name: hasher.digest().hex() for name, hasher in hashers.items()}


# -- what a body must be: the request's digest fields ------------------------------------


Fields = Callable[[bytes], "Sequence[bytes] | None"]


def expected_digests(fields: Fields) -> list[Expected]:
    """The digests a request names for its body, from ``fields`` (``Headers.getRawHeaders``).

    Empty when no digest field was sent. Raises DigestError for a malformed
    field or value, and when digest fields were sent but none of their
    algorithms is supported here (the client asked for a check this server
    cannot make: refused rather than silently unchecked).
    """
    expected: list[Expected] = []
    sent: list[str] = []
    for name, label in ((b"content-digest", "Content-Digest"), (b"repr-digest", "Repr-Digest")):
        values = fields(name)
        if values:
            sent.append(label)
            expected += _sf_digests(_joined(values, label), label)
    values = fields(b"digest")
    if values:
        sent.append("Digest")
        expected += _rfc3230_digests(_joined(values, "Digest"))
    values = fields(b"content-md5")
    if values:
        sent.append("Content-MD5")
        expected.append(Expected(MD5, _content_md5(_joined(values, "Content-MD5")), "Content-MD5"))
    if sent and not expected:
        raise NoUsableDigest(
            f"no supported algorithm in {', '.join(sent)} (supported: md5, sha-256, sha-512, adler32)"
        )
    return expected


def _joined(values: Sequence[bytes], label: str) -> str:
    """A field's lines as one value (RFC 9110 §5.3), as text; a byte beyond ASCII is malformed."""
    try:
        return ", ".join(value.decode("ascii") for value in values)
    except UnicodeDecodeError:
        raise DigestError(f"malformed {label}: not ASCII") from None


def _sf_digests(text: str, label: str) -> list[Expected]:
    try:
        members = parse_dictionary(text)
    except ValueError as error:
        raise DigestError(f"malformed {label}: {error}") from None
    expected = []
    for key, value in members.items():
        algorithm = _SF_NAMES.get(key)
        if algorithm is None:
            continue  # RFC 9530 §2: an algorithm the recipient does not support is ignored
        if not isinstance(value, bytes) or len(value) != SIZES[algorithm]:
            raise DigestError(f"malformed {label}: {key} is not a {SIZES[algorithm]}-byte sequence")
        expected.append(Expected(algorithm, value, label))
    return expected


def _rfc3230_digests(text: str) -> list[Expected]:
    expected = []
    for item in text.split(","):
        item = item.strip(" \t")
        if not item:
            continue
        name, equals, value = item.partition("=")
        if not equals or not name or not set(name) <= _TCHARS:
            raise DigestError(f"malformed Digest: {_clip(item)}")
        algorithm = _RFC3230_NAMES.get(name.lower())
        if algorithm is None:
            continue
        expected.append(Expected(algorithm, _rfc3230_value(algorithm, value.strip(" \t")), "Digest"))
    return expected


def _rfc3230_value(algorithm: str, value: str) -> bytes:
    if algorithm == ADLER32:
        if len(value) != 8 or not set(value) <= _HEX:
            raise DigestError(f"malformed Digest: adler32 is not 8 hex digits: {_clip(value)}")
        return bytes.fromhex(value)
    if algorithm == MD5 and len(value) == 32 and set(value) <= _HEX:
        return bytes.fromhex(value)  # hex, as old DPM sent it (base64 of 16 bytes is 24 characters)
    raw = _base64(value)
    if raw is None or len(raw) != SIZES[algorithm]:
        raise DigestError(f"malformed Digest: {algorithm} is not base64 of {SIZES[algorithm]} bytes")
    return raw


def _content_md5(text: str) -> bytes:
    raw = _base64(text.strip(" \t"))
    if raw is None or len(raw) != 16:
        raise DigestError("malformed Content-MD5: not base64 of 16 bytes")
    return raw


def upload_checksum(value: bytes) -> Expected:
    """The tus ``Upload-Checksum: <algorithm> <base64>`` of one PATCH body.

    Raises DigestError for an algorithm tus does not name here (``md5``,
    ``sha1``, ``sha256``) or a value that is not base64 of that digest's size.
    """
    try:
        text = value.decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        raise DigestError("malformed Upload-Checksum: not ASCII") from None
    name, space, encoded = text.partition(" ")
    algorithm = TUS_NAMES.get(name)
    if algorithm is None:
        raise DigestError(f"unsupported Upload-Checksum algorithm {_clip(name)!r} (supported: md5, sha1, sha256)")
    raw = _base64(encoded.strip(" \t")) if space else None
    if raw is None or len(raw) != SIZES[algorithm]:
        raise DigestError(f"malformed Upload-Checksum: {name} is not base64 of {SIZES[algorithm]} bytes")
    return Expected(algorithm, raw, "Upload-Checksum")


def _base64(text: str) -> bytes | None:
    """Standard base64 with its padding, or None."""
    if not text or len(text) % 4 or not set(text) <= _BASE64:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


# -- what a download is answered with: Want-Repr-Digest, Want-Digest -----------------------


@dataclass(frozen=True)
class Wanted:
    """The digests a download asks for: one per field, the client's preferred supported one."""

    #: for ``Repr-Digest`` (``Want-Repr-Digest``), or None
    repr_digest: str | None = None
    #: for ``Digest`` (``Want-Digest``), or None
    digest: str | None = None
    #: ``Want-Repr-Digest`` rated md5 0: not wanted, even as the usual ``Repr-Digest: md5``
    md5_refused: bool = False

    def algorithms(self) -> frozenset[str]:
        """Every algorithm to find or compute."""
        return frozenset(name for name in (self.repr_digest, self.digest) if name is not None)

    def __bool__(self) -> bool:
        return self.repr_digest is not None or self.digest is not None or self.md5_refused


#: the fields whose presence makes a download ask for digests
WANT_FIELDS = (b"want-repr-digest", b"want-digest")


def wanted_digests(fields: Fields) -> Wanted:
    """What ``Want-Repr-Digest`` (RFC 9530) and ``Want-Digest`` (RFC 3230) ask for.

    ``Want-Repr-Digest: sha-256=5, md5=1``: the highest preference (1 to 10)
    among :data:`REPR_ALGORITHMS`; 0 means not wanted. ``Want-Digest:
    adler32, md5;q=0.3``: the highest ``q`` (default 1; 0 not wanted) among
    :data:`RFC3230_ALGORITHMS`, names case-insensitive. Ties go to the
    stronger algorithm. A field that does not parse is ignored.
    """
    repr_choice = None
    md5_refused = False
    values = fields(b"want-repr-digest")
    if values:
        try:
            preferences = _sf_preferences(", ".join(v.decode("ascii") for v in values))
        except (UnicodeDecodeError, ValueError):
            preferences = {}
        repr_choice = _best(preferences, REPR_ALGORITHMS)
        md5_refused = preferences.get(MD5) == 0
    digest_choice = None
    values = fields(b"want-digest")
    if values:
        try:
            weights = _rfc3230_preferences(", ".join(v.decode("ascii") for v in values))
        except (UnicodeDecodeError, ValueError):
            weights = {}
        digest_choice = _best(weights, RFC3230_ALGORITHMS)
    return Wanted(repr_choice, digest_choice, md5_refused)


def _best(preferences: Mapping[str, float], supported: Sequence[str]) -> str | None:
    best, best_weight = None, 0.0
    for name in supported:  # strongest first: a tie keeps the stronger
        weight = preferences.get(name, 0.0)
        if weight > best_weight:
            best, best_weight = name, weight
    return best


def _sf_preferences(text: str) -> dict[str, float]:
    preferences: dict[str, float] = {}
    for key, value in parse_dictionary(text).items():
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10:
            preferences[key] = float(value)
    return preferences


def _rfc3230_preferences(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, parameters = item.partition(";")
        name = name.strip(" \t").lower()
        if not name:
            continue
        if not set(name) <= _TCHARS:
            raise ValueError("not a token")
        weight = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.partition("=")
            if key.strip(" \t").lower() == "q":
                weight = _qvalue(value.strip(" \t"))
        weights[_RFC3230_NAMES.get(name, name)] = weight
    return weights


def _qvalue(text: str) -> float:
    """An RFC 9110 qvalue: ``0``/``1`` with up to 3 decimals."""
    whole, _, fraction = text.partition(".")
    if whole not in ("0", "1") or len(fraction) > 3 or not set(fraction) <= _DIGITS:
        raise ValueError("not a qvalue")
    value = float(f"{whole}.{fraction}") if fraction else float(whole)
    if value > 1:
        raise ValueError("not a qvalue")
    return value


def repr_digest_field(digests: Mapping[str, str], order: Sequence[str]) -> bytes:
    """``Repr-Digest``'s value: each algorithm of ``order`` found in ``digests`` (hex), as
    ``name=:<base64>:``, comma-separated (an RFC 8941 dictionary)."""
    return b", ".join(
        b"%s=:%s:" % (name.encode("ascii"), base64.b64encode(bytes.fromhex(digests[name])))
        for name in order
        if name in digests
    )


def digest_field(algorithm: str, hex_digest: str) -> bytes:
    """``Digest``'s value (RFC 3230) for one algorithm: adler32 as 8 lowercase hex digits
    (what dCache serves and gfal2, davix and Rucio compare), the others base64."""
    if algorithm == ADLER32:
        return b"adler32=%s" % hex_digest.lower().zfill(8).encode("ascii")
    return b"%s=%s" % (algorithm.encode("ascii"), base64.b64encode(bytes.fromhex(hex_digest)))


# -- RFC 8941 dictionaries ---------------------------------------------------------------


def parse_dictionary(text: str) -> dict[str, object]:
    """An RFC 8941 dictionary: key -> bare value (parameters dropped; an inner list as a list).

    Raises ValueError (with a short reason) when ``text`` is not one. One
    pass, left to right; the last of duplicate keys wins, as RFC 8941 says.
    """
    parser = _Parser(text)
    members: dict[str, object] = {}
    parser.skip(" \t")
    if parser.at_end():
        return members
    while True:
        key = parser.key()
        if parser.peek() == "=":
            parser.pos += 1
            value = parser.member_value()
        else:
            value = True
            parser.parameters()
        members[key] = value
        parser.skip(" \t")
        if parser.at_end():
            return members
        parser.expect(",")
        parser.skip(" \t")
        if parser.at_end():
            raise ValueError("a comma with no member after it")


class _Parser:
    """A position in one field value; each method consumes what it reads."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, characters: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in characters:
            self.pos += 1

    def expect(self, character: str) -> None:
        if self.peek() != character:
            raise ValueError(f"expected {character!r} at {self.pos}")
        self.pos += 1

    def key(self) -> str:
        start = self.pos
        first = self.peek()
        if not first or (first not in _LCALPHA and first != "*"):
            raise ValueError(f"a key must start with a-z or * at {self.pos}")
        self.pos += 1
        while self.pos < len(self.text) and self.text[self.pos] in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def member_value(self) -> object:
        if self.peek() == "(":
            return self.inner_list()
        value = self.bare_item()
        self.parameters()
        return value

    def inner_list(self) -> list[object]:
        self.expect("(")
        items: list[object] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.pos += 1
                self.parameters()
                return items
            items.append(self.bare_item())
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise ValueError(f"bad inner list at {self.pos}")

    def parameters(self) -> None:
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            self.key()
            if self.peek() == "=":
                self.pos += 1
                self.bare_item()

    def bare_item(self) -> object:
        first = self.peek()
        if first == "-" or first in _DIGITS:
            return self.number()
        if first == '"':
            return self.string()
        if first == ":":
            return self.byte_sequence()
        if first == "?":
            self.pos += 1
            flag = self.peek()
            if flag not in ("0", "1"):
                raise ValueError(f"bad boolean at {self.pos}")
            self.pos += 1
            return flag == "1"
        if first.isalpha() and first.isascii() or first == "*":
            start = self.pos
            self.pos += 1
            while self.pos < len(self.text) and self.text[self.pos] in _SF_TOKEN_CHARS:
                self.pos += 1
            return self.text[start : self.pos]
        raise ValueError(f"unexpected {first!r} at {self.pos}" if first else "a value is missing")

    def number(self) -> int | float:
        start = self.pos
        if self.peek() == "-":
            self.pos += 1
        digits_start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _DIGITS:
            self.pos += 1
        whole = self.pos - digits_start
        if whole == 0:
            raise ValueError(f"bad number at {start}")
        if self.peek() != ".":
            if whole > 15:
                raise ValueError(f"integer too long at {start}")
            return int(self.text[start : self.pos])
        if whole > 12:
            raise ValueError(f"decimal too long at {start}")
        self.pos += 1
        fraction_start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _DIGITS:
            self.pos += 1
        if not 1 <= self.pos - fraction_start <= 3:
            raise ValueError(f"bad decimal at {start}")
        return float(self.text[start : self.pos])

    def string(self) -> str:
        self.expect('"')
        out: list[str] = []
        while True:
            if self.at_end():
                raise ValueError("unterminated string")
            character = self.text[self.pos]
            self.pos += 1
            if character == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\"):
                    raise ValueError(f"bad escape at {self.pos}")
                out.append(escaped)
                self.pos += 1
            elif character == '"':
                return "".join(out)
            elif not " " <= character <= "~":
                raise ValueError(f"bad character in string at {self.pos - 1}")
            else:
                out.append(character)

    def byte_sequence(self) -> bytes:
        self.expect(":")
        end = self.text.find(":", self.pos)
        if end < 0:
            raise ValueError("unterminated byte sequence")
        encoded = self.text[self.pos : end]
        self.pos = end + 1
        if not set(encoded) <= _BASE64:
            raise ValueError("a byte sequence that is not base64")
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a byte sequence that is not base64") from None


__all__ = [
    "ADLER32",
    "ALGORITHMS",
    "Adler32",
    "BodyHashers",
    "DigestError",
    "Expected",
    "MD5",
    "NoUsableDigest",
    "REPR_ALGORITHMS",
    "RFC3230_ALGORITHMS",
    "SHA1",
    "SHA256",
    "SHA512",
    "Stopped",
    "TUS_NAMES",
    "WANT_CONTENT_DIGEST",
    "WANT_FIELDS",
    "Wanted",
    "body_hashers",
    "digest_field",
    "digest_file",
    "expected_digests",
    "new_hasher",
    "parse_dictionary",
    "repr_digest_field",
    "upload_checksum",
    "wanted_digests",
]
