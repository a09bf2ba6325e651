"""The small requests: the server's prefixes, a prefix's listing, a transfer's state, cancelling a transfer.

Each is a coroutine over a :class:`~gsitransfer.client.session.Session`;
:mod:`gsitransfer.client.api` wraps them in Deferreds, and the upload reads
a transfer's state to continue it (``--transfer-key``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from .errors import HTTPStatusError, NoPrefix, ProtocolError
from .results import Listing, RemoteFile, TransferFile, TransferStatus
from .session import Session, header, read_small_body
from .urls import Target, parse


async def fetch_prefixes(session: Session, origin: str) -> tuple[str, ...] | None:
    """``GET /``: the server's prefixes (``/data/``), or None when it does not list them (an older server)."""
    url = origin + "/"
    response = await session.request("GET", url, headers={"Accept": "application/json"})
    body = await read_small_body(response)
    if response.code != 200:
        return None
    try:
        prefixes = json.loads(body)["prefixes"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        return None
    return tuple(prefixes)


async def require_prefix(session: Session, url: str, command: str) -> Target:
    """``url`` split at its prefix; a URL without one is NoPrefix, naming the server's prefixes."""
    target = parse(url)
    if target.prefix is None:
        raise NoPrefix(url, target.origin, await fetch_prefixes(session, target.origin), command)
    return target


async def fetch_listing(session: Session, base: str) -> Listing:
    """``GET <base>/``: the files of a prefix."""
    url = base + "/"
    response = await session.request("GET", url, headers={"Accept": "application/json"})
    data = _json(await session.expect(response, (200,), "GET", url), url)
    try:
        files = tuple(
            RemoteFile(
                name=str(f["name"]), size=int(f["size"]), checksum=f.get("checksum"), owner=f.get("owner"),
                modified=f.get("modified"), uploaded=f.get("uploaded"), url=f"{base}/{quote(str(f['name']))}",
            )
            for f in data["files"]
        )
        return Listing(str(data.get("prefix", "")), base, files)
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"{url} did not answer with a listing") from None


async def fetch_status(session: Session, url: str) -> TransferStatus:
    """``GET .../<prefix>/<key>``: a transfer's state (404: unknown or expired key)."""
    response = await session.request("GET", url, headers={"Accept": "application/json"})
    try:
        body = await session.expect(response, (200,), "GET", url)
    except HTTPStatusError as error:
        if error.status == 404:
            raise HTTPStatusError(404, f"no such transfer (unknown or expired key; server: {error.reason})",
                                  "GET", url) from None
        raise
    if "json" not in (header(response, "content-type") or ""):
        raise ProtocolError(f"{url} is a file, not a transfer")
    data = _json(body, url)
    try:
        files = tuple(
            TransferFile(int(f["file_num"]), str(f["name"]), int(f["size"]), str(f["checksum"]),
                         str(f["state"]), f.get("url"), _offset(f.get("offset")))
            for f in data["files"]
        )
        return TransferStatus(str(data["transfer_key"]), str(data["prefix"]), data.get("owner"),
                              float(data["created"]), float(data["expires"]), bool(data["complete"]), files, data)
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"{url} did not answer with a transfer's state") from None


async def cancel(session: Session, url: str) -> str:
    """``DELETE .../<prefix>/<key>``: the server's one line."""
    response = await session.request("DELETE", url)
    body = await session.expect(response, (200,), "DELETE", url)
    return body.decode("utf-8", "replace").strip()


def _offset(value: object) -> int | None:
    """A file's ``offset`` in the transfer's state (an older server has none)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not an offset: {value!r}")
    return value


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ProtocolError(f"{url} did not answer with JSON") from None


__all__ = ["cancel", "fetch_listing", "fetch_prefixes", "fetch_status", "require_prefix"]
