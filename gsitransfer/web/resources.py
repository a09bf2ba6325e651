"""The Resource tree: ``/`` and one ``PrefixResource`` per registered prefix.

Rendering follows the route :func:`routes.classify` chose from the request's
headers (the same one ``TransferRequest`` used to decide about the body).
Each route's answer comes from the core; every error becomes a status and a
plain-text reason through ``status.describe_failure``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from ..core import ManifestOutcome, TransferServer
from ..identity import ANONYMOUS, IdToken
from .download import serve_file
from .routes import (
    DownloadRoute,
    ItemRoute,
    ListingRoute,
    ManifestRoute,
    Refusal,
    Route,
    UploadRoute,
    classify,
)
from .status import describe_failure, write_error, write_text


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str) + "\n"


class TransferRoot(resource.Resource):
    """``/``: lists the prefixes; its children are the registered prefixes."""

    def __init__(self, transfer_server: TransferServer) -> None:
        super().__init__()
        self.transfer_server = transfer_server
        #: the resource of every ``/<prefix>/...`` (one: it keeps no per-request state)
        self.prefixes = PrefixResource(transfer_server)

    def getChild(self, path: bytes, request: Any) -> resource.IResource:
        return self.prefixes

    def render_GET(self, request: Any) -> bytes:
        body = _json({"prefixes": self.transfer_server.prefixes()}).encode()
        request.setHeader(b"content-type", b"application/json")
        return body

    render_HEAD = render_GET


class PrefixResource(resource.Resource):
    """Everything under ``/<prefix>/``, rendered by route."""

    isLeaf = True

    def __init__(self, transfer_server: TransferServer) -> None:
        super().__init__()
        self.transfer_server = transfer_server

    def render(self, request: Any) -> Any:
        route: Route | None = getattr(request, "route", None)
        if route is None:
            route = classify(request.method, request.prepath + request.postpath)
        id_token: IdToken = getattr(request, "id_token", None) or ANONYMOUS
        renderer = self._renderers.get(type(route))
        if renderer is None:
            assert isinstance(route, Refusal)
            write_error(request, route.status, route.reason, route.allow)
        else:
            renderer(self, request, route, id_token)
        return NOT_DONE_YET

    # -- one method per route -------------------------------------------------------

    def _manifest(self, request: Any, route: ManifestRoute, id_token: IdToken) -> None:
        body = request.content.getvalue()
        outcome = self.transfer_server.post_manifest(route.prefix, body, id_token)
        self._answer(request, outcome, self._manifest_answered, "registering a manifest")

    def _manifest_answered(self, request: Any, outcome: ManifestOutcome) -> None:
        write_text(request, 200, outcome.to_text())

    def _upload(self, request: Any, route: UploadRoute, id_token: IdToken) -> None:
        receiver = getattr(request, "upload_receiver", None)
        if receiver is None:
            write_error(request, 500, "uploads need the TransferSite request class")
            return
        receiver.body_complete()

    def _listing(self, request: Any, route: ListingRoute, id_token: IdToken) -> None:
        listing = self.transfer_server.list_files(route.prefix, id_token)
        self._answer(
            request,
            listing,
            lambda req, files: write_text(
                req, 200, _json({"prefix": route.prefix, "files": files}), b"application/json"
            ),
            "listing files",
        )

    def _item(self, request: Any, route: ItemRoute, id_token: IdToken) -> None:
        server = self.transfer_server
        if request.method == b"DELETE":
            cancelled = server.cancel_transfer(route.prefix, route.name, id_token)
            self._answer(
                request,
                cancelled,
                lambda req, _: write_text(req, 200, f"cancelled {route.name}\n"),
                "cancelling a transfer",
            )
            return
        if not server.is_live_transfer(route.name):
            self._download(request, DownloadRoute(route.prefix, route.name), id_token)
            return
        try:
            status = server.transfer_status(route.prefix, route.name, id_token)
        except Exception:
            self._failed(request, Failure(), "reading a transfer's state")
            return
        write_text(request, 200, _json(status), b"application/json")

    def _download(self, request: Any, route: DownloadRoute, id_token: IdToken) -> None:
        """Serve the file at once when the handler answers synchronously (the usual case).

        The handler is not asked again when the keep-alive shortcut already
        asked it for this request (``channel.preresolved``).
        """
        channel = getattr(request, "channel", None)
        known = getattr(channel, "preresolved", None)
        if known is not None and known.route == route:
            channel.preresolved = None
            target = known.outcome
            if isinstance(target, Failure):
                self._failed(request, target, "resolving a download")
                return
        else:
            try:
                target = self.transfer_server.resolve_download_now(route.prefix, route.url_path, id_token)
            except Exception:
                self._failed(request, Failure(), "resolving a download")
                return
        if isinstance(target, defer.Deferred):
            self._answer(request, target, serve_file, "resolving a download")
        else:
            serve_file(request, target)

    _renderers: dict[type, Callable[..., None]] = {
        ManifestRoute: _manifest,
        UploadRoute: _upload,
        ListingRoute: _listing,
        ItemRoute: _item,
        DownloadRoute: _download,
    }

    # -- plumbing ---------------------------------------------------------------------

    def _answer(
        self,
        request: Any,
        result: defer.Deferred[Any],
        on_success: Callable[[Any, Any], None],
        what: str,
    ) -> None:
        result.addCallback(lambda value: on_success(request, value))
        result.addErrback(lambda failure: self._failed(request, failure, what))

    @staticmethod
    def _failed(request: Any, failure: Failure, what: str) -> None:
        status, reason = describe_failure(failure, what)
        if getattr(request, "_disconnected", False) or request.finished:
            return
        if request.startedWriting:
            request.loseConnection()
            return
        write_error(request, status, reason)


__all__ = ["TransferRoot", "PrefixResource"]
