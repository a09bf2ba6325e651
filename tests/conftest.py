"""Fixtures every test folder may use."""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """The text of every log event emitted during the test."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(scope="session", autouse=True)
def servers_state_in_postgres() -> Iterator[None]:
    """``GSITRANSFER_TEST_STATE=postgresql``: every test server (tests/support/server.py) keeps its
    state in a private PostgreSQL started for the session (``GSITRANSFER_TEST_POSTGRES``)."""
    import os

    if os.environ.get("GSITRANSFER_TEST_STATE") != "postgresql":
        yield
        return
    from tests.support.postgres import PrivatePostgres

    with PrivatePostgres() as server:
        os.environ["GSITRANSFER_TEST_POSTGRES"] = server.url
        try:
            yield
        finally:
            del os.environ["GSITRANSFER_TEST_POSTGRES"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One private PostgreSQL for the session (skipped where PostgreSQL is not installed)."""
    from tests.support.postgres import PostgresError, PrivatePostgres

    try:
        server = PrivatePostgres()
    except PostgresError as error:
        pytest.skip(str(error))
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: object, request: pytest.FixtureRequest) -> str:
    """A libpq URI for this test alone: its own schema in the session's PostgreSQL."""
    import hashlib

    from tests.support.postgres import schema_url

    schema = "t" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    return schema_url(postgres_server.url, schema)  # type: ignore[attr-defined]
