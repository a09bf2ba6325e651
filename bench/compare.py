"""gsitransfer against nginx, side by side on 127.0.0.1, same certificates and files.

Run through ``bench/run`` (which installs nginx and curl from Debian when
missing). What it does:

1. makes a test PKI (``gsitransfer.testca.make_test_pki``: RSA-2048 CA, host
   certificate for 127.0.0.1 -- RSA-2048, or ECDSA P-256 with ``--server-key
   ec`` --, user ``alice``) and the test files in a
   temporary directory;
2. starts ``twistd -n accessgrid-transfer --https …`` from ``--gsitransfer-src``
   and an nginx configured alike (see ``benchservers.py``);
3. for each repetition and each workload, measures gsitransfer and nginx one
   after the other (the order alternates between repetitions), reading the
   server's CPU (utime+stime of its whole process tree) and RSS from /proc;
4. prints every measurement as it is made, then a table of medians, min–max,
   server CPU per GB or per request, RSS, and the ratios gsitransfer/nginx
   with the goals of issue 6.

Workloads: ``download`` (1 GiB GET with curl), ``upload`` (1 GiB with curl:
gsitransfer manifest + ``POST -T``, MD5-verified and fsync'd; nginx ``PUT
-T``, neither), ``handshake`` (64 KiB GETs, N clients, a new TLS handshake
for each), ``keepalive`` (64 KiB GETs, N keep-alive connections, the load
generator), ``curl-keepalive`` (the referee's ``ka``: 10,000 GETs of 64 KiB with
``curl --http1.1 -Z --parallel-max 32``), ``idle``
(server RSS per open idle TLS connection). Units: MB = 10^6 bytes, GB = 10^9.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from benchservers import GsiTransferServer, NginxServer, nginx_version, stop_all  # noqa: E402
from procstat import OtherLoad, PeakSampler  # noqa: E402

WORKLOADS = ("download", "upload", "handshake", "keepalive", "curl-keepalive", "idle")
#: GETs of the small file in one curl-keepalive measurement (the referee's ka: 10,000, 32 at a time)
CURL_KEEPALIVE_REQUESTS = 10_000
MiB = 1024 * 1024
CURL_TIMEOUT = 600


def parse_size(text: str) -> int:
    """``1G``, ``1GiB``, ``64M``, ``65536`` -> bytes (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    scale = {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[match.group(2).lower()]
    return int(match.group(1)) * scale


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------


@dataclass
class Fixture:
    """Certificates and files shared by both servers."""

    work: Path
    cert: Path
    key: Path
    ca_dir: Path
    ca_file: Path
    crl_file: Path | None
    client_cert: Path
    client_key: Path
    store: Path
    uploads: Path
    big: Path
    big_md5: str
    medium: Path
    medium_md5: str
    small: Path


def make_file(path: Path, size: int) -> str:
    """Random content of ``size`` bytes; returns its MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "wb") as stream:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            md5.update(block)
            stream.write(block)
            left -= len(block)
    return md5.hexdigest()


def make_fixture(work: Path, size: int, small_size: int, server_key: str = "rsa") -> Fixture:
    from gsitransfer.testca import make_test_pki

    pki = make_test_pki(work / "pki", users=("alice",), server_key_type=server_key)
    crls = sorted(pki.ca_dir.glob("*.r0"))
    crl_file = None
    if crls:
        crl_file = work / "pki" / "crls.pem"
        crl_file.write_bytes(b"".join(path.read_bytes() for path in crls))
    store = work / "store"
    store.mkdir()
    big, medium, small = store / "big.bin", store / "medium.bin", store / "small.bin"
    big_md5 = make_file(big, size)
    medium_md5 = make_file(medium, MiB)
    make_file(small, small_size)
    alice = pki.users["alice"]
    return Fixture(
        work=work, cert=pki.server_cert, key=pki.server_key, ca_dir=pki.ca_dir, ca_file=pki.ca_file,
        crl_file=crl_file, client_cert=alice.cert, client_key=alice.key, store=store,
        uploads=work / "nginx-uploads", big=big, big_md5=big_md5, medium=medium,
        medium_md5=medium_md5, small=small,
    )


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


def curl(fx: Fixture, *args: str) -> dict[str, float]:
    """Run curl with the client certificate; http_code, sizes and time_total of the transfer."""
    command = [
        "curl", "-sS", "-o", "/dev/null", "--cert", str(fx.client_cert), "--key", str(fx.client_key),
        "--cacert", str(fx.ca_file), "--max-time", str(CURL_TIMEOUT),
        "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}", *args,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=CURL_TIMEOUT + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        code, down, up, total = done.stdout.split()
    except ValueError:
        raise RuntimeError(f"curl failed: {done.stderr.strip() or done.stdout}") from None
    return dict(code=int(code), down=float(down), up=float(up), seconds=float(total),
                client_cpu=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def https_context(fx: Fixture) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(fx.ca_file))
    context.load_cert_chain(str(fx.client_cert), str(fx.client_key))
    return context


def post_manifest(fx: Fixture, port: int, name: str, size: int, md5: str) -> str:
    """Register a one-file manifest with gsitransfer; the transfer key."""
    body = f"[manifest]\nnum_files = 1\n\n[0]\nname = {name}\nsize = {size}\nchecksum = {md5}\n\n"
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=https_context(fx), timeout=60)
    try:
        connection.request("POST", "/data/manifest", body.encode(), {"Content-Type": "text/plain"})
        answer = connection.getresponse().read().decode()
    finally:
        connection.close()
    fields = dict(line.split(": ", 1) for line in answer.splitlines() if ": " in line)
    if fields.get("return_code") != "0":
        raise RuntimeError(f"manifest refused: {answer.strip()}")
    return fields["transfer_key"]


def load_target(fx: Fixture, server: Any, path: str, length: int) -> loadgen.Target:
    return loadgen.Target("127.0.0.1", server.port, path, str(fx.client_cert), str(fx.client_key),
                          str(fx.ca_file), expected_length=length)


# ---------------------------------------------------------------------------
# Workloads: each returns one measurement (a dict) for one server
# ---------------------------------------------------------------------------


@dataclass
class Context:
    fx: Fixture
    args: argparse.Namespace
    rep: int = 0


def _transfer(server: Any, run: Callable[[], dict[str, float]], size: int) -> dict[str, float]:
    meter = server.meter()
    rss_before = meter.rss()
    cpu0 = meter.cpu()
    with PeakSampler(meter) as peak, OtherLoad() as other:
        result = run()
    cpu = meter.cpu() - cpu0
    gb = size / 1e9
    return dict(value=size / result["seconds"] / 1e6, cpu=cpu / gb, client_cpu=result["client_cpu"] / gb,
                rss_before=rss_before, rss_peak=peak.peak, seconds=result["seconds"],
                other_util=other.share(cpu + result["client_cpu"]))


def _peak_rss(server: Any, run: Callable[[], Any]) -> int:
    with PeakSampler(server.meter()) as peak:
        run()
    return peak.peak


def download(ctx: Context, server: Any) -> dict[str, float]:
    fx = ctx.fx
    size = fx.big.stat().st_size

    def get(path: str, length: int) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            result = curl(fx, server.url(path))
            if result["code"] != 200 or result["down"] != length:
                raise RuntimeError(f"{server.name}: GET {path}: {result}")
            return result
        return run

    small_peak = _peak_rss(server, get("/data/medium.bin", MiB))
    measured = _transfer(server, get("/data/big.bin", size), size)
    measured["rss_small_peak"] = small_peak
    return measured


def _upload_runner(ctx: Context, server: Any, source: Path, md5: str) -> tuple[Callable[[], dict[str, float]], Path]:
    """A function sending ``source`` once to ``server``, and where the stored copy lands."""
    fx = ctx.fx
    size = source.stat().st_size
    name = f"bench-{ctx.rep}-{secrets.token_hex(4)}.bin"
    ok: tuple[int, ...]
    if isinstance(server, GsiTransferServer):
        key = post_manifest(fx, server.port, name, size, md5)
        url, method, stored, ok = server.url(f"/data/{key}/0"), ["-X", "POST"], fx.store / name, (200,)
    else:
        url, method, stored, ok = server.url(f"/up/{name}"), [], fx.uploads / name, (201, 204)

    def run() -> dict[str, float]:
        result = curl(fx, *method, "-T", str(source), url)
        if result["code"] not in ok or result["up"] != size:
            raise RuntimeError(f"{server.name}: upload of {name}: {result}")
        return result
    return run, stored


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    os.sync()


def upload(ctx: Context, server: Any) -> dict[str, float]:
    fx = ctx.fx
    size = fx.big.stat().st_size
    run_small, stored_small = _upload_runner(ctx, server, fx.medium, fx.medium_md5)
    small_peak = _peak_rss(server, run_small)
    _remove(stored_small)
    run, stored = _upload_runner(ctx, server, fx.big, fx.big_md5)
    try:
        measured = _transfer(server, run, size)
    finally:
        _remove(stored)  # and sync, outside the timing: the next measurement starts clean
    measured["rss_small_peak"] = small_peak
    return measured


def _load(ctx: Context, server: Any, mode: str) -> dict[str, float]:
    fx, args = ctx.fx, ctx.args
    meter = server.meter()
    target = load_target(fx, server, "/data/small.bin", fx.small.stat().st_size)

    def start() -> tuple[float, PeakSampler, OtherLoad]:
        sampler = PeakSampler(meter, interval=0.2).__enter__()
        return meter.cpu(), sampler, OtherLoad().__enter__()

    def end(state: tuple[float, PeakSampler, OtherLoad]) -> dict[str, Any]:
        cpu = meter.cpu() - state[0]
        state[2].__exit__()
        state[1].__exit__()
        return dict(cpu=cpu, rss_peak=state[1].peak, other=state[2])

    rss_before = meter.rss()
    result = loadgen.run_load(target, mode, args.clients, args.procs, args.warmup, args.duration,
                              start, end)
    if result.requests == 0:
        raise RuntimeError(f"{server.name}: no request completed ({result.errors} errors)")
    return dict(
        value=result.rate, cpu=result.extra["cpu"] * 1000 / result.requests,
        client_cpu=result.client_cpu * 1000 / result.requests,
        client_util=result.client_cpu / result.seconds,
        server_util=result.extra["cpu"] / result.seconds,
        errors=result.errors, rss_before=rss_before, rss_peak=result.extra["rss_peak"],
        other_util=result.extra["other"].share(result.extra["cpu"] + result.client_cpu),
    )


def handshake(ctx: Context, server: Any) -> dict[str, float]:
    return _load(ctx, server, "new")


def keepalive(ctx: Context, server: Any) -> dict[str, float]:
    return _load(ctx, server, "keepalive")


def curl_keepalive(ctx: Context, server: Any) -> dict[str, float]:
    """The referee's ``ka``: 10,000 GETs of the small file by one ``curl --http1.1 -Z --parallel-max 32``
    over keep-alive connections (curl's own headers, its own pace), server CPU per request."""
    fx = ctx.fx
    urls = fx.work / f"curl-keepalive-{server.name}.txt"  # written each time: the idle workload restarts servers
    url = server.url("/data/small.bin")
    urls.write_text(f'url = "{url}"\noutput = "/dev/null"\n' * CURL_KEEPALIVE_REQUESTS)
    meter = server.meter()
    rss_before = meter.rss()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, start = meter.cpu(), time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "--http1.1", "-Z", "--parallel-max", "32", "--cert",
                    str(fx.client_cert), "--key", str(fx.client_key), "--cacert", str(fx.ca_file), "-K", str(urls)],
                   check=True, capture_output=True, timeout=CURL_TIMEOUT)
    seconds, cpu = time.monotonic() - start, meter.cpu() - cpu0
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after_children.ru_utime + after_children.ru_stime) - (before_children.ru_utime + before_children.ru_stime)
    return dict(value=CURL_KEEPALIVE_REQUESTS / seconds, cpu=cpu * 1000 / CURL_KEEPALIVE_REQUESTS,
                client_cpu=client * 1000 / CURL_KEEPALIVE_REQUESTS, server_util=cpu / seconds,
                client_util=client / seconds, rss_before=rss_before, rss_peak=max(rss_before, meter.rss()))


