"""RangeSet: half-open byte ranges, checked against a plain set of positions."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamfs._ranges import Range, RangeSet

LIMIT = 200
positions = st.integers(0, LIMIT)
spans = st.tuples(positions, positions).map(sorted).map(tuple)


def as_set(ranges: Iterable[tuple[int, int]]) -> set[int]:
    return {p for start, end in ranges for p in range(start, end)}


def check_invariants(rs: RangeSet) -> None:
    stored = list(rs)
    assert all(r.start < r.end for r in stored), "empty range stored"
    assert all(a.end < b.start for a, b in pairwise(stored)), "touching"


# ----------------------------------------------------------------- examples


def test_insert_merges_overlapping_and_adjacent() -> None:
    rs = RangeSet([(0, 4), (8, 12)])
    assert list(rs) == [Range(0, 4), Range(8, 12)]
    rs.insert(4, 8)  # touches both
    assert list(rs) == [Range(0, 12)]
    rs.insert(20, 20)  # empty: nothing
    assert len(rs) == 1 and rs.total == 12


def test_present_and_contains() -> None:
    rs = RangeSet([(10, 20)])
    assert rs.present(10, 20) and rs.present(12, 13) and rs.present(30, 30)
    assert not rs.present(9, 11) and not rs.present(19, 21)
    assert 10 in rs and 19 in rs and 20 not in rs and 9 not in rs
    assert -1 not in rs and "x" not in rs


def test_find_missing_examples() -> None:
    rs = RangeSet([(10, 20), (30, 40)])
    assert rs.find_missing(0, 50) == [Range(0, 10), Range(20, 30), Range(40, 50)]
    assert rs.find_missing(15, 35) == [Range(20, 30)]
    assert rs.find_missing(12, 18) == []
    assert rs.find_missing(5, 5) == []
    assert RangeSet().find_missing(3, 7) == [Range(3, 7)]


@pytest.mark.parametrize(("start", "end"), [(5, 4), (-1, 3)])
def test_invalid_ranges_raise(start: int, end: int) -> None:
    rs = RangeSet()
    for call in (rs.insert, rs.present, rs.find_missing):
        with pytest.raises(ValueError):
            call(start, end)


def test_equality_repr_clear() -> None:
    a, b = RangeSet([(0, 2), (2, 4)]), RangeSet([(0, 4)])
    assert a == b and repr(a) == "RangeSet([(0, 4)])"
    assert a != "RangeSet"
    a.clear()
    assert len(a) == 0 and a.total == 0 and a != b


# ----------------------------------------------------------------- properties


@given(st.lists(spans, max_size=12))
def test_insert_keeps_exactly_the_union(ranges: list[tuple[int, int]]) -> None:
    rs = RangeSet(ranges)
    check_invariants(rs)
    assert as_set(rs) == as_set(ranges)
    assert rs.total == len(as_set(ranges))


@given(st.lists(spans, max_size=12))
def test_insert_order_does_not_matter(ranges: list[tuple[int, int]]) -> None:
    assert RangeSet(ranges) == RangeSet(reversed(ranges)) == RangeSet(sorted(ranges))


@given(st.lists(spans, max_size=12), spans)
def test_find_missing_is_exactly_the_complement(
    ranges: list[tuple[int, int]], query: tuple[int, int]
) -> None:
    rs = RangeSet(ranges)
    start, end = query
    gaps = rs.find_missing(start, end)
    assert as_set(gaps) == set(range(start, end)) - as_set(ranges)
    assert all(g.start < g.end for g in gaps)
    assert all(a.end < b.start for a, b in pairwise(gaps))
    assert rs.present(start, end) == (gaps == [])


@given(st.lists(spans, max_size=12), spans)
def test_inserting_the_gaps_fills_the_span(
    ranges: list[tuple[int, int]], query: tuple[int, int]
) -> None:
    rs = RangeSet(ranges)
    for gap in rs.find_missing(*query):
        rs.insert(*gap)
    assert rs.present(*query)
    assert rs.find_missing(*query) == []


@given(st.lists(spans, max_size=12), spans)
def test_present_matches_the_model(ranges: list[tuple[int, int]], query: tuple[int, int]) -> None:
    assert RangeSet(ranges).present(*query) == (set(range(*query)) <= as_set(ranges))


# ----------------------------------------------------------------- model-based


class RangeSetMachine(RuleBasedStateMachine):
    """Random insert/query sequences, compared with a set of positions."""

    def __init__(self) -> None:
        super().__init__()
        self.rs = RangeSet()
        self.model: set[int] = set()

    @rule(span=spans)
    def insert(self, span: tuple[int, int]) -> None:
        self.rs.insert(*span)
        self.model |= set(range(*span))

    @rule(pos=positions)
    def contains(self, pos: int) -> None:
        assert (pos in self.rs) == (pos in self.model)

    @rule(span=spans)
    def find_missing(self, span: tuple[int, int]) -> None:
        assert as_set(self.rs.find_missing(*span)) == set(range(*span)) - self.model

    @precondition(lambda self: len(self.model) > LIMIT // 2)
    @rule()
    def clear(self) -> None:
        self.rs.clear()
        self.model.clear()

    @invariant()
    def well_formed(self) -> None:
        check_invariants(self.rs)
        assert self.rs.total == len(self.model)


TestRangeSetMachine = RangeSetMachine.TestCase
