"""CA signing policies and namespaces (issue 12, finding 3): a trusted CA may only sign its own subjects."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock

from gsitransfer.fastpaths import FastPaths
from gsitransfer.testca import (
    KeyPool,
    TestPKI,
    install_ca,
    make_ca,
    make_crl,
    make_name,
    make_test_pki,
    make_user_cert,
    person_name,
    write_certs,
    write_key,
)
from gsitransfer.testing import MemoryHandler, MemoryTLSClient
from gsitransfer.tls import ServerTLS, TrustConfig
from gsitransfer.tls import policy as policy_module
from gsitransfer.tls.policy import (
    PolicyError,
    glob_pattern,
    parse_namespaces,
    parse_signing_policy,
    regex_pattern,
)
from gsitransfer.web import GSIHTTPTransferServer
from tests.tls.conftest import copy_pki

OTHER_NAMESPACE = "/C=US/O=Other Test/*"
ALICE_DN = "/C=US/O=Grid Test/OU=People/CN=Alice Example"
ROOT_DN = "/C=US/O=Grid Test/CN=Grid Test Root CA"


# ---------------------------------------------------------------------------
# The file formats
# ---------------------------------------------------------------------------


def test_signing_policy_blocks_and_wildcards() -> None:
    """Globus EACL: each access_id_CA block's cond_subjects, with * and ? wildcards, only under CA:sign."""
    text = (
        "# comment\n"
        f"access_id_CA X509 '{ROOT_DN}'\n"
        "pos_rights globus CA:sign\n"
        "cond_subjects globus '\"/C=US/O=Grid Test/*\" \"/C=DE/O=X/CN=?ob\"'\n"
        "access_id_CA X509 '/C=US/O=Nobody/CN=No Rights CA'\n"
        "cond_subjects globus '\"/*\"'\n"
    )
    policy = parse_signing_policy(text)
    patterns = policy[ROOT_DN]
    assert any(p.matches(ALICE_DN) for p in patterns)
    assert any(p.matches("/C=DE/O=X/CN=Bob") for p in patterns)
    assert not any(p.matches("/C=DE/O=X/CN=Boob") for p in patterns)
    assert not any(p.matches("/C=US/O=Grid Testers/CN=Eve") for p in patterns)
    assert policy["/C=US/O=Nobody/CN=No Rights CA"] == ()  # no pos_rights: signs nothing


def test_namespaces_permit_deny_self_and_continuation() -> None:
    """IGTF namespaces: PERMIT and DENY rules, SELF, backslash continuation, keywords and matching case-blind."""
    text = (
        f'TO Issuer "{ROOT_DN}" \\\n'
        '   PERMIT Subject "/C=US/O=Grid Test/.*"\n'
        'to issuer SELF deny subject "/C=US/O=Grid Test/CN=Bad\\.Guy.*"  # comment\n'
    )
    rules = parse_namespaces(text, ROOT_DN)[ROOT_DN]
    assert [rule.permit for rule in rules] == [True, False]
    assert rules[0].pattern.matches(ALICE_DN.upper())
    assert rules[1].pattern.matches("/C=US/O=Grid Test/CN=Bad.Guy 2")
    assert not rules[1].pattern.matches("/C=US/O=Grid Test/CN=BadXGuy")


@pytest.mark.parametrize("text", [
    'TO Issuer "/CN=CA" PERMIT Subject "/CN=(a|b)"',
    'TO Issuer "/CN=CA" PERMIT Subject "/CN=a+"',
    'TO Issuer "/CN=CA" ALLOW Subject "/CN=a"',
    'TO Issuer "/CN=CA PERMIT Subject "/CN=a"',
])
def test_namespaces_outside_the_supported_grammar_are_errors(text: str) -> None:
    """Syntax outside the IGTF subset is a one-line error naming the file and line."""
    with pytest.raises(PolicyError, match=r"^ns:1: "):
        parse_namespaces(text, "/CN=CA", "ns")


def test_matching_work_grows_linearly_with_the_subject(monkeypatch) -> None:
    """Matching a many-star pattern does no backtracking: twice the subject, about twice the piece tests."""
    calls = [0]
    piece_at = policy_module._piece_at

    def counting(*args):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return piece_at(*args)

    monkeypatch.setattr(policy_module, "_piece_at", counting)
    patterns = [glob_pattern("/" + "*a" * 20 + "*b"), regex_pattern("/" + ".*a" * 20 + ".*b")]

    def work(length: int) -> int:
        calls[0] = 0
        for pattern in patterns:
            assert not pattern.matches("/" + "a" * length)
        return calls[0]

    small, large = work(4000), work(8000)
    assert large <= 2.2 * small


# ---------------------------------------------------------------------------
# Enforced on a server
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minted(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPKI, dict[str, tuple[Path, Path]]]:
    """The test PKI plus a second trusted CA (Other Test) and two certificates it issued."""
    base = tmp_path_factory.mktemp("pki")
    pki = make_test_pki(base, users=("alice",), share_keys=True)
    keys = KeyPool(shared_roles=("user",))
    other = make_ca(make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, "Other Test")],
                              [(NameOID.COMMON_NAME, "Other Test CA")]), keys.key("ca", "other"))
    install_ca(pki.ca_dir, other, make_crl(other), namespace=OTHER_NAMESPACE)
    users = {}
    for name, subject in {
        "impostor": person_name("Alice Example"),  # alice's DN, from the wrong CA
        "eve": make_name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, "Other Test")],
                         [(NameOID.COMMON_NAME, "Eve")]),
    }.items():
        issued = make_user_cert(other, subject, keys.key("user"))
        users[name] = (write_certs(base / f"{name}.pem", issued.cert), write_key(base / f"{name}.key", issued.key))
    return pki, users


