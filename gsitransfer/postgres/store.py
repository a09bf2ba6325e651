"""The directory store's metadata in PostgreSQL (SPEC 9.1): nodes on one shared store directory.

Implements :class:`gsitransfer.store.metadata.MetadataTable` with the rules of
:class:`~gsitransfer.store.metadata.StoreMetadata` (the SQLite reference), in
two tables every store of every node shares, keyed by the store's absolute
path (``store``): the shared filesystem is mounted at the same path on every
node (docs/deploy.md). A name's reservation is one ``INSERT … ON CONFLICT DO
UPDATE … WHERE`` (of two nodes reserving it, one changes a row), a manifest's
names one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store.metadata import FileRecord, Identity, record_from_row
from .connection import PostgresState

if TYPE_CHECKING:
    import psycopg

_COLUMNS = "name, owner_dn, state, created, completed, size, md5, mtime_ns, transfer_key, file_num"

_RESERVE = (
    "INSERT INTO store_files AS f (store, name, owner_dn, state, created) VALUES (%(store)s, %(name)s, %(owner)s, "
    "'pending', %(now)s) ON CONFLICT (store, name) DO UPDATE SET owner_dn = EXCLUDED.owner_dn, state = 'pending', "
    "created = EXCLUDED.created, completed = NULL, size = NULL, md5 = NULL, mtime_ns = NULL, transfer_key = NULL, "
    "file_num = NULL WHERE f.state = 'pending' AND f.created < %(stale)s"
)


class _NameTaken(Exception):
    """Rolls a manifest's reservations back: ``name`` could not be reserved."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class PostgresStoreMetadata:
    """The metadata rows of the store at ``store`` (its absolute path), in the shared database."""

    def __init__(self, state: PostgresState, store: str) -> None:
        self.state = state
        self.store = store
        self.path = f"{state.url} (store {store})"

    def close(self) -> None:
        """Nothing to close: the connection pool belongs to the process's state."""

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.state.run(lambda connection: connection.execute(sql, (self.store, *params)).fetchall())

    def _count(self, sql: str, params: tuple[Any, ...]) -> int:
        return self.state.run(lambda connection: connection.execute(sql, (self.store, *params)).rowcount)

    # -- reads ------------------------------------------------------------------

    def get(self, name: str) -> FileRecord | None:
        """The row for ``name``, or None."""
        rows = self._all(f"SELECT {_COLUMNS} FROM store_files WHERE store = %s AND name = %s", (name,))
        return record_from_row(rows[0]) if rows else None

    def records(self) -> dict[str, FileRecord]:
        """Every row, by name."""
        return {r.name: r for r in map(record_from_row, self._all(f"SELECT {_COLUMNS} FROM store_files WHERE store = %s", ()))}

    def stored(self) -> dict[str, FileRecord]:
        """Every stored row, by name."""
        rows = self._all(f"SELECT {_COLUMNS} FROM store_files WHERE store = %s AND state = 'stored'", ())
        return {record.name: record for record in map(record_from_row, rows)}

    def pending(self) -> list[FileRecord]:
        """Every pending row, oldest first."""
        rows = self._all(
            f"SELECT {_COLUMNS} FROM store_files WHERE store = %s AND state = 'pending' ORDER BY created", ()
        )
        return [record_from_row(row) for row in rows]

    # -- writes -----------------------------------------------------------------

    def add_pending(self, name: str, owner_dn: str | None, now: float, stale_before: float) -> bool:
        """Reserve ``name`` (see StoreMetadata.add_pending): one statement, one winner across nodes."""
        params = {"store": self.store, "name": name, "owner": owner_dn, "now": now, "stale": stale_before}
        return self.state.run(lambda connection: connection.execute(_RESERVE, params).rowcount) == 1

    def add_pending_many(
        self, names: list[str], owner_dn: str | None, now: float, stale_before: float
    ) -> str | None:
        """Reserve every name or none, in one transaction; None, or the first name that could not be."""

        def reserve_all(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                for name in names:
                    params = {"store": self.store, "name": name, "owner": owner_dn, "now": now, "stale": stale_before}
                    if connection.execute(_RESERVE, params).rowcount != 1:
                        raise _NameTaken(name)

        try:
            self.state.run(reserve_all)
        except _NameTaken as taken:
            return taken.name
        return None

    def bind_pending(
        self, name: str, owner_dn: str | None, transfer_key: str | None, file_num: int | None
    ) -> bool:
        """Tie ``name``'s pending row to the transfer uploading it (see StoreMetadata.bind_pending)."""
        return self.state.run(
            lambda connection: connection.execute(
                "UPDATE store_files SET transfer_key = coalesce(%s, transfer_key), "
                "file_num = coalesce(%s::integer, file_num) "
                "WHERE store = %s AND name = %s AND state = 'pending' AND owner_dn IS NOT DISTINCT FROM %s "
                "AND (transfer_key IS NULL OR %s::text IS NULL OR transfer_key = %s)",
                (transfer_key, file_num, self.store, name, owner_dn, transfer_key, transfer_key),
            ).rowcount
        ) == 1

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
        self._count(
            "INSERT INTO store_files AS f (store, name, owner_dn, state, created, completed, size, md5, mtime_ns, "
            "transfer_key, file_num) VALUES (%s, %s, %s, 'stored', %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (store, name) DO UPDATE SET owner_dn = EXCLUDED.owner_dn, state = 'stored', "
            "completed = EXCLUDED.completed, size = EXCLUDED.size, md5 = EXCLUDED.md5, mtime_ns = EXCLUDED.mtime_ns, "
            "transfer_key = coalesce(EXCLUDED.transfer_key, f.transfer_key), "
            "file_num = coalesce(EXCLUDED.file_num, f.file_num)",
            (name, owner_dn, now, now, size, md5, mtime_ns, transfer_key, file_num),
        )

    def cancel_pending(self, name: str, owner_dn: str | None) -> bool:
        """Delete ``name``'s pending row if ``owner_dn`` owns it; True if one was deleted."""
        return self._count(
            "DELETE FROM store_files WHERE store = %s AND name = %s AND state = 'pending' "
            "AND owner_dn IS NOT DISTINCT FROM %s",
            (name, owner_dn),
        ) == 1

    def delete(self, names: list[str]) -> None:
        """Delete the rows for ``names`` (any state), and their digests."""

        def delete_both(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute("DELETE FROM store_files WHERE store = %s AND name = ANY(%s)", (self.store, names))
                connection.execute("DELETE FROM store_digests WHERE store = %s AND name = ANY(%s)", (self.store, names))

        self.state.run(delete_both)

    def delete_stored(self, name: str) -> None:
        """Delete ``name``'s row if it is stored (its file is known to be gone)."""
        self._count("DELETE FROM store_files WHERE store = %s AND name = %s AND state = 'stored'", (name,))

    # -- digests ------------------------------------------------------------------

    def digests(self, name: str, identity: Identity) -> dict[str, str]:
        """The digests kept for ``name`` while it has ``identity``, by algorithm (hex)."""
        rows = self._all(
            "SELECT algorithm, value FROM store_digests WHERE store = %s AND name = %s AND dev = %s AND ino = %s "
            "AND size = %s AND mtime_ns = %s",
            (name, *identity),
        )
        return {str(algorithm): str(value) for algorithm, value in rows}

    def keep_digests(self, name: str, identity: Identity, digests: dict[str, str]) -> None:
        """Keep ``digests`` for ``name`` as it is now; digests of an earlier state are forgotten. One transaction."""

        def keep(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute(
                    "DELETE FROM store_digests WHERE store = %s AND name = %s "
                    "AND NOT (dev = %s AND ino = %s AND size = %s AND mtime_ns = %s)",
                    (self.store, name, *identity),
                )
                with connection.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO store_digests (store, name, algorithm, value, dev, ino, size, mtime_ns) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (store, name, algorithm) DO UPDATE SET "
                        "value = EXCLUDED.value, dev = EXCLUDED.dev, ino = EXCLUDED.ino, size = EXCLUDED.size, "
                        "mtime_ns = EXCLUDED.mtime_ns",
                        [(self.store, name, algorithm, value, *identity) for algorithm, value in sorted(digests.items())],
                    )

        self.state.run(keep)

    def forget_digests(self, names: list[str]) -> None:
        """Forget every digest kept for ``names``."""
        self._count("DELETE FROM store_digests WHERE store = %s AND name = ANY(%s)", (names,))

    def digest_names(self) -> set[str]:
        """Every name some digest is kept for."""
        return {str(name) for (name,) in self._all("SELECT DISTINCT name FROM store_digests WHERE store = %s", ())}
