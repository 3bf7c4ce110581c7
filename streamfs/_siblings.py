"""Which small files to prefetch while a folder is read file by file (pure logic).

A training epoch opens every file of a dataset once, in shuffled order, a
few at a time. Each small file then costs a round trip of its own, and the
readers never have more requests in flight than there are readers. Once a
folder shows that it is being read through, its other small files are
fetched ahead, many to a request (``POST blobs/batch``), so that the readers
find them in the cache.

The policy, per view of a commit:

- **Evidence first.** A folder becomes active when a second, different file
  of it is opened and at least one of its files opened in this pass was not
  (wholly) in the cache. Reading one file of a folder prefetches nothing, and
  neither does reading a folder that is cached: a warm epoch costs the
  prefetcher no cache lookups at all.
- **Bounded waste, growing with reading.** Bytes prefetched and not yet
  opened stay under ``base + growth * opened + reward * useful`` (and under
  ``cap``): ``opened`` the bytes of small files opened so far, ``useful``
  those of them that had been prefetched. What was fetched and never read is
  thus at most ``base`` plus ``growth`` times what was read, plus ``reward``
  times what prefetching already saved.
  A shuffled epoch opens files in an order nothing predicts, so a file is
  found prefetched about as often as the window covers what is left of the
  dataset: the window has to outgrow the reading. Growing by the bytes read
  alone (``growth`` 1) left a third of a 20,000-file epoch to one request a
  file; the reward for prefetched files that got opened cut that to a fifth
  (3,900 of 20,000 files, simulated and measured); ``growth`` 4 cuts it to
  1,700 (measured at 20 ms RTT: +20-35 % files/s for the Python API and the
  hooks, threads or DataLoader processes; docs/benchmarks.md, session 25).
  The price is paid by a program that reads a random part of a dataset and
  stops: one that reads 10 % of it gets 2.4x the bytes it read fetched with
  ``growth`` 1 and 6.2x with 4 (simulated, 100 folders of 200 files); at
  30 % the whole dataset is fetched either way. For a whole epoch the waste
  is nothing.
- **Passes.** Opening a file again that was opened in the folder's current
  pass starts a new pass (the next epoch): the folder is read through again,
  and once a file of it misses (a cache that evicted some of it) the rest is
  refilled ahead of the readers. Once one folder has begun a pass, every
  other folder begins it at its next open: an epoch reads every folder, and
  a DataLoader worker, which opens one file in eight, would otherwise see a
  folder's next pass only when it happened to open again a file of its own
  (a third of the way into the folder, on average), prefetching none of it
  until then. (A folder half read when another is read again starts over:
  its files read so far may be prefetched again, those the cache has kept
  left out by the batch.) No folder is active from the start of a pass
  until a file of it misses in that pass: nothing is picked on the last
  pass's evidence, and an open in a warm pass only counts
  (``on_cached_open``, a few dict operations: 8 DataLoader workers read a
  warm epoch through the hooks 1-29 % faster so, in alternation).
- **Later passes through a small cache.** Once a folder is read again (the
  next epoch) and the files being read outgrow the cache (``cramped``, set
  by the owner), the window is at most the bytes this pass found cached
  (other than this planner's own picks): the cache is then full of the last
  pass's files, which this one has yet to read, and each file prefetched
  takes the room of one of them (fetched again later) unless the room is
  that of a file this pass has read (those go first, BlockCache.spent). A
  file this pass fetched and read frees only the room its fetch took, so
  only a cached file's read makes room for a prefetch. With the window
  grown as in the first pass, a second epoch through a cache half the data
  (8 threads, 20 ms) fetched 0.78x of it at 1,172-1,180 files/s; with the
  window at most the bytes opened in the pass, 0.69-0.70x at 1,411-1,466
  (session 37); at most the bytes found cached, 0.537x at 1,504-1,522
  against 0.69x at 1,306-1,334 in the same rounds (docs/benchmarks.md,
  session 39).
- **Processes.** DataLoader workers each have a planner and share one disk
  cache; each opens a share of every folder. Each process starts a folder at
  its own offset, so workers that prefetch the same folder mostly fetch
  different files. A pick another process fetched meanwhile (found in the
  cache when its batch starts), is fetching (it holds a claim in the
  cache) or has read in this pass (a read record, BlockCache.claim; the
  owner tells the batch when the pass began) is released (``release``):
  it takes no room in the window. A file
  of an active folder that this planner did not fetch but found in the
  cache counts as useful: another worker's prefetch saved its request.
  Without these two, each planner's window filled with files the other
  workers opened, and 8 workers made 0.45 requests of one blob a file
  against 0.20 for 8 threads (docs/benchmarks.md, sessions 17-18). The
  owner sets ``cap``: once ``known_bytes`` (the small files of the folders
  remembered) outgrow the cache, the processes share its room for windows.
  Most of what a worker prefetched is opened by the others, which this
  planner never sees: the owner hands back (``release``) the picks that
  ``landed`` in the cache and have been read there or evicted since
  (``landed_ids``), and tops the window up (``top_up``). Without that, a
  window capped at its share (an eighth of half the cache) filled with
  files other workers had read within seconds and stayed full for the rest
  of the epoch (docs/benchmarks.md, session 37); letting go, 8 workers read
  both epochs through a cache half the data ~30 % faster at 20 ms, fetching
  as much as before (session 39). Where a miss costs a worker less than its
  prefetches cost the processes (a round trip under a millisecond), the owner
  sets ``cap`` to 0 and the worker prefetches nothing (_view.py,
  WORKER_PREFETCH_ROUND_TRIP).
- **Read before waiting.** The small files opened in a pass that missed the
  cache are handed out (``take_opened``) for the cache to evict first: with a
  cache smaller than the data, prefetched files waiting for their reader
  were evicted before it came and fetched twice (BlockCache.spent).
- **Batches.** The window is topped up once ``refill`` bytes of it (or half)
  are free, so picks come many at a time and travel in few requests.
- Only files of at most ``small`` bytes are prefetched (one block; big files
  have their own sequential readahead).

Not thread-safe: the owner holds a lock around ``on_open``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ._model import Entry

MAX_FOLDERS = 1024  # folders remembered; the least recently opened one is forgotten
PICK_RUN = 64  # files taken from one folder before turning to the next active one
REFILL = 4 * 1024 * 1024  # the window is topped up once this much of it is free
GROWTH = 4  # the window grows by this many bytes per byte of small files opened ...
REWARD = 4  # ... and by this many more per prefetched byte that was then opened


@dataclass(eq=False)
class _Folder:
    entries: Sequence[Entry]
    start: int  # this process's offset into entries
    small_bytes: int  # of the entries small enough to prefetch
    cursor: int = 0  # candidates looked at in this pass
    opened: set[str] = field(default_factory=set)  # names opened in this pass
    missed: bool = False  # a file opened in this pass was not in the cache
    active: bool = False
    passes: int = 0  # passes started again after the first

    def exhausted(self) -> bool:
        return self.cursor >= len(self.entries)


class SiblingPlanner:
    def __init__(
        self,
        small: int,
        base: int,
        cap: int,
        salt: int = 0,
        refill: int = REFILL,
        growth: int = GROWTH,
        reward: int = REWARD,
    ) -> None:
        self.small = small
        self.refill = refill
        self.base = base
        self.cap = cap
        self.growth = growth
        self.reward = reward
        self._salt = salt
        self._folders: OrderedDict[str, _Folder] = OrderedDict()
        self._active: deque[str] = deque()  # active folders that may have candidates left
        self._outstanding: dict[str, int] = {}  # blob id -> size: prefetched, not opened yet
        self._landed: dict[str, None] = {}  # of those, the ones in the cache (in landing order)
        self.outstanding_bytes = 0
        self.opened_bytes = 0
        self.useful_bytes = 0  # opened after being prefetched
        self.known_bytes = 0  # of the small files of the folders remembered: what is being read
        self.cramped = False  # set by the owner: those outgrow the cache
        self._pass = 0  # the furthest pass a folder has reached (0: the first)
        self._pass_hits = 0  # bytes opened in it found cached, not prefetched by this planner
        self._opened: list[str] = []  # small files opened since take_opened, in passes that missed

    def allowance(self) -> int:
        """How many bytes may be prefetched and not yet opened, now."""
        grown = self.growth * self.opened_bytes + self.reward * self.useful_bytes
        allowance = min(self.cap, self.base + grown)
        if self.cramped and self._pass > 0:  # a later pass through a small cache
            return min(allowance, self._pass_hits)
        return allowance

    def on_open(
        self, folder: str, siblings: Sequence[Entry], entry: Entry, missed: bool = True
    ) -> list[Entry]:
        """``entry`` (a file in ``folder``, whose entries are ``siblings``) was opened;
        ``missed``: the cache lacked (some of) it.

        Returns the files to prefetch now; they count as outstanding until opened.
        """
        if entry.size > self.small:
            return []
        state = self._folders.get(folder)
        if state is None or state.entries is not siblings:
            state = self._new_folder(folder, siblings)
        if entry.name in state.opened or state.passes < self._pass:  # a new pass over it
            state.opened.clear()
            state.cursor = 0
            state.active = state.missed = False
            state.passes = max(state.passes + 1, self._pass)
            if state.passes > self._pass:  # the first folder read again: the next epoch
                self._pass, self._pass_hits = state.passes, 0
                # each folder starts it over at its next open: none is active until then
                self._active.clear()
        self._count(folder, state, entry, missed)
        state.missed = state.missed or missed
        if state.missed:  # a pass that fetches: what it read may go before what it prefetched
            self._opened.append(entry.id)
        if not state.active and state.missed and len(state.opened) >= 2:
            state.active = True
            self._active.append(folder)
        return self._pick() if self._active else []  # none: a warm pass

    def on_cached_open(self, folder: str, siblings: Sequence[Entry], entry: Entry) -> bool:
        """``on_open(folder, siblings, entry, missed=False)`` in the one case where it only
        counts, done so; False (nothing done): call ``on_open``. That case: a file of a folder
        whose pass is under way and has not missed the cache, opened for the first time in
        it, while no folder is active and nothing waits for ``take_opened``. A warm epoch is
        that case file after file."""
        state = self._folders.get(folder)
        if (
            state is None
            or state.missed
            or self._active
            or self._opened
            or state.passes != self._pass
            or state.entries is not siblings
            or entry.size > self.small
            or entry.name in state.opened
        ):
            return False
        self._count(folder, state, entry, False)
        return True

    def _count(self, folder: str, state: _Folder, entry: Entry, missed: bool) -> None:
        """What every open of a small file in its folder's current pass adds up."""
        self.opened_bytes += entry.size
        self._folders.move_to_end(folder)
        size = self._unpick(entry.id) if self._outstanding else None
        if size is not None:
            self.useful_bytes += size
        elif not missed:
            self._pass_hits += entry.size  # its room was this pass's to take: it goes first
            if state.active:
                # A folder being read through, and a file of it that this planner did not
                # fetch was in the cache: another process's prefetch saved its request.
                self.useful_bytes += entry.size
        state.opened.add(entry.name)

    def take_opened(self) -> list[str]:
        """The ids of the small files opened since the last call in folders whose current
        pass missed the cache (a warm pass has nothing waiting to protect). They have been
        read, so the cache may evict them before the prefetched files that still wait for
        their reader (BlockCache.spent): in a shuffled epoch each is read once."""
        opened, self._opened = self._opened, []
        return opened

    @property
    def furthest_pass(self) -> int:
        """The furthest pass any folder has reached (0: all are in their first)."""
        return self._pass

    def pass_number(self, folder: str) -> int:
        """Which pass over ``folder`` this is: 0 for the first (or a folder not seen)."""
        state = self._folders.get(folder)
        return state.passes if state is not None else 0

    def release(self, ids: Iterable[str]) -> None:
        """Picks that take no room in the window: those their batch left out (cached
        meanwhile, or claimed by another process that is fetching them), and those that
        landed and were read by another process or evicted (``landed_ids``)."""
        for oid in ids:
            self._unpick(oid)

    def landed(self, ids: Iterable[str]) -> None:
        """Picks that their batch fetched and wrote to the cache."""
        for oid in ids:
            if oid in self._outstanding:
                self._landed[oid] = None

    def any_landed(self) -> bool:
        """Whether ``landed_ids`` has any (without making the list)."""
        return bool(self._landed)

    def landed_ids(self) -> list[str]:
        """The picks in the cache and not opened here: once another process has read one (or
        the cache evicted it), it no longer waits for a reader here, and the owner may
        ``release`` it."""
        return list(self._landed)

    def full(self) -> bool:
        """Whether the window has no room for a refill."""
        allowance = self.allowance()
        return allowance - self.outstanding_bytes < min(self.refill, allowance // 2)

    def top_up(self) -> list[Entry]:
        """Picks to fill the window up with after a ``release`` (none while it is full)."""
        return self._pick()

    def _unpick(self, oid: str) -> int | None:
        """Take ``oid`` out of the window; its size, or None if it was not there."""
        self._landed.pop(oid, None)
        size = self._outstanding.pop(oid, None)
        if size is not None:
            self.outstanding_bytes -= size
        return size

    def _new_folder(self, folder: str, siblings: Sequence[Entry]) -> _Folder:
        """The state of ``folder`` seen for the first time, or with other entries (a branch's
        next commit): it starts over."""
        old = self._folders.pop(folder, None)
        if old is not None:
            self.known_bytes -= old.small_bytes
        digest = hashlib.blake2b(f"{self._salt}:{folder}".encode(), digest_size=8).digest()
        start = int.from_bytes(digest, "big") % max(1, len(siblings))
        small = sum(e.size for e in siblings if not e.is_dir and 0 < e.size <= self.small)
        state = self._folders[folder] = _Folder(siblings, start, small)
        self.known_bytes += small
        while len(self._folders) > MAX_FOLDERS:
            self.known_bytes -= self._folders.popitem(last=False)[1].small_bytes
        return state

    def _pick(self) -> list[Entry]:
        picks: list[Entry] = []
        if not self._active or self.full():  # nothing to pick from (a warm pass), or
            return picks  # refill in batches, not a file or two per open
        allowance = self.allowance()
        while self._active and self.outstanding_bytes < allowance:
            folder = self._active[0]
            state = self._folders.get(folder)
            if state is None or not state.active or state.exhausted():
                self._active.popleft()
                continue
            taken = 0
            while taken < PICK_RUN and not state.exhausted():
                n = len(state.entries)
                candidate = state.entries[(state.start + state.cursor) % n]
                if (
                    candidate.is_dir
                    or not 0 < candidate.size <= self.small
                    or candidate.name in state.opened
                    or candidate.id in self._outstanding
                ):
                    state.cursor += 1
                    continue
                if self.outstanding_bytes + candidate.size > allowance:
                    return picks  # the window is full: this one comes first next time
                state.cursor += 1
                self._outstanding[candidate.id] = candidate.size
                self.outstanding_bytes += candidate.size
                picks.append(candidate)
                taken += 1
            self._active.rotate(-1)
        return picks
