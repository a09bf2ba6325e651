"""Small HTTP helpers for tests: http.client requests, raw sockets, manifests."""

from __future__ import annotations

import configparser
import hashlib
import http.client
import io
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def fields(self) -> dict[str, str]:
        """The ``key: value`` lines of a seed-style text answer."""
        return dict(line.split(": ", 1) for line in self.text.splitlines() if ": " in line)


def manifest_for(files: list[tuple[str, bytes]]) -> bytes:
    """A manifest as ConfigParser writes it, for (name, content) pairs."""
    parser = configparser.ConfigParser(interpolation=None)
    parser["manifest"] = {"num_files": str(len(files))}
    for num, (name, content) in enumerate(files):
        parser[str(num)] = {
            "name": name,
            "size": str(len(content)),
            "checksum": hashlib.md5(content).hexdigest(),
        }
    out = io.StringIO()
    parser.write(out)
    return out.getvalue().encode()


def request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
    tls: ssl.SSLContext | None = None,
) -> Response:
    """One request on a fresh connection (HTTPS with ``tls``, a client context); the answer is read even
    when the server cut the body off."""
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    connection: http.client.HTTPConnection
    if tls is not None:
        connection = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=tls)
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        try:
            connection.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            # a body refused from its headers is cut off after the answer (docs/client.md): read the
            # answer anyway, as curl and urllib3 do
            pass
        answer = connection.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def client_tls(ca_file: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file``, presenting ``cert`` (a proxy file is cert and key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key or cert))
    return context


def post_manifest(
    base: str,
    prefix: str,
    files: list[tuple[str, bytes]],
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> str:
    """Post a manifest and return the transfer key (asserting it was accepted)."""
    answer = request(base, "POST", f"/{prefix}/manifest", manifest_for(files), headers, tls=tls)
    fields = answer.fields()
    assert answer.status == 200 and fields.get("return_code") == "0", answer.text
    return fields["transfer_key"]


def raw_exchange(base: str, data: bytes, timeout: float = 10.0, then_send: bytes = b"") -> bytes:
    """Send raw bytes, read everything until the server closes or ``timeout``."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        if then_send:
            sock.sendall(then_send)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            joined = b"".join(chunks)
            if _complete(joined):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    """True when ``data`` holds a whole final (non-1xx) response with a Content-Length."""
    rest = data
    while b"\r\n\r\n" in rest:
        head, _, body = rest.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if 100 <= status < 200:
            rest = body
            continue
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return len(body) >= int(value)
        return False
    return False


def parse_raw(data: bytes) -> list[Response]:
    """Split raw response bytes into responses (1xx ones included)."""
    responses: list[Response] = []
    rest = data
    while b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        length = int(headers.get("content-length", "0")) if status >= 200 else 0
        responses.append(Response(status, headers, rest[:length]))
        rest = rest[length:]
    return responses
