"""The blob-read HTTP/1.1 client (streamfs/_http1.py) against real servers on loopback."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trustme

from streamfs._http1 import Http1Error, Http1Pool, Http1Timeout, MiB, _Buffers

pytestmark = pytest.mark.trio

Handler = Callable[["Server", trio.abc.Stream], Awaitable[None]]


@dataclass
class Server:
    """A loopback server that runs ``handler`` on every connection and counts them."""

    handler: Handler
    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)  # a connection saw the client leave
    hung_up: trio.Event = field(default_factory=trio.Event)  # the server closed a connection

    async def request(self, stream: trio.abc.Stream, buffer: bytearray) -> bytes | None:
        """The next request's head (its body skipped), or None when the client hung up."""
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                self.closed.set()
                return None
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        buffer[:] = rest[length:]
        self.heads.append(head)
        return head


async def serve(
    nursery: trio.Nursery, handler: Handler, tls: ssl.SSLContext | None = None
) -> Server:
    server = Server(handler)

    async def connection(stream: trio.abc.Stream) -> None:
        server.connections += 1
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_side=True)
        try:
            await handler(server, stream)
        except trio.BrokenResourceError:
            server.closed.set()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), connection, 0
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


def answer(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Length: %d\r\n%b\r\n%b" % (status, len(body), extra, body)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Answer the requests of a connection with ``answers`` in turn (the last one repeats)."""

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        served = 0
        while await server.request(stream, buffer) is not None:
            await stream.send_all(answers[min(served, len(answers) - 1)])
            served += 1
            if then_close:
                await stream.aclose()
                server.hung_up.set()
                return

    return handler


@contextlib.asynccontextmanager
async def pool(port: int, scheme: str = "http", **options: Any) -> AsyncIterator[Http1Pool]:
    settings: dict[str, Any] = {
        "max_connections": 4,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        **options,
    }
    p = Http1Pool(scheme, "127.0.0.1", port, **settings)
    try:
        yield p
    finally:
        await p.aclose()


async def get(
    p: Http1Pool, limit: int = 1 << 20, headers: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    got = await p.request(b"GET", b"/blob", headers or [], None, limit)
    assert got.status_code == 200
    return got.content


async def test_serial_requests_share_one_connection_and_send_what_was_asked() -> None:
    body = os.urandom(300_000)  # more than one socket read
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(body)))
        async with pool(server.port) as p:
            for _ in range(3):
                assert await get(p, headers=[(b"Range", b"bytes=0-9")]) == body
            posted = await p.request(b"POST", b"/v1/batch", [], b'{"ids": []}', 1 << 20)
            assert posted.content == body and posted.reason_phrase == "OK"
        nursery.cancel_scope.cancel()
    assert server.connections == 1
    lines = server.heads[0].split(b"\r\n")
    assert lines[0] == b"GET /blob HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Range: bytes=0-9" in lines
    assert b"Content-Length: 11" in server.heads[3].split(b"\r\n")


@pytest.mark.parametrize("piece", [0, 1_000_000, 700_000])  # one buffer; buffers of a piece
async def test_a_body_of_known_length_is_read_into_place_whatever_pieces_it_comes_in(
    piece: int,
) -> None:
    body = os.urandom(3_000_000)
    reply = answer(body)
    cuts = [0, 40, len(reply) - len(body) + 1, 1_000_000, 1_000_001, 2_500_000, len(reply)]

    async def in_pieces(server: Server, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        while await server.request(stream, buffer) is not None:
            for start, end in itertools.pairwise(cuts):  # headers split, then odd body pieces
                await stream.send_all(reply[start:end])

    async with trio.open_nursery() as nursery:
        server = await serve(nursery, in_pieces)
        async with pool(server.port) as p:
            for _ in range(2):
                got = await p.request(b"GET", b"/blob", [], None, len(body), piece)
                step = piece or len(body)
                assert [bytes(part) for part in got.parts] == [
                    body[at : at + step] for at in range(0, len(body), step)
                ]
                assert all(isinstance(part, bytearray) for part in got.parts)  # filled in place
        nursery.cancel_scope.cancel()
    assert server.connections == 1  # each answer was read to its end, and no further


async def test_body_bytes_that_come_with_the_headers_fill_pieces_in_order() -> None:
    body = os.urandom(5_000)  # one send: parsed with the headers, across five pieces
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(body)))
        async with pool(server.port) as p:
            got = await p.request(b"GET", b"/blob", [], None, len(body), 1_024)
        nursery.cancel_scope.cancel()
    assert [len(part) for part in got.parts] == [1_024] * 4 + [904]
    assert b"".join(got.parts) == body


