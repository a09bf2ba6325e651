"""A stand-in for the server's issue-13 and issue-14 answers, to test the client in memory without them.

:class:`ContractRoot` is a plain twisted.web resource answering what the wire
contracts say a server answers:

* issue 13: ``GET /`` with ``{"prefixes": [...]}`` (``lists=False``: an
  older server's ``404``), ``already_stored`` in the manifest answer;
* issue 14 (``/tmp/i14/contract.md``, SPEC 7.1): each file of the manifest
  holds bytes (:class:`HeldFile`); ``held={num: bytes}`` are bytes an
  earlier, interrupted upload left (what the server's take-over carries over)
  and make the manifest answer ``resume_from: 0=N``; ``HEAD`` and ``PATCH``
  on ``/data/<key>/<n>`` with tus 1.0 core semantics (``Upload-Offset``,
  ``409`` on a wrong offset, ``415``, ``204``; the MD5 of the whole file
  checked on its last byte: ``422`` and the offset back to 0); a ``POST``
  cut off keeps what arrived; the transfer's state (``GET /data/<key>``) has
  each file's ``offset``. ``claims={num: n}`` makes ``resume_from`` say
  ``n`` instead of the bytes held (a stale answer: the PATCH gets ``409``).
  ``resumes=False`` answers ``405`` (or ``old_status``: the issue-13
  server answers ``HEAD`` there with ``404``, taking the URL for a
  download's) to ``HEAD`` and ``PATCH`` on a file URL, as a server from
  before issue 14 does.

``faults`` are injected failures, each used once, in order, by the first
request it matches (:class:`Fault`): a body cut after ``keep`` bytes (the
connection dropped without an answer), or a status. Every request is
recorded in ``seen`` as ``(method, path)`` and in ``log`` as an
:class:`Arrival` (with the time on the agent's clock and the body's length).
Served by ``tests.client.memory.MemoryAgent`` (:func:`stand_in`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET, Request

from gsitransfer.client.session import inline_runner
from gsitransfer.manifest import parse_manifest

from .memory import MemoryAgent

KEY = "k" * 32


@dataclass
class HeldFile:
    """One file of the stand-in's transfer: what the manifest said and the bytes held."""

    name: str
    size: int
    md5: str
    held: bytearray = field(default_factory=bytearray)
    stored: bool = False

    @property
    def offset(self) -> int:
        return self.size if self.stored else len(self.held)


@dataclass
class Fault:
    """An injected failure for the next ``method`` on file ``num``: ``cut`` after ``keep`` bytes, or ``status``."""

    method: str
    num: int
    cut: bool = False
    keep: int = 0
    status: int = 503
    reason: str = "busy, try again later"


@dataclass(frozen=True)
class Arrival:
    """A request as the stand-in saw it."""

    time: float
    method: str
    path: str
    #: the Upload-Offset header (PATCH), else None
    offset: int | None
    #: bytes of body received
    length: int


