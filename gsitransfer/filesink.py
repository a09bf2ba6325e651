"""Where an arriving file body goes: a temporary file beside its final name.

A :class:`FileSink` is opened for one upload. Bytes are written as they arrive
and hashed on the way (MD5); nothing is buffered whole. ``commit`` makes the
data durable (fsync) and moves it to the final name (never replacing a file
already there), then syncs the directory (writeback is started every few MiB
on the way, so the fsync has little left to do); ``discard`` removes the temporary file. The temporary name is
``.gsitransfer-<pid>-<random>.part`` in the destination directory, so a crash leaves
at worst such a file, which the store removes at start-up; a partial file
never appears under a final name.

A file of a manifest is written through a :class:`ResumableSink` instead:
its temporary is the file's *partial* (:func:`partial_path_for`,
``.gsitransfer-<hash of the final name>.partial`` beside it), which outlives a
cut-off body. ``keep`` makes what arrived durable (fdatasync) and tells how
many bytes that is, for the caller to record *after* the sync; a later
sink opened at that offset truncates the partial to it (bytes past the
recorded offset were never promised) and continues, its MD5 carried over in
memory or rebuilt by reading the held bytes once.

This is the only module that writes upload data; it knows nothing of HTTP.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from typing import Protocol

from typing import Any

from .errors import InsufficientStorage, UploadConflict, UploadFailed

TEMP_PREFIX = ".gsitransfer-"
TEMP_SUFFIX = ".part"

#: space kept free on the filesystem beyond the file itself
FREE_SPACE_MARGIN = 16 * 1024 * 1024

#: start writing data back to disk every this many bytes, so commit's fsync finds little to do
WRITEBACK_BYTES = 8 * 1024 * 1024


class _Hashers(Protocol):
    """What a sink feeds beside its MD5 (``digests.BodyHashers``)."""

    def update(self, data: bytes) -> None: ...


def is_temporary_name(name: str) -> bool:
    """True for names this module uses for files in flight."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def check_free_space(directory: str, size: int) -> None:
    """Raise InsufficientStorage when ``directory``'s filesystem cannot take ``size`` bytes."""
    try:
        stat = os.statvfs(directory)
    except OSError as error:
        raise UploadFailed(f"destination directory unavailable: {error.strerror}") from None
    available = stat.f_bavail * stat.f_frsize
    if available < size + FREE_SPACE_MARGIN:
        raise InsufficientStorage(
            f"not enough free space: {size} bytes needed, {available} available"
        )


