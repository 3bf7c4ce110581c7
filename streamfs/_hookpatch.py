"""The patches: thin replacements of open, io.open and os functions over a HookFS.

Each replacement asks the HookFS whether its path is hooked; if not (or a
real local file is there, or the call uses ``dir_fd``/an ``opener``/a file
descriptor), it calls the original untouched. Everything built on these
goes through them on Python 3.11: ``os.path.exists/isfile/isdir/getsize/
getmtime`` call ``os.stat``; ``os.walk`` and ``glob`` call ``os.scandir``;
``pathlib.Path`` calls ``os.stat``, ``os.listdir``, ``os.scandir`` and
``io.open``; ``shutil.copy*`` calls ``open``, ``os.stat`` and
``os.listxattr``; ``os.makedirs`` calls ``os.mkdir``.

A streamfs error is raised again from the replacement itself, with the
caller's path as ``filename``: a missing file is one FileNotFoundError
(errno ENOENT) with no chained traceback from inside streamfs.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from typing import Any

from ._errors import InvalidInputError, StreamfsError
from ._hookfs import HookedRepo, HookFS, real_lstat
from ._hookio import (
    DirEntry,
    HookedReadFile,
    ScandirIterator,
    StagedFileIO,
    check_mode,
    layer,
    raw_mode,
)
from ._reader import BlobReader

WRITE_MODES = frozenset("wxa+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

fs = HookFS()
_orig: dict[str, Any] = {}  # name -> the function replaced (what uninstall puts back)
_active = False  # _orig stays filled after unpatch: a call already inside a hook still works


def _text(path: object) -> str | None:
    """The str path of a str/bytes/PathLike argument; None for a descriptor or anything else."""
    if isinstance(path, str):
        return path
    if isinstance(path, bytes):
        return os.fsdecode(path)
    if isinstance(path, os.PathLike):
        value = os.fspath(path)
        return value if isinstance(value, str) else os.fsdecode(value)
    return None


def _shown(path: object) -> str:
    text = _text(path)
    return text if text is not None else repr(path)


def _user_error(exc: StreamfsError, path: object) -> StreamfsError:
    return type(exc)(exc.message, filename=_shown(path))


# ------------------------------------------------------------------ open


def hooked_open(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Any = None,
) -> Any:
    text = _text(file) if opener is None and isinstance(mode, str) else None
    if text is not None:
        writing = not WRITE_MODES.isdisjoint(mode)
        hit = fs.for_write(text) if writing else fs.for_read(text)
        if hit is not None:
            check_mode(mode, buffering, encoding)
            try:
                return _open_hooked(hit, text, mode, buffering, encoding, errors, newline)
            except StreamfsError as exc:
                raise _user_error(exc, file) from None
    return _orig["open"](file, mode, buffering, encoding, errors, newline, closefd, opener)


def _open_hooked(
    hit: tuple[HookedRepo, str],
    name: str,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> Any:
    repo, rel = hit
    raw: io.RawIOBase
    if WRITE_MODES.isdisjoint(mode):
        source = repo.open_read(rel)
        if isinstance(source, BlobReader):
            raw = HookedReadFile(source, name, lambda: repo.materialize(rel))
        else:  # the cache's own file of a cached small file, or a staged file
            raw = io.FileIO(source, "r")
            raw.name = name
    else:
        handle = repo.open_write(
            rel, create="r" not in mode, truncate="w" in mode, exclusive="x" in mode
        )
        raw = StagedFileIO(repo.writer(rel).overlay, handle, raw_mode(mode), name)
    return layer(raw, mode, buffering, encoding, errors, newline)


def hooked_os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
    text = _text(path) if dir_fd is None else None
    if text is not None:
        writing = bool(flags & WRITE_FLAGS)
        hit = fs.for_write(text) if writing else fs.for_read(text)
        if hit is not None:
            try:
                return _os_open_hooked(hit, flags, writing)
            except StreamfsError as exc:
                raise _user_error(exc, path) from None
    return int(_orig["os.open"](path, flags, mode, dir_fd=dir_fd))


def _os_open_hooked(hit: tuple[HookedRepo, str], flags: int, writing: bool) -> int:
    repo, rel = hit
    if not writing:
        if repo.is_dir(rel):
            raise InvalidInputError(
                "a folder of a hooked repository has no descriptor; use the mount", filename=rel
            )
        return int(_orig["os.open"](repo.materialize(rel), flags))
    handle = repo.open_write(
        rel,
        create=bool(flags & os.O_CREAT),
        truncate=bool(flags & os.O_TRUNC),
        exclusive=bool(flags & os.O_CREAT and flags & os.O_EXCL),
    )
    handle._digest = None  # written through a raw descriptor: hashed at the commit
    repo.writer(rel).fd_handles.append(handle)
    fd = os.dup(handle.fd)
    if flags & os.O_APPEND:
        os.lseek(fd, 0, os.SEEK_END)
    return fd


# ------------------------------------------------------------------ metadata


def hooked_stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> Any:
    hit = fs.for_read(text) if dir_fd is None and (text := _text(path)) is not None else None
    if hit is None:
        return _orig["os.stat"](path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    try:
        return hit[0].stat(hit[1])
    except StreamfsError as exc:
        raise _user_error(exc, path) from None


def hooked_lstat(path: Any, *, dir_fd: int | None = None) -> Any:
    hit = fs.for_read(text) if dir_fd is None and (text := _text(path)) is not None else None
    if hit is None:
        return _orig["os.lstat"](path, dir_fd=dir_fd)
    try:
        return hit[0].stat(hit[1])
    except StreamfsError as exc:
        raise _user_error(exc, path) from None


def hooked_access(
    path: Any,
    mode: int,
    *,
    dir_fd: int | None = None,
    effective_ids: bool = False,
    follow_symlinks: bool = True,
) -> bool:
    hit = fs.for_read(text) if dir_fd is None and (text := _text(path)) is not None else None
    if hit is None:
        return bool(
            _orig["os.access"](
                path,
                mode,
                dir_fd=dir_fd,
                effective_ids=effective_ids,
                follow_symlinks=follow_symlinks,
            )
        )
    try:
        return hit[0].access(hit[1], mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except StreamfsError as exc:
        raise _user_error(exc, path) from None


def hooked_listxattr(path: Any = None, *, follow_symlinks: bool = True) -> Any:
    hit = fs.for_read(text) if (text := _text(path)) is not None else None
    if hit is None:
        return _orig["os.listxattr"](path, follow_symlinks=follow_symlinks)
    try:
        hit[0].lookup(hit[1])
    except StreamfsError as exc:
        raise _user_error(exc, path) from None
    return []


# ------------------------------------------------------------------ listings


def _listing(path: Any) -> tuple[HookedRepo, str, bool] | None:
    text = _text(path)
    return fs.for_listing(text) if text is not None else None


def hooked_listdir(path: Any = ".") -> Any:
    hit = _listing(path)
    if hit is None:
        return _orig["os.listdir"](path)
    repo, rel, real = hit
    local = [os.fsdecode(n) for n in _orig["os.listdir"](path)] if real else []
    try:
        names = repo.names(rel)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if real:
            names = []
        else:
            raise _user_error(exc, path) from None  # type: ignore[arg-type]
    except StreamfsError as exc:
        raise _user_error(exc, path) from None
    seen = set(local)
    merged = local + [n for n in names if n not in seen]
    return [os.fsencode(n) for n in merged] if isinstance(path, bytes) else merged


def hooked_scandir(path: Any = ".") -> Any:
    hit = _listing(path)
    if hit is None:
        return _orig["os.scandir"](path)
    repo, rel, real = hit
    local: list[Any] = []
    if real:
        with _orig["os.scandir"](path) as it:
            local = list(it)
    try:
        entries = repo.entries(rel)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not real:
            raise _user_error(exc, path) from None  # type: ignore[arg-type]
        entries = []
    except StreamfsError as exc:
        raise _user_error(exc, path) from None
    seen = {os.fsdecode(e.name) for e in local}
    return ScandirIterator([*local, *_dir_entries(path, entries, seen)])


def _dir_entries(path: Any, entries: list[tuple[str, Any]], seen: set[str]) -> list[Any]:
    base = os.fspath(path)
    if isinstance(base, bytes):
        return [
            DirEntry(os.fsencode(n), os.path.join(base, os.fsencode(n)), st)
            for n, st in entries
            if n not in seen
        ]
    return [DirEntry(n, os.path.join(base, n), st) for n, st in entries if n not in seen]


# ------------------------------------------------------------------ changes


def hooked_mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
    hit = fs.for_write(text) if dir_fd is None and (text := _text(path)) is not None else None
    if hit is None:
        return _orig["os.mkdir"](path, mode, dir_fd=dir_fd)  # type: ignore[no-any-return]
    try:
        hit[0].mkdir(hit[1])
    except StreamfsError as exc:
        raise _user_error(exc, path) from None


def _removal(name: str, op: str) -> Any:
    def hooked(path: Any, *, dir_fd: int | None = None) -> None:
        hit = fs.for_read(text) if dir_fd is None and (text := _text(path)) is not None else None
        if hit is None:
            return _orig[name](path, dir_fd=dir_fd)  # type: ignore[no-any-return]
        try:
            getattr(hit[0], op)(hit[1])
        except StreamfsError as exc:
            raise _user_error(exc, path) from None

    hooked.__name__ = name.split(".")[-1]
    return hooked


def _renaming(name: str) -> Any:
    def hooked(
        src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        s_text, d_text = _text(src), _text(dst)
        plain = src_dir_fd is None and dst_dir_fd is None and s_text and d_text
        old = fs.for_read(s_text) if plain and s_text else None
        new = fs.for_write(d_text) if plain and d_text else None
        if old is None and new is None:
            return _orig[name](  # type: ignore[no-any-return]
                src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd
            )
        try:
            _rename_hooked(old, new, s_text)
        except StreamfsError as exc:
            raise _user_error(exc, src) from None

    hooked.__name__ = name.split(".")[-1]
    return hooked


def _rename_hooked(
    old: tuple[HookedRepo, str] | None, new: tuple[HookedRepo, str] | None, src: str | None
) -> None:
    if old is not None and new is not None and old[0] is new[0]:
        old[0].rename(old[1], new[1])
        return
    st = real_lstat(src) if old is None and src else None
    if new is not None and st is not None and os.path.isfile(src or ""):
        new[0].import_file(new[1], src or "")  # a local file moved into the hooked folder
        _orig["os.unlink"](src)
        return
    raise OSError(errno.EXDEV, "cross-device link (a hooked repository and local disk)", src)


# ------------------------------------------------------------------ installing

PATCHES: dict[str, tuple[object, str, Any]] = {
    "open": (builtins, "open", hooked_open),
    "io.open": (io, "open", hooked_open),
    "os.open": (os, "open", hooked_os_open),
    "os.stat": (os, "stat", hooked_stat),
    "os.lstat": (os, "lstat", hooked_lstat),
    "os.access": (os, "access", hooked_access),
    "os.listdir": (os, "listdir", hooked_listdir),
    "os.scandir": (os, "scandir", hooked_scandir),
    "os.mkdir": (os, "mkdir", hooked_mkdir),
    "os.unlink": (os, "unlink", _removal("os.unlink", "unlink")),
    "os.remove": (os, "remove", _removal("os.remove", "unlink")),
    "os.rmdir": (os, "rmdir", _removal("os.rmdir", "rmdir")),
    "os.rename": (os, "rename", _renaming("os.rename")),
    "os.replace": (os, "replace", _renaming("os.replace")),
}
if hasattr(os, "listxattr"):
    PATCHES["os.listxattr"] = (os, "listxattr", hooked_listxattr)


def patch() -> None:
    """Replace every function in PATCHES (once); the originals go to ``_orig``."""
    global _active
    if _active:
        return
    for name, (module, attr, replacement) in PATCHES.items():
        _orig[name] = getattr(module, attr)
        setattr(module, attr, replacement)
    _active = True


def unpatch() -> None:
    """Put back exactly the objects ``patch`` replaced."""
    global _active
    if not _active:
        return
    for name, (module, attr, _) in PATCHES.items():
        setattr(module, attr, _orig[name])
    _active = False


def is_patched() -> bool:
    return _active
