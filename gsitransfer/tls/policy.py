"""Which subjects each trusted CA may sign: signing policies and namespaces.

A Globus trusted directory may hold, beside each CA certificate
``<hash>.0``, two descriptions of the names that CA is trusted for:

* ``<hash>.signing_policy``, Globus EACL::

      access_id_CA   X509    '/C=US/O=Grid Test/CN=Grid Test Root CA'
      pos_rights     globus  CA:sign
      cond_subjects  globus  '"/C=US/O=Grid Test/*" "/C=US/O=Other/CN=?x"'

  a block per ``access_id_CA``; the CA may sign a subject matching one of the
  ``cond_subjects`` patterns of its block with ``pos_rights globus CA:sign``
  (``*``: any run of characters, ``?``: any one character; case-sensitive);
* ``<hash>.namespaces``, IGTF/EUGridPMA::

      TO Issuer "/C=US/O=Grid Test/CN=Grid Test Root CA" \\
        PERMIT Subject "/C=US/O=Grid Test/.*"
      TO Issuer SELF DENY Subject "/C=US/O=Grid Test/CN=Bad.*"

  (``SELF``: the CA of this file; keywords in any case; ``\\`` at the end of a
  line continues it; ``#`` starts a comment.) A subject is permitted when a
  ``PERMIT`` rule of its issuer matches and no ``DENY`` rule does, compared
  without regard to case as canl does. The patterns are regular expressions
  in the files; the subset every IGTF file uses is read: literal characters,
  ``\\x`` (the character x), ``.`` (any one character) and ``.*`` (any run).
  A file using anything else is refused as a whole (its CA signs nothing).

Each CA of a verified chain is held to its files when it signs (proxies are
named after their end-entity certificate and are not a CA's signature: they
are skipped, and so is a self-signed trust anchor). ``mode``
(``--signing-policy``): ``if-present`` (default) enforces every file present
and accepts a CA that has neither, as canl (dCache, StoRM) does by default;
``require`` refuses the certificates of a CA with neither file (canl's
``*_REQUIRE`` modes, Globus's historical behaviour); ``ignore`` turns the
check off. When a CA has both files, both must permit the subject.

Reading is linear in the files' size, and matching a subject against a
pattern costs at most ``len(subject) * len(pattern)`` character comparisons:
no regular-expression engine runs on the files' patterns, so no pattern can
make matching backtrack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, TypeVar

from cryptography import x509

from gsitransfer.identity import format_dn, is_proxy

#: accepted values of ``TrustConfig.signing_policy`` / ``--signing-policy``
SIGNING_POLICY_MODES = ("if-present", "require", "ignore")

_T = TypeVar("_T")

#: a pattern item standing for any one character
ANY_ONE = None


class PolicyError(ValueError):
    """A signing policy or namespaces file cannot be read (one line naming file and line)."""


@dataclass(frozen=True)
class Pattern:
    """A subject pattern: literal runs and single-character wildcards between ``*`` runs."""

    text: str
    #: the pieces between the any-run wildcards (a piece item: a character, or ANY_ONE)
    pieces: tuple[tuple[str | None, ...], ...]
    fold_case: bool = False

    def matches(self, subject: str) -> bool:
        """True when the whole of ``subject`` matches (no backtracking: leftmost placement of each piece)."""
        text = subject.casefold() if self.fold_case else subject
        pieces = self.pieces
        if len(pieces) == 1:
            return len(text) == len(pieces[0]) and _piece_at(pieces[0], text, 0)
        first, last = pieces[0], pieces[-1]
        if len(text) < len(first) + len(last) or not _piece_at(first, text, 0):
            return False
        end = len(text) - len(last)
        if not _piece_at(last, text, end):
            return False
        position = len(first)
        for piece in pieces[1:-1]:
            found = _find_piece(piece, text, position, end)
            if found < 0:
                return False
            position = found + len(piece)
        return True


def _piece_at(piece: tuple[str | None, ...], text: str, start: int) -> bool:
    if start + len(piece) > len(text):
        return False
    return all(item is ANY_ONE or item == text[start + offset] for offset, item in enumerate(piece))


def _find_piece(piece: tuple[str | None, ...], text: str, start: int, end: int) -> int:
    """The first position >= start where ``piece`` fits entirely before ``end``, or -1."""
    for position in range(start, end - len(piece) + 1):
        if _piece_at(piece, text, position):
            return position
    return -1


def glob_pattern(text: str) -> Pattern:
    """A Globus ``cond_subjects`` pattern: ``*`` any run, ``?`` any one character."""
    pieces: list[tuple[str | None, ...]] = []
    current: list[str | None] = []
    for char in text:
        if char == "*":
            pieces.append(tuple(current))
            current = []
        else:
            current.append(ANY_ONE if char == "?" else char)
    pieces.append(tuple(current))
    return Pattern(text, tuple(pieces))


_REGEX_UNSUPPORTED = frozenset("[](){}+?|^$")


def regex_pattern(text: str) -> Pattern:
    """An IGTF namespace pattern (the regular-expression subset: ``\\x``, ``.``, ``.*``); ValueError otherwise."""
    pieces: list[tuple[str | None, ...]] = []
    current: list[str | None] = []
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            if index + 1 >= length:
                raise ValueError("a pattern ends with a lone backslash")
            current.append(text[index + 1].casefold())
            index += 2
            continue
        if char == ".":
            if index + 1 < length and text[index + 1] == "*":
                pieces.append(tuple(current))
                current = []
                index += 2
            else:
                current.append(ANY_ONE)
                index += 1
            continue
        if char == "*" or char in _REGEX_UNSUPPORTED:
            raise ValueError(f"unsupported regular-expression syntax {char!r} in {text!r}")
        current.append(char.casefold())
        index += 1
    pieces.append(tuple(current))
    return Pattern(text, tuple(pieces), fold_case=True)


# ---------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------


def _words(line: str, source: str, number: int) -> list[str]:
    """White-space separated words; ``'...'`` and ``"..."`` are one word (quotes removed); ``#`` ends the line."""
    words: list[str] = []
    index, length = 0, len(line)
    while index < length:
        char = line[index]
        if char in " \t\r\f\v":
            index += 1
            continue
        if char == "#":
            break
        if char in "'\"":
            end = line.find(char, index + 1)
            if end < 0:
                raise PolicyError(f"{source}:{number}: unclosed quote")
            words.append(line[index + 1:end])
            index = end + 1
            continue
        end = index
        while end < length and line[end] not in " \t\r\f\v'\"#":
            end += 1
        words.append(line[index:end])
        index = end
    return words


