"""Shared state in PostgreSQL for several nodes (SPEC 9): ``--state postgresql://user@host:port/db``.

:mod:`.connection` (the pool, the schema, availability and liveness),
:mod:`.transfers` (the transfer table and batch log), :mod:`.store` (each
directory store's metadata). Needs psycopg 3 (``gsitransfer[postgresql]``),
imported only when such a ``--state`` is given.
"""

from ..errors import StateUnavailable
from .connection import PostgresState, StateConfigError, is_postgres_url, shown_url
from .offreactor import OffReactorStore
from .store import PostgresStoreMetadata
from .transfers import PostgresBatchLog, PostgresTransferTable

__all__ = [
    "OffReactorStore",
    "PostgresBatchLog",
    "PostgresState",
    "PostgresStoreMetadata",
    "PostgresTransferTable",
    "StateConfigError",
    "StateUnavailable",
    "is_postgres_url",
    "shown_url",
]
