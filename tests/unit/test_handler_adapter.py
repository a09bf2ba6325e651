"""HandlerAdapter: each handler adapted once, at registration, into typed callbacks.

Capabilities come from the interfaces a handler declares, else from the
methods it has when it is registered; every callback may answer with a value,
a Deferred or a coroutine. No reactor: Deferreds are inspected directly.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from zope.interface import implementer

from gsitransfer import (
    ANONYMOUS,
    DownloadTarget,
    FileNotFound,
    IBatchPendingHandler,
    IListingHandler,
    TransferEngine,
)
from gsitransfer.handler import HandlerAdapter
from gsitransfer.manifest import Manifest
from tests.support.deferreds import result_of
from tests.support.engine import ALICE, MANIFEST, RecordingHandler


class Bare:
    """A handler with no callbacks at all."""


class Probed:
    """Records every attribute looked up that it does not have (each a probe)."""

    def __init__(self) -> None:
        self.probes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.probes.append(name)
        raise AttributeError(name)

    def GetUploadFilename(self, id_token: Any, file_info: dict[str, object]) -> str:
        return "/srv/" + str(file_info["name"])


@implementer(IListingHandler, IBatchPendingHandler)
class Declared:
    """Declares listing and batching; gets its methods only after registration."""


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def engine(handler: RecordingHandler) -> TransferEngine:
    e = TransferEngine()
    e.register("data", handler)
    return e


def test_a_bare_handler_answers_as_the_seed_did():
    """No callbacks: every file may be uploaded, none gets a path, no listing and no downloads."""
    adapter = HandlerAdapter(Bare())
    assert (adapter.gates_uploads, adapter.batches_pending, adapter.can_list, adapter.serves_downloads) == (
        False,
        False,
        False,
        False,
    )
    assert result_of(adapter.can_upload(ANONYMOUS, {"name": "f"})) is True
    assert result_of(adapter.get_upload_filename(ANONYMOUS, {"name": "f"})) is None
    assert result_of(adapter.add_pending_upload(ANONYMOUS, "f")) is None
    assert result_of(adapter.complete_upload(ANONYMOUS, {"name": "f"})) is None
    assert result_of(adapter.cancel_pending_upload(ANONYMOUS, "f")) is None
    with pytest.raises(FileNotFound, match="cannot be listed"):
        result_of(adapter.list_files(ANONYMOUS))
    with pytest.raises(FileNotFound, match="serves no downloads"):
        adapter.get_download_filename_now(ANONYMOUS, "f")
    with pytest.raises(TypeError):
        adapter.add_pending_uploads(ANONYMOUS, ["f"])


def test_seed_handler_capabilities_come_from_its_methods():
    """A handler declaring no interface is capable of exactly the callbacks it has."""
    adapter = HandlerAdapter(RecordingHandler())
    assert adapter.gates_uploads and adapter.serves_downloads
    assert not adapter.can_list and not adapter.batches_pending


def test_a_callback_added_after_registration_is_never_called():
    """Capabilities are decided once: CanUpload and ListFiles added later are not called."""
    handler = Bare()
    engine = TransferEngine()
    engine.register("data", handler)
    asked: list[str] = []
    handler.CanUpload = lambda token, info: asked.append(info["name"]) or False  # type: ignore[attr-defined]
    handler.ListFiles = lambda token: asked.append("list") or []  # type: ignore[attr-defined]
    assert result_of(engine.post_manifest("data", MANIFEST, ALICE)).accepted
    with pytest.raises(FileNotFound):
        result_of(engine.list_files("data", ALICE))
    assert asked == []


def test_callbacks_are_not_probed_after_registration():
    """Calls after registration look up no callback the handler lacks."""
    handler = Probed()
    engine = TransferEngine()
    engine.register("data", handler)
    probed_at_registration = set(handler.probes)
    assert {"CanUpload", "AddPendingUploads", "ListFiles"} <= probed_at_registration
    handler.probes.clear()
    key = result_of(engine.post_manifest("data", MANIFEST, ALICE)).transfer_key
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    result_of(engine.verify_upload(ticket, "a" * 32, 3))
    result_of(engine.complete_upload(ticket))
    result_of(engine.cancel_transfer("data", key, ALICE))
    with pytest.raises(FileNotFound):
        engine.resolve_download_now("data", "a.txt", ALICE)
    assert handler.probes == []
    assert ticket.final_path == "/srv/a.txt"


def test_a_callback_replaced_after_registration_is_the_one_called(engine, handler):
    """A handler that has a callback may swap it later: the current method answers."""
    handler.GetDownloadFilename = lambda token, path: "/elsewhere/" + path  # type: ignore[method-assign]
    assert engine.resolve_download_now("data", "f", ALICE) == DownloadTarget("/elsewhere/f")


def test_coroutine_callbacks_give_deferreds_with_their_results():
    """An ``async def`` callback's result arrives through the adapter's Deferred."""

    class Async:
        async def CanUpload(self, token: Any, info: dict[str, object]) -> bool:
            return info["name"] == "ok"

        async def ListFiles(self, token: Any) -> list[dict[str, object]]:
            return [{"name": "ok"}]

    adapter = HandlerAdapter(Async())
    assert result_of(adapter.can_upload(ANONYMOUS, {"name": "ok"})) is True
    assert result_of(adapter.can_upload(ANONYMOUS, {"name": "no"})) is False
    assert result_of(adapter.list_files(ANONYMOUS)) == [{"name": "ok"}]


def test_a_declared_interface_is_trusted_without_probing():
    """A handler declaring IListingHandler and IBatchPendingHandler has those capabilities."""
    handler = Declared()
    engine = TransferEngine()
    engine.register("data", handler)
    adapter = engine.adapter_for("data")
    assert adapter is not None and adapter.can_list and adapter.batches_pending
    batches: list[list[str]] = []
    handler.ListFiles = lambda token: [{"name": "a.txt"}]  # type: ignore[attr-defined]
    handler.AddPendingUploads = lambda token, names: batches.append(names)  # type: ignore[attr-defined]
    assert result_of(engine.list_files("data", ALICE)) == [{"name": "a.txt"}]
    assert result_of(engine.post_manifest("data", MANIFEST, ALICE)).accepted
    assert batches == [["a.txt", "b.txt"]]


def test_a_plain_download_answer_is_given_without_a_deferred(engine):
    """resolve_download_now answers a handler's plain return value synchronously."""
    answer = engine.resolve_download_now("data", "dir/f.txt", ALICE)
    assert answer == DownloadTarget("/srv/dir/f.txt")
    with pytest.raises(FileNotFound):
        engine.resolve_download_now("data", "missing", ALICE)


