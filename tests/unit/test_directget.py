"""A reader's own GET of a small blob from the front (_directget.py), against a local HTTP/1.1
server: kept connections, a connection the server closed while idle, answers that are not the
blob, a front that refuses or stalls."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import blake3
import pytest

import streamfs._directget
from streamfs._blobfront import BlobUrl
from streamfs._directget import DirectGets


class Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies: dict[str, bytes] = {}
        self.status = 200
        self.close_after_answer = False  # close without saying so (an idle timeout)
        self.stall = threading.Event()  # set: never answer
        self.delay = 0.0  # seconds before each answer
        self.connections = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Front

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:
        if self.server.stall.is_set():
            time.sleep(5)
            return
        time.sleep(self.server.delay)
        body = self.server.bodies.get(self.path.rsplit("/", 1)[-1], b"")
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.close_after_answer:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class FakeFront:
    """What DirectGets asks of a BlobFront: whether the server has one, and a blob's URL."""

    def __init__(self, port: int) -> None:
        self.available: bool | None = True
        self.port = port
        self.ids: set[str] = set()
        self.blake3: dict[str, str] = {}  # the BLAKE3 the API sent with a blob's URL

    def url_of(self, oid: str) -> BlobUrl | None:
        if oid not in self.ids:
            return None
        origin = ("http", "127.0.0.1", self.port)
        return BlobUrl(origin, f"/blobs/{oid}".encode(), 0.0, self.blake3.get(oid))


@pytest.fixture
def front() -> Iterator[Front]:
    server = Front()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stall.clear()
        server.shutdown()
        server.server_close()


def blob(server: Front, fake: FakeFront, size: int = 50_000) -> tuple[str, bytes]:
    data = os.urandom(size)
    oid = hashlib.sha256(data).hexdigest()
    server.bodies[oid] = data
    fake.ids.add(oid)
    return oid, data


made: list[DirectGets] = []


@pytest.fixture(autouse=True)
def close_connections() -> Iterator[None]:
    yield
    while made:
        made.pop().close()


def gets(fake: FakeFront, read_timeout: float = 5.0) -> DirectGets:
    direct = DirectGets(fake, connect_timeout=5.0, read_timeout=read_timeout)  # type: ignore[arg-type]
    made.append(direct)
    return direct


def test_blobs_come_whole_and_checked_on_one_kept_connection(front: Front) -> None:
    fake = FakeFront(front.server_address[1])
    direct = gets(fake)
    blobs = [blob(front, fake, 10_000 * (i + 1)) for i in range(3)]
    assert [direct.get(oid, len(data)) for oid, data in blobs] == [data for _, data in blobs]
    assert front.connections == 1


def test_what_it_cannot_fetch_is_left_to_the_engine(front: Front) -> None:
    fake = FakeFront(front.server_address[1])
    direct = gets(fake)
    oid, data = blob(front, fake)
    assert direct.get("ab" * 32, 10) is None  # no URL known
    assert direct.get(oid, len(data) + 1) is None  # not the size the tree says
    front.bodies[oid] = os.urandom(len(data))  # bytes that are not the blob
    assert direct.get(oid, len(data)) is None
    front.bodies[oid], front.status = data, 410  # an expired URL
    assert direct.get(oid, len(data)) is None
    front.status = 200  # none of these made the front rest
    assert direct.get(oid, len(data)) == data
    fake.available = None  # a server that has not said it has a front
    assert direct.get(oid, len(data)) is None


def test_a_blob_whose_url_came_with_its_blake3_is_checked_by_that(front: Front) -> None:
    fake = FakeFront(front.server_address[1])
    direct = gets(fake)
    oid, data = blob(front, fake)
    fake.blake3[oid] = blake3.blake3(data).hexdigest()
    assert direct.get(oid, len(data)) == data
    fake.blake3[oid] = blake3.blake3(data[1:] + b"x").hexdigest()  # not these bytes' BLAKE3
    assert direct.get(oid, len(data)) is None  # though their sha256 is the id
    front.bodies[oid] = os.urandom(len(data))
    fake.blake3[oid] = blake3.blake3(front.bodies[oid]).hexdigest()
    # checked by the BLAKE3 alone, the id not hashed as well: bytes the API vouched for
    assert direct.get(oid, len(data)) == front.bodies[oid]


def test_a_connection_closed_while_idle_is_replaced_without_rest(front: Front) -> None:
    fake = FakeFront(front.server_address[1])
    direct = gets(fake)
    front.close_after_answer = True
    blobs = [blob(front, fake) for _ in range(3)]
    for oid, data in blobs:
        assert direct.get(oid, len(data)) == data
    assert front.connections == 3


def test_a_refused_connection_rests_the_front_for_these_reads() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    fake = FakeFront(port)
    direct = gets(fake)
    fake.ids.add("ab" * 32)
    assert direct.get("ab" * 32, 10) is None
    calls: list[object] = []
    direct._connect = calls.append  # type: ignore[method-assign,assignment]
    assert direct.get("ab" * 32, 10) is None
    assert calls == []  # resting: not even tried


def test_a_stalled_front_gives_up_within_the_read_timeout(front: Front) -> None:
    fake = FakeFront(front.server_address[1])
    direct = gets(fake, read_timeout=0.3)
    oid, data = blob(front, fake)
    front.stall.set()
    started = time.monotonic()
    assert direct.get(oid, len(data)) is None
    assert time.monotonic() - started < 3
    front.stall.clear()
    assert direct.get(oid, len(data)) is None  # resting after the stall


def test_the_round_trip_is_the_least_of_the_last_seconds_gets(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamfs._directget, "ROUND_TRIP_SECONDS", 0.5)
    fake = FakeFront(front.server_address[1])
    direct = gets(fake)
    oid, data = blob(front, fake, 1_000)
    assert direct.round_trip is None  # before the first GET
    front.delay = 0.02
    assert direct.get(oid, len(data)) == data
    slow = direct.round_trip
    assert slow is not None and slow >= 0.02
    front.delay = 0.0
    assert direct.get(oid, len(data)) == data
    fast = direct.round_trip
    assert fast is not None and fast < slow  # a quick answer: what a miss costs at best
    front.delay = 0.02
    assert direct.get(oid, len(data)) == data
    assert direct.round_trip == fast  # still within the window
    time.sleep(0.6)  # the window's length, with no GET: nothing newer to go by
    assert direct.round_trip == fast
    assert direct.get(oid, len(data)) == data
    assert direct.round_trip is not None and direct.round_trip >= 0.02  # forgotten
