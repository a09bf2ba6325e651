"""An upload's disk work (MD5, writes, fsync and rename) off the reactor thread.

One reactor thread cannot decrypt TLS, hash and write at network speed: MD5
and file writes cost as much CPU as the TLS record layer. ``hashlib`` and
``os.write`` release the GIL, so worker threads run them on the other core
while the reactor keeps reading.

:class:`OffloadedSink` drives one :class:`~gsitransfer.filesink.FileSink`
from the reactor thread; two worker threads per upload, in a pipeline, do the
rest: one adds each batch to the MD5 (``FileSink.hash``) and hands it to the
other, which appends it to the file (``FileSink.store``) and at the end
commits or discards. Rules:

* the reactor thread never touches the sink while the workers live; only the
  hasher touches the MD5, only the writer the file (writes, commit, discard);
* chunks are gathered into batches of ``batch_bytes`` (joined on the reactor
  thread) and queued in order;
* the bytes queued but not yet written are bounded: above ``high_water`` the
  ``pause`` callback stops reading from the network, at or below
  ``low_water`` ``resume`` starts it again (so memory per upload is about
  ``high_water`` plus one network read, whatever the file's size);
* every report from the writer (a batch written, a failure, the commit's
  outcome) reaches the reactor thread through ``call_from_thread``; all the
  bookkeeping (bytes queued, paused, the Deferreds) lives on the reactor
  thread only;
* a failed write is reported once, through the :meth:`drain` Deferred when
  the body is complete, else through ``on_error``; the writer has removed
  the temporary file and exited, and later chunks are dropped;
* :meth:`drain` fires once every byte is written, :meth:`commit` once the
  file is fsync'd and in place; :meth:`discard` makes the writer remove the
  temporary file and both workers exit, skipping what is still queued.

:class:`InlineSink` has the same interface and does the work at once, on the
calling thread: for small bodies, where a thread hand-off costs more than it
saves.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from ..filesink import FileSink, ResumableSink

#: bodies larger than this go through a worker thread
OFFLOAD_THRESHOLD = 1024 * 1024
#: chunks (16 KiB TLS records) are handed to the worker in batches of this size
BATCH_BYTES = 256 * 1024
#: a resumable body's partial is synced (fdatasync) and its offset recorded every this many bytes,
#: so a crash (SIGKILL) loses at most this much of what arrived
CHECKPOINT_BYTES = 32 * 1024 * 1024
#: bytes queued for the worker above which reading pauses, and at or below which it resumes
HIGH_WATER = 2 * 1024 * 1024
LOW_WATER = 512 * 1024

_WRITE, _COMMIT, _DISCARD, _KEEP = "write", "commit", "discard", "keep"

#: what a kept partial holds: (durable bytes, their running MD5), or None when it could not be kept
Kept = Any

class UploadDiscards:
    """The writer threads told to discard, of one server: waited for at shutdown.

    The workers are daemon threads: a process that stops (SIGTERM with uploads
    abandoned after the grace) would otherwise leave their ``.part`` files
    behind until the next start. Servers call :meth:`finish` after the
    reactor's shutdown.
    """

    def __init__(self) -> None:
        self._threads: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()

    def add(self, thread: threading.Thread) -> None:
        """``thread`` is discarding a temporary file."""
        self._threads.add(thread)

    def finish(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) for discarding writers to remove their temporary files."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))


class InlineSink:
    """A FileSink used directly on the calling thread, behind OffloadedSink's interface."""

    def __init__(self, sink: FileSink) -> None:
        self.sink = sink

    def write(self, data: bytes) -> None:
        """Write now; a TransferError propagates (the sink has discarded itself)."""
        self.sink.write(data)

    def drain(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def commit(self) -> defer.Deferred[None]:
        try:
            self.sink.commit()
        except Exception:
            return defer.fail(Failure())
        return defer.succeed(None)

    def discard(self) -> None:
        self.sink.discard()

    def keep(self, on_kept: Callable[[Kept], object]) -> None:
        """Make what was written durable, leave the partial in place; ``on_kept`` gets (bytes, MD5) or None."""
        on_kept(keep_sink(self.sink))


def keep_sink(sink: FileSink) -> Kept:
    """``sink.keep()`` for a resumable sink, else (or when it fails) the sink discarded and None."""
    if isinstance(sink, ResumableSink):
        try:
            return sink.keep()
        except Exception:
            pass
    sink.discard()
    return None


class OffloadedSink:
    """A FileSink hashed, written and committed by two worker threads, fed with back-pressure."""

    def __init__(
        self,
        sink: FileSink,
        *,
        call_from_thread: Callable[..., Any],
        pause: Callable[[], None],
        resume: Callable[[], None],
        on_error: Callable[[Failure], None],
        discards: UploadDiscards | None = None,
        batch_bytes: int = BATCH_BYTES,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        on_checkpoint: Callable[[int], object] | None = None,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ) -> None:
        """``on_checkpoint`` (reactor thread) gets the bytes of a resumable sink synced every
        ``checkpoint_bytes`` (None: no checkpoints)."""
        if not 0 <= low_water < high_water:
            raise ValueError("need 0 <= low_water < high_water")
        self.sink = sink
        self._call = call_from_thread
        self._pause, self._resume, self._on_error = pause, resume, on_error
        #: where a discarding writer is registered, to be waited for at shutdown
        self._discards = UploadDiscards() if discards is None else discards
        self.batch_bytes, self.high_water, self.low_water = batch_bytes, high_water, low_water
        # reactor-thread state
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._queued = 0
        self.paused = False
        self._failed = False
        self._closed = False
        self._drained: defer.Deferred[None] | None = None
        self._committed: defer.Deferred[None] | None = None
        self._on_kept: Callable[[Kept], object] | None = None
        self._on_checkpoint = on_checkpoint if isinstance(sink, ResumableSink) else None
        self.checkpoint_bytes = checkpoint_bytes
        #: the most bytes ever queued at once (for tests and tuning)
        self.peak_queued = 0
        # shared with the worker
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._to_writer: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._skip = threading.Event()
        self._hasher = threading.Thread(target=self._hash_loop, name="gsitransfer-md5", daemon=True)
        self._thread = threading.Thread(target=self._write_loop, name="gsitransfer-write", daemon=True)
        self._hasher.start()
        self._thread.start()

    # -- reactor thread ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data``; pauses the network when the worker falls behind."""
        if self._failed or self._closed or not data:
            return
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_size
        self._batch, self._batch_size = [], 0
        self._queued += size
        self.peak_queued = max(self.peak_queued, self._queued)
        # joined here: buffers allocated and freed on one thread are reused at once
        # (a worker thread's allocations would grow a malloc arena of its own)
        self._queue.put((_WRITE, batch[0] if len(batch) == 1 else b"".join(batch)))
        if not self.paused and not self._closed and self._queued > self.high_water:
            self.paused = True
            self._pause()

    def drain(self) -> defer.Deferred[None]:
        """Fires when every byte written so far is in the file (errback: the write failure)."""
        assert self._drained is None, "drain twice"
        self._closed = True
        self._flush()
        self._drained = defer.Deferred()
        drained = self._drained
        self._check_drained()
        return drained

    def commit(self) -> defer.Deferred[None]:
        """After :meth:`drain`: fsync and move into place on the worker; fires on the reactor."""
        assert self._drained is not None and self._committed is None, "commit before drain"
        self._committed = defer.Deferred()
        committed = self._committed
        self._queue.put((_COMMIT, None))
        return committed

    def discard(self) -> None:
        """Stop: the worker skips what is queued, removes the temporary file and exits."""
        self._closed = True
        self._batch, self._batch_size = [], 0
        self._skip.set()
        self._queue.put((_DISCARD, None))
        self._discards.add(self._thread)

    def keep(self, on_kept: Callable[[Kept], object]) -> None:
        """Stop: the writer writes what is queued, syncs the partial and leaves it; ``on_kept`` (on the
        reactor thread) gets (bytes, MD5), or None when the partial could not be kept."""
        if self._on_kept is not None:
            return
        self._on_kept = on_kept
        if self._failed:  # the writer has removed the file and exited
            self._kept(None)
            return
        self._closed = True
        self._flush()
        self._queue.put((_KEEP, None))
        self._discards.add(self._thread)

    def _kept(self, result: Kept) -> None:
        on_kept, self._on_kept = self._on_kept, None
        self._on_kept = _already_kept
        if on_kept is not None and on_kept is not _already_kept:
            on_kept(result)

    def _written(self, size: int) -> None:
        self._queued -= size
        if self.paused and self._queued <= self.low_water:
            self.paused = False
            self._resume()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._drained.called and self._queued == 0 and not self._failed:
            self._drained.callback(None)

    def _write_failed(self, failure: Failure) -> None:
        if self._failed:
            return
        self._failed = True
        self._closed = True
        if self._on_kept is not None:
            self._kept(None)
            return
        if self._drained is not None and not self._drained.called:
            self._drained.errback(failure)
        else:
            self._on_error(failure)

    def _commit_done(self, failure: Failure | None) -> None:
        assert self._committed is not None
        if failure is None:
            self._committed.callback(None)
        else:
            self._committed.errback(failure)

    # -- worker threads -----------------------------------------------------------
    #
    # Two stages, in order: the hasher adds each batch to the MD5 and hands it on; the writer appends it to the file and reports it written.
    # Hashing batch n+1 overlaps writing batch n. Commit and discard travel the
    # same way, so they reach the writer after every batch before them.

    def _hash_loop(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind != _WRITE:
                self._to_writer.put((kind, payload))
                return
            if self._skip.is_set():
                continue
            self.sink.hash(payload)
            self._to_writer.put((_WRITE, payload))

    def _write_loop(self) -> None:
        synced = self.sink.received
        while True:
            kind, data = self._to_writer.get()
            if kind == _DISCARD:
                self.sink.discard()
                return
            if kind == _KEEP:
                self._call(self._kept, keep_sink(self.sink))
                return
            if kind == _COMMIT:
                try:
                    self.sink.commit()
                except Exception:
                    self._call(self._commit_done, Failure())
                else:
                    self._call(self._commit_done, None)
                return
            if self._skip.is_set():
                continue
            try:
                self.sink.store(data)
            except Exception:
                self._skip.set()
                failure = Failure()
                self.sink.discard()
                self._call(self._write_failed, failure)
                return
            self._call(self._written, len(data))
            if self._on_checkpoint is not None and self.sink.received - synced >= self.checkpoint_bytes:
                synced = self._checkpoint_now(synced)

    def _checkpoint_now(self, synced: int) -> int:
        """On the writer thread: sync the partial, report its bytes to the reactor; the bytes synced."""
        assert isinstance(self.sink, ResumableSink) and self._on_checkpoint is not None
        try:
            held = self.sink.sync()
        except Exception:
            return synced  # not synced: nothing to report (keep or commit decides later)
        self._call(self._on_checkpoint, held)
        return held


def _already_kept(result: Kept) -> None:
    """Stands for an ``on_kept`` already called (it is called once)."""
