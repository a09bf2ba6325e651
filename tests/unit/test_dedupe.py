"""Manifest-time dedupe (issue 13 item 4): a manifest entry whose name, size and MD5 match a stored file.

Real DirectoryStores on disk, both transfer tables; no reactor (the store answers at once).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from gsitransfer import IdToken, TransferEngine, UploadConflict
from gsitransfer.handler import DownloadTarget
from gsitransfer.keys import FileState, MemoryTransferTable, TransferTable
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from tests.support.tables import KINDS, metadata_beside, open_table
from gsitransfer.transfers_db import SQLiteTransferTable
from tests.support.deferreds import result_of

ALICE = IdToken(dn="/O=Grid/CN=Alice")
OLD = b"the stored bytes\n"
NEW = b"something new\n"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Counting(DirectoryStore):
    """A DirectoryStore counting the upload callbacks the engine makes."""

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        self.counted: dict[str, list[str]] = {}

    def _count(self, callback: str, name: str) -> None:
        self.counted.setdefault(callback, []).append(name)

    def CanUpload(self, id_token: IdToken, file_info: Any) -> bool:
        self._count("CanUpload", file_info["name"])
        return super().CanUpload(id_token, file_info)

    def AddPendingUploads(self, id_token: IdToken, filenames: list[str]) -> None:
        for name in filenames:
            self._count("AddPendingUpload", name)
        super().AddPendingUploads(id_token, filenames)

    def GetUploadFilename(self, id_token: IdToken, file_info: Any) -> str | None:
        self._count("GetUploadFilename", file_info["name"])
        return super().GetUploadFilename(id_token, file_info)


@pytest.fixture(params=KINDS)
def table(request: pytest.FixtureRequest, tmp_path: Path) -> TransferTable:
    return open_table(request.param, tmp_path, request)


@pytest.fixture
def store(tmp_path: Path, table: TransferTable) -> Counting:
    return Counting(str(tmp_path / "store"), metadata=metadata_beside(table, tmp_path / "store"))


def stored_engine(store: Counting, table: TransferTable, **options: Any) -> TransferEngine:
    """An engine over ``store`` in which ``old.txt`` (OLD) has been uploaded and stored."""
    engine = TransferEngine(transfers=table, **options)
    engine.register("data", store)
    upload(engine, [("old.txt", OLD)])
    store.counted.clear()
    return engine


def manifest(files: list[tuple[str, bytes]]) -> bytes:
    return Manifest.of(*((name, len(data), md5(data)) for name, data in files)).to_ini().encode()


def upload(engine: TransferEngine, files: list[tuple[str, bytes]]) -> str:
    """Post a manifest and store every file not already stored; the key."""
    outcome = result_of(engine.post_manifest("data", manifest(files), ALICE))
    assert outcome.accepted, outcome.error_reason
    for num, (name, data) in enumerate(files):
        if num in outcome.already_stored:
            continue
        ticket = result_of(engine.begin_upload("data", outcome.transfer_key, num, ALICE, len(data)))
        Path(ticket.final_path).write_bytes(data)
        result_of(engine.verify_upload(ticket, md5(data), len(data)))
        result_of(engine.complete_upload(ticket))
    return str(outcome.transfer_key)


def test_identical_file_is_already_stored(store, table):
    """The same name, size and MD5: no CanUpload/AddPendingUpload for it, it starts stored, the answer says so."""
    engine = stored_engine(store, table)
    outcome = result_of(engine.post_manifest("data", manifest([("new.txt", NEW), ("old.txt", OLD)]), ALICE))
    assert outcome.accepted and outcome.already_stored == (1,)
    assert outcome.to_text() == f"return_code: 0\ntransfer_key: {outcome.transfer_key}\nalready_stored: 1\n"
    assert store.counted == {"CanUpload": ["new.txt"], "AddPendingUpload": ["new.txt"]}
    states = engine.transfers.states(outcome.transfer_key)
    assert states == {0: FileState.PENDING, 1: FileState.STORED}
    status = result_of(engine.transfer_status("data", outcome.transfer_key, ALICE))
    assert [f["state"] for f in status["files"]] == ["pending", "stored"] and not status["complete"]


def test_every_file_already_stored_still_gets_a_key(store, table):
    """A manifest of only stored files: return_code 0, a key, every file stored, the transfer complete."""
    engine = stored_engine(store, table)
    outcome = result_of(engine.post_manifest("data", manifest([("old.txt", OLD)]), ALICE))
    assert outcome.to_text() == f"return_code: 0\ntransfer_key: {outcome.transfer_key}\nalready_stored: 0\n"
    assert result_of(engine.transfer_status("data", outcome.transfer_key, ALICE))["complete"] is True
    assert store.counted == {}


def test_a_different_file_under_the_name_keeps_the_refusal(store, table):
    """Same name, other bytes (or other size): the handler's refusal, return_code 1, marked a conflict."""
    engine = stored_engine(store, table)
    for other in (b"the stored bytes!\n", b"the STORED bytes\n"):
        outcome = result_of(engine.post_manifest("data", manifest([("old.txt", other)]), ALICE))
        assert not outcome.accepted and outcome.conflict
        assert outcome.error_reason == "Upload error for file old.txt: a file named old.txt already exists"


