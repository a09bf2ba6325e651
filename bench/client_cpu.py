"""CPU seconds per GiB of the ``gsitransfer`` client next to curl, on loopback.

Usage (from the repository root)::

    .venv/bin/python bench/client_cpu.py                 # 1 GiB, 3 runs, HTTP and HTTPS
    .venv/bin/python bench/client_cpu.py --size-mib 256 --runs 1

A local server (``twistd -n accessgrid-transfer`` with ``--http`` and
``--https`` on 127.0.0.1, a test PKI in a temporary directory) receives one
upload and serves one download per tool, scheme and run; the runs are
interleaved (client, curl, client, curl, ...) so drifts in machine load hit
both. Each tool runs as a child process and its CPU time (user + system) is
read from ``os.wait4`` for exactly that child. Reported: the median over the
runs, and CPU seconds per GiB.

What is compared: ``gsitransfer upload`` computes the file's MD5, posts the
manifest and streams the file; ``curl -T`` only streams it (the manifest is
posted by this script, unmeasured). ``gsitransfer download`` verifies the
MD5 as it writes; curl does not. The ``md5sum`` line is the MD5 a curl user
must add to do the same; ``python -c pass`` style start-up of the client is
shown too (it is per command, not per GiB).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import http.client
import io
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gsitransfer.testca import make_test_pki  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Measure:
    cpu: float
    wall: float


def run_measured(command: list[str], env: dict[str, str] | None = None) -> Measure:
    """Run ``command``; its own CPU time (user + sys, from wait4) and wall time."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr}")
    return Measure(usage.ru_utime + usage.ru_stime, wall)


def write_file(path: Path, size: int, block: int = 4 * MiB) -> str:
    """``size`` random-looking bytes (a random block with a counter); their MD5."""
    pattern = bytearray(os.urandom(block))
    digest = hashlib.md5()
    with open(path, "wb") as out:
        written, counter = 0, 0
        while written < size:
            pattern[:8] = counter.to_bytes(8, "big")
            chunk = memoryview(pattern)[: min(block, size - written)]
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
            counter += 1
    return digest.hexdigest()


def post_manifest(base: str, name: str, size: int, md5: str, tls: ssl.SSLContext | None) -> str:
    """Announce one file (unmeasured); its transfer key."""
    parser = configparser.ConfigParser(interpolation=None)
    parser["manifest"] = {"num_files": "1"}
    parser["0"] = {"name": name, "size": str(size), "checksum": md5}
    text = io.StringIO()
    parser.write(text)
    parts = urlsplit(base)
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection(parts.hostname, parts.port, context=tls) if tls
        else http.client.HTTPConnection(parts.hostname, parts.port))
    connection.request("POST", "/data/manifest", body=text.getvalue().encode())
    answer = connection.getresponse().read().decode()
    connection.close()
    fields = dict(line.split(": ", 1) for line in answer.splitlines() if ": " in line)
    if fields.get("return_code") != "0":
        raise RuntimeError(f"manifest refused: {answer}")
    return fields["transfer_key"]


