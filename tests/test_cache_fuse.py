"""The block cache called from libfuse's threads, as the mount daemon calls it.

Needs /dev/fuse (fails, never skips, without it). The file system here is a
few lines of fusepy around a real BlockCache: what is measured is how the
cache behaves under ctypes callbacks, not the mount.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from fuse import FUSE, FuseOSError, Operations

from streamfs._cache import BlockCache

from .test_mount import require_fuse

ABSENT = "ab" * 32


class _AskingFS(Operations):  # type: ignore[misc]  # untyped library
    """Every lookup of a file asks the cache for a block it lacks (a miss: a SQLite query)."""

    use_ns = True  # fusepy warns otherwise

    def __init__(self, cache: BlockCache, ready: threading.Event) -> None:
        self.cache = cache
        self.ready = ready
        self.threads: set[int] = set()
        self.asked = 0

    def init(self, path: str) -> None:
        self.ready.set()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        self.threads.add(threading.get_ident())
        self.asked += 1
        if self.cache.get_block(ABSENT, 0, 0, 16) is not None:
            raise FuseOSError(errno.EIO)
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": 0}


def test_fuse_threads_keep_their_sqlite_connection_across_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ctypes gives a native thread a new Python thread state (and an empty threading.local)
    for every callback; diskcache kept its connection there, so every FUSE call that asked
    the cache opened SQLite again (~370 µs)."""
    require_fuse()
    cache = BlockCache(tmp_path / "cache", 64 * 1024 * 1024)
    ready = threading.Event()
    fs = _AskingFS(cache, ready)
    opened: list[int] = []
    connect = sqlite3.connect

    def counted(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(threading.get_ident())
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counted)
    point = tmp_path / "mnt"
    point.mkdir()
    # libfuse sets SIGHUP, SIGINT, SIGTERM and SIGPIPE for its loop and leaves them at SIG_DFL
    # when it ends: this process (pytest) would then die of the next write to a closed pipe.
    signals = [signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE]
    saved = {sig: signal.getsignal(sig) for sig in signals}
    loop = threading.Thread(
        target=FUSE,
        args=(fs, str(point)),
        kwargs={"foreground": True, "attr_timeout": 0, "entry_timeout": 0},
        daemon=True,
    )
    loop.start()
    try:
        assert ready.wait(30), "the FUSE mount did not come up"
        for i in range(200):
            os.stat(point / f"f{i % 5}")
    finally:
        subprocess.run(["fusermount", "-u", str(point)], check=False)
        loop.join(30)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert not loop.is_alive()
    read_end, write_end = os.pipe()  # SIGPIPE is ignored again: an error, not a dead process
    os.close(read_end)
    with pytest.raises(BrokenPipeError):
        os.write(write_end, b"x")
    os.close(write_end)
    assert fs.asked >= 200
    from_fuse = [ident for ident in opened if ident in fs.threads]
    assert 1 <= len(from_fuse) <= len(fs.threads)  # one connection a thread, not a call
    blocks = cache._blocks._cache._local
    assert 1 <= blocks.foreign_threads() <= len(fs.threads)
