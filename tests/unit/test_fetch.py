"""The block fetcher's hand-over: a block a reader waits for reaches it before its cache write,
within a bound. The cache is real; the remote serves a blob from memory (the network is the
integration tests' business), and the cache's writes wait at a gate the test opens."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from streamfs import _fetch
from streamfs._cache import BlockCache, MiB
from streamfs._errors import IntegrityError
from streamfs._fetch import BlobRef, BlockFetcher
from streamfs._model import BLOCK_HASHES, BLOCK_SIZE, block_digest

DATA = random.Random(3).randbytes(3 * BLOCK_SIZE)
OID = hashlib.sha256(DATA).hexdigest()
BLOB = BlobRef("alice", "data", OID, len(DATA))


class BlocksOfReadBlob:
    """Remote.read_blocks over a fake's read_blob: the range cut into blocks."""

    async def read_blob(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> bytes:
        raise NotImplementedError

    async def read_blocks(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> list[bytes]:
        data = await self.read_blob(owner, name, oid, start, end, front=front)
        return [data[at : at + BLOCK_SIZE] for at in range(0, len(data), BLOCK_SIZE)]

    def whole_check(self, oid: str) -> tuple[str, str]:
        return "sha256", oid  # no BLAKE3 came with a URL


class MemoryRemote(BlocksOfReadBlob):
    """The two calls a range fetch makes, answered from DATA; its block list by
    ``algorithm`` (BLAKE3 as the server lists it, sha256 as an older server did)."""

    def __init__(self, algorithm: str = "blake3") -> None:
        self.ranges: list[tuple[int, int]] = []
        self.algorithm = algorithm
        self.block_lists = 0  # how often the fetcher asked for the block list

    async def read_blob(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> bytes:
        self.ranges.append((start, end))
        return DATA[start:end]

    async def blob_blocks(self, owner: str, name: str, oid: str) -> tuple[int, str, list[str]]:
        self.block_lists += 1
        blocks = [DATA[i : i + BLOCK_SIZE] for i in range(0, len(DATA), BLOCK_SIZE)]
        return BLOCK_SIZE, self.algorithm, [block_digest(self.algorithm, b) for b in blocks]


class CorruptRemote(MemoryRemote):
    """Serves block 1 with one byte changed, from its front and its API alike."""

    async def read_blob(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> bytes:
        data = bytearray(await super().read_blob(owner, name, oid, start, end))
        at = BLOCK_SIZE + 100 - start
        if 0 <= at < len(data):
            data[at] ^= 1
        return bytes(data)


class BadFrontRemote(MemoryRemote):
    """A server whose front serves other bytes than its API (a stale copy of the store)."""

    def __init__(self) -> None:
        super().__init__()
        self.fronts: list[bool] = []

    async def read_blob(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> bytes:
        self.fronts.append(front)
        data = await super().read_blob(owner, name, oid, start, end)
        return bytes(len(data)) if front else data


class GatedWrites:
    """Holds the cache's writes until ``gate`` is set and logs each as it ends."""

    def __init__(self, cache: BlockCache, log: list[str]) -> None:
        self.gate = threading.Event()
        self._put_many = cache.put_many
        self._log = log
        cache.put_many = self  # type: ignore[method-assign]

    def __call__(self, blocks: dict[tuple[str, int], bytes], record_reads: bool = False) -> None:
        assert self.gate.wait(10)
        self._put_many(blocks, record_reads)
        self._log.append("written " + ",".join(str(i) for _, i in sorted(blocks)))


@pytest.fixture
def cache(tmp_path: Path) -> BlockCache:
    return BlockCache(tmp_path / "cache", 256 * MiB)


@pytest.fixture(autouse=True)
def hash_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fetch then runs on the loop up to its cache write: wait_all_tasks_blocked finds it there
    monkeypatch.setattr(_fetch, "HASH_IN_THREAD", 1 << 40)


@pytest.mark.trio
async def test_a_waited_for_block_is_served_before_its_write(cache: BlockCache) -> None:
    log: list[str] = []
    writes = GatedWrites(cache, log)
    remote = MemoryRemote()
    fetcher = BlockFetcher(remote, cache)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        got = await fetcher.blocks(BLOB, [1])
        log.append("read 1")
        assert got == {1: DATA[BLOCK_SIZE : 2 * BLOCK_SIZE]}
        assert not cache.contains(OID, 1)  # served, not written yet
        again = await fetcher.blocks(BLOB, [1])  # a second reader: from the in-flight table
        assert again == got and remote.ranges == [(BLOCK_SIZE, 2 * BLOCK_SIZE)]
        settled = trio.Event()

        async def settle() -> None:
            await fetcher.settled()
            settled.set()

        nursery.start_soon(settle)
        await trio.testing.wait_all_tasks_blocked()
        assert not settled.is_set()  # its write is still held
        writes.gate.set()
        await settled.wait()
        assert cache.contains(OID, 1)
        assert log == ["read 1", "written 1"]


@pytest.mark.trio
async def test_past_the_bound_a_block_waits_for_its_write(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fetch, "EARLY_BYTES", BLOCK_SIZE)
    log: list[str] = []
    writes = GatedWrites(cache, log)
    fetcher = BlockFetcher(MemoryRemote(), cache)  # type: ignore[arg-type]

    async def read(index: int) -> None:
        assert await fetcher.blocks(BLOB, [index]) == {
            index: DATA[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
        }
        log.append(f"read {index}")

    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await read(0)  # early: the bound holds one block
        nursery.start_soon(read, 2)
        await trio.testing.wait_all_tasks_blocked()  # block 2 is fetched and waits for the writer
        assert log == ["read 0"]
        writes.gate.set()
    assert log == ["read 0", "written 0", "written 2", "read 2"]
    assert cache.contains(OID, 0) and cache.contains(OID, 2)


@pytest.mark.trio
async def test_a_prefetched_block_a_reader_waits_for_is_served_before_its_write(
    cache: BlockCache,
) -> None:
    log: list[str] = []
    writes = GatedWrites(cache, log)
    fetcher = BlockFetcher(MemoryRemote(), cache)  # type: ignore[arg-type]

    async def read(index: int) -> None:
        await fetcher.blocks(BLOB, [index])
        log.append(f"read {index}")

    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await fetcher.prefetch(BLOB, [2])  # readahead the reader then catches up with
        nursery.start_soon(read, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["read 2"]  # its write waits at the gate; the reader did not
        assert not cache.contains(OID, 2)
        writes.gate.set()
        await fetcher.settled()
        assert cache.contains(OID, 2)
    assert log == ["read 2", "written 2"]
    assert len(fetcher.fresh) == 0  # served to its reader: not kept for another


@pytest.mark.trio
async def test_a_prefetched_block_nobody_waits_for_is_written_before_it_is_kept(
    cache: BlockCache,
) -> None:
    log: list[str] = []
    writes = GatedWrites(cache, log)
    fetcher = BlockFetcher(MemoryRemote(), cache)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await fetcher.prefetch(BLOB, [2])
        await trio.testing.wait_all_tasks_blocked()
        assert len(fetcher.fresh) == 0  # not held before it is in the cache
        writes.gate.set()
        await fetcher.quiet()
    assert log == ["written 2"]
    assert cache.contains(OID, 2) and fetcher.fresh.take((OID, 2)) is not None


class SmallBlobsRemote:
    """POST blobs/batch from memory, recording the ids each batch asked for."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.batches: list[list[str]] = []
        self.blake3: dict[str, str] = {}  # what the API sent with a blob's URL

    def whole_check(self, oid: str) -> tuple[str, str]:
        digest = self.blake3.get(oid)
        return ("sha256", oid) if digest is None else ("blake3", digest)

    async def read_blobs(
        self, owner: str, name: str, ids: list[str], sizes: list[int]
    ) -> list[bytes]:
        self.batches.append(list(ids))
        return [self.blobs[i] for i in ids]


@pytest.mark.parametrize("claims", [True, False])
@pytest.mark.trio
async def test_a_prefetch_leaves_out_what_is_cached_or_claimed_by_another_process(
    cache: BlockCache, claims: bool
) -> None:
    data = [random.Random(i).randbytes(1000 + i) for i in range(4)]
    ids = [hashlib.sha256(d).hexdigest() for d in data]
    remote = SmallBlobsRemote(dict(zip(ids, data, strict=True)))
    cache.put(ids[0], 0, data[0])
    with BlockCache(cache.directory, cache.size_limit) as other:  # another worker's view
        assert other.claim([ids[1]]) == [ids[1]]
    fetcher = BlockFetcher(remote, cache, claims=claims)  # type: ignore[arg-type]
    left_out: list[str] = []
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await fetcher.prefetch_whole(
            [BlobRef("alice", "data", oid, len(d)) for oid, d in zip(ids, data, strict=True)],
            left_out.extend,
        )
        await fetcher.settled()
    # without claims (the only prefetcher of its cache) the claimed blob is fetched anyway
    expected = [ids[0], ids[1]] if claims else [ids[0]]
    assert sorted(left_out) == sorted(expected)
    assert remote.batches == [[i for i in ids if i not in expected]]
    assert all(cache.get(oid, 0) == d for oid, d in zip(ids[2:], data[2:], strict=True))


def test_a_batch_takes_only_what_neither_the_loop_nor_a_reader_is_fetching(
    cache: BlockCache,
) -> None:
    # a reader's thread marks its blob and then looks at the in-flight table
    # (Engine.get_direct); a batch marks each blob in flight first and then looks at the
    # readers' marks, so one of the two always sees the other
    blobs = [BlobRef("alice", "data", f"{i:064x}", 100) for i in range(5)]
    fetcher = BlockFetcher(MemoryRemote(), cache)  # type: ignore[arg-type]
    fetcher.reader_fetches.add(blobs[0].id)  # a reader's thread is fetching it
    in_flight = fetcher._inflight[(blobs[1].id, 0)] = _fetch._Pending()  # the loop is
    cache.put_many({(blobs[2].id, 0): b"x" * 100})  # a reader's, written since the claim
    assert fetcher._take_in_flight(blobs) == (blobs[3:], [blobs[2].id])
    assert not fetcher.in_flight(blobs[0].id, 0)  # left to the reader
    assert fetcher._inflight[(blobs[1].id, 0)] is in_flight
    assert not fetcher.in_flight(blobs[2].id, 0)
    assert all(fetcher.in_flight(b.id, 0) for b in blobs[3:])


@pytest.mark.trio
async def test_a_block_that_does_not_match_is_fetched_again_from_the_api(
    cache: BlockCache, caplog: pytest.LogCaptureFixture
) -> None:
    remote = BadFrontRemote()
    fetcher = BlockFetcher(remote, cache)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        with caplog.at_level("WARNING", logger="streamfs.fetch"):
            got = await fetcher.blocks(BLOB, [2])
        await fetcher.settled()
    assert got == {2: DATA[2 * BLOCK_SIZE :]}
    assert remote.fronts == [True, False]
    assert cache.get(OID, 2) == DATA[2 * BLOCK_SIZE :]
    assert "does not match its hash: fetching it again from the API" in caplog.text


@pytest.mark.trio
async def test_a_prefetch_batch_waits_while_the_cache_writer_is_behind(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fetch, "BATCH_FILES", 2)
    monkeypatch.setattr(_fetch, "UNWRITTEN_BYTES", 1000)  # less than one batch
    data = [random.Random(i).randbytes(2000) for i in range(6)]
    ids = [hashlib.sha256(d).hexdigest() for d in data]
    remote = SmallBlobsRemote(dict(zip(ids, data, strict=True)))
    writes = GatedWrites(cache, [])
    fetcher = BlockFetcher(remote, cache, parallel_batches=1)  # type: ignore[arg-type]
    asked, second_asks = 0, trio.Event()
    room = fetcher._writes.room

    async def counted_room(limit: int) -> None:
        nonlocal asked
        asked += 1
        if asked == 2:
            second_asks.set()
        await room(limit)

    fetcher._writes.room = counted_room  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await fetcher.prefetch_whole([BlobRef("alice", "data", oid, 2000) for oid in ids])
        with trio.fail_after(10):
            await second_asks.wait()  # the first batch is fetched; the second asks for room
        await trio.testing.wait_all_tasks_blocked()
        assert len(remote.batches) == 1  # its 4,000 bytes wait for the writer: no more fetched
        assert fetcher.writer_behind()
        writes.gate.set()
        await fetcher.quiet()
    assert len(remote.batches) == 3
    assert sorted(oid for batch in remote.batches for oid in batch) == sorted(ids)
    assert all(cache.contains(oid, 0) for oid in ids) and not fetcher.writer_behind()


@pytest.mark.trio
async def test_a_block_written_since_the_reader_looked_is_read_from_the_cache(
    cache: BlockCache,
) -> None:
    remote = MemoryRemote()
    fetcher = BlockFetcher(remote, cache)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await fetcher.prefetch(BLOB, [2])  # a reader looks in the cache meanwhile: not there
        await fetcher.quiet()  # ... then the readahead is written and leaves the in-flight table
        assert await fetcher.blocks(BLOB, [1, 2]) == {
            1: DATA[BLOCK_SIZE : 2 * BLOCK_SIZE],
            2: DATA[2 * BLOCK_SIZE : 3 * BLOCK_SIZE],
        }
    assert remote.ranges == [(2 * BLOCK_SIZE, 3 * BLOCK_SIZE), (BLOCK_SIZE, 2 * BLOCK_SIZE)]


class CorruptBatchRemote(SmallBlobsRemote, BlocksOfReadBlob):
    """Batches serve other bytes for one blob; a fetch of it alone serves the right ones."""

    def __init__(self, blobs: dict[str, bytes], bad: str) -> None:
        super().__init__(blobs)
        self.bad = bad
        self.alone: list[str] = []

    async def read_blobs(
        self, owner: str, name: str, ids: list[str], sizes: list[int]
    ) -> list[bytes]:
        data = await super().read_blobs(owner, name, ids, sizes)
        return [bytes(len(d)) if i == self.bad else d for i, d in zip(ids, data, strict=True)]

    async def read_blob(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> bytes:
        self.alone.append(oid)
        return self.blobs[oid][start:end]


@pytest.mark.parametrize("checked_by", ["sha256", "blake3"])  # the id; what came with the URLs
@pytest.mark.parametrize("hash_in_thread", [1 << 40, 1000])  # on the loop; in a worker thread
@pytest.mark.trio
async def test_a_batch_caches_only_blobs_that_match_their_ids_and_fetches_the_rest_alone(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch, hash_in_thread: int, checked_by: str
) -> None:
    monkeypatch.setattr(_fetch, "HASH_IN_THREAD", hash_in_thread)
    hashed: list[str] = []
    digest = _fetch.block_digest
    monkeypatch.setattr(_fetch, "block_digest", lambda a, b: hashed.append(a) or digest(a, b))
    data = [random.Random(i).randbytes(2000) for i in range(4)]
    ids = [hashlib.sha256(d).hexdigest() for d in data]
    remote = CorruptBatchRemote(dict(zip(ids, data, strict=True)), bad=ids[2])
    if checked_by == "blake3":
        remote.blake3 = {oid: digest("blake3", d) for oid, d in zip(ids, data, strict=True)}
    fetcher = BlockFetcher(remote, cache)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = nursery
        await fetcher.prefetch_whole([BlobRef("alice", "data", oid, 2000) for oid in ids])
        await fetcher.quiet()
    assert remote.batches == [ids]
    assert remote.alone == [ids[2]]
    assert all(cache.get(oid, 0) == d for oid, d in zip(ids, data, strict=True))
    assert set(hashed) == {checked_by} and len(hashed) == 5  # the batch's 4, then the bad one


@pytest.mark.trio
@pytest.mark.parametrize("algorithm", BLOCK_HASHES)
async def test_blocks_are_checked_by_the_hash_their_list_names(
    cache: BlockCache, algorithm: str
) -> None:
    fetcher = BlockFetcher(MemoryRemote(algorithm), cache)  # type: ignore[arg-type]
    corrupt = BlockFetcher(CorruptRemote(algorithm), cache)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        fetcher.nursery = corrupt.nursery = nursery
        assert await fetcher.blocks(BLOB, [0]) == {0: DATA[:BLOCK_SIZE]}
        with pytest.raises(IntegrityError, match=r"block 1 .* does not match its hash, twice"):
            await corrupt.blocks(BLOB, [1])
        await fetcher.settled()
    assert cache.get(OID, 0) == DATA[:BLOCK_SIZE]
    assert cache.get(OID, 1) is None  # never served, never cached


@pytest.mark.trio
async def test_a_blobs_block_list_is_asked_once_for_every_process_on_the_cache(
    tmp_path: Path,
) -> None:
    # a list an older version kept under the old key: a bare list of sha256 digests
    BlockCache(tmp_path / "cache", 256 * MiB).put_meta("blockmap:" + OID, b'["00"]')
    remotes = [MemoryRemote(), MemoryRemote()]
    for remote, index in zip(remotes, (0, 2), strict=True):
        cache = BlockCache(tmp_path / "cache", 256 * MiB)  # another process's
        fetcher = BlockFetcher(remote, cache)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            fetcher.nursery = nursery
            got = await fetcher.blocks(BLOB, [index])
            await fetcher.settled()
        assert got == {index: DATA[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]}
    assert [r.block_lists for r in remotes] == [1, 0]
