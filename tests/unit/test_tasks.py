"""task_group: concurrent tasks that fail with one plain error, not an ExceptionGroup."""

from __future__ import annotations

import pytest
import trio

from streamfs._errors import RepoNotFoundError, StreamfsError
from streamfs._tasks import task_group

pytestmark = pytest.mark.trio


async def test_a_failing_task_raises_its_own_error_and_cancels_the_others() -> None:
    stopped = trio.Event()

    async def waits() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    async def fails() -> None:
        await trio.sleep(0)
        raise RepoNotFoundError("repository a/b not found")

    with pytest.raises(RepoNotFoundError, match="a/b not found") as caught:
        async with task_group() as tasks:
            tasks.start_soon(waits)
            tasks.start_soon(fails)
    assert stopped.is_set()
    assert isinstance(caught.value, StreamfsError)  # what the CLI and the hooks catch


async def test_two_failures_give_one_of_them_plainly() -> None:
    async def fails(message: str) -> None:
        raise RepoNotFoundError(message)

    with pytest.raises(RepoNotFoundError, match=r"^(one|two)$"):
        async with task_group() as tasks:
            tasks.start_soon(fails, "one")
            tasks.start_soon(fails, "two")


async def test_a_cancelled_group_stays_cancelled() -> None:
    with trio.CancelScope() as outer:
        async with task_group() as tasks:
            tasks.start_soon(trio.sleep_forever)
            tasks.start_soon(trio.sleep_forever)
            await trio.sleep(0)
            outer.cancel()
    assert outer.cancelled_caught


async def test_tasks_that_succeed_are_all_waited_for() -> None:
    done: list[int] = []

    async def work(i: int) -> None:
        await trio.sleep(0)
        done.append(i)

    async with task_group() as tasks:
        for i in range(5):
            tasks.start_soon(work, i)
    assert sorted(done) == [0, 1, 2, 3, 4]
