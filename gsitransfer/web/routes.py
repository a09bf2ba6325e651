"""The URL space of one server: a request target to a route, decided from the method and the path alone.

::

    *      /                             the server's prefixes    -> RootRoute
    POST   /<prefix>/manifest            post a manifest          -> ManifestRoute
    *      /<prefix>/<key>/<n>           a file of a transfer     -> UploadRoute
                                         (POST its body, HEAD its offset, PATCH a piece)
    *      /<prefix>/  (or /<prefix>)    the prefix's files       -> ListingRoute
    *      /<prefix>/<key>               a transfer               -> TransferRoute
    *      /<prefix>/<path...>           one file                 -> FileRoute

A route says *what* a request is about; which methods each route takes, and
the function that answers each, is the route table's business
(:mod:`gsitransfer.web.table`). ``/<prefix>/<x>`` where ``x`` looks like a
transfer key is a :class:`TransferRoute` (the table's GET answers the
transfer's state when the key is live, else serves the file ``x``). A target
that names no route raises :class:`~.status.BadRequest` (400) or
:class:`~gsitransfer.errors.FileNotFound` (404).

Segments arrive percent-decoded, as twisted.web's ``postpath`` does, and are
normalised to Unicode NFC, as manifest names are. :func:`route_target` is the
one entry (the request layer and the keep-alive shortcut both use it); it
remembers the routes of short targets, routes being frozen values of the
method and the path.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Union
from urllib.parse import unquote_to_bytes

from ..errors import FileNotFound, TransferError
from ..keys import looks_like_transfer_key
from .status import BadRequest

#: longest path whose route is remembered
_REMEMBERED_PATH = 512


@dataclass(frozen=True, slots=True)
class RootRoute:
    """``/``: which prefixes the server has."""


@dataclass(frozen=True, slots=True)
class ManifestRoute:
    """``/<prefix>/manifest`` (POST): announce the files of a transfer."""

    prefix: str


@dataclass(frozen=True, slots=True)
class UploadRoute:
    """``/<prefix>/<transfer_key>/<file_num>``: one file of a transfer (POST its body; HEAD, PATCH: resuming)."""

    prefix: str
    transfer_key: str
    file_num: str


@dataclass(frozen=True, slots=True)
class ListingRoute:
    """``/<prefix>/``: the prefix's files."""

    prefix: str


@dataclass(frozen=True, slots=True)
class TransferRoute:
    """``/<prefix>/<name>`` where ``name`` looks like a transfer key: that transfer, or a file so named."""

    prefix: str
    name: str


@dataclass(frozen=True, slots=True)
class FileRoute:
    """``/<prefix>/<path...>``: one file, ``url_path`` percent-decoded and without the prefix."""

    prefix: str
    url_path: str


Route = Union[RootRoute, ManifestRoute, UploadRoute, ListingRoute, TransferRoute, FileRoute]

#: the routes under a prefix (every route but the root's)
PrefixRoute = Union[ManifestRoute, UploadRoute, ListingRoute, TransferRoute, FileRoute]

#: the route of a target, or the refusal of one that names none
Routing = Union[Route, TransferError]


def route_target(method: bytes, target: bytes) -> Routing:
    """The route of ``method`` on request target ``target`` (its query ignored), or the refusal."""
    path = target.split(b"?", 1)[0]
    if len(path) > _REMEMBERED_PATH:
        return _route(method, path)
    return _remembered_route(method, path)


@functools.lru_cache(maxsize=1024)
def _remembered_route(method: bytes, path: bytes) -> Routing:
    # a pure function of its arguments: remembering it changes nothing but speed
    return _route(method, path)


def _route(method: bytes, path: bytes) -> Routing:
    try:
        return classify(method, path_segments(path))
    except TransferError as refusal:
        return refusal.with_traceback(None)  # remembered: keep no frames alive


def path_segments(path: bytes) -> list[bytes]:
    """Percent-decoded segments of an absolute path, as twisted.web's ``postpath``; BadRequest otherwise."""
    if not path.startswith(b"/"):
        raise BadRequest("the request target must be a path starting with /")
    return [unquote_to_bytes(part) for part in path[1:].split(b"/")]


def classify(method: bytes, segments: list[bytes]) -> Route:
    """Route a request from its method and percent-decoded path segments (raises the refusal)."""
    texts = _decode(segments)
    if texts is None:
        raise BadRequest("the path is not valid UTF-8")
    if texts == [""]:
        return RootRoute()
    if not texts or texts[0] == "":
        raise FileNotFound("no prefix in the path: use /<prefix>/")
    prefix, rest = texts[0], texts[1:]
    if not _safe_segment(prefix):
        raise FileNotFound("invalid path")
    if rest in ([], [""]):
        return ListingRoute(prefix)
    if len(rest) == 2 and looks_like_transfer_key(rest[0]):
        # every method: a file of a transfer is also its resumable upload resource (tus)
        return UploadRoute(prefix, rest[0], rest[1])
    if method == b"POST":
        if rest == ["manifest"]:
            return ManifestRoute(prefix)
        raise FileNotFound("POST goes to /<prefix>/manifest or /<prefix>/<transfer_key>/<file_num>")
    if not all(_safe_segment(part) for part in rest):
        raise FileNotFound("invalid path")
    if len(rest) == 1 and looks_like_transfer_key(rest[0]):
        return TransferRoute(prefix, rest[0])
    return FileRoute(prefix, "/".join(rest))


def _decode(segments: list[bytes]) -> list[str] | None:
    """UTF-8 segments in Unicode NFC (the form manifest names are stored in), or None."""
    try:
        return [unicodedata.normalize("NFC", segment.decode("utf-8")) for segment in segments]
    except UnicodeDecodeError:
        return None


def _safe_segment(text: str) -> bool:
    """One real path component: not empty, not . or .., no separator, NUL or control (C0 or C1)."""
    if text in ("", ".", ".."):
        return False
    return not any(char in "/\\" or unicodedata.category(char) == "Cc" for char in text)


__all__ = [
    "FileRoute",
    "ListingRoute",
    "ManifestRoute",
    "PrefixRoute",
    "RootRoute",
    "Route",
    "Routing",
    "TransferRoute",
    "UploadRoute",
    "classify",
    "path_segments",
    "route_target",
]
