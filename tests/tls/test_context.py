"""ServerTLS: real TLS handshakes on 127.0.0.1, reload, and start-up errors."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface.verify import verifyObject

from gsitransfer.testca import TestPKI, revoke
from gsitransfer.tls import ServerTLS, TLSConfigError, TrustConfig

from .conftest import EchoServer, Handshake, copy_pki, server_args, tls_handshake


def connect(server: EchoServer, pki: TestPKI, cert: Path | None, key: Path | None = None, **kw: object) -> Handshake:
    return tls_handshake(server.port, cert, key, ca_file=pki.ca_file, **kw)  # type: ignore[arg-type]


def as_user(pki: TestPKI, name: str) -> tuple[Path, Path]:
    return pki.users[name].cert, pki.users[name].key


# ---------------------------------------------------------------------------
# Accepted
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "carol", "dave", "jose", "odd"])
def test_user_certificate_is_accepted_with_its_one_line_dn(echo_server: EchoServer, test_pki: TestPKI, name: str) -> None:
    """A user certificate (root or intermediate CA, any DN shape) is accepted; dn is its one-line DN."""
    result = connect(echo_server, test_pki, *as_user(test_pki, name))
    assert result.accepted, result.error
    assert result.fields["dn"] == test_pki.users[name].dn
    assert result.fields["proxy"] == "False"
    assert result.fields["issuer"] == test_pki.users[name].issuer_dn


@pytest.mark.parametrize("name", ["alice", "carol", "dave", "jose", "odd"])
@pytest.mark.parametrize("kind", ["proxy", "proxy_of_proxy"])
def test_proxy_is_accepted_as_its_end_entity(echo_server: EchoServer, test_pki: TestPKI, name: str, kind: str) -> None:
    """An RFC 3820 proxy (or a proxy of a proxy) authenticates as the user who made it."""
    result = connect(echo_server, test_pki, getattr(test_pki.users[name], kind))
    assert result.accepted, result.error
    assert result.fields["dn"] == test_pki.users[name].dn
    assert result.fields["proxy"] == "True"
    assert result.fields["limited"] == "False"


def test_limited_proxy_is_accepted_and_flagged(echo_server: EchoServer, test_pki: TestPKI) -> None:
    """A limited proxy is accepted as its user, with limited_proxy set."""
    result = connect(echo_server, test_pki, test_pki.users["alice"].limited_proxy)
    assert result.accepted, result.error
    assert (result.fields["dn"], result.fields["limited"]) == (test_pki.users["alice"].dn, "True")


def test_independent_proxy_is_its_own_identity(echo_server: EchoServer, test_pki: TestPKI) -> None:
    """An independent proxy authenticates as itself (user DN + /CN=<serial>)."""
    user = test_pki.users["alice"]
    result = connect(echo_server, test_pki, user.independent_proxy)
    assert result.accepted, result.error
    assert result.fields["dn"] == user.independent_proxy_dn
    assert result.fields["dn"].startswith(user.dn + "/CN=")


def test_tls_1_2_client_is_accepted(echo_server: EchoServer, test_pki: TestPKI) -> None:
    """A client limited to TLS 1.2 completes the mutual handshake with a proxy."""
    result = connect(echo_server, test_pki, test_pki.users["alice"].proxy, max_version=ssl.TLSVersion.TLSv1_2)
    assert result.accepted, result.error
    assert result.fields["dn"] == test_pki.users["alice"].dn


def grid_proxy_init(pki: TestPKI, name: str, out: Path, *options: str) -> Path:
    """A proxy of user ``name`` made by the real grid-proxy-init (test skipped without it)."""
    if shutil.which("grid-proxy-init") is None:
        pytest.skip("grid-proxy-init is not installed")
    user = pki.users[name]
    subprocess.run(
        ["grid-proxy-init", "-q", *options, "-cert", str(user.cert), "-key", str(user.key), "-out", str(out)],
        env=dict(os.environ, X509_CERT_DIR=str(pki.ca_dir)), stdin=subprocess.DEVNULL,
        check=True, timeout=30, capture_output=True,
    )
    return out


def test_proxy_made_by_grid_proxy_init_is_accepted(echo_server: EchoServer, test_pki: TestPKI, tmp_path: Path) -> None:
    """A proxy made by the real grid-proxy-init authenticates as its user."""
    result = connect(echo_server, test_pki, grid_proxy_init(test_pki, "jose", tmp_path / "x509up"))
    assert result.accepted, result.error
    assert (result.fields["dn"], result.fields["proxy"]) == (test_pki.users["jose"].dn, "True")


@pytest.mark.parametrize(("option", "reason"), [("-old", "invalid CA certificate"), ("-draft", "unhandled critical extension")])
def test_legacy_and_draft_globus_proxies_are_refused(
    echo_server: EchoServer, test_pki: TestPKI, tmp_path: Path, option: str, reason: str
) -> None:
    """Pre-RFC 3820 Globus proxies (grid-proxy-init -old / -draft) are refused, and the log says why."""
    result = connect(echo_server, test_pki, grid_proxy_init(test_pki, "alice", tmp_path / "x509up", option))
    assert not result.accepted
    marker = f"127.0.0.1:{result.local_port}:"
    line = echo_server.wait_for(lambda text: next((l for l in text.splitlines() if marker in l), None))
    assert reason in line and test_pki.users["alice"].dn in line  # type: ignore[operator]


# ---------------------------------------------------------------------------
# Refused
# ---------------------------------------------------------------------------

REFUSED = {
    "no client certificate": lambda pki: (None, None),
    "untrusted CA": lambda pki: as_user(pki, "mallory"),
    "expired certificate": lambda pki: as_user(pki, "expired"),
    "expired proxy": lambda pki: (pki.users["alice"].expired_proxy, None),
    "revoked user": lambda pki: as_user(pki, "revoked"),
    "revoked user's proxy": lambda pki: (pki.users["revoked"].proxy, None),
    "revoked user's proxy of proxy": lambda pki: (pki.users["revoked"].proxy_of_proxy, None),
    "revoked intermediate-CA user's proxy": lambda pki: (pki.users["revoked-inter"].proxy, None),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_handshake_is_refused(echo_server: EchoServer, test_pki: TestPKI, case: str) -> None:
    """Clients without a valid, trusted, unrevoked certificate get no identity."""
    result = connect(echo_server, test_pki, *REFUSED[case](test_pki))
    assert not result.accepted, result.fields
    assert result.error or not result.fields


@pytest.mark.parametrize(
    ("name", "proxy", "reason", "depth"),
    [
        ("revoked", True, "certificate revoked", 1),
        ("expired", False, "certificate has expired", 0),
        ("mallory", False, "unable to get local issuer certificate", 0),
    ],
)
def test_refusal_is_logged_once_with_dn_and_reason(
    echo_server: EchoServer, test_pki: TestPKI, name: str, proxy: bool, reason: str, depth: int
) -> None:
    """A refused certificate is logged in one line naming the peer, the reason, the depth and the DN."""
    user = test_pki.users[name]
    result = connect(echo_server, test_pki, user.proxy) if proxy else connect(echo_server, test_pki, user.cert, user.key)
    assert not result.accepted
    marker = f"127.0.0.1:{result.local_port}:"
    echo_server.wait_for(lambda text: marker in text)
    lines = [line for line in echo_server.log().splitlines() if marker in line]
    assert len(lines) == 1, lines
    assert reason in lines[0] and f"depth {depth}" in lines[0] and f"subject {user.dn}" in lines[0]


def test_missing_client_certificate_is_logged(echo_server: EchoServer, test_pki: TestPKI) -> None:
    """A client that sends no certificate is logged once as such."""
    result = connect(echo_server, test_pki, None)
    marker = f"127.0.0.1:{result.local_port}:"
    echo_server.wait_for(lambda text: marker in text)
    lines = [line for line in echo_server.log().splitlines() if marker in line]
    assert len(lines) == 1 and "no client certificate" in lines[0], lines


# ---------------------------------------------------------------------------
# Reload and CRL policy
# ---------------------------------------------------------------------------


def test_reload_applies_a_new_crl_to_new_connections(
    test_pki: TestPKI, tmp_path: Path, start_echo_server: Callable[..., EchoServer]
) -> None:
    """Revoking on disk changes nothing until reload(); then the user and their proxies are refused."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    server = start_echo_server(*server_args(pki))
    assert connect(server, pki, *as_user(pki, "bob")).accepted
    revoke(pki.directory, "bob")
    assert connect(server, pki, *as_user(pki, "bob")).accepted, "the live context must not re-read CRLs"
    assert server.reload() is True
    assert not connect(server, pki, *as_user(pki, "bob")).accepted
    assert not connect(server, pki, pki.users["bob"].proxy).accepted
    assert connect(server, pki, pki.users["alice"].proxy).accepted


