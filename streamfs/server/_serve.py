"""Run the API on Uvicorn: the uvloop event loop and the httptools (llhttp) parser.

Measured against Hypercorn with the trio worker, same app, same machine: server CPU for a GET of a
110 KiB blob 1.5 -> 0.7 ms, for 16 MiB ranges ~0.8-1.1 -> ~0.6 ms a MB (docs/benchmarks.md). The
parser is where it goes: Uvicorn with h11 instead measured 1.06 ms a GET and no gain on ranges.
httptools sets no bound on a request's head, so ours does (h11 and Hypercorn had one too).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._app import Limits, create_app
from ._auth import TokenBook
from ._front import BlobFront
from ._storage import LocalStorage
from ._store import RepoStore

log = logging.getLogger("streamfs.server")

MAX_HEAD = 64 * 1024  # bytes of a request's target and headers; past it, 400 and the end
LINGER_SECONDS = 2.0  # after a 400 for a bad head, what the client still sends is read this long
LINGER_BYTES = 1024 * 1024  # ... and up to this much of it; past either, the connection is cut
GRACEFUL_SECONDS = 5  # on SIGTERM or SIGINT, requests in flight get this long to finish


class HeadTooLarge(Exception):
    pass


class _BoundedHttpTools(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a bound on the request head (URL and headers), and a
    lingering close after a 400 for a head it could not take.

    Uvicorn answers an unparsable head with a 400 and closes at once. When the client is still
    sending (the rest of an oversized head, a body), the unread bytes make the kernel reset the
    connection, and a reset can reach the client before it has read the 400: it sees only
    "connection reset". So the answer is followed by a FIN (``write_eof``), and the client's
    remaining bytes are read and dropped until it closes its side, for at most
    ``LINGER_SECONDS`` and ``LINGER_BYTES`` (what nginx's ``lingering_close`` does).
    """

    _head_bytes = 0
    _linger_left: int | None = None  # bytes still taken while lingering; None: not lingering

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF: many empty headers count too
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD:  # the parser turns this into a 400 and a closed connection
            raise HeadTooLarge(f"request head over {MAX_HEAD} bytes")

    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        body = msg.encode("ascii")
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_left = LINGER_BYTES
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._linger_left is None:
            super().data_received(data)
            return
        self._linger_left -= len(data)
        if self._linger_left < 0:
            self.transport.close()
        # The client's end of file closes the transport (eof_received returns None).


class _Server(uvicorn.Server):
    """Says where it listens once the socket is bound (a line scripts and tests wait for)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"streamfs: listening on http://{shown}:{port}", file=sys.stderr, flush=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8600,
    token_file: str | Path | None = None,
    limits: Limits | None = None,
    access_log: bool = False,
    fd: int | None = None,
    front: BlobFront | None = None,
) -> None:
    """Serve the store at ``root`` until interrupted."""
    tokens = TokenBook.load(token_file)
    if tokens.is_open and not _is_loopback(host):
        print(
            f"streamfs: no --token-file: binding to 127.0.0.1 instead of {host} "
            "(an open server is for this machine only)",
            file=sys.stderr,
        )
        host = "127.0.0.1"
    app = create_app(RepoStore(LocalStorage(root)), tokens, limits, front)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=_BoundedHttpTools,
        lifespan="off",
        access_log=access_log,
        log_level="info" if access_log else "warning",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        server_header=False,
    )
    mode = "open (no token file)" if tokens.is_open else f"tokens from {token_file}"
    if front is not None:
        mode += f"; blob bytes from {front.base}"
    where = f"inherited socket {fd}" if fd is not None else f"http://{host}:{port}"
    print(
        f"streamfs: serving {Path(root).resolve()} on {where} ({mode})", file=sys.stderr, flush=True
    )
    # An inherited socket is passed as a socket object: Uvicorn's own fd= assumes a Unix socket
    # and would leave TCP_NODELAY off (measured: 40 ms a small response, Nagle against delayed ACK).
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    _Server(config).run(sockets=sockets)
