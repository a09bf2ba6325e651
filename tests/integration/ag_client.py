"""A client that talks to the server exactly as the AccessGrid 2.x client (2005) did.

The AccessGrid toolkit's ``DataStore.HTTPUploadFiles`` wrote the manifest with
``ConfigParser.write()`` (Python 2's ConfigParser wrote values raw, so ``%``
stays literal: that is ``ConfigParser(interpolation=None)`` today), posted it
with ``httplib`` on a connection of its own, read the ``key: value`` lines of
the answer, then POSTed each file to ``<upload_url>/<transfer_key>/<n>``
with ``Content-Length`` set, streaming the body from the open file. Every
request here uses a fresh connection and says ``Connection: close``.

``dn`` adds an ``X-Client-DN`` header, as a TLS-terminating proxy in front of
the server would.
"""

from __future__ import annotations

import configparser
import hashlib
import http.client
import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Sequence
from urllib.parse import quote, urlsplit

#: bytes read from a file and sent per ``send`` call
CHUNK = 64 * 1024


@dataclass
class AGResponse:
    """One answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def fields(self) -> dict[str, str]:
        """The ``key: value`` lines of the answer, as the AG client read them."""
        values: dict[str, str] = {}
        for line in self.text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                values[key.strip()] = value.strip()
        return values


class AGUploadError(Exception):
    """The server refused the manifest or a file."""


def file_md5(path: str | os.PathLike[str]) -> str:
    """MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(paths: Sequence[str | os.PathLike[str]]) -> bytes:
    """The manifest for ``paths``, written with ConfigParser.write() as the AG client did."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.add_section("manifest")
    parser.set("manifest", "num_files", str(len(paths)))
    for num, path in enumerate(paths):
        section = str(num)
        parser.add_section(section)
        parser.set(section, "name", os.path.basename(path))
        parser.set(section, "size", str(os.path.getsize(path)))
        parser.set(section, "checksum", file_md5(path))
    out = io.StringIO()
    parser.write(out)
    return out.getvalue().encode("utf-8")


class AGClient:
    """Upload and download under one prefix of one server, AccessGrid-style."""

    def __init__(
        self, base_url: str, prefix: str = "data", dn: str | None = None, timeout: float = 30.0
    ) -> None:
        parts = urlsplit(base_url)
        assert parts.scheme == "http" and parts.hostname and parts.port
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = prefix
        self.dn = dn
        self.timeout = timeout

    # -- one request, one connection ---------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Connection": "close"}
        if self.dn is not None:
            headers["X-Client-DN"] = self.dn
        headers.update(extra or {})
        return headers

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> AGResponse:
        """``method path`` on a fresh connection; the whole answer is read."""
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=self._headers(headers))
            answer = connection.getresponse()
            return AGResponse(
                answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
            )
        finally:
            connection.close()

    # -- the AccessGrid flow ------------------------------------------------------

    def post_manifest(self, manifest: bytes) -> AGResponse:
        """POST the manifest to ``/<prefix>/manifest``."""
        return self.request(
            "POST",
            f"/{self.prefix}/manifest",
            manifest,
            {"Content-Type": "text/plain", "Content-Length": str(len(manifest))},
        )

    def upload_file(self, transfer_key: str, file_num: int, path: str | os.PathLike[str]) -> AGResponse:
        """POST one file's bytes, streamed from the open file, Content-Length its size."""
        size = os.path.getsize(path)
        connection = self._connection()
        try:
            connection.putrequest("POST", f"/{self.prefix}/{transfer_key}/{file_num}")
            for name, value in self._headers(
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            ).items():
                connection.putheader(name, value)
            connection.endheaders()
            with open(path, "rb") as source:
                self._send_file(connection, source)
            answer = connection.getresponse()
            return AGResponse(
                answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
            )
        finally:
            connection.close()

    @staticmethod
    def _send_file(connection: http.client.HTTPConnection, source: BinaryIO) -> None:
        while chunk := source.read(CHUNK):
            connection.send(chunk)

    def upload(self, paths: Sequence[str | os.PathLike[str]]) -> str:
        """The whole AG upload: manifest, then every file; the transfer key.

        Raises AGUploadError as the AG client did when ``return_code`` is not 0
        or a file is not answered 200.
        """
        answer = self.post_manifest(write_manifest(paths))
        fields = answer.fields()
        if answer.status != 200 or fields.get("return_code") != "0":
            raise AGUploadError(f"manifest refused ({answer.status}): {answer.text.strip()}")
        key = fields["transfer_key"]
        for num, path in enumerate(paths):
            result = self.upload_file(key, num, path)
            if result.status != 200:
                raise AGUploadError(f"file {num} refused ({result.status}): {result.text.strip()}")
        return key

    def download_url_path(self, name: str) -> str:
        """The path of a file's download URL, percent-encoded as the AG client did."""
        return f"/{self.prefix}/{quote(name)}"

    def download(self, name: str, destination: str | os.PathLike[str]) -> AGResponse:
        """GET ``/<prefix>/<name>`` into ``destination`` (streamed); the body is left empty."""
        connection = self._connection()
        try:
            connection.request("GET", self.download_url_path(name), headers=self._headers())
            answer = connection.getresponse()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            if answer.status != 200:
                return AGResponse(answer.status, headers, answer.read())
            with open(destination, "wb") as out:
                while chunk := answer.read(CHUNK):
                    out.write(chunk)
            return AGResponse(answer.status, headers)
        finally:
            connection.close()
