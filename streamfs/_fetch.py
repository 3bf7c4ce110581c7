"""Fetching verified blocks into the cache. Runs on the engine's trio loop.

Invariants (all state here is touched only by the loop thread, so no locks):

- A block is stored in the cache and handed to a reader only after its
  sha256 matched: the blob id for a one-block blob, else the per-block hash
  the server published (``/blobs/ID/blocks``). A bad block is fetched once
  more; if it is bad again the read fails with IntegrityError (EIO).
- Two readers of one block cause one request: the in-flight table maps
  (blob, index) to a pending fetch that later readers wait on.
- Contiguous missing blocks are fetched in range requests of at most
  ``max_request`` bytes, at most ``parallel`` requests at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from ._blocks import block_span, coalesce
from ._cache import BlockCache
from ._errors import IntegrityError, RemoteError, RemoteUnavailableError
from ._model import BLOCK_SIZE, block_count
from ._remote import Remote


@dataclass(frozen=True, slots=True)
class BlobRef:
    owner: str
    name: str
    id: str
    size: int


@dataclass(eq=False)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


class BlockFetcher:
    def __init__(
        self,
        remote: Remote,
        cache: BlockCache,
        *,
        max_request: int = 4 * BLOCK_SIZE,
        parallel: int = 16,
    ) -> None:
        self.remote = remote
        self.cache = cache
        self.max_request = max_request
        self._limiter = trio.CapacityLimiter(parallel)
        self._inflight: dict[tuple[str, int], _Pending] = {}
        self._blockmaps: dict[str, list[str]] = {}

    async def blocks(self, blob: BlobRef, indices: Sequence[int]) -> dict[int, bytes]:
        """The verified bytes of the given blocks (fetching what is not in flight)."""
        pending = self._start(blob, indices)
        result: dict[int, bytes] = {}
        for index in indices:
            p = pending[index]
            await p.done.wait()
            if p.error is not None:
                raise p.error
            assert p.data is not None
            result[index] = p.data
        return result

    async def prefetch(self, blob: BlobRef, indices: Sequence[int]) -> None:
        """Fetch blocks into the cache in the background (readahead)."""
        wanted = [
            i
            for i in indices
            if (blob.id, i) not in self._inflight and not self.cache.has_block(blob.id, i)
        ]
        if wanted:
            self._start(blob, wanted)

    def _start(self, blob: BlobRef, indices: Sequence[int]) -> dict[int, _Pending]:
        pending: dict[int, _Pending] = {}
        new: list[int] = []
        for index in sorted(set(indices)):
            p = self._inflight.get((blob.id, index))
            if p is None:
                p = self._inflight[(blob.id, index)] = _Pending()
                new.append(index)
            pending[index] = p
        for first, last in coalesce(new, BLOCK_SIZE, self.max_request):
            self._nursery.start_soon(self._fetch_run, blob, first, last)
        return pending

    @property
    def _nursery(self) -> trio.Nursery:
        assert self.nursery is not None
        return self.nursery

    nursery: trio.Nursery | None = None  # set by the owner before use

    async def _fetch_run(self, blob: BlobRef, first: int, last: int) -> None:
        """Fetch blocks first..last (inclusive) in one range request and resolve them."""
        keys = [(blob.id, i) for i in range(first, last + 1)]
        try:
            blocks = await self._fetch_verified(blob, first, last)
            for i, data in blocks.items():
                self.cache.put_block(blob.id, i, data)
                p = self._inflight[(blob.id, i)]
                p.data = data
        except BaseException as exc:
            # Waiters are other tasks: hand them an ordinary error, never our Cancelled.
            shown = (
                exc
                if isinstance(exc, Exception)
                else RemoteUnavailableError("the engine is shutting down")
            )
            for key in keys:
                self._inflight[key].error = shown
            if not isinstance(exc, Exception):
                raise
        finally:
            for key in keys:
                self._inflight.pop(key).done.set()

    async def _fetch_verified(self, blob: BlobRef, first: int, last: int) -> dict[int, bytes]:
        hashes = await self._block_hashes(blob)
        for attempt in range(2):
            start, _ = block_span(first, blob.size, BLOCK_SIZE)
            _, end = block_span(last, blob.size, BLOCK_SIZE)
            async with self._limiter:
                data = await self.remote.read_blob(blob.owner, blob.name, blob.id, start, end)
            if len(data) != end - start:
                raise RemoteError(
                    f"blob {blob.id[:12]}: asked for {end - start} bytes, got {len(data)}"
                )
            blocks = {
                i: data[(i - first) * BLOCK_SIZE : (i - first + 1) * BLOCK_SIZE]
                for i in range(first, last + 1)
            }
            bad = [i for i, b in blocks.items() if hashlib.sha256(b).hexdigest() != hashes[i]]
            if not bad:
                return blocks
            if attempt == 1:
                raise IntegrityError(
                    f"block {bad[0]} of blob {blob.id[:12]} does not match its hash, twice"
                )
        raise AssertionError("unreachable")

    async def _block_hashes(self, blob: BlobRef) -> list[str]:
        if blob.size <= BLOCK_SIZE:
            return [blob.id]
        hashes = self._blockmaps.get(blob.id)
        if hashes is not None:
            return hashes
        key = f"blockmap:{blob.id}"
        raw = self.cache.get_meta(key)
        if raw is not None:
            hashes = json.loads(raw)
        else:
            block_size, hashes = await self.remote.blob_blocks(blob.owner, blob.name, blob.id)
            if block_size != BLOCK_SIZE or len(hashes) != block_count(blob.size):
                raise RemoteError(
                    f"blob {blob.id[:12]}: the server's block list does not fit its size"
                )
            self.cache.put_meta(key, json.dumps(hashes).encode())
        assert hashes is not None
        self._blockmaps[blob.id] = hashes
        return hashes
