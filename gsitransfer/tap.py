"""``twistd accessgrid-transfer``: options and the service they build.

The plugin (``twisted/plugins/gsitransfer_plugin.py``) only names this module.
:class:`Options` parses and checks the command line; :func:`makeService`
builds the servers with the Python API (``HTTPTransferServer``,
``GSIHTTPTransferServer``, ``RegisterPrefix``, ``listen``) and returns one
service that listens, expires transfer keys and reloads trust on SIGHUP and
periodically.

Every configuration problem is one line on stderr and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
from typing import Any, Callable, Literal, NoReturn

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .core import DEFAULT_MANIFEST_TTL
from .manifest import ManifestLimits

_log = Logger()

PROGRAM = "accessgrid-transfer"

#: most worker processes ``--workers`` starts
MAX_WORKERS = 64

#: how a process takes part: alone, as the supervisor of workers, or as one of them
Role = Literal["single", "supervisor", "worker"]


class ConfigError(Exception):
    """A configuration problem, reported as one line."""


def fail(message: str, status: int = 2) -> NoReturn:
    """Print one error line and exit."""
    sys.stderr.write(f"{PROGRAM}: error: {message}\n")
    raise SystemExit(status)


def _split_assignment(value: str, option: str, right: str) -> tuple[str, str]:
    prefix, sep, rest = value.partition("=")
    if not sep or not prefix or not rest:
        raise usage.UsageError(f"--{option} wants PREFIX={right}, got {value!r}")
    if "/" in prefix or prefix in (".", ".."):
        raise usage.UsageError(f"--{option}: prefix {prefix!r} must be one path segment")
    return prefix, rest


def _number(option: str, kind: type) -> Callable[[str], Any]:
    """A coercer for ``--option`` whose error names the option and the value."""
    noun = "a whole number" if kind is int else "a number"

    def coerce(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"--{option} wants {noun}, got {text!r}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """Command-line options of ``twistd accessgrid-transfer``."""

    synopsis = "[options]"
    longdesc = (
        "Serve AccessGrid-style file transfers (manifest + one POST per file, "
        "MD5-verified) over plain HTTP and/or mutual TLS (GSI-style identity from "
        "the client certificate). Example: twistd -n accessgrid-transfer "
        "--http tcp:8080:interface=127.0.0.1 --store data=./transfer-data"
    )

    optParameters = [
        ["cert", None, None, "Server certificate (PEM) for --https."],
        ["key", None, None, "Server private key (PEM) for --https."],
        ["ca-dir", None, None, "Trusted CA directory, Globus layout (<hash>.0, <hash>.r0)."],
        ["ca-file", None, None, "Trusted CA bundle (PEM), in addition to or instead of --ca-dir."],
        ["crl-policy", None, "if-present", "CRL policy: if-present (default) or strict."],
        ["gridmap", None, None, "Grid-mapfile: only DNs listed in it are served."],
        ["manifest-ttl", None, DEFAULT_MANIFEST_TTL, "Seconds a transfer key lives.", float],
        ["public-url", None, None, "Base URL given to clients (e.g. https://data.example.org:8443)."],
        ["state", None, None, "Transfer database (SQLite). Default: in the first --store directory."],
        ["idle-timeout", None, 300.0, "Seconds a silent connection is kept.", float],
        ["head-timeout", None, 30.0, "Seconds a client has to send a request's headers.", float],
        ["handshake-timeout", None, 30.0, "Seconds a client has to finish the TLS handshake (at most --idle-timeout).", float],
        ["min-body-rate", None, 1024.0, "Bytes/s a request body must at least arrive at (0: off).", float],
        ["reload-interval", None, 300.0, "Seconds between re-reads of CAs, CRLs, grid-mapfile.", float],
        ["handler-timeout", None, 60.0, "Seconds a handler callback may take (then 503).", float],
        ["shutdown-grace", None, 30.0, "On SIGTERM, seconds to let uploads in flight finish.", float],
        ["max-manifest-bytes", None, 1024 * 1024, "Largest manifest body accepted.", int],
        ["max-files", None, 10_000, "Most files one manifest may announce.", int],
        ["max-transfer-size", None, None, "Largest total size (bytes) of one manifest's files.", int],
        ["max-pending-files", None, 100_000, "Most files one identity (all anonymous clients: one) may have announced and not stored (0: no limit).", int],
        ["max-pending-bytes", None, None, "Most bytes one identity may have announced and not stored (0 or absent: no limit).", int],
        ["workers", None, 1, "Processes serving the listeners (1: this one; N > 1: a supervisor and N workers).", int],
    ]
    # numbers are parsed by coercers that name their option in the error line
    optParameters = [
        [*entry[:4], _number(entry[0], entry[4])] if len(entry) > 4 else entry for entry in optParameters
    ]

    def __init__(self) -> None:
        super().__init__()
        self["http"] = []
        self["https"] = []
        self["stores"] = []
        self["handlers"] = []
        self["trusted_proxies"] = []

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

    def parseOptions(self, options: Any = None) -> None:
        """Parse, turning every usage problem into one line and exit status 2."""
        #: the arguments as given: ``--workers`` starts its workers with them
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            fail(str(error).removeprefix("Parameter type enforcement failed: "))

    def postOptions(self) -> None:
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
        if self["https"] and self["trusted_proxies"] and not self["http"]:
            raise usage.UsageError("--trusted-proxy applies to --http listeners only")
        if not 1 <= self["workers"] <= MAX_WORKERS:
            raise usage.UsageError(f"--workers is between 1 and {MAX_WORKERS}")
        if self["shutdown-grace"] < 0:
            raise usage.UsageError("--shutdown-grace must not be negative")
        if self["min-body-rate"] < 0:
            raise usage.UsageError("--min-body-rate must not be negative")
        for limit in ("max-pending-files", "max-pending-bytes"):
            if self[limit] is not None and self[limit] < 0:
                raise usage.UsageError(f"--{limit} must not be negative")
        for number in ("manifest-ttl", "idle-timeout", "head-timeout", "handshake-timeout",
                       "reload-interval", "handler-timeout"):
            if self[number] <= 0:
                raise usage.UsageError(f"--{number} must be positive")
        for endpoint in self["http"] + self["https"]:
            if ":" not in endpoint:
                raise usage.UsageError(
                    f"endpoint {endpoint!r} is not a Twisted endpoint string (e.g. tcp:8080)"
                )


def load_factory(target: str) -> Any:
    """Import ``package.module:factory`` and call the factory with no arguments."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(f"cannot import {module_name}: {error}") from None
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"{module_name} has no callable {attribute}")
    try:
        return factory()
    except Exception as error:
        raise ConfigError(f"{target}() failed: {error}") from None


