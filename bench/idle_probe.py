"""A probe loaded inside the twistd server by ``bench/idle_memory.py`` (not a real handler).

Loaded with ``--handler probe=idle_probe:factory`` (``bench/`` on ``PYTHONPATH``):
the factory starts :mod:`tracemalloc` when ``GSIT_PROBE_TRACE`` is a number of
frames, and installs two signal handlers that write into ``GSIT_PROBE_DIR``:

* ``SIGUSR1``: ``dump-<n>.pickle`` with the RSS, glibc's ``mallinfo2``, the count of live objects per
  type (after a full collection) and, when tracing, a tracemalloc snapshot;
* ``SIGUSR2``: ``malloc_trim(0)`` (glibc gives freed pages back), then the same
  dump: the difference shows how much of the RSS was free but unreturned memory.

Every dump ends by writing ``dump-<n>.done``, which the harness waits for.
The handler it returns refuses every upload and download (the prefix is unused).
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import signal
import tracemalloc
from collections import Counter
from typing import Any

from gsitransfer.errors import FileNotFound

_count = [0]


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _type_name(kind: type) -> str:
    module = kind.__dict__.get("__module__", None)
    return f"{module if isinstance(module, str) else '?'}.{kind.__qualname__}"


def _dump(trim: bool) -> None:
    directory = os.environ["GSIT_PROBE_DIR"]
    gc.collect()
    rss_untrimmed = _rss_kib()
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    types = Counter(_type_name(type(obj)) for obj in gc.get_objects())
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    heap = _mallinfo()
    name = os.path.join(directory, f"dump-{_count[0]}")
    _count[0] += 1
    with open(name + ".pickle", "wb") as stream:
        pickle.dump(dict(rss_untrimmed=rss_untrimmed, rss=_rss_kib(), types=dict(types),
                         traced=traced, snapshot=snapshot, heap=heap), stream)
    open(name + ".done", "w").close()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _mallinfo() -> dict[str, int]:
    """glibc's main-arena figures: bytes in use (uordblks), free (fordblks), mmapped (hblkhd)."""
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    function.restype = _MallInfo2
    info = function()
    return {name: getattr(info, name) for name, _ in _MallInfo2._fields_}


class _NoFiles:
    """Refuses everything: the probe's prefix serves nothing."""

    def GetDownloadFilename(self, id_token: Any, url_path: str) -> str:
        raise FileNotFound(url_path)

    def CanUpload(self, id_token: Any, file_info: Any) -> bool:
        return False

    def AddPendingUpload(self, id_token: Any, filename: str) -> None:
        pass

    def GetUploadFilename(self, id_token: Any, file_info: Any) -> None:
        return None

    def CompleteUpload(self, id_token: Any, file_info: Any) -> None:
        pass

    def CancelPendingUpload(self, id_token: Any, filename: str) -> None:
        pass


def _forget_accepted_handshakes() -> None:
    """Experiment: ServerTLS drops its per-connection refusal record once a handshake succeeds."""
    from OpenSSL import SSL

    from gsitransfer.tls.context import ServerTLS

    original = ServerTLS._info

    def _info(self: Any, connection: Any, where: int, value: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self._handshakes.pop(connection, None)
            return
        original(self, connection, where, value)

    ServerTLS._info = _info  # type: ignore[method-assign]


#: in-server experiments, by name (``GSIT_PROBE_PATCH=name,name``): changes to files this
#: harness does not own, measured before they are proposed
_PATCHES = {"forget-handshakes": _forget_accepted_handshakes}


def factory() -> _NoFiles:
    for name in filter(None, os.environ.get("GSIT_PROBE_PATCH", "").split(",")):
        _PATCHES[name]()
    frames = os.environ.get("GSIT_PROBE_TRACE")
    if frames:
        tracemalloc.start(int(frames))
    signal.signal(signal.SIGUSR1, lambda *_: _dump(trim=False))
    signal.signal(signal.SIGUSR2, lambda *_: _dump(trim=True))
    return _NoFiles()
