"""``--audit-log FILE``: one JSON object per line for every transfer event (SPEC §10).

Each :class:`~gsitransfer.events.TransferEvent` becomes one line::

    {"time": "2026-12-05T02:10:11.123Z", "event": "upload", "dn": "/C=US/O=Grid Test/OU=People/CN=alice",
     "peer": "127.0.0.1", "prefix": "data", "name": "run42.root", "size": 1048576, "md5": "5f36…",
     "bytes": 1048576, "duration_s": 0.412, "status": 201, "reason": null, "key": "9c1d0e2f4a7b", "method": "PUT"}

Every field is always present (``null`` when unknown); ``key`` is a short hash
of the transfer key, never the key. JSON escapes every control character, so
a line is one line whatever a client named its file.

Lines are written by one thread per process (:class:`AuditLog`), so a slow
disk never stalls the reactor: it writes what gathered in one ``write`` on a
file opened with ``O_APPEND``, which the kernel appends whole, then waits
:data:`GATHER_SECONDS` (one wake-up per batch, not per line): the processes
of ``--workers`` all append to the same file and lines never interleave.
If the thread falls more than :data:`QUEUE_LINES` lines behind, the reactor
writes the line itself (nothing is dropped). ``SIGUSR1`` reopens the file
(after logrotate has moved it away).
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import os
import threading
from typing import Any

from .events import TransferEvent

#: lines waiting for the writer thread before the reactor writes them itself
QUEUE_LINES = 10_000
#: the writer thread writes what gathered every this many seconds: one wake-up and one write per batch
GATHER_SECONDS = 0.05
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


def audit_line(event: TransferEvent) -> bytes:
    """The event's line (UTF-8, ending in a newline): ``json.dumps`` of :func:`audit_record`, made faster.

    What repeats (the second of the time; who asked for what) is encoded once
    and remembered; the line is the same text (an equivalence test holds it to
    the reference).
    """
    seconds = int(event.time)
    micros = round((event.time - seconds) * 1_000_000)  # as datetime rounds a timestamp
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    head = f'{{"time": "{_second(seconds)}{micros // 1000:03d}Z", '
    who = _who_what(event.event, event.dn, event.peer, event.prefix, event.name)
    rest = _REST % (
        _json(event.size), _json(event.md5), _json(event.bytes), _json(event.duration_s), _json(event.status),
        _json(event.reason), _json(event.key), _json(event.method), _json(event.action),
    )
    return (head + who + ", " + rest).encode("utf-8", "replace")


class AuditError(OSError):
    """The audit log file cannot be opened."""


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as error:
        raise AuditError(f"--audit-log {path}: {error.strerror}") from None


class AuditLog:
    """The audit log of one process: an :class:`~gsitransfer.events.EventSink` writing through a thread.

    The reactor appends each record to a deque (one C call, no lock of ours);
    the writer thread takes what gathered every :data:`GATHER_SECONDS`, makes
    the lines (in one tight loop, off the reactor's path) and writes them in
    one ``write``. Past :data:`QUEUE_LINES` waiting records the reactor writes
    them itself (nothing is dropped).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = _open(path)
        self._lock = threading.Lock()
        self._events: collections.deque[TransferEvent] = collections.deque()
        self._reopen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gsitransfer-audit", daemon=True)
        self._thread.start()

    def emit(self, event: TransferEvent) -> None:
        """Queue the record (its line is made and written at once, here, if the writer is far behind)."""
        events = self._events
        events.append(event)
        if len(events) > QUEUE_LINES:
            self._flush()

    def reopen(self) -> None:
        """Open the file again by its name before the next lines (``SIGUSR1``, after logrotate moved it)."""
        self._reopen.set()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread and close the file."""
        self._stop.set()
        self._thread.join(timeout)
        self._flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _run(self) -> None:
        """Every :data:`GATHER_SECONDS`: write what gathered (no wake-up per line)."""
        while not self._stop.wait(GATHER_SECONDS):
            self._flush()

    def _flush(self) -> None:
        """Take every waiting record (deque.popleft is atomic), write their lines in one ``write``."""
        events = self._events
        batch = []
        try:
            for _ in range(len(events)):
                batch.append(audit_line(events.popleft()))
        except IndexError:
            pass
        self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
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
            if data and self._fd >= 0:
                os.write(self._fd, data)


__all__ = ["GATHER_SECONDS", "QUEUE_LINES", "AuditError", "AuditLog", "audit_line", "audit_record"]
