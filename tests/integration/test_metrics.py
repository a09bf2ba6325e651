"""--metrics over real sockets: counts after real transfers (one process and --workers 2), /healthz, /readyz."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from gsitransfer.testca import make_test_pki
from tests.support.server import ServerProcess

from .helpers import running, server_args, write_random_file

CURL = ["curl", "-sS", "--max-time", "60"]
_LISTENING = re.compile(r"metrics listening: (http://[0-9.]+:\d+)/metrics")


def metrics_url(server: ServerProcess) -> str:
    """The metrics listener's base URL, from the server's log (bounded wait)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = _LISTENING.search(server.log_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no metrics listener in the log:\n{server.log_text()[-2000:]}")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape_until(base: str, expected: Mapping[str, float]) -> str:
    """/metrics once every sample has its expected value: workers count their records within GATHER_SECONDS,
    and a scrape can land between one family's count and the next's."""
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        status, text = get(base + "/metrics")
        if status == 200 and all(value(text, name) == number for name, number in expected.items()):
            break
        time.sleep(0.1)
    return text


def value(text: str, sample: str) -> float:
    """One sample's value in the exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_counts_after_real_transfers_and_health(tmp_path: Path) -> None:
    """Uploads, downloads, bytes, a refusal and a refused TLS handshake are counted; /healthz and /readyz answer 200."""
    pki = make_test_pki(tmp_path / "pki", users=("alice",), share_keys=True)
    alice = pki.users["alice"]
    tls = ["--cacert", str(pki.ca_file), "--cert", str(alice.cert), "--key", str(alice.key)]
    store = tmp_path / "store"
    args = [
        *server_args(store, "--metrics", "tcp:0:interface=127.0.0.1"), "--https", "tcp:0:interface=127.0.0.1",
        "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
    ]
    data = tmp_path / "d.bin"
    write_random_file(data, 300_000)
    with running(ServerProcess(tmp_path, args)) as server:
        base = metrics_url(server)
        https = server.url("https").replace("127.0.0.1", "localhost") + "/data/"
        for number in range(3):
            subprocess.run([*CURL, *tls, "-T", str(data), f"{https}m{number}.bin"], check=True, timeout=90)
        for _ in range(2):
            subprocess.run([*CURL, *tls, "-o", "/dev/null", https + "m0.bin"], check=True, timeout=90)
        subprocess.run([*CURL, *tls, "-o", "/dev/null", https + "missing.bin"], check=True, timeout=90)
        no_cert = subprocess.run([*CURL, "--cacert", str(pki.ca_file), https], capture_output=True, timeout=90)
        assert no_cert.returncode != 0
        expected = {
            'gsitransfer_uploads_total{prefix="data",result="ok"}': 3,
            'gsitransfer_downloads_total{prefix="data",result="ok"}': 2,
            'gsitransfer_downloads_total{prefix="data",result="refused"}': 1,
            'gsitransfer_refusals_total{action="download",prefix="data",status="404"}': 1,
            "gsitransfer_received_bytes_total": 900_000,
            "gsitransfer_sent_bytes_total": 600_000,
            'gsitransfer_request_duration_seconds_count{event="upload"}': 3,
        }
        text = scrape_until(base, expected)
        assert {sample: value(text, sample) for sample in expected} == expected
        assert sum(value(text, line.split(" ")[0]) for line in text.splitlines()
                   if line.startswith("gsitransfer_tls_handshake_failures_total{")) >= 1
        assert "gsitransfer_open_connections" in text and "gsitransfer_crl_next_update_seconds" in text
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (200, "ready\n")


def test_workers_add_up(tmp_path: Path) -> None:
    """With --workers 2, 60 downloads over new connections: both workers serve some, /metrics counts all 60."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "f.txt").write_bytes(b"z" * 5000)
    args = server_args(store, "--metrics", "tcp:0:interface=127.0.0.1", "--workers", "2")
    with running(ServerProcess(tmp_path, args)) as server:
        base = metrics_url(server)
        url = server.url("http") + "/data/f.txt"
        for _ in range(60):
            subprocess.run([*CURL, "-o", "/dev/null", url], check=True, timeout=60)
        log = server.log_text()
        assert "worker 1:" in log and "worker 2:" in log  # each worker answered some
        expected = {'gsitransfer_downloads_total{prefix="data",result="ok"}': 60, "gsitransfer_sent_bytes_total": 300_000}
        text = scrape_until(base, expected)
        assert {sample: value(text, sample) for sample in expected} == expected


def test_health_503_when_the_store_goes_and_ready_503_while_draining(tmp_path: Path) -> None:
    """/healthz: 503 naming the store when it cannot take a file; /readyz: 503 during a SIGTERM drain."""
    store = tmp_path / "store"
    store.mkdir()
    data = tmp_path / "big.bin"
    write_random_file(data, 8 * 1024 * 1024)
    args = server_args(store, "--metrics", "tcp:0:interface=127.0.0.1", "--shutdown-grace", "30")
    with running(ServerProcess(tmp_path, args)) as server:
        base = metrics_url(server)
        assert get(base + "/healthz")[0] == 200
        shutil.move(str(store), str(tmp_path / "moved"))
        status, text = get(base + "/healthz")
        assert status == 503 and f"store {store} is not writable" in text
        shutil.move(str(tmp_path / "moved"), str(store))
        assert get(base + "/healthz")[0] == 200
        # an upload held open (the body trickles in), then SIGTERM: the drain waits for it
        upload = subprocess.Popen(
            [*CURL, "--limit-rate", "1M", "-T", str(data), server.url("http") + "/data/slow.bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            server.signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            ready = get(base + "/readyz")
            while ready[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
                ready = get(base + "/readyz")
            assert ready == (503, "draining: not taking new requests\n")
        finally:
            upload.wait(timeout=60)
