"""The cache's one writer: deliveries that queue while it writes share the next transaction."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from streamfs._writequeue import Blocks, WriteQueue

pytestmark = pytest.mark.trio


class GatedPutMany:
    """Records each transaction's keys; each waits for ``gate`` (set it to let them through)."""

    def __init__(self, fail_first: bool = False) -> None:
        self.gate = threading.Event()
        self.transactions: list[list[tuple[str, int]]] = []
        self._fail_first = fail_first

    def __call__(self, blocks: Blocks) -> None:
        assert self.gate.wait(10)
        self.transactions.append(sorted(blocks))
        if self._fail_first and len(self.transactions) == 1:
            raise RuntimeError("a bug in the writer")


def blocks(*indices: int, size: int = 10) -> Blocks:
    return {("blob", i): bytes(size) for i in indices}


async def test_deliveries_that_queue_meanwhile_share_one_transaction() -> None:
    put = GatedPutMany()
    queue = WriteQueue(put)
    done: list[int] = []

    async def write(i: int, nursery: trio.Nursery) -> None:
        await queue.write(blocks(i), nursery)
        done.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, 0, nursery)
        await trio.testing.wait_all_tasks_blocked()  # 0 is being written (held at the gate)
        for i in (1, 2, 3):
            nursery.start_soon(write, i, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        put.gate.set()
    assert put.transactions == [[("blob", 0)], [("blob", 1), ("blob", 2), ("blob", 3)]]
    assert sorted(done) == [0, 1, 2, 3]
    assert queue.transactions == 2


async def test_a_transaction_takes_at_most_max_bytes_oldest_first() -> None:
    put = GatedPutMany()
    queue = WriteQueue(put, max_bytes=25)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.write, blocks(0), nursery)
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2, 3, 4):  # 10 bytes each: two fit in 25
            nursery.start_soon(queue.write, blocks(i), nursery)
            await trio.testing.wait_all_tasks_blocked()
        put.gate.set()
    assert put.transactions == [
        [("blob", 0)],
        [("blob", 1), ("blob", 2)],
        [("blob", 3), ("blob", 4)],
    ]


async def test_a_failed_transaction_wakes_its_writers_and_the_next_one_runs() -> None:
    put = GatedPutMany(fail_first=True)
    put.gate.set()
    queue = WriteQueue(put)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await queue.write(blocks(0), nursery)  # returns: the error is logged, not raised
            await queue.write(blocks(1), nursery)
    assert put.transactions == [[("blob", 0)], [("blob", 1)]]


async def test_the_writer_ends_when_the_queue_is_empty() -> None:
    # the nursery that runs it can close: nothing waits forever for work
    put = GatedPutMany()
    put.gate.set()
    queue = WriteQueue(put)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await queue.write(blocks(0), nursery)
    async with trio.open_nursery() as nursery:  # and starts again in another
        await queue.write(blocks(1), nursery)
    assert put.transactions == [[("blob", 0)], [("blob", 1)]]


async def test_room_waits_until_the_writer_has_caught_up() -> None:
    put = GatedPutMany()
    queue = WriteQueue(put, max_bytes=25)
    roomy: list[int] = []

    async def wait_for_room(limit: int) -> None:
        await queue.room(limit)
        roomy.append(queue.unwritten)

    async with trio.open_nursery() as nursery:
        for i in range(5):  # 50 bytes: the first group (10) is at the gate, then two of 20
            nursery.start_soon(queue.write, blocks(i), nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.unwritten == 50
        nursery.start_soon(wait_for_room, 25)
        await trio.testing.wait_all_tasks_blocked()
        assert roomy == []  # 50 bytes wait for the writer
        put.gate.set()
    assert roomy and roomy[0] <= 25
    assert queue.unwritten == 0


async def test_a_gathering_writer_waits_for_more_when_little_is_queued() -> None:
    put = GatedPutMany()
    put.gate.set()
    queue = WriteQueue(put, gather=3600, gather_bytes=30)  # only enough bytes end the wait
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.write, blocks(0), nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert put.transactions == []  # 10 bytes: it waits for 30
        nursery.start_soon(queue.write, blocks(1), nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert put.transactions == []
        with trio.fail_after(10):
            await queue.write(blocks(2), nursery)  # 30 bytes: written at once, in one
    assert put.transactions == [[("blob", 0), ("blob", 1), ("blob", 2)]]


async def test_a_gathering_writer_writes_what_it_has_when_its_time_is_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    put = GatedPutMany()
    put.gate.set()
    queue = WriteQueue(put, gather=60, gather_bytes=1000)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await queue.write(blocks(0), nursery)  # the clock jumps while all wait
        waited = trio.current_time() - start
    assert put.transactions == [[("blob", 0)]]
    assert 60 <= waited < 120
