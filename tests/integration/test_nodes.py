"""Several nodes on one PostgreSQL ``--state`` and one shared store directory (SPEC 9).

Each node is a real server process (``twistd -n accessgrid-transfer``) with
``--state`` in the test's own schema of a private PostgreSQL, all on the same
store directory (the shared filesystem, here a local one). What one node
accepts, every node knows: manifests, files, states, names, expiry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tests.support.http import client_tls, manifest_for, post_manifest, request
from tests.support.server import ServerProcess

from .helpers import calls, in_flight, recording_args, recording_env, running, server_args, wait_for

ALICE = "/C=US/O=Grid Test/OU=People/CN=Alice Example"
BOB = "/C=US/O=Grid Test/OU=People/CN=Bob Example"
_METRICS = re.compile(r"metrics listening: http://[^:]+:(\d+)/metrics")


def metrics_port(node: ServerProcess) -> int:
    """The node's metrics listener port, from its log (logged just after the transfer listener: bounded wait)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = _METRICS.search(node.log_text())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no metrics listener in the log:\n{node.log_text()[-2000:]}")


@contextlib.contextmanager
def nodes(tmp_path: Path, url: str, count: int, *extra: str, recording: Path | None = None) -> Iterator[list[ServerProcess]]:
    """``count`` nodes on ``url`` and the store ``tmp_path/shared``, each in its own work directory."""
    store = tmp_path / "shared"
    with contextlib.ExitStack() as stack:
        started = []
        for index in range(count):
            if recording is None:
                args = server_args(store, "--state", url, "--trusted-proxy", "127.0.0.1", *extra)
                env = None
            else:
                args = recording_args("--state", url, "--trusted-proxy", "127.0.0.1", *extra)
                env = recording_env(store, recording)
            started.append(stack.enter_context(running(ServerProcess(tmp_path / f"node{index}", args, env=env))))
        yield started


def as_person(dn: str) -> dict[str, str]:
    return {"X-Client-DN": dn}


