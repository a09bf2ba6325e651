"""--audit-log over real sockets: one JSON line per event, SIGUSR1 reopens, workers append whole lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from gsitransfer.testca import make_test_pki
from tests.support.server import ServerProcess

from .ag_client import write_manifest
from .helpers import running, server_args, write_random_file

CURL = ["curl", "-sS", "--max-time", "60"]


def curl(*args: str) -> str:
    result = subprocess.run([*CURL, *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    return result.stdout


def records(path: Path, until: int, timeout: float = 20.0) -> list[dict[str, object]]:
    """The audit file's records once it has at least ``until`` (bounded wait: lines are written by a thread)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only: a write may be under way
        if len(lines) >= until:
            break
        time.sleep(0.05)
    return [json.loads(line) for line in lines]


def test_each_event_is_one_line_with_its_fields(tmp_path: Path) -> None:
    """Manifest, POST and PUT uploads, downloads (fast and plain path), a refusal, delete, cancel, expiry: one line each."""
    pki = make_test_pki(tmp_path / "pki", users=("alice",), share_keys=True)
    alice = pki.users["alice"]
    tls = ["--cacert", str(pki.ca_file), "--cert", str(alice.cert), "--key", str(alice.key)]
    store, audit = tmp_path / "store", tmp_path / "audit.log"
    args = [
        *server_args(store, "--audit-log", str(audit), "--manifest-ttl", "2", "--reload-interval", "1"),
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir),
    ]
    data = tmp_path / "run1.dat"
    md5 = write_random_file(data, 200_000)
    with running(ServerProcess(tmp_path, args)) as server:
        base = server.url("https").replace("127.0.0.1", "localhost") + "/data/"
        manifest = tmp_path / "m.ini"
        manifest.write_bytes(write_manifest([data]))
        key = dict(line.split(": ", 1) for line in curl(*tls, "--data-binary", f"@{manifest}", base + "manifest").splitlines())["transfer_key"]
        curl(*tls, "-X", "POST", "-T", str(data), f"{base}{key}/0")
        curl(*tls, "-T", str(data), base + "put.dat")
        curl(*tls, "-o", "/dev/null", base + "run1.dat")
        curl(*tls, "-o", "/dev/null", base + "nothere.dat")
        curl(*tls, "-X", "DELETE", base + "put.dat")
        other = tmp_path / "other.dat"
        other.write_bytes(b"x")
        manifest.write_bytes(write_manifest([other]))
        curl(*tls, "--data-binary", f"@{manifest}", base + "manifest")  # left to expire
        found = records(audit, 8)
        deadline = time.monotonic() + 30
        while not any(r["event"] == "expiry" for r in found) and time.monotonic() < deadline:
            time.sleep(0.2)
            found = records(audit, 8)
    by_event: dict[str, list[dict[str, object]]] = {}
    for record in found:
        by_event.setdefault(str(record["event"]), []).append(record)
    assert len(by_event["manifest"]) == 2
    uploads = {str(r["method"]): r for r in by_event["upload"]}
    assert uploads["POST"]["name"] == "run1.dat" and uploads["POST"]["md5"] == md5 and uploads["POST"]["size"] == 200_000
    assert uploads["PUT"]["name"] == "put.dat" and uploads["PUT"]["status"] == 201 and uploads["PUT"]["bytes"] == 200_000
    assert all(r["dn"] == alice.dn and r["peer"] == "127.0.0.1" for r in found if r["event"] != "expiry")
    download, = by_event["download"]
    assert download["name"] == "run1.dat" and download["bytes"] == 200_000 and download["status"] == 200
    refusal, = by_event["refusal"]
    assert refusal["status"] == 404 and "nothere.dat" in str(refusal["reason"])
    assert by_event["delete"][0]["name"] == "put.dat" and by_event["delete"][0]["status"] == 204
    expiry, = by_event["expiry"]
    assert expiry["dn"] == alice.dn and expiry["prefix"] == "data" and len(str(expiry["key"])) == 12
    assert key not in audit.read_text()  # never a whole transfer key
    assert uploads["POST"]["key"] != key and isinstance(uploads["POST"]["duration_s"], float)


def test_sigusr1_reopens_and_workers_never_interleave(tmp_path: Path) -> None:
    """With --workers 2: 200 downloads over new connections, every line whole JSON; after a rename, SIGUSR1 reopens."""
    store, audit = tmp_path / "store", tmp_path / "audit.log"
    store.mkdir()
    (store / "f.txt").write_bytes(b"y" * 3000)
    args = server_args(store, "--audit-log", str(audit), "--workers", "2")
    with running(ServerProcess(tmp_path, args)) as server:
        url = server.url("http") + "/data/f.txt"
        for _ in range(4):
            curl(*sum((["-o", "/dev/null", url] for _ in range(50)), []))
        first = records(audit, 200)
        assert len(first) == 200 and all(r["event"] == "download" for r in first)
        os.rename(audit, tmp_path / "audit.log.1")
        server.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # each process reopens when its signal arrives
            curl("-o", "/dev/null", url)
            if audit.exists() and len(audit.read_text().splitlines()) >= 4:
                break
            time.sleep(0.1)
        assert audit.exists() and len(records(audit, 4)) >= 4
    assert server.log_text().count("log files reopened") >= 1
