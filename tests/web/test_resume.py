"""HEAD and PATCH on a file URL (tus 1.0 core) and cut-off bodies, in memory (real files, no sockets)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from gsitransfer.manifest import Manifest
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import SiteConnection
from gsitransfer.web import HTTPTransferServer

from .wire import get, split, upload_head

BODY = bytes(range(256)) * 400  # 102,400 bytes


@pytest.fixture
def server(tmp_path: Path) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.RegisterPrefix("data", DirectoryStore(str(tmp_path / "store")))
    return s


@pytest.fixture
def key(engine, anonymous) -> str:
    manifest = Manifest.of(("f.bin", len(BODY), hashlib.md5(BODY).hexdigest())).to_ini().encode()
    return str(engine.post_manifest("data", manifest, anonymous).result.transfer_key)


def exchange(server: HTTPTransferServer, data: bytes, peer: str = "127.0.0.1") -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send ``data`` on a new connection; the answer split (status line, headers, body)."""
    conn = SiteConnection(server.site(), peer=peer)
    conn.send(data)
    conn.clock.advance(0)
    return split(conn.output())


def head(key: str) -> bytes:
    return get(f"/data/{key}/0", "Tus-Resumable: 1.0.0", method="HEAD")


def patch(key: str, offset: int | str | None, body: bytes, *extra: str, content_type: str = "application/offset+octet-stream") -> bytes:
    lines = [f"PATCH /data/{key}/0 HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", "Tus-Resumable: 1.0.0"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if offset is not None:
        lines.append(f"Upload-Offset: {offset}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode() + body


def cut_post(server: HTTPTransferServer, key: str, sent: int) -> None:
    """A whole-file POST whose client vanishes after ``sent`` bytes."""
    conn = SiteConnection(server.site())
    conn.send(upload_head(key, len(BODY)) + BODY[:sent])
    conn.drop()


def test_head_reports_offset_length_and_expiry(server, key):
    """HEAD on a fresh file: 200, Upload-Offset 0, Upload-Length, Tus-Resumable, no-store, Upload-Expires."""
    status, headers, body = exchange(server, head(key))
    assert status.startswith(b"HTTP/1.1 200") and body == b""
    assert headers[b"upload-offset"] == b"0" and headers[b"upload-length"] == b"%d" % len(BODY)
    assert headers[b"tus-resumable"] == b"1.0.0" and headers[b"cache-control"] == b"no-store"
    assert headers[b"upload-expires"].endswith(b"gmt")


def test_cut_post_then_patch_pieces_store_the_file(server, key, tmp_path):
    """A POST cut at 30,000 bytes is held; HEAD says so; two PATCH pieces finish it with the right MD5."""
    cut_post(server, key, 30_000)
    assert exchange(server, head(key))[1][b"upload-offset"] == b"30000"
    status, headers, _ = exchange(server, patch(key, 30_000, BODY[30_000:60_000]))
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"60000"
    assert headers[b"tus-resumable"] == b"1.0.0" and b"upload-expires" in headers
    status, headers, _ = exchange(server, patch(key, 60_000, BODY[60_000:]))
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"%d" % len(BODY)
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".partial")] == []
    assert exchange(server, head(key))[1][b"upload-offset"] == b"%d" % len(BODY)


def test_patch_from_zero_without_a_post(server, key, tmp_path):
    """PATCH at 0 with the whole body stores the file (Tus-Resumable may be absent, as from curl)."""
    data = patch(key, 0, BODY).replace(b"Tus-Resumable: 1.0.0\r\n", b"")
    status, headers, _ = exchange(server, data)
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"%d" % len(BODY)
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_wrong_offset_is_409_with_the_offset_held(server, key):
    """PATCH at an offset other than the bytes held: 409, Upload-Offset the bytes held, one plain line."""
    cut_post(server, key, 1000)
    status, headers, body = exchange(server, patch(key, 500, BODY[500:600]))
    assert status.startswith(b"HTTP/1.1 409") and headers[b"upload-offset"] == b"1000"
    assert body == b"offset 500 does not match the 1000 bytes held\n"


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (patch("K", 0, b"x", content_type="application/octet-stream"), b"415", b"offset+octet-stream"),
        (patch("K", None, b"x"), b"400", b"Upload-Offset is required"),
        (patch("K", "-1", b"x"), b"400", b"decimal"),
        (patch("K", 0, b"x", "Upload-Checksum: crc32 AAAA"), b"400", b"unsupported Upload-Checksum"),
        (patch("K", 0, b"x").replace(b"Tus-Resumable: 1.0.0", b"Tus-Resumable: 0.2.2"), b"412", b"1.0.0"),
    ],
)
def test_patch_headers_refused(server, key, data, status, reason):
    """A PATCH refused from its headers: 415, 400, 412 (with Tus-Version), one plain line each."""
    got, headers, body = exchange(server, data.replace(b"/data/K/", f"/data/{key}/".encode()))
    assert got.split(b" ")[1] == status and reason.lower() in body.lower()
    if status == b"412":
        assert headers[b"tus-version"] == b"1.0.0"