def file_state(url: str, key: str, num: int) -> str | None:
    """The shared table's state of file ``num`` of ``key`` (what every node reads)."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT state FROM transfer_files WHERE key = %s AND num = %s", (key, num)).fetchone()
    return None if row is None else str(row[0])


def start_body(base: str, path: str, body: bytes, sent: int, headers: dict[str, str]) -> socket.socket:
    """A POST whose first ``sent`` bytes of ``body`` are on their way, the rest not yet."""
    host, port = base.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body[:sent])
    return sock


def test_a_manifest_on_one_node_files_through_the_others_downloads_from_any(postgres_url: str, tmp_path: Path) -> None:
    """Three nodes (each with two worker processes): the manifest on node 0, file i through node i % 3,
    every file from every node."""
    files = [(f"f{i}.dat", os.urandom(20_000 + i)) for i in range(6)]
    with nodes(tmp_path, postgres_url, 3, "--workers", "2") as started:
        bases = [node.url() for node in started]
        key = post_manifest(bases[0], "data", files, as_person(ALICE))
        for num, (_, data) in enumerate(files):
            answer = request(bases[num % 3], "POST", f"/data/{key}/{num}", data, as_person(ALICE))
            assert answer.status == 200, answer.text
        for base in bases:
            for name, data in files:
                answer = request(base, "GET", f"/data/{name}")
                assert answer.status == 200 and answer.body == data
            listed = json.loads(request(base, "GET", "/data/").body)
            assert sorted(f["name"] for f in listed["files"]) == sorted(name for name, _ in files)
        # the key is done on every node: nothing pending is left for the owner
        assert request(bases[2], "POST", f"/data/{key}/0", files[0][1], as_person(ALICE)).status in (404, 409)


def test_the_same_file_through_two_nodes_at_once_one_wins(postgres_url: str, tmp_path: Path) -> None:
    """A file arriving through node 0 is refused (409) through node 1 until node 0 has stored it."""
    data = os.urandom(2_000_000)
    with nodes(tmp_path, postgres_url, 2) as (first, second):
        key = post_manifest(first.url(), "data", [("one.dat", data)], as_person(ALICE))
        sock = start_body(first.url(), f"/data/{key}/0", data, 1_000_000, as_person(ALICE))
        try:
            wait_for(lambda: file_state(postgres_url, key, 0) == "receiving", 20, "node 0 receiving the file")
            refused = request(second.url(), "POST", f"/data/{key}/0", data, as_person(ALICE))
            assert refused.status == 409 and "already being uploaded" in refused.text
            sock.sendall(data[1_000_000:])
            assert sock.recv(200).startswith(b"HTTP/1.1 200")
        finally:
            sock.close()
        assert request(second.url(), "GET", "/data/one.dat").body == data
        assert file_state(postgres_url, key, 0) in (None, "stored")


def test_two_identities_racing_for_a_name_through_two_nodes(postgres_url: str, tmp_path: Path) -> None:
    """Alice through node 0 and Bob through node 1 announce the same names at the same moment: one wins each."""
    names = [f"race{i}.dat" for i in range(10)]
    with nodes(tmp_path, postgres_url, 2) as (first, second):
        def announce(base: str, dn: str, name: str) -> str:
            answer = request(base, "POST", "/data/manifest", manifest_for([(name, b"x" * 100)]), as_person(dn))
            return answer.fields().get("return_code", "?")

        with ThreadPoolExecutor(max_workers=2) as pool:
            for name in names:
                alice = pool.submit(announce, first.url(), ALICE, name)
                bob = pool.submit(announce, second.url(), BOB, name)
                assert sorted([alice.result(), bob.result()]) == ["0", "1"], name


def test_a_node_killed_mid_upload_leaves_the_file_to_the_others(postgres_url: str, tmp_path: Path) -> None:
    """Node 0 is SIGKILLed while receiving: within 30 s node 1 takes the file and stores it whole."""
    data = os.urandom(3_000_000)
    with nodes(tmp_path, postgres_url, 2) as (first, second):
        key = post_manifest(first.url(), "data", [("cut.dat", data)], as_person(ALICE))
        sock = start_body(first.url(), f"/data/{key}/0", data, 1_500_000, as_person(ALICE))
        wait_for(lambda: file_state(postgres_url, key, 0) == "receiving", 20, "node 0 receiving the file")
        first.kill()
        sock.close()
        killed = time.monotonic()
        statuses: list[int] = []

        def stored_through_second() -> bool:
            statuses.append(request(second.url(), "POST", f"/data/{key}/0", data, as_person(ALICE)).status)
            return statuses[-1] == 200

        wait_for(stored_through_second, 45, "node 1 to take the file over")
        assert time.monotonic() - killed < 30, statuses
        assert set(statuses[:-1]) <= {409}, statuses
        assert request(second.url(), "GET", "/data/cut.dat").body == data
        # the file's held bytes went with the take-over: only the killed node's own temporary may remain
        assert not [name for name in in_flight(tmp_path / "shared") if name.endswith(".partial")]


def test_an_expired_key_is_cancelled_exactly_once_across_nodes(postgres_url: str, tmp_path: Path) -> None:
    """Three nodes sweep the same table: each unstored file of an expired key is cancelled once, within 15 s."""
    record = tmp_path / "record.jsonl"
    files = [(f"e{i}.dat", b"e" * (10 + i)) for i in range(3)]
    with nodes(tmp_path, postgres_url, 3, "--manifest-ttl", "2", recording=record) as started:
        key = post_manifest(started[0].url(), "data", files, as_person(ALICE))
        expired_at = time.monotonic() + 2
        time.sleep(2.2)
        # refused at once everywhere
        for node in started:
            assert request(node.url(), "POST", f"/data/{key}/0", files[0][1], as_person(ALICE)).status == 404
        wait_for(lambda: len(calls(record, "CancelPendingUpload")) >= 3, 20, "the pending files cancelled")
        assert time.monotonic() - expired_at < 15
        time.sleep(11)  # every node has swept again since
    cancelled = calls(record, "CancelPendingUpload")
    assert sorted(c["argument"] for c in cancelled) == sorted(name for name, _ in files)


def test_the_database_stopped_and_restarted_under_load(tmp_path: Path) -> None:
    """Uploads through two nodes while PostgreSQL stops for 3 s: each is stored (201) or refused (503) with
    nothing kept; nothing is lost or stored twice; the nodes serve again once it is back, without a restart.

    A refusal from the headers closes the connection while the client may still be sending: the client
    then sees the connection reset rather than the 503 (status 0 here), and the server's log says 503."""
    from tests.support.postgres import PrivatePostgres, schema_url

    with PrivatePostgres() as database:
        url = schema_url(database.url, "load")
        with nodes(tmp_path, url, 2) as started:
            bases = [node.url() for node in started]
            results: dict[str, tuple[int, bytes]] = {}
            stored_at: list[float] = []
            stop = threading.Event()

            def load(worker: int) -> None:
                for index in range(10_000):
                    if stop.is_set():
                        return
                    name, data = f"w{worker}-{index}.dat", os.urandom(30_000)
                    try:
                        answer = request(bases[index % 2], "PUT", f"/data/{name}", data, as_person(ALICE), timeout=30)
                        results[name] = (answer.status, data)
                        if answer.status == 201:
                            stored_at.append(time.monotonic())
                    except OSError:
                        results[name] = (0, data)
                    time.sleep(0.02)

            threads = [threading.Thread(target=load, args=(worker,)) for worker in range(3)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.5)
                database.stop()
                time.sleep(3)
                database.start()
                back = time.monotonic()
                wait_for(lambda: bool(stored_at) and stored_at[-1] > back, 30, "uploads stored again")
                wait_for(lambda: all(request(b, "GET", "/data/").status == 200 for b in bases), 30, "both nodes back")
                served_again = time.monotonic()
                time.sleep(1)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
            assert served_again - back < 30
            statuses = sorted({status for status, _ in results.values()})
            assert set(statuses) <= {0, 201, 503}, statuses
            logs = "".join(node.log_text() for node in started)
            for name, (status, _) in results.items():
                if status == 0:
                    assert f'"PUT /data/{name} HTTP/1.1" 503' in logs, name
            assert 503 in statuses and 201 in statuses
            for name, (status, data) in results.items():
                answer = request(bases[0], "GET", f"/data/{name}")
                if status == 201:
                    assert answer.status == 200 and answer.body == data, name
                else:
                    assert answer.status == 404, (name, answer.status)
            listed = json.loads(request(bases[1], "GET", "/data/").body)["files"]
            assert sorted(f["name"] for f in listed) == sorted(n for n, (s, _) in results.items() if s == 201)


