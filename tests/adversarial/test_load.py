"""Load, races and shutdown: bounded runs that print their figures and assert only correctness.

What is proven here (no timing assertions; the figures are printed):

* a few hundred mutual-TLS connections held open at once all stay served;
  the server's memory per connection is measured, and every descriptor is
  released when they close;
* several clients uploading and downloading different files at once for a
  bounded time: every byte of every file verified by MD5;
* connections racing to upload the same file: exactly one is stored (200),
  the others get 409, and the stored bytes are right; manifests racing for
  the same name: exactly one is accepted;
* SIGTERM with many uploads in flight: new connections are refused at once,
  bodies that complete within ``--shutdown-grace`` are stored (200), the
  rest leave nothing behind and stay pending for after the restart; a
  download being read when SIGTERM comes is finished too.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from gsitransfer.testca import TestPKI
from tests.support.http import client_tls, manifest_for, request
from tests.support.server import ServerProcess
from tests.support.waiting import refuses_connections

from .support import (
    assert_clean_log,
    assert_healthy,
    connect,
    file_state,
    host_port,
    http_args,
    md5,
    open_fds,
    in_flight,
    part_files,
    post_manifest_key,
    read_until_closed,
    rss_kib,
    running,
    statuses,
    unique,
    upload,
    visible_files,
    wait_for,
)

MiB = 1024 * 1024


# -- many TLS connections held open --------------------------------------------------------------


def held_connections(adv_pki: TestPKI, tmp_path: Path, count: int) -> None:
    args = ["--https", "tcp:0:interface=127.0.0.1", "--cert", str(adv_pki.server_cert),
            "--key", str(adv_pki.server_key), "--ca-dir", str(adv_pki.ca_dir),
            "--store", f"data={tmp_path / 'store'}"]
    alice = adv_pki.users["alice"]
    context = client_tls(adv_pki.ca_file, alice.cert, alice.key)
    with running(ServerProcess(tmp_path, args)) as server:
        address = host_port(server.url("https"))
        fds_before, rss_before = open_fds(server.pid), rss_kib(server.pid)
        held: list[ssl.SSLSocket] = []
        started = time.monotonic()
        try:
            for _ in range(count):
                raw = socket.create_connection(address, timeout=10)
                tls = context.wrap_socket(raw, server_hostname="localhost")
                tls.sendall(b"GET /data/ HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _one_response(tls) == 200
                held.append(tls)
            opened = time.monotonic() - started
            rss_after, fds_after = rss_kib(server.pid), open_fds(server.pid)
            for tls in held:
                tls.sendall(b"GET /data/ HTTP/1.1\r\nHost: x\r\n\r\n")
            answered = sum(_one_response(tls) == 200 for tls in held)
        finally:
            for tls in held:
                try:
                    tls.close()
                except OSError:
                    pass
        per_connection = (rss_after - rss_before) / count
        print(f"{count} TLS connections held: opened in {opened:.1f} s, server RSS {rss_before} -> {rss_after} KiB "
              f"({per_connection:.1f} KiB per connection), descriptors {fds_before} -> {fds_after}; "
              f"{answered} answered a second request")
        assert answered == count
        assert fds_after >= fds_before + count
        wait_for(lambda: open_fds(server.pid) <= fds_before, 10, "every descriptor released")
        assert_clean_log(server)


def _one_response(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """Read one complete response with a Content-Length from a keep-alive connection."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), b"0"))
            if len(body) >= length:
                return int(head.split(b" ", 2)[1])
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return None


def test_hundreds_of_tls_connections_held_open(adv_pki, tmp_path):
    """300 mutual-TLS keep-alive connections at once: all served twice, all released; RSS printed."""
    held_connections(adv_pki, tmp_path, 300)


