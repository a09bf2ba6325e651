"""Resumable uploads, measured: an upload cut at 50 % and resumed with PATCH, and PATCH against POST.

Starts one gsitransfer server (``twistd -n accessgrid-transfer --http
tcp:0:interface=127.0.0.1 --store data=DIR``, this source tree) and, on
127.0.0.1, with plain sockets:

1. an uninterrupted ``POST`` of the file (``--size``, default 1 GiB): the
   time of its second half (from the middle byte sent to the ``200``);
2. the same file under another name, its ``POST`` cut after half the bytes
   (the connection closed), then ``HEAD`` and one ``PATCH`` of the rest: the
   time of the resumed half (``HEAD`` + ``PATCH`` to the ``204``) and the
   bytes sent in all (goal: the file's size plus nothing);
3. ``POST`` of the whole file against ``PATCH`` from offset 0 of the whole
   file, same run, each ``--repeat`` times (goal: PATCH within 5 % of POST).

Every stored file is checked (size and MD5 from the server) and removed
before the next run. Prints one JSON object. No assertion on time: this is a
measurement. Usage::

    python bench/resume.py [--size 1GiB] [--repeat 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"gsitransfer listening: http://127\.0\.0\.1:(\d+)")
CHUNK = 1 << 20


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    store = workdir / "store"
    store.mkdir(exist_ok=True)
    log_path = workdir / "server.log"
    log = open(log_path, "wb")
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    process = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from twisted.scripts.twistd import run; "
         "sys.argv = ['twistd', '-n', '--pidfile=', '--logfile=-'] + sys.argv[1:]; run()",
         "accessgrid-transfer", "--http", "tcp:0:interface=127.0.0.1", "--store", f"data={store}"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return process, int(found.group(1)), store
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not start:\n{log_path.read_text(errors='replace')}")


class Client:
    """Requests on fresh connections to 127.0.0.1:port; bodies streamed from a file."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=600)

    def _send_file(self, sock: socket.socket, path: Path, start: int, end: int) -> None:
        with open(path, "rb") as source:
            source.seek(start)
            left = end - start
            while left:
                chunk = source.read(min(CHUNK, left))
                sock.sendall(chunk)
                left -= len(chunk)
                self.sent += len(chunk)

    def request(self, head: str, path: Path | None = None, start: int = 0, end: int = 0,
                body: bytes = b"", mark_at: int | None = None) -> tuple[int, dict[str, str], bytes, float | None]:
        """Send ``head`` and a body (bytes, or ``path[start:end]``); (status, headers, body, time the
        byte at ``mark_at`` was sent)."""
        marked: float | None = None
        with self._connect() as sock:
            sock.sendall(head.encode() + body)
            self.sent += len(body)
            if path is not None:
                if mark_at is not None:
                    self._send_file(sock, path, start, mark_at)
                    marked = time.perf_counter()
                    start = mark_at
                self._send_file(sock, path, start, end)
            status, headers, answer = read_response(sock)
        return status, headers, answer, marked

    def cut(self, key: str, path: Path, size: int, at: int) -> None:
        """A whole-file POST closed after ``at`` bytes of its body."""
        with self._connect() as sock:
            sock.sendall(f"POST /data/{key}/0 HTTP/1.1\r\nHost: b\r\nContent-Length: {size}\r\n\r\n".encode())
            self._send_file(sock, path, 0, at)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}
            if 100 <= status < 200:
                data = rest
                continue
            length = int(headers.get("content-length", "0"))
            if len(rest) >= length:
                return status, headers, rest[:length]
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed before an answer: {data[:200]!r}")
        data += chunk


def manifest(client: Client, name: str, size: int, md5: str) -> str:
    body = f"[manifest]\nnum_files = 1\n\n[0]\nname = {name}\nsize = {size}\nchecksum = {md5}\n".encode()
    status, _, answer, _ = client.request(
        f"POST /data/manifest HTTP/1.1\r\nHost: b\r\nContent-Length: {len(body)}\r\n\r\n", body=body)
    fields = dict(line.split(": ", 1) for line in answer.decode().splitlines() if ": " in line)
    if status != 200 or fields.get("return_code") != "0":
        raise SystemExit(f"manifest refused: {answer!r}")
    return fields["transfer_key"]


def post_head(key: str, size: int) -> str:
    return f"POST /data/{key}/0 HTTP/1.1\r\nHost: b\r\nContent-Length: {size}\r\n\r\n"