def idle(ctx: Context, server: Any) -> dict[str, float]:
    """RSS growth per idle connection, on a freshly started server.

    A server that has served other workloads keeps freed memory for reuse, so
    the server is restarted first; a few connections are made and closed to
    warm it up (lazy initialisation is no per-connection cost).
    """
    fx, count = ctx.fx, ctx.args.idle_conns
    server.stop()
    server.start()
    target = load_target(fx, server, "/data/small.bin", fx.small.stat().st_size)
    warm, _ = loadgen.open_idle(target, 16)
    loadgen.close_all(warm)
    time.sleep(0.5)
    meter = server.meter()
    before = meter.rss()
    socks, failed = loadgen.open_idle(target, count)
    try:
        time.sleep(1.0)
        after = meter.rss()
    finally:
        loadgen.close_all(socks)
    time.sleep(0.5)
    opened = len(socks)
    if opened == 0:
        raise RuntimeError(f"{server.name}: no idle connection could be opened")
    return dict(value=(after - before) / opened / 1024, rss_before=before, rss_peak=after,
                opened=opened, errors=failed)


RUNNERS: dict[str, Callable[[Context, Any], dict[str, float]]] = {
    "download": download, "upload": upload, "handshake": handshake, "keepalive": keepalive,
    "curl-keepalive": curl_keepalive, "idle": idle,
}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


