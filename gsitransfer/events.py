"""What happened to transfers, as typed records for the audit log and the metrics (SPEC §10).

One record per manifest, file upload (a ``POST``, ``PUT`` or ``PATCH``
answered), download (a ``GET`` of a file), cancel, delete, expiry and
refusal. The web layer makes them from each finished request (the site's
``log`` hook, where the access line is written: one place for every method;
and the keep-alive shortcut for the GETs it answers) and the engine for
expiries (no request); :class:`EventFanout` gives them to every sink in
batches. No sink, no record: a server without ``--audit-log`` and
``--metrics`` builds nothing per request.

Records that differ only in their time (a client fetching one file again
and again over keep-alive connections: the GETs the shortcut answers) are
given to the sinks as one :class:`Run`: the record once and each time it
happened; alike records a batch holds in several runs share one object. A
sink does its per-record work (a metrics label, an audit line's fields) once
per record and batch, and only the per-time work (the line's time) per
record.

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

#: the fanout's thread hands the records gathered to the sinks every this many seconds: an audit line is
#: written within it; fewer, larger batches cost the request path less (0.05 s cost twice as much:
#: docs/benchmarks.md, issue 16)
GATHER_SECONDS = 0.5
#: records waiting for the fanout's thread before the caller hands them over itself (~200 bytes each
#: waiting: at most ~10 MB; reached above 100,000 records a second)
QUEUE_RECORDS = 50_000

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


class Run(NamedTuple):
    """A record and every time it happened in a row, in order: sinks take the times from ``times``.

    A record emitted with :meth:`EventFanout.emit` is a run of one time (its
    own). Records emitted later (:meth:`EventFanout.emit_later`) that are
    alike share one ``event`` object in a batch, whose ``time`` is the first.
    """

    event: TransferEvent
    times: Sequence[float]


#: a record to make on the fanout's thread: what makes it, its arguments but the time, the time
_Later = tuple[Callable[..., TransferEvent], tuple[object, ...], float]


class EventSink(Protocol):
    """Takes records in batches, in the order they happened (on the fanout's thread; it may write a file)."""

    def take(self, runs: Sequence[Run]) -> None:
        """The records gathered since the last batch, as runs (each record once, with every time it happened)."""

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

    def emit_later(self, make: Callable[..., TransferEvent], arguments: tuple[object, ...], when: float) -> None:
        """Take a record that happened at ``when``, to be made on the fanout's thread as ``make(*arguments, when)``.

        For the keep-alive shortcut (a record per GET): the reactor only keeps
        the arguments (hashable). Records with the same ``make`` and equal
        ``arguments`` are made once per batch, off the request's path; those
        taken one after the other are handed over as one :class:`Run`.
        """
        records = self._records
        records.append((make, arguments, when))
        if len(records) > QUEUE_RECORDS:
            self.flush()

    def flush(self) -> None:
        """Hand every record taken so far to every sink, now, on this thread."""
        with self._lock:
            batch = _runs(self._records)
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


def _runs(records: collections.deque[TransferEvent | _Later]) -> list[Run]:
    """The records in ``records`` now, taken out as runs, in order.

    ``emit_later``'s records are made once per batch for equal ``make`` and
    arguments: runs of one record share one :class:`TransferEvent` (sinks
    may remember what they derive from it by its identity, for the batch).
    """
    runs: list[Run] = []
    made: dict[tuple[object, ...], tuple[object, TransferEvent]] = {}
    last_make: object = None
    last_arguments: tuple[object, ...] = ()
    times: list[float] = []
    try:
        for _ in range(len(records)):
            record = records.popleft()  # atomic: emit may append meanwhile
            if type(record) is TransferEvent:
                runs.append(Run(record, (record.time,)))
                last_make = None
                continue
            make, arguments, when = record  # type: ignore[misc]
            if make is last_make and arguments == last_arguments:
                times.append(when)
                continue
            known = made.get(arguments)
            if known is not None and known[0] is make:
                event = known[1]
            else:
                event = make(*arguments, when)
                made[arguments] = (make, event)
            times = [when]
            runs.append(Run(event, times))
            last_make, last_arguments = make, arguments
    except IndexError:
        pass
    return runs


__all__ = [
    "CANCEL", "DELETE", "DOWNLOAD", "EXPIRY", "MANIFEST", "REFUSAL", "UPLOAD",
    "GATHER_SECONDS", "QUEUE_RECORDS", "EventFanout", "EventSink", "Run", "TransferEvent",
    "key_hash",
]
