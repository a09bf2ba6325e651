"""Mutual TLS as an attacker speaks it, against a real ``--https`` server on 127.0.0.1.

What is proven here (tests/tls/test_gsi_server.py already covers untrusted,
expired and revoked certificates and the identity of well-formed proxies):

* garbage instead of a ClientHello is closed at once, and a handshake that
  never completes — silent, partial, or trickled a byte at a time — is cut
  off by ``--idle-timeout`` (the time is measured and printed);
* a TLS 1.2 client asking to renegotiate (to swap its certificate for
  another) is refused, and no request is ever served under the new name;
* a chain of proxies deeper than the verify depth is refused, a chain within
  it is the user's identity; a proxy path-length constraint is enforced;
* a proxy whose subject breaks RFC 3820's naming rule (subject = issuer +
  one CN), and an end-entity certificate used as a CA, are refused — in
  particular Alice can never mint herself a certificate that authenticates
  as Bob;
* none of this leaks descriptors, leaves an unhandled error in the log, or
  stops the server from serving.
"""

from __future__ import annotations

import datetime
import os
import select
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gsitransfer.identity import POLICY_INDEPENDENT, POLICY_INHERIT_ALL, PROXY_CERT_INFO_OID
from gsitransfer.testca import Issued, TestPKI, make_proxy, proxy_cert_info_der
from tests.support.http import client_tls, manifest_for, request
from tests.support.server import ServerProcess

from .support import assert_clean_log, host_port, is_closed_by_peer, open_fds, running, unique, wait_for

IDLE = 1.0

#: one key for every certificate minted here (RSA generation is the slow part)
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def gsi(adv_pki: TestPKI, tmp_path_factory):
    work = tmp_path_factory.mktemp("tls-hostile")
    args = ["--https", "tcp:0:interface=127.0.0.1", "--cert", str(adv_pki.server_cert),
            "--key", str(adv_pki.server_key), "--ca-dir", str(adv_pki.ca_dir),
            "--store", f"data={work / 'store'}", "--idle-timeout", str(IDLE)]
    with running(ServerProcess(work, args)) as process:
        yield process
        alice = adv_pki.users["alice"]
        assert upload_as(process, adv_pki, client_tls(adv_pki.ca_file, alice.cert, alice.key)) == alice.dn
        assert_clean_log(process)


def base_of(server: ServerProcess) -> str:
    return server.url("https").replace("127.0.0.1", "localhost")


def upload_as(server: ServerProcess, pki: TestPKI, tls: ssl.SSLContext) -> str | None:
    """Upload one file with ``tls`` and return the owner DN the store recorded."""
    base = base_of(server)
    name = unique("who.txt")
    answer = request(base, "POST", "/data/manifest", manifest_for([(name, b"me")]), tls=tls)
    key = answer.fields()["transfer_key"]
    assert request(base, "POST", f"/data/{key}/0", b"me", tls=tls).status == 200
    import json

    listing = json.loads(request(base, "GET", "/data/", tls=tls).body)["files"]
    return next(f["owner"] for f in listing if f["name"] == name)


def load_issued(cert: Path, key: Path, *chain: Path) -> Issued:
    return Issued(
        x509.load_pem_x509_certificate(cert.read_bytes()),
        serialization.load_pem_private_key(key.read_bytes(), password=None),  # type: ignore[arg-type]
        tuple(x509.load_pem_x509_certificate(path.read_bytes()) for path in chain),
    )


def alice_issued(pki: TestPKI) -> Issued:
    alice = pki.users["alice"]
    return load_issued(alice.cert, alice.key, pki.root.cert)


