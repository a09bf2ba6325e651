"""Where the client reached the server: the origin (``scheme://host:port``) of the URLs an answer names.

An upload's ``url:`` line and a transfer's per-file ``url`` name the host the
client used, as its ``Host`` header says (a client that uploads to
``https://localhost:8443/data`` is told ``https://localhost:8443/data/x``,
not the listener's ``127.0.0.1``), unless the administrator gave
``--public-url`` (then that, always). The header is believed only when it is
a syntactically valid ``host[:port]`` — a DNS name, an IPv4 address or a
bracketed IPv6 address, and a port of 1-65535 — and is then used as it was
sent, lower-cased; anything else (absent, a path, spaces, control bytes,
userinfo, a bad port) gives the address of the connection's own end (the
listener's address), so nothing a client sends is reflected unchecked.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

#: one DNS label (letters, digits, hyphens inside), as in RFC 1123
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
#: longest Host value believed (a 253-byte name, brackets, a port)
_MAX_HOST = 270


def valid_host(value: str) -> str | None:
    """``value`` (a ``Host`` header) as ``host[:port]`` lower-cased when it is valid, else None."""
    if not value or len(value) > _MAX_HOST or not value.isascii():
        return None
    text = value.lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not _NAME.match(host) or len(host) > 254:
            return None
    if rest:
        port = rest[1:]
        if not rest.startswith(":") or not port.isdigit() or len(port) > 5 or not 0 < int(port) <= 65535:
            return None
    return host + rest


def request_origin(request: Any, scheme: str) -> str:
    """``scheme://host[:port]`` the client reached: its valid ``Host``, else the connection's own address."""
    raw = request.getHeader(b"host")
    host = None
    if isinstance(raw, bytes):
        try:
            host = valid_host(raw.decode("ascii"))
        except UnicodeDecodeError:
            host = None
    if host is None:
        address = request.getHost()
        name = str(getattr(address, "host", "localhost"))
        port = getattr(address, "port", None)
        if name in ("", "0.0.0.0", "::"):
            name = "localhost"
        host = f"[{name}]" if ":" in name else name
        if port:
            host = f"{host}:{port}"
    return f"{scheme}://{host}"


__all__ = ["request_origin", "valid_host"]
