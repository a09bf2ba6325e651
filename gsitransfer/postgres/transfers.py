"""The transfer table and batch log in PostgreSQL (SPEC 9.1): what several nodes share.

Implements :class:`gsitransfer.keys.TransferTable` and
:class:`gsitransfer.batchlog.BatchLog` with the same rules as
:mod:`gsitransfer.transfers_db` (the SQLite reference), where a single
SQLite writer gave some of them for free:

* a file's move to ``receiving`` (``transition``), ``release`` and ``remove``
  are each one conditional statement: of two nodes, exactly one sees
  ``rowcount == 1`` — that is how one wins a file, and how an expired key is
  cancelled exactly once (its ``remove`` is the claim);
* ``add_within`` (quota check + insert) is one transaction holding an
  advisory lock on the owner's DN, so two nodes cannot both fit a manifest in
  the same room; on the calls thread a lock held elsewhere raises
  ``TableBusy`` at once (``TableCalls`` makes the call again after a pause)
  instead of holding up the process's later statements;
* the file a node receives carries the node process's *holder* number
  (:class:`~.connection.PostgresState`): a node that dies leaves its files to
  be made pending again by the others, not by its own restart.

Each file row also records the bytes it counts against its owner's limits
(``counted``), so the pending totals are one ``SUM``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from twisted.internet.defer import Deferred

from ..batchlog import BatchIntent, intent_files_json, intent_from_row
from ..errors import StateUnavailable, TableBusy
from ..keys import FileState, TransferRecord, fits
from ..transfers_db import record_from_row, record_row
from .connection import PostgresState

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

_RECORD_COLUMNS = "key, prefix, owner_dn, manifest, created, expires, already_stored"
_LIVE = (FileState.STORED.value, FileState.CANCELLED.value)


class PostgresTransferTable:
    """A TransferTable shared by every node through PostgreSQL."""

    #: parsed records kept per process, as :class:`~gsitransfer.transfers_db.SQLiteTransferTable` keeps them
    cache_size = 16

    def __init__(self, state: PostgresState, *, off_reactor: bool = True) -> None:
        """``off_reactor``: the engine's calls run on the state's thread (the server); False runs them
        where they are made (tests of the rules without a reactor, the administrator's command)."""
        self.state = state
        #: TableCalls runs this table's calls through :meth:`deferred_call`
        self.runs_off_reactor = off_reactor
        self.path = state.url
        self.batches = PostgresBatchLog(state)
        self._cache: OrderedDict[str, TransferRecord] = OrderedDict()
        #: the calls thread and the reactor thread (the seed's synchronous API, health checks) share the cache
        self._cache_lock = threading.Lock()

    def deferred_call(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a call of this table off the reactor (:class:`~gsitransfer.tablecalls.TableCalls` uses it)."""
        return self.state.deferred(function, *args)

    def _holder(self, state: FileState) -> int | None:
        return self.state.holder if state is FileState.RECEIVING else None

    def _remember(self, record: TransferRecord) -> None:
        with self._cache_lock:
            self._cache[record.key] = record
            self._cache.move_to_end(record.key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _cached(self, key: str) -> TransferRecord | None:
        with self._cache_lock:
            return self._cache.get(key)

    def _forget(self, key: str) -> None:
        with self._cache_lock:
            self._cache.pop(key, None)

    # -- records ----------------------------------------------------------------------

    def add(self, record: TransferRecord) -> None:
        def insert(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                _insert(connection, record)

        self.state.run(insert)
        self._remember(record)

    def add_within(
        self, record: TransferRecord, max_files: int | None, max_bytes: int | None, now: float
    ) -> tuple[int, int] | None:
        lock = "pg_try_advisory_xact_lock" if self.runs_off_reactor else "pg_advisory_xact_lock"

        def insert_if_it_fits(connection: psycopg.Connection[Any]) -> tuple[int, int] | None:
            with connection.transaction():
                # the owner's registrations one at a time, on every node: totals then insert; on the calls
                # thread a lock held elsewhere is not waited for (it would hold up every later call): TableBusy
                locked = connection.execute(
                    f"SELECT {lock}(hashtextextended(%s, 17))", (record.owner_dn or "",)
                ).fetchone()
                if locked is None or locked[0] is False:
                    raise TableBusy(f"the pending-files lock of {record.owner_dn or 'anonymous clients'}")
                totals = _pending_totals(connection, record.owner_dn, now)
                if not fits(totals, record, max_files, max_bytes):
                    return totals
                _insert(connection, record)
                return None

        totals = self.state.run(insert_if_it_fits)
        if totals is None:
            self._remember(record)
        return totals

    def get(self, key: str) -> TransferRecord | None:
        cached = self._cached(key)
        if cached is not None:
            # another node may have removed it: one indexed lookup, no JSON
            if self._one("SELECT 1 FROM transfers WHERE key = %s", (key,)) is not None:
                return cached
            self._forget(key)
            return None
        row = self._one(f"SELECT {_RECORD_COLUMNS} FROM transfers WHERE key = %s", (key,))
        if row is None:
            return None
        record = record_from_row(row)
        self._remember(record)
        return record

    def peek(self, key: str) -> TransferRecord | None:
        """The record if this process has it cached (no statement: for hints only)."""
        return self._cached(key)

    def pending_summary(self, now: float) -> tuple[int, int]:
        """(files, bytes) announced and not yet stored over every live transfer (the metrics' gauges)."""
        row = self._one(
            "SELECT count(*), coalesce(sum(f.counted), 0) FROM transfers t JOIN transfer_files f ON f.key = t.key "
            "WHERE t.expires > %s AND f.state NOT IN (%s, %s)",
            (now, *_LIVE),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def remove(self, key: str) -> bool:
        self._forget(key)
        # the files go with it (ON DELETE CASCADE); of two nodes, one deletes the row
        return self._count("DELETE FROM transfers WHERE key = %s", (key,)) == 1

    def expired(self, now: float) -> list[TransferRecord]:
        rows = self._all(f"SELECT {_RECORD_COLUMNS} FROM transfers WHERE expires <= %s", (now,))
        return [record_from_row(row) for row in rows]

    def records(self) -> Iterable[TransferRecord]:
        return [record_from_row(row) for row in self._all(f"SELECT {_RECORD_COLUMNS} FROM transfers", ())]

    def live_owned(self, owner_dn: str | None, prefix: str, now: float) -> list[TransferRecord]:
        keys = self._all(
            "SELECT DISTINCT t.key FROM transfers t JOIN transfer_files f ON f.key = t.key "
            "WHERE t.owner_dn IS NOT DISTINCT FROM %s AND t.prefix = %s AND t.expires > %s "
            "AND f.state NOT IN (%s, %s)",
            (owner_dn, prefix, now, *_LIVE),
        )
        records = (self.get(key) for (key,) in keys)
        return [record for record in records if record is not None]

    def pending_totals(self, owner_dn: str | None, now: float) -> tuple[int, int]:
        return self.state.run(lambda connection: _pending_totals(connection, owner_dn, now))

    def expire_now(self, key: str, now: float) -> bool:
        """End ``key``'s life now (``gsitransfer-admin transfers --cancel``); False when there is no such key."""
        self._forget(key)
        return self._count("UPDATE transfers SET expires = %s WHERE key = %s AND expires > %s", (now, key, now)) > 0

    # -- files ------------------------------------------------------------------------

    def states(self, key: str) -> dict[int, FileState]:
        rows = self._all("SELECT num, state FROM transfer_files WHERE key = %s", (key,))
        return {int(num): FileState(state) for num, state in rows}

    def set_state(self, key: str, num: int, state: FileState) -> None:
        self._count(
            "UPDATE transfer_files SET state = %s, holder = %s WHERE key = %s AND num = %s",
            (state.value, self._holder(state), key, num),
        )

    def transition(self, key: str, num: int, before: FileState, after: FileState) -> bool:
        return self._count(
            "UPDATE transfer_files SET state = %s, holder = %s WHERE key = %s AND num = %s AND state = %s",
            (after.value, self._holder(after), key, num, before.value),
        ) == 1

    def progress(self, key: str) -> dict[int, tuple[int, str]]:
        rows = self._all(
            "SELECT num, received, partial FROM transfer_files WHERE key = %s AND (received > 0 OR partial != '')",
            (key,),
        )
        return {int(num): (int(received), str(partial)) for num, received, partial in rows}

    def set_progress(self, key: str, num: int, offset: int, partial: str) -> None:
        self._count(
            "UPDATE transfer_files SET received = %s, partial = %s WHERE key = %s AND num = %s",
            (offset, partial, key, num),
        )

    def release(self, key: str, num: int, offset: int, partial: str) -> bool:
        return self._count(
            "UPDATE transfer_files SET state = %s, holder = NULL, received = %s, partial = %s "
            "WHERE key = %s AND num = %s AND state = %s",
            (FileState.PENDING.value, offset, partial, key, num, FileState.RECEIVING.value),
        ) == 1

    def release_holder(self, holder: int) -> int:
        """Files a dead ``--workers`` worker (pid ``holder``, on this host) was receiving are pending again."""
        holders = self.state.hosts_holder(holder)
        if not holders:
            return 0
        return self._count(
            "UPDATE transfer_files SET state = %s, holder = NULL WHERE state = %s AND holder = ANY(%s)",
            (FileState.PENDING.value, FileState.RECEIVING.value, holders),
        )

    def release_unreceived(self, receiving: frozenset[tuple[str, int]]) -> int:
        """Files held by this process as receiving that it is not receiving (``receiving``: those it is)
        are pending again — their release failed while the database was away; how many."""
        rows = self._all(
            "SELECT key, num FROM transfer_files WHERE holder = %s AND state = %s",
            (self.state.holder, FileState.RECEIVING.value),
        )
        released = 0
        for key, num in rows:
            if (key, int(num)) not in receiving:
                released += self._count(
                    "UPDATE transfer_files SET state = %s, holder = NULL WHERE key = %s AND num = %s "
                    "AND state = %s AND holder = %s",
                    (FileState.PENDING.value, key, num, FileState.RECEIVING.value, self.state.holder),
                )
        return released

    # -- the rest ---------------------------------------------------------------------

    def ping(self) -> None:
        """``/healthz``: raises while the database is away (as the state's thread last found it,
        at most a few seconds ago): no statement on the reactor."""
        reason = self.state.unavailable
        if reason is not None:
            raise StateUnavailable(reason)

    def close(self) -> None:
        """Close the pool (the state is shared: the first close of the process's state closes it)."""
        self.state.close()

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return self.state.run(lambda connection: connection.execute(sql, params).fetchone())

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.state.run(lambda connection: connection.execute(sql, params).fetchall())

    def _count(self, sql: str, params: tuple[Any, ...]) -> int:
        return self.state.run(lambda connection: connection.execute(sql, params).rowcount)


def _insert(connection: psycopg.Connection[Any], record: TransferRecord) -> None:
    connection.execute(f"INSERT INTO transfers ({_RECORD_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", record_row(record))
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO transfer_files (key, num, state, counted) VALUES (%s, %s, %s, %s)",
            [
                (record.key, entry.num, record.initial_state(entry.num).value, entry.counted_size)
                for entry in record.manifest.files
            ],
        )


def _pending_totals(connection: psycopg.Connection[Any], owner_dn: str | None, now: float) -> tuple[int, int]:
    row = connection.execute(
        "SELECT count(*), coalesce(sum(f.counted), 0) FROM transfers t JOIN transfer_files f ON f.key = t.key "
        "WHERE t.owner_dn IS NOT DISTINCT FROM %s AND t.expires > %s AND f.state NOT IN (%s, %s)",
        (owner_dn, now, *_LIVE),
    ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


class PostgresBatchLog:
    """A BatchLog in PostgreSQL (each write is committed when it returns)."""

    def __init__(self, state: PostgresState) -> None:
        self.state = state

    def hold(self, key: str, num: int, held: str, final: str) -> None:
        self.state.run(
            lambda connection: connection.execute(
                "INSERT INTO batch_held (key, num, held, final) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key, num) DO UPDATE SET held = EXCLUDED.held, final = EXCLUDED.final",
                (key, num, held, final),
            )
        )

    def held_files(self, key: str) -> dict[int, tuple[str, str]]:
        rows = self.state.run(
            lambda connection: connection.execute(
                "SELECT num, held, final FROM batch_held WHERE key = %s", (key,)
            ).fetchall()
        )
        return {int(num): (held, final) for num, held, final in rows}

    def held_count(self, key: str) -> int:
        row = self.state.run(
            lambda connection: connection.execute("SELECT count(*) FROM batch_held WHERE key = %s", (key,)).fetchone()
        )
        return 0 if row is None else int(row[0])

    def drop(self, key: str, num: int) -> None:
        self.state.run(
            lambda connection: connection.execute("DELETE FROM batch_held WHERE key = %s AND num = %s", (key, num))
        )

    def begin(self, intent: BatchIntent) -> bool:
        files = intent_files_json(intent)
        cursor = self.state.run(
            lambda connection: connection.execute(
                "INSERT INTO batch_intents (key, prefix, owner_dn, files, holder) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (key) DO NOTHING",
                (intent.key, intent.prefix, intent.owner_dn, files, intent.holder),
            )
        )
        return bool(cursor.rowcount == 1)

    def intent(self, key: str) -> BatchIntent | None:
        row = self.state.run(
            lambda connection: connection.execute(
                "SELECT key, prefix, owner_dn, files, completed, holder FROM batch_intents WHERE key = %s", (key,)
            ).fetchone()
        )
        return None if row is None else intent_from_row(row)

    def intents(self) -> list[BatchIntent]:
        rows = self.state.run(
            lambda connection: connection.execute(
                "SELECT key, prefix, owner_dn, files, completed, holder FROM batch_intents"
            ).fetchall()
        )
        return [intent_from_row(row) for row in rows]

    def completed(self, key: str, num: int) -> None:
        self.state.run(
            lambda connection: connection.execute(
                "UPDATE batch_intents SET completed = completed || %s WHERE key = %s", (f" {num}", key)
            )
        )

    def abandon(self, key: str) -> None:
        self.state.run(lambda connection: connection.execute("DELETE FROM batch_intents WHERE key = %s", (key,)))

    def forget(self, key: str) -> None:
        def forget_both(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute("DELETE FROM batch_intents WHERE key = %s", (key,))
                connection.execute("DELETE FROM batch_held WHERE key = %s", (key,))

        self.state.run(forget_both)
