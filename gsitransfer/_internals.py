"""Every use of private Twisted and pyOpenSSL internals, checked once at start-up.

What this module owns: the one place where gsitransfer reaches past the
public APIs of Twisted and pyOpenSSL, and the check that what it reaches for
is there.

* :func:`check_internals` -- whether the installed Twisted and pyOpenSSL are in
  the tested version ranges and have every private attribute the fast paths
  use; an :class:`InternalsReport` the caller keeps (nothing is cached here);
* :func:`with_twisted_tls_hooks` -- the bulk TLS protocol of
  :mod:`gsitransfer.tls._bulk` bound onto the private methods of Twisted's
  ``TLSMemoryBIOProtocol`` it replaces (only this module names them);
* :func:`epoll_ready` -- the ready descriptors of an ``EPollReactor`` and its
  dispatch, for :mod:`gsitransfer.eventloop`;
* :func:`tcp_send_queue_empty` -- whether a Twisted TCP transport holds no
  unsent bytes;
* :func:`classic_text_log` -- the file twistd's default log observer writes
  to, for access lines written without a log event each;
* OpenSSL through pyOpenSSL's own cffi binding: :class:`OpenSSLBuffer` (one
  reusable buffer that memory BIOs are read and records decrypted into),
  :func:`clear_partial_write`, :func:`verified_chain_der_from_openssl`,
  :func:`replace_idle_memory_bios`, :func:`connection_info_callback`. Each
  answers None / False when the binding lacks what it uses, and its caller
  then takes pyOpenSSL's public API.

The binding itself is looked up once, at import, into an immutable value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Final, Iterable, Mapping, TypeVar

import OpenSSL
import twisted
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

_log = Logger()

#: the first major versions the fast paths were not tested with (pyproject: Twisted < 27, pyOpenSSL < 27)
TWISTED_UNTESTED_FROM: Final = 27
PYOPENSSL_UNTESTED_FROM: Final = 27

#: the fast paths whose availability :func:`check_internals` reports
BULK_TLS: Final = "bulk_tls"
EVENT_LOOP: Final = "event_loop"


# ---------------------------------------------------------------------------
# The start-up check
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InternalsReport:
    """What :func:`check_internals` found: per fast path, why it cannot run (empty: it can)."""

    twisted_version: str
    pyopenssl_version: str
    missing: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def available(self, fast_path: str) -> bool:
        """True when ``fast_path`` (:data:`BULK_TLS`, :data:`EVENT_LOOP`) has all it needs."""
        return not self.missing.get(fast_path)

    def why_unavailable(self, fast_path: str) -> str:
        """The reasons ``fast_path`` cannot run, in one line ("" when it can)."""
        return "; ".join(self.missing.get(fast_path, ()))


def _major(version: str) -> int:
    """The major number of a version string ("26.10.0" -> 26; -1 when unreadable)."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


def _assigned_by(function: object, names: Iterable[str]) -> list[str]:
    """Which of ``names`` the code of ``function`` does not mention (attributes it sets on instances)."""
    code = getattr(function, "__code__", None)
    mentioned = set(code.co_names) if code is not None else set()
    return [name for name in names if name not in mentioned]


def _lacking(owner: object, names: Iterable[str]) -> list[str]:
    return [name for name in names if not hasattr(owner, name)]


#: methods and class defaults of TLSMemoryBIOProtocol that the bulk protocol overrides or uses
_TLS_PROTOCOL_ATTRIBUTES: Final = (
    "_checkHandshakeStatus", "_flushSendBIO", "_flushReceiveBIO", "_write", "_bufferedWrite",
    "_shutdownTLS", "_tlsShutdownFinished", "_lostTLSConnection", "_aborted", "_handshakeDone",
)
#: what TLSMemoryBIOProtocol sets on its instances (in makeConnection, in __init__) and the bulk protocol uses
_TLS_CONNECTION_ATTRIBUTES: Final = ("_tlsConnection", "_appSendBuffer")
_TLS_WRAPPER_ATTRIBUTES: Final = ("_connectWrapped",)
#: what TLSMemoryBIOFactory sets on its instances and the bulk factory uses
_TLS_FACTORY_ATTRIBUTES: Final = ("_creatorCallable",)
#: what a pyOpenSSL Connection holds and the bulk protocol's buffers use
_CONNECTION_INSTANCE_ATTRIBUTES: Final = ("_ssl", "_into_ssl", "_from_ssl")
#: what a Twisted TCP transport has and the sending at once uses
_TCP_ATTRIBUTES: Final = ("writeSomeData", "connected", "_writeDisconnected", "dataBuffer", "offset")


