"""gsitransfer.digests: every digest field form, the hashers, the formats, and linear-time parsing."""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import zlib
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import pytest

from gsitransfer import digests
from gsitransfer.digests import (
    ADLER32,
    MD5,
    SHA1,
    SHA256,
    SHA512,
    Adler32,
    BodyHashers,
    DigestError,
    Expected,
    Wanted,
    body_hashers,
    digest_field,
    digest_file,
    expected_digests,
    parse_dictionary,
    repr_digest_field,
    upload_checksum,
    wanted_digests,
)
from gsitransfer.errors import ChecksumMismatch

BODY = b"the body of a file\n" * 1000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fields(**values: str | list[str]) -> Callable[[bytes], list[bytes] | None]:
    """A ``getRawHeaders`` over ``values`` (keyword names with ``_`` for ``-``)."""
    table = {
        name.replace("_", "-").lower().encode(): [v.encode() for v in (value if isinstance(value, list) else [value])]
        for name, value in values.items()
    }
    return lambda name: table.get(name.lower())


SHA256_B = hashlib.sha256(BODY).digest()
SHA512_B = hashlib.sha512(BODY).digest()
MD5_B = hashlib.md5(BODY).digest()
ADLER_B = zlib.adler32(BODY).to_bytes(4, "big")


# -- hashers ------------------------------------------------------------------------------


def test_adler32_matches_zlib_in_pieces() -> None:
    """Adler32 fed in pieces equals zlib.adler32 of the whole, 4 bytes big-endian."""
    hasher = Adler32()
    for start in range(0, len(BODY), 777):
        hasher.update(BODY[start : start + 777])
    assert hasher.digest() == ADLER_B
    assert Adler32().digest().hex() == "00000001"  # the empty input: leading zeros kept


def test_body_hashers_check_every_named_digest() -> None:
    """Body hashers fed in pieces pass every right digest and report the first wrong one."""
    right = [Expected(SHA256, SHA256_B, "Content-Digest"), Expected(ADLER32, ADLER_B, "Digest")]
    hashers = BodyHashers(right)
    for start in range(0, len(BODY), 4096):
        hashers.update(BODY[start : start + 4096])
    hashers.check()
    assert hashers.digests() == {SHA256: SHA256_B.hex(), ADLER32: ADLER_B.hex()}
    wrong = BodyHashers(right + [Expected(SHA512, bytes(64), "Repr-Digest")])
    wrong.update(BODY)
    with pytest.raises(ChecksumMismatch) as caught:
        wrong.check()
    assert caught.value.reason == (
        f"checksum mismatch: sha-512 of the body is {b64(SHA512_B)}, Repr-Digest says {b64(bytes(64))}"
    )


def test_one_hasher_per_algorithm_and_none_without_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fields naming one algorithm make one hasher; no digest field makes no object at all."""
    made: list[str] = []
    real = digests.new_hasher
    monkeypatch.setattr(digests, "new_hasher", lambda name: made.append(name) or real(name))
    assert body_hashers([]) is None and made == []
    body_hashers([Expected(MD5, MD5_B, "Content-MD5"), Expected(MD5, MD5_B, "Digest")])
    assert made == [MD5]


def test_digest_file_reads_once_for_all(tmp_path: Path) -> None:
    """digest_file gives every algorithm's hex digest of the whole file from a descriptor."""
    path = tmp_path / "f"
    path.write_bytes(BODY)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = digest_file(fd, [MD5, SHA256, SHA512, ADLER32, SHA1], chunk=1000)
    finally:
        os.close(fd)
    assert found == {
        MD5: MD5_B.hex(),
        SHA256: SHA256_B.hex(),
        SHA512: SHA512_B.hex(),
        ADLER32: ADLER_B.hex(),
        SHA1: hashlib.sha1(BODY).hexdigest(),
    }


def test_digest_file_stops_when_told(tmp_path: Path) -> None:
    """digest_file asks ``stop`` before each chunk and raises Stopped when it says yes."""
    path = tmp_path / "f"
    path.write_bytes(BODY)
    asked = []
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(digests.Stopped, match="stopped after 3000 bytes"):
            digest_file(fd, [MD5], chunk=1000, stop=lambda: asked.append(1) or len(asked) > 3)
    finally:
        os.close(fd)
    assert len(asked) == 4


