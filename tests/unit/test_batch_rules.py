"""Atomic batches' rules (SPEC 7.4): held until all are verified, published together, cancelled together,
finished after a crash.

Real DirectoryStores on disk, both transfer tables; no reactor (the store answers at once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable

import pytest

from gsitransfer import IdToken, TransferEngine
from gsitransfer.batch import STORED, VERIFIED, claim, finish_batches, hold_file
from gsitransfer.batchlog import BatchFile, BatchIntent
from gsitransfer.engine import next_state
from gsitransfer.errors import ChecksumMismatch, FileNotFound, ManifestError, UploadConflict, UploadFailed
from gsitransfer.filesink import ResumableSink, publish_held
from gsitransfer.keys import FileState, MemoryTransferTable, TransferTable
from gsitransfer.manifest import Manifest, parse_manifest
from tests.support.tables import KINDS, metadata_beside, open_table
from gsitransfer.transfers_db import SQLiteTransferTable, manifest_from_json, manifest_to_json
from tests.support.batch_handlers import RecordingStore
from tests.support.deferreds import result_of

ALICE = IdToken(dn="/O=Grid/CN=Alice")
FILES = {"a.bin": b"a" * 3000, "b.bin": b"b" * 5000, "c.bin": b"c" * 10}


def atomic_manifest(files: dict[str, bytes] = FILES, commit: str = "atomic") -> bytes:
    plain = Manifest.of(*((name, len(data), hashlib.md5(data).hexdigest()) for name, data in files.items()))
    return dataclasses.replace(plain, commit=commit).to_ini().encode()


@pytest.fixture(params=KINDS)
def table(request: pytest.FixtureRequest, tmp_path: Path) -> TransferTable:
    return open_table(request.param, tmp_path, request)


@pytest.fixture
def store(tmp_path: Path, table: TransferTable) -> RecordingStore:
    return RecordingStore(str(tmp_path / "store"), metadata=metadata_beside(table, tmp_path / "store"))


@pytest.fixture
def engine(table: TransferTable, store: RecordingStore) -> TransferEngine:
    engine = TransferEngine(transfers=table)
    engine.register("data", store)
    return engine


def post(engine: TransferEngine, body: bytes) -> str:
    outcome = result_of(engine.post_manifest("data", body, ALICE))
    assert outcome.accepted, outcome.error_reason
    return str(outcome.transfer_key)


def upload(engine: TransferEngine, key: str, num: int, data: bytes) -> str:
    """A whole body for file ``num``, as the web layer sends it: verified, synced, held; the batch's state."""
    ticket = result_of(engine.begin_upload("data", key, num, ALICE, len(data)))
    sink = ResumableSink(ticket.final_path, ticket.entry.size, ticket.partial_path, 0)
    sink.write(data)
    result_of(engine.verify_upload(ticket, sink.hexdigest(), sink.received))
    held, _ = sink.keep()
    return str(result_of(hold_file(engine, ticket, held)))


def visible(store: RecordingStore) -> list[str]:
    """The names a download would find (the store's own view)."""
    found = []
    for name in FILES:
        try:
            store.GetDownloadFilename(ALICE, name)
        except FileNotFound:
            continue
        found.append(name)
    return found


def test_commit_is_parsed_and_kept():
    """``commit`` in [manifest]: atomic or each (default each, any case); kept through INI and the table's JSON."""
    assert parse_manifest(atomic_manifest()).atomic
    assert parse_manifest(atomic_manifest(commit="each")).commit == "each"
    assert parse_manifest(atomic_manifest().replace(b"commit = atomic", b"commit = ATOMIC")).atomic
    assert parse_manifest(Manifest.of(("x", 0, "d41d8cd98f00b204e9800998ecf8427e")).to_ini().encode()).commit == "each"
    manifest = parse_manifest(atomic_manifest())
    assert manifest_from_json(manifest_to_json(manifest)) == manifest
    plain = parse_manifest(atomic_manifest(commit="each"))
    assert manifest_from_json(manifest_to_json(plain)) == plain


def test_an_unknown_commit_is_refused_listing_the_allowed():
    """Any other value of ``commit`` is a ManifestError (400) naming each and atomic."""
    with pytest.raises(ManifestError, match="commit in \\[manifest\\] must be one of each, atomic, not 'later'"):
        parse_manifest(atomic_manifest().replace(b"commit = atomic", b"commit = later"))


