"""One file body arriving over HTTP: an explicit state machine from its headers to its answer.

An :class:`UploadReceiver` lives for one ``POST /<prefix>/<key>/<n>``. Its
states and the events that move it (anything else is ignored: a late event
of a path already left)::

    DECIDING  --accept-->  RECEIVING  --end-->  VERIFYING  --commit-->  COMMITTED
       |                      |                     |
       +--refuse--> REFUSED <-+-------refuse--------+
       |                      |
       +---lose---> LOST <----+           (VERIFYING ignores lose: the body is
                                            in, the commit goes on)

* DECIDING -- the core (and the handler) decide from the headers; the
  connection is paused (:class:`~.exchange.BodyControl`); bytes that came
  with the head are held (at most one read: the connection is paused).
  ``accept`` opens a :class:`~gsitransfer.filesink.FileSink` beside the final
  name, sends ``100 Continue`` if the client asked, and reads on.
* RECEIVING -- each chunk goes to the sink's writer (MD5 on the way).
  ``end`` (the whole body in, the decision made) drains the writer.
* VERIFYING -- size and MD5 checked by the core, then fsync and rename, then
  ``CompleteUpload``: 200 with the file's description. A file of an atomic
  batch (``commit = atomic``) is synced and held in its partial instead
  (:func:`gsitransfer.batch.hold_file`): 200 with ``state: verified``, or,
  for the last file of the batch, every file published and completed first
  and ``state: stored``.
* REFUSED -- an error status (:func:`~.status.describe_failure`); what
  arrived is kept in the file's partial (synced, then its offset recorded:
  ``keep``), except after a whole-file MD5 mismatch (partial removed, offset
  0); the file is pending again.
* LOST -- the client went away: the same keep, the file is pending again
  (a decision that arrives later is undone).

The body goes to the file's partial (:class:`~gsitransfer.filesink.ResumableSink`):
a whole ``POST`` starts it at 0, a ``PATCH``
(:class:`~.resume.ResumeReceiver`, a subclass) at the bytes held.

A file its manifest found already stored (manifest-time dedupe) goes the same
way with a :class:`DiscardedBody` for its writer: the body is read and
dropped, nothing is written, verified or completed, and the answer is the
usual ``200`` (the stored file is untouched).

A body larger than the site's ``offload_threshold`` is written, hashed and
committed by worker threads (:class:`~.offload.OffloadedSink`); reading
pauses while they are more than a few MiB behind. A smaller one is written at
once on the reactor thread (:class:`~.offload.InlineSink`).
"""

from __future__ import annotations

import enum
from typing import Callable, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..batch import hold_file, is_atomic
from ..engine import UploadTicket
from ..errors import ChecksumMismatch, TransferError, UploadFailed
from ..filesink import FileSink, ResumableSink
from .digesting import BodyHashers, body_hashers_for, keep_upload_digests
from .exchange import BodyControl, Exchange
from .offload import InlineSink, Kept, OffloadedSink
from .routes import UploadRoute
from .status import refusal_for, write_text

_log = Logger()


class BodyWriter(Protocol):
    """Where a body's chunks go (:class:`~.offload.InlineSink`, :class:`~.offload.OffloadedSink`, :class:`DiscardedBody`)."""

    def write(self, data: bytes) -> None: ...

    def drain(self) -> "defer.Deferred[None]": ...

    def commit(self) -> "defer.Deferred[None]": ...

    def discard(self) -> None: ...

    def keep(self, on_kept: Callable[[Kept], object]) -> None: ...


class UploadState(enum.Enum):
    DECIDING = "deciding"
    RECEIVING = "receiving"
    VERIFYING = "verifying"
    COMMITTED = "committed"
    REFUSED = "refused"
    LOST = "lost"


#: (state, event) -> next state; an event not listed for a state is ignored
TRANSITIONS: dict[tuple[UploadState, str], UploadState] = {
    (UploadState.DECIDING, "accept"): UploadState.RECEIVING,
    (UploadState.DECIDING, "refuse"): UploadState.REFUSED,
    (UploadState.DECIDING, "lose"): UploadState.LOST,
    (UploadState.RECEIVING, "end"): UploadState.VERIFYING,
    (UploadState.RECEIVING, "refuse"): UploadState.REFUSED,
    (UploadState.RECEIVING, "lose"): UploadState.LOST,
    (UploadState.VERIFYING, "commit"): UploadState.COMMITTED,
    (UploadState.VERIFYING, "refuse"): UploadState.REFUSED,
}


