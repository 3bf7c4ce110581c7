"""BlockCache on a real directory: exact slices, stats, eviction, several processes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import multiprocessing
import os
import pickle
import threading
import time
import warnings
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from diskcache.core import EmptyDirWarning

from streamfs import _cache
from streamfs._cache import (
    BlockCache,
    GiB,
    MiB,
    _PerOsThread,
    default_cache_dir,
    default_cache_size,
    parse_size,
    size_for_free_space,
)
from streamfs._client import Client
from streamfs._errors import InvalidInputError
from streamfs._model import BLOCK_SIZE
from streamfs._realos import WRITE_PIECE
from streamfs._realos import real as real_os

BLOB = "ab" * 32
KiB = 1024


def pattern(seed: int, size: int) -> bytes:
    """Distinct, checkable content: sha256 chain of the seed, cut to size."""
    out = bytearray()
    digest = seed.to_bytes(8, "big")
    while len(out) < size:
        digest = hashlib.sha256(digest).digest()
        out += digest * 64
    return bytes(out[:size])


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def sql_statements(cache: BlockCache) -> Iterator[list[str]]:
    """The SQL this thread sends to the blocks' database meanwhile."""
    statements: list[str] = []
    connection = cache._blocks._cache._con
    connection.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        connection.set_trace_callback(None)


def put_blocks(cache: BlockCache, blobs: list[str]) -> None:
    """Block 0 of each blob, 40 KiB (a file of its own), content ``pattern(i)``."""
    for i, blob in enumerate(blobs):
        cache.put(blob, 0, pattern(i, 40 * KiB))


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlockCache]:
    with BlockCache(tmp_path / "cache", 256 * MiB) as c:
        yield c


# ----------------------------------------------------------------- blocks


