"""What happened to transfers, as typed records for the audit log and the metrics (SPEC §10).

One record per manifest, file upload (a ``POST``, ``PUT`` or ``PATCH``
answered), download (a ``GET`` of a file), cancel, delete, expiry and
refusal. The web layer makes them from each finished request (the site's
``log`` hook, where the access line is written: one place for every method;
and the keep-alive shortcut for the GETs it answers) and the engine for
expiries (no request); :class:`EventFanout` gives them to every sink in
batches. No sink, no record: a server without ``--audit-log`` and
``--metrics`` builds nothing per request.

A transfer key is never recorded whole: :func:`key_hash` gives a short hash
that is the same for every record of one transfer.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from twisted.logger import Logger

_log = Logger()

#: the fanout's thread hands the records gathered to the sinks every this many seconds
GATHER_SECONDS = 0.05
#: records waiting for the fanout's thread before the caller hands them over itself
QUEUE_RECORDS = 10_000

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


#: a record to make on the fanout's thread: what makes it and its arguments
_Later = tuple[Callable[..., TransferEvent], tuple[object, ...]]


class EventSink(Protocol):
    """Takes records in batches, in the order they happened (on the fanout's thread; it may write a file)."""

    def take(self, events: Sequence[TransferEvent]) -> None:
        """The records gathered since the last batch."""

    def close(self) -> None:
        """No more records: write what is left, release files and threads."""


class EventFanout:
    """Every sink given to it, fed by one thread per process.

    ``sinks`` is empty when there is none: callers test ``fanout.sinks`` (a
    tuple: no call) before they build a record. :meth:`emit` only appends the
    record to a deque (it runs once per request, a keep-alive GET too); the
    fanout's thread takes what gathered every :data:`GATHER_SECONDS` and gives
    the batch to each sink — one wake-up per batch for every sink, the
    sinks' per-record work done in one tight loop off the reactor. Past
    :data:`QUEUE_RECORDS` waiting records the caller hands the batch over
    itself (nothing is dropped, memory stays bounded). :meth:`flush` hands
    over at once (before a metrics exposition).
    """

    __slots__ = ("sinks", "_records", "_lock", "_stop", "_thread")

    def __init__(self, sinks: tuple[EventSink, ...] = ()) -> None:
        self.sinks = sinks
        #: records, or what makes them (``emit_later``)
        self._records: collections.deque[TransferEvent | _Later] = collections.deque()
        #: one batch at a time, so batches reach the sinks in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if sinks:
            self._thread = threading.Thread(target=self._run, name="gsitransfer-events", daemon=True)
            self._thread.start()

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit(self, event: TransferEvent) -> None:
        """Take one record (the thread hands it to the sinks within :data:`GATHER_SECONDS`)."""
        records = self._records
        records.append(event)
        if len(records) > QUEUE_RECORDS:
            self.flush()

    def emit_later(self, make: Callable[..., TransferEvent], *arguments: object) -> None:
        """Take a record to be made on the fanout's thread, as ``make(*arguments)``.

        For the keep-alive shortcut (a record per GET): the reactor only keeps
        the arguments; building the record happens with the batch, off the
        request's path.
        """
        records = self._records
        records.append((make, arguments))
        if len(records) > QUEUE_RECORDS:
            self.flush()

    def flush(self) -> None:
        """Hand every record taken so far to every sink, now, on this thread."""
        with self._lock:
            records = self._records
            batch = []
            try:
                for _ in range(len(records)):
                    record = records.popleft()  # atomic: emit may append meanwhile
                    batch.append(record if isinstance(record, TransferEvent) else record[0](*record[1]))
            except IndexError:
                pass
            if not batch:
                return
            for sink in self.sinks:
                try:
                    sink.take(batch)
                except Exception:
                    _log.failure("{sink} could not take {count} record(s)", sink=sink, count=len(batch))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread, hand over what is left, close every sink."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()
        for sink in self.sinks:
            sink.close()

    def _run(self) -> None:
        while not self._stop.wait(GATHER_SECONDS):
            self.flush()


__all__ = [
    "CANCEL", "DELETE", "DOWNLOAD", "EXPIRY", "MANIFEST", "REFUSAL", "UPLOAD",
    "GATHER_SECONDS", "QUEUE_RECORDS", "EventFanout", "EventSink", "TransferEvent", "key_hash",
]