@pytest.mark.slow
def test_a_thousand_tls_connections_held_open(adv_pki, tmp_path):
    """1000 mutual-TLS keep-alive connections at once (bounded by the descriptor limit)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    held_connections(adv_pki, tmp_path, min(1000, soft // 2 - 100))


# -- many clients at once ---------------------------------------------------------------------------


def mixed_clients(tmp_path: Path, clients: int, seconds: float, max_size: int) -> None:
    with running(ServerProcess(tmp_path, http_args(tmp_path / "store"))) as server:
        base = server.url()
        stored: dict[str, str] = {}
        lock = threading.Lock()
        errors: list[str] = []
        moved = [0, 0]
        verified = [0]
        deadline = time.monotonic() + seconds

        def client(number: int) -> None:
            rng = random.Random(number)
            while time.monotonic() < deadline and not errors:
                try:
                    name = unique(f"c{number}.bin")
                    content = rng.randbytes(rng.randint(1, max_size))
                    answer = upload(base, "data", name, content)
                    if answer.status != 200:
                        errors.append(f"{name}: {answer.status} {answer.text}")
                        return
                    with lock:
                        stored[name] = md5(content)
                        moved[0] += len(content)
                        names = list(stored)
                    other = rng.choice(names)
                    back = request(base, "GET", f"/data/{other}")
                    if back.status != 200 or md5(back.body) != stored[other]:
                        errors.append(f"{other}: download {back.status} does not match")
                        return
                    with lock:
                        moved[1] += len(back.body)
                        verified[0] += 1
                except OSError as error:
                    errors.append(f"client {number}: {error}")
                    return

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        elapsed = time.monotonic() - started
        assert not errors, errors[:5]
        for name, digest in stored.items():
            assert md5((tmp_path / "store" / name).read_bytes()) == digest
        print(f"{clients} clients for {elapsed:.1f} s: {len(stored)} files uploaded ({moved[0] / MiB:.1f} MiB), "
              f"{verified[0]} downloads verified ({moved[1] / MiB:.1f} MiB), every byte MD5-checked; "
              f"{(moved[0] + moved[1]) / MiB / elapsed:.1f} MiB/s")
        assert part_files(tmp_path / "store") == []
        assert_healthy(server)


def test_concurrent_uploads_and_downloads_are_intact(tmp_path):
    """8 clients uploading and downloading different files for 3 s: every byte verified."""
    mixed_clients(tmp_path, clients=8, seconds=3, max_size=2 * MiB)


@pytest.mark.slow
def test_concurrent_uploads_and_downloads_longer(tmp_path):
    """24 clients for 30 s with files up to 8 MiB: every byte verified."""
    mixed_clients(tmp_path, clients=24, seconds=30, max_size=8 * MiB)


@pytest.mark.slow
def test_two_hundred_clients_uploading_and_downloading(tmp_path):
    """200 clients at once for 30 s with files up to 1 MiB: every byte verified, nothing left over."""
    mixed_clients(tmp_path, clients=200, seconds=30, max_size=1 * MiB)


# -- races ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def race_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("races")
    # X-Client-DN from 127.0.0.1 is believed: racers of different identities
    with running(ServerProcess(work, http_args(work / "store", "--trusted-proxy", "127.0.0.1"))) as process:
        process.store = work / "store"  # type: ignore[attr-defined]
        yield process
        assert_healthy(process)


def test_racing_uploads_of_one_file_store_it_once(race_server):
    """Eight connections ask to send the same file at the same instant (Expect: 100-continue):
    one gets 100 and stores it (200), seven get 409 before sending a byte; the bytes are right."""
    base = race_server.url()
    name, content = unique("race.bin"), os.urandom(4 * MiB)
    key = post_manifest_key(base, "data", [(name, content)])
    head = (f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(content)}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    barrier = threading.Barrier(8)
    results: list[int | None] = []

    def racer() -> None:
        with connect(base, 20) as sock:
            barrier.wait(10)
            sock.sendall(head)
            first, _ = read_until_closed_or_answer(sock, 10, interim=True)
            if first.startswith(b"HTTP/1.1 100"):
                sock.sendall(content)
                first, _ = read_until_closed_or_answer(sock, 20)
            found = statuses(first)
            results.append(found[0] if found else None)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    print(f"racing uploads: {sorted(results, key=str)}")
    assert sorted(results, key=str) == [200] + [409] * 7
    assert md5((race_server.store / name).read_bytes()) == md5(content)
    assert file_state(base, "data", key) == "stored"


def read_until_closed_or_answer(sock: socket.socket, timeout: float, interim: bool = False) -> tuple[bytes, str]:
    """Read until a final response head is in (or, with ``interim``, a 100 Continue), bounded."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        data += chunk
        if statuses(data) or (interim and data.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in data):
            break
    return data, ""


