"""The public API is locked: ``gsitransfer.__all__`` and the names README.md documents.

A change here is a change users see: it needs a README change and a note in
the release, not only a green test.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable

import pytest
from zope.interface.interface import InterfaceClass

import gsitransfer
from gsitransfer.handler import IBatchPendingHandler, IListingHandler, ITransferHandler
from gsitransfer.keys import MemoryTransferTable

EXPECTED_ALL = {
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
}

#: the seed's CapWords methods of every server (README "Python API"), parameter names after self
SEED_METHODS = {
    "RegisterPrefix": ["prefix", "handler"],
    "UnregisterPrefix": ["prefix"],
    "LookupPrefix": ["prefix"],
    "RegisterManifest": ["manifest", "id_token", "prefix"],
    "LookupUploadInformation": ["transfer_key", "file_num"],
    "GetUploadDescriptor": ["prefix"],
    "GetDownloadDescriptor": ["prefix", "path"],
}

#: the handler callbacks (README "Writing a handler", gsitransfer/handler.py), by interface
HANDLER_CALLBACKS: dict[InterfaceClass, dict[str, list[str]]] = {
    ITransferHandler: {
        "GetDownloadFilename": ["id_token", "url_path"],
        "CanUpload": ["id_token", "file_info"],
        "AddPendingUpload": ["id_token", "filename"],
        "GetUploadFilename": ["id_token", "file_info"],
        "CompleteUpload": ["id_token", "file_info"],
        "CancelPendingUpload": ["id_token", "filename"],
    },
    IListingHandler: {"ListFiles": ["id_token"]},
    IBatchPendingHandler: {"AddPendingUploads": ["id_token", "filenames"]},
}


def parameters(function: Callable[..., object]) -> list[str]:
    """Parameter names of ``function`` (a method looked up on its class: without ``self``)."""
    names = list(inspect.signature(function).parameters)
    return names[1:] if names[:1] == ["self"] else names


def test_all_is_the_expected_set() -> None:
    """``gsitransfer.__all__`` names exactly the public API, once each."""
    assert set(gsitransfer.__all__) == EXPECTED_ALL
    assert len(gsitransfer.__all__) == len(EXPECTED_ALL)


@pytest.mark.parametrize("name", sorted(EXPECTED_ALL))
def test_every_public_name_imports(name: str) -> None:
    """Each name of ``__all__`` is importable from ``gsitransfer`` (the lazy ones too)."""
    namespace: dict[str, object] = {}
    exec(f"from gsitransfer import {name}", namespace)
    assert namespace[name] is getattr(gsitransfer, name)


def test_unknown_name_is_an_attribute_error() -> None:
    """A name outside the API is an AttributeError, not a lazy import of something else."""
    with pytest.raises(AttributeError):
        getattr(gsitransfer, "NoSuchThing")


@pytest.mark.parametrize("server", ["TransferServer", "HTTPTransferServer", "GSIHTTPTransferServer"])
@pytest.mark.parametrize("method", sorted(SEED_METHODS))
def test_servers_keep_the_seed_methods(server: str, method: str) -> None:
    """Every server has the seed's CapWords methods with their parameter names."""
    cls = getattr(gsitransfer, server)
    assert parameters(getattr(cls, method)) == SEED_METHODS[method]


@pytest.mark.parametrize("server", ["HTTPTransferServer", "GSIHTTPTransferServer"])
def test_servers_listen_and_maintain_as_documented(server: str) -> None:
    """``listen(endpoint)`` and ``maintain(reactor, interval=...)``, as in README's example."""
    cls = getattr(gsitransfer, server)
    assert parameters(cls.listen)[0] == "endpoint"
    assert parameters(cls.maintain)[:2] == ["reactor", "interval"]


def test_server_constructors_take_the_documented_keywords() -> None:
    """README builds servers with ``transfers=``, ``trusted_proxies=``, ``gridmap=`` and GSI's ``tls`` first."""
    engine = inspect.signature(gsitransfer.TransferEngine).parameters
    assert "transfers" in engine and engine["transfers"].kind is inspect.Parameter.KEYWORD_ONLY
    table = MemoryTransferTable()
    assert gsitransfer.TransferServer(transfers=table).transfers is table  # the facade hands it to its engine
    http = inspect.signature(gsitransfer.HTTPTransferServer).parameters
    assert {"trusted_proxies", "gridmap", "fast_paths", "access_line_writer"} <= set(http)
    assert parameters(gsitransfer.GSIHTTPTransferServer.__init__)[0] == "tls"


@pytest.mark.parametrize(
    ("interface", "callback"),
    [(interface, callback) for interface, callbacks in HANDLER_CALLBACKS.items() for callback in callbacks],
)
def test_handler_interfaces_declare_the_seed_callbacks(interface: InterfaceClass, callback: str) -> None:
    """The handler interfaces declare each callback with the documented parameter names."""
    declared = interface[callback].getSignatureInfo()
    assert declared["positional"] == tuple(HANDLER_CALLBACKS[interface][callback])


def test_interfaces_declare_nothing_else() -> None:
    """No callback is added to (or dropped from) a handler interface unnoticed."""
    for interface, callbacks in HANDLER_CALLBACKS.items():
        assert sorted(interface.names()) == sorted(callbacks)


@pytest.mark.parametrize(
    "callback", sorted({c for callbacks in HANDLER_CALLBACKS.values() for c in callbacks})
)
def test_directory_store_implements_every_callback(callback: str) -> None:
    """The built-in store has every callback, with the interface's parameter names."""
    expected = next(c[callback] for c in HANDLER_CALLBACKS.values() if callback in c)
    assert parameters(getattr(gsitransfer.DirectoryStore, callback)) == expected


def test_directory_store_and_transfer_table_take_a_path_first() -> None:
    """``DirectoryStore(root)`` and ``SQLiteTransferTable(path)``, as in README's example."""
    assert parameters(gsitransfer.DirectoryStore.__init__)[0] == "root"
    assert parameters(gsitransfer.SQLiteTransferTable.__init__)[0] == "path"
    assert importlib.import_module("gsitransfer.store").DirectoryStore is gsitransfer.DirectoryStore


def test_tls_configuration_as_documented() -> None:
    """``ServerTLS(cert, key, TrustConfig(ca_dir=...))`` from ``gsitransfer.tls.context``."""
    from gsitransfer.tls.context import ServerTLS, TrustConfig

    assert parameters(ServerTLS.__init__)[:3] == ["cert_file", "key_file", "trust"]
    assert {"ca_dir", "ca_file", "crl_policy"} <= set(inspect.signature(TrustConfig).parameters)


def test_id_token_and_download_target_fields() -> None:
    """``IdToken`` carries the documented fields; ``DownloadTarget(path, checksum=...)``."""
    fields = {field.name for field in dataclasses.fields(gsitransfer.IdToken)}
    assert {"dn", "username", "chain", "proxy", "limited_proxy", "issuer", "not_after"} <= fields
    assert [field.name for field in dataclasses.fields(gsitransfer.DownloadTarget)] == ["path", "checksum"]


def test_refusals_are_transfer_errors() -> None:
    """The errors a handler raises to refuse are TransferErrors."""
    for name in ("FileNotFound", "NotAuthorized", "UploadFailed", "DownloadFailed", "QuotaExceeded"):
        assert issubclass(getattr(gsitransfer, name), gsitransfer.TransferError)