def check_internals() -> InternalsReport:
    """Check the installed Twisted and pyOpenSSL against what the fast paths use (call once, keep the result).

    For each fast path: Twisted (and for the bulk TLS transport pyOpenSSL)
    within the tested major versions, and every private method and attribute
    used present (methods by ``hasattr``; attributes set in ``__init__`` by the
    names its code mentions).
    """
    twisted_version = str(getattr(twisted, "__version__", "unknown"))
    pyopenssl_version = str(getattr(OpenSSL, "__version__", "unknown"))
    versions: list[str] = []
    if not 0 <= _major(twisted_version) < TWISTED_UNTESTED_FROM:
        versions.append(f"Twisted {twisted_version} is outside the tested range (< {TWISTED_UNTESTED_FROM})")
    tls_versions = list(versions)
    if not 0 <= _major(pyopenssl_version) < PYOPENSSL_UNTESTED_FROM:
        tls_versions.append(
            f"pyOpenSSL {pyopenssl_version} is outside the tested range (< {PYOPENSSL_UNTESTED_FROM})")

    tls_missing = (
        _lacking(TLSMemoryBIOProtocol, _TLS_PROTOCOL_ATTRIBUTES)
        + _assigned_by(TLSMemoryBIOProtocol.makeConnection, _TLS_CONNECTION_ATTRIBUTES)
        + _assigned_by(TLSMemoryBIOProtocol.__init__, _TLS_WRAPPER_ATTRIBUTES)
        + _assigned_by(TLSMemoryBIOFactory.__init__, _TLS_FACTORY_ATTRIBUTES)
        + _lacking(tcp.Connection, _TCP_ATTRIBUTES)
        + _tcp_queue_attribute_missing()
        + _lacking(SSL.Connection, ("_raise_ssl_error",))
        + _assigned_by(SSL.Connection.__init__, _CONNECTION_INSTANCE_ATTRIBUTES)
    )
    loop_missing = _lacking(EPollReactor, ("_doReadOrWrite",)) + _assigned_by(
        EPollReactor.__init__, ("_poller", "_selectables"))

    missing = {
        BULK_TLS: tuple(tls_versions) + ((f"missing: {', '.join(tls_missing)}",) if tls_missing else ()),
        EVENT_LOOP: tuple(versions) + ((f"missing: {', '.join(loop_missing)}",) if loop_missing else ()),
    }
    return InternalsReport(twisted_version, pyopenssl_version,
                           MappingProxyType({path: reasons for path, reasons in missing.items() if reasons}))


def _tcp_queue_attribute_missing() -> list[str]:
    """``["_tempDataLen"]`` unless Twisted's FileDescriptor sets it (the count of bytes written but not joined)."""
    from twisted.internet.abstract import FileDescriptor

    return _assigned_by(FileDescriptor.__init__, ("_tempDataLen",))


def log_unavailable(report: InternalsReport, fast_path: str, instead: str) -> None:
    """The one log line saying ``fast_path`` is off because of what ``report`` found, and what runs instead."""
    _log.warn(
        "fast path {fast_path} unavailable ({why}): using {instead}",
        fast_path=fast_path, why=report.why_unavailable(fast_path), instead=instead,
    )


# ---------------------------------------------------------------------------
# Twisted: the global log's one text file (twistd's default observer)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassicTextLog:
    """twistd's default log, found by :func:`classic_text_log`: the global publisher's observers (a live
    list, to check before each direct write), its one observer and the file it writes to."""

    observers: list[Any]
    observer: Any
    out_file: Any
    #: None: the file takes text; else the encoding the observer writes bytes in
    encoding: str | None

    def unchanged(self) -> bool:
        """True while the observer is still the publisher's only one (a direct write is what it would write)."""
        observers = self.observers
        return len(observers) == 1 and observers[0] is self.observer


def classic_text_log(publisher: Any = None) -> ClassicTextLog | None:
    """``publisher`` (default: the global log) when it is exactly twistd's default: one ``textFileLogObserver`` with the
    RFC 3339 time format (``twistd -n``'s stdout, ``--logfile``'s ``LogFile``); else None.

    Reaches ``LogPublisher._observers`` and ``FileLogObserver._outFile`` /
    ``_encoding``, and the time format in ``textFileLogObserver``'s closure;
    None outside the tested Twisted versions or when any is missing.
    """
    from twisted.logger import FileLogObserver, globalLogPublisher, timeFormatRFC3339

    if not 0 <= _major(str(getattr(twisted, "__version__", ""))) < TWISTED_UNTESTED_FROM:
        return None
    observers = getattr(globalLogPublisher if publisher is None else publisher, "_observers", None)
    if not isinstance(observers, list) or len(observers) != 1:
        return None
    observer = observers[0]
    if not isinstance(observer, FileLogObserver) or not hasattr(observer, "_outFile"):
        return None
    format_event = getattr(observer, "formatEvent", None)
    code = getattr(format_event, "__code__", None)
    closure: tuple[Any, ...] = getattr(format_event, "__closure__", None) or ()
    if (
        getattr(format_event, "__qualname__", "") != "textFileLogObserver.<locals>.formatEvent"
        or getattr(format_event, "__module__", "") != "twisted.logger._file"
        or code is None or code.co_freevars != ("timeFormat",) or len(closure) != 1
        or closure[0].cell_contents != timeFormatRFC3339
    ):
        return None
    return ClassicTextLog(observers, observer, observer._outFile, getattr(observer, "_encoding", None))


