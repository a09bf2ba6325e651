"""Credential and trust discovery, Globus order: the pure rules, loading, and the real thing.

The rules are pure functions of (environment, HOME, uid, proxy directory);
the end-to-end tests run ``gsitransfer`` in a subprocess with a temporary
HOME and only the Globus variable under test, upload a file over mutual TLS
and check, in the listing, that the server saw the expected user.
"""

from __future__ import annotations

import datetime
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gsitransfer.client import sync
from gsitransfer.client.api import globus_policy
from gsitransfer.client.credentials import (
    Credential,
    find_credential,
    find_trust,
    load_credential,
)
from gsitransfer.client.errors import CredentialError
from gsitransfer.client.session import make_http_client

from .support import clean_env

# ---------------------------------------------------------------------------
# The order (pure)
# ---------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A HOME with ~/.globus/usercert.pem + userkey.pem, a proxy dir with x509up_u4242, other files."""
    home, proxies = tmp_path / "home", tmp_path / "proxies"
    (home / ".globus").mkdir(parents=True)
    proxies.mkdir()
    files = {
        "home": home, "proxies": proxies,
        "usercert": home / ".globus" / "usercert.pem", "userkey": home / ".globus" / "userkey.pem",
        "default_proxy": proxies / "x509up_u4242", "env_proxy": tmp_path / "env-proxy.pem",
        "env_cert": tmp_path / "env-cert.pem", "env_key": tmp_path / "env-key.pem",
    }
    for name, path in files.items():
        if name not in ("home", "proxies"):
            path.write_text(name)
    return files


def find(layout: dict[str, Path], env: dict[str, str] | None = None, **options: str) -> Credential:
    return find_credential(env or {}, home=layout["home"], uid=4242, proxy_dir=layout["proxies"], **options)


def test_x509_user_proxy_comes_first(layout):
    """X509_USER_PROXY beats the default proxy and the user certificate."""
    found = find(layout, {"X509_USER_PROXY": str(layout["env_proxy"]), "X509_USER_CERT": str(layout["env_cert"])})
    assert (found.cert_file, found.key_file, found.source) == (layout["env_proxy"], layout["env_proxy"], "X509_USER_PROXY")


def test_default_proxy_is_named_after_the_uid(layout):
    """Without X509_USER_PROXY, /tmp/x509up_u<uid> is used (here in an injected directory)."""
    found = find(layout, {"X509_USER_CERT": str(layout["env_cert"])})
    assert found.cert_file == layout["default_proxy"] and found.single_file and found.source == "default proxy"


def test_user_cert_and_key_variables_come_after_the_proxies(layout):
    """With no proxy, X509_USER_CERT / X509_USER_KEY name the certificate and key."""
    layout["default_proxy"].unlink()
    found = find(layout, {"X509_USER_CERT": str(layout["env_cert"]), "X509_USER_KEY": str(layout["env_key"])})
    assert (found.cert_file, found.key_file) == (layout["env_cert"], layout["env_key"])


def test_user_key_variable_defaults_to_the_globus_key(layout):
    """X509_USER_CERT alone pairs with ~/.globus/userkey.pem, as in Globus."""
    layout["default_proxy"].unlink()
    found = find(layout, {"X509_USER_CERT": str(layout["env_cert"])})
    assert (found.cert_file, found.key_file) == (layout["env_cert"], layout["userkey"])


def test_dot_globus_is_the_last_resort(layout):
    """Nothing else: ~/.globus/usercert.pem and userkey.pem."""
    layout["default_proxy"].unlink()
    found = find(layout)
    assert (found.cert_file, found.key_file, found.source) == (layout["usercert"], layout["userkey"], "~/.globus")


def test_command_line_beats_the_environment(layout):
    """--proxy, then --cert/--key, come before any variable."""
    env = {"X509_USER_PROXY": str(layout["env_proxy"])}
    assert find(layout, env, proxy=str(layout["env_cert"])).source == "--proxy"
    found = find(layout, env, cert=str(layout["env_cert"]), key=str(layout["env_key"]))
    assert (found.cert_file, found.key_file, found.source) == (layout["env_cert"], layout["env_key"], "--cert/--key")
    assert find(layout, env, cert=str(layout["env_cert"])).key_file == layout["env_cert"]


