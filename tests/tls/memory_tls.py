"""TLS handshakes in memory between two pyOpenSSL connections (no sockets, bounded)."""

from __future__ import annotations

from OpenSSL import SSL


def pump(client: SSL.Connection, server: SSL.Connection) -> None:
    """Drive both handshakes and move every pending TLS byte between the two ends (bounded)."""
    for _ in range(50):
        for end in (client, server):
            try:
                end.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:  # a refused handshake: its alert still goes across
                pass
        moved = False
        for source, target in ((client, server), (server, client)):
            try:
                data = source.bio_read(1 << 20)
            except SSL.WantReadError:
                continue
            target.bio_write(data)
            moved = True
        if not moved:
            return