def test_files_are_held_until_the_last_then_published_in_order(engine, store, tmp_path):
    """Verified files wait (state verified, offset = size, not downloadable, no CompleteUpload); the last one
    publishes all and CompleteUpload is called for each in file order."""
    key = post(engine, atomic_manifest())
    assert upload(engine, key, 1, FILES["b.bin"]) == VERIFIED
    assert upload(engine, key, 0, FILES["a.bin"]) == VERIFIED
    status = result_of(engine.transfer_status("data", key, ALICE))
    assert [(f["state"], f["offset"]) for f in status["files"]] == [
        ("verified", 3000), ("verified", 5000), ("pending", 0)
    ]
    assert result_of(engine.upload_offset("data", key, 0, ALICE)).offset == 3000
    assert visible(store) == [] and store.names("CompleteUpload") == []
    assert not (tmp_path / "store" / "a.bin").exists()
    assert upload(engine, key, 2, FILES["c.bin"]) == STORED
    assert store.names("CompleteUpload") == ["a.bin", "b.bin", "c.bin"]
    assert visible(store) == list(FILES)
    for name, data in FILES.items():
        assert (tmp_path / "store" / name).read_bytes() == data
    assert result_of(engine.transfer_status("data", key, ALICE))["complete"]
    assert not engine.batches.intents() and not engine.batches.held_files(key)
    assert not [n for n in os.listdir(tmp_path / "store") if n.startswith(".gsitransfer-") and "partial" in n]


def test_a_verified_file_cannot_be_sent_again(engine):
    """POST or PATCH on a verified file is a conflict that says it waits for its batch."""
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    with pytest.raises(UploadConflict, match="verified and waits for the rest of its batch"):
        result_of(engine.begin_upload("data", key, 0, ALICE, 3000))
    with pytest.raises(UploadConflict):
        result_of(engine.resume_upload("data", key, 0, ALICE, 3000, 0))


def test_a_checksum_mismatch_leaves_the_others_verified(engine, store):
    """One file failing its MD5: that file is pending again at offset 0, the others stay verified, nothing is published."""
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    with pytest.raises(ChecksumMismatch):
        upload(engine, key, 1, b"x" * 5000)
    states = engine.transfers.states(key)
    assert (states[0], states[1], states[2]) == (FileState.VERIFIED, FileState.PENDING, FileState.PENDING)
    assert result_of(engine.upload_offset("data", key, 1, ALICE)).offset == 0
    assert visible(store) == [] and store.names("CompleteUpload") == []
    upload(engine, key, 2, FILES["c.bin"])
    assert visible(store) == []
    assert upload(engine, key, 1, FILES["b.bin"]) == STORED
    assert visible(store) == list(FILES)


def test_cancel_removes_the_held_files(engine, store, tmp_path):
    """DELETE of the key: no file appears, the held files are removed, CancelPendingUpload for each."""
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    upload(engine, key, 1, FILES["b.bin"])
    result_of(engine.cancel_transfer("data", key, ALICE))
    assert sorted(store.names("CancelPendingUpload")) == sorted(FILES)
    assert store.names("CompleteUpload") == [] and visible(store) == []
    assert [n for n in os.listdir(tmp_path / "store") if not n.startswith(".gsitransfer-store")] == []
    assert not engine.batches.held_files(key)


def test_expiry_removes_the_held_files(table, store, tmp_path):
    """An expired batch: none appear, the held files are removed, CancelPendingUpload for each."""
    now = [1000.0]
    clock: Callable[[], float] = lambda: now[0]
    engine = TransferEngine(transfers=table, clock=clock, manifest_ttl=60)
    engine.register("data", store)
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    upload(engine, key, 2, FILES["c.bin"])
    now[0] += 61
    assert result_of(engine.expire_transfers()) == 1
    assert sorted(store.names("CancelPendingUpload")) == sorted(FILES)
    assert visible(store) == []
    assert [n for n in os.listdir(tmp_path / "store") if not n.startswith(".gsitransfer-store")] == []


