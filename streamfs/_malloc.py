"""Keeping a mount daemon's freed block buffers for reuse (glibc's malloc).

A streaming daemon allocates and frees buffers of 1-16 MiB all the time
(response bodies, 4 MiB blocks, cache read-backs). glibc's defaults hand
such sizes to the kernel and back: above the mmap threshold each is a fresh
mapping, below it each thread's arena returns its free top to the kernel
(``MADV_DONTNEED``) past the trim threshold. Every fresh page is a page
fault and a zeroed page; on a virtual machine whose balloon took free memory
back, a fault costs ~3.5 µs (touching new memory runs at ~1.1 GB/s here),
which made page faults ~1/4 of the daemon's CPU in a cold sequential read.

So the daemon (and only the daemon: a user's process keeps its own malloc
settings) asks for block-sized allocations from the heap and freed memory
kept up to a bound: the readahead window's worth of buffers, not more.
The number of arenas is left alone: with one, the threads that run without
the GIL (SQLite, file I/O, hashing) queued on its lock (perf: ``futex``
waits in ``__lll_lock_wait``), and a 20,000-file epoch got no faster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("streamfs.malloc")

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MiB = 1024 * 1024
SETTINGS = {
    # at most 32 MiB on 64-bit glibc; above every buffer the daemon makes (16 MiB requests)
    M_MMAP_THRESHOLD: 32 * MiB,
    # free memory kept at the top of a heap: the 128 MiB readahead window and its copies
    M_TRIM_THRESHOLD: 256 * MiB,
}


def keep_block_buffers() -> bool:
    """Apply ``SETTINGS`` to this process's malloc; False where that is not glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not ok:
        log.warning("malloc did not take the daemon's buffer settings; reads cost more faults")
    return ok
