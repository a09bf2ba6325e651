"""One file body arriving over HTTP: decided from its headers, streamed to disk.

An :class:`UploadReceiver` lives for one ``POST /<prefix>/<key>/<n>``::

    headers in  -> core.begin_upload (connection paused while it decides)
                   refused  -> error status now; the body is never read
                   accepted -> FileSink opened beside the final name,
                               "100 Continue" if the client asked, reading resumes
    body chunks -> the sink's writer (MD5 on the way)
    body done   -> writer drained -> core.verify_upload
                   -> commit (fsync, rename) -> core.complete_upload (CompleteUpload) -> 200
    connection lost, mismatch or write error at any point
                -> temporary file removed, the file is pending again

A body larger than ``offload.OFFLOAD_THRESHOLD`` is written, hashed and
committed by a worker thread (:class:`~.offload.OffloadedSink`), and reading
from the network pauses while the worker is more than a few MiB behind; a
smaller one is written at once on the reactor thread (:class:`~.offload.InlineSink`).
A connection lost once the whole body is in does not stop the commit.

Bytes that arrive in the same read as the headers, before the decision, are
held (at most one read's worth: the connection is paused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import TransferServer, UploadTicket
from ..errors import TransferError
from ..filesink import FileSink
from .offload import OFFLOAD_THRESHOLD, InlineSink, OffloadedSink
from .routes import UploadRoute
from .status import describe_failure, write_text

if TYPE_CHECKING:
    from .request import TransferRequest

_log = Logger()


class UploadReceiver:
    """Drives one file upload between the request, the core and a FileSink."""

    def __init__(
        self,
        request: "TransferRequest",
        transfer_server: TransferServer,
        route: UploadRoute,
        length: int | None,
        expects_continue: bool,
    ) -> None:
        self.request = request
        self.server = transfer_server
        self.route = route
        self.length = length
        self.expects_continue = expects_continue
        self.ticket: UploadTicket | None = None
        self.sink: FileSink | None = None
        self.writer: InlineSink | OffloadedSink | None = None
        self._early: list[bytes] = []
        self._decided = False
        self._body_done = False
        self._lost = False
        self._finished = False

    def start(self) -> None:
        """Ask the core whether this body may come; the connection waits meanwhile."""
        assert self.request.id_token is not None
        self.request.pause_body()
        decision = self.server.begin_upload(
            self.route.prefix,
            self.route.transfer_key,
            self.route.file_num,
            self.request.id_token,
            self.length,
        )
        decision.addCallbacks(self._accepted, self._refused)
        decision.addErrback(self._unexpected, "accepting an upload")

    # -- the decision -----------------------------------------------------------

    def _accepted(self, ticket: UploadTicket) -> None:
        self._decided = True
        if self._lost:
            self.server.fail_upload(ticket)
            return
        self.ticket = ticket
        try:
            self.sink = FileSink(ticket.final_path, ticket.entry.size)
            self.writer = self._writer(self.sink, ticket.entry.size)
            early, self._early = self._early, []
            for chunk in early:
                self.writer.write(chunk)
        except TransferError:
            self._abandon()
            self._refused(Failure())
            return
        if self._body_done:
            self._finish()
            return
        if self.expects_continue and self.length:
            self.request.send_continue()
        self.request.resume_body()

    def _writer(self, sink: FileSink, size: int) -> InlineSink | OffloadedSink:
        site = self.request.channel.site
        threshold = getattr(site, "offload_threshold", OFFLOAD_THRESHOLD)
        if threshold is None or size <= threshold or not IReactorThreads.providedBy(site.reactor):
            # small bodies, or a reactor without threads (in-memory tests): on this thread
            return InlineSink(sink)
        return OffloadedSink(
            sink,
            call_from_thread=site.reactor.callFromThread,
            pause=self._writer_behind,
            resume=self._writer_caught_up,
            on_error=self._write_failed,
        )

    def _writer_behind(self) -> None:
        if not self._body_done and not self._finished:
            self.request.pause_body()

    def _writer_caught_up(self) -> None:
        if not self._body_done and not self._finished and not self._lost:
            self.request.resume_body()

    def _write_failed(self, failure: Failure) -> None:
        """The worker could not write (e.g. disk full): answer now, stop reading."""
        if self._finished:
            return
        self._abandon()
        self._refused(failure)

    def _refused(self, failure: Failure) -> None:
        self._decided = True
        self._early = []
        status, reason = describe_failure(failure, "deciding an upload")
        self._finished = True
        self.request.refuse(status, reason)

    def _unexpected(self, failure: Failure, what: str) -> None:
        self._abandon()
        status, reason = describe_failure(failure, what)
        self._finished = True
        self.request.refuse(status, reason)

    # -- the body ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """A chunk of the file body."""
        if self._finished:
            return
        if self.writer is None:
            if not self._decided:
                self._early.append(data)
            return
        try:
            self.writer.write(data)
        except TransferError:
            self._abandon()
            self._refused(Failure())

    def body_complete(self) -> None:
        """The channel has the whole body (called from the resource's render)."""
        self._body_done = True
        if self.writer is not None and not self._finished:
            self._finish()

    def _finish(self) -> None:
        writer = self.writer
        assert writer is not None
        self._finished = True
        drained = writer.drain()
        drained.addCallbacks(self._verify, self._drain_failed)
        drained.addErrback(self._unexpected, "storing an upload")

    def _drain_failed(self, failure: Failure) -> None:
        """A write failed after the last byte arrived: as a failure during the body."""
        self._abandon()
        self._respond_failure(failure)

    def _verify(self, _: Any) -> None:
        ticket, sink, writer = self.ticket, self.sink, self.writer
        assert ticket is not None and sink is not None and writer is not None
        try:
            self.server.verify_upload(ticket, sink.hexdigest(), sink.received)
        except TransferError:
            writer.discard()
            self._respond_failure(Failure())
            return
        committed = writer.commit()
        committed.addCallbacks(self._committed, self._commit_failed)
        committed.addErrback(self._unexpected, "storing an upload")

    def _commit_failed(self, failure: Failure) -> None:
        assert self.ticket is not None
        failure.trap(TransferError)
        self.server.fail_upload(self.ticket)
        self._respond_failure(failure)

    def _committed(self, _: Any) -> None:
        assert self.ticket is not None
        completion = self.server.complete_upload(self.ticket)
        completion.addCallbacks(self._completed, self._completion_failed)
        completion.addErrback(self._respond_failure)

    def _completed(self, _: Any) -> None:
        ticket = self.ticket
        assert ticket is not None
        entry = ticket.entry
        lines = [
            "return_code: 0",
            f"name: {entry.name}",
            f"size: {entry.size}",
            f"checksum: {entry.checksum}",
        ]
        try:
            lines.append(f"url: {self.server.GetDownloadDescriptor(ticket.prefix, entry.name)}")
        except RuntimeError:
            pass
        _log.info(
            "stored {name} ({size} bytes) for {dn}",
            name=entry.name,
            size=entry.size,
            dn=ticket.id_token.dn or "anonymous",
        )
        write_text(self.request, 200, "\n".join(lines) + "\n")

    def _completion_failed(self, failure: Failure) -> None:
        """CompleteUpload failed: this upload's file must not stay under its final name."""
        assert self.sink is not None
        self.sink.uncommit()
        self._respond_failure(failure)

    def _respond_failure(self, failure: Failure) -> None:
        status, reason = describe_failure(failure, "storing an upload")
        self.request.refuse(status, reason)

    # -- endings -----------------------------------------------------------------

    def connection_lost(self) -> None:
        """The client vanished: drop what arrived, the file is pending again."""
        self._lost = True
        if not self._finished:
            self._finished = True
            self._abandon()

    def _abandon(self) -> None:
        # pending first: whoever sees the temporary file gone (another worker
        # process too) sees the file pending
        if self.ticket is not None:
            self.server.fail_upload(self.ticket)
        if self.writer is not None:
            self.writer.discard()
        elif self.sink is not None:
            self.sink.discard()
