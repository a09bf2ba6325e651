"""Globus grid-mapfile parsing and lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from gsitransfer.errors import NotAuthorized
from gsitransfer.gridmap import GridMap, GridMapError, load_gridmap, parse_gridmap
from gsitransfer.identity import IdToken, format_dn
from gsitransfer.web.identity_sources import GridMapAuthorizer
from gsitransfer.testca import make_name, person_name

ALICE = "/C=US/O=Grid Test/OU=People/CN=Alice Example"
BOB = "/C=US/O=Grid Test/OU=People/CN=Bob Example"

SAMPLE = f"""\
# grid-mapfile for the test site

"{ALICE}" alice
   "{BOB}"   bob,guest,ops    # bob may also act as guest or ops
"/C=US/O=Grid Test/OU=People/CN=Jos\\xC3\\xA9 M\\xC3\\xBCller" jose
"/C=US/O=Grid Test/OU=R\\/D, Labs/CN=Odd\\/Name \\+1" odd
"/C=US/O=Grid Test/OU=People/UID=dave+CN=Dave Example" dave
"{ALICE}" shadowed
"""


def test_lookup_returns_the_accounts_of_a_listed_dn() -> None:
    """A listed DN maps to its accounts, the first one being the default."""
    gridmap = parse_gridmap(SAMPLE)
    assert gridmap.lookup(BOB) == ("bob", "guest", "ops")
    assert gridmap.first_account(BOB) == "bob"
    assert gridmap.lookup(ALICE) == ("alice",)


def test_unlisted_dn_and_anonymous_map_to_none() -> None:
    """A DN that is not listed, or no DN at all, maps to None."""
    gridmap = parse_gridmap(SAMPLE)
    assert gridmap.lookup("/C=US/O=Grid Test/OU=People/CN=Mallory") is None
    assert gridmap.first_account(None) is None
    assert "/C=US/O=Grid Test/OU=People/CN=Mallory" not in gridmap and ALICE in gridmap


def test_first_line_of_a_dn_wins() -> None:
    """When a DN is listed twice, the first line counts (as in Globus)."""
    assert parse_gridmap(SAMPLE).first_account(ALICE) == "alice"


def test_comments_and_blank_lines_are_ignored() -> None:
    """Only entry lines count; comments and blank lines are skipped."""
    gridmap = parse_gridmap(SAMPLE)
    assert len(gridmap) == 5
    assert [entry.line for entry in gridmap.entries] == [3, 4, 5, 6, 7, 8]


def test_escapes_match_format_dn_byte_for_byte() -> None:
    """\\xHH, \\/ and \\+ in the file match the one-line DN of the certificate exactly."""
    gridmap = parse_gridmap(SAMPLE)
    assert gridmap.first_account(format_dn(person_name("José Müller"))) == "jose"
    assert gridmap.first_account(format_dn(person_name("Odd/Name +1", unit="R/D, Labs"))) == "odd"
    dave = make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, "Grid Test")],
                     [(NameOID.ORGANIZATIONAL_UNIT_NAME, "People")],
                     [(NameOID.USER_ID, "dave"), (NameOID.COMMON_NAME, "Dave Example")])
    assert gridmap.first_account(format_dn(dave)) == "dave"


def test_comparison_is_exact() -> None:
    """Case, white space and escapes are not normalised: the strings must be equal."""
    gridmap = parse_gridmap(SAMPLE)
    assert gridmap.lookup(ALICE.lower()) is None
    assert gridmap.lookup(ALICE + " ") is None
    assert gridmap.lookup("/C=US/O=Grid Test/OU=People/CN=Jos\\xc3\\xa9 M\\xc3\\xbcller") is None


def test_raw_utf8_in_the_file_is_written_as_escapes() -> None:
    """A DN typed with raw UTF-8 matches the escaped one-line form."""
    gridmap = parse_gridmap('"/C=US/O=Grid Test/OU=People/CN=José Müller" jose\n')
    assert gridmap.first_account(format_dn(person_name("José Müller"))) == "jose"


def test_escaped_quote_and_unquoted_dn() -> None:
    """\\" inside a quoted DN is a quote; an unquoted DN runs to the first white space."""
    gridmap = parse_gridmap('"/CN=say \\"hi\\"" quoter\n/O=NoSpaces/CN=x plain\n')
    assert gridmap.first_account('/CN=say "hi"') == "quoter"
    assert gridmap.first_account("/O=NoSpaces/CN=x") == "plain"


