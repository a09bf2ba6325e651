"""Manifest parsing and serialising: every rule of SPEC §3 and §6."""

from __future__ import annotations

import configparser
import io

import pytest

from gsitransfer.errors import ManifestError, ManifestTooLarge
from gsitransfer.manifest import Manifest, ManifestLimits, check_name, parse_manifest

MD5 = "0d5f0d6a4bb0f6e1a3b6b1b0c7e0c1d2"


def written_by_configparser(files: list[tuple[str, int, str]]) -> bytes:
    """A manifest exactly as the AccessGrid client writes it (ConfigParser.write)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser["manifest"] = {"num_files": str(len(files))}
    for num, (name, size, checksum) in enumerate(files):
        parser[str(num)] = {"name": name, "size": str(size), "checksum": checksum}
    out = io.StringIO()
    parser.write(out)
    return out.getvalue().encode()


def test_configparser_manifest_parses():
    """A manifest written by ConfigParser gives its files in order."""
    manifest = parse_manifest(written_by_configparser([("a.csv", 10, MD5), ("b 100%.dat", 0, MD5.upper())]))
    assert [(e.num, e.name, e.size, e.checksum) for e in manifest.files] == [
        (0, "a.csv", 10, MD5),
        (1, "b 100%.dat", 0, MD5),
    ]


def test_percent_is_literal():
    """No interpolation: % in a name is kept as is."""
    manifest = parse_manifest(written_by_configparser([("%(x)s%%.txt", 1, MD5)]))
    assert manifest.files[0].name == "%(x)s%%.txt"


def test_round_trip():
    """to_ini() reads back to the same manifest."""
    manifest = Manifest.of(("x.bin", 5, MD5), ("Jösé.txt", 7, MD5))
    assert parse_manifest(manifest.to_ini().encode()) == manifest


def test_extra_keys_pass_through():
    """Keys beyond name/size/checksum reach file_info as strings."""
    body = written_by_configparser([("a", 1, MD5)]).replace(b"[0]\n", b"[0]\ndescription = hi\n")
    info = parse_manifest(body).files[0].file_info()
    assert info == {"description": "hi", "name": "a", "size": 1, "checksum": MD5}


@pytest.mark.parametrize("key", ["transfer_key", "file_num", "transfer_size"])
def test_reserved_keys_refused(key):
    """A file section naming a key the server fills for handlers is refused (issue 12 finding 10)."""
    body = written_by_configparser([("a", 1, MD5)]).replace(b"[0]\n", f"[0]\n{key} = forged\n".encode())
    with pytest.raises(ManifestError, match=f"{key} in \\[0\\] is reserved"):
        parse_manifest(body)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "no [manifest]"),
        (b"not ini at all", "not 'key = value'"),
        (b"[manifest\n", "not a valid INI"),
        (b"[manifest]\n", "no num_files"),
        (b"[manifest]\nnum_files = two\n", "not a number"),
        (b"[manifest]\nnum_files = -1\n", "not a number"),
        (b"[manifest]\nnum_files = 0\n", "at least 1"),
        (b"[manifest]\nnum_files = 1\n", "no section [0]"),
        (b"[manifest]\nnum_files = 1\n[0]\nname = a\nsize = 1\n", "no checksum"),
        (b"[manifest]\nnum_files = 1\n[0]\nname = a\nchecksum = " + MD5.encode() + b"\n", "no size"),
        (b"[manifest]\nnum_files = 1\n[0]\nsize = 1\nchecksum = " + MD5.encode() + b"\n", "no name"),
        (b"[manifest]\nnum_files = 1\n[0]\nname = a\nsize = 1.5\nchecksum = " + MD5.encode() + b"\n", "not a number"),
        (b"[manifest]\nnum_files = 1\n[0]\nname = a\nsize = 1\nchecksum = xyz\n", "not an MD5"),
        (b"[manifest]\nnum_files = 1\n[0]\nname = a\nsize = 1\nchecksum = " + MD5.encode() + b"\n[7]\nname = b\n", "unexpected section"),
        (b"[manifest]\nnum_files = 1\n[manifest]\nnum_files = 1\n", "not a valid INI"),
        (b"[manifest]\nnum_files = 1\nnum_files = 2\n", "not a valid INI"),
        (b"\xff\xfe[manifest]", "not valid UTF-8"),
    ],
)
def test_malformed_manifests_refused(body, reason):
    """Each broken rule is one ManifestError naming the problem."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(body)
    assert reason in caught.value.reason


def test_duplicate_names_refused():
    """Two files with the same name in one manifest are refused."""
    with pytest.raises(ManifestError, match="appears twice"):
        parse_manifest(written_by_configparser([("a", 1, MD5), ("a", 2, MD5)]))


def test_size_limit():
    """A body over the manifest size limit is ManifestTooLarge."""
    body = written_by_configparser([("a", 1, MD5)])
    with pytest.raises(ManifestTooLarge):
        parse_manifest(body, ManifestLimits(max_bytes=len(body) - 1))


def test_file_count_limit():
    """More files than the limit are refused before the sections are read."""
    body = written_by_configparser([(f"f{i}", 1, MD5) for i in range(5)])
    with pytest.raises(ManifestError, match="too many files"):
        parse_manifest(body, ManifestLimits(max_files=4))


@pytest.mark.parametrize(
    "name",
    ["..", ".", "a/b", "/etc", "a\\b", "nul\x00", "tab\there", "bell\x07", "del\x7f", "x" * 256,
     "é" * 128, ".gsitransfer-store.sqlite", "c1\x85"],
)
def test_unsafe_names_refused(name):
    """Separators, dot names, controls, over-long and reserved names are refused."""
    with pytest.raises(ManifestError):
        check_name(name)


@pytest.mark.parametrize("name", ["a.txt", "..hidden", "Jos\u00e9 M\u00fcller.dat", "x" * 255, "100%", "a b"])
def test_safe_names_accepted(name):
    """Ordinary names, including UTF-8 and spaces, are accepted unchanged."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["CON", "con.txt", "Nul.tar.gz", "COM1", "lpt9.log", "AUX .txt", "a<b", "a>b", "a:b", 'a"b', "a|b",
     "a?b", "a*b", "trailing.", "trailing ", "...", ". "],
)
def test_names_unsafe_on_windows_refused(name):
    """Reserved device names, Windows-forbidden characters, trailing dot/space are refused."""
    with pytest.raises(ManifestError):
        check_name(name)


@pytest.mark.parametrize("name", ["CONSOLE.txt", "com10", "nullable", "a.con", ".profile", " lead"])
def test_names_near_reserved_accepted(name):
    """Names that merely resemble a device name are fine."""
    assert check_name(name) == name


def test_names_normalised_to_nfc():
    """A decomposed name is stored composed; both spellings collide in one manifest."""
    assert check_name("Jose\u0301") == "Jos\u00e9"
    with pytest.raises(ManifestError, match="twice"):
        parse_manifest(written_by_configparser([("Jose\u0301", 1, MD5), ("Jos\u00e9", 1, MD5)]))


def test_total_size_limit():
    """Files adding up past max_total_size are refused."""
    body = written_by_configparser([("a", 600, MD5), ("b", 600, MD5)])
    with pytest.raises(ManifestError, match="add up"):
        parse_manifest(body, ManifestLimits(max_total_size=1000))
    assert parse_manifest(body, ManifestLimits(max_total_size=1200)).total_size == 1200
