"""Globus grid-mapfile: which certificate DNs may use the service, as which account.

Format (one entry a line)::

    # comment
    "/C=US/O=Grid Test/OU=People/CN=Alice Example" alice
    "/C=US/O=Grid Test/OU=People/CN=Jos\\xC3\\xA9 M\\xC3\\xBCller" jose,guest

* The DN is in OpenSSL's one-line form (what :func:`gsitransfer.identity.format_dn`
  and ``grid-proxy-info -identity`` print), between double quotes; it runs to
  the next ``"`` not preceded by a backslash, and ``\\"`` inside stands for ``"``.
  An unquoted DN (Globus allows it) runs to the first white space.
* The DN is compared with the client's one-line DN **byte for byte**: escapes
  such as ``\\/``, ``\\+`` and ``\\xC3\\xA9`` are kept as written, so write
  them as OpenSSL does (upper-case hex). Raw non-ASCII characters in the file
  are turned into ``\\xHH`` of their UTF-8, since the one-line form never holds any.
* Then one or more local account names separated by commas (no spaces); an
  optional ``# comment`` may follow. The first account is the default one.
* Blank lines and lines starting with ``#`` are ignored. When a DN appears on
  several lines the first line wins (as in Globus).

This module is pure apart from :func:`load_gridmap`, which reads the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

_WHITESPACE = " \t\r\n\f\v"


class GridMapError(ValueError):
    """The grid-mapfile cannot be read or a line is malformed (one line, with the line number)."""


@dataclass(frozen=True)
class GridMapEntry:
    """One line of a grid-mapfile."""

    dn: str
    accounts: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class GridMap:
    """A parsed grid-mapfile: DN -> local accounts."""

    entries: tuple[GridMapEntry, ...] = ()
    _index: dict[str, GridMapEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, GridMapEntry] = {}
        for entry in self.entries:
            index.setdefault(entry.dn, entry)
        object.__setattr__(self, "_index", index)

    def lookup(self, dn: str | None) -> tuple[str, ...] | None:
        """The accounts mapped to ``dn`` (one-line form), or None when it is not listed."""
        entry = self._index.get(dn) if dn is not None else None
        return entry.accounts if entry is not None else None

    def first_account(self, dn: str | None) -> str | None:
        """The default (first) account of ``dn``, or None when it is not listed."""
        accounts = self.lookup(dn)
        return accounts[0] if accounts else None

    def __contains__(self, dn: object) -> bool:
        return isinstance(dn, str) and dn in self._index

    def __len__(self) -> int:
        return len(self._index)


def parse_gridmap(text: str, source: str = "grid-mapfile") -> GridMap:
    """Parse grid-mapfile text; ``source`` names it in error messages."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = _parse_line(line, number, source)
        if entry is not None:
            entries.append(entry)
    return GridMap(tuple(entries))


def load_gridmap(path: str | os.PathLike[str]) -> GridMap:
    """Read and parse the grid-mapfile at ``path``."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise GridMapError(f"grid-mapfile {os.fspath(path)}: {error.strerror or error}") from None
    return parse_gridmap(data.decode("utf-8", "surrogateescape"), os.fspath(path))


def _parse_line(line: str, number: int, source: str) -> GridMapEntry | None:
    rest = line.lstrip(_WHITESPACE)
    if not rest or rest.startswith("#"):
        return None

    def fail(problem: str) -> GridMapError:
        return GridMapError(f"{source}:{number}: {problem}")

    if rest.startswith('"'):
        end = _closing_quote(rest)
        if end < 0:
            raise fail("the DN has no closing quote")
        dn, rest = rest[1:end].replace('\\"', '"'), rest[end + 1 :]
    else:
        end = next((i for i, char in enumerate(rest) if char in _WHITESPACE), len(rest))
        dn, rest = rest[:end], rest[end:]
    if not dn:
        raise fail("empty DN")
    if rest and rest[0] not in _WHITESPACE:
        raise fail("expected white space after the DN")
    return GridMapEntry(_one_line(dn), _accounts(rest, fail), number)


def _closing_quote(text: str) -> int:
    position = 1
    while True:
        position = text.find('"', position)
        if position < 0 or text[position - 1] != "\\":
            return position
        position += 1


def _accounts(rest: str, fail: Callable[[str], GridMapError]) -> tuple[str, ...]:
    words = rest.split("#", 1)[0].split()
    if not words:
        raise fail("no local account after the DN")
    if len(words) > 1:
        raise fail(f"unexpected text after the accounts: {words[1]!r}")
    accounts = tuple(words[0].split(","))
    if any(not account or '"' in account for account in accounts):
        raise fail(f"malformed account list {words[0]!r}")
    return accounts


def _one_line(dn: str) -> str:
    """Raw non-ASCII and control characters as ``\\xHH`` of their UTF-8 (the one-line form)."""
    if all(" " <= char <= "~" for char in dn):
        return dn
    out = []
    for char in dn:
        if " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\x{octet:02X}" for octet in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


__all__ = ["GridMap", "GridMapEntry", "GridMapError", "load_gridmap", "parse_gridmap"]
