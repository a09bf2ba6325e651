"""A finished request as a :class:`~gsitransfer.events.TransferEvent` (the site's ``log`` hook calls this).

Which requests are recorded, by method and route (``web/table.py``):

* ``POST /<prefix>/manifest`` -> ``manifest`` (and a tus creation's ``POST /<prefix>/``);
* ``POST`` or ``PATCH /<prefix>/<key>/<n>``, ``PUT /<prefix>/<name>`` -> ``upload``;
* ``GET /<prefix>/<name>`` -> ``download`` (``HEAD`` is not: no bytes move);
* ``DELETE /<prefix>/<key>`` or ``/<prefix>/<key>/<n>`` -> ``cancel``; ``DELETE /<prefix>/<name>`` -> ``delete``;
* any of these, or any other request, answered ``400`` or above -> ``refusal``
  (with the one-line reason the client was given).

Listings, ``PROPFIND``, ``OPTIONS``, ``HEAD`` and transfer states answered
without error are not recorded: nothing was stored, sent or decided.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import address

from ..events import (
    CANCEL, DELETE, DOWNLOAD, MANIFEST, REFUSAL, UPLOAD, TransferEvent, key_hash,
)
from .routes import FileRoute, ListingRoute, ManifestRoute, TransferRoute, UploadRoute

_ADDRESSES = (address.IPv4Address, address.IPv6Address)


def peer_host(client: Any) -> str | None:
    """The client's IP address as text (None for a UNIX socket or an unknown peer)."""
    return client.host if isinstance(client, _ADDRESSES) else None


def _kind(method: bytes, route: object) -> str | None:
    if method == b"POST" and isinstance(route, (ManifestRoute, ListingRoute)):
        return MANIFEST
    if method in (b"POST", b"PATCH") and isinstance(route, UploadRoute):
        return UPLOAD
    if method == b"PUT" and isinstance(route, FileRoute):
        return UPLOAD
    if method == b"GET" and isinstance(route, (FileRoute, TransferRoute)):
        return DOWNLOAD
    if method == b"DELETE":
        return DELETE if isinstance(route, FileRoute) else CANCEL
    return None


def request_event(request: Any, engine: Any) -> TransferEvent | None:
    """The record of ``request`` (finished), or None when it is not one to record."""
    exchange = getattr(request, "exchange", None)
    route = None if exchange is None else exchange.route
    code = int(request.code)
    action = _kind(request.method, route)
    kind = REFUSAL if code >= 400 else action
    if kind is None:
        return None
    id_token = getattr(request, "id_token", None)
    prefix = getattr(route, "prefix", None)
    name: str | None = None
    size: int | None = None
    md5: str | None = None
    key: str | None = None
    stored = getattr(request, "audit_file", None)
    if stored is not None:
        name, size, md5 = stored
    if isinstance(route, FileRoute):
        name = name or route.url_path
    elif isinstance(route, TransferRoute):
        if kind == DOWNLOAD:
            name = route.name
        else:
            key = key_hash(route.name)
    elif isinstance(route, UploadRoute):
        key = key_hash(route.transfer_key)
        if name is None and code < 500:
            name = _file_name(engine, route)
    sent = int(getattr(request, "sentLength", 0) or 0)
    received = getattr(request, "audit_received", None)
    started = getattr(request, "audit_started", None)
    return TransferEvent(
        event=kind,
        time=time.time(),
        dn=None if id_token is None else id_token.dn,
        peer=peer_host(request.getClientAddress()),
        prefix=prefix,
        name=name,
        size=size,
        md5=md5,
        bytes=sent if kind == DOWNLOAD else received,
        duration_s=None if started is None else round(time.monotonic() - started, 6),
        status=code,
        reason=getattr(request, "audit_reason", None) if code >= 400 else None,
        key=key,
        method=request.method.decode("ascii", "replace"),
        action=action or "other",
    )


def _file_name(engine: Any, route: UploadRoute) -> str | None:
    """The name of file ``route.file_num`` of the transfer, if the key is known here (never a wait)."""
    record = engine.calls.known(route.transfer_key)
    if record is None or not route.file_num.isdigit():
        return None
    number = int(route.file_num)
    files = record.manifest.files
    return files[number].name if number < len(files) else None


def plain_get_event(peer: str | None, prefix: str, name: str, sent: int, dn: str | None, when: float) -> TransferEvent:
    """The record of a ``GET`` answered ``200`` by the keep-alive shortcut at ``when`` (made on the event
    fanout's thread, once per batch for alike records: ``EventFanout.emit_later``)."""
    return TransferEvent(
        DOWNLOAD, when, dn, peer, prefix, name, bytes=sent, status=200, method="GET", action=DOWNLOAD
    )


__all__ = ["peer_host", "plain_get_event", "request_event"]
