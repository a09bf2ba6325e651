"""The PostgreSQL state's own rules (SPEC 9.1–9.2): migrations, start-up errors, holders, availability.

Against a private PostgreSQL (``postgres_url``: a schema of this test's own);
skipped where PostgreSQL is not installed. The tables' rules themselves are
the same tests as SQLite's (``tests/support/tables.py``).
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from gsitransfer.errors import StateUnavailable
from gsitransfer.keys import FileState, TransferRecord
from gsitransfer.manifest import Manifest
from gsitransfer.postgres import PostgresState, PostgresTransferTable, StateConfigError, shown_url
from gsitransfer.postgres.connection import SCHEMA_VERSION

MD5 = "0" * 32


def _record(key: str = "k" * 32) -> TransferRecord:
    return TransferRecord(key, "data", "/CN=Alice", Manifest.of(("a", 1, MD5), ("b", 2, MD5)), 0.0, 1e12)


def test_nodes_starting_together_migrate_the_schema_once(postgres_url: str) -> None:
    """Four processes' states open one empty database at the same moment: each step is applied once."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        states = list(pool.map(lambda _: PostgresState(postgres_url, heartbeat=False), range(4)))
    for state in states:
        state.close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM gsitransfer_schema ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_a_newer_schema_is_refused_with_one_line(postgres_url: str) -> None:
    PostgresState(postgres_url, heartbeat=False).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("INSERT INTO gsitransfer_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateConfigError) as refused:
        PostgresState(postgres_url, heartbeat=False)
    message = str(refused.value)
    assert "\n" not in message and f"schema version {SCHEMA_VERSION + 1} is newer" in message


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    with pytest.raises(StateConfigError) as refused:
        PostgresState("postgresql://gsi:secret@/nowhere?host=/nonexistent", heartbeat=False)
    message = str(refused.value)
    assert "\n" not in message and "secret" not in message and "cannot use transfer database" in message
    assert shown_url("postgresql://gsi:secret@db/x") == "postgresql://gsi:***@db/x"


def test_a_dead_holders_files_are_pending_again_exactly_once(postgres_url: str) -> None:
    """A file received by a holder not seen for HOLDER_TIMEOUT is made pending by the first node that looks."""
    first = PostgresState(postgres_url, heartbeat=False)
    second = PostgresState(postgres_url, heartbeat=False)
    try:
        table = PostgresTransferTable(first, off_reactor=False)
        table.add(_record())
        assert table.transition("k" * 32, 0, FileState.PENDING, FileState.RECEIVING)
        assert second.release_dead_holders() == 0  # the holder beats
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("UPDATE holders SET seen = now() - interval '1 minute' WHERE holder = %s",
                               (first.holder,))
        assert second.release_dead_holders() == 1
        assert first.release_dead_holders() == 0
        assert table.states("k" * 32)[0] is FileState.PENDING
    finally:
        first.close()
        second.close()


def test_a_restarted_node_frees_its_dead_processes_files_at_once(postgres_url: str) -> None:
    """The files of a process of this host that is gone (killed) are pending again when the node starts."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    state = PostgresState(postgres_url, heartbeat=False)
    try:
        table = PostgresTransferTable(state, off_reactor=False)
        table.add(_record())
        assert table.transition("k" * 32, 0, FileState.PENDING, FileState.RECEIVING)
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("UPDATE holders SET pid = %s WHERE holder = %s", (dead_pid, state.holder))
        restarted = PostgresState(postgres_url, heartbeat=False)
        try:
            assert restarted.release_dead_on_this_host() == 1
        finally:
            restarted.close()
        assert table.states("k" * 32)[0] is FileState.PENDING
    finally:
        state.close()


def test_calls_fail_at_once_while_the_database_is_away(postgres_url: str) -> None:
    """Once a statement found the database away, every call is StateUnavailable at once (no wait)."""
    state = PostgresState(postgres_url, heartbeat=False)
    try:
        state.went_away(OSError("connection refused"))  # as run() does when a statement fails
        table = PostgresTransferTable(state, off_reactor=False)
        with pytest.raises(StateUnavailable, match="not reachable: connection refused"):
            table.get("k" * 32)
        with pytest.raises(StateUnavailable):
            table.ping()
    finally:
        state.close()


def test_the_calls_thread_keeps_the_order_of_the_calls(postgres_url: str) -> None:
    """deferred() runs calls on one thread in the order they were made (the reactor's own order)."""
    import time

    state = PostgresState(postgres_url, heartbeat=False)
    seen: list[int] = []
    try:
        for number in range(50):
            state.deferred(seen.append, number)
        deadline = time.monotonic() + 10
        while len(seen) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == list(range(50))
    finally:
        state.close()
