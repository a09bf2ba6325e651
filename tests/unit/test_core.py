"""TransferEngine, the protocol-neutral core: prefixes, manifests, the upload state machine,
expiry; and TransferServer, the seed's facade over it (CapWords delegates, descriptors).

No reactor: handlers here answer synchronously (or with Deferreds fired by the
test), so every Deferred is inspected directly.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from gsitransfer import (
    ChecksumMismatch,
    FileNotFound,
    IdToken,
    LengthMismatch,
    LengthRequired,
    ManifestError,
    NotAuthorized,
    TransferEngine,
    TransferServer,
    UploadConflict,
)
from gsitransfer.core import next_state
from gsitransfer.keys import FileState
from tests.support.deferreds import result_of

from tests.support.engine import ALICE, BOB, MANIFEST, MD5_A, Clock, RecordingHandler


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def engine(clock: Clock, handler: RecordingHandler) -> TransferEngine:
    e = TransferEngine(clock=clock, manifest_ttl=60)
    e.register("data", handler)
    return e


@pytest.fixture
def facade(engine: TransferEngine) -> TransferServer:
    return TransferServer(engine=engine, public_url="https://host:8443/")


def post(engine: TransferEngine, token: IdToken = ALICE, body: bytes = MANIFEST) -> str:
    outcome = result_of(engine.post_manifest("data", body, token))
    assert outcome.accepted, outcome.error_reason
    return outcome.transfer_key


def test_prefix_registry(engine, handler):
    """register/handler_for: the handler as given, or None for an unknown prefix."""
    assert engine.handler_for("data") is handler
    assert engine.handler_for("other") is None
    with pytest.raises(ValueError):
        engine.register("a/b", handler)


def test_descriptors(facade):
    """GetUploadDescriptor/GetDownloadDescriptor give URLs with the path percent-encoded."""
    assert facade.GetUploadDescriptor("data") == "https://host:8443/data"
    assert facade.GetDownloadDescriptor("data", "dir/a b%.txt") == "https://host:8443/data/dir/a%20b%25.txt"


def test_register_and_lookup(engine, clock):
    """register_manifest binds a key; upload_information answers until it expires."""
    key = engine.register_manifest(MANIFEST, ALICE, "data")
    info = engine.upload_information(key, 0)
    assert (info["name"], info["size"], info["checksum"]) == ("a.txt", 3, MD5_A)
    assert engine.upload_information(key, "1")["name"] == "b.txt"
    for bad in (2, "x", "-1", "0x1"):
        with pytest.raises(FileNotFound):
            engine.upload_information(key, bad)
    with pytest.raises(FileNotFound):
        engine.upload_information("nope", 0)
    clock.now += 60
    with pytest.raises(FileNotFound):
        engine.upload_information(key, 0)


def test_manifest_accepted_calls_handler_in_order(engine, handler):
    """GetDownloadFilename (already stored?), then CanUpload, then AddPendingUpload, each for every file."""
    post(engine)
    assert [c[0] for c in handler.calls] == [
        "GetDownloadFilename", "GetDownloadFilename", "CanUpload", "CanUpload", "AddPendingUpload", "AddPendingUpload"
    ]


def test_manifest_refused_registers_nothing(clock):
    """A refused file gives return_code 1 with the seed's reason and no key."""
    handler = RecordingHandler(refuse={"b.txt": "exists already"})
    engine = TransferEngine(clock=clock)
    engine.register("data", handler)
    outcome = result_of(engine.post_manifest("data", MANIFEST, ALICE))
    assert not outcome.accepted
    assert outcome.to_text() == "return_code: 1\nerror_reason: Upload error for file b.txt: exists already\n"
    assert handler.names("AddPendingUpload") == []
    assert list(engine.transfers.records()) == []


def test_manifest_refused_by_false_has_no_reason(clock):
    """CanUpload returning False gives the bare seed reason."""
    engine = TransferEngine(clock=clock)
    engine.register("data", RecordingHandler(refuse={"a.txt": None}))
    outcome = result_of(engine.post_manifest("data", MANIFEST, ALICE))
    assert outcome.error_reason == "Upload error for file a.txt"


