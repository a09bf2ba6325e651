"""The cost of --metrics and --audit-log: the same server without and with them, one run, interleaved.

Starts two gsitransfer servers from this tree at their defaults over mutual
TLS (``twistd -n accessgrid-transfer --https … --store data=DIR``), the
second with ``--metrics tcp:0:interface=127.0.0.1 --audit-log FILE``, and
runs the referee's clients against each in turn, ``--rounds`` times:

* ``ka``: ``--requests`` GETs of a 64 KiB file with ``curl --http1.1 -Z
  --parallel-max 32`` (keep-alive connections, as the referee's ``ka``;
  ``--files N``: N files in turn, so no two records in a row are alike);
* ``up``: a PUT of a ``--size`` file with ``curl -T`` (every upload records
  an event: name, size, MD5, duration).

Per run: requests (or MB) per second from curl's wall time, and the server's
CPU (its process tree, from /proc) per request or per GB. Prints one JSON
object with the medians, the ratios with/without of the medians, and the
median of each round's own ratio (``paired_on_over_off``: the two servers
ran one after the other, so it cancels most of the machine's drift) — goal:
cost ≤ 3 %. Use ``--requests 30000`` or more: the server's CPU is read in
10 ms ticks.
No assertion: a measurement. Usage::

    python bench/observability.py [--rounds 5] [--requests 10000] [--size 256MiB]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resume import parse_size  # noqa: E402
from benchservers import GsiTransferServer, stop_all  # noqa: E402

SRC = Path(__file__).resolve().parents[1]


def run(rounds: int, requests: int, size: int, workdir: Path, on_args: list[str] | None = None,
        files: int = 1) -> dict[str, Any]:
    from gsitransfer.testca import make_test_pki

    pki = make_test_pki(workdir / "pki", users=("alice",))
    alice = pki.users["alice"]
    tls = ["--cacert", str(pki.ca_file), "--cert", str(alice.cert), "--key", str(alice.key)]
    servers = {}
    if on_args is None:
        on_args = ["--metrics", "tcp:0:interface=127.0.0.1", "--audit-log", str(workdir / "audit.log")]
    for label, extra in (("off", []), ("on", on_args)):
        store = workdir / f"store-{label}"
        store.mkdir()
        for number in range(files):
            (store / file_name(number, files)).write_bytes(os.urandom(64 * 1024))
        servers[label] = GsiTransferServer(Path(sys.prefix), SRC, workdir / label, pki.server_cert, pki.server_key,
                                           pki.ca_dir, store, extra)
    big = workdir / "big.bin"
    with open(big, "wb") as out:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            out.write(block)
    urls_file = {}
    results: dict[str, dict[str, list[float]]] = {
        label: {"ka_rps": [], "ka_cpu_ms": [], "up_mbps": [], "up_cpu_s_per_gb": []} for label in servers
    }
    try:
        for server in servers.values():
            server.start()
        for label, server in servers.items():
            config = workdir / f"urls-{label}.txt"
            urls = [server.url(f"/data/{file_name(number, files)}").replace("127.0.0.1", "localhost")
                    for number in range(files)]
            config.write_text("".join(f'url = "{urls[number % files]}"\noutput = "/dev/null"\n'
                                      for number in range(requests)))
            urls_file[label] = config
        for number in range(rounds):
            order = ["off", "on"] if number % 2 == 0 else ["on", "off"]
            for label in order:
                server = servers[label]
                meter = server.meter()
                before, start = meter.cpu(), time.monotonic()
                subprocess.run(["curl", "-sS", "--http1.1", "-Z", "--parallel-max", "32", *tls,
                                "-K", str(urls_file[label])], check=True, timeout=600, capture_output=True)
                elapsed, cpu = time.monotonic() - start, meter.cpu() - before
                results[label]["ka_rps"].append(requests / elapsed)
                results[label]["ka_cpu_ms"].append(cpu * 1000 / requests)
            for label in order:
                server = servers[label]
                meter = server.meter()
                name = f"up-{number}.bin"
                before = meter.cpu()
                out = subprocess.run(["curl", "-sS", "--http1.1", *tls, "-T", str(big), "-o", "/dev/null", "-w",
                                      "%{http_code} %{time_total}",
                                      server.url("/data/").replace("127.0.0.1", "localhost") + name],
                                     check=True, timeout=600, capture_output=True, text=True).stdout.split()
                assert out[0] == "201", out
                cpu = meter.cpu() - before
                results[label]["up_mbps"].append(size / 1e6 / float(out[1]))
                results[label]["up_cpu_s_per_gb"].append(cpu / (size / 1e9))
                (workdir / f"store-{label}" / name).unlink()
                subprocess.run(["sync"], check=False, timeout=300)
    finally:
        stop_all()
    medians = {label: {key: round(statistics.median(values), 4) for key, values in data.items()}
               for label, data in results.items()}
    audit_lines = len((workdir / "audit.log").read_text().splitlines()) if (workdir / "audit.log").exists() else 0
    return {
        "rounds": rounds, "requests": requests, "size": size, "medians": medians,
        "ka_throughput_on_over_off": round(medians["on"]["ka_rps"] / medians["off"]["ka_rps"], 3),
        "ka_cpu_on_over_off": round(medians["on"]["ka_cpu_ms"] / medians["off"]["ka_cpu_ms"], 3),
        "up_throughput_on_over_off": round(medians["on"]["up_mbps"] / medians["off"]["up_mbps"], 3),
        "up_cpu_on_over_off": round(medians["on"]["up_cpu_s_per_gb"] / medians["off"]["up_cpu_s_per_gb"], 3),
        "paired_on_over_off": {  # median over rounds of on/off within one round (less noise than medians' ratio)
            key: round(statistics.median(on / off for on, off in zip(results["on"][key], results["off"][key])), 3)
            for key in results["on"]
        },
        "audit_lines": audit_lines, "raw": results,
    }


def file_name(number: int, files: int) -> str:
    return "64k.bin" if files == 1 else f"64k-{number}.bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--files", type=int, default=1,
                        help="GET this many 64 KiB files in turn (1: one file, as the referee; more: no two GETs "
                             "in a row alike, the audit log's and metrics' worst case)")
    parser.add_argument("--only", choices=("metrics", "audit"), default=None, help="turn on only one of the two")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-obs-"))
    on_args = None
    if args.only == "metrics":
        on_args = ["--metrics", "tcp:0:interface=127.0.0.1"]
    elif args.only == "audit":
        on_args = ["--audit-log", str(workdir / "audit.log")]
    print(json.dumps(run(args.rounds, args.requests, parse_size(args.size), workdir, on_args, args.files), indent=1))


if __name__ == "__main__":
    main()