def test_a_named_but_missing_proxy_is_an_error(layout):
    """X509_USER_PROXY pointing nowhere is reported, not skipped."""
    gone = layout["home"] / "env-gone.pem"
    with pytest.raises(CredentialError) as missing:
        find(layout, {"X509_USER_PROXY": str(gone)})
    assert missing.value.message == (f"proxy {gone} (X509_USER_PROXY) does not exist: make it with "
                                     f"grid-proxy-init -out {gone}, or unset X509_USER_PROXY")


def test_nothing_found_names_every_place_looked_at(layout):
    """The error says where it looked and what to do."""
    for name in ("default_proxy", "usercert"):
        layout[name].unlink()
    with pytest.raises(CredentialError) as missing:
        find(layout)
    message = missing.value.message
    assert "X509_USER_PROXY is not set" in message and "x509up_u4242" in message
    assert "usercert.pem" in message and "grid-proxy-init" in message


def test_trust_order(tmp_path):
    """--ca-dir/--ca-file, then X509_CERT_DIR, then ~/.globus/certificates, then /etc/grid-security/certificates."""
    home = tmp_path / "home"
    assert find_trust({}, home=home).ca_dir == Path("/etc/grid-security/certificates")
    (home / ".globus" / "certificates").mkdir(parents=True)
    assert find_trust({}, home=home).source == "~/.globus/certificates"
    assert find_trust({"X509_CERT_DIR": "/x"}, home=home).ca_dir == Path("/x")
    given = find_trust({"X509_CERT_DIR": "/x"}, home=home, ca_file="/bundle.pem")
    assert (given.ca_dir, given.ca_file) == (None, Path("/bundle.pem"))
    assert given.describe() == "trust: CA file /bundle.pem (--ca-dir/--ca-file)"


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def test_a_proxy_file_yields_its_whole_chain(test_pki):
    """A grid-proxy-init file gives proxy + user certificate (+ the first proxy for a proxy of a proxy)."""
    alice = test_pki.users["alice"]
    loaded = load_credential(Credential(alice.proxy, alice.proxy, "X509_USER_PROXY"))
    assert len(loaded.chain) == 2 and loaded.is_proxy and loaded.identity == alice.dn
    deeper = load_credential(Credential(alice.proxy_of_proxy, alice.proxy_of_proxy, "--proxy"))
    assert len(deeper.chain) == 3 and deeper.identity == alice.dn
    assert loaded.describe().startswith(f"credential: proxy {alice.proxy} (X509_USER_PROXY) for {alice.dn}, "
                                        "2 certificates sent, valid until ")


def test_an_expired_proxy_names_the_file_to_renew(test_pki):
    """An expired proxy of the test CA: renew that very file (grid-proxy-init -out), or with make-test-ca --renew."""
    alice = test_pki.users["alice"]
    with pytest.raises(CredentialError) as expired:
        load_credential(Credential(alice.expired_proxy, alice.expired_proxy, "X509_USER_PROXY"))
    message = expired.value.message
    assert message.startswith(f"your proxy {alice.expired_proxy} expired at ")
    assert message.endswith(f" UTC: renew it with grid-proxy-init -out {alice.expired_proxy} "
                            f"(this test CA's: scripts/make-test-ca --out {test_pki.directory} --renew alice)")


def test_an_expired_proxy_outside_a_test_ca(test_pki, tmp_path):
    """Outside a test CA only grid-proxy-init is suggested; the default proxy needs no -out."""
    copy = tmp_path / "x509up_u4242"
    copy.write_bytes(test_pki.users["alice"].expired_proxy.read_bytes())
    copy.chmod(0o600)
    with pytest.raises(CredentialError) as named:
        load_credential(Credential(copy, copy, "--proxy"))
    assert named.value.message.endswith(f" UTC: renew it with grid-proxy-init -out {copy}")
    with pytest.raises(CredentialError) as default:
        load_credential(Credential(copy, copy, "default proxy"))
    assert default.value.message.endswith(" UTC: renew it with grid-proxy-init")


def test_a_key_of_another_certificate_is_refused(test_pki, tmp_path):
    """Certificate and key must belong together."""
    alice = test_pki.users["alice"]
    with pytest.raises(CredentialError, match="does not match certificate"):
        load_credential(Credential(alice.cert, test_pki.server_key, "--cert/--key"))


def encrypted_copy(key: Path, destination: Path, passphrase: bytes) -> Path:
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    destination.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase)))
    destination.chmod(0o600)
    return destination