@dataclass
class _Block:
    ca: str
    may_sign: bool = False
    subjects: list[Pattern] = field(default_factory=list)


def parse_signing_policy(text: str, source: str = "signing_policy") -> dict[str, tuple[Pattern, ...]]:
    """CA DN -> the subject patterns it may sign, from Globus EACL text."""
    blocks: list[_Block] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = _words(line, source, number)
        if not words:
            continue
        keyword = words[0].lower()
        if keyword == "access_id_ca":
            if len(words) != 3 or words[1].upper() != "X509":
                raise PolicyError(f"{source}:{number}: expected access_id_CA X509 '<CA DN>'")
            blocks.append(_Block(words[2]))
            continue
        if not blocks:
            raise PolicyError(f"{source}:{number}: {words[0]} before any access_id_CA")
        block = blocks[-1]
        if keyword == "pos_rights":
            if len(words) != 3:
                raise PolicyError(f"{source}:{number}: expected pos_rights globus CA:sign")
            block.may_sign = block.may_sign or (words[1].lower() == "globus" and words[2] == "CA:sign")
        elif keyword == "cond_subjects":
            if len(words) != 3 or words[1].lower() != "globus":
                raise PolicyError(f"{source}:{number}: expected cond_subjects globus '\"<pattern>\" ...'")
            block.subjects += [glob_pattern(word) for word in _words(words[2], source, number)]
        else:
            raise PolicyError(f"{source}:{number}: unknown keyword {words[0]!r}")
    policy: dict[str, list[Pattern]] = {}
    for block in blocks:
        granted = policy.setdefault(block.ca, [])
        if block.may_sign:
            granted += block.subjects
    return {ca: tuple(patterns) for ca, patterns in policy.items()}


@dataclass(frozen=True)
class NamespaceRule:
    """``TO Issuer <ca> PERMIT|DENY Subject <pattern>``."""

    permit: bool
    pattern: Pattern


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash-newline continuations joined, numbered by their first line."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\") and not stripped.lstrip().startswith("#"):
            pending.append(stripped[:-1])
            continue
        pending.append(line)
        yield start, " ".join(pending)
        pending = []
    if pending:
        yield start, " ".join(pending)


def parse_namespaces(text: str, self_dn: str, source: str = "namespaces") -> dict[str, tuple[NamespaceRule, ...]]:
    """CA DN -> its rules, from IGTF namespaces text; ``SELF`` stands for ``self_dn``."""
    rules: dict[str, list[NamespaceRule]] = {}
    for number, line in _logical_lines(text):
        words = _words(line, source, number)
        if not words:
            continue
        if (len(words) != 6 or words[0].upper() != "TO" or words[1].lower() != "issuer"
                or words[3].upper() not in ("PERMIT", "DENY") or words[4].lower() != "subject"):
            raise PolicyError(f"{source}:{number}: expected TO Issuer \"<CA DN>\" PERMIT|DENY Subject \"<pattern>\"")
        issuer = self_dn if words[2].upper() == "SELF" and not line_has_quoted(line, "SELF") else words[2]
        try:
            pattern = regex_pattern(words[5])
        except ValueError as error:
            raise PolicyError(f"{source}:{number}: {error}") from None
        rules.setdefault(issuer, []).append(NamespaceRule(words[3].upper() == "PERMIT", pattern))
    return {ca: tuple(found) for ca, found in rules.items()}


def line_has_quoted(line: str, word: str) -> bool:
    """True when ``word`` appears quoted in ``line`` (then it is a DN, not the keyword)."""
    return f'"{word}"' in line or f"'{word}'" in line


