"""Atomic batches over real sockets (SPEC 7.4): curl, a SIGKILL between two publishes and before the first
CompleteUpload (then a restart on the same store and state), cancel and expiry, --workers 2."""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import random
import re
import subprocess
from pathlib import Path

import pytest

from gsitransfer.testca import make_test_pki
from tests.support.http import Response, client_tls, request
from tests.support.server import ServerProcess

from .helpers import HTTP, running, server_args, wait_for

#: the second file is above the offload threshold (1 MiB): its writer threads keep it verified
FILES = {
    "a.bin": random.Random(1).randbytes(70_000),
    "b.bin": random.Random(2).randbytes(2 * 1024 * 1024 + 7),
    "c.bin": random.Random(3).randbytes(333),
}
NAMES = list(FILES)


def atomic_manifest(files: dict[str, bytes] = FILES) -> bytes:
    """The manifest of ``files`` with ``commit = atomic``, as ConfigParser writes it."""
    parser = configparser.ConfigParser(interpolation=None)
    parser["manifest"] = {"num_files": str(len(files)), "commit": "atomic"}
    for num, (name, data) in enumerate(files.items()):
        parser[str(num)] = {"name": name, "size": str(len(data)), "checksum": hashlib.md5(data).hexdigest()}
    out = io.StringIO()
    parser.write(out)
    return out.getvalue().encode()


def post_batch(base: str, files: dict[str, bytes] = FILES) -> str:
    answer = request(base, "POST", "/data/manifest", atomic_manifest(files))
    fields = answer.fields()
    assert answer.status == 200 and fields["return_code"] == "0", answer.text
    return fields["transfer_key"]


def upload(base: str, key: str, num: int, files: dict[str, bytes] = FILES) -> Response:
    return request(base, "POST", f"/data/{key}/{num}", list(files.values())[num], timeout=60)


def downloads(base: str, names: list[str] = NAMES) -> list[int]:
    """The status of a GET of each name."""
    return [request(base, "GET", f"/data/{name}").status for name in names]


def states(base: str, key: str) -> list[str]:
    answer = request(base, "GET", f"/data/{key}")
    assert answer.status == 200, answer.text
    return [file["state"] for file in json.loads(answer.body)["files"]]


def completions(calls: Path) -> list[str]:
    """The names CompleteUpload was called for, from the recording store's calls file."""
    if not calls.exists():
        return []
    return [line.split(" ", 1)[1] for line in calls.read_text().splitlines() if line.startswith("CompleteUpload ")]


def stored(store: Path) -> dict[str, bytes]:
    """The published files of a store (no hidden names)."""
    return {p.name: p.read_bytes() for p in store.iterdir() if not p.name.startswith(".")}


def hidden_leftovers(store: Path) -> list[str]:
    """Held or partial files left in a store."""
    return [p.name for p in store.iterdir() if p.name.endswith((".partial", ".part"))]


def test_curl_batch_appears_only_at_the_end(tmp_path: Path) -> None:
    """With curl alone: every upload but the last says state: verified and its download is 404; the last says
    state: stored and then every file downloads with its bytes."""
    store = tmp_path / "store"
    (tmp_path / "manifest.ini").write_bytes(atomic_manifest())
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    curl = ["curl", "-sS", "--max-time", "60"]
    with running(ServerProcess(tmp_path, server_args(store))) as server:
        base = server.url()
        posted = subprocess.run([*curl, "--data-binary", f"@{tmp_path / 'manifest.ini'}", f"{base}/data/manifest"],
                                capture_output=True, text=True, timeout=90)
        key = dict(line.split(": ", 1) for line in posted.stdout.splitlines())["transfer_key"]
        answers = []
        for num, name in enumerate(NAMES):
            sent = subprocess.run([*curl, "--data-binary", f"@{tmp_path / name}", f"{base}/data/{key}/{num}"],
                                  capture_output=True, text=True, timeout=90)
            answers.append(sent.stdout.splitlines())
            if num < len(NAMES) - 1:
                got = subprocess.run([*curl, "-o", "/dev/null", "-w", "%{http_code}", f"{base}/data/{name}"],
                                     capture_output=True, text=True, timeout=90)
                assert got.stdout == "404", got
        assert [lines[0] for lines in answers] == ["return_code: 0"] * 3
        assert [lines[-1] for lines in answers] == ["state: verified", "state: verified", "state: stored"]
        assert downloads(base) == [200, 200, 200]
        for name, data in FILES.items():
            assert request(base, "GET", f"/data/{name}", timeout=60).body == data
        assert states(base, key) == ["stored"] * 3
        assert hidden_leftovers(store) == []