async def test_an_error_answer_is_parsed_as_before() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b'{"error": "no"}', b"404 Not Found")))
        async with pool(server.port) as p:
            got = await p.request(b"GET", b"/blob", [], None, 1 << 20)
        nursery.cancel_scope.cancel()
    assert (got.status_code, got.content) == (404, b'{"error": "no"}')


async def test_a_preconnected_connection_serves_the_first_request() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b"abc")))
        async with pool(server.port) as p:
            await p.preconnect()
            assert len(p._idle) == 1  # open, nothing sent yet
            await p.preconnect()  # one idle already: nothing more
            assert len(p._idle) == 1
            assert await get(p) == b"abc"
        nursery.cancel_scope.cancel()
    assert server.connections == 1 and len(server.heads) == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b"abc"), then_close=True))
        async with pool(server.port) as p:
            assert await get(p) == b"abc"
            await server.hung_up.wait()
            assert await get(p) == b"abc"  # the stale connection is noticed, and a new one used
        nursery.cancel_scope.cancel()
    assert server.connections == 2


async def test_an_answer_that_closes_the_connection_is_not_reused() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b"abc", extra=b"Connection: close\r\n")))
        async with pool(server.port) as p:
            assert await get(p) == b"abc"
            assert await get(p) == b"abc"
        nursery.cancel_scope.cancel()
    assert server.connections == 2


async def test_a_chunked_answer_is_put_together() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(chunked))
        async with pool(server.port) as p:
            assert await get(p) == b"abcdefg"
            assert await get(p) == b"abcdefg"
        nursery.cancel_scope.cancel()
    assert server.connections == 1


@pytest.mark.parametrize(
    ("reply", "then_close", "message"),
    [
        (answer(b"x" * 2000), False, "longer than the 1000 bytes asked"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: p\r\n" * 8000, False, "headers are too long"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, "not an HTTP answer"),
        (answer(b"abcdef")[:-3], True, "closed the connection in mid-answer"),
    ],
)
async def test_a_bad_answer_is_an_error_and_its_connection_is_dropped(
    reply: bytes, then_close: bool, message: str
) -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(reply, then_close=then_close))
        async with pool(server.port) as p:
            with pytest.raises(Http1Error, match=message):
                await get(p, limit=1000)
            assert p._idle == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "sent_first",
    [b"", answer(b"x" * 500_000)[:200_000]],
    ids=["before-the-answer", "in-mid-body"],
)
async def test_a_stalled_server_is_a_timeout_not_a_hang(sent_first: bytes) -> None:
    async def stall(server: Server, stream: trio.abc.Stream) -> None:
        await server.request(stream, bytearray())
        await stream.send_all(sent_first)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await serve(nursery, stall)
        async with pool(server.port, read_timeout=0.2) as p:
            with trio.fail_after(10), pytest.raises(Http1Timeout, match="no answer within"):
                await get(p)
            assert p._idle == []
        nursery.cancel_scope.cancel()


async def test_a_closed_port_is_an_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    async with pool(port) as p:
        with pytest.raises(Http1Error, match="cannot connect"):
            await get(p)
        with pytest.raises(Http1Error, match="cannot connect"):
            await p.preconnect()
        assert p._idle == []


async def test_a_header_with_a_line_break_is_refused_before_sending() -> None:
    async with pool(9) as p:
        with pytest.raises(ValueError, match="line break"):
            await get(p, headers=[(b"Authorization", b"Bearer x\r\nX-Evil: 1")])


async def test_no_more_connections_than_allowed() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b"abc")))
        async with pool(server.port, max_connections=2) as p, trio.open_nursery() as requests:
            for _ in range(10):
                requests.start_soon(get, p)
        nursery.cancel_scope.cancel()
    assert server.connections <= 2
    assert len(server.heads) == 10


