"""Which certificate and which CAs the client uses, found as Globus tools find them.

What this module owns:

* :func:`find_credential` -- the lookup order of the Globus toolkit, as pure
  decisions over an environment mapping, a home directory and a uid (tests
  inject all three):

  1. ``--proxy FILE``, or ``--cert FILE [--key FILE]`` given on the command line;
  2. ``$X509_USER_PROXY`` (it must exist when set);
  3. the default proxy ``/tmp/x509up_u<uid>`` (what ``grid-proxy-init`` writes);
  4. ``$X509_USER_CERT`` / ``$X509_USER_KEY``, each defaulting to
     ``~/.globus/usercert.pem`` / ``~/.globus/userkey.pem``;

* :func:`find_trust` -- ``--ca-dir``/``--ca-file``, else ``$X509_CERT_DIR``,
  else ``~/.globus/certificates``, else ``/etc/grid-security/certificates``;
* :func:`load_credential` -- reading the PEM files: the whole chain of a
  proxy file (certificate, key, issuing certificates), a pass phrase asked
  for an encrypted key, the key checked against the certificate and the
  certificate's validity period checked against the clock;
* :func:`check_private_file` -- what Globus checks of a proxy or key file
  before using it (``globus_gsi_sysconfig_check_keyfile``): owned by the
  user, and no access for group or others (nor execute): a proxy another
  local user planted as ``/tmp/x509up_u<uid>``, or a key others can read, is
  refused with one line saying why and what to do (``chmod 600 FILE``);
* ``describe()`` on :class:`Credential`, :class:`Trust` and
  :class:`LoadedCredential` -- the lines ``--verbose`` prints.

Nothing here touches the network or Twisted.
"""

from __future__ import annotations

import datetime
import getpass
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ..identity import format_dn, identity_from_chain, is_proxy
from .errors import CredentialError

GLOBUS_CERT_DIR = Path("/etc/grid-security/certificates")
DEFAULT_PROXY_DIR = Path("/tmp")

#: asks for the pass phrase of the named key file; returns it (str or bytes)
PassphrasePrompt = Callable[[str], "str | bytes"]

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----\r?\n?", re.S
)


@dataclass(frozen=True)
class Credential:
    """Where the client certificate and key are, and how they were found."""

    cert_file: Path
    key_file: Path
    #: how it was chosen: "--proxy", "--cert", "X509_USER_PROXY", "default proxy", ...
    source: str

    @property
    def single_file(self) -> bool:
        """True when certificate and key are in one file (a proxy, as grid-proxy-init writes it)."""
        return self.cert_file == self.key_file

    def describe(self) -> str:
        """``credential: /tmp/x509up_u1000 (default proxy)``."""
        if self.single_file:
            return f"credential: {self.cert_file} ({self.source})"
        return f"credential: certificate {self.cert_file}, key {self.key_file} ({self.source})"


@dataclass(frozen=True)
class Trust:
    """Where the trusted CA certificates are, and how that was chosen."""

    ca_dir: Path | None
    ca_file: Path | None
    source: str

    def describe(self) -> str:
        """``trust: CA directory /etc/grid-security/certificates (default)``."""
        parts = []
        if self.ca_dir is not None:
            parts.append(f"CA directory {self.ca_dir}")
        if self.ca_file is not None:
            parts.append(f"CA file {self.ca_file}")
        return f"trust: {' and '.join(parts)} ({self.source})"


@dataclass(frozen=True)
class LoadedCredential:
    """A credential read from disk: leaf first, then the chain to send, and the key."""

    credential: Credential
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes

    @property
    def is_proxy(self) -> bool:
        return is_proxy(self.chain[0])

    @property
    def identity(self) -> str:
        """The one-line DN the server will see (for a proxy, the user's)."""
        return identity_from_chain(self.chain).dn or format_dn(self.chain[0].subject)

    @property
    def not_after(self) -> datetime.datetime:
        """When the first certificate of the chain to expire expires."""
        return min(cert.not_valid_after_utc for cert in self.chain)

    def describe(self) -> str:
        """``credential: proxy /tmp/x509up_u1000 (default proxy) for /C=.../CN=Alice, valid until ...``."""
        kind = "proxy" if self.is_proxy else "certificate"
        where = self.credential.cert_file
        return (
            f"credential: {kind} {where} ({self.credential.source}) for {self.identity}, "
            f"{len(self.chain)} certificate{'s' * (len(self.chain) != 1)} sent, "
            f"valid until {self.not_after:%Y-%m-%d %H:%M} UTC"
        )


# ---------------------------------------------------------------------------
# Finding
# ---------------------------------------------------------------------------


def find_credential(
    env: Mapping[str, str],
    *,
    home: Path,
    uid: int,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    proxy: str | os.PathLike[str] | None = None,
    proxy_dir: Path = DEFAULT_PROXY_DIR,
) -> Credential:
    """The credential Globus tools would use (see the module docstring).

    Raises :class:`CredentialError` naming every place looked at when none is found.
    """
    if proxy is not None:
        return _existing(Credential(Path(proxy), Path(proxy), "--proxy"))
    if cert is not None:
        return _existing(Credential(Path(cert), Path(key if key is not None else cert), "--cert/--key"))
    if key is not None:
        raise CredentialError("--key needs --cert (or give a proxy file with --proxy)")
    env_proxy = env.get("X509_USER_PROXY")
    if env_proxy:
        return _existing(Credential(Path(env_proxy), Path(env_proxy), "X509_USER_PROXY"))
    default_proxy = proxy_dir / f"x509up_u{uid}"
    if default_proxy.is_file():
        return Credential(default_proxy, default_proxy, "default proxy")
    user_cert = env.get("X509_USER_CERT") or str(home / ".globus" / "usercert.pem")
    user_key = env.get("X509_USER_KEY") or str(home / ".globus" / "userkey.pem")
    source = "X509_USER_CERT/X509_USER_KEY" if env.get("X509_USER_CERT") or env.get("X509_USER_KEY") \
        else "~/.globus"
    if Path(user_cert).is_file() or source != "~/.globus":
        return _existing(Credential(Path(user_cert), Path(user_key), source))
    raise CredentialError(
        f"no credential: X509_USER_PROXY is not set, there is no proxy {default_proxy} "
        f"and no certificate {user_cert}; run grid-proxy-init, or give --cert and --key"
    )


def _existing(credential: Credential) -> Credential:
    if credential.single_file and credential.source in ("X509_USER_PROXY", "--proxy") \
            and not credential.cert_file.is_file():
        raise CredentialError(
            f"proxy {credential.cert_file} ({credential.source}) does not exist: make it with "
            f"grid-proxy-init -out {credential.cert_file}"
            + (", or unset X509_USER_PROXY" if credential.source == "X509_USER_PROXY" else "")
        )
    for path, what in ((credential.cert_file, "certificate"), (credential.key_file, "key")):
        if not path.is_file():
            raise CredentialError(f"{what} {path} ({credential.source}) does not exist")
    return credential


def find_trust(
    env: Mapping[str, str],
    *,
    home: Path,
    ca_dir: str | os.PathLike[str] | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    system_dir: Path = GLOBUS_CERT_DIR,
) -> Trust:
    """The trusted CAs Globus tools would use (see the module docstring)."""
    if ca_dir is not None or ca_file is not None:
        return Trust(_opt_path(ca_dir), _opt_path(ca_file), "--ca-dir/--ca-file")
    env_dir = env.get("X509_CERT_DIR")
    if env_dir:
        return Trust(Path(env_dir), None, "X509_CERT_DIR")
    user_dir = home / ".globus" / "certificates"
    if user_dir.is_dir():
        return Trust(user_dir, None, "~/.globus/certificates")
    return Trust(system_dir, None, "default")


def _opt_path(value: str | os.PathLike[str] | None) -> Path | None:
    return Path(value) if value is not None else None


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def terminal_prompt() -> PassphrasePrompt | None:
    """A pass-phrase prompt on the terminal (``getpass``), or None when stdin is not a terminal."""
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return None
    return lambda path: getpass.getpass(f"Enter pass phrase for {path}: ")


#: permission bits a proxy or key file must not have (Globus: S_IXUSR | S_IRWXG | S_IRWXO)
LOOSE_PRIVATE_BITS = stat.S_IXUSR | stat.S_IRWXG | stat.S_IRWXO


def check_private_file(path: Path, what: str, source: str, uid: int) -> None:
    """Refuse a proxy or key file that user ``uid`` does not own, or that group or others may use.

    As Globus does (``globus_gsi_sysconfig_check_keyfile``: "File is not
    owned by current user", "File has bad permissions"). A file that cannot
    be stat'ed is left to the reading, which says why.
    """
    try:
        status = path.stat()
    except OSError:
        return
    if status.st_uid != uid:
        raise CredentialError(
            f"{what} {path} ({source}) belongs to uid {status.st_uid}, not to you (uid {uid}): "
            "refusing it (another user may have put it there); use your own with --proxy FILE or X509_USER_PROXY"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & LOOSE_PRIVATE_BITS:
        raise CredentialError(
            f"{what} {path} ({source}) has mode {mode:04o}; a {what} file must be for you alone "
            f"(0600 or 0400): chmod 600 {path}"
        )


def load_credential(
    credential: Credential,
    *,
    passphrase: PassphrasePrompt | None = None,
    now: datetime.datetime | None = None,
    uid: int | None = None,
) -> LoadedCredential:
    """Read ``credential`` from disk and check it can be used ``now``.

    The key file (a proxy's one file) must be private to ``uid`` (default:
    this process's user; :func:`check_private_file`). ``passphrase`` is asked
    for an encrypted key; without it such a key is a :class:`CredentialError`.
    Every problem is one CredentialError line.
    """
    if uid is None and hasattr(os, "getuid"):
        uid = os.getuid()
    if uid is not None:
        what = "proxy" if credential.single_file and "proxy" in credential.source.lower() else "key"
        check_private_file(credential.key_file, what, credential.source, uid)
    chain = _read_chain(credential)
    key = _read_key(credential, passphrase)
    if key.public_key() != chain[0].public_key():
        raise CredentialError(f"key {credential.key_file} does not match certificate {credential.cert_file}")
    loaded = LoadedCredential(credential, tuple(chain), key)
    _check_validity(loaded, now or datetime.datetime.now(datetime.timezone.utc))
    return loaded


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CredentialError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _read_chain(credential: Credential) -> list[x509.Certificate]:
    data = _read(credential.cert_file, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise CredentialError(f"{credential.cert_file} holds no PEM certificate")
    return chain


def _read_key(credential: Credential, passphrase: PassphrasePrompt | None) -> PrivateKeyTypes:
    data = _read(credential.key_file, "key")
    block = _KEY_BLOCK.search(data)
    if block is None:
        raise CredentialError(f"{credential.key_file} holds no PEM private key")
    pem = block.group(0)
    encrypted = block.group(1).startswith(b"ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in pem
    password: bytes | None = None
    if encrypted:
        if passphrase is None:
            raise CredentialError(
                f"key {credential.key_file} is encrypted and there is no terminal to ask its pass phrase "
                "(make a proxy with grid-proxy-init)"
            )
        answer = passphrase(str(credential.key_file))
        password = answer.encode() if isinstance(answer, str) else answer
    try:
        return serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            raise CredentialError(f"wrong pass phrase for {credential.key_file}") from None
        raise CredentialError(f"{credential.key_file}: the private key cannot be read") from None


def _check_validity(loaded: LoadedCredential, now: datetime.datetime) -> None:
    credential = loaded.credential
    for cert in loaded.chain:
        what = "proxy" if is_proxy(cert) else "certificate"
        if cert.not_valid_after_utc < now:
            if credential.single_file:
                raise CredentialError(
                    f"your {what} {credential.cert_file} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                    f"{renewal_hint(credential)}"
                )
            raise CredentialError(
                f"your {what} {format_dn(cert.subject)} in {credential.cert_file} expired at "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: {renewal_hint(credential)}"
            )
        if cert.not_valid_before_utc > now:
            raise CredentialError(
                f"your {what} {format_dn(cert.subject)} in {credential.cert_file} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is the clock right?)"
            )


def renewal_hint(credential: Credential) -> str:
    """What to run to renew ``credential``, naming the file this run reads.

    A proxy: ``renew it with grid-proxy-init -out FILE`` (plain
    ``grid-proxy-init`` writes ``/tmp/x509up_u<uid>``, which a set
    ``X509_USER_PROXY`` hides); a certificate: ask its CA. A file inside a
    test CA made by ``gsitransfer.testca`` (``DIR/users/USER/...``) adds
    ``scripts/make-test-ca --out DIR --renew USER``.
    """
    if credential.single_file:
        out = "" if credential.source == "default proxy" else f" -out {credential.cert_file}"
        hint = f"renew it with grid-proxy-init{out}"
    else:
        hint = "renew it with your CA"
    test_ca = inside_test_ca(credential.cert_file)
    if test_ca is not None:
        directory, user = test_ca
        hint += f" (this test CA's: scripts/make-test-ca --out {directory} --renew {user})"
    return hint


def inside_test_ca(path: Path) -> tuple[Path, str] | None:
    """(the test CA's directory, the user) when ``path`` is a user's file in a ``gsitransfer.testca`` layout."""
    user_dir = path.parent
    directory = user_dir.parent.parent
    if user_dir.parent.name != "users":
        return None
    if not ((directory / "ca").is_dir() and (directory / "private").is_dir() and (directory / "ca-bundle.pem").is_file()):
        return None
    return directory, user_dir.name


__all__ = [
    "DEFAULT_PROXY_DIR",
    "GLOBUS_CERT_DIR",
    "Credential",
    "LoadedCredential",
    "PassphrasePrompt",
    "Trust",
    "check_private_file",
    "find_credential",
    "find_trust",
    "load_credential",
    "renewal_hint",
    "terminal_prompt",
    "inside_test_ca",
]
