"""Manifests: bytes in, a frozen :class:`Manifest` out, or :class:`ManifestError`.

A manifest is the INI document an AccessGrid client posts before its files,
as Python's ConfigParser writes it (no interpolation: ``%`` is literal)::

    [manifest]
    num_files = 2

    [0]
    name = results.csv
    size = 1048576
    checksum = 0d5f0d6a4bb0f6e1a3b6b1b0c7e0c1d2

Rules (each broken rule is one ManifestError with a plain-text reason):

* the body is at most ``limits.max_bytes`` and valid UTF-8;
* no line is longer than ``MAX_LINE_CHARS``; it parses as INI with unique
  sections and keys, each value on one line;
* ``[manifest]`` has ``num_files``, a decimal integer in 1..``limits.max_files``,
  and may have ``commit``: ``each`` (the default: each file is published as
  it is verified) or ``atomic`` (none until all are: SPEC 7.4);
* sections ``0 .. num_files-1`` all exist, and no other section does;
* each has ``name``, ``size`` (decimal integer >= 0) and ``checksum``
  (32 hex digits; stored lowercase);
* every name is one safe path component on Linux, macOS and Windows clients
  (see :func:`check_name`), normalised to Unicode NFC, and names are unique
  within the manifest;
* the sizes add up to at most ``limits.max_total_size`` (when set).

Pure: no I/O.
"""

from __future__ import annotations

import configparser
import re
import unicodedata
from dataclasses import dataclass, field

from .errors import ManifestError, ManifestTooLarge

_DECIMAL = re.compile(r"[0-9]{1,20}\Z")
_MD5 = re.compile(r"[0-9a-fA-F]{32}\Z")
#: names beginning with this are kept for the server's own files
RESERVED_PREFIX = ".gsitransfer"
MAX_NAME_BYTES = 255
#: longer lines are refused before ConfigParser sees them (its option pattern
#: backtracks quadratically on long lines)
MAX_LINE_CHARS = 1024
_REQUIRED_KEYS = ("name", "size", "checksum")
#: the values of ``commit`` in ``[manifest]``: the first is the default
COMMIT_MODES = ("each", "atomic")
#: keys the server itself puts in a handler's ``file_info``: a client may not
#: name them in a file's section (a handler must be able to trust them)
RESERVED_KEYS = ("transfer_key", "file_num", "transfer_size")