# ---------------------------------------------------------------------------
# Twisted: the TLS protocol's hooks, the TCP send queue, the epoll reactor
# ---------------------------------------------------------------------------

P = TypeVar("P", bound=TLSMemoryBIOProtocol)


def with_twisted_tls_hooks(protocol: type[P]) -> type[P]:
    """A subclass of ``protocol`` whose public-named steps replace Twisted's private ones.

    ``protocol`` (a ``TLSMemoryBIOProtocol`` subclass) provides
    ``send_pending_records`` (Twisted: ``_flushSendBIO``), ``receive_records``
    (``_flushReceiveBIO``), ``step_handshake`` (``_checkHandshakeStatus``) and
    ``write_in_slices`` (``_write``); the subclass also gets
    ``twisted_handshake_step``, Twisted's own handshake step. Only call it
    when :func:`check_internals` found :data:`BULK_TLS` available.
    """
    hooks: dict[str, Any] = {
        "_flushSendBIO": getattr(protocol, "send_pending_records"),
        "_flushReceiveBIO": getattr(protocol, "receive_records"),
        "_checkHandshakeStatus": getattr(protocol, "step_handshake"),
        "_write": getattr(protocol, "write_in_slices"),
        "twisted_handshake_step": TLSMemoryBIOProtocol._checkHandshakeStatus,
        "__module__": protocol.__module__,
        "__qualname__": protocol.__qualname__,
        "__doc__": protocol.__doc__,
    }
    return type(protocol.__name__, (protocol,), hooks)


def tcp_send_queue_empty(transport: object) -> bool:
    """True when ``transport`` is a connected Twisted TCP transport holding no unsent bytes."""
    return bool(
        getattr(transport, "connected", False)
        and not getattr(transport, "_writeDisconnected", True)
        and not getattr(transport, "_tempDataLen", 1)
        and len(getattr(transport, "dataBuffer", b"x")) == getattr(transport, "offset", -1)
    )


def epoll_ready(
    reactor: EPollReactor, timeout: float,
) -> tuple[list[tuple[int, int]], Mapping[int, Any], Callable[[Any, int, int], None]]:
    """``(events, selectables by fd, dispatch)`` of one ``epoll_wait`` of ``reactor``.

    ``dispatch(selectable, fd, event)`` is the reactor's own read-or-write step.
    ``OSError`` (EINTR included) comes out as ``epoll.poll`` raised it.
    """
    selectables: Mapping[int, Any] = getattr(reactor, "_selectables")
    events: list[tuple[int, int]] = getattr(reactor, "_poller").poll(timeout, len(selectables))
    dispatch: Callable[[Any, int, int], None] = getattr(reactor, "_doReadOrWrite")
    return events, selectables, dispatch


# ---------------------------------------------------------------------------
# OpenSSL through pyOpenSSL's binding
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Binding:
    """pyOpenSSL's cffi ``ffi`` and ``lib``, and which groups of functions they have."""

    ffi: Any
    lib: Any
    buffers: bool
    partial_write: bool
    chain_read: bool
    bio_swap: bool
    info_callback: bool


def _load_binding() -> _Binding | None:
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:
        return None

    def has(*names: str) -> bool:
        return all(hasattr(lib, name) for name in names)

    return _Binding(
        ffi, lib,
        buffers=has("BIO_read", "SSL_read", "BIO_get_mem_data"),
        partial_write=has("SSL_clear_mode", "SSL_MODE_ENABLE_PARTIAL_WRITE"),
        chain_read=has("SSL_get0_verified_chain", "sk_X509_num", "sk_X509_value", "i2d_X509_bio",
                       "BIO_get_mem_data", "BIO_new", "BIO_s_mem", "BIO_free"),
        bio_swap=has("BIO_get_mem_data", "BIO_new", "BIO_s_mem", "BIO_free", "SSL_set_bio"),
        info_callback=has("SSL_set_info_callback") and hasattr(SSL.Connection, "_reverse_mapping"),
    )


