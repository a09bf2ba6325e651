"""The route table: method x route kind -> one verb; the Site's one Resource.

::

    method    route kind       verb (gsitransfer.web.verbs, .upload)
    GET       RootRoute        get_root          the server's prefixes (JSON)
              ListingRoute     get_listing       the prefix's files (JSON)
              TransferRoute    get_transfer      a live transfer's state (JSON), else a file
              FileRoute        get_file          the file the handler names
    HEAD      (as GET)
              UploadRoute      head_upload       the durable bytes held of a file (tus: .resume's upload_offset,
                                                 with the Upload-Metadata of a tus creation, .tus)
    POST      ManifestRoute    post_manifest     register a manifest (body in memory, bounded)
              UploadRoute      begin_upload      stream one file's body (upload state machine)
              ListingRoute     tus_create        a one-file transfer from tus creation headers (.tus)
    PUT       FileRoute        put_file          one file from its headers and body (201; .put)
    PATCH     UploadRoute      patch_upload      stream a piece of a file at its offset (tus, .resume)
    DELETE    TransferRoute    delete_transfer   cancel a transfer
              UploadRoute      terminate_upload  cancel one pending file (tus termination, .tus)
              FileRoute        delete            the handler's DeleteFile (204, .dav), 405 without one
    PROPFIND  ListingRoute     propfind          the collection, and its files with Depth 1 (207, .dav)
              FileRoute        propfind          one file's properties (207, .dav)
              TransferRoute    propfind          (a key-shaped name that is no live transfer is a file)
    OPTIONS   (as GET, and UploadRoute) options  ``Allow`` for the path and ``DAV: 1``
              ListingRoute     prefix_options    ``Allow``, ``DAV: 1`` and the tus discovery headers (204, .tus)

``MKCOL`` has no row: ``405`` (the stores are flat: no collections but the prefixes).

A request is routed once, when its head is complete
(:meth:`RouteTable.select`, called by the request layer and by the
keep-alive shortcut alike): the target gives a route
(:func:`~.routes.route_target`), a route under a prefix the server does not
have is 404 (naming the prefixes it has, whatever the method), the method's
row gives the verb; a route the method's row lacks is 405 with ``Allow``
listing the methods whose rows have it. Adding a method is one row here and
one small verb.

:class:`RouteTable` is also the Site's root resource (twisted.web stays the
HTTP engine and a Resource its entry): it is a leaf, and rendering a request
finishes the exchange the request began when its head came in. A request
that reaches it without an exchange (never routed, never identified) is
refused, never served as anonymous.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Protocol

from twisted.web import resource
from twisted.web.server import NOT_DONE_YET, Request

from ..errors import TransferError
from .exchange import BodyControl, BodyReceiver, Exchange
from .routes import FileRoute, ListingRoute, ManifestRoute, RootRoute, Route, TransferRoute, UploadRoute, route_target
from .status import MethodNotAllowed, Unidentified, refuse, write_text
from .dav import delete_file, propfind
from .put import put_file
from .resume import patch_upload
from .tus import head_upload, terminate_upload, tus_create, tus_options
from .upload import begin_upload
from .verbs import (
    buffered,
    delete_transfer,
    get_file,
    get_listing,
    get_root,
    get_transfer,
    manifest_limit,
    post_manifest,
)

#: a verb's start: given the exchange (and the request as a body's controller), the body's receiver
Start = Callable[[Exchange, BodyControl], BodyReceiver]


@dataclass(frozen=True, slots=True)
class Verb:
    """One row's entry: what answers a method on a kind of route."""

    name: str
    start: Start
    #: the body streams to disk (an upload) rather than into memory
    streams: bool = False


#: the WebDAV compliance class (RFC 4918 §10.1): class 1, without locks
DAV_CLASSES = b"1"


def options(exchange: Exchange, body: bytes) -> None:
    """``OPTIONS``: which methods the route takes (``Allow``) and ``DAV: 1``, no body."""
    request = exchange.request
    request.setHeader(b"allow", b", ".join(allowed_methods(request.method, request.uri)))
    request.setHeader(b"dav", DAV_CLASSES)
    write_text(request, 200, "")


def prefix_options(exchange: Exchange, body: bytes) -> None:
    """``OPTIONS /<prefix>/``: ``Allow``, ``DAV: 1``, and the tus discovery headers (``204``, :func:`.tus.tus_options`)."""
    request = exchange.request
    request.setHeader(b"allow", b", ".join(allowed_methods(request.method, request.uri)))
    request.setHeader(b"dav", DAV_CLASSES)
    tus_options(exchange, body)