# -- the upload's fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, expected",
    [
        (dict(content_digest=f"sha-256=:{b64(SHA256_B)}:"), [(SHA256, SHA256_B, "Content-Digest")]),
        (dict(content_digest=f"sha-512=:{b64(SHA512_B)}:"), [(SHA512, SHA512_B, "Content-Digest")]),
        (dict(repr_digest=f"md5=:{b64(MD5_B)}:"), [(MD5, MD5_B, "Repr-Digest")]),
        (
            dict(content_digest=f"sha-256=:{b64(SHA256_B)}:;x=1, md5=:{b64(MD5_B)}:"),
            [(SHA256, SHA256_B, "Content-Digest"), (MD5, MD5_B, "Content-Digest")],
        ),
        (dict(content_digest=[f"sha-256=:{b64(SHA256_B)}:", f"md5=:{b64(MD5_B)}:"]),
         [(SHA256, SHA256_B, "Content-Digest"), (MD5, MD5_B, "Content-Digest")]),
        (dict(content_digest=f"adler=:{b64(ADLER_B)}:"), [(ADLER32, ADLER_B, "Content-Digest")]),
        (dict(content_digest=f"unixsum=:AAAA:, sha-256=:{b64(SHA256_B)}:"), [(SHA256, SHA256_B, "Content-Digest")]),
        (dict(content_digest=f"crc32c=12, sha-256=:{b64(SHA256_B)}:"), [(SHA256, SHA256_B, "Content-Digest")]),
        (dict(digest=f"md5={b64(MD5_B)}"), [(MD5, MD5_B, "Digest")]),
        (dict(digest=f"MD5={MD5_B.hex()}"), [(MD5, MD5_B, "Digest")]),
        (dict(digest=f"SHA-256={b64(SHA256_B)}"), [(SHA256, SHA256_B, "Digest")]),
        (dict(digest=f"sha-512={b64(SHA512_B)}"), [(SHA512, SHA512_B, "Digest")]),
        (dict(digest=f"adler32={ADLER_B.hex()}"), [(ADLER32, ADLER_B, "Digest")]),
        (dict(digest=f"ADLER32={ADLER_B.hex().upper()}"), [(ADLER32, ADLER_B, "Digest")]),
        (
            dict(digest=f"crc32c=abc, adler32={ADLER_B.hex()} ,md5={b64(MD5_B)}"),
            [(ADLER32, ADLER_B, "Digest"), (MD5, MD5_B, "Digest")],
        ),
        (dict(content_md5=b64(MD5_B)), [(MD5, MD5_B, "Content-MD5")]),
        (dict(), []),
    ],
)
def test_every_digest_field_form(sent: dict[str, Any], expected: list[tuple[str, bytes, str]]) -> None:
    """Each RFC 9530, RFC 3230 and RFC 1864 form names the digest it says; unknown algorithms are ignored."""
    assert expected_digests(fields(**sent)) == [Expected(*item) for item in expected]


@pytest.mark.parametrize(
    "sent, reason",
    [
        (dict(content_digest="sha-256=:AAAA:"), "malformed Content-Digest: sha-256 is not a 32-byte sequence"),
        (dict(content_digest="sha-256=abc"), "malformed Content-Digest: sha-256 is not a 32-byte sequence"),
        (dict(content_digest="sha-256=:not base64!:"), "malformed Content-Digest: a byte sequence that is not base64"),
        (dict(content_digest="SHA-256=:AAAA:"), "malformed Content-Digest: a key must start with a-z or * at 0"),
        (dict(repr_digest="md5=:AAAA:,"), "malformed Repr-Digest: a comma with no member after it"),
        (dict(digest="adler32=1234567"), "malformed Digest: adler32 is not 8 hex digits: 1234567"),
        (dict(digest="adler32=123456789"), "malformed Digest: adler32 is not 8 hex digits: 123456789"),
        (dict(digest="md5=AAAA"), "malformed Digest: md5 is not base64 of 16 bytes"),
        (dict(digest="sha-256"), "malformed Digest: sha-256"),
        (dict(content_md5="00112233445566778899aabbccddeeff"), "malformed Content-MD5: not base64 of 16 bytes"),
        (dict(content_digest="sha=:AAAA:"), "no supported algorithm in Content-Digest (supported: md5, sha-256, sha-512, adler32)"),
        (dict(digest="crc32c=AAAA", repr_digest="unixsum=:AA==:"),
         "no supported algorithm in Repr-Digest, Digest (supported: md5, sha-256, sha-512, adler32)"),
    ],
)
def test_malformed_or_unusable_fields_refused(sent: dict[str, Any], reason: str) -> None:
    """A malformed value of a checked algorithm, or fields with no usable algorithm, raise DigestError with one line."""
    with pytest.raises(DigestError) as caught:
        expected_digests(fields(**sent))
    assert str(caught.value) == reason


