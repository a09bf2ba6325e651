"""The URL space of one server, decided from the method and the path alone.

::

    POST   /<prefix>/manifest            post a manifest          -> ManifestRoute
    POST   /<prefix>/<key>/<n>           a file's body            -> UploadRoute
    GET    /<prefix>/  (or /<prefix>)    JSON listing             -> ListingRoute
    GET    /<prefix>/<key>               transfer state (JSON)    -> ItemRoute
    DELETE /<prefix>/<key>               cancel the transfer      -> ItemRoute
    GET    /<prefix>/<path...>           download (HEAD too)      -> DownloadRoute

``GET /<prefix>/<x>`` where ``x`` is a live transfer key answers the
transfer's state; any other ``x`` is a download. Anything else is a
:class:`Refusal` (404 for a bad path, 405 with ``Allow`` for a method).

The same function serves the request layer (to decide, from the headers,
what to do with a body) and the resource tree (to render), so there is one
router. Segments arrive percent-decoded, as twisted.web's ``postpath`` does,
and are normalised to Unicode NFC, as manifest names are.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Union

from ..keys import looks_like_transfer_key


@dataclass(frozen=True)
class ManifestRoute:
    prefix: str


@dataclass(frozen=True)
class UploadRoute:
    prefix: str
    transfer_key: str
    file_num: str


@dataclass(frozen=True)
class ListingRoute:
    prefix: str


@dataclass(frozen=True)
class ItemRoute:
    """``/<prefix>/<name>``: a transfer's state if ``name`` is a live key, else a file."""

    prefix: str
    name: str


@dataclass(frozen=True)
class DownloadRoute:
    prefix: str
    url_path: str


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    allow: tuple[bytes, ...] = ()


Route = Union[ManifestRoute, UploadRoute, ListingRoute, ItemRoute, DownloadRoute, Refusal]

_READ = (b"GET", b"HEAD")
_ITEM = (b"GET", b"HEAD", b"DELETE")


def classify(method: bytes, segments: list[bytes]) -> Route:
    """Route a request from its method and percent-decoded path segments."""
    texts = _decode(segments)
    if texts is None:
        return Refusal(400, "the path is not valid UTF-8")
    if not texts or texts[0] == "":
        return Refusal(404, "no prefix in the path: use /<prefix>/")
    prefix, rest = texts[0], texts[1:]
    if not _safe_segment(prefix):
        return Refusal(404, "invalid path")
    if rest in ([], [""]):
        return ListingRoute(prefix) if method in _READ else _not_allowed(_READ)
    if method == b"POST":
        if rest == ["manifest"]:
            return ManifestRoute(prefix)
        if len(rest) == 2 and looks_like_transfer_key(rest[0]):
            return UploadRoute(prefix, rest[0], rest[1])
        return Refusal(404, "POST goes to /<prefix>/manifest or /<prefix>/<transfer_key>/<file_num>")
    if not all(_safe_segment(part) for part in rest):
        return Refusal(404, "invalid path")
    if len(rest) == 1 and looks_like_transfer_key(rest[0]):
        return ItemRoute(prefix, rest[0]) if method in _ITEM else _not_allowed(_ITEM)
    if method in _READ:
        return DownloadRoute(prefix, "/".join(rest))
    return _not_allowed(_READ)


def _not_allowed(allow: tuple[bytes, ...]) -> Refusal:
    return Refusal(405, "method not allowed here", allow)


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
