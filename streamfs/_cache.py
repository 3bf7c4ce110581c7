"""The local block cache: verified blob blocks and immutable metadata on disk.

One cache directory is shared by every process on the machine (the mount,
DataLoader workers, the CLI). It holds three diskcache (SQLite) caches::

    DIR/blocks/   blob blocks, key "BLOB:INDEX"; most of the size limit
    DIR/meta/     trees, commits, block hash lists by key; 1/16 of the limit
    DIR/stats/    shared hit and miss counters; never evicted
    DIR/claims/   small blobs a process is prefetching now; each expires

Trees live apart from blocks so that streaming a large dataset, which
evicts blocks all the time, never evicts the trees a mount is walking.

Invariants and choices:

- **Never a partial block.** A value is written whole to a new file and the
  row that names it is committed afterwards (a batch: every file first,
  outside the transaction, then all the rows in one), so a reader sees a
  whole value or none. ``get`` also returns None (a miss)
  rather than fewer bytes than asked for.
- **A hit reads only what it serves.** Values of 32 KiB and more are files;
  ``get`` opens the file (``read=True``), seeks and reads ``length`` bytes,
  so a 128 KiB FUSE read of a 4 MiB block reads 128 KiB.
- **A block file's name is remembered.** A process keeps the file name of
  each block file it wrote or looked up (at most 100,000, ~27 MB), and opens it
  directly the next time: no SQL, and no hand-off of the GIL for it, which 8
  reader threads paid on every file of a warm epoch. diskcache names files
  at random and never reuses a name, so the file is this block's whole value
  or it is gone (evicted, by any process), and then the lookup goes to SQLite.
  A process about to read many blocks that others cached (a DataLoader
  worker reading a folder its siblings fetched) looks their names up in one
  query (``recall``): one SQL lookup per file was most of the cost of a
  warm file read in such a worker.
- **The limit holds after each write.** A write (one block, or a prefetch
  batch in one transaction) lands first and evicts after; ``stats()`` taken
  in between can see up to that write's bytes over the limit.
- **Eviction: least-recently-stored.** With it a hit is one read-only SQL
  lookup. 'least-recently-used' turns every hit (32 per block at FUSE's
  128 KiB) into a write transaction, which serializes all reader processes
  on SQLite's single writer lock. Training reads every block once an epoch,
  so once a dataset exceeds the cache LRU and FIFO evict alike; the cost of
  FIFO is re-fetching, once per cache turnover, a block that stayed hot.
- **Read files go before prefetched ones.** A small file prefetched for a
  shuffled epoch waits in the cache for a reader who may come late in the
  epoch; with a cache smaller than the data, plain store order evicted many
  before their reader came, and they were fetched twice. The small files
  read in a pass that fetches (prefetched or not) are marked spent
  (``spent``; the mark is written with the next batch that is stored, and
  looked for again in later ones if its block was not stored yet): their
  store time becomes ``SPENT_BASE`` minus the time they were read, so that
  eviction takes spent blocks first, the one read last first of all, then
  the rest. An epoch reads each file once: what this epoch has read is not
  wanted again before the next one, what only the last epoch read is still
  to come. Evicting the files read longest ago first (store order) took, in
  a second epoch through a cache half the data, the files it had yet to
  read: it fetched 0.97x the data again at 20 ms (one process, 8 threads),
  0.78x with the last read first. A process's prefetch window is
  at most half the cache (_view.py), so what waits for its reader is not
  evicted while spent blocks are there to go. DataLoader workers each have
  a window of their own; once the files they read outgrow the cache they
  share that half (``sharers``: the processes that claimed prefetches here
  in the last ``SHARERS_SECONDS``), or together they would outgrow it.
- **Hit and miss counts** are kept in memory per process and added to
  shared counters (diskcache ``incr``, atomic across processes) at most once
  a second and on ``stats()``, ``close()`` and exit, for the same reason:
  hits stay free of writes. Another live process's last second may be missing.
- **Processes.** No ``fork()`` happens while a thread is inside SQLite
  (``_ForkGuard``). diskcache opens one SQLite connection per thread and
  reopens it when it sees a new process id, so a BlockCache may cross
  ``fork()``: the child reconnects on first use and drops the parent's
  uncounted hits. For spawn, a BlockCache pickles as its directory and limit.
  Each process's limit applies to the writes it makes.
- **Prefetch claims.** DataLoader workers each plan their own prefetching
  into this one cache, and their plans overlap. A batch of small blobs
  claims them first (``claim``: a diskcache ``add`` with an expiry, atomic
  across processes), so two workers never fetch one blob at once; a claim
  left by a process that died expires after ``CLAIM_SECONDS``.
- **Read records.** A worker's planner sees only its own opens, and
  through a cache smaller than the data a file read is evicted first, after
  which it looked unread to the other workers' prefetchers: at 20 ms they
  fetched 14 % of an epoch again, files read a median of 16 s before
  (docs/benchmarks.md, session 35). So a worker whose files outgrow the
  cache records the time of each read (``spent(..., record=True)``), and a
  claim leaves out the blobs read since the claimer's pass began
  (``claim(read_since=...)``): a file read in this epoch is not
  wanted again before the next one, which may prefetch it as ever. Unlike
  a claim, a record says nothing of the reader as a prefetcher (session
  36's claims of reads made every worker count every other as a sharer,
  and shrank the windows to an eighth). A record is a row of a table of the
  blocks' own database that diskcache does not know of, written in the
  transaction of the ``put_many(record_reads=True)`` that marks the read
  spent: as diskcache values in a second transaction, on the claims'
  database, a gathered write with 40 reads took 1.1-2.5 ms more, against
  0.1-0.3 ms now (session 39).
- **Best effort.** A block the disk refuses (full, locked too long) is not
  cached; the read that fetched it still succeeds. Nothing here raises on
  a failed put.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import diskcache

from ._blocks import Block
from ._errors import InvalidInputError
from ._realos import real as real_os
from ._realos import write_all

log = logging.getLogger("streamfs.cache")

GiB = 1024**3
MiB = 1024**2
MAX_DEFAULT_SIZE = 20 * GiB  # the default limit: min(this, 10% of free space) ...
MIN_DEFAULT_SIZE = 256 * MiB  # ... but never below this (a few readahead windows)
META_SHARE = 16  # trees and commits get 1/16 of the limit
EVICTION_POLICY = "least-recently-stored"
WHERE_LIMIT = 100_000  # block files whose names a process remembers (~270 bytes each)
RECALL_LIMIT = 4096  # blocks one recall looks up (a bigger folder is recalled in part)
RECALL_CHUNK = 500  # keys a query: SQLite allowed 999 variables before 3.32
STATS_FLUSH_SECONDS = 1.0
CLAIM_SECONDS = 60.0  # a prefetch claim lasts this long (a batch lands in well under that)
READ_RECORD_SECONDS = 3600.0  # a read record outlives any pass it can matter to
READ_CULL_SECONDS = 60.0  # a process deletes read records older than that at most this often
# A spent block's store time is this minus when it was read: before 2002 for reads after that,
# so before every block not spent, and lowest (evicted first) for the latest read.
SPENT_BASE = 2e9
# Store times above this are of blocks not spent (stored after 2001); spent ones are below it.
UNSPENT_ABOVE = SPENT_BASE / 2
SPENT_LIMIT = 8192  # spent blocks waiting for the next write to mark them; older ones are dropped
# seconds a spent block not stored yet (its reader's own fetch) is looked for in later writes:
# its fetch's time bound and more. A count of writes ran out first: at RTT 20 ms, ~200 writes a
# second, four writes were over before half of the readers' own fetches were stored.
SPENT_SECONDS = 60.0
SHARERS_SECONDS = 15.0  # a process prefetching into a cache counts as a sharer this long ...
SHARERS_REFRESH = 5.0  # ... and says so again this often (with a claim)

_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024**4, "p": 1024**5}
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(?:i?b)?|b)?", re.IGNORECASE)

_DISK_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


# --------------------------------------------------------------------------- settings


def parse_size(text: str | int) -> int:
    """Bytes from ``'10G'``, ``'500M'``, ``'1.5GiB'``, ``'4096'`` (units are powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE_RE.fullmatch(str(text).strip())
        if match is None:
            raise InvalidInputError(f"invalid size {text!r}: want bytes or e.g. 500M, 10G")
        number, unit = match.group(1), (match.group(2) or "").lower()
        value = int(Decimal(number) * _UNITS[unit])
    if value <= 0:
        raise InvalidInputError(f"invalid size {text!r}: must be positive")
    return value


def default_cache_dir() -> Path:
    """``$STREAMFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/streamfs``, else ``~/.cache/streamfs``."""
    explicit = os.environ.get("STREAMFS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "streamfs"


def size_for_free_space(free: int) -> int:
    """The default limit for a disk with ``free`` bytes free."""
    return min(MAX_DEFAULT_SIZE, max(free // 10, MIN_DEFAULT_SIZE))


def default_cache_size(
    directory: str | os.PathLike[str] | None = None, size: str | int | None = None
) -> int:
    """``size`` if given, else ``$STREAMFS_CACHE_SIZE``, else from the free space."""
    if size is not None and size != "":
        return parse_size(size)
    env = os.environ.get("STREAMFS_CACHE_SIZE")
    if env:
        return parse_size(env)
    return _limit_from_free_space(str(Path(directory or default_cache_dir()).expanduser()))


@functools.cache
def _limit_from_free_space(directory: str) -> int:
    """Taken once a process: the free space moves with every write, and every Client of a
    process on one cache should name the same limit, so that they share one BlockCache."""
    return size_for_free_space(_free_space(Path(directory)))


def _free_space(path: Path) -> int:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent  # the cache directory may not exist yet: ask its disk
    return shutil.disk_usage(path).free


# --------------------------------------------------------------------------- fork safety


class _ForkGuard:
    """Keeps ``fork()`` from happening while a thread is inside SQLite.

    Python's sqlite3 releases the GIL while SQLite runs, and SQLite holds
    mutexes of its own in there; a child forked at that moment inherits them
    locked and hangs at its first cache call, or holds the database's write
    lock forever. Every call into diskcache takes the guard (shared, a counter);
    ``fork()`` waits until no call is inside, then proceeds.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False

    def enter(self) -> None:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._inside += 1

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            if self._inside == 0:
                self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self._forking = True
            while self._inside:
                self._cond.wait()

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()


_guard = _ForkGuard()
_forks = 0  # how many forks this process is from the one that imported this module


def _after_fork_in_child() -> None:
    global _guard, _forks
    _guard = _ForkGuard()  # the parent's other threads do not exist here
    _forks += 1


os.register_at_fork(
    before=lambda: _guard.before_fork(),
    after_in_parent=lambda: _guard.after_fork_in_parent(),
    after_in_child=_after_fork_in_child,
)


class _Guarded:
    """A diskcache.Cache whose every method call holds the fork guard."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._cache, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            guard = _guard
            guard.enter()
            try:
                return method(*args, **kwargs)
            finally:
                guard.leave()

        setattr(self, name, call)  # built once per name: every FUSE read makes such a call
        return call

    def __contains__(self, key: str) -> bool:
        guard = _guard
        guard.enter()
        try:
            return key in self._cache
        finally:
            guard.leave()

    def __len__(self) -> int:
        guard = _guard
        guard.enter()
        try:
            return len(self._cache)
        finally:
            guard.leave()


class _WholeWriteDisk(diskcache.Disk):  # type: ignore[misc]  # untyped library
    """diskcache's Disk, except for how a block file is named and written.

    - **Written in one piece.** diskcache writes bytes through ``io.BytesIO`` iterated line by
      line (strace: 30,000 ``write``s for a 128 MiB file) with a buffered ``open`` and a
      ``makedirs`` first; here a new file is ``open(O_EXCL)``, one ``write``, ``close``.
    - **256 folders, made once.** diskcache names a file ``ab/cd/REST.val``: 65,536 possible
      folders, so nearly every block of a cold epoch made a new folder (``mkdir`` is an ext4
      inode and a directory block; perf put ~half of a cold epoch's cache-writer kernel time in
      ``ext4_mkdir``), and an eviction removed it again. Here a name is ``ab/REST.val`` and a
      folder is kept when it empties. Names stay random and never reused, which the remembered
      file names rely on; files named by older versions (two levels) are still read and removed.

    Small values still go inline into SQLite.
    """

    remember: Callable[[str, str], None] | None = None  # told (key, path) of each file written

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = None) -> tuple[str, str]:
        hex_name = os.urandom(16).hex()
        name = f"{hex_name[:2]}/{hex_name[2:]}.val"
        return name, os.path.join(self._directory, name)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if type(value) is not bytes and type(value) is not bytearray:
            return super().store(value, read, key=key)
        stored = self.store_block(value)
        if self.remember is not None and isinstance(key, str):
            self.remember(key, self.path_of(stored[2]))
        return stored

    def store_block(self, value: bytes | bytearray) -> tuple[int, int, str | None, Any]:
        """diskcache's ``store`` of a block (a bytearray: received in place, see
        _blocks.Block): its own new file, or inline in SQLite if small. Nothing remembered."""
        if len(value) >= self.min_file_size:
            name, path = self.filename()
            _write_new_file(path, value)
            return len(value), diskcache.core.MODE_BINARY, name, None
        # inline, as bytes: diskcache would pickle a bytearray
        return super().store(bytes(value), False)  # type: ignore[no-any-return]

    def path_of(self, name: str | None) -> str:
        """The path of a block file named ``name``; "" for a block kept in SQLite."""
        return "" if name is None else os.path.join(self._directory, name)

    def remove(self, file_path: str) -> None:
        if file_path.count("/") > 1:  # an older version's ab/cd/ name: its folders go too
            super().remove(file_path)
            return
        with contextlib.suppress(OSError):  # another process may have removed it first
            real_os.unlink(os.path.join(self._directory, file_path))


def _write_new_file(path: str, data: bytes | bytearray) -> None:
    """``data`` as the new file ``path`` (never an existing one), its folder made if missing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = real_os.open(path, flags, 0o666)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            real_os.mkdir(os.path.dirname(path))
        fd = real_os.open(path, flags, 0o666)
    try:
        write_all(fd, data)
    except BaseException:
        real_os.close(fd)
        with contextlib.suppress(OSError):
            real_os.unlink(path)
        raise
    real_os.close(fd)


# diskcache's row for a value added with ``Cache.add(key, value)``: no expiry, no tag
_INSERT_ROW = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag,"
    " size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, ?, ?, ?)"
)


def _rows_for_keys(
    cache: diskcache.Cache, query: str, keys: list[str], *params: Any
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query`` (whose ``{marks}`` is the list of keys, after ``params``) for
    ``keys``, a query for each RECALL_CHUNK of them."""
    for chunk, marks in _chunks(keys):
        yield from cache._sql(query.format(marks=marks), (*params, *chunk)).fetchall()


def _chunks(keys: list[str]) -> Iterator[tuple[list[str], str]]:
    """``keys`` RECALL_CHUNK at a time, each with its ``?,?,...`` for an ``IN (...)``."""
    for start in range(0, len(keys), RECALL_CHUNK):
        chunk = keys[start : start + RECALL_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


_Row = tuple[str, float, float, int, int, str | None, Any]  # key, ..., filename, value


def _write_blocks(cache: diskcache.Cache, values: dict[str, Block]) -> list[_Row]:
    """The files of the blocks not cached yet, written outside any transaction, and the
    rows that will name them (see ``_insert_rows``).

    Writing them inside the transaction held SQLite's one write lock for as long as 16 MB
    of files took: with 8 DataLoader workers writing, a prefetched blob waited a median of
    0.67 s (4.4 s at the 90th percentile) to be seen by the other workers, which fetched
    7-13 % of the blobs again meanwhile (docs/benchmarks.md, session 35). A file no row names
    is read by no one; if this process dies before the rows are committed, it stays behind
    unnamed, as it did when the transaction was cut short.
    """
    query = "SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks})"
    present = {key for (key,) in _rows_for_keys(cache, query, list(values))}
    disk, now = cache.disk, time.time()
    rows: list[_Row] = []
    try:
        for key, data in values.items():
            if key not in present:
                size, mode, filename, value = disk.store_block(data)
                rows.append((key, now, now, size, mode, filename, value))
    except BaseException:
        _remove_files(disk, rows)
        raise
    return rows


def _insert_rows(cache: diskcache.Cache, rows: list[_Row]) -> list[_Row]:
    """In the caller's transaction, ``cache.add`` for each of ``rows`` whose key is still
    not cached (another process may have added it since: the first one stays, as with
    ``add``). Returns the rows added.

    diskcache's ``add`` is two statements and ~60 Python calls a value, each statement a
    hand-off of the interpreter lock: ~10 % of the reading process's CPU in a cold epoch of
    small files (a block each). Here one query finds the keys present and the rest go in at
    once; the table's triggers keep diskcache's count and size as ``add`` does.
    """
    query = "SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks})"
    present = {key for (key,) in _rows_for_keys(cache, query, [row[0] for row in rows])}
    new = [row for row in rows if row[0] not in present]
    cache._con.executemany(_INSERT_ROW, new)
    return new


def _remove_files(disk: _WholeWriteDisk, rows: list[_Row]) -> None:
    for row in rows:
        if row[5] is not None:
            disk.remove(row[5])


def _cull(cache: diskcache.Cache) -> None:
    """Evict down to the limit, if over it. diskcache's ``cull`` first deletes expired
    values, a write transaction even when none has expired (blocks never expire): one more
    turn of the write lock every writer process waited for, at every write."""
    if cache.volume() > cache.size_limit:
        cache.cull(retry=True)


# Read records (see the module's docstring): a blob's last recorded read, wall time. One row
# a blob, replaced by a later read; no index but the key, so a record costs one row write.
_READS_TABLE = (
    "CREATE TABLE IF NOT EXISTS StreamfsReads (blob TEXT PRIMARY KEY, read_time REAL NOT NULL)"
    " WITHOUT ROWID"
)
_RECORD_READ = "INSERT OR REPLACE INTO StreamfsReads(blob, read_time) VALUES (?, ?)"


def _record_reads(cache: diskcache.Cache, reads: list[tuple[str, float]], cull: bool) -> None:
    """In the caller's transaction, record the reads ``(blob id, wall time)``; with ``cull``,
    first delete the records older than READ_RECORD_SECONDS (a scan of at most a row for
    every file read in that time: cheaper now and then than an index kept at every read)."""
    if cull:
        cache._con.execute(
            "DELETE FROM StreamfsReads WHERE read_time < ?", (time.time() - READ_RECORD_SECONDS,)
        )
    cache._con.executemany(_RECORD_READ, reads)  # oldest first: a blob's last read stays


def _read_since(cache: diskcache.Cache, blobs: list[str], since: float) -> set[str]:
    """The blobs of ``blobs`` with a read recorded at ``since`` (wall time) or later."""
    query = "SELECT blob FROM StreamfsReads WHERE read_time >= ? AND blob IN ({marks})"
    return {blob for (blob,) in _rows_for_keys(cache, query, blobs, since)}


def _take_all(queue: collections.deque[tuple[str, float]]) -> list[tuple[str, float]]:
    """What ``queue`` holds, emptying it (other threads may append meanwhile)."""
    return [queue.popleft() for _ in range(len(queue))]


def _mark_spent(cache: diskcache.Cache, spent: list[tuple[str, float]]) -> set[str]:
    """Set the store time of these blocks (``(key, when read)``, monotonic time, oldest first)
    to SPENT_BASE minus the time they were read, the cached ones, in the caller's transaction:
    least-recently-stored eviction then takes them before any block not spent, the one read
    last first. Returns the keys found in the cache."""
    query = "SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks})"
    found = {key for (key,) in _rows_for_keys(cache, query, [key for key, _ in spent])}
    behind = time.time() - time.monotonic()  # wall clock minus monotonic clock
    update = "UPDATE Cache SET store_time = ? WHERE key = ? AND raw = 1"
    marks = [(SPENT_BASE - (behind + t), key) for key, t in spent if key in found]
    cache._con.executemany(update, marks)  # a key read twice: its last read counts
    return found


class _PerOsThread:
    """Where diskcache keeps its SQLite connection for a thread, for threads Python did not start.

    diskcache keeps one in a ``threading.local``. A thread Python did not start (libfuse's,
    calling the mount through ctypes) gets a new Python thread state for every callback, and
    with it an empty ``threading.local``: every FUSE read that asked the cache opened a new
    connection and read the settings again (~370 µs, against ~5 µs for the lookup itself).
    Such a thread keeps its OS thread id across callbacks, so its slot is kept by that id.

    A thread Python started keeps its slot in a ``threading.local`` as before, which frees
    the connection when the thread ends. A foreign thread's slot stays after it ends, until
    its id comes back (an id is reused only once its thread has ended, so no two live threads
    share a slot, and sqlite3, which checks the OS thread id, accepts the connection); at most
    ``limit`` are kept, the oldest dropped first (its connection closes once unused; a live
    thread that lost its slot reconnects). diskcache's own check of the process id still
    closes a connection that a fork carried over.
    """

    def __init__(self, limit: int = 32) -> None:
        object.__setattr__(self, "_own", threading.local())
        object.__setattr__(self, "_foreign", {})
        object.__setattr__(self, "_limit", limit)
        object.__setattr__(self, "_lock", threading.Lock())

    def _slot(self, create: bool) -> dict[str, Any] | None:
        slot: dict[str, Any] | None = getattr(self._own, "slot", None)
        if slot is not None:
            return slot
        ident = threading.get_ident()
        slot = self._foreign.get(ident)
        if slot is not None or not create:
            return slot
        slot = {}
        if not isinstance(threading.current_thread(), threading._DummyThread):
            self._own.slot = slot
            return slot
        with self._lock:
            self._foreign[ident] = slot
            while len(self._foreign) > self._limit:
                del self._foreign[next(iter(self._foreign))]
        return slot

    def __getattr__(self, name: str) -> Any:
        slot = self._slot(create=False)
        if slot is None or name not in slot:
            raise AttributeError(name)
        return slot[name]

    def __setattr__(self, name: str, value: Any) -> None:
        slot = self._slot(create=True)
        assert slot is not None
        slot[name] = value

    def __delattr__(self, name: str) -> None:
        slot = self._slot(create=False)
        if slot is None or name not in slot:
            raise AttributeError(name)
        del slot[name]

    def foreign_threads(self) -> int:
        return len(self._foreign)


def _open_cache(directory: str, **settings: Any) -> _Guarded:
    guard = _guard
    guard.enter()
    try:
        cache = diskcache.Cache(directory, disk=_WholeWriteDisk, **settings)
        if isinstance(getattr(cache, "_local", None), threading.local):  # see _PerOsThread
            cache.close()  # the connection set-up made, in the old place
            cache._local = _PerOsThread()
    finally:
        guard.leave()
    return _Guarded(cache)


# --------------------------------------------------------------------------- counters


class _Counters:
    """This process's hits and misses, added to the shared totals now and then.

    Guarded by ``_lock``: ``_hits``, ``_misses``, ``_last_flush``. ``_forks``
    says which process the counts belong to; a forked child starts at zero.
    """

    def __init__(self, store: _Guarded) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._forks = _forks
        self._hits = self._misses = 0
        self._last_flush = time.monotonic()

    def count(self, hit: bool) -> None:
        if self._forks != _forks:  # every cache hit comes here: no getpid() call
            self._adopt_process()
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1
            due = time.monotonic() - self._last_flush >= STATS_FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        self._adopt_process()
        with self._lock:
            hits, misses, self._hits, self._misses = self._hits, self._misses, 0, 0
            self._last_flush = time.monotonic()
        try:
            for key, delta in (("hits", hits), ("misses", misses)):
                if delta:
                    self._store.incr(key, delta)
        except _DISK_ERRORS as exc:
            log.warning("cache statistics not saved: %s", exc)

    def close(self) -> None:
        self.flush()
        self._store.close()

    def totals(self) -> tuple[int, int]:
        self.flush()
        return int(self._store.get("hits", 0)), int(self._store.get("misses", 0))

    def reset(self) -> None:
        with self._lock:
            self._hits = self._misses = 0
        self._store.clear(retry=True)

    def _adopt_process(self) -> None:
        if self._forks != _forks:  # forked: the parent's counts are the parent's
            self._lock = threading.Lock()
            self._forks = _forks
            self._hits = self._misses = 0


# --------------------------------------------------------------------------- the cache


def _block_key(blob: str, index: int) -> str:
    if index < 0:
        raise ValueError(f"invalid block index {index}")
    return f"{blob}:{index}"


def _read_slice(
    value: bytes | IO[bytes], offset: int, length: int | None, out: memoryview | None = None
) -> bytes | memoryview | None:
    """Bytes ``[offset, offset + length)`` of a stored value, or None if it is shorter;
    with ``out``, read into it (``length`` is its length) and return it."""
    if isinstance(value, bytes):  # small values live in SQLite and come back whole
        size = len(value)
        end = size if length is None else offset + length
        if not offset <= end <= size:
            return None
        if out is None:
            return value[offset:end]
        out[:] = memoryview(value)[offset:end]
        return out
    with value as handle:
        return _read_fd(handle.fileno(), offset, length, out)


def _read_file(
    path: str, offset: int, length: int | None, out: memoryview | None = None
) -> bytes | memoryview | None:
    """Like _read_slice, of a block file by name: three system calls when ``length`` is
    known (open, pread, close), not the eight of a buffered ``open().read()``; with many
    reader threads each one is a hand-off of the interpreter lock."""
    fd = real_os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a cache file is never hooked
    try:
        return _read_fd(fd, offset, length, out)
    finally:
        os.close(fd)


def _read_fd(
    fd: int, offset: int, length: int | None, out: memoryview | None
) -> bytes | memoryview | None:
    if out is not None:  # straight into the caller's buffer: no copy in Python
        return out if os.preadv(fd, [out], offset) == len(out) else None
    if length is None:
        length = os.fstat(fd).st_size - offset
        if length < 0:
            return None
    data = os.pread(fd, length, offset)
    return data if len(data) == length else None


class BlockCache:
    """Blocks by (blob id, block index) and metadata by key, under one size limit."""

    def __init__(self, directory: str | os.PathLike[str], size_limit: int | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.size_limit = default_cache_size(self.directory, size_limit)
        meta_limit = max(1, self.size_limit // META_SHARE)
        self._blocks = self._open("blocks", self.size_limit - meta_limit)
        # Eviction runs once per write (see put_many), not inside every add: this process only
        # (the setting is not saved), and every writer of blocks is put or put_many.
        self._blocks.reset("cull_limit", 0, update=False)
        self._create_reads_table()
        self._reads_culled = 0.0  # monotonic time this process last culled the read records
        self._meta = self._open("meta", meta_limit)
        self._counters = _Counters(self._open("stats", 0, eviction_policy="none"))
        # expired claims are deleted by later claims (diskcache culls them on add)
        self._claims = self._open("claims", 0, eviction_policy="none")
        # key -> the file diskcache keeps that block in, as last written or seen here; "" for
        # a block small enough to be kept in SQLite itself (known to be cached, read from there)
        self._where: dict[str, str] = {}
        self._blocks._cache.disk.remember = self._remember
        # (block key, when it was read) of blocks read and not yet marked spent, oldest first
        self._spent: collections.deque[tuple[str, float]] = collections.deque(maxlen=SPENT_LIMIT)
        # (blob id, wall time) of reads to record for the other processes' claims (spent)
        self._reads: collections.deque[tuple[str, float]] = collections.deque(maxlen=SPENT_LIMIT)
        # processes that claimed prefetches in this cache lately, this one included (claim)
        self.sharers = 1
        self._announced = (0, 0.0)  # (pid, monotonic time) of this process's last count
        weakref.finalize(self, self._counters.flush)  # counts survive an exit without close()

    def _create_reads_table(self) -> None:
        guard = _guard
        guard.enter()
        try:
            self._blocks._cache._sql(_READS_TABLE)
        finally:
            guard.leave()

    def _open(self, name: str, limit: int, eviction_policy: str = EVICTION_POLICY) -> Any:
        return _open_cache(
            str(self.directory / name), size_limit=limit, eviction_policy=eviction_policy
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (BlockCache, (str(self.directory), self.size_limit))

    # ----------------------------------------------------------------- blocks

    def get(
        self, blob: str, index: int, offset: int = 0, length: int | None = None
    ) -> bytes | None:
        """``length`` bytes (None: to the end) from ``offset`` in a cached block, or None."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid slice of {length} bytes at {offset}")
        data = self._lookup(_block_key(blob, index), offset, length)
        self._counters.count(hit=data is not None)
        assert not isinstance(data, memoryview)
        return data

    def get_into(self, blob: str, index: int, offset: int, out: memoryview) -> bool:
        """Fill ``out`` with the bytes from ``offset`` in a cached block; False if the
        cache lacks them (``out`` may then hold anything)."""
        if offset < 0:
            raise ValueError(f"invalid slice of {len(out)} bytes at {offset}")
        found = self._lookup(_block_key(blob, index), offset, len(out), out) is not None
        self._counters.count(hit=found)
        return found

    def _lookup(
        self, key: str, offset: int, length: int | None, out: memoryview | None = None
    ) -> bytes | memoryview | None:
        where = self._where.get(key)
        if where:
            # no SQLite lookup: the file is this block's, or gone (evicted since; diskcache
            # names files at random and never reuses a name)
            try:
                return _read_file(where, offset, length, out)
            except OSError:
                self._where.pop(key, None)
        try:
            value = self._blocks.get(key, read=True)  # a file handle for values >= 32 KiB
            if value is None:
                return None
            self._remember(key, "" if isinstance(value, bytes) else value.name)
            return _read_slice(value, offset, length, out)
        except _DISK_ERRORS as exc:
            log.warning("cache lookup of %s failed, treated as a miss: %s", key, exc)
            return None

    def open_block_file(self, blob: str, index: int, size: int) -> int | None:
        """A read-only descriptor of the file that holds a cached block of ``size`` bytes,
        if this process knows which file that is (written or looked up here, or recalled:
        no SQLite); counted as a hit. None if it does not know, or the file is gone (evicted)
        or not that size. The descriptor keeps the bytes even if the block is evicted later."""
        key = _block_key(blob, index)
        where = self._where.get(key)
        if not where:
            return None
        try:
            fd = int(real_os.open(where, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            self._where.pop(key, None)
            return None
        try:
            whole = os.fstat(fd).st_size == size
        except OSError:
            whole = False
        if not whole:
            os.close(fd)
            self._where.pop(key, None)
            return None
        self._counters.count(hit=True)
        return fd

    def known(self, blob: str, index: int) -> bool:
        """Whether this process knows that a block is cached: it knows the block's file, or
        that SQLite keeps the block itself. No I/O; the block may have been evicted since,
        which a read of it then finds out."""
        return _block_key(blob, index) in self._where

    def _remember(self, key: str, path: str) -> None:
        if len(self._where) >= WHERE_LIMIT:
            self._where.clear()
        self._where[key] = path

    def recall(self, blocks: Iterable[tuple[str, int]]) -> tuple[int, bool]:
        """Look up where the files of many cached blocks are, one query for hundreds, and
        remember them (see ``_lookup``). For a process about to read blocks that other
        processes cached: their reads then skip SQLite. Best effort.

        Returns how many it found, and whether this process now knows the file of every
        block of ``blocks`` (then recalling them again would find nothing new)."""
        where = self._where
        # lazily: a folder of a million files costs as much as one of RECALL_LIMIT (plus the
        # files this process knows already, at most WHERE_LIMIT)
        unknown = (k for k in (_block_key(b, i) for b, i in blocks) if k not in where)
        keys = list(itertools.islice(unknown, RECALL_LIMIT))
        if not keys:
            return 0, True
        try:
            found = sum(self._look_up(keys).values())  # those with a file of their own
        except _DISK_ERRORS as exc:
            log.warning("cache recall of %d blocks failed: %s", len(keys), exc)
            return 0, False
        return found, found == len(keys) < RECALL_LIMIT

    def _look_up(self, keys: list[str]) -> dict[str, bool]:
        """Which of ``keys`` are cached, each with whether its block has a file of its own
        (else SQLite keeps it), in one query per RECALL_CHUNK of them; the files are
        remembered (see ``_lookup``). Disk errors are the caller's."""
        guard = _guard
        guard.enter()
        try:
            cache = self._blocks._cache
            query = (  # diskcache's own table (what ``contains`` asks); files have a filename
                "SELECT key, filename FROM Cache WHERE raw = 1"
                " AND (expire_time IS NULL OR expire_time > ?) AND key IN ({marks})"
            )
            found = {}
            for key, name in _rows_for_keys(cache, query, keys, time.time()):
                found[key] = name is not None
                if name is not None:
                    self._remember(key, os.path.join(cache.directory, name))
            return found
        finally:
            guard.leave()

    def put(self, blob: str, index: int, data: bytes | bytearray | memoryview) -> None:
        """Store a whole, verified block (content addressed: an existing one is kept)."""
        key = _block_key(blob, index)
        guard = _guard
        guard.enter()
        try:
            cache = self._blocks._cache
            cache.add(key, bytes(data))  # bytes, not bytearray: big ones go to files
            _cull(cache)
        except _DISK_ERRORS as exc:
            log.warning("block %s not cached: %s", key, exc)
        finally:
            guard.leave()

    def put_many(self, blocks: dict[tuple[str, int], Block], record_reads: bool = False) -> None:
        """Store whole, verified blocks: their files, then their rows in one transaction.

        With ``record_reads`` (a DataLoader worker), the reads this marks spent are also
        recorded, in the same transaction, for the other processes' prefetch claims
        (``claim``)."""
        reads = _take_all(self._reads)
        if not record_reads:
            reads = []
        now = time.monotonic()
        cull = bool(reads) and now - self._reads_culled >= READ_CULL_SECONDS
        if cull:
            self._reads_culled = now
        guard = _guard
        guard.enter()
        try:
            cache = self._blocks._cache
            rows = _write_blocks(cache, {_block_key(b, i): data for (b, i), data in blocks.items()})
            spent = self._take_spent()
            try:
                with cache.transact(retry=True):
                    added = _insert_rows(cache, rows)
                    found = _mark_spent(cache, spent)
                    if reads:
                        _record_reads(cache, reads, cull)
            except BaseException:
                _remove_files(cache.disk, rows)
                raise
            if len(added) < len(rows):  # cached by another process meanwhile: its file stays
                keys = {row[0] for row in added}
                _remove_files(cache.disk, [row for row in rows if row[0] not in keys])
            for row in added:
                self._remember(row[0], cache.disk.path_of(row[5]))
            _cull(cache)
            # a block read before it was stored (fetched by its reader, written after this)
            stale = time.monotonic() - SPENT_SECONDS
            self._spent.extend((k, t) for k, t in spent if k not in found and t > stale)
        except _DISK_ERRORS as exc:
            log.warning("%d blocks not cached: %s", len(blocks), exc)
        finally:
            guard.leave()

    def spent(self, blobs: Iterable[str], record: bool = False) -> None:
        """Small blobs that have been read: they go first when the cache evicts, before
        blocks still waiting for their reader. Marked in the next ``put_many`` (a write
        transaction anyway; one not stored yet is looked for in those of SPENT_SECONDS); a
        process that writes nothing more leaves them in plain store order, as before.
        ``record``: their reads are also recorded by that ``put_many`` if it is told to
        (a DataLoader worker reading files that outgrow the cache: nothing read is evicted
        otherwise, and a record would be a write for nothing)."""
        blobs = list(blobs)
        now = time.monotonic()
        self._spent.extend((_block_key(b, 0), now) for b in blobs)
        if record:
            wall = time.time()
            self._reads.extend((b, wall) for b in blobs)

    def _take_spent(self) -> list[tuple[str, float]]:
        return _take_all(self._spent)

    def unread(self, blobs: list[str]) -> set[str]:
        """Of the small blobs ``blobs``, those cached and not read yet: marked spent by no
        process (a read is marked at its process's next write). On a disk error, all of
        them."""
        guard = _guard
        guard.enter()
        try:
            cache = self._blocks._cache
            query = "SELECT key FROM Cache WHERE raw = 1 AND store_time > ? AND key IN ({marks})"
            keys = [_block_key(b, 0) for b in blobs]
            rows = _rows_for_keys(cache, query, keys, UNSPENT_ABOVE)
            return {key.rpartition(":")[0] for (key,) in rows}
        except _DISK_ERRORS as exc:
            log.warning("cache lookup of %d blobs failed, taken as unread: %s", len(blobs), exc)
            return set(blobs)
        finally:
            guard.leave()

    def contains(self, blob: str, index: int) -> bool:
        """Whether a block is cached (not counted as a hit or a miss)."""
        try:
            return _block_key(blob, index) in self._blocks
        except _DISK_ERRORS as exc:
            log.warning("cache lookup of %s:%d failed, treated as a miss: %s", blob, index, exc)
            return False

    def cached(self, blocks: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those of ``blocks`` that are cached (not counted as hits or misses), in one query
        per RECALL_CHUNK of them; where their files are is remembered, as ``recall`` does. A
        prefetch batch asks this of its blobs: ``contains`` for each was a statement and two
        hand-offs of the interpreter lock a blob, and with 8 reader threads waiting on that
        lock the batch's look took 7.6 ms (mean) of the worker thread's time instead of 4
        (docs/benchmarks.md, session 48). On a disk error, none (fetching a cached block
        again is only a waste)."""
        keys = {_block_key(blob, index): (blob, index) for blob, index in blocks}
        if not keys:
            return set()
        try:
            return {keys[key] for key in self._look_up(list(keys))}
        except _DISK_ERRORS as exc:
            log.warning("cache lookup of %d blocks failed, treated as misses: %s", len(keys), exc)
            return set()

    def claim(
        self, blobs: list[str], seconds: float = CLAIM_SECONDS, read_since: float | None = None
    ) -> list[str]:
        """Of the small blobs ``blobs``, those no other process claimed in the last
        ``seconds`` and, with ``read_since`` (a wall time), none read since then (see
        ``put_many``); this process claims them for that long, to prefetch them. On a disk
        error, all of them (a blob fetched twice is only a waste)."""
        guard = _guard
        guard.enter()
        try:
            if read_since is not None:  # a read recorded meanwhile is only a blob fetched twice
                read = _read_since(self._blocks._cache, blobs, read_since)
                blobs = [b for b in blobs if b not in read]
            cache = self._claims._cache
            pid = os.getpid()
            with cache.transact(retry=True):
                self._count_sharers(cache, pid)
                return [b for b in blobs if cache.add(b, pid, expire=seconds)]
        except _DISK_ERRORS as exc:
            log.warning("prefetch claims failed, fetching anyway: %s", exc)
            return blobs
        finally:
            guard.leave()

    def _count_sharers(self, claims: diskcache.Cache, pid: int) -> None:
        """Say, every SHARERS_REFRESH seconds, that this process prefetches here, and count,
        at every claim, the processes that said so in the last SHARERS_SECONDS (``sharers``).
        DataLoader workers each keep a prefetch window of their own; they share the cache's
        room for it. Counted only when it said so, a worker's first count was of the workers
        that had claimed before it, often one or two of 8: for 5 s their windows together
        outgrew a cache half the data, and at 2 ms of RTT 8 workers fetched 1.31-1.36x the
        data in epoch 1, a third of what they prefetched in its first 3 s evicted unread
        (1.02x since; docs/benchmarks.md, session 42). The count reads a few rows of the
        transaction the claim holds anyway."""
        now = time.monotonic()
        last_pid, last = self._announced
        if last_pid != pid or now - last >= SHARERS_REFRESH:
            self._announced = (pid, now)
            claims.set(f"sharer:{pid}", 1, expire=SHARERS_SECONDS)
        query = "SELECT COUNT(*) FROM Cache WHERE key >= ? AND key < ? AND expire_time > ?"
        (count,) = claims._sql(query, ("sharer:", "sharer;", time.time())).fetchone()
        self.sharers = max(1, int(count))

    # The names the fetcher and reader use.
    get_block = get
    put_block = put
    has_block = contains

    # ----------------------------------------------------------------- metadata

    def get_meta(self, key: str) -> bytes | None:
        """An immutable object (tree, commit, block list) by key, e.g. ``'tree:ID'``."""
        try:
            value = self._meta.get(key)
        except _DISK_ERRORS as exc:
            log.warning("metadata lookup failed, treated as a miss: %s", exc)
            return None
        return value if isinstance(value, bytes) else None

    def put_meta(self, key: str, data: bytes, expire: float | None = None) -> None:
        """An immutable object by key (the first one stored stays); with ``expire``, a value
        not returned after that many seconds, which a newer one replaces (signed URLs shared
        between processes, _view._sign_ahead)."""
        try:
            if expire is None:
                self._meta.add(key, bytes(data))
            else:
                self._meta.set(key, bytes(data), expire=expire)
        except _DISK_ERRORS as exc:
            log.warning("%s not cached: %s", key, exc)

    # ----------------------------------------------------------------- upkeep

    def stats(self) -> dict[str, int]:
        """Bytes on disk, the limit, counts, and hits and misses of every process."""
        hits, misses = self._counters.totals()
        return {
            "size": int(self._blocks.volume()) + int(self._meta.volume()),
            "limit": self.size_limit,
            "blocks": len(self._blocks),
            "meta_objects": len(self._meta),
            "hits": hits,
            "misses": misses,
        }

    def clear(self) -> None:
        """Remove every block and metadata object and reset the counters."""
        self._where.clear()
        self._blocks.clear(retry=True)
        self._blocks._cache._sql("DELETE FROM StreamfsReads")
        self._meta.clear(retry=True)
        self._claims.clear(retry=True)
        self._counters.reset()

    def close(self) -> None:
        """Save this process's counts and close this thread's database connections.

        The cache stays usable: diskcache reconnects on the next call.
        """
        self._counters.close()
        self._blocks.close()
        self._meta.close()
        self._claims.close()

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BlockCache({str(self.directory)!r}, size_limit={self.size_limit})"
