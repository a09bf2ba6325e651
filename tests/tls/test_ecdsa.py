"""An ECDSA P-256 server certificate (``make-test-ca --server-key-type ec``).

The CAs, users and proxies stay RSA; only the host key is EC. ServerTLS must
load it, refuse it with the usual one-line error when key and certificate do
not match, and Python's ssl, ``openssl s_client``, curl and our own client
must all complete the mutual handshake with it (TLS 1.3 and 1.2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gsitransfer.testca import TestPKI, make_test_pki, reissue_server_cert
from gsitransfer.testca import main as make_test_ca
from gsitransfer.tls import ServerTLS, TLSConfigError, TrustConfig
from tests.support.server import REPO, ServerProcess

from .conftest import EchoServer, copy_pki, server_args, tls_handshake

TIMEOUT = 30


@pytest.fixture(scope="module")
def ec_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A small test PKI whose host certificate has an ECDSA P-256 key."""
    return make_test_pki(tmp_path_factory.mktemp("ec-pki"), users=("alice",), share_keys=True,
                         server_key_type="ec")


@pytest.fixture(scope="module")
def ec_echo(ec_pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoServer]:
    server = EchoServer(tmp_path_factory.mktemp("ec-echo"), *server_args(ec_pki))
    yield server
    server.stop()


def server_public_key(port: int, pki: TestPKI, version: ssl.TLSVersion) -> object:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.users["alice"].proxy))
    context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).public_key()


