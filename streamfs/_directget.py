"""A small file a reader lacks, fetched in the reader's own thread from the blob front.

A reader that opens a small file before the prefetcher brought it waits for
one request of its own. Through the engine that request queued behind the
loop's other work: in a cold epoch of 20,000 files at RTT 0 (8 readers, the
Python API), ~15 % of the files came that way, each a GET that nginx answers
in well under a millisecond, yet the readers waited 9 ms for one (median;
mean 14-18 ms): the hop onto a loop busy with prefetch batches, the loop's
turns through the GET, and the hop back. Those waits were 80 % of the
readers' time.

So when the engine knows the file's signed URL (the folder's URLs are asked
at once when its prefetch starts, see _blobfront.py), the reader's thread
sends the GET itself on a kept connection, checks the bytes (by the BLAKE3
the API sent with the URL, else the blob id: _blobfront.whole_check), and hands
them to the engine to cache (``BlockFetcher.adopt``). The
interpreter lock is let go while it waits on the socket.

Anything else returns None and the read goes the usual way through the
engine, which asks for URLs, falls back to the API, retries and reports
errors: no URL known, the front not in use or resting, the blob already in
flight on the engine (the reader waits for that fetch there), an answer that
is not the whole blob (an expired URL's 410, a 403), a failed or stalled
connection (the front then rests ``REST`` seconds here), bytes that do not
match. Blobs being fetched here are skipped by the prefetcher's batches
(``BlockFetcher.reader_fetches``, kept by ``Engine.get_direct``).

``round_trip`` is the least round trip (the request sent to the answer's
first bytes in the socket) of the GETs of the last ``ROUND_TRIP_SECONDS``
before the latest one: what a miss costs at best once queues and busy cores
are left out (the windowed minimum of TCP's own RTT estimates). A DataLoader
worker asks it whether prefetching pays (_view.py). The answer's arrival is
the kernel's time stamp of it (SO_TIMESTAMPNS, plain HTTP on Linux): a thread
that takes it after ``recv`` returns waits for the interpreter lock first, up
to its 5 ms switch interval a time while another thread of the process
computes, and at RTT 0 the least of 32 GETs stayed over a millisecond in a
worker that prefetched (session 42). Without the kernel's stamp (TLS, another
system) it is taken then, so the round trip can only look longer than it is.

Thread safety: any number of reader threads; one lock, held only to take or
give back an idle connection and to note a round trip.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque

from ._blobfront import REST, BlobFront, BlobUrl, Origin, tls_context, whole_check
from ._http1 import Head, Http1Error, host_header, take_head
from ._model import block_digest

log = logging.getLogger("streamfs.remote")

KEEPALIVE = 4.0  # seconds an idle connection is kept (nginx closes them after 75 s)
MAX_IDLE = 16  # idle connections kept per origin
HEAD_READ = 8192
# The round trip's window. At RTT 0 on a 2-core machine busy with 8 readers, nginx and the
# proxies, 3 in 10 of a worker's GETs came back within 1 ms (by the kernel's stamp), most
# within 1-5 ms, but in bursts: the least of the last 32 went over 1 ms often enough for the
# workers to prefetch again 500-4,400 files each in an epoch. With 2 ms added, none came back
# within 2 ms (docs/benchmarks.md, session 42).
ROUND_TRIP_SECONDS = 10.0
ROUND_TRIP_SLOTS = 10  # the window's minimum is kept a tenth of it at a time
# Linux's SO_TIMESTAMPNS (and its control message's type) where its value is asm-generic's;
# Python's socket module does not name it
SO_TIMESTAMPNS = 35
_GENERIC_SOCKET_ABI = frozenset(("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"))
_STAMPS = sys.platform == "linux" and platform.machine() in _GENERIC_SOCKET_ABI
_STAMP_SPACE = socket.CMSG_SPACE(16) if _STAMPS else 0  # struct timespec: two 64-bit fields


class _Connection:
    __slots__ = ("idle_since", "sock", "stamped")

    def __init__(self, sock: socket.socket, stamped: bool) -> None:
        self.sock = sock
        self.stamped = stamped  # the kernel stamps what arrives (SO_TIMESTAMPNS)
        self.idle_since = 0.0


class DirectGets:
    def __init__(self, front: BlobFront, connect_timeout: float, read_timeout: float) -> None:
        self._front = front
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._tls: ssl.SSLContext | None = None  # made at the first https connection
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[_Connection]] = {}  # guarded by _lock
        self._resting_until = 0.0  # time.monotonic(); a float, written whole
        # (slot, the least round trip noted in it): slots of ROUND_TRIP_SECONDS / SLOTS since
        # time.monotonic()'s origin, the last ROUND_TRIP_SLOTS up to the latest; guarded by _lock
        self._minima: deque[tuple[int, float]] = deque()
        # seconds: the least of _minima (None before the first GET); a float, written whole
        self.round_trip: float | None = None

    @property
    def in_use(self) -> bool:
        """Whether GETs go here now: the server has a front, and it is not resting."""
        return self._front.available is True and time.monotonic() >= self._resting_until

    def get(self, oid: str, size: int) -> bytes | None:
        """The verified bytes of the one-block blob ``oid`` of ``size`` bytes, or None."""
        if not self.in_use:
            return None
        url = self._front.url_of(oid)
        if url is None:
            return None
        origin = url.origin
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: streamfs\r\n\r\n" % (
            url.target,
            host_header(*origin),
        )
        connection = self._take(origin)
        try:
            if connection is not None:
                try:
                    return self._exchange(origin, connection, request, url, oid, size, reused=True)
                except _Stale:
                    pass
            connection = self._connect(origin)
            return self._exchange(origin, connection, request, url, oid, size, reused=False)
        except (OSError, Http1Error, _Stale) as exc:
            self._resting_until = time.monotonic() + REST
            log.debug("direct GET of %s failed (%s): through the engine for %g s", oid, exc, REST)
            return None

    def _exchange(
        self,
        origin: Origin,
        connection: _Connection,
        request: bytes,
        url: BlobUrl,
        oid: str,
        size: int,
        *,
        reused: bool,
    ) -> bytes | None:
        sock = connection.sock
        keep = False
        try:
            try:
                sent = time.time()  # the kernel's stamps are wall-clock times
                sock.sendall(request)
                head, rest, arrived = _receive_head(sock, connection.stamped, stale=reused)
                self._note_round_trip(arrived - sent)
            except OSError:
                if reused:  # closed while idle (a reset, a broken pipe): not the front's fault
                    raise _Stale from None
                raise
            if head.status != 200 or head.length != size or len(rest) > size:
                return None  # not the blob: an expired URL (410), a refused one (403)
            body = bytearray(size)
            body[: len(rest)] = rest
            view, filled = memoryview(body), len(rest)
            while filled < size:
                n = sock.recv_into(view[filled:])
                if not n:
                    raise Http1Error("the front closed the connection in mid-answer")
                filled += n
            keep = head.keep_alive
        finally:
            if keep:
                self._give(origin, connection)
            else:
                _close(sock)
        data = bytes(body)
        algorithm, digest = whole_check(oid, url)
        if block_digest(algorithm, data) != digest:
            log.warning("the blob front sent bytes that do not match blob %s", oid[:12])
            return None
        return data

    def _note_round_trip(self, seconds: float) -> None:
        if seconds <= 0:  # the wall clock was set back meanwhile
            return
        slot = int(time.monotonic() * ROUND_TRIP_SLOTS / ROUND_TRIP_SECONDS)
        with self._lock:
            minima = self._minima
            if minima and minima[-1][0] == slot:
                if seconds >= minima[-1][1]:
                    return
                minima[-1] = (slot, seconds)
            else:
                minima.append((slot, seconds))
                while minima[0][0] <= slot - ROUND_TRIP_SLOTS:
                    minima.popleft()
            self.round_trip = min(least for _, least in minima)

    def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        stamped = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    self._tls = tls_context()
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            elif _STAMPS:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    stamped = True
            sock.settimeout(self._read_timeout)
        except BaseException:
            _close(sock)
            raise
        return _Connection(sock, stamped)

    def _take(self, origin: Origin) -> _Connection | None:
        """The most recently used idle connection to ``origin`` that is not too old."""
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(origin, [])
            while idle:
                connection = idle.pop()
                if now - connection.idle_since < KEEPALIVE:
                    return connection
                _close(connection.sock)
        return None

    def _give(self, origin: Origin, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < MAX_IDLE:
                idle.append(connection)
                return
        _close(connection.sock)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                _close(connection.sock)


class _Stale(Exception):
    """A kept connection the front closed while it was idle: the request goes on a new one."""


def _receive_head(sock: socket.socket, stamped: bool, *, stale: bool) -> tuple[Head, bytes, float]:
    """An answer's head, parsed, the bytes of its body that came with it, and when its first
    bytes arrived (wall clock: the kernel's stamp if ``stamped``, else when they were read)."""
    received = bytearray()
    arrived = 0.0
    while (head := take_head(received)) is None:
        if stamped:
            data, ancillary, _, _ = sock.recvmsg(HEAD_READ, _STAMP_SPACE)
        else:
            data, ancillary = sock.recv(HEAD_READ), []
        if not data:
            if stale and not received:
                raise _Stale
            raise Http1Error("the front closed the connection in mid-answer")
        if not received:
            arrived = _stamp(ancillary) or time.time()
        received += data
    return head, bytes(received), arrived


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's time stamp (SO_TIMESTAMPNS) among a recvmsg's control messages."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    return None


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
