"""The engine: one trio event loop in a background thread that owns the network.

Front ends (FUSE callbacks, hooked ``open``, the Python API) run in threads
of their own. They serve cache hits themselves and hop to the engine only for
network work: ``engine.call(fn, ...)`` runs an async function on the loop and
waits for it; ``engine.spawn(fn, ...)`` starts one in the background
(readahead) and returns at once.

Ownership: the engine's nursery owns every background task; ``close()``
cancels them, once the blocks handed to readers before they were cached are
written (see _fetch.py). A process that exits normally, a multiprocessing
child (a DataLoader worker) included, waits for those writes too, at most
``SETTLE_TIMEOUT`` seconds. One engine per (server, token) per process: ``engine_for``.
A thread does not survive ``fork()``, so a child process that asks for an
engine gets a new one (the registry is cleared in the child at fork time);
the disk cache is shared.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ._cache import BlockCache
from ._directget import DirectGets
from ._errors import RemoteUnavailableError
from ._fetch import BlockFetcher
from ._remote import Remote, RetryPolicy

log = logging.getLogger("streamfs.engine")
T = TypeVar("T")

SETTLE_TIMEOUT = 10.0  # seconds a closing engine or an exiting process waits for cache writes


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
        self._direct: DirectGets | None = None
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
        fetcher = BlockFetcher(remote, self.cache, claims=_worker_process())
        retry, front = self._retry, remote.front
        if front is not None:
            self._direct = DirectGets(front, retry.connect_timeout, retry.read_timeout)
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
            if self._direct is not None:
                self._direct.close()

    # ------------------------------------------------------------ from other threads

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.pid == os.getpid()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the engine's loop and return its result."""
        if not self.alive:
            raise RemoteUnavailableError("the streamfs engine is not running")
        return trio.from_thread.run(fn, *args, trio_token=self._trio_token)

    @property
    def claims(self) -> bool:
        """Whether this is a DataLoader worker's engine: its prefetches claim their blobs in
        the cache it shares with the other workers (BlockFetcher.claims)."""
        fetcher = self.fetcher
        return fetcher is not None and fetcher.claims

    @property
    def round_trip(self) -> float | None:
        """Seconds: the least round trip of this process's recent GETs of the blob front
        (DirectGets.round_trip); None before the first or without a front."""
        direct = self._direct
        return direct.round_trip if direct is not None else None

    @property
    def front_in_use(self) -> bool:
        """Whether small files missed are GETs of the blob front now (DirectGets.in_use): a
        round trip is to come."""
        direct = self._direct
        return direct is not None and direct.in_use

    def get_direct(self, oid: str, size: int) -> bytes | None:
        """The verified bytes of a one-block blob, fetched in the caller's thread from the
        blob front (see _directget.py) and handed to the loop to cache; None: fetch it
        through the engine (no URL known, in flight there already, a failure)."""
        direct, fetcher, token = self._direct, self.fetcher, self._trio_token
        if direct is None or fetcher is None or token is None or not self.alive:
            return None
        if fetcher.writer_behind() or fetcher.cache.known(oid, 0):
            return None  # the engine waits for the writer / reads what was written meanwhile
        busy = fetcher.reader_fetches
        if oid in busy:
            return None  # another reader's thread is fetching it
        busy.add(oid)  # before the look at the loop's fetches: a batch then leaves it out
        # In flight on the loop (a prefetch batch holds it): wait for it there. Fetching it
        # here as well was faster for that reader, but readers that never wait outran the
        # prefetcher and fetched most files one by one (1,240 against 2,000 files/s).
        data = None if fetcher.in_flight(oid, 0) else direct.get(oid, size)
        if data is None:
            busy.discard(oid)
            return None
        try:  # before any later settle(): the loop runs these in the order they came
            token.run_sync_soon(fetcher.adopt, oid, data)
        except trio.RunFinishedError:  # closing: served, not cached
            busy.discard(oid)
        return data

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

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait, at most ``timeout`` s, until the blocks served before they were cached are."""
        fetcher = self.fetcher
        if not self.alive or fetcher is None:
            return

        async def settled() -> None:
            with trio.move_on_after(timeout):
                await fetcher.settled()

        with contextlib.suppress(trio.RunFinishedError, RuntimeError):  # stopped meanwhile
            trio.from_thread.run(settled, trio_token=self._trio_token)

    def close(self) -> None:
        if not self.alive:
            return
        self.settle()
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
            _settle_at_exit()
        return engine


def running_engine(url: str, token: str | None, cache: BlockCache) -> Engine | None:
    """The process's engine for a server and cache if it is running (never starts one)."""
    engine = _engines.get(_key(url, token, cache))
    return engine if engine is not None and engine.alive else None


_settling_pid = 0  # the process that registered _settle_all to run at its exit


def _settle_at_exit() -> None:
    """Run _settle_all when this process exits (the caller holds ``_engines_lock``).

    A multiprocessing child (a DataLoader worker) leaves by ``os._exit`` and so
    runs no ``atexit`` handler, only multiprocessing's exit finalizers; it starts
    with none of its parent's, hence once per pid. multiprocessing's exit
    function runs at a normal interpreter exit too; without multiprocessing
    loaded, the process is no such child and ``atexit`` does it.
    """
    global _settling_pid
    if _settling_pid == os.getpid():
        return
    _settling_pid = os.getpid()
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _settle_all, exitpriority=100)
    else:
        atexit.register(_settle_all)


def _settle_all() -> None:
    for engine in list(_engines.values()):
        engine.settle()


def close_engine(url: str, token: str | None, cache_dir: str) -> None:
    """Stop this process's engine for a server and a cache directory (as BlockCache names
    it: Client.cache_dir), if it runs."""
    with _engines_lock:
        engine = _engines.pop((url, token, cache_dir), None)
    if engine is not None:
        engine.close()


def close_engines() -> None:
    """Stop every engine of this process (each settles its cache writes first); the next use
    starts a new one."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.close()


_forked = False  # this process is a fork of one that used streamfs


def _worker_process() -> bool:
    """Whether this process was made by another that may read the same data into the same
    cache (DataLoader workers: forked, or spawned through multiprocessing). Only such a
    process claims its prefetches (BlockCache.claim): a claim is a cache write a blob, which
    the only prefetcher of a cache would pay for nothing."""
    # not imported here for this: a process that multiprocessing made has it loaded already
    process = sys.modules.get("multiprocessing.process")
    return _forked or (process is not None and process.parent_process() is not None)


def prefetch_alone() -> None:
    """This process was forked to run on its own (a mount's daemon), not as a worker beside
    its parent: it makes no prefetch claims."""
    global _forked
    _forked = False


def _after_fork_in_child() -> None:
    global _engines_lock, _forked
    _forked = True
    _engines_lock = threading.Lock()
    _engines.clear()  # the parent's loop threads do not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)
