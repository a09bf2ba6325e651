"""TransferEngine: prefixes, manifests, transfer keys and the upload state machine.

The engine is the protocol-neutral heart of the server. It owns the prefix
registry (each handler adapted once into a :class:`HandlerAdapter`), manifest
registration, transfer keys and the per-file upload state machine, and it calls
the handler callbacks (bounded by ``handler_timeout``). It knows no URL and no
scheme, and it does no I/O of its own (but one ``stat`` of a file a handler
names, to compare its size with a manifest's, for the dedupe below): an edge
(``gsitransfer.web``) parses requests, moves bytes, maps the errors raised
here to statuses and, where an answer names a file's URL, says how
(``transfer_status(..., locate=...)``).

The upload state machine, per file of a transfer::

    pending --begin--> receiving --complete--> stored
       ^  |                |
       |  +------+         +--fail / keep--> pending   (checksum mismatch, dropped connection,
       |         |                                      refused by GetUploadFilename, disk full)
       |         +--take over--> cancelled  (a newer manifest of the same person names it, SPEC 7.3)
       |
       +-- (an atomic batch, SPEC 7.4) receiving --verify--> verified --complete--> stored
                                                     (held, synced, until every file of the batch is;
                                                      cancel, expiry or take-over from verified as from pending)

Each file also has its *offset*: the bytes held durably in its partial file
(recorded by ``keep_partial`` and ``checkpoint`` only after the web layer
synced them). ``begin_upload`` (a whole body) sets it to 0;
``resume_upload`` (a piece, tus ``PATCH``) starts at it; a checksum mismatch
puts it back to 0; a stored file's offset is its size.

Rules:

* only the transfer's owner (the same person: IdToken.person, the end-entity
  DN of a proxy chain; ``None`` for anonymous) may upload,
  query or cancel it;
* ``begin`` on a file that is receiving or stored is a conflict (409),
  except on a file found already stored when its manifest was posted
  (manifest-time dedupe: the prefix held a file of that name, size and MD5):
  that file starts ``stored``, takes no pending quota, and a body posted for
  it is read and discarded, answered as a successful upload;
* a file is ``stored`` only after its bytes are verified and in place, and
  ``CompleteUpload`` is called only then;
* when a key expires or is cancelled, ``CancelPendingUpload`` is called for
  every file that is neither stored nor cancelled (taken over), its partial
  removed, and the key is forgotten;
* a manifest naming a file its person holds pending under another live key,
  with no body arriving for it, takes the name over (``_take_over``): that
  file is ``cancelled`` there, ``CancelPendingUpload`` called, and its partial
  carried to the new key when name, size and MD5 are equal
  (``ManifestOutcome.resume_from``); one with a body arriving refuses the
  manifest (a conflict).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .batchlog import BatchLog, MemoryBatchLog
from .tablecalls import TableCalls
from .errors import (
    BeyondLength,
    ChecksumMismatch,
    FileNotFound,
    HandlerTimeout,
    LengthMismatch,
    LengthRequired,
    NameTaken,
    NoSpaceForFile,
    NotAuthorized,
    OffsetMismatch,
    QuotaExceeded,
    StateUnavailable,
    TransferError,
    UploadConflict,
)
from .events import EXPIRY, EventFanout, TransferEvent, key_hash
from .filesink import partial_path_for, remove_partial
from .handler import DownloadTarget, HandlerAdapter, as_download_target
from .identity import IdToken
from .keys import (
    SETTLED,
    FileState,
    MemoryTransferTable,
    TransferRecord,
    TransferTable,
    mint_transfer_key,
)
from .manifest import FileEntry, Manifest, ManifestLimits, parse_manifest

DEFAULT_MANIFEST_TTL = 24 * 3600.0

_T = TypeVar("_T")
#: a generator run by ``inlineCallbacks``: yields Deferreds, gets their results, returns ``_T``
_Steps = Generator["defer.Deferred[Any]", Any, _T]

_log = Logger()

# (state now, event) -> state after; anything else is a conflict
_TRANSITIONS: dict[tuple[FileState, str], FileState] = {
    (FileState.PENDING, "begin"): FileState.RECEIVING,
    (FileState.RECEIVING, "fail"): FileState.PENDING,
    (FileState.RECEIVING, "complete"): FileState.STORED,
    (FileState.RECEIVING, "verify"): FileState.VERIFIED,
    (FileState.VERIFIED, "complete"): FileState.STORED,
}


def next_state(state: FileState, event: str) -> FileState:
    """Apply ``event`` to a file in ``state``, or raise UploadConflict."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        if state is FileState.STORED:
            raise UploadConflict("file is already stored") from None
        if state is FileState.RECEIVING:
            raise UploadConflict("file is already being uploaded") from None
        if state is FileState.VERIFIED:
            raise UploadConflict("file is verified and waits for the rest of its batch") from None
        raise UploadConflict(f"cannot {event} a {state.value} file") from None


@dataclass(frozen=True)
class ManifestOutcome:
    """What a posted manifest came to: a key, or the handler's refusal."""

    transfer_key: str | None
    error_reason: str | None = None
    #: numbers of the files found already stored (manifest-time dedupe), ascending
    already_stored: tuple[int, ...] = ()
    #: the refusal is a name conflict (the handler raised NameTaken, or another manifest holds the name)
    conflict: bool = False
    #: (file number, durable bytes held) of the files that start with bytes carried over (take-over), ascending
    resume_from: tuple[tuple[int, int], ...] = ()
    #: the handler's refusal as it was typed (NameTaken, NoSpaceForFile, ...), when a handler refused
    refused: NotAuthorized | None = None

    @property
    def accepted(self) -> bool:
        """True when every file was accepted and a key was issued."""
        return self.transfer_key is not None

    def refusal(self) -> NotAuthorized:
        """The refusal as a typed error (NameTaken for a conflict), for an answer with a status."""
        if self.refused is not None:
            return self.refused
        reason = self.error_reason or "the manifest was refused"
        return NameTaken(reason) if self.conflict else NotAuthorized(reason)

    def to_text(self) -> str:
        """The seed's ``key: value`` response body (``already_stored:`` after the key, when any)."""
        if self.accepted:
            text = f"return_code: 0\ntransfer_key: {self.transfer_key}\n"
            if self.already_stored:
                text += f"already_stored: {' '.join(str(num) for num in self.already_stored)}\n"
            if self.resume_from:
                text += f"resume_from: {' '.join(f'{num}={held}' for num, held in self.resume_from)}\n"
            return text
        return f"return_code: 1\nerror_reason: {self.error_reason}\n"


@dataclass(frozen=True)
class UploadOffset:
    """What ``HEAD`` on a file URL tells its uploader: durable bytes held, the size, the key's expiry."""

    offset: int
    #: None: not known (a chunked ``PUT``)
    length: int | None
    expires: float


