"""The transfer table in SQLite, so transfer keys survive a restart.

Implements :class:`gsitransfer.keys.TransferTable`. One file holds every key
of a server: the validated manifest (as JSON), the owner DN, the prefix, the times, and
each file's state, durable bytes held (``received``) and partial file path. A file that was ``receiving`` when the server stopped is
``pending`` again when the table is opened: its body never completed.

Several processes may share the file (``--workers``; SQLite in WAL mode): a
file's move to ``receiving`` is one conditional UPDATE, so exactly one process
wins it, and the row remembers which process (``holder``, its pid) so that the
supervisor can give the file back if that worker dies. Workers open the table
with ``reset_receiving=False``: only the supervisor, before any worker starts,
resets what a previous run left receiving.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import OrderedDict
from typing import Any, Iterable

from .batchlog import SQLiteBatchLog
from .keys import FileState, TransferRecord, fits
from .manifest import FileEntry, Manifest, ManifestLimits, parse_manifest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    key TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    owner_dn TEXT,
    manifest TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    already_stored TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS transfer_files (
    key TEXT NOT NULL REFERENCES transfers(key) ON DELETE CASCADE,
    num INTEGER NOT NULL,
    state TEXT NOT NULL,
    holder INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    partial TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key, num)
);
CREATE INDEX IF NOT EXISTS transfers_expires ON transfers(expires);
"""



def manifest_to_json(manifest: Manifest) -> str:
    """The validated manifest as stored: JSON, so reading it back never re-parses INI.

    A list of files; an atomic batch (``commit = atomic``) is ``{"commit": ..., "files": [...]}``.
    """
    files = [[e.name, e.size, e.checksum, [list(pair) for pair in e.extra]] for e in manifest.files]
    stored: object = files if not manifest.atomic else {"commit": manifest.commit, "files": files}
    return json.dumps(stored, ensure_ascii=False, separators=(",", ":"))


def manifest_from_json(text: str) -> Manifest:
    """Inverse of :func:`manifest_to_json` (the values were validated when posted).

    Rows written by 0.1 development builds hold INI text: those are parsed as INI.
    """
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        return parse_manifest(text.encode("utf-8"), ManifestLimits(max_bytes=1 << 30, max_files=1 << 30))
    commit = "each"
    if isinstance(rows, dict):
        commit, rows = rows["commit"], rows["files"]
    return Manifest(
        tuple(
            FileEntry(num, name, size, checksum, tuple((k, v) for k, v in extra))
            for num, (name, size, checksum, extra) in enumerate(rows)
        ),
        commit,
    )


#: seconds a write waits for another process's transaction (--workers)
_BUSY_TIMEOUT = 30.0


class TransferDBError(ValueError):
    """The transfer database cannot be opened (one line, names the path)."""


