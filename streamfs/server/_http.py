"""HTTP details that are pure logic: Range headers and ETags."""

from __future__ import annotations

import re

_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # RFC 9110 DIGIT is ASCII only


class RangeNotSatisfiable(Exception):
    pass


def _position(digits: str) -> int:
    """A byte position; more than 19 digits is past any blob (and past int()'s digit limit)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else 10**19


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte range [start, end) a single-range header asks for.

    None means the whole blob (no header). Suffix ranges (``bytes=-500``) and
    open ranges (``bytes=100-``) are supported; an end past the size is cut to
    the size, as RFC 9110 says. Multiple ranges, malformed headers and ranges
    that start at or past the end raise RangeNotSatisfiable (answered 416).
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        raise RangeNotSatisfiable(f"unsupported Range header {header!r}: want one bytes=START-END")
    first, last = match.groups()
    if not first and not last:
        raise RangeNotSatisfiable("empty range")
    if not first:
        length = _position(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, size - length), size
    start = _position(first)
    end = size if not last else min(size, _position(last) + 1)
    if last and _position(last) < start:
        raise RangeNotSatisfiable(f"range end {last} before start {start}")
    if start >= size:
        raise RangeNotSatisfiable(f"range start {start} is past the end ({size} bytes)")
    return start, end


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates
