"""The engine's resume rules: offsets held, pieces, take-over of a pending name (SPEC 7.1, 7.3).

Real DirectoryStores on disk, both transfer tables; no reactor (the store answers at once).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pytest

from gsitransfer import IdToken, TransferEngine
from gsitransfer.errors import BeyondLength, FileNotFound, NotAuthorized, OffsetMismatch, UploadConflict
from gsitransfer.filesink import ResumableSink, partial_path_for
from gsitransfer.keys import FileState, MemoryTransferTable, TransferTable
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from tests.support.tables import KINDS, metadata_beside, open_table
from gsitransfer.transfers_db import SQLiteTransferTable
from tests.support.deferreds import result_of

ALICE = IdToken(dn="/O=Grid/CN=Alice")
BOB = IdToken(dn="/O=Grid/CN=Bob")
DATA = bytes(range(256)) * 40


def manifest(*files: tuple[str, bytes]) -> bytes:
    return Manifest.of(*((name, len(data), hashlib.md5(data).hexdigest()) for name, data in files)).to_ini().encode()


@pytest.fixture(params=KINDS)
def table(request: pytest.FixtureRequest, tmp_path: Path) -> TransferTable:
    return open_table(request.param, tmp_path, request)


@pytest.fixture
def store(tmp_path: Path, table: TransferTable) -> DirectoryStore:
    return DirectoryStore(str(tmp_path / "store"), metadata=metadata_beside(table, tmp_path / "store"))


@pytest.fixture
def engine(table: TransferTable, store: DirectoryStore) -> TransferEngine:
    engine = TransferEngine(transfers=table)
    engine.register("data", store)
    return engine


def post(engine: TransferEngine, body: bytes, who: IdToken = ALICE) -> str:
    outcome = result_of(engine.post_manifest("data", body, who))
    assert outcome.accepted, outcome.error_reason
    return str(outcome.transfer_key)


def hold(engine: TransferEngine, key: str, data: bytes, num: int = 0, keep_md5: bool = True) -> int:
    """Write ``data`` as a cut-off whole body of file ``num`` and keep it, as the web layer does."""
    ticket = result_of(engine.begin_upload("data", key, num, ALICE, len(DATA)))
    sink = ResumableSink(ticket.final_path, ticket.entry.size, ticket.partial_path, 0)
    sink.write(data)
    held, md5 = sink.keep()
    return result_of(engine.keep_partial(ticket, held, md5 if keep_md5 else None))


def test_kept_bytes_are_the_offset(engine):
    """A cut-off body's kept bytes are the offset HEAD reports and the transfer state shows."""
    key = post(engine, manifest(("f.bin", DATA)))
    assert result_of(engine.upload_offset("data", key, 0, ALICE)).offset == 0
    assert hold(engine, key, DATA[:1000]) == 1000
    report = result_of(engine.upload_offset("data", key, "0", ALICE))
    assert (report.offset, report.length) == (1000, len(DATA))
    assert result_of(engine.transfer_status("data", key, ALICE))["files"][0]["offset"] == 1000


def test_resume_checks_owner_offset_and_size(engine):
    """resume_upload: another person 403, a wrong offset OffsetMismatch, a piece past the size BeyondLength."""
    key = post(engine, manifest(("f.bin", DATA)))
    hold(engine, key, DATA[:100])
    with pytest.raises(NotAuthorized):
        result_of(engine.upload_offset("data", key, 0, BOB))
    with pytest.raises(NotAuthorized):
        result_of(engine.resume_upload("data", key, 0, BOB, 100, 10))
    with pytest.raises(OffsetMismatch) as mismatch:
        result_of(engine.resume_upload("data", key, 0, ALICE, 50, 10))
    assert mismatch.value.held == 100
    with pytest.raises(BeyondLength):
        result_of(engine.resume_upload("data", key, 0, ALICE, 100, len(DATA)))
    with pytest.raises(FileNotFound):
        result_of(engine.upload_offset("data", key, 3, ALICE))


@pytest.mark.parametrize("keep_md5", [True, False])
def test_resumed_pieces_verify_the_whole_md5(engine, tmp_path, keep_md5):
    """Pieces resumed with the MD5 kept in memory, or rebuilt from the partial, verify and publish the file."""
    key = post(engine, manifest(("f.bin", DATA)))
    hold(engine, key, DATA[:3000], keep_md5=keep_md5)
    ticket = result_of(engine.resume_upload("data", key, 0, ALICE, 3000, len(DATA) - 3000))
    assert ticket.offset == 3000 and (ticket.resume_md5 is not None) == keep_md5
    sink = ResumableSink(ticket.final_path, ticket.entry.size, ticket.partial_path, 3000, ticket.resume_md5)
    sink.write(DATA[3000:])
    result_of(engine.verify_upload(ticket, sink.hexdigest(), sink.received))
    sink.commit()
    result_of(engine.complete_upload(ticket))
    assert (tmp_path / "store" / "f.bin").read_bytes() == DATA
    assert result_of(engine.upload_offset("data", key, 0, ALICE)).offset == len(DATA)
    assert not Path(ticket.partial_path).exists()


