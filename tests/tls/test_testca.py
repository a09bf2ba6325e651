"""The test PKI against the real tools: openssl, grid-proxy-info, grid-proxy-init."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from gsitransfer.identity import POLICY_LIMITED, format_dn, identity_from_chain, proxy_policy
from gsitransfer.testca import (
    TestPKI,
    UserSpec,
    is_test_pki,
    main,
    make_test_pki,
    person_name,
    revoke,
    subject_hash,
    user_spec,
)

from .conftest import REPO, copy_pki

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
needs_globus = pytest.mark.skipif(
    shutil.which("grid-proxy-info") is None or shutil.which("grid-proxy-init") is None,
    reason="globus-proxy-utils not installed",
)


def run(*command: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=30,
                          env=env, stdin=subprocess.DEVNULL)


def openssl_verify(pki: TestPKI, path: Path) -> subprocess.CompletedProcess[str]:
    """openssl verify of a certificate file, or of a proxy file with its chain as untrusted."""
    return run("openssl", "verify", "-CApath", pki.ca_dir, "-allow_proxy_certs", "-crl_check_all",
               "-untrusted", path, path)


# ---------------------------------------------------------------------------
# Layout and hashes
# ---------------------------------------------------------------------------


@needs_openssl
def test_subject_hash_matches_openssl(test_pki: TestPKI) -> None:
    """subject_hash equals `openssl x509 -hash` for every CA and user certificate."""
    paths = [test_pki.root.cert, test_pki.intermediate.cert, test_pki.untrusted.cert, test_pki.server_cert]
    paths += [user.cert for user in test_pki.users.values()] + [test_pki.users["jose"].proxy]
    for path in paths:
        expected = run("openssl", "x509", "-hash", "-noout", "-in", path).stdout.strip()
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert subject_hash(cert.subject) == expected, path


def test_trusted_directory_layout(test_pki: TestPKI) -> None:
    """ca_dir holds <hash>.0, <hash>.r0, <hash>.signing_policy and <hash>.namespaces for each trusted CA, nothing else."""
    expected = {f"{ca.hash}{suffix}" for ca in (test_pki.root, test_pki.intermediate)
                for suffix in (".0", ".r0", ".signing_policy", ".namespaces")}
    assert {path.name for path in test_pki.ca_dir.iterdir()} == expected
    policy = (test_pki.ca_dir / f"{test_pki.root.hash}.signing_policy").read_text()
    assert f"access_id_CA      X509         '{test_pki.root.dn}'" in policy
    assert "cond_subjects     globus       '\"/C=US/O=Grid Test/*\"'" in policy
    namespaces = (test_pki.ca_dir / f"{test_pki.root.hash}.namespaces").read_text()
    assert f'TO Issuer "{test_pki.root.dn}" \\\n  PERMIT Subject "/C=US/O=Grid Test/.*"' in namespaces
    bundle = x509.load_pem_x509_certificates(test_pki.ca_file.read_bytes())
    assert [format_dn(cert.subject) for cert in bundle] == [test_pki.root.dn, test_pki.intermediate.dn]


def test_private_files_are_private(test_pki: TestPKI) -> None:
    """Keys and proxy files are mode 0600 and the CA key directory 0700."""
    private = [test_pki.server_key, test_pki.root.key, test_pki.intermediate.key, test_pki.untrusted.key]
    for user in test_pki.users.values():
        private += [user.key] + [path for path in (user.proxy, user.limited_proxy, user.independent_proxy,
                                                   user.proxy_of_proxy, user.expired_proxy) if path]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((test_pki.directory / "private").stat().st_mode) == 0o700


def test_proxy_files_have_the_grid_proxy_init_layout(test_pki: TestPKI) -> None:
    """A proxy file is the proxy certificate, its key, then the issuing certificates down to the user's."""
    user = test_pki.users["carol"]
    assert user.proxy is not None and user.proxy_of_proxy is not None
    blocks = re.findall(r"-----BEGIN ([A-Z ]+)-----", user.proxy_of_proxy.read_text())
    assert blocks == ["CERTIFICATE", "RSA PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"]
    certs = x509.load_pem_x509_certificates(user.proxy_of_proxy.read_bytes())
    proxy = x509.load_pem_x509_certificates(user.proxy.read_bytes())
    assert certs[1] == proxy[0] and format_dn(certs[2].subject) == user.dn
    assert proxy_policy(x509.load_pem_x509_certificates(user.limited_proxy.read_bytes())[0]) == POLICY_LIMITED


