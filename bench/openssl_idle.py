"""OpenSSL's own memory per idle server connection, in one process, by TLS setting.

    .venv/bin/python bench/openssl_idle.py            # every variant, 400 connections each
    .venv/bin/python bench/openssl_idle.py --conns 1000 x25519

Makes a test PKI, the server context gsitransfer uses (``ServerTLS``) and a
pyOpenSSL client with the ``alice`` certificate; for each variant, opens
``--conns`` connections through memory BIOs (handshake, a request, a 64 KiB
answer read to the end), drops the clients, gives each server connection
fresh empty memory BIOs (as ``release_idle_buffers`` does between requests)
and prints glibc's bytes in use that freeing the server connections gives
back, per connection. No sockets, no
Twisted: what is left is OpenSSL's per-connection state plus a pyOpenSSL
``Connection`` object. Variants:

* ``default``: the client offers what OpenSSL 4.0 offers first
  (X25519MLKEM768, as clients with OpenSSL ≥ 3.5 do);
* ``x25519``: the client offers X25519 only (as Debian 12's OpenSSL 3.0 does;
  the benchmark's load generator);
* ``python-ssl-client``: the client is Python's ``ssl`` (the system's OpenSSL,
  through memory BIOs), as the benchmark's load generator is;
* ``no-client-cert``: the server asks for no client certificate;
* ``tls12``: TLS 1.2 at most (X25519);
* ``no-release-buffers``: without ``SSL_MODE_RELEASE_BUFFERS`` (X25519).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from gsitransfer.testca import make_test_pki
from gsitransfer.tls import ServerTLS, TrustConfig

VARIANTS = ("default", "x25519", "python-ssl-client", "no-client-cert", "tls12", "no-release-buffers")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def bytes_in_use() -> int:
    gc.collect()
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _move(source: SSL.Connection, sink: SSL.Connection) -> None:
    while True:
        try:
            sink.bio_write(source.bio_read(1 << 20))
        except SSL.WantReadError:
            return


def _connect(server_tls: ServerTLS, client_context: Any) -> tuple[SSL.Connection, Any]:
    server = server_tls.serverConnectionForTLS(object())
    server.set_accept_state()
    if callable(client_context):
        client = client_context()
    else:
        client = SSL.Connection(client_context, None)
        client.set_connect_state()
    for _ in range(10):  # bounded: a handshake takes 2-3 rounds
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        _move(client, server)
        _move(server, client)
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    _move(client, server)
    server.recv(65536)
    try:
        server.recv(65536)
    except SSL.WantReadError:
        pass
    server.send(b"x" * 65536)
    _move(server, client)
    try:
        while True:
            client.recv(1 << 20)
    except SSL.WantReadError:
        pass
    return server, client


class _PythonSSLClient:
    """Python's ``ssl`` on memory BIOs, with the calls ``_connect`` makes of a pyOpenSSL client."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False)

    @staticmethod
    def context(pki: Any) -> ssl.SSLContext:
        """One client context for all connections (as the load generator has one per process)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cafile=str(pki.ca_file))
        context.load_cert_chain(str(pki.users["alice"].cert), str(pki.users["alice"].key))
        return context

    def do_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None

    def bio_read(self, size: int) -> bytes:
        data = self._outgoing.read(size)
        if not data:
            raise SSL.WantReadError()
        return data

    def bio_write(self, data: bytes) -> None:
        self._incoming.write(data)

    def send(self, data: bytes) -> None:
        self._tls.write(data)

    def recv(self, size: int) -> bytes:
        try:
            return self._tls.read(size)
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None


def _fresh_bios(connection: SSL.Connection) -> None:
    into, out = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
    lib.SSL_set_bio(connection._ssl, into, out)
    connection._into_ssl, connection._from_ssl = into, out


def measure(variant: str, conns: int, work: Path) -> tuple[float, str]:
    pki = make_test_pki(work / variant, users=("alice",))
    server_tls = ServerTLS(str(pki.server_cert), str(pki.server_key), TrustConfig(ca_dir=str(pki.ca_dir)))
    context = server_tls._context
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.use_certificate_file(str(pki.users["alice"].cert))
    client_context.use_privatekey_file(str(pki.users["alice"].key))
    if variant == "python-ssl-client":
        python_context = _PythonSSLClient.context(pki)
        client_context = lambda: _PythonSSLClient(python_context)  # noqa: E731
    elif variant != "default" and lib.SSL_CTX_set1_curves_list(client_context._context, b"X25519") != 1:
        raise RuntimeError("cannot restrict the client to X25519")
    if variant == "no-client-cert":
        context.set_verify(SSL.VERIFY_NONE, None)
    elif variant == "tls12":
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    elif variant == "no-release-buffers":
        lib.SSL_CTX_clear_mode(context._context, SSL.MODE_RELEASE_BUFFERS)
    warm = [_connect(server_tls, client_context) for _ in range(20)]
    servers: list[SSL.Connection] = []
    for _ in range(conns):
        server, _client = _connect(server_tls, client_context)
        servers.append(server)
    for server in servers:
        _fresh_bios(server)
    group = ffi.string(lib.SSL_get0_group_name(servers[0]._ssl)).decode()
    # what freeing the server connections gives back: their memory alone (whatever the
    # client library keeps, sessions or caches, stays out of it)
    with_servers = bytes_in_use()
    servers.clear()
    server = None
    per_connection = (with_servers - bytes_in_use()) / conns / 1024
    del warm
    return per_connection, group


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--conns", type=int, default=400)
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    print(f"OpenSSL {SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()}, {args.conns} idle server connections")
    with tempfile.TemporaryDirectory(prefix="openssl-idle-") as work:
        for variant in args.variants or VARIANTS:
            kib, group = measure(variant, args.conns, Path(work))
            print(f"  {variant:20} {kib:6.1f} KiB per connection (group {group})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
