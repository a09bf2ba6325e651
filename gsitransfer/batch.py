"""Atomic batches (``[manifest] commit = atomic``, SPEC 7.4): all files appear together, or none.

A file of an atomic batch is verified like any other (size, MD5), then kept,
synced, under its partial name beside its final name (:meth:`TransferEngine.hold_verified`:
state ``verified``); nothing is published and ``CompleteUpload`` is not
called. When the last file of the batch is verified (:func:`hold_file`),
the one process that claims the batch (the intent, recorded durably in the
batch log: every file's held path, final path, MD5 and size) publishes
every file in file order (each a hard link, never replacing another file:
:func:`~gsitransfer.filesink.publish_held`), syncs each directory, then calls
``CompleteUpload`` for each in file order, recording each call, and forgets
the intent.

A crash between the intent and its end leaves the intent: at start-up,
before listening, :func:`finish_batches` finishes each one (a file already
under its final name with the same bytes counts as published; a recorded
``CompleteUpload`` is not called again). Cancel (DELETE) and expiry are
refused / deferred while a batch is being published; before that, they
remove the held files and call ``CancelPendingUpload`` for each file not
stored, as for pending files.

Test-only fault point: with ``GSITRANSFER_TEST_FAULT=batch-after-first-publish``
in its environment, the process kills itself (SIGKILL) right after publishing
the first file of a batch.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Generator

from twisted.internet import defer
from twisted.logger import Logger

from .batchlog import BatchFile, BatchIntent
from .engine import TransferEngine, UploadTicket
from .errors import FileNotFound, UploadConflict, UploadFailed
from .filesink import publish_held, sync_directory
from .identity import IdToken
from .keys import FileState
from .manifest import FileEntry

#: the environment variable of the test-only fault point, and its value
FAULT_VARIABLE = "GSITRANSFER_TEST_FAULT"
FAULT_AFTER_FIRST_PUBLISH = "batch-after-first-publish"

#: the answer's ``state:`` for a file held until its batch is complete, and for one published
VERIFIED = FileState.VERIFIED.value
STORED = FileState.STORED.value

_Steps = Generator["defer.Deferred[Any]", Any, Any]

_log = Logger()


def is_atomic(ticket: UploadTicket) -> bool:
    """True when the ticket's manifest said ``commit = atomic``."""
    return ticket.atomic


@defer.inlineCallbacks
def hold_file(engine: TransferEngine, ticket: UploadTicket, held: int, md5: Any = None) -> _Steps:
    """A verified file of an atomic batch is synced in its partial: it waits, or (the last) publishes all.

    Fires with :data:`VERIFIED` (the batch waits for other files, or
    another process is publishing it) or :data:`STORED` (this call
    published the batch). Fails with FileNotFound when the transfer ended
    meanwhile, or the publishing's error (the intent stays: finished at the
    next start-up).
    """
    verified = yield engine.hold_verified(ticket, held, md5)
    if not verified:
        raise FileNotFound("the transfer was cancelled while the file was arriving")
    intent = yield claim(engine, ticket.transfer_key)
    if intent is None:
        return VERIFIED
    _log.info(
        "batch {key}...: all {n} file(s) verified, publishing", key=ticket.transfer_key[:8], n=len(intent.files)
    )
    yield finish(engine, intent, ticket.id_token, may_fault=True)
    return STORED


@defer.inlineCallbacks
def claim(engine: TransferEngine, transfer_key: str) -> _Steps:
    """The batch's intent (fires with it), recorded durably, when every file not already stored is
    verified and this process is the first to claim it; None otherwise."""
    record = yield engine.calls.get(transfer_key)
    if record is None:
        return None
    held_count = yield engine.calls.held_count(transfer_key)
    if held_count < record.manifest.num_files - len(record.already_stored):
        return None  # not the last one (one indexed count, not every file's state)
    states = yield engine.calls.states(transfer_key)
    if any(states.get(entry.num) not in (FileState.VERIFIED, FileState.STORED) for entry in record.manifest.files):
        return None
    held = yield engine.calls.held_files(transfer_key)
    files: list[BatchFile] = []
    for entry in record.manifest.files:
        if states.get(entry.num) is not FileState.VERIFIED:
            continue
        if entry.num not in held:
            raise UploadFailed(f"the batch lost track of the verified file {entry.name}")
        held_path, final_path = held[entry.num]
        files.append(BatchFile(entry.num, entry.name, entry.counted_size, entry.checksum, held_path, final_path))
    if not files:
        return None
    intent = BatchIntent(record.key, record.prefix, record.owner_dn, tuple(files), holder=os.getpid())
    claimed = yield engine.calls.begin(intent)
    if not claimed:
        return None  # another process (--workers, another node) claimed it
    still = yield engine.calls.get(transfer_key)
    if still is None:
        yield engine.calls.forget(transfer_key)  # cancelled meanwhile: its held files are gone
        return None
    return intent