def test_bad_manifest_and_prefix(engine):
    """A broken manifest is ManifestError; an unknown prefix is FileNotFound."""
    with pytest.raises(ManifestError):
        result_of(engine.post_manifest("data", b"[manifest]\n", ALICE))
    with pytest.raises(FileNotFound):
        result_of(engine.post_manifest("nope", MANIFEST, ALICE))


def test_upload_state_machine_happy_path(engine, handler):
    """begin -> verify -> complete stores the file and calls CompleteUpload once."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, "0", ALICE, 3))
    assert ticket.final_path == "/srv/a.txt"
    assert engine.transfers.states(key)[0] is FileState.RECEIVING
    result_of(engine.verify_upload(ticket, MD5_A, 3))
    result_of(engine.complete_upload(ticket))
    assert engine.transfers.states(key)[0] is FileState.STORED
    assert handler.names("CompleteUpload") == ["a.txt"]


@pytest.mark.parametrize(
    "prefix, key, num, token, length, error",
    [
        ("nope", None, "0", ALICE, 3, FileNotFound),
        ("data", "x" * 32, "0", ALICE, 3, FileNotFound),
        ("data", None, "5", ALICE, 3, FileNotFound),
        ("data", None, "0", BOB, 3, NotAuthorized),
        ("data", None, "0", IdToken(dn=None), 3, NotAuthorized),
        ("data", None, "0", ALICE, None, LengthRequired),
        ("data", None, "0", ALICE, 4, LengthMismatch),
    ],
)
def test_begin_upload_refusals(engine, handler, prefix, key, num, token, length, error):
    """Every header-level refusal, and none of them asks GetUploadFilename."""
    real_key = post(engine)
    with pytest.raises(error):
        result_of(engine.begin_upload(prefix, key or real_key, num, token, length))
    assert handler.names("GetUploadFilename") == []
    assert engine.transfers.states(real_key)[0] is FileState.PENDING


def test_conflicts(engine):
    """A file arriving or stored cannot be begun again (409)."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    with pytest.raises(UploadConflict, match="being uploaded"):
        result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    result_of(engine.verify_upload(ticket, MD5_A, 3))
    result_of(engine.complete_upload(ticket))
    with pytest.raises(UploadConflict, match="already stored"):
        result_of(engine.begin_upload("data", key, 0, ALICE, 3))


def test_checksum_mismatch_leaves_file_pending(engine, handler):
    """A mismatch fails the upload; the file may be uploaded again."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    with pytest.raises(ChecksumMismatch):
        result_of(engine.verify_upload(ticket, "b" * 32, 3))
    assert engine.transfers.states(key)[0] is FileState.PENDING
    assert handler.names("CompleteUpload") == []
    result_of(engine.begin_upload("data", key, 0, ALICE, 3))


def test_get_upload_filename_none_refuses(engine, handler):
    """GetUploadFilename returning None is NotAuthorized and releases the file."""
    key = post(engine)
    handler.GetUploadFilename = lambda token, info: None  # type: ignore[method-assign]
    with pytest.raises(NotAuthorized):
        result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    assert engine.transfers.states(key)[0] is FileState.PENDING


def test_async_handler_is_awaited(engine, handler):
    """A Deferred from GetUploadFilename keeps the file receiving until it fires."""
    key = post(engine)
    pending: defer.Deferred[str] = defer.Deferred()
    handler.GetUploadFilename = lambda token, info: pending  # type: ignore[method-assign]
    decision = engine.begin_upload("data", key, 0, ALICE, 3)
    assert not decision.called
    assert engine.transfers.states(key)[0] is FileState.RECEIVING
    pending.callback("/elsewhere/a.txt")
    assert result_of(decision).final_path == "/elsewhere/a.txt"


def test_coroutine_handler(engine):
    """Handler callbacks may be coroutines."""

    class Async:
        async def CanUpload(self, token, info):
            return True

        async def GetDownloadFilename(self, token, path):
            return "/x/" + path

    engine.register("co", Async())
    outcome = result_of(engine.post_manifest("co", MANIFEST, ALICE))
    assert outcome.accepted
    assert result_of(engine.resolve_download("co", "f", ALICE)).path == "/x/f"


def test_complete_upload_failure_returns_to_pending(engine, handler):
    """If CompleteUpload raises, the file is pending again and the error propagates."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, 3))

    def broken(token, info):
        raise RuntimeError("db down")

    handler.CompleteUpload = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        result_of(engine.complete_upload(ticket))
    assert engine.transfers.states(key)[0] is FileState.PENDING