def test_empty_text_is_an_empty_map() -> None:
    """No entries: every lookup is None."""
    gridmap = parse_gridmap("# nothing\n\n")
    assert len(gridmap) == 0 and gridmap.lookup(ALICE) is None and gridmap == GridMap()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f'"{ALICE} alice\n', "closing quote"),
        (f'"{ALICE}"\n', "no local account"),
        (f'"{ALICE}"   # only a comment\n', "no local account"),
        (f'"{ALICE}" alice bob\n', "unexpected text"),
        (f'"{ALICE}" alice,,bob\n', "malformed account list"),
        (f'"{ALICE}" alice,\n', "malformed account list"),
        (f'"{ALICE}"alice\n', "white space after the DN"),
        ('"" alice\n', "empty DN"),
    ],
)
def test_malformed_line_is_a_one_line_error_with_its_number(text: str, problem: str) -> None:
    """A malformed line raises GridMapError naming the source and the line number."""
    with pytest.raises(GridMapError) as caught:
        parse_gridmap(f"# header\n\n{text}", source="/etc/grid-security/grid-mapfile")
    message = str(caught.value)
    assert message.startswith("/etc/grid-security/grid-mapfile:3: ") and problem in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_load_gridmap_reads_a_utf8_file(tmp_path: Path) -> None:
    """load_gridmap parses the file; errors name the file path."""
    path = tmp_path / "grid-mapfile"
    path.write_text(SAMPLE, encoding="utf-8")
    assert load_gridmap(path).first_account(BOB) == "bob"
    path.write_text(f'"{ALICE}"\n', encoding="utf-8")
    with pytest.raises(GridMapError, match=rf"^{path}:1: "):
        load_gridmap(path)


def test_unreadable_gridmap_is_a_gridmap_error(tmp_path: Path) -> None:
    """A missing or unreadable file raises GridMapError with one line naming it."""
    with pytest.raises(GridMapError, match="No such file") as caught:
        load_gridmap(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(caught.value)
    with pytest.raises(GridMapError):
        load_gridmap(tmp_path)  # a directory


def test_invalid_utf8_bytes_become_escapes(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are kept as \\xHH rather than failing the whole file."""
    path = tmp_path / "grid-mapfile"
    path.write_bytes(b'"/CN=Latin\xe9" latin\n')
    assert load_gridmap(path).first_account("/CN=Latin\\xE9") == "latin"


# ---------------------------------------------------------------------------
# Reloading (GridMapAuthorizer): issue 12, finding 9
# ---------------------------------------------------------------------------


class _Named:
    """An identity source that always answers with ``dn``."""

    def __init__(self, dn: str) -> None:
        self.dn = dn

    def identify(self, request: object) -> IdToken:
        return IdToken(dn=self.dn)


def _replace_keeping_size_and_mtime(path: Path, text: str) -> None:
    """Install ``text`` (same length) as ``path`` by rename, with the old mtime (as ``rsync -t`` does)."""
    old = os.stat(path)
    assert len(text.encode()) == old.st_size
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text, encoding="utf-8")
    os.utime(fresh, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(fresh, path)


def test_reload_sees_an_edit_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    """A replaced grid-mapfile with the same size and mtime is re-read (the inode and ctime changed)."""
    path = tmp_path / "grid-mapfile"
    path.write_text(f'"{ALICE}" alice\n', encoding="utf-8")
    authorizer = GridMapAuthorizer(_Named(ALICE), str(path), load_gridmap)
    assert authorizer.identify(object()).username == "alice"  # type: ignore[arg-type]
    _replace_keeping_size_and_mtime(path, f'"{ALICE}" carol\n')
    assert authorizer.reload() is True
    assert authorizer.identify(object()).username == "carol"  # type: ignore[arg-type]
    assert authorizer.reload() is False  # unchanged since: not read again


def test_forced_reload_reads_the_file_whatever_its_stamp(tmp_path: Path) -> None:
    """reload(force=True) (SIGHUP) re-reads even when nothing in the file's stat changed."""
    path = tmp_path / "grid-mapfile"
    path.write_text(f'"{ALICE}" alice\n', encoding="utf-8")
    reads: list[str] = []

    def loader(name: str) -> GridMap:
        reads.append(name)
        return load_gridmap(name)

    authorizer = GridMapAuthorizer(_Named(ALICE), str(path), loader)
    assert authorizer.reload() is False and len(reads) == 1
    assert authorizer.reload(force=True) is True and len(reads) == 2


def test_removed_dn_loses_access_after_a_stamp_keeping_edit(tmp_path: Path) -> None:
    """A DN removed by an edit that keeps size and mtime is refused after the next reload."""
    path = tmp_path / "grid-mapfile"
    path.write_text(f'"{ALICE}" alice\n', encoding="utf-8")
    authorizer = GridMapAuthorizer(_Named(ALICE), str(path), load_gridmap)
    authorizer.identify(object())  # type: ignore[arg-type]
    _replace_keeping_size_and_mtime(path, "# " + f'"{ALICE}" alice'[2:] + "\n")
    authorizer.reload()
    with pytest.raises(NotAuthorized, match="not in the grid-mapfile"):
        authorizer.identify(object())  # type: ignore[arg-type]
