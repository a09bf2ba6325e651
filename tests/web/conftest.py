"""Fixtures shared by the in-memory web tests (each module makes its own ``server``)."""

from __future__ import annotations

from typing import Any

import pytest

from gsitransfer.identity import IdToken
from gsitransfer.testing import identity_of


@pytest.fixture
def engine(server: Any) -> Any:
    """The core the web layer calls (``server.engine``)."""
    return server.engine


@pytest.fixture
def anonymous(server: Any) -> IdToken:
    """The identity ``server`` gives a plain-HTTP client on 127.0.0.1 without a proxy header."""
    return identity_of(server)
