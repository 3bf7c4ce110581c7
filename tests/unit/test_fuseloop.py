"""The INIT reply the mount daemon widens (see streamfs/_fuseloop.py): bytes in, bytes out."""

from __future__ import annotations

import os
import struct

from streamfs._fuseloop import (
    FUSE_INIT,
    FUSE_MAX_PAGES,
    _devices,
    _unescape,
    kernel_offers_max_pages,
    widen_init_reply,
)

HEADER = struct.Struct("<IiQ")
FLAGS_719 = 0x1 | 0x8 | 0x20  # ASYNC_READ, ATOMIC_O_TRUNC, BIG_WRITES: what libfuse 2.9 sets


def libfuse_reply(unique: int = 7, error: int = 0) -> bytes:
    """libfuse 2.9's reply to INIT: protocol 7.19, 24 bytes after the header."""
    body = struct.pack("<IIIIHHI", 7, 19, 131072, FLAGS_719, 12, 9, 131072)
    return HEADER.pack(HEADER.size + len(body), error, unique) + body


def init_request(minor: int, flags: int) -> bytes:
    header = struct.pack("<IIQQIIII", 56, FUSE_INIT, 1, 0, 0, 0, 0, 0)
    return header + struct.pack("<IIII", 7, minor, 131072, flags)


def test_the_reply_gains_max_pages_and_keeps_what_libfuse_said() -> None:
    wide = widen_init_reply(libfuse_reply(unique=42), 256)
    length, error, unique = HEADER.unpack_from(wide)
    assert (length, error, unique) == (len(wide), 0, 42)
    assert len(wide) == HEADER.size + 64  # fuse_init_out since protocol 7.23
    major, minor, readahead, flags, background, congestion, max_write = struct.unpack_from(
        "<IIIIHHI", wide, HEADER.size
    )
    assert (major, minor, readahead, background, congestion, max_write) == (
        7,
        19,
        131072,
        12,
        9,
        131072,
    )
    assert flags == FLAGS_719 | FUSE_MAX_PAGES
    time_gran, max_pages = struct.unpack_from("<IH", wide, HEADER.size + 24)
    assert (time_gran, max_pages) == (0, 256)
    assert not any(wide[HEADER.size + 30 :])  # the later fields say nothing


def test_an_error_or_a_reply_of_another_size_passes_unchanged() -> None:
    failed = HEADER.pack(HEADER.size, -38, 3)  # ENOSYS, no body
    assert widen_init_reply(failed, 256) == failed
    longer = libfuse_reply() + b"\0" * 8
    assert widen_init_reply(longer, 256) == longer  # its header says 40 bytes: not ours to read
    newer = HEADER.pack(HEADER.size + 64, 0, 5) + b"\1" * 64
    assert widen_init_reply(newer, 256) == newer


def test_max_pages_is_offered_only_by_kernels_that_know_it() -> None:
    assert kernel_offers_max_pages(init_request(44, FUSE_MAX_PAGES | 0x1))
    assert not kernel_offers_max_pages(init_request(44, 0x1))  # not offered
    assert not kernel_offers_max_pages(init_request(27, FUSE_MAX_PAGES))  # before 7.28


def test_a_mount_point_is_found_in_mountinfo_by_its_escaped_name() -> None:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes
    assert _unescape(r"/data/my\040set\134x") == "/data/my set\\x"
    assert _unescape("/plain/path") == "/plain/path"


def test_the_device_mounted_at_a_point_is_the_one_its_files_are_on() -> None:
    # what the daemon checks before a lazy detach at exit: is its own mount still there?
    st = os.stat("/proc")
    assert _devices("/proc")[-1] == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert _devices("/proc/self") == []  # a folder, not a mount point
