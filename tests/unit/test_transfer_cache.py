"""Issue 12 finding 5: a process's cache of parsed transfer records is bounded."""

from __future__ import annotations

from pathlib import Path

from gsitransfer.keys import TransferRecord
from gsitransfer.manifest import Manifest
from gsitransfer.transfers_db import SQLiteTransferTable

MD5 = "0d5f0d6a4bb0f6e1a3b6b1b0c7e0c1d2"


def record(key: str) -> TransferRecord:
    """A one-file transfer record under ``key``."""
    return TransferRecord(
        key=key, prefix="data", owner_dn=None, manifest=Manifest.of(("a", 1, MD5)), created=0.0, expires=1e9
    )


def test_cache_keeps_at_most_cache_size_records(tmp_path: Path) -> None:
    """Records another process adds and removes (a worker reading, the supervisor expiring) never pile up."""
    writer = SQLiteTransferTable(str(tmp_path / "t.db"))
    reader = SQLiteTransferTable(str(tmp_path / "t.db"), reset_receiving=False)
    reader.cache_size = 8
    for n in range(50):
        writer.add(record(f"k{n}"))
        assert reader.get(f"k{n}") is not None
        writer.remove(f"k{n}")
    assert len(reader._cache) <= 8
    writer.add(record("first"))
    for n in range(20):
        writer.add(record(f"m{n}"))
        reader.get(f"m{n}")
    assert "first" not in reader._cache and reader.get("first") == record("first")
