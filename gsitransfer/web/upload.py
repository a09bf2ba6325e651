"""One file body arriving over HTTP: decided from its headers, streamed to disk.

An :class:`UploadReceiver` lives for one ``POST /<prefix>/<key>/<n>``::

    headers in  -> core.begin_upload (connection paused while it decides)
                   refused  -> error status now; the body is never read
                   accepted -> FileSink opened beside the final name,
                               "100 Continue" if the client asked, reading resumes
    body chunks -> FileSink.write (MD5 on the way)
    body done   -> core.verify_upload -> FileSink.commit (fsync, rename)
                   -> core.complete_upload (CompleteUpload) -> 200
    connection lost, mismatch or write error at any point
                -> temporary file removed, the file is pending again

Bytes that arrive in the same read as the headers, before the decision, are
held (at most one read's worth: the connection is paused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import TransferServer, UploadTicket
from ..errors import TransferError
from ..filesink import FileSink
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
            early, self._early = self._early, []
            for chunk in early:
                self.sink.write(chunk)
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

    def _refused(self, failure: Failure) -> None:
        self._decided = True
        self._early = []
        status, reason, allow = describe_failure(failure, "deciding an upload")
        self._finished = True
        self.request.refuse(status, reason, allow)

    def _unexpected(self, failure: Failure, what: str) -> None:
        self._abandon()
        status, reason, _ = describe_failure(failure, what)
        self._finished = True
        self.request.refuse(status, reason)

    # -- the body ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """A chunk of the file body."""
        if self._finished:
            return
        if self.sink is None:
            if not self._decided:
                self._early.append(data)
            return
        try:
            self.sink.write(data)
        except TransferError:
            self._abandon()
            self._refused(Failure())

    def body_complete(self) -> None:
        """The channel has the whole body (called from the resource's render)."""
        self._body_done = True
        if self.sink is not None and not self._finished:
            self._finish()

    def _finish(self) -> None:
        ticket, sink = self.ticket, self.sink
        assert ticket is not None and sink is not None
        self._finished = True
        try:
            self.server.verify_upload(ticket, sink.hexdigest(), sink.received)
        except TransferError:
            sink.discard()
            self._respond_failure(Failure())
            return
        try:
            sink.commit()
        except TransferError:
            self.server.fail_upload(ticket)
            self._respond_failure(Failure())
            return
        completion = self.server.complete_upload(ticket)
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
        status, reason, allow = describe_failure(failure, "storing an upload")
        self.request.refuse(status, reason, allow)

    # -- endings -----------------------------------------------------------------

    def connection_lost(self) -> None:
        """The client vanished: drop what arrived, the file is pending again."""
        self._lost = True
        if not self._finished:
            self._finished = True
            self._abandon()

    def _abandon(self) -> None:
        if self.sink is not None:
            self.sink.discard()
        if self.ticket is not None:
            self.server.fail_upload(self.ticket)