def test_200_uploads_through_haproxy_across_two_nodes_over_mutual_tls(postgres_url: str, tmp_path: Path) -> None:
    """HAProxy in mode tcp (TLS passed through, health checks on /healthz) in front of two nodes: 200 PUTs
    with a client certificate, owned by its DN, spread over both nodes; every byte verified through it."""
    from gsitransfer.testca import make_test_pki
    from tests.support.haproxy import PrivateHAProxy

    pki = make_test_pki(tmp_path / "pki", users=("alice",), share_keys=True)
    tls_args = [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir), "--metrics", "tcp:0:interface=127.0.0.1",
    ]
    with nodes(tmp_path, postgres_url, 2, *tls_args) as started:
        ports = []
        for node in started:
            ports.append((int(node.url("https").rsplit(":", 1)[1]), metrics_port(node)))
        with PrivateHAProxy(ports) as balancer:
            base = f"https://localhost:{balancer.port}"
            proxy = str(pki.users["alice"].proxy)
            tls = client_tls(str(pki.ca_file), proxy)
            files = {f"h{i:03d}.dat": os.urandom(4096 + i) for i in range(200)}

            def put(name: str) -> int:
                return request(base, "PUT", f"/data/{name}", files[name], tls=tls, timeout=60).status

            with ThreadPoolExecutor(max_workers=8) as pool:
                assert set(pool.map(put, files)) == {201}
            for name, data in files.items():
                answer = request(base, "GET", f"/data/{name}", tls=tls)
                assert answer.status == 200 and hashlib.md5(answer.body).digest() == hashlib.md5(data).digest()
            listed = json.loads(request(base, "GET", "/data/", tls=tls).body)["files"]
            assert len(listed) == 200 and {f["owner"] for f in listed} == {pki.users["alice"].dn}
        served = [node.log_text().count('"PUT /data/h') for node in started]
        assert sum(served) == 200 and min(served) > 0, served