def test_expiry_cancels_pending_files(engine, handler, clock):
    """An expired key calls CancelPendingUpload for its unstored files, then is gone."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, 1, ALICE, 0))
    result_of(engine.verify_upload(ticket, "d41d8cd98f00b204e9800998ecf8427e", 0))
    result_of(engine.complete_upload(ticket))
    assert result_of(engine.expire_transfers()) == 0
    clock.now += 61
    assert result_of(engine.expire_transfers()) == 1
    assert handler.names("CancelPendingUpload") == ["a.txt"]
    assert engine.transfers.get(key) is None


def test_status_and_cancel_are_for_the_owner(engine, facade, handler):
    """Only the uploader reads or cancels a transfer; cancel releases pending files."""
    key = post(engine)
    status = result_of(engine.transfer_status("data", key, ALICE, locate=facade.download_url))
    assert [f["state"] for f in status["files"]] == ["pending", "pending"]
    assert status["files"][0]["url"] == "https://host:8443/data/a.txt"
    with pytest.raises(NotAuthorized):
        result_of(engine.transfer_status("data", key, BOB))
    with pytest.raises(NotAuthorized):
        result_of(engine.cancel_transfer("data", key, BOB))
    result_of(engine.cancel_transfer("data", key, ALICE))
    assert handler.names("CancelPendingUpload") == ["a.txt", "b.txt"]
    with pytest.raises(FileNotFound):
        result_of(engine.transfer_status("data", key, ALICE))


def test_downloads_ask_the_handler(engine, handler):
    """resolve_download passes the decoded path and the handler's errors through."""
    assert result_of(engine.resolve_download("data", "dir/f.txt", ALICE)).path == "/srv/dir/f.txt"
    with pytest.raises(FileNotFound):
        result_of(engine.resolve_download("data", "missing", ALICE))


def test_state_machine_table():
    """Only pending->receiving->stored and receiving->pending are legal."""
    assert next_state(FileState.PENDING, "begin") is FileState.RECEIVING
    assert next_state(FileState.RECEIVING, "fail") is FileState.PENDING
    assert next_state(FileState.RECEIVING, "complete") is FileState.STORED
    for state, event in [(FileState.STORED, "begin"), (FileState.PENDING, "complete"), (FileState.STORED, "fail")]:
        with pytest.raises(UploadConflict):
            next_state(state, event)


