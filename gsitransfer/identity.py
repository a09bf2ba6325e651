"""The ``id_token`` value handed to every handler callback.

An :class:`IdToken` is immutable. ``dn`` is the authenticated subject in
OpenSSL's one-line slash form (``/C=US/O=Grid Test/CN=Alice``), or ``None``
for an anonymous client. On a TLS listener the other fields describe the
verified client chain; with a grid-mapfile ``username`` is the mapped account.

This module imports neither OpenSSL nor Twisted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class IdToken:
    """Who is asking: the seed's ``id_token``."""

    dn: str | None
    #: verified chain, leaf first (``cryptography`` certificates); empty on plain HTTP
    chain: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    #: True when the client authenticated with a (RFC 3820) proxy certificate
    proxy: bool = False
    #: True when any proxy in the chain is a limited proxy
    limited_proxy: bool = False
    #: one-line DN of the end-entity certificate's issuer
    issuer: str | None = None
    #: not-after of the end-entity certificate (timezone-aware UTC)
    not_after: datetime.datetime | None = None
    #: first local account mapped by the grid-mapfile, when one is configured
    username: str | None = None

    @property
    def anonymous(self) -> bool:
        """True when no identity was established."""
        return self.dn is None

    def with_username(self, username: str | None) -> "IdToken":
        """A copy of this token carrying the grid-mapfile account."""
        return replace(self, username=username)


ANONYMOUS = IdToken(dn=None)
