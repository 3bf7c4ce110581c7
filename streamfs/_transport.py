"""httpx's transport, with socket reads of up to ``READ_SIZE`` bytes.

httpcore reads a response 64 KiB at a time, and every read climbs through
httpcore, h11 and httpx in Python: a 4 MiB block is 64 such trips. Asking
the socket for up to 1 MiB lets one trip carry whatever the kernel holds
(measured on the bench server, 16 MiB ranges: client CPU 1.95 -> 1.1 ms per
MB, 470 -> 700 MB/s). A read returns what is there, so small responses
are not delayed. The wider reads come from a wrapping network backend, an
extension point httpcore offers; httpx takes no backend, so the transport
builds its pool the way httpx does, with that backend. Proxies from the
environment still go through httpx's own transports (httpx mounts them
beside this one).

Blob reads skip it (``_http1.py``) unless a proxy is set; it carries every
other request: metadata, commits, uploads.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from ._http1 import READ_SIZE  # one socket read's size for both clients


class _WideStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max(max_bytes, READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _WideStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class WideReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend whose streams read up to ``READ_SIZE`` bytes at once."""

    def __init__(self) -> None:
        self._backend = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _WideStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _WideStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class WideReadTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (HTTP/1.1, default TLS) over ``WideReadBackend``."""

    def __init__(self, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context()  # as httpx makes it (honours SSL_CERT_FILE)
        super().__init__(verify=ssl_context, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=WideReadBackend(),
        )