async def test_a_cancelled_request_drops_its_connection() -> None:
    asked = trio.Event()

    async def stall(server: Server, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        await server.request(stream, buffer)
        asked.set()
        await server.request(stream, buffer)  # returns None once the client closed

    async with trio.open_nursery() as nursery:
        server = await serve(nursery, stall)
        async with pool(server.port) as p:
            async with trio.open_nursery() as requests:
                requests.start_soon(get, p)
                await asked.wait()
                requests.cancel_scope.cancel()
            with trio.fail_after(10):
                await server.closed.wait()  # the half-read answer's connection was closed
            assert p._idle == []
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_past_its_keepalive_is_not_reused() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b"abc")))
        async with pool(server.port, keepalive=0.0) as p:
            assert await get(p) == b"abc"
            assert await get(p) == b"abc"
        nursery.cancel_scope.cancel()
    assert server.connections == 2


async def test_extra_bytes_after_an_answer_drop_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(b"abc") + answer(b"surprise")))
        async with pool(server.port) as p:
            assert await get(p) == b"abc"
            assert await get(p) == b"abc"  # on a new connection, not the surprise
        nursery.cancel_scope.cancel()
    assert server.connections == 2


async def test_https_with_the_servers_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    body = os.urandom(200_000)
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, answering(answer(body)), tls=server_context)
        async with pool(server.port, "https", ssl_context=client_context) as p:
            assert await get(p) == body
            got = await p.request(b"GET", b"/blob", [], None, len(body), 65536)
            assert b"".join(got.parts) == body and len(got.parts) == 4
        untrusted = ssl.create_default_context()  # the system's CAs only
        async with pool(server.port, "https", ssl_context=untrusted) as p:
            with pytest.raises(Http1Error, match="cannot connect"):
                await get(p)
        nursery.cancel_scope.cancel()
    assert server.connections == 2  # one for both trusted requests, one refused


def bodies_by_target(count: int) -> dict[bytes, bytes]:
    return {b"/b/%d" % i: os.urandom(1_000 + 37_000 * i) for i in range(count)}


def pipelined(
    bodies: dict[bytes, bytes],
    *,
    close_after: int | None = None,
    status: bytes = b"200 OK",
    split: int = 50_001,
    padding: int = 0,
) -> Handler:
    """Read every request of the first batch before answering any (a client that waited for
    each answer before its next request would stall here), then answer them in writes of
    ``split`` bytes; ``padding``: bytes of a header more in every answer's head."""

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        first = server.connections == 1
        while True:
            heads: list[bytes] = []
            while not heads or buffer or (first and len(heads) < len(bodies)):
                head = await server.request(stream, buffer)  # the whole batch, if the first
                if head is None:
                    return
                heads.append(head)
            wire = bytearray()
            for n, head in enumerate(heads):
                target = head.split(b" ")[1]
                last = first and n + 1 == close_after
                extra = b"X-Pad: %b\r\n" % (b"p" * padding) if padding else b""
                wire += answer(
                    bodies[target],
                    status if n == 1 else b"200 OK",
                    extra + (b"Connection: close\r\n" if last else b""),
                )
                if last:
                    break
            for start in range(0, len(wire), split):
                await stream.send_all(wire[start : start + split])
            if close_after is not None and first:
                await stream.aclose()
                return
            first = False  # later batches on this connection are answered as they come

    return handler


async def get_all(
    bodies: dict[bytes, bytes], headers: list[tuple[bytes, bytes]] | None = None, **options: Any
) -> tuple[list[bytes], Server]:
    """``get_many`` of every target of ``bodies`` from a ``pipelined(bodies, **options)``
    server: what came, and the server (its connections and the request heads it saw)."""
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, pipelined(bodies, **options))
        async with pool(server.port) as p:
            targets = list(bodies)
            got = await p.get_many(targets, [len(bodies[t]) for t in targets], headers or [])
        nursery.cancel_scope.cancel()
    return got, server


async def test_many_gets_are_pipelined_on_one_connection() -> None:
    bodies = bodies_by_target(6)
    got, server = await get_all(bodies, [(b"X-A", b"1")])
    assert got == list(bodies.values())
    assert server.connections == 1
    assert all(b"X-A: 1" in head.split(b"\r\n") for head in server.heads)


