"""The engine's loop thread: background work is started without waiting for the loop."""

from __future__ import annotations

import threading
from pathlib import Path

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
