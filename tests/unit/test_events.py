"""The event fanout (one thread per process feeding every sink in batches) and the metrics' batch counting."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

from gsitransfer import events as events_module
from gsitransfer.events import EventFanout, Run, TransferEvent


class Recording:
    """A sink that keeps what it takes (and on which thread)."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[TransferEvent]] = []
        self.runs: list[Run] = []
        self.threads: set[str] = set()
        self.closed = False
        self.fail = fail

    def take(self, runs: Sequence[Run]) -> None:
        self.threads.add(threading.current_thread().name)
        self.runs.extend(runs)
        self.batches.append(records_of(runs))
        if self.fail:
            raise OSError("disk full")

    def close(self) -> None:
        self.closed = True

    def names(self) -> list[str | None]:
        return [event.name for batch in self.batches for event in batch]


def records_of(runs: Sequence[Run]) -> list[TransferEvent]:
    """Every record of ``runs``, one per time, in order."""
    return [event._replace(time=when) for event, times in runs for when in times]


def wait_for(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met")


def test_records_reach_every_sink_in_order_in_batches_on_the_fanouts_thread():
    first, second = Recording(), Recording()
    fanout = EventFanout((first, second))
    for number in range(500):
        fanout.emit(TransferEvent("download", time.time(), name=str(number)))
    wait_for(lambda: len(first.names()) == 500 and len(second.names()) == 500)
    assert first.names() == second.names() == [str(number) for number in range(500)]
    assert len(first.batches) < 500  # gathered, not one hand-over per record
    assert first.threads == {"gsitransfer-events"}
    fanout.close()
    assert first.closed and second.closed


def test_flush_hands_over_at_once_and_close_hands_over_what_is_left():
    sink = Recording()
    fanout = EventFanout((sink,))
    fanout.emit(TransferEvent("upload", time.time(), name="a"))
    fanout.flush()
    assert sink.names() == ["a"]
    fanout.emit(TransferEvent("upload", time.time(), name="b"))
    fanout.close()
    assert sink.names() == ["a", "b"] and sink.closed


def test_past_the_queue_limit_the_caller_hands_over_itself(monkeypatch):
    monkeypatch.setattr(events_module, "QUEUE_RECORDS", 3)
    monkeypatch.setattr(events_module, "GATHER_SECONDS", 3600.0)  # the thread never wakes in this test
    sink = Recording()
    fanout = EventFanout((sink,))
    for number in range(4):
        fanout.emit(TransferEvent("download", time.time(), name=str(number)))
    assert sink.names() == ["0", "1", "2", "3"] and sink.threads == {threading.current_thread().name}
    fanout.close()


def test_a_failing_sink_does_not_stop_the_others_or_the_thread():
    failing, healthy = Recording(fail=True), Recording()
    fanout = EventFanout((failing, healthy))
    fanout.emit(TransferEvent("download", time.time(), name="a"))
    wait_for(lambda: healthy.names() == ["a"])
    fanout.emit(TransferEvent("download", time.time(), name="b"))
    wait_for(lambda: healthy.names() == ["a", "b"])
    assert failing.names() == ["a", "b"]
    fanout.close()


def test_no_sink_no_thread():
    before = threading.active_count()
    fanout = EventFanout()
    assert not fanout and threading.active_count() == before
    fanout.close()


def test_counting_a_batch_gives_what_counting_each_record_gives():
    """Metrics.take counts each kind of record once per batch: the exposition equals one record at a time."""
    from prometheus_client import generate_latest

    from gsitransfer.metrics import Metrics

    chooser = random.Random(11)
    records = [
        TransferEvent(
            chooser.choice(["upload", "download", "manifest", "refusal", "cancel", "expiry", "delete"]), time.time(),
            prefix=chooser.choice(["data", "raw", None]), bytes=chooser.choice([None, 0, 5, 1 << 30]),
            status=chooser.choice([None, 200, 201, 204, 403, 404, 409, 503]),
            duration_s=chooser.choice([None, 0.003, 0.2, 7.5]),
            action=chooser.choice([None, "upload", "download", "manifest", "cancel", "delete", "expiry", "other"]),
        )
        for _ in range(3000)
    ]
    batched, single = Metrics(), Metrics()
    for start in range(0, len(records), 700):
        batched.take([Run(record, (record.time,)) for record in records[start:start + 700]])
    for record in records:
        single.take([Run(record, (record.time,))])
    def exposition(metrics: Metrics) -> list[bytes]:  # without the families' creation times
        return [line for line in generate_latest(metrics.registry).splitlines() if b"_created" not in line]

    assert exposition(batched) == exposition(single)
    assert any(line.startswith(b"gsitransfer_downloads_total") for line in exposition(batched))


def get_record(peer: str, name: str, sent: int, when: float) -> TransferEvent:
    return TransferEvent("download", when, dn="/CN=alice", peer=peer, prefix="data", name=name, bytes=sent, status=200)


def test_records_emitted_later_with_equal_arguments_are_one_run_in_order(monkeypatch):
    """emit_later: consecutive equal arguments are one run with every time (anything between ends the run);
    alike records are made once per batch."""
    monkeypatch.setattr(events_module, "GATHER_SECONDS", 3600.0)  # the thread never wakes in this test
    sink = Recording()
    fanout = EventFanout((sink,))
    made: list[tuple[object, ...]] = []

    def make(*arguments: object) -> TransferEvent:
        made.append(arguments)
        return get_record(*arguments)  # type: ignore[arg-type]

    plan = [("10.0.0.1", "a", 5)] * 3 + [("10.0.0.2", "a", 5)] + [("10.0.0.2", "a", 5)] + [None] + [("10.0.0.2", "a", 5)]
    expected = []
    for number, arguments in enumerate(plan):
        if arguments is None:
            record = TransferEvent("upload", 1000.0 + number, name="u")
            fanout.emit(record)
        else:
            record = get_record(*arguments, 1000.0 + number)
            fanout.emit_later(make, arguments, 1000.0 + number)
        expected.append(record)
    fanout.flush()
    assert [len(run.times) for run in sink.runs] == [3, 2, 1, 1]
    assert sink.batches == [expected]
    assert len(made) == 2  # made once per batch for alike arguments: the last run shares the second's record
    assert sink.runs[3].event is sink.runs[1].event
    fanout.close()


def test_counting_runs_gives_what_counting_each_record_gives():
    """Metrics.take of runs (a record once, many times) equals taking each record alone."""
    from prometheus_client import generate_latest

    from gsitransfer.metrics import Metrics

    chooser = random.Random(5)
    records = [
        TransferEvent(chooser.choice(["download", "upload", "refusal"]), 1.0, prefix=chooser.choice(["data", "raw"]),
                      bytes=chooser.choice([None, 7, 65536]), status=chooser.choice([200, 201, 404]),
                      duration_s=chooser.choice([None, 0.01, 3.0]))
        for _ in range(100)
    ]  # runs share them, as alike records share one object in a batch
    runs = [Run(chooser.choice(records), [1.0 + step for step in range(chooser.randint(1, 40))]) for _ in range(300)]
    together, alone = Metrics(), Metrics()
    together.take(runs)
    for record in records_of(runs):
        alone.take([Run(record, (record.time,))])

    def exposition(metrics: Metrics) -> list[bytes]:
        return [line for line in generate_latest(metrics.registry).splitlines() if b"_created" not in line]

    assert exposition(together) == exposition(alone)
