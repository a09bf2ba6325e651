"""One small function per verb: what each row of the route table does with a request.

Each verb is started when the request's head is in (:mod:`gsitransfer.web.table`
chose it) and returns the :class:`~.exchange.BodyReceiver` that takes the
body; most bodies are small and held in memory (:class:`BufferedBody`, which
refuses one over its limit from its Content-Length, or as it passes it), and
the verb's answer runs once the body is complete. A file upload streams
(:mod:`gsitransfer.web.upload`). Every refusal is a typed error answered by
:func:`~.status.refuse`; every answer is written by :mod:`.status` or
:mod:`.download`.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure

from ..engine import ManifestOutcome
from ..handler import DownloadTarget
from ..identity import IdToken
from .download import serve_file
from .exchange import BodyControl, BodyReceiver, Exchange, Serving
from .html_listing import HTML_TYPE, PAGE_HEADERS, render_listing, wants_html
from .routes import FileRoute, ListingRoute, ManifestRoute, TransferRoute
from .status import BodyTooLarge, refusal_for, refuse, write_text

#: largest body accepted on a request whose verb takes none (a stray body on GET)
SMALL_BODY_LIMIT = 64 * 1024

#: a verb's answer, once the request's whole body is in memory
Answer = Callable[[Exchange, bytes], None]


class BufferedBody:
    """A body held in memory up to ``limit`` bytes, then answered by ``answer``."""

    def __init__(self, exchange: Exchange, control: BodyControl, limit: int, answer: Answer) -> None:
        self.exchange = exchange
        self.control = control
        self.limit = limit
        self.answer = answer
        self._content = io.BytesIO()
        self._refused = False

    def check_length(self) -> None:
        """Refuse at once a body whose Content-Length is over the limit."""
        length = self.exchange.length
        if length is not None and length > self.limit:
            self._too_large()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._content.tell() + len(data) > self.limit:
            self._too_large()
            return
        self._content.write(data)

    def body_complete(self) -> None:
        if not self._refused:
            self.answer(self.exchange, self._content.getvalue())

    def connection_lost(self) -> None:
        self._refused = True

    def _too_large(self) -> None:
        self._refused = True
        self.control.refuse(BodyTooLarge(f"request body is larger than {self.limit} bytes"))


def buffered(answer: Answer, limit: Callable[[Exchange], int] | None = None) -> Callable[[Exchange, BodyControl], BodyReceiver]:
    """A verb's start for ``answer``: the body held in memory up to ``limit`` (default: a small body)."""

    def start(exchange: Exchange, control: BodyControl) -> BodyReceiver:
        body = BufferedBody(exchange, control, SMALL_BODY_LIMIT if limit is None else limit(exchange), answer)
        body.check_length()
        return body

    start.__name__ = start.__qualname__ = answer.__name__
    start.__doc__ = answer.__doc__
    return start


# -- the answers ---------------------------------------------------------------------


def post_manifest(exchange: Exchange, body: bytes) -> None:
    """``POST /<prefix>/manifest``: register the manifest (the seed's key: value answer).

    A refusal by the handler is ``200`` with ``return_code: 1`` (AccessGrid
    clients read it so), unless the client sent ``Prefer: handling=strict``
    (RFC 7240): then it is ``409`` for a name conflict, ``403`` otherwise,
    with the ``error_reason`` as its one line, and every answer says
    ``Preference-Applied: handling=strict``.
    """
    route = exchange.route
    assert isinstance(route, ManifestRoute)
    if prefers_strict(exchange.request.requestHeaders.getRawHeaders(b"prefer") or []):
        exchange.request.setHeader(b"preference-applied", b"handling=strict")
        answered = _strict_manifest_answered
    else:
        answered = _manifest_answered
    outcome = exchange.serving.engine.post_manifest(route.prefix, body, exchange.id_token)
    _answer(exchange, outcome, answered, "registering a manifest")


def prefers_strict(values: Sequence[bytes]) -> bool:
    """True when ``Prefer`` header values ask for ``handling=strict`` (RFC 7240 §4.4; names and values
    case-insensitive, the value optionally quoted, parameters after ``;`` ignored)."""
    for value in values:
        for preference in value.split(b","):
            name, _, token = preference.split(b";", 1)[0].partition(b"=")
            if name.strip().lower() == b"handling" and token.strip().strip(b'"').lower() == b"strict":
                return True
    return False


def manifest_limit(exchange: Exchange) -> int:
    """A manifest's body may be as large as the manifest limits allow."""
    return int(exchange.serving.engine.manifest_limits.max_bytes)


def _manifest_answered(exchange: Exchange, outcome: ManifestOutcome) -> None:
    write_text(exchange.request, 200, outcome.to_text())


def _strict_manifest_answered(exchange: Exchange, outcome: ManifestOutcome) -> None:
    if outcome.accepted:
        write_text(exchange.request, 200, outcome.to_text())
    else:
        refuse(exchange.request, outcome.refusal())


