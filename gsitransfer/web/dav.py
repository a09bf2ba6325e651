"""WebDAV class 1 reads and deletes: ``PROPFIND``, ``DELETE`` of a file, ``MKCOL`` (SPEC §8.2, RFC 4918).

What davix, gfal2 and rclone need to list, stat and delete, over the same
core and identity rules as every other method:

* :func:`propfind` -- ``PROPFIND`` with ``Depth: 0`` or ``1`` on
  ``/<prefix>/`` (the collection; with depth 1 each file of the handler's
  listing for the caller) or on a file (``GetDownloadFilename`` as the
  caller): ``207 Multi-Status`` with ``displayname``, ``getcontentlength``,
  ``getlastmodified``, ``getetag`` (the ``ETag`` a ``GET`` gives),
  ``getcontenttype``, ``resourcetype`` and ``creationdate``. No ``Depth``
  means infinity (RFC 4918 §9.1): ``403``, as for ``Depth: infinity``. A
  request without a body, or ``<allprop/>``, asks for every property;
  ``<prop>`` for some (the unknown ones are listed in a ``404`` propstat);
  ``<propname/>`` for the names. A request body is at most 64 KiB, and one
  with a DTD is refused (``400``) before it is parsed: no entity is ever
  expanded.
* :func:`delete_file` -- ``DELETE /<prefix>/<path>``: the handler's optional
  ``DeleteFile`` (:class:`~gsitransfer.handler.IDeleteHandler`) as the
  caller, ``204``; a handler without it is ``405``.
* ``MKCOL`` has no row in the route table: ``405`` (the stores are flat).

The XML is built with :mod:`xml.etree.ElementTree` (names escaped by it);
``href`` values are percent-encoded paths.
"""

from __future__ import annotations

import datetime
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from ..handler import DownloadTarget, as_download_target
from .download import content_type, entity_tag
from .exchange import Exchange
from .heads import http_date
from .routes import FileRoute, ListingRoute, TransferRoute
from .status import BadRequest, DepthNotSupported, refusal_for, refuse, write_empty, write_text

DAV = "DAV:"
#: every property this server knows, in the order it writes them
PROPERTIES = (
    "displayname", "getcontentlength", "getlastmodified", "getetag", "getcontenttype", "resourcetype", "creationdate"
)
_XML = b"application/xml; charset=utf-8"
_OK = "HTTP/1.1 200 OK"
_NOT_FOUND = "HTTP/1.1 404 Not Found"


def _tag(name: str) -> str:
    return f"{{{DAV}}}{name}"


