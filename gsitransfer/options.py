"""The command line of ``twistd accessgrid-transfer``: parsing, checking, one-line errors.

:class:`Options` parses and checks every option (and is what the twistd
plugin shows as help); :class:`ConfigError` and :func:`fail` are how a
configuration problem becomes one line on stderr and a non-zero exit, never a
traceback. Building servers from the options is :mod:`gsitransfer.service`'s
job; this module imports nothing of the server.
"""

from __future__ import annotations

import os
import pwd
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, NoReturn, Sequence, TextIO

from twisted.logger import LoggingFile
from twisted.python import usage

from .core import DEFAULT_MANIFEST_TTL
from .fastpaths import FastPaths
from .postgres.connection import is_postgres_url

PROGRAM = "accessgrid-transfer"

#: most worker processes ``--workers`` starts
MAX_WORKERS = 64

#: how a process takes part: alone, as the supervisor of workers, or as one of them
Role = Literal["single", "supervisor", "worker"]


class ConfigError(Exception):
    """A configuration problem, reported as one line."""


def fail(message: str, status: int = 2) -> NoReturn:
    """Print one error line on stderr (:func:`report`) and exit."""
    report(message)
    raise SystemExit(status)


def report(message: str) -> None:
    """Print one error line on stderr.

    Once twistd has begun logging, ``sys.stderr`` is a ``LoggingFile`` that
    turns writes into timestamped log lines: the line goes to the process's
    real stderr (``sys.__stderr__``) instead.
    """
    line = f"{PROGRAM}: error: {message}\n"
    stream = sys.stderr
    if isinstance(stream, LoggingFile) and sys.__stderr__ is not None:
        if _goes_nowhere(sys.__stderr__):  # a daemon: the log file is the only place it is read
            stream.write(line)
        stream = sys.__stderr__
    stream.write(line)
    stream.flush()


