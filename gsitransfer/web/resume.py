"""Resuming a file of a manifest: ``HEAD`` and ``PATCH`` on ``/<prefix>/<key>/<n>`` (tus 1.0 core).

``HEAD`` (:func:`upload_offset`) tells the file's uploader how many bytes the
server holds durably (``Upload-Offset``), its size (``Upload-Length``) and
when the key expires (``Upload-Expires``). ``PATCH`` (:func:`patch_upload`)
appends a piece at that offset: it is an upload that starts at an offset, so
:class:`ResumeReceiver` is :class:`~.upload.UploadReceiver` (the same states,
the same writers, the same verification and publication) with these
differences:

* the core's decision is ``engine.resume_upload`` (the offset must be the
  bytes held: else ``409`` with ``Upload-Offset``);
* the partial is opened at the offset, its MD5 carried over in memory, else
  rebuilt by reading the held bytes once, on a thread;
* a piece that does not reach the end is synced (fdatasync), its bytes
  recorded, and answered ``204`` with the new ``Upload-Offset``; one that
  reaches the end is verified, published and completed first, like a POST;
* a chunked body passing the manifest size is refused (``413``) as it does;
* ``Upload-Checksum`` (tus checksum extension: ``md5``, ``sha1``,
  ``sha256``) is checked over the piece; a mismatch is ``460`` and the
  piece's bytes are dropped (the offset recorded stays where it was).

Headers are judged before the core is asked: ``Tus-Resumable`` other than
``1.0.0`` is ``412``, a Content-Type other than
``application/offset+octet-stream`` ``415``, a missing or non-decimal
``Upload-Offset`` or a bad ``Upload-Checksum`` ``400``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.python.failure import Failure

from ..digests import BodyHashers, DigestError, Expected, upload_checksum
from ..engine import UploadOffset, UploadTicket
from ..errors import BeyondLength, ChecksumMismatch, OffsetMismatch, TransferError
from ..filesink import FileSink, PartialLost
from .exchange import BodyControl, BodyReceiver, Exchange
from .heads import http_date
from .offload import InlineSink, Kept
from .routes import UploadRoute
from .status import (
    TUS_VERSION,
    BadRequest,
    PieceChecksumMismatch,
    TusVersionUnsupported,
    UnsupportedMediaType,
    refusal_for,
    refuse,
    write_empty,
    write_text,
)
from .upload import BodyWriter, UploadReceiver, UploadState

#: the Content-Type of a tus PATCH body
OFFSET_OCTET_STREAM = b"application/offset+octet-stream"

def _expires(seconds: float) -> bytes:
    return http_date(int(seconds))


def upload_offset(exchange: Exchange, body: bytes) -> None:
    """``HEAD /<prefix>/<key>/<n>``: the durable bytes held of the file, for its uploader (tus)."""
    route = exchange.route
    assert isinstance(route, UploadRoute)
    request = exchange.request
    request.setHeader(b"tus-resumable", TUS_VERSION)
    offset = exchange.serving.engine.upload_offset(route.prefix, route.transfer_key, route.file_num, exchange.id_token)
    offset.addCallbacks(
        lambda held: _answer_offset(request, held),
        lambda failure: refuse(request, refusal_for(failure, "reading a file's offset")),
    )


def _answer_offset(request: Any, held: UploadOffset) -> None:
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    request.setHeader(b"upload-offset", b"%d" % held.offset)
    if held.length is None:  # a chunked PUT's: not known (tus: a deferred length)
        request.setHeader(b"upload-defer-length", b"1")
    else:
        request.setHeader(b"upload-length", b"%d" % held.length)
    request.setHeader(b"upload-expires", _expires(held.expires))
    write_text(request, 200, "")


def check_patch_headers(exchange: Exchange) -> tuple[int, Expected | None]:
    """The piece's ``Upload-Offset`` and ``Upload-Checksum``, or the refusal raised."""
    version = exchange.header(b"tus-resumable")
    if version is not None and version != TUS_VERSION:
        raise TusVersionUnsupported()
    content_type = (exchange.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if content_type != OFFSET_OCTET_STREAM:
        raise UnsupportedMediaType(f"a PATCH body must be {OFFSET_OCTET_STREAM.decode()}")
    offset_text = exchange.header(b"upload-offset")
    if offset_text is None:
        raise BadRequest("Upload-Offset is required")
    if not offset_text.isdigit() or len(offset_text) > 20:
        raise BadRequest("Upload-Offset must be a decimal number of bytes")
    checksum_text = exchange.header(b"upload-checksum")
    checksum: Expected | None = None
    if checksum_text is not None:
        try:
            checksum = upload_checksum(checksum_text)
        except DigestError as error:
            raise BadRequest(str(error)) from None
    return int(offset_text), checksum


class RefusedBody:
    """The receiver of a body refused from its headers: nothing is read into it."""

    def data_received(self, data: bytes) -> None:
        """Ignored."""

    def body_complete(self) -> None:
        """The refusal was already sent."""

    def connection_lost(self) -> None:
        """Nothing to clean up."""


class ResumeReceiver(UploadReceiver):
    """A ``PATCH``: an upload of a file's piece starting at the bytes held (see the module rules)."""

    def __init__(
        self, exchange: Exchange, control: BodyControl, offset: int, checksum: Expected | None
    ) -> None:
        super().__init__(exchange, control)
        self.offset = offset
        self.piece_bytes = 0
        #: the piece's ``Upload-Checksum``, hashed with the request's other digests (on the MD5's thread)
        self._upload_checksum = checksum
        #: this piece's bytes failed one of its digests: dropped, the offset stays the piece's start
        self._piece_dropped = False

    def _body_hashers(self) -> BodyHashers | None:
        named = super()._body_hashers()
        if self._upload_checksum is None:
            return named
        return BodyHashers([*(named.expected if named is not None else ()), self._upload_checksum])

    def _decide(self) -> "defer.Deferred[UploadTicket]":
        return self.engine.resume_upload(
            self.route.prefix,
            self.route.transfer_key,
            self.route.file_num,
            self.exchange.id_token,
            self.offset,
            self.exchange.length,
        )

    def _decided(self, ticket: UploadTicket) -> None:
        if self.state is UploadState.LOST:
            self.engine.fail_upload(ticket)
            return
        self.ticket = ticket
        reactor = self.exchange.serving.reactor
        if (
            ticket.offset
            and ticket.resume_md5 is None
            and IReactorThreads.providedBy(reactor)
            and IReactorFromThreads.providedBy(reactor)
        ):
            # the held bytes are read once to rebuild their MD5: off the reactor thread
            opened: defer.Deferred[FileSink] = threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), self._open_sink, ticket
            )
            opened.addCallbacks(self._opened, self._open_failed)
            opened.addErrback(self._fail, "opening an upload")
            return
        try:
            sink = self._open_sink(ticket)
        except TransferError:
            self._open_failed(Failure())
            return
        self._accept(sink)

    def _opened(self, sink: FileSink) -> None:
        if self.state is not UploadState.DECIDING:
            # the client left while the MD5 was rebuilt (the file is pending again): close, keep the bytes
            InlineSink(sink).keep(lambda kept: None)
            return
        self._accept(sink)

    def _open_failed(self, failure: Failure) -> None:
        """The partial could not be opened; one shorter than recorded puts the file back to 0 (409)."""
        ticket = self.ticket
        if self.state is not UploadState.DECIDING or ticket is None:
            return
        if failure.check(PartialLost):
            self.engine.keep_partial(ticket, None)
            self.ticket = None
            self._refuse(Failure(OffsetMismatch(self.offset, 0)), "opening an upload")
            return
        self._fail(failure, "opening an upload")

    def _take(self, data: bytes) -> None:
        ticket = self.ticket
        assert ticket is not None
        # (the engine refuses a PATCH of a file whose size was never announced: counted_size is its size)
        if ticket.offset + self.piece_bytes + len(data) > ticket.entry.counted_size:
            raise BeyondLength(f"the body passes the manifest size {ticket.entry.size} at offset {ticket.offset}")
        self.piece_bytes += len(data)
        super()._take(data)

    def _checkpoint(self, held: int) -> None:
        if self.hashers is None:  # a piece with digests is recorded only once checked
            super()._checkpoint(held)

    def _body_written(self, _: object) -> None:
        ticket, sink, writer = self.ticket, self.sink, self.writer
        assert ticket is not None and sink is not None and writer is not None
        if self.hashers is not None:
            refusal = self._piece_refusal(self.hashers)
            if refusal is not None:
                self._piece_dropped = True
                self._fail(Failure(refusal), "checking a piece")
                return
            if self.offset:
                # digests of a piece, not of the file: checked here, never kept as the file's
                self.hashers = None
        if sink.received < ticket.entry.counted_size:
            writer.keep(self._piece_kept)
            return
        self._verify(None)

    def _piece_refusal(self, hashers: BodyHashers) -> TransferError | None:
        """Why this piece's bytes are refused: 460 for its ``Upload-Checksum``, 422 for another digest; or None."""
        checksum = self._upload_checksum
        if checksum is not None and hashers.digests()[checksum.algorithm] != checksum.value.hex():
            return PieceChecksumMismatch()
        reason = hashers.mismatch()
        return None if reason is None else ChecksumMismatch(reason)

    def _piece_kept(self, kept: Kept) -> None:
        """A piece short of the end is durable: recorded, then ``204`` with the new offset."""
        ticket = self.ticket
        assert ticket is not None
        recorded = self._partial_kept(ticket, kept)
        recorded.addCallback(lambda held: self._piece_recorded(ticket, kept, held))
        recorded.addErrback(self._fail, "keeping a piece")

    def _piece_recorded(self, ticket: UploadTicket, kept: Kept, held: int) -> None:
        if kept is None:
            self._refuse(Failure(OffsetMismatch(self.offset, held)), "keeping a piece")
            return
        if self._move("commit"):
            self._answer_piece(held, ticket)

    def _answer_stored(self, ticket: UploadTicket) -> None:
        self._answer_piece(ticket.entry.counted_size, ticket)

    def _answer_piece(self, offset: int, ticket: UploadTicket) -> None:
        found = self.engine.calls.get(ticket.transfer_key)
        found.addErrback(lambda _: None)  # the answer is the offset; the expiry is only a hint
        found.addCallback(lambda record: self._write_piece_answer(offset, record))

    def _write_piece_answer(self, offset: int, record: Any) -> None:
        headers = [(b"upload-offset", b"%d" % offset), (b"tus-resumable", TUS_VERSION)]
        if record is not None:
            headers.append((b"upload-expires", _expires(record.expires)))
        write_empty(self.exchange.request, 204, tuple(headers))

    def _abandon_partial(self, ticket: UploadTicket, writer: BodyWriter, failure: Failure | None) -> None:
        if self._piece_dropped:
            # this piece's bytes are dropped: the offset recorded stays the piece's start
            writer.keep(lambda kept: self.engine.keep_partial(ticket, ticket.offset, ticket.resume_md5))
            return
        super()._abandon_partial(ticket, writer, failure)


def patch_upload(exchange: Exchange, control: BodyControl) -> BodyReceiver:
    """``PATCH /<prefix>/<key>/<n>``: a piece of the file at ``Upload-Offset`` (tus core, streamed)."""
    exchange.request.setHeader(b"tus-resumable", TUS_VERSION)
    try:
        offset, checksum = check_patch_headers(exchange)
    except TransferError as error:
        control.refuse(error)
        return RefusedBody()
    receiver = ResumeReceiver(exchange, control, offset, checksum)
    receiver.start()
    return receiver


__all__ = [
    "OFFSET_OCTET_STREAM",
    "RefusedBody",
    "ResumeReceiver",
    "check_patch_headers",
    "patch_upload",
    "upload_offset",
]