def test_a_receiving_file_cannot_be_resumed(engine):
    """A file arriving on another connection: PATCH is a conflict."""
    key = post(engine, manifest(("f.bin", DATA)))
    result_of(engine.begin_upload("data", key, 0, ALICE, len(DATA)))
    with pytest.raises(UploadConflict):
        result_of(engine.resume_upload("data", key, 0, ALICE, 0, 1))


def test_take_over_carries_the_partial(engine, store):
    """The same person's new manifest of a pending name takes it over: the old file is cancelled, the partial
    and its offset carried to the new key (resume_from), and a key left with nothing pending is forgotten."""
    body = manifest(("f.bin", DATA))
    old = post(engine, body)
    hold(engine, old, DATA[:4096])
    outcome = result_of(engine.post_manifest("data", body, ALICE))
    assert outcome.accepted and outcome.resume_from == ((0, 4096),)
    assert f"resume_from: 0=4096\n" in outcome.to_text()
    new = str(outcome.transfer_key)
    assert engine.transfers.get(old) is None
    assert result_of(engine.upload_offset("data", new, 0, ALICE)).offset == 4096
    ticket = result_of(engine.resume_upload("data", new, 0, ALICE, 4096, len(DATA) - 4096))
    assert ticket.resume_md5 is not None  # the in-memory MD5 went along


def test_take_over_of_one_file_leaves_the_others(engine):
    """Only the named file of the old key is cancelled; its other files stay pending under the old key."""
    old = post(engine, manifest(("f.bin", DATA), ("g.bin", DATA[:10])))
    hold(engine, old, DATA[:100])
    new = post(engine, manifest(("f.bin", DATA[:-1])))  # another size: nothing carried
    states = engine.transfers.states(old)
    assert states == {0: FileState.CANCELLED, 1: FileState.PENDING}
    assert result_of(engine.upload_offset("data", new, 0, ALICE)).offset == 0
    with pytest.raises(FileNotFound):
        result_of(engine.begin_upload("data", old, 0, ALICE, len(DATA)))


def test_another_person_is_refused(engine):
    """Another person's manifest of a name pending for Alice is refused as before (a conflict)."""
    post(engine, manifest(("f.bin", DATA)))
    outcome = result_of(engine.post_manifest("data", manifest(("f.bin", DATA)), BOB))
    assert not outcome.accepted and outcome.conflict and "already being uploaded" in str(outcome.error_reason)


def test_a_name_arriving_now_is_not_taken_over(engine):
    """A name whose body is arriving on another connection: the new manifest is refused (409 with strict)."""
    old = post(engine, manifest(("f.bin", DATA)))
    result_of(engine.begin_upload("data", old, 0, ALICE, len(DATA)))
    outcome = result_of(engine.post_manifest("data", manifest(("f.bin", DATA)), ALICE))
    assert not outcome.accepted and outcome.conflict and "arriving on another connection" in str(outcome.error_reason)


def test_expiry_removes_partials(table, store, tmp_path):
    """An expired key's partials are removed with its pending names; a cancelled (taken-over) file is not cancelled again."""
    now = [1000.0]
    clock: Callable[[], float] = lambda: now[0]
    engine = TransferEngine(transfers=table, clock=clock, manifest_ttl=60)
    engine.register("data", store)
    key = post(engine, manifest(("f.bin", DATA)))
    hold(engine, key, DATA[:10])
    partial = partial_path_for(str(tmp_path / "store" / "f.bin"))
    assert Path(partial).exists()
    now[0] += 61
    assert result_of(engine.expire_transfers()) == 1
    assert not Path(partial).exists()


def test_store_recovery_keeps_pending_partials(engine, tmp_path):
    """The store's start-up clean-up keeps the partial of a pending name and removes an orphan one."""
    key = post(engine, manifest(("f.bin", DATA)))
    hold(engine, key, DATA[:10])
    orphan = Path(partial_path_for(str(tmp_path / "store" / "gone.bin")))
    orphan.write_bytes(b"x")
    report = DirectoryStore(str(tmp_path / "store"), recover=False, metadata=metadata_beside(engine.transfers, tmp_path / "store")).recover()
    assert report.removed_partials == (orphan.name,)
    assert Path(partial_path_for(str(tmp_path / "store" / "f.bin"))).exists()
