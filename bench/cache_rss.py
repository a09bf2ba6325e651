"""Issue 12 finding 5, by hand: workers' RSS growth over repeated 10,000-file manifests.

POSTs a 10,000-file manifest, DELETEs its key over a new connection, N times,
against a ``--workers 2 --http`` server on loopback, and prints each worker's
VmRSS growth at four checkpoints and at the end (a bounded cache levels off;
an unbounded one grows with every round whose DELETE another worker
answered). A figure for the note, not a test:
``.venv/bin/python bench/cache_rss.py [rounds]``.
"""

from __future__ import annotations

import http.client
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gsitransfer.manifest import Manifest  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

MD5 = "0d5f0d6a4bb0f6e1a3b6b1b0c7e0c1d2"


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def request(netloc: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request on a new connection: (status, body)."""
    host, port = netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body or None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def main(rounds: int) -> None:
    """Run the rounds and print the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args = ["--http", "tcp:0:interface=127.0.0.1", "--store", f"data={work / 'data'}", "--workers", "2",
                "--state", str(work / "state")]
        with ServerProcess(work, args).start() as server:
            netloc = urlsplit(server.url("http")).netloc
            workers = server.worker_pids()
            before = {pid: rss_kib(pid) for pid in workers}
            checkpoint = max(1, rounds // 4)
            for n in range(rounds):
                if n and n % checkpoint == 0:
                    now = ", ".join(f"{pid}: +{rss_kib(pid) - before[pid]} KiB" for pid in workers)
                    print(f"after {n} rounds: {now}", flush=True)
                body = Manifest.of(*((f"r{n}f{i}", 1, MD5) for i in range(10_000))).to_ini().encode()
                status, text = request(netloc, "POST", "/data/manifest", body)
                fields = dict(line.split(": ", 1) for line in text.decode().splitlines() if ": " in line)
                assert status == 200 and "transfer_key" in fields, (status, text[:200])
                key = fields["transfer_key"]
                request(netloc, "DELETE", f"/data/{key}")
            after = {pid: rss_kib(pid) for pid in workers}
    for pid in workers:
        print(f"worker {pid}: {before[pid]} KiB -> {after[pid]} KiB (+{after[pid] - before[pid]} KiB) over {rounds} rounds")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
