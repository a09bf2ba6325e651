"""WebDAV in memory (real files, no sockets): PROPFIND Depth 0/1, DELETE by the uploader, MKCOL 405, OPTIONS DAV: 1."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from gsitransfer.identity import IdToken
from gsitransfer.store import DirectoryStore
from gsitransfer.testing import MemoryHandler, SiteConnection
from gsitransfer.web import HTTPTransferServer
from gsitransfer.web.dav import parse_propfind
from gsitransfer.web.status import BadRequest

from .wire import answers

D = "{DAV:}"
BODY = b"0123456789" * 1000


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(str(tmp_path / "store"))


@pytest.fixture
def server(store: DirectoryStore) -> HTTPTransferServer:
    s = HTTPTransferServer(public_url="http://test")
    s.offload_threshold = None
    s.RegisterPrefix("data", store)
    return s


def send(server: HTTPTransferServer, method: str, path: str, *headers: str, body: bytes = b"") -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One request on a new (anonymous) connection; its answer."""
    conn = SiteConnection(server.site())
    lines = [f"{method} {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *headers]
    conn.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    conn.clock.advance(0)
    return answers(conn.output())[-1]


def put(server: HTTPTransferServer, name: str, body: bytes = BODY) -> None:
    status, _, text = send(server, "PUT", "/data/" + urllib.parse.quote(name), body=body)
    assert status.startswith(b"HTTP/1.1 201"), text


def responses(xml_body: bytes) -> dict[str, dict[str, Any]]:
    """href (decoded) -> {property local name: text or child tags} of the 200 propstats, plus '404': names."""
    root = ET.fromstring(xml_body)
    assert root.tag == f"{D}multistatus"
    out: dict[str, dict[str, Any]] = {}
    for response in root.findall(f"{D}response"):
        href = urllib.parse.unquote(response.findtext(f"{D}href") or "")
        props: dict[str, Any] = {}
        for propstat in response.findall(f"{D}propstat"):
            status = propstat.findtext(f"{D}status")
            for prop in propstat.find(f"{D}prop") or []:
                name = prop.tag.replace(D, "")
                if status and "404" in status:
                    props.setdefault("404", []).append(prop.tag)
                else:
                    props[name] = [child.tag for child in prop] if len(prop) else (prop.text or "")
        out[href] = props
    return out


def test_propfind_depth_1_lists_the_collection_and_its_files(server):
    """Depth 1 on /data/: the collection (resourcetype collection) and each file with size, etag, dates, type."""
    put(server, "a.txt")
    put(server, "b c & d.bin", b"xyz")
    status, headers, body = send(server, "PROPFIND", "/data/", "Depth: 1")
    assert status.startswith(b"HTTP/1.1 207"), body
    assert headers[b"content-type"].startswith(b"application/xml")
    found = responses(body)
    assert set(found) == {"/data/", "/data/a.txt", "/data/b c & d.bin"}
    assert found["/data/"]["resourcetype"] == [f"{D}collection"]
    a = found["/data/a.txt"]
    assert a["getcontentlength"] == str(len(BODY)) and a["displayname"] == "a.txt"
    assert a["resourcetype"] == "" and a["getcontenttype"] == "text/plain"
    assert a["getlastmodified"].endswith(" GMT") and a["creationdate"].endswith("Z")
    get = send(server, "GET", "/data/a.txt")
    assert get[1][b"etag"].decode() == a["getetag"]


def test_propfind_depth_0_and_on_a_file(server):
    """Depth 0 on the prefix: the collection alone; on a file: that file; a missing name: 404."""
    put(server, "one.dat")
    status, _, body = send(server, "PROPFIND", "/data/", "Depth: 0")
    assert status.startswith(b"HTTP/1.1 207") and set(responses(body)) == {"/data/"}
    status, _, body = send(server, "PROPFIND", "/data/one.dat", "Depth: 0")
    assert status.startswith(b"HTTP/1.1 207")
    assert responses(body)["/data/one.dat"]["getcontentlength"] == str(len(BODY))
    status, _, _ = send(server, "PROPFIND", "/data/none.dat", "Depth: 0")
    assert status.startswith(b"HTTP/1.1 404")


@pytest.mark.parametrize("depth", [None, "infinity", "Infinity"])
def test_depth_infinity_or_none_is_403(server, depth):
    """Depth: infinity, or no Depth (which means it), is 403 with the reason."""
    status, _, body = send(server, "PROPFIND", "/data/", *([f"Depth: {depth}"] if depth else []))
    assert status.startswith(b"HTTP/1.1 403") and b"Depth: 0 or Depth: 1" in body


def test_prop_asks_for_some_and_unknown_ones_are_404(server):
    """<prop> with getcontentlength and an unknown property: the first in a 200 propstat, the other in a 404 one."""
    put(server, "p.dat")
    ask = (b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="urn:x">'
           b"<D:prop><D:getcontentlength/><X:color/></D:prop></D:propfind>")
    status, _, body = send(server, "PROPFIND", "/data/p.dat", "Depth: 0", body=ask)
    assert status.startswith(b"HTTP/1.1 207"), body
    props = responses(body)["/data/p.dat"]
    assert props["getcontentlength"] == str(len(BODY)) and "getetag" not in props
    assert props["404"] == ["{urn:x}color"]


def test_propname_names_the_properties(server):
    """<propname/>: the names, no values."""
    put(server, "n.dat")
    ask = b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
    status, _, body = send(server, "PROPFIND", "/data/n.dat", "Depth: 0", body=ask)
    props = responses(body)["/data/n.dat"]
    assert props["getetag"] == "" and props["getcontentlength"] == ""


@pytest.mark.parametrize("body, reason", [
    (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>', b"DTD"),
    (b"<D:propfind xmlns:D='DAV:'><D:allprop/>", b"well-formed"),
    (b"<propfind><allprop/></propfind>", b"DAV: propfind"),
])
def test_bad_propfind_bodies_are_400(server, body, reason):
    """A DTD (never parsed), broken XML, or another element: 400 with the reason."""
    status, _, text = send(server, "PROPFIND", "/data/", "Depth: 1", body=body)
    assert status.startswith(b"HTTP/1.1 400") and reason in text, text


def test_a_large_propfind_body_is_413(server):
    """A PROPFIND body over 64 KiB is refused from its Content-Length."""
    status, _, _ = send(server, "PROPFIND", "/data/", "Depth: 1", body=b" " * (65 * 1024))
    assert status.startswith(b"HTTP/1.1 413")


def test_parse_propfind_is_linear_and_allprop_by_default():
    """An empty body is allprop; many nested elements parse without expansion."""
    assert parse_propfind(b"").names is None
    deep = b'<D:propfind xmlns:D="DAV:"><D:prop>' + b"<D:x/>" * 5000 + b"</D:prop></D:propfind>"
    assert len(parse_propfind(deep).names or ()) == 5000
    with pytest.raises(BadRequest):
        parse_propfind(b'<!doctype x><D:propfind xmlns:D="DAV:"/>')


def test_names_are_escaped_in_xml_and_encoded_in_hrefs(server, store, tmp_path):
    """A name with &, ', %, spaces and UTF-8: well-formed XML, its href percent-encoded, decoding to the name."""
    name = "x &amp; 'y' & 100% é 日本.txt"
    put(server, name, b"1")
    status, _, body = send(server, "PROPFIND", "/data/", "Depth: 1")
    assert b"%25" in body and "日本".encode() not in body.split(b"<D:href>", 2)[-1].split(b"</D:href>")[0]
    found = responses(body)
    assert found[f"/data/{name}"]["displayname"] == name


def test_a_handler_without_listing_gives_the_collection_alone(tmp_path):
    """A prefix whose handler cannot list: Depth 1 answers the collection only."""
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", MemoryHandler(str(tmp_path)))
    status, _, body = send(server, "PROPFIND", "/data/", "Depth: 1")
    assert status.startswith(b"HTTP/1.1 207") and set(responses(body)) == {"/data/"}


def test_delete_by_the_uploader_is_204_and_forgets_the_file(server, store, tmp_path):
    """The uploader (anonymous here) deletes its file: 204, the file and its row gone; a second DELETE is 404."""
    put(server, "gone.dat")
    status, _, body = send(server, "DELETE", "/data/gone.dat")
    assert status.startswith(b"HTTP/1.1 204"), body
    assert not (tmp_path / "store" / "gone.dat").exists()
    assert store.metadata.get("gone.dat") is None
    assert send(server, "DELETE", "/data/gone.dat")[0].startswith(b"HTTP/1.1 404")
    put(server, "gone.dat")  # the name is free again


def test_delete_by_another_identity_is_403(store, tmp_path):
    """The store's DeleteFile: only the uploader's DN may delete (another is 403, the file stays)."""
    alice, bob = IdToken("/O=Grid/CN=alice"), IdToken("/O=Grid/CN=bob")
    (tmp_path / "store" / "f.dat").write_bytes(b"x")
    from gsitransfer.errors import NotAuthorized

    with pytest.raises(NotAuthorized):  # no recorded uploader: nobody's to delete
        store.DeleteFile(alice, "f.dat")
    os.unlink(tmp_path / "store" / "f.dat")
    assert store.CanUpload(alice, {"name": "f.dat", "size": 1, "checksum": None})
    store.AddPendingUpload(alice, "f.dat")
    (tmp_path / "store" / "f.dat").write_bytes(b"x")
    store.CompleteUpload(alice, {"name": "f.dat", "size": 1, "checksum": hashlib.md5(b"x").hexdigest()})
    with pytest.raises(NotAuthorized):
        store.DeleteFile(bob, "f.dat")
    assert (tmp_path / "store" / "f.dat").exists()
    store.DeleteFile(alice, "f.dat")
    assert not (tmp_path / "store" / "f.dat").exists()


def test_a_file_being_uploaded_cannot_be_deleted(store, tmp_path):
    """A pending name is a conflict (409 over HTTP: UploadConflict)."""
    from gsitransfer.errors import UploadConflict

    alice = IdToken("/O=Grid/CN=alice")
    store.AddPendingUpload(alice, "p.dat")
    with pytest.raises(UploadConflict):
        store.DeleteFile(alice, "p.dat")


def test_delete_without_the_capability_is_405(tmp_path):
    """A handler without DeleteFile: DELETE is 405, its Allow without DELETE."""
    server = HTTPTransferServer(public_url="http://test")
    server.RegisterPrefix("data", MemoryHandler(str(tmp_path)))
    status, headers, _ = send(server, "DELETE", "/data/f.dat")
    assert status.startswith(b"HTTP/1.1 405")
    assert b"DELETE" not in headers[b"allow"] and b"PROPFIND" in headers[b"allow"]


def test_mkcol_is_405_and_options_say_dav_1(server):
    """MKCOL is 405 (flat stores); OPTIONS on a file and on the prefix answer DAV: 1 and Allow with PROPFIND."""
    status, headers, _ = send(server, "MKCOL", "/data/sub")
    assert status.startswith(b"HTTP/1.1 405")
    for path in ("/data/f.dat", "/data/"):
        status, headers, _ = send(server, "OPTIONS", path)
        assert headers[b"dav"] == b"1" and b"PROPFIND" in headers[b"allow"], headers
