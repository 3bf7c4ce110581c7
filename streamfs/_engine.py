"""The engine: one trio event loop in a background thread that owns the network.

Front ends (FUSE callbacks, hooked ``open``, the Python API) run in threads
of their own. They serve cache hits themselves and hop to the engine only for
network work: ``engine.call(fn, ...)`` runs an async function on the loop and
waits for it; ``engine.spawn(fn, ...)`` starts one in the background
(readahead) and returns at once.

Ownership: the engine's nursery owns every background task; ``close()``
cancels them. One engine per (server, token) per process: ``engine_for``.
A thread does not survive ``fork()``, so a child process that asks for an
engine gets a new one (the registry is cleared in the child at fork time);
the disk cache is shared.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ._cache import BlockCache
from ._errors import RemoteUnavailableError
from ._fetch import BlockFetcher
from ._remote import Remote, RetryPolicy

log = logging.getLogger("streamfs.engine")
T = TypeVar("T")


class Engine:
    def __init__(
        self, url: str, token: str | None, cache: BlockCache, retry: RetryPolicy | None = None
    ) -> None:
        self.url = url
        self.cache = cache
        self.fetcher: BlockFetcher | None = None
        self.pid = os.getpid()
        self._retry = retry or RetryPolicy()
        self._token_value = token
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self.remote: Remote | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name="streamfs-engine", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    # ------------------------------------------------------------ the loop thread

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # the loop could not start: report to the creator
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        remote = Remote(self.url, self._token_value, retry=self._retry)
        fetcher = BlockFetcher(remote, self.cache)
        try:
            async with remote, trio.open_nursery() as nursery:
                self.remote = remote
                self.fetcher = fetcher
                fetcher.nursery = nursery
                self._nursery = nursery
                self._stop = trio.Event()
                self._trio_token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            fetcher.fresh.clear()  # nobody takes them now (see _fresh.held_anywhere)

    # ------------------------------------------------------------ from other threads

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.pid == os.getpid()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the engine's loop and return its result."""
        if not self.alive:
            raise RemoteUnavailableError("the streamfs engine is not running")
        return trio.from_thread.run(fn, *args, trio_token=self._trio_token)

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Start ``fn(*args)`` in the engine's nursery; errors are logged, not raised."""
        if not self.alive:
            return

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:  # background work must never take the loop down
                log.debug("background task %s failed: %s", getattr(fn, "__name__", fn), exc)

        nursery, token = self._nursery, self._trio_token
        assert nursery is not None and token is not None

        def start() -> None:  # on the loop, soon; the caller does not wait for it
            with contextlib.suppress(RuntimeError):  # closing: background work is dropped
                nursery.start_soon(guarded)

        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(start)

    def close(self) -> None:
        if not self.alive:
            return
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._trio_token)
        self._thread.join(10)


_engines: dict[tuple[str, str | None, str], Engine] = {}
_engines_lock = threading.Lock()


def _key(url: str, token: str | None, cache: BlockCache) -> tuple[str, str | None, str]:
    return (url, token, str(cache.directory))


def engine_for(
    url: str, token: str | None, cache: BlockCache, retry: RetryPolicy | None = None
) -> Engine:
    """The process's engine for a server and cache (started on first use)."""
    key = _key(url, token, cache)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None or not engine.alive:
            engine = Engine(url, token, cache, retry)
            _engines[key] = engine
        return engine


def running_engine(url: str, token: str | None, cache: BlockCache) -> Engine | None:
    """The process's engine for a server and cache if it is running (never starts one)."""
    engine = _engines.get(_key(url, token, cache))
    return engine if engine is not None and engine.alive else None


def _after_fork_in_child() -> None:
    global _engines_lock
    _engines_lock = threading.Lock()
    _engines.clear()  # the parent's loop threads do not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)
