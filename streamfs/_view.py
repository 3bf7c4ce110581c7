"""RepoView: one commit of one repository, pinned, as path -> entry. Trees load lazily.

A directory's tree is fetched the first time someone looks into it, checked
against its id, and kept in memory and in the shared disk cache (trees are
immutable, keyed by id), so a second process or mount of the same commit
asks the server nothing. A missing name in a known directory is answered
here, with no request.

Opening a file through the view (``reader``) also feeds the sibling
planner (``_siblings``), which prefetches the small files of folders that are
being read through.

Thread safety: any thread may call any method. The in-memory tree map is
guarded by ``_lock``, the planner by ``_plan_lock``; both are held only for
in-memory work, never across I/O.

Fork (a DataLoader worker made by fork, Linux's default): the child keeps the
trees already loaded, and starts with new locks, no loads in flight (the
parent's threads that ran them are not in the child), a sibling planner of
its own, salted with its own pid so that workers spread over a folder instead
of all prefetching the same files, and no folder recalled (its block cache is
a new one, which knows no block file's name).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat as stat_mod
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future

import trio

from ._blobfront import MAX_IDS
from ._client import Client
from ._engine import Engine
from ._errors import NotADirError, PathNotFoundError, StreamfsError
from ._fetch import BlobRef, Told
from ._model import (
    BLOCK_SIZE,
    Commit,
    Entry,
    Tree,
    check_path,
    decode_commit,
    decode_tree,
    encode_commit,
    object_id,
)
from ._reader import BlobReader, cached_small
from ._remote import Remote
from ._siblings import SiblingPlanner

MAX_TREES_IN_MEMORY = 4096
# Decoded entries cost ~400 bytes each (name, id, index): a 1,000,000-entry listing would keep
# ~400 MB. Beyond this many, the least recently used trees are dropped (they stay on disk):
# find over 1,000,000 entries peaks at 264 MB in the daemon, 83 MB in the API (docs/benchmarks.md).
MAX_ENTRIES_IN_MEMORY = 100_000
# Prefetched and never opened: at most this, plus 4x what was read, plus 4x what prefetching saved
# (_siblings.py) ...
PREFETCH_BASE = 32 * 1024 * 1024
# ... and at most half the cache. A quarter left a third of a full-size epoch (20,000 files,
# 2.4 GB, a 3.1 GB cache) to one request a file: the window could not cover what was left
# (docs/benchmarks.md). Prefetched blocks are the newest in the cache, so the other half is
# what eviction takes from first.
PREFETCH_CAP_SHARE = 2
# ... but in a first pass through a cache smaller than the files being read, more: what the pass
# has read goes first there (BlockCache.spent), so a window of more than half evicts no file
# still waiting for its reader, and a shuffled epoch finds its next file prefetched about as often
# as the window's share of the files it has yet to read; each file it lacks costs its reader a
# round trip. 8 threads at 20 ms through a cache half the data: half ~700 files/s, 3/4 899-965,
# 0.85 1,019-1,025, 0.9 1,054-1,082; 8 processes at 3/4 681-710, 0.85 713-782, 0.9 792-825
# (docs/benchmarks.md, session 40: the second epoch was a little slower each time). The rest of
# the cache holds what the window does not count (files read and not yet evicted, the readers'
# own fetches, the database; trees and commits keep 1/16, BlockCache), a few files a reader
# whatever the cache's size: without room for them prefetches evict each other (at 1.0, 8
# processes fetched 1.40x the data; at 0.85 and 0.9 a 4 MB cache fetched 2-9 of 400 files
# twice). So 0.85 of the cache where that leaves CRAMPED_FIRST_PASS_SLACK out of it, down to
# 3/4 (first_pass_cap). A later pass finds the cache full of files it has yet to read, which a
# bigger window evicts: half there (3/4 read epoch 2 at 1,112 files/s, fetching 0.78x the data;
# half 1,300-1,340, 0.69x).
CRAMPED_FIRST_PASS_CAP = 0.85
CRAMPED_FIRST_PASS_FLOOR = 0.75
CRAMPED_FIRST_PASS_SLACK = 16 * 1024 * 1024
# A DataLoader worker's full window: at most this often, the picks that other workers have read
# since they landed leave it (SiblingPlanner.landed_ids), in one cache query.
RELEASE_SECONDS = 0.25
# A DataLoader worker prefetches nothing while a miss costs it less than this: the least round
# trip of its recent GETs of the blob front (DirectGets.round_trip). Most of what a worker
# prefetches is read by the others, each from the cache, after claims, landing and letting go
# (SiblingPlanner, "Processes"): as much CPU a file as a reader's own GET or more, and at a
# round trip this short the reader hardly waits for that GET. 8 processes at RTT 0 (under 0.25 ms
# at best) through a cache half the data, in alternation with prefetching workers: epoch 1
# 1.22-1.51x the files/s, fetching 1.01x the data against 1.03-1.30x, epoch 2 1.31-1.62x;
# through a cache that holds the data 0.95-1.25x. At 2 ms of RTT prefetching paid in epoch 1
# (1,730 against 1,305 files/s), not in epoch 2 (2,281 against 2,447) (docs/benchmarks.md,
# session 42). Threads of one process (and a mount) take what they prefetched from memory;
# they keep prefetching (8 threads at RTT 0: 1,467-1,914 files/s against 1,247-1,384).
WORKER_PREFETCH_ROUND_TRIP = 0.001
# Until its first GET of the front comes back, a worker's misses are taken as cheap: at most
# this many of them (then a front whose GETs fail, or whose URLs it never gets, lets it
# prefetch). The first miss in each folder it reads is no such GET (the folder's URLs are asked
# at that miss), so one comes at its first second miss in a folder: the 13th miss or so at
# random through 100 folders, by the 32nd in all but 1 worker in 100.
UNMEASURED_MISSES = 32
MAX_RECALLED = 4096  # folders a view remembers having recalled (then it starts over)
# Folders whose trees a view finds by their path in one look-up (RepoView.locate); then it
# starts over. A warm epoch through the hooks or the API looks up 20,000 paths: the walk down
# the trees was a fifth of the Python of each open.
MAX_FOLDER_PATHS = 1024
KNOWN = -1  # a folder recalled whose cached files' names this process all knows


def first_pass_cap(cache_size: int) -> int:
    """The window's cap in a first pass through a cache of ``cache_size`` bytes that the files
    being read outgrow: CRAMPED_FIRST_PASS_CAP of it if that leaves CRAMPED_FIRST_PASS_SLACK
    out, else what does, but never under CRAMPED_FIRST_PASS_FLOOR of it."""
    room = min(cache_size * CRAMPED_FIRST_PASS_CAP, cache_size - CRAMPED_FIRST_PASS_SLACK)
    return int(max(cache_size * CRAMPED_FIRST_PASS_FLOOR, room))


class RepoView:
    def __init__(
        self, client: Client, owner: str, name: str, commit_id: str, commit: Commit
    ) -> None:
        self.client = client
        self.owner = owner
        self.name = name
        self.commit_id = commit_id
        self.commit = commit
        self.root = Entry("", "dir", commit.tree, 0, commit.time)
        self._trees: OrderedDict[str, Tree] = OrderedDict()
        self._entries = 0  # entries of the trees in self._trees
        self._loading: dict[str, Future[Tree | None]] = {}  # trees being loaded, by id
        self._lock = threading.Lock()
        # folder path -> its tree, of folders that paths were found in lately; only trees in
        # _trees, and emptied when one goes from there (guarded by _lock for writes)
        self._folder_trees: dict[str, Tree] = {}
        self._planner = self._new_planner()
        self._plan_lock = threading.Lock()
        self._released_at = 0.0  # when picks read elsewhere were last looked for (monotonic)
        self._pass_seen = (0, time.time())  # the planner's furthest pass, and when it began (wall)
        # folder -> the pass over it (SiblingPlanner.pass_number) in which this process looked
        # up where its cached files are, or KNOWN
        self._recalled: dict[str, int] = {}
        self._signed: set[str] = set()  # folders whose blob URLs were asked ahead (sign_ahead)
        self._unmeasured = 0  # misses of a DataLoader worker before a round trip was known
        _views.add(self)

    def _new_planner(self) -> SiblingPlanner | None:
        if not self.client.prefetch:
            return None
        cap = self.client.cache_size // PREFETCH_CAP_SHARE
        return SiblingPlanner(BLOCK_SIZE, min(PREFETCH_BASE, cap), cap, os.getpid())

    def _window_cap(self, planner: SiblingPlanner) -> int:
        """Half the cache, or in a first pass through a cache the files being read outgrow,
        first_pass_cap of it; once they outgrow it, shared by the processes
        prefetching into it (DataLoader workers, BlockCache.sharers). Then windows that add
        up to more than it evict each other's files before their readers come; while the
        files fit, nothing of them is evicted, and a share only slows the prefetch down (at
        20 ms, an eighth of half a 3.1 GB cache a worker for 2.4 GB of files: 1,721 -> 1,004
        files/s, docs/benchmarks.md, session 32)."""
        half = self.client.cache_size // PREFETCH_CAP_SHARE
        if planner.known_bytes <= self.client.cache_size:
            return half
        if planner.furthest_pass == 0:
            return first_pass_cap(self.client.cache_size) // self.client.cache.sharers
        return half // self.client.cache.sharers

    def _misses_are_cheap(self) -> bool:
        """Whether this is a DataLoader worker whose misses cost less than prefetching
        (WORKER_PREFETCH_ROUND_TRIP). Before its first GET of the blob front came back, taken
        as so for UNMEASURED_MISSES misses; without a front (or while it rests) it prefetches."""
        engine = self.client.running_engine
        if engine is None or not engine.claims:
            return False
        round_trip = engine.round_trip
        if round_trip is not None:
            return round_trip < WORKER_PREFETCH_ROUND_TRIP
        if not engine.front_in_use or self._unmeasured >= UNMEASURED_MISSES:
            return False
        self._unmeasured += 1  # racing readers may count one miss short: no matter
        return True

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._loading = {}
        self._planner = self._new_planner()
        self._plan_lock = threading.Lock()
        self._released_at = 0.0  # when picks read elsewhere were last looked for (monotonic)
        self._pass_seen = (0, time.time())  # what the parent read is not this worker's pass
        self._recalled = {}  # the child's cache is new: it knows no block file's name
        self._signed = set()  # ... and its Remote no URLs
        self._unmeasured = 0  # ... nor any round trip

    def __reduce__(self) -> tuple[object, ...]:
        # Pickles as the pinned commit (DataLoader workers, multiprocessing): never re-resolved.
        return (RepoView, (self.client, self.owner, self.name, self.commit_id, self.commit))

    @classmethod
    def open(cls, client: Client, owner: str, name: str, rev: str | None) -> RepoView:
        """Resolve ``rev`` once; everything read through the view comes from that commit."""
        return cls.open_rev(client, owner, name, rev, ask_branch=False)[0]

    @classmethod
    def open_rev(
        cls, client: Client, owner: str, name: str, rev: str | None, *, ask_branch: bool = True
    ) -> tuple[RepoView, str | None]:
        """``open``, and the branch ``rev`` names (None for a tag or a commit id; always None
        unless ``ask_branch``).

        The questions go out together, one round trip, and the commit comes with the
        resolve. A blob connection is opened meanwhile, in the background, for the reads
        that follow.
        """
        engine = client.engine
        engine.spawn(_preconnect, engine)
        commit_id, raw, branch = engine.call(_resolve_rev, engine, owner, name, rev, ask_branch)
        if raw is None:  # a server that does not send it along
            return cls.at(client, owner, name, commit_id), branch
        client.cache.put_meta(f"commit:{commit_id}", raw)  # checked against its id
        return cls(client, owner, name, commit_id, decode_commit(raw)), branch

    @classmethod
    def at(cls, client: Client, owner: str, name: str, commit_id: str) -> RepoView:
        """A view of a resolved commit: no request when the commit is cached."""
        raw = client.cache.get_meta(f"commit:{commit_id}")
        if raw is None or object_id(raw) != commit_id:
            engine = client.engine
            commit = engine.call(_get_commit, engine, owner, name, commit_id)
            client.cache.put_meta(f"commit:{commit_id}", encode_commit(commit))
        else:
            commit = decode_commit(raw)
        return cls(client, owner, name, commit_id, commit)

    # ------------------------------------------------------------ trees

    def tree(self, tree_id: str) -> Tree:
        """The tree ``tree_id``, from memory, the disk cache or the server; threads that ask
        for the same one at the same time share one load."""
        while True:
            with self._lock:
                tree = self._trees.get(tree_id)
                if tree is not None:
                    self._trees.move_to_end(tree_id)
                    return tree
                loading = self._loading.get(tree_id)
                if loading is None:
                    loading = self._loading[tree_id] = Future()
                    break
            # bounded: the load it waits for has the engine's timeouts; its error is raised
            # here too (one timeout for all of them, not one each in turn)
            tree = loading.result()
            if tree is not None:
                return tree
        loaded: Tree | None = None
        try:
            loaded = self._load_tree(tree_id)
        except Exception as exc:
            loading.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._loading[tree_id]
                if loaded is not None:
                    self._keep(tree_id, loaded)
            if not loading.done():  # None after an interrupt, not shared: the next one tries
                loading.set_result(loaded)
        return loaded

    def _load_tree(self, tree_id: str) -> Tree:
        cache = self.client.cache
        raw = cache.get_meta(f"tree:{tree_id}")
        if raw is None or object_id(raw) != tree_id:
            engine = self.client.engine
            raw = engine.call(_get_tree_bytes, engine, self.owner, self.name, tree_id)
            cache.put_meta(f"tree:{tree_id}", raw)
        return decode_tree(raw)

    def _keep(self, tree_id: str, tree: Tree) -> None:
        """Under ``_lock``: remember a loaded tree, dropping the least recently used."""
        if tree_id in self._trees:
            return
        self._trees[tree_id] = tree
        self._entries += len(tree)
        while len(self._trees) > 1 and (
            len(self._trees) > MAX_TREES_IN_MEMORY or self._entries > MAX_ENTRIES_IN_MEMORY
        ):
            _, dropped = self._trees.popitem(last=False)
            self._entries -= len(dropped)
            self._folder_trees.clear()  # it may be one of them

    def load_root_soon(self) -> None:
        """Start loading the root folder in the background (a mount's first lookup needs it,
        and the kernel asks only once FUSE is up); a failure is the lookup's to report."""

        def load() -> None:
            with contextlib.suppress(StreamfsError):
                self.tree(self.root.id)

        threading.Thread(target=load, name="streamfs-root", daemon=True).start()

    # ------------------------------------------------------------ paths

    def lookup(self, path: str) -> Entry:
        """The entry at ``path`` ('' is the root). Raises PathNotFoundError / NotADirError."""
        return self.locate(path)[0]

    def locate(self, path: str) -> tuple[Entry, Tree | None]:
        """The entry at ``path`` and the tree of the folder it is in (None for the root)."""
        stripped = path.strip("/")
        if not stripped:
            return self.root, None
        # A folder found before is one look-up away. Only paths found by a walk put their
        # folder's path here, and every name in a tree is a valid one: a path whose folder
        # is here and whose name is in it is one the walk would find (and valid).
        folder_path, _, name = stripped.rpartition("/")
        folder = self._folder_trees.get(folder_path)
        if folder is not None and (entry := folder.get(name)) is not None:
            return entry, folder
        entry, folder, folder_id = self._walk(stripped)
        with self._lock:
            if self._trees.get(folder_id) is folder:  # not dropped meanwhile
                if len(self._folder_trees) >= MAX_FOLDER_PATHS:
                    self._folder_trees.clear()
                self._folder_trees[folder_path] = folder
        return entry, folder

    def _walk(self, stripped: str) -> tuple[Entry, Tree, str]:
        """The entry at ``stripped`` (not the root), the tree of its folder and that tree's
        id, from the root down."""
        # Checked only when the walk fails: every name in a tree is a valid one, so a path
        # that is found is valid, and one that is not gets its InvalidInputError first.
        entry = self.root
        parts = stripped.split("/")
        for i, part in enumerate(parts):
            if not entry.is_dir:
                check_path(stripped)
                raise NotADirError("not a directory", filename="/".join(parts[:i]))
            folder_id = entry.id
            folder = self.tree(folder_id)
            child = folder.get(part)
            if child is None:
                check_path(stripped)
                raise PathNotFoundError("no such file or directory", filename=stripped)
            entry = child
        return entry, folder, folder_id

    def listdir(self, path: str) -> Tree:
        entry = self.lookup(path)
        if not entry.is_dir:
            raise NotADirError("not a directory", filename=path)
        return self.tree(entry.id)

    def walk(self, top: str = "") -> Iterator[tuple[str, list[Entry], list[Entry]]]:
        """Like os.walk, top-down: (dirpath, dir entries, file entries)."""
        tree = self.listdir(top)
        dirs = [e for e in tree.entries if e.is_dir]
        files = [e for e in tree.entries if not e.is_dir]
        yield top, dirs, files
        for d in dirs:
            yield from self.walk(f"{top}/{d.name}" if top else d.name)

    def stat(self, path: str, *, writable: bool = False) -> tuple[int, ...]:
        return entry_stat(self.lookup(path), path, writable=writable)

    # ------------------------------------------------------------ reading

    def reader(self, path: str, entry: Entry, folder: Tree | None = None) -> BlobReader:
        """A reader of the file ``entry`` at ``path`` (in ``folder``, if the caller has that
        tree at hand: see ``locate``); its first read tells the prefetcher."""
        blob = BlobRef(self.owner, self.name, entry.id, entry.size)
        if self._planner is None:
            return BlobReader(self.client, blob, path)
        tell = functools.partial(self._note_open, path, entry, folder)
        return BlobReader(self.client, blob, path, tell)

    def read_small(self, path: str, entry: Entry, folder: Tree | None = None) -> bytes:
        """The bytes of ``entry`` (at ``path``, in ``folder`` as for ``reader``), a file of
        one block, read whole. A cached one is read without a reader: a warm epoch of
        ``Repo.read_bytes`` is this, 20,000 times, and 8 DataLoader workers read it 3-21 %
        faster so (alternating runs). The prefetcher is told either way."""
        whole = cached_small(self.client, entry.id, entry.size)
        if whole is None:
            return self.reader(path, entry, folder).fetch_whole()
        if self._planner is not None:
            self._note_open(path, entry, folder, False)
        return whole if type(whole) is bytes else bytes(whole)

    def open_cached(self, path: str, entry: Entry, folder: Tree | None = None) -> int | None:
        """A read-only descriptor of the cache's own file of ``entry`` (at ``path``, in
        ``folder`` as for ``reader``), for a small file that is wholly cached where this
        process knows the file (see BlockCache.open_block_file); the open is told to the
        prefetcher as a cached one. None: read it through ``reader``.

        A copy of the block that the prefetcher keeps in memory for its first reader is
        dropped: it is in the cache (written first), and it would be held for a reader that
        never comes (the memory a DataLoader worker's prefetches, read by other workers,
        kept after epoch 1).
        """
        if not 0 < entry.size <= BLOCK_SIZE:
            return None
        fd = self.client.cache.open_block_file(entry.id, 0, entry.size)
        if fd is None:
            return None
        try:
            self.client.take_fresh(entry.id, 0)
            if self._planner is not None:
                self._note_open(path, entry, folder, False)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _note_open(self, path: str, entry: Entry, tree: Tree | None, missed: bool) -> None:
        # Every open of a small file comes here, a warm one too (8 DataLoader workers that
        # skipped this for a warm open read a warm epoch 20-25 % faster): that path looks
        # each thing up once (2.5 -> 1.9 µs, one process).
        planner = self._planner
        assert planner is not None
        folder = path.strip("/").rpartition("/")[0]
        if not missed and tree is not None and self._recalled.get(folder) == KNOWN:
            # A warm epoch: the planner counts the open, and nothing else is to be done (no
            # folder active, so no picks and no landed picks to let go for room; no pass
            # begun; nothing read to tell the cache; the folder recalled)
            with self._plan_lock:
                if planner.on_cached_open(folder, tree.entries, entry):
                    return
        try:
            # in memory either way: looking up ``path`` loaded it
            siblings = (tree if tree is not None else self.listdir(folder)).entries
        except StreamfsError:  # e.g. a folder that only a branch mount's new files make
            return
        cheap = missed and self._misses_are_cheap()
        with self._plan_lock:
            if missed:  # picks come after misses
                planner.cap = 0 if cheap else self._window_cap(planner)
                planner.cramped = planner.known_bytes > self.client.cache_size
            picks = planner.on_open(folder, siblings, entry, missed)
            landed = self._landed_to_check(picks) if planner.any_landed() else []
            furthest = planner.furthest_pass
            if furthest != self._pass_seen[0]:
                self._pass_seen = (furthest, time.time())
            read_since = self._pass_seen[1]
            spent = planner.take_opened()
            record = planner.cramped  # read files are evicted: others must be told
            recall = False
            if not missed:
                recalled = self._recalled.get(folder)
                if recalled != KNOWN and recalled != (planned := planner.pass_number(folder)):
                    recall = True
                    if len(self._recalled) >= MAX_RECALLED:
                        self._recalled.clear()
                    self._recalled[folder] = planned
        if spent:  # evicted before what still waits for its reader (BlockCache.spent)
            self.client.cache.spent(spent, record)
        if recall:
            # A cached file of a folder this process has not read from in this pass: others
            # (DataLoader workers, an earlier run) cached it, likely its siblings too. Where
            # their files are, in one query: each read of them skips its own SQL lookup. Once
            # a pass until it knows them all: the other workers of epoch 1 cache more of the
            # folder after this process's first look (one of 8 knew 80-95 % of 20,000 files
            # after epoch 1, and each of the rest cost a lookup when it came to it, epochs
            # later). Then never again: going over a folder's names costs ~1 µs a name.
            small = (e for e in siblings if not e.is_dir and 0 < e.size <= BLOCK_SIZE)
            _, complete = self.client.cache.recall((e.id, 0) for e in small)
            if complete:
                with self._plan_lock:
                    self._recalled[folder] = KNOWN
        if (picks or missed) and folder not in self._signed:
            # The folder's URLs on the server's blob front (if it has one) in one request, at
            # its first cold open: its prefetch batches, and the files read before them (each
            # a GET of the reader's own, _directget.py), then skip a round trip to the API.
            if len(self._signed) >= MAX_RECALLED:
                self._signed.clear()
            self._signed.add(folder)
            small = (e for e in siblings if not e.is_dir and 0 < e.size <= BLOCK_SIZE)
            ids = [e.id for e in small]
            self.client.engine.spawn(_sign_ahead, self.client.engine, self.owner, self.name, ids)
        if picks:
            self._prefetch(picks, read_since)
        elif landed:  # one query (~1 ms for a window of 700 files), at most every 0.25 s
            unread = self.client.cache.unread(landed)
            self._elsewhere([oid for oid in landed if oid not in unread])

    def _landed_to_check(self, picks: list[Entry]) -> list[str]:
        """Under ``_plan_lock``, after an open: if it picked nothing because the window is
        full and this process shares the cache (a DataLoader worker: the others read most of
        what it prefetched), the picks in the cache, at most every RELEASE_SECONDS. Those read
        since (or evicted) go."""
        assert self._planner is not None
        if picks or not self._planner.any_landed() or not self._planner.full():
            return []
        now = time.monotonic()
        if now - self._released_at < RELEASE_SECONDS:
            return []
        self._released_at = now
        # none in a process alone with its cache (_prefetch tells only a worker's planner what
        # landed): every open of its picks came here
        return self._planner.landed_ids()

    def _elsewhere(self, ids: list[str]) -> None:
        """Picks that take no room in this planner's window: left out of their batch (cached
        already, or being prefetched or read in this pass by another process: DataLoader
        workers), or read by another process since they landed. The window is topped up at
        once: in a worker, whose window the others empty, the next open may be a while."""
        assert self._planner is not None
        with self._plan_lock:
            self._planner.release(ids)
            picks = self._planner.top_up()
            read_since = self._pass_seen[1]
        if picks:
            self._prefetch(picks, read_since)

    def _prefetch(self, picks: list[Entry], read_since: float) -> None:
        """A window's worth at a time; the batch drops what is cached, off this thread (and,
        in a DataLoader worker, what the others read in this pass: BlockCache.claim)."""
        blobs = [BlobRef(self.owner, self.name, e.id, e.size) for e in picks]
        engine = self.client.engine
        # only a worker looks at what landed (_landed_to_check): the mount's loop and a process
        # alone with its cache take no lock for it
        landed = self._landed if engine.claims else None
        engine.spawn(_prefetch_whole, engine, blobs, self._elsewhere, read_since, landed)

    def _landed(self, ids: list[str]) -> None:
        """Picks their batch wrote to the cache."""
        assert self._planner is not None
        with self._plan_lock:
            self._planner.landed(ids)