def test_already_stored_takes_no_pending_quota(store, table):
    """An owner at the pending limit may still post a manifest of already stored files."""
    engine = stored_engine(store, table, max_pending_files=1)
    upload_key = result_of(engine.post_manifest("data", manifest([("wait.txt", NEW)]), ALICE)).transfer_key
    assert upload_key is not None  # one file pending: the limit is reached
    outcome = result_of(engine.post_manifest("data", manifest([("old.txt", OLD)]), ALICE))
    assert outcome.accepted and outcome.already_stored == (0,)
    assert engine.transfers.pending_totals(ALICE.person, engine.clock()) == (1, len(NEW))


def test_a_body_for_an_already_stored_file_is_to_be_discarded(store, table):
    """begin_upload on an already stored file: a ticket to discard the body, no handler call, still stored."""
    engine = stored_engine(store, table)
    key = result_of(engine.post_manifest("data", manifest([("old.txt", OLD)]), ALICE)).transfer_key
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, len(OLD)))
    assert ticket.already_stored and ticket.final_path == ""
    assert store.counted == {}
    assert engine.transfers.states(key) == {0: FileState.STORED}


def test_a_file_stored_by_this_transfer_is_still_a_conflict(store, table):
    """A file uploaded through the transfer (not found stored) cannot be begun again: 409 as before."""
    engine = stored_engine(store, table)
    key = upload(engine, [("again.txt", NEW)])
    with pytest.raises(UploadConflict, match="already stored"):
        result_of(engine.begin_upload("data", key, 0, ALICE, len(NEW)))


def test_already_stored_survives_a_restart(store, tmp_path):
    """The SQLite table remembers which files were found stored: a new process discards their bodies too."""
    path = str(tmp_path / "restart.db")
    engine = stored_engine(store, SQLiteTransferTable(path))
    key = result_of(engine.post_manifest("data", manifest([("old.txt", OLD)]), ALICE)).transfer_key
    reopened = TransferEngine(transfers=SQLiteTransferTable(path))
    reopened.register("data", store)
    assert result_of(reopened.begin_upload("data", key, 0, ALICE, len(OLD))).already_stored


class NoChecksum(DirectoryStore):
    """A handler that names the file but does not know its MD5."""

    def GetDownloadFilename(self, id_token: IdToken, url_path: str) -> DownloadTarget:
        return DownloadTarget(super().GetDownloadFilename(id_token, url_path).path)


def test_no_md5_known_is_the_old_behaviour(tmp_path):
    """A handler that gives no MD5: nothing is already stored, the handler's refusal stands."""
    engine = TransferEngine()
    engine.register("data", NoChecksum(str(tmp_path / "store")))
    upload(engine, [("old.txt", OLD)])
    outcome = result_of(engine.post_manifest("data", manifest([("old.txt", OLD)]), ALICE))
    assert not outcome.accepted and "already exists" in str(outcome.error_reason)


def test_a_table_from_before_dedupe_is_upgraded(tmp_path):
    """A transfers database without the already_stored column gains it on open; its keys read as before."""
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE transfers (key TEXT PRIMARY KEY, prefix TEXT NOT NULL, owner_dn TEXT, manifest TEXT NOT NULL,"
        " created REAL NOT NULL, expires REAL NOT NULL);"
        "CREATE TABLE transfer_files (key TEXT NOT NULL, num INTEGER NOT NULL, state TEXT NOT NULL, holder INTEGER,"
        " PRIMARY KEY (key, num));"
        "INSERT INTO transfers VALUES ('k', 'data', NULL, '[[\"a.txt\",1,\"" + md5(b"a") + "\",[]]]', 0, 1e12);"
        "INSERT INTO transfer_files VALUES ('k', 0, 'pending', NULL);"
    )
    db.commit()
    db.close()
    table = SQLiteTransferTable(path)
    record = table.get("k")
    assert record is not None and record.already_stored == frozenset()
    assert table.states("k") == {0: FileState.PENDING}