def write_credential(path: Path, issued: Issued) -> Path:
    """Leaf, key, then every certificate above it except the root (what a client sends)."""
    pem = issued.cert.public_bytes(serialization.Encoding.PEM)
    pem += issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    for cert in issued.chain:
        if cert.subject == cert.issuer:
            break
        pem += cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def mint_proxy(issuer: Issued, subject: x509.Name, *, policy: str = POLICY_INHERIT_ALL,
               path_length: int | None = None, proxy_extension: bool = True) -> Issued:
    """A certificate signed by ``issuer`` with any ``subject`` (RFC 3820 ProxyCertInfo unless told not)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
    )
    if proxy_extension:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info_der(policy, path_length)), critical=True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    cert = builder.sign(issuer.key, hashes.SHA256())
    return Issued(cert, _KEY, (issuer.cert, *issuer.chain))


def with_rdns(name: x509.Name, *extra: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    rdns = list(name.rdns)
    for attributes in extra:
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in attributes]))
    return x509.Name(rdns)


def refused(server: ServerProcess, pki: TestPKI, credential: Path) -> bool:
    """True when a handshake with ``credential`` fails (or the first request cannot be sent)."""
    tls = client_tls(pki.ca_file, credential)
    try:
        request(base_of(server), "GET", "/data/", tls=tls, timeout=10)
    except (ssl.SSLError, OSError):
        return True
    return False


# -- handshakes that are no handshakes -----------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET /data/ HTTP/1.1\r\nHost: x\r\n\r\n", id="plain HTTP"),
        pytest.param(os.urandom(4096), id="4 kB random"),
        pytest.param(b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + os.urandom(37), id="SSLv2 hello"),
        pytest.param(b"\x16\x03\x01\xff\xff" + os.urandom(200), id="record claiming 64 kB"),
        pytest.param(b"\x16\x03\x00\x00\x05\x01\x00\x00\x01\x00", id="SSL 3.0 hello"),
        pytest.param(b"\x15\x03\x03\x00\x02\x02\x28" * 50, id="alerts only"),
    ],
)
def test_garbage_instead_of_client_hello_is_closed(gsi, garbage):
    """Garbage, plain HTTP or obsolete hellos: the server closes within the idle timeout, serves nothing."""
    with socket.create_connection(host_port(gsi.url("https")), timeout=10) as sock:
        sock.sendall(garbage)
        started = time.monotonic()
        how = is_closed_by_peer(sock, IDLE + 3)
        print(f"{garbage[:8]!r}: closed ({how}) after {time.monotonic() - started:.2f} s")
        assert how in ("eof", "reset")


HANDSHAKE_PREFIX = bytes.fromhex("16030100c4010000c00303") + os.urandom(32)


@pytest.mark.parametrize("how", ["silent", "partial hello", "trickled hello"])
def test_handshake_that_never_completes_is_cut_off(gsi, how):
    """A client that connects and never finishes the handshake is cut off after --idle-timeout."""
    with socket.create_connection(host_port(gsi.url("https")), timeout=10) as sock:
        started = time.monotonic()
        closed = None
        if how == "partial hello":
            sock.sendall(HANDSHAKE_PREFIX)
        if how == "trickled hello":
            for byte in HANDSHAKE_PREFIX:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = "reset"
                    break
                closed = is_closed_by_peer(sock, 0.3)
                if closed or time.monotonic() - started > IDLE * 4:
                    break
        if closed is None:
            closed = is_closed_by_peer(sock, IDLE * 4)
        elapsed = time.monotonic() - started
    print(f"{how}: cut off ({closed}) after {elapsed:.2f} s with --idle-timeout {IDLE}")
    assert closed in ("eof", "reset")
    assert elapsed < IDLE + 2.5


HANDSHAKE = 1.0


@pytest.fixture(scope="module")
def gsi_handshake(adv_pki: TestPKI, tmp_path_factory):
    """A GSI server with --handshake-timeout 1 and the default-like --idle-timeout 300."""
    work = tmp_path_factory.mktemp("tls-handshake")
    args = ["--https", "tcp:0:interface=127.0.0.1", "--cert", str(adv_pki.server_cert),
            "--key", str(adv_pki.server_key), "--ca-dir", str(adv_pki.ca_dir),
            "--store", f"data={work / 'store'}", "--idle-timeout", "300",
            "--handshake-timeout", str(HANDSHAKE)]
    with running(ServerProcess(work, args)) as process:
        yield process
        assert_clean_log(process)


@pytest.mark.parametrize("how", ["silent", "trickled hello"])
def test_handshake_deadline_is_separate_from_the_idle_timeout(gsi_handshake, how):
    """With --handshake-timeout 1 and --idle-timeout 300, an unfinished handshake is cut off
    by the handshake deadline (the figure is printed), not after the idle timeout."""
    with socket.create_connection(host_port(gsi_handshake.url("https")), timeout=10) as sock:
        started = time.monotonic()
        closed = None
        if how == "trickled hello":
            for byte in HANDSHAKE_PREFIX:  # bounded: one byte per 0.2 s, at most len(prefix)
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = "reset"
                    break
                closed = is_closed_by_peer(sock, 0.2)
                if closed:
                    break
        if closed is None:
            closed = is_closed_by_peer(sock, 30)
        elapsed = time.monotonic() - started
    print(f"{how}: cut off ({closed}) after {elapsed:.2f} s with --handshake-timeout {HANDSHAKE}, "
          "--idle-timeout 300")
    assert closed in ("eof", "reset")


def test_finished_handshake_is_not_cut_off_by_the_handshake_deadline(gsi_handshake, adv_pki):
    """A client that finished its handshake keeps its connection past the handshake deadline:
    a second request on it, sent after the deadline, is answered 200."""
    alice = adv_pki.users["alice"]
    context = client_tls(adv_pki.ca_file, alice.cert, alice.key)
    host, port = host_port(gsi_handshake.url("https"))
    ask = b"GET /data/ HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            answers = []
            for _ in range(2):
                tls.sendall(ask)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                answers.append(head.split(b"\r\n", 1)[0])
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    body += chunk
                time.sleep(HANDSHAKE * 2)  # past the handshake deadline before the next request
    assert answers == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"], answers


def test_failed_handshakes_leak_no_descriptors(gsi, adv_pki):
    """Forty refused or abandoned handshakes later the server holds as many descriptors as before."""
    pid = gsi.pid
    before = open_fds(pid)
    base = base_of(gsi)
    for index in range(40):
        with socket.create_connection(host_port(gsi.url("https")), timeout=5) as sock:
            sock.sendall(os.urandom(100) if index % 2 else HANDSHAKE_PREFIX[:20])
        try:
            request(base, "GET", "/data/", tls=client_tls(adv_pki.ca_file), timeout=5)
        except (ssl.SSLError, OSError):
            pass
    wait_for(lambda: open_fds(pid) <= before, IDLE + 5, f"descriptors back to {before}")


# -- renegotiation ----------------------------------------------------------------------------------


def _drive(call, sock: socket.socket, deadline: float):
    from OpenSSL import SSL

    while True:
        try:
            return call()
        except SSL.WantReadError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("TLS operation did not finish")
            select.select([sock], [], [], remaining)
        except SSL.WantWriteError:
            select.select([], [sock], [], 1)


def test_tls12_renegotiation_is_refused(gsi, adv_pki):
    """Alice connects with TLS 1.2 and asks to renegotiate as Bob: refused, nothing served as Bob."""
    from OpenSSL import SSL

    alice, bob = adv_pki.users["alice"], adv_pki.users["bob"]
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.load_verify_locations(str(adv_pki.ca_file))
    context.use_certificate_file(str(alice.cert))
    context.use_privatekey_file(str(alice.key))
    sock = socket.create_connection(host_port(gsi.url("https")), timeout=10)
    sock.setblocking(False)
    connection = SSL.Connection(context, sock)
    connection.set_connect_state()
    connection.set_tlsext_host_name(b"localhost")
    try:
        _drive(connection.do_handshake, sock, time.monotonic() + 10)
        assert connection.get_protocol_version_name() == "TLSv1.2"
        connection.use_certificate(x509.load_pem_x509_certificate(bob.cert.read_bytes()))
        connection.use_privatekey(serialization.load_pem_private_key(bob.key.read_bytes(), None))
        connection.renegotiate()
        renegotiated = False
        try:
            _drive(connection.do_handshake, sock, time.monotonic() + 5)
            renegotiated = connection.total_renegotiations() > 0
        except (SSL.Error, TimeoutError, OSError):
            pass
        answer = b""
        try:
            _drive(lambda: connection.send(b"GET /data/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                   sock, time.monotonic() + 5)
            while True:
                chunk = _drive(lambda: connection.recv(65536), sock, time.monotonic() + 5)
                if not chunk:
                    break
                answer += chunk
        except (SSL.Error, TimeoutError, OSError):
            pass
    finally:
        sock.close()
    assert not renegotiated, "the server completed a renegotiation"
    assert bob.dn.encode() not in answer


# -- chains -----------------------------------------------------------------------------------------


def proxy_chain(pki: TestPKI, depth: int) -> Issued:
    """Alice's certificate with ``depth`` proxies below it, each signed by the one above."""
    issued = alice_issued(pki)
    for _ in range(depth):
        issued = make_proxy(issued, _KEY)
    return issued


