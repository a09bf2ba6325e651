"""Resumable file URLs over real sockets: cut-off bodies continued with PATCH, across SIGTERM and SIGKILL,
take-over by the same identity, mutual TLS and curl (SPEC 7.1, 7.3)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gsitransfer.testca import TestPKI, make_test_pki
from tests.support.http import Response, client_tls, manifest_for, request
from tests.support.server import ServerProcess

from .helpers import running, server_args, wait_for

SIZE = 3 * 1024 * 1024 + 12_345  # above the offload threshold: the writer threads' path


def tls_args(pki: TestPKI, store: Path, *extra: str) -> list[str]:
    return [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir), "--store", f"data={store}", *extra,
    ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"), users=("alice", "bob"), share_keys=True)


def user_tls(pki: TestPKI, name: str) -> ssl.SSLContext:
    user = pki.users[name]
    return client_tls(str(pki.ca_file), str(user.cert), str(user.key))


def data_of(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def post(base: str, files: list[tuple[str, bytes]], tls: ssl.SSLContext | None = None) -> Response:
    return request(base, "POST", "/data/manifest", manifest_for(files), tls=tls)


def key_of(answer: Response) -> str:
    fields = answer.fields()
    assert answer.status == 200 and fields.get("return_code") == "0", answer.text
    return fields["transfer_key"]


def connect(base: str, tls: ssl.SSLContext | None) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    return tls.wrap_socket(sock, server_hostname="localhost") if tls is not None else sock


def start_post(base: str, key: str, data: bytes, sent: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    """A whole-file POST of ``data`` that has sent ``sent`` bytes of its body so far (left open)."""
    sock = connect(base, tls)
    sock.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n\r\n".encode())
    sock.sendall(data[:sent])
    return sock


def state(base: str, key: str, tls: ssl.SSLContext | None = None) -> dict[str, object]:
    answer = request(base, "GET", f"/data/{key}", tls=tls)
    assert answer.status == 200, answer.text
    file: dict[str, object] = json.loads(answer.body)["files"][0]
    return file


def held(base: str, key: str, tls: ssl.SSLContext | None = None) -> int:
    """HEAD on file 0: the durable bytes the server holds (checking the tus headers)."""
    answer = request(base, "HEAD", f"/data/{key}/0", headers={"Tus-Resumable": "1.0.0"}, tls=tls)
    assert answer.status == 200 and answer.headers["tus-resumable"] == "1.0.0", answer
    assert answer.headers["cache-control"] == "no-store" and "upload-expires" in answer.headers
    return int(answer.headers["upload-offset"])


def cut(base: str, key: str, data: bytes, sent: int, tls: ssl.SSLContext | None = None) -> int:
    """A POST cut off after ``sent`` bytes; once the server has kept them, the offset it reports (all of them
    over plain TCP; over TLS the close may reset the connection, the server then keeps what it read)."""
    start_post(base, key, data, sent, tls).close()

    def kept() -> bool:  # pending again, holding bytes (not the state before the body came)
        now = state(base, key, tls)
        return now["state"] == "pending" and 0 < int(str(now["offset"])) <= sent

    wait_for(kept, 15, "the cut-off body to be kept")
    return held(base, key, tls)


def patch(base: str, key: str, offset: int, piece: bytes, tls: ssl.SSLContext | None = None, **extra: str) -> Response:
    headers = {
        "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset),
        **{name.replace("_", "-"): value for name, value in extra.items()},
    }
    return request(base, "PATCH", f"/data/{key}/0", piece, headers, tls=tls, timeout=60)


def finish(base: str, key: str, data: bytes, offset: int, tls: ssl.SSLContext | None = None, pieces: int = 2) -> None:
    """PATCH the rest of ``data`` from ``offset`` in ``pieces`` pieces; each answer 204 with the new offset."""
    bounds = [offset + (len(data) - offset) * i // pieces for i in range(pieces + 1)]
    for start, end in zip(bounds, bounds[1:]):
        answer = patch(base, key, start, data[start:end], tls)
        assert answer.status == 204 and answer.headers["upload-offset"] == str(end), answer


def stored_md5(base: str, name: str, tls: ssl.SSLContext | None = None) -> str:
    answer = request(base, "GET", f"/data/{name}", tls=tls, timeout=60)
    assert answer.status == 200
    return hashlib.md5(answer.body).hexdigest()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_cut_at_random_offsets_then_patch(tmp_path: Path, seed: int) -> None:
    """A POST cut at a random offset is held exactly; PATCH continues it; the stored file's MD5 is right."""
    data = data_of(seed)
    sent = random.Random(-seed).randrange(1, SIZE)
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store"))) as server:
        base = server.url()
        key = key_of(post(base, [("f.bin", data)]))
        assert cut(base, key, data, sent) == sent
        assert state(base, key)["offset"] == sent
        finish(base, key, data, sent)
        assert stored_md5(base, "f.bin") == hashlib.md5(data).hexdigest()
        assert held(base, key) == SIZE
        assert not [p for p in (tmp_path / "store").iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_held_bytes_survive_a_restart(tmp_path: Path, how: str) -> None:
    """Bytes held after a cut-off survive a SIGTERM restart and a SIGKILL: HEAD reports them, PATCH finishes."""
    data = data_of(7)
    sent = random.Random(how).randrange(SIZE // 4, SIZE)
    store = tmp_path / "store"
    with running(ServerProcess(tmp_path, server_args(store))) as first:
        key = key_of(post(first.url(), [("f.bin", data)]))
        assert cut(first.url(), key, data, sent) == sent
        if how == "SIGKILL":
            first.kill()
    with running(ServerProcess(tmp_path, server_args(store))) as second:
        base = second.url()
        assert held(base, key) == sent
        finish(base, key, data, sent, pieces=3)
        assert stored_md5(base, "f.bin") == hashlib.md5(data).hexdigest()


def test_sigkill_while_the_body_arrives(tmp_path: Path) -> None:
    """SIGKILL in the middle of a body: after the restart the offset is a synced checkpoint (never more
    than arrived, and past the first 32 MiB) and PATCH from it stores the right file."""
    size = 40 * 1024 * 1024
    data = data_of(11, size)
    sent = 36 * 1024 * 1024
    store = tmp_path / "store"
    with running(ServerProcess(tmp_path, server_args(store))) as first:
        key = key_of(post(first.url(), [("big.bin", data)]))
        sock = start_post(first.url(), key, data, sent)
        wait_for(lambda: held(first.url(), key) > 0, 30, "a checkpoint while the body arrives")
        first.kill()
        sock.close()
    with running(ServerProcess(tmp_path, server_args(store))) as second:
        base = second.url()
        offset = held(base, key)
        assert 32 * 1024 * 1024 <= offset <= sent
        finish(base, key, data, offset)
        assert stored_md5(base, "big.bin") == hashlib.md5(data).hexdigest()


def test_wrong_final_byte_is_422_and_offset_zero(tmp_path: Path) -> None:
    """A PATCH whose last byte is wrong: 422, offset 0; a whole POST then stores the file."""
    data = data_of(5)
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store"))) as server:
        base = server.url()
        key = key_of(post(base, [("f.bin", data)]))
        sent = cut(base, key, data, SIZE // 2)
        bad = data[sent:-1] + bytes([data[-1] ^ 0xFF])
        answer = patch(base, key, sent, bad)
        assert answer.status == 422 and answer.text.startswith("checksum mismatch"), answer
        assert held(base, key) == 0
        answer = request(base, "POST", f"/data/{key}/0", data, timeout=60)
        assert answer.status == 200 and stored_md5(base, "f.bin") == hashlib.md5(data).hexdigest()


def test_workers_share_the_offsets(tmp_path: Path) -> None:
    """With --workers 2 a cut-off body on one worker is continued by pieces that may reach either worker."""
    data = data_of(9)
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store", "--workers", "2"))) as server:
        base = server.url()
        key = key_of(post(base, [("f.bin", data)]))
        sent = cut(base, key, data, SIZE // 3)
        finish(base, key, data, sent, pieces=6)
        assert stored_md5(base, "f.bin") == hashlib.md5(data).hexdigest()


def test_mutual_tls_take_over_and_identity(tmp_path: Path, pki: TestPKI) -> None:
    """Over mutual TLS: Bob may not HEAD or PATCH Alice's file (403); Alice's same manifest again takes the
    name over and is told resume_from; Bob's manifest of the name is refused; the file finishes right."""
    data = data_of(13)
    alice, bob = user_tls(pki, "alice"), user_tls(pki, "bob")
    with running(ServerProcess(tmp_path, tls_args(pki, tmp_path / "store"))) as server:
        base = server.url("https").replace("127.0.0.1", "localhost")
        old = key_of(post(base, [("f.bin", data)], alice))
        sent = cut(base, old, data, SIZE // 2, alice)
        assert request(base, "HEAD", f"/data/{old}/0", tls=bob).status == 403
        assert patch(base, old, sent, data[sent:], bob).status == 403
        refused = post(base, [("f.bin", data)], bob)
        assert refused.fields()["return_code"] == "1" and "already being uploaded" in refused.text
        again = post(base, [("f.bin", data)], alice)
        new = key_of(again)
        assert again.fields()["resume_from"] == f"0={sent}"
        assert request(base, "HEAD", f"/data/{old}/0", tls=alice).status == 404
        assert held(base, new, alice) == sent
        finish(base, new, data, sent, alice)
        assert stored_md5(base, "f.bin", alice) == hashlib.md5(data).hexdigest()


def test_a_name_arriving_now_is_409_with_strict(tmp_path: Path) -> None:
    """A name whose body is arriving on another connection is not taken over: 409 with Prefer: handling=strict."""
    data = data_of(17)
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store"))) as server:
        base = server.url()
        key = key_of(post(base, [("f.bin", data)]))
        sock = start_post(base, key, data, 1000)
        wait_for(lambda: state(base, key)["state"] == "receiving", 15, "the body to arrive")
        answer = request(base, "POST", "/data/manifest", manifest_for([("f.bin", data)]),
                         {"Prefer": "handling=strict"})
        assert answer.status == 409 and "arriving on another connection" in answer.text
        sock.close()


def test_curl_head_and_patch(tmp_path: Path) -> None:
    """curl alone: HEAD shows Upload-Offset, PATCH --data-binary from it finishes the file (204)."""
    data = data_of(19)
    rest = tmp_path / "rest.bin"
    with running(ServerProcess(tmp_path, server_args(tmp_path / "store"))) as server:
        base = server.url()
        key = key_of(post(base, [("f.bin", data)]))
        sent = cut(base, key, data, 1_000_000)
        curl = ["curl", "-sS", "--max-time", "60"]
        shown = subprocess.run([*curl, "-I", f"{base}/data/{key}/0"], capture_output=True, text=True, timeout=90)
        assert f"Upload-Offset: {sent}" in shown.stdout, shown.stdout
        rest.write_bytes(data[sent:])
        done = subprocess.run(
            [*curl, "-X", "PATCH", "-H", "Content-Type: application/offset+octet-stream",
             "-H", f"Upload-Offset: {sent}", "--data-binary", f"@{rest}", "-w", "%{http_code}",
             f"{base}/data/{key}/0"],
            capture_output=True, text=True, timeout=90,
        )
        assert done.stdout == "204", done
        assert stored_md5(base, "f.bin") == hashlib.md5(data).hexdigest()
        assert os.path.exists(tmp_path / "store" / "f.bin")