def test_cancel_is_refused_while_publishing(engine):
    """While a batch's intent is recorded (publishing), cancel is a conflict and expiry waits."""
    key = post(engine, atomic_manifest())
    engine.batches.begin(BatchIntent(key, "data", ALICE.person, ()))
    with pytest.raises(UploadConflict):
        result_of(engine.cancel_transfer("data", key, ALICE))


def test_only_one_process_claims_a_batch(tmp_path):
    """Two engines sharing one SQLite table (--workers): the intent is claimed once."""
    path = str(tmp_path / "transfers.sqlite")
    store = RecordingStore(str(tmp_path / "store"))
    first, second = TransferEngine(transfers=SQLiteTransferTable(path)), TransferEngine(
        transfers=SQLiteTransferTable(path, reset_receiving=False)
    )
    for engine in (first, second):
        engine.register("data", store)
    key = post(first, atomic_manifest({"a.bin": FILES["a.bin"]}))
    ticket = result_of(first.begin_upload("data", key, 0, ALICE, 3000))
    sink = ResumableSink(ticket.final_path, 3000, ticket.partial_path, 0)
    sink.write(FILES["a.bin"])
    held, _ = sink.keep()
    assert result_of(first.hold_verified(ticket, held))
    assert result_of(claim(second, key)) is not None
    assert result_of(claim(first, key)) is None


def test_a_crash_between_renames_is_finished_at_start_up(tmp_path, monkeypatch):
    """Intent recorded, the first file published, then the process died: a new engine on the same table and
    store publishes the rest and calls CompleteUpload once for each."""
    path = str(tmp_path / "transfers.sqlite")
    store = RecordingStore(str(tmp_path / "store"))
    engine = TransferEngine(transfers=SQLiteTransferTable(path))
    engine.register("data", store)
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    upload(engine, key, 1, FILES["b.bin"])
    # the last file: held, claimed, then only the first file published (what a SIGKILL there leaves)
    ticket = result_of(engine.begin_upload("data", key, 2, ALICE, 10))
    sink = ResumableSink(ticket.final_path, 10, ticket.partial_path, 0)
    sink.write(FILES["c.bin"])
    result_of(engine.hold_verified(ticket, sink.keep()[0]))
    intent = result_of(claim(engine, key))
    assert intent is not None
    first = intent.files[0]
    assert publish_held(first.held, first.final, first.size, first.md5)
    assert store.names("CompleteUpload") == []

    restarted_store = RecordingStore(str(tmp_path / "store"))
    restarted = TransferEngine(transfers=SQLiteTransferTable(path))
    restarted.register("data", restarted_store)
    assert intent.holder == os.getpid()
    assert result_of(finish_batches(restarted, holder=os.getpid() + 1)) == 0  # another worker's: not this one's
    assert result_of(finish_batches(restarted)) == 1
    assert restarted_store.names("CompleteUpload") == ["a.bin", "b.bin", "c.bin"]
    assert visible(restarted_store) == list(FILES)
    assert result_of(restarted.transfer_status("data", key, ALICE))["complete"]
    assert not restarted.batches.intents()
    assert result_of(finish_batches(restarted)) == 0


def test_recovery_skips_completions_already_recorded(tmp_path):
    """A crash among the CompleteUpload calls: those recorded are not called again at start-up."""
    path = str(tmp_path / "transfers.sqlite")
    store = RecordingStore(str(tmp_path / "store"))
    engine = TransferEngine(transfers=SQLiteTransferTable(path))
    engine.register("data", store)
    two = {"a.bin": FILES["a.bin"], "b.bin": FILES["b.bin"]}
    key = post(engine, atomic_manifest(two))
    upload(engine, key, 0, FILES["a.bin"])
    ticket = result_of(engine.begin_upload("data", key, 1, ALICE, 5000))
    sink = ResumableSink(ticket.final_path, 5000, ticket.partial_path, 0)
    sink.write(FILES["b.bin"])
    result_of(engine.hold_verified(ticket, sink.keep()[0]))
    intent = result_of(claim(engine, key))
    assert intent is not None
    for file in intent.files:
        publish_held(file.held, file.final, file.size, file.md5)
    store.CompleteUpload(ALICE, {"name": "a.bin", "size": 3000, "checksum": file.md5})
    engine.transfers.set_state(key, 0, FileState.STORED)
    engine.batches.completed(key, 0)

    restarted = TransferEngine(transfers=SQLiteTransferTable(path))
    restarted.register("data", store)
    assert result_of(finish_batches(restarted)) == 1
    assert store.names("CompleteUpload") == ["a.bin", "b.bin"]