def entry_stat(entry: Entry, path: str, *, writable: bool = False) -> tuple[int, ...]:
    """An os.stat_result-shaped tuple for an entry (mode, ino, dev, nlink, uid, gid, size, times)."""
    if entry.is_dir:
        mode = stat_mod.S_IFDIR | (0o755 if writable else 0o555)
        nlink = 2
    else:
        mode = stat_mod.S_IFREG | (0o644 if writable else 0o444)
        nlink = 1
    ino = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=7).digest(), "big")
    return (mode, ino, 0, nlink, 0, 0, entry.size, entry.mtime, entry.mtime, entry.mtime)


async def _remote(engine: Engine) -> Remote:
    assert engine.remote is not None
    return engine.remote


async def _resolve_rev(
    engine: Engine, owner: str, name: str, rev: str | None, ask_branch: bool
) -> tuple[str, bytes | None, str | None]:
    return await (await _remote(engine)).resolve_rev(owner, name, rev, ask_branch=ask_branch)


async def _preconnect(engine: Engine) -> None:
    await (await _remote(engine)).preconnect()


async def _get_commit(engine: Engine, owner: str, name: str, oid: str) -> Commit:
    return await (await _remote(engine)).get_commit(owner, name, oid)


async def _sign_ahead(engine: Engine, owner: str, name: str, ids: list[str]) -> None:
    """A folder's blob URLs ahead (Remote.sign_ahead), shared with the other processes of the
    cache: DataLoader workers each asked the server to sign every folder's URLs (146,600
    signatures for a 20,000-file epoch of 8 workers, ~2 s of the server's CPU;
    docs/benchmarks.md, session 31). The first to ask stores them, until they expire."""
    remote = await _remote(engine)
    if not remote.signs_urls() or not ids:
        return
    ids = ids[:MAX_IDS]
    text = "\n".join([remote.url, owner, name, *ids])
    key = "urls:" + hashlib.sha256(text.encode()).hexdigest()
    record = await trio.to_thread.run_sync(engine.cache.get_meta, key)
    if record is not None and remote.adopt_urls(ids, record):
        return
    await remote.sign_ahead(owner, name, ids)
    shared = remote.shared_urls(ids)
    if shared is not None:
        packed, seconds = shared
        await trio.to_thread.run_sync(engine.cache.put_meta, key, packed, seconds)


