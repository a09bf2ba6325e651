"""The batch log: what an atomic batch (``commit = atomic``, SPEC 7.4) holds, and its intent to publish.

Two records, per transfer key:

* each *held* file: a file of the batch that is verified and waits, synced,
  under its partial name (``held``) for the rest of the batch, and the final
  path its handler gave it (``final``, from ``GetUploadFilename``);
* the *intent*: written (and synced) once, by the one process that claims the
  batch when its last file is verified, before the first file is published:
  every file's held path, final path, MD5 and size, and which files have had
  their ``CompleteUpload`` since. A process that starts finds every intent
  left by a crash and finishes it (``gsitransfer.batch.finish_batches``).

:class:`MemoryBatchLog` keeps them in dicts (a :class:`~gsitransfer.keys.MemoryTransferTable`
has one); :class:`SQLiteBatchLog` in two tables of the transfer database (a
:class:`~gsitransfer.transfers_db.SQLiteTransferTable` has one, on its own
connection), so they survive a restart and are shared by ``--workers``. No
I/O but the database; pure otherwise.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Protocol


@dataclass(frozen=True)
class BatchFile:
    """One file of a batch being published: where it waits, where it goes, what it is."""

    num: int
    name: str
    size: int
    md5: str
    held: str
    final: str


@dataclass(frozen=True)
class BatchIntent:
    """A batch claimed for publishing: its files in file order, and those whose CompleteUpload was called."""

    key: str
    prefix: str
    owner_dn: str | None
    files: tuple[BatchFile, ...]
    completed: frozenset[int] = field(default=frozenset())
    #: the pid of the process that claimed it (a --workers supervisor finishes a dead worker's)
    holder: int | None = None


class BatchLog(Protocol):
    """Storage for held files and publishing intents (see the module rules)."""

    def hold(self, key: str, num: int, held: str, final: str) -> None:
        """File ``num`` of ``key`` is verified and waits at ``held``, to be published at ``final``."""

    def held_files(self, key: str) -> dict[int, tuple[str, str]]:
        """Per held file of ``key``: (held path, final path)."""

    def held_count(self, key: str) -> int:
        """How many files of ``key`` were recorded held (a cheap first test of "is the batch complete")."""

    def drop(self, key: str, num: int) -> None:
        """File ``num`` of ``key`` no longer waits (taken over by a newer manifest)."""

    def begin(self, intent: BatchIntent) -> bool:
        """Record ``intent`` durably; False (nothing changed) if the batch was already claimed."""

    def intent(self, key: str) -> BatchIntent | None:
        """The intent recorded for ``key``, or None."""

    def intents(self) -> list[BatchIntent]:
        """Every intent recorded (those a crash left, at start-up)."""

    def completed(self, key: str, num: int) -> None:
        """``CompleteUpload`` was called for file ``num`` of ``key``'s intent (recorded durably)."""

    def abandon(self, key: str) -> None:
        """Remove ``key``'s intent only (publishing was undone: its files are held again)."""

    def forget(self, key: str) -> None:
        """Remove ``key``'s intent and held files (the batch is published, cancelled or expired)."""