async def test_pipelined_answers_are_taken_apart_however_they_arrive() -> None:
    bodies = {**bodies_by_target(3), b"/empty": b"", b"/one": b"x"}
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, pipelined(bodies, split=7))  # heads cut anywhere
        async with pool(server.port) as p:
            targets = list(bodies)
            got = await p.get_many(targets, [len(bodies[t]) for t in targets], [])
            again = await p.get_many(targets[3:], [0, 1], [])  # the connection was kept
        nursery.cancel_scope.cancel()
    assert got == list(bodies.values()) and again == [b"", b"x"]
    assert server.connections == 1


async def test_answers_whose_heads_outgrow_the_batchs_buffer_get_the_rest_anew() -> None:
    # 40 answers with 5 KB heads: more than the buffer keeps for heads (one of up to 64 KiB,
    # HEAD_ROOM each), so the answers that did not fit are asked for again, on a new connection
    bodies = {b"/s/%d" % i: os.urandom(100 + i) for i in range(40)}
    got, server = await get_all(bodies, padding=5_000)
    assert got == list(bodies.values())
    assert server.connections >= 2


async def test_a_server_that_closes_midway_gets_the_rest_on_a_new_connection() -> None:
    bodies = bodies_by_target(7)
    got, server = await get_all(bodies, close_after=3)
    assert got == list(bodies.values())
    assert server.connections == 2
    assert len(server.heads) == 7 + 4  # the four unanswered requests were sent again


async def test_batches_reuse_one_receive_buffer_and_never_return_an_earlier_batchs_bytes() -> None:
    small = {b"/s/%d" % i: os.urandom(500 + i) for i in range(3)}
    every = {**bodies_by_target(5), **small}  # the first batch: the server waits for all
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, pipelined(every))
        async with pool(server.port) as p:
            first = await p.get_many(list(every), [len(b) for b in every.values()], [])
            kept = p._buffers._free[:]
            second = await p.get_many(list(small), [len(b) for b in small.values()], [])
            with pytest.raises(Http1Error):  # a batch that fails midway gives its buffer back
                await p.get_many(list(small), [len(b) + 1 for b in small.values()], [])
            third = await p.get_many(list(small), [len(b) for b in small.values()], [])
        nursery.cancel_scope.cancel()
    assert first == list(every.values())
    assert second == third == list(small.values())  # not the start of the first batch's bytes
    assert len(kept) == 1 and p._buffers._free == kept  # the same buffer each time


async def test_receive_buffers_are_whole_mebibytes_and_bounded() -> None:
    buffers = _Buffers(keep=2, largest=4 * MiB)
    one = buffers.take(100)
    assert len(one) == MiB
    buffers.give(one)
    assert buffers.take(MiB) is one  # big enough: reused
    buffers.give(one)
    bigger = buffers.take(MiB + 1)  # too small: a new one (the old one is dropped)
    assert len(bigger) == 2 * MiB and bigger is not one
    for buffer in (bigger, bytearray(MiB), bytearray(MiB), bytearray(5 * MiB)):
        buffers.give(buffer)
    assert [len(b) for b in buffers._free] == [2 * MiB, MiB]  # at most two, none over 4 MiB


@pytest.mark.parametrize("status", [b"403 Forbidden", b"206 Partial Content"])
async def test_an_answer_that_is_not_the_whole_resource_is_an_error(status: bytes) -> None:
    bodies = bodies_by_target(3)
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, pipelined(bodies, status=status))
        async with pool(server.port) as p:
            targets = list(bodies)
            with pytest.raises(Http1Error, match=status.split()[0].decode()):
                await p.get_many(targets, [len(bodies[t]) for t in targets], [])
        nursery.cancel_scope.cancel()


async def test_a_pipelined_answer_of_another_size_is_an_error() -> None:
    bodies = bodies_by_target(2)
    async with trio.open_nursery() as nursery:
        server = await serve(nursery, pipelined(bodies))
        async with pool(server.port) as p:
            with pytest.raises(Http1Error, match="bytes for a blob of"):
                await p.get_many(list(bodies), [len(b) + 1 for b in bodies.values()], [])
        nursery.cancel_scope.cancel()