class FileSink:
    """One upload's body on its way to ``final_path``."""

    def __init__(self, final_path: str, expected_size: int) -> None:
        self.final_path = final_path
        self.expected_size = expected_size
        directory = os.path.dirname(final_path) or "."
        check_free_space(directory, expected_size)
        self.temp_path, self._fd = self._open_temp(directory)
        self._md5 = hashlib.md5(usedforsecurity=False)
        #: more digests of the same bytes (the request's digest fields), fed with the MD5, on its thread
        self.extra_hashers: _Hashers | None = None
        self.received = 0
        self._written_back = 0
        #: (device, inode, size, mtime) of the file under the final name once committed
        self.committed_identity: tuple[int, int, int, int] | None = None
        #: the final name already held exactly these bytes at commit
        self.already_present = False

    def _open_temp(self, directory: str) -> tuple[str, int | None]:
        """Create the temporary file in ``directory``: its path and descriptor."""
        path = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise UploadFailed(f"cannot create file: {error.strerror}") from None

    def write(self, data: bytes) -> None:
        """Append ``data`` to the temporary file and the running MD5."""
        self.hash(data)
        self.store(data)

    def hash(self, data: bytes) -> None:
        """Add ``data`` to the running MD5 only: ``write`` is ``hash`` then ``store``.

        The two halves may run on two threads (one each, in the same order of
        chunks), so that hashing and writing overlap.
        """
        self._md5.update(data)
        if self.extra_hashers is not None:
            self.extra_hashers.update(data)

    def store(self, data: bytes) -> None:
        """Append ``data`` to the temporary file only (see :meth:`hash`)."""
        assert self._fd is not None, "write after close"
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            self.discard()
            if error.errno in (28, 122):  # ENOSPC, EDQUOT
                raise InsufficientStorage("disk full while writing") from None
            raise UploadFailed(f"write failed: {error.strerror}") from None
        self.received += len(data)
        if self.received - self._written_back >= WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Ask the kernel to start writing what we wrote so far (it does not wait for the disk).

        On Linux, POSIX_FADV_DONTNEED starts writeback of the dirty pages of the
        range and drops the ones already clean: a big upload neither leaves
        gigabytes of dirty pages for commit's fsync nor floods the page cache.
        Elsewhere it is a hint at most; errors are ignored (fsync still decides).
        """
        start, self._written_back = self._written_back, self.received
        advise = getattr(os, "posix_fadvise", None)
        if advise is None or self._fd is None:
            return
        try:
            advise(self._fd, start, self.received - start, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def hexdigest(self) -> str:
        """MD5 of everything written so far, 32 lowercase hex."""
        return self._md5.hexdigest()

    def commit(self) -> None:
        """fsync, move to the final name without replacing anything there, fsync the directory.

        The move is a hard link then an unlink of the temporary name, so a
        file that appeared under the final name meanwhile is never
        overwritten (UploadConflict) — unless it holds exactly these bytes
        (same size and MD5), which counts as this upload in place
        (``already_present``; ``uncommit`` then leaves it). Filesystems without hard links fall back
        to a rename after an existence check.
        """
        assert self._fd is not None, "commit after close"
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
            os.close(fd)
            self._place()
            self.committed_identity = _identity(os.stat(self.final_path))
            sync_directory(os.path.dirname(self.final_path) or ".")
        except FileExistsError:
            self._remove_temp()
            if _holds(self.final_path, self.received, self.hexdigest()):
                # the same bytes are already there: a retry after a crash that
                # struck between the move and CompleteUpload
                self.already_present = True
                return
            raise UploadConflict(
                f"a file named {os.path.basename(self.final_path)} appeared meanwhile"
            ) from None
        except OSError as error:
            self._remove_temp()
            if error.errno in (28, 122):
                raise InsufficientStorage("disk full while storing") from None
            raise UploadFailed(f"cannot store file: {error.strerror}") from None

    def _place(self) -> None:
        try:
            os.link(self.temp_path, self.final_path)
        except FileExistsError:
            raise
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.lexists(self.final_path):
                raise FileExistsError(self.final_path) from None
            os.rename(self.temp_path, self.final_path)
            return
        os.unlink(self.temp_path)

    def uncommit(self) -> None:
        """Remove the committed file, if the final name is still this upload's file."""
        if self.committed_identity is None:
            return
        try:
            if _identity(os.stat(self.final_path)) == self.committed_identity:
                os.unlink(self.final_path)
        except OSError:
            pass
        self.committed_identity = None

    def discard(self) -> None:
        """Close and remove the temporary file (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
        self._remove_temp()

    def _remove_temp(self) -> None:
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
        except OSError:
            pass


def _holds(path: str, size: int, md5_hexdigest: str) -> bool:
    """True when the regular file at ``path`` has exactly ``size`` bytes with that MD5.

    A file of another size is never read. This runs on the thread that
    commits: for a body larger than ``web.offload.OFFLOAD_THRESHOLD`` that is
    the upload's writer thread, so the reactor thread reads at most that
    many bytes here (about a millisecond of MD5).
    """
    try:
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as existing:
            while chunk := existing.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == md5_hexdigest


def _identity(file_stat: os.stat_result) -> tuple[int, int, int, int]:
    return (file_stat.st_dev, file_stat.st_ino, file_stat.st_size, file_stat.st_mtime_ns)


def sync_directory(directory: str) -> None:
    """fsync a directory so a rename in it is durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str, pid: int | None = None) -> list[str]:
    """Remove files left in flight by a previous run; return their names.

    With ``pid``, only those of that (dead) process: temporary names carry the
    pid of the process writing them (``.gsitransfer-<pid>-<random>.part``).
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    owned = f"{TEMP_PREFIX}{pid}-"
    for name in names:
        if is_temporary_name(name) and (pid is None or name.startswith(owned)):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


#: the partial file of a resumable upload: ``.gsitransfer-<32 hex>.partial`` beside its final name
PARTIAL_SUFFIX = ".partial"


def partial_path_for(final_path: str) -> str:
    """Where the held bytes of the file to be published at ``final_path`` live (beside it, hidden)."""
    directory, name = os.path.split(final_path)
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(directory, f"{TEMP_PREFIX}{digest}{PARTIAL_SUFFIX}")


def is_partial_name(name: str) -> bool:
    """True for the names :func:`partial_path_for` gives."""
    return name.startswith(TEMP_PREFIX) and name.endswith(PARTIAL_SUFFIX)


def remove_partial(path: str) -> None:
    """Remove a partial file (nothing if it is gone)."""
    if not path:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


class ResumableSink(FileSink):
    """A FileSink whose temporary is the file's partial, opened at ``offset`` held bytes.

    ``md5`` is the running MD5 of those bytes when the caller kept it (a
    ``hashlib`` object, copied here); without it the held bytes are read once
    to rebuild it (so open it off the reactor thread then). A partial shorter
    than ``offset`` raises :class:`PartialLost`.
    """

    def __init__(
        self, final_path: str, expected_size: int, partial_path: str, offset: int = 0, md5: Any = None
    ) -> None:
        self._partial_path = partial_path
        self._offset = offset
        super().__init__(final_path, expected_size)
        assert self._fd is not None
        if md5 is not None:
            self._md5 = md5.copy()
        elif offset:
            try:
                self._md5 = _md5_of_prefix(self._fd, self.temp_path, offset)
            except UploadFailed:
                fd, self._fd = self._fd, None
                os.close(fd)
                raise
        self.received = self._written_back = offset

    def _open_temp(self, directory: str) -> tuple[str, int | None]:
        path = self._partial_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise UploadFailed(f"cannot open the partial file: {error.strerror}") from None
        try:
            if os.fstat(fd).st_size < self._offset:
                raise PartialLost(f"the partial file holds fewer than {self._offset} bytes")
            os.ftruncate(fd, self._offset)
            os.lseek(fd, self._offset, os.SEEK_SET)
        except PartialLost:
            os.close(fd)
            raise
        except OSError as error:
            os.close(fd)
            raise UploadFailed(f"cannot open the partial file: {error.strerror}") from None
        return path, fd

    def sync(self) -> int:
        """fdatasync what was written so far (a checkpoint while the body arrives): the bytes now durable."""
        if self._fd is None:
            raise UploadFailed("the partial file is closed")
        try:
            os.fdatasync(self._fd)
        except OSError as error:
            raise UploadFailed(f"cannot sync the partial file: {error.strerror}") from None
        return self.received

    def keep(self) -> tuple[int, Any]:
        """fdatasync and close the partial, leaving it in place: (bytes now durable, their MD5 object).

        Raises UploadFailed when the file is already closed or gone (a failed
        write discarded it) or cannot be synced; the caller then records 0.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            raise UploadFailed("the partial file was discarded")
        try:
            os.fdatasync(fd)
        except OSError as error:
            raise UploadFailed(f"cannot sync the partial file: {error.strerror}") from None
        finally:
            os.close(fd)
        return self.received, self._md5.copy()


