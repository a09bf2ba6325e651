"""Issue 13, the first hour at the command line: the real ``gsitransfer`` against a real server.

Tests marked "contract" need the server side of issue 13 (``GET /``, the
``no such prefix`` 404, ``already_stored``, the plain port's 400 to a TLS
ClientHello); the others need only the client.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Iterator

import pytest

from .support import make_files, tls_env

DASH = "\u2014"
ARROW = "\u2192"


def one_line(result) -> str:
    """The single stderr line of a failed run, without the program name (no traceback)."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gsitransfer: ")
    return lines[0][len("gsitransfer: "):]


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


# -- item 2: a URL without a prefix ------------------------------------------------------------


def test_ls_of_the_servers_root_names_its_prefixes(run_cli, servers):
    """contract: ls http://host:port/ says which prefixes the server has, with an example; exit 2."""
    result = run_cli("ls", f"{servers.http}/")
    assert result.returncode == 2
    assert one_line(result) == (f"{servers.http}/ names no prefix; this server has /data/ /perm/ {DASH} "
                                f"e.g. gsitransfer ls {servers.http}/data")


def test_upload_to_the_servers_root_names_its_prefixes(run_cli, servers, test_pki, tmp_path):
    """contract: upload https://localhost:port (no slash) over mutual TLS: the prefixes and an upload example."""
    [path] = make_files(tmp_path, 1, 10)
    result = run_cli("upload", servers.https, str(path), env=tls_env(tmp_path, test_pki))
    assert result.returncode == 2
    assert one_line(result) == (f"{servers.https} names no prefix; this server has /data/ /perm/ {DASH} "
                                f"e.g. gsitransfer upload {servers.https}/data FILE")


def test_a_mistyped_prefix_is_the_servers_404(run_cli, servers, test_pki, tmp_path):
    """contract: ls of an unknown prefix shows the server's 404 as it is (it names the prefixes); exit 1."""
    result = run_cli("ls", f"{servers.https}/dta", env=tls_env(tmp_path, test_pki))
    assert result.returncode == 1
    assert one_line(result) == (f"404 no such prefix /dta/; this server has /data/ /perm/ "
                                f"(GET {servers.https}/dta/)")


# -- item 3: https:// to a plain-HTTP port --------------------------------------------------------


@pytest.fixture
def plain_answerer() -> Iterator[int]:
    """A port that answers the first byte of a connection with the plain port's 400 (as the contract says)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(30)

    def answer() -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(30)
            connection.recv(1)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                               b"Connection: close\r\n\r\nthis port speaks plain HTTP, not TLS: use http://\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(30)


def test_https_to_a_port_answering_plain_http(run_cli, plain_answerer, test_pki, tmp_path):
    """A plain-HTTP answer to our ClientHello: one line saying so and the http:// URL to use; exit 4."""
    [path] = make_files(tmp_path, 1, 10)
    url = f"https://localhost:{plain_answerer}/data"
    result = run_cli("upload", url, str(path), env=tls_env(tmp_path, test_pki))
    assert result.returncode == 4
    assert one_line(result) == (f"localhost:{plain_answerer} answered in plain HTTP, not TLS: "
                                f"use http://localhost:{plain_answerer}/data (or the server's TLS port)")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (an older plain-HTTP port waiting for a line)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    yield listener.getsockname()[1]
    listener.close()


def test_https_to_a_port_that_never_answers(run_cli, silent_port, test_pki, tmp_path):
    """No answer to the ClientHello: the client gives up after --handshake-timeout, with the http:// hint; exit 4."""
    result = run_cli("--handshake-timeout", "0.5", "ls", f"https://localhost:{silent_port}/data",
                     env=tls_env(tmp_path, test_pki))
    assert result.returncode == 4
    assert one_line(result) == (f"localhost:{silent_port} did not answer the TLS handshake in 0.5 s: if it speaks "
                                f"plain HTTP, use http://localhost:{silent_port}/data (or the server's TLS port)")


def test_https_to_the_servers_plain_port(run_cli, servers, test_pki, tmp_path):
    """contract: the real server's plain port answers the ClientHello at once; the client says use http://."""
    port = port_of(servers.http)
    result = run_cli("ls", f"https://localhost:{port}/data", env=tls_env(tmp_path, test_pki))
    assert result.returncode == 4
    assert one_line(result) == (f"localhost:{port} answered in plain HTTP, not TLS: "
                                f"use http://localhost:{port}/data (or the server's TLS port)")


# -- item 4: the same file again -------------------------------------------------------------------


