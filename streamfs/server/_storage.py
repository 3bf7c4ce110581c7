"""Where the server keeps its bytes: a small interface and the local directory backend.

Two kinds of keys live in a storage:

- **objects**: immutable once written (blobs, trees, commits, markers). A
  write is all-or-nothing; writing an existing key again is allowed and must
  leave the same bytes.
- **refs**: small mutable texts (branches, tags, repo records) that change
  only by compare-and-swap, so two writers never lose each other's update.

Keys are '/'-separated, built by the server from validated names; the backend
checks them again so that no key can reach outside the store.

The interface is synchronous on purpose: the server calls it from worker
threads (``trio.to_thread``), and an S3 backend (boto3) is synchronous too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

_KEY_RE = re.compile(r"[A-Za-z0-9._%-]+(/[A-Za-z0-9._%-]+)*")


class Storage(Protocol):
    def read(self, key: str) -> bytes | None:
        """The whole object, or None when it does not exist."""

    def size(self, key: str) -> int | None:
        """The object's length, or None when it does not exist."""

    def iter_range(self, key: str, start: int, length: int, chunk: int) -> Iterator[bytes]:
        """``length`` bytes from ``start``, in pieces of at most ``chunk`` bytes."""

    def write(self, key: str, data: bytes) -> None:
        """Store an object atomically: readers see all of it or nothing."""

    def write_file(self, key: str, source: Path) -> None:
        """Store the file at ``source`` (from ``staging_dir``) as an object; consumes it."""

    def staging_dir(self) -> Path:
        """A local directory for files that are being received."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys of objects and refs that start with ``prefix/``."""

    def get_ref(self, key: str) -> str | None: ...

    def cas_ref(self, key: str, expected: str | None, new: str | None) -> bool:
        """Set ``key`` to ``new`` (None deletes) if it now holds ``expected``."""


def check_key(key: str) -> str:
    if _KEY_RE.fullmatch(key) is None or any(p in {".", ".."} for p in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class LocalStorage:
    """Objects and refs as files under one directory, crash safe.

    Every write goes to a temporary file in ``root/tmp``, is fsynced, renamed
    into place and the directory fsynced, so a killed server leaves either the
    old state or the new one, never half a file. Each storage object writes
    its temporary files in a folder of its own under ``root/tmp``; folders
    left by dead storages are removed when a storage is opened.

    Locking: a ref's compare-and-swap holds an in-process lock for that ref and
    an ``flock`` on its lock file (other server processes), never anything
    wider, and no network I/O happens here.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._locks_dir = self.root / "locks"
        self._data = str(self.root / "data")
        for d in (self.root, self.root / "tmp", self._locks_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._tmp, self._tmp_lock = self._claim_tmp_dir()
        self._ref_locks: dict[str, threading.Lock] = {}
        self._ref_locks_guard = threading.Lock()

    def _claim_tmp_dir(self) -> tuple[Path, int]:
        """A temp folder of our own, held by an flock for as long as we live.

        Folders whose lock can be taken belong to storages that are gone
        (a killed server): their half-written files are removed. Folders of
        live storages on the same root are left alone.
        """
        base = self.root / "tmp"
        for lock_path in base.glob("*.lock"):
            fd = os.open(lock_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            os.close(fd)
        for leftover in base.iterdir():  # files of older layouts, unlocked folders
            if leftover.is_file() and leftover.suffix != ".lock":
                leftover.unlink(missing_ok=True)
            elif leftover.is_dir() and not leftover.with_name(leftover.name + ".lock").exists():
                shutil.rmtree(leftover, ignore_errors=True)
        mine = Path(tempfile.mkdtemp(dir=base, prefix=f"{os.getpid()}-"))
        fd = os.open(mine.with_name(mine.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return mine, fd

    # ------------------------------------------------------------- objects

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        # a str, not a Path: a blob read or a signed URL stats 1-2 files, and building
        # and statting a Path costs 3x what os.stat of a str does (~13 against ~4 us)
        return f"{self._data}/{check_key(key)}"

    def read(self, key: str) -> bytes | None:
        try:
            with open(self._file(key), "rb") as f:  # a signed URL reads its blob's marker
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self._file(key)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def iter_range(self, key: str, start: int, length: int, chunk: int) -> Iterator[bytes]:
        # one open and a pread a piece: a blob of at most ``chunk`` is two system calls
        fd = os.open(self._file(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            while length > 0:
                data = os.pread(fd, min(chunk, length), start)
                if not data:
                    raise OSError(f"object {key} is shorter than expected")
                start += len(data)
                length -= len(data)
                yield data
        finally:
            os.close(fd)

    def local_path(self, key: str) -> Path:
        """The file behind an object (for zero-copy serving by the local backend)."""
        return self._path(key)

    def write(self, key: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._install(Path(tmp), self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write_file(self, key: str, source: Path) -> None:
        try:
            with open(source, "rb+") as f:
                os.fsync(f.fileno())
            self._install(source, self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                source.unlink()
            raise

    def staging_dir(self) -> Path:
        return self._tmp

    def _install(self, tmp: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / "data"
        top = base / check_key(prefix)
        for dirpath, _dirnames, filenames in os.walk(top):
            rel = Path(dirpath).relative_to(base).as_posix()
            for name in sorted(filenames):
                if not name.endswith(".lock"):
                    yield f"{rel}/{name}"

    # ------------------------------------------------------------- refs

    def get_ref(self, key: str) -> str | None:
        data = self.read(key)
        return None if data is None else data.decode()

    def cas_ref(self, key: str, expected: str | None, new: str | None) -> bool:
        with self._ref_lock(key):
            if self.get_ref(key) != expected:
                return False
            if new is None:
                path = self._path(key)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    _fsync_dir(path.parent)
            else:
                self.write(key, new.encode())
            return True

    @contextlib.contextmanager
    def _ref_lock(self, key: str) -> Iterator[None]:
        with self._ref_locks_guard:
            lock = self._ref_locks.setdefault(key, threading.Lock())
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
        with lock, open(self._locks_dir / name, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
