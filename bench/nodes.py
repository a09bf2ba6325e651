"""Issue 17's figures: the state in SQLite against PostgreSQL, and one node against two behind HAProxy.

Two measurements, each in one run with its variants interleaved, mutual TLS
with a test-CA user certificate, everything on 127.0.0.1 of this machine:

* ``small``: the small-file rate — ``--clients`` (32) client processes, each
  on one keep-alive connection, announce a one-file manifest and upload its
  64 KiB body (``POST /data/manifest`` then ``POST /data/<key>/0``), in
  turn, ``--files`` times in all; one gsitransfer at its defaults with its
  state in SQLite (the default) and with ``--state postgresql://…`` (a private
  PostgreSQL started here, ``fsync=off`` is NOT set: a real commit).
  Reports files/s and the CPU seconds per file of gsitransfer and of
  PostgreSQL;
* ``haproxy``: aggregate throughput through HAProxy (``mode tcp``, health
  checks on ``/healthz``) in front of one node and of two nodes (same
  PostgreSQL state, same store): ``--streams`` (4) parallel ``curl -T`` PUTs
  of ``--size`` (256 MiB) each, then the same files downloaded by 4 parallel
  ``curl -o /dev/null``; MB/s over the whole batch.

No assertion: a measurement. Usage::

    python bench/nodes.py [--rounds 3] [--files 1600] [--clients 32] [--size 256MiB] [--streams 4]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from benchservers import GsiTransferServer, free_port, stop_all  # noqa: E402
from procstat import TreeMeter  # noqa: E402
from resume import parse_size  # noqa: E402
from tests.support.haproxy import PrivateHAProxy  # noqa: E402
from tests.support.postgres import PrivatePostgres, schema_url  # noqa: E402

from gsitransfer.testca import make_test_pki  # noqa: E402

BODY = os.urandom(64 * 1024)
MANIFEST_TEMPLATE = "[manifest]\nnum_files = 1\n\n[0]\nname = {name}\nsize = {size}\nchecksum = {md5}\n"


def _client(job: tuple[int, int, int, str, str]) -> tuple[int, list[str]]:
    """One client process: ``count`` manifests + 64 KiB uploads on one keep-alive connection; (stored,
    the answers that were not 200)."""
    port, index, count, ca_file, proxy = job
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca_file)
    context.load_cert_chain(proxy, proxy)
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=60)
    md5 = hashlib.md5(BODY).hexdigest()
    done = 0
    other: list[str] = []
    for number in range(count):
        name = f"c{index}-{number}-{time.monotonic_ns()}.dat"
        connection.request("POST", "/data/manifest", MANIFEST_TEMPLATE.format(name=name, size=len(BODY), md5=md5))
        answer = connection.getresponse().read().decode()
        key = dict(line.split(": ", 1) for line in answer.splitlines() if ": " in line)["transfer_key"]
        connection.request("POST", f"/data/{key}/0", BODY, {"Content-Length": str(len(BODY))})
        response = connection.getresponse()
        text = response.read()
        done += response.status == 200
        if response.status != 200:
            other.append(f"{response.status} {text[:200]!r}")
    connection.close()
    return done, other


def small_files(args: argparse.Namespace, work: Path, pki: Any, database: PrivatePostgres) -> dict[str, Any]:
    venv = REPO / ".venv"
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    per_client = max(1, args.files // args.clients)
    for round_number in range(args.rounds):
        for variant in ("sqlite", "postgresql") if round_number % 2 == 0 else ("postgresql", "sqlite"):
            store = work / f"small-{variant}-{round_number}"
            store.mkdir()
            extra = [] if variant == "sqlite" else ["--state", schema_url(database.url, f"small{round_number}")]
            server = GsiTransferServer(venv, REPO, work / f"srv-{variant}", pki.server_cert, pki.server_key,
                                       pki.ca_dir, store, extra)
            server.start()
            try:
                meter, db_meter = server.meter(), TreeMeter(database.process.pid)  # type: ignore[union-attr]
                cpu0, db0, started = meter.cpu(), db_meter.cpu(), time.monotonic()
                jobs = [(server.port, i, per_client, str(pki.ca_file), str(pki.users["alice"].proxy))
                        for i in range(args.clients)]
                with multiprocessing.Pool(args.clients) as pool:
                    answers = pool.map(_client, jobs)
                stored = sum(done for done, _ in answers)
                for _, other in answers:
                    for line in other:
                        print(f"{variant}: {line}", file=sys.stderr)
                elapsed = time.monotonic() - started
                cpu, db_cpu = meter.cpu() - cpu0, db_meter.cpu() - db0
            finally:
                server.stop()
            results[variant].append({"files": stored, "files_per_s": stored / elapsed,
                                     "server_cpu_ms_per_file": 1000 * cpu / max(stored, 1),
                                     "postgres_cpu_ms_per_file": 1000 * db_cpu / max(stored, 1)})
            shutil.rmtree(store, ignore_errors=True)
    summary = {
        variant: {field: round(statistics.median(r[field] for r in runs), 3) for field in runs[0]}
        for variant, runs in results.items()
    }
    summary["postgresql/sqlite files_per_s"] = round(
        summary["postgresql"]["files_per_s"] / summary["sqlite"]["files_per_s"], 3)
    return summary


def _curl_batch(urls_files: list[tuple[str, Path | None]], pki: Any, upload: bool) -> float:
    """Run one curl per (url, file) at once; seconds until all are done."""
    proxy = str(pki.users["alice"].proxy)
    base = ["curl", "-sS", "--http1.1", "--fail", "--cacert", str(pki.ca_file), "--cert", proxy, "--key", proxy]
    started = time.monotonic()
    processes = [
        subprocess.Popen([*base, "-T", str(path), url] if upload else [*base, "-o", "/dev/null", url],
                         stdout=subprocess.DEVNULL)
        for url, path in urls_files
    ]
    codes = [process.wait(timeout=1800) for process in processes]
    if any(codes):
        raise RuntimeError(f"curl failed: {codes}")
    return time.monotonic() - started


def through_haproxy(args: argparse.Namespace, work: Path, pki: Any, database: PrivatePostgres) -> dict[str, Any]:
    venv = REPO / ".venv"
    size = parse_size(args.size)
    sources = []
    for index in range(args.streams):
        path = work / f"src{index}.bin"
        with open(path, "wb") as out:
            for _ in range(size // (1 << 20)):
                out.write(os.urandom(1 << 20))
        sources.append(path)
    results: dict[str, list[dict[str, float]]] = {"1 node": [], "2 nodes": []}
    for round_number in range(args.rounds):
        for count in (1, 2) if round_number % 2 == 0 else (2, 1):
            store = work / f"shared-{count}-{round_number}"
            store.mkdir()
            url = schema_url(database.url, f"ha{count}r{round_number}")
            servers, ports = [], []
            try:
                for node in range(count):
                    metrics = free_port()
                    server = GsiTransferServer(venv, REPO, work / f"node{node}", pki.server_cert, pki.server_key,
                                               pki.ca_dir, store,
                                               ["--state", url, "--metrics", f"tcp:{metrics}:interface=127.0.0.1"])
                    server.start()
                    servers.append(server)
                    ports.append((server.port, metrics))
                with PrivateHAProxy(ports) as balancer:
                    time.sleep(1.5)  # the first health checks
                    base = f"https://localhost:{balancer.port}/data/"
                    names = [f"r{round_number}-{i}.bin" for i in range(args.streams)]
                    up = _curl_batch([(base + n, p) for n, p in zip(names, sources)], pki, upload=True)
                    down = _curl_batch([(base + n, None) for n in names], pki, upload=False)
                total = size * args.streams / 1e6
                results[f"{count} node" + ("s" if count > 1 else "")].append(
                    {"upload_MB_s": total / up, "download_MB_s": total / down})
            finally:
                for server in servers:
                    server.stop()
                shutil.rmtree(store, ignore_errors=True)
                subprocess.run(["sync"], check=False)
    summary = {
        variant: {field: round(statistics.median(r[field] for r in runs), 1) for field in runs[0]}
        for variant, runs in results.items()
    }
    for field in ("upload_MB_s", "download_MB_s"):
        summary[f"2/1 {field}"] = round(summary["2 nodes"][field] / summary["1 node"][field], 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=1600)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--only", choices=("small", "haproxy"))
    parser.add_argument("--workdir")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gsibench-nodes-"))
    pki = make_test_pki(work / "pki", users=("alice",), share_keys=True)
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    database = PrivatePostgres(durable=True)
    try:
        database.start()
        if args.only in (None, "small"):
            report["small files (manifest + 64 KiB upload)"] = small_files(args, work, pki, database)
        if args.only in (None, "haproxy"):
            report[f"through HAProxy ({args.streams} x {args.size})"] = through_haproxy(args, work, pki, database)
    finally:
        stop_all()
        database.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
