"""The directory-backed default handler (``--store PREFIX=DIRECTORY``).

:class:`DirectoryStore` owns one directory: the files live directly in it and
their metadata in :class:`~gsitransfer.store.metadata.StoreMetadata`
(``.gsitransfer-store.sqlite`` there). It decides which names may be
uploaded and which paths may be downloaded; the bytes themselves are moved
by the transport (through :mod:`gsitransfer.filesink`).

Rules:

* every name starting with ``.gsitransfer`` (the database, its ``-wal`` and
  ``-shm``, files in flight) is invisible: never downloaded, listed or
  uploaded;
* a download path never resolves outside the directory, symlinks included,
  and only regular files are served; a file still ``pending`` is not served;
* a name that exists on disk, or is pending for a live upload, is refused at
  the manifest;
* a file is served with its MD5 only while its size and mtime are those it
  was stored with (a file placed or replaced by hand is served without one);
* other digests (``Want-Digest``: sha-256, adler32, ...; an MD5 computed for a
  file placed by hand) are kept beside the MD5 in the same database
  (:class:`~gsitransfer.handler.IDigestKeeper`), each only for the file state
  it was computed for (device, inode, size, mtime);
* every callback is synchronous and does a bounded amount of work (a few
  system calls and single SQLite statements); only ``ListFiles`` and
  ``recover`` look at the whole directory.
"""

from __future__ import annotations

import datetime
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.logger import Logger
from zope.interface import implementer

from ..errors import FileNotFound, NameTaken, NoSpaceForFile, NotAuthorized, UploadConflict
from ..filesink import FREE_SPACE_MARGIN, is_partial_name, partial_path_for, remove_stale_temporaries, sync_directory
from ..handler import (
    DownloadTarget,
    IBatchPendingHandler,
    IDeleteHandler,
    IDigestKeeper,
    IListingHandler,
    ITransferHandler,
    file_state,
)
from ..identity import IdToken
from .metadata import DB_NAME, FileRecord, FileState, MetadataTable, StoreError, StoreMetadata

#: names starting with this belong to the server and are invisible to clients
HIDDEN_PREFIX = ".gsitransfer"

DEFAULT_PENDING_TTL = 24 * 3600.0

#: download checksums remembered per file state (the oldest is forgotten first)
CHECKSUM_CACHE_SIZE = 4096

_UNKNOWN = object()