@pytest.fixture(params=["fast paths", "plain paths"])
def fast_paths(request: pytest.FixtureRequest) -> FastPaths:
    """Each test runs over the bulk TLS transport and the keep-alive fast path, and without them."""
    return FastPaths() if request.param == "fast paths" else FastPaths.none()


def answer(pki: TestPKI, tmp_path: Path, fast_paths: FastPaths, cert_key: tuple[Path, Path],
           mode: str = "if-present") -> bytes:
    """What a server with ``pki`` answers a GET from the client ``cert_key`` (first request of its connection)."""
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key),
                    TrustConfig(ca_dir=str(pki.ca_dir), signing_policy=mode))
    server = GSIHTTPTransferServer(tls, public_url="https://test", fast_paths=fast_paths)
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / "g.txt").write_bytes(b"hello\n")
    server.RegisterPrefix("data", MemoryHandler(str(files)))
    clock = Clock()
    client = MemoryTLSClient(server.protocol_factory(clock), str(cert_key[0]), str(cert_key[1]), clock)
    client.handshake()
    client.send(b"GET /data/g.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    return client.received()


def test_a_ca_signing_another_cas_subject_is_refused(minted, tmp_path, fast_paths, log_lines):
    """The second CA's certificate with alice's DN is refused (403, one log line); its own subject is served."""
    pki, users = minted
    refused = answer(pki, tmp_path, fast_paths, users["impostor"])
    assert refused.startswith(b"HTTP/1.1 403")
    assert b"outside the signing policy of CA /C=US/O=Other Test/CN=Other Test CA" in refused
    assert len([line for line in log_lines if "client certificate refused" in line]) == 1
    assert answer(pki, tmp_path, fast_paths, users["eve"]).startswith(b"HTTP/1.1 200")
    alice = pki.users["alice"]
    assert answer(pki, tmp_path, fast_paths, (alice.cert, alice.key)).startswith(b"HTTP/1.1 200")


def test_namespaces_alone_are_enforced(minted, tmp_path, fast_paths):
    """Without the signing_policy files the IGTF namespaces still refuse the impostor."""
    pki, users = minted
    pki = copy_pki(pki, tmp_path / "pki")
    for path in pki.ca_dir.glob("*.signing_policy"):
        path.unlink()
    refused = answer(pki, tmp_path, fast_paths, users["impostor"])
    assert refused.startswith(b"HTTP/1.1 403") and b"outside the namespace" in refused
    assert answer(pki, tmp_path, fast_paths, users["eve"]).startswith(b"HTTP/1.1 200")


def test_modes_ignore_and_require(minted, tmp_path, fast_paths):
    """ignore serves the impostor; without policy files if-present serves every CA, require refuses them."""
    pki, users = minted
    assert answer(pki, tmp_path, fast_paths, users["impostor"], mode="ignore").startswith(b"HTTP/1.1 200")
    pki = copy_pki(pki, tmp_path / "pki")
    for pattern in ("*.signing_policy", "*.namespaces"):
        for path in pki.ca_dir.glob(pattern):
            path.unlink()
    assert answer(pki, tmp_path, fast_paths, users["eve"]).startswith(b"HTTP/1.1 200")
    refused = answer(pki, tmp_path, fast_paths, users["eve"], mode="require")
    assert refused.startswith(b"HTTP/1.1 403") and b"has no signing policy or namespaces file" in refused


def test_an_unreadable_policy_file_makes_its_ca_sign_nothing(minted, tmp_path, fast_paths, log_lines):
    """A namespaces file outside the grammar refuses its CA's certificates (fail closed) and says why once at load."""
    pki, users = minted
    pki = copy_pki(pki, tmp_path / "pki")
    other_ns = next(path for path in pki.ca_dir.glob("*.namespaces") if "Other Test" in path.read_text())
    other_ns.write_text('TO Issuer SELF PERMIT Subject "/C=US/O=Other Test/(.*)"\n')
    refused = answer(pki, tmp_path, fast_paths, users["eve"])
    assert refused.startswith(b"HTTP/1.1 403") and b"policy files of CA" in refused
    assert any("signing policy unreadable" in line for line in log_lines)


# ---------------------------------------------------------------------------
# The option
# ---------------------------------------------------------------------------


def test_signing_policy_option_reaches_the_trust_config(minted, tmp_path, capsys):
    """--signing-policy defaults to if-present, is checked (one line, status 2), and is the TLS trust's mode."""
    from gsitransfer import tap

    pki, _ = minted
    (tmp_path / "store").mkdir()
    argv = ["--https", "tcp:0:interface=127.0.0.1", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
            "--ca-dir", str(pki.ca_dir), "--store", f"data={tmp_path / 'store'}"]
    options = tap.Options()
    options.parseOptions(argv)
    assert options["signing-policy"] == "if-present"
    options = tap.Options()
    options.parseOptions([*argv, "--signing-policy", "require"])
    https = tap.makeService(options).servers[0]
    assert https.tls.trust.signing_policy == "require"
    with pytest.raises(SystemExit) as exited:
        tap.Options().parseOptions([*argv, "--signing-policy", "sometimes"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"{tap.PROGRAM}: error: --signing-policy is if-present, require or ignore\n"
