"""Transfer keys across restarts and crashes, their expiry, and their binding to one identity."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


from tests.support.server import ServerProcess

from .ag_client import AGClient, AGUploadError, file_md5, write_manifest
from .helpers import (
    calls,
    headers_only,
    open_socket,
    in_flight,
    part_files,
    read_response,
    recording_args,
    recording_env,
    request_head,
    running,
    server_args,
    wait_for,
    write_random_file,
)

BIG = 64 * 1024 * 1024


def post_manifest(client: AGClient, paths: list[Path]) -> str:
    answer = client.post_manifest(write_manifest(paths))
    fields = answer.fields()
    assert answer.status == 200 and fields.get("return_code") == "0", answer.text
    return fields["transfer_key"]


def file_states(client: AGClient, key: str) -> dict[str, str]:
    answer = client.request("GET", f"/data/{key}")
    assert answer.status == 200, answer.text
    return {entry["name"]: entry["state"] for entry in json.loads(answer.body)["files"]}


def test_transfer_key_survives_restart(tmp_path: Path) -> None:
    """A key issued before a restart still takes its file afterwards (200) and the file downloads."""
    store = tmp_path / "store"
    source = tmp_path / "later.dat"
    source.write_bytes(os.urandom(100_000))
    with running(ServerProcess(tmp_path, server_args(store))) as first:
        key = post_manifest(AGClient(first.url()), [source])
    with running(ServerProcess(tmp_path, server_args(store))) as second:
        client = AGClient(second.url())
        assert file_states(client, key) == {"later.dat": "pending"}
        answer = client.upload_file(key, 0, source)
        assert answer.status == 200, answer.text
        assert file_states(client, key) == {"later.dat": "stored"}
        downloaded = tmp_path / "down.dat"
        assert client.download("later.dat", downloaded).status == 200
        assert downloaded.read_bytes() == source.read_bytes()


def test_crash_mid_body_leaves_nothing_and_the_key_lives(tmp_path: Path) -> None:
    """SIGKILL mid-upload: no final file; at restart no temporary, the partial kept (at most what was synced),
    the file pending and re-uploadable whole; the partial gone once it is stored."""
    store = tmp_path / "store"
    source = tmp_path / "big.bin"
    md5 = write_random_file(source, BIG)
    server = ServerProcess(tmp_path, server_args(store)).start()
    try:
        client = AGClient(server.url())
        key = post_manifest(client, [source])
        with open_socket(server.url()) as sock, open(source, "rb") as body:
            sock.sendall(request_head("POST", f"/data/{key}/0", {"Content-Length": str(BIG)}))
            sent = 0
            for _ in range(16):  # 16 x 256 KiB: 4 MiB of 64 MiB, then silence
                chunk = body.read(256 * 1024)
                sock.sendall(chunk)
                sent += len(chunk)
            wait_for(
                lambda: any((store / p).stat().st_size >= sent // 2 for p in in_flight(store)),
                10,
                "the body to reach the temporary file",
            )
            assert file_states(client, key) == {"big.bin": "receiving"}
            server.kill()
        assert not (store / "big.bin").exists()
        assert "big.bin" not in os.listdir(store)
        assert in_flight(store), "the crash should have left the partial behind"
    except BaseException:
        print(server.log_text())
        raise
    finally:
        server.stop()

    with running(ServerProcess(tmp_path, server_args(store))) as restarted:
        assert part_files(store) == [] and len(in_flight(store)) == 1
        assert not (store / "big.bin").exists()
        client = AGClient(restarted.url())
        assert file_states(client, key) == {"big.bin": "pending"}
        held = client.request("HEAD", f"/data/{key}/0")
        assert held.status == 200 and int(held.headers["upload-offset"]) <= sent
        answer = client.upload_file(key, 0, source)
        assert answer.status == 200, answer.text
        downloaded = tmp_path / "down.bin"
        assert client.download("big.bin", downloaded).status == 200
        assert file_md5(downloaded) == md5
        assert in_flight(store) == []


def test_expired_key_cancels_pending_upload(tmp_path: Path) -> None:
    """When a key expires, CancelPendingUpload is called for its unuploaded file and the key is 404."""
    store, record = tmp_path / "store", tmp_path / "record.jsonl"
    done, never = tmp_path / "done.txt", tmp_path / "never.txt"
    done.write_bytes(b"uploaded in time\n")
    never.write_bytes(b"never uploaded\n")
    args = recording_args("--manifest-ttl", "1", "--reload-interval", "1")
    with running(ServerProcess(tmp_path, args, env=recording_env(store, record))) as server:
        client = AGClient(server.url())
        key = post_manifest(client, [done, never])
        assert client.upload_file(key, 0, done).status == 200
        cancelled = wait_for(
            lambda: calls(record, "CancelPendingUpload"), 10, "CancelPendingUpload"
        )
        assert [c["argument"] for c in cancelled] == ["never.txt"]
        assert client.request("GET", f"/data/{key}").status == 404
        assert client.upload_file(key, 1, never).status == 404
        assert client.request("DELETE", f"/data/{key}").status == 404
        # the file stored in time is kept
        assert client.download("done.txt", tmp_path / "down.txt").status == 200


def test_key_is_refused_to_another_identity(tmp_path: Path) -> None:
    """Alice's key is refused (403) to Bob and to an anonymous client, from the headers alone."""
    store = tmp_path / "store"
    source = tmp_path / "alice.dat"
    source.write_bytes(os.urandom(50_000))
    size = str(source.stat().st_size)
    args = server_args(store, "--trusted-proxy", "127.0.0.1")
    with running(ServerProcess(tmp_path, args)) as server:
        alice = AGClient(server.url(), dn="/CN=Alice")
        bob = AGClient(server.url(), dn="/CN=Bob")
        key = post_manifest(alice, [source])
        path = f"/data/{key}/0"
        as_bob = headers_only(server.url(), "POST", path, {"Content-Length": size, "X-Client-DN": "/CN=Bob"})
        assert as_bob.status == 403, as_bob.text
        anonymous = headers_only(server.url(), "POST", path, {"Content-Length": size})
        assert anonymous.status == 403, anonymous.text
        assert bob.request("GET", f"/data/{key}").status == 403
        assert bob.request("DELETE", f"/data/{key}").status == 403
        # none of this touched Alice's transfer
        assert file_states(alice, key) == {"alice.dat": "pending"}
        assert alice.upload_file(key, 0, source).status == 200
        assert (store / "alice.dat").read_bytes() == source.read_bytes()