class SQLiteTransferTable:
    """A TransferTable kept in an SQLite file.

    Parsed records are kept in a least-recently-used cache of at most
    :attr:`cache_size` entries (issue 12 finding 5: a worker never expires
    keys, so an unbounded cache grew with every manifest it saw); a record
    evicted, removed or removed by another process is read again from SQLite.
    """

    #: parsed records kept per process (each one manifest of up to --max-manifest-files:
    #: a 10,000-file record is a few MB, so the bound is small)
    cache_size = 16

    def __init__(self, path: str, *, reset_receiving: bool = True) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(transfer_files)")}
            if "holder" not in columns:  # tables made by 0.1 development builds
                self._db.execute("ALTER TABLE transfer_files ADD COLUMN holder INTEGER")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(transfers)")}
            if "already_stored" not in columns:  # tables made before manifest-time dedupe
                try:
                    self._db.execute("ALTER TABLE transfers ADD COLUMN already_stored TEXT NOT NULL DEFAULT ''")
                except sqlite3.OperationalError:
                    # another process sharing the file (--workers) added it first
                    columns = {row[1] for row in self._db.execute("PRAGMA table_info(transfers)")}
                    if "already_stored" not in columns:
                        raise
            self._add_progress_columns()
            #: atomic batches' held files and publishing intents, in the same database
            self.batches = SQLiteBatchLog(self._db)
            if reset_receiving:
                self._db.execute(
                    "UPDATE transfer_files SET state = ?, holder = NULL WHERE state = ?",
                    (FileState.PENDING.value, FileState.RECEIVING.value),
                )
        except (OSError, sqlite3.Error) as error:
            raise TransferDBError(f"cannot open transfer database {path}: {error}") from None
        self._cache: OrderedDict[str, TransferRecord] = OrderedDict()

    def _add_progress_columns(self) -> None:
        """Tables made before resumable uploads get each file's durable bytes and partial path."""
        for column, kind in (("received", "INTEGER NOT NULL DEFAULT 0"), ("partial", "TEXT NOT NULL DEFAULT ''")):
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(transfer_files)")}
            if column in columns:
                continue
            try:
                self._db.execute(f"ALTER TABLE transfer_files ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError:
                # another process sharing the file (--workers) added it first
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(transfer_files)")}
                if column not in columns:
                    raise

    def _remember(self, record: TransferRecord) -> None:
        self._cache[record.key] = record
        self._cache.move_to_end(record.key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def add(self, record: TransferRecord) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._insert(record)
        self._remember(record)

    def add_within(
        self, record: TransferRecord, max_files: int | None, max_bytes: int | None, now: float
    ) -> tuple[int, int] | None:
        with self._db:
            # the write lock first: no other process registers between the totals and the insert
            self._db.execute("BEGIN IMMEDIATE")
            totals = self.pending_totals(record.owner_dn, now)
            if not fits(totals, record, max_files, max_bytes):
                return totals
            self._insert(record)
        self._remember(record)
        return None

    def _insert(self, record: TransferRecord) -> None:
        self._db.execute(
            "INSERT INTO transfers (key, prefix, owner_dn, manifest, created, expires, already_stored) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            record_row(record),
        )
        self._db.executemany(
            "INSERT INTO transfer_files (key, num, state) VALUES (?, ?, ?)",
            [(record.key, e.num, record.initial_state(e.num).value) for e in record.manifest.files],
        )

    def get(self, key: str) -> TransferRecord | None:
        cached = self._cache.get(key)
        if cached is not None:
            # another process may have removed it: one indexed lookup, no JSON
            if self._db.execute("SELECT 1 FROM transfers WHERE key = ?", (key,)).fetchone():
                self._cache.move_to_end(key)
                return cached
            del self._cache[key]
            return None
        row = self._db.execute(
            "SELECT key, prefix, owner_dn, manifest, created, expires, already_stored FROM transfers WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        record = record_from_row(row)
        self._remember(record)
        return record

    def states(self, key: str) -> dict[int, FileState]:
        rows = self._db.execute(
            "SELECT num, state FROM transfer_files WHERE key = ?", (key,)
        ).fetchall()
        return {num: FileState(state) for num, state in rows}

    def set_state(self, key: str, num: int, state: FileState) -> None:
        self._db.execute(
            "UPDATE transfer_files SET state = ?, holder = ? WHERE key = ? AND num = ?",
            (state.value, _holder(state), key, num),
        )

    def transition(self, key: str, num: int, before: FileState, after: FileState) -> bool:
        cursor = self._db.execute(
            "UPDATE transfer_files SET state = ?, holder = ? WHERE key = ? AND num = ? AND state = ?",
            (after.value, _holder(after), key, num, before.value),
        )
        return cursor.rowcount == 1

    def progress(self, key: str) -> dict[int, tuple[int, str]]:
        rows = self._db.execute(
            "SELECT num, received, partial FROM transfer_files WHERE key = ? AND (received > 0 OR partial != '')",
            (key,),
        ).fetchall()
        return {num: (received, partial) for num, received, partial in rows}

    def set_progress(self, key: str, num: int, offset: int, partial: str) -> None:
        self._db.execute(
            "UPDATE transfer_files SET received = ?, partial = ? WHERE key = ? AND num = ?",
            (offset, partial, key, num),
        )

    def release(self, key: str, num: int, offset: int, partial: str) -> bool:
        cursor = self._db.execute(
            "UPDATE transfer_files SET state = ?, holder = NULL, received = ?, partial = ? "
            "WHERE key = ? AND num = ? AND state = ?",
            (FileState.PENDING.value, offset, partial, key, num, FileState.RECEIVING.value),
        )
        return cursor.rowcount == 1

    def release_holder(self, holder: int) -> int:
        """Files a dead process was receiving are pending again; how many."""
        cursor = self._db.execute(
            "UPDATE transfer_files SET state = ?, holder = NULL WHERE state = ? AND holder = ?",
            (FileState.PENDING.value, FileState.RECEIVING.value, holder),
        )
        return cursor.rowcount

    def remove(self, key: str) -> bool:
        self._cache.pop(key, None)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM transfer_files WHERE key = ?", (key,))
            cursor = self._db.execute("DELETE FROM transfers WHERE key = ?", (key,))
        return cursor.rowcount == 1

    def expired(self, now: float) -> list[TransferRecord]:
        rows = self._db.execute(
            "SELECT key, prefix, owner_dn, manifest, created, expires, already_stored FROM transfers "
            "WHERE expires <= ?",
            (now,),
        ).fetchall()
        return [record_from_row(row) for row in rows]

    def pending_totals(self, owner_dn: str | None, now: float) -> tuple[int, int]:
        rows = self._db.execute(
            "SELECT f.key, f.num FROM transfers t JOIN transfer_files f ON f.key = t.key "
            "WHERE t.owner_dn IS ? AND t.expires > ? AND f.state NOT IN (?, ?)",
            (owner_dn, now, FileState.STORED.value, FileState.CANCELLED.value),
        ).fetchall()
        files = size = 0
        records: dict[str, TransferRecord | None] = {}
        for key, num in rows:
            if key not in records:
                records[key] = self._cache.get(key) or self.get(key)
            record = records[key]
            if record is not None and num < record.manifest.num_files:
                files += 1
                size += record.manifest.files[num].counted_size
        return files, size

    def records(self) -> Iterable[TransferRecord]:
        rows = self._db.execute(
            "SELECT key, prefix, owner_dn, manifest, created, expires, already_stored FROM transfers"
        ).fetchall()
        return [record_from_row(row) for row in rows]

    def live_owned(self, owner_dn: str | None, prefix: str, now: float) -> list[TransferRecord]:
        keys = self._db.execute(
            "SELECT DISTINCT t.key FROM transfers t JOIN transfer_files f ON f.key = t.key "
            "WHERE t.owner_dn IS ? AND t.prefix = ? AND t.expires > ? AND f.state NOT IN (?, ?)",
            (owner_dn, prefix, now, FileState.STORED.value, FileState.CANCELLED.value),
        ).fetchall()
        records = (self.get(key) for (key,) in keys)
        return [record for record in records if record is not None]

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def expire_now(self, key: str, now: float) -> bool:
        """End ``key``'s life now (``gsitransfer-admin transfers cancel``): the expiry sweep of the server
        cancels its files as for any expired key. False when there is no such key."""
        changed = self._db.execute("UPDATE transfers SET expires = ? WHERE key = ? AND expires > ?", (now, key, now))
        self._cache.pop(key, None)
        return changed.rowcount > 0

    def ping(self) -> None:
        """Ask the database one trivial question (a health check); raises if it cannot answer."""
        self._db.execute("SELECT 1").fetchone()


def _holder(state: FileState) -> int | None:
    """The pid recorded with a file this process starts receiving."""
    return os.getpid() if state is FileState.RECEIVING else None


def record_row(record: TransferRecord) -> tuple[Any, ...]:
    """A record as its ``transfers`` row: key, prefix, owner_dn, manifest (JSON), created, expires, already_stored."""
    return (
        record.key,
        record.prefix,
        record.owner_dn,
        manifest_to_json(record.manifest),
        record.created,
        record.expires,
        " ".join(str(num) for num in sorted(record.already_stored)),
    )


def record_from_row(row: tuple[Any, ...]) -> TransferRecord:
    """Inverse of :func:`record_row` (SQLite or PostgreSQL)."""
    key, prefix, owner_dn, manifest_text, created, expires, already_stored = row
    return TransferRecord(
        key=key,
        prefix=prefix,
        owner_dn=owner_dn,
        manifest=manifest_from_json(manifest_text),
        created=float(created),
        expires=float(expires),
        already_stored=frozenset(int(num) for num in already_stored.split()),
    )