def test_the_host_key_is_p256_and_the_rest_rsa(ec_pki: TestPKI) -> None:
    """--server-key-type ec: an EC P-256 host key, digitalSignature only; the CA stays RSA."""
    cert = x509.load_pem_x509_certificate(ec_pki.server_cert.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    root = x509.load_pem_x509_certificate(ec_pki.root.cert.read_bytes())
    assert isinstance(root.public_key(), rsa.RSAPublicKey)
    assert isinstance(x509.load_pem_x509_certificate(ec_pki.users["alice"].cert.read_bytes()).public_key(),
                      rsa.RSAPublicKey)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_mutual_handshake_with_an_ec_host_key(ec_echo: EchoServer, ec_pki: TestPKI, version: ssl.TLSVersion) -> None:
    """ServerTLS serves the EC key over TLS 1.3 and 1.2; the client's proxy identity is unchanged."""
    assert isinstance(server_public_key(ec_echo.port, ec_pki, version), ec.EllipticCurvePublicKey)
    result = tls_handshake(ec_echo.port, ec_pki.users["alice"].proxy, ca_file=ec_pki.ca_file, max_version=version)
    assert result.accepted, result.error
    assert result.fields["dn"] == ec_pki.users["alice"].dn
    assert result.fields["proxy"] == "True"


@pytest.mark.parametrize(("cert", "key"), [("ec", "rsa"), ("rsa", "ec")])
def test_mismatched_ec_and_rsa_is_the_one_line_error(ec_pki: TestPKI, test_pki: TestPKI, cert: str, key: str) -> None:
    """An EC key with an RSA certificate (or the reverse) is refused like any mismatched key."""
    pkis = {"ec": ec_pki, "rsa": test_pki}
    cert_file, key_file = str(pkis[cert].server_cert), str(pkis[key].server_key)
    with pytest.raises(TLSConfigError) as error:
        ServerTLS(cert_file, key_file, TrustConfig(ca_dir=str(ec_pki.ca_dir)))
    assert str(error.value) == f"server key {key_file} does not match the certificate {cert_file}"


def test_reload_switches_rsa_to_ec(test_pki: TestPKI, tmp_path: Path, start_echo_server) -> None:  # type: ignore[no-untyped-def]
    """Re-issuing the host certificate with an EC key on disk takes effect on reload."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    server = start_echo_server(*server_args(pki))
    assert isinstance(server_public_key(server.port, pki, ssl.TLSVersion.TLSv1_3), rsa.RSAPublicKey)
    reissue_server_cert(pki.directory, "ec")
    assert server.reload()
    assert isinstance(server_public_key(server.port, pki, ssl.TLSVersion.TLSv1_3), ec.EllipticCurvePublicKey)
    result = tls_handshake(server.port, pki.users["alice"].proxy, ca_file=pki.ca_file)
    assert result.accepted and result.fields["dn"] == pki.users["alice"].dn, result.error


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client(ec_echo: EchoServer, ec_pki: TestPKI, version: str) -> None:
    """openssl s_client verifies the EC host certificate and gets the identity back."""
    proxy = str(ec_pki.users["alice"].proxy)
    done = subprocess.run(
        ["openssl", "s_client", version, "-connect", f"127.0.0.1:{ec_echo.port}", "-CAfile",
         str(ec_pki.ca_file), "-cert", proxy, "-key", proxy, "-cert_chain", proxy, "-verify_return_error",
         "-ign_eof"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert "Peer signature type: ECDSA" in done.stdout, done.stdout + done.stderr
    assert "Verification: OK" in done.stdout
    assert f"dn: {ec_pki.users['alice'].dn}\n" in done.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl command")
def test_curl(ec_echo: EchoServer, ec_pki: TestPKI) -> None:
    """curl (system OpenSSL) verifies the EC host certificate by name and sends the proxy chain."""
    proxy = str(ec_pki.users["alice"].proxy)
    done = subprocess.run(
        ["curl", "-sS", "--http0.9", "--max-time", str(TIMEOUT), "--cert", proxy, "--key", proxy,
         "--cacert", str(ec_pki.ca_file), f"https://localhost:{ec_echo.port}/"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT + 10,
    )
    assert done.returncode == 0, done.stderr
    assert f"dn: {ec_pki.users['alice'].dn}\n" in done.stdout


def test_gsitransfer_client_against_an_ec_server(ec_pki: TestPKI, tmp_path: Path) -> None:
    """Our client uploads to and downloads from a real server whose host key is EC."""
    store = tmp_path / "store"
    process = ServerProcess(tmp_path / "server", [
        "--https", "tcp:0:interface=127.0.0.1", "--cert", str(ec_pki.server_cert),
        "--key", str(ec_pki.server_key), "--ca-dir", str(ec_pki.ca_dir), "--store", f"data={store}",
    ]).start()
    try:
        base = process.url("https").replace("127.0.0.1", "localhost") + "/data"
        home = tmp_path / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("X509_")}
        env.update(HOME=str(home), PYTHONPATH=str(REPO), X509_USER_PROXY=str(ec_pki.users["alice"].proxy),
                   X509_CERT_DIR=str(ec_pki.ca_dir))
        source = tmp_path / "payload.bin"
        source.write_bytes(os.urandom(300_000))

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "gsitransfer.cli", *args], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

        up = cli("upload", base, str(source))
        assert up.returncode == 0, up.stderr
        (tmp_path / "down").mkdir()
        down = cli("--json", "download", f"{base}/{source.name}", str(tmp_path / "down"))
        assert down.returncode == 0, down.stderr
        answer = json.loads(down.stdout)
        assert answer["verified"] is True
        assert answer["md5"] == hashlib.md5(source.read_bytes()).hexdigest()
    finally:
        process.stop()


def test_make_test_ca_server_key_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """make-test-ca --server-key-type ec makes an EC host key; on an existing CA it re-issues it."""
    out = tmp_path / "certs"
    assert make_test_ca(["--out", str(out), "--user", "alice", "--server-key-type", "ec"]) == 0
    assert "ECDSA secp256r1" in capsys.readouterr().out
    key = lambda: x509.load_pem_x509_certificate((out / "server" / "hostcert.pem").read_bytes()).public_key()  # noqa: E731
    assert isinstance(key(), ec.EllipticCurvePublicKey)
    assert make_test_ca(["--out", str(out), "--server-key-type", "rsa"]) == 0
    assert "RSA-2048, re-issued" in capsys.readouterr().out
    assert isinstance(key(), rsa.RSAPublicKey)
    ServerTLS(str(out / "server" / "hostcert.pem"), str(out / "server" / "hostkey.pem"),
              TrustConfig(ca_dir=str(out / "ca")))
    assert (out / "server" / "hostkey.pem").stat().st_mode & 0o077 == 0