Check = Callable[[dict[str, float], dict[str, float]], list[tuple[str, bool]]]


@dataclass(frozen=True)
class Spec:
    title: str
    unit: str
    cpu_unit: str
    #: the goals of issue 6: (what, met) for each
    goals: Check


def _ratio(g: dict[str, float], n: dict[str, float], key: str = "value") -> float:
    return g[key] / n[key] if n.get(key) else float("nan")


def _rss_same(g: dict[str, float]) -> tuple[str, bool]:
    """Peak RSS during the big transfer within 4 MiB of that during a 1 MiB one."""
    grown = (g["rss_peak"] - g["rss_small_peak"]) / MiB
    return f"peak RSS as during a 1 MiB transfer (+{grown:.1f} MiB, ≤ 4)", grown <= 4


SPECS = {
    "download": Spec("download {size}", "MB/s", "CPU-s/GB", lambda g, n: [
        (f"≥ 1.0× nginx ({_ratio(g, n):.2f}×)", _ratio(g, n) >= 1.0),
        (f"server ≤ 2.3 CPU-s/GB ({g['cpu']:.2f})", g["cpu"] <= 2.3),
        _rss_same(g)]),
    "upload": Spec("upload {size}", "MB/s", "CPU-s/GB", lambda g, n: [
        (f"≥ 0.75× nginx PUT ({_ratio(g, n):.2f}×)", _ratio(g, n) >= 0.75), _rss_same(g)]),
    "handshake": Spec("{small} GETs, new handshake, {clients} clients", "req/s", "CPU-ms/req",
                      lambda g, n: [(f"≥ 0.9× nginx ({_ratio(g, n):.2f}×)", _ratio(g, n) >= 0.9)]),
    "keepalive": Spec("{small} GETs, keep-alive, {clients} connections", "req/s", "CPU-ms/req",
                      lambda g, n: [(f"≥ 0.8× nginx ({_ratio(g, n):.2f}×)", _ratio(g, n) >= 0.8)]),
    "curl-keepalive": Spec(f"{{small}} GETs ×{CURL_KEEPALIVE_REQUESTS:,}, keep-alive, curl -Z (32 at a time)", "req/s",
                           "CPU-ms/req",
                           lambda g, n: [(f"≥ 0.8× nginx ({_ratio(g, n):.2f}×)", _ratio(g, n) >= 0.8)]),
    "idle": Spec("{idle} idle TLS connections (fresh server)", "KiB/conn", "",
                 lambda g, n: [(f"server RSS ≤ 32 KiB per connection ({g['value']:.1f})", g["value"] <= 32)]),
}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(run) for run in runs))
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # nan
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits if abs(value) >= 10 else digits + 1}f}"