def test_reload_picks_up_a_new_ca(test_pki: TestPKI, tmp_path: Path, start_echo_server: Callable[..., EchoServer]) -> None:
    """A CA certificate added to the directory is trusted after reload (a CA without CRL is accepted by default)."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    server = start_echo_server(*server_args(pki))
    assert not connect(server, pki, *as_user(pki, "mallory")).accepted
    shutil.copy(pki.untrusted.cert, pki.ca_dir / f"{pki.untrusted.hash}.0")
    assert server.reload() is True
    result = connect(server, pki, *as_user(pki, "mallory"))
    assert result.accepted, result.error
    assert result.fields["dn"] == pki.users["mallory"].dn


def test_failed_reload_keeps_the_previous_trust(
    test_pki: TestPKI, tmp_path: Path, start_echo_server: Callable[..., EchoServer]
) -> None:
    """A broken CRL on disk makes reload() fail with one log line; connections still use the old trust."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    server = start_echo_server(*server_args(pki))
    assert pki.root.crl is not None
    pki.root.crl.write_bytes(b"not a CRL\n")
    assert server.reload() is False
    assert connect(server, pki, pki.users["alice"].proxy).accepted
    assert not connect(server, pki, pki.users["revoked"].proxy).accepted
    failures = [line for line in server.log().splitlines() if "TLS reload failed" in line]
    assert len(failures) == 1 and str(pki.root.crl) in failures[0]


