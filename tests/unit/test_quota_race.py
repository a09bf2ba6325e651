"""Issue 12 finding 14: the pending quota check and the key's registration are one transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from gsitransfer import IdToken, QuotaExceeded, TransferEngine
from gsitransfer.keys import TransferRecord
from gsitransfer.transfers_db import SQLiteTransferTable
from tests.support.deferreds import result_of
from tests.unit.test_manifest_load import PerFileHandler, manifest

ALICE = IdToken(dn="/C=US/O=Grid Test/CN=Alice")


class Interleaved(SQLiteTransferTable):
    """A worker's table that lets another worker run once, just before it first registers a key."""

    other: Callable[[], object] | None = None

    def _let_other_run(self) -> None:
        other, self.other = self.other, None
        if other is not None:
            other()

    def add(self, record: TransferRecord) -> None:
        self._let_other_run()
        super().add(record)

    def add_within(
        self, record: TransferRecord, max_files: int | None, max_bytes: int | None, now: float
    ) -> tuple[int, int] | None:
        self._let_other_run()
        return super().add_within(record, max_files, max_bytes, now)


def worker(table: SQLiteTransferTable) -> TransferEngine:
    """One worker's engine over ``table``, with --max-pending-files 3."""
    server = TransferEngine(clock=lambda: 1000.0, transfers=table, max_pending_files=3)
    server.register("data", PerFileHandler())
    return server


def test_two_workers_cannot_overshoot_the_quota_together(tmp_path: Path) -> None:
    """Worker B registers between worker A's quota check and its registration: A is refused, 2 files stay pending."""
    path = str(tmp_path / "transfers.db")
    table_a = Interleaved(path)
    a, b = worker(table_a), worker(SQLiteTransferTable(path, reset_receiving=False))
    table_a.other = lambda: result_of(b.post_manifest("data", manifest(0, 0, stem="b"), ALICE))
    with pytest.raises(QuotaExceeded, match="2 pending, this manifest adds 2, at most 3"):
        result_of(a.post_manifest("data", manifest(0, 0, stem="a"), ALICE))
    assert table_a.other is None  # B did run in between
    assert a.transfers.pending_totals(ALICE.dn, 1000.0) == (2, 0)
