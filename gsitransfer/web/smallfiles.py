"""Small files the keep-alive shortcut answered lately: their bodies and header blocks, checked by one ``stat``.

The keep-alive shortcut (:mod:`gsitransfer.web._keepalive`) answers a GET of
a small file by opening it, ``fstat``, ``pread`` and building its header
block (type, length, Last-Modified, ETag, digest) — every time. With the
``small_file_cache`` fast path a site keeps what it built for the files it
answered lately, within a byte budget (least recently used out first), and
serves the same bytes again after one ``stat`` of the path shows the file in
the same state: same device, inode, size and modification and change times
(nanoseconds: ``handler.file_state``) — and the same digest from the handler. The store publishes a
file by renaming a new one into place (a new inode), so any upload,
overwrite or deletion misses; the change times are the kernel's clock (a few
milliseconds), as for the digests the store remembers
(``DirectoryStore.cached_download``). Without it (the switch off) every GET
reads the file: the plain path, byte-identical on the wire (an equivalence
test holds it).
"""

from __future__ import annotations

import collections
import os
from typing import NamedTuple

from ..handler import file_state

#: the bytes of bodies a site keeps by default (128 files of 64 KiB)
DEFAULT_BUDGET = 8 << 20


class _Kept(NamedTuple):
    state: tuple[int, int, int, int, int]
    checksum: str | None
    block: bytes
    body: bytes


class SmallFiles:
    """Bodies and header blocks of small files, by path, within ``budget`` bytes of bodies (one per site)."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._kept: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self._size = 0

    def get(self, path: str, checksum: str | None) -> tuple[bytes, bytes] | None:
        """The header block and body kept for ``path`` if the file is still in the state they were made of."""
        kept = self._kept.get(path)
        if kept is None:
            return None
        try:
            status = os.stat(path)
        except OSError:
            self._drop(path)
            return None
        if file_state(status) != kept.state or checksum != kept.checksum:
            self._drop(path)
            return None
        self._kept.move_to_end(path)
        return kept.block, kept.body

    def keep(self, path: str, status: os.stat_result, checksum: str | None, block: bytes, body: bytes) -> None:
        """Remember what was answered for ``path`` in the state ``status`` (its ``fstat`` as read)."""
        if len(body) > self.budget:
            return
        self._drop(path)
        self._kept[path] = _Kept(file_state(status), checksum, block, body)
        self._size += len(body)
        while self._size > self.budget:
            _, oldest = self._kept.popitem(last=False)
            self._size -= len(oldest.body)

    def __len__(self) -> int:
        return len(self._kept)

    def _drop(self, path: str) -> None:
        kept = self._kept.pop(path, None)
        if kept is not None:
            self._size -= len(kept.body)


__all__ = ["DEFAULT_BUDGET", "SmallFiles"]
