"""Transfer keys: minting, binding to the uploader, expiry, and the table that keeps them.

A transfer key names one accepted manifest. Rules:

* a key carries 192 random bits, URL-safe base64 (32 characters);
* a key is bound to the prefix it was posted to and to the uploader's DN
  (``None`` for anonymous), fixed at minting;
* a key expires ``ttl`` seconds after minting; an expired key is unknown;
* each file of the transfer is in one :class:`FileState`.

:class:`TransferTable` is the storage contract; :class:`MemoryTransferTable`
is the in-process implementation. ``gsitransfer.transfers_db`` keeps the same
contract in SQLite so keys survive a restart. No I/O here; the clock is
injected by the caller.
"""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass
from typing import Iterable, Protocol

from .batchlog import MemoryBatchLog
from .manifest import Manifest

_KEY_BYTES = 24
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}\Z")


class FileState(str, enum.Enum):
    """Where one file of a transfer stands."""

    PENDING = "pending"
    RECEIVING = "receiving"
    STORED = "stored"
    #: taken over by a newer manifest of the same person (SPEC 7.3): never uploaded under this key
    CANCELLED = "cancelled"
    #: of an atomic batch (SPEC 7.4): verified and held, synced, until every file of the batch is
    VERIFIED = "verified"


#: states that no longer count as pending (nothing more will be stored under the key)
SETTLED = (FileState.STORED, FileState.CANCELLED)


def mint_transfer_key() -> str:
    """A new unguessable transfer key (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(_KEY_BYTES)


def looks_like_transfer_key(text: str) -> bool:
    """True when ``text`` has the shape of a key this module mints."""
    return bool(_KEY_PATTERN.match(text))


@dataclass(frozen=True)
class TransferRecord:
    """One registered manifest and who may use it."""

    key: str
    prefix: str
    owner_dn: str | None
    manifest: Manifest
    created: float
    expires: float
    #: files found already stored when the manifest was posted (manifest-time dedupe): they start
    #: ``stored``, take no pending quota, and a body posted for one is read and discarded
    already_stored: frozenset[int] = frozenset()

    def expired(self, now: float) -> bool:
        """True once the key's lifetime is over."""
        return now >= self.expires

    def initial_state(self, num: int) -> FileState:
        """The state file ``num`` starts in: stored if it was already stored, else pending."""
        return FileState.STORED if num in self.already_stored else FileState.PENDING

    def to_store(self) -> tuple[int, int]:
        """(files, bytes) this transfer adds to its owner's pending totals (not the already stored)."""
        files = size = 0
        for entry in self.manifest.files:
            if entry.num not in self.already_stored:
                files += 1
                size += entry.counted_size
        return files, size


class TransferTable(Protocol):
    """Storage for transfer records and the state of each of their files."""

    def add(self, record: TransferRecord) -> None:
        """Store a new record, each file in its ``initial_state`` (pending, or already stored)."""

    def get(self, key: str) -> TransferRecord | None:
        """The record, expired or not, or None."""

    def states(self, key: str) -> dict[int, FileState]:
        """The state of each file of the transfer."""

    def set_state(self, key: str, num: int, state: FileState) -> None:
        """Record a file's new state."""

    def transition(self, key: str, num: int, before: FileState, after: FileState) -> bool:
        """Atomically move a file from ``before`` to ``after``; False if it was not ``before``.

        Several processes may share one table (``--workers``): this is how
        exactly one of them wins a file.
        """

    def remove(self, key: str) -> bool:
        """Forget the transfer; False if it was already gone (another process removed it)."""

    def progress(self, key: str) -> dict[int, tuple[int, str]]:
        """Per file: (durable bytes held, the partial file's path or ``""``); files never begun are absent."""

    def set_progress(self, key: str, num: int, offset: int, partial: str) -> None:
        """Record a file's durable bytes and where they are (called after they were synced)."""

    def release(self, key: str, num: int, offset: int, partial: str) -> bool:
        """A receiving file is pending again holding ``offset`` durable bytes: one step; False if it was not receiving."""

    def expired(self, now: float) -> list[TransferRecord]:
        """Records whose key has expired."""

    def pending_totals(self, owner_dn: str | None, now: float) -> tuple[int, int]:
        """(files, bytes) not yet stored over the live transfers of ``owner_dn`` (None: anonymous)."""

    def records(self) -> Iterable[TransferRecord]:
        """Every record."""

    def live_owned(self, owner_dn: str | None, prefix: str, now: float) -> list[TransferRecord]:
        """The live records of ``owner_dn`` under ``prefix`` with a file neither stored nor cancelled."""

    def add_within(
        self, record: TransferRecord, max_files: int | None, max_bytes: int | None, now: float
    ) -> tuple[int, int] | None:
        """Add ``record`` only if its owner's pending totals plus it stay within the limits.

        One transaction (issue 12 finding 14): None when added, else the
        owner's (files, bytes) pending that refused it.
        """


