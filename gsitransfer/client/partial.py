"""A download in progress on disk: the temporary file and what is needed to resume it.

For a destination ``DIR/NAME`` the bytes arrive in ``DIR/.NAME.gsitransfer-download``
and a small JSON record ``DIR/.NAME.gsitransfer-download.meta`` keeps the
server's validator (its ``ETag``, else ``Last-Modified``), the full size and
the expected MD5. A later attempt resumes from the temporary file's size with
``Range: bytes=N-`` and ``If-Range: <validator>``, so a file that changed on
the server meanwhile is fetched again from the start. Without a record the
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
        if record is None or record.validator is None or (record.total is not None and size > record.total):
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


__all__ = ["META_SUFFIX", "TEMP_SUFFIX", "PartialDownload", "PartialMeta"]
