"""The directory store keeps digests beside its MD5: per file state, across restarts, cleaned at recovery."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from gsitransfer.handler import HandlerAdapter, IDigestKeeper
from gsitransfer.store import DB_NAME, DirectoryStore
from gsitransfer.store.metadata import SCHEMA_VERSION, StoreMetadata


def identity(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    s = DirectoryStore(str(tmp_path / "store"))
    (tmp_path / "store" / "f.bin").write_bytes(b"content")
    (tmp_path / "store" / "sub").mkdir()
    (tmp_path / "store" / "sub" / "g.bin").write_bytes(b"other")
    return s


def test_store_is_a_digest_keeper(store: DirectoryStore) -> None:
    """The store declares IDigestKeeper, and its adapter says it keeps digests."""
    assert verifyObject(IDigestKeeper, store)
    assert HandlerAdapter(store).keeps_digests
    assert not HandlerAdapter(object()).keeps_digests


def test_digests_kept_per_file_state(store: DirectoryStore) -> None:
    """Digests kept for a file are known while it has that identity, by its real or store path."""
    path = Path(store.root) / "f.bin"
    state = identity(path)
    store.KeepDigests(str(path), state, {"sha-256": "ab" * 32, "adler32": "0a1b2c3d"})
    real = os.path.realpath(path)
    assert store.KnownDigests(real, state) == {"sha-256": "ab" * 32, "adler32": "0a1b2c3d"}
    assert store.KnownDigests(str(path), state[:3] + (state[3] + 1,)) == {}
    store.KeepDigests(str(path), state, {"md5": "cd" * 16})
    assert store.KnownDigests(str(path), state) == {"sha-256": "ab" * 32, "adler32": "0a1b2c3d", "md5": "cd" * 16}
    sub = Path(store.root) / "sub" / "g.bin"
    store.KeepDigests(str(sub), identity(sub), {"md5": "ef" * 16})
    assert store.metadata.digest_names() == {"f.bin", os.path.join("sub", "g.bin")}


def test_a_new_file_state_forgets_the_old_digests(store: DirectoryStore) -> None:
    """Keeping digests for a new state of a file drops the digests of its earlier state."""
    path = Path(store.root) / "f.bin"
    old = identity(path)
    store.KeepDigests(str(path), old, {"sha-256": "ab" * 32})
    new = old[:3] + (old[3] + 10**9,)
    store.KeepDigests(str(path), new, {"adler32": "00000001"})
    assert store.KnownDigests(str(path), old) == {}
    assert store.KnownDigests(str(path), new) == {"adler32": "00000001"}


@pytest.mark.parametrize("outside", ["/etc/passwd", "../x", ".gsitransfer-store.sqlite"])
def test_paths_outside_the_store_are_not_kept(store: DirectoryStore, outside: str) -> None:
    """A path outside the store (or one of its hidden names) is neither kept nor known."""
    path = os.path.join(store.root, outside)
    store.KeepDigests(path, (1, 2, 3, 4), {"md5": "00" * 16})
    assert store.KnownDigests(path, (1, 2, 3, 4)) == {}
    assert store.metadata.digest_names() == set()


def test_kept_across_a_restart_and_forgotten_for_vanished_files(store: DirectoryStore) -> None:
    """Digests survive reopening the store; recovery forgets those of files that are gone."""
    root = Path(store.root)
    state_f, state_g = identity(root / "f.bin"), identity(root / "sub" / "g.bin")
    store.KeepDigests(str(root / "f.bin"), state_f, {"sha-512": "11" * 64})
    store.KeepDigests(str(root / "sub" / "g.bin"), state_g, {"md5": "22" * 16})
    store.close()
    (root / "sub" / "g.bin").unlink()
    reopened = DirectoryStore(str(root))
    assert reopened.KnownDigests(str(root / "f.bin"), state_f) == {"sha-512": "11" * 64}
    assert reopened.metadata.digest_names() == {"f.bin"}


def test_version_1_database_migrated(tmp_path: Path) -> None:
    """A schema 1 database keeps its rows and gains the digests table."""
    path = tmp_path / DB_NAME
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE files (name TEXT PRIMARY KEY, owner_dn TEXT, state TEXT NOT NULL, created REAL NOT NULL, "
        "completed REAL, size INTEGER, md5 TEXT, mtime_ns INTEGER, transfer_key TEXT, file_num INTEGER);"
        "INSERT INTO files (name, state, created) VALUES ('old.bin', 'pending', 1.0);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    metadata = StoreMetadata(str(path))
    try:
        record = metadata.get("old.bin")
        assert record is not None and record.state.value == "pending"
        metadata.keep_digests("old.bin", (1, 2, 3, 4), {"md5": "00" * 16})
        assert metadata.digests("old.bin", (1, 2, 3, 4)) == {"md5": "00" * 16}
    finally:
        metadata.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    finally:
        db.close()
