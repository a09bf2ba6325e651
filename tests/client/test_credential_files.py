"""A proxy or key file must be the user's own and private to them, as Globus requires.

Globus (``globus_gsi_sysconfig_check_keyfile``) refuses a proxy or key file
that the user does not own ("not owned by current user") or that group or
others may use ("bad permissions"); grid-proxy-init writes 0600. Another
local user can otherwise plant ``/tmp/x509up_u<uid>`` and have every transfer
made with their identity, or read a key left group-readable. Each refusal is
one line naming the file and the fix, exit status 3, before any connection.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gsitransfer.client.api import globus_policy
from gsitransfer.client.credentials import Credential, load_credential
from gsitransfer.client.errors import CredentialError

from .support import clean_env

#: nothing listens here: a credential refusal comes before any connection (else: exit 4)
NOWHERE = "https://127.0.0.1:9/data"


def copy_with_mode(source: Path, destination: Path, mode: int) -> Path:
    """``source`` copied to ``destination`` with permission bits ``mode``."""
    shutil.copyfile(source, destination)
    destination.chmod(mode)
    return destination


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700])
def test_cli_refuses_a_proxy_group_or_others_may_use(run_cli, test_pki, tmp_path, mode):
    """X509_USER_PROXY readable by group or others (or executable): one line with ``chmod 600 FILE``, exit 3."""
    proxy = copy_with_mode(test_pki.users["alice"].proxy, tmp_path / "proxy.pem", mode)
    home = tmp_path / "home"
    result = run_cli("ls", NOWHERE, env=clean_env(home, X509_USER_PROXY=str(proxy), X509_CERT_DIR=str(test_pki.ca_dir)))
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"gsitransfer: proxy {proxy} (X509_USER_PROXY) has mode {mode:04o}; a proxy file must be for you alone "
        f"(0600 or 0400): chmod 600 {proxy}\n"
    )


def test_cli_refuses_a_key_file_others_can_read(run_cli, test_pki, tmp_path):
    """--cert with a --key others may read: the key file is named, with the fix, exit 3."""
    bob = test_pki.users["bob"]
    key = copy_with_mode(bob.key, tmp_path / "userkey.pem", 0o644)
    result = run_cli("ls", "--cert", str(bob.cert), "--key", str(key), "--ca-dir", str(test_pki.ca_dir), NOWHERE)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"gsitransfer: key {key} (--cert/--key) has mode 0644;")
    assert result.stderr.endswith(f": chmod 600 {key}\n") and result.stderr.count("\n") == 1


def test_a_default_proxy_others_can_read_is_refused(test_pki, tmp_path):
    """/tmp/x509up_u<uid> (here in a test directory) with mode 0644: refused, naming it as the default proxy."""
    proxy = copy_with_mode(test_pki.users["jose"].proxy, tmp_path / "x509up_u4242", 0o644)
    with pytest.raises(CredentialError) as refused:
        globus_policy(env={"X509_CERT_DIR": str(test_pki.ca_dir)}, home=tmp_path / "nohome",
                      uid=4242, proxy_dir=tmp_path)
    assert refused.value.message.startswith(f"proxy {proxy} (default proxy) has mode 0644;")
    proxy.chmod(0o400)
    policy = globus_policy(env={"X509_CERT_DIR": str(test_pki.ca_dir)}, home=tmp_path / "nohome",
                           uid=4242, proxy_dir=tmp_path)
    assert policy.credential is not None and policy.credential.identity == test_pki.users["jose"].dn


def test_a_proxy_another_user_owns_is_refused(test_pki, tmp_path):
    """A proxy file owned by another uid (one planted in /tmp): refused as not yours, whatever its mode."""
    proxy = copy_with_mode(test_pki.users["alice"].proxy, tmp_path / "x509up_u4242", 0o600)
    someone_else = os.getuid() + 1
    with pytest.raises(CredentialError) as refused:
        load_credential(Credential(proxy, proxy, "default proxy"), uid=someone_else)
    assert refused.value.message == (
        f"proxy {proxy} (default proxy) belongs to uid {os.getuid()}, not to you (uid {someone_else}): "
        "refusing it (another user may have put it there); use your own with --proxy FILE or X509_USER_PROXY"
    )
    assert load_credential(Credential(proxy, proxy, "default proxy")).identity == test_pki.users["alice"].dn


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_cli_refuses_a_proxy_file_of_another_uid(run_cli, test_pki, tmp_path):
    """A 0600 proxy chowned to another uid, given as X509_USER_PROXY: refused before connecting, exit 3."""
    proxy = copy_with_mode(test_pki.users["alice"].proxy, tmp_path / "planted.pem", 0o600)
    os.chown(proxy, os.getuid() + 4242, -1)
    home = tmp_path / "home"
    result = run_cli("ls", NOWHERE, env=clean_env(home, X509_USER_PROXY=str(proxy), X509_CERT_DIR=str(test_pki.ca_dir)))
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"gsitransfer: proxy {proxy} (X509_USER_PROXY) belongs to uid {os.getuid() + 4242},")
    assert result.stderr.count("\n") == 1
