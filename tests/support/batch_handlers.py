"""Directory stores that record their completions, for the atomic batch tests (SPEC 7.4).

In process: ``RecordingStore(root)`` keeps its ``CompleteUpload`` and
``CancelPendingUpload`` calls in ``calls``. In a server started with
``--handler PREFIX=tests.support.batch_handlers:recording`` (or
``:killed_at_first_complete``) the store lives in ``$GSITRANSFER_TEST_STORE``
and each call is also appended to the file ``$GSITRANSFER_TEST_CALLS``, one
``Callback name`` line (written before the callback returns: a SIGKILL after
it loses no line).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from gsitransfer.store import DirectoryStore


class RecordingStore(DirectoryStore):
    """A DirectoryStore that records its completions and cancellations (and appends them to ``calls_file``)."""

    def __init__(self, root: str, calls_file: str | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        self.calls: list[tuple[str, str]] = []
        self.calls_file = calls_file

    def _record(self, callback: str, name: str) -> None:
        self.calls.append((callback, name))
        if self.calls_file is not None:
            fd = os.open(self.calls_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{callback} {name}\n".encode())
            finally:
                os.close(fd)

    def CompleteUpload(self, id_token: Any, file_info: Any) -> None:
        super().CompleteUpload(id_token, file_info)
        self._record("CompleteUpload", str(file_info["name"]))

    def CancelPendingUpload(self, id_token: Any, filename: str) -> None:
        super().CancelPendingUpload(id_token, filename)
        self._record("CancelPendingUpload", filename)

    def names(self, callback: str) -> list[str]:
        """The file names ``callback`` was called for, in order."""
        return [name for kind, name in self.calls if kind == callback]


class KilledAtFirstComplete(RecordingStore):
    """Kills its own process (SIGKILL) at its first CompleteUpload, before doing anything: a crash after
    every file of a batch was published and before any completion. The marker file
    (``$GSITRANSFER_TEST_CALLS.killed``) makes later runs behave."""

    def CompleteUpload(self, id_token: Any, file_info: Any) -> None:
        marker = f"{self.calls_file}.killed"
        if not os.path.exists(marker):
            with open(marker, "w") as note:
                note.write(str(file_info["name"]))
            os.kill(os.getpid(), signal.SIGKILL)
        super().CompleteUpload(id_token, file_info)


def recording() -> RecordingStore:
    """``--handler`` factory: a RecordingStore in ``$GSITRANSFER_TEST_STORE``, calls to ``$GSITRANSFER_TEST_CALLS``."""
    return RecordingStore(os.environ["GSITRANSFER_TEST_STORE"], os.environ["GSITRANSFER_TEST_CALLS"])


def killed_at_first_complete() -> KilledAtFirstComplete:
    """``--handler`` factory: a KilledAtFirstComplete store (same environment as :func:`recording`)."""
    return KilledAtFirstComplete(os.environ["GSITRANSFER_TEST_STORE"], os.environ["GSITRANSFER_TEST_CALLS"])