@pytest.mark.parametrize("depth", [1, 5, 10])
def test_proxy_chain_within_the_depth_is_alice(gsi, adv_pki, tmp_path, depth):
    """Up to ten proxies below Alice (root + user + 10 = 12 certificates, verify depth 10) are Alice."""
    credential = write_credential(tmp_path / "chain.pem", proxy_chain(adv_pki, depth))
    assert upload_as(gsi, adv_pki, client_tls(adv_pki.ca_file, credential)) == adv_pki.users["alice"].dn


@pytest.mark.parametrize("depth", [11, 40])
def test_proxy_chain_deeper_than_allowed_is_refused(gsi, adv_pki, tmp_path, depth):
    """A chain of 11 or 40 proxies (13 or more certificates, beyond verify depth 10) is refused."""
    credential = write_credential(tmp_path / "deep.pem", proxy_chain(adv_pki, depth))
    assert refused(gsi, adv_pki, credential)
    # logged by the server as it refuses (with --workers, relayed by the supervisor a moment later)
    wait_for(
        lambda: "certificate chain too long" in gsi.log_text() or "verify error 22" in gsi.log_text(),
        5,
        "the refusal in the server log",
    )


def test_proxy_path_length_constraint_is_enforced(gsi, adv_pki, tmp_path):
    """A proxy limited to no further delegation (pCPathLenConstraint 0) cannot sign another proxy."""
    limited = make_proxy(alice_issued(adv_pki), _KEY, path_length=0)
    below = make_proxy(limited, _KEY)
    assert refused(gsi, adv_pki, write_credential(tmp_path / "pathlen.pem", below))


