"""A TCP proxy that adds network latency (and optionally a bandwidth cap) on loopback.

This kernel has no netem, so the benchmark puts this proxy in front of every
HTTP server it measures. The model, per connection and direction:

- **One-way delay, not serialization.** Each chunk read from one side is
  stamped ``due = arrival + rtt/2`` and queued; a separate task writes it out
  when it is due. Reading goes on meanwhile, so a stream of chunks arrives
  ``rtt/2`` late but at full rate: data is delayed, never queued behind
  sleeps (a pipelined client pays one RTT, not one per chunk).
- **Connection set-up** costs one extra RTT before the first client bytes
  reach the server (the TCP handshake the client would wait for).
- **Bandwidth cap** (optional): one link per direction shared by every
  connection through this proxy; a chunk leaves the link ``size / rate``
  after the previous one, then travels ``rtt/2``.
- **Back-pressure**: at most ``MAX_QUEUED`` chunks wait per direction; a
  full queue stops reading, and TCP pushes back on the sender.

Not modelled: TCP slow start, loss, reordering. Counters (connections, bytes
each way) are served as one JSON line to anyone who connects to the stats port.

Run it::

    python scripts/latency_proxy.py --target 127.0.0.1:8600 --rtt 20ms [--bandwidth 1Gbit]
    python scripts/latency_proxy.py --self-check

It prints ``listening PORT STATS_PORT`` once ready. Importable: ``LatencyProxy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
import time
from dataclasses import dataclass, field

CHUNK = 256 * 1024
MAX_QUEUED = 256

_DURATION = re.compile(r"^\s*([0-9.]+)\s*(us|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9.]+)\s*([kmg]?)(bit|b|bps|B|B/s)?\s*$", re.IGNORECASE)


def parse_duration(text: str | float) -> float:
    """Seconds from '20ms', '0.02s', '500us', '0' (a bare number is milliseconds)."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: want e.g. 20ms")
    value, unit = float(match.group(1)), match.group(2) or "ms"
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def parse_rate(text: str | None) -> float | None:
    """Bytes per second from '1Gbit', '100Mbit', '50MB/s', '50MB'; None or '' or '0': no cap."""
    if text is None or text.strip() in ("", "0"):
        return None
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"invalid bandwidth {text!r}: want e.g. 1Gbit or 100MB/s")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    unit = match.group(3) or "B"
    return value / 8 if unit.lower() in ("bit", "bps") else value


@dataclass
class Link:
    """One direction of the shared link: when its last byte will have left."""

    rate: float | None  # bytes/s; None: unlimited
    free_at: float = 0.0

    def send(self, now: float, nbytes: int) -> float:
        if self.rate is None:
            return now
        self.free_at = max(now, self.free_at) + nbytes / self.rate
        return self.free_at


