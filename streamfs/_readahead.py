"""The readahead planner: which blocks to fetch for each read of one open handle.

Pure code, no I/O: a state machine fed with every read ``(offset, size)`` of
one handle, answering with a ``Plan``. The caller serves ``plan.needed`` (from
the cache, or by fetching what is missing) and starts ``plan.ahead`` in the
background. The policy, modelled on Linux's file readahead and Mountpoint
for S3's prefetcher:

- **Small files are fetched whole.** A file of at most ``small_file`` bytes
  (and always a file of one block) is planned as one fetch of every block on
  its first read, whatever the offset (``plan.whole``): one request instead
  of one per block, and no readahead state at all.
- **A read is sequential** when it starts within ``tolerance`` bytes of where
  the previous read ended (either side: multi-threaded FUSE delivers reads a
  little out of order), or, while streaming, anywhere up to the end of what
  has already been planned (a forward skip into prefetched blocks).
- **The first read never reads ahead**, not even at offset 0: a reader that
  reads a header and seeks away costs nothing extra. A sequential reader
  loses little, since its first block (4 MiB) covers the next ~32 FUSE reads.
- **A stream starts once a sequential run has covered ``min_stream`` bytes**
  (0 here; the reader passes 2 MiB): the kernel splits one large random read
  into FUSE reads of 128-256 KiB that look sequential, and a 1 MiB random read must
  not start a readahead. The stream then opens with a window of
  ``initial_window`` bytes (rounded up to whole blocks) beyond the blocks the
  read needs. While reads stay sequential the window slides along: each read
  plans only the blocks that newly fall into it, so no block is planned twice
  in one stream.
- **The window doubles** when the reader reaches the first block of the batch
  planned at the last growth (Linux's "async readahead marker"), up to
  ``max_window``: 8, 16, 32, 64, 128 MiB over the first ~60 MiB of a scan
  with the defaults. Since every sequential read tops the plan up to a full
  window past itself, a streaming reader always has a window's worth of
  blocks requested ahead of it.
- **A random read resets the stream**: no window, only the blocks the read
  touches. A random reader thus never fetches more than it reads (rounded to
  blocks), and a later sequential run starts small again.
- Nothing is planned past the end of the file, and a read at or past the end
  plans nothing and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._blocks import block_range, clip, num_blocks
from ._model import BLOCK_SIZE

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """What to fetch for one read."""

    needed: tuple[int, ...]  # the blocks the read touches, ascending
    ahead: tuple[int, ...]  # more blocks to fetch now (readahead, or the rest of a small file)
    window: int = 0  # readahead window in bytes after this read; 0 when not streaming
    whole: bool = False  # needed + ahead is the whole (small) file: fetch it in one request

    @property
    def fetch(self) -> tuple[int, ...]:
        """Every block to fetch now, ascending."""
        return tuple(sorted(self.needed + self.ahead))


def _to_blocks(nbytes: int, block_size: int) -> int:
    return max(1, -(-nbytes // block_size))


class ReadaheadPlanner:
    """Readahead state of one open handle. Not thread-safe: the owner serializes reads."""

    def __init__(
        self,
        file_size: int,
        block_size: int = BLOCK_SIZE,
        *,
        initial_window: int = 8 * MiB,
        max_window: int = 128 * MiB,
        small_file: int = 8 * MiB,
        tolerance: int = 1 * MiB,
        min_stream: int = 0,
    ) -> None:
        if initial_window <= 0 or max_window < initial_window or tolerance < 0:
            raise ValueError("want 0 < initial_window <= max_window and tolerance >= 0")
        self.file_size = file_size
        self.block_size = block_size
        self._nblocks = num_blocks(file_size, block_size)
        self._small = file_size <= max(small_file, block_size)
        self._initial = _to_blocks(initial_window, block_size)
        self._max = max(self._initial, max_window // block_size)
        self._tolerance = tolerance
        self._min_stream = min_stream
        self._run_start = 0  # where the current sequential run began
        self._whole_planned = False
        self._pos: int | None = None  # where the last read ended; None before the first
        self._window = 0  # in blocks; 0: not streaming
        self._frontier = 0  # blocks below this are planned in the current stream
        self._marker = 0  # a read reaching this block doubles the window

    @property
    def window(self) -> int:
        """The current readahead window in bytes (0 when not streaming)."""
        return self._window * self.block_size

    def continues(self, offset: int) -> bool:
        """Whether a read at ``offset`` carries on this handle's reading (a small file's always does)."""
        return self._small or self._is_sequential(offset)

    def on_read(self, offset: int, size: int) -> Plan:
        """Plan the read of ``size`` bytes at ``offset`` and update the state."""
        start, end = clip(offset, size, self.file_size)
        needed = block_range(offset, size, self.file_size, self.block_size)
        if not needed:
            return Plan((), (), self.window)
        if self._small:
            return self._plan_small(needed)
        if self._is_sequential(start):
            self._pos = max(end, self._pos or 0)
            if self._window or self._pos - self._run_start >= self._min_stream:
                self._advance(needed)
        else:
            self._reset()
            self._run_start, self._pos = start, end
        return Plan(tuple(needed), self._slide(needed.stop), self.window)

    def _plan_small(self, needed: range) -> Plan:
        if self._whole_planned:
            return Plan(tuple(needed), ())
        self._whole_planned = True
        rest = tuple(i for i in range(self._nblocks) if i not in needed)
        return Plan(tuple(needed), rest, whole=True)

    def _is_sequential(self, start: int) -> bool:
        if self._pos is None:
            return False
        if abs(start - self._pos) <= self._tolerance:
            return True
        return self._window > 0 and self._pos <= start < self._frontier * self.block_size

    def _advance(self, needed: range) -> None:
        """A sequential read: start a stream, or grow the window if the marker is reached."""
        if self._window == 0:
            self._window = self._initial
            self._frontier = self._marker = needed.stop
        elif needed[-1] >= self._marker:
            self._window = min(2 * self._window, self._max)
            self._marker = max(self._frontier, needed.stop)

    def _reset(self) -> None:
        self._window = self._frontier = self._marker = 0

    def _slide(self, needed_stop: int) -> tuple[int, ...]:
        """The blocks newly inside the window ending ``window`` blocks past the read."""
        if self._window == 0:
            return ()
        first = max(self._frontier, needed_stop)
        last = min(needed_stop + self._window, self._nblocks)
        self._frontier = max(self._frontier, last)
        return tuple(range(first, last))