async def _prefetch_whole(
    engine: Engine,
    blobs: list[BlobRef],
    elsewhere: Told,
    read_since: float,
    landed: Told | None,
) -> None:
    assert engine.fetcher is not None
    await engine.fetcher.prefetch_whole(blobs, elsewhere, read_since, landed)


async def _get_tree_bytes(engine: Engine, owner: str, name: str, oid: str) -> bytes:
    return await (await _remote(engine)).get_tree_bytes(owner, name, oid)


def make_stat(st: tuple[int, ...]) -> os.stat_result:
    """A full os.stat_result (float and ns times, blocks, owner) from entry_stat's ten fields."""
    mode, ino, dev, nlink, _, _, size, atime, mtime, ctime = st
    fields = (mode, ino, dev, nlink, os.getuid(), os.getgid(), size, atime, mtime, ctime)
    extra = {
        "st_atime": float(atime),
        "st_mtime": float(mtime),
        "st_ctime": float(ctime),
        "st_atime_ns": atime * 10**9,
        "st_mtime_ns": mtime * 10**9,
        "st_ctime_ns": ctime * 10**9,
        "st_blksize": 128 * 1024,
        "st_blocks": (size + 511) // 512,
    }
    return os.stat_result(fields, extra)


_views: weakref.WeakSet[RepoView] = weakref.WeakSet()  # every view of this process


def _after_fork_in_child() -> None:
    for view in list(_views):
        view._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
