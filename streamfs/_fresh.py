"""Blocks just prefetched, kept in memory until a reader takes them.

A prefetched block (a whole small file, or a readahead block of a big one)
is written to the disk cache (for every other process) and, here, handed
to the first reader in this process without reading it back: a cache hit
is an SQLite lookup and a file open, seek, read and close, each of which
lets go of the GIL, and in a FUSE daemon with a dozen threads every let-go
is a chance of a thread switch; a 4 MiB read-back is also a fresh 4 MiB
buffer. Taking a block removes it.

At most ``max_bytes`` are held. What was prefetched first is what a reader
wants next, so when full the store keeps its old blocks and turns new ones
away (they are in the disk cache), unless the oldest is **stale**: twice
``max_bytes`` have been offered since it came and nobody took it (its
reader closed the file or sought away), and then it goes.

A block also goes once it is older than ``max_age`` seconds, at the next
add or take. Without that, what nobody took stayed once prefetching
stopped, and every warm open paid for looking (``held_anywhere``). A
reader that comes later reads the block from the disk cache.

A DataLoader worker keeps none of the small files it prefetches: the other
workers open most of them. Each of 8 workers held 40-63 MiB of them after
epoch 1 (20,000 files), for the 10 s of ``max_age`` after it, and looking
among them made its warm opens in that time 8-13 % slower (8 processes).

Thread safety: the engine's loop adds, reader threads take; one lock, held
only for dictionary work.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ._blocks import Block

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# While prefetching goes on, a block nobody takes is stale after twice max_bytes more were
# offered: 1-4 s in an epoch 1 (1,200 files of ~110 KiB at 300-1,000 files/s), under 1 s behind a
# sequential reader. The age bound does the same once offers stop, with room to spare.
DEFAULT_MAX_AGE = 10.0

# Blocks held by every store of this process. A warm read asks held_anywhere() first, and when
# nothing is held (every read of a warm epoch) skips finding the engine and its store: ~1.7 of
# the ~10 µs of Python a warm small file costs. Read without a lock: a reader that misses a
# block being added finds it in the disk cache, where it is written first.
_held = 0
_held_lock = threading.Lock()


def held_anywhere() -> bool:
    return _held > 0


Key = tuple[str, int]  # (blob id, block index)


class FreshBlocks:
    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        # guarded by _lock: key -> (bytes, the offered count when it came, when it came),
        # oldest first
        self._blocks: OrderedDict[Key, tuple[Block, int, float]] = OrderedDict()
        self._bytes = 0  # guarded by _lock: sum of the held blocks' lengths
        self._offered = 0  # guarded by _lock: bytes ever offered to add

    def add(self, key: Key, data: Block) -> bool:
        """Keep ``data`` (verified bytes of block ``key``) for its first reader, if there is room."""
        with self._lock:
            now = self._clock()
            self._offered += len(data)
            self._drop(key)
            self._drop_expired(now)
            while self._bytes + len(data) > self.max_bytes and self._oldest_is_stale():
                self._drop(next(iter(self._blocks)))
            if self._bytes + len(data) > self.max_bytes:
                return False
            self._blocks[key] = (data, self._offered, now)
            self._bytes += len(data)
            _count(1)
            return True

    def take(self, key: Key) -> Block | None:
        """The bytes of block ``key`` if they are here; they are not kept after."""
        with self._lock:
            data = self._drop(key)
            if self._blocks:
                self._drop_expired(self._clock())
            return data

    def _oldest_is_stale(self) -> bool:
        if not self._blocks:
            return False
        _, since, _ = next(iter(self._blocks.values()))
        return self._offered - since >= 2 * self.max_bytes

    def _drop_expired(self, now: float) -> None:
        """Drop the blocks older than ``max_age`` (the oldest come first)."""
        blocks = self._blocks
        while blocks:
            key, (_, _, came) = next(iter(blocks.items()))
            if now - came < self.max_age:
                return
            self._drop(key)

    def _drop(self, key: Key) -> Block | None:
        held = self._blocks.pop(key, None)
        if held is None:
            return None
        self._bytes -= len(held[0])
        _count(-1)
        return held[0]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._blocks)

    def clear(self) -> None:
        """Drop every block (the engine that fills this store has stopped)."""
        with self._lock:
            while self._blocks:
                self._drop(next(iter(self._blocks)))


def _count(change: int) -> None:
    global _held
    with _held_lock:
        _held += change


def _after_fork_in_child() -> None:
    global _held, _held_lock
    _held_lock = threading.Lock()  # another thread may have held it at the fork
    _held = 0  # the parent's stores belong to its engines, which do not run here


os.register_at_fork(after_in_child=_after_fork_in_child)
