"""``--workers N``: a supervisor and N worker processes sharing the listening sockets."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from gsitransfer.keys import FileState
from gsitransfer.transfers_db import SQLiteTransferTable
from tests.support.http import manifest_for, post_manifest, request
from tests.support.server import ServerProcess

from .helpers import (
    open_socket,
    in_flight,
    part_files,
    upload_holder,
    read_response,
    request_head,
    running,
    server_args,
    wait_for,
)

WORKERS = ["--workers", "2"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in status


def _upload(base: str, key: str, num: int, data: bytes) -> int:
    return request(base, "POST", f"/data/{key}/{num}", data).status


def test_workers_serve_uploads_and_downloads(tmp_path: Path) -> None:
    """With --workers 2 there are two worker processes; 20 files go up on 20 connections and come back intact."""
    files = [(f"f{i}.dat", os.urandom(1000 + i)) for i in range(20)]
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store", *WORKERS))) as server:
        base = server.url()
        wait_for(lambda: len(server.worker_pids()) == 2, 20, "two workers")
        key = post_manifest(base, "data", files)
        for num, (name, data) in enumerate(files):
            assert _upload(base, key, num, data) == 200
        for name, data in files:
            answer = request(base, "GET", f"/data/{name}")
            assert answer.status == 200 and answer.body == data
        log = server.log_text()
    assert "worker 1 started" in log and "worker 2 started" in log
    assert "Unhandled Error" not in log and "Traceback" not in log


@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "no-fast-paths"])
def test_workers_serve_with_and_without_fast_paths_and_relay_access_lines(tmp_path: Path, fast: bool) -> None:
    """--no-fast-paths reaches the workers; either way a file goes up and back and its access line reaches the log."""
    data = os.urandom(3000)
    extra = [] if fast else ["--no-fast-paths"]
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store", *WORKERS, *extra))) as server:
        base = server.url()
        wait_for(lambda: len(server.worker_pids()) == 2, 20, "two workers")
        if not fast:
            for pid in server.worker_pids():
                assert b"--no-fast-paths" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        key = post_manifest(base, "data", [("fp.dat", data)])
        assert _upload(base, key, 0, data) == 200
        answer = request(base, "GET", "/data/fp.dat")
        assert answer.status == 200 and answer.body == data
        wait_for(lambda: '"GET /data/fp.dat HTTP/1.1" 200' in server.log_text(), 10, "the access line")
        log = server.log_text()
    assert any(line.split("worker ", 1)[-1][:1].isdigit() for line in log.splitlines() if "GET /data/fp.dat" in line)
    assert "Unhandled Error" not in log and "Traceback" not in log


def test_key_posted_to_one_worker_is_used_on_another(tmp_path: Path) -> None:
    """A key is usable whichever worker takes the next connection: every state is in the shared database."""
    data = os.urandom(5000)
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store", *WORKERS))) as server:
        base = server.url()
        wait_for(lambda: len(server.worker_pids()) == 2, 20, "two workers")
        keys = [post_manifest(base, "data", [(f"k{i}", data)]) for i in range(10)]
        for key in keys:
            assert request(base, "GET", f"/data/{key}").status == 200
            assert _upload(base, key, 0, data) == 200
            assert _upload(base, key, 0, data) == 409


def _race(
    path: str,
    key: str,
    ready: "multiprocessing.Queue[int]",
    start: multiprocessing.synchronize.Event,
    results: "multiprocessing.Queue[bool]",
) -> None:
    table = SQLiteTransferTable(path, reset_receiving=False)
    ready.put(os.getpid())
    start.wait(10)
    results.put(table.transition(key, 0, FileState.PENDING, FileState.RECEIVING))
    table.close()


def test_exactly_one_process_wins_a_file(tmp_path: Path) -> None:
    """Eight processes moving the same file to receiving at once: exactly one succeeds, its pid recorded."""
    from gsitransfer.core import TransferServer

    path = str(tmp_path / "transfers.sqlite")
    table = SQLiteTransferTable(path)
    server = TransferServer(transfers=table, public_url="http://127.0.0.1:1")
    from gsitransfer.identity import IdToken

    key = server.RegisterManifest(manifest_for([("a", b"a")]), IdToken(dn=None))
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results: "multiprocessing.Queue[bool]" = context.Queue()
    ready: "multiprocessing.Queue[int]" = context.Queue()
    racers = [context.Process(target=_race, args=(path, key, ready, start, results)) for _ in range(8)]
    for racer in racers:
        racer.start()
    # every racer has its table open and waits for the start
    assert sorted(ready.get(timeout=30) for _ in racers) == sorted(racer.pid for racer in racers)
    start.set()
    outcomes = [results.get(timeout=30) for _ in racers]
    for racer in racers:
        racer.join(10)
    assert sorted(outcomes) == [False] * 7 + [True]
    holder = table._db.execute("SELECT holder FROM transfer_files WHERE key = ?", (key,)).fetchone()[0]
    assert holder in {racer.pid for racer in racers}
    assert table.release_holder(holder) == 1
    assert table.states(key) == {0: FileState.PENDING}


def test_dead_worker_is_restarted_and_its_file_is_pending_again(tmp_path: Path) -> None:
    """SIGKILL the worker receiving a body: it is restarted, the file is pending again (its partial kept,
    no temporary left), the file can be sent again."""
    store = tmp_path / "store"
    data = os.urandom(200_000)
    with running(ServerProcess(tmp_path, server_args(store, *WORKERS))) as server:
        base = server.url()
        wait_for(lambda: len(server.worker_pids()) == 2, 20, "two workers")
        key = post_manifest(base, "data", [("big.dat", data)])
        with open_socket(base) as sock:
            sock.sendall(request_head("POST", f"/data/{key}/0", {"Content-Length": str(len(data))}))
            sock.sendall(data[:1000])
            wait_for(lambda: in_flight(store), 10, "the upload's partial file")
            holder = int(wait_for(lambda: upload_holder(store, key), 10, "the upload's holder"))
            assert holder in server.worker_pids()
            os.kill(holder, signal.SIGKILL)
            wait_for(lambda: "restarting it" in server.log_text(), 10, "the restart")
            wait_for(lambda: upload_holder(store, key) is None, 10, "the file given back")
            assert not part_files(store)
            wait_for(lambda: len(server.worker_pids()) == 2, 20, "two workers again")
            assert holder not in server.worker_pids()
        state = request(base, "GET", f"/data/{key}")
        assert '"state": "pending"' in state.text or '"state":"pending"' in state.text
        assert _upload(base, key, 0, data) == 200
        assert request(base, "GET", "/data/big.dat").body == data
        assert "pending again" in server.log_text()


def test_sigterm_lets_an_upload_finish_and_stops_every_worker(tmp_path: Path) -> None:
    """SIGTERM to the supervisor: the body in flight still completes (200), then every process exits."""
    store = tmp_path / "store"
    data = os.urandom(100_000)
    server = ServerProcess(tmp_path, server_args(store, *WORKERS, "--shutdown-grace", "20"))
    with running(server):
        base = server.url()
        workers = wait_for(lambda: server.worker_pids() if len(server.worker_pids()) == 2 else None, 20, "two workers")
        key = post_manifest(base, "data", [("late.dat", data)])
        with open_socket(base) as sock:
            sock.sendall(request_head("POST", f"/data/{key}/0", {"Content-Length": str(len(data))}))
            sock.sendall(data[:50_000])
            wait_for(lambda: in_flight(store), 10, "the upload in flight")
            server.signal(signal.SIGTERM)
            wait_for(lambda: "waiting up to" in server.log_text(), 10, "a worker waiting for the upload")
            sock.sendall(data[50_000:])
            assert read_response(sock).status == 200
        assert server.process is not None
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.log_text()
        assert "worker 1 (pid" in log and "worker 2 (pid" in log and "stopped" in log
    for pid in workers:
        wait_for(lambda: not _alive(pid), 10, f"worker {pid} gone")
    assert (store / "late.dat").read_bytes() == data
    assert not in_flight(store)


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL of the supervisor takes the workers with it: nothing keeps the port or the files."""
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store", *WORKERS))) as server:
        workers = wait_for(lambda: server.worker_pids() if len(server.worker_pids()) == 2 else None, 20, "two workers")
        server.kill()
    for pid in workers:
        wait_for(lambda: not _alive(pid), 10, f"worker {pid} gone")


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_bad_worker_count_is_one_line(tmp_path: Path, value: str) -> None:
    """--workers outside 1..64 or not a number: one line on stderr, exit status 2."""
    server = ServerProcess(tmp_path, server_args(tmp_path / "store", "--workers", value))
    with pytest.raises(RuntimeError) as failure:
        server.start()
    text = str(failure.value)
    assert "error: --workers" in text
    assert "Traceback" not in text