_log = Logger()


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`DirectoryStore.recover` cleaned up."""

    #: temporary files left in flight by a previous run, removed
    removed_temporaries: tuple[str, ...] = ()
    #: partial files of resumable uploads whose name is no longer pending, removed
    removed_partials: tuple[str, ...] = ()
    #: pending rows older than the pending TTL, forgotten
    expired_pending: tuple[str, ...] = ()
    #: expired pending rows whose file was already in place, recorded as stored
    promoted_pending: tuple[str, ...] = ()
    #: stored rows whose file had vanished from the directory, forgotten
    vanished_stored: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(
            (
                self.removed_temporaries,
                self.removed_partials,
                self.expired_pending,
                self.promoted_pending,
                self.vanished_stored,
            )
        )


def _is_hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIX)


def _unsafe_upload_name(name: object) -> str | None:
    """Why ``name`` cannot be a file of the store, or None when it can."""
    if not isinstance(name, str) or not name:
        return "an empty file name"
    if name in (".", ".."):
        return f"the file name {name!r}"
    if "/" in name or "\\" in name:
        return "a path separator in the file name"
    if "\0" in name:
        return "a NUL character in the file name"
    if _is_hidden(name):
        return f"a file name starting with {HIDDEN_PREFIX!r}"
    return None


def _unsafe_segment(segment: str) -> bool:
    return (
        segment in ("", ".", "..")
        or "\0" in segment
        or "\\" in segment
        or _is_hidden(segment)
    )


def _listable(name: str) -> bool:
    """True for a directory entry a client could also download by that name."""
    if _unsafe_segment(name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes on disk (surrogate escapes)
        return False
    return True


def _iso8601(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _file_num(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


#: the --listing-owners choices
LISTING_OWNERS = ("all", "own", "none")


@implementer(ITransferHandler, IListingHandler, IBatchPendingHandler, IDigestKeeper, IDeleteHandler)

class DirectoryStore:
    """A handler that keeps uploaded files in ``root`` and serves them back."""

    def __init__(
        self,
        root: str,
        *,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        clock: Callable[[], float] = time.time,
        recover: bool = True,
        listing_owners: str = "own",
        metadata: MetadataTable | None = None,
    ) -> None:
        """``listing_owners`` (``--listing-owners``): whose uploader DN a listing
        shows: ``all``, ``own`` (only the asking person's own, never to
        anonymous clients; the default) or ``none``. ``recover=False`` skips the start-up clean-up: a ``--workers`` worker
        process shares a directory whose supervisor already recovered it, and
        other workers' temporary files in it are live. ``metadata``: the rows kept elsewhere
        (a PostgreSQL ``--state`` shared by nodes on one shared directory: SPEC 9.2); the
        start-up clean-up then leaves temporary files alone, as other nodes' may be live."""
        if pending_ttl <= 0:
            raise ValueError("pending_ttl must be positive")
        if listing_owners not in LISTING_OWNERS:
            raise ValueError(f"listing_owners must be one of {', '.join(LISTING_OWNERS)}")
        self.root = os.path.abspath(root)
        self.pending_ttl = pending_ttl
        self.listing_owners = listing_owners
        self.clock = clock
        _make_directory(self.root)
        self._real_root = os.path.realpath(self.root)
        #: the metadata is shared with other nodes (kept in PostgreSQL), not this directory's own
        self.shared = metadata is not None
        self.metadata: MetadataTable = metadata if metadata is not None else StoreMetadata(os.path.join(self.root, DB_NAME))
        #: (name, file_state) -> MD5 or None, for downloads:
        #: a file replaced, touched or renamed has another key, so its checksum is looked up again
        self._checksums: dict[tuple[Any, ...], str | None] = {}
        if recover:
            self.recover()

    def close(self) -> None:
        """Close the metadata database."""
        self.metadata.close()

    # -- downloads ----------------------------------------------------------------

    def GetDownloadFilename(self, id_token: IdToken, url_path: str) -> DownloadTarget:
        """Seed ``GetDownloadFilename``: the file behind ``url_path``, with its MD5 when known.

        Raises FileNotFound for an unsafe or hidden path, anything outside the
        store (symlinks resolved), anything not a regular file, and a file
        still being uploaded.
        """
        found = self.cached_download(url_path)
        if found is not None:
            return found
        real_path, status, relative = self._resolve_download(url_path)
        key = (relative, file_state(status))
        record = self.metadata.get(relative)
        if record is not None and record.state is FileState.PENDING:
            raise FileNotFound(f"no file {url_path!r} (it is still being uploaded)")
        checksum = _checksum(record, status)
        if len(self._checksums) >= CHECKSUM_CACHE_SIZE:
            del self._checksums[next(iter(self._checksums))]
        self._checksums[key] = checksum
        return DownloadTarget(real_path, checksum)

    def cached_download(self, url_path: str) -> DownloadTarget | None:
        """:meth:`GetDownloadFilename` when this process remembers the file's MD5 for its present
        state (no metadata asked), else None; raises FileNotFound as it does."""
        if not url_path or any(_unsafe_segment(s) for s in url_path.split("/")):
            raise FileNotFound(f"no file {url_path!r}")
        real_path, status, relative = self._resolve_download(url_path)
        key = (relative, file_state(status))
        cached = self._checksums.get(key, _UNKNOWN)
        if cached is _UNKNOWN:
            return None
        return DownloadTarget(real_path, cached)  # type: ignore[arg-type]

    def _resolve_download(self, relative: str) -> tuple[str, os.stat_result, str]:
        """:meth:`_resolve`, with one ``lstat`` for a plain file directly in the store.

        A single safe segment that is a regular file and not a symlink is the
        file ``<real root>/<segment>``: no path to resolve. Anything else
        (subdirectories, symlinks, missing files) goes through :meth:`_resolve`.
        """
        if "/" not in relative:
            real_path = os.path.join(self._real_root, relative)
            try:
                status = os.lstat(real_path)
            except (OSError, ValueError):
                status = None
            if status is not None and stat.S_ISREG(status.st_mode):
                return real_path, status, relative
        return self._resolve(relative)

    def _resolve(self, relative: str) -> tuple[str, os.stat_result, str]:
        """Real path, stat and real path relative to the store of a regular file in it."""
        missing = FileNotFound(f"no file {relative!r}")
        real_path = os.path.realpath(os.path.join(self._real_root, relative))
        inside = os.path.relpath(real_path, self._real_root)
        if (
            os.path.isabs(inside)
            or inside == os.curdir
            or inside == os.pardir
            or inside.startswith(os.pardir + os.sep)
            or any(_is_hidden(segment) for segment in inside.split(os.sep))
        ):
            raise missing
        try:
            status = os.stat(real_path)
        except (OSError, ValueError):
            raise missing from None
        if not stat.S_ISREG(status.st_mode):
            raise missing
        return real_path, status, inside

    # -- uploads ------------------------------------------------------------------

    def CanUpload(self, id_token: IdToken, file_info: Mapping[str, Any]) -> bool:
        """Seed ``CanUpload``: True for a new, safe name that fits on the disk.

        Raises NotAuthorized with the reason otherwise: unsafe or hidden name,
        a file of that name exists or it is being uploaded (pending row younger
        than ``pending_ttl``; both NameTaken, a conflict), or the transfer's files together
        (``transfer_size``) are larger than the free space.
        """
        name = file_info.get("name")
        unsafe = _unsafe_upload_name(name)
        if unsafe is not None:
            raise NotAuthorized(f"refused: {unsafe}")
        assert isinstance(name, str)
        if os.path.lexists(os.path.join(self.root, name)):
            raise NameTaken(f"a file named {name} already exists")
        record = self.metadata.get(name)
        if record is not None:
            if record.state is FileState.STORED:
                # stored, but the file has been removed since: the row is stale
                self.metadata.delete_stored(name)
            elif self.clock() - record.created < self.pending_ttl:
                raise NameTaken(f"a file named {name} is already being uploaded")
        size = int(file_info.get("size") or 0)  # None: a chunked PUT's, checked as it arrives
        self._check_free_space(name, max(size, int(file_info.get("transfer_size") or size)))
        return True

    def _check_free_space(self, name: str, size: int) -> None:
        try:
            fs = os.statvfs(self.root)
        except OSError as error:
            raise NotAuthorized(f"the store is unavailable: {error.strerror}") from None
        available = max(0, fs.f_bavail * fs.f_frsize - FREE_SPACE_MARGIN)
        if size > available:
            raise NoSpaceForFile(
                f"{name} is too large: {size} bytes, {available} bytes free on the server"
            )

    def AddPendingUpload(self, id_token: IdToken, filename: str) -> None:
        """Seed ``AddPendingUpload``: record ``filename`` as pending for ``id_token``'s DN.

        Raises NotAuthorized, changing nothing, if the name was reserved since
        ``CanUpload`` said yes (by a manifest on another ``--workers`` process).
        """
        now = self.clock()
        if not self.metadata.add_pending(filename, id_token.person, now, now - self.pending_ttl):
            raise NameTaken(f"a file named {filename} is already being uploaded")

    def AddPendingUploads(self, id_token: IdToken, filenames: list[str]) -> None:
        """Batch ``AddPendingUpload`` (IBatchPendingHandler): all names or none, in one transaction."""
        now = self.clock()
        taken = self.metadata.add_pending_many(filenames, id_token.person, now, now - self.pending_ttl)
        if taken is not None:
            raise NameTaken(f"a file named {taken} is already being uploaded")

    def GetUploadFilename(self, id_token: IdToken, file_info: Mapping[str, Any]) -> str | None:
        """Seed ``GetUploadFilename``: the final path if the name is pending for this DN, else None.

        The first call ties the pending row to the transfer key in
        ``file_info``; another transfer key gets None for that name.
        """
        name = file_info.get("name")
        if _unsafe_upload_name(name) is not None:
            return None
        assert isinstance(name, str)
        key = file_info.get("transfer_key")
        bound = self.metadata.bind_pending(
            name,
            id_token.person,
            None if key is None else str(key),
            _file_num(file_info.get("file_num")),
        )
        return os.path.join(self.root, name) if bound else None

    def CompleteUpload(self, id_token: IdToken, file_info: Mapping[str, Any]) -> None:
        """Seed ``CompleteUpload``: the file is in place; record it as stored with its MD5."""
        name = str(file_info["name"])
        try:
            mtime_ns: int | None = os.stat(os.path.join(self.root, name)).st_mtime_ns
        except OSError:
            mtime_ns = None
        checksum = file_info.get("checksum")
        key = file_info.get("transfer_key")
        self.metadata.mark_stored(
            name,
            id_token.person,
            size=int(file_info["size"]),
            md5=None if checksum is None else str(checksum).lower(),
            mtime_ns=mtime_ns,
            now=self.clock(),
            transfer_key=None if key is None else str(key),
            file_num=_file_num(file_info.get("file_num")),
        )

    def CancelPendingUpload(self, id_token: IdToken, filename: str) -> None:
        """Seed ``CancelPendingUpload``: forget ``filename``'s pending row (never a stored one)."""
        self.metadata.cancel_pending(filename, id_token.person)

    # -- digests ------------------------------------------------------------------

    def KnownDigests(self, path: str, identity: tuple[int, int, int, int]) -> dict[str, str]:
        """``IDigestKeeper``: the digests kept for the store's file at ``path`` in state ``identity``."""
        name = self._name_of(path)
        return {} if name is None else self.metadata.digests(name, identity)

    def KeepDigests(self, path: str, identity: tuple[int, int, int, int], digests: dict[str, str]) -> None:
        """``IDigestKeeper``: keep ``digests`` beside the MD5 for the store's file at ``path``."""
        name = self._name_of(path)
        if name is not None:
            self.metadata.keep_digests(name, identity, digests)

    def _name_of(self, path: str) -> str | None:
        """The name (relative path) in the store of ``path``, or None when it is not one of its files."""
        for root in (self._real_root, self.root):
            relative = os.path.relpath(path, root)
            if not (
                os.path.isabs(relative)
                or relative in (os.curdir, os.pardir)
                or relative.startswith(os.pardir + os.sep)
                or any(_is_hidden(segment) for segment in relative.split(os.sep))
            ):
                return relative
        return None

    # -- deleting -----------------------------------------------------------------

    def DeleteFile(self, id_token: IdToken, url_path: str) -> None:
        """``IDeleteHandler.DeleteFile``: the file's uploader removes it (``DELETE``, WebDAV).

        Only the identity recorded as the file's uploader may delete it (an
        anonymous upload: anonymous clients); a file without a record (placed
        in the directory by other means) is nobody's to delete over HTTP.
        A name being uploaded is a conflict. The file's row and kept digests go
        with it.
        """
        if not url_path or "/" in url_path or _unsafe_segment(url_path):
            raise FileNotFound(f"no file {url_path!r}")
        record = self.metadata.get(url_path)
        if record is not None and record.state is FileState.PENDING:
            raise UploadConflict(f"{url_path} is being uploaded: it cannot be deleted now")
        real_path, _, relative = self._resolve_download(url_path)
        if record is None:
            raise NotAuthorized(f"{url_path} has no recorded uploader: only the store's administrator may remove it")
        if record.owner_dn != id_token.person:
            raise NotAuthorized(f"only the uploader of {url_path} may delete it")
        try:
            os.unlink(real_path)
        except FileNotFoundError:
            raise FileNotFound(f"no file {url_path!r}") from None
        except OSError as error:
            raise NotAuthorized(f"{url_path} cannot be deleted: {error.strerror}") from None
        sync_directory(os.path.dirname(real_path))
        self.metadata.delete_stored(relative)
        self.metadata.forget_digests([relative])
        _log.info("deleted {name} for {dn}", name=relative, dn=id_token.dn or "anonymous")

    # -- listing ------------------------------------------------------------------

    def ListFiles(self, id_token: IdToken) -> list[dict[str, Any]]:
        """The files that can be downloaded from the top of the store, sorted by name.

        Each is ``{name, size, checksum, owner, modified, uploaded}``; times are
        ISO 8601 UTC, ``checksum``/``owner``/``uploaded`` None when unknown.
        """
        records = self.metadata.records()
        listing: list[dict[str, Any]] = []
        with os.scandir(self.root) as entries:
            names = sorted(entry.name for entry in entries if _listable(entry.name))
        for name in names:
            try:
                _, status, relative = self._resolve(name)
            except FileNotFound:
                continue
            record = records.get(relative)
            if record is not None and record.state is FileState.PENDING:
                continue
            listing.append(
                {
                    "name": name,
                    "size": status.st_size,
                    "checksum": _checksum(record, status),
                    "owner": self._shown_owner(record, id_token),
                    "modified": _iso8601(status.st_mtime),
                    "uploaded": None if record is None else _iso8601(record.completed),
                }
            )
        return listing

    def _shown_owner(self, record: Any, id_token: IdToken) -> str | None:
        """The uploader DN a listing shows to ``id_token`` under ``listing_owners``."""
        owner: str | None = None if record is None else record.owner_dn
        if self.listing_owners == "all":
            return owner
        if self.listing_owners == "own" and owner is not None and owner == id_token.person:
            return owner
        return None

    # -- start-up -----------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Clean up after a previous run (called by the constructor).

        Removes temporary files left in flight, and partial files of
        resumable uploads whose name is no longer pending (those still
        pending are kept, to be resumed); forgets pending rows older than
        ``pending_ttl`` (one whose file is already in place under its final
        name — a crash between the rename and ``CompleteUpload`` — is recorded
        as stored, without a checksum); forgets stored rows whose file is gone,
        and the digests kept for names that are no file now.
        """
        # other nodes sharing the directory may be writing their temporaries now
        removed = [] if self.shared else remove_stale_temporaries(self.root)
        cutoff = self.clock() - self.pending_ttl
        expired: list[str] = []
        promoted: list[FileRecord] = []
        for record in self.metadata.pending():
            if record.created >= cutoff:
                continue
            if self._regular_file_status(record.name) is not None:
                promoted.append(record)
            else:
                expired.append(record.name)
        vanished = [
            name
            for name in self.metadata.stored()
            if not os.path.lexists(os.path.join(self.root, name))
        ]
        self.metadata.delete(expired + vanished)
        self.metadata.forget_digests(
            [name for name in self.metadata.digest_names() if not os.path.lexists(os.path.join(self.root, name))]
        )
        for record in promoted:
            self._promote(record)
        live = {record.name for record in self.metadata.pending() if record.created >= cutoff}
        report = RecoveryReport(
            removed_temporaries=tuple(sorted(removed)),
            removed_partials=tuple(self._remove_stale_partials(live)),
            expired_pending=tuple(expired),
            promoted_pending=tuple(r.name for r in promoted),
            vanished_stored=tuple(sorted(vanished)),
        )
        if report:
            _log.info(
                "store {root}: removed {temps} temporary file(s) and {partials} partial file(s), expired {expired} pending "
                "upload(s), kept {promoted} finished but unrecorded file(s), forgot {vanished} "
                "vanished file(s)",
                root=self.root,
                temps=len(report.removed_temporaries),
                partials=len(report.removed_partials),
                expired=len(report.expired_pending),
                promoted=len(report.promoted_pending),
                vanished=len(report.vanished_stored),
            )
        return report

    def _remove_stale_partials(self, pending: set[str]) -> list[str]:
        """Remove the partial files (resumable uploads' held bytes) of names no longer pending; their names.

        A partial of a name still pending is kept: its transfer key may
        resume it (``PATCH``) after this restart.
        """
        keep = {os.path.basename(partial_path_for(os.path.join(self.root, name))) for name in pending}
        removed: list[str] = []
        try:
            names = os.listdir(self.root)
        except OSError:
            return removed
        for name in sorted(names):
            if is_partial_name(name) and name not in keep:
                try:
                    os.unlink(os.path.join(self.root, name))
                    removed.append(name)
                except OSError:
                    pass
        return removed

    def _regular_file_status(self, name: str) -> os.stat_result | None:
        try:
            status = os.lstat(os.path.join(self.root, name))
        except OSError:
            return None
        return status if stat.S_ISREG(status.st_mode) else None

    def _promote(self, record: FileRecord) -> None:
        status = self._regular_file_status(record.name)
        if status is None:
            return
        self.metadata.mark_stored(
            record.name,
            record.owner_dn,
            size=status.st_size,
            md5=None,
            mtime_ns=status.st_mtime_ns,
            now=status.st_mtime,
            transfer_key=record.transfer_key,
            file_num=record.file_num,
        )


def _checksum(record: FileRecord | None, status: os.stat_result) -> str | None:
    """The stored MD5, if the file on disk is still the one that was stored."""
    if record is None or record.state is not FileState.STORED or record.md5 is None:
        return None
    if record.size != status.st_size:
        return None
    if record.mtime_ns is not None and record.mtime_ns != status.st_mtime_ns:
        return None
    return record.md5


def _make_directory(root: str) -> None:
    """Create the store directory (mode 0755) or check the existing one."""
    if not os.path.exists(root):
        try:
            os.makedirs(root, mode=0o755, exist_ok=True)
            os.chmod(root, 0o755)
        except OSError as error:
            raise StoreError(f"cannot create store directory {root}: {error.strerror}") from None
    if not os.path.isdir(root):
        raise StoreError(f"store path {root} is not a directory")
    # effective ids: opened as the --uid account (service.acting_as), that account must write here
    if not os.access(root, os.R_OK | os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise StoreError(f"store directory {root} is not readable and writable")


__all__ = ["DirectoryStore", "RecoveryReport", "StoreError", "HIDDEN_PREFIX", "DEFAULT_PENDING_TTL"]
