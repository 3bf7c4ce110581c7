"""The operating system's own functions, whatever ``install_hooks()`` did to ``os``.

``os.open`` and ``os.stat`` are ``posix.open`` and ``posix.stat`` until the hooks
replace them in ``os``; the ``posix`` module itself is never patched. streamfs's
own files (the cache's block files, materialized copies) are never hooked paths,
so reaching them through ``real`` skips the hooks' path matching.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

real: Any = importlib.import_module("nt" if os.name == "nt" else "posix")

WRITE_PIECE = 128 * 1024


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Every byte of ``data`` to ``fd``, in writes of at most ``WRITE_PIECE`` bytes.

    Why pieces: writing a new file in big writes was 30x slower on this VM.
    512 new files of 4 MiB on ext4: 110-130 MB/s in 4 MiB writes, 120-260 in
    2 or 1 MiB writes, 3.4-4.5 GB/s in 128 KiB writes, nearly all of the time
    in the kernel's copy into the page cache. The likely reason: ext4 sizes a
    new file's page-cache folios by the write (large folios), and a 2 MiB
    folio is a block of the size the VM's balloon reports free to the host, so
    filling it faults on the host page by page (docs/benchmarks.md, session 13).
    """
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += real.write(fd, view[done : done + WRITE_PIECE])