def one_line(workload: str, server: str, m: dict[str, float]) -> str:
    spec = SPECS[workload]
    parts = [f"{fmt(m['value'])} {spec.unit}"]
    if "cpu" in m:
        parts.append(f"server {fmt(m['cpu'])} {spec.cpu_unit}")
    if "client_cpu" in m:
        parts.append(f"client {fmt(m['client_cpu'])} {spec.cpu_unit}")
    if "server_util" in m:
        parts.append(f"server {m['server_util']:.0%} / client {m['client_util']:.0%} of a core")
    if "other_util" in m:
        parts.append(f"other processes {m['other_util']:.0%} of a core")
    rss = f"RSS {m['rss_before'] / MiB:.1f} MiB, peak {m['rss_peak'] / MiB:.1f}"
    if "rss_small_peak" in m:
        rss += f" (1 MiB transfer: {m['rss_small_peak'] / MiB:.1f})"
    parts.append(rss)
    if m.get("errors"):
        parts.append(f"{int(m['errors'])} errors")
    return f"  {workload:<9} {server:<11} " + ", ".join(parts)


def table(results: dict[str, dict[str, list[dict[str, float]]]], titles: dict[str, str]) -> str:
    head = (f"{'workload':<44} {'server':<12} {'median':>10} {'min – max':>19} "
            f"{'server CPU':>16} {'client CPU':>12} {'others':>7} {'RSS MiB (peak)':>16}")
    lines = [head, "-" * len(head)]
    verdicts = []
    for workload, by_server in results.items():
        spec = SPECS[workload]
        medians = {}
        for index, name in enumerate(("gsitransfer", "nginx")):
            runs = by_server.get(name) or []
            if not runs:
                continue
            med = medians[name] = median_of(runs)
            values = [run["value"] for run in runs]
            cpu = f"{fmt(med['cpu'])} {spec.cpu_unit}" if "cpu" in med else ""
            client = fmt(med["client_cpu"]) if "client_cpu" in med else ""
            others = f"{med['other_util']:.0%}" if "other_util" in med else ""
            rss = f"{med['rss_before'] / MiB:.1f} ({med['rss_peak'] / MiB:.1f})"
            lines.append(
                f"{titles[workload] if index == 0 else '':<44} {name:<12} {fmt(med['value']):>10} "
                f"{fmt(min(values)) + ' – ' + fmt(max(values)):>19} {cpu:>16} {client:>12} {others:>7} {rss:>16}"
            )
            lines[-1] += f"  {spec.unit}, n={len(runs)}" if index == 0 else ""
        if len(medians) == 2:
            g, n = medians["gsitransfer"], medians["nginx"]
            cpu_ratio = f"{_ratio(g, n, 'cpu'):.2f}×" if "cpu" in g else ""
            lines.append(f"{'':<44} {'ratio g/n':<12} {_ratio(g, n):>9.2f}× {'':>19} {cpu_ratio:>16}")
        if "gsitransfer" in medians and (len(medians) == 2 or workload == "idle"):
            for what, met in spec.goals(medians["gsitransfer"], medians.get("nginx", {})):
                verdicts.append(f"  {titles[workload]:<44} {'MET    ' if met else 'not met'}  {what}")
    notes = ["", "server CPU: per GB (10^9 bytes) or per request, whole process tree; client CPU: curl or",
             "bench/loadgen.py, same unit; others: cores used meanwhile by every other process on the",
             "machine (noise); RSS: before the workload (peak during it)."]
    return "\n".join(lines + notes + ["", "goals (issue 6):"] + verdicts)