#: pyOpenSSL's binding (None: pyOpenSSL has none we know); looked up once, never changed
_BINDING: Final = _load_binding()


def _handles(connection: SSL.Connection) -> tuple[Any, Any, Any] | None:
    """The connection's ``(SSL *, receiving BIO, sending BIO)``, or None when pyOpenSSL hides them."""
    ssl = getattr(connection, "_ssl", None)
    into_ssl = getattr(connection, "_into_ssl", None)
    from_ssl = getattr(connection, "_from_ssl", None)
    if ssl is None or into_ssl is None or from_ssl is None:
        return None
    return ssl, into_ssl, from_ssl


class OpenSSLBuffer:
    """One reusable buffer that a connection's sending memory BIO is read into, or its records decrypted into.

    pyOpenSSL's ``bio_read`` and ``recv`` allocate a buffer per call and copy
    out of it; with this, OpenSSL writes straight into one buffer. Make one
    with :func:`openssl_buffer`.
    """

    def __init__(self, binding: _Binding, size: int) -> None:
        self.size = size
        self._buffer = bytearray(size)
        self._pointer = binding.ffi.from_buffer(self._buffer)
        self._bio_read = binding.lib.BIO_read
        self._ssl_read = binding.lib.SSL_read
        self._mem_data = binding.lib.BIO_get_mem_data
        self._null = binding.ffi.NULL

    @staticmethod
    def usable_with(connection: SSL.Connection) -> bool:
        """True when ``connection`` exposes what the buffer's reads need."""
        return _handles(connection) is not None and hasattr(connection, "_raise_ssl_error")

    def bytes_to_send(self, connection: SSL.Connection) -> int:
        """Bytes OpenSSL has written for the peer and nobody has read yet."""
        return int(self._mem_data(getattr(connection, "_from_ssl"), self._null))

    def bytes_received(self, connection: SSL.Connection) -> int:
        """Bytes given to OpenSSL (``bio_write``) that it has not consumed yet."""
        return int(self._mem_data(getattr(connection, "_into_ssl"), self._null))

    def read_to_send(self, connection: SSL.Connection) -> int:
        """Read what OpenSSL has written for the peer (at most ``size`` bytes) into the buffer; the count."""
        return max(0, int(self._bio_read(getattr(connection, "_from_ssl"), self._pointer, self.size)))

    def decrypt_into(self, connection: SSL.Connection, offset: int, count: int) -> int:
        """``SSL_read`` of at most ``count`` bytes into the buffer at ``offset``: the count read (> 0).

        Otherwise raises as pyOpenSSL's ``recv`` does (``WantReadError``,
        ``ZeroReturnError``, ``SSL.Error``).
        """
        ssl = getattr(connection, "_ssl")
        result = int(self._ssl_read(ssl, self._pointer + offset, count))
        if result <= 0:
            getattr(connection, "_raise_ssl_error")(ssl, result)
            raise SSL.Error(f"SSL_read returned {result}")  # not reached: the line above raises
        return result

    def view(self, count: int) -> memoryview:
        """The first ``count`` bytes of the buffer (valid until the buffer is next used)."""
        return memoryview(self._buffer)[:count]

    def take(self, count: int) -> bytes:
        """The first ``count`` bytes of the buffer, as bytes of their own."""
        return bytes(memoryview(self._buffer)[:count]) if count else b""


def openssl_buffer(size: int) -> OpenSSLBuffer | None:
    """A new :class:`OpenSSLBuffer` of ``size`` bytes, or None when pyOpenSSL's binding lacks what it uses."""
    if _BINDING is None or not _BINDING.buffers:
        return None
    return OpenSSLBuffer(_BINDING, size)