def test_core_imports_no_web_or_tls():
    """The core modules import neither twisted.web nor OpenSSL."""
    import subprocess
    import sys

    code = (
        "import sys; import gsitransfer.core, gsitransfer.engine, gsitransfer.manifest, gsitransfer.keys, "
        "gsitransfer.handler, gsitransfer.identity, gsitransfer.errors; "
        "bad = [m for m in sys.modules if m.startswith(('twisted.web', 'OpenSSL', 'gsitransfer.web', 'gsitransfer.tls'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_receiving_transfer_outlives_expiry_and_refuses_cancel(engine, handler, clock):
    """A file arriving when the key expires may still be stored; cancel waits for it (409)."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    with pytest.raises(UploadConflict):
        result_of(engine.cancel_transfer("data", key, ALICE))
    clock.now += 61
    assert result_of(engine.expire_transfers()) == 0
    result_of(engine.verify_upload(ticket, MD5_A, 3))
    result_of(engine.complete_upload(ticket))
    assert result_of(engine.expire_transfers()) == 1
    assert handler.names("CancelPendingUpload") == ["b.txt"]


def test_verify_refuses_a_cancelled_transfer(engine):
    """A body that completes after its transfer was forgotten is not stored."""
    key = post(engine)
    ticket = result_of(engine.begin_upload("data", key, 0, ALICE, 3))
    engine.transfers.remove(key)
    with pytest.raises(FileNotFound):
        result_of(engine.verify_upload(ticket, MD5_A, 3))


def test_handler_timeout(handler):
    """A callback that never answers fails with HandlerTimeout after handler_timeout."""
    from twisted.internet.task import Clock as ReactorClock

    from gsitransfer.errors import HandlerTimeout

    timer = ReactorClock()
    engine = TransferEngine(handler_timeout=5, timer=timer)
    engine.register("data", handler)
    handler.CanUpload = lambda token, info: defer.Deferred()  # type: ignore[method-assign]
    outcome = engine.post_manifest("data", MANIFEST, ALICE)
    assert not outcome.called
    timer.advance(5)
    with pytest.raises(HandlerTimeout):
        result_of(outcome)


def test_status_names_urls_only_when_the_edge_locates(engine, clock):
    """Without ``locate`` the engine's status has no URLs; a facade with no public URL locates None."""
    key = post(engine)
    assert all("url" not in f for f in result_of(engine.transfer_status("data", key, ALICE))["files"])
    unplaced = TransferServer(engine=engine)
    status = result_of(engine.transfer_status("data", key, ALICE, locate=unplaced.download_url))
    assert [f["url"] for f in status["files"]] == [None, None]


def test_facade_delegates_the_seed_api_to_its_engine(engine, facade, handler):
    """The CapWords methods, prefixes, transfers and manifest_limits are the engine's."""
    facade.RegisterPrefix("more", handler)
    assert facade.LookupPrefix("more") is handler and engine.handler_for("more") is handler
    assert facade.prefixes() == engine.prefixes() == ["data", "more"]
    key = facade.RegisterManifest(MANIFEST, ALICE, "data")
    assert result_of(engine.is_live_transfer(key)) and facade.transfers is engine.transfers
    assert facade.LookupUploadInformation(key, 1) == engine.upload_information(key, 1)
    assert facade.manifest_limits is engine.manifest_limits
    facade.UnregisterPrefix("more")
    assert facade.LookupPrefix("more") is None and engine.prefixes() == ["data"]
    with pytest.raises(ValueError):
        facade.RegisterPrefix("a/b", handler)


def test_facade_makes_its_engine_from_the_engine_options(clock):
    """TransferServer(**options) builds a TransferEngine with them; not both an engine and options."""
    server = TransferServer(clock=clock, manifest_ttl=60, public_url="http://h:1/")
    assert server.engine.manifest_ttl == 60 and server.engine.clock is clock
    assert server.base_url() == "http://h:1"
    with pytest.raises(TypeError):
        TransferServer(engine=server.engine, manifest_ttl=5)
    with pytest.raises(RuntimeError):
        TransferServer().base_url()


def test_facade_has_no_second_core():
    """The engine's transfer methods are asked of ``server.engine``, not of the facade."""
    server = TransferServer()
    for name in ("post_manifest", "begin_upload", "resolve_download_now", "transfer_status", "expire_transfers"):
        assert not hasattr(server, name) and callable(getattr(server.engine, name))


def test_unknown_prefix_is_a_failed_deferred_naming_the_prefixes(engine):
    """list_files on an unknown prefix fails its Deferred (it raised at the call: a 500), naming the prefixes."""
    listing = engine.list_files("dta", ALICE)
    with pytest.raises(FileNotFound, match=r"^no such prefix /dta/; this server has /data/$"):
        result_of(listing)
    with pytest.raises(FileNotFound, match="this server has /data/"):
        engine.check_prefix("dta")
    engine.check_prefix("data")
    engine.unregister("data")
    with pytest.raises(FileNotFound, match=r"^no such prefix /data/; this server has no prefixes$"):
        result_of(engine.post_manifest("data", MANIFEST, ALICE))
