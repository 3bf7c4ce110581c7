"""MountFS: the file system a mount shows, tested without the kernel.

A read-only mount serves one pinned commit (RepoView). A writable mount (a
branch) layers an Overlay of local changes on top of it; the overlay decides
what a path is, stages written files on local disk and turns them into
commits (see _overlay.py). The FUSE adapter (_fuse.py) only translates.

Handles: an integer per open file of a writable mount. Readers get a
BlobReader of their own (readahead state is per handle); writers get a staged
file. ``_handles`` is guarded by ``_lock``, held for dict operations only. A
writer's handle leaves ``_handles`` only after its release has staged the
file, so ``settle`` can wait for the releases the kernel sends after close(2)
has returned (an explicit commit must include a file closed just before). A
read-only mount has no handles: the kernel stops sending opens and releases
(see _fuse.py) and reads come by path (``read_path_into``, readers kept per stream
in PathReaders).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat as stat_mod
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._errors import IsADirError, ReadOnlyError, StreamfsError
from ._model import Entry
from ._overlay import Overlay, StagedHandle
from ._pathreaders import PathReaders
from ._reader import BlobReader
from ._view import RepoView, entry_stat

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass
class _ReadHandle:
    reader: BlobReader


class MountFS:
    def __init__(self, view: RepoView, overlay: Overlay | None = None) -> None:
        self.view = view
        self.overlay = overlay
        self._handles: dict[int, _ReadHandle | StagedHandle] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self.uid, self.gid = os.getuid(), os.getgid()
        self.read_calls = 0  # reads that reached the daemon (the kernel cache serves the rest)
        # a read-only mount reads by path: no open or release reaches Python (see _pathreaders.py)
        self.by_path = PathReaders(self._reader)

    @property
    def writable(self) -> bool:
        return self.overlay is not None

    def _base(self) -> RepoView:
        return self.overlay.view if self.overlay is not None else self.view

    # ------------------------------------------------------------ lookups

    @staticmethod
    def _rel(path: str) -> str:
        return path.strip("/")

    def lookup(self, path: str) -> Entry:
        rel = self._rel(path)
        if self.overlay is not None:
            return self.overlay.lookup(rel)
        return self.view.lookup(rel)

    def getattr(self, path: str, fh: int | None = None) -> tuple[int, ...]:
        """stat(2) of ``path``: os.stat_result's first ten fields (mode, ino, dev, nlink,
        uid, gid, size, atime, mtime, ctime), owned by the user who mounted."""
        rel = self._rel(path)
        if self.overlay is not None:
            st = self.overlay.stat(rel)
        else:
            st = entry_stat(self.view.lookup(rel), rel)
        return (*st[:4], self.uid, self.gid, *st[6:])

    def readdir(self, path: str) -> list[str]:
        rel = self._rel(path)
        if self.overlay is not None:
            return self.overlay.listdir(rel)
        return [e.name for e in self.view.listdir(rel).entries]

    def access(self, path: str, amode: int) -> None:
        entry = self.lookup(path)
        if amode & os.W_OK and not self.writable:
            raise ReadOnlyError("read-only mount", filename=path)
        if amode & os.X_OK and not entry.is_dir:
            raise StreamfsError("not executable", filename=path) from None

    def statfs(self) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 1 << 30,
            "f_bfree": 1 << 29,
            "f_bavail": 1 << 29,
            "f_files": 1 << 24,
            "f_ffree": 1 << 23,
            "f_namemax": 255,
        }

    # ------------------------------------------------------------ handles

    def _add(self, handle: _ReadHandle | StagedHandle) -> int:
        with self._lock:
            fh = next(self._ids)
            self._handles[fh] = handle
        return fh

    def _get(self, fh: int) -> _ReadHandle | StagedHandle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise StreamfsError(f"bad file handle {fh}")
        return handle

    def open(self, path: str, flags: int) -> int:
        rel = self._rel(path)
        wants_write = bool(flags & WRITE_FLAGS)
        if wants_write and self.overlay is None:
            raise ReadOnlyError("read-only mount (a pinned revision, or --read-only)", filename=rel)
        if self.overlay is not None:
            if wants_write:
                return self._add(self.overlay.open_write(rel, truncate=bool(flags & os.O_TRUNC)))
            staged = self.overlay.open_staged_read(rel)
            if staged is not None:
                return self._add(staged)
        return self._add(_ReadHandle(self._reader(rel)))

    def readinto(self, fh: int, offset: int, out: memoryview) -> int:
        """A read through handle ``fh`` into ``out`` (libfuse's buffer); the bytes read."""
        with self._lock:
            self.read_calls += 1
        handle = self._get(fh)
        if isinstance(handle, _ReadHandle):
            return handle.reader.readinto(offset, out)
        return handle.readinto(offset, out)

    def read_path_into(self, path: str, offset: int, out: memoryview) -> int:
        """A read with no handle (a read-only mount, whose opens libfuse answers itself)
        into ``out``, libfuse's buffer; the number of bytes read."""
        with self._lock:
            self.read_calls += 1
        return self.by_path.readinto(self._rel(path), offset, out)

    def _reader(self, rel: str) -> BlobReader:
        """A reader of the committed file at ``rel`` (the base commit, on a writable mount)."""
        if self.overlay is None:  # one walk gives the folder (for the prefetcher) too
            entry, folder = self.view.locate(rel)
        else:
            entry, folder = self.overlay.lookup(rel), None
        if entry.is_dir:
            raise IsADirError("is a directory", filename=rel)
        return self._base().reader(rel, entry, folder)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.get(fh)
        try:
            if isinstance(handle, StagedHandle) and self.overlay is not None:
                self.overlay.close_handle(handle)
        finally:
            with self._released:
                self._handles.pop(fh, None)
                self._released.notify_all()

    def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for the releases of writers already closed by close(2);
        False if one is still held open (a dup'd descriptor): its file is not committable yet."""
        deadline = time.monotonic() + timeout
        with self._released:
            while any(isinstance(h, StagedHandle) and h.flushed for h in self._handles.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._released.wait(left)
        return True

    def flush(self, fh: int) -> None:
        """close(2) of a descriptor of the file (each one; the release comes after the last)."""
        handle = self._get(fh)
        if isinstance(handle, StagedHandle):
            handle.flush()

    def fsync(self, fh: int) -> None:
        handle = self._get(fh)
        if isinstance(handle, StagedHandle):
            handle.sync()

    # ------------------------------------------------------------ writing

    def _overlay(self, path: str) -> Overlay:
        if self.overlay is None:
            raise ReadOnlyError(
                "read-only mount (a pinned revision, or --read-only)", filename=self._rel(path)
            )
        return self.overlay

    def create(self, path: str, mode: int) -> int:
        return self._add(self._overlay(path).create(self._rel(path)))

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._get(fh)
        if not isinstance(handle, StagedHandle):
            raise StreamfsError("file not open for writing", filename=None) from None
        return handle.write(offset, data)

    def truncate(self, path: str, length: int, fh: int | None) -> None:
        overlay = self._overlay(path)
        if fh is not None:
            handle = self._get(fh)
            if isinstance(handle, StagedHandle):
                handle.truncate(length)
                return
        overlay.truncate(self._rel(path), length)

    def unlink(self, path: str) -> None:
        self._overlay(path).unlink(self._rel(path))

    def mkdir(self, path: str) -> None:
        self._overlay(path).mkdir(self._rel(path))

    def rmdir(self, path: str) -> None:
        self._overlay(path).rmdir(self._rel(path))

    def rename(self, old: str, new: str) -> None:
        self._overlay(old).rename(self._rel(old), self._rel(new))

    def chmod(self, path: str, mode: int) -> None:
        self.lookup(path)
        if not self.writable:
            raise ReadOnlyError("read-only mount", filename=self._rel(path))
        if stat_mod.S_IMODE(mode) & 0o111 and not self.lookup(path).is_dir:
            pass  # modes are not versioned; accepted and ignored like on many network file systems

    def chown(self, path: str) -> None:
        self.lookup(path)
        if not self.writable:
            raise ReadOnlyError("read-only mount", filename=self._rel(path))

    def utimens(self, path: str, times: Any) -> None:
        self.lookup(path)
        if not self.writable:
            raise ReadOnlyError("read-only mount", filename=self._rel(path))

    def close(self) -> None:
        if self.overlay is not None:
            self.overlay.close()


__all__ = ["MountFS", "errno"]
