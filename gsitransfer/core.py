"""TransferServer: the seed's API as a thin facade over a :class:`TransferEngine`.

The engine (``gsitransfer.engine``) owns the prefix registry, manifests, keys
and the upload state machine, and knows no URLs. This facade holds one engine
(``server.engine``), answers the seed's CapWords methods by delegating to it,
and adds the one thing the engine leaves out: where the server is reached
(``scheme``, ``public_url``, the upload and download descriptors). Protocol
servers (``gsitransfer.web``) build on it; the transfer work itself is asked of
``server.engine``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .engine import DEFAULT_MANIFEST_TTL, ManifestOutcome, TransferEngine, UploadTicket, next_state
from .errors import ManifestError
from .identity import IdToken
from .keys import TransferTable
from .manifest import Manifest, ManifestLimits


class TransferServer:
    """The seed's protocol-neutral TransferServer: a facade over one engine."""

    #: scheme of the descriptors this server hands out; set by subclasses
    scheme = "http"

    def __init__(
        self,
        *,
        engine: TransferEngine | None = None,
        public_url: str | None = None,
        # the engine's keywords, passed on as they are (TransferEngine checks their types)
        **engine_options: Any,
    ) -> None:
        """Serve ``engine``, or a new ``TransferEngine(**engine_options)``.

        ``public_url`` (``scheme://host:port``) is where clients reach this
        server; protocol subclasses learn it when they listen if it is None.
        Given here, it names every URL the server hands out; else the URLs
        in an answer name the host the request came to (``download_url``'s
        ``origin``).
        """
        if engine is not None and engine_options:
            raise TypeError(f"pass either engine or engine options, not both: {sorted(engine_options)}")
        self.engine = engine if engine is not None else TransferEngine(**engine_options)
        self.public_url = public_url.rstrip("/") if public_url else None
        #: the administrator gave the public URL: answers name it, whatever host a client used
        self.public_url_given = self.public_url is not None

    # -- the seed's API -------------------------------------------------------

    def RegisterPrefix(self, prefix: str, handler: object) -> None:
        """Seed ``RegisterPrefix``: gate files under ``/<prefix>/`` through ``handler``."""
        self.engine.register(prefix, handler)

    def UnregisterPrefix(self, prefix: str) -> None:
        """Seed ``UnregisterPrefix``: stop serving ``prefix``."""
        self.engine.unregister(prefix)

    def LookupPrefix(self, prefix: str) -> object | None:
        """Seed ``LookupPrefix``: the handler registered for ``prefix``, or None."""
        return self.engine.handler_for(prefix)

    def RegisterManifest(self, manifest: Manifest | str | bytes, id_token: IdToken, prefix: str = "") -> str:
        """Seed ``RegisterManifest``: store the manifest under a new key bound to ``id_token``."""
        return self.engine.register_manifest(manifest, id_token, prefix)

    def LookupUploadInformation(self, transfer_key: str, file_num: int | str) -> dict[str, object]:
        """Seed ``LookupUploadInformation``: the ``file_info`` of one file of a live transfer."""
        return self.engine.upload_information(transfer_key, file_num)

    def GetUploadDescriptor(self, prefix: str) -> str:
        """Seed ``GetUploadDescriptor``: the URL clients upload to for ``prefix``."""
        return f"{self.base_url()}/{quote(prefix, safe='')}"

    def GetDownloadDescriptor(self, prefix: str, path: str) -> str:
        """Seed ``GetDownloadDescriptor``: the URL of one file, its path percent-encoded."""
        return f"{self.GetUploadDescriptor(prefix)}/{quote(path.lstrip('/'), safe='/')}"

    # -- where the server is, and what it holds --------------------------------

    def base_url(self) -> str:
        """``scheme://host:port`` of this server; protocol subclasses know it once listening."""
        if self.public_url is None:
            raise RuntimeError("the server has no public URL yet: listen() first or pass public_url")
        return self.public_url

    def download_url(self, prefix: str, name: str, origin: str | None = None) -> str | None:
        """The URL of file ``name`` under ``prefix``; None when the server has no URL yet.

        ``origin`` (``scheme://host:port``) is where the asking client reached
        the server: the URL is under it unless a public URL was given. The
        ``locate`` an edge passes to ``engine.transfer_status``.
        """
        if origin is not None and not self.public_url_given:
            return f"{origin}/{quote(prefix, safe='')}/{quote(name.lstrip('/'), safe='/')}"
        try:
            return self.GetDownloadDescriptor(prefix, name)
        except RuntimeError:
            return None

    def prefixes(self) -> list[str]:
        """The registered prefixes, sorted."""
        return self.engine.prefixes()

    @property
    def transfers(self) -> TransferTable:
        """The engine's table of transfer keys."""
        return self.engine.transfers

    @property
    def manifest_limits(self) -> ManifestLimits:
        """The engine's limits on a posted manifest."""
        return self.engine.manifest_limits


__all__ = [
    "DEFAULT_MANIFEST_TTL",
    "TransferServer",
    "TransferEngine",
    "ManifestOutcome",
    "UploadTicket",
    "ManifestError",
    "next_state",
]
