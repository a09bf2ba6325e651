"""scripts/serve and scripts/test as a new user runs them, from a copy of the checkout.

serve installs once (a stamp of pyproject.toml in .venv) and then starts with the
package index unreachable; renews the expired proxies of the test CA it finds in
certs/ (keeping the CA); and on a busy port names the variables that change it.
Every server is stopped by its PID (serve execs twistd); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from gsitransfer.testca import make_test_pki
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
#: what a clone holds that serve needs (no .venv, no certs/ but its README)
COPIED = ("scripts", "gsitransfer", "twisted", "pyproject.toml", "README.md", "certs/README.md")


def copy_checkout(destination: Path) -> Path:
    """The repository's sources under ``destination``, without .venv, certs or caches."""
    for name in COPIED:
        source, target = REPO / name, destination / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def free_port() -> int:
    """A port nothing listens on now (the OS chooses it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def offline_env(**extra: str) -> dict[str, str]:
    """The environment with the package index unreachable and no pip configuration."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_INDEX_URL="http://127.0.0.1:9/", PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def venv_is_current() -> bool:
    """Whether the repository's .venv has this pyproject.toml installed (scripts/_venv.sh's stamp)."""
    return subprocess.run(["bash", "-c", ". scripts/_venv.sh && venv_is_current"], cwd=REPO,
                          timeout=30).returncode == 0


class Serve:
    """``scripts/serve`` in a checkout, in the background, on free ports; its output in a file."""

    def __init__(self, checkout: Path, env: dict[str, str]) -> None:
        self.http_port = self.https_port = free_port()
        while self.https_port == self.http_port:
            self.https_port = free_port()
        self.log_path = checkout / f"serve-{self.http_port}.log"
        env = dict(env, HTTP_PORT=str(self.http_port), HTTPS_PORT=str(self.https_port))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(checkout / "scripts" / "serve")], cwd=checkout, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float) -> str:
        """The output once both listeners are up; fails (with the output) if serve exits first."""
        def serving() -> bool:
            text = self.text()
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited ({self.process.returncode}):\n{text}")
            return f"listening: https://127.0.0.1:{self.https_port}" in text and \
                f"listening: http://127.0.0.1:{self.http_port}" in text
        wait_for(serving, timeout, "scripts/serve to listen")
        return self.text()

    def stop(self) -> None:
        """SIGTERM to its PID (twistd, which serve became), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def serving(checkout: Path, env: dict[str, str], timeout: float) -> Iterator[tuple[Serve, str]]:
    """serve, running, with its output so far; stopped by PID afterwards."""
    serve = Serve(checkout, env)
    try:
        yield serve, serve.wait_serving(timeout)
    finally:
        serve.stop()


def get(url: str) -> tuple[int, bytes]:
    """Status and body of a plain GET."""
    with urllib.request.urlopen(url, timeout=15) as answer:
        return answer.status, answer.read()


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_serve_names_the_port_variables_on_a_busy_port() -> None:
    """A busy HTTP port: one line naming HTTP_PORT/HTTPS_PORT with free ports to use, exit 1, nothing started."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = free_port()
        result = subprocess.run([str(REPO / "scripts" / "serve")], capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, HTTP_PORT=str(port), HTTPS_PORT=str(other)),
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and result.stdout == ""
    prefix = f"serve: error: port {port} (HTTP_PORT) is in use on 127.0.0.1; to use others: HTTP_PORT="
    assert result.stderr.startswith(prefix) and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.endswith(f" HTTPS_PORT={other} scripts/serve\n")
    suggested = int(result.stderr[len(prefix):].split()[0])
    assert suggested not in (port, other)


@pytest.mark.skipif(not venv_is_current(), reason="the repository's .venv is not installed by scripts/test")
def test_serve_starts_offline_and_renews_the_expired_test_proxies(tmp_path: Path) -> None:
    """No package index, a complete .venv: serve renews a 2-day-old CA's proxies (CA kept), serves, and the client works."""
    # the copy's .venv is a link to the repository's: the server runs the repository's code
    checkout = copy_checkout(tmp_path / "clone")
    (checkout / ".venv").symlink_to(REPO / ".venv")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    pki = make_test_pki(checkout / "certs", users=("alice", "bob"), share_keys=True,
                        now=now - datetime.timedelta(days=2))
    trusted = tree_bytes(pki.ca_dir)
    with serving(checkout, offline_env(), timeout=60) as (serve, output):
        assert "installing" not in output and "pip" not in output
        assert "renewed proxies            certs/users/alice/proxy.pem  until " in output
        assert "renewed proxies            certs/users/bob/proxy.pem  until " in output
        assert get(f"http://127.0.0.1:{serve.http_port}/data/")[0] == 200
        env = dict(offline_env(), X509_USER_PROXY="certs/users/alice/proxy.pem", X509_CERT_DIR="certs/ca")
        listing = subprocess.run([str(checkout / ".venv" / "bin" / "gsitransfer"), "ls",
                                  f"https://localhost:{serve.https_port}/data"], cwd=checkout, env=env,
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert listing.returncode == 0, listing.stderr
    assert tree_bytes(pki.ca_dir) == trusted


@pytest.mark.slow
def test_serve_installs_once_quietly_then_starts_offline(tmp_path: Path) -> None:
    """A fresh copy: the first serve installs (one line, no warnings), the next starts offline, a changed pyproject re-installs."""
    checkout = copy_checkout(tmp_path / "clone")
    with serving(checkout, dict(os.environ), timeout=600) as (serve, output):
        before_twistd = output.split("made a TEST CA")[0]
        assert before_twistd == "installing gsitransfer into .venv (once; again only when pyproject.toml changes)\n"
        assert "warning" not in output.lower() and "deprecat" not in output.lower()
    install_log = (checkout / ".venv" / "gsitransfer-install.log").read_text()
    assert "project.license" not in install_log
    with serving(checkout, offline_env(), timeout=60) as (serve, output):
        assert "installing" not in output and "made a TEST CA" not in output
        assert get(f"http://127.0.0.1:{serve.http_port}/data/")[0] == 200
    with open(checkout / "pyproject.toml", "a") as pyproject:
        pyproject.write("# changed\n")
    with serving(checkout, dict(os.environ), timeout=600) as (serve, output):
        assert output.count("installing gsitransfer into .venv") == 1
