"""Blob reads over HTTP/1.1 on trio sockets, answers parsed by httptools (C).

A cold epoch over small files is a few thousand blob GETs and batches, and
the reading process spends most of its interpreter time in them: py-spy
``--gil`` of the Python API's epoch 1 (20,000 files, 8 readers): 61 % of
the interpreter lock held by the engine's HTTP requests, 45 % by the ~4,000
GETs of one blob, through httpcore's pool and h11 (pure Python: a receive
buffer copied per event, header validation, trace hooks, pool bookkeeping
per request). Here a request is one ``send_all`` of bytes built at once, and
the answer is parsed by httptools (llhttp, the parser the server's Uvicorn
uses) as it comes: a few Python calls a response.

Scope: the two blob reads (a GET of a blob or a range of it, ``POST
blobs/batch``) to the server's own origin, http or https, never through a
proxy (with one set in the environment, ``Remote`` reads through httpx).

- Connections stay open and are reused last in, first out; at most
  ``max_connections`` at once. One idle longer than ``keepalive`` seconds is
  closed, not reused (Uvicorn closes them after 5 s by default).
- A request that finds a reused connection closed before any byte of its
  answer came (the server closed it while it was idle) is sent once more on
  a new connection. Both requests are reads, so that is always safe.
- Timeouts: ``connect_timeout`` to connect (and the TLS handshake),
  ``read_timeout`` for each send and each wait for bytes; the caller bounds
  the whole attempt (``Remote._retried``).
- Bounds: headers at most ``MAX_HEADER_BYTES``, a body at most the
  ``limit`` the caller gives, checked as it arrives: what is read past it
  is at most one socket read (``READ_SIZE``), never kept.
- A successful answer of a known length (the blob reads: ``Content-Length``)
  is read straight into one buffer of that length once its headers are
  parsed: the kernel copies the bytes into their place. Parsed, each socket
  read became a bytes object, each body piece another, and the body a
  third when the pieces were joined: three copies of every blob byte, ~7 %
  of the reading process's CPU in a cold epoch or a big file's cold read.
  A caller that keeps the body in pieces (a range of several 4 MiB blocks)
  has it received into one buffer a piece (``piece``): cutting one buffer up
  afterwards copied every byte once more, on the loop's thread.
  Other answers (chunked, errors) are parsed whole.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools
import trio

MiB = 1024 * 1024
READ_SIZE = MiB  # bytes asked of the socket at once: what the kernel holds
HEAD_ROOM = 1024  # bytes a pipelined answer's head may take in a batch's buffer (get_many)
MAX_HEADER_BYTES = 64 * 1024


class Http1Error(Exception):
    """The connection failed, or what came back was not an HTTP/1.1 answer."""


class Http1Timeout(Http1Error):
    """No connection, or no bytes, within the timeout."""


class _Stale(Exception):
    """A reused connection was closed before any byte of the answer came."""


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    reason_phrase: str
    # the body: bytearrays when read straight into place (see the module), one a ``piece``
    parts: tuple[bytes | bytearray, ...]

    @property
    def content(self) -> bytes | bytearray:
        """The body in one piece (pieces are joined: a copy)."""
        return joined(self.parts)


def joined(parts: Sequence[bytes | bytearray]) -> bytes | bytearray:
    """Parts of a body as one: the only part itself, or the parts joined (a copy)."""
    return parts[0] if len(parts) == 1 else b"".join(parts)


@dataclass(eq=False, slots=True)
class _Connection:
    stream: trio.abc.Stream
    idle_since: float = 0.0


class _Parse:
    """httptools' callbacks for one answer: the status line, the body, the end."""

    __slots__ = (
        "body",
        "chunks",
        "done",
        "filled",
        "headers_done",
        "keep_alive",
        "length",
        "limit",
        "messages",
        "parser",
        "piece",
        "reason",
        "size",
        "status",
    )

    def __init__(self, limit: int, piece: int = 0) -> None:
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.keep_alive = False
        self.status = 0
        self.reason = b""
        self.chunks: list[bytes] = []
        self.length: int | None = None  # the Content-Length header's, if one came
        # a successful answer of that length, in place: buffers of ``piece`` bytes (the last
        # one shorter), or one buffer (``piece`` 0)
        self.body: list[bytearray] | None = None
        self.piece = piece
        self.filled = 0  # bytes of ``body`` received
        self.size = 0
        self.limit = limit
        self.headers_done = False
        self.done = False
        self.messages = 0

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_status(self, reason: bytes) -> None:
        if self.messages == 1:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.messages == 1 and not self.headers_done and name.lower() == b"content-length":
            # llhttp has checked it: digits, and no second one that differs
            self.length = int(value)

    def on_headers_complete(self) -> None:
        if self.messages == 1 and self.parser is not None:
            self.headers_done = True
            # asked now: once the answer is complete, the parser has reset what it knew
            self.status = self.parser.get_status_code()
            self.keep_alive = self.parser.should_keep_alive()
            if self.status in (200, 206) and self.length and self.length <= self.limit:
                step = self.piece or self.length
                self.body = [
                    bytearray(min(step, self.length - at)) for at in range(0, self.length, step)
                ]

    def on_body(self, body: bytes) -> None:
        if self.messages > 1:  # bytes after the answer: the connection is not reused
            return
        self.size += len(body)
        if self.body is not None:  # what came with the headers (the rest: _receive_body)
            view = memoryview(body)
            while view:
                place = self.free()
                n = min(len(place), len(view))
                place[:n] = view[:n]
                view = view[n:]
                self.filled += n
        elif self.size <= self.limit:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True

    def free(self) -> memoryview:
        """The part of ``body`` that the next bytes go to: the rest of one of its buffers."""
        assert self.body is not None
        step = len(self.body[0])
        index = self.filled // step
        return memoryview(self.body[index])[self.filled - index * step :]