def test_non_ascii_field_refused() -> None:
    """A digest field with bytes beyond ASCII is malformed."""
    with pytest.raises(DigestError, match="not ASCII"):
        expected_digests(lambda name: [b"sha-256=:\xff:"] if name == b"content-digest" else None)


@pytest.mark.parametrize(
    "value, expected",
    [
        (f"md5 {b64(MD5_B)}", Expected(MD5, MD5_B, "Upload-Checksum")),
        (f"sha1 {b64(hashlib.sha1(BODY).digest())}", Expected(SHA1, hashlib.sha1(BODY).digest(), "Upload-Checksum")),
        (f"sha256 {b64(SHA256_B)}", Expected(SHA256, SHA256_B, "Upload-Checksum")),
    ],
)
def test_tus_upload_checksum(value: str, expected: Expected) -> None:
    """The tus Upload-Checksum forms name their digest (for PATCH: checked per request)."""
    assert upload_checksum(value.encode()) == expected
    hashers = BodyHashers([expected])
    hashers.update(BODY)
    hashers.check()


@pytest.mark.parametrize(
    "value, match",
    [
        ("crc32 AAAA", "unsupported Upload-Checksum algorithm 'crc32'"),
        ("sha-256 AAAA", "unsupported Upload-Checksum algorithm 'sha-256'"),
        ("md5", "malformed Upload-Checksum"),
        ("md5 AAAA", "malformed Upload-Checksum: md5 is not base64 of 16 bytes"),
    ],
)
def test_tus_upload_checksum_refused(value: str, match: str) -> None:
    """An unknown tus algorithm or a bad value raises DigestError."""
    with pytest.raises(DigestError, match=match):
        upload_checksum(value.encode())


# -- what a download asks for -----------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, wanted",
    [
        (dict(want_repr_digest="sha-256=5, md5=1"), Wanted(SHA256, None)),
        (dict(want_repr_digest="md5=3, sha-512=3"), Wanted(SHA512, None)),
        (dict(want_repr_digest="sha-256=0, md5=2"), Wanted(MD5, None)),
        (dict(want_repr_digest="sha-256=1, md5=0"), Wanted(SHA256, None, md5_refused=True)),
        (dict(want_repr_digest="adler=10, unixsum=4"), Wanted(None, None)),
        (dict(want_repr_digest="sha-256=11"), Wanted(None, None)),
        (dict(want_repr_digest="sha-256=:AAAA:"), Wanted(None, None)),
        (dict(want_repr_digest="SHA-256=5"), Wanted(None, None)),  # not a dictionary: ignored
        (dict(want_digest="adler32, md5;q=0.3"), Wanted(None, ADLER32)),
        (dict(want_digest="ADLER32"), Wanted(None, ADLER32)),
        (dict(want_digest="MD5;q=0.5, SHA-256;q=0.9"), Wanted(None, SHA256)),
        (dict(want_digest="sha-512;q=0, md5"), Wanted(None, MD5)),
        (dict(want_digest="crc32c, UNIXcksum"), Wanted(None, None)),
        (dict(want_digest="md5;q=2"), Wanted(None, None)),  # not a qvalue: the field is ignored
        (dict(want_digest="md5, adler32;q=1.000"), Wanted(None, MD5)),
        (dict(want_digest="sha, adler32;q=0.001"), Wanted(None, ADLER32)),
        (dict(want_digest="adler32", want_repr_digest="sha-512=1"), Wanted(SHA512, ADLER32)),
        (dict(), Wanted(None, None)),
    ],
)
def test_wanted_digests(sent: dict[str, Any], wanted: Wanted) -> None:
    """Want-Repr-Digest and Want-Digest give the preferred supported algorithm each (0: not wanted)."""
    assert wanted_digests(fields(**sent)) == wanted


