"""The directory store's metadata: one SQLite table, one row per file.

This module owns the file ``<root>/.gsitransfer-store.sqlite`` and nothing
else: it never looks at the files themselves (that is
:mod:`gsitransfer.store.directory`'s job). Each method is one SQL statement
(or one short transaction), so it can run on the reactor thread.

A row records, per file name (primary key)::

    owner_dn      DN of the uploader, NULL for anonymous
    state         'pending' (announced by a manifest) or 'stored' (complete)
    created       when the pending row was written (store clock, epoch seconds)
    completed     when the file was stored (NULL while pending)
    size, md5     what was stored (NULL while pending)
    mtime_ns      the file's mtime when it was stored; a file whose mtime or
                  size differs since has been replaced and its md5 is stale
    transfer_key, file_num   the transfer uploading (or that uploaded) it, once known

Beside them, table ``digests`` (schema version 2) keeps other digests of a
file (``sha-256``, ``adler32``, ...; an MD5 computed for a file placed by
hand), one row per name and algorithm, each valid only while the file has
the identity it was computed for (device, inode, size, mtime): a replaced
file's digests are never served.

The schema's version is ``PRAGMA user_version``; each version is one
idempotent step (:data:`_STEPS`), run in order on an older database. The journal is WAL with
``synchronous=NORMAL``: a crash may lose the last metadata commits but never
corrupts the database, and the file data is fsync'd on its own by
:mod:`gsitransfer.filesink`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

#: the database's file name inside the store directory
DB_NAME = ".gsitransfer-store.sqlite"

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,
    owner_dn TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'stored')),
    created REAL NOT NULL,
    completed REAL,
    size INTEGER,
    md5 TEXT,
    mtime_ns INTEGER,
    transfer_key TEXT,
    file_num INTEGER
);
CREATE INDEX IF NOT EXISTS files_state_created ON files (state, created);
"""

