"""The engine's calls to its transfer table and batch log, each a Deferred (SPEC 9.1: never blocking the reactor).

A table answers either *at once* — the memory table, and SQLite (a local
file: one short statement, as the directory store's own metadata) — or
*through its own thread*: the PostgreSQL table
(:class:`~gsitransfer.postgres.PostgresTransferTable`) offers
``deferred_call(function, *args)``, which runs the call on the one thread of
its process's :class:`~gsitransfer.postgres.PostgresState` and fires on the
reactor. That thread runs calls in the order they were made, so the table
sees the same sequence of statements as when the reactor made them itself;
the reactor serves other connections meanwhile.

A table that answers at once gives Deferreds that have already fired: the
engine's ``inlineCallbacks`` steps then run without a pause, exactly as
straight-line code — the memory and SQLite tables behave as before.

A call through the thread never waits there for another node: where it would
(a person's quota lock, held while another node registers a manifest of the
same person) the table raises :class:`~gsitransfer.errors.TableBusy`, and
the call is made again after a pause on the reactor (:data:`FIRST_PAUSE`,
doubling to :data:`LONGEST_PAUSE`) — the thread runs the other requests'
statements meanwhile — until :data:`BUSY_SECONDS` have passed: then
:class:`~gsitransfer.errors.StateUnavailable` (``503``).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .batchlog import BatchIntent, BatchLog
from .errors import StateUnavailable, TableBusy
from .keys import FileState, TransferRecord, TransferTable

T = TypeVar("T")

Deferred = defer.Deferred

#: seconds before a call that found a lock held elsewhere is made again; each further pause doubles, up to
FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.25
#: seconds a call keeps finding a lock held before the request is answered 503 (the statements' own timeout)
BUSY_SECONDS = 10.0


def _reactor() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


class TableCalls:
    """Every TransferTable and BatchLog method the engine uses, returning a Deferred."""

    def __init__(self, table: TransferTable, batches: BatchLog, scheduler: IReactorTime | None = None) -> None:
        self.table = table
        self.batches = batches
        self._deferred_call: Callable[..., Deferred[Any]] | None = (
            getattr(table, "deferred_call", None) if getattr(table, "runs_off_reactor", False) else None
        )
        #: the pauses' clock: the engine's timer (the reactor; tests give a task.Clock), else the global reactor
        self._scheduler = scheduler

    def _call(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        deferred_call = self._deferred_call
        if deferred_call is None:
            return defer.execute(function, *args)
        scheduler = self._scheduler or _reactor()
        deadline = scheduler.seconds() + BUSY_SECONDS
        pause = FIRST_PAUSE

        def again_if_busy(failure: Failure) -> Deferred[T]:
            nonlocal pause
            failure.trap(TableBusy)
            if scheduler.seconds() + pause > deadline:
                raise StateUnavailable(
                    f"the transfer database is busy: {failure.value} has been held elsewhere for "
                    f"{BUSY_SECONDS:g} s; try again later"
                )
            waited: Deferred[T] = task.deferLater(
                scheduler, pause, deferred_call, function, *args  # type: ignore[arg-type]
            )
            pause = min(pause * 2, LONGEST_PAUSE)
            return waited.addErrback(again_if_busy)

        return deferred_call(function, *args).addErrback(again_if_busy)

    # -- the transfer table ---------------------------------------------------------------

    def get(self, key: str) -> Deferred[TransferRecord | None]:
        return self._call(self.table.get, key)

    def states(self, key: str) -> Deferred[dict[int, FileState]]:
        return self._call(self.table.states, key)

    def set_state(self, key: str, num: int, state: FileState) -> Deferred[None]:
        return self._call(self.table.set_state, key, num, state)

    def transition(self, key: str, num: int, before: FileState, after: FileState) -> Deferred[bool]:
        return self._call(self.table.transition, key, num, before, after)

    def remove(self, key: str) -> Deferred[bool]:
        return self._call(self.table.remove, key)

    def progress(self, key: str) -> Deferred[dict[int, tuple[int, str]]]:
        return self._call(self.table.progress, key)

    def set_progress(self, key: str, num: int, offset: int, partial: str) -> Deferred[None]:
        return self._call(self.table.set_progress, key, num, offset, partial)

    def release(self, key: str, num: int, offset: int, partial: str) -> Deferred[bool]:
        return self._call(self.table.release, key, num, offset, partial)

    def expired(self, now: float) -> Deferred[list[TransferRecord]]:
        return self._call(self.table.expired, now)

    def pending_totals(self, owner_dn: str | None, now: float) -> Deferred[tuple[int, int]]:
        return self._call(self.table.pending_totals, owner_dn, now)

    def live_owned(self, owner_dn: str | None, prefix: str, now: float) -> Deferred[list[TransferRecord]]:
        return self._call(self.table.live_owned, owner_dn, prefix, now)

    def add_within(
        self, record: TransferRecord, max_files: int | None, max_bytes: int | None, now: float
    ) -> Deferred[tuple[int, int] | None]:
        return self._call(self.table.add_within, record, max_files, max_bytes, now)

    def release_unreceived(self, receiving: frozenset[tuple[str, int]]) -> Deferred[int]:
        """Files this process holds but no longer receives are pending again (tables with holders; else 0)."""
        release = getattr(self.table, "release_unreceived", None)
        if release is None:
            return defer.succeed(0)
        return self._call(release, receiving)

    def known(self, key: str) -> TransferRecord | None:
        """The record, when it can be had without waiting (a table answering at once, or the
        record cached by this process); else None. For what is only a hint (an audit line's name)."""
        if self._deferred_call is None:
            return self.table.get(key)
        peek = getattr(self.table, "peek", None)
        return None if peek is None else peek(key)

    # -- the batch log --------------------------------------------------------------------

    def hold(self, key: str, num: int, held: str, final: str) -> Deferred[None]:
        return self._call(self.batches.hold, key, num, held, final)

    def held_files(self, key: str) -> Deferred[dict[int, tuple[str, str]]]:
        return self._call(self.batches.held_files, key)

    def held_count(self, key: str) -> Deferred[int]:
        return self._call(self.batches.held_count, key)

    def drop(self, key: str, num: int) -> Deferred[None]:
        return self._call(self.batches.drop, key, num)

    def begin(self, intent: BatchIntent) -> Deferred[bool]:
        return self._call(self.batches.begin, intent)

    def intent(self, key: str) -> Deferred[BatchIntent | None]:
        return self._call(self.batches.intent, key)

    def intents(self) -> Deferred[list[BatchIntent]]:
        return self._call(self.batches.intents)

    def completed(self, key: str, num: int) -> Deferred[None]:
        return self._call(self.batches.completed, key, num)

    def abandon(self, key: str) -> Deferred[None]:
        return self._call(self.batches.abandon, key)

    def forget(self, key: str) -> Deferred[None]:
        return self._call(self.batches.forget, key)
