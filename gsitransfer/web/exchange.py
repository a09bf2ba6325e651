"""What a verb works with: one request's exchange, the serving context, and the body interfaces.

The route table (:mod:`gsitransfer.web.table`) chooses a verb for a request
once its head is in; the verb is then handed an :class:`Exchange` (the
request, its route and identity, and the :class:`Serving` context) and
returns the :class:`BodyReceiver` that takes the request's body. The request
layer (:mod:`gsitransfer.web.request`) feeds the body to the receiver and
tells it when the body is complete; it offers verbs streaming a body the
narrow :class:`BodyControl` interface (pause, resume, continue, refuse) and
nothing else, so no verb module imports the request layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from ..errors import TransferError
from ..identity import IdToken
from .digesting import Digester
from .identity_sources import IdentitySource
from .offload import UploadDiscards
from .routes import Route
from .urls import request_origin

if TYPE_CHECKING:
    from ..engine import TransferEngine
    from ..events import EventFanout
    from .smallfiles import SmallFiles


@dataclass(frozen=True, slots=True)
class Serving:
    """What every verb of one site answers with."""

    #: the core: prefixes, manifests, transfer keys, the handlers
    engine: "TransferEngine"
    #: the URL of a file, ``(prefix, name, origin) -> URL`` (None before the server listens); ``origin``
    #: is where the client reached the server (``urls.request_origin``), used unless a public URL was given
    locate: Callable[[str, str, str | None], str | None]
    #: the reactor (its threads run large uploads' disk work)
    reactor: IReactorTime
    #: bodies larger than this are written by worker threads (None: never)
    offload_threshold: int | None
    #: the writer threads told to discard, waited for at shutdown
    discards: UploadDiscards
    #: the scheme of this server's URLs (``http`` or ``https``)
    scheme: str = "http"
    #: the server's digests for downloads (``Want-Digest``): its cache, computations and their count
    digester: Digester = field(default_factory=Digester)


@dataclass(frozen=True, slots=True)
class HandlerAnswer:
    """The handler's answer to a download, asked by the keep-alive shortcut and handed to the verb.

    The shortcut asks the handler before it knows whether it can answer; when
    it cannot (a Deferred, a refusal, a larger file), the request that
    twisted.web then makes carries the answer, so the handler is asked once.
    """

    prefix: str
    url_path: str
    #: a DownloadTarget, a Deferred firing with one, or the TransferError/Failure it raised
    outcome: object


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as a verb sees it, from its head on."""

    request: Request
    route: Route
    id_token: IdToken
    serving: Serving
    #: the body's announced length (None: chunked)
    length: int | None
    #: the client sent ``Expect: 100-continue`` (taken over: the verb decides when to answer it)
    expects_continue: bool
    #: the handler's answer to this download, when the keep-alive shortcut already asked it
    handler_answer: HandlerAnswer | None = None

    def header(self, name: bytes) -> bytes | None:
        """The request's first ``name`` field, stripped; None when it has none."""
        values = self.request.requestHeaders.getRawHeaders(name)
        return None if not values else values[0].strip()

    def locate(self, prefix: str, name: str) -> str | None:
        """The URL of file ``name`` under ``prefix``, on the host this request came to."""
        return self.serving.locate(prefix, name, request_origin(self.request, self.serving.scheme))


class ServingSite(Protocol):
    """What the channel, the request and the keep-alive fast path use of their Site (``TransferSite``)."""

    serving: Serving
    identity: IdentitySource
    #: requests being answered now (graceful shutdown waits for them)
    active_requests: int
    #: the idle timeout (seconds), or None
    timeOut: float | None

    def plain_access_log(self) -> bool:
        """True when :meth:`log_plain_get` can write the access line."""

    def log_plain_get(
        self, channel: Any, target: bytes, sent: int, referrer: bytes | None, agent: bytes | None
    ) -> None:
        """The access line of a GET answered 200 by the keep-alive fast path."""

    #: where finished requests' records go (``gsitransfer.events``); empty (False): none is made
    events: "EventFanout"
    #: small files the keep-alive fast path answered lately (``small_file_cache``), or None: read each time
    small_files: "SmallFiles | None"


class BodyControl(Protocol):
    """The request, as a body-streaming verb may drive it."""

    def pause_body(self) -> None:
        """Stop reading the body (the idle timer too: the server is the one waiting)."""

    def resume_body(self) -> None:
        """Read the body again."""

    def send_continue(self, fields: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Tell the client to send its body (``100 Continue``, with header ``fields``: a ``PUT``'s upload URL)."""

    def refuse(self, error: TransferError) -> None:
        """Answer with ``error``'s status, whether or not the body has arrived."""


class BodyReceiver(Protocol):
    """Takes one request's body, then answers it."""

    def data_received(self, data: bytes) -> None:
        """A piece of the body."""

    def body_complete(self) -> None:
        """The whole body is in: answer (now or later)."""

    def connection_lost(self) -> None:
        """The client went away before the answer was sent."""


__all__ = ["BodyControl", "BodyReceiver", "Exchange", "HandlerAnswer", "Serving", "ServingSite"]