def test_sigkill_between_two_publishes_is_finished_at_restart(tmp_path: Path) -> None:
    """The server dies (SIGKILL, test fault point) right after publishing the first file of a batch; restarted on
    the same store and state, it publishes the rest before listening, CompleteUpload once for each across both runs."""
    store, calls = tmp_path / "store", tmp_path / "calls.txt"
    env = {"GSITRANSFER_TEST_STORE": str(store), "GSITRANSFER_TEST_CALLS": str(calls)}
    args = [*HTTP, "--handler", "data=tests.support.batch_handlers:recording", "--workers", "1"]  # one process dies
    first = ServerProcess(tmp_path, args, env={**env, "GSITRANSFER_TEST_FAULT": "batch-after-first-publish"}).start()
    try:
        base = first.url()
        key = post_batch(base)
        assert upload(base, key, 0).fields()["state"] == "verified"
        assert upload(base, key, 1).fields()["state"] == "verified"
        with pytest.raises(OSError):
            upload(base, key, 2)
        assert first.process is not None
        first.process.wait(timeout=15)
    finally:
        first.stop()
    assert list(stored(store)) == ["a.bin"] and completions(calls) == []
    with running(ServerProcess(tmp_path, args, env=env)) as second:
        assert completions(calls) == NAMES
        assert stored(store) == FILES
        assert downloads(second.url()) == [200, 200, 200]
        assert states(second.url(), key) == ["stored"] * 3
        assert hidden_leftovers(store) == []
    assert completions(calls) == NAMES


def test_sigkill_before_the_first_completion_is_finished_at_restart(tmp_path: Path) -> None:
    """A handler whose first CompleteUpload kills the server (every file already published): after a restart
    each file has had exactly one CompleteUpload."""
    store, calls = tmp_path / "store", tmp_path / "calls.txt"
    env = {"GSITRANSFER_TEST_STORE": str(store), "GSITRANSFER_TEST_CALLS": str(calls)}
    args = [*HTTP, "--handler", "data=tests.support.batch_handlers:killed_at_first_complete", "--workers", "1"]
    first = ServerProcess(tmp_path, args, env=env).start()
    try:
        base = first.url()
        key = post_batch(base)
        upload(base, key, 1)
        upload(base, key, 2)
        with pytest.raises(OSError):
            upload(base, key, 0)
        assert first.process is not None
        first.process.wait(timeout=15)
    finally:
        first.stop()
    assert stored(store) == FILES and completions(calls) == []
    with running(ServerProcess(tmp_path, args, env=env)) as second:
        assert completions(calls) == NAMES
        assert states(second.url(), key) == ["stored"] * 3


def test_cancel_and_expiry_publish_nothing(tmp_path: Path) -> None:
    """DELETE of a batch's key, and a key left to expire: none of their files appear, no held file is left."""
    store = tmp_path / "store"
    with running(ServerProcess(tmp_path, server_args(store, "--manifest-ttl", "3", "--reload-interval", "1"))) as server:
        base = server.url()
        cancelled = post_batch(base)
        upload(base, cancelled, 0)
        upload(base, cancelled, 1)
        assert request(base, "DELETE", f"/data/{cancelled}").status in (200, 204)
        assert downloads(base) == [404, 404, 404] and hidden_leftovers(store) == []
        expiring = post_batch(base)
        upload(base, expiring, 1)
        upload(base, expiring, 2)
        wait_for(lambda: request(base, "GET", f"/data/{expiring}").status == 404, 20, "the key to expire")
        wait_for(lambda: hidden_leftovers(store) == [], 20, "the held files to go")
        assert downloads(base) == [404, 404, 404] and stored(store) == {}


