"""``--audit-log FILE``: one JSON object per line for every transfer event (SPEC §10).

Each :class:`~gsitransfer.events.TransferEvent` becomes one line::

    {"time": "2026-12-05T02:10:11.123Z", "event": "upload", "dn": "/C=US/O=Grid Test/OU=People/CN=alice",
     "peer": "127.0.0.1", "prefix": "data", "name": "run42.root", "size": 1048576, "md5": "5f36…",
     "bytes": 1048576, "duration_s": 0.412, "status": 201, "reason": null, "key": "9c1d0e2f4a7b", "method": "PUT"}

Every field is always present (``null`` when unknown); ``key`` is a short hash
of the transfer key, never the key. JSON escapes every control character, so
a line is one line whatever a client named its file.

Lines are made and written by the event fanout's thread
(:class:`~gsitransfer.events.EventFanout`, one per process), so a slow disk
never stalls the reactor: each batch of records (what gathered in
:data:`~gsitransfer.events.GATHER_SECONDS`) is written with one ``writev``
per 512 whole lines on a file opened with ``O_APPEND``, which the kernel
appends whole: the processes of
``--workers`` all append to the same file and lines never interleave. If the
thread falls more than :data:`~gsitransfer.events.QUEUE_RECORDS` records
behind, the reactor writes them itself (nothing is dropped). ``SIGUSR1``
reopens the file (after logrotate has moved it away).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from .events import Run, TransferEvent

_FIELDS = ("event", "dn", "peer", "prefix", "name", "size", "md5", "bytes", "duration_s", "status", "reason", "key",
           "method", "action")


def audit_record(event: TransferEvent) -> dict[str, Any]:
    """The event as the object its line holds (the readable reference of :func:`audit_line`)."""
    stamp = datetime.datetime.fromtimestamp(event.time, datetime.timezone.utc)
    record: dict[str, Any] = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"}
    for field in _FIELDS:
        record[field] = getattr(event, field)
    return record


@functools.lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")


@functools.lru_cache(maxsize=4096)
def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _text(value) if len(value) <= 512 else json.dumps(value, ensure_ascii=False)
    if type(value) is int:
        return str(value)
    return json.dumps(value)


@functools.lru_cache(maxsize=4096)
def _who_what(event: str, dn: str | None, peer: str | None, prefix: str | None, name: str | None) -> str:
    """The encoded fields that repeat from line to line (the same client fetching the same file)."""
    return (f'"event": {_json(event)}, "dn": {_json(dn)}, "peer": {_json(peer)}, "prefix": {_json(prefix)}, '
            f'"name": {_json(name)}')


_REST = ('"size": %s, "md5": %s, "bytes": %s, "duration_s": %s, "status": %s, "reason": %s, "key": %s, '
         '"method": %s, "action": %s}\n')


def _rest(size: int | None, md5: str | None, sent: int | None, duration_s: float | None, status: int | None,
          reason: str | None, key: str | None, method: str | None, action: str | None) -> str:
    return _REST % (
        _json(size), _json(md5), _json(sent), _json(duration_s), _json(status), _json(reason), _json(key),
        _json(method), _json(action),
    )


@functools.lru_cache(maxsize=4096)
def _after_time(fields: tuple[object, ...]) -> bytes:
    """Everything after the time, encoded: of records that repeat but for their time (GETs of one file)."""
    event, dn, peer, prefix, name, *rest = fields
    return (_who_what(event, dn, peer, prefix, name) + ", " + _rest(*rest)).encode("utf-8", "replace")  # type: ignore[arg-type]


def _time_head_and_span(when: float) -> tuple[bytes, float, float]:
    """The line's start, up to and with its time (to the millisecond, as datetime rounds a timestamp), and
    times ``low <= t < high`` that surely have the same (inside the millisecond, two microseconds clear of
    where rounding could carry ``t`` into the next or the last)."""
    seconds = int(when)
    micros = round((when - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    millisecond = micros // 1000
    head = f'{{"time": "{_second(seconds)}{millisecond:03d}Z", '.encode("ascii")
    return head, seconds + (millisecond * 1000 + 2) / 1e6, seconds + (millisecond * 1000 + 998) / 1e6


def _after(event: TransferEvent) -> bytes:
    """Everything after the time, encoded (remembered for records without a duration: GETs of one file)."""
    if event.duration_s is None:
        return _after_time((event.event, *event[2:]))
    who = _who_what(event.event, event.dn, event.peer, event.prefix, event.name)
    rest = _rest(event.size, event.md5, event.bytes, event.duration_s, event.status, event.reason, event.key,
                 event.method, event.action)
    return (who + ", " + rest).encode("utf-8", "replace")


def audit_line(event: TransferEvent) -> bytes:
    """The event's line (UTF-8, ending in a newline): ``json.dumps`` of :func:`audit_record`, made faster.

    What repeats is encoded once and remembered: the second of the time, and
    everything after the time of a record without a duration (the same
    client fetching the same file); the line is the same text (an
    equivalence test holds it to the reference).
    """
    return _time_head_and_span(event.time)[0] + _after(event)


def audit_pieces(runs: Sequence[Run]) -> list[bytes]:
    """The lines of every record of ``runs``, in order, in two pieces each: the text up to and with the time,
    and the rest — :func:`audit_line` of each record at each of its times is the two joined.

    No line is built: the pieces are shared (a record's fields after the time
    encoded once per batch, a millisecond's time text once) and written as
    they are (``os.writev``), so a batch allocates almost nothing.
    """
    pieces: list[bytes] = []
    append = pieces.append
    head, low, high = b"", 0.0, 0.0
    afters: dict[int, bytes] = {}  # by the record's identity: alike records share one in a batch
    for event, times in runs:
        after = afters.get(id(event))
        if after is None:
            after = afters[id(event)] = _after(event)
        for when in times:
            if not low <= when < high:
                head, low, high = _time_head_and_span(when)
            append(head)
            append(after)
    return pieces


#: pieces per ``writev``: whole lines (two pieces each), at most the system's IOV_MAX (1024 on Linux)
_PIECES_PER_WRITE = 1024


def _write_pieces(fd: int, pieces: list[bytes]) -> None:
    """Append ``pieces`` to ``fd``: one ``writev`` per :data:`_PIECES_PER_WRITE` (each whole lines, which
    ``O_APPEND`` keeps together), the rest of a short write after it."""
    for start in range(0, len(pieces), _PIECES_PER_WRITE):
        chunk = pieces[start:start + _PIECES_PER_WRITE]
        written, size = os.writev(fd, chunk), sum(map(len, chunk))
        if written < size:
            rest = b"".join(chunk)
            while written < size:  # each pass writes at least one byte or raises
                more = os.write(fd, rest[written:])
                if more <= 0:
                    raise OSError(f"the audit log took no bytes ({size - written} left of a batch)")
                written += more


class AuditError(OSError):
    """The audit log file cannot be opened."""


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as error:
        raise AuditError(f"--audit-log {path}: {error.strerror}") from None


class AuditLog:
    """The audit log of one process: an :class:`~gsitransfer.events.EventSink`.

    It takes the records in batches on the event fanout's thread
    (``gsitransfer.events``), makes their lines' pieces in one tight loop,
    off the reactor, and writes each batch with one ``writev`` per 512 lines.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = _open(path)
        self._lock = threading.Lock()
        self._reopen = threading.Event()

    def take(self, runs: Sequence[Run]) -> None:
        """Write the records' lines."""
        self._write(audit_pieces(runs))

    def reopen(self) -> None:
        """Open the file again by its name before the next lines (``SIGUSR1``, after logrotate moved it)."""
        self._reopen.set()

    def close(self) -> None:
        """Close the file (the fanout has handed over every record)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _write(self, pieces: list[bytes]) -> None:
        with self._lock:
            if self._reopen.is_set():
                self._reopen.clear()
                try:
                    fd = _open(self.path)
                except AuditError:
                    fd = -1  # keep writing to the old file rather than lose lines
                if fd >= 0:
                    os.close(self._fd)
                    self._fd = fd
            if pieces and self._fd >= 0:
                _write_pieces(self._fd, pieces)


__all__ = ["AuditError", "AuditLog", "audit_line", "audit_pieces", "audit_record"]
