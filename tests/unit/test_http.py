"""Range headers (RFC 9110 section 14) and If-None-Match, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfs.server._http import RangeNotSatisfiable, etag_matches, parse_range

sizes = st.integers(min_value=0, max_value=2**40)
positions = st.integers(min_value=0, max_value=2**41)


def digits(n: int, zeros: int) -> str:
    return "0" * zeros + str(n)


@given(st.data(), st.integers(1, 2**40), st.integers(0, 3))
def test_satisfiable_ranges_fall_inside_the_blob(
    data: st.DataObject, size: int, zeros: int
) -> None:
    form = data.draw(st.sampled_from(["closed", "open", "suffix"]))
    if form == "suffix":
        length = data.draw(st.integers(1, 2 * size))
        header = f"bytes=-{digits(length, zeros)}"
        expected = (max(0, size - length), size)  # longer than the blob: all of it
    else:
        start = data.draw(st.integers(0, size - 1))
        if form == "open":
            header, expected = f"bytes={digits(start, zeros)}-", (start, size)
        else:
            last = data.draw(st.integers(start, 2 * size))
            header = f"bytes={start}-{digits(last, zeros)}"
            expected = (start, min(last + 1, size))  # an end past the size is cut
    got = parse_range(data.draw(st.sampled_from(["", " "])) + header, size)
    assert got == expected
    start, end = got
    assert 0 <= start < end <= size


@given(sizes, st.data())
def test_unsatisfiable_ranges_are_refused(size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(size, size + 2**20))
    last = data.draw(st.integers(start, start + 2**20))
    for header in (f"bytes={start}-", f"bytes={start}-{last}", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)


@given(positions, positions, sizes)
def test_a_range_that_ends_before_it_starts_is_refused(a: int, b: int, size: int) -> None:
    first, last = max(a, b), min(a, b)
    if first == last:
        return
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={first}-{last}", size)


@given(st.integers(0, 2**40))
def test_nothing_of_an_empty_blob_can_be_asked_for(length: int) -> None:
    for header in (f"bytes=0-{length}", "bytes=0-", f"bytes=-{length}"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0)


def test_no_header_means_the_whole_blob() -> None:
    assert parse_range(None, 0) is None
    assert parse_range(None, 100) is None


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=0-99", (0, 100)),
        ("bytes=99-99", (99, 100)),
        ("bytes=50-", (50, 100)),
        ("bytes=-1", (99, 100)),
        ("bytes=-100", (0, 100)),
        ("bytes=-1000", (0, 100)),
        ("bytes=10-1000", (10, 100)),
        ("bytes=0-" + "9" * 5000, (0, 100)),  # more digits than int() takes by default
        ("bytes=-" + "9" * 5000, (0, 100)),
        ("bytes=" + "0" * 5000 + "7-8", (7, 9)),
    ],
)
def test_range_examples(header: str, expected: tuple[int, int]) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=100-",
        "bytes=100-200",
        "bytes=" + "9" * 5000 + "-",
        "bytes=5-4",
        "bytes=0-1,5-6",  # multiple ranges are not supported
        "bytes=0-1, 5-6",
        "bytes=0-1,",
        "items=0-1",
        "bytes 0-1",
        "bytes=a-b",
        "bytes=0x10-",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=-1-2",
        "bytes=1--2",
        "bytes=1.5-2",
        "bytes=1_0-20",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits: RFC 9110 DIGIT is ASCII only
        "bytes=\uff11-\uff12",  # fullwidth digits
    ],
)
def test_malformed_or_unsatisfiable_headers_are_refused(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@given(st.text(st.characters(max_codepoint=0xFF), max_size=30))
def test_any_header_text_is_parsed_or_refused(header: str) -> None:
    # Starlette decodes header bytes as latin-1, so this is every header a client can send.
    try:
        span = parse_range(header, 1000)
    except RangeNotSatisfiable:
        return
    assert span is not None
    assert 0 <= span[0] < span[1] <= 1000


# ------------------------------------------------------------------ ETags

ETAG = '"' + "ab" * 32 + '"'


@pytest.mark.parametrize(
    "header, matches",
    [
        (None, False),
        ("", False),
        (ETAG, True),
        ("W/" + ETAG, True),
        (f' "x", {ETAG} ', True),
        (f'"x",{ETAG},"y"', True),
        ("*", True),
        (" * ", True),
        ('"x"', False),
        (ETAG.strip('"'), False),  # unquoted
        (ETAG[:-2] + '"', False),
        ('"x", W/"y"', False),
    ],
)
def test_etag_matches(header: str | None, matches: bool) -> None:
    assert etag_matches(header, ETAG) is matches


others = st.lists(st.from_regex(r'"[a-z0-9]{0,10}"', fullmatch=True), max_size=4)


@given(others, st.integers(0, 4), st.booleans(), st.sampled_from([",", ", ", " ,  "]))
def test_our_etag_anywhere_in_the_list_matches(
    tags: list[str], where: int, weak: bool, sep: str
) -> None:
    assert not etag_matches(sep.join(tags), ETAG)
    ours = ("W/" if weak else "") + ETAG
    tags.insert(min(where, len(tags)), ours)
    assert etag_matches(sep.join(tags), ETAG)
