"""Started as root with twistd's ``--uid``/``--gid``, the server runs as that account and works.

Each test starts the real ``twistd accessgrid-transfer`` as root with
``--uid nobody --gid nogroup`` and checks what an administrator would: the
processes run as nobody, the store directory (made by ``--create-store``),
the SQLite files and the uploaded files belong to nobody, uploads and
downloads work over plain HTTP and mutual TLS (the real ``gsitransfer``
command), a SIGHUP reload re-reads the host key as nobody, and what nobody
could not use is refused at start-up in one line.

The server's interpreter must be one nobody can run: this one when it can,
else the system's ``/usr/bin/python3`` with this environment's packages on
``PYTHONPATH`` (a virtual environment made from a Python under ``/root`` is
not readable by nobody). Without root, nobody, or such an interpreter, the
tests are skipped.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import twisted

from gsitransfer.testca import TestPKI, make_test_pki
from tests.support.server import REPO, ServerProcess
from tests.support.waiting import wait_for


def _account() -> tuple[int, int] | None:
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return None


ACCOUNT = _account()

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(ACCOUNT is None, reason="needs the nobody account and the nogroup group"),
]

#: this environment's packages (twisted, pyOpenSSL, ...), for an interpreter other than this one
SITE_PACKAGES = str(Path(twisted.__file__).resolve().parents[1])
SERVICE_ENV = {"PYTHONPATH": f"{REPO}{os.pathsep}{SITE_PACKAGES}"}
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv = ['twistd', '-n', '--pidfile=', '--logfile=-'] + sys.argv[1:]; run()"
)
AS_NOBODY = ["--uid", "nobody", "--gid", "nogroup"]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory nobody may pass through (pytest's own temporary directories are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gsitransfer-uid-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def python(base: Path) -> str:
    """An interpreter nobody can run with gsitransfer and its dependencies importable."""
    assert ACCOUNT is not None
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sqlite3, twisted, OpenSSL, gsitransfer.store"],
                user=ACCOUNT[0], group=ACCOUNT[1], extra_groups=[], cwd=base,
                env=dict(os.environ, **SERVICE_ENV), capture_output=True, timeout=60,
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that nobody can run with this environment's packages")


@pytest.fixture(scope="module")
def pki(base: Path) -> TestPKI:
    """A test PKI whose host key belongs to nobody, mode 0400, as docs/operations.md asks."""
    assert ACCOUNT is not None
    minted = make_test_pki(base / "pki", users=("alice",), share_keys=True)
    os.chown(minted.server_key, ACCOUNT[0], ACCOUNT[1])
    minted.server_key.chmod(0o400)
    return minted


@pytest.fixture
def work(base: Path, request: pytest.FixtureRequest) -> Path:
    """This test's directory (the server's working directory), passable by nobody."""
    path = base / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir(mode=0o711)
    path.chmod(0o711)
    return path


def tls_args(pki: TestPKI, store: Path, *extra: str) -> list[str]:
    return [
        "--http", "tcp:0:interface=127.0.0.1", "--https", "tcp:0:interface=127.0.0.1",
        "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--ca-dir", str(pki.ca_dir),
        "--store", f"data={store}", "--create-store", *extra,
    ]


def start(work: Path, python: str, args: list[str]) -> ServerProcess:
    return ServerProcess(work, args, env=SERVICE_ENV, twistd_args=AS_NOBODY, make_stores=False,
                         python=python).start()


def owner(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_uid, status.st_gid


def process_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of process ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    return int(fields["Uid"][0]), int(fields["Gid"][0])


def cli(work: Path, pki: TestPKI, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``gsitransfer`` command (as root: it is the client), with alice's proxy."""
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("X509_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "gsitransfer.cli", "--proxy", str(pki.users["alice"].proxy),
         "--ca-dir", str(pki.ca_dir), *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def round_trip(server: ServerProcess, work: Path, pki: TestPKI, tag: str) -> list[str]:
    """Upload one file over HTTP and one over mutual TLS, download both back; their names."""
    names = []
    for scheme in ("http", "https"):
        name = f"{tag}-{scheme}.bin"
        (work / name).write_bytes(os.urandom(70_000) + scheme.encode())
        base = server.url(scheme).replace("127.0.0.1", "localhost")
        sent = cli(work, pki, "upload", f"{base}/data", name)
        assert sent.returncode == 0, sent.stderr
        back = cli(work, pki, "download", f"{base}/data/{name}", str(work / f"back-{name}"))
        assert back.returncode == 0, back.stderr
        assert (work / f"back-{name}").read_bytes() == (work / name).read_bytes()
        names.append(name)
    return names


def test_uploads_and_downloads_as_nobody_and_everything_belongs_to_it(work, python, pki):
    """--uid nobody --gid nogroup: HTTP and TLS round trips work; store, SQLite files and uploads are nobody's."""
    store = work / "store"
    server = start(work, python, tls_args(pki, store))
    try:
        assert process_ids(server.pid) == ACCOUNT
        names = round_trip(server, work, pki, "single")
        assert owner(store) == ACCOUNT
        assert store.stat().st_mode & 0o777 == 0o750
        made = sorted(p.name for p in store.iterdir())
        if not os.environ.get("GSITRANSFER_TEST_POSTGRES"):  # else the state is in PostgreSQL
            assert ".gsitransfer-store.sqlite" in made and ".gsitransfer-transfers.sqlite" in made
        for name in made:
            assert owner(store / name) == ACCOUNT, name
        assert set(names) <= set(made)
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()


def test_sighup_reload_rereads_the_host_key_as_nobody(work, python, pki):
    """A SIGHUP to a server running as nobody reloads its trust (host key re-read as nobody), and it serves on."""
    server = start(work, python, tls_args(pki, work / "store"))
    try:
        before = server.log_text().count("TLS trust reloaded")
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.log_text().count("TLS trust reloaded") > before, 20, "the reload")
        assert "reload failed" not in server.log_text()
        round_trip(server, work, pki, "reloaded")
    finally:
        server.stop()


