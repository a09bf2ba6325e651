"""The engine's rules behind tus creation and termination (SPEC 7.2): one-file manifests made from headers,
files without an MD5, termination. Real DirectoryStores on disk, both transfer tables; no reactor."""

from __future__ import annotations

from typing import Any

import hashlib
import os
from pathlib import Path

import pytest

from gsitransfer import IdToken, TransferEngine
from gsitransfer.errors import FileNotFound, ManifestError, NotAuthorized, UploadConflict
from gsitransfer.filesink import ResumableSink
from gsitransfer.keys import FileState, MemoryTransferTable, TransferTable
from gsitransfer.manifest import ManifestLimits, one_file_manifest
from gsitransfer.store import DirectoryStore
from tests.support.tables import KINDS, metadata_beside, open_table
from gsitransfer.transfers_db import SQLiteTransferTable
from tests.support.deferreds import result_of

ALICE = IdToken(dn="/O=Grid/CN=Alice")
BOB = IdToken(dn="/O=Grid/CN=Bob")
DATA = bytes(range(256)) * 40
MD5 = hashlib.md5(DATA).hexdigest()


class Seen(DirectoryStore):
    """A DirectoryStore that keeps the checksum each callback was given."""

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        self.seen: list[tuple[str, object]] = []

    def CanUpload(self, id_token, file_info):  # type: ignore[no-untyped-def]
        self.seen.append(("CanUpload", file_info.get("checksum")))
        return super().CanUpload(id_token, file_info)

    def CompleteUpload(self, id_token, file_info):  # type: ignore[no-untyped-def]
        self.seen.append(("CompleteUpload", file_info.get("checksum")))
        return super().CompleteUpload(id_token, file_info)

    def CancelPendingUpload(self, id_token, filename):  # type: ignore[no-untyped-def]
        self.seen.append(("CancelPendingUpload", filename))
        return super().CancelPendingUpload(id_token, filename)


@pytest.fixture(params=KINDS)
def table(request: pytest.FixtureRequest, tmp_path: Path) -> TransferTable:
    return open_table(request.param, tmp_path, request)


@pytest.fixture
def store(tmp_path: Path, table: TransferTable) -> Seen:
    return Seen(str(tmp_path / "store"), metadata=metadata_beside(table, tmp_path / "store"))


@pytest.fixture
def engine(table: TransferTable, store: Seen) -> TransferEngine:
    engine = TransferEngine(transfers=table)
    engine.register("data", store)
    return engine


def create(engine: TransferEngine, checksum: str | None = None, who: IdToken = ALICE, carry: bool = False) -> str:
    outcome = result_of(engine.announce_manifest("data", one_file_manifest("f.bin", len(DATA), checksum), who, carry))
    assert outcome.accepted, outcome.error_reason
    return str(outcome.transfer_key)


def store_whole(engine: TransferEngine, key: str, data: bytes) -> None:
    """Receive ``data`` as file 0's whole body, verify, publish and complete it, as the web layer does."""
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, len(data)))
    sink = ResumableSink(ticket.final_path, ticket.entry.size, ticket.partial_path, 0)
    sink.write(data)
    result_of(engine.verify_upload(ticket, sink.hexdigest(), sink.received))
    sink.commit()
    result_of(engine.complete_upload(ticket))


def test_one_file_manifest_checks_like_a_posted_one():
    """one_file_manifest: the name rules, the MD5 form, the size limits; no MD5 gives checksum ""."""
    assert one_file_manifest("f.bin", 10, None).files[0].checksum == ""
    assert one_file_manifest("f.bin", 10, MD5.upper()).files[0].checksum == MD5
    assert one_file_manifest("f.bin", 10, None).files[0].file_info()["checksum"] is None
    for name, size, checksum, limits in [
        ("../x", 1, None, ManifestLimits()),
        (".gsitransfer-x", 1, None, ManifestLimits()),
        ("f", 1, "xyz", ManifestLimits()),
        ("f", 100, None, ManifestLimits(max_file_size=10)),
        ("f", 100, None, ManifestLimits(max_total_size=10)),
    ]:
        with pytest.raises(ManifestError):
            one_file_manifest(name, size, checksum, limits)


