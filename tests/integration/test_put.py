"""PUT over real sockets: curl -T (plain HTTP and mutual TLS, a certificate and a proxy), davix-put, globus-url-copy.

Refusals from the headers are proven with a raw socket that sends headers
only: the answer comes without a byte of body.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from gsitransfer.testca import TestPKI, make_test_pki
from tests.support.server import ServerProcess

from .helpers import headers_only, part_files, running, server_args, write_random_file

CURL = ["curl", "-sS", "--max-time", "60"]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl, bounded in time; a transport error fails the test."""
    result = subprocess.run([*CURL, *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"curl {args} failed ({result.returncode}): {result.stderr}"
    return result


def put(url: str, path: Path | str, *more: str) -> tuple[int, str]:
    """curl -T: (status, body of the answer)."""
    result = curl("-T", str(path), "-w", "%{http_code}", *more, url)
    body, status = result.stdout[:-3].rstrip("\n"), result.stdout[-3:]
    return int(status), body


def server_subject(cert: Path) -> str:
    """The host certificate's subject DN in the Globus one-line form (``/C=US/O=.../CN=localhost``)."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    return "".join(f"/{attribute.rfc4514_attribute_name}={attribute.value}" for attribute in loaded.subject)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Site:
    """A server with plain HTTP and mutual TLS over one directory store."""

    def __init__(self, pki: TestPKI, store: Path, server: ServerProcess) -> None:
        self.pki, self.store, self.server = pki, store, server
        self.http = server.url("http") + "/data/"
        self.https = server.url("https").replace("127.0.0.1", "localhost") + "/data/"

    def tls(self, user: str = "alice", proxy: bool = False) -> list[str]:
        files = self.pki.users[user]
        cert = files.proxy if proxy else files.cert
        key = files.proxy if proxy else files.key
        assert cert is not None and key is not None
        return ["--cacert", str(self.pki.ca_file), "--cert", str(cert), "--key", str(key)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp_path = tmp_path_factory.mktemp("put")
    pki = make_test_pki(tmp_path / "pki", users=("alice", "bob"), share_keys=True)
    store = tmp_path / "store"
    store.mkdir()
    args = [
        *server_args(store, "--max-transfer-size", str(64 * 1024 * 1024)), "--https", "tcp:0:interface=127.0.0.1",
        "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
    ]
    with running(ServerProcess(tmp_path, args)) as server:
        yield Site(pki, store, server)


def test_curl_put_plain_and_with_each_digest(site: Site, tmp_path: Path) -> None:
    """curl -T stores the file (201, ETag as GET's, Location); with each digest field right it is stored too."""
    data = tmp_path / "a.bin"
    md5 = write_random_file(data, 3 * 1024 * 1024 + 7)
    body = data.read_bytes()
    status, text = put(site.http + "curl-plain.bin", data)
    assert status == 201 and text == f"stored curl-plain.bin: {len(body)} bytes, md5 {md5}", text
    assert (site.store / "curl-plain.bin").read_bytes() == body
    fields = {
        "md5": f"Content-MD5: {b64(hashlib.md5(body).digest())}",
        "repr": f"Repr-Digest: sha-256=:{b64(hashlib.sha256(body).digest())}:",
        "content": f"Content-Digest: sha-512=:{b64(hashlib.sha512(body).digest())}:",
        "rfc3230": f"Digest: adler32={zlib.adler32(body):08x}",
    }
    for label, field in fields.items():
        status, text = put(site.http + f"curl-{label}.bin", data, "-H", field)
        assert status == 201, (label, text)
        assert (site.store / f"curl-{label}.bin").read_bytes() == body


def test_curl_put_etag_and_location_are_the_files(site: Site, tmp_path: Path) -> None:
    """The 201's ETag is the one a GET of the file gives; its Location is the file's URL."""
    data = tmp_path / "e.bin"
    write_random_file(data, 100_000)
    result = curl("-T", str(data), "-D", "-", "-o", "/dev/null", site.http + "etag.bin")
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
               for line in result.stdout.splitlines() if ":" in line}
    assert headers["location"] == site.http + "etag.bin"
    got = curl("-I", site.http + "etag.bin").stdout
    assert f"etag: {headers['etag']}".lower() in got.lower()


def test_wrong_digests_are_422_and_leave_nothing(site: Site, tmp_path: Path) -> None:
    """A wrong Content-MD5 or Repr-Digest is 422: no file under the name, no temporary or partial file left."""
    data = tmp_path / "w.bin"
    write_random_file(data, 2 * 1024 * 1024)
    wrong = hashlib.md5(b"other").digest()
    for number, field in enumerate([f"Content-MD5: {b64(wrong)}", f"Repr-Digest: md5=:{b64(wrong)}:"]):
        status, text = put(site.http + f"wrong{number}.bin", data, "-H", field)
        assert status == 422 and text.startswith("checksum mismatch"), text
        assert not (site.store / f"wrong{number}.bin").exists()
    assert part_files(site.store) == []


def test_existing_name_409_and_412(site: Site, tmp_path: Path) -> None:
    """A name that exists: 409 from the directory store, 412 with If-None-Match: *; the stored file is untouched."""
    data = tmp_path / "x.bin"
    write_random_file(data, 10_000)
    assert put(site.http + "exists.bin", data)[0] == 201
    other = tmp_path / "y.bin"
    other.write_bytes(b"different")
    status, text = put(site.http + "exists.bin", other)
    assert status == 409 and "already exists" in text, text
    status, text = put(site.http + "exists.bin", other, "-H", "If-None-Match: *")
    assert status == 412, text
    assert (site.store / "exists.bin").read_bytes() == data.read_bytes()


@pytest.mark.parametrize("headers, status, reason", [
    ({"Content-Length": str(65 * 1024 * 1024)}, 413, "more than this server takes"),
    ({"Content-Length": "10", "Content-Range": "bytes 0-9/20"}, 400, "Content-Range"),
    ({"Content-Length": "10", "Content-MD5": "not base64!"}, 400, "Content-MD5"),
])
def test_refused_from_the_headers(site: Site, headers: dict[str, str], status: int, reason: str) -> None:
    """A raw socket sends a PUT's headers only (Expect: 100-continue): the refusal comes at once, no body read."""
    answer = headers_only(site.http, "PUT", "/data/never.bin", {**headers, "Expect": "100-continue"})
    assert answer.status == status and reason in answer.body.decode(), answer


def test_refused_from_the_headers_name_taken(site: Site, tmp_path: Path) -> None:
    """A PUT of a name that exists, headers only: 409 without a body byte sent."""
    data = tmp_path / "t.bin"
    data.write_bytes(b"x" * 100)
    assert put(site.http + "taken.bin", data)[0] == 201
    answer = headers_only(site.http, "PUT", "/data/taken.bin", {"Content-Length": "100", "Expect": "100-continue"})
    assert answer.status == 409
    answer = headers_only(
        site.http, "PUT", "/data/taken.bin", {"Content-Length": "100", "Expect": "100-continue", "If-None-Match": "*"}
    )
    assert answer.status == 412


def test_chunked_puts_from_stdin_and_with_transfer_encoding(site: Site, tmp_path: Path) -> None:
    """curl -T - (stdin: chunked) and -H 'Transfer-Encoding: chunked' are stored, sizes learnt at the end."""
    data = tmp_path / "c.bin"
    write_random_file(data, 5 * 1024 * 1024 + 3)
    with open(data, "rb") as stdin:
        result = subprocess.run(
            [*CURL, "-T", "-", "-w", "\n%{http_code}", site.http + "chunked-stdin.bin"],
            stdin=stdin, capture_output=True, text=True, timeout=90,
        )
    assert result.stdout.endswith("\n201"), result.stdout + result.stderr
    assert (site.store / "chunked-stdin.bin").read_bytes() == data.read_bytes()
    status, text = put(site.http + "chunked-te.bin", data, "-H", "Transfer-Encoding: chunked")
    assert status == 201, text
    assert (site.store / "chunked-te.bin").read_bytes() == data.read_bytes()


def test_chunked_put_over_the_limit_is_413_and_leaves_nothing(site: Site) -> None:
    """A chunked body passing --max-transfer-size is refused (413) as it arrives; nothing is published or left."""
    big = subprocess.Popen(["head", "-c", str(65 * 1024 * 1024), "/dev/zero"], stdout=subprocess.PIPE)
    try:
        result = subprocess.run(
            [*CURL, "-T", "-", "-w", "\n%{http_code}", site.http + "chunked-big.bin"],
            stdin=big.stdout, capture_output=True, text=True, timeout=90,
        )
    finally:
        big.kill()
        big.wait(timeout=10)
    assert result.stdout.endswith("\n413"), result.stdout + result.stderr
    assert not (site.store / "chunked-big.bin").exists()


@pytest.mark.parametrize("proxy", [False, True], ids=["certificate", "proxy"])
def test_curl_put_over_mutual_tls(site: Site, tmp_path: Path, proxy: bool) -> None:
    """Over mutual TLS with a user certificate or a proxy: stored, owned by the certificate's DN; bob may not PUT it again."""
    name = f"tls-{'proxy' if proxy else 'cert'}.bin"
    data = tmp_path / name
    write_random_file(data, 1_000_000)
    status, text = put(site.https + name, data, *site.tls(proxy=proxy))
    assert status == 201, text
    assert (site.store / name).read_bytes() == data.read_bytes()
    listing = curl(*site.tls(), site.https).stdout
    assert site.pki.users["alice"].dn in listing or name in listing
    status, text = put(site.https + name, data, *site.tls("bob"))
    assert status == 409, text


@pytest.mark.skipif(shutil.which("davix-put") is None, reason="davix is not installed")
def test_davix_put_with_a_grid_proxy(site: Site, tmp_path: Path) -> None:
    """davix-put -P grid with X509_USER_PROXY and X509_CERT_DIR uploads the file."""
    data = tmp_path / "davix.bin"
    write_random_file(data, 2 * 1024 * 1024 + 1)
    env = dict(os.environ, X509_USER_PROXY=str(site.pki.users["alice"].proxy), X509_CERT_DIR=str(site.pki.ca_dir))
    result = subprocess.run(
        ["davix-put", "-P", "grid", str(data), site.https + "davix%20put.bin"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (site.store / "davix put.bin").read_bytes() == data.read_bytes()


@pytest.mark.skipif(shutil.which("globus-url-copy") is None, reason="globus-url-copy is not installed")
def test_globus_url_copy_uploads_over_https(site: Site, tmp_path: Path) -> None:
    """globus-url-copy file:// -> https:// (a chunked PUT) with a grid proxy stores the file; and downloads it back."""
    data = tmp_path / "guc.bin"
    write_random_file(data, 3 * 1024 * 1024 + 11)
    env = dict(os.environ, X509_USER_PROXY=str(site.pki.users["alice"].proxy), X509_CERT_DIR=str(site.pki.ca_dir))
    # GSI's own host-name rule refuses the test host certificate for "localhost": name the expected subject
    subject = server_subject(site.pki.server_cert)
    result = subprocess.run(
        ["globus-url-copy", "-ds", subject, f"file://{data}", site.https + "guc.bin"], capture_output=True,
        text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site.store / "guc.bin").read_bytes() == data.read_bytes()
    back = tmp_path / "guc-back.bin"
    result = subprocess.run(
        ["globus-url-copy", "-ss", subject, site.https + "guc.bin", f"file://{back}"], capture_output=True,
        text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert back.read_bytes() == data.read_bytes()