def test_crl_policy_strict_refuses_a_ca_without_crl(
    test_pki: TestPKI, tmp_path: Path, start_echo_server: Callable[..., EchoServer]
) -> None:
    """Without the intermediate CA's CRL, "strict" refuses its users and "if-present" accepts them."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    assert pki.intermediate.crl is not None
    pki.intermediate.crl.unlink()
    strict = start_echo_server(*server_args(pki, crl_policy="strict"))
    lenient = start_echo_server(*server_args(pki))
    assert connect(strict, pki, *as_user(pki, "alice")).accepted
    refused = connect(strict, pki, pki.users["carol"].proxy)
    assert not refused.accepted
    strict.wait_for(lambda text: "unable to get certificate CRL" in text)
    assert connect(lenient, pki, pki.users["carol"].proxy).accepted
    assert not connect(lenient, pki, pki.users["revoked"].proxy).accepted


def test_ca_file_alone_is_enough(test_pki: TestPKI, start_echo_server: Callable[..., EchoServer]) -> None:
    """A CA bundle file without a CA directory verifies clients (no CRLs then)."""
    server = start_echo_server(*server_args(test_pki, ca_dir=False, ca_file=True))
    result = connect(server, test_pki, test_pki.users["carol"].proxy_of_proxy)
    assert result.accepted, result.error
    assert not connect(server, test_pki, *as_user(test_pki, "mallory")).accepted


# ---------------------------------------------------------------------------
# In process: the interface, reload, start-up errors
# ---------------------------------------------------------------------------


def server_tls(pki: TestPKI, **trust: object) -> ServerTLS:
    config = TrustConfig(**{"ca_dir": str(pki.ca_dir), **trust})  # type: ignore[arg-type]
    return ServerTLS(str(pki.server_cert), str(pki.server_key), config)


def test_server_tls_provides_the_connection_creator_interface(test_pki: TestPKI) -> None:
    """ServerTLS declares and implements IOpenSSLServerConnectionCreator."""
    creator = server_tls(test_pki)
    assert verifyObject(IOpenSSLServerConnectionCreator, creator)
    assert (len(creator.material.cas), len(creator.material.crls)) == (2, 2)


def test_reload_swaps_the_context_or_keeps_it(test_pki: TestPKI, tmp_path: Path) -> None:
    """reload() builds a new context when a file changed (or forced); a failed build keeps the old one."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    creator = server_tls(pki)
    first = creator.context
    assert creator.reload() is False and creator.context is first  # nothing changed
    assert creator.reload(force=True) is True and creator.context is not first
    second = creator.context
    revoke(pki.directory, "bob")
    assert creator.reload() is True and creator.context is not second
    third = creator.context
    shutil.rmtree(pki.ca_dir)
    assert creator.reload() is False and creator.context is third
    assert creator.reload(force=True) is False and creator.context is third