def delete(exchange: Exchange, body: bytes) -> None:
    """``DELETE /<prefix>/<path>``: :func:`.dav.delete_file`, or ``405`` when the prefix's handler cannot delete."""
    request = exchange.request
    route = exchange.route
    adapter = exchange.serving.engine.adapter_for(getattr(route, "prefix", ""))
    if adapter is not None and not adapter.can_delete:
        others = tuple(method for method in allowed_methods(request.method, request.uri) if method != b"DELETE")
        refuse(request, MethodNotAllowed(others, "this prefix's handler does not delete files"))
        return
    delete_file(exchange, body)


def _verbs(*answers: Callable[[Exchange, bytes], None]) -> dict[str, Verb]:
    return {answer.__name__: Verb(answer.__name__, buffered(answer)) for answer in answers}


_BUFFERED = _verbs(
    get_root, get_listing, get_transfer, get_file, delete_transfer, options, prefix_options, tus_create, terminate_upload,
    delete, propfind,
)
_MANIFEST = Verb("post_manifest", buffered(post_manifest, manifest_limit))
_UPLOAD = Verb("begin_upload", begin_upload, streams=True)
_PATCH = Verb("patch_upload", patch_upload, streams=True)
_PUT = Verb("put_file", put_file, streams=True)
_HEAD_OFFSET = Verb("head_upload", buffered(head_upload))
_OPTIONS = _BUFFERED["options"]
_GET: Mapping[type, Verb] = MappingProxyType({
    RootRoute: _BUFFERED["get_root"],
    ListingRoute: _BUFFERED["get_listing"],
    TransferRoute: _BUFFERED["get_transfer"],
    FileRoute: _BUFFERED["get_file"],
})

#: the route table: one row per method
ROUTES: Mapping[bytes, Mapping[type, Verb]] = MappingProxyType({
    b"GET": _GET,
    b"HEAD": MappingProxyType({**_GET, UploadRoute: _HEAD_OFFSET}),
    b"POST": MappingProxyType(
        {ManifestRoute: _MANIFEST, UploadRoute: _UPLOAD, ListingRoute: _BUFFERED["tus_create"]}
    ),
    b"PUT": MappingProxyType({FileRoute: _PUT}),
    b"PATCH": MappingProxyType({UploadRoute: _PATCH}),
    b"DELETE": MappingProxyType(
        {
            TransferRoute: _BUFFERED["delete_transfer"],
            UploadRoute: _BUFFERED["terminate_upload"],
            FileRoute: _BUFFERED["delete"],
        }
    ),
    b"PROPFIND": MappingProxyType(
        {kind: _BUFFERED["propfind"] for kind in (ListingRoute, FileRoute, TransferRoute)}
    ),
    # OPTIONS routes as GET does (the manifest's POST-only shape is a file to it): every path gets its Allow;
    # a prefix's also says what tus it speaks
    b"OPTIONS": MappingProxyType(
        {
            **{kind: _OPTIONS for kind in (RootRoute, TransferRoute, FileRoute, UploadRoute)},
            ListingRoute: _BUFFERED["prefix_options"],
        }
    ),
})

#: the verb that serves files (the keep-alive shortcut answers only for it)
FILE_VERB = _GET[FileRoute]


class Prefixes(Protocol):
    """What routing asks of the core: is a prefix registered (``TransferEngine.check_prefix``)."""

    def check_prefix(self, prefix: str) -> None:
        """Raise FileNotFound (naming the prefixes there are) unless ``prefix`` is registered."""


def select(method: bytes, target: bytes, prefixes: Prefixes | None = None) -> tuple[Route, Verb]:
    """The route and verb of ``method`` on ``target``; raises the refusal (400, 404, 405).

    With ``prefixes`` (the request layer and the keep-alive shortcut pass the
    engine), a route under a prefix not registered is 404 for every method.
    """
    route = route_target(method, target)
    if isinstance(route, TransferError):
        raise route
    if prefixes is not None and not isinstance(route, RootRoute):
        prefixes.check_prefix(route.prefix)
    verb = ROUTES.get(method, {}).get(type(route))
    if verb is None:
        raise MethodNotAllowed(allowed_methods(method, target))
    return route, verb


def allowed_methods(method: bytes, target: bytes) -> tuple[bytes, ...]:
    """The methods whose rows take ``target``'s route (``Allow``)."""
    allowed = []
    for name, row in ROUTES.items():
        route = route_target(name, target)
        if not isinstance(route, TransferError) and type(route) in row:
            allowed.append(name)
    return tuple(allowed)


class RouteTable(resource.Resource):
    """The Site's root resource: renders the exchange its request began (see the module rules)."""

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        finish: Callable[[], None] | None = getattr(request, "finish_exchange", None)
        if finish is None:
            refuse(request, Unidentified("this resource serves only the server's own requests"))
        else:
            finish()
        return NOT_DONE_YET


__all__ = [
    "DAV_CLASSES",
    "FILE_VERB", "Prefixes", "ROUTES", "RouteTable", "Verb", "allowed_methods", "options", "prefix_options", "select"
]
