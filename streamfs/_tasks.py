"""Concurrent tasks that fail like one call.

A trio nursery whose tasks fail raises an ExceptionGroup of every failure
(trio's strict groups). Our callers catch StreamfsError and show its message:
a group slips past ``except StreamfsError``, and the user saw the group's
rendering ("the mount failed:  +----") instead of "repository a/b not found".
``task_group`` raises the group's first failure that is not a cancellation (the
others were most often cancelled by it, or are the same error met twice); a
group of cancellations alone goes up unchanged, as trio needs it to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def task_group() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        first = next((e for e in _leaves(group) if not isinstance(e, trio.Cancelled)), None)
        if first is None:
            raise
        raise first from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
