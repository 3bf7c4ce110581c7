"""write_all: every byte, in pieces small enough that the kernel makes small page-cache folios."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from streamfs import _realos
from streamfs._cache import BlockCache
from streamfs._model import BLOCK_SIZE
from streamfs._realos import WRITE_PIECE, write_all


class RecordingOS:
    """The real OS module, with every write's size recorded (and cut to ``cap`` bytes)."""

    def __init__(self, real: Any, cap: int | None = None) -> None:
        self._real = real
        self.cap = cap
        self.writes: list[int] = []

    def write(self, fd: int, data: Any) -> int:
        self.writes.append(len(data))
        return self._real.write(fd, data if self.cap is None else data[: self.cap])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingOS:
    fake = RecordingOS(_realos.real)
    monkeypatch.setattr(_realos, "real", fake)
    return fake


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def test_every_byte_lands_in_pieces_of_at_most_write_piece(
    tmp_path: Path, recording: RecordingOS
) -> None:
    data = random.Random(1).randbytes(3 * WRITE_PIECE + 17)
    _write_file(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data
    assert recording.writes == [WRITE_PIECE] * 3 + [17]


def test_short_writes_are_continued(tmp_path: Path, recording: RecordingOS) -> None:
    recording.cap = 1000
    data = random.Random(2).randbytes(10_500)
    _write_file(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data
    assert len(recording.writes) == 11


def test_nothing_to_write_makes_no_call(tmp_path: Path, recording: RecordingOS) -> None:
    _write_file(tmp_path / "f", b"")
    assert (tmp_path / "f").read_bytes() == b""
    assert recording.writes == []


def test_the_cache_writes_a_block_file_in_pieces(tmp_path: Path, recording: RecordingOS) -> None:
    block = random.Random(3).randbytes(BLOCK_SIZE)
    with BlockCache(tmp_path / "cache") as cache:
        cache.put_many({("ab" * 32, 0): block})
        assert cache.get("ab" * 32, 0, 0, BLOCK_SIZE) == block
    assert sum(recording.writes) >= BLOCK_SIZE
    assert max(recording.writes) <= WRITE_PIECE
