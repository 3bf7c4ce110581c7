"""The readahead planner: a pure state machine, driven by read patterns."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streamfs._blocks import block_range, num_blocks
from streamfs._model import BLOCK_SIZE
from streamfs._readahead import MiB, Plan, ReadaheadPlanner

KiB = 1024


@dataclass(frozen=True)
class Setup:
    block_size: int
    file_size: int
    initial: int  # bytes
    maximum: int  # bytes
    small_file: int
    tolerance: int

    def planner(self) -> ReadaheadPlanner:
        return ReadaheadPlanner(
            self.file_size,
            self.block_size,
            initial_window=self.initial,
            max_window=self.maximum,
            small_file=self.small_file,
            tolerance=self.tolerance,
        )

    @property
    def blocks(self) -> int:
        return num_blocks(self.file_size, self.block_size)

    @property
    def max_blocks(self) -> int:
        return self.maximum // self.block_size


@st.composite
def setups(draw: st.DrawFn, *, large: bool = False) -> Setup:
    """Small blocks so files of hundreds of blocks stay cheap; windows are whole blocks."""
    block_size = draw(st.integers(4, 32))
    initial_blocks = draw(st.integers(1, 4))
    max_blocks = initial_blocks * 2 ** draw(st.integers(0, 5))
    small_file = draw(st.integers(0, 3)) * block_size
    low = max(small_file, block_size) + 1 if large else 0
    file_size = draw(st.integers(low, max(low, 300 * block_size)))
    tolerance = draw(st.integers(0, 2 * block_size))
    return Setup(
        block_size,
        file_size,
        initial_blocks * block_size,
        max_blocks * block_size,
        small_file,
        tolerance,
    )


def reads_in(setup: Setup) -> st.SearchStrategy[tuple[int, int]]:
    limit = setup.file_size + 2 * setup.block_size
    return st.tuples(st.integers(0, limit), st.integers(0, 4 * setup.block_size))


def check_plan(setup: Setup, plan: Plan, offset: int, size: int) -> None:
    """What holds for every plan, whatever the read pattern."""
    needed = block_range(offset, size, setup.file_size, setup.block_size)
    assert plan.needed == tuple(needed)
    assert set(plan.needed) <= set(plan.fetch)
    assert not set(plan.needed) & set(plan.ahead)
    assert all(0 <= i < setup.blocks for i in plan.fetch), "planned past EOF"
    assert plan.fetch == tuple(sorted(set(plan.fetch)))
    assert 0 <= plan.window <= max(setup.maximum, setup.initial)
    if plan.ahead and not plan.whole:
        window_blocks = plan.window // setup.block_size
        assert all(needed.stop <= i < needed.stop + window_blocks for i in plan.ahead)


# ----------------------------------------------------------------- any pattern


@given(st.data())
def test_every_plan_is_sane_for_any_read_pattern(data: st.DataObject) -> None:
    setup = data.draw(setups())
    planner = setup.planner()
    planned_in_stream: set[int] = set()
    for offset, size in data.draw(st.lists(reads_in(setup), max_size=40)):
        plan = planner.on_read(offset, size)
        check_plan(setup, plan, offset, size)
        if plan.window == 0:
            planned_in_stream.clear()
        assert not planned_in_stream & set(plan.ahead), "a block read ahead twice in a stream"
        planned_in_stream |= set(plan.ahead)


@given(st.data())
def test_random_reads_fetch_only_what_they_read(data: st.DataObject) -> None:
    setup = data.draw(setups(large=True))
    planner = setup.planner()
    end: int | None = None
    for offset, size in data.draw(st.lists(reads_in(setup), max_size=40)):
        if end is not None and abs(offset - end) <= setup.tolerance:
            continue  # that one would be sequential: not part of a random pattern
        if size == 0 or offset >= setup.file_size:
            continue  # reads nothing: no effect (tested below)
        plan = planner.on_read(offset, size)
        assert plan.fetch == plan.needed and plan.window == 0
        end = min(offset + size, setup.file_size)


@given(st.data())
def test_a_random_read_resets_the_stream(data: st.DataObject) -> None:
    setup = data.draw(setups(large=True))
    step = setup.block_size
    planner = setup.planner()
    planner.on_read(0, step)
    streaming = planner.on_read(step, step)
    assert streaming.window == setup.initial
    frontier = (max(streaming.fetch) + 1) * setup.block_size
    assume(frontier + setup.tolerance + 1 + 2 * step <= setup.file_size)
    seek = data.draw(st.integers(frontier + setup.tolerance + 1, setup.file_size - 2 * step))
    jump = planner.on_read(seek, step)
    assert jump.fetch == jump.needed and jump.window == 0  # no readahead
    assert planner.on_read(seek + step, step).window == setup.initial  # starts small again


# ----------------------------------------------------------------- sequential scans


@given(st.data())
def test_a_sequential_scan_grows_the_window_up_to_the_cap(data: st.DataObject) -> None:
    setup = data.draw(setups(large=True))
    read_size = data.draw(st.integers(1, 2 * setup.block_size))
    planner = setup.planner()
    windows: list[int] = []
    planned: set[int] = set()
    needed_all: set[int] = set()
    for n, offset in enumerate(range(0, setup.file_size, read_size)):
        plan = planner.on_read(offset, read_size)
        check_plan(setup, plan, offset, read_size)
        windows.append(plan.window)
        planned |= set(plan.fetch)
        needed_all |= set(plan.needed)
        if n >= 1:  # the stream runs: blocks just past the read are already asked for
            stop = min(plan.needed[-1] + 1 + setup.initial // setup.block_size, setup.blocks)
            assert set(range(stop)) <= planned
    assert windows[0] == 0 and windows[1:] == sorted(windows[1:])  # grows, never shrinks
    assert max(windows) <= setup.maximum
    assert planned == needed_all == set(range(setup.blocks)), "a scan fetches each block"
    if setup.blocks >= 4 * setup.max_blocks + 2:
        assert windows[-1] == setup.maximum


def test_window_doubles_from_8_to_128_mib_on_a_real_sized_scan() -> None:
    size = 1024 * MiB
    planner = ReadaheadPlanner(size, BLOCK_SIZE)
    windows: list[int] = []
    for offset in range(0, size, 128 * KiB):
        window = planner.on_read(offset, 128 * KiB).window
        if not windows or windows[-1] != window:
            windows.append(window)
    assert windows == [0, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 128 * MiB]


def test_first_reads_of_a_scan() -> None:
    planner = ReadaheadPlanner(100 * BLOCK_SIZE, BLOCK_SIZE)
    assert planner.on_read(0, 128 * KiB) == Plan((0,), ())  # the first read: no readahead
    assert planner.on_read(128 * KiB, 128 * KiB) == Plan((0,), (1, 2), 8 * MiB)
    assert planner.on_read(256 * KiB, 128 * KiB) == Plan((0,), (), 8 * MiB)
    # Reaching the first block read ahead doubles the window.
    assert planner.on_read(BLOCK_SIZE, 128 * KiB) == Plan((1,), (3, 4, 5), 16 * MiB)


def test_reads_slightly_out_of_order_stay_sequential() -> None:
    planner = ReadaheadPlanner(100 * BLOCK_SIZE, BLOCK_SIZE)
    for offset in (0, 256 * KiB, 128 * KiB, 512 * KiB, 384 * KiB):
        plan = planner.on_read(offset, 128 * KiB)
    assert plan.window == 8 * MiB


def test_forward_skip_into_prefetched_blocks_keeps_streaming() -> None:
    planner = ReadaheadPlanner(100 * BLOCK_SIZE, BLOCK_SIZE)
    planner.on_read(0, 128 * KiB)
    planner.on_read(128 * KiB, 128 * KiB)  # blocks 1 and 2 read ahead
    assert planner.on_read(2 * BLOCK_SIZE, 128 * KiB).window == 16 * MiB


# ----------------------------------------------------------------- small files, EOF


@given(st.data())
def test_a_small_file_is_fetched_whole_on_its_first_read(data: st.DataObject) -> None:
    block_size = data.draw(st.integers(4, 32))
    small_file = data.draw(st.integers(0, 4)) * block_size
    file_size = data.draw(st.integers(1, max(small_file, block_size)))
    planner = ReadaheadPlanner(file_size, block_size, small_file=small_file)
    offset = data.draw(st.integers(0, file_size - 1))
    first = planner.on_read(offset, data.draw(st.integers(1, file_size)))
    assert first.whole and first.fetch == tuple(range(num_blocks(file_size, block_size)))
    for offset, size in data.draw(
        st.lists(st.tuples(st.integers(0, file_size), st.integers(0, 9)))
    ):
        plan = planner.on_read(offset, size)
        assert not plan.whole and plan.fetch == plan.needed


@given(st.data())
def test_reads_at_or_past_eof_plan_nothing_and_change_nothing(data: st.DataObject) -> None:
    setup = data.draw(setups())
    reads = data.draw(st.lists(reads_in(setup), max_size=20))
    at = data.draw(st.integers(0, len(reads)))
    with_eof, without = setup.planner(), setup.planner()
    for i, (offset, size) in enumerate(reads):
        if i == at:
            assert with_eof.on_read(setup.file_size + offset, size).fetch == ()
        assert with_eof.on_read(offset, size) == without.on_read(offset, size)


def test_an_empty_file_plans_nothing() -> None:
    planner = ReadaheadPlanner(0, BLOCK_SIZE)
    assert planner.on_read(0, 4096) == Plan((), ())


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_window": 0}, {"initial_window": 16 * MiB, "max_window": 8 * MiB}, {"tolerance": -1}],
)
def test_bad_settings_raise(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ReadaheadPlanner(100, 10, **kwargs)


@given(
    offset=st.integers(min_value=0, max_value=30 * BLOCK_SIZE),
    pieces=st.integers(min_value=1, max_value=15),
)
def test_a_split_random_read_below_min_stream_reads_nothing_ahead(offset: int, pieces: int) -> None:
    """The kernel cuts a 1 MiB read into 128 KiB reads: that is not a stream."""
    planner = ReadaheadPlanner(32 * BLOCK_SIZE, min_stream=2 * MiB)
    for i in range(pieces):
        plan = planner.on_read(offset + i * 128 * KiB, 128 * KiB)
        assert plan.ahead == ()


def test_a_long_sequential_run_streams_after_min_stream() -> None:
    planner = ReadaheadPlanner(32 * BLOCK_SIZE, min_stream=2 * MiB)
    ahead = [planner.on_read(i * 128 * KiB, 128 * KiB).ahead for i in range(24)]
    assert all(a == () for a in ahead[:15])  # under 2 MiB read so far
    assert any(a for a in ahead[15:])


def test_continues_says_which_reads_belong_to_a_handle() -> None:
    p = ReadaheadPlanner(64 * MiB, BLOCK_SIZE)
    assert not p.continues(0)  # no read yet: nothing to continue
    p.on_read(0, 128 * KiB)
    assert p.continues(128 * KiB) and p.continues(0)  # next piece, or a little out of order
    assert not p.continues(40 * MiB)  # far away: another stream
    assert ReadaheadPlanner(100 * KiB, BLOCK_SIZE).continues(90 * KiB)  # small files: always