def test_workers_publish_a_batch_verified_across_them(tmp_path: Path) -> None:
    """--workers 2: the files of one batch, each on its own connection (the kernel spreads them over the
    workers, usually both), are held until the last, which publishes all, once, whichever worker verified it."""
    files = {f"f{num}.bin": random.Random(num).randbytes(50_000 + num) for num in range(16)}
    names = list(files)
    store = tmp_path / "store"
    with running(ServerProcess(tmp_path, server_args(store, "--workers", "2"))) as server:
        base = server.url()
        key = post_batch(base, files)
        for num in range(len(files) - 1):
            assert upload(base, key, num, files).fields()["state"] == "verified"
        assert downloads(base, names) == [404] * len(files)
        assert upload(base, key, len(files) - 1, files).fields()["state"] == "stored"
        assert downloads(base, names) == [200] * len(files)
        assert states(base, key) == ["stored"] * len(files)
        assert stored(store) == files
        publishing = r"worker \d: batch \S+ all 16 file\(s\) verified, publishing"
        wait_for(lambda: re.search(publishing, server.log_text()), 15, "the workers' log lines")
        log = server.log_text()
        # which worker accepts each connection is the kernel's choice: usually both, never guaranteed
        assert set(re.findall(r"worker (\d): verified f", log)) <= {"1", "2"}
        assert len(re.findall(publishing, log)) == 1


def test_a_worker_killed_between_publishes_is_finished_by_its_supervisor(tmp_path: Path) -> None:
    """--workers 2: the worker publishing a batch dies (SIGKILL, test fault point) after its first file; the
    supervisor finishes that batch at once, CompleteUpload once for each, without a restart."""
    store, calls = tmp_path / "store", tmp_path / "calls.txt"
    env = {
        "GSITRANSFER_TEST_STORE": str(store),
        "GSITRANSFER_TEST_CALLS": str(calls),
        "GSITRANSFER_TEST_FAULT": "batch-after-first-publish",
    }
    args = [*HTTP, "--handler", "data=tests.support.batch_handlers:recording", "--workers", "2"]
    with running(ServerProcess(tmp_path, args, env=env)) as server:
        base = server.url()
        key = post_batch(base)
        upload(base, key, 0)
        upload(base, key, 1)
        with pytest.raises(OSError):
            upload(base, key, 2)
        wait_for(lambda: completions(calls) == NAMES, 20, "the supervisor to finish the batch")
        assert stored(store) == FILES
        assert states(base, key) == ["stored"] * 3
        assert downloads(base) == [200, 200, 200]
    assert completions(calls) == NAMES


def test_mutual_tls_batch_is_its_owners(tmp_path: Path) -> None:
    """Over mutual TLS: Bob may not send a file of Alice's batch (403); Bob sees none of it until Alice's last
    file is verified, then all of it."""
    pki = make_test_pki(tmp_path / "pki", users=("alice", "bob"), share_keys=True)
    alice, bob = (
        client_tls(str(pki.ca_file), str(pki.users[name].cert), str(pki.users[name].key)) for name in ("alice", "bob")
    )
    store = tmp_path / "store"
    args = [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir), "--store", f"data={store}",
    ]
    with running(ServerProcess(tmp_path, args)) as server:
        base = server.url("https").replace("127.0.0.1", "localhost")
        answer = request(base, "POST", "/data/manifest", atomic_manifest(), tls=alice)
        key = answer.fields()["transfer_key"]
        values = list(FILES.values())
        assert request(base, "POST", f"/data/{key}/0", values[0], tls=bob).status == 403
        assert request(base, "POST", f"/data/{key}/0", values[0], tls=alice).fields()["state"] == "verified"
        assert request(base, "POST", f"/data/{key}/1", values[1], tls=alice, timeout=60).fields()["state"] == "verified"
        assert [request(base, "GET", f"/data/{name}", tls=bob).status for name in NAMES] == [404] * 3
        assert request(base, "POST", f"/data/{key}/2", values[2], tls=alice).fields()["state"] == "stored"
        assert [request(base, "GET", f"/data/{name}", tls=bob, timeout=60).body for name in NAMES] == values