def test_a_deferred_download_answer_stays_a_deferred(engine, handler):
    """A handler answering with a Deferred gets a Deferred of the DownloadTarget."""
    later: defer.Deferred[str] = defer.Deferred()
    handler.GetDownloadFilename = lambda token, path: later  # type: ignore[method-assign]
    answer = engine.resolve_download_now("data", "f", ALICE)
    assert isinstance(answer, defer.Deferred) and not answer.called
    later.callback("/x/f")
    assert result_of(answer) == DownloadTarget("/x/f")


def test_the_adapter_keeps_the_handler_as_given(engine, handler):
    """handler_for gives back the registered object, not its adapter."""
    assert engine.handler_for("data") is handler
    adapter = engine.adapter_for("data")
    assert isinstance(adapter, HandlerAdapter) and adapter.handler is handler
    assert engine.adapter_for("nope") is None


def test_a_batching_handler_gets_the_names_in_one_call():
    """A batching handler declaring only IBatchPendingHandler gets the names in one call."""

    @implementer(IBatchPendingHandler)
    class Batches:
        def __init__(self) -> None:
            self.batches: list[list[str]] = []

        def AddPendingUploads(self, token: Any, names: list[str]) -> None:
            self.batches.append(names)

    handler = Batches()
    engine = TransferEngine()
    engine.register("data", handler)
    body = Manifest.of(*((f"f{n}", 0, "d41d8cd98f00b204e9800998ecf8427e") for n in range(5))).to_ini().encode()
    assert result_of(engine.post_manifest("data", body, ALICE)).accepted
    assert handler.batches == [[f"f{n}" for n in range(5)]]


def test_a_delegating_handler_is_adapted_from_what_it_delegates():
    """A handler answering every attribute through ``__getattr__`` registers and is called."""

    class Delegating:
        def __init__(self, inner: RecordingHandler) -> None:
            self.inner = inner

        def __getattr__(self, callback: str) -> Any:
            return getattr(self.inner, callback)

    inner = RecordingHandler()
    engine = TransferEngine()
    engine.register("data", Delegating(inner))
    adapter = engine.adapter_for("data")
    assert adapter is not None and adapter.gates_uploads and not adapter.batches_pending
    assert result_of(engine.post_manifest("data", MANIFEST, ALICE)).accepted
    assert inner.names("AddPendingUpload") == ["a.txt", "b.txt"]