def test_piece_past_the_size_is_413(server, key):
    """A PATCH whose Content-Length would pass the manifest size: 413 from the headers."""
    status, _, body = exchange(server, patch(key, 0, BODY + b"x"))
    assert status.startswith(b"HTTP/1.1 413") and b"passes the manifest size" in body


def test_chunked_piece_past_the_size_is_413(server, key):
    """A chunked PATCH is refused (413) as soon as it passes the size; the bytes before it are held."""
    conn = SiteConnection(server.site())
    head_lines = patch(key, 0, b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    conn.send(head_lines + b"%x\r\n" % len(BODY) + BODY + b"\r\n" + b"1\r\nx\r\n")
    conn.clock.advance(0)
    assert conn.output().startswith(b"HTTP/1.1 413")
    assert server.transfers.states(key)[0].value == "pending"


def test_upload_checksum_mismatch_is_460_and_drops_the_piece(server, key, tmp_path):
    """Upload-Checksum over the piece: a wrong one is 460 and the offset stays; a right one appends."""
    cut_post(server, key, 10_000)
    piece = BODY[10_000:20_000]
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    status, _, body = exchange(server, patch(key, 10_000, piece, f"Upload-Checksum: sha1 {wrong}"))
    assert status.startswith(b"HTTP/1.1 460") and body == b"checksum mismatch\n"
    assert exchange(server, head(key))[1][b"upload-offset"] == b"10000"
    right = base64.b64encode(hashlib.sha256(piece).digest()).decode()
    status, headers, _ = exchange(server, patch(key, 10_000, piece, f"Upload-Checksum: sha256 {right}"))
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"20000"
    exchange(server, patch(key, 20_000, BODY[20_000:]))
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_a_pieces_content_digest_is_the_pieces_and_a_wrong_one_drops_it(server, key, tmp_path):
    """Content-Digest on a PATCH covers that piece: wrong is 422 with the piece dropped; right appends."""
    cut_post(server, key, 10_000)
    piece = BODY[10_000:20_000]
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    status, _, body = exchange(server, patch(key, 10_000, piece, f"Content-Digest: sha-256=:{wrong}:"))
    assert status.startswith(b"HTTP/1.1 422") and body.startswith(b"checksum mismatch: sha-256 of the body is ")
    assert exchange(server, head(key))[1][b"upload-offset"] == b"10000"
    right = base64.b64encode(hashlib.sha256(piece).digest()).decode()
    status, headers, _ = exchange(server, patch(key, 10_000, piece, f"Content-Digest: sha-256=:{right}:"))
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"20000"
    last = BODY[20_000:]
    last_digest = base64.b64encode(hashlib.sha512(last).digest()).decode()
    status, _, _ = exchange(server, patch(key, 20_000, last, f"Content-Digest: sha-512=:{last_digest}:"))
    assert status.startswith(b"HTTP/1.1 204")
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_a_last_pieces_digest_is_never_served_as_the_files(server, key):
    """The sha-512 checked on the last piece is not kept as the file's: a download computes the file's own."""
    cut_post(server, key, 50_000)
    last = BODY[50_000:]
    piece_digest = base64.b64encode(hashlib.sha512(last).digest()).decode()
    status, _, _ = exchange(server, patch(key, 50_000, last, f"Content-Digest: sha-512=:{piece_digest}:"))
    assert status.startswith(b"HTTP/1.1 204")
    download = SiteConnection(server.site(Clock()))  # no threads: the digest is computed in line
    download.send(get("/data/f.bin", "Want-Repr-Digest: sha-512=9"))
    _, headers, _ = split(download.output())
    whole = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    assert headers[b"repr-digest"].decode().startswith(f"sha-512=:{whole}:".lower())  # split() lower-cases


def test_wrong_last_byte_is_422_and_offset_zero(server, key, tmp_path):
    """The whole file's MD5 is checked at the last byte: a wrong final byte is 422 and the offset goes to 0."""
    cut_post(server, key, 50_000)
    bad = BODY[50_000:-1] + bytes([BODY[-1] ^ 1])
    status, _, body = exchange(server, patch(key, 50_000, bad))
    assert status.startswith(b"HTTP/1.1 422") and b"checksum mismatch" in body
    assert exchange(server, head(key))[1][b"upload-offset"] == b"0"
    assert not (tmp_path / "store" / "f.bin").exists()
    assert [p for p in (tmp_path / "store").iterdir() if p.name.endswith(".partial")] == []


def test_whole_post_restarts_from_zero(server, key, tmp_path):
    """A whole POST after a cut-off one starts the file again from byte 0 and stores it."""
    cut_post(server, key, 40_000)
    status, _, _ = exchange(server, upload_head(key, len(BODY)) + BODY)
    assert status.startswith(b"HTTP/1.1 200")
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_other_identity_403_unknown_404_get_405(server, key):
    """HEAD by another identity is 403; an unknown key or file number 404; GET on the file URL 405 with Allow."""
    other = get(f"/data/{key}/0", "X-Client-DN: /CN=Mallory", method="HEAD")
    trusted = HTTPTransferServer(public_url="http://test", trusted_proxies=["127.0.0.1"])
    trusted.RegisterPrefix("data", server.engine.handler_for("data"))
    trusted.engine.transfers = server.engine.transfers
    assert exchange(trusted, other)[0].startswith(b"HTTP/1.1 403")
    assert exchange(server, head("Z" * 32))[0].startswith(b"HTTP/1.1 404")
    assert exchange(server, get(f"/data/{key}/7", method="HEAD"))[0].startswith(b"HTTP/1.1 404")
    status, headers, _ = exchange(server, get(f"/data/{key}/0"))
    assert status.startswith(b"HTTP/1.1 405") and headers[b"allow"] == b"head, post, patch, delete, options"


def test_transfer_state_shows_offsets(server, key):
    """GET /<prefix>/<key>: each file has its offset (the bytes held)."""
    cut_post(server, key, 12_345)
    _, _, body = exchange(server, get(f"/data/{key}"))
    assert json.loads(body)["files"][0]["offset"] == 12_345


def test_patch_of_a_stored_file_is_409(server, key):
    """A file already stored takes no piece: 409."""
    exchange(server, upload_head(key, len(BODY)) + BODY)
    assert exchange(server, patch(key, len(BODY), b""))[0].startswith(b"HTTP/1.1 409")


def test_lost_partial_puts_the_offset_back_to_zero(server, key):
    """A partial removed by hand: the PATCH is 409 with Upload-Offset 0 and the file starts again."""
    cut_post(server, key, 5000)
    Path(server.transfers.progress(key)[0][1]).unlink()
    status, headers, _ = exchange(server, patch(key, 5000, BODY[5000:6000]))
    assert status.startswith(b"HTTP/1.1 409") and headers[b"upload-offset"] == b"0"
    assert exchange(server, patch(key, 0, BODY))[0].startswith(b"HTTP/1.1 204")


def test_chunked_piece_appends(server, key, tmp_path):
    """A chunked PATCH (no Content-Length) appends its bytes like any other: 204 with the new offset."""
    conn = SiteConnection(server.site())
    head_lines = patch(key, 0, b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    conn.send(head_lines + b"%x\r\n" % 70_000 + BODY[:70_000] + b"\r\n0\r\n\r\n")
    status, headers, _ = split(conn.output())
    assert status.startswith(b"HTTP/1.1 204") and headers[b"upload-offset"] == b"70000"
    assert exchange(server, patch(key, 70_000, BODY[70_000:]))[0].startswith(b"HTTP/1.1 204")
    assert (tmp_path / "store" / "f.bin").read_bytes() == BODY


def test_options_on_a_file_url(server, key):
    """OPTIONS on a file of a transfer lists the methods its row takes."""
    status, headers, _ = exchange(server, get(f"/data/{key}/0", method="OPTIONS"))
    assert status.startswith(b"HTTP/1.1 200") and headers[b"allow"] == b"head, post, patch, delete, options"