@dataclass
class Counters:
    connections: int = 0
    open: int = 0
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client

    def to_json(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "open": self.open,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


@dataclass
class LatencyProxy:
    target_host: str
    target_port: int
    rtt: float = 0.0
    bandwidth: float | None = None
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.up = Link(self.bandwidth)
        self.down = Link(self.bandwidth)
        self._servers: list[asyncio.base_events.Server] = []

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, stats_port: int | None = 0
    ) -> int:
        server = await asyncio.start_server(self._handle, host, port, backlog=1024)
        self._servers.append(server)
        if stats_port is not None:
            stats = await asyncio.start_server(self._stats, host, stats_port)
            self._servers.append(stats)
        return int(server.sockets[0].getsockname()[1])

    @property
    def stats_port(self) -> int:
        return int(self._servers[1].sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _stats(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(self.counters.to_json()).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        self.counters.connections += 1
        self.counters.open += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self.counters.open -= 1
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        half = self.rtt / 2
        # the client's first bytes wait for the handshake: one extra RTT
        up = self._pump(c_reader, s_writer, self.up, half, accepted + self.rtt, "bytes_up")
        down = self._pump(s_reader, c_writer, self.down, half, 0.0, "bytes_down")
        try:
            await asyncio.gather(up, down)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.counters.open -= 1
            for w in (c_writer, s_writer):
                w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: Link,
        delay: float,
        not_before: float,
        counter: str,
    ) -> None:
        if delay == 0 and link.rate is None and not_before == 0:
            await self._copy(reader, writer, counter)
            return
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED)
        loop = asyncio.get_running_loop()

        async def receive() -> None:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                now = max(loop.time(), not_before)
                await queue.put((link.send(now, len(data)) + delay, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    _write_eof(writer)
                    return
                writer.write(data)
                setattr(self.counters, counter, getattr(self.counters, counter) + len(data))
                await writer.drain()

        receiver = asyncio.ensure_future(receive())
        try:
            await deliver()
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await receiver

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str
    ) -> None:
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""
            if not data:
                _write_eof(writer)
                return
            writer.write(data)
            setattr(self.counters, counter, getattr(self.counters, counter) + len(data))
            await writer.drain()


def _write_eof(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


def read_stats(port: int, host: str = "127.0.0.1") -> dict[str, int]:
    """The counters of a proxy running elsewhere (blocking)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return dict(json.loads(data))


# --------------------------------------------------------------------------- self-check


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while data := await reader.read(CHUNK):
        total += len(data)
    writer.write(str(total).encode())
    await writer.drain()
    writer.close()


async def self_check() -> None:
    """Round trips cost one RTT; pipelined messages are not serialized; the cap holds."""
    rtt = 0.05
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = LatencyProxy("127.0.0.1", echo.sockets[0].getsockname()[1], rtt=rtt)
    port = await proxy.start()
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    await reader.readexactly(4)
    first = time.monotonic() - t0
    assert 2 * rtt * 0.9 <= first < 2 * rtt + 0.04, f"connect + round trip took {first:.3f} s"
    t0 = time.monotonic()
    writer.write(b"ping")
    await reader.readexactly(4)
    one = time.monotonic() - t0
    assert rtt * 0.9 <= one < rtt + 0.03, f"a round trip took {one:.3f} s, want ~{rtt}"
    t0 = time.monotonic()
    for _ in range(20):  # 20 messages 5 ms apart: all back after ~RTT + 95 ms, not 20 RTT
        writer.write(b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(0.005)
    await reader.readexactly(20_000)
    pipelined = time.monotonic() - t0
    assert pipelined < rtt + 0.1 + 0.05, f"20 pipelined messages took {pipelined:.3f} s"
    writer.close()
    await proxy.close()
    echo.close()

    sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
    rate = 20e6  # 20 MB/s: 4 MB takes 0.2 s
    capped = LatencyProxy("127.0.0.1", sink.sockets[0].getsockname()[1], bandwidth=rate)
    port = await capped.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(b"y" * 4_000_000)
    await writer.drain()
    writer.write_eof()
    got = int(await reader.read())
    took = time.monotonic() - t0
    assert got == 4_000_000 and 0.18 <= took < 0.4, f"4 MB at 20 MB/s took {took:.3f} s"
    stats = capped.counters.to_json()
    assert stats["bytes_up"] == 4_000_000, stats
    await capped.close()
    sink.close()
    print(
        f"self-check ok: connect+RTT {first * 1000:.0f} ms, RTT {one * 1000:.0f} ms, "
        f"20 pipelined {pipelined * 1000:.0f} ms, 4 MB at 20 MB/s {took:.2f} s"
    )


# --------------------------------------------------------------------------- main


async def _serve(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    proxy = LatencyProxy(
        host or "127.0.0.1", int(port), parse_duration(args.rtt), parse_rate(args.bandwidth)
    )
    lhost, _, lport = args.listen.rpartition(":")
    listen_port = await proxy.start(lhost or "127.0.0.1", int(lport or 0), args.stats_port)
    print(f"listening {listen_port} {proxy.stats_port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", help="HOST:PORT to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--stats-port", type=int, default=0)
    parser.add_argument("--rtt", default="0", help="round-trip time added, e.g. 20ms")
    parser.add_argument("--bandwidth", default=None, help="cap each direction, e.g. 1Gbit")
    parser.add_argument("--self-check", action="store_true")
    args = parser.parse_args(argv)
    if args.self_check:
        asyncio.run(self_check())
        return
    if not args.target:
        parser.error("--target is required")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