def test_a_persons_lock_held_elsewhere_holds_up_only_that_persons_manifest(postgres_url: str, tmp_path: Path) -> None:
    """Alice's quota lock is held elsewhere (as by another node registering her manifest): her manifest waits,
    while every worker goes on with downloads that need the database, Bob's manifest and the health check —
    no process's statements wait for the lock (TableBusy, retried on the reactor); released, hers is taken."""
    data = os.urandom(50_000)
    with nodes(tmp_path, postgres_url, 1, "--metrics", "tcp:0:interface=127.0.0.1", "--workers", "2") as (node,):
        base = node.url()
        health = f"http://127.0.0.1:{metrics_port(node)}"
        assert request(base, "PUT", "/data/kept.dat", data, as_person(BOB)).status == 201
        with psycopg.connect(postgres_url, autocommit=True) as blocker:
            blocker.execute("SELECT pg_advisory_lock(hashtextextended(%s, 17))", (ALICE,))
            with ThreadPoolExecutor(max_workers=2) as pool:
                waiting = [pool.submit(post_manifest, base, "data", [(f"later{n}.dat", b"x")], as_person(ALICE))
                           for n in range(2)]  # one per worker, most likely
                time.sleep(1.0)
                assert not any(manifest.done() for manifest in waiting)
                started = time.monotonic()
                for _ in range(6):  # new connections: both workers, each a statement for the MD5 or the listing
                    assert request(base, "GET", "/data/kept.dat").body == data
                    assert request(base, "GET", "/data/", headers={"Accept": "application/json"}).status == 200
                assert len(post_manifest(base, "data", [("bob.dat", b"b")], as_person(BOB))) == 32
                assert request(health, "GET", "/healthz").status == 200
                assert time.monotonic() - started < 5.0
                blocker.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 17))", (ALICE,))
                assert all(len(manifest.result(timeout=30)) == 32 for manifest in waiting)


def test_a_persons_lock_held_too_long_is_one_503_and_the_database_stays_usable(
    postgres_url: str, tmp_path: Path
) -> None:
    """Held past BUSY_SECONDS (10 s), the lock makes Alice's manifest a 503 with one line; the node does not
    take the database for gone (Bob's manifest right after is taken, /healthz is 200)."""
    with nodes(tmp_path, postgres_url, 1, "--metrics", "tcp:0:interface=127.0.0.1") as (node,):
        base = node.url()
        health = f"http://127.0.0.1:{metrics_port(node)}"
        with psycopg.connect(postgres_url, autocommit=True) as blocker:
            blocker.execute("SELECT pg_advisory_lock(hashtextextended(%s, 17))", (ALICE,))
            started = time.monotonic()
            answer = request(base, "POST", "/data/manifest", manifest_for([("late.dat", b"x")]), as_person(ALICE),
                             timeout=60)
            assert 9.0 <= time.monotonic() - started < 30.0
            assert answer.status == 503 and "busy" in answer.text and "Traceback" not in answer.text
            assert len(answer.text.strip().splitlines()) == 1, answer.text
            blocker.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 17))", (ALICE,))
        assert len(post_manifest(base, "data", [("bob.dat", b"b")], as_person(BOB))) == 32
        assert request(health, "GET", "/healthz").status == 200


def test_admin_lists_and_cancels_the_transfers_every_node_shares(postgres_url: str, tmp_path: Path) -> None:
    """``gsitransfer-admin transfers --state postgresql://…`` lists a key announced on node 0 and cancels it:
    node 1 refuses it at once."""
    import subprocess
    import sys

    admin = [sys.executable, "-m", "gsitransfer.admin", "transfers", "--state", postgres_url]
    with nodes(tmp_path, postgres_url, 2) as (first, second):
        key = post_manifest(first.url(), "data", [("a.dat", b"a" * 10)], as_person(ALICE))
        listed = subprocess.run(admin, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        key_hash = hashlib.sha256(key.encode()).hexdigest()[:12]
        assert key_hash in listed.stdout and "pending" in listed.stdout
        cancelled = subprocess.run([*admin, "--cancel", key_hash], capture_output=True, text=True, timeout=60)
        assert cancelled.returncode == 0, cancelled.stderr
        assert request(second.url(), "POST", f"/data/{key}/0", b"a" * 10, as_person(ALICE)).status == 404


@pytest.mark.parametrize("state", ["postgresql://nobody@/nowhere?host=/nonexistent", "mysql://x@y/z"])
def test_a_database_that_cannot_be_used_is_one_line_at_start(state: str, tmp_path: Path) -> None:
    """An unreachable database, or a scheme that is not PostgreSQL: one line, exit status != 0."""
    server = ServerProcess(tmp_path, server_args(tmp_path / "store", "--state", state))
    with pytest.raises(RuntimeError) as failed:
        server.start(timeout=30)
    text = str(failed.value)
    assert "Traceback" not in text
    assert "cannot use transfer database postgresql://nobody@/nowhere" in text or "--state mysql://… is not supported" in text
