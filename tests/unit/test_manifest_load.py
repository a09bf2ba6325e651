"""Big manifests and many of them: the core returns to the reactor, batches the store's
pending rows, and bounds what one identity may have pending (issue 5).

No reactor: a :class:`StepTimer` stands in for one, and runs the calls due only
when the test says so, one reactor turn at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from gsitransfer import ANONYMOUS, IdToken, QuotaExceeded, TransferEngine
from gsitransfer.keys import FileState, MemoryTransferTable, TransferRecord
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.transfers_db import SQLiteTransferTable
from tests.support.deferreds import result_of

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
ALICE = IdToken(dn="/C=US/O=Grid Test/CN=Alice")
BOB = IdToken(dn="/C=US/O=Grid Test/CN=Bob")


class StepTimer(task.Clock):
    """A Clock whose ``turn`` runs only the calls already due, as one reactor iteration would."""

    def turn(self) -> int:
        due, self.calls = list(self.calls), []
        for call in due:
            call.func(*call.args, **call.kw)
        return len(due)


def manifest(*sizes: int, stem: str = "f") -> bytes:
    """A manifest body of files named ``<stem><n>`` with the given sizes."""
    return Manifest.of(*((f"{stem}{n}", size, MD5) for n, size in enumerate(sizes))).to_ini().encode()


def run_turns(timer: StepTimer, deferred: defer.Deferred[Any], limit: int = 10_000) -> int:
    """Turn the timer until ``deferred`` fires; how many turns it took (bounded)."""
    for turns in range(limit):
        if deferred.called:
            return turns
        timer.turn()
    raise AssertionError(f"not done after {limit} turns")


class PerFileHandler:
    """The seed's contract only: AddPendingUpload, one file at a time."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def CanUpload(self, id_token: IdToken, file_info: dict[str, Any]) -> bool:
        return True

    def AddPendingUpload(self, id_token: IdToken, filename: str) -> None:
        self.pending.append(filename)

    def CancelPendingUpload(self, id_token: IdToken, filename: str) -> None:
        self.pending.remove(filename)


class BatchHandler(PerFileHandler):
    """Has the optional AddPendingUploads too."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail = fail

    def AddPendingUploads(self, id_token: IdToken, filenames: list[str]) -> None:
        self.batches.append(list(filenames))
        self.pending.extend(filenames[:2])
        if self.fail:
            raise RuntimeError("disk on fire")

    def CancelPendingUpload(self, id_token: IdToken, filename: str) -> None:
        if filename in self.pending:
            self.pending.remove(filename)


def core(handler: object, timer: Any = None, **options: Any) -> TransferEngine:
    server = TransferEngine(timer=timer, clock=lambda: 1000.0, **options)
    server.register("data", handler)
    return server


# -- returning to the reactor ------------------------------------------------------------------


def test_big_manifest_returns_to_the_reactor_between_batches():
    """1000 files with batches of 100: the post yields about ten times, then registers them all."""
    timer, handler = StepTimer(), PerFileHandler()
    server = core(handler, timer)
    server.manifest_batch = 100
    posted = server.post_manifest("data", manifest(*[0] * 1000), ANONYMOUS)
    assert not posted.called
    turns = run_turns(timer, posted)
    assert 15 <= turns <= 25  # ten for CanUpload, ten for AddPendingUpload (one each)
    assert result_of(posted).accepted and len(handler.pending) == 1000


def test_without_a_timer_the_post_runs_straight_through():
    """No timer (no reactor): the Deferred has fired when post_manifest returns."""
    handler = PerFileHandler()
    posted = core(handler).post_manifest("data", manifest(*[0] * 500), ANONYMOUS)
    assert result_of(posted).accepted and len(handler.pending) == 500


def test_small_manifest_does_not_wait_for_the_reactor():
    """A manifest within one batch is answered at once even with a timer."""
    posted = core(PerFileHandler(), StepTimer()).post_manifest("data", manifest(1, 2), ANONYMOUS)
    assert result_of(posted).accepted


def test_names_of_a_manifest_being_checked_are_held():
    """While a big manifest is checked, another naming one of its files is refused, not registered twice."""
    timer, handler = StepTimer(), PerFileHandler()
    server = core(handler, timer)
    server.manifest_batch = 10
    first = server.post_manifest("data", manifest(*[0] * 100), ALICE)
    second = result_of(server.post_manifest("data", manifest(0, stem="f"), BOB))
    assert not second.accepted and "f0" in (second.error_reason or "")
    run_turns(timer, first)
    assert result_of(first).accepted
    third = result_of(server.post_manifest("data", manifest(0, stem="other"), BOB))
    assert third.accepted  # nothing is held once the first is registered


# -- the optional batch capability -------------------------------------------------------------


def test_batch_capability_is_used_when_present():
    """A handler with AddPendingUploads gets one call with every name, in order."""
    handler = BatchHandler()
    result_of(core(handler).post_manifest("data", manifest(0, 0, 0), ANONYMOUS))
    assert handler.batches == [["f0", "f1", "f2"]]


def test_failed_batch_cancels_every_name_and_the_key():
    """A batch that fails: no key is left, and CancelPendingUpload undoes what it did."""
    handler = BatchHandler(fail=True)
    server = core(handler)
    with pytest.raises(RuntimeError):
        result_of(server.post_manifest("data", manifest(0, 0, 0), ANONYMOUS))
    assert handler.pending == [] and list(server.transfers.records()) == []


def test_directory_store_records_a_batch_in_one_go(tmp_path: Path):
    """The store's AddPendingUploads makes every name pending (then refused by a second manifest)."""
    store = DirectoryStore(str(tmp_path / "store"))
    server = core(store)
    assert result_of(server.post_manifest("data", manifest(*[0] * 300), ALICE)).accepted
    assert len(store.metadata.pending()) == 300
    again = result_of(server.post_manifest("data", manifest(0, stem="f"), BOB))
    assert not again.accepted and "already being uploaded" in (again.error_reason or "")


