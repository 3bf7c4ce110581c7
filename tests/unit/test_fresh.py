"""FreshBlobs: taken once, bounded in bytes, oldest dropped first."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from streamfs._fresh import FreshBlobs


def test_a_blob_is_taken_once() -> None:
    fresh = FreshBlobs(100)
    fresh.add("a", b"x" * 10)
    assert fresh.take("a") == b"x" * 10
    assert fresh.take("a") is None and fresh.take("never") is None
    assert len(fresh) == 0 and fresh.nbytes == 0


def test_oldest_are_dropped_beyond_the_limit_and_oversize_is_never_kept() -> None:
    fresh = FreshBlobs(25)
    for name in "abc":
        fresh.add(name, name.encode() * 10)
    assert fresh.take("a") is None  # 30 bytes > 25: the oldest went
    assert fresh.take("b") == b"b" * 10 and fresh.take("c") == b"c" * 10
    fresh.add("big", b"z" * 26)
    assert len(fresh) == 0


def test_adding_again_replaces_and_counts_once() -> None:
    fresh = FreshBlobs(100)
    fresh.add("a", b"1" * 40)
    fresh.add("a", b"1" * 40)
    assert fresh.nbytes == 40 and len(fresh) == 1


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 40), st.booleans())))
def test_never_holds_more_than_its_limit(ops: list[tuple[str, int, bool]]) -> None:
    fresh = FreshBlobs(64)
    for name, size, take in ops:
        if take:
            data = fresh.take(name)
            assert data is None or data == name.encode() * len(data)
        else:
            fresh.add(name, name.encode() * size)
        assert fresh.nbytes <= 64
        assert fresh.nbytes == sum(len(fresh._blobs[k]) for k in fresh._blobs)


def test_each_blob_goes_to_exactly_one_of_many_takers() -> None:
    fresh = FreshBlobs(1 << 20)
    for i in range(500):
        fresh.add(str(i), b"%d" % i)
    taken: list[list[str]] = [[] for _ in range(4)]

    def take_all(out: list[str]) -> None:
        for i in range(500):
            if fresh.take(str(i)) is not None:
                out.append(str(i))

    threads = [threading.Thread(target=take_all, args=(out,)) for out in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((k for out in taken for k in out), key=int) == [str(i) for i in range(500)]
