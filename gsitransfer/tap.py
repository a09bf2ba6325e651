"""``twistd accessgrid-transfer``: the options and the service they build.

The plugin (``twisted/plugins/gsitransfer_plugin.py``) only names this module.
:class:`Options` (from :mod:`gsitransfer.options`) parses and checks the
command line; :func:`makeService` builds the servers
(:func:`gsitransfer.service.build_servers`: ``HTTPTransferServer``,
``GSIHTTPTransferServer``, ``RegisterPrefix``, the fast paths chosen by
``--no-fast-paths`` and ``GSITRANSFER_FAST_PATHS``) and returns one service
that listens, expires transfer keys and reloads trust on SIGHUP and
periodically: a :class:`~gsitransfer.service.TransferService` in this process,
or with ``--workers N`` a :class:`~gsitransfer.workers.SupervisorService`.

Every configuration problem is one line on stderr and a non-zero exit, never
a traceback. The modules form a line: options ← service ← workers ← tap.
"""

from __future__ import annotations

import atexit

from twisted.application.service import IService

from .options import MAX_WORKERS, PROGRAM, ConfigError, Options, Role, fail
from .service import Server, TransferService, build_servers, endpoints_of, hold_sighup, load_factory
from .metrics import end_multiprocess, start_multiprocess
from .workers import SupervisorService


def makeService(options: Options) -> IService:
    """Build the service twistd runs (the plugin's makeService).

    SIGHUP is held (blocked) from here: building the servers reads stores,
    CAs and handlers, and a SIGHUP meanwhile would otherwise kill the process.
    It is delivered, as a reload, once the service has started.
    """
    hold_sighup()
    role: Role = "supervisor" if options["workers"] > 1 else "single"
    if role == "supervisor" and options["metrics"]:
        # before anything imports prometheus_client: every process's values go to one directory
        account = options.service_account()
        metrics_dir = start_multiprocess(None if account is None else (account.uid, account.gid))
        atexit.register(end_multiprocess, metrics_dir)
    try:
        servers = build_servers(options, role, fast_paths=options.fast_paths())
    except ConfigError as error:
        fail(str(error), 1)
    endpoints = endpoints_of(options, servers)
    watch = {"metrics_endpoint": options["metrics"], "store_dirs": tuple(d for _, d in options["stores"])}
    made: TransferService
    if role == "supervisor":
        # the workers get the same arguments (``--no-fast-paths`` among them) and environment
        made = SupervisorService(
            servers,
            endpoints,
            options["reload-interval"],
            options["shutdown-grace"],
            workers=options["workers"],
            argv=options.argv,
            **watch,
        )
    else:
        made = TransferService(servers, endpoints, options["reload-interval"], options["shutdown-grace"], **watch)
    made.twistd_config = options.parent
    return made


__all__ = [
    "MAX_WORKERS",
    "PROGRAM",
    "ConfigError",
    "Options",
    "Role",
    "Server",
    "TransferService",
    "build_servers",
    "fail",
    "load_factory",
    "makeService",
]