# ---------------------------------------------------------------------------
# openssl verify
# ---------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("name", ["alice", "carol", "dave", "jose", "odd"])
def test_openssl_verify_accepts_users_and_their_proxies(test_pki: TestPKI, name: str) -> None:
    """openssl verify (CRLs of the whole chain, proxies allowed) accepts valid users and every proxy kind."""
    user = test_pki.users[name]
    for path in (user.cert, user.proxy, user.limited_proxy, user.independent_proxy, user.proxy_of_proxy):
        assert path is not None
        result = openssl_verify(test_pki, path)
        assert result.returncode == 0 and result.stdout.strip() == f"{path}: OK", result.stdout + result.stderr


@needs_openssl
@pytest.mark.parametrize(
    ("name", "kind", "error"),
    [
        ("revoked", "cert", "error 23 at 0 depth"),
        ("revoked", "proxy", "error 23 at 1 depth"),
        ("revoked", "proxy_of_proxy", "error 23 at 2 depth"),
        ("revoked-inter", "proxy", "error 23 at 1 depth"),
        ("expired", "cert", "error 10 at 0 depth"),
        ("alice", "expired_proxy", "error 10 at 0 depth"),
        ("mallory", "cert", "error 20 at 0 depth"),
    ],
)
def test_openssl_verify_rejects_revoked_expired_and_untrusted(test_pki: TestPKI, name: str, kind: str, error: str) -> None:
    """openssl verify refuses revoked users (and their proxies), expired certificates and the untrusted CA."""
    result = openssl_verify(test_pki, getattr(test_pki.users[name], kind))
    assert result.returncode != 0 and error in result.stdout + result.stderr


