"""OpenSSL's memory per idle mutual-TLS server connection, with whatever pyOpenSSL the interpreter has.

Standalone (no gsitransfer import), so that it runs on stacks gsitransfer
itself cannot, such as Debian 12's own pyOpenSSL 23 and cryptography 38 on
its OpenSSL 3.0::

    scripts/make-test-ca --out /tmp/pki
    .venv/bin/python bench/openssl_idle_any.py /tmp/pki             # the wheel's OpenSSL
    /usr/bin/python3 -m venv --system-site-packages /tmp/deb        # Debian's python3-openssl
    /tmp/deb/bin/python bench/openssl_idle_any.py /tmp/pki

The server context is made as gsitransfer makes its own (TLS 1.2+, client
certificate required, no tickets, no session cache, released buffers); the
client is Python's ``ssl`` (the benchmark's load generator), both on memory
BIOs. Prints what freeing 400 idle server connections (with fresh empty
BIOs) gives back to glibc, per connection.
"""

import argparse
import ctypes
import gc
import ssl
from pathlib import Path

from OpenSSL import SSL
from OpenSSL._util import lib

options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
options.add_argument("pki", type=Path, help="a directory made by scripts/make-test-ca")
options.add_argument("--conns", type=int, default=400)
arguments = options.parse_args()
pki, conns = arguments.pki, arguments.conns
if not (pki / "server" / "hostcert.pem").is_file() or not (pki / "users" / "alice" / "usercert.pem").is_file():
    options.error(f"{pki} is not a test CA with user alice (make one: scripts/make-test-ca --out {pki})")
server_cert, server_key = str(pki / "server" / "hostcert.pem"), str(pki / "server" / "hostkey.pem")
ca_file = str(pki / "ca-bundle.pem")
alice_cert, alice_key = str(pki / "users" / "alice" / "usercert.pem"), str(pki / "users" / "alice" / "userkey.pem")
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MI
def used():
    gc.collect(); m = libc.mallinfo2(); return m.uordblks + m.hblkhd
ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET)
ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
ctx.set_session_id(b"gsitransfer")
ctx.use_certificate_file(server_cert); ctx.use_privatekey_file(server_key)
ctx.load_verify_locations(ca_file)
ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: a[-1])
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False
cctx.load_verify_locations(cafile=ca_file); cctx.load_cert_chain(alice_cert, alice_key)
def move_c2s(ci, s):
    d = ci.read()
    if d: s.bio_write(d)
def move_s2c(s, co):
    while True:
        try: co.write(s.bio_read(1 << 20))
        except SSL.WantReadError: return
def connect():
    s = SSL.Connection(ctx, None); s.set_accept_state()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(inc, out, server_side=False)
    for _ in range(10):
        try: c.do_handshake()
        except ssl.SSLWantReadError: pass
        move_c2s(out, s)
        try: s.do_handshake()
        except SSL.WantReadError: pass
        move_s2c(s, inc)
    c.write(b"GET / HTTP/1.1\r\n\r\n"); move_c2s(out, s); s.recv(65536)
    try: s.recv(65536)
    except SSL.WantReadError: pass
    s.send(b"x" * 65536); move_s2c(s, inc)
    try:
        while True: c.read(1 << 20)
    except ssl.SSLWantReadError: pass
    return s, c
warm = [connect() for _ in range(20)]
servers = []
for _ in range(conns):
    s, c = connect(); servers.append(s)
for s in servers:
    ni, nf = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
    lib.SSL_set_bio(s._ssl, ni, nf); s._into_ssl, s._from_ssl = ni, nf
with_servers = used(); servers.clear(); s = None
print(f"{SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()}: {(with_servers - used()) / conns / 1024:.1f} KiB per idle server connection")
