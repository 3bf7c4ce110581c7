"""What hooked calls hand back: file objects, DirEntry look-alikes, scandir iterators.

A file opened for reading is a ``HookedReadFile`` (a RepoFile: blocks on
demand) under the usual io buffering and text layers. Its ``fileno()``
materializes the file into the local mirror and returns a real descriptor
of that copy, so ``mmap`` and C code given ``f.fileno()`` work. A small
file wholly cached where the process knows the cache's file of it (a warm
epoch) is that file instead, opened read-only as an ``io.FileIO`` under the
user's name: reads are native, and ``fileno()`` is its descriptor (its
``fstat`` is the cache file's: same size, other times and inode). A file
opened for writing is a ``StagedFileIO``: a real file in the overlay's
staging folder that tells the overlay when it is closed.
"""

from __future__ import annotations

import io
import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from typing import IO, Any

from ._overlay import Overlay, StagedHandle
from ._reader import BlobReader, RepoFile

BUFFER_SIZE = io.DEFAULT_BUFFER_SIZE * 16


class HookedReadFile(RepoFile):
    def __init__(self, reader: BlobReader, name: str, materialize: Callable[[], str]) -> None:
        super().__init__(reader, name)
        self._materialize = materialize
        self._fd: int | None = None

    def fileno(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._fd is None:
            self._fd = os.open(self._materialize(), os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


class StagedFileIO(io.FileIO):
    """A staged file opened for writing; closing it closes the overlay's handle."""

    def __init__(self, overlay: Overlay, handle: StagedHandle, mode: str, name: str) -> None:
        super().__init__(handle.fd, mode, closefd=False)
        handle._digest = None  # written through the descriptor: hashed again at close
        self._overlay: Overlay | None = overlay
        self._handle = handle
        self.name = name

    def close(self) -> None:
        overlay, self._overlay = self._overlay, None
        try:
            super().close()
        finally:
            if overlay is not None:
                overlay.close_handle(self._handle)


def raw_mode(mode: str) -> str:
    """The FileIO mode of an ``open`` mode ('w', 'r+', 'ab', ...)."""
    base = next(c for c in mode if c in "rwxa")
    return base + ("+" if "+" in mode else "")


def check_mode(mode: str, buffering: int, encoding: str | None) -> None:
    """The ValueErrors ``open`` raises for a bad mode (before anything is looked up)."""
    if mode == "rb" and encoding is None:  # what loaders pass on every open
        return
    chars = set(mode)
    if (
        len(mode) != len(chars)
        or not chars <= set("rwxabt+")
        or sum(c in "rwxa" for c in mode) != 1
        or {"b", "t"} <= chars
    ):
        raise ValueError(f"invalid mode: {mode!r}")
    if "b" in chars and encoding is not None:
        raise ValueError("binary mode doesn't take an encoding argument")
    if "b" not in chars and buffering == 0:
        raise ValueError("can't have unbuffered text I/O")


def layer(
    raw: io.RawIOBase,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> IO[Any]:
    """Buffering and text layers over ``raw``, the way ``open`` builds them."""
    if mode == "rb" and buffering == -1:  # what loaders open, every file
        return io.BufferedReader(raw, BUFFER_SIZE)
    if buffering == 0:
        return raw  # type: ignore[return-value]
    size = BUFFER_SIZE if buffering in (-1, 1) else buffering
    buffer: io.BufferedIOBase
    if "+" in mode:
        buffer = io.BufferedRandom(raw, size)
    elif "r" in mode:
        buffer = io.BufferedReader(raw, size)
    else:
        buffer = io.BufferedWriter(raw, size)
    if "b" in mode:
        return buffer
    text = io.TextIOWrapper(
        buffer,
        io.text_encoding(encoding),
        errors,
        newline,
        line_buffering=buffering == 1,
    )
    text.mode = mode  # type: ignore[misc]
    return text


# ------------------------------------------------------------------ directories


class DirEntry:
    """What ``os.scandir`` yields, for an entry of a hooked repository (no symlinks there)."""

    __slots__ = ("_stat", "name", "path")

    def __init__(self, name: str | bytes, path: str | bytes, st: os.stat_result) -> None:
        self.name: Any = name
        self.path: Any = path
        self._stat = st

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return stat_mod.S_ISDIR(self._stat.st_mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return stat_mod.S_ISREG(self._stat.st_mode)

    def is_symlink(self) -> bool:
        return False

    def is_junction(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self._stat

    def inode(self) -> int:
        return self._stat.st_ino

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class ScandirIterator:
    """A context manager and iterator over entries, like the one ``os.scandir`` returns."""

    def __init__(self, entries: list[Any]) -> None:
        self._it: Iterator[Any] = iter(entries)

    def __iter__(self) -> ScandirIterator:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self) -> ScandirIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