def test_a_name_taken_at_publish_undoes_the_batch(engine, store, tmp_path):
    """Another file under a final name when the batch publishes: nothing stays published (409), the files stay
    verified, and a cancel removes them."""
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    upload(engine, key, 1, FILES["b.bin"])
    (tmp_path / "store" / "b.bin").write_bytes(b"someone else's")
    with pytest.raises(UploadConflict, match="b.bin appeared meanwhile"):
        upload(engine, key, 2, FILES["c.bin"])
    assert not (tmp_path / "store" / "a.bin").exists()
    assert not engine.batches.intents()
    assert set(engine.transfers.states(key).values()) == {FileState.VERIFIED}
    result_of(engine.cancel_transfer("data", key, ALICE))
    assert [n for n in os.listdir(tmp_path / "store") if not n.startswith(".gsitransfer-store")] == ["b.bin"]


def test_take_over_of_a_verified_file_carries_it(engine, store):
    """The same person's new manifest naming a verified file takes it over: cancelled there, its held bytes
    carried to the new key (resume_from = its size)."""
    key = post(engine, atomic_manifest())
    upload(engine, key, 0, FILES["a.bin"])
    outcome = result_of(engine.post_manifest("data", atomic_manifest(), ALICE))
    assert outcome.accepted and outcome.resume_from == ((0, 3000),)
    assert engine.transfers.get(key) is None
    assert not engine.batches.held_files(key)


def test_batch_log_round_trip(tmp_path):
    """The SQLite batch log keeps held files, one intent per key, completions, and forgets them."""
    log = SQLiteTransferTable(str(tmp_path / "t.sqlite")).batches
    log.hold("k", 0, "/s/.h0", "/s/a")
    assert log.held_files("k") == {0: ("/s/.h0", "/s/a")} and log.held_count("k") == 1
    intent = BatchIntent("k", "data", None, (BatchFile(0, "a", 3, "0" * 32, "/s/.h0", "/s/a"),))
    assert log.begin(intent) and not log.begin(intent)
    log.completed("k", 0)
    assert log.intent("k") == dataclasses.replace(intent, completed=frozenset({0}))
    log.forget("k")
    assert log.intents() == [] and log.held_files("k") == {} and log.held_count("k") == 0



def test_verified_in_the_state_machine():
    """receiving --verify--> verified --complete--> stored; a verified file cannot begin again."""
    assert next_state(FileState.RECEIVING, "verify") is FileState.VERIFIED
    assert next_state(FileState.VERIFIED, "complete") is FileState.STORED
    with pytest.raises(UploadConflict, match="waits for the rest of its batch"):
        next_state(FileState.VERIFIED, "begin")
    with pytest.raises(UploadConflict):
        next_state(FileState.PENDING, "verify")


def test_publish_held_never_replaces_and_is_idempotent(tmp_path):
    """publish_held links a held file to its name; the same bytes already there count as published; other bytes
    are a conflict (kept); neither file holding the bytes is an UploadFailed."""
    data = b"held bytes"
    md5 = hashlib.md5(data).hexdigest()
    held, final = tmp_path / ".held", tmp_path / "x.bin"
    held.write_bytes(data)
    assert publish_held(str(held), str(final), len(data), md5) is True
    assert final.read_bytes() == data and not held.exists()
    assert publish_held(str(held), str(final), len(data), md5) is False  # a retry after a crash
    held.write_bytes(data)
    assert publish_held(str(held), str(final), len(data), md5) is False and not held.exists()
    other = tmp_path / "y.bin"
    other.write_bytes(b"someone else")
    held.write_bytes(data)
    with pytest.raises(UploadConflict):
        publish_held(str(held), str(other), len(data), md5)
    assert other.read_bytes() == b"someone else" and held.exists()
    with pytest.raises(UploadFailed):
        publish_held(str(tmp_path / ".gone"), str(tmp_path / "z.bin"), len(data), md5)