def build_servers(options: Options, role: Role = "single") -> list[Any]:
    """The configured servers, handlers registered, not yet listening.

    A ``worker`` neither cleans up the stores nor resets files left receiving:
    its supervisor did that before starting any worker.
    """
    recovering = role != "worker"
    from .store import DirectoryStore, StoreError
    from .transfers_db import SQLiteTransferTable, TransferDBError
    from twisted.internet import reactor

    from .web.servers import GSIHTTPTransferServer, HTTPTransferServer

    handlers: list[tuple[str, Any]] = []
    for prefix, directory in options["stores"]:
        try:
            handlers.append(
                (
                    prefix,
                    DirectoryStore(
                        directory, pending_ttl=options["manifest-ttl"], recover=recovering
                    ),
                )
            )
        except StoreError as error:
            raise ConfigError(str(error)) from None
    for prefix, target in options["handlers"]:
        handlers.append((prefix, load_factory(target)))

    state_path = options["state"]
    if state_path is None:
        first_dir = options["stores"][0][1] if options["stores"] else "."
        state_path = os.path.join(first_dir, ".gsitransfer-transfers.sqlite")
    try:
        transfers = SQLiteTransferTable(state_path, reset_receiving=recovering)
    except TransferDBError as error:
        raise ConfigError(str(error)) from None

    common: dict[str, Any] = dict(
        transfers=transfers,
        manifest_ttl=options["manifest-ttl"],
        manifest_limits=ManifestLimits(
            max_bytes=options["max-manifest-bytes"],
            max_files=options["max-files"],
            max_total_size=options["max-transfer-size"],
        ),
        gridmap=options["gridmap"],
        idle_timeout=options["idle-timeout"],
        head_timeout=options["head-timeout"],
        handshake_timeout=options["handshake-timeout"],
        min_body_rate=options["min-body-rate"],
        handler_timeout=options["handler-timeout"],
        timer=reactor,
        max_pending_files=options["max-pending-files"] or None,
        max_pending_bytes=options["max-pending-bytes"] or None,
    )
    servers: list[Any] = []
    try:
        if options["https"]:
            servers.append(
                GSIHTTPTransferServer(_server_tls(options), public_url=options["public-url"], **common)
            )
        if options["http"]:
            public = None if options["https"] else options["public-url"]
            servers.append(
                HTTPTransferServer(
                    trusted_proxies=options["trusted_proxies"], public_url=public, **common
                )
            )
    except (ValueError, OSError) as error:
        raise ConfigError(str(error)) from None
    for server in servers:
        for prefix, handler in handlers:
            server.RegisterPrefix(prefix, handler)
    return servers


