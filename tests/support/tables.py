"""The transfer table (and store metadata) implementations every core test runs against.

``memory`` (:class:`~gsitransfer.keys.MemoryTransferTable`), ``sqlite`` (the
embedded default) and ``postgresql`` (SPEC 9.1: a private PostgreSQL for the
session, a schema of its own per test; skipped where PostgreSQL is not
installed). A test's ``table`` fixture is parametrised with :data:`KINDS` and
opens one with :func:`open_table`; a directory store in the same test keeps
its metadata beside that table (:func:`metadata_beside`), as the server does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gsitransfer.keys import MemoryTransferTable, TransferTable
from gsitransfer.store.metadata import MetadataTable
from gsitransfer.transfers_db import SQLiteTransferTable

KINDS = ("memory", "sqlite", "postgresql")


def open_table(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> TransferTable:
    """A fresh, empty table of ``kind``, closed when the test ends."""
    if kind == "memory":
        return MemoryTransferTable()
    if kind == "sqlite":
        table = SQLiteTransferTable(str(tmp_path / "transfers.sqlite"))
        request.addfinalizer(table.close)
        return table
    from gsitransfer.postgres import PostgresState, PostgresTransferTable

    state = PostgresState(request.getfixturevalue("postgres_url"), heartbeat=False)
    request.addfinalizer(state.close)
    return PostgresTransferTable(state, off_reactor=False)  # no reactor runs in these tests


def metadata_beside(table: object, root: str | Path) -> MetadataTable | None:
    """The store metadata a server keeps with ``table``: in PostgreSQL with a PostgreSQL table, else
    None (the store's own SQLite file)."""
    from gsitransfer.postgres import PostgresStoreMetadata, PostgresTransferTable

    if isinstance(table, PostgresTransferTable):
        return PostgresStoreMetadata(table.state, os.path.abspath(root))
    return None
