"""PUT against POST of the same file, and against nginx's PUT: one run, interleaved, curl as the client.

Starts gsitransfer at its defaults (``twistd -n accessgrid-transfer --https …
--store data=DIR``, this source tree) and Debian's nginx (``dav_methods PUT``,
the same host certificate, mutual TLS 1.3 with ``ssl_verify_client on``),
both on 127.0.0.1, and uploads one file (``--size``, default 1 GiB) with
``curl --http1.1`` and a test-CA user certificate in three ways, in rotating
order, ``--rounds`` times:

* ``put``: ``curl -T FILE https://…/data/<name>`` (SPEC §8.1);
* ``post``: the manifest ``POST`` (untimed), then ``curl -X POST -T FILE
  https://…/data/<key>/0`` (the protocol's upload, as the referee times it);
* ``nginx``: ``curl -T FILE https://…/up/<name>`` to nginx.

Each upload: curl's ``time_total`` and the server's CPU seconds (its whole
process tree, from /proc). Every stored file is checked (size) and removed,
then ``sync``. Prints one JSON object with the medians and the ratios
``put/post`` (goal: 1.0 within the noise) and ``put/nginx`` (throughput).
No assertion: a measurement. Usage::

    python bench/put.py [--size 1GiB] [--rounds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resume import parse_size  # noqa: E402
from benchservers import GsiTransferServer, NginxServer, stop_all  # noqa: E402

SRC = Path(__file__).resolve().parents[1]


def make_file(path: Path, size: int) -> str:
    md5 = hashlib.md5()
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            md5.update(piece)
            left -= len(piece)
    return md5.hexdigest()


class Curl:
    """curl with the user's certificate, trusting the test CA."""

    def __init__(self, cert: Path, key: Path, ca_file: Path) -> None:
        self.tls = ["--cacert", str(ca_file), "--cert", str(cert), "--key", str(key)]

    def run(self, *args: str) -> str:
        result = subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "600", *self.tls, *args],
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"curl {args} failed: {result.stderr}")
        return result.stdout

    def upload(self, url: str, path: Path, *more: str) -> float:
        """Upload with -T; the seconds curl took (time_total). Fails unless 200/201/204."""
        out = self.run("-T", str(path), *more, "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url)
        code, seconds = out.split()
        if code not in ("200", "201", "204"):
            raise RuntimeError(f"{url}: HTTP {code}")
        return float(seconds)


def manifest_key(curl: Curl, base: str, name: str, size: int, md5: str, workdir: Path) -> str:
    ini = workdir / "manifest.ini"
    ini.write_text(f"[manifest]\nnum_files = 1\n\n[0]\nname = {name}\nsize = {size}\nchecksum = {md5}\n")
    answer = dict(line.split(": ", 1) for line in curl.run("--data-binary", f"@{ini}", base + "manifest").splitlines())
    if answer.get("return_code") != "0":
        raise RuntimeError(f"manifest refused: {answer}")
    return answer["transfer_key"]


def run(size: int, rounds: int, workdir: Path) -> dict[str, Any]:
    from gsitransfer.testca import make_test_pki

    pki = make_test_pki(workdir / "pki", users=("alice",))
    alice = pki.users["alice"]
    curl = Curl(alice.cert, alice.key, pki.ca_file)
    store, uploads = workdir / "store", workdir / "uploads"
    store.mkdir(exist_ok=True)
    data = workdir / "big.bin"
    md5 = make_file(data, size)
    # the venv this script runs in (bench/run's .venv) has twistd and the test CA
    gsi = GsiTransferServer(Path(sys.prefix), SRC, workdir / "gsitransfer", pki.server_cert, pki.server_key,
                            pki.ca_dir, store, [])
    crl = next(iter(sorted(pki.ca_dir.glob("*.r0"))), None)
    nginx = NginxServer(workdir / "nginx", pki.server_cert, pki.server_key, pki.ca_file, crl, store, uploads,
                        workers="2", access_log=False)
    times: dict[str, list[float]] = {"put": [], "post": [], "nginx": []}
    cpu: dict[str, list[float]] = {"put": [], "post": [], "nginx": []}
    try:
        gsi.start()
        nginx.start()
        base = gsi.url("/data/").replace("127.0.0.1", "localhost")
        order = ["put", "post", "nginx"]
        for number in range(rounds):
            for way in order[number % 3:] + order[: number % 3]:
                name = f"{way}-{number}.bin"
                server = nginx if way == "nginx" else gsi
                meter = server.meter()
                if way == "post":
                    key = manifest_key(curl, base, name, size, md5, workdir)
                before = meter.cpu()
                if way == "put":
                    seconds = curl.upload(base + name, data)
                elif way == "post":
                    seconds = curl.upload(f"{base}{key}/0", data, "-X", "POST")
                else:
                    seconds = curl.upload(nginx.url("/up/").replace("127.0.0.1", "localhost") + name, data)
                cpu[way].append(meter.cpu() - before)
                times[way].append(seconds)
                stored = (uploads if way == "nginx" else store) / name
                if stored.stat().st_size != size:
                    raise RuntimeError(f"{stored}: {stored.stat().st_size} bytes, not {size}")
                stored.unlink()
                subprocess.run(["sync"], check=False, timeout=300)
    finally:
        stop_all()
    median = {way: statistics.median(values) for way, values in times.items()}
    mb = size / 1e6
    return {
        "size": size,
        "rounds": rounds,
        "mb_per_s": {way: round(mb / seconds, 1) for way, seconds in median.items()},
        "server_cpu_s_per_gb": {way: round(statistics.median(values) / (size / 1e9), 2) for way, values in cpu.items()},
        "seconds": times,
        "ratio_put_over_post": round(median["post"] / median["put"], 3),
        "ratio_put_over_nginx": round(median["nginx"] / median["put"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", default="1GiB", help="file size (e.g. 64MiB, 1GiB)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="directory for the PKI, file and stores (default: temporary)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-put-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(parse_size(args.size), args.rounds, workdir), indent=1))


if __name__ == "__main__":
    main()