def get_root(exchange: Exchange, body: bytes) -> None:
    """``GET /``: the server's prefixes, as JSON (``{"prefixes": ["/data/", ...]}``)."""
    prefixes = [f"/{prefix}/" for prefix in exchange.serving.engine.prefixes()]
    write_text(exchange.request, 200, _json({"prefixes": prefixes}), b"application/json")


def get_listing(exchange: Exchange, body: bytes) -> None:
    """``GET /<prefix>/``: the handler's listing, as JSON (a page for a browser: :mod:`.html_listing`)."""
    route = exchange.route
    assert isinstance(route, ListingRoute)
    listing = exchange.serving.engine.list_files(route.prefix, exchange.id_token)
    request = exchange.request
    request.setHeader(b"vary", b"Accept")
    if wants_html(request.getHeader(b"accept")):
        for name, value in PAGE_HEADERS:
            request.setHeader(name, value)
        _answer(
            exchange, listing, lambda ex, files: write_text(ex.request, 200, render_listing(route.prefix, files), HTML_TYPE),
            "listing files",
        )
        return
    _answer(
        exchange,
        listing,
        lambda ex, files: write_text(
            ex.request, 200, _json({"prefix": route.prefix, "files": files}), b"application/json"
        ),
        "listing files",
    )


def get_transfer(exchange: Exchange, body: bytes) -> None:
    """``GET /<prefix>/<key>``: a live transfer's state as JSON; any other name is a file."""
    route = exchange.route
    assert isinstance(route, TransferRoute)
    engine = exchange.serving.engine

    def transfer_or_file(_: Exchange, live: bool) -> None:
        if not live:
            _serve(exchange, FileRoute(route.prefix, route.name))
            return
        status = engine.transfer_status(route.prefix, route.name, exchange.id_token, locate=exchange.locate)
        _answer(
            exchange,
            status,
            lambda ex, state: write_text(ex.request, 200, _json(state), b"application/json"),
            "reading a transfer's state",
        )

    _answer(exchange, engine.is_live_transfer(route.name), transfer_or_file, "reading a transfer's state")


def delete_transfer(exchange: Exchange, body: bytes) -> None:
    """``DELETE /<prefix>/<key>``: cancel the transfer (its owner only)."""
    route = exchange.route
    assert isinstance(route, TransferRoute)
    cancelled = exchange.serving.engine.cancel_transfer(route.prefix, route.name, exchange.id_token)
    _answer(
        exchange,
        cancelled,
        lambda ex, _: write_text(ex.request, 200, f"cancelled {route.name}\n"),
        "cancelling a transfer",
    )


def get_file(exchange: Exchange, body: bytes) -> None:
    """``GET``/``HEAD /<prefix>/<path>``: the file the handler names (at once when it answers at once)."""
    route = exchange.route
    assert isinstance(route, FileRoute)
    _serve(exchange, route)


def resolve_file(serving: Serving, route: FileRoute, id_token: IdToken) -> object:
    """The handler's answer for ``route``: a DownloadTarget, a Deferred firing with one, or a Failure.

    The first step of ``get_file``, shared with the keep-alive fast path
    (which then answers a small file itself, or hands this answer over).
    """
    try:
        return serving.engine.resolve_download_now(route.prefix, route.url_path, id_token)
    except Exception:
        return Failure()


def _serve(exchange: Exchange, route: FileRoute) -> None:
    known = exchange.handler_answer
    if known is not None and (known.prefix, known.url_path) == (route.prefix, route.url_path):
        target: object = known.outcome
    else:
        target = resolve_file(exchange.serving, route, exchange.id_token)
    serving = exchange.serving
    digests = serving.digester.source(serving.engine.adapter_for(route.prefix), serving.reactor)
    if isinstance(target, Failure):
        _failed(exchange, target, "resolving a download")
    elif isinstance(target, defer.Deferred):
        _answer(exchange, target, lambda ex, found: serve_file(ex.request, found, digests), "resolving a download")
    else:
        assert isinstance(target, DownloadTarget)
        serve_file(exchange.request, target, digests)


# -- plumbing --------------------------------------------------------------------------


def _json(value: object) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str) + "\n"


def _answer(
    exchange: Exchange,
    result: "defer.Deferred[Any]",
    on_success: Callable[[Exchange, Any], None],
    what: str,
) -> None:
    result.addCallback(lambda value: on_success(exchange, value))
    result.addErrback(lambda failure: _failed(exchange, failure, what))


def _failed(exchange: Exchange, failure: Failure, what: str) -> None:
    error = refusal_for(failure, what)
    request = exchange.request
    if request._disconnected or request.finished:
        return
    if request.startedWriting:
        request.loseConnection()
        return
    refuse(request, error)


__all__ = [
    "BufferedBody",
    "SMALL_BODY_LIMIT",
    "buffered",
    "delete_transfer",
    "get_file",
    "get_listing",
    "get_root",
    "get_transfer",
    "manifest_limit",
    "post_manifest",
    "prefers_strict",
    "resolve_file",
]
