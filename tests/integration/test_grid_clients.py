"""The grid tools users already have, unmodified, against one server over mutual TLS (SPEC §8.3).

gfal2 through Debian's Python binding (copy in and out, stat, listdir,
checksums, unlink), rclone with a ``webdav`` remote and a client certificate
(copy of a directory, lsjson, check), and names with spaces, ``%``, ``&`` and
UTF-8 round-tripping through PUT, PROPFIND and GET with curl. Each tool's test
is skipped only when that tool is not installed; ``.ci/run`` installs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gsitransfer.testca import TestPKI, make_test_pki
from tests.support.server import ServerProcess

from .helpers import running, server_args

CURL = ["curl", "-sS", "--max-time", "60"]
DAV = "{DAV:}"


def _gfal_python() -> str | None:
    """An interpreter with Debian's gfal2 binding (``python3-gfal2``), if any."""
    for candidate in (os.environ.get("GFAL_PYTHONBIN"), "/usr/bin/python3"):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import gfal2"], capture_output=True, timeout=60)
            if probe.returncode == 0:
                return candidate
    return None


GFAL_PYTHON = _gfal_python()

#: run by GFAL_PYTHON: every step gfal2 offers a user, each result one JSON line
GFAL_SCRIPT = r"""
import json, sys, gfal2
local, url, base, back, adler = sys.argv[1:6]
ctx = gfal2.creat_context()
params = ctx.transfer_parameters()
# the copy is checked against the destination's ADLER32 (the server's Want-Digest answer)
params.set_checksum(gfal2.checksum_mode.target, "ADLER32", adler)
ctx.filecopy(params, "file://" + local, url)
out = {"size": ctx.stat(url).st_size, "listdir": sorted(ctx.listdir(base)),
       "adler32": ctx.checksum(url, "ADLER32"), "md5": ctx.checksum(url, "MD5")}
ctx.filecopy(ctx.transfer_parameters(), url, "file://" + back)
ctx.unlink(url)
try:
    ctx.stat(url)
    out["after_unlink"] = "still there"
except gfal2.GError as error:
    out["after_unlink"] = error.code
print(json.dumps(out))
"""


class GridSite:
    """One server (plain HTTP and mutual TLS) over a directory store, and the test PKI its clients use."""

    def __init__(self, pki: TestPKI, store: Path, server: ServerProcess) -> None:
        self.pki = pki
        self.store = store
        self.server = server
        self.base = server.url("https").replace("127.0.0.1", "localhost") + "/data/"

    def proxy(self, user: str = "alice") -> Path:
        proxy = self.pki.users[user].proxy
        assert proxy is not None
        return proxy

    def grid_env(self, user: str = "alice") -> dict[str, str]:
        """The environment grid tools read: the user's proxy and the trusted-CA directory."""
        return dict(os.environ, X509_USER_PROXY=str(self.proxy(user)), X509_CERT_DIR=str(self.pki.ca_dir))

    def curl(self, *args: str, user: str = "alice") -> subprocess.CompletedProcess[bytes]:
        """curl with the user's proxy as its client certificate (bounded in time)."""
        proxy = str(self.proxy(user))
        tls = ["--cacert", str(self.pki.ca_file), "--cert", proxy, "--key", proxy]
        return subprocess.run([*CURL, *tls, *args], capture_output=True, timeout=90)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GridSite]:
    """A server shared by this module's tests (each test uses its own file names)."""
    tmp_path = tmp_path_factory.mktemp("grid")
    pki = make_test_pki(tmp_path / "pki", users=("alice", "bob"), share_keys=True)
    store = tmp_path / "store"
    store.mkdir()
    args = [
        *server_args(store), "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert),
        "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
    ]
    with running(ServerProcess(tmp_path, args)) as server:
        yield GridSite(pki, store, server)


def propfind_names(xml_body: bytes) -> dict[str, int | None]:
    """The names a Depth 1 PROPFIND of /data/ lists (hrefs decoded), with their getcontentlength."""
    names: dict[str, int | None] = {}
    for response in ET.fromstring(xml_body).iter(f"{DAV}response"):
        href = response.findtext(f"{DAV}href")
        assert href is not None
        path = urllib.parse.urlsplit(href).path
        if path.rstrip("/") == "/data":
            continue
        length = response.findtext(f".//{DAV}getcontentlength")
        names[urllib.parse.unquote(path.rsplit("/", 1)[1])] = int(length) if length else None
    return names