def _server_tls(options: Options) -> Any:
    from .tls.context import ServerTLS, TLSConfigError, TrustConfig

    try:
        return ServerTLS(
            options["cert"],
            options["key"],
            TrustConfig(
                ca_dir=options["ca-dir"],
                ca_file=options["ca-file"],
                crl_policy=options["crl-policy"],
            ),
        )
    except TLSConfigError as error:
        raise ConfigError(str(error)) from None


class TransferService(service.MultiService):
    """Listens on every endpoint, keeps keys expiring and trust fresh."""

    #: False in a ``--workers`` worker: its supervisor expires the keys
    expire_keys = True

    def __init__(
        self,
        servers: list[Any],
        endpoints: list[tuple[Any, str]],
        reload_interval: float,
        shutdown_grace: float = 30.0,
    ) -> None:
        super().__init__()
        self.servers = servers
        self.endpoints = endpoints
        self.reload_interval = reload_interval
        self.shutdown_grace = shutdown_grace
        self._previous_sighup: Any = None

    def privilegedStartService(self) -> None:
        """Bind every endpoint before the reactor runs; a failure is one line and exit 1."""
        super().privilegedStartService()
        from twisted.internet import reactor

        for server, endpoint in self.endpoints:
            failures: list[Any] = []
            listening = server.listen(serverFromString(reactor, endpoint), reactor)
            listening.addCallbacks(
                lambda port, url=endpoint: _log.info("listening on {endpoint}", endpoint=url),
                failures.append,
            )
            if failures:
                fail(f"cannot listen on {endpoint}: {failures[0].getErrorMessage()}", 1)

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        for server in self.servers:
            server.maintain(reactor, interval=self.reload_interval, expire=self.expire_keys)
        if hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: reactor.callFromThread(self.reload)
            )
        # what start-up made lives as long as the process: keep it out of every GC pass
        gc.freeze()

    def reload(self) -> None:
        """Re-read CAs, CRLs and the grid-mapfile (SIGHUP)."""
        _log.info("reloading trust and grid-mapfile")
        for server in self.servers:
            try:
                server.reload(force=True)
            except Exception:
                _log.failure("reload failed")

    def stopService(self) -> Any:
        """Stop accepting, give uploads in flight ``shutdown_grace`` seconds, then stop."""
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
        stopping = defer.DeferredList(
            [server.stop(self.shutdown_grace) for server in self.servers], consumeErrors=True
        )
        stopping.addCallback(lambda _: service.MultiService.stopService(self))
        return stopping


def makeService(options: Options) -> service.IService:
    """Build the service twistd runs (the plugin's makeService)."""
    role: Role = "supervisor" if options["workers"] > 1 else "single"
    try:
        servers = build_servers(options, role)
    except ConfigError as error:
        fail(str(error), 1)
    endpoints: list[tuple[Any, str]] = []
    by_scheme = {server.scheme: server for server in servers}
    for endpoint in options["https"]:
        endpoints.append((by_scheme["https"], endpoint))
    for endpoint in options["http"]:
        endpoints.append((by_scheme["http"], endpoint))
    if role == "supervisor":
        from .workers import SupervisorService

        return SupervisorService(
            servers,
            endpoints,
            options["reload-interval"],
            options["shutdown-grace"],
            workers=options["workers"],
            argv=options.argv,
        )
    return TransferService(
        servers, endpoints, options["reload-interval"], options["shutdown-grace"]
    )
