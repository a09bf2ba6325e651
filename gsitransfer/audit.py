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

import datetime
import json
import os
import queue
import threading
import time
from typing import Any

from .events import TransferEvent

#: lines waiting for the writer thread before the reactor writes them itself
QUEUE_LINES = 10_000
#: the writer thread writes what gathered, then waits this long: one wake-up and one write per batch
GATHER_SECONDS = 0.05
_FIELDS = ("event", "dn", "peer", "prefix", "name", "size", "md5", "bytes", "duration_s", "status", "reason", "key",
           "method", "action")


def audit_line(event: TransferEvent) -> bytes:
    """The event's line (UTF-8, ending in a newline)."""
    stamp = datetime.datetime.fromtimestamp(event.time, datetime.timezone.utc)
    record: dict[str, Any] = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"}
    for field in _FIELDS:
        record[field] = getattr(event, field)
    return (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8", "replace")


class AuditError(OSError):
    """The audit log file cannot be opened."""


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as error:
        raise AuditError(f"--audit-log {path}: {error.strerror}") from None


class AuditLog:
    """The audit log of one process: an :class:`~gsitransfer.events.EventSink` writing through a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = _open(path)
        self._lock = threading.Lock()
        self._lines: queue.Queue[bytes | None] = queue.Queue(QUEUE_LINES)
        self._reopen = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gsitransfer-audit", daemon=True)
        self._thread.start()

    def emit(self, event: TransferEvent) -> None:
        """Queue the event's line (written at once, here, if the writer is far behind)."""
        line = audit_line(event)
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self._write(line)

    def reopen(self) -> None:
        """Open the file again by its name before the next line (``SIGUSR1``, after logrotate moved it)."""
        self._reopen.set()
        try:
            self._lines.put_nowait(b"")
        except queue.Full:
            pass  # the writer is busy: it reopens before its next line anyway

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread and close the file."""
        self._lines.put(None)
        self._thread.join(timeout)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _run(self) -> None:
        """Write what is queued in one ``write``, then let lines gather for a moment (no wake-up per line)."""
        while True:
            batch = [self._lines.get()]
            while batch[-1] is not None and len(batch) < QUEUE_LINES:
                try:
                    batch.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            self._write(b"".join(line for line in batch if line))
            if stop:
                return
            time.sleep(GATHER_SECONDS)

    def _write(self, line: bytes) -> None:
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
            if line and self._fd >= 0:
                os.write(self._fd, line)


__all__ = ["GATHER_SECONDS", "QUEUE_LINES", "AuditError", "AuditLog", "audit_line"]
