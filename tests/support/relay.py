"""A TCP relay on 127.0.0.1 that can cut a connection after so many client bytes (a pulled cable).

Bytes pass through unchanged (TLS included: the relay sees only ciphertext);
it counts what each direction carried, and while ``cut_after`` is set, the
connection whose client-to-server bytes pass it is closed both ways at that
point (then ``cut_after`` is cleared: the next connection passes whole).
Threads, each bounded by socket timeouts; :meth:`close` stops them all.
"""

from __future__ import annotations

import select
import socket
import threading


class CuttingRelay:
    """Forwards 127.0.0.1:<port> to ``upstream``; cuts one connection after ``cut_after`` client bytes."""

    def __init__(self, upstream: tuple[str, int], cut_after: int | None = None) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        #: client-to-server bytes forwarded, over every connection
        self.sent = 0
        #: connections cut
        self.cuts = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            thread = threading.Thread(target=self._pipe, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        with client, server:
            ends = {client: server, server: client}
            while not self._closed.is_set():
                readable, _, _ = select.select(list(ends), [], [], 0.5)
                for source in readable:
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is client and self._cut(len(data)):
                        return
                    try:
                        ends[source].sendall(data)
                    except OSError:
                        return

    def _cut(self, size: int) -> bool:
        """Count ``size`` client bytes; True (this connection is cut, nothing more forwarded) at the limit."""
        with self._lock:
            if self.cut_after is not None and self.sent + size > self.cut_after:
                self.cut_after = None
                self.cuts += 1
                return True
            self.sent += size
            return False

    def close(self) -> None:
        """Stop accepting and end every connection (each thread within a second)."""
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "CuttingRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CuttingRelay"]