@pytest.mark.parametrize("size", [BLOCK_SIZE, 1000, 40 * KiB])  # file-backed and inline values
def test_get_returns_exactly_the_slice_asked_for(cache: BlockCache, size: int) -> None:
    data = pattern(1, size)
    cache.put(BLOB, 3, data)
    for offset, length in [(0, size), (0, 1), (size - 1, 1), (size // 3, size // 2), (size, 0)]:
        assert cache.get(BLOB, 3, offset, length) == data[offset : offset + length]
    assert cache.get(BLOB, 3) == data
    assert cache.get(BLOB, 3, size // 2) == data[size // 2 :]


@pytest.mark.parametrize("size", [BLOCK_SIZE, 1000, 40 * KiB])  # file-backed and inline values
def test_get_into_fills_the_buffer_with_the_slice_or_reports_a_miss(
    cache: BlockCache, size: int
) -> None:
    data = pattern(5, size)
    cache.put(BLOB, 2, data)
    for offset, length in [(0, size), (size - 1, 1), (size // 3, size // 2), (size, 0)]:
        out = bytearray(length)
        assert cache.get_into(BLOB, 2, offset, memoryview(out))
        assert out == data[offset : offset + length]
    assert not cache.get_into(BLOB, 2, size - 1, memoryview(bytearray(2)))  # past the end
    assert not cache.get_into(BLOB, 3, 0, memoryview(bytearray(1)))  # not cached
    with pytest.raises(ValueError):
        cache.get_into(BLOB, 2, -1, memoryview(bytearray(1)))


def test_a_slice_past_the_stored_bytes_is_a_miss_not_a_short_read(cache: BlockCache) -> None:
    cache.put(BLOB, 0, pattern(2, 64 * KiB))
    cache.put(BLOB, 1, b"tiny")
    assert cache.get(BLOB, 0, 64 * KiB - 10, 11) is None
    assert cache.get(BLOB, 0, 64 * KiB + 1) is None
    assert cache.get(BLOB, 1, 2, 3) is None
    with pytest.raises(ValueError):
        cache.get(BLOB, 0, -1, 5)
    with pytest.raises(ValueError):
        cache.get(BLOB, -1)


def test_contains_put_variants_and_first_put_wins(cache: BlockCache) -> None:
    assert not cache.contains(BLOB, 0) and not cache.has_block(BLOB, 0)
    cache.put(BLOB, 0, bytearray(b"x" * 50_000))
    cache.put_block(BLOB, 1, memoryview(b"y" * 10))
    cache.put(BLOB, 1, b"z" * 10)  # content addressed: same key, same bytes; kept as is
    assert cache.contains(BLOB, 0) and cache.get_block(BLOB, 1) == b"y" * 10
    assert cache.get(BLOB, 0, 49_999, 1) == b"x"


def io_counter(name: str) -> int:
    """This process's I/O counter ``name`` (``rchar``, ``syscw``, ...) from /proc/self/io."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields[name])


def test_a_hit_reads_only_what_it_serves(cache: BlockCache) -> None:
    cache.put(BLOB, 0, pattern(3, BLOCK_SIZE))
    cache.get(BLOB, 0, 0, 1)  # warm the SQLite connection and pages

    before = io_counter("rchar")
    for i in range(8):
        assert cache.get(BLOB, 0, 1 * MiB + i * 128 * KiB, 128 * KiB) is not None
    assert io_counter("rchar") - before < 8 * 128 * KiB + 64 * KiB  # not 8 x 4 MiB


def test_a_block_is_written_in_a_few_calls_not_line_by_line(cache: BlockCache) -> None:
    lines = b"\n".join(pattern(9, 200) for _ in range(BLOCK_SIZE // 201))  # 20,000 lines
    cache.put(BLOB, 8, b"warm")  # open the SQLite connection first
    before = io_counter("syscw")
    cache.put(BLOB, 0, lines)
    cache.put_many({(BLOB, 1): lines, (BLOB, 2): lines[: 100 * KiB]})
    # a write per WRITE_PIECE of a file plus SQLite's own (journal, pages); diskcache alone
    # would make ~2,400
    pieces = 2 * -(-len(lines) // WRITE_PIECE) + 1
    assert io_counter("syscw") - before < pieces + 40
    assert cache.get(BLOB, 0) == lines and cache.get(BLOB, 1) == lines
    assert cache.get(BLOB, 2) == lines[: 100 * KiB]


def consistency_problems(cache: BlockCache) -> list[str]:
    """diskcache's own check of the blocks: every row's file there at its size, no file
    without a row, its count and size as ``add`` keeps them. Folders kept empty are ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        found = cache._blocks._cache.check()
    return [str(w.message) for w in found if not issubclass(w.category, EmptyDirWarning)]


def test_put_many_adds_what_add_would_and_keeps_what_is_cached(tmp_path: Path) -> None:
    with BlockCache(tmp_path / "c", 256 * MiB) as cache:
        cache.put(BLOB, 0, pattern(1, 100 * KiB))
        cache.put_many(
            {(BLOB, 0): pattern(9, 100 * KiB), (BLOB, 1): pattern(2, 100 * KiB), (BLOB, 2): b"s"}
        )
        assert cache.get(BLOB, 0) == pattern(1, 100 * KiB)  # the first put wins
        assert cache.get(BLOB, 1) == pattern(2, 100 * KiB) and cache.get(BLOB, 2) == b"s"
        assert cache.stats()["blocks"] == 3
        assert consistency_problems(cache) == []  # no file left for the block refused


def test_blocks_received_as_bytearrays_are_stored_like_bytes(tmp_path: Path) -> None:
    with BlockCache(tmp_path / "c", 256 * MiB) as cache:
        big, small = bytearray(pattern(3, 100 * KiB)), bytearray(b"tiny")
        cache.put_many({(BLOB, 0): big, (BLOB, 1): small})
        assert cache.get(BLOB, 0) == big and cache.get(BLOB, 1) == small
        assert type(cache.get(BLOB, 1)) is bytes  # inline in SQLite, not pickled
        assert cache.stats()["blocks"] == 2
        assert consistency_problems(cache) == []


def test_a_put_many_that_fails_leaves_no_row_and_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BlockCache(tmp_path / "c", 256 * MiB) as cache:
        cache.put(BLOB, 0, pattern(1, 100 * KiB))
        write = _cache._write_new_file
        calls = 0

        def full_disk(path: str, data: bytes) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError(28, "No space left on device")
            write(path, data)

        monkeypatch.setattr(_cache, "_write_new_file", full_disk)
        cache.put_many({(BLOB, i): pattern(i, 100 * KiB) for i in range(1, 4)})  # logged
        assert calls == 2
        assert [cache.contains(BLOB, i) for i in range(4)] == [True, False, False, False]
        assert consistency_problems(cache) == []
        files = [p for p in (tmp_path / "c" / "blocks").rglob("*.val")]
        assert len(files) == 1


@contextlib.contextmanager
def write_lock_held(directory: Path) -> Iterator[None]:
    """SQLite's write lock on the blocks' database, held by another connection meanwhile
    (as another process's transaction holds it)."""
    import sqlite3

    other = sqlite3.connect(directory / "blocks" / "cache.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("COMMIT")
    finally:
        other.close()


def files_written(monkeypatch: pytest.MonkeyPatch, count: int) -> threading.Event:
    """Set once ``count`` block files have been written whole."""
    write, done, written = _cache._write_new_file, threading.Event(), itertools.count(1)

    def counted(path: str, data: bytes) -> None:
        write(path, data)
        if next(written) == count:
            done.set()

    monkeypatch.setattr(_cache, "_write_new_file", counted)
    return done


def test_a_batch_writes_its_files_before_it_waits_for_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DataLoader workers all write into one cache: a transaction that wrote its files while it
    # held the lock kept the others' blocks unseen by the rest for seconds
    blocks = {(BLOB, i): pattern(i, 100 * KiB) for i in range(3)}
    with BlockCache(tmp_path / "c", 256 * MiB) as cache:
        written = files_written(monkeypatch, len(blocks))
        with write_lock_held(tmp_path / "c"):
            writer = threading.Thread(target=cache.put_many, args=(blocks,))
            writer.start()
            assert written.wait(30), "the files waited for the lock"
            assert writer.is_alive()  # their rows wait for it
            assert not any(cache.contains(*key) for key in blocks)  # nobody sees them yet
        writer.join(60)
        assert not writer.is_alive()
        assert all(cache.get(*key) == data for key, data in blocks.items())
        assert consistency_problems(cache) == []


def test_two_writers_of_one_block_leave_one_file_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pattern(5, 100 * KiB)
    with BlockCache(tmp_path / "c", 256 * MiB) as one, BlockCache(tmp_path / "c", 256 * MiB) as two:
        written = files_written(monkeypatch, 2)
        with write_lock_held(tmp_path / "c"):
            writers = [
                threading.Thread(target=c.put_many, args=({(BLOB, 0): data},)) for c in (one, two)
            ]
            for writer in writers:
                writer.start()
            assert written.wait(30), "both files are written before either row"
        for writer in writers:
            writer.join(60)
        assert one.get(BLOB, 0) == data and two.get(BLOB, 0) == data
        assert len(list((tmp_path / "c" / "blocks").rglob("*.val"))) == 1  # the loser's is gone
        assert consistency_problems(one) == []


def test_block_files_go_into_256_folders_that_stay(tmp_path: Path) -> None:
    # one level of folders: a cold epoch must not make a folder (an inode) for nearly every file
    with BlockCache(tmp_path / "c", 256 * MiB) as cache:
        for i in range(600):
            cache.put(BLOB, i, pattern(i, 40 * KiB))
        blocks = tmp_path / "c" / "blocks"
        files = list(blocks.rglob("*.val"))
        assert len(files) == 600
        assert {f.parent.parent for f in files} == {blocks}
        folders = {f.parent.name for f in files}
        assert len(folders) <= 256 and all(len(name) == 2 for name in folders)
        assert cache.get(BLOB, 599) == pattern(599, 40 * KiB)
        cache.clear()
        assert not list(blocks.rglob("*.val"))
        assert {p.name for p in blocks.iterdir() if p.is_dir()} == folders  # kept for reuse


def test_removing_a_file_named_by_older_versions_removes_its_empty_folders(
    cache: BlockCache,
) -> None:
    disk = cache._blocks._cache._disk
    root = Path(disk._directory)
    (root / "ab" / "cd").mkdir(parents=True)
    (root / "ab" / "cd" / "old.val").write_bytes(b"x")
    (root / "ef").mkdir()
    (root / "ef" / "new.val").write_bytes(b"y")
    disk.remove("ab/cd/old.val")
    disk.remove("ef/new.val")
    disk.remove("ef/gone.val")  # removed by another process first: no error
    assert not (root / "ab").exists()
    assert (root / "ef").is_dir() and not (root / "ef" / "new.val").exists()


# ----------------------------------------------------------------- metadata, stats, clear


def test_a_block_this_process_wrote_or_read_is_found_without_sqlite(tmp_path: Path) -> None:
    with BlockCache(tmp_path / "c", 256 * MiB) as cache, BlockCache(tmp_path / "c") as other:
        cache.put(BLOB, 0, pattern(1, 100 * KiB))
        other.put(BLOB, 1, pattern(2, 100 * KiB))
        assert cache.get(BLOB, 1) == pattern(2, 100 * KiB)  # looked up once, then remembered
        with sql_statements(cache) as statements:
            assert cache.get(BLOB, 0, 5, 10) == pattern(1, 100 * KiB)[5:15]
            assert cache.get(BLOB, 1) == pattern(2, 100 * KiB)
        assert statements == []
        assert cache.stats()["hits"] == 3


def test_a_process_knows_the_blocks_it_wrote_or_read_whether_in_a_file_or_in_sqlite(
    tmp_path: Path,
) -> None:
    # what readahead skips: the blocks this process knows are cached, without asking SQLite
    small = pattern(3, 300)  # kept in SQLite itself, not in a file
    with BlockCache(tmp_path / "c", 256 * MiB) as cache, BlockCache(tmp_path / "c") as other:
        cache.put(BLOB, 0, pattern(1, 100 * KiB))
        cache.put(BLOB, 1, small)
        other.put(BLOB, 2, pattern(2, 100 * KiB))
        other.put(BLOB, 3, small)
        with sql_statements(cache) as statements:
            assert [cache.known(BLOB, i) for i in range(5)] == [True, True, False, False, False]
        assert statements == []
        assert cache.get(BLOB, 2) == pattern(2, 100 * KiB)
        assert cache.get(BLOB, 3) == small
        assert cache.known(BLOB, 2) and cache.known(BLOB, 3)
        assert cache.get(BLOB, 1, 10, 20) == small[10:30]  # known, still read from SQLite
        assert cache.open_block_file(BLOB, 1, len(small)) is None  # no file to hand out
        assert not cache.known(BLOB, 4) and cache.get(BLOB, 4) is None


def test_a_remembered_block_of_known_length_costs_an_open_a_pread_and_a_close(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with many reader threads every system call hands the interpreter lock over:
    # a buffered open().read() of a slice makes eight of them
    data = pattern(4, 100 * KiB)
    cache.put(BLOB, 0, data)
    calls: list[str] = []

    def counted(name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            calls.append(name)
            return fn(*args)

        return call

    class CountingOs:
        def __init__(self, module: Any) -> None:
            self.module = module

        def __getattr__(self, name: str) -> Any:
            value = getattr(self.module, name)
            return (
                counted(name, value)
                if name in {"open", "pread", "read", "fstat", "lseek", "close"}
                else value
            )

    monkeypatch.setattr("streamfs._cache.os", CountingOs(os))
    monkeypatch.setattr("streamfs._cache.real_os", CountingOs(real_os))
    monkeypatch.setattr("builtins.open", counted("buffered open", open))
    assert cache.get(BLOB, 0, 10, 1000) == data[10:1010]
    assert cache.get(BLOB, 0, 0, len(data)) == data
    assert calls == ["open", "pread", "close"] * 2
    calls.clear()
    assert cache.get(BLOB, 0, 5) == data[5:]  # to the end: the size is asked
    assert calls == ["open", "fstat", "pread", "close"]


def test_remembered_file_names_stay_under_their_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streamfs._cache.WHERE_LIMIT", 5)
    with BlockCache(tmp_path / "c", 256 * MiB) as cache:
        for i in range(12):
            cache.put(BLOB, i, pattern(i, 40 * KiB))
            assert len(cache._where) <= 5
        assert all(cache.get(BLOB, i) == pattern(i, 40 * KiB) for i in range(12))
        assert len(cache._where) <= 5


def test_a_remembered_block_file_that_another_process_evicted_is_looked_up_again(
    tmp_path: Path,
) -> None:
    with BlockCache(tmp_path / "c", 256 * MiB) as cache, BlockCache(tmp_path / "c") as other:
        cache.put(BLOB, 0, pattern(1, 100 * KiB))
        assert cache.get(BLOB, 0) == pattern(1, 100 * KiB)
        other.clear()  # the file is gone
        assert cache.get(BLOB, 0) is None and not cache.contains(BLOB, 0)
        other.put(BLOB, 0, pattern(3, 100 * KiB))  # a new file, found through SQLite
        assert cache.get(BLOB, 0) == pattern(3, 100 * KiB)


@pytest.fixture
def two_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BlockCache, BlockCache, list[str]]]:
    """A cache, another on its directory (a second process's), ten blob ids, and lookups of
    many keys made 4 keys a query."""
    monkeypatch.setattr("streamfs._cache.RECALL_CHUNK", 4)
    blobs = [f"{i:02x}" * 32 for i in range(10)]
    with BlockCache(tmp_path / "c", 256 * MiB) as cache, BlockCache(tmp_path / "c") as other:
        yield cache, other, blobs


def test_a_recall_finds_where_blocks_another_process_cached_are_in_few_queries(
    two_caches: tuple[BlockCache, BlockCache, list[str]],
) -> None:
    cache, other, blobs = two_caches
    put_blocks(other, blobs[:8])
    other.put(blobs[8], 0, b"small")  # kept inside SQLite: no file to remember
    cache.put(BLOB, 0, pattern(20, 40 * KiB))  # this one's own: known already
    with sql_statements(cache) as statements:
        wanted = [(b, 0) for b in blobs] + [(BLOB, 0)]  # blobs[9] was never cached
        # blobs[8] has no file, blobs[9] is not cached
        assert cache.recall(wanted) == (8, False)
        assert len(statements) == 3  # 10 keys not known yet, 4 a query
        statements.clear()
        for i, blob in enumerate(blobs[:8]):
            assert cache.get(blob, 0) == pattern(i, 40 * KiB)
        assert cache.get(BLOB, 0) == pattern(20, 40 * KiB)
        assert statements == []  # all read without SQLite
        assert cache.recall([(b, 0) for b in blobs[:8]]) == (0, True)  # nothing left to look up
        assert statements == []
        assert cache.get(blobs[8], 0) == b"small" and cache.get(blobs[9], 0) is None
    other.clear()  # recalled files that are gone since: looked up again, a miss
    assert cache.get(blobs[0], 0) is None


def test_which_blocks_are_cached_is_one_query_for_many(
    two_caches: tuple[BlockCache, BlockCache, list[str]],
) -> None:
    cache, other, blobs = two_caches
    put_blocks(other, blobs[:6])  # files of their own, cached by another process
    other.put(blobs[6], 0, b"small")  # kept inside SQLite
    other.put(blobs[7], 1, pattern(7, 40 * KiB))  # another block of the blob
    hits = cache.stats()["hits"]
    with sql_statements(cache) as statements:
        wanted = [(b, 0) for b in blobs] + [(blobs[0], 0)]  # a block asked twice
        assert cache.cached(wanted) == {(b, 0) for b in blobs[:7]}
        assert len(statements) == 3  # 10 blocks, 4 a query
    assert cache.cached([]) == set()
    assert cache.stats()["hits"] == hits  # a look, not a read
    other.clear()
    assert cache.cached([(b, 0) for b in blobs]) == set()


def test_a_recall_looks_up_at_most_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streamfs._cache.RECALL_LIMIT", 3)
    blobs = [f"{i:02x}" * 32 for i in range(6)]
    with BlockCache(tmp_path / "c", 256 * MiB) as cache, BlockCache(tmp_path / "c") as other:
        put_blocks(other, blobs)
        assert cache.recall([(b, 0) for b in blobs]) == (3, False)
        assert cache.recall([(b, 0) for b in blobs]) == (3, False)  # the next three: maybe more
        assert cache.recall([(b, 0) for b in blobs]) == (0, True)
        endless = ((f"ff{i:062x}", 0) for i in itertools.count())  # a huge folder: read lazily
        assert cache.recall(endless) == (0, False)
        assert next(endless) == (f"ff{3:062x}", 0)


def test_a_block_file_is_opened_only_where_this_process_knows_it(tmp_path: Path) -> None:
    blobs = [f"{i:02x}" * 32 for i in range(3)]
    with BlockCache(tmp_path / "c", 256 * MiB) as cache, BlockCache(tmp_path / "c") as other:
        put_blocks(other, blobs)
        size = 40 * KiB
        with sql_statements(cache) as statements:
            assert cache.open_block_file(blobs[0], 0, size) is None  # cached, not known here
            assert statements == []  # and not looked up
        assert cache.get(blobs[0], 0) == pattern(0, size)  # looked up: now known
        assert cache.recall([(blobs[1], 0), (blobs[2], 0)]) == (2, True)
        hits = cache.stats()["hits"]
        fd = cache.open_block_file(blobs[0], 0, size)
        assert fd is not None
        assert cache.stats()["hits"] == hits + 1
        with os.fdopen(fd, "rb") as f:
            other.clear()  # evicted while open: the open file keeps its bytes
            assert f.read() == pattern(0, size)
        assert cache.open_block_file(blobs[1], 0, size) is None  # gone since: forgotten
        assert f"{blobs[1]}:0" not in cache._where
        cache.put(blobs[2], 0, pattern(2, size))  # cached again, known here again
        assert cache.open_block_file(blobs[2], 0, size + 1) is None  # not the size asked
        assert cache.open_block_file(blobs[2], 0, size) is None  # forgotten: looked up next
        assert cache.get(blobs[2], 0) == pattern(2, size)
        fd = cache.open_block_file(blobs[2], 0, size)
        assert fd is not None
        with os.fdopen(fd, "rb") as f:
            assert f.read() == pattern(2, size)
        cache.put(BLOB, 0, b"small")  # kept inside SQLite: no file
        assert cache.open_block_file(BLOB, 0, 5) is None


def test_metadata_store(cache: BlockCache) -> None:
    assert cache.get_meta("tree:" + BLOB) is None
    big = pattern(4, 100 * KiB)
    cache.put_meta("tree:" + BLOB, b"{}")
    cache.put_meta("blockmap:" + BLOB, big)
    assert cache.get_meta("tree:" + BLOB) == b"{}"
    assert cache.get_meta("blockmap:" + BLOB) == big


def test_stats_count_hits_and_misses(cache: BlockCache) -> None:
    assert cache.get(BLOB, 0) is None
    cache.put(BLOB, 0, pattern(5, 100 * KiB))
    cache.put_meta("commit:x", b"{}")
    cache.contains(BLOB, 0)  # not a lookup that counts
    assert cache.get(BLOB, 0, 0, 10) is not None
    assert cache.get(BLOB, 0, 5, 10) is not None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)
    assert (stats["blocks"], stats["meta_objects"], stats["limit"]) == (1, 1, 256 * MiB)
    assert 100 * KiB < stats["size"] < 1 * MiB


def test_clear_removes_everything(cache: BlockCache) -> None:
    cache.put(BLOB, 0, b"a" * 40_000)
    cache.put_meta("tree:t", b"{}")
    cache.get(BLOB, 0)
    cache.clear()
    assert not cache.contains(BLOB, 0) and cache.get_meta("tree:t") is None
    stats = cache.stats()
    assert (stats["blocks"], stats["meta_objects"], stats["hits"], stats["misses"]) == (0, 0, 0, 0)


def test_eviction_keeps_the_directory_under_its_limit(tmp_path: Path) -> None:
    limit = 32 * MiB
    with BlockCache(tmp_path / "c", limit) as cache:
        cache.put_meta("tree:root", b"{}")  # trees have their own budget
        for i in range(2 * limit // MiB):  # write twice the limit
            cache.put(BLOB, i, pattern(i, MiB))
            assert directory_bytes(tmp_path / "c") <= limit
        last = 2 * limit // MiB - 1
        assert cache.get(BLOB, last) == pattern(last, MiB)
        assert not cache.contains(BLOB, 0)
        assert cache.get_meta("tree:root") == b"{}"
        assert cache.stats()["size"] <= limit


def test_eviction_after_many_blocks_in_one_transaction(tmp_path: Path) -> None:
    # blocks are culled once per put_many, after its transaction, not inside each add
    limit = 32 * MiB
    with BlockCache(tmp_path / "c", limit) as cache:
        for first in range(0, 2 * limit // MiB, 8):  # twice the limit, 8 blocks a write
            cache.put_many({(BLOB, i): pattern(i, MiB) for i in range(first, first + 8)})
            assert directory_bytes(tmp_path / "c") <= limit
        last = 2 * limit // MiB - 1
        assert cache.get(BLOB, last) == pattern(last, MiB)
        assert not cache.contains(BLOB, 0)
        assert cache.stats()["size"] <= limit


NUMBERED = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(31)]  # blob ids


def store_numbered(cache: BlockCache, first: int, end: int, record_reads: bool = False) -> None:
    """Blobs NUMBERED[first:end] of 1 MiB each, in one write."""
    blocks = {(b, 0): pattern(i, MiB) for i, b in enumerate(NUMBERED[first:end])}
    cache.put_many(blocks, record_reads=record_reads)


class _Clock:
    """For _cache's ``time``: the real wall clock, and a monotonic one that moves when told."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


def test_spent_blocks_are_evicted_before_blocks_still_waiting_for_a_reader_last_read_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = NUMBERED
    clock = _Clock()
    monkeypatch.setattr(_cache, "time", clock)
    with BlockCache(tmp_path / "c", 32 * MiB) as cache:  # 30 MiB for blocks
        store = functools.partial(store_numbered, cache)
        store(0, 8)  # these wait for their readers
        store(8, 20)
        for blob in [*blobs[8:20], blobs[8]]:  # read one by one; the first again, last
            clock.now += 1.0
            cache.spent([blob])
        store(20, 28)
        store(28, 31)  # 31 MiB: diskcache evicts 10 blocks at a time
        assert cache.stats()["size"] <= 32 * MiB
        kept = [cache.contains(b, 0) for b in blobs]
        assert all(kept[:8])  # stored first, never read: kept
        assert not kept[8]  # read last
        gone = kept[9:20].count(False)
        assert gone and kept[9:20] == [True] * (11 - gone) + [False] * gone  # the later reads
        assert all(kept[20:])


def test_a_block_read_before_it_was_stored_is_marked_spent_by_a_later_write(
    tmp_path: Path,
) -> None:
    blobs = NUMBERED
    with BlockCache(tmp_path / "c", 32 * MiB) as cache:
        store = functools.partial(store_numbered, cache)
        store(0, 8)  # these wait for their readers
        cache.spent(blobs[8:20])  # read by readers who fetch them themselves ...
        for i in range(20, 26):  # ... while other writes go first, many in a round trip
            store(i, i + 1)
        store(8, 20)  # ... and then they are stored
        store(26, 31)  # 31 MiB
        kept = [cache.contains(b, 0) for b in blobs]
        assert all(kept[:8]) and not all(kept[8:20]) and all(kept[20:])


def test_a_spent_block_never_stored_is_looked_for_no_longer_than_spent_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BlockCache(tmp_path / "c", 32 * MiB) as cache:
        cache.spent(NUMBERED[:3])  # read, their fetches failed: never stored
        store_numbered(cache, 3, 4)
        assert len(cache._take_spent()) == 3  # still looked for
        cache.spent(NUMBERED[:3])
        monkeypatch.setattr(_cache, "SPENT_SECONDS", 0.0)
        store_numbered(cache, 4, 5)
        assert cache._take_spent() == []


def test_pickles_as_its_directory_and_limit(cache: BlockCache) -> None:
    cache.put(BLOB, 0, b"p" * 40_000)
    with pickle.loads(pickle.dumps(cache)) as copy:
        assert copy.directory == cache.directory and copy.size_limit == cache.size_limit
        assert copy.get(BLOB, 0, 0, 3) == b"ppp"


# ----------------------------------------------------------------- processes


def _child_reads_and_writes(directory: str, limit: int) -> bytes | None:
    with BlockCache(directory, limit) as cache:
        seen = cache.get(BLOB, 0)
        cache.put(BLOB, 1, pattern(11, 2 * MiB))
    return seen


def test_processes_share_blocks_and_stats(tmp_path: Path) -> None:
    directory, limit = str(tmp_path / "c"), 64 * MiB
    with BlockCache(directory, limit) as cache:
        cache.put(BLOB, 0, pattern(10, 2 * MiB))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seen = pool.apply(_child_reads_and_writes, (directory, limit))
        assert seen == pattern(10, 2 * MiB)
        assert cache.get(BLOB, 1) == pattern(11, 2 * MiB)
        assert (cache.stats()["hits"], cache.stats()["misses"]) == (2, 0)


def _claims_and_counts_sharers(directory: str) -> int:
    with BlockCache(directory, 64 * MiB) as cache:
        cache.claim(["x"])
        return cache.sharers


def test_processes_that_claim_prefetches_count_each_other_as_sharers(tmp_path: Path) -> None:
    # DataLoader workers: each keeps a prefetch window, and they share the cache's room for it
    directory = str(tmp_path / "c")
    with BlockCache(directory, 64 * MiB) as cache:
        assert cache.sharers == 1
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(_claims_and_counts_sharers, (directory,)) == 1  # the first
        cache.claim(["y"])
        assert cache.sharers == 2
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            # the first child still counts until its word expires (SHARERS_SECONDS)
            assert pool.apply(_claims_and_counts_sharers, (directory,)) == 3
        cache.claim(["z"])  # counted at every claim: the second child too, at once
        assert cache.sharers == 3


def _writer(directory: str, count: int, started: Event) -> None:
    with BlockCache(directory, 1 * GiB) as cache:
        for i in range(count):
            cache.put(BLOB, i, pattern(i, BLOCK_SIZE - i))
            started.set()


def test_a_reader_never_sees_a_partial_block(tmp_path: Path) -> None:
    directory, count = str(tmp_path / "c"), 24
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    writer = context.Process(target=_writer, args=(directory, count, started))
    with BlockCache(directory, 1 * GiB) as cache:
        writer.start()
        assert started.wait(60), "the writer did not start"
        while True:
            done = not writer.is_alive()  # decided before the round: a last full round follows
            for i in range(count):
                size = BLOCK_SIZE - i
                tail = cache.get(BLOB, i, size - 64 * KiB, 64 * KiB)
                assert tail is None or tail == pattern(i, size)[-64 * KiB :]
                whole = cache.get(BLOB, i)
                assert whole is None or whole == pattern(i, size)
            if done:
                break
        writer.join()
        assert writer.exitcode == 0
        assert all(cache.contains(BLOB, i) for i in range(count))


def test_a_forked_child_keeps_using_the_cache_without_double_counting(tmp_path: Path) -> None:
    with BlockCache(tmp_path / "c", 64 * MiB) as cache:
        cache.put(BLOB, 0, b"f" * 40_000)
        assert cache.get(BLOB, 0, 0, 1) == b"f"  # one hit, not yet flushed
        pid = os.fork()
        if pid == 0:  # the child: reconnects, counts only its own hit
            code = 1
            try:
                code = 0 if cache.get(BLOB, 0, 1, 1) == b"f" else 2
                cache.put(BLOB, 1, b"c" * 10)
                cache.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cache.get(BLOB, 1) == b"c" * 10
        assert cache.stats()["hits"] == 3  # parent 2, child 1


def test_a_forked_child_opens_a_cache_of_its_own_and_keeps_it(tmp_path: Path) -> None:
    client = Client("http://127.0.0.1:9", cache_dir=str(tmp_path / "c"), cache_size=64 * MiB)
    parent = client.cache
    parent.put(BLOB, 0, b"p" * 10)
    pid = os.fork()
    if pid == 0:  # the child: not the parent's object (its SQLite connections), one of its own
        code = 1
        try:
            mine = client.cache
            code = 0 if mine is not parent and mine is client.cache else 2
            code = code or (0 if mine.get(BLOB, 0) == b"p" * 10 else 3)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.cache is parent


# ----------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        (4096, 4096),
        ("500M", 500 * MiB),
        ("10G", 10 * GiB),
        ("10g", 10 * GiB),
        ("10GiB", 10 * GiB),
        ("10 GB", 10 * GiB),
        ("1.5G", 3 * GiB // 2),
        ("64k", 64 * KiB),
        ("2T", 2 * 1024 * GiB),
        ("100B", 100),
        (" 7M ", 7 * MiB),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "10X", "-5M", "0", "0.0001K", "1e9", "10 iB", True])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(InvalidInputError):
        parse_size(text)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMFS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "streamfs"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == Path.home() / ".cache" / "streamfs"
    monkeypatch.setenv("STREAMFS_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"


def test_default_cache_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMFS_CACHE_SIZE", raising=False)
    assert default_cache_size(tmp_path, "2G") == 2 * GiB
    from_disk = default_cache_size(tmp_path / "not" / "yet")
    assert 256 * MiB <= from_disk <= 20 * GiB
    (tmp_path / "filler").write_bytes(os.urandom(MiB))  # less free space, same limit
    assert default_cache_size(tmp_path / "not" / "yet") == from_disk
    monkeypatch.setenv("STREAMFS_CACHE_SIZE", "300M")
    assert default_cache_size(tmp_path) == 300 * MiB
    assert default_cache_size(tmp_path, 5 * MiB) == 5 * MiB  # explicit beats the environment


@pytest.mark.parametrize(
    ("free", "limit"),
    [(0, 256 * MiB), (1 * GiB, 256 * MiB), (50 * GiB, 5 * GiB), (10_000 * GiB, 20 * GiB)],
)
def test_size_for_free_space(free: int, limit: int) -> None:
    assert size_for_free_space(free) == limit


def test_a_per_os_thread_slot_is_kept_for_its_thread_only() -> None:
    slots = _PerOsThread()
    slots.con = "main"
    seen: dict[str, object] = {}

    def other() -> None:
        seen["before"] = getattr(slots, "con", None)
        slots.con = "other"
        seen["after"] = slots.con

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == {"before": None, "after": "other"}
    assert slots.con == "main"
    # threads Python started keep theirs in a threading.local, freed when they end
    assert slots.foreign_threads() == 0
    del slots.con
    assert getattr(slots, "con", None) is None
    with pytest.raises(AttributeError):
        del slots.con


def test_the_caches_keep_sqlite_connections_per_os_thread(cache: BlockCache) -> None:
    """A diskcache upgrade that moves its per-thread connection fails here, not silently
    (see _PerOsThread and tests/test_cache_fuse.py)."""
    for store in (cache._blocks, cache._meta, cache._counters._store):
        assert isinstance(store._cache._local, _PerOsThread)


def test_a_claim_leaves_out_what_another_process_read_since_the_claimers_pass_began(
    tmp_path: Path,
) -> None:
    # DataLoader workers: a file one read is evicted first through a small cache, and then
    # looked unread to the others' prefetchers
    directory = tmp_path / "c"
    with BlockCache(directory, 64 * MiB) as one, BlockCache(directory, 64 * MiB) as two:
        before = time.time()
        store_numbered(one, 0, 4)
        one.spent(NUMBERED[:2])  # read here ...
        store_numbered(one, 4, 5)  # ... marked with the next write, not recorded
        two.spent(NUMBERED[2:4], record=True)  # read by a worker
        two.spent(NUMBERED[6:7])  # ... and one it was not told to record
        store_numbered(two, 5, 6, record_reads=True)
        ids = NUMBERED[:5]
        assert two.claim(ids, read_since=before) == [*NUMBERED[:2], NUMBERED[4]]
        after = time.time()
        assert one.claim(NUMBERED[2:4], read_since=after) == NUMBERED[2:4]  # its next pass
        assert two.claim(NUMBERED[2:4]) == []  # claimed by one now
        assert two.claim(NUMBERED[6:7], read_since=before) == NUMBERED[6:7]
        # a record is not a claim: the reader is not counted as a prefetcher
        with BlockCache(directory, 64 * MiB) as three:
            three.spent(NUMBERED[7:9], record=True)
            store_numbered(three, 9, 10, record_reads=True)
            assert three._announced[0] == 0
            assert one.claim(NUMBERED[7:9], read_since=before) == []
            three.spent(NUMBERED[10:11], record=True)  # a process alone with its cache ...
            store_numbered(three, 11, 12)  # ... records nothing
            assert one.claim(NUMBERED[10:11], read_since=before) == NUMBERED[10:11]


def test_unread_blobs_are_those_cached_and_marked_spent_by_no_process(tmp_path: Path) -> None:
    with BlockCache(tmp_path / "c", 64 * MiB) as cache:
        store_numbered(cache, 0, 4)
        with BlockCache(tmp_path / "c", 64 * MiB) as other:  # another process's reads
            other.spent(NUMBERED[1:3])
            assert cache.unread(NUMBERED[:6]) == set(NUMBERED[:4])  # not marked yet
            store_numbered(other, 4, 5)  # its next write marks them
        assert cache.unread(NUMBERED[:6]) == {NUMBERED[0], NUMBERED[3], NUMBERED[4]}
        assert cache.unread([]) == set()


def test_read_records_outlive_a_pass_and_are_culled_after_that(tmp_path: Path) -> None:
    with BlockCache(tmp_path / "c", 64 * MiB) as cache:
        blocks = cache._blocks._cache
        now = time.time()
        with blocks.transact():
            old = now - _cache.READ_RECORD_SECONDS - 1
            _cache._record_reads(blocks, [("old", old), ("new", now - 5), ("new", now)], False)
        assert _cache._read_since(blocks, ["old", "new", "other"], old) == {"old", "new"}
        assert _cache._read_since(blocks, ["old", "new"], now) == {"new"}  # its last read
        with blocks.transact():
            _cache._record_reads(blocks, [("newer", now)], cull=True)
        assert _cache._read_since(blocks, ["old", "new", "newer"], 0.0) == {"new", "newer"}
        cache.clear()
        assert _cache._read_since(blocks, ["new", "newer"], 0.0) == set()


def test_a_prefetch_claim_is_taken_once_across_processes_until_it_expires(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "c"
    with BlockCache(directory, 64 * MiB) as one, BlockCache(directory, 64 * MiB) as two:
        assert one.claim(["a", "b"]) == ["a", "b"]
        assert two.claim(["b", "c"]) == ["c"]  # b is being fetched by the first
        assert one.claim(["c"], seconds=-1) == []  # a claim that is already over ...
        assert two.claim(["d"], seconds=-1) == ["d"]
        assert one.claim(["d"]) == ["d"]  # ... is free for the next claimer
        one.clear()
        assert two.claim(["a"]) == ["a"]
