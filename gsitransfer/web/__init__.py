"""The HTTP edge: Resource tree, streaming request, downloads, servers."""

from .servers import GSIHTTPTransferServer, HTTPTransferServer, TransferSite

__all__ = ["HTTPTransferServer", "GSIHTTPTransferServer", "TransferSite"]