def test_uploading_the_same_files_again_sends_only_the_new_one(run_cli, servers, test_pki, tmp_path):
    """contract: a re-run with one new file: the stored one is reported and not sent, the new one is; exit 0."""
    env = tls_env(tmp_path, test_pki)
    old, new = make_files(tmp_path, 2, 5000)
    assert run_cli("upload", f"{servers.https}/data", str(old), env=env).returncode == 0
    again = run_cli("upload", f"{servers.https}/data", str(old), str(new), env=env)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == f"{old.name}: already stored (same size and MD5), not sent"
    assert lines[1].startswith(f"{new.name}  ") and lines[1].endswith(f"/data/{new.name}")
    document = json.loads(run_cli("--json", "upload", f"{servers.https}/data", str(old), str(new), env=env).stdout)
    assert document["ok"] is True
    assert [(f["name"], f["already_stored"], f["attempts"]) for f in document["files"]] == [
        (old.name, True, 0), (new.name, True, 0)]


# -- item 5: downloading a prefix, and several names ------------------------------------------------


@pytest.mark.parametrize("suffix", ["/data/", "/data"])
def test_download_of_a_prefix_is_refused(run_cli, servers, tmp_path, suffix):
    """download URL/ DEST/: one line with what to do instead, exit 2, nothing saved."""
    (tmp_path / "dl").mkdir()
    url = f"{servers.http}{suffix}"
    result = run_cli("download", url, "dl/")
    assert result.returncode == 2
    listing = url if url.endswith("/") else url + "/"
    assert one_line(result) == (f"{url} is a prefix, not a file: list it with gsitransfer ls {listing}, "
                                "or download names: gsitransfer download URL/NAME1 URL/NAME2 DEST/")
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_several_names_into_a_directory(run_cli, servers, tmp_path):
    """download URL/a URL/b DEST/: both arrive, verified; DEST must be a directory."""
    a, b = make_files(tmp_path / "up", 2, 3000)
    assert run_cli("upload", f"{servers.http}/data", str(a), str(b)).returncode == 0
    (tmp_path / "dl").mkdir()
    urls = [f"{servers.http}/data/{a.name}", f"{servers.http}/data/{b.name}"]
    result = run_cli("download", *urls, "dl/")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dl" / a.name).read_bytes() == a.read_bytes()
    assert (tmp_path / "dl" / b.name).read_bytes() == b.read_bytes()
    assert len(result.stdout.splitlines()) == 2 and "verified" in result.stdout
    not_a_directory = run_cli("download", *urls, "file.bin")
    assert not_a_directory.returncode == 2
    assert one_line(not_a_directory) == ("DEST must be a directory when downloading several files: "
                                         "file.bin is not one")


def test_one_failed_download_of_several(run_cli, servers, tmp_path):
    """The others are still downloaded; each failure is one line, then a count; the first failure's status."""
    [a] = make_files(tmp_path / "up", 1, 2000)
    assert run_cli("upload", f"{servers.http}/data", str(a)).returncode == 0
    (tmp_path / "dl").mkdir()
    missing = f"{servers.http}/data/missing-{a.name}"
    result = run_cli("download", missing, f"{servers.http}/data/{a.name}", "dl")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"gsitransfer: {missing}: 404 no file 'missing-{a.name}' (GET {missing})",
        "gsitransfer: 1 of 2 downloads failed",
    ]
    assert (tmp_path / "dl" / a.name).read_bytes() == a.read_bytes()


# -- item 6: storing under another name ---------------------------------------------------------------


def test_upload_to_a_name_under_the_prefix(run_cli, servers, tmp_path):
    """upload URL/prefix/NEWNAME FILE stores FILE as NEWNAME and says so; --as does the same."""
    [path] = make_files(tmp_path, 1, 100)
    new_name = f"renamed-{path.name}"
    result = run_cli("upload", f"{servers.http}/data/{new_name}", path.name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path.name} {ARROW} {new_name}  ")
    assert result.stdout.rstrip().endswith(f"/data/{new_name}")
    other = run_cli("upload", "--as", f"as-{path.name}", f"{servers.http}/data", path.name)
    assert other.returncode == 0 and other.stdout.startswith(f"{path.name} {ARROW} as-{path.name}  ")
    names = {f["name"] for f in json.loads(run_cli("--json", "ls", f"{servers.http}/data").stdout)["files"]}
    assert {new_name, f"as-{path.name}"} <= names


def test_several_files_to_a_name_are_refused(run_cli, servers, tmp_path):
    """upload URL/prefix/NAME A B: the URL is the prefix and files keep their names; exit 2, nothing sent."""
    a, b = make_files(tmp_path, 2, 10)
    url = f"{servers.http}/data/x.bin"
    result = run_cli("upload", url, str(a), str(b))
    assert result.returncode == 2
    assert one_line(result) == (f"{url} names one file but 2 files are given: upload to the prefix "
                                f"{servers.http}/data (files keep their names), or one file at a time to rename it")


def test_version_names_gsitransfer_and_what_it_runs_on(run_cli):
    """`gsitransfer --version` prints the package's version first, then Twisted's and Python's."""
    import gsitransfer

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"gsitransfer {gsitransfer.__version__}"
    assert [line.split()[0] for line in lines[1:]] == ["Twisted", "Python"]
