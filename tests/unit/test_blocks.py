"""Block arithmetic: reads -> block slices, block spans, runs of blocks -> HTTP ranges."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfs._blocks import (
    BlockRun,
    BlockSlice,
    block_range,
    block_span,
    blocks_for_range,
    clip,
    coalesce,
    num_blocks,
    run_span,
    slice_in_block,
    split_run,
)
from streamfs._model import BLOCK_SIZE

block_sizes = st.integers(1, 64)
file_sizes = st.integers(0, 1000)


@st.composite
def files_and_reads(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(block_size, file_size, offset, size); reads may start or end past EOF."""
    block_size = draw(block_sizes)
    file_size = draw(file_sizes)
    offset = draw(st.integers(0, file_size + 2 * block_size))
    size = draw(st.integers(0, file_size + 2 * block_size))
    return block_size, file_size, offset, size


def content(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


# ----------------------------------------------------------------- examples


def test_examples_with_4_mib_blocks() -> None:
    size = 10 * 1024 * 1024  # 2.5 blocks
    assert num_blocks(size) == 3 and num_blocks(0) == 0 and num_blocks(BLOCK_SIZE) == 1
    assert block_span(2, size) == (2 * BLOCK_SIZE, size)
    assert list(block_range(BLOCK_SIZE - 1, 2, size)) == [0, 1]
    assert blocks_for_range(BLOCK_SIZE - 1, 2, size) == [
        BlockSlice(0, BLOCK_SIZE - 1, 1),
        BlockSlice(1, 0, 1),
    ]
    assert blocks_for_range(size - 10, 128 * 1024, size) == [
        BlockSlice(2, size - 10 - 8 * 2**20, 10)
    ]
    assert blocks_for_range(size, 10, size) == [] and blocks_for_range(0, 0, size) == []


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        block_span(3, 10 * 1024 * 1024)
    with pytest.raises(ValueError):
        block_span(0, 0)
    with pytest.raises(ValueError):
        clip(-1, 5, 10)
    with pytest.raises(ValueError):
        num_blocks(10, 0)
    with pytest.raises(ValueError):
        slice_in_block(1, 0, 4, 100, 4)  # block 1 is outside the read [0, 4)
    with pytest.raises(ValueError):
        coalesce([-1], 4, 16)
    with pytest.raises(ValueError):
        split_run(b"abc", BlockRun(0, 0), 10, 4)


def test_coalesce_examples() -> None:
    assert coalesce([], 4, 16) == []
    assert coalesce([5, 1, 2, 3, 3, 9, 10], 4, 8) == [
        BlockRun(1, 2),
        BlockRun(3, 3),
        BlockRun(5, 5),
        BlockRun(9, 10),
    ]
    assert coalesce([0, 1, 2], 4, 1) == [BlockRun(0, 0), BlockRun(1, 1), BlockRun(2, 2)]
    assert BlockRun(3, 6).length == 4


def test_run_span_and_split_run() -> None:
    data = content(10)
    assert run_span(BlockRun(1, 2), 10, 4) == (4, 10)
    assert split_run(data[4:], BlockRun(1, 2), 10, 4) == {1: data[4:8], 2: data[8:10]}


# ----------------------------------------------------------------- properties


@given(files_and_reads())
def test_slices_give_exactly_the_requested_bytes(case: tuple[int, int, int, int]) -> None:
    block_size, file_size, offset, size = case
    data = content(file_size)
    slices = blocks_for_range(offset, size, file_size, block_size)
    pieces = []
    for index, start, length in slices:
        lo, hi = block_span(index, file_size, block_size)
        assert start >= 0 and length > 0 and start + length <= hi - lo
        pieces.append(data[lo:hi][start : start + length])
    assert b"".join(pieces) == data[offset : offset + size]


@given(files_and_reads())
def test_blocks_touched_are_exactly_those_overlapping_the_read(
    case: tuple[int, int, int, int],
) -> None:
    block_size, file_size, offset, size = case
    start, end = clip(offset, size, file_size)
    touched = list(block_range(offset, size, file_size, block_size))
    overlapping = [
        i
        for i in range(num_blocks(file_size, block_size))
        if max(start, block_span(i, file_size, block_size)[0])
        < min(end, block_span(i, file_size, block_size)[1])
    ]
    assert touched == overlapping
    assert [s.block for s in blocks_for_range(offset, size, file_size, block_size)] == touched


@given(block_sizes, file_sizes)
def test_block_spans_tile_the_file(block_size: int, file_size: int) -> None:
    n = num_blocks(file_size, block_size)
    spans = [block_span(i, file_size, block_size) for i in range(n)]
    for (_, previous_end), (start, _) in zip([(0, 0), *spans], spans, strict=False):
        assert start == previous_end  # no gap, no overlap
    assert (spans[-1][1] if spans else 0) == file_size
    assert all(hi - lo == block_size for lo, hi in spans[:-1])
    assert all(0 < hi - lo <= block_size for lo, hi in spans)


@given(st.lists(st.integers(0, 60), max_size=40), block_sizes, st.integers(0, 300))
def test_coalesce_partitions_the_indices_into_bounded_runs(
    indices: list[int], block_size: int, max_bytes: int
) -> None:
    runs = coalesce(indices, block_size, max_bytes)
    covered = [i for run in runs for i in range(run.first, run.last + 1)]
    assert covered == sorted(set(indices))  # each index once, in order
    for run in runs:
        assert run.first <= run.last
        assert run.length == 1 or run.length * block_size <= max_bytes
    for a, b in pairwise(runs):
        # A run ends at a gap, or because it was full.
        assert b.first > a.last + 1 or (a.length + 1) * block_size > max_bytes


@given(block_sizes, st.integers(1, 1000), st.data())
def test_split_run_gives_each_block_its_bytes(
    block_size: int, file_size: int, data: st.DataObject
) -> None:
    n = num_blocks(file_size, block_size)
    first = data.draw(st.integers(0, n - 1))
    last = data.draw(st.integers(first, n - 1))
    whole = content(file_size)
    start, end = run_span(BlockRun(first, last), file_size, block_size)
    blocks = split_run(whole[start:end], BlockRun(first, last), file_size, block_size)
    assert list(blocks) == list(range(first, last + 1))
    for index, block in blocks.items():
        lo, hi = block_span(index, file_size, block_size)
        assert block == whole[lo:hi]