def clear_partial_write(connection: SSL.Connection) -> bool:
    """Clear ``SSL_MODE_ENABLE_PARTIAL_WRITE`` on ``connection``: True if done.

    pyOpenSSL sets the mode on every Context and offers no public way to clear
    it on a Connection. False (nothing changed) when the binding lacks it:
    ``SSL_write`` then stops after each record, as pyOpenSSL intends.
    """
    if _BINDING is None or not _BINDING.partial_write:
        return False
    handles = _handles(connection)
    if handles is None:
        return False
    _BINDING.lib.SSL_clear_mode(handles[0], _BINDING.lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
    return True


def verified_chain_der_from_openssl(connection: SSL.Connection) -> tuple[bytes, ...] | None:
    """The DER of each certificate OpenSSL verified for the peer, leaf first, read straight from its stack.

    Every certificate is encoded, one after another, into one memory BIO and
    the DER of each is cut from it by the lengths in between (no pyOpenSSL
    ``X509`` per certificate). ValueError when there is no verified chain;
    None when the binding lacks a function used (the caller then takes
    pyOpenSSL's ``get_verified_chain``).
    """
    handles = _handles(connection)
    if _BINDING is None or not _BINDING.chain_read or handles is None:
        return None
    ffi, lib = _BINDING.ffi, _BINDING.lib
    stack = lib.SSL_get0_verified_chain(handles[0])
    count = lib.sk_X509_num(stack) if stack != ffi.NULL else 0
    if count <= 0:
        raise ValueError("the TLS connection has no verified client certificate chain")
    bio = lib.BIO_new(lib.BIO_s_mem())
    if bio == ffi.NULL:
        return None
    try:
        ends = []
        for index in range(count):
            if lib.i2d_X509_bio(bio, lib.sk_X509_value(stack, index)) != 1:
                return None
            ends.append(int(lib.BIO_get_mem_data(bio, ffi.NULL)))
        data_pointer = ffi.new("char **")
        total = lib.BIO_get_mem_data(bio, data_pointer)
        data = bytes(ffi.buffer(data_pointer[0], total)[:])
    finally:
        lib.BIO_free(bio)
    starts = [0] + ends[:-1]
    return tuple(data[start:end] for start, end in zip(starts, ends))


def replace_idle_memory_bios(connection: SSL.Connection) -> bool:
    """Swap both (empty) memory BIOs of ``connection`` for fresh ones: True if done.

    False, leaving everything as it was, when either BIO still holds bytes or
    the binding lacks a function used. ``SSL_set_bio`` frees the old pair,
    with the buffers they grew to.
    """
    handles = _handles(connection)
    if _BINDING is None or not _BINDING.bio_swap or handles is None:
        return False
    ffi, lib = _BINDING.ffi, _BINDING.lib
    ssl, into_ssl, from_ssl = handles
    # BIO_get_mem_data returns the bytes still unread in a memory BIO
    if lib.BIO_get_mem_data(into_ssl, ffi.NULL) or lib.BIO_get_mem_data(from_ssl, ffi.NULL):
        return False
    new_into = lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL:
        return False
    new_from = lib.BIO_new(lib.BIO_s_mem())
    if new_from == ffi.NULL:
        lib.BIO_free(new_into)
        return False
    lib.SSL_set_bio(ssl, new_into, new_from)  # takes both, frees the old pair
    setattr(connection, "_into_ssl", new_into)
    setattr(connection, "_from_ssl", new_from)
    return True


class ConnectionInfoCallback:
    """One C info callback, set on each connection that needs watching (``SSL_set_info_callback``).

    Make one with :func:`connection_info_callback`.
    """

    def __init__(self, binding: _Binding, handler: Callable[[SSL.Connection, int, int], None]) -> None:
        self._set = binding.lib.SSL_set_info_callback
        connections = getattr(SSL.Connection, "_reverse_mapping")

        def call(ssl: object, where: int, value: int) -> None:
            try:
                connection = connections.get(ssl)
                if connection is not None:
                    handler(connection, where, value)
            except Exception:  # OpenSSL cannot take an exception
                _log.failure("TLS info callback")

        self._callback = binding.ffi.callback("void (*)(const SSL *, int, int)", call)

    def install(self, connection: SSL.Connection) -> None:
        """Watch ``connection``'s handshake with the handler."""
        self._set(getattr(connection, "_ssl"), self._callback)


def connection_info_callback(
    handler: Callable[[SSL.Connection, int, int], None],
) -> ConnectionInfoCallback | None:
    """A per-connection info callback calling ``handler``, or None when the binding lacks what it needs.

    (The caller then sets ``handler`` on the whole context with pyOpenSSL's
    ``set_info_callback``.)
    """
    if _BINDING is None or not _BINDING.info_callback:
        return None
    return ConnectionInfoCallback(_BINDING, handler)


__all__ = [
    "BULK_TLS",
    "EVENT_LOOP",
    "PYOPENSSL_UNTESTED_FROM",
    "TWISTED_UNTESTED_FROM",
    "ConnectionInfoCallback",
    "InternalsReport",
    "OpenSSLBuffer",
    "check_internals",
    "clear_partial_write",
    "connection_info_callback",
    "epoll_ready",
    "log_unavailable",
    "openssl_buffer",
    "replace_idle_memory_bios",
    "tcp_send_queue_empty",
    "verified_chain_der_from_openssl",
    "with_twisted_tls_hooks",
]
