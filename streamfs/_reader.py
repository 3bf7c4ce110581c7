"""Reading a file of a pinned commit: any byte range, from the cache or the network.

``BlobReader.read`` runs in the caller's thread. Blocks already in the cache
are served right there (a seek and a read of just the bytes asked for); only
missing blocks hop to the engine, which fetches, verifies and caches them.
The readahead planner (one per reader) decides what to fetch ahead of a
sequential reader; readahead runs in the background and never delays the
read that triggered it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

from ._blocks import Block, block_span, blocks_for_range
from ._client import Client
from ._engine import Engine
from ._errors import IntegrityError, StreamfsError
from ._fetch import BlobRef
from ._model import BLOCK_SIZE
from ._readahead import ReadaheadPlanner

MIN_STREAM = 2 * 1024 * 1024  # a 1 MiB random read (four to eight FUSE reads) is no stream


class BlobReader:
    """Reads of one file through one handle, or one stream of a pinned mount's reads of
    a path (see _pathreaders.py): the readahead state is per reader."""

    def __init__(
        self,
        client: Client,
        blob: BlobRef,
        path: str,
        on_first_read: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.blob = blob
        self.path = path
        # told once, at the first read, whether the cache lacked any of it: the file was
        # opened (the sibling prefetcher's evidence; a warm read plans nothing)
        self._on_first_read = on_first_read
        # made at the first read that needs it: a small file read whole never does
        self._planner: ReadaheadPlanner | None = None
        self._lock = threading.Lock()  # guards the planner and _on_first_read
        # The last block this handle fetched, whole: the kernel reads a file in pieces of 128-256 KiB,
        # and the rest of a block just fetched should not cost a cache lookup each.
        self._memo: tuple[int, Block] | None = None

    def continues(self, offset: int) -> bool:
        """Whether a read at ``offset`` continues this reader's stream (see ReadaheadPlanner)."""
        with self._lock:
            return self._readahead().continues(offset)

    def _readahead(self) -> ReadaheadPlanner:
        """This reader's readahead state (the caller holds ``_lock``)."""
        if self._planner is None:
            self._planner = ReadaheadPlanner(self.blob.size, BLOCK_SIZE, min_stream=MIN_STREAM)
        return self._planner

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.blob.size - offset))
        if size == 0:
            return b""
        if size == self.blob.size <= BLOCK_SIZE and self._memo is None:
            return self._read_whole_block()
        pieces = self._gather(offset, size, None)
        return b"".join(piece for piece in pieces if not isinstance(piece, int))

    def readinto(self, offset: int, out: memoryview) -> int:
        """Like read, into ``out`` (a byte view): cached bytes are read straight into it."""
        size = max(0, min(len(out), self.blob.size - offset))
        if size == 0:
            return 0
        at = 0
        for piece in self._gather(offset, size, out[:size]):
            if isinstance(piece, int):  # already in place
                at += piece
            else:
                out[at : at + len(piece)] = piece
                at += len(piece)
        return size

    def _gather(
        self, offset: int, size: int, out: memoryview | None
    ) -> list[bytes | memoryview | int]:
        """The bytes of ``[offset, offset + size)``, a piece a block, in order; with ``out``,
        a block the cache has is read into its place there, and its piece is its length."""
        with self._lock:
            plan = self._readahead().on_read(offset, size)
        cache = self.client.cache
        ranges = blocks_for_range(offset, size, self.blob.size, BLOCK_SIZE)
        pieces: dict[int, bytes | memoryview | int] = {}
        missing: list[int] = []
        memo = self._memo
        if memo is None and plan.whole and self.blob.size <= BLOCK_SIZE:
            whole = self._take_fresh(0)
            memo = self._memo = None if whole is None else (0, whole)
        at = 0
        for index, start, length in ranges:
            place, at = (None if out is None else out[at : at + length]), at + length
            if memo is not None and memo[0] == index:
                pieces[index] = memoryview(memo[1])[start : start + length]
                continue
            whole = self._take_fresh(index) if plan.window else None
            if whole is None and plan.window and place is None:
                # streaming in small reads (the kernel's 128-256 KiB): the rest of this block is
                # read next, take it whole
                first, end = block_span(index, self.blob.size, BLOCK_SIZE)
                whole = cache.get_block(self.blob.id, index, 0, end - first)
                if whole is None:
                    missing.append(index)
                    continue
            if whole is not None:
                memo = self._memo = (index, whole)
                pieces[index] = memoryview(whole)[start : start + length]
            elif place is not None:  # straight into the caller's buffer
                if cache.get_into(self.blob.id, index, start, place):
                    pieces[index] = length
                else:
                    missing.append(index)
            elif (data := cache.get_block(self.blob.id, index, start, length)) is not None:
                pieces[index] = data
            else:
                missing.append(index)
        if self._on_first_read is not None:
            self._tell_first_read(bool(missing))
        # Readahead of blocks this process knows are cached would only wake the engine to
        # find them there: in a warm sequential read that cost each 1 MiB read ~40 µs, its
        # system calls waiting for the interpreter lock the engine held meanwhile.
        known = cache.known
        ahead = [
            i
            for i in plan.fetch
            if i not in pieces and i not in missing and not known(self.blob.id, i)
        ]
        if plan.whole and missing:
            # a small file: everything it lacks in one request, no separate readahead
            missing = sorted(
                {*missing, *(i for i in ahead if not cache.has_block(self.blob.id, i))}
            )
            ahead = []
        if ahead:
            self.client.engine.spawn(self._prefetch, ahead)
        if missing:
            fetched = self._fetch(missing)
            last = max(fetched)
            self._memo = (last, fetched[last])
            for index, start, length in ranges:
                if index in fetched:
                    pieces[index] = memoryview(fetched[index])[start : start + length]
        return [pieces[index] for index, _, _ in ranges]

    def _read_whole_block(self) -> bytes:
        """A one-block file read whole, the usual read of a small file: what _gather does
        for it, without its general bookkeeping."""
        whole = cached_small(self.client, self.blob.id, self.blob.size)
        if whole is None:
            return self.fetch_whole()
        self._tell_first_read(False)  # one block: no readahead to plan
        return self._keep_whole(whole)

    def fetch_whole(self) -> bytes:
        """A one-block file that neither the prefetcher's memory nor the cache has (see
        ``cached_small``), fetched whole; the prefetcher hears of the miss first."""
        self._tell_first_read(True)
        return self._keep_whole(self._fetch([0])[0])

    def _keep_whole(self, whole: Block) -> bytes:
        """The one block of a small file, kept for this reader's next reads; as bytes, the
        caller's to keep."""
        self._memo = (0, whole)
        return whole if type(whole) is bytes else bytes(whole)

    def _tell_first_read(self, missed: bool) -> None:
        """Tell ``on_first_read`` once, whichever of two racing first reads comes first."""
        with self._lock:
            tell, self._on_first_read = self._on_first_read, None
        if tell is not None:
            tell(missed)

    def _take_fresh(self, index: int) -> Block | None:
        """Block ``index`` if the prefetcher just fetched it, from memory (first reader only)."""
        data = self.client.take_fresh(self.blob.id, index)
        start, end = block_span(index, self.blob.size, BLOCK_SIZE)
        return data if data is not None and len(data) == end - start else None

    def _fetch(self, indices: list[int]) -> dict[int, Block]:
        if indices == [0] and 0 < self.blob.size <= BLOCK_SIZE:  # a small file: see _directget
            data = self.client.get_direct(self.blob.id, self.blob.size)
            if data is not None:
                return {0: data}
        engine = self.client.engine
        try:
            return engine.call(_fetch_blocks, engine, self.blob, indices)
        except IntegrityError as exc:
            raise IntegrityError(f"{exc.message} (never served)", filename=self.path) from None
        except StreamfsError as exc:
            raise type(exc)(exc.message, filename=self.path) from None

    async def _prefetch(self, indices: list[int]) -> None:
        engine = self.client.engine
        assert engine.fetcher is not None
        await engine.fetcher.prefetch(self.blob, indices)


def cached_small(client: Client, blob: str, size: int) -> Block | None:
    """The bytes of a one-block file (``0 < size <= BLOCK_SIZE``) that the prefetcher holds
    in memory for its first reader, or the cache has; None if neither (nothing is fetched)."""
    fresh = client.take_fresh(blob, 0)
    if fresh is not None and len(fresh) == size:
        return fresh
    return client.cache.get_block(blob, 0, 0, size)


async def _fetch_blocks(engine: Engine, blob: BlobRef, indices: list[int]) -> dict[int, Block]:
    assert engine.fetcher is not None
    return await engine.fetcher.blocks(blob, indices)


class RepoFile(io.RawIOBase):
    """A read-only, seekable binary file over a BlobReader (wrap in io.BufferedReader)."""

    def __init__(self, reader: BlobReader, name: str) -> None:
        super().__init__()
        self._reader = reader
        self._pos = 0
        self.name = name
        self.mode = "rb"

    @property
    def size(self) -> int:
        return self._reader.blob.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._reader.readinto(self._pos, memoryview(buffer).cast("B"))
        self._pos += n
        return n

    def readall(self) -> bytes:
        data = self._reader.read(self._pos, max(0, self.size - self._pos))
        self._pos += len(data)
        return data
