"""libfuse's request loop, run by a fixed pool of Python threads.

libfuse 2's own multi-threaded loop (``fuse_main`` -> ``fuse_loop_mt``) starts a
thread whenever none is idle and ends one whenever more than ten are idle. An
epoch of 8 readers moves around that line (a read(2) of a file over 128 KiB is
two FUSE reads, and the kernel reads ahead), so threads were started and ended
all the time: dozens every few seconds. And a C thread that calls into
Python through ctypes has no Python thread state: ctypes makes one for every
callback and deletes it after (a fresh mapping for its frames, the runtime's
lock twice, page faults).

Here ``WORKERS`` Python threads, started with the session and ended with it,
each run libfuse's single-threaded loop (``fuse_session_loop``) on the one
device: the loop is C and runs without the interpreter lock, and libfuse calls
the operations in the same thread, whose thread state lives as long as it does.
A request with no operation (the ioctl of every Python ``open()``, which the
kernel always sends) is answered without the lock at all; one with an
operation takes it once, for the callback. (A loop written in Python, reading
the device and handing each request to libfuse, took it three times a request:
12 futex calls a request in an epoch served from the page cache, against 0.1
with this loop.)

More requests than threads wait in the kernel's queue. A bound costs less than
a thread for every request in flight: the threads take turns at the
interpreter lock, and each turn is a futex wake-up and a context switch. With a
disk cache holding every block (8 readers, 20,000 files) and the loop in
Python, 8 to 12 threads cost the daemon 0.5-0.6 ms of CPU a file, a thread for
every request in flight (up to 19) 0.75, libfuse's loop 0.6, and one thread
0.2; with the loop in C, 4, 10 and 16 threads all cost 0.33-0.40. Ten is
libfuse 3's own default bound, and leaves room for the readers that wait on
the network while others are served.

Owning the loop also lets the daemon answer the kernel's INIT itself in one
respect libfuse 2 cannot: libfuse 2.9 speaks protocol 7.19, so the kernel caps
every request at 32 pages (128 KiB). The INIT reply is sent through a channel
of our own that widens it with ``max_pages`` (protocol 7.28, Linux 4.20+), and
the mount's readahead window is raised to match (``READAHEAD``; it needs root,
and is left as it is otherwise). A file of up to 256 KiB is then one read, not
two, and a sequential reader's requests are twice as large.

The threads end when the kernel ends the connection (the file system was
unmounted: reads of the device fail with ENODEV) or when the session is told
to exit (SIGINT, SIGTERM, SIGHUP, or fusepy's ``fuse_exit`` after an operation
raised a BaseException). Once one has left, the session's exit flag is set for
the others and a file system still mounted is detached lazily, so that their
blocked reads return.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("streamfs.fuse")

WORKERS = 10  # requests served at once (the kernel queues the rest)
EXIT_POLL = 0.5  # s between looks at the session's exit flag (set from C by fuse_exit)
LEAVE_WAIT = 5.0  # s the threads get to leave after an exit before they are left behind
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAX_PAGES = 256  # pages a request may carry (1 MiB), offered in the INIT reply
# KiB the kernel reads ahead in the mount (its default, 128, makes every request 128 KiB).
# Well past MAX_PAGES: a sequential reader then has a few 1 MiB requests in flight, and a
# cold pass of a 2 GiB file read 935-973 MB/s against 804-820 at 256 KiB (the daemon 2.3-2.5 s
# of CPU against 2.7-2.8). A random read of 1 MiB (257 pages unless aligned) is read as it is
# when it fits the window, and read ahead a second window when it does not: random 1 MiB reads
# fetched 1.88-1.92x their bytes at 4,096 and 2,048, 2.04x at 1,024, 1.90-1.94x at 256.
READAHEAD_KB = 4096

FUSE_INIT = 26  # opcode
FUSE_MAX_PAGES = 1 << 22  # INIT flag
_HEADER_IN = 40  # struct fuse_in_header
_HEADER_OUT = struct.Struct("<IiQ")  # struct fuse_out_header: len, error, unique
_INIT_OUT_719 = struct.Struct("<IIIIHHI")  # fuse_init_out up to max_write (libfuse 2.9's)
_INIT_OUT_SIZE = 64  # fuse_init_out since 7.23: then time_gran, max_pages, ...

_void_p = ctypes.c_void_p


def _declare(lib: Any) -> None:
    """Argument and result types of the libfuse 2.6+ calls used here."""
    lib.fuse_setup.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p),
        _void_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_int),
        _void_p,
    ]
    lib.fuse_setup.restype = _void_p
    lib.fuse_get_session.argtypes = [_void_p]
    lib.fuse_get_session.restype = _void_p
    lib.fuse_session_next_chan.argtypes = [_void_p, _void_p]
    lib.fuse_session_next_chan.restype = _void_p
    lib.fuse_chan_bufsize.argtypes = [_void_p]
    lib.fuse_chan_bufsize.restype = ctypes.c_size_t
    lib.fuse_chan_recv.argtypes = [ctypes.POINTER(_void_p), ctypes.c_char_p, ctypes.c_size_t]
    lib.fuse_chan_recv.restype = ctypes.c_int
    lib.fuse_session_loop.argtypes = [_void_p]
    lib.fuse_session_loop.restype = ctypes.c_int
    lib.fuse_session_process.argtypes = [_void_p, ctypes.c_char_p, ctypes.c_size_t, _void_p]
    lib.fuse_session_process.restype = None
    lib.fuse_session_exited.argtypes = [_void_p]
    lib.fuse_session_exited.restype = ctypes.c_int
    lib.fuse_session_exit.argtypes = [_void_p]
    lib.fuse_session_exit.restype = None
    lib.fuse_chan_fd.argtypes = [_void_p]
    lib.fuse_chan_fd.restype = ctypes.c_int
    lib.fuse_chan_new.argtypes = [_void_p, ctypes.c_int, ctypes.c_size_t, _void_p]
    lib.fuse_chan_new.restype = _void_p
    lib.fuse_chan_destroy.argtypes = [_void_p]
    lib.fuse_chan_destroy.restype = None
    lib.fuse_teardown.argtypes = [_void_p, ctypes.c_char_p]
    lib.fuse_teardown.restype = None


def kernel_offers_max_pages(request: Any) -> bool:
    """Whether a FUSE_INIT request (any buffer) has FUSE_MAX_PAGES in its flags (Linux 4.20+)."""
    major, minor, _readahead, flags = struct.unpack_from("<IIII", request, _HEADER_IN)
    return major == 7 and minor >= 28 and bool(flags & FUSE_MAX_PAGES)


def widen_init_reply(reply: bytes, max_pages: int) -> bytes:
    """libfuse 2.9's INIT reply (7.19: 24 bytes after the header), as the 64-byte reply of
    later protocols that also sets FUSE_MAX_PAGES and ``max_pages``; anything else (an
    error, another size) unchanged."""
    length, error, unique = _HEADER_OUT.unpack_from(reply)
    if error != 0 or length != len(reply) or len(reply) != _HEADER_OUT.size + _INIT_OUT_719.size:
        return reply
    major, minor, readahead, flags, background, congestion, max_write = _INIT_OUT_719.unpack_from(
        reply, _HEADER_OUT.size
    )
    body = _INIT_OUT_719.pack(
        major, minor, readahead, flags | FUSE_MAX_PAGES, background, congestion, max_write
    )
    body += struct.pack("<IH", 0, max_pages)  # time_gran (0: the kernel's own), max_pages
    body = body.ljust(_INIT_OUT_SIZE, b"\0")
    return _HEADER_OUT.pack(_HEADER_OUT.size + len(body), 0, unique) + body


def raise_readahead(mountpoint: str, kib: int) -> None:
    """The kernel's readahead window of the FUSE mount at ``mountpoint``, to ``kib`` KiB: its
    backing device's ``read_ahead_kb`` (found in /proc/self/mountinfo, so that no request is
    made of the file system). Only root may; otherwise the default stays."""
    try:
        devices = _devices(mountpoint)
    except OSError as exc:
        log.debug("readahead of %s left at the kernel's default: %s", mountpoint, exc)
        return
    if devices:
        _set_readahead(devices[-1], kib)


def _set_readahead(device: str, kib: int) -> None:
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.debug("readahead of device %s left at the kernel's default: %s", device, exc)


def _devices(point: str) -> list[str]:
    """The devices (major:minor) mounted at ``point`` in this process's namespace, oldest
    first, per /proc/self/mountinfo (which asks the file system nothing)."""
    # its paths have octal escapes (\040) for space, tab, newline and backslash
    with open("/proc/self/mountinfo") as f:
        return [line.split()[2] for line in f if _unescape(line.split()[4]) == point]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


class _iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_SEND = ctypes.CFUNCTYPE(ctypes.c_int, _void_p, ctypes.POINTER(_iovec), ctypes.c_size_t)


class _chan_ops(ctypes.Structure):  # libfuse 2.6+'s struct fuse_chan_ops
    _fields_ = [("receive", _void_p), ("send", _SEND), ("destroy", _void_p)]


class Session:
    """One libfuse session: mounted, served until it ends, torn down."""

    def __init__(self, lib: Any, args: list[bytes], operations: Any, workers: int = WORKERS):
        _declare(lib)
        self.lib = lib
        self.args = args
        self.operations = operations
        self.workers = workers
        self.session: Any = None
        self.mountpoint = ""
        self._wake = threading.Event()  # a thread left, or a signal came
        self._failed = False
        self._device: str | None = None  # major:minor of the mount, once mounted

    def run(self) -> bool:
        """Mount, serve requests until the file system is unmounted or told to exit, and
        tear the session down; False when reading the device failed."""
        with self._signals():
            mountpoint = ctypes.c_char_p()
            threaded = ctypes.c_int()
            argv = (ctypes.c_char_p * len(self.args))(*self.args)
            # parses the options, mounts, and (with -f) stays in the foreground
            fuse = self.lib.fuse_setup(
                len(self.args),
                argv,
                ctypes.byref(self.operations),
                ctypes.sizeof(self.operations),
                ctypes.byref(mountpoint),
                ctypes.byref(threaded),
                None,
            )
            if not fuse:
                raise RuntimeError("libfuse could not mount (its message is above)")
            self.session = self.lib.fuse_get_session(fuse)
            self.mountpoint = (mountpoint.value or b"").decode()
            devices = _devices(self.mountpoint)
            self._device = devices[-1] if devices else None  # the newest mount there: ours
            self._take_signals()
            self._first_request()  # INIT, before any thread starts
            workers = self.workers if threaded.value else 1  # -s: fusepy's nothreads
            threads = [
                threading.Thread(target=self._serve, name=f"fuse-{i}", daemon=True)
                for i in range(workers)
            ]
            for thread in threads:
                thread.start()
            while not self._wake.wait(EXIT_POLL):
                if self.lib.fuse_session_exited(self.session):
                    break
            # the other threads leave after the request in hand; a file system still mounted
            # (told to exit, not unmounted) is detached, so that their blocked reads return
            self.lib.fuse_session_exit(self.session)
            if self._device in _devices(self.mountpoint):
                _detach(self.mountpoint)
            deadline = time.monotonic() + LEAVE_WAIT
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in threads):
                # a process still uses the detached file system, and its requests keep those
                # threads in libfuse: the session must outlive them (the kernel ends it when
                # this process exits)
                log.warning("FUSE threads still busy at exit; the session is left to the kernel")
            else:
                # unmounts if still mounted, calls the destroy operation, frees the session
                self.lib.fuse_teardown(fuse, mountpoint)
        return not self._failed

    def _serve(self) -> None:
        try:
            # The whole loop runs in C, without the interpreter lock: libfuse answers what has
            # no operation (ioctl, which every open() of Python makes) without it, and a
            # callback into Python takes it once, in this thread's own thread state. It ends
            # when the connection ends (ENODEV: unmounted) or the session's exit flag is set,
            # which it clears on its way out.
            if self.lib.fuse_session_loop(self.session) != 0:
                log.error("reading the FUSE device failed (libfuse's message is above)")
                self._failed = True
        finally:
            self._wake.set()

    def _first_request(self) -> None:
        """The kernel's first request, INIT (it sends no other until INIT is answered), answered
        through a channel of our own that widens libfuse's reply (see ``widen_init_reply``)
        when the kernel offers bigger requests. If the connection ended instead, the threads
        see the end too."""
        lib = self.lib
        channel = _void_p(lib.fuse_session_next_chan(self.session, None))
        size = lib.fuse_chan_bufsize(channel)
        buf = ctypes.create_string_buffer(size)
        got = -errno.EINTR
        while got == -errno.EINTR:
            got = lib.fuse_chan_recv(ctypes.byref(channel), buf, size)
        if got <= 0:
            return
        if struct.unpack_from("<I", buf, 4)[0] != FUSE_INIT or not kernel_offers_max_pages(buf):
            lib.fuse_session_process(self.session, buf, got, channel)
            return
        fd = lib.fuse_chan_fd(channel)

        def send(chan: Any, iov: Any, count: int) -> int:
            reply = b"".join(ctypes.string_at(iov[i].base, iov[i].len) for i in range(count))
            try:
                os.write(fd, widen_init_reply(reply, MAX_PAGES))
            except OSError as exc:
                return -(exc.errno or errno.EIO)
            return 0

        sender = _SEND(send)  # referenced until the reply is sent
        init = lib.fuse_chan_new(ctypes.byref(_chan_ops(None, sender, None)), fd, size, None)
        try:
            lib.fuse_session_process(self.session, buf, got, init)
        finally:
            lib.fuse_chan_destroy(init)
        if self._device is not None:  # after the reply, which sets it too
            _set_readahead(self._device, READAHEAD_KB)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """Python's signal handlers as they were, afterwards: libfuse sets its own on setup and
        leaves SIGPIPE at SIG_DFL on teardown (a write to a closed socket would then kill)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread sets handlers; libfuse's exit flag is polled
            return
        saved = {s: signal.getsignal(s) for s in (*EXIT_SIGNALS, signal.SIGPIPE)}
        try:
            yield
        finally:
            for s, handler in saved.items():
                if handler is not None:
                    signal.signal(s, handler)

    def _take_signals(self) -> None:
        """SIGINT, SIGTERM and SIGHUP end the session, as libfuse's handlers do; these wake
        the waiting thread at once."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: Any) -> None:
            self.lib.fuse_session_exit(self.session)
            self._wake.set()

        for s in EXIT_SIGNALS:
            signal.signal(s, stop)


def _detach(point: str) -> None:
    """A lazy unmount: with nothing open in the file system, the kernel ends the connection
    and every blocked read returns."""
    done = subprocess.run(["fusermount", "-u", "-z", "-q", point], capture_output=True)
    if done.returncode != 0:
        log.warning("lazy unmount of %s failed: %s", point, done.stderr.decode().strip())
