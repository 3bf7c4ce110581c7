"""Half-open byte ranges: which parts of a file are here. Pure code, no I/O.

A ``RangeSet`` is rclone's ``lib/ranges`` in Python: a set of byte positions
kept as sorted ``[start, end)`` ranges. Invariants, restored by every method
that changes the set:

- ranges are non-empty and sorted by start;
- ranges neither overlap nor touch: ``end < next.start`` (inserting
  ``[0, 4)`` next to ``[4, 8)`` leaves one range ``[0, 8)``).

Because of the second invariant, a span is present exactly when one stored
range covers it, and ``find_missing`` can walk the ranges in one pass.
Lookups are O(log n) by bisection over the sorted starts and ends.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Range(NamedTuple):
    """Bytes ``[start, end)``."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def _check(start: int, end: int) -> None:
    if not 0 <= start <= end:
        raise ValueError(f"invalid byte range [{start}, {end})")


class RangeSet:
    """A set of byte positions, stored as merged half-open ranges."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        # Parallel lists, both sorted (the ranges are disjoint): bisect works on either.
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.insert(start, end)

    def insert(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging it with every range it overlaps or touches."""
        _check(start, end)
        if start == end:
            return
        lo = bisect.bisect_left(self._ends, start)  # first range with end >= start
        hi = bisect.bisect_right(self._starts, end)  # past the last with start <= end
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def present(self, start: int, end: int) -> bool:
        """Whether every byte of ``[start, end)`` is in the set (an empty span is)."""
        _check(start, end)
        if start == end:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def __contains__(self, pos: object) -> bool:
        return isinstance(pos, int) and pos >= 0 and self.present(pos, pos + 1)

    def find_missing(self, start: int, end: int) -> list[Range]:
        """The gaps of ``[start, end)``: sorted, disjoint, non-touching ranges."""
        _check(start, end)
        gaps: list[Range] = []
        pos = start
        i = bisect.bisect_right(self._ends, start)  # first range with end > start
        while pos < end and i < len(self._starts) and self._starts[i] < end:
            if self._starts[i] > pos:
                gaps.append(Range(pos, self._starts[i]))
            pos = max(pos, self._ends[i])
            i += 1
        if pos < end:
            gaps.append(Range(pos, end))
        return gaps

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    @property
    def total(self) -> int:
        """How many bytes the set holds."""
        return sum(self._ends) - sum(self._starts)

    def __iter__(self) -> Iterator[Range]:
        return map(Range, self._starts, self._ends)

    def __len__(self) -> int:
        """The number of ranges (not bytes: see ``total``)."""
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeSet({[tuple(r) for r in self]})"
