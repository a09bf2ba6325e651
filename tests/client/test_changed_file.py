"""A file that changes on the server between an interrupted download and its resumption.

The server here is a small twisted.web resource in memory (Twisted's real
Agent talks to it through ``tests.client.memory``): it honours ``Range`` but
ignores ``If-Range``, sends an ``ETag`` and no digest -- the answer a server
without the If-Range half of issue 12 finding 8 gives. The client must notice
the new validator on the ``206`` itself and fetch the file again from byte
0, never splice the old bytes and the new ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gsitransfer.client import api
from gsitransfer.client.errors import DownloadInterrupted
from gsitransfer.client.partial import PartialDownload, PartialMeta
from gsitransfer.client.session import inline_runner

from .memory import MemoryAgent

URL = "http://test/data/report.csv"
OLD = b"old," * 25_000
NEW = b"NEW;" * 25_000  # the same size: only the validator tells the versions apart


class ChangingFile(Resource):
    """One file the test replaces; ``Range: bytes=N-`` honoured, ``If-Range`` ignored, no digest."""

    isLeaf = True

    def __init__(self, content: bytes, etag: str, last_modified: str | None = None) -> None:
        super().__init__()
        self.content = content
        self.etag = etag
        self.last_modified = last_modified
        #: bytes of the body sent before the connection is cut (None: the whole body)
        self.cut_after: int | None = None

    def render_GET(self, request: Request) -> bytes | int:
        start = 0
        asked = request.getHeader(b"range")
        if asked is not None:
            match = re.fullmatch(rb"bytes=(\d+)-", asked)
            assert match is not None
            start = int(match.group(1))
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes {start}-{len(self.content) - 1}/{len(self.content)}")
        if self.etag:
            request.setHeader(b"etag", self.etag)
        if self.last_modified:
            request.setHeader(b"last-modified", self.last_modified)
        body = self.content[start:]
        request.setHeader(b"content-length", str(len(body)))
        if self.cut_after is None:
            return body
        request.write(body[: self.cut_after])
        assert request.channel is not None and request.channel.transport is not None
        request.channel.transport.loseConnection()
        return NOT_DONE_YET


def serve(resource: ChangingFile) -> MemoryAgent:
    """An in-memory client whose every connection reaches ``resource``."""
    root = Resource()
    data = Resource()
    root.putChild(b"data", data)
    data.putChild(b"report.csv", resource)
    return MemoryAgent(Site(root))


def download(agent: MemoryAgent, target: Path, **options: object):
    """``api.download_file`` against the in-memory server, run to its end."""
    return agent.settle(api.download_file(URL, target, http=agent.client(), reactor=agent.reactor,
                                          run_blocking=inline_runner, **options))


def cut_download(tmp_path: Path) -> tuple[ChangingFile, MemoryAgent, Path]:
    """Version 1 served, the download cut after 40 000 bytes (kept as a partial): server, agent, target."""
    server = ChangingFile(OLD, '"v1"')
    server.cut_after = 40_000
    agent = serve(server)
    target = tmp_path / "report.csv"
    with pytest.raises(DownloadInterrupted):
        download(agent, target, retries=0)
    return server, agent, target


def test_a_file_replaced_between_the_cut_and_the_resume_is_fetched_whole(tmp_path: Path) -> None:
    """Cut after 40 000 bytes of version 1; version 2 answers the resume with 206 and a new ETag: fetched again from 0."""
    server, agent, target = cut_download(tmp_path)
    partial = PartialDownload.beside(target)
    assert partial.temp.read_bytes() == OLD[:40_000] and not target.exists()

    server.content, server.etag, server.cut_after = NEW, '"v2"', None
    report = download(agent, target)
    assert target.read_bytes() == NEW
    assert report.resumed_from == 0 and not report.verified
    resumed, fresh = agent.requests[-2:]
    assert resumed[2][b"range"] == [b"bytes=40000-"] and resumed[2][b"if-range"] == [b'"v1"']
    assert b"range" not in fresh[2]
    assert not partial.temp.exists() and not partial.meta.exists()


def test_a_206_of_the_same_version_is_appended(tmp_path: Path) -> None:
    """The same file and ETag after the cut: the resume appends to the 40 000 bytes kept."""
    server, agent, target = cut_download(tmp_path)
    server.cut_after = None
    report = download(agent, target)
    assert target.read_bytes() == OLD and report.resumed_from == 40_000


@pytest.mark.parametrize(
    "validator",
    ['W/"v1"', "Tue, 01 Dec 2026 10:00:00 GMT"],
    ids=["weak-etag", "last-modified"],
)
def test_a_validator_that_cannot_tell_versions_apart_is_not_resumed_without_an_md5(
    tmp_path: Path, validator: str
) -> None:
    """Partial bytes saved under a weak ETag or a date, and no MD5 known: the file is fetched whole, no Range sent."""
    weak = validator.startswith("W/")
    server = ChangingFile(NEW, validator if weak else "", None if weak else validator)
    agent = serve(server)
    target = tmp_path / "report.csv"
    partial = PartialDownload.beside(target)
    partial.temp.write_bytes(OLD[:40_000])
    partial.save(PartialMeta(URL, validator, len(OLD), None))
    report = download(agent, target)
    assert target.read_bytes() == NEW and report.resumed_from == 0
    assert b"range" not in agent.requests[-1][2]