def test_only_hash_named_files_are_read_from_the_ca_directory(test_pki: TestPKI, tmp_path: Path) -> None:
    """Files not named <8 hex>.<digit> or <8 hex>.r<digit> are ignored, whatever they hold."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    for junk in ("README", "ca.pem", "12345678.pem", "1234567.0", "12345678.0.bak", "ABCDEF01.0", "12345678.crl"):
        (pki.ca_dir / junk).write_text("junk\n")
    assert len(server_tls(pki).material.cas) == 2


def one_line_error(build: Callable[[], object]) -> str:
    with pytest.raises(TLSConfigError) as caught:
        build()
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def test_missing_key_is_a_one_line_error(test_pki: TestPKI, tmp_path: Path) -> None:
    """A missing server key names the file."""
    missing = tmp_path / "nokey.pem"
    message = one_line_error(lambda: ServerTLS(str(test_pki.server_cert), str(missing), TrustConfig(str(test_pki.ca_dir))))
    assert str(missing) in message and "No such file" in message


def test_missing_certificate_is_a_one_line_error(test_pki: TestPKI, tmp_path: Path) -> None:
    """A missing server certificate names the file."""
    missing = tmp_path / "nocert.pem"
    message = one_line_error(lambda: ServerTLS(str(missing), str(test_pki.server_key), TrustConfig(str(test_pki.ca_dir))))
    assert str(missing) in message


def test_mismatched_key_is_a_one_line_error(test_pki: TestPKI) -> None:
    """A key that is not the certificate's names both files."""
    key = test_pki.users["alice"].key
    message = one_line_error(lambda: ServerTLS(str(test_pki.server_cert), str(key), TrustConfig(str(test_pki.ca_dir))))
    assert "does not match" in message and str(key) in message and str(test_pki.server_cert) in message


def test_expired_server_certificate_is_a_one_line_error(test_pki: TestPKI) -> None:
    """An expired server certificate is refused at start-up, with its date."""
    cert = test_pki.server_expired_cert
    message = one_line_error(lambda: ServerTLS(str(cert), str(test_pki.server_key), TrustConfig(str(test_pki.ca_dir))))
    assert "expired" in message and str(cert) in message


def test_not_yet_valid_server_certificate_is_a_one_line_error(test_pki: TestPKI) -> None:
    """A server certificate checked before its validity starts is refused (clock injected)."""
    def clock() -> datetime.datetime:
        return datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)

    message = one_line_error(
        lambda: ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(str(test_pki.ca_dir)), clock=clock)
    )
    assert "not valid before" in message