@needs_openssl
def test_revoke_adds_the_serial_and_keeps_the_old_ones(test_pki: TestPKI, tmp_path: Path) -> None:
    """revoke() re-signs the CA's CRL with the user's serial added and a higher CRL number."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    assert pki.root.crl is not None
    before = x509.load_pem_x509_crl(pki.root.crl.read_bytes())
    assert revoke(pki.directory, "alice") == pki.root.crl
    after = x509.load_pem_x509_crl(pki.root.crl.read_bytes())
    assert {entry.serial_number for entry in after} == {pki.users["alice"].serial, pki.users["revoked"].serial}
    number = x509.CRLNumber
    assert after.extensions.get_extension_for_class(number).value.crl_number == \
        before.extensions.get_extension_for_class(number).value.crl_number + 1
    refused = openssl_verify(pki, pki.users["alice"].proxy)
    assert "error 23 at 1 depth" in refused.stdout + refused.stderr
    assert openssl_verify(pki, pki.users["bob"].proxy).returncode == 0


# ---------------------------------------------------------------------------
# Globus tools
# ---------------------------------------------------------------------------


@needs_globus
@pytest.mark.parametrize("name", ["alice", "carol", "dave", "jose", "odd"])
def test_grid_proxy_info_identity_is_format_dn(test_pki: TestPKI, name: str) -> None:
    """grid-proxy-info -identity prints exactly the user's one-line DN (and the independent proxy's own)."""
    user = test_pki.users[name]
    for path, expected in ((user.proxy, user.dn), (user.proxy_of_proxy, user.dn),
                           (user.independent_proxy, user.independent_proxy_dn)):
        result = run("grid-proxy-info", "-file", path, "-identity")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{expected}\n"


@needs_globus
def test_grid_proxy_info_types(test_pki: TestPKI) -> None:
    """Globus recognises our proxies as RFC 3820 impersonation, limited and independent proxies."""
    user = test_pki.users["alice"]
    types = {kind: run("grid-proxy-info", "-file", getattr(user, kind), "-type").stdout.strip()
             for kind in ("proxy", "limited_proxy", "independent_proxy")}
    assert types == {
        "proxy": "RFC 3820 compliant impersonation proxy",
        "limited_proxy": "RFC 3820 compliant limited proxy",
        "independent_proxy": "RFC 3820 compliant independent proxy",
    }


@needs_globus
@needs_openssl
@pytest.mark.parametrize(("name", "limited"), [("alice", False), ("carol", True), ("odd", False)])
def test_grid_proxy_init_proxy_is_accepted(test_pki: TestPKI, tmp_path: Path, name: str, limited: bool) -> None:
    """A real grid-proxy-init (verifying against ca_dir and its signing policies) makes a proxy we and openssl accept."""
    user = test_pki.users[name]
    out = tmp_path / "x509up"
    command = ["grid-proxy-init", "-verify", "-cert", user.cert, "-key", user.key, "-out", out]
    result = run(*command, *(["-limited"] if limited else []), env=dict(os.environ, X509_CERT_DIR=str(test_pki.ca_dir)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Proxy Verify OK" in result.stdout
    assert openssl_verify(test_pki, out).returncode == 0
    token = identity_from_chain(x509.load_pem_x509_certificates(out.read_bytes()))
    assert (token.dn, token.proxy, token.limited_proxy) == (user.dn, True, limited)


@needs_globus
def test_grid_proxy_init_refuses_without_signing_policy(test_pki: TestPKI, tmp_path: Path) -> None:
    """The signing_policy files are what lets Globus trust the CA directory."""
    pki = copy_pki(test_pki, tmp_path / "pki")
    for path in pki.ca_dir.glob("*.signing_policy"):
        path.unlink()
    user = pki.users["alice"]
    result = run("grid-proxy-init", "-verify", "-cert", user.cert, "-key", user.key, "-out", tmp_path / "x509up",
                 env=dict(os.environ, X509_CERT_DIR=str(pki.ca_dir)))
    assert result.returncode != 0


# ---------------------------------------------------------------------------
# make-test-ca
# ---------------------------------------------------------------------------


def test_make_test_ca_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() makes a CA with the named users, adds users later, revokes, and fails in one line."""
    out = tmp_path / "certs"
    assert main(["--out", str(out), "--user", "erin"]) == 0
    assert "user erin" in capsys.readouterr().out
    assert (out / "users" / "erin" / "proxy.pem").exists() and not (out / "users" / "alice").exists()
    assert main(["--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["--out", str(out), "--user", "frank", "--revoke", "erin"]) == 0
    printed = capsys.readouterr().out
    assert "user frank" in printed and "revoked erin" in printed
    assert main(["--out", str(out), "--revoke", "nobody"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("make-test-ca: error: ") and error.count("\n") == 1


def test_make_test_ca_force_keeps_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--force remakes the CA but leaves README.md and .gitignore alone."""
    out = tmp_path / "certs"
    out.mkdir()
    (out / "README.md").write_text("keep me\n")
    assert main(["--out", str(out), "--user", "gina"]) == 0
    first = (out / "ca-bundle.pem").read_bytes()
    assert main(["--out", str(out), "--force", "--user", "hank"]) == 0
    assert (out / "ca-bundle.pem").read_bytes() != first
    assert (out / "README.md").read_text() == "keep me\n"
    assert sorted(path.name for path in (out / "users").iterdir()) == ["hank"]
    capsys.readouterr()


def test_make_test_ca_script_runs(tmp_path: Path) -> None:
    """scripts/make-test-ca is an executable that prints its usage."""
    script = REPO / "scripts" / "make-test-ca"
    assert os.access(script, os.X_OK)
    result = run(script, "--help")
    assert result.returncode == 0 and "--revoke" in result.stdout


# ---------------------------------------------------------------------------
# Renewal in place (make-test-ca --renew, --renew-all, --renew-expiring)
# ---------------------------------------------------------------------------


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def first_cert(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (a proxy file's proxy)."""
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def minted_ago(tmp_path: Path, age: datetime.timedelta) -> TestPKI:
    """A test PKI with alice and a revoked bob, minted as if ``age`` ago."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    users = (user_spec("alice"), UserSpec("bob", person_name("bob"), revoked=True))
    return make_test_pki(tmp_path / "certs", users=users, now=now - age)


@needs_openssl
def test_renew_user_reissues_an_expired_proxy_and_keeps_the_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--renew alice on a PKI minted two days ago: fresh proxies verifying against the same CA; nothing else changes."""
    pki = minted_ago(tmp_path, datetime.timedelta(days=2))
    alice = pki.users["alice"]
    assert alice.proxy is not None and openssl_verify(pki, alice.proxy).returncode != 0
    before = tree_bytes(pki.directory)
    assert main(["--out", str(pki.directory), "--renew", "alice"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"renewed proxies            {alice.proxy}  until ") and printed.count("\n") == 1
    after = tree_bytes(pki.directory)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {f"users/alice/{name}" for name in ("proxy.pem", "proxy-limited.pem", "proxy-independent.pem",
                                                           "proxy-of-proxy.pem", "proxy-expired.pem")}
    for path in (alice.proxy, alice.limited_proxy, alice.independent_proxy, alice.proxy_of_proxy):
        assert path is not None
        result = openssl_verify(pki, path)
        assert result.returncode == 0, result.stdout + result.stderr
    hours_left = first_cert(alice.proxy).not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=11) < hours_left <= datetime.timedelta(hours=12)
    token = identity_from_chain(x509.load_pem_x509_certificates(alice.proxy.read_bytes()))
    assert token.dn == alice.dn == "/C=US/O=Grid Test/OU=People/CN=alice"
    assert stat.S_IMODE(alice.proxy.stat().st_mode) == 0o600


@needs_openssl
def test_renew_all_reissues_certificates_and_crls_near_expiry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--renew-all on a PKI minted 364 days ago: user certificates (same key and DN) and CRLs re-issued, CAs kept."""
    pki = minted_ago(tmp_path, datetime.timedelta(days=364))
    old_alice = x509.load_pem_x509_certificate(pki.users["alice"].cert.read_bytes())
    assert pki.root.crl is not None
    old_crl = x509.load_pem_x509_crl(pki.root.crl.read_bytes())
    before = tree_bytes(pki.directory)
    assert main(["--out", str(pki.directory), "--renew-all"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in printed[:2]] == [
        ["user", "certificate"], ["proxies", str(pki.users["alice"].proxy)]]
    assert sorted(line.split()[1:3] for line in printed[2:]) == sorted(
        [["CRL", str(pki.root.crl)], ["CRL", str(pki.intermediate.crl)]])
    after = tree_bytes(pki.directory)
    kept = ["ca-bundle.pem", "server/hostcert.pem", "server/hostkey.pem", "users/alice/userkey.pem",
            "users/bob/usercert.pem", "users/bob/proxy.pem", *(name for name in before if name.startswith("private/")),
            *(name for name in before if name.startswith("ca/") and not name.endswith(".r0"))]
    assert all(after[name] == before[name] for name in kept)
    new_alice = x509.load_pem_x509_certificate(pki.users["alice"].cert.read_bytes())
    assert new_alice.subject == old_alice.subject and new_alice.serial_number != old_alice.serial_number
    assert new_alice.public_key() == old_alice.public_key()
    assert new_alice.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=364)
    new_crl = x509.load_pem_x509_crl(pki.root.crl.read_bytes())
    assert {entry.serial_number for entry in new_crl} == {entry.serial_number for entry in old_crl}
    assert new_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == \
        old_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    for path in (pki.users["alice"].cert, pki.users["alice"].proxy):
        assert path is not None and openssl_verify(pki, path).returncode == 0
    refused = openssl_verify(pki, pki.users["bob"].cert)
    assert "error 23 at 0 depth" in refused.stdout + refused.stderr


def test_renew_expiring_touches_only_what_expires(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--renew-expiring (what scripts/serve runs) is silent on a fresh PKI and renews only expired proxies."""
    fresh = make_test_pki(tmp_path / "fresh", users=("alice",), share_keys=True)
    before = tree_bytes(fresh.directory)
    assert main(["--out", str(fresh.directory), "--renew-expiring"]) == 0
    assert capsys.readouterr().out == "" and tree_bytes(fresh.directory) == before
    old = minted_ago(tmp_path, datetime.timedelta(hours=11, minutes=30))
    assert main(["--out", str(old.directory), "--renew-expiring"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in printed] == [str(old.users["alice"].proxy)]  # bob is revoked


def test_renew_never_touches_a_directory_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CA directory without the test-CA marker and the test root (a site's own) is left alone."""
    pki = minted_ago(tmp_path, datetime.timedelta(days=2))
    (pki.directory / ".gsitransfer-test-ca").unlink()
    assert is_test_pki(pki.directory)  # made before the marker existed: its root is the test root
    site = tmp_path / "site"
    shutil.copytree(pki.ca_dir, site / "ca")
    shutil.copytree(pki.directory / "users", site / "users")
    before = tree_bytes(site)
    assert main(["--out", str(site), "--renew-expiring"]) == 0
    assert capsys.readouterr().out == f"{site}/ does not hold a test CA made by make-test-ca: not renewing anything there\n"
    assert main(["--out", str(site), "--renew", "alice"]) == 1
    assert capsys.readouterr().err == \
        f"make-test-ca: error: {site} does not hold a test CA made by make-test-ca: nothing renewed\n"
    assert tree_bytes(site) == before


def test_renew_refuses_revoked_and_unknown_users_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A revoked user is not renewed (a new serial would undo the revocation); errors are one line."""
    out = tmp_path / "certs"
    assert main(["--out", str(out), "--user", "erin", "--revoke", "erin"]) == 0
    capsys.readouterr()
    assert main(["--out", str(out), "--renew", "erin"]) == 1
    assert capsys.readouterr().err == \
        "make-test-ca: error: user 'erin' is revoked: not renewing it (make a new user with --user)\n"
    assert main(["--out", str(out), "--renew", "nobody"]) == 1
    assert capsys.readouterr().err.startswith(f"make-test-ca: error: no user 'nobody' in {out} (")
    assert main(["--out", str(out), "--user", "erin"]) == 1
    assert capsys.readouterr().err == (f"make-test-ca: error: user 'erin' already exists in {out} "
                                       "(to renew its proxy and certificate: --renew erin)\n")
    assert main(["--out", str(out), "--renew-all", "--force"]) == 1
    assert "cannot go with --force" in capsys.readouterr().err