def test_formats_as_clients_read_them() -> None:
    """Digest: adler32 is 8 lowercase hex digits (leading zeros kept), the others base64; Repr-Digest a dictionary."""
    assert digest_field(ADLER32, "0a1b2c3d") == b"adler32=0a1b2c3d"
    assert digest_field(ADLER32, "ABC") == b"adler32=00000abc"
    assert digest_field(MD5, MD5_B.hex()) == b"md5=" + b64(MD5_B).encode()
    assert digest_field(SHA256, SHA256_B.hex()) == b"sha-256=" + b64(SHA256_B).encode()
    found = {MD5: MD5_B.hex(), SHA256: SHA256_B.hex()}
    assert repr_digest_field(found, [SHA256, MD5, SHA512]) == (
        b"sha-256=:" + b64(SHA256_B).encode() + b":, md5=:" + b64(MD5_B).encode() + b":"
    )
    assert parse_dictionary(repr_digest_field(found, [SHA256, MD5]).decode()) == {SHA256: SHA256_B, MD5: MD5_B}


# -- RFC 8941 dictionaries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, members",
    [
        ("", {}),
        ("a=1, b=-2.5, c", {"a": 1, "b": -2.5, "c": True}),
        ('a="x \\"y\\" \\\\", b=tok/en:1', {"a": 'x "y" \\', "b": "tok/en:1"}),
        ("a=?0;p=1;q, b=?1", {"a": False, "b": True}),
        ("a=(1 2 :AQI=:);p, b=()", {"a": [1, 2, b"\x01\x02"], "b": []}),
        ("a=1,a=2", {"a": 2}),
        ("*k-._*=:AQ:", {"*k-._*": b"\x01"}),
        ("a=1 ,\tb=2", {"a": 1, "b": 2}),
    ],
)
def test_dictionary_forms(text: str, members: dict[str, object]) -> None:
    """RFC 8941 dictionaries: numbers, strings, tokens, booleans, byte sequences, inner lists, parameters."""
    assert parse_dictionary(text) == members


@pytest.mark.parametrize(
    "text",
    ["a=", "A=1", "a=1,", "a=1;", "a=1 b=2", 'a="x', 'a="\\x"', "a=:AQ", "a=1.2345", "a=1234567890123456",
     "a=(1 2", "a=?2", "a=\x01", "1a=1", "a=-"],
)
def test_dictionary_refusals(text: str) -> None:
    """Anything not an RFC 8941 dictionary raises ValueError."""
    with pytest.raises(ValueError):
        parse_dictionary(text)


# -- linear time, by counting the lines the parsers run ----------------------------------------


def lines_run(call: Callable[[], object]) -> int:
    """How many lines of gsitransfer.digests ``call`` runs (a count of work, no clock)."""
    count = 0
    module_file = digests.__file__

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename != module_file:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        try:
            call()
        except (DigestError, ValueError):
            pass
    finally:
        sys.settrace(None)
    return count


LONG_INPUTS: list[tuple[str, Callable[[int], Callable[[], object]]]] = [
    ("dictionary members", lambda n: lambda: parse_dictionary(", ".join(f"k{i}=:AAAA:" for i in range(n)))),
    ("an unterminated string", lambda n: lambda: parse_dictionary('a="' + "x" * (40 * n))),
    ("an unterminated byte sequence", lambda n: lambda: parse_dictionary("a=:" + "A" * (40 * n))),
    ("parameters", lambda n: lambda: parse_dictionary("a=1" + ";p=1" * n)),
    ("an inner list", lambda n: lambda: parse_dictionary("a=(" + "1 " * n + ")")),
    ("Digest items", lambda n: lambda: expected_digests(fields(digest=", ".join(["crc32c=x"] * n)))),
    ("Content-Digest members", lambda n: lambda: expected_digests(fields(content_digest=", ".join(f"x{i}=?1" for i in range(n))))),
    ("commas", lambda n: lambda: expected_digests(fields(digest="," * (20 * n)))),
    ("Want-Digest items", lambda n: lambda: wanted_digests(fields(want_digest=", ".join(["md5;q=0.5;a=b"] * n)))),
    ("Want-Repr-Digest members", lambda n: lambda: wanted_digests(fields(want_repr_digest=", ".join(f"k{i}=5" for i in range(n))))),
]


@pytest.mark.parametrize("what, make", LONG_INPUTS, ids=[what for what, _ in LONG_INPUTS])
def test_parsing_is_linear(what: str, make: Callable[[int], Callable[[], object]]) -> None:
    """Doubling a long field's length at most doubles the work its parse does (no backtracking)."""
    small, large = lines_run(make(200)), lines_run(make(400))
    assert small > 0
    assert large <= 2.1 * small, (what, small, large)
