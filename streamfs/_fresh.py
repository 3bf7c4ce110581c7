"""Small blobs just prefetched, kept in memory until a reader takes them.

A prefetched file is written to the disk cache (for every other process)
and, here, handed to the first reader in this process without reading it
back: a cache hit is an SQLite lookup and a file open, seek, read and close,
each of which lets go of the GIL, and in a FUSE daemon with a dozen threads
every let-go is a chance of a thread switch. Taking a blob removes it;
entries nobody takes are dropped oldest first beyond ``max_bytes``, so this
never holds more than that.

Thread safety: the engine's loop adds, reader threads take; one lock, held
only for dictionary work.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class FreshBlobs:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()  # guarded by _lock
        self._bytes = 0  # guarded by _lock: sum of len() of _blobs' values

    def add(self, oid: str, data: bytes) -> None:
        """Keep ``data`` (the verified bytes of blob ``oid``) for its first reader."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._blobs.pop(oid, None)
            if old is not None:
                self._bytes -= len(old)
            self._blobs[oid] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._blobs.popitem(last=False)
                self._bytes -= len(dropped)

    def take(self, oid: str) -> bytes | None:
        """The bytes of blob ``oid`` if they are here; they are not kept after."""
        with self._lock:
            data = self._blobs.pop(oid, None)
            if data is not None:
                self._bytes -= len(data)
            return data

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._blobs)
