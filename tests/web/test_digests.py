"""Digests in memory: upload bodies verified against their digest fields, downloads answering Want-*.

Servers run on a ``Clock`` (no threads: uploads are written and digests
computed on the test's thread). Values are computed here independently
with hashlib, zlib and base64.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from gsitransfer import digests
from gsitransfer.fastpaths import FastPaths
from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import MemoryHandler, SiteConnection, identity_of
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.digesting import INLINE_LIMIT, Digester

from .wire import get, upload_head

BODY = os.urandom(200_000)
SMALL = b"a small file\n" * 50
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def adler_hex(data: bytes) -> str:
    return "%08x" % zlib.adler32(data)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    (root / "small.txt").write_bytes(SMALL)
    (root / "big.bin").write_bytes(BODY)
    return root


def split(output: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One answer as (status line, headers by lower-case name with their values as sent, body)."""
    head, _, body = output.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    pairs = (line.split(b": ", 1) for line in lines)
    return status, {name.lower(): value for name, value in pairs}, body


def serving(root: Path, fast_paths: FastPaths | None = None) -> HTTPTransferServer:
    server = HTTPTransferServer(public_url="http://test", fast_paths=fast_paths)
    server.RegisterPrefix("data", DirectoryStore(str(root)))
    return server


@pytest.fixture
def server(store_dir: Path) -> HTTPTransferServer:
    return serving(store_dir)


def ask(server: HTTPTransferServer, *requests: bytes) -> bytes:
    """Send ``requests`` on one connection to a site on a Clock; everything answered (Date blanked)."""
    conn = SiteConnection(server.site(Clock()))
    for data in requests:
        conn.send(data)
    return _DATE.sub(b"\r\nDate: -\r\n", conn.output())


def upload(server: HTTPTransferServer, name: str, body: bytes, *fields: str) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Post a one-file manifest for ``name`` and send ``body`` with the header lines ``fields``."""
    manifest = Manifest.of((name, len(body), hashlib.md5(body).hexdigest())).to_ini().encode()
    key = server.engine.post_manifest("data", manifest, identity_of(server)).result.transfer_key
    extra = "".join(f"{line}\r\n" for line in fields)
    return split(ask(server, upload_head(key, len(body), extra) + body))


# -- uploads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        f"Content-Digest: sha-256=:{b64(hashlib.sha256(BODY).digest())}:",
        f"Repr-Digest: sha-512=:{b64(hashlib.sha512(BODY).digest())}:, md5=:{b64(hashlib.md5(BODY).digest())}:",
        f"Digest: adler32={adler_hex(BODY)}",
        f"Digest: SHA-256={b64(hashlib.sha256(BODY).digest())}",
        f"Content-MD5: {b64(hashlib.md5(BODY).digest())}",
    ],
)
def test_upload_with_right_digest_is_stored(server: HTTPTransferServer, store_dir: Path, field: str) -> None:
    """A body whose digest field is right is stored, as without one."""
    status, _, text = upload(server, "new.bin", BODY, field)
    assert status == b"HTTP/1.1 200 OK", text
    assert (store_dir / "new.bin").read_bytes() == BODY


@pytest.mark.parametrize(
    "field, algorithm",
    [
        (f"Content-Digest: sha-256=:{b64(hashlib.sha256(b'other').digest())}:", "sha-256"),
        (f"Repr-Digest: sha-512=:{b64(hashlib.sha512(b'other').digest())}:", "sha-512"),
        (f"Digest: adler32={adler_hex(b'other')}", "adler32"),
        (f"Content-MD5: {b64(hashlib.md5(b'other').digest())}", "md5"),
    ],
)
def test_upload_with_wrong_digest_is_422_and_unpublished(
    server: HTTPTransferServer, store_dir: Path, field: str, algorithm: str
) -> None:
    """A body whose digest field is wrong is 422 with one line naming the algorithm; nothing is published."""
    status, headers, text = upload(server, "new.bin", BODY, field)
    assert status.startswith(b"HTTP/1.1 422"), text
    assert text.decode().startswith(f"checksum mismatch: {algorithm} of the body is ")
    assert text.count(b"\n") == 1
    assert sorted(p.name for p in store_dir.iterdir() if not p.name.startswith(".gsitransfer-store")) == [
        "big.bin",
        "small.txt",
    ]


@pytest.mark.parametrize(
    "field, reason",
    [
        ("Content-Digest: sha-256=:AAAA:", b"malformed Content-Digest: sha-256 is not a 32-byte sequence\n"),
        ("Digest: adler32=xyz", b"malformed Digest: adler32 is not 8 hex digits: xyz\n"),
        ("Content-Digest: sha=:AAAA:", b"no supported algorithm in Content-Digest (supported: md5, sha-256, sha-512, adler32)\n"),
    ],
)
def test_malformed_digest_field_is_400_before_the_handler(tmp_path: Path, field: str, reason: bytes) -> None:
    """A malformed or unusable digest field is 400 with one line, before the handler is asked for a file name."""
    (tmp_path / "files").mkdir()
    handler = MemoryHandler(str(tmp_path / "files"))
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", handler)
    status, headers, text = upload(server, "new.bin", BODY, field)
    assert status.startswith(b"HTTP/1.1 400") and text == reason
    assert "GetUploadFilename" not in [call for call, _, _ in handler.calls]
    told = headers.get(b"want-content-digest")
    assert told == (b"sha-256=10, sha-512=9, md5=1" if b"no supported" in reason else None)


def test_no_digest_field_makes_no_hasher(server: HTTPTransferServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload without digest fields makes no hasher beyond the MD5; one with a field makes one per algorithm."""
    made: list[str] = []
    real = digests.new_hasher
    monkeypatch.setattr(digests, "new_hasher", lambda name: made.append(name) or real(name))
    assert upload(server, "plain.bin", BODY)[0] == b"HTTP/1.1 200 OK"
    assert made == []
    field = f"Content-Digest: sha-256=:{b64(hashlib.sha256(BODY).digest())}:"
    assert upload(server, "checked.bin", BODY, field)[0] == b"HTTP/1.1 200 OK"
    assert made == ["sha-256"]