class MemoryBatchLog:
    """A BatchLog in dicts, for a :class:`~gsitransfer.keys.MemoryTransferTable`."""

    def __init__(self) -> None:
        self._held: dict[str, dict[int, tuple[str, str]]] = {}
        self._intents: dict[str, BatchIntent] = {}

    def hold(self, key: str, num: int, held: str, final: str) -> None:
        self._held.setdefault(key, {})[num] = (held, final)

    def held_files(self, key: str) -> dict[int, tuple[str, str]]:
        return dict(self._held.get(key, {}))

    def held_count(self, key: str) -> int:
        return len(self._held.get(key, {}))

    def drop(self, key: str, num: int) -> None:
        self._held.get(key, {}).pop(num, None)

    def begin(self, intent: BatchIntent) -> bool:
        if intent.key in self._intents:
            return False
        self._intents[intent.key] = intent
        return True

    def intent(self, key: str) -> BatchIntent | None:
        return self._intents.get(key)

    def intents(self) -> list[BatchIntent]:
        return list(self._intents.values())

    def completed(self, key: str, num: int) -> None:
        intent = self._intents.get(key)
        if intent is not None:
            self._intents[key] = replace(intent, completed=intent.completed | {num})

    def abandon(self, key: str) -> None:
        self._intents.pop(key, None)

    def forget(self, key: str) -> None:
        self._held.pop(key, None)
        self._intents.pop(key, None)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_held (
    key TEXT NOT NULL,
    num INTEGER NOT NULL,
    held TEXT NOT NULL,
    final TEXT NOT NULL,
    PRIMARY KEY (key, num)
);
CREATE TABLE IF NOT EXISTS batch_intents (
    key TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    owner_dn TEXT,
    files TEXT NOT NULL,
    completed TEXT NOT NULL DEFAULT '',
    holder INTEGER
);
"""


class SQLiteBatchLog:
    """A BatchLog in the transfer database (``synchronous=FULL``: each write is on disk when it returns)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)

    def hold(self, key: str, num: int, held: str, final: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO batch_held (key, num, held, final) VALUES (?, ?, ?, ?)", (key, num, held, final)
        )

    def held_files(self, key: str) -> dict[int, tuple[str, str]]:
        rows = self._db.execute("SELECT num, held, final FROM batch_held WHERE key = ?", (key,)).fetchall()
        return {num: (held, final) for num, held, final in rows}

    def held_count(self, key: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM batch_held WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def drop(self, key: str, num: int) -> None:
        self._db.execute("DELETE FROM batch_held WHERE key = ? AND num = ?", (key, num))

    def begin(self, intent: BatchIntent) -> bool:
        files = intent_files_json(intent)
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO batch_intents (key, prefix, owner_dn, files, holder) VALUES (?, ?, ?, ?, ?)",
            (intent.key, intent.prefix, intent.owner_dn, files, intent.holder),
        )
        return cursor.rowcount == 1

    def intent(self, key: str) -> BatchIntent | None:
        row = self._db.execute(
            "SELECT key, prefix, owner_dn, files, completed, holder FROM batch_intents WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else intent_from_row(row)

    def intents(self) -> list[BatchIntent]:
        rows = self._db.execute("SELECT key, prefix, owner_dn, files, completed, holder FROM batch_intents").fetchall()
        return [intent_from_row(row) for row in rows]

    def completed(self, key: str, num: int) -> None:
        self._db.execute(
            "UPDATE batch_intents SET completed = completed || ? WHERE key = ?", (f" {num}", key)
        )

    def abandon(self, key: str) -> None:
        self._db.execute("DELETE FROM batch_intents WHERE key = ?", (key,))

    def forget(self, key: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM batch_intents WHERE key = ?", (key,))
            self._db.execute("DELETE FROM batch_held WHERE key = ?", (key,))


def intent_files_json(intent: BatchIntent) -> str:
    """An intent's files as stored (JSON): read back by :func:`intent_from_row`."""
    return json.dumps(
        [[f.num, f.name, f.size, f.md5, f.held, f.final] for f in intent.files],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def intent_from_row(row: tuple[Any, ...]) -> BatchIntent:
    """An intent from its row ``(key, prefix, owner_dn, files, completed, holder)`` (SQLite or PostgreSQL)."""
    key, prefix, owner_dn, files, completed, holder = row
    return BatchIntent(
        key,
        prefix,
        owner_dn,
        tuple(BatchFile(num, name, size, md5, held, final) for num, name, size, md5, held, final in json.loads(files)),
        frozenset(int(num) for num in completed.split()),
        None if holder is None else int(holder),
    )


__all__ = [
    "BatchFile", "BatchIntent", "BatchLog", "MemoryBatchLog", "SQLiteBatchLog", "intent_files_json", "intent_from_row",
]
