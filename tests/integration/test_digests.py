"""Digests over real sockets with curl: uploads verified, downloads answering Want-Digest/Want-Repr-Digest.

Every expected value is computed here with hashlib, zlib.adler32 and base64;
the server counts its own digest computations in its log (``computed <alg>
of <path>``), which the tests count across requests and a restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from gsitransfer.testca import make_test_pki
from tests.support.server import ServerProcess

from .ag_client import write_manifest
from .helpers import part_files, running, server_args, write_random_file

CURL = ["curl", "-sS", "--max-time", "60"]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl (bounded in time); fail the test on a transport error."""
    result = subprocess.run([*CURL, *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"curl {args} failed ({result.returncode}): {result.stderr}"
    return result


def head_fields(text: str) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names, values as sent) of the last answer in a curl header dump."""
    blocks = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    lines = blocks[-1].strip().split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def adler_hex(data: bytes) -> str:
    return "%08x" % zlib.adler32(data)


def post_manifest(base: str, tmp_path: Path, files: list[Path]) -> str:
    manifest = tmp_path / "manifest.ini"
    manifest.write_bytes(write_manifest(files))
    answer = dict(
        line.split(": ", 1) for line in curl("--data-binary", f"@{manifest}", f"{base}/manifest").stdout.splitlines()
    )
    assert answer["return_code"] == "0", answer
    return answer["transfer_key"]


def upload(url: str, path: Path, out: Path, *fields: str, curl_args: list[str] | None = None) -> tuple[str, str]:
    """POST ``path`` to ``url`` with the header lines ``fields`` (and ``curl_args``): (status, answer text)."""
    args = [*(curl_args or []), "-X", "POST", "-T", str(path), "-w", "%{http_code}", "-o", str(out)]
    for field in fields:
        args += ["-H", field]
    result = curl(*args, url)
    return result.stdout, out.read_text()


def test_uploads_verified_against_every_digest_field(tmp_path: Path) -> None:
    """curl uploads with Content-Digest, Repr-Digest, Digest and Content-MD5: right ones stored, a wrong one 422 and unpublished."""
    store = tmp_path / "store"
    files = []
    for name, size in (("big.bin", 3 * 1024 * 1024 + 5), ("adler.bin", 70_000), ("md5.bin", 5000), ("wrong.bin", 2 * 1024 * 1024)):
        path = tmp_path / name
        write_random_file(path, size)
        files.append(path)
    big, adler, md5, wrong = (path.read_bytes() for path in files)
    with running(ServerProcess(tmp_path, server_args(store))) as server:
        base = f"{server.url()}/data"
        key = post_manifest(base, tmp_path, files)
        sha256, sha512 = hashlib.sha256(big).digest(), hashlib.sha512(big).digest()
        status, text = upload(
            f"{base}/{key}/0", files[0], tmp_path / "a0",
            f"Content-Digest: sha-256=:{b64(sha256)}:", f"Repr-Digest: sha-512=:{b64(sha512)}:",
        )
        assert status == "200", text
        status, text = upload(f"{base}/{key}/1", files[1], tmp_path / "a1", f"Digest: adler32={adler_hex(adler)}")
        assert status == "200", text
        status, text = upload(
            f"{base}/{key}/2", files[2], tmp_path / "a2", f"Content-MD5: {b64(hashlib.md5(md5).digest())}"
        )
        assert status == "200", text
        # the big wrong one goes through the upload's worker threads: checked there, refused before publish
        bad = hashlib.sha256(wrong[:-1]).digest()
        status, text = upload(f"{base}/{key}/3", files[3], tmp_path / "a3", f"Content-Digest: sha-256=:{b64(bad)}:")
        assert status == "422"
        assert text == f"checksum mismatch: sha-256 of the body is {b64(hashlib.sha256(wrong).digest())}, Content-Digest says {b64(bad)}\n"
        assert not (store / "wrong.bin").exists() and part_files(store) == []
        assert curl("-o", os.devnull, "-w", "%{http_code}", f"{base}/wrong.bin").stdout == "404"
        # the file is pending again: sent again without the wrong field, it is stored
        status, text = upload(f"{base}/{key}/3", files[3], tmp_path / "a3")
        assert status == "200", text
        for path in files:
            assert (store / path.name).read_bytes() == path.read_bytes()
        status, text = upload(f"{base}/{key}/0", files[0], tmp_path / "a4", "Content-Digest: sha-256=:AAAA:")
        assert (status, text) == ("400", "malformed Content-Digest: sha-256 is not a 32-byte sequence\n")
        # the digests checked at upload are served without reading the file again
        status, headers = head_fields(
            curl("-I", "-H", "Want-Repr-Digest: sha-512=3, sha-256=1", f"{base}/big.bin").stdout
        )
        assert status == 200
        assert headers["repr-digest"] == f"sha-512=:{b64(sha512)}:, md5=:{b64(hashlib.md5(big).digest())}:"
        status, headers = head_fields(curl("-I", "-H", "Want-Digest: adler32", f"{base}/adler.bin").stdout)
        assert headers["digest"] == f"adler32={adler_hex(adler)}"
    assert "computed " not in server.log_text()


def test_want_digest_served_and_computed_once(tmp_path: Path) -> None:
    """GET and HEAD with Want-Digest/Want-Repr-Digest get each algorithm's value; each is computed once, kept across a restart."""
    store = tmp_path / "store"
    store.mkdir()
    data = os.urandom(5 * 1024 * 1024 + 3)
    (store / "placed.bin").write_bytes(data)  # placed by hand: no digest known
    (store / "tiny.txt").write_bytes(b"x")
    expected = {
        "adler32": f"adler32={adler_hex(data)}",
        "md5": f"md5={b64(hashlib.md5(data).digest())}",
        "sha-256": f"sha-256={b64(hashlib.sha256(data).digest())}",
        "sha-512": f"sha-512={b64(hashlib.sha512(data).digest())}",
    }
    with running(ServerProcess(tmp_path, server_args(store))) as server:
        url = f"{server.url()}/data/placed.bin"
        for algorithm, value in expected.items():
            for method in (["-I"], ["-o", str(tmp_path / "body"), "-D", "-"]):
                status, headers = head_fields(curl(*method, "-H", f"Want-Digest: {algorithm.upper()}, crc32c;q=0.9", url).stdout)
                assert status == 200 and headers["digest"] == value
        assert (tmp_path / "body").read_bytes() == data
        status, headers = head_fields(curl("-I", "-H", "Want-Repr-Digest: sha-256=10, md5=1", url).stdout)
        assert headers["repr-digest"] == f"sha-256=:{b64(hashlib.sha256(data).digest())}:"
        assert "digest" not in headers
        status, headers = head_fields(curl("-I", "-H", "Want-Digest: adler32", f"{server.url()}/data/tiny.txt").stdout)
        assert headers["digest"] == "adler32=" + adler_hex(b"x")  # leading zeros kept: 8 digits
    log = server.log_text()  # (read once the server stopped: worker processes flush their lines then)
    for algorithm in expected:
        assert log.count(f"computed {algorithm} of {store / 'placed.bin'}") == 1, log
    # kept beside the MD5 in the store's database: a new server process computes nothing
    with running(ServerProcess(tmp_path, server_args(store))) as server:
        status, headers = head_fields(curl("-I", "-H", "Want-Digest: sha-512", f"{server.url()}/data/placed.bin").stdout)
        assert headers["digest"] == expected["sha-512"]
        # a file rewritten in place is a new file state: computed again
        changed = data[::-1]
        (store / "placed.bin").write_bytes(changed)
        for _ in range(2):
            status, headers = head_fields(curl("-I", "-H", "Want-Digest: sha-512", f"{server.url()}/data/placed.bin").stdout)
            assert headers["digest"] == f"sha-512={b64(hashlib.sha512(changed).digest())}"
    assert server.log_text().count("computed ") == 1, server.log_text()


def test_digests_over_mutual_tls(tmp_path: Path) -> None:
    """Over GSI-style mutual TLS (curl with a user certificate): a Content-Digest upload verified, Want-Digest served."""
    pki = make_test_pki(tmp_path / "pki", users=("alice",), share_keys=True)
    alice = pki.users["alice"]
    tls = ["--cacert", str(pki.ca_file), "--cert", str(alice.cert), "--key", str(alice.key)]
    store = tmp_path / "store"
    data = tmp_path / "event.root"
    write_random_file(data, 1_500_000)
    body = data.read_bytes()
    args = [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--ca-dir", str(pki.ca_dir), "--store", f"data={store}",
    ]
    with running(ServerProcess(tmp_path, args)) as server:
        base = server.url("https").replace("127.0.0.1", "localhost") + "/data"
        manifest = tmp_path / "manifest.ini"
        manifest.write_bytes(write_manifest([data]))
        answer = dict(
            line.split(": ", 1)
            for line in curl(*tls, "--data-binary", f"@{manifest}", f"{base}/manifest").stdout.splitlines()
        )
        key = answer["transfer_key"]
        wrong = f"Digest: sha-512={b64(hashlib.sha512(body[1:]).digest())}"
        status, text = upload(f"{base}/{key}/0", data, tmp_path / "a", wrong, curl_args=tls)
        assert status == "422" and text.startswith("checksum mismatch: sha-512 of the body is ")
        right = f"Content-Digest: sha-256=:{b64(hashlib.sha256(body).digest())}:"
        status, text = upload(f"{base}/{key}/0", data, tmp_path / "a", right, curl_args=tls)
        assert status == "200", text
        status, headers = head_fields(curl(*tls, "-I", "-H", "Want-Digest: adler32", f"{base}/event.root").stdout)
        assert status == 200 and headers["digest"] == f"adler32={adler_hex(body)}"
        status, headers = head_fields(curl(*tls, "-I", "-H", "Want-Repr-Digest: sha-256=1", f"{base}/event.root").stdout)
        assert headers["repr-digest"] == f"sha-256=:{b64(hashlib.sha256(body).digest())}:, md5=:{b64(hashlib.md5(body).digest())}:"
    assert server.log_text().count("computed ") == 1  # the adler32; the sha-256 was kept at upload


def _gfal_python() -> str | None:
    """An interpreter that has the gfal2 bindings and gfal2-util (Debian's python3-gfal2), if any."""
    for candidate in (os.environ.get("GFAL_PYTHONBIN"), "/usr/bin/python3", shutil.which("python3")):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import gfal2, gfal2_util"], capture_output=True, timeout=60)
            if probe.returncode == 0:
                return candidate
    return None


GFAL_PYTHON = _gfal_python() if shutil.which("gfal-sum") else None


@pytest.mark.skipif(GFAL_PYTHON is None, reason="gfal2 (gfal-sum, python3-gfal2 with its http plugin) is not installed")
def test_gfal2_checksums_as_rucio_asks_them(tmp_path: Path) -> None:
    """gfal2 (davix underneath) gets adler32 and MD5 as gfal-sum and Rucio's ctx.checksum ask them, over HTTP and with an X.509 proxy over TLS."""
    assert GFAL_PYTHON is not None
    pki = make_test_pki(tmp_path / "pki", users=("alice",), share_keys=True)
    alice = pki.users["alice"]
    assert alice.proxy is not None
    store = tmp_path / "store"
    store.mkdir()
    data = os.urandom(2 * 1024 * 1024 + 11)
    (store / "run42.root").write_bytes(data)
    args = [
        *server_args(store), "--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert),
        "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
    ]
    env = dict(
        os.environ, GFAL_PYTHONBIN=GFAL_PYTHON, X509_USER_PROXY=str(alice.proxy), X509_CERT_DIR=str(pki.ca_dir),
    )
    with running(ServerProcess(tmp_path, args)) as server:
        for base in (server.url("http"), server.url("https").replace("127.0.0.1", "localhost")):
            url = f"{base}/data/run42.root"
            for algorithm, expected in (("ADLER32", adler_hex(data)), ("MD5", hashlib.md5(data).hexdigest())):
                result = subprocess.run(["gfal-sum", url, algorithm], capture_output=True, text=True, env=env, timeout=120)
                assert result.returncode == 0, result.stderr
                assert result.stdout.split() == [url, expected]
            rucio_way = f"import gfal2; print(gfal2.creat_context().checksum({url!r}, 'ADLER32'))"
            result = subprocess.run([GFAL_PYTHON, "-c", rucio_way], capture_output=True, text=True, env=env, timeout=120)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == adler_hex(data)
    log = server.log_text()
    assert log.count("computed adler32 of") == 1 and log.count("computed md5 of") == 1, log