@defer.inlineCallbacks
def finish(engine: TransferEngine, intent: BatchIntent, id_token: IdToken, may_fault: bool = False) -> _Steps:
    """Publish every file of a claimed batch (those already published count), then CompleteUpload each.

    ``may_fault``: the test-only fault point applies (never to a batch finished after a crash).
    """
    directories: list[str] = []
    fault = may_fault and os.environ.get(FAULT_VARIABLE) == FAULT_AFTER_FIRST_PUBLISH
    linked: list[BatchFile] = []
    for index, file in enumerate(intent.files):
        try:
            if publish_held(file.held, file.final, file.size, file.md5):
                linked.append(file)
        except UploadConflict:
            yield _unpublish(engine, intent, linked)
            raise
        directory = os.path.dirname(file.final) or "."
        if directory not in directories:
            directories.append(directory)
        if fault and index == 0:
            sync_directory(directory)
            os.kill(os.getpid(), signal.SIGKILL)
    for directory in directories:
        sync_directory(directory)
    for file in intent.files:
        if file.num in intent.completed:
            continue
        yield _complete(engine, intent, file, id_token)
        yield engine.calls.completed(intent.key, file.num)
    yield engine.calls.forget(intent.key)
    return None


def _unpublish(engine: TransferEngine, intent: BatchIntent, linked: list[BatchFile]) -> defer.Deferred[None]:
    """Another file took a final name of the batch: the files this call published are held again
    (moved back to their held names), the intent is dropped; the batch stays verified (its owner cancels it)."""
    for file in linked:
        try:
            os.rename(file.final, file.held)
        except OSError:
            _log.failure("batch {key}...: cannot take {name} back", key=intent.key[:8], name=file.name)
    return engine.calls.abandon(intent.key)


@defer.inlineCallbacks
def _complete(engine: TransferEngine, intent: BatchIntent, file: BatchFile, id_token: IdToken) -> _Steps:
    """``CompleteUpload`` for one published file (through the engine while its key lives)."""
    record = yield engine.calls.get(intent.key)
    state = None
    if record is not None:
        states = yield engine.calls.states(intent.key)
        state = states.get(file.num)
    if record is not None and state is FileState.VERIFIED:
        entry = record.manifest.files[file.num]
        ticket = UploadTicket(intent.prefix, intent.key, file.num, entry, id_token, file.final, partial_path=file.held)
        yield engine.complete_upload(ticket)
        return None
    if state is FileState.STORED:
        return None
    adapter = engine.adapter_for(intent.prefix)
    if adapter is None:
        raise FileNotFound(f"no such prefix /{intent.prefix}/")
    info = FileEntry(file.num, file.name, file.size, file.md5).file_info()
    info.update(transfer_key=intent.key, file_num=file.num)
    yield adapter.complete_upload(id_token, info)
    return None


@defer.inlineCallbacks
def finish_batches(engine: TransferEngine, holder: int | None = None) -> _Steps:
    """At start-up: finish every batch a crash left between its intent and its end; fires with how many.

    With ``holder`` (a dead worker's pid, from its ``--workers``
    supervisor), only the batches that process claimed. A batch whose
    prefix is not registered, or that fails again, is logged and left for
    the next start-up.
    """
    finished = 0
    intents = yield engine.calls.intents()
    for intent in intents:
        if holder is not None and intent.holder != holder:
            continue
        if engine.adapter_for(intent.prefix) is None:
            _log.warn("batch {key}...: no prefix /{prefix}/ here, left as it is", key=intent.key[:8], prefix=intent.prefix)
            continue
        try:
            yield finish(engine, intent, IdToken(dn=intent.owner_dn))
        except Exception:
            _log.failure("batch {key}...: could not be finished", key=intent.key[:8])
            continue
        finished += 1
        _log.info(
            "batch {key}...: finished after a crash ({n} file(s))", key=intent.key[:8], n=len(intent.files)
        )
    return finished


__all__ = [
    "FAULT_AFTER_FIRST_PUBLISH",
    "FAULT_VARIABLE",
    "STORED",
    "VERIFIED",
    "claim",
    "finish",
    "finish_batches",
    "hold_file",
    "is_atomic",
]
