"""Issue 13's client behaviour through the API, in memory: URLs without a prefix, already stored files,
renaming, downloads of a prefix, plain HTTP on an https:// URL.

The server's new answers (``GET /``, ``already_stored``) come from the
stand-in of ``tests.client.contract``; the rest from the real TransferSite
(the ``memory`` fixture).
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from gsitransfer.client import api
from gsitransfer.client.errors import NoPrefix, NotAFile, NotTLS, UsageError, explain
from gsitransfer.client.session import inline_runner

from .contract import KEY, ContractRoot, contract_site
from .memory import MemoryAgent


def stand_in(root: ContractRoot) -> dict[str, object]:
    agent = MemoryAgent(contract_site(root))
    return {"agent": agent, "http": agent.client(), "reactor": agent.reactor, "run_blocking": inline_runner}


def settle(options: dict[str, object], deferred):
    return options["agent"].settle(deferred)  # type: ignore[attr-defined]


def kwargs(options: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in options.items() if k != "agent"}


@pytest.mark.parametrize("url", ["http://test/", "http://test"])
def test_a_url_without_a_prefix_names_the_servers_prefixes(url):
    """ls of the server's root: GET / and one line naming every prefix, with an example."""
    root = ContractRoot(["/data/", "/perm/"])
    options = stand_in(root)
    with pytest.raises(NoPrefix) as refused:
        settle(options, api.list_files(url, http=options["http"], reactor=options["reactor"]))
    assert refused.value.message == (f"{url} names no prefix; this server has /data/ /perm/ \u2014 "
                                     "e.g. gsitransfer ls http://test/data")
    assert refused.value.exit_code == 2 and root.seen == [("GET", "/")]


def test_upload_without_a_prefix_sends_nothing(tmp_path):
    """upload to the root: the example is an upload command, and no manifest is posted."""
    root = ContractRoot(["/data/"])
    options = stand_in(root)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NoPrefix) as refused:
        settle(options, api.upload_files("http://test/", [tmp_path / "f"], **kwargs(options)))
    assert refused.value.message == ("http://test/ names no prefix; this server has /data/ \u2014 "
                                     "e.g. gsitransfer upload http://test/data FILE")
    assert root.seen == [("GET", "/")]


def test_a_server_that_does_not_list_its_prefixes():
    """An older server (404 for GET /): the line says so and shows the shape of a URL."""
    options = stand_in(ContractRoot([], lists=False))
    with pytest.raises(NoPrefix) as refused:
        settle(options, api.list_files("http://test/", http=options["http"], reactor=options["reactor"]))
    assert refused.value.message == ("http://test/ names no prefix; the server does not list its prefixes: "
                                     "add one to the URL, e.g. gsitransfer ls http://test/PREFIX")


def test_a_server_with_no_prefixes():
    """No prefix registered: said in so many words."""
    options = stand_in(ContractRoot([]))
    with pytest.raises(NoPrefix, match=r"^http://test/ names no prefix; this server has no prefixes$"):
        settle(options, api.list_files("http://test/", http=options["http"], reactor=options["reactor"]))


def test_already_stored_files_are_not_sent(tmp_path):
    """Files in the manifest answer's already_stored line get no body; they count as success."""
    root = ContractRoot(["/data/"], already_stored="0 2")
    options = stand_in(root)
    paths = []
    for name in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / name).write_bytes(name.encode() * 100)
        paths.append(tmp_path / name)
    report = settle(options, api.upload_files("http://test/data", paths, **kwargs(options)))
    assert report.ok and report.transfer_key == KEY
    assert [(f.name, f.already_stored, f.attempts) for f in report.files] == [
        ("a.bin", True, 0), ("b.bin", False, 1), ("c.bin", True, 0)]
    assert report.files[0].url == "http://test/data/a.bin"
    assert [seen for seen in root.seen if seen[0] == "POST"] == [("POST", "/data/manifest"),
                                                                ("POST", f"/data/{KEY}/1")]


def test_every_file_already_stored(tmp_path):
    """Nothing to send at all: still a success, one manifest and no body."""
    root = ContractRoot(["/data/"], already_stored="0")
    options = stand_in(root)
    (tmp_path / "a.bin").write_bytes(b"a")
    report = settle(options, api.upload_files("http://test/data", [tmp_path / "a.bin"], **kwargs(options)))
    assert report.ok and report.files[0].already_stored
    assert root.seen == [("POST", "/data/manifest")]