def _goes_nowhere(stream: TextIO) -> bool:
    """Whether ``stream`` is /dev/null (twistd points a daemon's stdio there)."""
    try:
        here, null = os.fstat(stream.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (here.st_dev, here.st_ino) == (null.st_dev, null.st_ino)


@dataclass(frozen=True)
class ServiceAccount:
    """The account twistd's ``--uid``/``--gid`` will switch to once the ports are bound."""

    uid: int
    gid: int

    @property
    def name(self) -> str:
        """The account's user name (its uid when it has none)."""
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def describe(self) -> str:
        """``nobody (uid 65534, gid 65534)``: how error lines name the account."""
        return f"{self.name} (uid {self.uid}, gid {self.gid})"

    def groups(self) -> list[int]:
        """The groups the account has once switched to (as initgroups(3) sets them)."""
        try:
            return os.getgrouplist(pwd.getpwuid(self.uid).pw_name, self.gid)
        except KeyError:
            return [self.gid]


def _split_assignment(value: str, option: str, right: str) -> tuple[str, str]:
    prefix, sep, rest = value.partition("=")
    if not sep or not prefix or not rest:
        raise usage.UsageError(f"--{option} wants PREFIX={right}, got {value!r}")
    if "/" in prefix or prefix in (".", ".."):
        raise usage.UsageError(f"--{option}: prefix {prefix!r} must be one path segment")
    return prefix, rest


def _number(option: str, kind: Callable[[str], float]) -> Callable[[str], float]:
    """A coercer for ``--option`` whose error names the option and the value."""
    noun = "a whole number" if kind is int else "a number"

    def coerce(text: str) -> float:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"--{option} wants {noun}, got {text!r}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]  # usage.Options reads it for --help
    return coerce


_PARAMETERS: list[list[object]] = [
    ["cert", None, None, "Server certificate (PEM) for --https."],
    ["key", None, None, "Server private key (PEM) for --https."],
    ["ca-dir", None, None, "Trusted CA directory, Globus layout (<hash>.0, <hash>.r0)."],
    ["ca-file", None, None, "Trusted CA bundle (PEM), in addition to or instead of --ca-dir."],
    ["crl-policy", None, "if-present", "CRL policy: if-present (default) or strict."],
    ["signing-policy", None, "if-present",
     "CA signing policies and namespaces (<hash>.signing_policy, <hash>.namespaces): "
     "if-present (default), require or ignore."],
    ["gridmap", None, None, "Grid-mapfile: only DNs listed in it are served."],
    ["manifest-ttl", None, DEFAULT_MANIFEST_TTL, "Seconds a transfer key lives.", float],
    ["public-url", None, None, "Base URL given to clients (e.g. https://data.example.org:8443)."],
    ["state", None, None,
     "Transfer database: an SQLite file (default: in the first --store directory), or "
     "postgresql://user@host:port/db (a libpq URI) shared by several nodes."],
    ["idle-timeout", None, 300.0, "Seconds a silent connection is kept.", float],
    ["head-timeout", None, 30.0, "Seconds a client has to send a request's headers.", float],
    ["handshake-timeout", None, 30.0, "Seconds a client has to finish the TLS handshake (at most --idle-timeout).", float],
    ["first-request-timeout", None, 60.0, "Seconds from the connection (after the TLS handshake) to the first byte of its first request (at most --idle-timeout).", float],
    ["keepalive-timeout", None, 75.0, "Seconds a connection waits between requests for the next one (at most --idle-timeout).", float],
    ["max-connection-age", None, 3600.0, "Seconds after which a connection is closed once its current request is answered (0: no limit).", float],
    ["min-body-rate", None, 1024.0, "Bytes/s a request body must at least arrive at (0: off).", float],
    ["reload-interval", None, 300.0, "Seconds between re-reads of CAs, CRLs, grid-mapfile.", float],
    ["handler-timeout", None, 60.0, "Seconds a handler callback may take (then 503).", float],
    ["shutdown-grace", None, 30.0, "On SIGTERM, seconds to let uploads in flight finish.", float],
    ["max-manifest-bytes", None, 1024 * 1024, "Largest manifest body accepted.", int],
    ["max-files", None, 10_000, "Most files one manifest may announce.", int],
    ["max-transfer-size", None, None, "Largest total size (bytes) of one manifest's files.", int],
    ["max-pending-files", None, 100_000, "Most files one identity (all anonymous clients: one) may have announced and not stored (0: no limit).", int],
    ["listing-owners", None, "own", "Whose uploader DN a listing shows: all, own (the asking person's only; none to anonymous clients) or none."],
    ["max-pending-bytes", None, None, "Most bytes one identity may have announced and not stored (0 or absent: no limit).", int],
    ["workers", None, 1, "Processes serving the listeners (1: this one; N > 1: a supervisor and N workers).", int],
    ["metrics", None, None, "Serve /metrics (Prometheus), /healthz and /readyz in plain HTTP on this endpoint (e.g. tcp:9108:interface=127.0.0.1)."],
    ["audit-log", None, None, "Append one JSON line per manifest, upload, download, cancel, delete, expiry and refusal to FILE (SIGUSR1 reopens it)."],
]


#: ``--help``'s sections: each heading and the long options under it (every option once)
HELP_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Listening", ("http", "https", "public-url", "trusted-proxy")),
    ("Trust (re-read on SIGHUP and every --reload-interval)",
     ("cert", "key", "ca-dir", "ca-file", "crl-policy", "signing-policy", "gridmap", "reload-interval")),
    ("Storage", ("store", "create-store", "handler", "state", "manifest-ttl", "listing-owners")),
    ("Limits", ("idle-timeout", "head-timeout", "handshake-timeout", "first-request-timeout",
                "keepalive-timeout", "max-connection-age", "min-body-rate", "handler-timeout",
                "max-manifest-bytes", "max-files", "max-transfer-size", "max-pending-files",
                "max-pending-bytes")),
    ("Operations", ("workers", "shutdown-grace", "metrics", "audit-log", "no-fast-paths", "version", "help")),
)


def versions() -> list[str]:
    """What ``--version`` prints: gsitransfer's version, then Twisted's, pyOpenSSL's and Python's."""
    from importlib import metadata

    from . import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"gsitransfer {__version__}",
        f"Twisted {installed('twisted')}",
        f"pyOpenSSL {installed('pyopenssl')}",
        f"Python {sys.version.split()[0]}",
    ]