def host_header(scheme: str, host: str, port: int) -> bytes:
    """The Host header's value for an origin (its port left out when it is the default)."""
    default = 443 if scheme == "https" else 80
    name = f"[{host}]" if ":" in host else host
    return (name if port == default else f"{name}:{port}").encode("ascii")


class _Buffers:
    """Receive buffers of pipelined batches, kept for the next ones.

    A new ``bytearray`` of a batch's size (~7 MiB for 64 small files) is zero-filled with
    the interpreter lock held, and, above malloc's mmap threshold, each of its pages is a
    fresh one the kernel faults in and zeroes first: py-spy ``--gil`` of a prefetch-only
    run put 14 % of the lock's time there. A buffer kept is written again by the kernel
    only. At most ``keep`` buffers of at most ``largest`` bytes are kept (one per batch that
    may run at once: the fetcher runs four)."""

    def __init__(self, keep: int = 4, largest: int = 16 * 1024 * 1024) -> None:
        self.keep = keep
        self.largest = largest
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes, whatever they hold."""
        while self._free:
            buffer = self._free.pop()
            if len(buffer) >= size:
                return buffer
        return bytearray(-(-size // MiB) * MiB)  # whole MiB: the next batches fit it too

    def give(self, buffer: bytearray) -> None:
        if len(buffer) <= self.largest and len(self._free) < self.keep:
            self._free.append(buffer)


@dataclass(eq=False)
class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one origin (see the module's docstring)."""

    scheme: str
    host: str
    port: int
    max_connections: int
    connect_timeout: float
    read_timeout: float
    ssl_context: ssl.SSLContext | None = None
    keepalive: float = 4.0
    _idle: list[_Connection] = field(default_factory=list)
    _closed: bool = False
    _buffers: _Buffers = field(default_factory=lambda: _Buffers())

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) origin: {self.scheme}")
        self._host_header = host_header(self.scheme, self.host, self.port)
        self._slots = trio.Semaphore(self.max_connections)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        limit: int,
        piece: int = 0,
    ) -> Answer:
        """One request; the answer's body must fit in ``limit`` bytes. With ``piece``, a body
        read into place comes in buffers of that many bytes (``Answer.parts``)."""
        length = [] if body is None else [(b"Content-Length", b"%d" % len(body))]
        wire = self._head(method, target, _header_lines([*headers, *length])) + (body or b"")
        async with self._slots:
            connection = self._take_idle()
            if connection is not None:
                try:
                    return await self._exchange(connection, wire, limit, piece, reused=True)
                except _Stale:
                    pass
            connection = await self._connect()
            return await self._exchange(connection, wire, limit, piece, reused=False)

    def _head(self, method: bytes, target: bytes, lines: bytes) -> bytes:
        """A request's head: its line, Host, the header ``lines`` (see _header_lines)."""
        return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, target, self._host_header, lines)

    async def preconnect(self) -> None:
        """Open a connection ahead of the first request, which then pays no handshake."""
        if self._idle or self._closed:
            return
        connection = await self._connect()
        if self._closed:
            _close_now(connection)
            return
        connection.idle_since = trio.current_time()
        self._idle.append(connection)

    def _take_idle(self) -> _Connection | None:
        now = trio.current_time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < self.keepalive:
                return connection
            _close_now(connection)
        return None

    async def _connect(self) -> _Connection:
        tcp: trio.SocketStream | None = None
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(self.host, self.port)
                if self.ssl_context is None:
                    return _Connection(tcp)
                tls = trio.SSLStream(tcp, self.ssl_context, server_hostname=self.host)
                await tls.do_handshake()
                return _Connection(tls)
        except BaseException as exc:
            if tcp is not None:  # a TLS handshake that failed, timed out or was cancelled
                tcp.socket.close()
            where = f"{self.host}:{self.port}"
            if isinstance(exc, trio.TooSlowError):
                raise Http1Timeout(f"no connection to {where} in time") from None
            if isinstance(exc, OSError | trio.BrokenResourceError):
                raise Http1Error(f"cannot connect to {where}: {exc}") from None
            raise

    async def _exchange(
        self, connection: _Connection, wire: bytes, limit: int, piece: int, *, reused: bool
    ) -> Answer:
        """Send ``wire`` on ``connection`` and read the answer; the connection goes back to
        the idle list only after a whole, clean answer."""
        parse = _Parse(limit, piece)
        parser = parse.parser
        assert parser is not None
        received = 0
        clean = False
        stream = connection.stream
        try:
            # one scope whose deadline moves: a fail_after per socket read cost as much as the parse
            with trio.CancelScope() as timer:
                try:
                    timer.deadline = trio.current_time() + self.read_timeout
                    await stream.send_all(wire)
                    while not parse.done:
                        timer.deadline = trio.current_time() + self.read_timeout
                        if parse.body is not None:
                            await _receive_body(stream, parse, timer, self.read_timeout)
                            break
                        data = await stream.receive_some(READ_SIZE)
                        if not data:
                            if reused and received == 0:
                                raise _Stale
                            raise Http1Error("the server closed the connection in mid-answer")
                        received += len(data)
                        parser.feed_data(data)
                        if not parse.headers_done and received > MAX_HEADER_BYTES:
                            raise Http1Error("the answer's headers are too long")
                        if parse.size > limit:
                            raise Http1Error(f"the answer is longer than the {limit} bytes asked")
                except _FAILURES as exc:
                    raise _failure(exc, stale=reused and received == 0) from None
            if timer.cancelled_caught:
                raise Http1Timeout(f"no answer within {self.read_timeout:g} s")
            body = parse.body
            parts = tuple(body) if body is not None else (joined(parse.chunks),)
            answer = Answer(parse.status, parse.reason.decode("latin-1", "replace"), parts)
            clean = parse.messages == 1 and parse.keep_alive and not self._closed
        finally:
            parse.parser = None  # no cycle left for the garbage collector
            self._release(connection, keep=clean)
        return answer

    async def get_many(
        self, targets: list[bytes], sizes: list[int], headers: list[tuple[bytes, bytes]]
    ) -> list[bytes]:
        """GETs of whole resources of known sizes, pipelined on one connection (the requests
        go out in one write, the answers come back in order): their bodies, in order.
        Any answer but a 200 of its size is an Http1Error. A server that closes the
        connection after a whole answer (a cap on requests a connection) gets the rest on a
        new one.

        The answers are received as a stream, heads and bodies as they come, into a buffer
        kept for the next batch (see ``_Buffers``), each read taking as much as the socket
        holds; then each body is copied out. Received a body at a time straight into its
        place, an answer cost two reads (its head, then its body) and two turns of the
        engine's loop, each a hand-off of the interpreter lock: in a cold epoch through one
        process with 8 reader threads a batch of ~31 small files took 34-38 ms to arrive
        (mean), its bytes waiting in the socket for the loop to come back; read as a stream,
        19-21 ms (docs/benchmarks.md, session 48)."""
        if len(targets) != len(sizes):
            raise ValueError("a size for every target")
        lines = _header_lines(headers)
        bodies: list[bytes] = []
        while len(bodies) < len(targets):
            rest = sizes[len(bodies) :]
            wire = b"".join(self._head(b"GET", target, lines) for target in targets[len(bodies) :])
            # room for the bodies and their heads: any one head of up to MAX_HEADER_BYTES,
            # or HEAD_ROOM each (a static server's are a few hundred bytes)
            room = sum(rest) + MAX_HEADER_BYTES + len(rest) * HEAD_ROOM
            buffer = self._buffers.take(room)
            try:
                with memoryview(buffer)[:room] as view:
                    async with self._slots:
                        connection = self._take_idle()
                        spans = None
                        if connection is not None:
                            with contextlib.suppress(_Stale):
                                spans = await self._pipeline(
                                    connection, wire, rest, buffer, view, reused=True
                                )
                        if spans is None:
                            connection = await self._connect()
                            spans = await self._pipeline(
                                connection, wire, rest, buffer, view, reused=False
                            )
                    if not spans:
                        raise Http1Error("the server closed the connection before any answer")
                    bodies.extend(bytes(view[start:end]) for start, end in spans)
            finally:
                self._buffers.give(buffer)
        return bodies

    async def _pipeline(
        self,
        connection: _Connection,
        wire: bytes,
        sizes: list[int],
        buffer: bytearray,
        view: memoryview,
        *,
        reused: bool,
    ) -> list[tuple[int, int]]:
        """Send the requests in ``wire`` and receive their answers into ``view`` (a view of
        ``buffer``): where each body is in it, in order, of those that came whole before the
        server closed the connection or ``view`` was full (all: the connection stays open if
        nothing came after them)."""
        stream = connection.stream
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        answers = _Answers(sizes)
        filled = 0  # bytes received
        keep = False
        try:
            with trio.CancelScope() as timer:
                try:
                    timer.deadline = trio.current_time() + self.read_timeout
                    await stream.send_all(wire)
                    while True:
                        answers.take(buffer, filled)
                        if answers.closing:
                            return answers.spans
                        if len(answers.spans) == len(sizes):
                            keep = filled == answers.parsed and not self._closed
                            return answers.spans
                        if filled == len(view):  # heads longer than HEAD_ROOM: the rest anew
                            return answers.spans
                        timer.deadline = trio.current_time() + self.read_timeout
                        if sock is not None:
                            n = await sock.recv_into(view[filled:])
                        else:  # TLS: the stream decrypts into bytes of its own, copied once
                            data = await stream.receive_some(min(READ_SIZE, len(view) - filled))
                            n = len(data)
                            view[filled : filled + n] = data
                        if not n:
                            if reused and not filled:
                                raise _Stale
                            if answers.spans:
                                return answers.spans
                            raise Http1Error("the server closed the connection in mid-answer")
                        filled += n
                except _FAILURES as exc:
                    raise _failure(exc, stale=reused and not filled) from None
            raise Http1Timeout(f"no answer within {self.read_timeout:g} s")
        finally:
            self._release(connection, keep=keep)

    def _release(self, connection: _Connection, *, keep: bool) -> None:
        """Back to the idle list after a whole, clean exchange (``keep``), else closed."""
        if keep:
            connection.idle_since = trio.current_time()
            self._idle.append(connection)
        else:
            _close_now(connection)

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            _close_now(self._idle.pop())