# ---------------------------------------------------------------------------
# The policies of a trust store
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CAPolicy:
    """What one CA may sign: its signing-policy patterns and namespace rules (None: no such file)."""

    ca: str
    signing: tuple[Pattern, ...] | None = None
    namespaces: tuple[NamespaceRule, ...] | None = None
    #: why its files could not be read (then it signs nothing)
    broken: str | None = None

    def refusal(self, subject: str) -> str | None:
        """Why this CA may not have signed ``subject`` (None: it may)."""
        if self.broken is not None:
            return f"the policy files of CA {self.ca} cannot be read"
        if self.signing is not None and not any(p.matches(subject) for p in self.signing):
            return f"{subject} is outside the signing policy of CA {self.ca}"
        if self.namespaces is not None:
            if any(not rule.permit and rule.pattern.matches(subject) for rule in self.namespaces) or not any(
                rule.permit and rule.pattern.matches(subject) for rule in self.namespaces
            ):
                return f"{subject} is outside the namespace of CA {self.ca}"
        return None

    @property
    def present(self) -> bool:
        """True when the CA has a policy file."""
        return self.signing is not None or self.namespaces is not None or self.broken is not None


@dataclass(frozen=True)
class SigningPolicies:
    """The policy of every trusted CA, by one-line DN, and the mode they are enforced in."""

    mode: str = "if-present"
    by_ca: Mapping[str, CAPolicy] = field(default_factory=dict)

    def refusal(self, chain: Sequence[x509.Certificate]) -> str | None:
        """Why a verified chain (leaf first) is refused by its CAs' policies (None: accepted)."""
        if self.mode == "ignore":
            return None
        for cert in chain:
            if cert.issuer == cert.subject or is_proxy(cert):
                continue
            issuer = format_dn(cert.issuer)
            policy = self.by_ca.get(issuer)
            if policy is None or not policy.present:
                if self.mode == "require":
                    return f"CA {issuer} has no signing policy or namespaces file (--signing-policy require)"
                continue
            reason = policy.refusal(format_dn(cert.subject))
            if reason is not None:
                return reason
        return None

    def without_policy(self) -> list[str]:
        """DNs of the CAs that have neither file."""
        return [ca for ca, policy in self.by_ca.items() if not policy.present]


def policy_file_names(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are policy files (``<8 hex>.signing_policy``, ``<8 hex>.namespaces``)."""
    return [name for name in names if _is_policy_file(name)]


def _is_policy_file(name: str) -> bool:
    stem, _, suffix = name.partition(".")
    return suffix in ("signing_policy", "namespaces") and len(stem) == 8 and all(c in "0123456789abcdef" for c in stem)


def load_policies(directory: str | None, cas: Sequence[tuple[str, str]], mode: str) -> SigningPolicies:
    """The policies of ``cas`` ((one-line DN, subject hash) pairs) from ``directory``'s files.

    A file that cannot be read or parsed makes its CA sign nothing (one line
    saying why is in :attr:`CAPolicy.broken`); a file naming no rule for its
    CA permits that CA nothing.
    """
    by_ca: dict[str, CAPolicy] = {}
    if mode == "ignore":
        return SigningPolicies(mode, by_ca)
    for dn, digest in cas:
        if dn in by_ca and by_ca[dn].present:
            continue
        by_ca[dn] = _ca_policy(Path(directory) if directory else None, dn, digest)
    return SigningPolicies(mode, by_ca)


def _ca_policy(directory: Path | None, dn: str, digest: str) -> CAPolicy:
    if directory is None:
        return CAPolicy(dn)
    signing_path = directory / f"{digest}.signing_policy"
    namespaces_path = directory / f"{digest}.namespaces"
    try:
        signing_text = _read_text(signing_path)
        namespaces_text = _read_text(namespaces_path)
        signing = None if signing_text is None else _for_ca(parse_signing_policy(signing_text, str(signing_path)), dn)
        namespaces = (None if namespaces_text is None
                      else _for_ca(parse_namespaces(namespaces_text, dn, str(namespaces_path)), dn))
    except PolicyError as error:
        return CAPolicy(dn, broken=str(error))
    return CAPolicy(dn, signing, namespaces)


def _for_ca(entries: Mapping[str, tuple[_T, ...]], dn: str) -> tuple[_T, ...]:
    """The entries naming CA ``dn`` (DNs compared without regard to case, as canl compares names)."""
    wanted = dn.casefold()
    return tuple(entry for ca, found in entries.items() if ca.casefold() == wanted for entry in found)


def _read_text(path: Path) -> str | None:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PolicyError(f"{os.fspath(path)}: {error.strerror or error}") from None
    return data.decode("utf-8", "surrogateescape")


__all__ = [
    "CAPolicy",
    "NamespaceRule",
    "Pattern",
    "PolicyError",
    "SIGNING_POLICY_MODES",
    "SigningPolicies",
    "glob_pattern",
    "load_policies",
    "parse_namespaces",
    "parse_signing_policy",
    "policy_file_names",
    "regex_pattern",
]
