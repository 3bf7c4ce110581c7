"""Fetching verified blocks into the cache. Runs on the engine's trio loop.

Invariants (all state here is touched only by the loop thread, so no locks):

- A block is stored in the cache and handed to a reader only after its
  hash matched: for a one-block blob its BLAKE3 if the API sent it with the
  blob's URL, else its id (sha256); for a larger one the per-block hash the
  server published (``/blobs/ID/blocks``). A bad block is fetched once
  more, from the API even if the server has a front (a static server that
  serves other bytes than the store's); if it is bad again the read fails
  with IntegrityError (EIO).
- Two readers of one block cause one request: the in-flight table maps
  (blob, index) to a pending fetch that later readers wait on.
- Contiguous missing blocks are fetched in range requests of at most
  ``max_request`` bytes, at most ``parallel`` requests at once.
- Whole small blobs that are prefetched (``prefetch_whole``) travel many to a
  request (``POST blobs/batch``), at most ``parallel_batches`` batches at once.
  A batch claims its blobs only when it starts, so a reader never waits behind
  a queue of prefetches: what is not in flight yet, it fetches itself. It
  leaves out what is cached, and in a worker process (``claims``) what
  another process sharing the cache is prefetching (see BlockCache.claim).
- The loop moves bytes and hashes small pieces (a batch's blobs, one at a time).
  Hashing pieces of ``HASH_IN_THREAD`` or more and writing the cache run in
  worker threads, the writes through one writer (SQLite has one write lock;
  racing writers sleep in its busy handler) that takes every delivery queued
  meanwhile into one transaction (``_writequeue``).
  A prefetched block is handed over once it is in the cache. A block a
  reader is waiting for is handed over first and written after, while the
  bytes served that way and not yet written stay under ``EARLY_BYTES``
  (past that, it waits for its write like a prefetch): a reader of random
  ranges does not wait for each write, and a reader faster than the cache
  writer is held back to its pace. A block stays in the in-flight table
  until it is written, so a second reader in this process takes it from
  there; ``settled()`` waits until every such write is done (the engine's
  close and the process's exit wait for it).
- A prefetched block (a small blob, or readahead) is also kept in memory
  (``fresh``) for the first reader in this process, which then skips reading
  it back from the cache. A block a reader waited for is not kept: the
  reader has it. Nor is a DataLoader worker's prefetched small blob: the
  other workers read most of them, from the cache (see ``_fresh``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from ._blocks import Block, block_span, coalesce
from ._cache import BlockCache
from ._errors import IntegrityError, InvalidInputError, RemoteError, RemoteUnavailableError
from ._fresh import FreshBlocks
from ._model import (
    BLOCK_HASHES,
    BLOCK_SIZE,
    block_count,
    block_digest,
    is_object_id,
    load_json_object,
)
from ._remote import Remote
from ._writequeue import WriteQueue

log = logging.getLogger("streamfs.fetch")

Told = Callable[[list[str]], None]  # told blob ids, on the loop (prefetch_whole)


@dataclass(frozen=True, slots=True)
class _Listeners:
    """Who a prefetch batch tells of its blobs, on the loop (BlockFetcher.prefetch_whole)."""

    elsewhere: Told | None
    landed: Told | None


@dataclass(frozen=True, slots=True)
class BlobRef:
    owner: str
    name: str
    id: str
    size: int


HASH_IN_THREAD = 1024 * 1024  # pieces at least this big are hashed off the loop
BATCH_FILES = 64  # blobs in one prefetch batch ...
BATCH_BYTES = 8 * 1024 * 1024  # ... and bytes
EARLY_BYTES = 32 * 1024 * 1024  # served to a waiting reader before they were cached
UNWRITTEN_BYTES = 64 * 1024 * 1024  # a prefetch batch waits while more than this awaits the writer
GATHER_SECONDS = 0.05  # a worker process's cache writer waits this long for a bigger group


class _Gauge:
    """A count on the loop that tasks can wait to see at zero (fetches running, bytes unwritten)."""

    def __init__(self) -> None:
        self.value = 0
        self._zero = trio.Event()
        self._zero.set()

    def add(self, n: int) -> None:
        if self.value == 0:
            self._zero = trio.Event()
        self.value += n

    def sub(self, n: int) -> None:
        self.value -= n
        if self.value == 0:
            self._zero.set()

    async def wait_zero(self) -> None:
        while self.value:
            await self._zero.wait()


@dataclass(eq=False)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    data: Block | None = None
    error: BaseException | None = None
    waited: bool = False  # a reader waits for it (not only the prefetcher)


class BlockFetcher:
    def __init__(
        self,
        remote: Remote,
        cache: BlockCache,
        *,
        max_request: int = 4 * BLOCK_SIZE,
        parallel: int = 16,
        parallel_batches: int = 4,
        claims: bool = False,
    ) -> None:
        self.remote = remote
        self.cache = cache
        self.claims = claims  # prefetches claim their blobs in the cache (_claim_uncached)
        self.max_request = max_request
        self._limiter = trio.CapacityLimiter(parallel)
        self._batch_limiter = trio.CapacityLimiter(parallel_batches)
        # One cache writer per process: SQLite has one write lock, and writers that race for
        # it sleep in its busy handler. It writes all that queued meanwhile in one transaction;
        # a process among others writing the cache waits a little for more (see WriteQueue).
        self._writes = WriteQueue(
            lambda blocks: self.cache.put_many(blocks, record_reads=claims),
            gather=GATHER_SECONDS if claims else 0.0,
        )
        self._inflight: dict[tuple[str, int], _Pending] = {}
        self._tasks = _Gauge()  # fetches started and not finished
        self._blockmaps: dict[str, tuple[str, list[str]]] = {}  # blob id -> _block_hashes
        self._early = _Gauge()  # bytes handed to readers and not cached yet
        self.fresh = FreshBlocks()  # prefetched blocks, for their first reader
        # ids of small blobs that reader threads fetch themselves (see _directget.py): batches
        # leave them out. Readers add and remove ids; the loop only reads and removes.
        self.reader_fetches: set[str] = set()

    async def blocks(self, blob: BlobRef, indices: Sequence[int]) -> dict[int, Block]:
        """The verified bytes of the given blocks (fetching what is not in flight).

        The caller looked in the cache first, but a fetch in flight then may have been
        written and left the in-flight table before this runs: a block this process now
        knows is cached is read from there, not fetched again."""
        result: dict[int, Block] = {}
        written = [
            i
            for i in indices
            if (blob.id, i) not in self._inflight and self.cache.known(blob.id, i)
        ]
        if written:
            result = await trio.to_thread.run_sync(self._cached_blocks, blob, written)
        pending = self._start(blob, [i for i in indices if i not in result])
        for waiting in pending.values():
            waiting.waited = True
        for index in pending:
            p = pending[index]
            await p.done.wait()
            if p.error is not None:
                raise p.error
            assert p.data is not None
            result[index] = p.data
            self.fresh.take((blob.id, index))  # a readahead this read caught up with
        return result

    def _cached_blocks(self, blob: BlobRef, indices: list[int]) -> dict[int, Block]:
        """Those of the given blocks that the cache holds whole (its SQLite: off the loop)."""
        found: dict[int, Block] = {}
        for index in indices:
            start, end = block_span(index, blob.size, BLOCK_SIZE)
            data = self.cache.get_block(blob.id, index, 0, end - start)
            if data is not None and len(data) == end - start:
                found[index] = data
        return found

    async def prefetch(self, blob: BlobRef, indices: Sequence[int]) -> None:
        """Fetch blocks into the cache in the background (readahead). Blocks other processes
        cached are looked up in one query, which remembers their files, so that the reads
        that follow skip SQLite."""
        cache = self.cache
        unknown = [
            i for i in indices if (blob.id, i) not in self._inflight and not cache.known(blob.id, i)
        ]
        cached = cache.cached((blob.id, i) for i in unknown)
        wanted = [i for i in unknown if (blob.id, i) not in cached]
        if wanted:
            self._start(blob, wanted, keep=True)

    def _start(
        self, blob: BlobRef, indices: Sequence[int], *, keep: bool = False
    ) -> dict[int, _Pending]:
        pending: dict[int, _Pending] = {}
        new: list[int] = []
        for index in sorted(set(indices)):
            p = self._inflight.get((blob.id, index))
            if p is None:
                p = self._inflight[(blob.id, index)] = _Pending()
                new.append(index)
            pending[index] = p
        for first, last in coalesce(new, BLOCK_SIZE, self.max_request):
            self._spawn(self._fetch_claimed, blob, first, last, keep)
        return pending

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        self._tasks.add(1)
        try:
            self._nursery.start_soon(self._tracked, fn, args)
        except RuntimeError:  # the nursery is closing: nothing started
            self._tasks.sub(1)
            raise

    async def _tracked(self, fn: Callable[..., Awaitable[None]], args: tuple[object, ...]) -> None:
        try:
            await fn(*args)
        finally:
            self._tasks.sub(1)

    async def quiet(self) -> None:
        """Wait until no fetch or prefetch is running (for tests and benchmarks)."""
        await self._tasks.wait_zero()

    @property
    def _nursery(self) -> trio.Nursery:
        assert self.nursery is not None
        return self.nursery

    nursery: trio.Nursery | None = None  # set by the owner before use

    async def prefetch_whole(
        self,
        blobs: Sequence[BlobRef],
        elsewhere: Told | None = None,
        read_since: float | None = None,
        landed: Told | None = None,
    ) -> None:
        """Fetch whole small blobs (one block each) into the cache, many to a request.

        ``elsewhere`` is told, on the loop, the ids of those it leaves out because they are
        in the cache already or another process is prefetching them (DataLoader workers
        share the cache), or, with ``read_since`` (a wall time: when the caller's pass
        began), another process has read them since then (see BlockCache.claim);
        ``landed``, those of each batch once they are in the cache.
        """
        unique = {b.id: b for b in blobs}  # one claim per blob: a twice-claimed one never resolves
        repos: dict[tuple[str, str], list[BlobRef]] = {}
        for blob in unique.values():
            if 0 < blob.size <= BLOCK_SIZE:
                repos.setdefault((blob.owner, blob.name), []).append(blob)
        for small in repos.values():  # a batch asks one repository
            self._batches(small, _Listeners(elsewhere, landed), read_since)

    def _batches(self, small: list[BlobRef], told: _Listeners, read_since: float | None) -> None:
        for start in range(0, len(small), BATCH_FILES):
            batch: list[BlobRef] = []
            size = 0
            for blob in small[start : start + BATCH_FILES]:
                if batch and size + blob.size > BATCH_BYTES:
                    self._spawn(self._fetch_batch, batch, told, read_since)
                    batch, size = [], 0
                batch.append(blob)
                size += blob.size
            if batch:
                self._spawn(self._fetch_batch, batch, told, read_since)

    async def _fetch_batch(
        self, blobs: list[BlobRef], told: _Listeners, read_since: float | None
    ) -> None:
        try:
            await self._fetch_batch_claiming(blobs, told, read_since)
        except Exception as exc:  # a prefetch must never take the engine down
            log.warning("prefetch of %d blobs failed: %s", len(blobs), exc)

    async def _fetch_batch_claiming(
        self, blobs: list[BlobRef], told: _Listeners, read_since: float | None
    ) -> None:
        elsewhere = told.elsewhere
        async with self._batch_limiter:
            # Claim only what nobody fetched meanwhile (cache lookups are SQLite: off the loop).
            unclaimed = [b for b in blobs if (b.id, 0) not in self._inflight]
            mine = await trio.to_thread.run_sync(self._claim_uncached, unclaimed, read_since)
            if elsewhere is not None and len(mine) < len(unclaimed):
                taken = {b.id for b in mine}
                elsewhere([b.id for b in unclaimed if b.id not in taken])
            todo, written = self._take_in_flight(mine)
            if elsewhere is not None and written:
                elsewhere(written)
            if not todo:
                return
            await self._writes.room(UNWRITTEN_BYTES)  # fetch no faster than the cache writes
            try:
                pieces = await self._read_batch(todo)
            except BaseException as exc:  # every claim is resolved, whatever happened
                self._fail([(b.id, 0) for b in todo], exc)
                if not isinstance(exc, Exception):
                    raise
                return
        hold = not self.claims  # a DataLoader worker's small files: the others read them
        for blob in todo:
            if blob.id not in pieces:  # cut short or corrupt: fetched again on its own
                self._spawn(self._fetch_claimed, blob, 0, 0, True, hold)
        await self._deliver({(oid, 0): piece for oid, piece in pieces.items()}, True, hold)
        if told.landed is not None and pieces:
            told.landed(list(pieces))

    async def _read_batch(self, blobs: list[BlobRef]) -> dict[str, bytes]:
        """The blobs that arrived whole and match their ids (the rest are left out)."""
        first = blobs[0]
        ids, sizes = [b.id for b in blobs], [b.size for b in blobs]
        data = await self.remote.read_blobs(first.owner, first.name, ids, sizes)
        if len(data) != len(blobs):
            return {}
        pieces = dict(zip(ids, data, strict=True))
        checks = {oid: self.remote.whole_check(oid) for oid in ids}
        if max(sizes) < HASH_IN_THREAD:
            # Hashed here, like a small blob fetched alone: ~1 ms for a batch of 64 by BLAKE3
            # (~4 by sha256), the interpreter lock let go for each blob. A worker thread for it
            # cost more in lock hand-offs among busy readers than it freed the loop for
            # (docs/benchmarks.md, session 31).
            return _verified_whole(pieces, checks)
        return await trio.to_thread.run_sync(_verified_whole, pieces, checks)

    def _take_in_flight(self, blobs: list[BlobRef]) -> tuple[list[BlobRef], list[str]]:
        """Those of ``blobs`` (small ones) that neither this loop nor a reader's thread is
        fetching, now in flight here; and the ids of those written to the cache since the
        batch's claim looked.

        A reader's thread adds a blob to ``reader_fetches`` and then looks in the in-flight
        table (Engine.get_direct); this goes the other way round, each blob in flight first,
        then a look at ``reader_fetches``. Whatever the threads' interleaving, one of the two
        sees the other's mark, and the blob is fetched once. (Looking first and marking after
        let a reader's thread slip in between: a blob fetched twice, once in CI.)"""
        busy, direct, cache = self._inflight, self.reader_fetches, self.cache
        todo: list[BlobRef] = []
        written: list[str] = []
        for blob in blobs:
            key = (blob.id, 0)
            if key in busy:
                continue
            busy[key] = _Pending()
            if blob.id in direct:  # a reader's thread is fetching it
                del busy[key]
            elif cache.known(blob.id, 0):  # what a reader fetched leaves reader_fetches
                del busy[key]  # once it is in the cache
                written.append(blob.id)
            else:
                todo.append(blob)
        return todo, written

    def _claim_uncached(self, blobs: list[BlobRef], read_since: float | None) -> list[BlobRef]:
        """Those of ``blobs`` not in the cache that no other process is prefetching now (or,
        with ``read_since``, has read since then), claimed (see BlockCache.claim; only with
        ``claims``)."""
        cached = self.cache.cached((b.id, 0) for b in blobs)
        uncached = [b for b in blobs if (b.id, 0) not in cached]
        if not uncached or not self.claims:
            return uncached
        claimed = set(self.cache.claim([b.id for b in uncached], read_since=read_since))
        return [b for b in uncached if b.id in claimed]

    async def _fetch_claimed(
        self, blob: BlobRef, first: int, last: int, keep: bool, hold: bool = True
    ) -> None:
        """Fetch blocks first..last (inclusive) in one range request and resolve them.

        The caller has made their in-flight entries; ``keep``: a prefetch, ``hold``: kept in
        memory for a reader to come (see ``_deliver``).
        """
        try:
            blocks = await self._fetch_verified(blob, first, last)
        except BaseException as exc:
            self._fail([(blob.id, i) for i in range(first, last + 1)], exc)
            if not isinstance(exc, Exception):
                raise
            return
        await self._deliver({(blob.id, i): data for i, data in blocks.items()}, keep, hold)

    def writer_behind(self) -> bool:
        """Whether more than UNWRITTEN_BYTES wait for the cache's writer (from any thread)."""
        return self._writes.unwritten > UNWRITTEN_BYTES

    def in_flight(self, oid: str, index: int) -> bool:
        """Whether a block is being fetched now (from any thread: a dict lookup)."""
        return (oid, index) in self._inflight

    def adopt(self, oid: str, data: bytes) -> None:
        """On the loop: the verified bytes of small blob ``oid`` that a reader's thread fetched
        itself (_directget.py), already served: cached like a fetched block, counted as
        served and not yet written until then (``settled``)."""
        try:
            self._spawn(self._write_adopted, oid, data)
        except RuntimeError:  # the engine is closing: served, not cached
            self.reader_fetches.discard(oid)
            return
        self._early.add(len(data))

    async def _write_adopted(self, oid: str, data: bytes) -> None:
        try:
            await self._writes.write({(oid, 0): data}, self._nursery)
        finally:
            self._early.sub(len(data))
            self.reader_fetches.discard(oid)

    def _fail(self, keys: list[tuple[str, int]], exc: BaseException) -> None:
        # Waiters are other tasks: hand them an ordinary error, never our Cancelled.
        shown = (
            exc
            if isinstance(exc, Exception)
            else RemoteUnavailableError("the engine is shutting down")
        )
        for key in keys:
            pending = self._inflight.pop(key)
            pending.error = shown
            pending.done.set()

    async def _deliver(
        self, blocks: dict[tuple[str, int], Block], keep: bool = False, hold: bool = True
    ) -> None:
        """Hand verified blocks to their waiters and write them to the cache.

        Blocks a reader waits for go to it before their write while fewer than
        ``EARLY_BYTES`` are served and unwritten: the write does not add to the
        wait of a read (a prefetch batch's write of 64 files took 10-30 ms in a
        cold epoch). Prefetched blocks (``keep``) that nobody waited for are
        written first, then kept in ``fresh`` for a reader that comes later,
        unless not ``hold`` (a DataLoader worker's small blobs).
        """
        size = sum(len(data) for data in blocks.values())
        waited = not keep or any(self._inflight[key].waited for key in blocks)
        early = waited and self._early.value + size <= EARLY_BYTES
        if early:
            self._early.add(size)
            self._resolve(blocks)
        try:
            await self._writes.write(blocks, self._nursery)
        finally:
            if early:
                self._early.sub(size)
            for key, data in blocks.items():
                pending = self._inflight.pop(key)
                if keep and hold and not pending.waited:
                    self.fresh.add(key, data)
                if not early:
                    pending.data = data
                    pending.done.set()

    def _resolve(self, blocks: dict[tuple[str, int], Block]) -> None:
        for key, data in blocks.items():
            pending = self._inflight[key]
            pending.data = data
            pending.done.set()

    async def settled(self) -> None:
        """Wait until every block served before its write is in the cache."""
        await self._early.wait_zero()

    async def _fetch_verified(self, blob: BlobRef, first: int, last: int) -> dict[int, Block]:
        algorithm, hashes = await self._block_hashes(blob)
        for attempt in range(2):
            start, _ = block_span(first, blob.size, BLOCK_SIZE)
            _, end = block_span(last, blob.size, BLOCK_SIZE)
            async with self._limiter:  # a second try skips the server's front, if it has one
                parts = await self.remote.read_blocks(
                    blob.owner, blob.name, blob.id, start, end, front=attempt == 0
                )
            got = [len(part) for part in parts]
            if got != [min(BLOCK_SIZE, end - at) for at in range(start, end, BLOCK_SIZE)]:
                raise RemoteError(
                    f"blob {blob.id[:12]}: asked for {end - start} bytes, got {sum(got)}"
                )
            # Blocks as received: each in a buffer of its own that nothing else writes to
            blocks = dict(zip(range(first, last + 1), parts, strict=True))
            expected = {i: hashes[i] for i in blocks}
            if end - start >= HASH_IN_THREAD:
                bad = await trio.to_thread.run_sync(_bad_blocks, blocks, expected, algorithm)
            else:
                bad = _bad_blocks(blocks, expected, algorithm)
            if not bad:
                return blocks
            if attempt == 1:
                raise IntegrityError(
                    f"block {bad[0]} of blob {blob.id[:12]} does not match its hash, twice"
                )
            log.warning(
                "block %d of blob %s does not match its hash: fetching it again from the API",
                bad[0],
                blob.id[:12],
            )
        raise AssertionError("unreachable")

    async def _block_hashes(self, blob: BlobRef) -> tuple[str, list[str]]:
        """The hash (of BLOCK_HASHES) to check the blob's blocks by, and each block's digest:
        a one-block blob's (Remote.whole_check) is its BLAKE3 if the API sent it with its URL,
        else its id (sha256); a larger one's, the server's block list."""
        if blob.size <= BLOCK_SIZE:
            algorithm, digest = self.remote.whole_check(blob.id)
            return algorithm, [digest]
        known = self._blockmaps.get(blob.id)
        if known is not None:
            return known
        # Not the key of the sha256-only lists an older version kept (a bare JSON list)
        key = f"block-hashes:{blob.id}"
        found = _cached_block_list(self.cache.get_meta(key), block_count(blob.size))
        if found is None:
            block_size, algorithm, hashes = await self.remote.blob_blocks(
                blob.owner, blob.name, blob.id
            )
            if block_size != BLOCK_SIZE or len(hashes) != block_count(blob.size):
                raise RemoteError(
                    f"blob {blob.id[:12]}: the server's block list does not fit its size"
                )
            record = {"algorithm": algorithm, "hashes": hashes}
            self.cache.put_meta(key, json.dumps(record).encode())
            found = algorithm, hashes
        self._blockmaps[blob.id] = found
        return found