def test_key_expired_while_down_is_cancelled_at_start(tmp_path: Path) -> None:
    """A key that expired while the server was down gets CancelPendingUpload at start-up and its name is free again."""
    store, record = tmp_path / "store", tmp_path / "record.jsonl"
    source = tmp_path / "late.txt"
    source.write_bytes(b"too late\n")
    env = recording_env(store, record)
    with running(ServerProcess(tmp_path, recording_args("--manifest-ttl", "1"), env=env)) as first:
        client = AGClient(first.url())
        key = post_manifest(client, [source])
        expires = json.loads(client.request("GET", f"/data/{key}").body)["expires"]
    wait_for(lambda: time.time() > expires + 0.2, 5, "the key to expire")
    with running(ServerProcess(tmp_path, recording_args(), env=env)) as second:
        cancelled = wait_for(lambda: calls(record, "CancelPendingUpload"), 10, "CancelPendingUpload")
        assert [c["argument"] for c in cancelled] == ["late.txt"]
        client = AGClient(second.url())
        assert client.upload_file(key, 0, source).status == 404
        # the name was released: a new transfer may take it
        client.upload([source])
        assert (store / "late.txt").read_bytes() == source.read_bytes()


def _expire_mid_body(client: AGClient, record: Path, key: str) -> None:
    """Wait (bounded) until the key's expiry has been swept while its file is arriving."""
    expires = json.loads(client.request("GET", f"/data/{key}").body)["expires"]
    wait_for(
        lambda: calls(record, "CancelPendingUpload") or time.time() > expires + 2.0,
        10,
        "the expiry sweep",
    )


def test_upload_accepted_before_expiry_is_stored(tmp_path: Path) -> None:
    """A body accepted from its headers while the key lived is stored (200) even if the key expires meanwhile."""
    store, record = tmp_path / "store", tmp_path / "record.jsonl"
    source = tmp_path / "slow.bin"
    source.write_bytes(os.urandom(200_000))
    data = source.read_bytes()
    args = recording_args("--manifest-ttl", "1", "--reload-interval", "0.25")
    with running(ServerProcess(tmp_path, args, env=recording_env(store, record))) as server:
        client = AGClient(server.url())
        key = post_manifest(client, [source])
        with open_socket(server.url()) as sock:
            sock.sendall(request_head("POST", f"/data/{key}/0", {"Content-Length": str(len(data))}))
            sock.sendall(data[:1000])
            _expire_mid_body(client, record, key)
            sock.sendall(data[1000:])
            answer = read_response(sock)
        assert answer.status == 200, answer.text
        assert calls(record, "CancelPendingUpload") == []
        downloaded = tmp_path / "down.bin"
        assert client.download("slow.bin", downloaded).status == 200
        assert downloaded.read_bytes() == data



def test_expired_upload_in_flight_never_destroys_a_stored_file(tmp_path: Path) -> None:
    """Whatever file was last answered 200 under a name is what that name downloads, even after an expiry mid-body."""
    store, record = tmp_path / "store", tmp_path / "record.jsonl"
    (tmp_path / "alice").mkdir()
    (tmp_path / "bob").mkdir()
    alice_file, bob_file = tmp_path / "alice" / "f.bin", tmp_path / "bob" / "f.bin"
    alice_file.write_bytes(b"A" * 100_000)
    bob_file.write_bytes(b"B" * 5_000)
    data = alice_file.read_bytes()
    args = recording_args("--manifest-ttl", "1", "--reload-interval", "0.25")
    with running(ServerProcess(tmp_path, args, env=recording_env(store, record))) as server:
        client = AGClient(server.url())
        key = post_manifest(client, [alice_file])
        with open_socket(server.url()) as sock:
            sock.sendall(request_head("POST", f"/data/{key}/0", {"Content-Length": str(len(data))}))
            sock.sendall(data[:1000])
            _expire_mid_body(client, record, key)
            try:
                client.upload([bob_file])
                last_stored: bytes | None = bob_file.read_bytes()
            except AGUploadError:  # the name is still taken by Alice's upload: fine too
                last_stored = None
            sock.sendall(data[1000:])
            if read_response(sock).status == 200:
                last_stored = data
        assert last_stored is not None, "neither upload was stored"
        downloaded = tmp_path / "down.bin"
        answer = client.download("f.bin", downloaded)
        assert answer.status == 200, answer.text
        assert downloaded.read_bytes() == last_stored
