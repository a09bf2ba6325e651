"""TableCalls' pauses when a table through a thread finds a lock held elsewhere (``TableBusy``), on a task.Clock.

The table here answers at once but says it runs off the reactor, so every
call goes the thread's way (``deferred_call``) without a thread: what is
tested is the retrying, not PostgreSQL (tests/integration/test_nodes.py
holds a real person's lock in a real database).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from twisted.internet import defer, task

from gsitransfer.batchlog import MemoryBatchLog
from gsitransfer.errors import StateUnavailable, TableBusy
from gsitransfer.tablecalls import BUSY_SECONDS, FIRST_PAUSE, LONGEST_PAUSE, TableCalls


class BusyTable:
    """A table whose ``pending_totals`` finds the lock held ``busy`` times, then answers."""

    runs_off_reactor = True

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.calls = 0

    def deferred_call(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return defer.execute(function, *args)

    def pending_totals(self, owner_dn: str | None, now: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.busy:
            raise TableBusy("the pending-files lock of /CN=alice")
        return (3, 300)


def results(deferred: defer.Deferred[Any]) -> list[Any]:
    got: list[Any] = []
    deferred.addBoth(got.append)
    return got


def test_a_busy_call_is_made_again_after_growing_pauses_then_answers() -> None:
    clock = task.Clock()
    table = BusyTable(busy=5)
    calls = TableCalls(table, MemoryBatchLog(), scheduler=clock)  # type: ignore[arg-type]
    got = results(calls.pending_totals("/CN=alice", 0.0))
    assert got == [] and table.calls == 1
    pauses = []
    for _ in range(5):
        pending = clock.getDelayedCalls()
        assert len(pending) == 1
        pauses.append(pending[0].getTime() - clock.seconds())
        clock.advance(pauses[-1])
    assert pauses == pytest.approx([min(FIRST_PAUSE * 2**step, LONGEST_PAUSE) for step in range(5)])
    assert got == [(3, 300)] and table.calls == 6 and not clock.getDelayedCalls()


def test_a_lock_held_past_the_limit_is_a_503_with_one_line() -> None:
    clock = task.Clock()
    table = BusyTable(busy=10**6)
    calls = TableCalls(table, MemoryBatchLog(), scheduler=clock)  # type: ignore[arg-type]
    got = results(calls.pending_totals("/CN=alice", 0.0))
    for _ in range(int(BUSY_SECONDS / FIRST_PAUSE) + 10):  # bounded: more than enough pauses
        if got:
            break
        clock.advance(LONGEST_PAUSE)
    assert len(got) == 1
    error = got[0].value
    assert isinstance(error, StateUnavailable) and "\n" not in str(error)
    assert "busy" in str(error) and "/CN=alice" in str(error)
    assert BUSY_SECONDS - LONGEST_PAUSE <= clock.seconds() <= BUSY_SECONDS + LONGEST_PAUSE
    assert not clock.getDelayedCalls()


def test_other_errors_and_tables_that_answer_at_once_are_not_retried() -> None:
    clock = task.Clock()

    class Failing(BusyTable):
        def pending_totals(self, owner_dn: str | None, now: float) -> tuple[int, int]:
            self.calls += 1
            raise StateUnavailable("the transfer database is not reachable")

    table = Failing(busy=0)
    got = results(TableCalls(table, MemoryBatchLog(), scheduler=clock).pending_totals(None, 0.0))  # type: ignore[arg-type]
    assert isinstance(got[0].value, StateUnavailable) and table.calls == 1 and not clock.getDelayedCalls()

    at_once = BusyTable(busy=1)
    at_once.runs_off_reactor = False
    got = results(TableCalls(at_once, MemoryBatchLog(), scheduler=clock).pending_totals(None, 0.0))  # type: ignore[arg-type]
    assert isinstance(got[0].value, TableBusy) and not clock.getDelayedCalls()
    with pytest.raises(TableBusy):
        got[0].raiseException()
