"""The wide-read transport: what it asks of the socket, and that httpx works over it."""

from __future__ import annotations

import ssl
from functools import partial
from typing import Any

import httpcore
import httpx
import pytest
import trio

from streamfs._transport import READ_SIZE, WideReadBackend, WideReadTransport, _WideStream

pytestmark = pytest.mark.trio


class RecordingStream(httpcore.AsyncNetworkStream):
    """A network stream that hands out canned bytes and records what it was asked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[tuple[int, float | None]] = []
        self.written: list[bytes] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.asked.append((max_bytes, timeout))
        out, self.data = self.data[:max_bytes], self.data[max_bytes:]
        return out

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.written.append(buffer)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return RecordingStream(b"after tls")

    def get_extra_info(self, info: str) -> Any:
        return f"info {info}"


async def test_reads_ask_for_at_least_read_size_and_keep_the_timeout() -> None:
    inner = RecordingStream(b"x" * (3 * READ_SIZE))
    stream = _WideStream(inner)
    assert len(await stream.read(64 * 1024, timeout=2.5)) == READ_SIZE
    assert len(await stream.read(2 * READ_SIZE)) == 2 * READ_SIZE  # a bigger ask is kept
    assert inner.asked == [(READ_SIZE, 2.5), (2 * READ_SIZE, None)]
    await stream.write(b"req")
    assert inner.written == [b"req"]
    assert stream.get_extra_info("is_readable") == "info is_readable"
    tls = await stream.start_tls(ssl.create_default_context())
    assert isinstance(tls, _WideStream) and await tls.read(10) == b"after tls"


async def test_httpx_over_the_wide_transport_gets_every_byte() -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB, more than one wide read
    served = trio.Event()

    async def serve(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        await stream.send_all(head + body)
        served.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        transport = WideReadTransport(httpx.Limits(max_connections=2))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"http://127.0.0.1:{port}/blob")
        assert response.status_code == 200 and response.content == body
        await served.wait()
        nursery.cancel_scope.cancel()


async def test_the_backend_connects_real_sockets() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await WideReadBackend().connect_tcp("127.0.0.1", port, timeout=5)
        assert isinstance(stream, _WideStream) and await stream.read(100) == b"hello"
        await stream.aclose()
        nursery.cancel_scope.cancel()