@dataclass(frozen=True)
class TakeOver:
    """A pending file of an older key of the same person that a new manifest names again (SPEC 7.3)."""

    record: TransferRecord
    old: FileEntry
    new: FileEntry
    held: int
    partial: str
    #: the old file's running MD5 of its held bytes, when this process kept it
    md5: Any = None

    @property
    def carries(self) -> bool:
        """The old partial carries over: the same name, size and checksum, and bytes held."""
        return (
            self.held > 0
            and bool(self.partial)
            and bool(self.old.checksum)  # no MD5 announced (tus creation without one): nothing to match
            and (self.old.name, self.old.size, self.old.checksum) == (self.new.name, self.new.size, self.new.checksum)
        )


@dataclass(frozen=True)
class UploadTicket:
    """A file whose body may now be received: where it goes and for whom."""

    prefix: str
    transfer_key: str
    file_num: int
    entry: FileEntry
    id_token: IdToken
    final_path: str
    #: the file was found already stored when its manifest was posted: its body is read and
    #: discarded (``final_path`` is empty, nothing is written) and the answer is a success
    already_stored: bool = False
    #: bytes of the file already held when this body starts (0: a whole body, which restarts the file)
    offset: int = 0
    #: where the held bytes live (the partial beside ``final_path``)
    partial_path: str = ""
    #: the running MD5 of the ``offset`` bytes held, when this process kept it (else rebuilt by reading them)
    resume_md5: Any = None
    #: the file belongs to an atomic batch (``commit = atomic``): verified, it waits for the others
    atomic: bool = False

    @property
    def file_info(self) -> dict[str, object]:
        """The ``file_info`` dict handed to the handler for this file."""
        return _upload_file_info(self.transfer_key, self.entry)


def _upload_file_info(key: str, entry: FileEntry) -> dict[str, object]:
    info = entry.file_info()
    info.update(transfer_key=key, file_num=entry.num)
    return info


def _refusal(error: TransferError, context: str) -> NotAuthorized:
    """A handler's refusal of a manifest's file, its reason after ``context``; a conflict stays NameTaken."""
    reason = f"{context}: {error.reason}"
    for kind in (NameTaken, NoSpaceForFile):
        if isinstance(error, kind):
            return kind(reason)
    return NotAuthorized(reason)


def _holds(target: DownloadTarget, entry: FileEntry) -> bool:
    """True when ``target`` is ``entry``'s file: the handler's MD5 is the manifest's, its size too (a stat)."""
    if not target.path or target.checksum is None or target.checksum.lower() != entry.checksum:
        return False
    try:
        return os.stat(target.path).st_size == entry.size
    except (OSError, ValueError):
        return False


def _drop_carried(taken: object) -> None:
    """A manifest that took names over was refused after all: the partials it would have carried go."""
    for item in taken if isinstance(taken, list) else ():
        if isinstance(item, TakeOver) and item.carries:
            remove_partial(item.partial)


def _download_target(answer: object, url_path: str) -> DownloadTarget:
    """What ``GetDownloadFilename`` answered, as a DownloadTarget; None is FileNotFound."""
    if answer is None:
        raise FileNotFound(f"no file {url_path}")
    return as_download_target(answer)