def test_plain_upload_writes_no_digest_rows(server: HTTPTransferServer) -> None:
    """Without digest fields, publishing adds nothing to the store's digest table (its MD5 is in the file's row)."""
    assert upload(server, "plain.bin", BODY)[0] == b"HTTP/1.1 200 OK"
    store = server.engine.handler_for("data")
    assert isinstance(store, DirectoryStore) and store.metadata.digest_names() == set()
    headers = split(ask(server, get("/data/plain.bin", "Want-Digest: md5", method="HEAD")))[1]
    assert headers[b"digest"] == f"md5={b64(hashlib.md5(BODY).digest())}".encode()
    assert server.digester.computed == 0


def test_upload_md5_kept_in_the_cache_for_other_handlers(tmp_path: Path) -> None:
    """For a handler that keeps no digests, the uploaded file's MD5 goes to the server's cache at publish."""
    (tmp_path / "files").mkdir()
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", MemoryHandler(str(tmp_path / "files")))
    assert upload(server, "f.bin", BODY)[0] == b"HTTP/1.1 200 OK"
    headers = split(ask(server, get("/data/f.bin", "Want-Repr-Digest: md5=1")))[1]
    assert headers[b"repr-digest"] == f"md5=:{b64(hashlib.md5(BODY).digest())}:".encode()
    assert server.digester.computed == 0


def test_digests_hashed_at_upload_are_served_without_reading(server: HTTPTransferServer) -> None:
    """The sha-256 checked at upload (and the MD5) are kept at publish: a Want-Repr-Digest computes nothing."""
    sha = hashlib.sha256(BODY).digest()
    assert upload(server, "kept.bin", BODY, f"Content-Digest: sha-256=:{b64(sha)}:")[0] == b"HTTP/1.1 200 OK"
    status, headers, _ = split(ask(server, get("/data/kept.bin", "Want-Repr-Digest: sha-256=9", method="HEAD")))
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"repr-digest"] == f"sha-256=:{b64(sha)}:, md5=:{b64(hashlib.md5(BODY).digest())}:".encode()
    assert server.digester.computed == 0


