"""The whole protocol with curl and nothing else: manifest, uploads, download, range, HEAD, 304."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

from tests.support.server import ServerProcess

from .ag_client import write_manifest
from .helpers import running, server_args

CURL = ["curl", "-sS", "--max-time", "30"]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl (bounded in time); fail the test on a transport error."""
    result = subprocess.run([*CURL, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"curl {args} failed ({result.returncode}): {result.stderr}"
    return result


def parse_headers(text: str) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of the last response in a curl header dump."""
    blocks = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    lines = blocks[-1].strip().split("\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_whole_protocol_with_curl(tmp_path: Path) -> None:
    """curl alone posts a manifest, uploads two files, downloads, ranges and HEADs them."""
    store = tmp_path / "store"
    big = tmp_path / "curl data.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024 + 17))
    small = tmp_path / "notes.txt"
    small.write_bytes(b"0123456789 abcdefghij\n" * 100)
    manifest = tmp_path / "manifest.ini"
    manifest.write_bytes(write_manifest([big, small]))

    with running(ServerProcess(tmp_path, server_args(store))) as server:
        base = f"{server.url()}/data"
        answer = fields(curl("--data-binary", f"@{manifest}", f"{base}/manifest").stdout)
        assert answer["return_code"] == "0", answer
        key = answer["transfer_key"]

        # the bigger file with Expect: 100-continue: the server must say "100 Continue"
        upload = curl(
            "-v", "-X", "POST", "-T", str(big), "-H", "Expect: 100-continue",
            "-w", "%{http_code}", "-o", str(tmp_path / "up0.txt"), f"{base}/{key}/0",
        )
        assert upload.stdout == "200", (tmp_path / "up0.txt").read_text()
        assert "< HTTP/1.1 100 Continue" in upload.stderr
        upload = curl(
            "-X", "POST", "-T", str(small), "-w", "%{http_code}",
            "-o", str(tmp_path / "up1.txt"), f"{base}/{key}/1",
        )
        assert upload.stdout == "200", (tmp_path / "up1.txt").read_text()
        assert fields((tmp_path / "up1.txt").read_text())["return_code"] == "0"

        for path in (big, small):
            out = tmp_path / f"down-{path.name}"
            got = curl("-o", str(out), "-w", "%{http_code}", f"{base}/{quote(path.name)}")
            assert got.stdout == "200"
            assert out.read_bytes() == path.read_bytes()

        url = f"{base}/{quote(big.name)}"
        part = tmp_path / "range.bin"
        dump = tmp_path / "range-headers.txt"
        got = curl("-r", "0-9", "-o", str(part), "-D", str(dump), "-w", "%{http_code}", url)
        assert got.stdout == "206"
        assert part.read_bytes() == big.read_bytes()[:10]
        status, headers = parse_headers(dump.read_text())
        assert status == 206
        assert headers["content-range"] == f"bytes 0-9/{big.stat().st_size}"

        status, headers = parse_headers(curl("-I", url).stdout)
        assert status == 200
        assert int(headers["content-length"]) == big.stat().st_size
        assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
        assert headers["last-modified"].endswith(" GMT")
        assert headers["accept-ranges"] == "bytes"
        md5 = hashlib.md5(big.read_bytes()).digest()
        assert headers["repr-digest"] == f"md5=:{base64.b64encode(md5).decode()}:"

        # conditional requests with the validators HEAD gave
        not_modified = curl(
            "-H", f"If-None-Match: {headers['etag']}", "-o", os.devnull, "-w", "%{http_code}", url
        )
        assert not_modified.stdout == "304"
        since = curl(
            "-H", f"If-Modified-Since: {headers['last-modified']}",
            "-o", os.devnull, "-w", "%{http_code}", url,
        )
        assert since.stdout == "304"
