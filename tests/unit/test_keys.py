"""Transfer keys and the in-memory and SQLite transfer tables."""

from __future__ import annotations

import pytest

from gsitransfer.keys import (
    FileState,
    MemoryTransferTable,
    TransferRecord,
    looks_like_transfer_key,
    mint_transfer_key,
)
from gsitransfer.manifest import Manifest
from tests.support.tables import KINDS, open_table
from gsitransfer.transfers_db import SQLiteTransferTable

MD5 = "0" * 32


def test_keys_are_unguessable_and_url_safe():
    """Keys carry 192 random bits as 32 URL-safe characters and never repeat."""
    keys = {mint_transfer_key() for _ in range(2000)}
    assert len(keys) == 2000
    assert all(looks_like_transfer_key(k) and len(k) == 32 for k in keys)


def record(key: str = "k" * 32, expires: float = 100.0) -> TransferRecord:
    return TransferRecord(key, "data", "/CN=Alice", Manifest.of(("a", 1, MD5), ("b", 2, MD5)), 0.0, expires)


@pytest.fixture(params=KINDS)
def table(request, tmp_path):
    return open_table(request.param, tmp_path, request)


def test_table_keeps_records_and_states(table):
    """A record comes back whole, its files pending, and states change one by one."""
    table.add(record())
    assert table.get("k" * 32) == record()
    assert table.states("k" * 32) == {0: FileState.PENDING, 1: FileState.PENDING}
    table.set_state("k" * 32, 1, FileState.STORED)
    assert table.states("k" * 32)[1] is FileState.STORED
    assert table.expired(99.0) == [] and table.expired(100.0) == [record()]
    table.remove("k" * 32)
    assert table.get("k" * 32) is None and table.states("k" * 32) == {}


def test_sqlite_table_survives_reopen(tmp_path):
    """Keys and stored states survive a restart; a receiving file is pending again."""
    path = str(tmp_path / "t.sqlite")
    first = SQLiteTransferTable(path)
    first.add(record())
    first.set_state("k" * 32, 0, FileState.RECEIVING)
    first.set_state("k" * 32, 1, FileState.STORED)
    first.close()
    second = SQLiteTransferTable(path)
    assert second.get("k" * 32) == record()
    assert second.states("k" * 32) == {0: FileState.PENDING, 1: FileState.STORED}
    second.close()
