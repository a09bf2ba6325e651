"""The gsitransfer client: Twisted-native operations, a blocking wrapper, Globus credentials.

* :mod:`.api` -- ``upload_files``, ``download_file``, ``list_files``,
  ``transfer_status``, ``cancel_transfer``: each returns a cancellable
  Deferred and takes an injectable ``treq`` ``HTTPClient``; the work is in
  :mod:`.upload`, :mod:`.download` (with :mod:`.partial`, the resumable
  temporary file), :mod:`.resume` (an upload's offsets on the server, HEAD
  and PATCH, pauses between tries) and :mod:`.queries`; the values they
  fire with are in :mod:`.results`;
* :mod:`.sync` -- the same as blocking calls for scripts (reactor in a
  daemon thread);
* :mod:`.session` -- the HTTP plumbing: treq client, streamed bodies;
* :mod:`.urls` -- what a URL names (server, prefix, a name under it);
* :mod:`.credentials` -- Globus credential and trust discovery;
* :mod:`.tls` -- the mutual-TLS policy for Twisted's Agent;
* :mod:`.progress` -- progress listeners and terminal bars;
* :mod:`.output` -- what the command line prints;
* :mod:`.errors` -- one-line errors with the command line's exit codes;
* :mod:`.handshake` -- TLS handshake failures in words (who refused, why).

The modules import one another in layers, never upwards (no import circle;
none of them takes names from this package)::

    handshake, results, progress, partial            (nothing of the client)
    errors                                           handshake, results
    credentials, urls                                errors
    tls                                              credentials, errors, handshake
    session                                          errors
    queries                                          session, results, errors, urls
    resume                                           session, errors
    upload, download                                 session, queries, resume, partial, progress, results, errors, urls
    api                                              all of the above
    sync                                             api and what it is built from
    output                                           results, progress
    this package                                     re-exports the public names

The command line (``gsitransfer``) is :mod:`gsitransfer.cli`.
"""

from .api import (
    DownloadReport,
    Listing,
    RemoteFile,
    TransferFile,
    TransferStatus,
    UploadedFile,
    UploadReport,
    cancel_transfer,
    download_file,
    globus_policy,
    list_files,
    transfer_status,
    upload_files,
)
from .credentials import Credential, LoadedCredential, Trust, find_credential, find_trust, load_credential
from .errors import (
    ChecksumError,
    ClientError,
    ConnectionFailed,
    CredentialError,
    DownloadInterrupted,
    HTTPStatusError,
    NoPrefix,
    NotAFile,
    NotTLS,
    ProtocolError,
    TLSRefused,
    TrustError,
    UploadIncomplete,
    UploadRefused,
    UsageError,
)
from .progress import CallbackProgress, NullProgress, ProgressListener, TerminalProgress
from .session import FileBodyProducer, make_http_client
from .tls import GSIClientPolicy

__all__ = [
    "CallbackProgress",
    "ChecksumError",
    "ClientError",
    "ConnectionFailed",
    "Credential",
    "CredentialError",
    "DownloadInterrupted",
    "DownloadReport",
    "FileBodyProducer",
    "GSIClientPolicy",
    "HTTPStatusError",
    "Listing",
    "LoadedCredential",
    "NoPrefix",
    "NotAFile",
    "NotTLS",
    "NullProgress",
    "ProgressListener",
    "ProtocolError",
    "RemoteFile",
    "TLSRefused",
    "TerminalProgress",
    "TransferFile",
    "TransferStatus",
    "Trust",
    "TrustError",
    "UploadIncomplete",
    "UploadRefused",
    "UploadReport",
    "UploadedFile",
    "UsageError",
    "cancel_transfer",
    "download_file",
    "find_credential",
    "find_trust",
    "globus_policy",
    "list_files",
    "load_credential",
    "make_http_client",
    "transfer_status",
    "upload_files",
]
