"""The cache's one writer: verified blocks queue up, and each transaction takes all that waits.

A fetch that has verified its blocks awaits ``write(blocks)``. One task on the
loop takes every delivery queued meanwhile (up to ``max_bytes``, oldest
first) and writes them in one worker-thread call and one SQLite transaction,
then wakes their writers. Before, each delivery took the writer on its own:
a 20,000-file epoch through the mount made 4,400 transactions (the ~4,000
files that came one request each, one transaction each), and the loop's
hand-off between two of them (a thread hop, and a wake-up of the loop under
a busy interpreter lock) left the writer idle a third of the time while
deliveries queued behind it for 1.3-1.8 s (median).

Where several processes write one cache (DataLoader workers), each one's writer
seldom waits for SQLite's write lock any more (block files are written before it
is taken, see BlockCache.put_many), so it seldom finds more than one delivery
queued: ten times the transactions (2.2 blocks each instead of 24.8), and
through a cache smaller than the data each one brought an eviction with it.
With ``gather`` set, a writer that finds less than ``gather_bytes`` queued waits
up to ``gather`` seconds for more first (docs/benchmarks.md, session 36).

Fetches can outrun the writer (a cold epoch at RTT 0 once queued 340-500 MB for it, all
held in memory). ``unwritten`` counts the bytes queued or being written, and a
prefetch waits for ``room`` before it fetches more (see BlockFetcher).

State (``_queue``, ``_running``, ``unwritten``, ``_queued``, ``_enough``) is changed
only on the loop thread; ``unwritten`` is read from others too (an int, read whole). The
writer task runs while there is something to write, in the nursery the
owner passes in; cancelling it leaves queued deliveries unwritten and their
writers cancelled with it (the engine closes only after the blocks it served
are written: see ``BlockFetcher.settled``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ._blocks import Block

log = logging.getLogger("streamfs.fetch")

Blocks = dict[tuple[str, int], Block]

MAX_GROUP_BYTES = 16 * 1024 * 1024  # one transaction, at most (a delivery bigger goes alone)
GATHER_BYTES = 4 * 1024 * 1024  # with ``gather``: enough queued to write at once


@dataclass(eq=False)
class _Delivery:
    blocks: Blocks
    size: int
    done: trio.Event = field(default_factory=trio.Event)


class WriteQueue:
    def __init__(
        self,
        put_many: Callable[[Blocks], None],
        max_bytes: int = MAX_GROUP_BYTES,
        *,
        gather: float = 0.0,
        gather_bytes: int = GATHER_BYTES,
    ) -> None:
        self._put_many = put_many
        self.max_bytes = max_bytes
        self.gather = gather  # seconds a writer waits for more when little is queued
        self.gather_bytes = gather_bytes
        self._queue: deque[_Delivery] = deque()
        self._running = False
        self.unwritten = 0  # bytes queued or being written
        self._queued = 0  # bytes queued (not being written)
        self._enough = trio.Event()  # set when gather_bytes are queued
        self._written = trio.Event()  # set after each transaction, then replaced
        self.transactions = 0  # groups written so far (for tests and benchmarks)

    async def write(self, blocks: Blocks, nursery: trio.Nursery) -> None:
        """Return once ``blocks`` are written (or their write failed and was logged)."""
        delivery = _Delivery(blocks, sum(len(b) for b in blocks.values()))
        self._queue.append(delivery)
        self.unwritten += delivery.size
        self._queued += delivery.size
        if self._queued >= self.gather_bytes:
            self._enough.set()
        if not self._running:  # the writer ends when the queue is empty: a nursery can close
            self._running = True
            nursery.start_soon(self._run)
        await delivery.done.wait()

    async def room(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes wait for the writer."""
        while self.unwritten > limit:
            await self._written.wait()

    def _take(self) -> list[_Delivery]:
        """The oldest queued deliveries, ``max_bytes`` of them (at least one)."""
        group = [self._queue.popleft()]
        size = group[0].size
        while self._queue and size + self._queue[0].size <= self.max_bytes:
            size += self._queue[0].size
            group.append(self._queue.popleft())
        self._queued -= size
        return group

    async def _gather(self) -> None:
        """With ``gather``: wait until ``gather_bytes`` are queued, ``gather`` seconds at most."""
        if self.gather <= 0 or self._queued >= self.gather_bytes:
            return
        self._enough = trio.Event()
        with trio.move_on_after(self.gather):
            await self._enough.wait()

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._gather()
                group = self._take()
                merged: Blocks = {}
                for delivery in group:
                    merged.update(delivery.blocks)
                try:
                    await trio.to_thread.run_sync(self._put_many, merged)
                except Exception as exc:  # the cache logs disk errors itself; never stop writing
                    log.warning("%d blocks not cached: %s", len(merged), exc)
                finally:
                    self.transactions += 1
                    for delivery in group:
                        self.unwritten -= delivery.size
                        delivery.done.set()
                    self._written.set()
                    self._written = trio.Event()
        finally:
            self._running = False