# -- per-identity pending limits ---------------------------------------------------------------


def test_pending_files_limit_per_identity():
    """Past --max-pending-files one DN is refused (QuotaExceeded naming the counts); another DN is not."""
    server = core(PerFileHandler(), max_pending_files=5)
    assert result_of(server.post_manifest("data", manifest(0, 0, 0, stem="a"), ALICE)).accepted
    with pytest.raises(QuotaExceeded, match="3 pending, this manifest adds 3, at most 5"):
        result_of(server.post_manifest("data", manifest(0, 0, 0, stem="b"), ALICE))
    assert result_of(server.post_manifest("data", manifest(0, 0, 0, stem="c"), BOB)).accepted
    assert len(list(server.transfers.records())) == 2


def test_pending_bytes_limit_and_anonymous_share_one_budget():
    """Anonymous clients are one identity: their pending bytes add up against --max-pending-bytes."""
    server = core(PerFileHandler(), max_pending_bytes=100)
    assert result_of(server.post_manifest("data", manifest(60, stem="a"), ANONYMOUS)).accepted
    with pytest.raises(QuotaExceeded, match="pending bytes for anonymous clients"):
        result_of(server.post_manifest("data", manifest(41, stem="b"), IdToken(dn=None)))
    assert result_of(server.post_manifest("data", manifest(40, stem="c"), ANONYMOUS)).accepted


def test_stored_cancelled_and_expired_files_free_the_budget():
    """Only files announced and not yet stored, of live keys, count."""
    now = [1000.0]
    server = TransferEngine(clock=lambda: now[0], manifest_ttl=60, max_pending_files=2)
    server.register("data", PerFileHandler())
    key = result_of(server.post_manifest("data", manifest(0, 0, stem="a"), ALICE)).transfer_key
    server.transfers.set_state(key, 0, FileState.STORED)
    assert result_of(server.post_manifest("data", manifest(0, stem="b"), ALICE)).accepted
    with pytest.raises(QuotaExceeded):
        result_of(server.post_manifest("data", manifest(0, stem="c"), ALICE))
    now[0] += 61  # both keys expired
    assert result_of(server.post_manifest("data", manifest(0, 0, stem="d"), ALICE)).accepted


def test_quota_is_checked_again_when_registering():
    """Two big manifests of one DN checked at the same time cannot both pass the limit."""
    timer = StepTimer()
    server = core(PerFileHandler(), timer, max_pending_files=150)
    server.manifest_batch = 10
    first = server.post_manifest("data", manifest(*[0] * 100, stem="a"), ALICE)
    second = server.post_manifest("data", manifest(*[0] * 100, stem="b"), ALICE)
    run_turns(timer, first)
    run_turns(timer, second)
    outcomes: list[Any] = []
    for posted in (first, second):
        posted.addBoth(outcomes.append)
    assert sum(isinstance(o, Failure) and o.check(QuotaExceeded) is not None for o in outcomes) == 1
    assert len(list(server.transfers.records())) == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_tables_total_what_an_identity_has_pending(tmp_path: Path, kind: str):
    """pending_totals counts unstored files of live keys, per owner DN (None for anonymous)."""
    table: Any = MemoryTransferTable() if kind == "memory" else SQLiteTransferTable(str(tmp_path / "t.db"))

    def add(key: str, owner: str | None, sizes: tuple[int, ...], expires: float = 2000.0) -> None:
        files = Manifest.of(*((f"{key}{n}", s, MD5) for n, s in enumerate(sizes)))
        table.add(TransferRecord(key, "data", owner, files, 1000.0, expires))

    add("k1", ALICE.dn, (10, 20, 30))
    add("k2", ALICE.dn, (5,), expires=1100.0)
    add("k3", None, (7, 8))
    add("k4", BOB.dn, (1,))
    table.set_state("k1", 1, FileState.STORED)
    table.set_state("k1", 2, FileState.RECEIVING)
    assert table.pending_totals(ALICE.dn, 1050.0) == (3, 45)
    assert table.pending_totals(ALICE.dn, 1100.0) == (2, 40)  # k2 expired
    assert table.pending_totals(None, 1050.0) == (2, 15)
    assert table.pending_totals("/CN=Nobody", 1050.0) == (0, 0)
