"""Readers by path (a read-only mount gets no open or close): streams and bounds."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from streamfs._pathreaders import PathReaders

MiB = 1024 * 1024


class FakeReader:
    """A stream: continues a read within 1 MiB of where its last read ended."""

    def __init__(self, path: str, small: bool = False) -> None:
        self.path = path
        self.small = small
        self.pos: int | None = None
        self.reads: list[int] = []

    def continues(self, offset: int) -> bool:
        return self.small or (self.pos is not None and abs(offset - self.pos) <= MiB)

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append(offset)
        self.pos = offset + size
        return bytes(size)


class Table:
    def __init__(self, limit: int = 64, per_path: int = 4, small: bool = False) -> None:
        self.made: list[FakeReader] = []
        self.readers = PathReaders(self._make, limit=limit, per_path=per_path)
        self._small = small

    def _make(self, path: str) -> FakeReader:
        reader = FakeReader(path, self._small)
        self.made.append(reader)
        return reader

    def read(self, path: str, offset: int, size: int = 128 * 1024) -> FakeReader:
        reader = self.readers.reader(path, offset)
        reader.read(offset, size)
        assert isinstance(reader, FakeReader)
        return reader


def test_two_interleaved_scans_of_one_file_keep_a_stream_each() -> None:
    t = Table()
    a0 = t.read("big", 0)
    b0 = t.read("big", 512 * MiB)
    for step in range(1, 20):
        assert t.read("big", step * 128 * 1024) is a0
        assert t.read("big", 512 * MiB + step * 128 * 1024) is b0
    assert a0 is not b0 and len(t.made) == 2


def test_a_read_that_continues_no_stream_takes_the_least_recent_one_once_full() -> None:
    t = Table(per_path=2)
    a = t.read("big", 0)
    b = t.read("big", 100 * MiB)
    t.read("big", 100 * MiB + 128 * 1024)  # b is now the most recent
    assert t.read("big", 300 * MiB) is a  # a random read resets the older stream
    assert len(t.made) == 2 and len(t.readers) == 2 and b.reads[-1] == 100 * MiB + 128 * 1024


def test_at_most_limit_readers_and_a_dropped_path_gets_a_new_one() -> None:
    t = Table(limit=3)
    for name in "abcd":
        t.read(name, 0)
    assert len(t.readers) == 3
    t.read("a", 128 * 1024)  # "a" was the least recently used: dropped, so a new reader
    assert len(t.made) == 5 and [r.path for r in t.made] == ["a", "b", "c", "d", "a"]
    t.read("c", 128 * 1024)  # still there
    assert len(t.made) == 5


def test_threads_racing_to_read_a_new_small_file_share_one_reader() -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    made: list[FakeReader] = []

    def make(path: str) -> FakeReader:
        barrier.wait(timeout=10)  # every thread is making a reader at once
        reader = FakeReader(path, small=True)
        made.append(reader)
        return reader

    readers = PathReaders(make)
    got: list[object] = []

    def read(i: int) -> None:
        got.append(readers.reader("f", i * 128 * 1024))

    workers = [threading.Thread(target=read, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(made) == threads  # all made one, outside the lock
    assert len({id(r) for r in got}) == 1
    assert len(readers) == 1


@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 64)), max_size=200),
    st.integers(1, 6),
    st.integers(1, 3),
)
def test_bounds_hold_for_any_reads(reads: list[tuple[str, int]], limit: int, per_path: int) -> None:
    t = Table(limit=limit, per_path=per_path)
    for path, mib in reads:
        assert t.read(path, mib * MiB).path == path
        assert len(t.readers) <= limit
    live = t.readers._by_path
    assert all(0 < len(keys) <= per_path for keys in live.values())
    assert sum(len(keys) for keys in live.values()) == len(t.readers)