def test_racing_manifests_for_one_name_accept_one(race_server):
    """Eight identities post manifests for the same new name at the same instant: exactly one key issued."""
    base = race_server.url()
    name = unique("same-name.bin")
    barrier = threading.Barrier(8)
    codes: list[str | None] = []

    def poster(number: int) -> None:
        barrier.wait(10)
        answer = request(base, "POST", "/data/manifest", manifest_for([(name, b"same")]),
                         headers={"X-Client-DN": f"/O=Grid/CN=Racer {number}"})
        codes.append(answer.fields().get("return_code"))

    threads = [threading.Thread(target=poster, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes, key=str) == ["0"] + ["1"] * 7


def test_racing_manifests_of_one_identity_leave_one_holder(race_server):
    """One identity posts eight manifests for the same name at once: each is accepted (taking the name
    over, SPEC 7.3) or refused as a conflict, and in the end exactly one live key holds the name pending."""
    base = race_server.url()
    name = unique("own-name.bin")
    barrier = threading.Barrier(8)
    keys: list[str] = []

    def poster() -> None:
        barrier.wait(10)
        answer = request(base, "POST", "/data/manifest", manifest_for([(name, b"same")]))
        fields = answer.fields()
        if fields.get("return_code") == "0":
            keys.append(fields["transfer_key"])
        else:
            # across --workers, the store's own pending-name check may answer before the take-over sees the key
            assert any(why in answer.text for why in ("announcing it", "arriving", "already being uploaded")), answer.text

    threads = [threading.Thread(target=poster) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert keys
    holders = [key for key in keys if request(base, "GET", f"/data/{key}").status == 200]
    assert len(holders) == 1 and file_state(base, "data", holders[0]) == "pending"


# -- SIGTERM with transfers in flight ---------------------------------------------------------------


def test_sigterm_with_many_uploads_in_flight(tmp_path):
    """SIGTERM with six bodies arriving (four finish within the grace, two stall): four 200s and intact,
    two abandoned cleanly and pending after the restart, where their keys still work."""
    store = tmp_path / "store"
    grace = 2.0
    server = ServerProcess(tmp_path, http_args(store, "--shutdown-grace", str(grace))).start()
    try:
        base = server.url()
        files = [(unique(f"term{i}.bin"), os.urandom(random.Random(i).randint(100_000, 2 * MiB))) for i in range(6)]
        keys = [post_manifest_key(base, "data", [f]) for f in files]
        sockets = []
        for (name, content), key in zip(files, keys):
            sock = connect(base, 20)
            sock.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(content)}\r\n\r\n".encode()
                         + content[: len(content) // 3])
            sockets.append(sock)
        wait_for(lambda: len(in_flight(store)) == len(files), 10, "every upload in flight")
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(*host_port(base)), 10, "the listener closed")
        with pytest.raises(OSError):
            socket.create_connection(host_port(base), timeout=1).close()
        answers: list[int | None] = []
        for index, ((name, content), sock) in enumerate(zip(files, sockets)):
            if index < 4:
                sock.sendall(content[len(content) // 3:])
                data, _ = read_until_closed_or_answer(sock, 10)
                found = statuses(data)
                answers.append(found[0] if found else None)
        assert server.process is not None
        code = server.process.wait(timeout=grace + 10)
        print(f"SIGTERM: answers {answers}, exit {code} after {time.monotonic() - signalled:.1f} s")
        for sock in sockets:
            sock.close()
    finally:
        server.stop()
    assert answers == [200] * 4
    for name, content in files[:4]:
        assert md5((store / name).read_bytes()) == md5(content)
    for name, _ in files[4:]:
        assert name not in visible_files(store)
    assert part_files(store) == []  # no temporary; the two abandoned files' partials may be kept
    with running(ServerProcess(tmp_path, http_args(store))) as again:
        base = again.url()
        for (name, content), key in list(zip(files, keys))[4:]:
            assert file_state(base, "data", key) == "pending"
            assert request(base, "POST", f"/data/{key}/0", content).status == 200
            assert request(base, "GET", f"/data/{name}").body == content
    assert in_flight(store) == []


def test_sigterm_lets_a_download_in_flight_finish(tmp_path):
    """A download being read steadily when SIGTERM comes is finished within --shutdown-grace."""
    grace = 5.0
    server = ServerProcess(tmp_path, http_args(tmp_path / "store", "--shutdown-grace", str(grace))).start()
    try:
        base = server.url()
        name, content = unique("dl.bin"), os.urandom(8 * MiB)
        assert upload(base, "data", name, content).status == 200
        with connect(base) as sock:
            sock.sendall(f"GET /data/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = sock.recv(65536)
            server.signal(signal.SIGTERM)
            while True:
                sock.settimeout(grace)
                try:
                    chunk = sock.recv(512 * 1024)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
                time.sleep(0.02)  # deliberate: a client reading slowly through the shutdown
        body = data.partition(b"\r\n\r\n")[2]
        print(f"download at SIGTERM: {len(body)} of {len(content)} bytes")
        assert md5(body) == md5(content)
    finally:
        server.stop()


def test_request_on_a_kept_alive_connection_after_sigterm(tmp_path):
    """After SIGTERM, a new upload on an already open connection is stored whole or refused: never half."""
    store = tmp_path / "store"
    server = ServerProcess(tmp_path, http_args(store, "--shutdown-grace", "3")).start()
    try:
        base = server.url()
        name, content = unique("alive.bin"), os.urandom(500_000)
        key = post_manifest_key(base, "data", [(name, content)])
        with connect(base) as sock:
            sock.sendall(b"GET /data/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _one_response(sock) == 200
            server.signal(signal.SIGTERM)
            wait_for(lambda: refuses_connections(*host_port(base)), 10, "the listener closed")
            try:
                sock.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(content)}\r\n\r\n"
                             .encode() + content)
                data, _ = read_until_closed(sock, 8)
            except OSError:
                data = b""
        assert server.process is not None
        server.process.wait(timeout=15)
    finally:
        server.stop()
    found = statuses(data)
    assert found in ([], [200], [503]), found
    if found == [200]:
        assert md5((store / name).read_bytes()) == md5(content)
    else:
        assert name not in visible_files(store)
    assert part_files(store) == []


@pytest.mark.slow
def test_latency_of_other_clients_during_a_big_commit(tmp_path):
    """A 512 MiB upload while another client polls every 20 ms: the file is intact; the worst wait of
    the other client (the commit's fsync and rename run on the reactor thread) is printed."""
    from tests.support.http import request as plain_request

    with running(ServerProcess(tmp_path, http_args(tmp_path / "store"))) as server:
        base = server.url()
        block = os.urandom(MiB)
        size = 512 * MiB
        digest = md5(block * 512)
        manifest = (f"[manifest]\nnum_files = 1\n[0]\nname = big.bin\nsize = {size}\nchecksum = {digest}\n").encode()
        key = plain_request(base, "POST", "/data/manifest", manifest).fields()["transfer_key"]
        waits: list[tuple[float, float]] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    plain_request(base, "GET", "/data/nothing", timeout=60)
                except OSError:
                    pass
                waits.append((time.monotonic() - started, started))
                time.sleep(0.02)  # deliberate: one probe every 20 ms

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            with connect(base, 120) as sock:
                sock.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
                for _ in range(512):
                    sock.sendall(block)
                last_byte = time.monotonic()
                answer, _ = read_until_closed_or_answer(sock, 120)
                answered = time.monotonic()
        finally:
            stop.set()
            prober.join(60)
        assert statuses(answer) == [200]
        worst, when = max(waits)
        print(f"512 MiB upload: answered {answered - last_byte:.2f} s after its last byte; another client's worst "
              f"wait {worst:.2f} s ({'during the commit' if when >= last_byte - 0.1 else 'while the body arrived'}), "
              f"{len(waits)} probes")
        import hashlib

        stored = hashlib.md5()
        with open(tmp_path / "store" / "big.bin", "rb") as data:
            while chunk := data.read(8 * MiB):
                stored.update(chunk)
        assert stored.hexdigest() == digest