_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS digests (
    name TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    value TEXT NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (name, algorithm)
);
"""

#: version -> the statements that bring a database of the version before to it
_STEPS = {1: _SCHEMA_V1, 2: _SCHEMA_V2}

#: (st_dev, st_ino, st_size, st_mtime_ns) of a file
Identity = tuple[int, int, int, int]

_COLUMNS = "name, owner_dn, state, created, completed, size, md5, mtime_ns, transfer_key, file_num"

# a name is free when it has no row or only a stale pending one; one statement,
# so two processes reserving the same name cannot both succeed
_RESERVE = (
    "INSERT INTO files (name, owner_dn, state, created) VALUES (?1, ?2, 'pending', ?3) "
    "ON CONFLICT (name) DO UPDATE SET owner_dn = ?2, state = 'pending', created = ?3, "
    "completed = NULL, size = NULL, md5 = NULL, mtime_ns = NULL, transfer_key = NULL, "
    "file_num = NULL WHERE files.state = 'pending' AND files.created < ?4"
)


class StoreError(ValueError):
    """The store cannot be opened; the message is one line naming the path."""


class FileState(str, Enum):
    """Where a file of the store is in its life."""

    PENDING = "pending"
    STORED = "stored"


@dataclass(frozen=True)
class FileRecord:
    """One row of the metadata table."""

    name: str
    owner_dn: str | None
    state: FileState
    created: float
    completed: float | None = None
    size: int | None = None
    md5: str | None = None
    mtime_ns: int | None = None
    transfer_key: str | None = None
    file_num: int | None = None


def record_from_row(row: tuple[Any, ...]) -> FileRecord:
    """A row of the ``files`` columns (in :data:`_COLUMNS` order) as a FileRecord."""
    name, owner, state, created, completed, size, md5, mtime_ns, key, num = row
    return FileRecord(
        name=str(name),
        owner_dn=None if owner is None else str(owner),
        state=FileState(state),
        created=float(created),
        completed=None if completed is None else float(completed),
        size=None if size is None else int(size),
        md5=None if md5 is None else str(md5),
        mtime_ns=None if mtime_ns is None else int(mtime_ns),
        transfer_key=None if key is None else str(key),
        file_num=None if num is None else int(num),
    )


class MetadataTable(Protocol):
    """What the directory store asks of its metadata: :class:`StoreMetadata` (SQLite, in the store
    directory) or :class:`~gsitransfer.postgres.store.PostgresStoreMetadata` (shared by nodes)."""

    path: str

    def close(self) -> None: ...
    def get(self, name: str) -> FileRecord | None: ...
    def records(self) -> dict[str, FileRecord]: ...
    def stored(self) -> dict[str, FileRecord]: ...
    def pending(self) -> list[FileRecord]: ...
    def add_pending(self, name: str, owner_dn: str | None, now: float, stale_before: float) -> bool: ...
    def add_pending_many(
        self, names: list[str], owner_dn: str | None, now: float, stale_before: float
    ) -> str | None: ...
    def bind_pending(
        self, name: str, owner_dn: str | None, transfer_key: str | None, file_num: int | None
    ) -> bool: ...
    def mark_stored(
        self,
        name: str,
        owner_dn: str | None,
        *,
        size: int,
        md5: str | None,
        mtime_ns: int | None,
        now: float,
        transfer_key: str | None = None,
        file_num: int | None = None,
    ) -> None: ...
    def cancel_pending(self, name: str, owner_dn: str | None) -> bool: ...
    def delete(self, names: list[str]) -> None: ...
    def delete_stored(self, name: str) -> None: ...
    def digests(self, name: str, identity: Identity) -> dict[str, str]: ...
    def keep_digests(self, name: str, identity: Identity, digests: dict[str, str]) -> None: ...
    def forget_digests(self, names: list[str]) -> None: ...
    def digest_names(self) -> set[str]: ...


class StoreMetadata:
    """The metadata table of one store directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open store database {path}: {error}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as error:
            self._db.close()
            raise StoreError(f"cannot open store database {path}: {error}") from None

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this gsitransfer ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _STEPS[step].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()

    # -- reads ------------------------------------------------------------------

    def get(self, name: str) -> FileRecord | None:
        """The row for ``name``, or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE name = ?", (name,)).fetchone()
        return None if row is None else record_from_row(row)

    def records(self) -> dict[str, FileRecord]:
        """Every row, by name."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM files")
        return {record.name: record for record in map(record_from_row, rows)}

    def stored(self) -> dict[str, FileRecord]:
        """Every stored row, by name."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE state = 'stored'")
        return {record.name: record for record in map(record_from_row, rows)}

    def pending(self) -> list[FileRecord]:
        """Every pending row, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE state = 'pending' ORDER BY created"
        )
        return [record_from_row(row) for row in rows]

    # -- writes -----------------------------------------------------------------

    def add_pending(self, name: str, owner_dn: str | None, now: float, stale_before: float) -> bool:
        """Reserve ``name`` for ``owner_dn``: a new pending row, or one replacing a pending
        row created before ``stale_before``. False (nothing changed) when the name is
        stored or freshly pending — another process may have reserved it meanwhile."""
        cursor = self._db.execute(_RESERVE, (name, owner_dn, now, stale_before))
        return cursor.rowcount == 1

    def add_pending_many(
        self, names: list[str], owner_dn: str | None, now: float, stale_before: float
    ) -> str | None:
        """:meth:`add_pending` for every name, all or none, in one transaction.

        Returns None when every name is reserved, else the first name that
        could not be (and nothing was changed).
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for name in names:
                if self._db.execute(_RESERVE, (name, owner_dn, now, stale_before)).rowcount != 1:
                    self._db.execute("ROLLBACK")
                    return name
        return None

    def bind_pending(
        self, name: str, owner_dn: str | None, transfer_key: str | None, file_num: int | None
    ) -> bool:
        """Tie ``name``'s pending row to the transfer uploading it.

        True when ``name`` is pending for ``owner_dn`` and not already tied to
        another transfer key; the row then records the key and file number.
        """
        cursor = self._db.execute(
            "UPDATE files SET transfer_key = coalesce(?, transfer_key), "
            "file_num = coalesce(?, file_num) "
            "WHERE name = ? AND state = 'pending' AND owner_dn IS ? "
            "AND (transfer_key IS NULL OR ? IS NULL OR transfer_key = ?)",
            (transfer_key, file_num, name, owner_dn, transfer_key, transfer_key),
        )
        return cursor.rowcount == 1

    def mark_stored(
        self,
        name: str,
        owner_dn: str | None,
        *,
        size: int,
        md5: str | None,
        mtime_ns: int | None,
        now: float,
        transfer_key: str | None = None,
        file_num: int | None = None,
    ) -> None:
        """Record ``name`` as stored (whatever its row said before, if anything)."""
        self._db.execute(
            "INSERT INTO files (name, owner_dn, state, created, completed, size, md5, "
            "mtime_ns, transfer_key, file_num) VALUES (?, ?, 'stored', ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET owner_dn = excluded.owner_dn, state = 'stored', "
            "completed = excluded.completed, size = excluded.size, md5 = excluded.md5, "
            "mtime_ns = excluded.mtime_ns, "
            "transfer_key = coalesce(excluded.transfer_key, files.transfer_key), "
            "file_num = coalesce(excluded.file_num, files.file_num)",
            (name, owner_dn, now, now, size, md5, mtime_ns, transfer_key, file_num),
        )

    def cancel_pending(self, name: str, owner_dn: str | None) -> bool:
        """Delete ``name``'s pending row if ``owner_dn`` owns it; True if one was deleted."""
        cursor = self._db.execute(
            "DELETE FROM files WHERE name = ? AND state = 'pending' AND owner_dn IS ?",
            (name, owner_dn),
        )
        return cursor.rowcount == 1

    def delete(self, names: list[str]) -> None:
        """Delete the rows for ``names`` (any state), and their digests."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in names])
            self._db.executemany("DELETE FROM digests WHERE name = ?", [(n,) for n in names])

    # -- digests ------------------------------------------------------------------

    def digests(self, name: str, identity: Identity) -> dict[str, str]:
        """The digests kept for ``name`` while it has ``identity``, by algorithm (hex)."""
        rows = self._db.execute(
            "SELECT algorithm, value FROM digests WHERE name = ? AND dev = ? AND ino = ? "
            "AND size = ? AND mtime_ns = ?",
            (name, *identity),
        )
        return {str(algorithm): str(value) for algorithm, value in rows}

    def keep_digests(self, name: str, identity: Identity, digests: dict[str, str]) -> None:
        """Keep ``digests`` for ``name`` as it is now (``identity``); digests of an earlier
        state of the file are forgotten. One transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "DELETE FROM digests WHERE name = ? AND NOT (dev = ? AND ino = ? AND size = ? AND mtime_ns = ?)",
                (name, *identity),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO digests (name, algorithm, value, dev, ino, size, mtime_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(name, algorithm, value, *identity) for algorithm, value in sorted(digests.items())],
            )

    def forget_digests(self, names: list[str]) -> None:
        """Forget every digest kept for ``names``."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM digests WHERE name = ?", [(n,) for n in names])

    def digest_names(self) -> set[str]:
        """Every name some digest is kept for."""
        return {str(name) for (name,) in self._db.execute("SELECT DISTINCT name FROM digests")}

    def delete_stored(self, name: str) -> None:
        """Delete ``name``'s row if it is stored (its file is known to be gone)."""
        self._db.execute("DELETE FROM files WHERE name = ? AND state = 'stored'", (name,))


__all__ = [
    "DB_NAME", "SCHEMA_VERSION", "FileRecord", "FileState", "MetadataTable", "StoreError", "StoreMetadata",
    "record_from_row",
]