def test_without_md5_the_computed_one_is_completed(engine, store, tmp_path):
    """No MD5 announced: CanUpload sees None, any bytes of the right size verify, CompleteUpload gets their MD5,
    and the store records it."""
    key = create(engine)
    store_whole(engine, key, DATA)
    assert store.seen == [("CanUpload", None), ("CompleteUpload", MD5)]
    assert (tmp_path / "store" / "f.bin").read_bytes() == DATA
    assert result_of(engine.resolve_download("data", "f.bin", ALICE)).checksum == MD5


def test_without_md5_a_pending_name_is_taken_over_without_its_bytes(engine):
    """Two MD5-less uploads of one name by one person: the second takes the name over, nothing carried
    (no MD5 to prove the bytes are the same file)."""
    first = create(engine, carry=True)
    ticket = result_of(engine.begin_upload("data", first, 0, ALICE, len(DATA)))
    sink = ResumableSink(ticket.final_path, ticket.entry.size, ticket.partial_path, 0)
    sink.write(DATA[:1000])
    held, md5 = sink.keep()
    result_of(engine.keep_partial(ticket, held, md5))
    outcome = result_of(engine.announce_manifest("data", one_file_manifest("f.bin", len(DATA), None), ALICE))
    assert outcome.accepted and outcome.resume_from == ()
    assert not os.path.exists(ticket.partial_path)


def test_creation_never_carries_but_a_manifest_does(engine):
    """With an MD5, a tus creation (carry False) takes the name over from 0; a manifest (carry True) carries."""
    first = create(engine, MD5)
    ticket = result_of(engine.begin_upload("data", first, 0, ALICE, len(DATA)))
    sink = ResumableSink(ticket.final_path, ticket.entry.size, ticket.partial_path, 0)
    sink.write(DATA[:1000])
    result_of(engine.keep_partial(ticket, *sink.keep()))
    second = create(engine, MD5, carry=False)
    assert result_of(engine.upload_offset("data", second, 0, ALICE)).offset == 0
    with pytest.raises(FileNotFound):
        result_of(engine.upload_offset("data", first, 0, ALICE))


def test_termination_rules(engine, store):
    """terminate_upload: another person 403; pending → cancelled, CancelPendingUpload, the key forgotten;
    again 404; a stored file 409."""
    key = create(engine)
    with pytest.raises(NotAuthorized):
        result_of(engine.terminate_upload("data", key, 0, BOB))
    result_of(engine.terminate_upload("data", key, 0, ALICE))
    assert ("CancelPendingUpload", "f.bin") in store.seen
    assert not result_of(engine.is_live_transfer(key))
    with pytest.raises(FileNotFound):
        result_of(engine.terminate_upload("data", key, 0, ALICE))
    stored = create(engine)
    store_whole(engine, stored, DATA)
    with pytest.raises(UploadConflict):
        result_of(engine.terminate_upload("data", stored, 0, ALICE))


def test_termination_while_receiving_is_a_conflict(engine):
    """A file whose body is arriving cannot be terminated; it stays receiving."""
    key = create(engine)
    result_of(engine.begin_upload("data", key, 0, ALICE, len(DATA)))
    with pytest.raises(UploadConflict):
        result_of(engine.terminate_upload("data", key, 0, ALICE))
    assert engine.transfers.states(key)[0] is FileState.RECEIVING


def test_termination_keeps_the_other_files_of_a_key(engine, store):
    """Terminating one file of a two-file manifest cancels it only; the key lives on for the other."""
    body = (
        "[manifest]\nnum_files = 2\n\n[0]\nname = a.bin\nsize = 1\nchecksum = " + MD5 + "\n\n"
        "[1]\nname = b.bin\nsize = 1\nchecksum = " + MD5 + "\n"
    ).encode()
    key = str(result_of(engine.post_manifest("data", body, ALICE)).transfer_key)
    result_of(engine.terminate_upload("data", key, 1, ALICE))
    assert result_of(engine.is_live_transfer(key))
    assert engine.transfers.states(key) == {0: FileState.PENDING, 1: FileState.CANCELLED}
