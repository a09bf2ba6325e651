"""What a URL given to the client names: a server, a prefix, a name under the prefix.

The protocol's paths are ``/<prefix>/...`` and a prefix is one path segment
(docs/protocol.md), so the URL alone says which part is the prefix -- no
request is needed for that:

* ``https://host:8443`` and ``https://host:8443/`` name no prefix (the caller
  asks the server which prefixes it has, ``GET /``, to say so);
* ``https://host:8443/data`` and ``https://host:8443/data/`` name the prefix
  ``data``;
* ``https://host:8443/data/NAME`` names a file under it.

:func:`upload_destination` decides where an upload goes (the prefix URL, and
the one name to store a single file under); :func:`download_source` refuses a
download URL that names a prefix or a directory. Both raise
:class:`~gsitransfer.client.errors.UsageError` values; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import ClientError, NotAFile, UsageError


@dataclass(frozen=True)
class Target:
    """A URL split at its prefix."""

    #: the URL as given
    url: str
    #: ``scheme://host:port``, as given
    origin: str
    #: the path's segments, still percent-encoded (empty segments dropped)
    segments: tuple[str, ...]
    #: True when the path ends with ``/``
    directory: bool

    @property
    def prefix(self) -> str | None:
        """The prefix segment (None: the URL names none)."""
        return self.segments[0] if self.segments else None

    @property
    def prefix_url(self) -> str:
        """``scheme://host:port/<prefix>`` (no trailing slash)."""
        return f"{self.origin}/{self.segments[0]}" if self.segments else self.origin


def parse(url: str) -> Target:
    """Split ``url`` (``http://`` or ``https://``); a ClientError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"not an http:// or https:// URL: {url}")
    segments = tuple(segment for segment in parts.path.split("/") if segment)
    return Target(url, f"{parts.scheme}://{parts.netloc}", segments, parts.path.endswith("/"))


def upload_destination(target: Target, files: int, as_name: str | None) -> tuple[str, str | None]:
    """(the prefix URL to post the manifest to, the name to store the only file under, or None).

    ``https://host/data/NEW`` with one file stores it as ``NEW`` (as
    ``--as NEW`` does); with several files it is refused: the URL of an
    upload is the prefix, and files keep their names.
    """
    if target.prefix is None:
        raise AssertionError("the caller asks the server for its prefixes first")
    if as_name is not None and files != 1:
        raise UsageError(f"--as NAME renames one file, not {files}: upload them one at a time to rename them")
    rest = target.segments[1:]
    if not rest:
        return target.prefix_url, as_name
    if len(rest) > 1 or target.directory:
        raise UsageError(
            f"{target.url} is not an upload URL: give the prefix ({target.prefix_url}) -- files keep their "
            f"names -- or the prefix and one new name for one file ({target.prefix_url}/NEWNAME)"
        )
    name = unquote(rest[0])
    if files != 1:
        raise UsageError(
            f"{target.url} names one file but {files} files are given: upload to the prefix "
            f"{target.prefix_url} (files keep their names), or one file at a time to rename it"
        )
    if as_name is not None and as_name != name:
        raise UsageError(f"the URL says to store the file as {name} but --as says {as_name}: give one of them")
    return target.prefix_url, name


def download_source(target: Target) -> None:
    """Refuse a download URL that names a prefix or a directory (it would save a listing)."""
    if target.prefix is None:
        raise AssertionError("the caller asks the server for its prefixes first")
    if len(target.segments) == 1 or target.directory:
        kind = "a prefix" if len(target.segments) == 1 else "a directory"
        raise NotAFile(target.url, not_a_file_message(target.url, kind))


def not_a_file_message(url: str, kind: str) -> str:
    """``URL is a prefix, not a file: list it with ..., or download names: ...``."""
    listing = url if url.endswith("/") else url + "/"
    return (f"{url} is {kind}, not a file: list it with gsitransfer ls {listing}, "
            "or download names: gsitransfer download URL/NAME1 URL/NAME2 DEST/")


__all__ = ["Target", "download_source", "not_a_file_message", "parse", "upload_destination"]