class ContractRoot(resource.Resource):
    """``/`` and ``/data/...``: prefixes, manifests, bodies (POST and PATCH), HEAD, the transfer's state."""

    isLeaf = True

    def __init__(self, prefixes: list[str], lists: bool = True, already_stored: str = "",
                 held: dict[int, bytes] | None = None, resumes: bool = True, faults: list[Fault] | None = None,
                 claims: dict[int, int] | None = None, old_status: int = 405) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.lists = lists
        self.already_stored = already_stored
        self.preheld = dict(held or {})
        self.resumes = resumes
        self.claims = dict(claims or {})
        self.old_status = old_status
        self.faults = list(faults or [])
        self.files: list[HeldFile] = []
        self.seen: list[tuple[str, str]] = []
        self.log: list[Arrival] = []
        self.clock: IReactorTime | None = None
        #: the last manifest's ``[manifest] commit`` (``each`` or ``atomic``)
        self.commit = ""

    def render(self, request: Request) -> Any:
        method, path = request.method.decode(), request.path.decode()
        body = request.content.read()
        self.seen.append((method, path))
        offset_text = (request.getHeader("upload-offset") or "").strip()
        self.log.append(Arrival(self.clock.seconds() if self.clock else 0.0, method, path,
                                int(offset_text) if offset_text.isdigit() else None, len(body)))
        if path == "/" and method == "GET":
            if not self.lists:
                request.setResponseCode(404)
                return b"no prefix in the path: use /<prefix>/\n"
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"prefixes": self.prefixes}).encode()
        if path == "/data/manifest" and method == "POST":
            return self.manifest(body)
        if path == f"/data/{KEY}" and method == "GET":
            return self.state(request)
        if path.startswith(f"/data/{KEY}/") and path.rsplit("/", 1)[1].isdigit():
            return self.file(request, method, int(path.rsplit("/", 1)[1]), body)
        return self.refuse(request, 404, "not in this stand-in")

    # -- the manifest and the transfer ---------------------------------------------------

    def manifest(self, body: bytes) -> bytes:
        manifest = parse_manifest(body)
        self.commit = manifest.commit
        entries = manifest.files
        self.files = [HeldFile(e.name, e.size, e.checksum, bytearray(self.preheld.get(e.num, b""))) for e in entries]
        stored = f"already_stored: {self.already_stored}\n" if self.already_stored else ""
        points = " ".join(f"{num}={self.claims.get(num, len(f.held))}" for num, f in enumerate(self.files) if f.held)
        resume = f"resume_from: {points}\n" if points else ""
        return f"return_code: 0\ntransfer_key: {KEY}\n{stored}{resume}".encode()

    def state(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({
            "transfer_key": KEY, "prefix": "data", "owner": None, "created": 0.0, "expires": 86400.0,
            "complete": all(f.stored for f in self.files),
            "files": [{"file_num": num, "name": f.name, "size": f.size, "checksum": f.md5,
                       "state": "stored" if f.stored else ("receiving" if f.held else "pending"),
                       "url": f"http://test/data/{f.name}" if f.stored else None, "offset": f.offset}
                      for num, f in enumerate(self.files)],
        }).encode()

    # -- one file --------------------------------------------------------------------------

    def file(self, request: Request, method: str, num: int, body: bytes) -> Any:
        if num >= len(self.files):
            return self.refuse(request, 404, f"no file {num} in transfer")
        entry = self.files[num]
        if method in ("HEAD", "PATCH") and not self.resumes:
            if self.old_status == 405:
                request.setHeader(b"allow", b"POST")
            return self.refuse(request, self.old_status, f"method {method} not allowed here")
        fault = self.fault(method, num)
        if fault is not None and not fault.cut:
            return self.refuse(request, fault.status, fault.reason)
        if method == "HEAD":
            self.tus(request, entry)
            request.setHeader(b"upload-length", str(entry.size).encode())
            request.setHeader(b"cache-control", b"no-store")
            return b""
        if method == "POST":
            entry.held = bytearray()
            return self.receive(request, entry, body, fault, lambda: b"return_code: 0\nurl: http://test/data/sent\n")
        if method == "PATCH":
            if request.getHeader("content-type") != "application/offset+octet-stream":
                return self.refuse(request, 415, "PATCH needs Content-Type: application/offset+octet-stream")
            offset = request.getHeader("upload-offset") or ""
            if not offset.isdigit():
                return self.refuse(request, 400, "Upload-Offset missing or not a number")
            if int(offset) != entry.offset:
                self.tus(request, entry)
                return self.refuse(request, 409, f"offset {offset} does not match the {entry.offset} bytes held")

            def patched() -> bytes:
                request.setResponseCode(204)
                self.tus(request, entry)
                return b""

            return self.receive(request, entry, body, fault, patched)
        request.setHeader(b"allow", b"HEAD, PATCH, POST")
        return self.refuse(request, 405, f"method {method} not allowed")

    def receive(self, request: Request, entry: HeldFile, body: bytes, fault: Fault | None, answer: Any) -> Any:
        """Append ``body`` (all of it, or ``fault.keep`` bytes and drop the connection); check the last byte."""
        if fault is not None:
            entry.held += body[:fault.keep]
            if len(entry.held) == entry.size and hashlib.md5(entry.held).hexdigest() == entry.md5:
                entry.stored = True  # stored, and then the answer was lost
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if len(entry.held) + len(body) > entry.size:
            return self.refuse(request, 413, "body passes the manifest size")
        entry.held += body
        if len(entry.held) == entry.size:
            if hashlib.md5(entry.held).hexdigest() != entry.md5:
                entry.held = bytearray()
                return self.refuse(request, 422, f"checksum mismatch for {entry.name}")
            entry.stored = True
        return answer()

    def fault(self, method: str, num: int) -> Fault | None:
        for index, fault in enumerate(self.faults):
            if fault.method == method and fault.num == num:
                return self.faults.pop(index)
        return None

    @staticmethod
    def tus(request: Request, entry: HeldFile) -> None:
        request.setHeader(b"tus-resumable", b"1.0.0")
        request.setHeader(b"upload-offset", str(entry.offset).encode())

    @staticmethod
    def refuse(request: Request, status: int, reason: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{reason}\n".encode()

    # -- what the tests read ----------------------------------------------------------------

    def bodies(self, num: int) -> list[Arrival]:
        """The POSTs and PATCHes that reached file ``num``, in order."""
        return [a for a in self.log if a.method in ("POST", "PATCH") and a.path == f"/data/{KEY}/{num}"]


def contract_site(root: ContractRoot) -> server.Site:
    """A Site for ``root`` (MemoryAgent sets its reactor)."""
    return server.Site(root)


def stand_in(root: ContractRoot) -> dict[str, object]:
    """The stand-in served in memory: ``agent`` and the keyword arguments of an api call (MD5s inline)."""
    agent = MemoryAgent(contract_site(root))
    root.clock = agent.reactor
    return {"agent": agent, "http": agent.client(), "reactor": agent.reactor, "run_blocking": inline_runner}


__all__ = ["KEY", "Arrival", "ContractRoot", "Fault", "HeldFile", "contract_site", "stand_in"]
