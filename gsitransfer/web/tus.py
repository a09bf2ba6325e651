"""tus 1.0 extensions at ``/<prefix>/``: discovery (``OPTIONS``), creation (``POST``), termination (``DELETE``).

The core of tus (``HEAD`` and ``PATCH`` on a file URL) is :mod:`.resume`;
this module adds what an unmodified tus client (tuspy, tus-js-client) needs
to start and end an upload itself:

* :func:`tus_options` -- ``OPTIONS /<prefix>/``: ``204`` with ``Tus-Version``,
  ``Tus-Extension``, ``Tus-Checksum-Algorithm``, ``Tus-Max-Size`` (only when
  the server has a size limit: tus reads its absence as "no limit known")
  and ``Allow`` as the route table says;
* :func:`tus_create` -- ``POST /<prefix>/`` with ``Tus-Resumable: 1.0.0``,
  ``Upload-Length`` and ``Upload-Metadata`` (``filename`` required, ``md5``
  optional): a one-file :class:`~gsitransfer.manifest.Manifest` made from the
  headers goes through the engine's one registration path
  (``announce_manifest``: take-over, dedupe, quotas, ``CanUpload``,
  ``AddPendingUpload``), bound to the uploader's identity; ``201`` with
  ``Location: .../<prefix>/<key>/0`` (an empty file is stored first, as a
  ``PATCH`` of no bytes would store it). A refusal is ``403`` with the
  handler's reason (``409`` for a name conflict), as a strict manifest's;
* :func:`terminate_upload` -- ``DELETE /<prefix>/<key>/<n>``: the file is
  cancelled (``CancelPendingUpload``, its partial removed), ``204``.

Without ``md5`` the server computes the file's MD5 as it arrives and gives it
to ``CompleteUpload`` (``CanUpload`` sees ``checksum: None``). The ``md5``
value is, as tus encodes every value, base64 of the 32 hex characters;
base64 of the 16 raw digest bytes is accepted too (what a client that
base64-encodes a digest, as ``Content-MD5`` does, sends).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any

from ..engine import ManifestOutcome, UploadTicket
from ..keys import TransferRecord
from ..errors import ManifestError, TransferError
from ..manifest import one_file_manifest
from .exchange import BodyControl, Exchange
from .resume import ResumeReceiver, upload_offset
from .heads import http_date
from .routes import ListingRoute, UploadRoute
from .status import TUS_VERSION, BadRequest, BodyTooLarge, TusVersionUnsupported, refusal_for, refuse, write_empty, write_text

#: the tus extensions this server speaks (``Tus-Extension``)
TUS_EXTENSIONS = b"creation,termination,expiration,checksum"
#: the algorithms of ``Upload-Checksum`` (tus checksum extension; see .resume)
TUS_CHECKSUM_ALGORITHMS = b"md5,sha1,sha256"
#: longest ``Upload-Metadata`` value taken, and most pairs in it
MAX_METADATA_BYTES = 8 * 1024
MAX_METADATA_PAIRS = 32
#: the ``file_info`` key (a manifest extra) keeping a creation's ``Upload-Metadata`` as sent, echoed on ``HEAD``
METADATA_KEY = "upload_metadata"
#: longest ``Upload-Length`` (digits)
_MAX_LENGTH_DIGITS = 20


def tus_options(exchange: Exchange, body: bytes) -> None:
    """``OPTIONS /<prefix>/``: ``204`` with the tus versions, extensions, checksum algorithms, size limit.

    ``Allow`` is the route table's (``table.prefix_options`` sets it, then calls this).
    """
    request = exchange.request
    headers = [
        (b"tus-resumable", TUS_VERSION),
        (b"tus-version", TUS_VERSION),
        (b"tus-extension", TUS_EXTENSIONS),
        (b"tus-checksum-algorithm", TUS_CHECKSUM_ALGORITHMS),
    ]
    largest = exchange.serving.engine.manifest_limits.largest_file
    if largest is not None:
        headers.append((b"tus-max-size", b"%d" % largest))
    write_empty(request, 204, tuple(headers))


def parse_metadata(value: bytes) -> dict[str, bytes]:
    """``Upload-Metadata`` (``key base64, key, ...``) to its decoded values; BadRequest when malformed.

    Linear and bounded: at most :data:`MAX_METADATA_BYTES` and
    :data:`MAX_METADATA_PAIRS`; keys are printable ASCII without spaces or
    commas, unique; a key without a value has ``b""``.
    """
    if len(value) > MAX_METADATA_BYTES:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    pairs = [pair.strip() for pair in value.split(b",")]
    if len(pairs) > MAX_METADATA_PAIRS:
        raise BadRequest(f"Upload-Metadata has more than {MAX_METADATA_PAIRS} pairs")
    metadata: dict[str, bytes] = {}
    for pair in pairs:
        if not pair:
            continue
        key_bytes, _, encoded = pair.partition(b" ")
        if not key_bytes.isascii() or not all(0x21 <= byte <= 0x7E for byte in key_bytes):
            raise BadRequest("Upload-Metadata: a key must be printable ASCII without spaces")
        key = key_bytes.decode("ascii")
        if key in metadata:
            raise BadRequest(f"Upload-Metadata: {key} appears twice")
        try:
            metadata[key] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata: the value of {key} is not base64") from None
    return metadata


def metadata_md5(value: bytes) -> str:
    """The ``md5`` metadata value (decoded from base64) as 32 hex digits: its hex text, or 16 raw bytes."""
    if len(value) == 16:
        return value.hex()
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("Upload-Metadata: md5 must be base64 of 32 hex digits (or of the 16 digest bytes)") from None
    if len(text) != 32 or any(char not in "0123456789abcdefABCDEF" for char in text):
        raise BadRequest("Upload-Metadata: md5 must be base64 of 32 hex digits (or of the 16 digest bytes)")
    return text.lower()


def creation_request(exchange: Exchange) -> tuple[str, int, str | None, str]:
    """A tus creation's (file name, length, MD5 or None, ``Upload-Metadata`` as sent) from its headers;
    the refusal raised otherwise."""
    version = exchange.header(b"tus-resumable")
    if version is None:
        raise BadRequest(
            "POST on /<prefix>/ creates a tus upload (send Tus-Resumable: 1.0.0); a manifest goes to /<prefix>/manifest"
        )
    if version != TUS_VERSION:
        raise TusVersionUnsupported()
    if exchange.header(b"upload-defer-length") is not None:
        raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length")
    length_text = exchange.header(b"upload-length")
    if length_text is None:
        raise BadRequest("Upload-Length is required")
    if not length_text.isdigit() or len(length_text) > _MAX_LENGTH_DIGITS:
        raise BadRequest("Upload-Length must be a decimal number of bytes")
    raw = exchange.header(b"upload-metadata") or b""
    metadata = parse_metadata(raw)
    if "filename" not in metadata:
        raise BadRequest("Upload-Metadata must name the file: filename <base64 of the name>")
    try:
        name = metadata["filename"].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Upload-Metadata: filename is not UTF-8") from None
    md5 = metadata.get("md5")
    # parse_metadata let through printable ASCII keys, spaces, commas and base64 only
    return name, int(length_text), None if md5 is None else metadata_md5(md5), raw.decode("ascii")


def tus_create(exchange: Exchange, body: bytes) -> None:
    """``POST /<prefix>/`` (tus creation): a one-file transfer for the uploader; ``201`` and its ``Location``."""
    route = exchange.route
    assert isinstance(route, ListingRoute)
    request = exchange.request
    request.setHeader(b"tus-resumable", TUS_VERSION)
    engine = exchange.serving.engine
    try:
        if body:
            raise BadRequest("a creation carries no body here (no creation-with-upload): send it with PATCH")
        name, length, md5, metadata = creation_request(exchange)
        largest = exchange.serving.engine.manifest_limits.largest_file
        if largest is not None and length > largest:
            # tus: an upload over the maximum (Tus-Max-Size) is 413
            raise BodyTooLarge(f"Upload-Length {length} is more than this server takes (Tus-Max-Size: {largest})")
        manifest = one_file_manifest(name, length, md5, engine.manifest_limits, ((METADATA_KEY, metadata),))
    except (BadRequest, BodyTooLarge, TusVersionUnsupported, ManifestError) as error:
        refuse(request, error)
        return
    # a tus client starts a created upload at 0: a name taken over from an older key keeps none of its bytes
    announced = engine.announce_manifest(route.prefix, manifest, exchange.id_token, carry=False)
    announced.addCallback(lambda outcome: _created(exchange, route.prefix, outcome))
    announced.addErrback(lambda failure: refuse(request, refusal_for(failure, "creating a tus upload")))


def _created(exchange: Exchange, prefix: str, outcome: ManifestOutcome) -> None:
    request = exchange.request
    if not outcome.accepted:
        refuse(request, outcome.refusal())
        return
    key = str(outcome.transfer_key)
    location = exchange.locate(prefix, f"{key}/0") or f"/{prefix}/{key}/0"
    request.setHeader(b"location", location.encode("utf-8"))
    found = exchange.serving.engine.calls.get(key)
    found.addCallback(lambda record: _created_record(exchange, prefix, key, record))
    found.addErrback(lambda failure: refuse(request, refusal_for(failure, "creating a tus upload")))


def _created_record(exchange: Exchange, prefix: str, key: str, record: TransferRecord | None) -> None:
    request = exchange.request
    if record is not None:
        request.setHeader(b"upload-expires", http_date(int(record.expires)))
    if record is not None and record.manifest.files[0].size == 0 and 0 not in record.already_stored:
        # an empty file is whole once created (tus clients send no PATCH for it): stored now, then the 201
        _EmptyFile(replace(exchange, route=UploadRoute(prefix, key, "0"), length=0), _Answered(request)).run()
        return
    _answer_created(request)


def _answer_created(request: Any) -> None:
    write_text(request, 201, "")  # Content-Length: 0 (no chunked empty body)


class _Answered:
    """The creation request as a finished body's controller: nothing to pause or continue, a refusal answered."""

    def __init__(self, request: Any) -> None:
        self.request = request

    def pause_body(self) -> None:
        """The (empty) body is in already."""

    def resume_body(self) -> None:
        """The (empty) body is in already."""

    def send_continue(self, fields: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """The (empty) body is in already."""

    def refuse(self, error: TransferError) -> None:
        refuse(self.request, error)


class _EmptyFile(ResumeReceiver):
    """The empty file of a creation, stored as a ``PATCH`` of no bytes at 0 would be; answered ``201``."""

    def __init__(self, exchange: Exchange, control: BodyControl) -> None:
        super().__init__(exchange, control, 0, None)

    def run(self) -> None:
        """Decide, take the empty body, verify, publish, complete."""
        self.start()
        self.body_complete()

    def _answer_stored(self, ticket: UploadTicket) -> None:
        _answer_created(self.exchange.request)


def head_upload(exchange: Exchange, body: bytes) -> None:
    """``HEAD /<prefix>/<key>/<n>``: :func:`.resume.upload_offset`, with the ``Upload-Metadata`` the
    upload was created with (tus 1.0), for its owner only."""
    route = exchange.route
    assert isinstance(route, UploadRoute)
    found = exchange.serving.engine.calls.get(route.transfer_key)
    found.addCallback(lambda record: _head_with_metadata(exchange, body, record))
    found.addErrback(lambda failure: refuse(exchange.request, refusal_for(failure, "reading a file's offset")))


def _head_with_metadata(exchange: Exchange, body: bytes, record: TransferRecord | None) -> None:
    route = exchange.route
    assert isinstance(route, UploadRoute)
    if (
        record is not None
        and not record.expired(exchange.serving.engine.clock())
        and record.prefix == route.prefix
        and record.owner_dn == exchange.id_token.person
        and route.file_num.isdigit()
        and route.file_num.isascii()
        and int(route.file_num) < record.manifest.num_files
    ):
        metadata = dict(record.manifest.files[int(route.file_num)].extra).get(METADATA_KEY)
        if metadata:
            exchange.request.setHeader(b"upload-metadata", metadata.encode("ascii", "replace"))
    upload_offset(exchange, body)


def terminate_upload(exchange: Exchange, body: bytes) -> None:
    """``DELETE /<prefix>/<key>/<n>`` (tus termination): the pending file is cancelled, ``204``."""
    route = exchange.route
    assert isinstance(route, UploadRoute)
    request = exchange.request
    request.setHeader(b"tus-resumable", TUS_VERSION)
    version = exchange.header(b"tus-resumable")
    if version is not None and version != TUS_VERSION:
        refuse(request, TusVersionUnsupported())
        return
    ended = exchange.serving.engine.terminate_upload(
        route.prefix, route.transfer_key, route.file_num, exchange.id_token
    )
    ended.addCallback(lambda _: write_empty(request, 204, ((b"tus-resumable", TUS_VERSION),)))
    ended.addErrback(lambda failure: refuse(request, refusal_for(failure, "terminating an upload")))


__all__ = [
    "METADATA_KEY",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_PAIRS",
    "TUS_CHECKSUM_ALGORITHMS",
    "TUS_EXTENSIONS",
    "creation_request",
    "head_upload",
    "metadata_md5",
    "parse_metadata",
    "terminate_upload",
    "tus_create",
    "tus_options",
]
