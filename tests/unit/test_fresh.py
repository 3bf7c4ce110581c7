"""FreshBlocks: taken once, bounded in bytes and in age, old blocks kept over new until stale."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from streamfs._fresh import FreshBlocks


def test_a_block_is_taken_once() -> None:
    fresh = FreshBlocks(100)
    assert fresh.add(("a", 0), b"x" * 10)
    assert fresh.take(("a", 1)) is None  # another block of the same blob
    assert fresh.take(("a", 0)) == b"x" * 10
    assert fresh.take(("a", 0)) is None and fresh.take(("never", 0)) is None
    assert len(fresh) == 0 and fresh.nbytes == 0


def test_when_full_new_blocks_are_turned_away_and_the_next_to_read_stay() -> None:
    fresh = FreshBlocks(25)
    added = [fresh.add(("big", i), bytes([i]) * 10) for i in range(3)]
    assert added == [True, True, False]  # 30 bytes > 25: block 2 is left to the disk cache
    assert fresh.take(("big", 0)) == bytes([0]) * 10
    assert fresh.add(("big", 2), bytes([2]) * 10)  # a reader took one: room again
    assert fresh.take(("big", 1)) == bytes([1]) * 10
    assert not fresh.add(("huge", 0), b"z" * 26)
    assert len(fresh) == 1


def test_a_block_nobody_took_gives_way_once_twice_the_limit_was_offered_since() -> None:
    fresh = FreshBlocks(20)
    fresh.add(("left", 0), b"l" * 20)  # its reader went away
    offered = [fresh.add(("new", i), b"n" * 10) for i in range(4)]
    assert offered == [False, False, False, True]  # the 4th brings the offered bytes to 2 x 20
    assert fresh.take(("left", 0)) is None
    assert fresh.take(("new", 3)) == b"n" * 10


def test_a_block_nobody_took_goes_once_older_than_the_age_bound() -> None:
    """After the last prefetch nothing is offered, so only age makes room (a DataLoader worker
    after epoch 1); the next take or add drops what is too old, oldest first."""
    from streamfs import _fresh

    now = [100.0]
    fresh = FreshBlocks(100, max_age=30.0, clock=lambda: now[0])
    base = _fresh._held
    fresh.add(("old", 0), b"o" * 10)
    now[0] += 20
    fresh.add(("young", 0), b"y" * 10)
    now[0] += 9.5
    assert fresh.take(("nobody", 0)) is None and len(fresh) == 2  # 29.5 s: both stay
    now[0] += 0.5
    assert fresh.take(("nobody", 0)) is None
    assert len(fresh) == 1 and fresh.nbytes == 10  # "old" is 30 s old: gone
    assert fresh.take(("old", 0)) is None
    now[0] += 20
    assert fresh.add(("new", 0), b"n" * 10)  # an add drops what is too old too
    assert fresh.take(("young", 0)) is None and fresh.take(("new", 0)) == b"n" * 10
    assert _fresh._held == base and len(fresh) == 0


def test_adding_again_replaces_and_counts_once() -> None:
    fresh = FreshBlocks(100)
    fresh.add(("a", 0), b"1" * 40)
    fresh.add(("a", 0), b"1" * 40)
    assert fresh.nbytes == 40 and len(fresh) == 1


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 40), st.booleans())))
def test_never_holds_more_than_its_limit(ops: list[tuple[str, int, bool]]) -> None:
    fresh = FreshBlocks(64)
    for name, size, take in ops:
        if take:
            data = fresh.take((name, 0))
            assert data is None or data == name.encode() * len(data)
        else:
            fresh.add((name, 0), name.encode() * size)
        assert fresh.nbytes <= 64
        assert fresh.nbytes == sum(len(data) for data, _, _ in fresh._blocks.values())


def test_each_block_goes_to_exactly_one_of_many_takers() -> None:
    fresh = FreshBlocks(1 << 20)
    for i in range(500):
        fresh.add(("blob", i), b"%d" % i)
    taken: list[list[int]] = [[] for _ in range(4)]

    def take_all(out: list[int]) -> None:
        for i in range(500):
            if fresh.take(("blob", i)) is not None:
                out.append(i)

    threads = [threading.Thread(target=take_all, args=(out,)) for out in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k for out in taken for k in out) == list(range(500))


def test_the_process_wide_count_follows_adds_takes_and_clears() -> None:
    """A warm read skips the engine when no store holds a block (_fresh.held_anywhere)."""
    from streamfs import _fresh

    base = _fresh._held  # stores of other tests may still hold theirs
    one, two = FreshBlocks(100), FreshBlocks(100)
    assert one.add(("a", 0), b"x") and one.add(("a", 1), b"y") and two.add(("b", 0), b"z")
    assert not two.add(("c", 0), b"w" * 101)  # turned away: not counted
    assert _fresh._held == base + 3 and _fresh.held_anywhere()
    assert one.take(("a", 0)) == b"x" and one.take(("a", 0)) is None
    assert _fresh._held == base + 2
    one.clear()
    two.clear()
    assert _fresh._held == base and len(one) == 0 and one.nbytes == 0
