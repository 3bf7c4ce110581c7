"""Readers by path, for a read-only mount that never sees open() or close().

On a pinned commit the daemon registers no ``open`` and ``release`` with
libfuse: libfuse answers both in C, and a file the kernel already has in its
page cache (``kernel_cache``) costs the daemon nothing at all. Two calls
into Python per file were the whole cost of a warm epoch.

Reads then arrive by path alone, so the readahead state that used to live in
a handle lives here: each path keeps up to ``per_path`` readers, one per
stream. A read goes to the reader whose stream it continues (see
``ReadaheadPlanner.continues``); a read that continues none starts a new
reader, or, once the path has ``per_path`` of them, resets the least recently
used one (as a random read resets a handle's stream). Two processes scanning
one big file at different offsets thus keep a stream each.

Nothing says when a reader is done, so at most ``limit`` readers are kept,
least recently used dropped first; a reader keeps at most one block in memory,
which bounds what the table holds. Threads racing to read a new file end up
with one reader of it when their reads belong to one stream (always, for a
small file): the reader's first read is the file's "open" for the sibling
prefetcher, and a second one would look like the start of another epoch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class StreamReader(Protocol):
    def continues(self, offset: int) -> bool: ...

    def readinto(self, offset: int, out: memoryview) -> int: ...


class PathReaders:
    def __init__(
        self,
        open_reader: Callable[[str], StreamReader],
        limit: int = 64,
        per_path: int = 4,
    ) -> None:
        if limit < 1 or per_path < 1:
            raise ValueError("want limit >= 1 and per_path >= 1")
        self._open = open_reader
        self.limit = limit
        self.per_path = per_path
        self._lock = threading.Lock()  # dict operations only: readers are made outside it
        self._lru: OrderedDict[int, tuple[str, StreamReader]] = OrderedDict()
        self._by_path: dict[str, list[int]] = {}  # path -> keys into _lru, least recent first
        self._next = 0

    def __len__(self) -> int:
        return len(self._lru)

    def readinto(self, path: str, offset: int, out: memoryview) -> int:
        return self.reader(path, offset).readinto(offset, out)

    def reader(self, path: str, offset: int) -> StreamReader:
        """The reader for a read of ``path`` at ``offset``."""
        with self._lock:
            found = self._find(path, offset)
        if found is not None:
            return found
        made = self._open(path)  # may load a folder listing: not under the lock
        with self._lock:
            found = self._find(path, offset)  # another thread may have made one meanwhile
            if found is not None:
                return found
            key = self._next
            self._next += 1
            self._lru[key] = (path, made)
            keys = self._by_path.setdefault(path, [])
            keys.append(key)
            if len(keys) > self.per_path:  # threads that raced on one path
                self._drop(keys[0])
            while len(self._lru) > self.limit:
                self._drop(next(iter(self._lru)))
        return made

    def _find(self, path: str, offset: int) -> StreamReader | None:
        keys = self._by_path.get(path)
        if not keys:
            return None
        for key in reversed(keys):  # the most recent stream first
            if self._lru[key][1].continues(offset):
                return self._touch(path, key)
        if len(keys) >= self.per_path:
            return self._touch(path, keys[0])  # its stream is reset by this read
        return None

    def _touch(self, path: str, key: int) -> StreamReader:
        self._lru.move_to_end(key)
        keys = self._by_path[path]
        keys.remove(key)
        keys.append(key)
        return self._lru[key][1]

    def _drop(self, key: int) -> None:
        path, _ = self._lru.pop(key)
        keys = self._by_path[path]
        keys.remove(key)
        if not keys:
            del self._by_path[path]
