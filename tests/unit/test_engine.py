"""The engine's loop thread: background work is started without waiting for the loop; which
processes claim their prefetches."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NoReturn

import pytest

from streamfs import _engine
from streamfs._cache import BlockCache, MiB
from streamfs._engine import Engine


def test_spawn_returns_while_the_loop_is_busy_and_the_task_runs_after(tmp_path: Path) -> None:
    # a reader that starts readahead must not wait for the loop to get round to it
    engine = Engine("http://127.0.0.1:9", None, BlockCache(tmp_path / "c", 64 * MiB))
    holding, release, ran = threading.Event(), threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}

    async def hold_the_loop() -> None:
        holding.set()
        outcome["released"] = release.wait(10)  # a blocking wait: the loop runs nothing else

    async def background() -> None:
        ran.set()

    holder = threading.Thread(target=engine.call, args=(hold_the_loop,))
    try:
        holder.start()
        assert holding.wait(10)
        engine.spawn(background)
        assert not ran.is_set()
        release.set()
        holder.join(10)
        assert outcome["released"]  # spawn returned while the loop was still held
        assert ran.wait(10)
    finally:
        release.set()
        engine.close()
    engine.spawn(background)  # a closed engine drops background work, quietly


def _child_reports(pipe_w: int, *, alone: bool) -> NoReturn:
    try:
        if alone:
            _engine.prefetch_alone()
        os.write(pipe_w, b"1" if _engine._worker_process() else b"0")
    finally:
        os._exit(0)


@pytest.mark.parametrize(("alone", "expected"), [(False, b"1"), (True, b"0")])
def test_a_forked_child_claims_its_prefetches_unless_it_runs_alone(
    alone: bool, expected: bytes
) -> None:
    assert not _engine._worker_process()  # the test runner: no process made it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child_reports(w, alone=alone)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == expected
