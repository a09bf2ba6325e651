"""A download in progress on disk: the temporary file and what is needed to resume it.

For a destination ``DIR/NAME`` the bytes arrive in ``DIR/.NAME.gsitransfer-download``
and a small JSON record ``DIR/.NAME.gsitransfer-download.meta`` keeps the
server's validator (its ``ETag``, else ``Last-Modified``), the full size and
the expected MD5. A later attempt resumes from the temporary file's size with
``Range: bytes=N-`` and ``If-Range: <validator>``, so a file that changed on
the server meanwhile is fetched again from the start. The client does not
rely on the server for that: a ``206`` whose validator is not the saved one
is thrown away too (:func:`same_representation`). Old and new bytes are
never spliced on a validator that cannot tell versions apart: only a strong
``ETag`` may resume on its own; a ``Last-Modified`` date (one-second
resolution) or a weak ETag only when the MD5 is known, so that a splice would
fail the check (:meth:`PartialDownload.resume_point`). Without a record the
temporary file cannot be trusted and is thrown away. Both files are in the
destination's directory, so the final ``os.replace`` is a rename within one
filesystem.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

TEMP_SUFFIX = ".gsitransfer-download"
META_SUFFIX = TEMP_SUFFIX + ".meta"


@dataclass(frozen=True)
class PartialMeta:
    """What the first response said about the file being downloaded."""

    url: str
    #: ETag (or Last-Modified) to send as If-Range; None: the download cannot be resumed
    validator: str | None
    total: int | None
    md5: str | None


def is_strong_etag(validator: str) -> bool:
    """``"abc"``: a strong entity tag (byte-for-byte identity, RFC 9110 §8.8.3), not ``W/"abc"`` or a date."""
    return validator.startswith('"')


def can_resume(record: PartialMeta) -> bool:
    """Whether bytes saved under ``record`` may be continued: a strong ETag, or a weaker validator and an MD5."""
    if record.validator is None:
        return False
    return is_strong_etag(record.validator) or record.md5 is not None


def same_representation(record: PartialMeta, etag: str | None, last_modified: str | None) -> bool:
    """Whether an answer with ``etag``/``last-modified`` is of the version ``record`` was saved from.

    An ETag is compared as RFC 9110's strong comparison for If-Range (both
    strong, the same characters); a date, as the same text. An answer without
    the validator cannot be the same version as far as we know.
    """
    if record.validator is None:
        return False
    if record.validator.startswith(('"', "W/")):
        return etag is not None and is_strong_etag(etag) and etag == record.validator
    return last_modified is not None and last_modified == record.validator


@dataclass(frozen=True)
class PartialDownload:
    """The temporary file and the resume record beside one destination."""

    target: Path
    temp: Path
    meta: Path

    @classmethod
    def beside(cls, target: Path) -> "PartialDownload":
        return cls(
            target,
            target.with_name(f".{target.name}{TEMP_SUFFIX}"),
            target.with_name(f".{target.name}{META_SUFFIX}"),
        )

    def resume_point(self) -> tuple[int, PartialMeta | None]:
        """Bytes already here that may be resumed from, and their record (0, None: start over)."""
        if not self.temp.exists():
            self.meta.unlink(missing_ok=True)
            return 0, None
        record = self.load()
        size = self.temp.stat().st_size
        if record is None or not can_resume(record) or (record.total is not None and size > record.total):
            self.discard()
            return 0, None
        return size, record

    def load(self) -> PartialMeta | None:
        try:
            data = json.loads(self.meta.read_text(encoding="utf-8"))
            return PartialMeta(
                url=str(data["url"]), validator=data.get("validator"),
                total=data.get("total"), md5=data.get("md5"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, record: PartialMeta) -> None:
        """Write the record atomically (a temporary name, then a rename)."""
        scratch = self.meta.with_name(self.meta.name + ".new")
        scratch.write_text(json.dumps(asdict(record)), encoding="utf-8")
        os.replace(scratch, self.meta)

    def discard(self) -> None:
        """Forget everything downloaded so far."""
        self.temp.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def commit(self) -> None:
        """Make the complete, verified temporary file the destination (fsync'd, then renamed)."""
        with open(self.temp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(self.temp, self.target)
        self.meta.unlink(missing_ok=True)
        _fsync_directory(self.target.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


__all__ = [
    "META_SUFFIX",
    "TEMP_SUFFIX",
    "PartialDownload",
    "PartialMeta",
    "can_resume",
    "is_strong_etag",
    "same_representation",
]
