"""Client: where a front end gets its engine and cache, correctly after fork().

A Client is cheap, picklable settings (server, token, cache location and
limit, time bounds). The engine (a thread) and the open cache are looked up
per process on each use, so an object created before ``fork()`` or sent to
a spawned worker keeps working there: the child starts its own engine and
opens the same cache directory.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._blocks import Block
from ._cache import BlockCache, default_cache_dir, default_cache_size
from ._engine import Engine, close_engine, close_engines, engine_for, running_engine
from ._fresh import held_anywhere
from ._remote import RetryPolicy, remote_from_env

T = TypeVar("T")
_OFF = {"0", "false", "no", "off"}

_caches: dict[tuple[str, int], BlockCache] = {}  # emptied in a forked child (below)
_caches_lock = threading.Lock()
# Clients held open (Client.hold) in this process, by engine (server, token, cache) and by cache
_engine_holders: Counter[tuple[str, str | None, str]] = Counter()
_cache_holders: Counter[tuple[str, int]] = Counter()


def _after_fork_in_child() -> None:
    global _caches_lock
    _caches_lock = threading.Lock()
    _caches.clear()  # SQLite connections must not cross fork()
    _engine_holders.clear()  # what the parent holds, the parent releases
    _cache_holders.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def close_all() -> None:
    """Stop this process's engines and close the caches it opened: their threads, connections
    and database handles go; the next use opens them again."""
    close_engines()
    with _caches_lock:
        caches = list(_caches.values())
        _caches.clear()
    for cache in caches:
        cache.close()


@dataclass(frozen=True)
class Client:
    url: str
    token: str | None = field(default=None, repr=False)
    cache_dir: str = ""
    cache_size: int = 0
    timeout: float = 30.0
    prefetch: bool = True  # prefetch the small files of folders being read through

    @classmethod
    def create(
        cls,
        remote: str | None = None,
        token: str | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: int | str | None = None,
        timeout: float | None = None,
        prefetch: bool | None = None,
    ) -> Client:
        url, tok = remote_from_env(remote, token)
        # expanded as BlockCache expands it: the engine's key (close_engine), the mirror folder
        directory = str(
            Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        )
        size = default_cache_size(directory, cache_size)
        env_timeout = os.environ.get("STREAMFS_TIMEOUT")
        bound = timeout if timeout is not None else float(env_timeout) if env_timeout else 30.0
        if prefetch is None:
            prefetch = os.environ.get("STREAMFS_PREFETCH", "1").strip().lower() not in _OFF
        return cls(url, tok, directory, size, bound, prefetch)

    @property
    def cache(self) -> BlockCache:
        key = (self.cache_dir, self.cache_size)  # no getpid(), a system call: see _caches
        cache = _caches.get(key)  # every read asks: no lock once it exists
        if cache is not None:
            return cache
        with _caches_lock:
            cache = _caches.get(key)
            if cache is None:
                cache = _caches[key] = BlockCache(self.cache_dir, self.cache_size)
            return cache

    @property
    def engine(self) -> Engine:
        retry = RetryPolicy(deadline=self.timeout, read_timeout=min(15.0, self.timeout))
        return engine_for(self.url, self.token, self.cache, retry)

    @property
    def running_engine(self) -> Engine | None:
        """The engine if this process has started it (asking never starts one)."""
        return running_engine(self.url, self.token, self.cache)

    def take_fresh(self, blob: str, index: int) -> Block | None:
        """Block ``index`` of ``blob`` if the prefetcher just fetched it and holds it in memory
        for its first reader in this process; taking it removes it (see _fresh.py)."""
        if not held_anywhere():
            return None
        engine = self.running_engine
        fetcher = engine.fetcher if engine is not None else None
        return fetcher.fresh.take((blob, index)) if fetcher is not None else None

    def get_direct(self, blob: str, size: int) -> bytes | None:
        """A small blob fetched in this thread, if the running engine can (Engine.get_direct)."""
        engine = self.running_engine
        return engine.get_direct(blob, size) if engine is not None else None

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.engine.call(fn, *args)

    def hold(self) -> Hold:
        """Count one more user of this client's engine and cache in this process (a Repo, a
        hooked folder) until the Hold's ``release``."""
        with _caches_lock:
            _engine_holders[self.url, self.token, self.cache_dir] += 1
            _cache_holders[self.cache_dir, self.cache_size] += 1
        return Hold(self, os.getpid())

    def _release(self) -> None:
        """One user is done: the last one of an engine stops it (after its cache writes), the
        last one of a cache closes it. The next use starts them again."""
        engine_key = (self.url, self.token, self.cache_dir)
        cache_key = (self.cache_dir, self.cache_size)
        with _caches_lock:
            _engine_holders[engine_key] -= 1
            _cache_holders[cache_key] -= 1
            engine_done = _engine_holders[engine_key] <= 0
            cache_done = _cache_holders[cache_key] <= 0
            if engine_done:
                del _engine_holders[engine_key]
            cache = None
            if cache_done:
                del _cache_holders[cache_key]
                cache = _caches.pop(cache_key, None)
        if engine_done:
            close_engine(self.url, self.token, self.cache_dir)
        if cache is not None:
            cache.close()


@dataclass
class Hold:
    """A Client held in the process ``pid`` (Client.hold). Released once, and only there: a
    copy in another process (pickled to a worker, or forked) holds nothing of this one's."""

    client: Client
    pid: int | None

    def release(self) -> None:
        with _caches_lock:  # two threads closing one Repo release it once
            pid, self.pid = self.pid, None
        if pid == os.getpid():
            self.client._release()
