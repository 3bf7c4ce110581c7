"""Block arithmetic: byte ranges of a file <-> its fixed-size blocks. Pure code, no I/O.

A file of ``file_size`` bytes is cut into blocks of ``block_size`` bytes
(``BLOCK_SIZE``, 4 MiB); block ``i`` holds bytes
``[i * block_size, min((i + 1) * block_size, file_size))``, so only the last
block may be short. Blocks are the unit of caching, hashing and fetching;
reads and HTTP ranges are byte spans. Everything here is clipped at the end
of the file: no function returns a block or a byte past it.

``num_blocks(0) == 0`` (an empty file has no bytes to fetch), unlike
``_model.block_count``, which counts the one (empty) block hash an empty blob
has on the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, TypeAlias

from ._model import BLOCK_SIZE

# A block's bytes as fetched: a bytearray when received straight into a buffer of its own
# (_http1.py), which nothing writes to once the block is verified.
Block: TypeAlias = bytes | bytearray


class BlockSlice(NamedTuple):
    """The part of a block a read needs: ``length`` bytes from ``start`` in the block."""

    block: int
    start: int
    length: int


class BlockRun(NamedTuple):
    """Contiguous blocks ``first..last`` (inclusive), fetched in one HTTP range request."""

    first: int
    last: int

    @property
    def length(self) -> int:
        """How many blocks the run holds."""
        return self.last - self.first + 1


def _check_sizes(file_size: int, block_size: int) -> None:
    if file_size < 0 or block_size <= 0:
        raise ValueError(f"invalid file size {file_size} or block size {block_size}")


def num_blocks(file_size: int, block_size: int = BLOCK_SIZE) -> int:
    """How many blocks hold ``file_size`` bytes (0 for an empty file)."""
    _check_sizes(file_size, block_size)
    return -(-file_size // block_size)


def block_span(index: int, file_size: int, block_size: int = BLOCK_SIZE) -> tuple[int, int]:
    """The bytes ``[start, end)`` of block ``index``, clipped at the end of the file."""
    if not 0 <= index < num_blocks(file_size, block_size):
        raise ValueError(f"block {index} is outside a file of {file_size} bytes")
    start = index * block_size
    return start, min(start + block_size, file_size)


def clip(offset: int, size: int, file_size: int) -> tuple[int, int]:
    """The bytes ``[start, end)`` a read of ``size`` bytes at ``offset`` can return."""
    if offset < 0 or size < 0 or file_size < 0:
        raise ValueError(f"invalid read of {size} bytes at {offset} (file of {file_size})")
    start = min(offset, file_size)
    return start, min(offset + size, file_size)


def block_range(offset: int, size: int, file_size: int, block_size: int = BLOCK_SIZE) -> range:
    """The indices of the blocks a read touches (empty at or past the end of the file)."""
    _check_sizes(file_size, block_size)
    start, end = clip(offset, size, file_size)
    if start == end:
        return range(0)
    return range(start // block_size, (end - 1) // block_size + 1)


def slice_in_block(
    index: int, offset: int, size: int, file_size: int, block_size: int = BLOCK_SIZE
) -> BlockSlice:
    """The part of block ``index`` that the read ``[offset, offset + size)`` needs."""
    block_start, block_end = block_span(index, file_size, block_size)
    start, end = clip(offset, size, file_size)
    lo, hi = max(start, block_start), min(end, block_end)
    if lo >= hi:
        raise ValueError(f"block {index} is outside the read of {size} bytes at {offset}")
    return BlockSlice(index, lo - block_start, hi - lo)


def blocks_for_range(
    offset: int, size: int, file_size: int, block_size: int = BLOCK_SIZE
) -> list[BlockSlice]:
    """What a read needs from each block it touches, in file order.

    Concatenating the slices gives exactly bytes ``[offset, offset + size)``
    clipped at the end of the file.
    """
    return [
        slice_in_block(i, offset, size, file_size, block_size)
        for i in block_range(offset, size, file_size, block_size)
    ]


def coalesce(indices: Iterable[int], block_size: int, max_bytes: int) -> list[BlockRun]:
    """Group block indices into runs of contiguous blocks, each at most ``max_bytes`` long.

    Duplicates are dropped and the runs come sorted. A run always holds at
    least one block, so a ``max_bytes`` below ``block_size`` means one block
    per request.
    """
    if block_size <= 0:
        raise ValueError(f"invalid block size {block_size}")
    per_run = max(1, max_bytes // block_size)
    runs: list[BlockRun] = []
    for index in sorted(set(indices)):
        if index < 0:
            raise ValueError(f"invalid block index {index}")
        if runs and index == runs[-1].last + 1 and runs[-1].length < per_run:
            runs[-1] = BlockRun(runs[-1].first, index)
        else:
            runs.append(BlockRun(index, index))
    return runs


def run_span(run: BlockRun, file_size: int, block_size: int = BLOCK_SIZE) -> tuple[int, int]:
    """The bytes ``[start, end)`` of a run of blocks: the HTTP range to ask for."""
    start, _ = block_span(run.first, file_size, block_size)
    _, end = block_span(run.last, file_size, block_size)
    return start, end


def split_run(
    data: bytes, run: BlockRun, file_size: int, block_size: int = BLOCK_SIZE
) -> dict[int, bytes]:
    """Cut the bytes of a run into its blocks (``data`` must be exactly the run's span)."""
    start, end = run_span(run, file_size, block_size)
    if len(data) != end - start:
        raise ValueError(f"a run of {end - start} bytes cannot hold {len(data)} bytes")
    view = memoryview(data)
    return {
        i: bytes(view[(i - run.first) * block_size : (i - run.first + 1) * block_size])
        for i in range(run.first, run.last + 1)
    }
