"""Which fast paths a server uses: one value, chosen at start-up, handed to what owns each path.

Every fast path of this server has a plain path beside it that is the readable
reference (and that an equivalence test keeps byte-identical on the wire):

* ``keepalive_get`` -- a plain GET of a small file answered from the head's
  bytes on a keep-alive connection (:mod:`gsitransfer.web._keepalive`),
  instead of twisted.web's Request;
* ``bulk_tls`` -- the TLS transport moving many records per Python call
  (:mod:`gsitransfer.tls._bulk`), instead of Twisted's ``TLSMemoryBIOFactory``;
* ``access_log_writer`` -- access lines formatted once and written as text,
  instead of ``Site.log``'s event per line;
* ``event_loop`` -- the workers' epoll reactor without a log context per
  event (:mod:`gsitransfer.eventloop`), instead of Twisted's own;
* ``small_file_cache`` -- the keep-alive GET path keeps the bodies and header
  blocks of small files it answered lately, checked by one ``stat`` each time
  (:mod:`gsitransfer.web.smallfiles`), instead of reading the file again.

The paths that reach into private Twisted or pyOpenSSL internals are also
turned off, one log line each, when :mod:`gsitransfer._internals` finds the
installed versions lack what they need.

``GSITRANSFER_FAST_PATHS=off`` in the environment (or ``--no-fast-paths``)
turns every one off: CI runs the web, TLS and integration suites that way.
There is no module-level switch: a :class:`FastPaths` is made once (by
``tap.makeService`` or by whoever builds a server) and passed down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Mapping

#: the environment variable that turns every fast path off (``off``) or on (anything else)
ENVIRONMENT_VARIABLE = "GSITRANSFER_FAST_PATHS"


@dataclass(frozen=True, slots=True)
class FastPaths:
    """The fast paths in use; each False means the plain, reference path."""

    keepalive_get: bool = True
    bulk_tls: bool = True
    access_log_writer: bool = True
    event_loop: bool = True
    small_file_cache: bool = True

    @classmethod
    def none(cls) -> "FastPaths":
        """Every plain path."""
        return cls(**{field.name: False for field in fields(cls)})

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "FastPaths":
        """All on, unless ``GSITRANSFER_FAST_PATHS`` is ``off`` (or ``0``, ``no``, ``false``)."""
        value = (os.environ if environ is None else environ).get(ENVIRONMENT_VARIABLE, "")
        if value.strip().lower() in ("off", "0", "no", "false"):
            return cls.none()
        return cls()

    def without(self, *names: str) -> "FastPaths":
        """This choice with the named paths turned off."""
        return replace(self, **{name: False for name in names})


__all__ = ["ENVIRONMENT_VARIABLE", "FastPaths"]
