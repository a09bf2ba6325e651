"""gsitransfer: an AccessGrid-compatible file transfer server on Twisted.

The core (``TransferEngine`` and the seed's facade over it, ``TransferServer``;
the handler contract, manifests, transfer keys, errors, ``IdToken``) imports no
web or TLS code; ``HTTPTransferServer`` and ``GSIHTTPTransferServer`` are
loaded from ``gsitransfer.web`` on first use.
"""

from __future__ import annotations

from typing import Any

from .core import TransferServer
from .engine import ManifestOutcome, TransferEngine, UploadTicket
from .errors import (
    ChecksumMismatch,
    DownloadFailed,
    FileNotFound,
    InsufficientStorage,
    LengthMismatch,
    LengthRequired,
    ManifestError,
    ManifestTooLarge,
    NotAuthorized,
    QuotaExceeded,
    TransferError,
    UploadConflict,
    UploadFailed,
)
from .handler import DownloadTarget, IBatchPendingHandler, IDeleteHandler, IListingHandler, ITransferHandler
from .identity import ANONYMOUS, IdToken
from .manifest import FileEntry, Manifest, ManifestLimits, parse_manifest

_LAZY = {
    "HTTPTransferServer": "gsitransfer.web.servers",
    "GSIHTTPTransferServer": "gsitransfer.web.servers",
    "DirectoryStore": "gsitransfer.store",
    "SQLiteTransferTable": "gsitransfer.transfers_db",
}


def _version() -> str:
    """The version in the installed package's metadata (pyproject.toml's ``version``).

    Run from a source tree that is not installed, the version is read from
    that tree's ``pyproject.toml``.
    """
    from importlib import metadata

    try:
        return metadata.version("gsitransfer")
    except metadata.PackageNotFoundError:
        pass
    import os
    import tomllib

    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(pyproject, "rb") as stream:
            return str(tomllib.load(stream)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'gsitransfer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = [
    "TransferServer",
    "TransferEngine",
    "HTTPTransferServer",
    "GSIHTTPTransferServer",
    "DirectoryStore",
    "SQLiteTransferTable",
    "ManifestOutcome",
    "UploadTicket",
    "ITransferHandler",
    "IListingHandler",
    "DownloadTarget",
    "IdToken",
    "ANONYMOUS",
    "Manifest",
    "FileEntry",
    "ManifestLimits",
    "parse_manifest",
    "TransferError",
    "FileNotFound",
    "NotAuthorized",
    "UploadFailed",
    "DownloadFailed",
    "ManifestError",
    "ManifestTooLarge",
    "UploadConflict",
    "LengthRequired",
    "LengthMismatch",
    "ChecksumMismatch",
    "InsufficientStorage",
    "QuotaExceeded",
    "IBatchPendingHandler",
    "IDeleteHandler",
]
