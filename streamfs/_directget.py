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
sends the GET itself on a kept connection, checks the bytes against the blob
id, and hands them to the engine to cache (``BlockFetcher.adopt``). The
interpreter lock is let go while it waits on the socket.

Anything else returns None and the read goes the usual way through the
engine, which asks for URLs, falls back to the API, retries and reports
errors: no URL known, the front not in use or resting, the blob already in
flight on the engine (the reader waits for that fetch there), an answer that
is not the whole blob (an expired URL's 410, a 403), a failed or stalled
connection (the front then rests ``REST`` seconds here), bytes that do not
match. Blobs being fetched here are skipped by the prefetcher's batches
(``BlockFetcher.reader_fetches``, kept by ``Engine.get_direct``).

Thread safety: any number of reader threads; one lock, held only to take or
give back an idle connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
import time

from ._blobfront import REST, BlobFront, Origin, tls_context
from ._http1 import Head, Http1Error, host_header, take_head

log = logging.getLogger("streamfs.remote")

KEEPALIVE = 4.0  # seconds an idle connection is kept (nginx closes them after 75 s)
MAX_IDLE = 16  # idle connections kept per origin
HEAD_READ = 8192


class _Connection:
    __slots__ = ("idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
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

    def get(self, oid: str, size: int) -> bytes | None:
        """The verified bytes of the one-block blob ``oid`` of ``size`` bytes, or None."""
        if self._front.available is not True or time.monotonic() < self._resting_until:
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
                    return self._exchange(origin, connection, request, oid, size, reused=True)
                except _Stale:
                    pass
            connection = self._connect(origin)
            return self._exchange(origin, connection, request, oid, size, reused=False)
        except (OSError, Http1Error, _Stale) as exc:
            self._resting_until = time.monotonic() + REST
            log.debug("direct GET of %s failed (%s): through the engine for %g s", oid, exc, REST)
            return None

    def _exchange(
        self,
        origin: Origin,
        connection: _Connection,
        request: bytes,
        oid: str,
        size: int,
        *,
        reused: bool,
    ) -> bytes | None:
        sock = connection.sock
        keep = False
        try:
            try:
                sock.sendall(request)
                head, rest = _receive_head(sock, stale=reused)
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
        if hashlib.sha256(data).hexdigest() != oid:
            log.warning("the blob front sent bytes that do not match blob %s", oid[:12])
            return None
        return data

    def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    self._tls = tls_context()
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self._read_timeout)
        except BaseException:
            _close(sock)
            raise
        return _Connection(sock)

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


def _receive_head(sock: socket.socket, *, stale: bool) -> tuple[Head, bytes]:
    """An answer's head, parsed, and the bytes of its body that came with it."""
    received = bytearray()
    while (head := take_head(received)) is None:
        data = sock.recv(HEAD_READ)
        if not data:
            if stale and not received:
                raise _Stale
            raise Http1Error("the front closed the connection in mid-answer")
        received += data
    return head, bytes(received)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