def test_workers_run_as_nobody(work, python, pki):
    """With --workers 2 the supervisor and both workers run as nobody; round trips work, files are nobody's."""
    store = work / "store"
    server = start(work, python, tls_args(pki, store, "--workers", "2"))
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        for pid in [server.pid, *workers]:
            assert process_ids(pid) == ACCOUNT
        names = round_trip(server, work, pki, "workers")
        sqlite = [] if os.environ.get("GSITRANSFER_TEST_POSTGRES") else [".gsitransfer-store.sqlite",
                                                                          ".gsitransfer-transfers.sqlite"]
        for name in [*names, *sqlite]:
            assert owner(store / name) == ACCOUNT, name
    finally:
        server.stop()


def refused(work: Path, python: str, args: list[str]) -> list[str]:
    """Start twistd as root with --uid nobody; return its stderr lines (it must exit non-zero)."""
    done = subprocess.run(
        [python, "-c", TWISTD, *AS_NOBODY, "accessgrid-transfer", *args],
        cwd=work, env=dict(os.environ, **SERVICE_ENV), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_a_host_key_nobody_cannot_read_is_refused(work, python, pki):
    """A root-only host key would break every reload as nobody: one line at start-up, naming --key and the account."""
    key = work / "hostkey.pem"
    shutil.copyfile(pki.server_key, key)
    key.chmod(0o600)
    args = tls_args(pki, work / "store")
    args[args.index("--key") + 1] = str(key)
    lines = refused(work, python, args)
    assert lines == [
        f"accessgrid-transfer: error: --key {key} is not readable by nobody (uid {ACCOUNT[0]}, gid "
        f"{ACCOUNT[1]}), which --uid/--gid run the server as: trust reloads (SIGHUP, --reload-interval) "
        "re-read it as that account (make it owned by it, mode 0400)"
    ]


def test_a_store_nobody_cannot_write_is_refused(work, python):
    """An existing store directory root's alone (0755) is refused in one line naming the account."""
    store = work / "root-store"
    store.mkdir(mode=0o755)
    lines = refused(work, python, ["--http", "tcp:0:interface=127.0.0.1", "--store", f"data={store}"])
    assert lines == [
        f"accessgrid-transfer: error: store directory {store} is not readable and writable by nobody "
        f"(uid {ACCOUNT[0]}, gid {ACCOUNT[1]}), which --uid/--gid run the server as"
    ]
    assert list(store.iterdir()) == []
