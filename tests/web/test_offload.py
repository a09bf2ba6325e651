"""Upload bodies written by a worker thread: order, back-pressure, failures, the web path.

The worker is a real thread; what it reports goes through a ``call_from_thread``
that queues callables, which the test runs on its own thread (as the reactor
would), with a bounded wait.
"""

from __future__ import annotations

import errno
import hashlib
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.task import Clock
from zope.interface import implementer

from gsitransfer import filesink
from gsitransfer.errors import InsufficientStorage
from gsitransfer.filesink import FileSink, is_temporary_name
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.offload import OffloadedSink

from .wire import channel, upload_head


# uploads go to worker threads only on a reactor that has them (and takes calls from them)
@implementer(IReactorThreads, IReactorFromThreads)
class Pump:
    """A stand-in for reactor.callFromThread: calls are run by ``run_until``."""

    def __init__(self) -> None:
        self.clock = Clock()  # the site's reactor also schedules its log-time updates
        self.callLater, self.seconds = self.clock.callLater, self.clock.seconds
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.calls.put((function, args))

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the worker"
            try:
                function, args = self.calls.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            function(*args)


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.errors: list[Any] = []

    def pause(self) -> None:
        self.events.append("pause")

    def resume(self) -> None:
        self.events.append("resume")

    def on_error(self, failure: Any) -> None:
        self.errors.append(failure)


def offloaded(path: Path, size: int, pump: Pump, rec: Recorder, **water: int) -> OffloadedSink:
    return OffloadedSink(FileSink(str(path), size), call_from_thread=pump.callFromThread,
                         pause=rec.pause, resume=rec.resume, on_error=rec.on_error, **water)


def temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if is_temporary_name(p.name)]


def test_chunks_written_in_order_then_committed(tmp_path):
    """Every chunk lands in order; drain, then commit puts the file under its name."""
    chunks = [bytes([i % 251]) * (1000 + i) for i in range(300)]
    data = b"".join(chunks)
    pump, rec = Pump(), Recorder()
    sink = offloaded(tmp_path / "f", len(data), pump, rec, batch_bytes=10_000)
    for chunk in chunks:
        sink.write(chunk)
    drained = sink.drain()
    pump.run_until(lambda: drained.called)
    assert sink.sink.hexdigest() == hashlib.md5(data).hexdigest() and sink.sink.received == len(data)
    committed = sink.commit()
    pump.run_until(lambda: committed.called)
    assert (tmp_path / "f").read_bytes() == data and temporaries(tmp_path) == []
    assert rec.errors == []


def test_pauses_above_high_water_resumes_at_low_water(tmp_path, monkeypatch):
    """A slow writer pauses the network once over high-water and resumes at low-water."""
    gate = threading.Event()
    real_store = FileSink.store

    def slow_store(self: FileSink, data: bytes) -> None:
        gate.wait(10)
        real_store(self, data)

    monkeypatch.setattr(FileSink, "store", slow_store)
    pump, rec = Pump(), Recorder()
    sink = offloaded(tmp_path / "f", 100_000, pump, rec, batch_bytes=1000, high_water=10_000,
                     low_water=2000)
    for _ in range(30):
        sink.write(b"x" * 1000)
    assert rec.events == ["pause"] and sink.paused
    assert sink.peak_queued <= 30_000
    gate.set()
    pump.run_until(lambda: "resume" in rec.events)
    for _ in range(70):
        sink.write(b"x" * 1000)
    drained = sink.drain()
    pump.run_until(lambda: drained.called)
    assert sink.sink.received == 100_000
    assert rec.events.count("pause") == rec.events.count("resume")
    sink.discard()