def test_upload_to_a_name_stores_under_it(memory, tmp_path):
    """URL/NAME with one file stores it as NAME (the real site); --as does the same."""
    (tmp_path / "local.txt").write_bytes(b"renamed content")
    report = memory.agent.settle(api.upload_files("http://test/data/renamed.txt", [tmp_path / "local.txt"],
                                                  **memory.blocking()))
    assert report.files[0].name == "renamed.txt" and report.url == "http://test/data"
    assert (memory.store / "renamed.txt").read_bytes() == b"renamed content"
    again = memory.agent.settle(api.upload_files("http://test/data", [tmp_path / "local.txt"], name="other.txt",
                                                 **memory.blocking()))
    assert again.files[0].name == "other.txt" and (memory.store / "other.txt").exists()


@pytest.mark.parametrize("url, files, name, message", [
    ("http://test/data/x.bin", 2, None, "http://test/data/x.bin names one file but 2 files are given: upload to "
     "the prefix http://test/data (files keep their names), or one file at a time to rename it"),
    ("http://test/data", 2, "x.bin", "--as NAME renames one file, not 2: upload them one at a time to rename them"),
    ("http://test/data/a/b", 1, None, "http://test/data/a/b is not an upload URL: give the prefix "
     "(http://test/data) -- files keep their names -- or the prefix and one new name for one file "
     "(http://test/data/NEWNAME)"),
    ("http://test/data/x.bin", 1, "y.bin", "the URL says to store the file as x.bin but --as says y.bin: "
     "give one of them"),
])
def test_renaming_that_cannot_work_is_refused_before_sending(memory, tmp_path, url, files, name, message):
    """Several files to URL/NAME, --as with several files, deeper paths, conflicting names: usage errors."""
    paths = []
    for number in range(files):
        (tmp_path / f"f{number}").write_bytes(b"x")
        paths.append(tmp_path / f"f{number}")
    with pytest.raises(UsageError) as refused:
        memory.agent.settle(api.upload_files(url, paths, name=name, **memory.blocking()))
    assert refused.value.message == message and refused.value.exit_code == 2
    assert memory.agent.requests == []


@pytest.mark.parametrize("url", ["http://test/data/", "http://test/data"])
def test_download_of_a_prefix_is_refused(memory, tmp_path, url):
    """A prefix is not a file: nothing is asked of the server and nothing saved."""
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(NotAFile) as refused:
        memory.agent.settle(api.download_file(url, dest, **memory.blocking()))
    listing = url if url.endswith("/") else url + "/"
    assert refused.value.message == (f"{url} is a prefix, not a file: list it with gsitransfer ls {listing}, "
                                     "or download names: gsitransfer download URL/NAME1 URL/NAME2 DEST/")
    assert memory.agent.requests == [] and list(dest.iterdir()) == []


def test_download_of_a_transfer_key_is_refused(memory, tmp_path):
    """A URL the server answers with JSON state (no validator): not saved as a file."""
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "a.bin").write_bytes(b"a")
    key = memory.agent.settle(api.upload_files(
        "http://test/data", [tmp_path / "up" / "a.bin"], **memory.blocking())).transfer_key
    (tmp_path / "down").mkdir()
    with pytest.raises(NotAFile, match=r"is a listing or a transfer's state, not a file"):
        memory.agent.settle(api.download_file(f"http://test/data/{key}", tmp_path / "down", **memory.blocking()))
    assert list((tmp_path / "down").iterdir()) == []


def test_a_plain_http_answer_to_tls_is_said_in_words():
    """OpenSSL's "wrong version number" on an https:// URL: the port speaks plain HTTP, use http://."""
    error = SSL.Error([("SSL routines", "", "wrong version number")])
    explained = explain(error, "https://localhost:8080/data")
    assert isinstance(explained, NotTLS) and explained.exit_code == 4
    assert explained.message == ("localhost:8080 answered in plain HTTP, not TLS: use http://localhost:8080/data "
                                 "(or the server's TLS port)")
