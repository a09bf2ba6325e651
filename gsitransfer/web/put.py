"""``PUT /<prefix>/<name>``: one file, uploaded the way curl, davix, gfal2 and rclone upload (SPEC §8.1).

A ``PUT`` is a one-file manifest made from its headers, then that file's
body -- the same two steps as the protocol's manifest and ``POST``, through
the same core:

1. *From the headers alone* (the body waits: ``100 Continue`` is sent only
   once the file is accepted): the name must be one safe component of a flat
   store (``a/b`` is ``409``, as WebDAV answers a ``PUT`` under a collection
   that does not exist); ``Content-Range`` is refused (``400``: a ``PUT`` is a
   whole file); a size over the server's limits is ``413``; with
   ``If-None-Match: *`` a name that resolves to a file is ``412``. Then
   :meth:`~gsitransfer.engine.TransferEngine.announce_manifest` -- the one
   registration path of every upload: take-over of the caller's own pending
   name, dedupe, quotas (``429``), ``CanUpload`` (with the MD5 of
   ``Content-MD5``, ``Repr-Digest`` or ``Content-Digest`` when one is sent,
   else None) and ``AddPendingUpload`` -- as the caller's identity. A refusal
   is the handler's reason with its status: ``409`` for a name that is taken,
   ``507`` for lack of space, ``403`` otherwise.
2. *The body*: the transfer's file 0 is uploaded by a
   :class:`~.upload.UploadReceiver` exactly as a ``POST`` of it would be --
   streamed to the file's partial with the MD5 (and every digest the request
   names) computed on the way, verified, fsync'd, renamed, ``CompleteUpload``
   -- and answered ``201 Created`` with ``ETag`` (the one a ``GET`` gives)
   and ``Location``.

A ``PUT`` without ``Content-Length`` (a chunked body, as ``globus-url-copy``
sends) is announced without a size (``CanUpload`` sees None); the server's
size limit is enforced as the body arrives (``413``) and a full disk is
``507``; nothing is published either way.

The ``100 Continue`` carries ``Location`` (the file's upload URL,
``/<prefix>/<key>/0``) and ``Tus-Resumable``: a client that reads it can
resume a cut-off ``PUT`` with ``HEAD``/``PATCH`` (SPEC §7.1), as the bytes
that arrived are kept like a ``POST``'s. Any client can simply ``PUT`` again:
the same identity takes its pending name over.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from ..engine import ManifestOutcome, UploadTicket
from ..handler import DownloadTarget
from ..errors import BeyondLength, ManifestError, NameTaken, TransferError
from ..filesink import FileSink
from ..manifest import Manifest, one_file_manifest
from .download import entity_tag
from .exchange import BodyControl, Exchange
from .routes import FileRoute, UploadRoute
from .status import TUS_VERSION, BadRequest, BodyTooLarge, PreconditionFailed, refusal_for, write_text
from .offload import Kept
from .upload import BodyWriter, UploadReceiver, UploadState

#: the digest algorithms whose value is an MD5 a handler's ``CanUpload`` can be given
_MD5 = "md5"


def put_name(exchange: Exchange, route: FileRoute) -> str:
    """The file name a ``PUT`` targets, after the checks its headers allow; the refusal raised otherwise."""
    if "/" in route.url_path:
        raise NameTaken(f"this store is flat: no collection {route.url_path.rsplit('/', 1)[0]} (PUT to /{route.prefix}/<name>)")
    if exchange.header(b"content-range") is not None:
        raise BadRequest("a PUT carries a whole file: Content-Range is not supported (resume with HEAD and PATCH)")
    largest = exchange.serving.engine.manifest_limits.largest_file
    if largest is not None and exchange.length is not None and exchange.length > largest:
        raise BodyTooLarge(f"Content-Length {exchange.length} is more than this server takes ({largest} bytes)")
    return route.url_path


class PutReceiver(UploadReceiver):
    """One ``PUT``: its file announced from the headers, then its body uploaded as a ``POST`` of it, ``201``.

    Until the announcement is accepted the receiver is DECIDING (the body
    waits, held back as for any upload); its route is then the transfer's
    file 0 and everything after is :class:`~.upload.UploadReceiver`'s.
    """

    def __init__(self, exchange: Exchange, control: BodyControl) -> None:
        route = exchange.route
        assert isinstance(route, FileRoute)
        # the transfer key is known once the file is announced (see _announced)
        super().__init__(replace(exchange, route=UploadRoute(route.prefix, "", "0")), control)
        self.file_route = route
        #: the largest body taken when its size was not announced (a chunked PUT)
        self.limit = exchange.serving.engine.manifest_limits.largest_file

    def start(self) -> None:
        """Check the headers, then announce the file; the connection waits meanwhile."""
        self.control.pause_body()
        route = self.file_route
        try:
            name = put_name(self.exchange, route)
            self.hashers = self._body_hashers()
            md5 = None
            if self.hashers is not None:
                md5 = next((item.value.hex() for item in self.hashers.expected if item.algorithm == _MD5), None)
            manifest = one_file_manifest(name, self.exchange.length, md5, self.engine.manifest_limits)
        except (TransferError, ManifestError):
            self._fail(Failure(), "reading a PUT's headers")
            return
        if self.exchange.header(b"if-none-match") == b"*":
            # the handler says where a download of the name would come from, as the caller
            found = self.engine.resolve_download(route.prefix, name, self.exchange.id_token)
            found.addCallbacks(self._target_found, self._no_target, callbackArgs=(manifest,), errbackArgs=(manifest,))
            found.addErrback(self._fail, "announcing a PUT")
            return
        self._announce(manifest)

    def _target_found(self, target: DownloadTarget, manifest: Manifest) -> None:
        """``If-None-Match: *``: ``412`` when the name is a file, else the announcement."""
        if target.path and os.path.exists(target.path):
            name = manifest.files[0].name
            self._fail(Failure(PreconditionFailed(f"If-None-Match: * and {name} exists")), "announcing a PUT")
            return
        self._announce(manifest)

    def _no_target(self, failure: Failure, manifest: Manifest) -> None:
        """``If-None-Match: *`` on a name that is not found (or not the caller's to see): it holds."""
        failure.trap(TransferError)
        self._announce(manifest)

    def _announce(self, manifest: Manifest) -> None:
        if self.state is not UploadState.DECIDING:
            return  # the client went away meanwhile
        # a PUT is a whole body from byte 0: a name taken over keeps none of its old bytes
        prefix = self.file_route.prefix
        announced = self.engine.announce_manifest(prefix, manifest, self.exchange.id_token, carry=False)
        announced.addCallback(self._announced)
        announced.addErrback(self._fail, "announcing a PUT")

    def _announced(self, outcome: ManifestOutcome) -> None:
        if not outcome.accepted:
            self._fail(Failure(outcome.refusal()), "announcing a PUT")
            return
        prefix, key = self.file_route.prefix, str(outcome.transfer_key)
        if self.state is not UploadState.DECIDING:
            # the client went away while the handler decided: nothing of this PUT is kept
            self.engine.cancel_transfer(prefix, key, self.exchange.id_token).addErrback(lambda _: None)
            return
        self.route = UploadRoute(prefix, key, "0")
        self.exchange = replace(self.exchange, route=self.route)
        self._ask()

    def _continue_fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """The upload URL (``/<prefix>/<key>/0``) in the ``100 Continue``: where a cut-off PUT resumes."""
        route = self.route
        url = self.exchange.locate(route.prefix, f"{route.transfer_key}/0") or f"/{route.prefix}/{route.transfer_key}/0"
        return ((b"location", url.encode("utf-8")), (b"tus-resumable", TUS_VERSION))

    def _writer(self, sink: FileSink, size: int | None) -> BodyWriter:
        """A chunked body's writer counts its bytes against the server's size limit."""
        writer = super()._writer(sink, size)
        if size is None and self.limit is not None:
            return LimitedWriter(writer, self.limit)
        return writer

    def _abandon(self, failure: Failure | None = None) -> None:
        """A chunked PUT cut off or refused keeps nothing: it cannot be resumed (no length was announced)."""
        ticket, writer = self.ticket, self.writer
        if ticket is not None and ticket.entry.size is None and writer is not None:
            self.engine.fail_upload(ticket)
            writer.discard()
            return
        super()._abandon(failure)

    def _body_written(self, _: object) -> None:
        """A chunked body's size is known now: the file is announced with it, then verified as usual."""
        ticket, sink = self.ticket, self.sink
        if ticket is not None and sink is not None and ticket.entry.size is None:
            self.ticket = replace(ticket, entry=replace(ticket.entry, size=sink.received))
        super()._body_written(_)

    def _answer_stored(self, ticket: UploadTicket) -> None:
        """``201 Created`` with the file's ``ETag`` and ``Location`` (``200`` when it was already stored)."""
        request = self.exchange.request
        entry = ticket.entry
        url = self.exchange.locate(ticket.prefix, entry.name)
        if url is not None:
            request.setHeader(b"location", url.encode("utf-8"))
        if ticket.already_stored:
            self._record_stored(ticket)
            write_text(request, 200, f"{entry.name} is already stored with this size and MD5: nothing changed\n")
            return
        try:
            request.setHeader(b"etag", entity_tag(os.stat(ticket.final_path)))
        except OSError:
            pass  # removed at once by someone else: the file was stored, the answer says so
        self._record_stored(ticket)
        md5 = self.sink.hexdigest() if self.sink is not None else entry.checksum
        write_text(request, 201, f"stored {entry.name}: {entry.size} bytes, md5 {md5}\n")


class LimitedWriter:
    """A body writer that refuses (413) the byte past ``limit``: a chunked PUT's, whose size is not announced."""

    def __init__(self, writer: BodyWriter, limit: int) -> None:
        self.writer = writer
        self.limit = limit
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            raise BeyondLength(f"the body passes {self.limit} bytes, the most this server takes")
        self.writer.write(data)

    def drain(self) -> "defer.Deferred[None]":
        return self.writer.drain()

    def commit(self) -> "defer.Deferred[None]":
        return self.writer.commit()

    def discard(self) -> None:
        self.writer.discard()

    def keep(self, on_kept: Callable[[Kept], object]) -> None:
        self.writer.keep(on_kept)


def put_file(exchange: Exchange, control: BodyControl) -> PutReceiver:
    """The ``PUT`` verb's start: the announcement of ``exchange``'s file from its headers."""
    receiver = PutReceiver(exchange, control)
    receiver.start()
    return receiver


__all__ = ["LimitedWriter", "PutReceiver", "put_file", "put_name"]
