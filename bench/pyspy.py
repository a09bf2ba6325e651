"""Where a gsitransfer server spends its time during one transfer: py-spy, summarised.

    python -m venv /tmp/spy && /tmp/spy/bin/pip install py-spy     # once, outside the project venv
    .venv/bin/python bench/pyspy.py --py-spy /tmp/spy/bin/py-spy upload
    .venv/bin/python bench/pyspy.py --py-spy … --gsitransfer-src ../perf --gil download

Starts ``twistd accessgrid-transfer`` (as bench/compare.py does), attaches
``py-spy record --threads --format raw`` to it, makes one upload or download
with curl (or runs bench/loadgen.py's keep-alive or new-handshake GETs), and prints the share of samples per thread, the top frames by own
time and the top frames including callees. ``--gil`` samples only the thread
holding the GIL; ``--idle`` includes idle threads (where they wait).
"""

from __future__ import annotations

import argparse
import collections
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import loadgen  # noqa: E402
from benchservers import GsiTransferServer, stop_all  # noqa: E402


def summarise(raw: Path, top: int) -> str:
    total = 0
    by_thread: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        by_thread[frames[0]] += samples
        own[frames[-1]] += samples
        for frame in set(frames[1:]):
            inclusive[frame] += samples
    if not total:
        return "no samples"
    out = [f"samples {total}", "by thread:"]
    out += [f"  {n / total:6.1%} {name}" for name, n in by_thread.most_common(6)]
    out += ["own time:"] + [f"  {n / total:6.1%} {name[:140]}" for name, n in own.most_common(top)]
    out += ["including callees:"] + [f"  {n / total:6.1%} {name[:140]}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("upload", "download", "keepalive", "handshake"))
    parser.add_argument("--clients", type=int, default=32, help="GET clients (keepalive, handshake)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of GETs (keepalive, handshake)")
    parser.add_argument("--size", type=compare.parse_size, default=compare.parse_size("1G"))
    parser.add_argument("--gsitransfer-src", type=Path, default=HERE.parent)
    parser.add_argument("--gsitransfer-args", default="")
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    parser.add_argument("--idle", action="store_true", help="include idle threads")
    parser.add_argument("--subprocesses", action="store_true",
                        help="also sample the server's children (with --gsitransfer-args='--workers N')")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gsitransfer-profile-"))
    try:
        fx = compare.make_fixture(work, args.size, 64 * 1024)
        server = GsiTransferServer(args.venv, args.gsitransfer_src.resolve(), work / "gsitransfer", fx.cert,
                                   fx.key, fx.ca_dir, fx.store, args.gsitransfer_args.split())
        print(f"gsitransfer from {server.check_source()}")
        server.start()
        compare.curl(fx, server.url("/data/small.bin"))  # warm up
        raw = args.raw or work / "stacks.txt"
        command = [args.py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate), "--nonblocking",
                   "--threads", "--format", "raw", "-o", str(raw)]
        command += ["--gil"] * args.gil + ["--idle"] * args.idle + ["--subprocesses"] * args.subprocesses
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)  # py-spy attaches
            meter = server.meter()
            cpu0 = meter.cpu()
            if args.what in ("keepalive", "handshake"):
                target = compare.load_target(fx, server, "/data/small.bin", fx.small.stat().st_size)
                load = loadgen.run_load(target, "new" if args.what == "handshake" else "keepalive",
                                        args.clients, 2, 0.5, args.duration)
                cpu = meter.cpu() - cpu0
                print(f"{args.what}: {load.rate:,.0f} req/s, server {cpu * 1000 / max(1, load.requests):.3f} "
                      "CPU-ms/req (py-spy attached: slower than unprofiled)")
                result = None
            elif args.what == "upload":
                name = f"profile-{secrets.token_hex(4)}.bin"
                key = compare.post_manifest(fx, server.port, name, args.size, fx.big_md5)
                result = compare.curl(fx, "-X", "POST", "-T", str(fx.big), server.url(f"/data/{key}/0"))
            else:
                result = compare.curl(fx, server.url("/data/big.bin"))
            cpu = meter.cpu() - cpu0
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if result is not None:
            print(f"{args.what}: HTTP {result['code']}, {args.size / result['seconds'] / 1e6:.0f} MB/s, "
                  f"server {cpu / (args.size / 1e9):.2f} CPU-s/GB")
        print(summarise(raw, args.top))
        return 0
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