class Bench:
    def __init__(self, work: Path, size: int) -> None:
        self.work = work
        self.size = size
        self.pki = make_test_pki(work / "pki", users=("alice",))
        self.proxy = str(self.pki.users["alice"].proxy)
        self.store = work / "store"
        self.server = ServerProcess(work / "server", [
            "--http", "tcp:0:interface=127.0.0.1", "--https", "tcp:0:interface=127.0.0.1",
            "--cert", str(self.pki.server_cert), "--key", str(self.pki.server_key),
            "--ca-dir", str(self.pki.ca_dir), "--store", f"data={self.store}",
        ]).start()
        self.source = work / "source.bin"
        self.md5 = write_file(self.source, size)
        self.env = dict(os.environ, X509_USER_PROXY=self.proxy, X509_CERT_DIR=str(self.pki.ca_dir))
        self.downloads = work / "downloads"
        self.downloads.mkdir()
        self.tls = ssl.create_default_context(cafile=str(self.pki.ca_file))
        self.tls.load_cert_chain(self.proxy)

    def base(self, scheme: str) -> str:
        return self.server.url(scheme).replace("127.0.0.1", "localhost")

    def named_copy(self, name: str) -> Path:
        """A hard link to the source under a new name (each upload needs a new name)."""
        path = self.work / name
        os.link(self.source, path)
        return path

    def curl_tls(self, scheme: str) -> list[str]:
        if scheme != "https":
            return []
        return ["--cert", self.proxy, "--key", self.proxy, "--capath", str(self.pki.ca_dir)]

    def client(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gsitransfer.cli", "-q", *args]

    def upload_client(self, scheme: str, run: int) -> Measure:
        path = self.named_copy(f"client-{scheme}-{run}.bin")
        measure = run_measured(self.client("upload", f"{self.base(scheme)}/data", str(path)), self.env)
        path.unlink()
        return measure

    def upload_curl(self, scheme: str, run: int) -> Measure:
        path = self.named_copy(f"curl-{scheme}-{run}.bin")
        key = post_manifest(self.base(scheme), path.name, self.size, self.md5,
                            self.tls if scheme == "https" else None)
        measure = run_measured(["curl", "-sS", "-f", "-o", "/dev/null", "-X", "POST", "-T", str(path),
                                *self.curl_tls(scheme), f"{self.base(scheme)}/data/{key}/0"])
        path.unlink()
        return measure

    def download_client(self, scheme: str, run: int) -> Measure:
        name = f"client-{scheme}-{run}.bin"
        measure = run_measured(self.client("download", f"{self.base(scheme)}/data/{name}",
                                           str(self.downloads / name)), self.env)
        self.check_and_drop(name)
        return measure

    def download_curl(self, scheme: str, run: int) -> Measure:
        name = f"curl-{scheme}-{run}.bin"
        measure = run_measured(["curl", "-sS", "-f", "-o", str(self.downloads / name), *self.curl_tls(scheme),
                                f"{self.base(scheme)}/data/{name}"])
        self.check_and_drop(name)
        return measure

    def check_and_drop(self, name: str) -> None:
        """The downloaded copy is the right size; then free the disk (copy and stored file)."""
        copy = self.downloads / name
        if copy.stat().st_size != self.size:
            raise RuntimeError(f"{name}: downloaded {copy.stat().st_size} bytes, not {self.size}")
        copy.unlink()
        (self.store / name).unlink()

    def md5sum(self) -> Measure:
        return run_measured(["md5sum", str(self.source)])

    def startup(self) -> Measure:
        return run_measured([sys.executable, "-c", "import gsitransfer.cli, twisted.internet.reactor"])

    def stop(self) -> None:
        self.server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--schemes", default="http,https")
    parser.add_argument("--workdir", help="where to put the file, store and PKI (default: a temporary directory)")
    options = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is not installed", file=sys.stderr)
        return 1
    size = options.size_mib * MiB
    schemes = options.schemes.split(",")
    work = Path(options.workdir or tempfile.mkdtemp(prefix="gsitransfer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, size)
    results: dict[tuple[str, str, str], list[Measure]] = {}
    extra: dict[str, list[Measure]] = {"md5sum": [], "client start-up": []}
    try:
        for run in range(options.runs):
            for scheme in schemes:
                for tool, upload, download in (("gsitransfer", bench.upload_client, bench.download_client),
                                               ("curl", bench.upload_curl, bench.download_curl)):
                    results.setdefault(("upload", scheme, tool), []).append(upload(scheme, run))
                    results.setdefault(("download", scheme, tool), []).append(download(scheme, run))
            extra["md5sum"].append(bench.md5sum())
            extra["client start-up"].append(bench.startup())
            print(f"run {run + 1}/{options.runs} done", file=sys.stderr)
    finally:
        bench.stop()
        if not options.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results, extra, size, options.runs)
    return 0


def print_table(results: dict[tuple[str, str, str], list[Measure]], extra: dict[str, list[Measure]],
                size: int, runs: int) -> None:
    gib = size / GiB
    print(f"\n{size // MiB} MiB file, median of {runs} run(s); CPU = user + sys of the tool's process\n")
    print("| operation | scheme | tool | CPU s | CPU s/GiB | wall s | MiB/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for (operation, scheme, tool), measures in results.items():
        cpu = statistics.median(m.cpu for m in measures)
        wall = statistics.median(m.wall for m in measures)
        print(f"| {operation} | {scheme} | {tool} | {cpu:.2f} | {cpu / gib:.2f} | {wall:.2f} | "
              f"{size / MiB / wall:.0f} |")
    for label, measures in extra.items():
        if not measures:
            continue
        cpu = statistics.median(m.cpu for m in measures)
        wall = statistics.median(m.wall for m in measures)
        per = f"{cpu / gib:.2f}" if label == "md5sum" else "(per command)"
        print(f"| {label} | - | - | {cpu:.2f} | {per} | {wall:.2f} | - |")


if __name__ == "__main__":
    raise SystemExit(main())
