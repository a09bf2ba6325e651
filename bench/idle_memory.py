"""Where the memory of idle mutual-TLS connections goes (issue 6: ≤ 32 KiB each).

Starts the real server as ``bench/run`` does (``twistd -n accessgrid-transfer
--https ... --store data=DIR``, from ``--src``), warms it with 16 connections,
then, for each count N, opens N connections that each make the handshake with
the client certificate and one keep-alive GET of a file
(``--size``, 64 KiB as in ``bench/run``), and prints the
server's RSS growth per connection (a fresh server per N and repetition)::

    .venv/bin/python bench/idle_memory.py --conns 200,1000 --reps 3
    .venv/bin/python bench/idle_memory.py --conns 1000 --env MALLOC_ARENA_MAX=1 --trim
    .venv/bin/python bench/idle_memory.py --conns 1000 --trace 8 --top 25

``--trace F`` loads ``bench/idle_probe.py`` into the server (as a ``--handler``)
with tracemalloc keeping F frames, and prints what Python allocated per
connection, grouped by allocation site, and the live objects per connection by
type. Tracing itself costs memory: read RSS figures from runs without it.
``--heap`` prints, without tracing, the live objects per connection by type and
glibc's ``mallinfo2`` figures (bytes in use and free in the heap) per connection;
``--trim`` also prints the RSS after glibc's ``malloc_trim(0)`` (free memory the
allocator had kept). ``--env KEY=VALUE`` sets the server's environment: an
allocator (``LD_PRELOAD=...``, ``MALLOC_ARENA_MAX=1``) or one of the probe's
in-server experiments (``GSIT_PROBE_PATCH=forget-handshakes``, see
``bench/idle_probe.py``). Loopback only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from benchservers import GsiTransferServer, stop_all  # noqa: E402


def make_fixture(work: Path, size: int) -> dict[str, Path]:
    from gsitransfer.testca import make_test_pki

    pki = make_test_pki(work / "pki", users=("alice",))
    store = work / "store"
    store.mkdir()
    (store / "small.bin").write_bytes(os.urandom(size))
    alice = pki.users["alice"]
    return dict(cert=pki.server_cert, key=pki.server_key, ca_dir=pki.ca_dir, ca_file=pki.ca_file,
                client_cert=alice.cert, client_key=alice.key, store=store)


def probe_dump(server: GsiTransferServer, directory: Path, trim: bool = False) -> dict[str, Any]:
    """Ask the probe in the server for a dump and read it (bounded wait)."""
    before = set(directory.glob("dump-*.done"))
    os.kill(server.pid, signal.SIGUSR2 if trim else signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = set(directory.glob("dump-*.done")) - before
        if new:
            done = new.pop()
            with open(done.with_suffix(".pickle"), "rb") as stream:
                return pickle.load(stream)
        time.sleep(0.05)
    log = server.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the probe did not answer; server log:\n{log}")


def print_trace(before: dict[str, Any], after: dict[str, Any], count: int, top: int) -> None:
    print("  live objects per connection (after gc), by type:")
    diff = {t: after["types"].get(t, 0) - before["types"].get(t, 0) for t in after["types"]}
    for name, delta in sorted(diff.items(), key=lambda item: -item[1])[:top]:
        if delta / count >= 0.05:
            print(f"    {delta / count:6.2f}  {name}")
    if before.get("heap") and after.get("heap"):
        heap = {key: (after["heap"][key] - before["heap"][key]) / count / 1024 for key in after["heap"]}
        print(f"  malloc (glibc mallinfo2) per connection: in use {heap['uordblks']:.2f} KiB, "
              f"free in the heap {heap['fordblks']:.2f} KiB, mmapped {heap['hblkhd']:.2f} KiB")
    if after["snapshot"] is None:
        return
    traced = (after["traced"] - before["traced"]) / count / 1024
    print(f"  tracemalloc: {traced:.2f} KiB per connection traced (Python allocations)")
    stats = after["snapshot"].compare_to(before["snapshot"], "traceback")
    stats.sort(key=lambda stat: -stat.size_diff)
    for stat in stats[:top]:
        if stat.size_diff <= 0:
            break
        frames = [f"{Path(frame.filename).name}:{frame.lineno}" for frame in reversed(stat.traceback)]
        print(f"    {stat.size_diff / count:8.0f} B/conn {stat.count_diff / count:6.2f} blocks/conn  "
              f"{' < '.join(frames[:6])}")
    by_line = after["snapshot"].compare_to(before["snapshot"], "lineno")
    by_line.sort(key=lambda stat: -stat.size_diff)
    print("  by line:")
    for stat in by_line[:top]:
        if stat.size_diff <= 0:
            break
        frame = stat.traceback[0]
        print(f"    {stat.size_diff / count:8.0f} B/conn  {frame.filename.split('site-packages/')[-1]}:{frame.lineno}")


def measure(args: argparse.Namespace, fx: dict[str, Path], work: Path, count: int) -> dict[str, float]:
    probe_dir = Path(tempfile.mkdtemp(prefix="probe-", dir=work))
    extra = ["--handler", "probe=idle_probe:factory", *args.server_args.split()]
    server = GsiTransferServer(Path(sys.prefix), args.src, work / "server", fx["cert"], fx["key"],
                               fx["ca_dir"], fx["store"], extra)
    saved = dict(os.environ)
    os.environ.update(GSIT_PROBE_DIR=str(probe_dir), GSIT_PROBE_TRACE=str(args.trace or ""))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), saved.get("PYTHONPATH", "")) if p)
    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    try:
        server.check_source()
        server.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        target = loadgen.Target("127.0.0.1", server.port, "/data/small.bin", str(fx["client_cert"]),
                                str(fx["client_key"]), str(fx["ca_file"]), expected_length=args.size)
        warm, _ = loadgen.open_idle(target, 16)
        loadgen.close_all(warm)
        time.sleep(0.5)
        meter = server.meter()
        dump_before = probe_dump(server, probe_dir) if args.trace or args.heap else None
        before = meter.rss()
        socks, failed = loadgen.open_idle(target, count)
        try:
            time.sleep(1.0)
            after = meter.rss()
            result = dict(opened=len(socks), failed=failed, per_conn=(after - before) / max(1, len(socks)) / 1024,
                          before=before / 1024, after=after / 1024)
            if args.trim:
                trimmed = probe_dump(server, probe_dir, trim=True)
                result["trimmed"] = (trimmed["rss"] * 1024 - before) / max(1, len(socks)) / 1024
            if dump_before is not None:
                print_trace(dump_before, probe_dump(server, probe_dir), len(socks), args.top)
        finally:
            loadgen.close_all(socks)
        return result
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", default="200,1000", help="counts of idle connections (comma-separated)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per count (fresh server each)")
    parser.add_argument("--src", type=Path, default=HERE.parent, help="source tree to run")
    parser.add_argument("--server-args", default="", help="extra twistd accessgrid-transfer options")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: no tracing)")
    parser.add_argument("--heap", action="store_true",
                        help="without tracing: live objects by type and glibc heap figures per connection")
    parser.add_argument("--top", type=int, default=20, help="lines of each trace listing")
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes of the file each connection GETs")
    parser.add_argument("--trim", action="store_true", help="also measure after malloc_trim(0)")
    args = parser.parse_args()
    counts = [int(n) for n in args.conns.split(",")]
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as tmp:
        work = Path(tmp)
        fx = make_fixture(work, args.size)
        try:
            for count in counts:
                figures = []
                for rep in range(args.reps):
                    result = measure(args, fx, work, count)
                    figures.append(result["per_conn"])
                    trimmed = f", after malloc_trim {result['trimmed']:.1f}" if "trimmed" in result else ""
                    print(f"N={count} rep {rep + 1}: {result['per_conn']:.1f} KiB/conn{trimmed} "
                          f"(RSS {result['before']:.0f} -> {result['after']:.0f} KiB, "
                          f"{result['opened']} open, {result['failed']} failed)", flush=True)
                print(f"N={count}: median {statistics.median(figures):.1f} KiB/conn "
                      f"(min {min(figures):.1f}, max {max(figures):.1f}, n={len(figures)})", flush=True)
        finally:
            stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