class TransferEngine:
    """Prefixes, manifests, keys and the upload state machine; no URLs, no I/O."""

    #: files a manifest's checks handle between two returns to the reactor
    manifest_batch = 200

    def __init__(
        self,
        *,
        transfers: TransferTable | None = None,
        manifest_ttl: float = DEFAULT_MANIFEST_TTL,
        manifest_limits: ManifestLimits = ManifestLimits(),
        clock: Callable[[], float] = time.time,
        handler_timeout: float | None = None,
        timer: IReactorTime | None = None,
        max_pending_files: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> None:
        """``handler_timeout`` (seconds) bounds every handler callback; it needs
        ``timer``, an ``IReactorTime`` (the reactor), to count time.

        ``max_pending_files`` and ``max_pending_bytes`` bound what one identity
        (one DN; every anonymous client together) may have announced and not
        yet stored, over all its live transfers (None: no limit)."""
        if handler_timeout is not None and timer is None:
            raise ValueError("handler_timeout needs a timer (IReactorTime)")
        self.handler_timeout = handler_timeout
        self.timer = timer
        self.max_pending_files = max_pending_files
        self.max_pending_bytes = max_pending_bytes
        #: names of the manifests being checked now, per prefix (held until registered)
        self._announcing: dict[str, set[str]] = {}
        self._adapters: dict[str, HandlerAdapter] = {}
        self.transfers: TransferTable = transfers if transfers is not None else MemoryTransferTable()
        self.manifest_ttl = manifest_ttl
        self.manifest_limits = manifest_limits
        self.clock = clock
        #: (transfer key, file number) of every body this process is receiving
        self._in_flight: set[tuple[str, int]] = set()
        #: (transfer key, file number) -> (durable bytes, their running MD5) of partial files this process
        #: kept: a piece resumed here continues the MD5 without reading the held bytes again
        self._held_md5: dict[tuple[str, int], tuple[int, Any]] = {}
        #: (transfer key, file number) -> the MD5 computed of a file announced without one (tus creation),
        #: between its verification and ``CompleteUpload``
        self._computed_md5: dict[tuple[str, int], str] = {}
        #: where expiries are recorded (the audit log, the metrics; ``gsitransfer.events``); empty: nowhere
        self.events = EventFanout()
        #: atomic batches' held files and publishing intents: the table's own (shared by --workers)
        self.batches: BatchLog = getattr(self.transfers, "batches", None) or MemoryBatchLog()
        self._calls = TableCalls(self.transfers, self.batches, self.timer)

    @property
    def calls(self) -> TableCalls:
        """The table and batch log, each call a Deferred (off the reactor for PostgreSQL: ``tablecalls.py``)."""
        if self._calls.table is not self.transfers:  # a table given after construction
            self._calls = TableCalls(self.transfers, self.batches, self.timer)
        return self._calls

    # -- the prefix registry ----------------------------------------------------

    def register(self, prefix: str, handler: object) -> None:
        """Gate the files under ``prefix`` through ``handler`` (adapted here, once)."""
        if not prefix or "/" in prefix or prefix in (".", ".."):
            raise ValueError(f"invalid prefix {prefix!r}: one non-empty path segment")
        self._adapters[prefix] = HandlerAdapter(handler)

    def unregister(self, prefix: str) -> None:
        """Stop serving ``prefix`` (nothing happens if it was not registered)."""
        self._adapters.pop(prefix, None)

    def handler_for(self, prefix: str) -> object | None:
        """The handler object registered for ``prefix`` (as it was given), or None."""
        adapter = self._adapters.get(prefix)
        return None if adapter is None else adapter.handler

    def adapter_for(self, prefix: str) -> HandlerAdapter | None:
        """The adapted handler of ``prefix`` (its capabilities), or None."""
        return self._adapters.get(prefix)

    def prefixes(self) -> list[str]:
        """The registered prefixes, sorted."""
        return sorted(self._adapters)

    def check_prefix(self, prefix: str) -> None:
        """Raise FileNotFound, naming the prefixes this server has, unless ``prefix`` is registered."""
        if prefix not in self._adapters:
            raise self._no_such_prefix(prefix)

    def _no_such_prefix(self, prefix: str) -> FileNotFound:
        known = " ".join(f"/{name}/" for name in self.prefixes())
        has = f"this server has {known}" if known else "this server has no prefixes"
        return FileNotFound(f"no such prefix /{prefix}/; {has}")

    # -- manifests ------------------------------------------------------------

    def register_manifest(self, manifest: Manifest | str | bytes, id_token: IdToken, prefix: str = "") -> str:
        """Store the manifest under a new key bound to ``id_token``; the key."""
        if isinstance(manifest, str):
            manifest = manifest.encode("utf-8")
        if isinstance(manifest, bytes):
            manifest = parse_manifest(manifest, self.manifest_limits)
        record = self._new_record(manifest, id_token, prefix)
        self.transfers.add(record)
        return record.key

    def upload_information(self, transfer_key: str, file_num: int | str) -> dict[str, object]:
        """The ``file_info`` of one file of a live transfer; FileNotFound otherwise (synchronous: the seed's API)."""
        record = self.transfers.get(transfer_key)
        if record is None or record.expired(self.clock()):
            raise FileNotFound("unknown or expired transfer key")
        return _upload_file_info(record.key, self._entry(record, file_num))

    @defer.inlineCallbacks
    def post_manifest(self, prefix: str, body: bytes, id_token: IdToken) -> _Steps[ManifestOutcome]:
        """Parse a posted manifest, ask the handler about each file, register it.

        Fires with a :class:`ManifestOutcome`; fails with ManifestError for a
        bad manifest, QuotaExceeded when the identity has too much pending,
        and FileNotFound for an unknown prefix. With a ``timer``, the work
        returns to the reactor every :attr:`manifest_batch` files, so a
        manifest of thousands of files does not stall other clients; its
        names are held meanwhile, so a concurrent manifest naming one of
        them is refused as it would be once they are pending.
        """
        self._adapter(prefix)
        manifest = parse_manifest(body, self.manifest_limits)
        outcome: ManifestOutcome = yield self.announce_manifest(prefix, manifest, id_token)
        return outcome

    @defer.inlineCallbacks
    def announce_manifest(
        self, prefix: str, manifest: Manifest, id_token: IdToken, carry: bool = True
    ) -> _Steps[ManifestOutcome]:
        """:meth:`post_manifest` for a Manifest value already made (a tus creation builds one from headers).

        The same steps for every way in: take-over, dedupe, quotas, ``CanUpload``,
        ``AddPendingUpload``, the key bound to ``id_token``'s person. With
        ``carry`` False (tus creation: a tus client starts a new upload at 0)
        names are taken over but their held bytes are dropped, never carried.
        """
        adapter = self._adapter(prefix)
        held = self._announcing.setdefault(prefix, set())
        for entry in manifest.files:
            if entry.name in held:
                return ManifestOutcome(
                    None, f"Upload error for file {entry.name}: another manifest is announcing it", conflict=True
                )
        names = [entry.name for entry in manifest.files]
        held.update(names)
        taken: ManifestOutcome | list[TakeOver] = []
        try:
            taken = yield self._take_over(prefix, adapter, manifest, id_token)
            if isinstance(taken, ManifestOutcome):
                return taken
            if not carry:
                _drop_carried(taken)
                taken = [item for item in taken if not item.carries]
            if not adapter.serves_downloads:
                # nothing can be found already stored: refused before the handler is asked anything
                yield self._check_pending_quota(manifest, id_token)
            outcome: ManifestOutcome = yield self._check_and_register(prefix, adapter, manifest, id_token, taken)
        except BaseException:
            _drop_carried(taken)
            raise
        finally:
            held.difference_update(names)
        if not outcome.accepted:
            _drop_carried(taken)
        return outcome

    @defer.inlineCallbacks
    def _take_over(
        self, prefix: str, adapter: HandlerAdapter, manifest: Manifest, id_token: IdToken
    ) -> _Steps[ManifestOutcome | list[TakeOver]]:
        """Take over the names of ``manifest`` that its person holds pending under older live keys (SPEC 7.3).

        Each such file of an older key is cancelled there (state ``cancelled``,
        the handler's ``CancelPendingUpload``; a key left with nothing pending
        is forgotten); its partial is kept for the new key when name, size and
        checksum are the same (:attr:`TakeOver.carries`), else removed. A name
        whose body is arriving now refuses the manifest (a conflict). Other
        persons' names are not touched: the handler refuses them as before.
        """
        wanted = {entry.name: entry for entry in manifest.files}
        found: list[TakeOver] = []
        owned: list[TransferRecord] = yield self.calls.live_owned(id_token.person, prefix, self.clock())
        for record in owned:
            states: dict[int, FileState] = yield self.calls.states(record.key)
            progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
            for old in record.manifest.files:
                new = wanted.get(old.name)
                state = states.get(old.num, FileState.PENDING)
                if new is None or state in SETTLED:
                    continue
                intent = yield self.calls.intent(record.key)
                if intent is not None:
                    return ManifestOutcome(
                        None, f"Upload error for file {old.name}: its batch is being published", conflict=True
                    )
                if state is FileState.RECEIVING or (record.key, old.num) in self._in_flight:
                    return ManifestOutcome(
                        None, f"Upload error for file {old.name}: it is arriving on another connection", conflict=True
                    )
                held, partial = progress.get(old.num, (0, ""))
                found.append(TakeOver(record, old, new, held, partial))
        for index, taken in enumerate(found):
            key, num = taken.record.key, taken.old.num
            now_states: dict[int, FileState] = yield self.calls.states(key)
            before = FileState.VERIFIED if now_states.get(num) is FileState.VERIFIED else FileState.PENDING
            cancelled = yield self.calls.transition(key, num, before, FileState.CANCELLED)
            if not cancelled:
                return ManifestOutcome(
                    None, f"Upload error for file {taken.old.name}: it is arriving on another connection", conflict=True
                )
            memory = self._held_md5.pop((key, num), None)
            if taken.carries and memory is not None and memory[0] == taken.held:
                found[index] = dataclasses.replace(taken, md5=memory[1])
            elif not taken.carries:
                remove_partial(taken.partial)
            yield self.calls.drop(key, num)
            _log.info(
                "file {name} of transfer {key}... taken over by a new manifest of {dn}",
                name=taken.old.name, key=key[:8], dn=id_token.dn or "anonymous",
            )
            yield self._cancel_quietly(adapter, IdToken(dn=taken.record.owner_dn), taken.old.name)
        for record in {taken.record.key: taken.record for taken in found}.values():
            left: dict[int, FileState] = yield self.calls.states(record.key)
            if all(state in SETTLED for state in left.values()):
                yield self.calls.remove(record.key)
        return found

    @defer.inlineCallbacks
    def _carry_over(self, key: str, taken: list[TakeOver]) -> _Steps[tuple[tuple[int, int], ...]]:
        """Give the new key's files the partials carried over to them; (number, bytes held) of each."""
        carried: list[tuple[int, int]] = []
        for item in taken:
            if not item.carries:
                continue
            yield self.calls.set_progress(key, item.new.num, item.held, item.partial)
            if item.md5 is not None:
                self._held_md5[(key, item.new.num)] = (item.held, item.md5)
            carried.append((item.new.num, item.held))
        return tuple(sorted(carried))

    @defer.inlineCallbacks
    def _check_and_register(
        self,
        prefix: str,
        adapter: HandlerAdapter,
        manifest: Manifest,
        id_token: IdToken,
        taken: list[TakeOver] = [],  # noqa: B006 (never mutated)
    ) -> _Steps[ManifestOutcome]:
        stored: frozenset[int] = yield self._find_already_stored(prefix, adapter, manifest, id_token)
        yield self._check_pending_quota(manifest, id_token, stored=stored)
        to_store = [entry for entry in manifest.files if entry.num not in stored]
        transfer_size = manifest.total_size
        if adapter.gates_uploads:
            for entry in to_store:
                refused = yield self._ask_can_upload(adapter, id_token, entry, transfer_size)
                if refused is not None:
                    return ManifestOutcome(
                        None, refused.reason, conflict=isinstance(refused, NameTaken), refused=refused
                    )
                yield self._breathe(entry.num)
        # again, in the one transaction that registers the key (other workers share the table)
        key: str = yield self._register_within_quota(manifest, id_token, prefix, stored)
        names = [entry.name for entry in to_store]
        added: list[str] = []
        refusal: NotAuthorized | None = None
        try:
            if adapter.batches_pending and names:
                added = names  # a batch that failed otherwise may have added some
                try:
                    yield self._timed(adapter.add_pending_uploads(id_token, list(names)), "AddPendingUploads")
                except NotAuthorized as error:  # taken meanwhile: the batch added none
                    added, refusal = [], _refusal(error, "Upload error")
            elif not adapter.batches_pending:
                for num, name in enumerate(names):
                    try:
                        yield self._timed(adapter.add_pending_upload(id_token, name), "AddPendingUpload")
                    except NotAuthorized as error:  # taken meanwhile (another process)
                        refusal = _refusal(error, f"Upload error for file {name}")
                        break
                    added.append(name)
                    yield self._breathe(num)
            if refusal is not None:
                raise refusal
        except BaseException as failure:
            try:
                yield self.calls.remove(key)
            except StateUnavailable:
                pass  # the key expires unused (the database is away: the failure is a 503)
            for num, name in enumerate(added):
                yield self._cancel_quietly(adapter, id_token, name)
                yield self._breathe(num)
            if refusal is not None and failure is refusal:
                return ManifestOutcome(
                    None, refusal.reason, conflict=isinstance(refusal, NameTaken), refused=refusal
                )
            raise
        resume_from: tuple[tuple[int, int], ...] = yield self._carry_over(key, taken)
        return ManifestOutcome(key, already_stored=tuple(sorted(stored)), resume_from=resume_from)

    @defer.inlineCallbacks
    def _find_already_stored(
        self, prefix: str, adapter: HandlerAdapter, manifest: Manifest, id_token: IdToken
    ) -> _Steps[frozenset[int]]:
        """The numbers of the manifest's files the prefix already holds, byte for byte (dedupe).

        For each file the handler's ``GetDownloadFilename`` is asked, as for
        a download of ``/<prefix>/<name>`` by this identity. A file is
        already stored when the answer gives its MD5 (``DownloadTarget.checksum``)
        equal to the manifest's and its size (one ``stat``) equals the
        manifest's; the MD5 is never computed here. Any refusal or error, a
        handler without downloads or without the MD5: not stored (but a
        handler that does not answer in time fails the manifest, 503).
        """
        if not adapter.serves_downloads:
            return frozenset()
        found: set[int] = set()
        for entry in manifest.files:
            try:
                target: DownloadTarget = yield self.resolve_download(prefix, entry.name, id_token)
            except (HandlerTimeout, StateUnavailable):
                raise  # a handler (or the state) that does not answer fails the manifest (503), as CanUpload's would
            except TransferError:
                target = DownloadTarget("")
            except Exception:
                _log.failure("GetDownloadFilename failed for {name} (dedupe)", name=entry.name)
                target = DownloadTarget("")
            if _holds(target, entry):
                found.add(entry.num)
            yield self._breathe(entry.num)
        return frozenset(found)

    def _breathe(self, done: int) -> defer.Deferred[None]:
        """After every :attr:`manifest_batch` items, let the reactor run (needs ``timer``)."""
        if self.timer is None or (done + 1) % self.manifest_batch:
            return defer.succeed(None)
        return task.deferLater(self.timer, 0, lambda: None)

    def _new_record(self, manifest: Manifest, id_token: IdToken, prefix: str) -> TransferRecord:
        """A new transfer under a fresh key, owned by ``id_token``'s person, expiring after the TTL."""
        now = self.clock()
        return TransferRecord(
            key=mint_transfer_key(),
            prefix=prefix,
            owner_dn=id_token.person,
            manifest=manifest,
            created=now,
            expires=now + self.manifest_ttl,
        )

    @defer.inlineCallbacks
    def _register_within_quota(
        self, manifest: Manifest, id_token: IdToken, prefix: str, stored: frozenset[int] = frozenset()
    ) -> _Steps[str]:
        """Register ``manifest`` if it fits its owner's pending limits, as one step; its key.

        The files numbered in ``stored`` start stored and count against no limit.
        """
        record = dataclasses.replace(self._new_record(manifest, id_token, prefix), already_stored=stored)
        totals = yield self.calls.add_within(record, self.max_pending_files, self.max_pending_bytes, record.created)
        if totals is not None:
            yield self._check_pending_quota(manifest, id_token, totals, stored)
        return record.key

    @defer.inlineCallbacks
    def _check_pending_quota(
        self,
        manifest: Manifest,
        id_token: IdToken,
        totals: tuple[int, int] | None = None,
        stored: frozenset[int] = frozenset(),
    ) -> _Steps[None]:
        """Raise QuotaExceeded if ``manifest`` (but its ``stored`` files) would take its owner over the limits."""
        if self.max_pending_files is None and self.max_pending_bytes is None:
            return None
        if totals is None:
            totals = yield self.calls.pending_totals(id_token.person, self.clock())
            assert totals is not None
        files, size = totals
        new = [entry for entry in manifest.files if entry.num not in stored]
        who = "anonymous clients" if id_token.person is None else id_token.person
        advice = "upload or cancel (DELETE) pending transfers first, or wait until their keys expire"
        if self.max_pending_files is not None and files + len(new) > self.max_pending_files:
            raise QuotaExceeded(
                f"too many pending files for {who}: {files} pending, this manifest adds "
                f"{len(new)}, at most {self.max_pending_files}; {advice}"
            )
        total = sum(entry.counted_size for entry in new)
        if self.max_pending_bytes is not None and size + total > self.max_pending_bytes:
            raise QuotaExceeded(
                f"too many pending bytes for {who}: {size} pending, this manifest adds "
                f"{total}, at most {self.max_pending_bytes}; {advice}"
            )

    @defer.inlineCallbacks
    def _ask_can_upload(
        self, adapter: HandlerAdapter, id_token: IdToken, entry: FileEntry, transfer_size: int
    ) -> _Steps[NotAuthorized | None]:
        """None when the handler accepts the file, else the refusal (NameTaken for a name conflict)."""
        refusal = f"Upload error for file {entry.name}"
        try:
            file_info = entry.file_info()
            file_info["transfer_size"] = transfer_size
            allowed = yield self._timed(adapter.can_upload(id_token, file_info), "CanUpload")
        except (HandlerTimeout, StateUnavailable):
            raise  # 503: not a refusal of the file
        except TransferError as error:
            return _refusal(error, refusal)
        return None if allowed else NotAuthorized(refusal)

    # -- uploads --------------------------------------------------------------

    @defer.inlineCallbacks
    def begin_upload(
        self,
        prefix: str,
        transfer_key: str,
        file_num: str | int,
        id_token: IdToken,
        content_length: int | None,
    ) -> _Steps[UploadTicket]:
        """Decide, from a file upload's headers alone, whether its body may come.

        Fires with an :class:`UploadTicket` (the file is now receiving) or
        fails with FileNotFound, NotAuthorized, UploadConflict,
        LengthRequired or LengthMismatch. A file its manifest found already
        stored gives a ticket marked ``already_stored`` (the file stays
        stored, the handler is not asked: the body is to be discarded).
        """
        adapter = self._adapter(prefix)
        record: TransferRecord = yield self._live_record(transfer_key)
        if record.prefix != prefix:
            raise FileNotFound(f"no transfer {transfer_key} under /{prefix}/")
        entry = self._entry(record, file_num)
        if id_token.person != record.owner_dn:
            raise NotAuthorized("this transfer belongs to another identity")
        states: dict[int, FileState] = yield self.calls.states(record.key)
        state = states.get(entry.num, FileState.PENDING)
        if state is FileState.CANCELLED:
            raise FileNotFound(f"file {entry.num} of this transfer was taken over by a newer manifest")
        found_stored = state is FileState.STORED and entry.num in record.already_stored
        receiving = state if found_stored else next_state(state, "begin")
        if entry.size is None:
            pass  # announced without a size (a chunked PUT): any length, the limits checked as it arrives
        elif content_length is None:
            raise LengthRequired("Content-Length is required for a file upload")
        elif content_length != entry.size:
            raise LengthMismatch(
                f"Content-Length {content_length} differs from the manifest size {entry.size}"
            )
        if found_stored:
            # stored before the manifest came: the body is read and discarded, the answer a success
            return UploadTicket(prefix, record.key, entry.num, entry, id_token, "", already_stored=True)
        final_path, partial = yield self._receive(adapter, record, entry, state, id_token)
        # a whole body restarts the file: nothing held from here on (recorded before the partial is truncated)
        yield self.calls.set_progress(record.key, entry.num, 0, partial)
        self._held_md5.pop((record.key, entry.num), None)
        return UploadTicket(
            prefix, record.key, entry.num, entry, id_token, final_path, partial_path=partial, atomic=record.manifest.atomic
        )

    @defer.inlineCallbacks
    def _receive(
        self, adapter: HandlerAdapter, record: TransferRecord, entry: FileEntry, state: FileState, id_token: IdToken
    ) -> _Steps[tuple[str, str]]:
        """Win the file for this connection (pending -> receiving), ask where it goes: (final path, partial path).

        The file counts as in flight here from before the table is asked: a sweep of files this process
        holds but no longer receives (:meth:`release_abandoned`) never takes one being won.
        """
        where = (record.key, entry.num)
        won = False
        if where not in self._in_flight:  # (else another connection of this process has it)
            self._in_flight.add(where)
            try:
                won = yield self.calls.transition(record.key, entry.num, state, FileState.RECEIVING)
            finally:
                if not won:
                    self._in_flight.discard(where)
        if not won:
            # another connection (or worker process) moved it first, or it was cancelled
            states: dict[int, FileState] = yield self.calls.states(record.key)
            now = states.get(entry.num)
            if now is None:
                raise FileNotFound(f"no transfer {record.key} under /{record.prefix}/")
            next_state(now, "begin")
            raise UploadConflict("file is already being uploaded")
        try:
            final_path = yield self._timed(
                adapter.get_upload_filename(id_token, _upload_file_info(record.key, entry)),
                "GetUploadFilename",
            )
            if final_path is None:
                raise NotAuthorized(f"the handler refused file {entry.name}")
        except BaseException:
            self._in_flight.discard((record.key, entry.num))
            yield self.calls.set_state(record.key, entry.num, FileState.PENDING)
            raise
        progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
        recorded = progress.get(entry.num, (0, ""))[1]
        return str(final_path), recorded or partial_path_for(str(final_path))

    @defer.inlineCallbacks
    def resume_upload(
        self,
        prefix: str,
        transfer_key: str,
        file_num: str | int,
        id_token: IdToken,
        offset: int,
        content_length: int | None,
    ) -> _Steps[UploadTicket]:
        """Decide whether a piece of a file starting at ``offset`` may come (tus ``PATCH``).

        Fires with a ticket whose ``offset`` is the durable bytes held (the
        file is now receiving) or fails with FileNotFound, NotAuthorized,
        UploadConflict (stored, or arriving elsewhere), OffsetMismatch
        (``offset`` is not the bytes held) or BeyondLength (the piece's
        Content-Length would pass the manifest size).
        """
        adapter = self._adapter(prefix)
        record: TransferRecord = yield self._owned_record(prefix, transfer_key, id_token)
        entry = self._entry(record, file_num)
        states: dict[int, FileState] = yield self.calls.states(record.key)
        state = states.get(entry.num, FileState.PENDING)
        if state is FileState.CANCELLED:
            raise FileNotFound(f"file {entry.num} of this transfer was taken over by a newer manifest")
        next_state(state, "begin")  # stored or arriving elsewhere: the conflict
        progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
        held = progress.get(entry.num, (0, ""))[0]
        if offset != held:
            raise OffsetMismatch(offset, held)
        if entry.size is None:
            raise UploadConflict(f"the size of {entry.name} was never announced (a chunked PUT): PUT the whole file again")
        if content_length is not None and held + content_length > entry.size:
            raise BeyondLength(
                f"offset {held} + Content-Length {content_length} passes the manifest size {entry.size}"
            )
        final_path, partial = yield self._receive(adapter, record, entry, state, id_token)
        progress = yield self.calls.progress(record.key)
        now_held = progress.get(entry.num, (0, ""))[0]
        if now_held != held:  # another process recorded more meanwhile
            yield self.fail_upload(UploadTicket(prefix, record.key, entry.num, entry, id_token, final_path))
            raise OffsetMismatch(offset, now_held)
        yield self.calls.set_progress(record.key, entry.num, held, partial)
        memory = self._held_md5.get((record.key, entry.num))
        md5 = memory[1] if memory is not None and memory[0] == held else None
        return UploadTicket(
            prefix, record.key, entry.num, entry, id_token, final_path, offset=held, partial_path=partial, resume_md5=md5,
            atomic=record.manifest.atomic,
        )

    @defer.inlineCallbacks
    def keep_partial(self, ticket: UploadTicket, held: int | None, md5: Any = None) -> _Steps[int]:
        """A body ended short (cut off, refused, or a whole PATCH piece): its file is pending again.

        ``held`` is the bytes now durable in the partial (fdatasync'd before
        this call), recorded in the same step as the state; None when the
        partial could not be kept (it is removed, 0 recorded). ``md5`` is the
        running MD5 of those bytes, remembered for the next piece. Returns
        the bytes recorded. Never fails: a database that cannot be reached
        leaves the file receiving under this process until it is back
        (:meth:`release_abandoned`).
        """
        where = (ticket.transfer_key, ticket.file_num)
        self._held_md5.pop(where, None)
        self._computed_md5.pop(where, None)
        if held is None:
            held = 0
            remove_partial(ticket.partial_path)
        try:
            try:
                released = yield self.calls.release(ticket.transfer_key, ticket.file_num, held, ticket.partial_path)
            finally:
                self._in_flight.discard(where)  # after: the sweep of abandoned files never races the release
            if not released:
                # the transfer ended meanwhile (or this file is not receiving any more): its partial goes
                record = yield self.calls.get(ticket.transfer_key)
                if record is None:
                    remove_partial(ticket.partial_path)
                elif held == 0:
                    yield self.calls.set_progress(ticket.transfer_key, ticket.file_num, 0, ticket.partial_path)
                return held
        except StateUnavailable as error:
            _log.warn("file {num} of a transfer stays receiving for now: {reason}", num=ticket.file_num, reason=error)
            return held
        if md5 is not None and held:
            if len(self._held_md5) >= self.held_md5_limit:
                del self._held_md5[next(iter(self._held_md5))]
            self._held_md5[where] = (held, md5)
        return held

    @defer.inlineCallbacks
    def checkpoint(self, ticket: UploadTicket, held: int) -> _Steps[None]:
        """``held`` bytes of a body still arriving are synced: recorded, so a crash (SIGKILL) keeps them.
        Never fails (a database away: recorded at the next checkpoint, or when the body ends)."""
        if (ticket.transfer_key, ticket.file_num) not in self._in_flight:
            return None
        try:
            states: dict[int, FileState] = yield self.calls.states(ticket.transfer_key)
            if states.get(ticket.file_num) is FileState.RECEIVING:
                yield self.calls.set_progress(ticket.transfer_key, ticket.file_num, held, ticket.partial_path)
        except StateUnavailable:
            pass
        return None

    #: running MD5s of kept partials remembered per process (the oldest forgotten first)
    held_md5_limit = 10_000

    @defer.inlineCallbacks
    def upload_offset(
        self, prefix: str, transfer_key: str, file_num: str | int, id_token: IdToken
    ) -> _Steps[UploadOffset]:
        """The durable bytes held of one file, for its uploader (tus ``HEAD``); a stored file holds its size."""
        record: TransferRecord = yield self._owned_record(prefix, transfer_key, id_token)
        entry = self._entry(record, file_num)
        states: dict[int, FileState] = yield self.calls.states(record.key)
        state = states.get(entry.num, FileState.PENDING)
        if state is FileState.CANCELLED:
            raise FileNotFound(f"file {entry.num} of this transfer was taken over by a newer manifest")
        progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
        held = progress.get(entry.num, (0, ""))[0]
        if state is FileState.STORED:
            size = held if entry.size is None else entry.size
            return UploadOffset(size, size, record.expires)
        return UploadOffset(held, entry.size, record.expires)

    @defer.inlineCallbacks
    def fail_upload(self, ticket: UploadTicket) -> _Steps[None]:
        """The body did not make it (or failed verification): the file is pending again. Never fails."""
        self._in_flight.discard((ticket.transfer_key, ticket.file_num))
        self._computed_md5.pop((ticket.transfer_key, ticket.file_num), None)
        try:
            states: dict[int, FileState] = yield self.calls.states(ticket.transfer_key)
            state = states.get(ticket.file_num)
            if state is FileState.RECEIVING:
                yield self.calls.set_state(ticket.transfer_key, ticket.file_num, next_state(state, "fail"))
        except StateUnavailable as error:
            _log.warn("file {num} of a transfer stays receiving for now: {reason}", num=ticket.file_num, reason=error)
        return None

    def release_abandoned(self) -> defer.Deferred[int]:
        """Files this process holds as receiving but receives no more (their release failed while the
        shared database was away) are pending again; how many. Tables without holders: 0."""
        return self.calls.release_unreceived(frozenset(self._in_flight))

    @defer.inlineCallbacks
    def verify_upload(
        self,
        ticket: UploadTicket,
        md5_hexdigest: str,
        received: int,
        check_digests: Callable[[], None] | None = None,
    ) -> _Steps[None]:
        """Raise unless the bytes are the manifest's and the file may still be stored.

        ChecksumMismatch or LengthMismatch fail the upload (pending again);
        FileNotFound means the transfer was cancelled meanwhile.
        ``check_digests`` checks the digests the request named (raising
        ChecksumMismatch): a mismatch there is treated as an MD5 mismatch.
        """
        states: dict[int, FileState] = yield self.calls.states(ticket.transfer_key)
        if states.get(ticket.file_num) is not FileState.RECEIVING:
            raise FileNotFound("the transfer was cancelled while the file was arriving")
        if received != ticket.entry.size:
            yield self.fail_upload(ticket)
            raise LengthMismatch(f"received {received} bytes, expected {ticket.entry.size}")
        if ticket.entry.checksum and md5_hexdigest != ticket.entry.checksum:
            yield self._back_to_zero(ticket)
            raise ChecksumMismatch(
                f"checksum mismatch for {ticket.entry.name}: "
                f"received {md5_hexdigest}, manifest says {ticket.entry.checksum}"
            )
        if check_digests is not None:
            try:
                check_digests()
            except ChecksumMismatch:
                yield self._back_to_zero(ticket)
                raise
        if not ticket.entry.checksum:
            # announced without an MD5 (tus creation): the one computed is the file's, given to CompleteUpload
            self._computed_md5[(ticket.transfer_key, ticket.file_num)] = md5_hexdigest
        return None

    @defer.inlineCallbacks
    def _back_to_zero(self, ticket: UploadTicket) -> _Steps[None]:
        """The bytes are wrong: the file is pending at offset 0 (recorded before its partial is removed)."""
        self._held_md5.pop((ticket.transfer_key, ticket.file_num), None)
        try:
            yield self.calls.set_progress(ticket.transfer_key, ticket.file_num, 0, ticket.partial_path)
        except StateUnavailable:
            pass  # the file's offset is recorded again when the database is back and a body comes
        yield self.fail_upload(ticket)
        return None

    @defer.inlineCallbacks
    def complete_upload(self, ticket: UploadTicket) -> _Steps[None]:
        """The file is verified and in place: mark it stored and call CompleteUpload.

        If CompleteUpload fails, the file goes back to pending and the failure
        propagates (the transport removes the file).
        """
        adapter = self._adapter(ticket.prefix)
        states: dict[int, FileState] = yield self.calls.states(ticket.transfer_key)
        stored = next_state(states.get(ticket.file_num, FileState.PENDING), "complete")
        file_info = ticket.file_info
        computed = self._computed_md5.pop((ticket.transfer_key, ticket.file_num), None)
        if computed is not None:
            file_info["checksum"] = computed
        try:
            yield self._timed(adapter.complete_upload(ticket.id_token, file_info), "CompleteUpload")
        except BaseException:
            yield self.fail_upload(ticket)
            raise
        yield self.calls.set_state(ticket.transfer_key, ticket.file_num, stored)
        yield self.calls.set_progress(ticket.transfer_key, ticket.file_num, ticket.entry.counted_size, "")
        self._in_flight.discard((ticket.transfer_key, ticket.file_num))
        self._held_md5.pop((ticket.transfer_key, ticket.file_num), None)
        return None

    @defer.inlineCallbacks
    def hold_verified(self, ticket: UploadTicket, held: int, md5: Any = None) -> _Steps[bool]:
        """A file of an atomic batch is verified and its ``held`` bytes synced in its partial: it waits.

        Recorded in this order (a crash between two steps leaves a file
        pending, never one verified without its final path): the final path
        (the batch log), the bytes held, then the state ``verified``. False
        when the file is no longer receiving (the transfer was cancelled).
        ``md5``, the running MD5 of the held bytes, is remembered: a take-over
        that carries the file on needs not read it again.
        """
        where = (ticket.transfer_key, ticket.file_num)
        self._held_md5.pop(where, None)
        if md5 is not None and len(self._held_md5) < self.held_md5_limit:
            self._held_md5[where] = (held, md5)
        try:
            yield self.calls.hold(ticket.transfer_key, ticket.file_num, ticket.partial_path, ticket.final_path)
            yield self.calls.set_progress(ticket.transfer_key, ticket.file_num, held, ticket.partial_path)
            verified: bool = yield self.calls.transition(
                ticket.transfer_key, ticket.file_num, FileState.RECEIVING, FileState.VERIFIED
            )
        finally:
            self._in_flight.discard(where)  # after: the sweep of abandoned files never races these steps
        return verified

    def uploads_in_flight(self) -> int:
        """How many file bodies this process has accepted and not yet stored or failed."""
        return len(self._in_flight)

    # -- downloads and listing ------------------------------------------------

    def resolve_download(self, prefix: str, url_path: str, id_token: IdToken) -> defer.Deferred[DownloadTarget]:
        """Ask the handler where ``url_path`` lives; fires with a DownloadTarget."""
        try:
            target = self.resolve_download_now(prefix, url_path, id_token)
        except BaseException:
            return defer.fail()
        return target if isinstance(target, defer.Deferred) else defer.succeed(target)

    def resolve_download_now(
        self, prefix: str, url_path: str, id_token: IdToken
    ) -> DownloadTarget | defer.Deferred[DownloadTarget]:
        """:meth:`resolve_download` without a Deferred when the handler answers at once.

        A handler returning a value (or raising) is answered here, synchronously:
        the DownloadTarget, or the exception raised. One returning a Deferred or
        a coroutine gives a Deferred (with the handler timeout) firing with it.
        """
        answer = self._adapter(prefix).get_download_filename_now(id_token, url_path)
        if isinstance(answer, defer.Deferred):
            later: defer.Deferred[object] = self._timed(answer, "GetDownloadFilename")
            return later.addCallback(_download_target, url_path)
        return _download_target(answer, url_path)

    def list_files(self, prefix: str, id_token: IdToken) -> defer.Deferred[Any]:
        """The handler's listing of ``prefix``; fails with FileNotFound when it cannot list.

        Like every engine method that returns a Deferred, a refusal is a failed
        Deferred, never an exception raised at the call.
        """
        try:
            adapter = self._adapter(prefix)
        except TransferError:
            return defer.fail()
        return self._timed(adapter.list_files(id_token), "ListFiles")

    def delete_file(self, prefix: str, url_path: str, id_token: IdToken) -> defer.Deferred[Any]:
        """The handler's ``DeleteFile`` of ``url_path`` for ``id_token`` (a failed Deferred for a refusal)."""
        try:
            adapter = self._adapter(prefix)
        except TransferError:
            return defer.fail()
        return self._timed(adapter.delete_file(id_token, url_path), "DeleteFile")

    # -- transfer state, cancel, expiry ----------------------------------------

    @defer.inlineCallbacks
    def is_live_transfer(self, transfer_key: str) -> _Steps[bool]:
        """True when ``transfer_key`` names a transfer that has not expired."""
        record: TransferRecord | None = yield self.calls.get(transfer_key)
        return record is not None and not record.expired(self.clock())

    @defer.inlineCallbacks
    def transfer_status(
        self,
        prefix: str,
        transfer_key: str,
        id_token: IdToken,
        locate: Callable[[str, str], str | None] | None = None,
    ) -> _Steps[dict[str, Any]]:
        """The state of each file of a transfer, for its owner.

        With ``locate`` (prefix, file name -> URL or None), each file also
        has its ``url``: the engine knows no URLs, the edge that asks does.
        """
        record: TransferRecord = yield self._owned_record(prefix, transfer_key, id_token)
        states: dict[int, FileState] = yield self.calls.states(record.key)
        progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
        files: list[dict[str, object]] = []
        for entry in record.manifest.files:
            state = states.get(entry.num, FileState.PENDING)
            file: dict[str, object] = {
                "file_num": entry.num,
                "name": entry.name,
                "size": entry.size,
                "checksum": entry.checksum,
                "state": state.value,
                "offset": entry.size if state is FileState.STORED else progress.get(entry.num, (0, ""))[0],
            }
            if locate is not None:
                file["url"] = locate(record.prefix, entry.name)
            files.append(file)
        return {
            "transfer_key": record.key,
            "prefix": record.prefix,
            "owner": record.owner_dn,
            "created": record.created,
            "expires": record.expires,
            "complete": all(s is FileState.STORED for s in states.values()),
            "files": files,
        }

    @defer.inlineCallbacks
    def cancel_transfer(self, prefix: str, transfer_key: str, id_token: IdToken) -> _Steps[None]:
        """Cancel a transfer for its owner: pending files are given up, the key forgotten.

        Refused (UploadConflict) while one of its files is arriving.
        """
        record: TransferRecord = yield self._owned_record(prefix, transfer_key, id_token)
        receiving = yield self._receiving(record)
        if receiving:
            raise UploadConflict("a file of this transfer is arriving: cancel after it ends")
        yield self._end_transfer(record)
        return None

    @defer.inlineCallbacks
    def terminate_upload(
        self, prefix: str, transfer_key: str, file_num: str | int, id_token: IdToken
    ) -> _Steps[None]:
        """Give up one pending file of a transfer for its owner (tus termination).

        The file is cancelled (``CancelPendingUpload``, its partial removed);
        a key left with nothing pending is forgotten. Fails with FileNotFound
        (unknown key or file, or cancelled already), NotAuthorized (another
        person) or UploadConflict (its body is arriving, or it is stored).
        """
        record: TransferRecord = yield self._owned_record(prefix, transfer_key, id_token)
        entry = self._entry(record, file_num)
        adapter = self._adapter(prefix)
        states: dict[int, FileState] = yield self.calls.states(record.key)
        state = states.get(entry.num, FileState.PENDING)
        if state is FileState.CANCELLED:
            raise FileNotFound(f"file {entry.num} of this transfer was cancelled")
        if state is FileState.STORED:
            raise UploadConflict("file is already stored: it is not removed through its upload URL")
        arriving = (record.key, entry.num) in self._in_flight
        if not arriving:
            cancelled = yield self.calls.transition(record.key, entry.num, FileState.PENDING, FileState.CANCELLED)
            arriving = not cancelled
        if arriving:
            raise UploadConflict("file is arriving on another connection: terminate it after that ends")
        yield self._terminated(adapter, record, entry)
        return None

    @defer.inlineCallbacks
    def _terminated(self, adapter: HandlerAdapter, record: TransferRecord, entry: FileEntry) -> _Steps[None]:
        """A file just cancelled by its owner: its partial goes, the handler is told, an empty key forgotten."""
        self._held_md5.pop((record.key, entry.num), None)
        progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
        remove_partial(progress.get(entry.num, (0, ""))[1])
        states: dict[int, FileState] = yield self.calls.states(record.key)
        if all(state in SETTLED for state in states.values()):
            yield self.calls.remove(record.key)
        yield self._cancel_quietly(adapter, IdToken(dn=record.owner_dn), entry.name)
        return None

    @defer.inlineCallbacks
    def expire_transfers(self) -> _Steps[int]:
        """Forget every expired key, calling CancelPendingUpload for its unstored files.

        A transfer with a file still arriving is left for a later sweep: that
        body was accepted while the key lived and may still be stored. Fires
        with the number of transfers expired.
        """
        yield self.release_abandoned()
        candidates: list[TransferRecord] = yield self.calls.expired(self.clock())
        expired: list[TransferRecord] = []
        for candidate in candidates:
            receiving = yield self._receiving(candidate)
            if not receiving:
                expired.append(candidate)
        ended = 0
        for record in expired:
            states: dict[int, FileState] = yield self.calls.states(record.key)
            unsettled = [e.num for e in record.manifest.files if states.get(e.num, FileState.PENDING) not in SETTLED]
            if not (yield self._end_transfer(record)):
                continue  # another sweep (another server of this process, another node) ended it
            ended += 1
            if self.events and unsettled:  # a key whose files were all stored ends quietly
                self.events.emit(TransferEvent(
                    EXPIRY, time.time(), dn=record.owner_dn, prefix=record.prefix, key=key_hash(record.key),
                    size=sum(record.manifest.files[num].counted_size for num in unsettled),
                    reason=f"{len(unsettled)} of {record.manifest.num_files} file(s) never stored", action=EXPIRY,
                ))
        return ended

    @defer.inlineCallbacks
    def _receiving(self, record: TransferRecord) -> _Steps[bool]:
        """A file of the transfer is arriving, or its atomic batch is being published."""
        intent = yield self.calls.intent(record.key)
        if intent is not None:
            return True
        states: dict[int, FileState] = yield self.calls.states(record.key)
        return FileState.RECEIVING in states.values()

    @defer.inlineCallbacks
    def _end_transfer(self, record: TransferRecord) -> _Steps[bool]:
        """Forget the transfer, cancelling its unsettled files; False when another sweep ended it first."""
        states: dict[int, FileState] = yield self.calls.states(record.key)
        progress: dict[int, tuple[int, str]] = yield self.calls.progress(record.key)
        removed = yield self.calls.remove(record.key)
        if not removed:
            return False  # another process (a worker, another node) ended it first
        yield self.calls.forget(record.key)
        for entry in record.manifest.files:
            self._held_md5.pop((record.key, entry.num), None)
            if states.get(entry.num) not in SETTLED:
                remove_partial(progress.get(entry.num, (0, ""))[1])
        adapter = self._adapters.get(record.prefix)
        if adapter is None:
            return True
        owner = IdToken(dn=record.owner_dn)
        for entry in record.manifest.files:
            if states.get(entry.num) not in SETTLED:
                yield self._cancel_quietly(adapter, owner, entry.name)
            yield self._breathe(entry.num)
        return True

    @defer.inlineCallbacks
    def _cancel_quietly(self, adapter: HandlerAdapter, id_token: IdToken, name: str) -> _Steps[None]:
        try:
            yield self._timed(adapter.cancel_pending_upload(id_token, name), "CancelPendingUpload")
        except Exception:
            _log.failure("CancelPendingUpload failed for {name}", name=name)
        return None

    # -- handler timeouts and lookups ---------------------------------------------

    def _timed(self, result: defer.Deferred[object], callback: str) -> defer.Deferred[object]:
        """``result``, failing with HandlerTimeout if the handler's ``callback`` takes too long."""
        if self.handler_timeout is None or self.timer is None or result.called:
            return result
        timeout = self.handler_timeout

        def timed_out(failure: Failure) -> object:
            if not isinstance(failure.value, (defer.TimeoutError, defer.CancelledError)):
                return failure
            _log.error("handler {callback} did not answer in {t}s", callback=callback, t=timeout)
            raise HandlerTimeout(f"the handler did not answer in {timeout:g} s")

        result.addTimeout(timeout, self.timer)
        result.addErrback(timed_out)
        return result

    def _adapter(self, prefix: str) -> HandlerAdapter:
        adapter = self._adapters.get(prefix)
        if adapter is None:
            raise self._no_such_prefix(prefix)
        return adapter

    @defer.inlineCallbacks
    def _live_record(self, transfer_key: str) -> _Steps[TransferRecord]:
        record: TransferRecord | None = yield self.calls.get(transfer_key)
        if record is None or record.expired(self.clock()):
            raise FileNotFound("unknown or expired transfer key")
        return record

    @defer.inlineCallbacks
    def _owned_record(self, prefix: str, transfer_key: str, id_token: IdToken) -> _Steps[TransferRecord]:
        record: TransferRecord = yield self._live_record(transfer_key)
        if record.prefix != prefix:
            raise FileNotFound("unknown or expired transfer key")
        if id_token.person != record.owner_dn:
            raise NotAuthorized("this transfer belongs to another identity")
        return record

    @staticmethod
    def _entry(record: TransferRecord, file_num: int | str) -> FileEntry:
        text = str(file_num)
        if not text.isdigit() or not text.isascii():
            raise FileNotFound(f"no file number {text!r} in this transfer")
        num = int(text)
        if num >= record.manifest.num_files:
            raise FileNotFound(f"no file number {num} in this transfer")
        return record.manifest.files[num]


__all__ = [
    "DEFAULT_MANIFEST_TTL",
    "ManifestOutcome",
    "TakeOver",
    "TransferEngine",
    "UploadOffset",
    "UploadTicket",
    "next_state",
]