def describe_tls(fx: Fixture, server: Any) -> str:
    target = load_target(fx, server, "/data/small.bin", fx.small.stat().st_size)
    sock = loadgen.connect(target, loadgen.client_context(target))
    try:
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0] if cipher else '?'}"
    finally:
        sock.close()


def git_revision(src: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        branch = subprocess.run(["git", "-C", str(src), "rev-parse", "--abbrev-ref", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "gsitransfer"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{branch}@{rev}{' (gsitransfer/ modified)' if dirty else ''}"


def tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; --quick: 1)")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="download/upload size, e.g. 1G, 256M (default 1G; --quick: 32M)")
    parser.add_argument("--only", action="append", default=[],
                        help=f"workload(s) to run, comma-separated or repeated: {', '.join(WORKLOADS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition: a smoke run")
    parser.add_argument("--clients", type=int, default=32, help="parallel clients for the GET workloads")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per GET run (default 8)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up per GET run (default 1)")
    parser.add_argument("--small-size", type=parse_size, default=64 * 1024, help="GET file size (64K)")
    parser.add_argument("--server-key", choices=("rsa", "ec"), default="rsa",
                        help="host key of both servers: rsa (RSA-2048, default) or ec (ECDSA P-256); "
                        "the CA and the client stay RSA-2048")
    parser.add_argument("--idle-conns", type=int, default=None, help="idle connections (default 1000)")
    parser.add_argument("--gsitransfer-src", type=Path, default=HERE.parent,
                        help="source tree to run gsitransfer from (PYTHONPATH), e.g. a git worktree")
    parser.add_argument("--gsitransfer-args", default="",
                        help="extra options for twistd accessgrid-transfer (one string)")
    parser.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (auto)")
    parser.add_argument("--workers", type=int, default=1,
                        help="gsitransfer --workers (default 1: one process, the server's default, as the referee "
                             "runs it)")
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix), help="venv with twistd")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--report", type=Path, default=None,
                        help="only print the table of a run saved with --json, and exit")
    args = parser.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (1 if quick else 5)
    args.size = args.size or (32 * MiB if quick else 1024 * MiB)
    args.duration = args.duration or (2.0 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.idle_conns = args.idle_conns or (200 if quick else 1000)
    only = [w.strip() for item in args.only for w in item.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)} (choose from {', '.join(WORKLOADS)})")
    args.workloads = [w for w in WORKLOADS if not only or w in only]
    args.gsitransfer_src = args.gsitransfer_src.resolve()
    if args.reps < 1 or args.reps > 50:
        parser.error("--reps must be 1..50")
    return args


def raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(table(saved["results"], saved["titles"]))
        return 0
    signal.signal(signal.SIGTERM, raise_interrupt)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * args.idle_conns + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    for tool in ("nginx", "curl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"compare.py: {tool} not found (bench/run installs it)", file=sys.stderr)
            return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gsitransfer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        return run(args, work)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
        print(f"elapsed {time.monotonic() - started:.0f} s")


def gsitransfer_options(args: argparse.Namespace) -> list[str]:
    """``--gsitransfer-args``, plus ``--workers N`` unless those set it or N is 1."""
    extra = shlex.split(args.gsitransfer_args)
    if args.workers > 1 and not any(a.startswith("--workers") for a in extra):
        extra += ["--workers", str(args.workers)]
    return extra


def run(args: argparse.Namespace, work: Path) -> int:
    print(f"making the test PKI and files ({human_size(args.size)}, 1 MiB, {human_size(args.small_size)}) "
          f"in {work}", flush=True)
    fx = make_fixture(work, args.size, args.small_size, args.server_key)
    gsi = GsiTransferServer(args.venv, args.gsitransfer_src, work / "gsitransfer", fx.cert, fx.key,
                            fx.ca_dir, fx.store, gsitransfer_options(args))
    source = gsi.check_source()
    nginx = NginxServer(work / "nginx", fx.cert, fx.key, fx.ca_file, fx.crl_file, fx.store, fx.uploads,
                        workers=args.nginx_workers)
    gsi.start()
    nginx.start()
    servers = [gsi, nginx]
    titles = {w: SPECS[w].title.format(size=human_size(args.size), small=human_size(args.small_size),
                                       clients=args.clients, idle=args.idle_conns) for w in args.workloads}
    from OpenSSL import SSL

    print("\n".join([
        f"date        {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"machine     {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        f"gsitransfer {source} ({git_revision(args.gsitransfer_src)}) pid {gsi.pid}, port {gsi.port}"
        + (f", args {' '.join(gsitransfer_options(args))}" if gsitransfer_options(args) else ""),
        f"            Python {platform.python_version()}, "
        f"{SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} (pyOpenSSL's)",
        f"nginx       {nginx_version()}, worker_processes {args.nginx_workers}, pid {nginx.pid}, "
        f"port {nginx.port}",
        f"clients     {tool_version(['curl', '--version'])}",
        f"            load generator: bench/loadgen.py, Python ssl ({ssl.OPENSSL_VERSION}), "
        f"{args.procs} processes",
        f"TLS         gsitransfer: {describe_tls(fx, gsi)}; nginx: {describe_tls(fx, nginx)}; "
        f"host key {'ECDSA P-256' if args.server_key == 'ec' else 'RSA-2048'}",
        f"plan        {args.reps} repetitions of {', '.join(args.workloads)}; "
        f"GET runs {args.warmup:g} s warm-up + {args.duration:g} s",
        "",
    ]), flush=True)
    results: dict[str, dict[str, list[dict[str, float]]]] = {w: {"gsitransfer": [], "nginx": []}
                                                            for w in args.workloads}
    ctx = Context(fx, args)
    for rep in range(args.reps):
        ctx.rep = rep
        order = servers if rep % 2 == 0 else servers[::-1]
        print(f"repetition {rep + 1}/{args.reps} (first: {order[0].name})", flush=True)
        for workload in args.workloads:
            for server in order:
                measured = RUNNERS[workload](ctx, server)
                results[workload][server.name].append(measured)
                print(one_line(workload, server.name, measured), flush=True)
    print()
    print(table(results, titles))
    if args.json:
        args.json.write_text(json.dumps({"titles": titles, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