async def _receive_body(
    stream: trio.abc.Stream, parse: _Parse, timer: trio.CancelScope, timeout: float
) -> None:
    """The rest of ``parse.body`` straight into place: the parser has seen the headers and
    what came with them, and nothing more is read than the body's length."""
    assert parse.body is not None and parse.length is not None
    sock = stream.socket if isinstance(stream, trio.SocketStream) else None
    while parse.filled < parse.length:
        timer.deadline = trio.current_time() + timeout
        place = parse.free()
        if sock is not None:
            n = await sock.recv_into(place)
        else:  # TLS: the stream decrypts into bytes of its own, copied once
            data = await stream.receive_some(min(READ_SIZE, len(place)))
            n = len(data)
            place[:n] = data
        if not n:
            raise Http1Error("the server closed the connection in mid-answer")
        parse.filled += n
    parse.done = True


_FAILURES = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, httptools.HttpParserError)


def _failure(exc: BaseException, *, stale: bool) -> Exception:
    """What a failed exchange raises: _Stale for a reused connection that closed before any
    byte of an answer (sent again on a new one), else an Http1Error."""
    if isinstance(exc, httptools.HttpParserError):
        return Http1Error(f"not an HTTP answer: {exc}")
    if stale:
        return _Stale()
    return Http1Error(f"the connection failed: {exc}")