# -- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "want, field, value",
    [
        ("Want-Digest: adler32", b"digest", f"adler32={adler_hex(BODY)}"),
        ("Want-Digest: ADLER32, md5;q=0.3", b"digest", f"adler32={adler_hex(BODY)}"),
        ("Want-Digest: md5", b"digest", f"md5={b64(hashlib.md5(BODY).digest())}"),
        ("Want-Digest: sha-256;q=0.5, sha-512;q=0.4", b"digest", f"sha-256={b64(hashlib.sha256(BODY).digest())}"),
        ("Want-Digest: SHA-512", b"digest", f"sha-512={b64(hashlib.sha512(BODY).digest())}"),
        ("Want-Repr-Digest: sha-256=5, md5=1", b"repr-digest", f"sha-256=:{b64(hashlib.sha256(BODY).digest())}:"),
        ("Want-Repr-Digest: sha-512=2", b"repr-digest", f"sha-512=:{b64(hashlib.sha512(BODY).digest())}:"),
        ("Want-Repr-Digest: md5=1", b"repr-digest", f"md5=:{b64(hashlib.md5(BODY).digest())}:"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_wanted_digest_served(server: HTTPTransferServer, want: str, field: bytes, value: str, method: str) -> None:
    """Want-Digest and Want-Repr-Digest on GET and HEAD get the preferred digest in the field's format."""
    status, headers, body = split(ask(server, get("/data/big.bin", want, method=method)))
    assert status == b"HTTP/1.1 200 OK"
    assert headers[field] == value.encode()
    assert body == (BODY if method == "GET" else b"")


def test_unsupported_want_changes_nothing(server: HTTPTransferServer) -> None:
    """Want-Digest naming only algorithms not served (or not parsing) gives the usual answer, no Digest."""
    usual = ask(server, get("/data/big.bin"))
    for want in ("Want-Digest: crc32c, UNIXcksum", "Want-Digest: md5;q=7", "Want-Repr-Digest: adler=3"):
        assert ask(server, get("/data/big.bin", want)) == usual
    assert server.digester.computed == 0


def test_known_md5_kept_beside_the_wanted_digest(server: HTTPTransferServer) -> None:
    """With a stored MD5, Repr-Digest lists the wanted digest then the MD5, unless md5 is rated 0."""
    md5, sha = hashlib.md5(BODY).digest(), hashlib.sha256(BODY).digest()
    assert upload(server, "up.bin", BODY)[0] == b"HTTP/1.1 200 OK"
    headers = split(ask(server, get("/data/up.bin", "Want-Repr-Digest: sha-256=3")))[1]
    assert headers[b"repr-digest"] == f"sha-256=:{b64(sha)}:, md5=:{b64(md5)}:".encode()
    headers = split(ask(server, get("/data/up.bin", "Want-Repr-Digest: sha-256=3, md5=0")))[1]
    assert headers[b"repr-digest"] == f"sha-256=:{b64(sha)}:".encode()
    assert split(ask(server, get("/data/up.bin")))[1][b"repr-digest"] == f"md5=:{b64(md5)}:".encode()


def test_range_gets_the_whole_files_digest(server: HTTPTransferServer) -> None:
    """A 206 carries the digest of the whole file (RFC 3230 instance, RFC 9530 representation)."""
    status, headers, body = split(ask(server, get("/data/big.bin", "Range: bytes=10-19", "Want-Digest: adler32")))
    assert status == b"HTTP/1.1 206 Partial Content" and body == BODY[10:20]
    assert headers[b"digest"] == f"adler32={adler_hex(BODY)}".encode()


def test_digest_computed_once_per_file_state(server: HTTPTransferServer, store_dir: Path) -> None:
    """Two downloads asking for sha-256 compute it once (kept by the store); a rewritten file is computed again."""
    want = "Want-Repr-Digest: sha-256=1"
    first = split(ask(server, get("/data/big.bin", want)))[1][b"repr-digest"]
    second = split(ask(server, get("/data/big.bin", want), get("/data/big.bin", want, method="HEAD")))
    assert server.digester.computed == 1
    assert first == f"sha-256=:{b64(hashlib.sha256(BODY).digest())}:".encode()
    assert second[1][b"repr-digest"] == first
    store = server.engine.handler_for("data")
    assert isinstance(store, DirectoryStore)
    status = os.stat(store_dir / "big.bin")
    identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    assert store.metadata.digests("big.bin", identity) == {"sha-256": hashlib.sha256(BODY).hexdigest()}
    changed = BODY[::-1]
    (store_dir / "big.bin").write_bytes(changed)
    os.utime(store_dir / "big.bin", ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    third = split(ask(server, get("/data/big.bin", want)))[1][b"repr-digest"]
    assert third == f"sha-256=:{b64(hashlib.sha256(changed).digest())}:".encode()
    assert server.digester.computed == 2


def test_handler_without_keeper_uses_the_servers_cache(tmp_path: Path) -> None:
    """For a handler that keeps no digests, the server's own cache remembers them: computed once."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "f.bin").write_bytes(BODY)
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", MemoryHandler(str(tmp_path / "files")))
    for _ in range(3):
        headers = split(ask(server, get("/data/f.bin", "Want-Digest: adler32")))[1]
        assert headers[b"digest"] == f"adler32={adler_hex(BODY)}".encode()
    assert server.digester.computed == 1 and len(server.digester.cache) == 1


def test_small_files_computed_inline(server: HTTPTransferServer) -> None:
    """A file under the inline limit is hashed at once (the test's reactor has no threads either way)."""
    assert len(SMALL) <= INLINE_LIMIT
    headers = split(ask(server, get("/data/small.txt", "Want-Digest: adler32")))[1]
    assert headers[b"digest"] == f"adler32={adler_hex(SMALL)}".encode()


@pytest.mark.parametrize(
    "requests",
    [
        [get("/data/small.txt", "Want-Digest: adler32")],
        [get("/data/small.txt", "Want-Repr-Digest: sha-256=1"), get("/data/small.txt")],
        [get("/data/big.bin", "Want-Digest: md5", "Connection: close")],
        [get("/data/small.txt"), get("/data/small.txt", "Want-Digest: crc32c")],
    ],
)
def test_fast_path_on_and_off_agree(store_dir: Path, requests: list[bytes]) -> None:
    """With Want-* fields the answers are byte-identical with every fast path and with none."""
    fast = ask(serving(store_dir, FastPaths()), *requests)
    plain = ask(serving(store_dir, FastPaths.none()), *requests)
    assert fast == plain
    assert b"HTTP/1.1 200 OK" in fast


def test_conditional_and_unsatisfiable_answers_carry_the_digest(server: HTTPTransferServer) -> None:
    """A 304 and a 416 asked with Want-Digest carry the file's digest too."""
    etag = split(ask(server, get("/data/big.bin", method="HEAD")))[1][b"etag"].decode()
    status, headers, _ = split(ask(server, get("/data/big.bin", f"If-None-Match: {etag}", "Want-Digest: adler32")))
    assert status == b"HTTP/1.1 304 Not Modified" and headers[b"digest"] == f"adler32={adler_hex(BODY)}".encode()
    status, headers, _ = split(ask(server, get("/data/big.bin", "Range: bytes=999999-", "Want-Digest: adler32")))
    assert status.startswith(b"HTTP/1.1 416") and headers[b"digest"] == f"adler32={adler_hex(BODY)}".encode()


# -- the digester on a thread pool (one the test runs by hand) ---------------------------------


@implementer(IReactorThreads, IReactorCore)
class ManualThreads:
    """A reactor whose thread pool runs its jobs only when the test says (no real threads)."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.before_shutdown: list[Any] = []

    def addSystemEventTrigger(self, phase: str, event: str, function: Any) -> None:
        assert (phase, event) == ("before", "shutdown")
        self.before_shutdown.append(function)

    def getThreadPool(self) -> "ManualThreads":
        return self

    def callInThreadWithCallback(self, on_result: Any, function: Any, *args: Any, **kwargs: Any) -> None:
        self.jobs.append((on_result, function, args, kwargs))

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    def run_one(self) -> None:
        on_result, function, args, kwargs = self.jobs.pop(0)
        try:
            result = function(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


def open_with_stat(path: Path) -> tuple[int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY)
    return fd, os.fstat(fd)


def test_concurrent_requests_share_one_computation(tmp_path: Path) -> None:
    """Requests for the same file state while its digest is computed wait for that one computation."""
    path = tmp_path / "f.bin"
    path.write_bytes(BODY)
    digester, threads = Digester(), ManualThreads()
    keeper = digester.keeper(None)
    answers: list[dict[str, str]] = []
    fds = []
    for _ in range(3):
        fd, status = open_with_stat(path)
        fds.append(fd)
        found = digester.find(keeper, str(path), fd, status, frozenset({"sha-256"}), {}, threads)
        assert isinstance(found, defer.Deferred)
        found.addCallback(answers.append)
    assert len(threads.jobs) == 1 and answers == []
    threads.run_one()
    assert answers == [{"sha-256": hashlib.sha256(BODY).hexdigest()}] * 3 and digester.computed == 1
    later = digester.find(keeper, str(path), fds[0], os.fstat(fds[0]), frozenset({"sha-256"}), {}, threads)
    assert later == {"sha-256": hashlib.sha256(BODY).hexdigest()} and threads.jobs == []
    for fd in fds:
        os.close(fd)


def test_at_most_two_files_hashed_at_once(tmp_path: Path) -> None:
    """Different files wait their turn: at most ``concurrency`` computations are on the pool at once."""
    digester, threads = Digester(concurrency=2), ManualThreads()
    keeper = digester.keeper(None)
    answers: list[dict[str, str]] = []
    fds = []
    for number in range(3):
        path = tmp_path / f"f{number}.bin"
        path.write_bytes(BODY + bytes([number]))
        fd, status = open_with_stat(path)
        fds.append(fd)
        found = digester.find(keeper, str(path), fd, status, frozenset({"adler32"}), {}, threads)
        assert isinstance(found, defer.Deferred)
        found.addCallback(answers.append)
    assert len(threads.jobs) == 2
    threads.run_one()
    assert len(threads.jobs) == 2 and len(answers) == 1
    threads.run_one()
    threads.run_one()
    assert [a["adler32"] for a in answers] == [adler_hex(BODY + bytes([n])) for n in range(3)]
    for fd in fds:
        os.close(fd)


def test_file_changed_while_hashed_is_not_kept(tmp_path: Path) -> None:
    """A file rewritten while its digest is computed: the digest is neither served nor kept."""
    path = tmp_path / "f.bin"
    path.write_bytes(BODY)
    digester, threads = Digester(), ManualThreads()
    fd, status = open_with_stat(path)
    found = digester.find(digester.keeper(None), str(path), fd, status, frozenset({"md5"}), {}, threads)
    assert isinstance(found, defer.Deferred)
    with open(path, "ab") as more:
        more.write(b"more")
    threads.run_one()
    assert found.result == {} and len(digester.cache) == 0
    os.close(fd)


def test_client_gone_while_hashing_closes_the_file(server: HTTPTransferServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that leaves while its digest is computed gets nothing, and the file is closed."""
    pending: defer.Deferred[dict[str, str]] = defer.Deferred()
    held: list[int] = []

    def find(keeper: Any, path: str, fd: int, *rest: Any) -> defer.Deferred[dict[str, str]]:
        held.append(fd)
        return pending

    monkeypatch.setattr(server.digester, "find", find)
    conn = SiteConnection(server.site(Clock()))
    conn.send(get("/data/big.bin", "Want-Digest: sha-512"))
    assert conn.output() == b"" and len(held) == 1
    assert os.readlink(f"/proc/self/fd/{held[0]}").endswith("big.bin")
    conn.drop()
    pending.callback({"sha-512": hashlib.sha512(BODY).hexdigest()})
    assert conn.output() == b""
    try:
        still_open = os.readlink(f"/proc/self/fd/{held[0]}").endswith("big.bin")
    except OSError:
        still_open = False
    assert not still_open


def test_shutdown_stops_computations_on_threads(tmp_path: Path) -> None:
    """When the reactor shuts down, a computation on the pool stops at its next chunk: nothing served or kept."""
    path = tmp_path / "f.bin"
    path.write_bytes(BODY)
    digester, threads = Digester(), ManualThreads()
    fd, status = open_with_stat(path)
    found = digester.find(digester.keeper(None), str(path), fd, status, frozenset({"sha-512"}), {}, threads)
    assert isinstance(found, defer.Deferred) and len(threads.before_shutdown) == 1
    threads.before_shutdown[0]()
    threads.run_one()
    assert found.result == {} and digester.computed == 0 and len(digester.cache) == 0
    os.close(fd)