def _naming_cases(pki: TestPKI) -> dict[str, x509.Name]:
    alice = alice_issued(pki).cert.subject
    bob = x509.load_pem_x509_certificate(pki.users["bob"].cert.read_bytes()).subject
    cn = NameOID.COMMON_NAME
    return {
        "Bob's DN plus a CN": with_rdns(bob, [(cn, "12345")]),
        "exactly Bob's DN": bob,
        "Alice's DN, nothing added": alice,
        "two CNs added": with_rdns(alice, [(cn, "1")], [(cn, "2")]),
        "an OU added, not a CN": with_rdns(alice, [(NameOID.ORGANIZATIONAL_UNIT_NAME, "proxy")]),
        "a multi-valued CN added": with_rdns(alice, [(cn, "1"), (NameOID.USER_ID, "bob")]),
        "an earlier RDN changed": x509.Name(
            [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grid Tost")])
             if rdn.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) else rdn for rdn in alice.rdns]
            + [x509.RelativeDistinguishedName([x509.NameAttribute(cn, "9")])]
        ),
    }


NAMING_CASES = ["Bob's DN plus a CN", "exactly Bob's DN", "Alice's DN, nothing added", "two CNs added",
                "an OU added, not a CN", "a multi-valued CN added", "an earlier RDN changed"]


@pytest.mark.parametrize("policy", [POLICY_INHERIT_ALL, POLICY_INDEPENDENT], ids=["inheritAll", "independent"])
@pytest.mark.parametrize("case", NAMING_CASES)
def test_proxy_breaking_the_naming_rule_is_refused(gsi, adv_pki, tmp_path, case, policy):
    """A proxy whose subject is not 'issuer + one CN' is refused; it never authenticates as Bob."""
    subject = _naming_cases(adv_pki)[case]
    proxy = mint_proxy(alice_issued(adv_pki), subject, policy=policy)
    credential = write_credential(tmp_path / "bad-proxy.pem", proxy)
    if not refused(gsi, adv_pki, credential):
        owner = upload_as(gsi, adv_pki, client_tls(adv_pki.ca_file, credential))
        assert owner != adv_pki.users["bob"].dn, "Alice authenticated as Bob"
        pytest.fail(f"accepted as {owner}")


def test_end_entity_cannot_act_as_a_ca(gsi, adv_pki, tmp_path):
    """Alice's certificate signing a plain certificate for Bob's DN (no proxy extension): refused."""
    bob = x509.load_pem_x509_certificate(adv_pki.users["bob"].cert.read_bytes()).subject
    forged = mint_proxy(alice_issued(adv_pki), bob, proxy_extension=False)
    assert refused(gsi, adv_pki, write_credential(tmp_path / "forged.pem", forged))


def test_proxy_of_an_untrusted_user_is_refused(gsi, adv_pki, tmp_path):
    """A well-formed proxy of a self-made 'Alice' (same DN, untrusted issuer) is refused."""
    fake_ca = Issued(*_self_signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Grid Test Root CA")])))
    fake_alice = mint_proxy(fake_ca, alice_issued(adv_pki).cert.subject, proxy_extension=False)
    proxy = make_proxy(fake_alice, _KEY)
    assert refused(gsi, adv_pki, write_credential(tmp_path / "fake.pem", proxy))


def _self_signed(name: x509.Name) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(_KEY, hashes.SHA256())
    )
    return cert, _KEY


def test_module_log_has_no_unhandled_error(gsi):
    """Nothing above left an unhandled error in the server log."""
    assert_clean_log(gsi)