def _cached_block_list(raw: bytes | None, count: int) -> tuple[str, list[str]] | None:
    """A block list this cache kept (``{"algorithm": ..., "hashes": [...]}``), if it is one
    for ``count`` blocks; None to ask the server again."""
    if raw is None:
        return None
    try:
        record = load_json_object(raw, "cached block list")
    except InvalidInputError:
        return None
    algorithm, hashes = record.get("algorithm"), record.get("hashes")
    if algorithm not in BLOCK_HASHES or not isinstance(hashes, list) or len(hashes) != count:
        return None
    if not all(is_object_id(h) for h in hashes):
        return None
    return algorithm, hashes


def _bad_blocks(blocks: dict[int, Block], expected: dict[int, str], algorithm: str) -> list[int]:
    return [i for i, b in blocks.items() if block_digest(algorithm, b) != expected[i]]


def _verified_whole(
    pieces: dict[str, bytes], checks: dict[str, tuple[str, str]]
) -> dict[str, bytes]:
    """The pieces (whole one-block blobs) whose digest is what ``checks`` has for their id:
    (a hash of BLOCK_HASHES, the digest)."""
    verified = {}
    for oid, piece in pieces.items():
        algorithm, digest = checks[oid]
        if block_digest(algorithm, piece) == digest:
            verified[oid] = piece
    return verified