@pytest.mark.skipif(GFAL_PYTHON is None, reason="gfal2's Python binding (python3-gfal2) is not installed")
def test_gfal2_copies_in_and_out_lists_sums_and_unlinks(site: GridSite, tmp_path: Path) -> None:
    """gfal2 with a grid proxy: copy in (checksum-verified), stat, listdir, adler32 and md5, copy out, unlink."""
    assert GFAL_PYTHON is not None
    data = os.urandom(3 * 1024 * 1024 + 5)
    local = tmp_path / "gfal-in.root"
    local.write_bytes(data)
    back = tmp_path / "gfal-out.root"
    url = site.base + "gfal%20run.root"
    result = subprocess.run(
        [GFAL_PYTHON, "-c", GFAL_SCRIPT, str(local), url, site.base, str(back), "%08x" % zlib.adler32(data)],
        capture_output=True, text=True, env=site.grid_env(), timeout=180,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["size"] == len(data)
    # davix (under gfal2) gives each href's last segment as sent: percent-encoded, as RFC 4918 hrefs are
    assert "gfal%20run.root" in out["listdir"]
    assert out["adler32"] == "%08x" % zlib.adler32(data)
    assert out["md5"] == hashlib.md5(data).hexdigest()
    assert back.read_bytes() == data
    assert out["after_unlink"] == 2  # ENOENT
    assert not (site.store / "gfal run.root").exists()


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_rclone_webdav_remote_copies_a_directory_lists_and_checks(site: GridSite, tmp_path: Path) -> None:
    """rclone with a webdav remote and the proxy as client certificate: copy a directory, lsjson, check."""
    source = tmp_path / "run7"
    source.mkdir()
    files = {"rc-a.dat": os.urandom(200_000), "rc b & c.dat": os.urandom(1), "rc-Zürich.dat": os.urandom(70_000)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    proxy = str(site.proxy())
    remote = f":webdav,url='{site.base}',vendor=other:"
    tls = ["--client-cert", proxy, "--client-key", proxy, "--ca-cert", str(site.pki.ca_file)]
    config = ["--config", str(tmp_path / "rclone.conf"), "--low-level-retries", "1", "--retries", "1"]

    def rclone(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rclone", *config, *tls, *args], capture_output=True, text=True, timeout=180)

    copied = rclone("copy", str(source), remote)
    assert copied.returncode == 0, copied.stderr
    for name, data in files.items():
        assert (site.store / name).read_bytes() == data
    listed = rclone("lsjson", remote)
    assert listed.returncode == 0, listed.stderr
    sizes = {entry["Name"]: entry["Size"] for entry in json.loads(listed.stdout)}
    assert {name: sizes.get(name) for name in files} == {name: len(data) for name, data in files.items()}
    checked = rclone("check", "--one-way", "--download", str(source), remote)
    assert checked.returncode == 0, checked.stderr
    (source / "rc-a.dat").write_bytes(b"changed")
    differs = rclone("check", "--one-way", "--download", str(source), remote)
    assert differs.returncode != 0 and "rc-a.dat" in differs.stderr


NAMES = ("with space.txt", "100%.dat", "a&b=c;d.txt", "Zürich-日本語 ü.bin", "#hash+plus.txt")


@pytest.mark.parametrize("name", NAMES)
def test_names_round_trip_through_put_propfind_and_get(site: GridSite, tmp_path: Path, name: str) -> None:
    """A name with spaces, %, &, UTF-8 or # PUT by curl is listed by PROPFIND and fetched by GET, byte for byte."""
    data = name.encode() * 1000
    local = tmp_path / "body"
    local.write_bytes(data)
    url = site.base + urllib.parse.quote(name)
    put = site.curl("-T", str(local), "-o", "/dev/null", "-w", "%{http_code}", url)
    assert put.stdout == b"201", put.stderr
    assert (site.store / name).read_bytes() == data
    listing = site.curl("-X", "PROPFIND", "-H", "Depth: 1", site.base)
    assert listing.returncode == 0, listing.stderr
    assert propfind_names(listing.stdout).get(name) == len(data)
    fetched = site.curl("-f", url)
    assert fetched.returncode == 0 and fetched.stdout == data


def test_python_requests_puts_lists_and_deletes(site: GridSite, tmp_path: Path) -> None:
    """Python requests with the proxy as client certificate: a streamed PUT (201, ETag), PROPFIND, GET, DELETE."""
    import requests

    proxy = str(site.proxy())
    tls: dict[str, object] = {"cert": (proxy, proxy), "verify": str(site.pki.ca_file), "timeout": 60}
    local = tmp_path / "req.bin"
    data = os.urandom(1_500_000)
    local.write_bytes(data)
    with open(local, "rb") as body:
        answer = requests.put(site.base + "requests.bin", data=body, **tls)  # type: ignore[arg-type]
    assert answer.status_code == 201, answer.text
    assert answer.headers["ETag"] and answer.text.startswith("stored requests.bin: 1500000 bytes")
    listing = requests.request("PROPFIND", site.base, headers={"Depth": "1"}, **tls)  # type: ignore[arg-type]
    assert listing.status_code == 207 and propfind_names(listing.content).get("requests.bin") == len(data)
    fetched = requests.get(site.base + "requests.bin", **tls)  # type: ignore[arg-type]
    assert fetched.content == data and fetched.headers["ETag"] == answer.headers["ETag"]
    assert requests.delete(site.base + "requests.bin", **tls).status_code == 204  # type: ignore[arg-type]
    assert not (site.store / "requests.bin").exists()