class UploadReceiver:
    """Drives one file upload between the request, the core and a FileSink (a ``BodyReceiver``)."""

    def __init__(self, exchange: Exchange, control: BodyControl) -> None:
        route = exchange.route
        assert isinstance(route, UploadRoute)
        self.exchange = exchange
        self.route = route
        self.control = control
        self.engine = exchange.serving.engine
        self.state = UploadState.DECIDING
        #: the whole body has arrived (a fact of the network, whatever the state)
        self.body_in = False
        self.ticket: UploadTicket | None = None
        self.sink: FileSink | None = None
        self.writer: BodyWriter | None = None
        self._early: list[bytes] = []
        #: the digests the request's fields name for the body (None: none named, nothing hashed but the MD5)
        self.hashers: BodyHashers | None = None
        #: a file of an atomic batch: its ``state:`` once held (``verified``) or published (``stored``)
        self.batch_state: str | None = None

    def _move(self, event: str) -> bool:
        """Apply ``event``; False (and nothing changes) when the state does not take it."""
        after = TRANSITIONS.get((self.state, event))
        if after is None:
            return False
        self.state = after
        return True

    def start(self) -> None:
        """Ask the core whether this body may come; the connection waits meanwhile."""
        self.control.pause_body()
        try:
            self.hashers = self._body_hashers()
        except TransferError:
            self._fail(Failure(), "reading an upload's digest fields")
            return
        self._ask()

    def _ask(self) -> None:
        """Ask the core for its decision (the connection is paused)."""
        decision = self._decide()
        decision.addCallbacks(self._decided, self._decision_refused)
        decision.addErrback(self._fail, "accepting an upload")

    def _body_hashers(self) -> BodyHashers | None:
        """The digests the request's fields name for its body (raises the 400 for a malformed one)."""
        return body_hashers_for(self.exchange.request)

    def _decide(self) -> "defer.Deferred[UploadTicket]":
        """The core's decision about this body (a whole file, from byte 0)."""
        return self.engine.begin_upload(
            self.route.prefix,
            self.route.transfer_key,
            self.route.file_num,
            self.exchange.id_token,
            self.exchange.length,
        )

    def _open_sink(self, ticket: UploadTicket) -> FileSink:
        """Where the body goes: the file's partial, at the ticket's offset (0 for a whole body)."""
        if not ticket.partial_path:
            return FileSink(ticket.final_path, ticket.entry.counted_size)
        return ResumableSink(
            ticket.final_path, ticket.entry.counted_size, ticket.partial_path, ticket.offset, ticket.resume_md5
        )

    # -- DECIDING ----------------------------------------------------------------

    def _decided(self, ticket: UploadTicket) -> None:
        if self.state is UploadState.LOST:
            self.engine.fail_upload(ticket)
            return
        self.ticket = ticket
        try:
            sink = None if ticket.already_stored else self._open_sink(ticket)
        except TransferError:
            self._fail(Failure(), "opening an upload")
            return
        self._accept(sink)

    def _accept(self, sink: FileSink | None) -> None:
        """The body may come: to ``sink`` (None: a body to discard), the bytes held back first."""
        ticket = self.ticket
        assert ticket is not None
        try:
            if sink is None:
                self.writer = DiscardedBody()
            else:
                self.sink = sink
                sink.extra_hashers = self.hashers
                remaining = None if ticket.entry.size is None else ticket.entry.size - ticket.offset
                self.writer = self._writer(sink, remaining)
            early, self._early = self._early, []
            for chunk in early:
                self._take(chunk)
        except TransferError:
            self._fail(Failure(), "opening an upload")
            return
        if self.state is not UploadState.DECIDING:
            return  # refused by a held-back chunk
        self._move("accept")
        if self.body_in:
            self._end()
            return
        if self.exchange.expects_continue and self.exchange.length != 0:
            self.control.send_continue(self._continue_fields())
        self.control.resume_body()

    def _continue_fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """Header fields of the ``100 Continue`` (none: the client knows its upload's URL)."""
        return ()

    def _decision_refused(self, failure: Failure) -> None:
        self._early = []
        self._fail(failure, "deciding an upload")

    def _writer(self, sink: FileSink, size: int | None) -> BodyWriter:
        """The writer for ``size`` more bytes (None: not known, perhaps many: threads, as for a large body)."""
        serving = self.exchange.serving
        threshold = serving.offload_threshold
        reactor = serving.reactor
        if (
            threshold is None
            or (size is not None and size <= threshold)
            or not IReactorThreads.providedBy(reactor)
            or not IReactorFromThreads.providedBy(reactor)
        ):
            # small bodies, or a reactor without threads (in-memory tests): on this thread
            return InlineSink(sink)
        return OffloadedSink(
            sink,
            call_from_thread=reactor.callFromThread,
            pause=self._writer_behind,
            resume=self._writer_caught_up,
            on_error=self._write_failed,
            discards=serving.discards,
            on_checkpoint=self._checkpoint,
        )

    def _checkpoint(self, held: int) -> None:
        """The writer synced ``held`` bytes of the partial while the body arrives: recorded (a crash keeps them)."""
        if self.ticket is not None and self.state in (UploadState.RECEIVING, UploadState.VERIFYING):
            self.engine.checkpoint(self.ticket, held)

    # -- RECEIVING ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """A chunk of the file body."""
        if self.state is UploadState.DECIDING:
            self._early.append(data)
        elif self.state is UploadState.RECEIVING and self.writer is not None:
            try:
                self._take(data)
            except TransferError:
                self._fail(Failure(), "storing an upload")

    def _take(self, data: bytes) -> None:
        """A chunk of the body, to the writer."""
        assert self.writer is not None
        self.writer.write(data)

    def body_complete(self) -> None:
        """The channel has the whole body."""
        self.body_in = True
        if self.state is UploadState.RECEIVING:
            self._end()

    def _writer_behind(self) -> None:
        if self.state is UploadState.RECEIVING and not self.body_in:
            self.control.pause_body()

    def _writer_caught_up(self) -> None:
        if self.state is UploadState.RECEIVING and not self.body_in:
            self.control.resume_body()

    def _write_failed(self, failure: Failure) -> None:
        """The worker could not write (e.g. disk full): answer now, stop reading."""
        self._fail(failure, "storing an upload")

    def _end(self) -> None:
        writer = self.writer
        assert writer is not None
        self._move("end")
        drained = writer.drain()
        drained.addCallbacks(self._body_written, self._fail, errbackArgs=("storing an upload",))
        drained.addErrback(self._fail, "storing an upload")

    # -- VERIFYING ---------------------------------------------------------------

    def _body_written(self, _: object) -> None:
        """Every byte of the body is in the file: verify the whole file."""
        self._verify(None)

    def _verify(self, _: object) -> None:
        if self.ticket is not None and self.ticket.already_stored:
            self._completed(None)  # nothing written, nothing to verify: the file is stored
            return
        ticket, sink, writer = self.ticket, self.sink, self.writer
        assert ticket is not None and sink is not None and writer is not None
        check_digests = self.hashers.check if self.hashers is not None else None
        verified = self.engine.verify_upload(ticket, sink.hexdigest(), sink.received, check_digests)
        verified.addCallbacks(self._verified, self._fail, errbackArgs=("verifying an upload",))
        verified.addErrback(self._fail, "storing an upload")

    def _verified(self, _: object) -> None:
        """The bytes are the manifest's: published (or, in an atomic batch, held)."""
        ticket, writer = self.ticket, self.writer
        assert ticket is not None and writer is not None
        if is_atomic(ticket):
            writer.keep(self._verified_kept)
            return
        committed = writer.commit()
        committed.addCallbacks(self._committed, self._commit_failed)
        committed.addErrback(self._fail, "storing an upload")

    def _verified_kept(self, kept: Kept) -> None:
        """A file of an atomic batch is verified and synced in its partial: held (the last one publishes all)."""
        ticket = self.ticket
        assert ticket is not None
        if kept is None:
            self.engine.keep_partial(ticket, None)
            self._refuse(Failure(UploadFailed("the verified file could not be kept")), "holding an upload")
            return
        held = hold_file(self.engine, ticket, kept[0], kept[1])
        held.addCallbacks(self._batch_held, self._refuse, errbackArgs=("publishing a batch",))
        held.addErrback(self._fail, "publishing a batch")

    def _batch_held(self, state: str) -> None:
        self.batch_state = state
        self._completed(None)

    def _commit_failed(self, failure: Failure) -> None:
        """The writer could not fsync or rename (it removed its file): pending again, nothing held."""
        failure.trap(TransferError)
        assert self.ticket is not None
        self.engine.keep_partial(self.ticket, None)
        self._refuse(failure, "storing an upload")

    def _committed(self, _: object) -> None:
        assert self.ticket is not None
        completion = self.engine.complete_upload(self.ticket)
        completion.addCallbacks(self._completed, self._completion_failed)
        completion.addErrback(self._fail, "completing an upload")

    def _completion_failed(self, failure: Failure) -> None:
        """CompleteUpload failed: this upload's file must not stay under its final name."""
        assert self.sink is not None and self.ticket is not None
        self.sink.uncommit()
        self.engine.keep_partial(self.ticket, None)  # the file is pending again (the engine said so): nothing held
        self._refuse(failure, "completing an upload")

    def _completed(self, _: object) -> None:
        ticket = self.ticket
        assert ticket is not None
        if not self._move("commit"):
            return
        self._answer_stored(ticket)

    def _answer_stored(self, ticket: UploadTicket) -> None:
        """``200`` with the file's description (the seed's ``key: value`` lines)."""
        entry = ticket.entry
        lines = [
            "return_code: 0",
            f"name: {entry.name}",
            f"size: {entry.size}",
            f"checksum: {entry.checksum}",
        ]
        self._record_stored(ticket)
        url = self.exchange.locate(ticket.prefix, entry.name)
        if url is not None:
            lines.append(f"url: {url}")
        if self.batch_state is not None:
            lines.append(f"state: {self.batch_state}")
        write_text(self.exchange.request, 200, "\n".join(lines) + "\n")

    def _record_stored(self, ticket: UploadTicket) -> None:
        """The file is stored: keep the digests hashed on the way (for ``Want-Digest``), log it."""
        request = self.exchange.request
        if getattr(request, "audit_started", None) is not None:  # the site records events
            md5 = self.sink.hexdigest() if self.sink is not None else ticket.entry.checksum
            setattr(request, "audit_file", (ticket.entry.name, ticket.entry.size, md5 or None))
            setattr(request, "audit_received", self.exchange.length)
        if self.sink is not None:
            digester, adapter = self.exchange.serving.digester, self.engine.adapter_for(ticket.prefix)
            keep_upload_digests(digester, adapter, ticket.final_path, self.sink, self.hashers)
        _log.info(
            "{what} {name} ({size} bytes) for {dn}",
            what="already stored (body discarded):" if ticket.already_stored else self.batch_state or "stored",
            name=ticket.entry.name,
            size=ticket.entry.size,
            dn=ticket.id_token.dn or "anonymous",
        )

    # -- REFUSED and LOST --------------------------------------------------------

    def _fail(self, failure: Failure, what: str) -> None:
        """Anything that ends the upload unstored: the file is pending again, then the refusal."""
        if self.state in (UploadState.REFUSED, UploadState.LOST, UploadState.COMMITTED):
            return
        self._abandon(failure)
        self._refuse(failure, what)

    def _refuse(self, failure: Failure, what: str) -> None:
        if self._move("refuse"):
            self.control.refuse(refusal_for(failure, what))

    def connection_lost(self) -> None:
        """The client vanished: drop what arrived, the file is pending again."""
        if self._move("lose"):
            self._abandon()

    def _abandon(self, failure: Failure | None = None) -> None:
        ticket, writer = self.ticket, self.writer
        if ticket is not None and ticket.partial_path and writer is not None and not ticket.already_stored:
            self._abandon_partial(ticket, writer, failure)
            return
        # pending first: whoever sees the temporary file gone (another worker
        # process too) sees the file pending
        if self.ticket is not None:
            self.engine.fail_upload(self.ticket)
        if self.writer is not None:
            self.writer.discard()
        elif self.sink is not None:
            self.sink.discard()

    def _abandon_partial(self, ticket: UploadTicket, writer: BodyWriter, failure: Failure | None) -> None:
        """A resumable body ended unstored: what arrived is kept (synced, then recorded), the file pending.

        A whole-file checksum mismatch is the exception: the engine has put
        the file back to 0, and its partial is removed.
        """
        if failure is not None and failure.check(ChecksumMismatch):
            writer.discard()
            return
        writer.keep(lambda kept: self._partial_kept(ticket, kept))

    def _partial_kept(self, ticket: UploadTicket, kept: Kept) -> "defer.Deferred[int]":
        """The partial is synced (or could not be kept: None): record its bytes; fires with the bytes recorded."""
        held, md5 = kept if kept is not None else (None, None)
        return self.engine.keep_partial(ticket, held, md5)


class DiscardedBody:
    """The writer of a body for a file found already stored: counts the bytes, writes nothing."""

    def __init__(self) -> None:
        self.received = 0

    def write(self, data: bytes) -> None:
        """Drop ``data``."""
        self.received += len(data)

    def drain(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def commit(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def discard(self) -> None:
        """Nothing was written: nothing to remove."""

    def keep(self, on_kept: Callable[[Kept], object]) -> None:
        """Nothing was written: nothing kept."""
        on_kept(None)


def begin_upload(exchange: Exchange, control: BodyControl) -> UploadReceiver:
    """The upload verb's start: a receiver deciding about ``exchange``'s body."""
    receiver = UploadReceiver(exchange, control)
    receiver.start()
    return receiver


__all__ = ["TRANSITIONS", "BodyWriter", "DiscardedBody", "UploadReceiver", "UploadState", "begin_upload"]