def test_disk_full_reported_once_and_temporary_removed(tmp_path, monkeypatch):
    """ENOSPC in the worker reaches on_error as InsufficientStorage; the .part is gone."""
    calls = {"n": 0}
    real = filesink.os.write

    def failing(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(filesink.os, "write", failing)
    pump, rec = Pump(), Recorder()
    sink = offloaded(tmp_path / "f", 10_000, pump, rec, batch_bytes=1000)
    for _ in range(10):
        sink.write(b"y" * 1000)
    pump.run_until(lambda: bool(rec.errors))
    assert rec.errors[0].check(InsufficientStorage)
    sink.write(b"more")  # ignored after the failure
    assert len(rec.errors) == 1
    assert temporaries(tmp_path) == [] and not (tmp_path / "f").exists()


def test_failure_after_the_last_byte_fails_drain(tmp_path, monkeypatch):
    """A write failing once the body is complete errbacks drain instead of on_error."""
    monkeypatch.setattr(filesink.os, "write",
                        lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    pump, rec = Pump(), Recorder()
    sink = offloaded(tmp_path / "f", 10, pump, rec)
    sink.write(b"0123456789")
    drained = sink.drain()
    outcome: list[Any] = []
    drained.addErrback(outcome.append)
    pump.run_until(lambda: bool(outcome))
    assert outcome[0].check(InsufficientStorage) and rec.errors == []
    assert temporaries(tmp_path) == []


def test_discard_removes_the_temporary(tmp_path):
    """discard mid-body: the worker drops what is queued and removes the .part."""
    pump, rec = Pump(), Recorder()
    sink = offloaded(tmp_path / "f", 10**6, pump, rec, batch_bytes=1000)
    for _ in range(50):
        sink.write(b"z" * 1000)
    sink.discard()
    sink._thread.join(10)
    assert not sink._thread.is_alive()
    assert temporaries(tmp_path) == [] and not (tmp_path / "f").exists()


def test_identical_file_in_place_is_hashed_by_the_worker(tmp_path, monkeypatch):
    """A retry onto the same bytes already in place (after a crash): the worker, not the
    reactor thread, reads and hashes the existing file, and the commit counts it as placed."""
    data = bytes(range(256)) * 8192  # 2 MiB
    (tmp_path / "f").write_bytes(data)
    threads: list[str] = []
    holds = filesink._holds

    def recording_holds(*args: Any) -> bool:
        threads.append(threading.current_thread().name)
        return holds(*args)

    monkeypatch.setattr(filesink, "_holds", recording_holds)
    pump, rec = Pump(), Recorder()
    sink = offloaded(tmp_path / "f", len(data), pump, rec)
    sink.write(data)
    drained = sink.drain()
    pump.run_until(lambda: drained.called)
    committed = sink.commit()
    pump.run_until(lambda: committed.called)
    assert threads == ["gsitransfer-write"] and sink.sink.already_present
    assert (tmp_path / "f").read_bytes() == data and temporaries(tmp_path) == []


def test_inline_commit_hashes_at_most_the_offload_threshold(tmp_path):
    """On the reactor thread (InlineSink) an existing file is hashed only if it has the
    body's size, and such bodies are at most OFFLOAD_THRESHOLD: a file of another size is a
    conflict at once, without reading it."""
    from gsitransfer.errors import UploadConflict
    from gsitransfer.web.offload import OFFLOAD_THRESHOLD, InlineSink

    (tmp_path / "f").write_bytes(b"\0" * (4 * OFFLOAD_THRESHOLD))
    sink = InlineSink(FileSink(str(tmp_path / "f"), 3))
    sink.write(b"new")
    committed = sink.commit()
    failures: list[Any] = []
    committed.addErrback(failures.append)
    assert failures and failures[0].check(UploadConflict)


# -- through the web layer ------------------------------------------------------

BIG = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def server(tmp_path) -> HTTPTransferServer:
    """A server whose uploads always go through the worker threads (offload threshold 0)."""
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", DirectoryStore(str(tmp_path / "store")))
    server.offload_threshold = 0
    return server


@pytest.fixture
def threaded(server, engine, anonymous, tmp_path):
    """The server's site on a Pump (worker threads report to it), and a transfer of BIG."""
    pump = Pump()
    site = server.site(reactor=pump)
    manifest = Manifest.of(("big.bin", len(BIG), hashlib.md5(BIG).hexdigest())).to_ini().encode()
    key = engine.post_manifest("data", manifest, anonymous).result.transfer_key
    return server, site, pump, key, tmp_path / "store"


def test_threaded_upload_stored_and_answered(threaded):
    """A body written by the worker is verified, stored and answered 200."""
    server, site, pump, key, store = threaded
    conn = SiteConnection(site)
    conn.send(upload_head(key, len(BIG)))
    receiver = channel(conn).requests[-1].receiver
    assert isinstance(receiver.writer, OffloadedSink)  # the worker threads, not inline
    for start in range(0, len(BIG), 16384):
        conn.send(BIG[start:start + 16384])
    pump.run_until(lambda: conn.output().startswith(b"HTTP/1.1 "))
    assert conn.output().startswith(b"HTTP/1.1 200"), conn.output()
    assert (store / "big.bin").read_bytes() == BIG and temporaries(store) == []
    assert server.transfers.states(key)[0].value == "stored"


def test_threaded_checksum_mismatch_is_422(threaded):
    """A wrong body through the worker: 422, nothing stored, the file pending again."""
    server, site, pump, key, store = threaded
    conn = SiteConnection(site)
    conn.send(upload_head(key, len(BIG)) + b"\0" * len(BIG))
    pump.run_until(lambda: conn.output().startswith(b"HTTP/1.1 "))
    assert conn.output().startswith(b"HTTP/1.1 422")
    pump.run_until(lambda: temporaries(store) == [])
    assert not (store / "big.bin").exists()
    assert server.transfers.states(key)[0].value == "pending"


def test_threaded_dropped_connection_keeps_what_arrived(threaded):
    """A connection lost mid-body: the writer syncs the partial, then the offset is recorded
    (never more than the partial holds, the bytes those sent); the file is pending."""
    server, site, pump, key, store = threaded
    conn = SiteConnection(site)
    conn.send(upload_head(key, len(BIG)) + BIG[: len(BIG) // 2])
    conn.drop()
    pump.run_until(lambda: server.transfers.states(key)[0].value == "pending")
    assert not (store / "big.bin").exists() and temporaries(store) == []
    held, partial = server.transfers.progress(key)[0]
    assert 0 < held <= len(BIG) // 2
    with open(partial, "rb") as kept:
        assert kept.read()[:held] == BIG[:held]


def test_threaded_disk_full_is_507(threaded, monkeypatch):
    """ENOSPC in the worker while the body arrives: 507, connection closed, no .part."""
    server, site, pump, key, store = threaded
    monkeypatch.setattr(filesink.os, "write",
                        lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    conn = SiteConnection(site)
    conn.send(upload_head(key, len(BIG)) + BIG[:300_000])

    def answered() -> bool:
        conn.clock.advance(0)  # the refusal goes out on the next turn of the reactor
        return conn.output().startswith(b"HTTP/1.1 ")

    pump.run_until(answered)
    assert conn.output().startswith(b"HTTP/1.1 507"), conn.output()
    assert temporaries(store) == [] and server.transfers.states(key)[0].value == "pending"
