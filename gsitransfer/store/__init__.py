"""The directory-backed default handler and its SQLite metadata.

``DirectoryStore(root)`` is what ``--store PREFIX=DIRECTORY`` registers; see
``docs/store.md`` for what it keeps and its rules.
"""

from __future__ import annotations

from .directory import DEFAULT_PENDING_TTL, HIDDEN_PREFIX, DirectoryStore, RecoveryReport
from .metadata import DB_NAME, StoreError

__all__ = [
    "DirectoryStore",
    "RecoveryReport",
    "StoreError",
    "DB_NAME",
    "HIDDEN_PREFIX",
    "DEFAULT_PENDING_TTL",
]