@dataclass(frozen=True)
class ManifestLimits:
    """Bounds on what one manifest may ask for."""

    max_bytes: int = 1024 * 1024
    max_files: int = 10_000
    #: largest single file, in bytes (None: no limit)
    max_file_size: int | None = None
    #: largest sum of the file sizes of one manifest, in bytes (None: no limit)
    max_total_size: int | None = None

    @property
    def largest_file(self) -> int | None:
        """The largest file one upload may be (a one-file manifest: both limits hold), or None."""
        bounds = [bound for bound in (self.max_file_size, self.max_total_size) if bound is not None]
        return min(bounds) if bounds else None


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest."""

    num: int
    name: str
    #: bytes announced; None: not known before the body ends (a chunked ``PUT``), the limits checked as it arrives
    size: int | None
    checksum: str  # MD5, 32 lowercase hex; "" when none was announced (tus creation without md5)
    #: other keys the client put in the section, passed through as strings
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def counted_size(self) -> int:
        """The bytes this file counts for in totals and quotas: 0 while its size is not known."""
        return 0 if self.size is None else self.size

    def file_info(self) -> dict[str, object]:
        """The seed's ``file_info`` dict for this file."""
        info: dict[str, object] = dict(self.extra)
        # a file announced without an MD5 (tus creation) says so with None
        info.update(name=self.name, size=self.size, checksum=self.checksum or None)
        return info


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its files, in order."""

    files: tuple[FileEntry, ...]
    #: ``[manifest] commit``: ``each`` (publish each file when verified) or ``atomic`` (all together)
    commit: str = COMMIT_MODES[0]

    @property
    def atomic(self) -> bool:
        """True for a batch published together (``commit = atomic``)."""
        return self.commit == "atomic"

    @property
    def num_files(self) -> int:
        """How many files the manifest announces."""
        return len(self.files)

    @property
    def total_size(self) -> int:
        """Sum of the announced sizes."""
        return sum(entry.counted_size for entry in self.files)

    def to_ini(self) -> str:
        """Serialise as ConfigParser writes it (parse_manifest reads it back)."""
        parser = _new_parser()
        parser["manifest"] = {"num_files": str(self.num_files)}
        if self.commit != COMMIT_MODES[0]:
            parser["manifest"]["commit"] = self.commit
        for entry in self.files:
            section = dict(entry.extra)
            section.update(name=entry.name, size=str(entry.size), checksum=entry.checksum)
            parser[str(entry.num)] = section
        lines: list[str] = []
        for section_name in parser.sections():
            lines.append(f"[{section_name}]")
            for key, value in parser[section_name].items():
                lines.append(f"{key} = {value}")
            lines.append("")
        return "\n".join(lines)

    @classmethod
    def of(cls, *entries: tuple[str, int, str]) -> "Manifest":
        """Build from ``(name, size, md5)`` triples, validating like the parser."""
        files = tuple(
            FileEntry(num, check_name(name), _check_size(size, name), _check_md5(md5, name))
            for num, (name, size, md5) in enumerate(entries)
        )
        _check_unique(files)
        return cls(files)


def one_file_manifest(
    name: str,
    size: int | None,
    checksum: str | None,
    limits: ManifestLimits = ManifestLimits(),
    extra: tuple[tuple[str, str], ...] = (),
) -> Manifest:
    """A one-file manifest from values a client sent otherwise (tus creation or ``PUT`` headers), checked
    like a posted one; ``size`` None: not known yet (a chunked ``PUT``); ``checksum`` None: no MD5
    announced (the entry's is ``""``, the server computes it); ``extra``: more one-line keys for the
    handler's ``file_info`` (not the server's reserved ones)."""
    for key, value in extra:
        if key in RESERVED_KEYS or key in _REQUIRED_KEYS or "\n" in value or "\r" in value:
            raise ManifestError(f"{key} cannot be given for a file")
    name = check_name(name)
    if size is not None:
        size = _check_size(size, name)
        if limits.max_file_size is not None and size > limits.max_file_size:
            raise ManifestError(f"file {name!r} is larger than {limits.max_file_size} bytes")
        if limits.max_total_size is not None and size > limits.max_total_size:
            raise ManifestError(f"the files add up to {size} bytes (at most {limits.max_total_size})")
    md5 = "" if checksum is None else _check_md5(checksum, name)
    return Manifest((FileEntry(0, name, size, md5, extra),))


def parse_manifest(body: bytes, limits: ManifestLimits = ManifestLimits()) -> Manifest:
    """Parse and validate a posted manifest body."""
    if len(body) > limits.max_bytes:
        raise ManifestTooLarge(f"manifest is larger than {limits.max_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("manifest is not valid UTF-8") from None
    for number, line in enumerate(text.splitlines(), start=1):
        _check_line(number, line)
    parser = _new_parser()
    try:
        parser.read_string(text)
    except configparser.Error as error:
        raise ManifestError(f"manifest is not a valid INI document: {_first_line(error)}") from None
    if not parser.has_section("manifest"):
        raise ManifestError("manifest has no [manifest] section")
    num_files = _read_int(parser, "manifest", "num_files")
    if num_files < 1:
        raise ManifestError("num_files must be at least 1")
    if num_files > limits.max_files:
        raise ManifestError(f"too many files: {num_files} (at most {limits.max_files})")
    expected = {"manifest", *(str(n) for n in range(num_files))}
    for section_name in parser.sections():
        if section_name not in expected:
            raise ManifestError(f"unexpected section [{section_name}]")
    commit = _read_commit(parser)
    files = tuple(_read_entry(parser, num, limits) for num in range(num_files))
    _check_unique(files)
    manifest = Manifest(files, commit)
    if limits.max_total_size is not None and manifest.total_size > limits.max_total_size:
        raise ManifestError(
            f"the files add up to {manifest.total_size} bytes (at most {limits.max_total_size})"
        )
    return manifest


_WINDOWS_FORBIDDEN = set('<>:"|?*')
#: Unicode categories never allowed in a name: controls, format characters
#: (bidi overrides, zero-width joiners), line and paragraph separators
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
_WINDOWS_DEVICE = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])\Z", re.I)


def check_name(name: str) -> str:
    """Return ``name`` in Unicode NFC if it is one safe path component, else raise ManifestError.

    Safe means: on Linux, macOS and Windows it names one file in the
    directory it is saved to, and nothing else — no separators (``/`` ``\\``),
    no ``.``/``..``, no NUL or control characters, none of Windows'
    ``< > : " | ? *``, no reserved device name (``CON``, ``NUL.txt``, ``COM1``
    ...), no trailing dot or space, at most 255 UTF-8 bytes, and not one of
    the server's own ``.gsitransfer*`` names. Names are normalised to NFC so
    that two names that look the same (composed and decomposed accents) are
    the same name.
    """
    if not isinstance(name, str) or name == "":
        raise ManifestError("file name is empty")
    if any(0xD800 <= ord(char) <= 0xDFFF for char in name):
        raise ManifestError(f"unsafe file name {name!r}: contains a surrogate")
    name = unicodedata.normalize("NFC", name)
    if name in (".", ".."):
        raise ManifestError(f"unsafe file name {name!r}")
    if "/" in name or "\\" in name:
        raise ManifestError(f"unsafe file name {name!r}: contains a path separator")
    if any(unicodedata.category(char) in _INVISIBLE for char in name):
        raise ManifestError(
            f"unsafe file name {name!r}: contains a control, format or line-separator character"
        )
    if _WINDOWS_FORBIDDEN.intersection(name):
        raise ManifestError(f"unsafe file name {name!r}: contains one of < > : \" | ? *")
    if name.endswith((".", " ")):
        raise ManifestError(f"unsafe file name {name!r}: ends with a dot or a space")
    if _WINDOWS_DEVICE.match(name.split(".", 1)[0].rstrip(" ")):
        raise ManifestError(f"unsafe file name {name!r}: a reserved device name on Windows")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ManifestError(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith(RESERVED_PREFIX):
        raise ManifestError(f"file name {name!r} is reserved")
    return name


def _check_line(number: int, line: str) -> None:
    """Refuse, before ConfigParser sees it, a line that is too long or not one of
    ``[section]``, ``key = value``, a comment or blank."""
    if len(line) > MAX_LINE_CHARS:
        raise ManifestError(f"line {number} is longer than {MAX_LINE_CHARS} characters")
    stripped = line.strip()
    if not stripped or stripped[0] in "#;[":
        return
    if line[0] in " \t":
        raise ManifestError(f"line {number} is indented: values span one line only")
    if "=" not in line and ":" not in line:
        raise ManifestError(f"line {number} is not 'key = value'")


def _new_parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(
        interpolation=None, strict=True, default_section="\x00no-defaults"
    )


def _read_entry(parser: configparser.ConfigParser, num: int, limits: ManifestLimits) -> FileEntry:
    section_name = str(num)
    if not parser.has_section(section_name):
        raise ManifestError(f"manifest has no section [{section_name}]")
    # a plain dict: ConfigParser's section proxies cost more than the rest of the parse
    section = dict(parser.items(section_name, raw=True))
    for key, value in section.items():
        if "\n" in value or "\r" in value:
            raise ManifestError(f"{key} in [{section_name}] spans several lines")
    for key in RESERVED_KEYS:
        if key in section:
            raise ManifestError(f"{key} in [{section_name}] is reserved for the server")
    for key in _REQUIRED_KEYS:
        if key not in section:
            raise ManifestError(f"section [{section_name}] has no {key}")
    name = check_name(section["name"])
    size = _check_size(section["size"], name)
    if limits.max_file_size is not None and size > limits.max_file_size:
        raise ManifestError(f"file {name!r} is larger than {limits.max_file_size} bytes")
    checksum = _check_md5(section["checksum"], name)
    extra = tuple(
        (key, value) for key, value in section.items() if key not in _REQUIRED_KEYS
    )
    return FileEntry(num=num, name=name, size=size, checksum=checksum, extra=extra)


def _read_int(parser: configparser.ConfigParser, section: str, key: str) -> int:
    if not parser.has_option(section, key):
        raise ManifestError(f"section [{section}] has no {key}")
    value = parser.get(section, key)
    if not _DECIMAL.match(value):
        raise ManifestError(f"{key} in [{section}] is not a number: {value!r}")
    return int(value)


def _read_commit(parser: configparser.ConfigParser) -> str:
    """``[manifest] commit``, one of :data:`COMMIT_MODES` (case-insensitive; absent: the default)."""
    if not parser.has_option("manifest", "commit"):
        return COMMIT_MODES[0]
    value = parser.get("manifest", "commit").strip()
    if value.lower() not in COMMIT_MODES:
        raise ManifestError(f"commit in [manifest] must be one of {', '.join(COMMIT_MODES)}, not {value!r}")
    return value.lower()


def _check_size(size: object, name: str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise ManifestError(f"size of {name!r} is negative")
        return size
    if isinstance(size, str) and _DECIMAL.match(size):
        return int(size)
    raise ManifestError(f"size of {name!r} is not a number: {size!r}")


def _check_md5(checksum: str, name: str) -> str:
    if not isinstance(checksum, str) or not _MD5.match(checksum):
        raise ManifestError(f"checksum of {name!r} is not an MD5 (32 hex digits)")
    return checksum.lower()


def _check_unique(files: tuple[FileEntry, ...]) -> None:
    seen: set[str] = set()
    for entry in files:
        if entry.name in seen:
            raise ManifestError(f"file name {entry.name!r} appears twice")
        seen.add(entry.name)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