class MemoryTransferTable:
    """A TransferTable in a dict: for tests and for servers that need no restart."""

    def __init__(self) -> None:
        self._records: dict[str, TransferRecord] = {}
        self._states: dict[str, dict[int, FileState]] = {}
        self._progress: dict[str, dict[int, tuple[int, str]]] = {}
        #: atomic batches' held files and publishing intents
        self.batches = MemoryBatchLog()

    def add(self, record: TransferRecord) -> None:
        self._records[record.key] = record
        self._states[record.key] = {e.num: record.initial_state(e.num) for e in record.manifest.files}

    def get(self, key: str) -> TransferRecord | None:
        return self._records.get(key)

    def states(self, key: str) -> dict[int, FileState]:
        return dict(self._states.get(key, {}))

    def set_state(self, key: str, num: int, state: FileState) -> None:
        if key in self._states:
            self._states[key][num] = state

    def transition(self, key: str, num: int, before: FileState, after: FileState) -> bool:
        states = self._states.get(key)
        if states is None or states.get(num) is not before:
            return False
        states[num] = after
        return True

    def remove(self, key: str) -> bool:
        self._states.pop(key, None)
        self._progress.pop(key, None)
        return self._records.pop(key, None) is not None

    def progress(self, key: str) -> dict[int, tuple[int, str]]:
        return dict(self._progress.get(key, {}))

    def set_progress(self, key: str, num: int, offset: int, partial: str) -> None:
        if key in self._states:
            self._progress.setdefault(key, {})[num] = (offset, partial)

    def release(self, key: str, num: int, offset: int, partial: str) -> bool:
        if not self.transition(key, num, FileState.RECEIVING, FileState.PENDING):
            return False
        self.set_progress(key, num, offset, partial)
        return True

    def expired(self, now: float) -> list[TransferRecord]:
        return [record for record in self._records.values() if record.expired(now)]

    def pending_totals(self, owner_dn: str | None, now: float) -> tuple[int, int]:
        files = size = 0
        for record in self._records.values():
            if record.owner_dn != owner_dn or record.expired(now):
                continue
            states = self._states.get(record.key, {})
            for entry in record.manifest.files:
                if states.get(entry.num) not in SETTLED:
                    files += 1
                    size += entry.counted_size
        return files, size

    def records(self) -> Iterable[TransferRecord]:
        return list(self._records.values())

    def live_owned(self, owner_dn: str | None, prefix: str, now: float) -> list[TransferRecord]:
        return [
            record
            for record in self._records.values()
            if record.owner_dn == owner_dn
            and record.prefix == prefix
            and not record.expired(now)
            and any(state not in SETTLED for state in self._states.get(record.key, {}).values())
        ]

    def add_within(
        self, record: TransferRecord, max_files: int | None, max_bytes: int | None, now: float
    ) -> tuple[int, int] | None:
        totals = self.pending_totals(record.owner_dn, now)
        if not fits(totals, record, max_files, max_bytes):
            return totals
        self.add(record)
        return None


def fits(totals: tuple[int, int], record: TransferRecord, max_files: int | None, max_bytes: int | None) -> bool:
    """True when ``record`` added to pending ``totals`` stays within the limits (None: no limit)."""
    files, size = totals
    new_files, new_bytes = record.to_store()
    if max_files is not None and files + new_files > max_files:
        return False
    return max_bytes is None or size + new_bytes <= max_bytes