def patch_head(key: str, offset: int, length: int) -> str:
    return (f"PATCH /data/{key}/0 HTTP/1.1\r\nHost: b\r\nContent-Length: {length}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n\r\n")


def offset_of(client: Client, key: str) -> int:
    status, headers, _, _ = client.request(f"HEAD /data/{key}/0 HTTP/1.1\r\nHost: b\r\nTus-Resumable: 1.0.0\r\n\r\n")
    assert status == 200, status
    return int(headers["upload-offset"])


def state_of(client: Client, key: str) -> str:
    _, _, body, _ = client.request(f"GET /data/{key} HTTP/1.1\r\nHost: b\r\n\r\n")
    return str(json.loads(body)["files"][0]["state"])


def check_and_remove(store: Path, name: str, size: int, md5: str) -> None:
    path = store / name
    digest = hashlib.md5()
    with open(path, "rb") as stored:
        while chunk := stored.read(CHUNK):
            digest.update(chunk)
    if path.stat().st_size != size or digest.hexdigest() != md5:
        raise SystemExit(f"{name}: stored file differs")
    path.unlink()


def make_file(path: Path, size: int) -> str:
    digest = hashlib.md5()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def run(size: int, repeat: int, workdir: Path) -> dict[str, Any]:
    source = workdir / "source.bin"
    md5 = make_file(source, size)
    process, port, store = start_server(workdir)
    half = size // 2
    try:
        client = Client(port)
        # 1. uninterrupted
        key = manifest(client, "whole.bin", size, md5)
        client.sent = 0
        status, _, _, marked = client.request(post_head(key, size), source, 0, size, mark_at=half)
        done = time.perf_counter()
        assert status == 200 and marked is not None, status
        uninterrupted_second_half = done - marked
        check_and_remove(store, "whole.bin", size, md5)
        # 2. cut at 50 %, resumed with HEAD + PATCH
        key = manifest(client, "resumed.bin", size, md5)
        client.sent = 0
        client.cut(key, source, size, half)
        deadline = time.monotonic() + 120
        while state_of(client, key) != "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        began = time.perf_counter()
        offset = offset_of(client, key)
        status, _, answer, _ = client.request(patch_head(key, offset, size - offset), source, offset, size)
        resumed_half = time.perf_counter() - began
        assert status == 204, (status, answer)
        resumed_sent = client.sent
        check_and_remove(store, "resumed.bin", size, md5)
        # 3. POST against PATCH from 0, same file, alternating
        post_times: list[float] = []
        patch_times: list[float] = []
        for round_ in range(repeat):
            for method in ("POST", "PATCH") if round_ % 2 == 0 else ("PATCH", "POST"):  # alternate who goes first
                name = f"{method.lower()}{round_}.bin"
                key = manifest(client, name, size, md5)
                began = time.perf_counter()
                head = post_head(key, size) if method == "POST" else patch_head(key, 0, size)
                status, _, answer, _ = client.request(head, source, 0, size)
                (post_times if method == "POST" else patch_times).append(time.perf_counter() - began)
                assert status in (200, 204), (status, answer)
                check_and_remove(store, name, size, md5)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    mib = size / (1 << 20)
    post_best, patch_best = min(post_times), min(patch_times)
    return {
        "size_bytes": size,
        "cut_at_bytes": half,
        "resumed_offset_reported": offset,
        "resumed_bytes_sent_in_all": resumed_sent,
        "resumed_overhead_bytes": resumed_sent - size,
        "uninterrupted_second_half_s": round(uninterrupted_second_half, 3),
        "resumed_half_s": round(resumed_half, 3),
        "resumed_half_over_uninterrupted": round(resumed_half / uninterrupted_second_half, 3),
        "post_s": [round(t, 3) for t in post_times],
        "patch_s": [round(t, 3) for t in patch_times],
        "post_best_MiB_s": round(mib / post_best, 1),
        "patch_best_MiB_s": round(mib / patch_best, 1),
        "patch_over_post_throughput": round(post_best / patch_best, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="the file's size (e.g. 64MiB, 1GiB)")
    parser.add_argument("--repeat", type=int, default=3, help="POST/PATCH rounds")
    parser.add_argument("--workdir", help="where the file, the store and the log go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gsitransfer-bench-resume-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(json.dumps(run(parse_size(args.size), args.repeat, workdir), indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