@dataclass(frozen=True)
class Resource:
    """One resource of a multistatus answer: its path (not encoded), and its stat when it is a file."""

    path: str
    name: str
    status: os.stat_result | None = None

    @property
    def collection(self) -> bool:
        return self.status is None

    def properties(self) -> dict[str, str | None]:
        """Each property this resource has (``resourcetype``'s value None: the element is written apart)."""
        if self.status is None:
            return {"displayname": self.name, "resourcetype": None}
        status = self.status
        stamp = datetime.datetime.fromtimestamp(status.st_mtime, datetime.timezone.utc)
        return {
            "displayname": self.name,
            "getcontentlength": str(status.st_size),
            "getlastmodified": http_date(int(status.st_mtime)).decode("ascii"),
            "getetag": entity_tag(status).decode("ascii"),
            "getcontenttype": content_type(self.name)[0].decode("ascii"),
            "resourcetype": None,
            "creationdate": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


@dataclass(frozen=True)
class Wanted:
    """What a PROPFIND asks: every property (``names`` None), these names, or only the names (``names_only``)."""

    names: tuple[str, ...] | None = None
    names_only: bool = False


def parse_propfind(body: bytes) -> Wanted:
    """The properties a PROPFIND body asks for; BadRequest for anything but a DAV ``propfind``.

    An empty body is ``allprop``. A body with a DTD (``<!DOCTYPE``) is refused
    unparsed, so no entity is ever declared or expanded.
    """
    if not body.strip():
        return Wanted()
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadRequest("PROPFIND: a DTD is not accepted in the request body")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise BadRequest(f"PROPFIND: the body is not well-formed XML ({error})") from None
    if root.tag != _tag("propfind"):
        raise BadRequest("PROPFIND: the body must be a DAV: propfind element")
    for child in root:
        if child.tag == _tag("allprop"):
            return Wanted()
        if child.tag == _tag("propname"):
            return Wanted(names_only=True)
        if child.tag == _tag("prop"):
            return Wanted(tuple(str(element.tag) for element in child))
    raise BadRequest("PROPFIND: propfind must hold allprop, propname or prop")


def _property_element(parent: ET.Element, tag: str, value: str | None, collection: bool) -> None:
    element = ET.SubElement(parent, tag)
    if tag == _tag("resourcetype") and collection:
        ET.SubElement(element, _tag("collection"))
    elif value is not None:
        element.text = value


def _propstat(response: ET.Element, status: str) -> ET.Element:
    propstat = ET.SubElement(response, _tag("propstat"))
    prop = ET.SubElement(propstat, _tag("prop"))
    ET.SubElement(propstat, _tag("status")).text = status
    return prop


def multistatus(resources: Iterable[Resource], wanted: Wanted) -> str:
    """The ``207`` body for ``resources``: one response each, with what ``wanted`` asks."""
    root = ET.Element(_tag("multistatus"))
    for resource in resources:
        response = ET.SubElement(root, _tag("response"))
        ET.SubElement(response, _tag("href")).text = quote(resource.path, safe="/")
        have = {_tag(name): value for name, value in resource.properties().items()}
        if wanted.names_only:
            prop = _propstat(response, _OK)
            for tag in have:
                ET.SubElement(prop, tag)
            continue
        asked: Sequence[str] = tuple(have) if wanted.names is None else wanted.names
        found = [tag for tag in asked if tag in have]
        missing = [tag for tag in asked if tag not in have]
        if found or not missing:
            prop = _propstat(response, _OK)
            for tag in found:
                _property_element(prop, tag, have[tag], resource.collection)
        if missing:
            prop = _propstat(response, _NOT_FOUND)
            for tag in missing:
                ET.SubElement(prop, tag)
    ET.register_namespace("D", DAV)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _depth(exchange: Exchange) -> int:
    """The request's ``Depth`` (0 or 1); DepthNotSupported for infinity (also when absent), BadRequest otherwise."""
    values = exchange.request.requestHeaders.getRawHeaders(b"depth")
    value = values[0].strip().lower() if values else b"infinity"
    if value == b"infinity":
        raise DepthNotSupported()
    if value not in (b"0", b"1"):
        raise BadRequest("Depth must be 0, 1 or infinity")
    return int(value)


def _stat(target: object) -> os.stat_result:
    return os.stat(as_download_target(target).path)


def propfind(exchange: Exchange, body: bytes) -> None:
    """``PROPFIND`` on a prefix or a file: ``207`` with the properties asked (see the module rules)."""
    request = exchange.request
    try:
        depth = _depth(exchange)
        wanted = parse_propfind(body)
    except (BadRequest, DepthNotSupported) as error:
        refuse(request, error)
        return
    route = exchange.route
    if isinstance(route, ListingRoute):
        answer = _collection(exchange, route.prefix, depth)
    else:
        assert isinstance(route, (FileRoute, TransferRoute))
        answer = _file(exchange, route.prefix, route.url_path if isinstance(route, FileRoute) else route.name)
    answer.addCallback(lambda resources: write_text(request, 207, multistatus(resources, wanted), _XML))
    answer.addErrback(lambda failure: refuse(request, refusal_for(failure, "answering a PROPFIND")))


def _file(exchange: Exchange, prefix: str, url_path: str) -> defer.Deferred[list[Resource]]:
    found = exchange.serving.engine.resolve_download(prefix, url_path, exchange.id_token)
    return found.addCallback(
        lambda target: [Resource(f"/{prefix}/{url_path}", url_path.rsplit("/", 1)[-1], _stat(target))]
    )


@defer.inlineCallbacks
def _collection(exchange: Exchange, prefix: str, depth: int) -> Any:
    resources = [Resource(f"/{prefix}/", prefix)]
    if depth == 0:
        return resources
    engine = exchange.serving.engine
    adapter = engine.adapter_for(prefix)
    if adapter is None or not adapter.can_list:
        return resources  # a handler that cannot list: the collection alone
    listing = yield engine.list_files(prefix, exchange.id_token)
    names = [str(entry["name"]) for entry in listing if isinstance(entry, dict) and "name" in entry]
    for name in names:
        try:
            target: DownloadTarget = yield engine.resolve_download(prefix, name, exchange.id_token)
            status = _stat(target)
        except Exception:
            continue  # gone (or not the caller's) since it was listed
        resources.append(Resource(f"/{prefix}/{name}", name, status))
    return resources


def delete_file(exchange: Exchange, body: bytes) -> None:
    """``DELETE /<prefix>/<path>``: the handler's ``DeleteFile`` as the caller, ``204``.

    The route table answers ``405`` itself for a handler without ``DeleteFile``
    (``table.delete``), as it knows the route's other methods.
    """
    route = exchange.route
    assert isinstance(route, (FileRoute, TransferRoute))
    request = exchange.request
    url_path = route.url_path if isinstance(route, FileRoute) else route.name
    deleted = exchange.serving.engine.delete_file(route.prefix, url_path, exchange.id_token)
    deleted.addCallback(lambda _: write_empty(request, 204, ()))
    deleted.addErrback(lambda failure: refuse(request, refusal_for(failure, "deleting a file")))


__all__ = ["PROPERTIES", "Resource", "Wanted", "delete_file", "multistatus", "parse_propfind", "propfind"]