def _with_named_coercers(parameters: list[list[object]]) -> list[list[object]]:
    """Numbers are parsed by coercers that name their option in the error line."""
    named: list[list[object]] = []
    for entry in parameters:
        if len(entry) > 4:
            kind = entry[4]
            assert kind is int or kind is float
            named.append([*entry[:4], _number(str(entry[0]), kind)])
        else:
            named.append(entry)
    return named


class Options(usage.Options):
    """Command-line options of ``twistd accessgrid-transfer``."""

    synopsis = "[options]"
    longdesc = (
        "Serve AccessGrid-style file transfers (manifest + one POST per file, "
        "MD5-verified) over plain HTTP and/or mutual TLS (GSI-style identity from "
        "the client certificate). Example: twistd -n accessgrid-transfer "
        "--http tcp:8080:interface=127.0.0.1 --store data=./transfer-data --create-store"
    )

    optFlags = [
        [
            "no-fast-paths",
            None,
            "Serve every request through the plain reference paths: twisted.web's Request, "
            "Twisted's TLS transport, Twisted's reactor, Site.log "
            "(as GSITRANSFER_FAST_PATHS=off in the environment).",
        ],
        [
            "create-store",
            None,
            "Create missing --store directories (and the directory of --state): mode 0750, "
            "owned by twistd's --uid/--gid when given. Without it a missing one is an error.",
        ],
    ]
    optParameters = _with_named_coercers(_PARAMETERS)

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.python.usage is untyped
        self["http"] = []
        self["https"] = []
        self["stores"] = []
        self["handlers"] = []
        self["trusted_proxies"] = []
        #: the arguments as given: ``--workers`` starts its workers with them
        self.argv: list[str] = []

    def opt_version(self) -> NoReturn:
        """Show gsitransfer's version and Twisted's, then exit."""
        print("\n".join(versions()))
        raise SystemExit(0)

    def getUsage(self, width: int | None = None) -> str:
        """The options under the headings of :data:`HELP_SECTIONS`, then the description."""
        width = width or int(os.environ.get("COLUMNS", "80"))
        shown: dict[str, dict[str, object]] = {}
        for declared in self.longOpt:
            name = declared.rstrip("=")
            shown[name] = {
                "long": name,
                "short": None,
                "doc": self.docs.get(name),
                "optType": "parameter" if declared.endswith("=") else "flag",
                "default": self.defaults.get(name),
            }
        sections: list[str] = []
        for heading, names in HELP_SECTIONS:
            entries = [shown.pop(name) for name in names if name in shown]
            if entries:
                sections.append(f"{heading}:\n" + "".join(usage.docMakeChunks(entries, width)))
        if shown:  # an option no section names still appears
            sections.append("Other:\n" + "".join(usage.docMakeChunks(list(shown.values()), width)))
        description = "\n".join(textwrap.wrap(self.longdesc, width))
        return "\n".join(sections) + "\n" + description + "\n"

    def service_account(self) -> ServiceAccount | None:
        """The account twistd's ``--uid``/``--gid`` switch to, when they name another than this process's.

        None when they are not given (or name this process's own account),
        and when no twistd parses them (a ``--workers`` worker already runs
        as the account).
        """
        parent = self.parent
        if parent is None:
            return None
        uid, gid = parent.get("uid"), parent.get("gid")
        if uid is None and gid is None:
            return None
        if uid is None:
            uid = os.geteuid()
        if gid is None:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = os.getegid()
        if (uid, gid) == (os.geteuid(), os.getegid()):
            return None
        return ServiceAccount(int(uid), int(gid))

    def opt_http(self, endpoint: str) -> None:
        """Listen for plain HTTP on a Twisted endpoint, e.g. tcp:8080:interface=127.0.0.1 (repeatable)."""
        self["http"].append(endpoint)

    def opt_https(self, endpoint: str) -> None:
        """Listen for mutual TLS on a Twisted endpoint, e.g. tcp:8443 (repeatable)."""
        self["https"].append(endpoint)

    def opt_store(self, value: str) -> None:
        """Serve directory DIR under /PREFIX/ with the default handler: PREFIX=DIR (repeatable)."""
        self["stores"].append(_split_assignment(value, "store", "DIRECTORY"))

    def opt_handler(self, value: str) -> None:
        """Register your own handler: PREFIX=package.module:factory (repeatable)."""
        prefix, target = _split_assignment(value, "handler", "package.module:factory")
        if ":" not in target:
            raise usage.UsageError(f"--handler wants PREFIX=package.module:factory, got {value!r}")
        self["handlers"].append((prefix, target))

    def opt_trusted_proxy(self, address: str) -> None:
        """Believe X-Client-DN from this address or network on --http (repeatable)."""
        self["trusted_proxies"].append(address)

    opt_trusted_proxy.__name__ = "trusted-proxy"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, turning every usage problem into one line and exit status 2."""
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as error:
            fail(str(error).removeprefix("Parameter type enforcement failed: "))

    def fast_paths(self, environ: Mapping[str, str] | None = None) -> FastPaths:
        """Every plain path with ``--no-fast-paths``; otherwise as the environment says."""
        if self["no-fast-paths"]:
            return FastPaths.none()
        return FastPaths.from_environment(environ)

    def postOptions(self) -> None:
        """Check the combination of options; a problem is a UsageError of one line."""
        if not self["http"] and not self["https"]:
            raise usage.UsageError("nothing to listen on: give --http and/or --https")
        if not self["stores"] and not self["handlers"]:
            raise usage.UsageError("nothing to serve: give --store PREFIX=DIR or --handler")
        prefixes = [p for p, _ in self["stores"]] + [p for p, _ in self["handlers"]]
        duplicates = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if duplicates:
            raise usage.UsageError(f"prefix registered twice: {', '.join(duplicates)}")
        if self["https"]:
            if not self["cert"] or not self["key"]:
                raise usage.UsageError("--https needs --cert and --key")
            if not self["ca-dir"] and not self["ca-file"]:
                raise usage.UsageError("--https needs --ca-dir and/or --ca-file")
        if self["crl-policy"] not in ("if-present", "strict"):
            raise usage.UsageError("--crl-policy is if-present or strict")
        if self["signing-policy"] not in ("if-present", "require", "ignore"):
            raise usage.UsageError("--signing-policy is if-present, require or ignore")
        if self["https"] and self["trusted_proxies"] and not self["http"]:
            raise usage.UsageError("--trusted-proxy applies to --http listeners only")
        if not 1 <= self["workers"] <= MAX_WORKERS:
            raise usage.UsageError(f"--workers is between 1 and {MAX_WORKERS}")
        if self["shutdown-grace"] < 0:
            raise usage.UsageError("--shutdown-grace must not be negative")
        if self["min-body-rate"] < 0:
            raise usage.UsageError("--min-body-rate must not be negative")
        if self["max-connection-age"] < 0:
            raise usage.UsageError("--max-connection-age must not be negative")
        state = self["state"]
        if state is not None and "://" in state and not is_postgres_url(state):
            scheme = state.split("://", 1)[0]
            raise usage.UsageError(
                f"--state {scheme}://… is not supported: give an SQLite file path or a postgresql:// URI"
            )
        if self["listing-owners"] not in ("all", "own", "none"):
            raise usage.UsageError("--listing-owners is one of all, own, none")
        for limit in ("max-pending-files", "max-pending-bytes"):
            if self[limit] is not None and self[limit] < 0:
                raise usage.UsageError(f"--{limit} must not be negative")
        for number in ("manifest-ttl", "idle-timeout", "head-timeout", "handshake-timeout",
                       "first-request-timeout", "keepalive-timeout", "reload-interval", "handler-timeout"):
            if self[number] <= 0:
                raise usage.UsageError(f"--{number} must be positive")
        for endpoint in self["http"] + self["https"]:
            if ":" not in endpoint:
                raise usage.UsageError(
                    f"endpoint {endpoint!r} is not a Twisted endpoint string (e.g. tcp:8080)"
                )


__all__ = [
    "HELP_SECTIONS",
    "MAX_WORKERS",
    "PROGRAM",
    "ConfigError",
    "Options",
    "Role",
    "ServiceAccount",
    "fail",
    "report",
    "versions",
]