def test_encrypted_key_is_a_one_line_error(test_pki: TestPKI, tmp_path: Path) -> None:
    """A passphrase-protected key is refused (no prompt in a daemon)."""
    key = serialization.load_pem_private_key(test_pki.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    message = one_line_error(lambda: ServerTLS(str(test_pki.server_cert), str(encrypted), TrustConfig(str(test_pki.ca_dir))))
    assert "encrypted" in message and str(encrypted) in message


def test_empty_ca_directory_is_a_one_line_error(test_pki: TestPKI, tmp_path: Path) -> None:
    """A CA directory without <hash>.0 files is refused, naming it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("nothing\n")
    message = one_line_error(lambda: ServerTLS(str(test_pki.server_cert), str(test_pki.server_key), TrustConfig(str(empty))))
    assert str(empty) in message and "no CA certificates" in message


def test_missing_ca_directory_and_file_are_one_line_errors(test_pki: TestPKI, tmp_path: Path) -> None:
    """A missing CA directory or CA file, or neither given, is refused in one line."""
    cert, key = str(test_pki.server_cert), str(test_pki.server_key)
    assert str(tmp_path / "nodir") in one_line_error(lambda: ServerTLS(cert, key, TrustConfig(str(tmp_path / "nodir"))))
    assert str(tmp_path / "no.pem") in one_line_error(lambda: ServerTLS(cert, key, TrustConfig(ca_file=str(tmp_path / "no.pem"))))
    assert "no trusted CA" in one_line_error(lambda: ServerTLS(cert, key, TrustConfig()))


def test_unreadable_crl_is_a_one_line_error(test_pki: TestPKI, tmp_path: Path) -> None:
    """A <hash>.r0 that is not a CRL is refused at start-up (never silently skipped)."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    bad = pki.ca_dir / "0badc0de.r0"
    bad.write_bytes(b"garbage")
    message = one_line_error(lambda: server_tls(pki))
    assert str(bad) in message


def test_unknown_crl_policy_is_a_one_line_error() -> None:
    """Only "if-present" and "strict" are CRL policies."""
    message = one_line_error(lambda: TrustConfig(ca_dir="/nonexistent", crl_policy="sometimes"))
    assert re.search(r"if-present.*strict", message)


def test_connections_are_not_kept_alive_by_the_creator(test_pki: TestPKI) -> None:
    """The per-connection bookkeeping lets finished connections (and their protocols) be collected."""
    import gc

    class Protocol:
        """Holds its connection, as TLSMemoryBIOProtocol does."""

    creator = server_tls(test_pki)
    for _ in range(3):
        protocol = Protocol()
        protocol.connection = creator.serverConnectionForTLS(protocol)  # type: ignore[attr-defined]
    del protocol
    gc.collect()
    assert len(creator._handshakes) == 0


def test_old_protocol_version_is_refused_and_logged(echo_server: EchoServer, test_pki: TestPKI) -> None:
    """A TLS 1.1 client is refused with a protocol-version alert, logged once."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{echo_server.port}", "-tls1_1",
         "-CAfile", str(test_pki.ca_file)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    echo_server.wait_for(lambda text: re.search(r"TLS handshake refused from 127\.0\.0\.1:\d+: protocol version$", text, re.M))


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01\x00", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_abandoned_or_plain_http_handshakes_are_not_logged(echo_server: EchoServer, test_pki: TestPKI, sent: bytes) -> None:
    """A client closing in mid-handshake, or speaking plain HTTP, is no refusal: no log line (the GSI server's transport).

    Under Twisted's own TLSMemoryBIOFactory the info callback sees OpenSSL's
    alert for a handshake cut short and logs it (``decode error``): kept as it was.
    """
    if sent[:1] != b"G" and not echo_server.bulk:
        pytest.skip("Twisted's TLS transport: the info callback logs an abandoned handshake")
    import socket

    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=10) as raw:
        port = raw.getsockname()[1]
        raw.sendall(sent)
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(10)
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass
    # a refusal logged after it: the server has dealt with the first connection by then
    result = connect(echo_server, test_pki, None)
    echo_server.wait_for(lambda text: f"127.0.0.1:{result.local_port}:" in text)
    assert f"127.0.0.1:{port}:" not in echo_server.log()