class PartialLost(UploadFailed):
    """A partial file holds fewer bytes than were recorded (removed or truncated by hand)."""

    default_reason = "the bytes held for this file are gone"


def _md5_of_prefix(fd: int, path: str, size: int) -> Any:
    """The MD5 of the first ``size`` bytes of the open file (read once, in 1 MiB pieces)."""
    digest = hashlib.md5(usedforsecurity=False)
    done = 0
    try:
        while done < size:
            chunk = os.pread(fd, min(1 << 20, size - done), done)
            if not chunk:
                raise PartialLost(f"the partial file {os.path.basename(path)} ended early")
            digest.update(chunk)
            done += len(chunk)
    except OSError as error:
        raise UploadFailed(f"cannot read the partial file: {error.strerror}") from None
    return digest


def publish_held(held_path: str, final_path: str, size: int, md5_hexdigest: str) -> bool:
    """Publish a held (synced, verified) file at ``final_path`` without replacing anything there.

    A hard link then an unlink of the held name, as :meth:`FileSink.commit`
    (a rename after an existence check where links are not supported). A
    final name that already holds exactly these bytes (same size and MD5:
    read once) counts as published — a retry after a crash — and the held
    name is removed. True when this call linked the file, False when it was
    already there. UploadConflict when another file is there; UploadFailed
    when neither the held file nor the final one has the bytes. The
    directory is not synced here (the caller syncs each directory once).
    """
    name = os.path.basename(final_path)
    try:
        os.link(held_path, final_path)
    except FileExistsError:
        if not _holds(final_path, size, md5_hexdigest):
            raise UploadConflict(f"a file named {name} appeared meanwhile") from None
        remove_partial(held_path)
        return False
    except FileNotFoundError:
        if _holds(final_path, size, md5_hexdigest):
            return False
        raise UploadFailed(f"the verified bytes of {name} are gone") from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise UploadFailed(f"cannot publish {name}: {error.strerror}") from None
        if os.path.lexists(final_path):
            raise UploadConflict(f"a file named {name} appeared meanwhile") from None
        os.rename(held_path, final_path)
        return True
    remove_partial(held_path)
    return True
