"""What happened to transfers, as typed records for the audit log and the metrics (SPEC §10).

One record per manifest, file upload (a ``POST``, ``PUT`` or ``PATCH``
answered), download (a ``GET`` of a file), cancel, delete, expiry and
refusal. The web layer makes them from each finished request (the site's
``log`` hook, where the access line is written: one place for every method)
and the engine for expiries (no request); :class:`EventFanout` gives each to
every sink. No sink, no record: a server without ``--audit-log`` and
``--metrics`` builds nothing per request.

A transfer key is never recorded whole: :func:`key_hash` gives a short hash
that is the same for every record of one transfer.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Protocol

#: the kinds of record
MANIFEST, UPLOAD, DOWNLOAD, CANCEL, DELETE, EXPIRY, REFUSAL = (
    "manifest", "upload", "download", "cancel", "delete", "expiry", "refusal",
)


def key_hash(transfer_key: str) -> str:
    """A short, stable stand-in for a transfer key (12 hex digits of its SHA-256): never the key itself."""
    return hashlib.sha256(transfer_key.encode("ascii", "replace")).hexdigest()[:12]


class TransferEvent(NamedTuple):
    """One thing that happened; every field but ``event`` and ``time`` may be unknown (None).

    A named tuple: made once per request (a keep-alive GET too), it costs one
    C-level tuple, not a call per field as a frozen dataclass would.
    """

    event: str
    time: float
    dn: str | None = None
    peer: str | None = None
    prefix: str | None = None
    name: str | None = None
    size: int | None = None
    md5: str | None = None
    bytes: int | None = None
    duration_s: float | None = None
    status: int | None = None
    reason: str | None = None
    key: str | None = None
    method: str | None = None
    #: what the request did or asked to do (``upload``, ``download``…): a refusal's is what was refused
    action: str | None = None


class EventSink(Protocol):
    """Takes records (on the reactor thread; it must not block)."""

    def emit(self, event: TransferEvent) -> None:
        """One record."""


class EventFanout:
    """Every sink given to it, in order. ``sinks`` is empty when there is none: callers test
    ``fanout.sinks`` (a tuple: no call) before they build a record."""

    __slots__ = ("sinks",)

    def __init__(self, sinks: tuple[EventSink, ...] = ()) -> None:
        self.sinks = sinks

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit(self, event: TransferEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)


__all__ = [
    "CANCEL", "DELETE", "DOWNLOAD", "EXPIRY", "MANIFEST", "REFUSAL", "UPLOAD",
    "EventFanout", "EventSink", "TransferEvent", "key_hash",
]