def test_an_encrypted_key_asks_for_its_pass_phrase(test_pki, tmp_path):
    """The prompt is asked with the key's path; a wrong answer or no prompt is one clear line."""
    alice = test_pki.users["alice"]
    key = encrypted_copy(alice.key, tmp_path / "userkey.pem", b"s3cret")
    asked: list[str] = []
    loaded = load_credential(Credential(alice.cert, key, "~/.globus"),
                             passphrase=lambda path: asked.append(path) or "s3cret")
    assert asked == [str(key)] and loaded.identity == alice.dn
    with pytest.raises(CredentialError, match="wrong pass phrase for"):
        load_credential(Credential(alice.cert, key, "~/.globus"), passphrase=lambda path: "nope")
    with pytest.raises(CredentialError, match="encrypted and there is no terminal"):
        load_credential(Credential(alice.cert, key, "~/.globus"))


# ---------------------------------------------------------------------------
# The real thing: subprocess, temporary HOME, mutual TLS
# ---------------------------------------------------------------------------


def upload_as(run_cli, servers, tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Upload a new file with ``env``'s credential (-v); the run and the owner the listing shows."""
    name = f"who-{uuid.uuid4().hex[:8]}.txt"
    (tmp_path / name).write_text(name)
    result = run_cli("-v", "upload", f"{servers.https}/data", name, env=env)
    assert result.returncode == 0, result.stderr
    listing = run_cli("--json", "ls", f"{servers.https}/data", env=env)
    owners = {f["name"]: f["owner"] for f in json.loads(listing.stdout)["files"]}
    return result, owners[name]


def globus_env(tmp_path: Path, pki, **variables: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return clean_env(home, X509_CERT_DIR=str(pki.ca_dir), **variables)


def test_cli_uses_x509_user_proxy(run_cli, servers, test_pki, tmp_path):
    """X509_USER_PROXY: the proxy's chain is sent and the server sees its user."""
    alice = test_pki.users["alice"]
    result, owner = upload_as(run_cli, servers, tmp_path, globus_env(tmp_path, test_pki, X509_USER_PROXY=str(alice.proxy)))
    assert owner == alice.dn
    assert f"credential: proxy {alice.proxy} (X509_USER_PROXY) for {alice.dn}, 2 certificates sent" in result.stderr
    assert f"trust: CA directory {test_pki.ca_dir} (X509_CERT_DIR): 2 CA certificates, 2 CRLs" in result.stderr


def test_cli_uses_x509_user_cert_and_key(run_cli, servers, test_pki, tmp_path):
    """X509_USER_CERT + X509_USER_KEY (no proxy anywhere): that certificate's user."""
    bob = test_pki.users["bob"]
    env = globus_env(tmp_path, test_pki, X509_USER_CERT=str(bob.cert), X509_USER_KEY=str(bob.key))
    if Path(f"/tmp/x509up_u{os.getuid()}").exists():
        pytest.skip("a real default proxy exists here and would come first")
    result, owner = upload_as(run_cli, servers, tmp_path, env)
    assert owner == bob.dn and "(X509_USER_CERT/X509_USER_KEY)" in result.stderr


def test_cli_uses_dot_globus_in_home(run_cli, servers, test_pki, tmp_path):
    """Nothing set: ~/.globus/usercert.pem + userkey.pem of the (temporary) HOME."""
    if Path(f"/tmp/x509up_u{os.getuid()}").exists():
        pytest.skip("a real default proxy exists here and would come first")
    carol = test_pki.users["carol"]
    env = globus_env(tmp_path, test_pki)
    globus = Path(env["HOME"]) / ".globus"
    globus.mkdir()
    shutil.copy(carol.cert, globus / "usercert.pem")
    shutil.copy(carol.key, globus / "userkey.pem")
    result, owner = upload_as(run_cli, servers, tmp_path, env)
    assert owner == carol.dn and "(~/.globus)" in result.stderr


def test_cli_uses_the_uid_named_default_proxy(run_cli, servers, test_pki, tmp_path):
    """/tmp/x509up_u<uid> is used when X509_USER_PROXY is not set (created for the test, then removed)."""
    default = Path(f"/tmp/x509up_u{os.getuid()}")
    dave = test_pki.users["dave"]
    try:
        descriptor = os.open(default, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pytest.skip(f"{default} exists (a real proxy): not touching it")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(dave.proxy.read_bytes())
        result, owner = upload_as(run_cli, servers, tmp_path, globus_env(tmp_path, test_pki))
    finally:
        default.unlink()
    assert owner == dave.dn and f"credential: proxy {default} (default proxy)" in result.stderr


def test_default_proxy_through_the_python_api(servers, test_pki, tmp_path):
    """The same lookup from Python, with HOME, uid and proxy directory injected."""
    jose = test_pki.users["jose"]
    shutil.copy(jose.proxy, tmp_path / "x509up_u4242")
    policy = globus_policy(env={"X509_CERT_DIR": str(test_pki.ca_dir)}, home=tmp_path / "nohome",
                           uid=4242, proxy_dir=tmp_path)
    assert policy.credential is not None and policy.credential.credential.source == "default proxy"
    http = sync.call(lambda: make_http_client(tls=policy))
    (tmp_path / "jose.txt").write_text("hola")
    report = sync.upload_files(f"{servers.https}/data", [tmp_path / "jose.txt"], http=http)
    assert report.ok
    owners = {f.name: f.owner for f in sync.list_files(f"{servers.https}/data", http=http).files}
    assert owners["jose.txt"] == jose.dn


def test_cli_trusts_dot_globus_certificates(run_cli, servers, test_pki, tmp_path):
    """Without X509_CERT_DIR, ~/.globus/certificates is the trust."""
    env = globus_env(tmp_path, test_pki, X509_USER_PROXY=str(test_pki.users["alice"].proxy))
    del env["X509_CERT_DIR"]
    shutil.copytree(test_pki.ca_dir, Path(env["HOME"]) / ".globus" / "certificates")
    result = run_cli("-v", "ls", f"{servers.https}/data", env=env)
    assert result.returncode == 0, result.stderr
    assert "(~/.globus/certificates)" in result.stderr


def test_cli_asks_the_pass_phrase_of_an_encrypted_key_on_a_terminal(servers, test_pki, tmp_path):
    """An encrypted ~/.globus/userkey.pem: the pass phrase is asked on the terminal, then it works."""
    if Path(f"/tmp/x509up_u{os.getuid()}").exists():
        pytest.skip("a real default proxy exists here and would come first")
    env = globus_env(tmp_path, test_pki)
    globus = Path(env["HOME"]) / ".globus"
    globus.mkdir()
    shutil.copy(test_pki.users["bob"].cert, globus / "usercert.pem")
    encrypted_copy(test_pki.users["bob"].key, globus / "userkey.pem", b"open sesame")
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gsitransfer.cli", "ls", f"{servers.https}/data"], env=env,
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    os.close(slave)
    try:
        # getpass flushes pending input when it turns echo off: answer once the prompt is out
        prompt = wait_for_output(process.stderr, b"Enter pass phrase for ")
        os.write(master, b"open sesame\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(master)
    err = prompt + err
    assert process.returncode == 0, err
    assert b"NAME" in out


def wait_for_output(stream, wanted: bytes, timeout: float = 30.0) -> bytes:
    """Read ``stream`` (a pipe) until ``wanted`` has appeared; what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        ready, _, _ = select.select([stream], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no {wanted!r} within {timeout} s; got {seen!r}")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"stream closed before {wanted!r}; got {seen!r}")
        seen += chunk
    return seen


def test_cli_without_a_terminal_cannot_open_an_encrypted_key(run_cli, servers, test_pki, tmp_path):
    """No terminal to ask on: one line, exit 3, advice to use a proxy."""
    alice = test_pki.users["alice"]
    key = encrypted_copy(alice.key, tmp_path / "enc.pem", b"x")
    result = run_cli("ls", "--cert", str(alice.cert), "--key", str(key), "--ca-dir", str(test_pki.ca_dir),
                     f"{servers.https}/data")
    assert result.returncode == 3
    assert result.stderr == (f"gsitransfer: key {key} is encrypted and there is no terminal to ask its "
                             "pass phrase (make a proxy with grid-proxy-init)\n")


def test_expiry_is_read_from_the_certificates(test_pki):
    """valid-until is the earliest expiry of the chain (the proxy's)."""
    alice = test_pki.users["alice"]
    loaded = load_credential(Credential(alice.proxy, alice.proxy, "--proxy"))
    assert loaded.not_after <= loaded.chain[1].not_valid_after_utc
    assert loaded.not_after > datetime.datetime.now(datetime.timezone.utc)
