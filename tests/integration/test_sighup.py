"""SIGHUP never stops the service: not while a process starts, not during the shutdown grace.

A ``fetch-crl`` cron job sends SIGHUP whenever it has new CRLs, with no
regard for what the server is doing. Each test signals a process in a state
it is provably in (held at a start-up gate by ``tests.integration.startup_gate``,
or waiting in SIGTERM's grace for an upload), then checks that nothing died:
the same worker pids serve, the upload is stored, and a SIGHUP that came
while a process started became one reload once it served.
"""

from __future__ import annotations

import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from tests.support.http import post_manifest
from tests.support.server import ServerProcess

from .helpers import (
    in_flight,
    open_socket,
    part_files,
    read_response,
    request_head,
    running,
    server_args,
    upload_holder,
    wait_for,
)
from .startup_gate import arrived

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGHUP") or not Path("/proc/self/status").exists(),
    reason="SIGHUP and /proc (Linux)",
)

GATED = "gate=tests.integration.startup_gate:gated"
#: a reload line of the twistd process itself (not one relayed from a worker)
_MAIN_RELOAD = re.compile(r"\] reloading trust and grid-mapfile")

T = TypeVar("T")


@pytest.fixture(autouse=True)
def sighup_as_from_a_shell() -> Iterator[None]:
    """Servers start with SIGHUP's default action, unblocked (as from a shell), whatever this process holds."""
    disposition = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGHUP, disposition)


def ignores_sighup(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGHUP (its ``SigIgn`` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def hup(pid: int, times: int = 1) -> None:
    """Send SIGHUP ``times`` times to ``pid`` (a process already gone is skipped)."""
    for _ in range(times):
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return


def gated_server(tmp_path: Path, *extra: str) -> tuple[ServerProcess, Path]:
    """A plain-HTTP server with a ``gate`` handler holding its start-up; the gate directory."""
    gate = tmp_path / "gate"
    gate.mkdir()
    args = server_args(tmp_path / "store", "--handler", GATED, *extra)
    return ServerProcess(tmp_path, args, env={"GSITRANSFER_TEST_GATE": str(gate)}), gate


def start_while(server: ServerProcess, meanwhile: Callable[[], T]) -> T:
    """Start ``server`` (waiting until it serves) while ``meanwhile`` runs on another thread; its result."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        running_meanwhile = pool.submit(meanwhile)
        try:
            server.start(timeout=60)
        except BaseException:
            (server.workdir / "gate" / "main.open").touch()
            (server.workdir / "gate" / "worker.open").touch()
            raise
        return running_meanwhile.result(timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "supervisor"])
def test_sighup_while_the_server_is_built_is_one_reload_once_it_serves(tmp_path: Path, workers: str) -> None:
    """Three SIGHUPs to the twistd process while makeService builds the servers: it starts, then reloads once."""
    server, gate = gated_server(tmp_path, "--workers", workers)
    (gate / "worker.open").touch()

    def signal_the_starting_process() -> int:
        pid = wait_for(lambda: arrived(gate, "main"), 30, "the twistd process at its start-up gate")[0]
        hup(pid, 3)
        (gate / "main.open").touch()
        return pid

    try:
        signalled = start_while(server, signal_the_starting_process)
        assert signalled == server.pid
        wait_for(lambda: _MAIN_RELOAD.search(server.log_text()), 20, "the held SIGHUP's reload")
        if workers == "2":
            # the supervisor passed the reload on to workers that were still starting: each reloads once serving
            for index in (1, 2):
                wait_for(lambda: f"worker {index}: reloading trust" in server.log_text(), 20, f"worker {index}'s reload")
        log = server.log_text()
        assert len(_MAIN_RELOAD.findall(log)) == 1, log
        assert "exited" not in log and "Traceback" not in log
    finally:
        server.stop()


def test_sighup_to_starting_workers_and_their_supervisor_stops_no_worker(tmp_path: Path) -> None:
    """SIGHUP to each worker before it serves, and three to the supervisor: the same two workers serve, each reloads."""
    server, gate = gated_server(tmp_path, "--workers", "2")
    (gate / "main.open").touch()

    def signal_the_starting_workers() -> list[int]:
        starting = wait_for(
            lambda: arrived(gate, "worker") if len(arrived(gate, "worker")) == 2 else None,
            30, "two workers at their start-up gate",
        )
        for pid in starting:
            hup(pid)
        hup(server.pid, 3)
        (gate / "worker.open").touch()
        return starting

    try:
        starting = start_while(server, signal_the_starting_workers)
        assert server.worker_pids() == starting
        for index in (1, 2):
            wait_for(lambda: f"worker {index}: reloading trust" in server.log_text(), 20, f"worker {index}'s reload")
        log = server.log_text()
        assert "exited" not in log and "Traceback" not in log
        assert server.worker_pids() == starting
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "workers"])
def test_sighup_during_the_shutdown_grace_cuts_no_upload(tmp_path: Path, workers: str) -> None:
    """SIGHUPs to the server and its workers while SIGTERM's grace waits for an upload: ignored, the file is stored."""
    store = tmp_path / "store"
    data = os.urandom(100_000)
    server = ServerProcess(tmp_path, server_args(store, "--workers", workers, "--shutdown-grace", "20"))
    with running(server):
        base = server.url()
        if workers == "2":
            wait_for(lambda: len(server.worker_pids()) == 2, 20, "two workers")
        key = post_manifest(base, "data", [("late.dat", data)])
        with open_socket(base) as sock:
            sock.sendall(request_head("POST", f"/data/{key}/0", {"Content-Length": str(len(data))}))
            sock.sendall(data[:50_000])
            wait_for(lambda: in_flight(store), 10, "the upload in flight")
            holder = int(wait_for(lambda: upload_holder(store, key), 10, "the upload's holder"))
            processes = sorted({server.pid, holder, *server.worker_pids()})
            server.signal(signal.SIGTERM)
            wait_for(lambda: "waiting up to" in server.log_text(), 10, "the grace waiting for the upload")
            for pid in processes:
                hup(pid, 3)
            assert ignores_sighup(server.pid) and ignores_sighup(holder)
            sock.sendall(data[50_000:])
            assert read_response(sock).status == 200
        assert server.process is not None
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.log_text()
    assert (store / "late.dat").read_bytes() == data
    assert not part_files(store)
    assert "signal 1)" not in log and "Traceback" not in log