def _header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``Name: value`` lines, each ending in CRLF; a line break inside one is refused."""
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ValueError(f"a header with a line break: {name!r}")
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)


def take_head(received: bytearray) -> Head | None:
    """The answer head at the front of ``received``, parsed and cut off it (what follows stays);
    None while it is incomplete. Http1Error past ``MAX_HEADER_BYTES``."""
    head, end = _next_head(received, 0, len(received))
    if head is not None:
        del received[:end]
    return head


class _Answers:
    """Pipelined answers to GETs of ``sizes`` bytes each, taken apart as their bytes come into
    a buffer: where each body is in it (``spans``), in order."""

    __slots__ = ("closing", "head", "parsed", "sizes", "spans")

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.spans: list[tuple[int, int]] = []
        self.parsed = 0  # bytes of the buffer taken apart
        self.head: Head | None = None  # the next answer's, while its body is still coming
        self.closing = False  # an answer said the connection ends after it

    def take(self, buffer: bytearray, filled: int) -> None:
        """Take apart the answers that the first ``filled`` bytes of ``buffer`` complete."""
        while len(self.spans) < len(self.sizes) and not self.closing:
            head = self.head
            if head is None:
                head, self.parsed = _next_head(buffer, self.parsed, filled)
                if head is None:
                    return
                size = self.sizes[len(self.spans)]
                if head.status != 200 or head.length != size:
                    raise Http1Error(
                        f"the server answered {head.status} with {head.length}"
                        f" bytes for a blob of {size}"
                    )
                self.head = head
            if self.parsed + head.length > filled:
                return
            self.spans.append((self.parsed, self.parsed + head.length))
            self.parsed += head.length
            self.head, self.closing = None, not head.keep_alive


def _next_head(buffer: bytearray, start: int, end: int) -> tuple[Head | None, int]:
    """The answer head at ``start`` in ``buffer``, whose bytes up to ``end`` have come,
    parsed, and where what follows it starts; (None, ``start``) while it is incomplete.
    Http1Error past ``MAX_HEADER_BYTES``."""
    at = buffer.find(b"\r\n\r\n", start, min(end, start + MAX_HEADER_BYTES))
    if at < 0:
        if end - start > MAX_HEADER_BYTES:
            raise Http1Error("the answer's headers are too long")
        return None, start
    head = Head()
    head.parse(bytes(buffer[start : at + 4]))
    return head, at + 4


class Head:
    """An answer's status line and headers, parsed by httptools: a pipelined answer's body is
    framed by its Content-Length, which these answers (files from a static server) carry."""

    __slots__ = ("_parser", "chunked", "complete", "keep_alive", "length", "status")

    def __init__(self) -> None:
        self.status = 0
        self.length = -1
        self.chunked = False
        self.keep_alive = False
        self.complete = False
        self._parser: httptools.HttpResponseParser | None = None

    def parse(self, head: bytes) -> None:
        self._parser = httptools.HttpResponseParser(self)
        try:
            self._parser.feed_data(head)
        finally:
            self._parser = None
        if not self.complete:
            raise Http1Error("an incomplete answer head")
        if self.chunked or self.length < 0:
            raise Http1Error("a pipelined answer without a Content-Length")

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length":
            self.length = int(value)  # llhttp has checked it
        elif lowered == b"transfer-encoding":
            self.chunked = True

    def on_headers_complete(self) -> None:
        # asked now: an answer with no body is complete here, and the parser then resets
        # what it knew (a Content-Length: 0 answer read as not keeping the connection)
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True


def _close_now(connection: _Connection) -> None:
    """Close without a goodbye: no TLS close_notify that could wait on the peer."""
    stream = connection.stream
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
