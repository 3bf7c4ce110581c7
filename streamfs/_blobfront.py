"""Blob bytes from the server's static front, through signed URLs the API hands out.

A server started with ``--blob-url`` (``server/_front.py``) answers ``POST blobs/urls`` with a
short-lived URL per blob that a static server (nginx) reads from the store, so the Python
server carries metadata only. ``Remote`` uses them this way:

- A batch of whole blobs (the prefetcher's): URLs are asked for the blobs that lack one, in one
  request to the API, and the blobs are fetched by GETs pipelined on one connection to the front
  (one write for the requests, the answers read in order into a kept buffer).
- A range of a blob: on the front when the blob's URL is known, or when the range is big
  (``BIG_READ``): then the URL is asked first, a round trip the blob's later ranges do not pay.
  A small range of a blob without one (a reader waiting on a small file it had no prefetch
  for) goes to the API as before, where a second round trip would double its wait.
- A folder has the URLs of all its small files asked at once (``Remote.sign_ahead``, up to
  1,000) at its first cold open or when the sibling planner starts to prefetch it: its batches,
  and the files read before a batch holds them, then go to the front without a round trip to
  the API first; such a file is fetched by the reading thread itself (_directget.py). (A cold
  epoch of 20,000 files in 100 folders at RTT 0: the server's CPU 10 s with no front, 5.5 s
  with URLs asked a batch at a time, 3 s with them asked a folder at a time.) Two tasks never
  ask for the same URL at once: the second waits for the first.
- The API's bearer token never goes to the front: a URL carries its own authority.
- With a one-block blob's URL the API sends its BLAKE3, which the blob's bytes are then checked
  by, wherever they come from: ~4x as fast as sha256 (its id), which was ~10 % of the CPU of
  a cold epoch over small files (docs/benchmarks.md, session 47). A blob without one (larger,
  or stored by an older server) is checked by its id.
- Failure: an answer that is not the bytes asked (403 for a bad signature, 410 expired, 404,
  5xx), a connection that fails or stalls: the URLs involved are forgotten, the front rests for
  ``REST`` seconds, and the read goes to the API. Whichever way bytes come, the fetcher checks
  them against their hashes; a block that does not match is fetched again from the API.
- Nothing from the server is trusted: a URL must be http(s) with a host and a path, printable
  ASCII of at most ``MAX_URL`` bytes; at most ``MAX_URLS`` are kept (oldest dropped first) and
  connections are kept to at most ``MAX_ORIGINS`` origins.

Whether the server has a front, the client learns from any answer of the API: a server with
one marks them all (``HEADER``). It is remembered for the process and the processes it forks
(DataLoader workers, which may read blobs before they ask the API anything); until then, and
with a server that has none, bytes come from the API.

URLs are kept until 90 % of their lifetime has passed, by this process's clock (the server's
``ttl``, so the two clocks need not agree).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import ssl
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import trio

from ._errors import InvalidInputError, RemoteError
from ._http1 import Http1Error, Http1Pool, host_header
from ._model import is_object_id, load_json_object

log = logging.getLogger("streamfs.remote")

HEADER = "x-streamfs-blob-front"  # on every API answer of a server that has a front
BIG_READ = 1024 * 1024  # a range at least this big is worth a round trip for its URL
REST = 30.0  # seconds the front is left alone after it failed
MAX_URL = 2048
MAX_URLS = 100_000
MAX_ORIGINS = 4
MAX_IDS = 1_000  # ids in one ``blobs/urls`` request (the server's bound)
_PRINTABLE = re.compile(rb"[!-~]+")
_TARGET = re.compile(r"/[!-\"$-~]*")  # a path and query of printable ASCII, no fragment ('#')
MAX_PREFIXES = 16  # origins' spellings remembered by parse_url's callers
SHARE_MARGIN = 60  # seconds: URLs another process shared are taken only with this much left

Origin = tuple[str, str, int]  # scheme, host, port


@dataclass(frozen=True, slots=True)
class BlobUrl:
    origin: Origin
    target: bytes  # path and query, as sent on the request line
    fresh_until: float  # trio.current_time() past which it is asked again
    blake3: str | None  # the blob's BLAKE3 (a one-block blob's), from the API


def whole_check(oid: str, url: BlobUrl | None) -> tuple[str, str]:
    """The hash (of _model.BLOCK_HASHES) to check the bytes of ``oid``, a one-block blob,
    by, and their digest: the BLAKE3 the API sent with its URL, else its id (sha256)."""
    if url is None or url.blake3 is None:
        return "sha256", oid
    return "blake3", url.blake3


def parse_url(url: object, prefixes: dict[str, Origin] | None = None) -> tuple[Origin, bytes]:
    """A signed URL from the server, checked: its origin and its request target.

    ``prefixes``: the ``scheme://host:port`` spellings of URLs checked before, and their
    origins: a URL that starts with one needs only its target checked (a folder's answer is
    hundreds of URLs on one origin; urlsplit costs ~15 us each)."""
    if prefixes is None or not isinstance(url, str) or len(url) > MAX_URL:
        return _parse_url(url)
    cut = url.find("/", url.find("://") + 3)
    plain = cut > 0 and _TARGET.fullmatch(url, cut) is not None
    origin = prefixes.get(url[:cut]) if plain else None
    if origin is not None:
        return origin, url[cut:].encode("ascii")
    checked = _parse_url(url)
    if plain and len(prefixes) < MAX_PREFIXES:
        prefixes[url[:cut]] = checked[0]
    return checked


def _parse_url(url: object) -> tuple[Origin, bytes]:
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        raise RemoteError("the server sent a blob URL that is not a string of at most 2 KiB")
    if not url.isascii() or _PRINTABLE.fullmatch(url.encode("ascii")) is None:
        raise RemoteError("the server sent a blob URL that is not printable ASCII without spaces")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise RemoteError(f"the server sent a malformed blob URL: {url[:100]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise RemoteError(f"the server sent a blob URL that is not http(s): {url[:100]!r}")
    if not parts.path.startswith("/") or parts.username or parts.password:
        raise RemoteError(f"the server sent a blob URL without a plain path: {url[:100]!r}")
    default = 443 if parts.scheme == "https" else 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port or default), target.encode("ascii")


class BlobFront:
    """The URLs this process holds and the connections to the front. Used on one trio loop."""

    def __init__(self, connect_timeout: float, read_timeout: float, max_connections: int) -> None:
        # whether the server has a front: its answers say (HEADER); None until one came
        self.available: bool | None = None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._urls: OrderedDict[str, BlobUrl] = OrderedDict()
        self._asking: dict[str, trio.Event] = {}  # blob id -> set once its URL was asked
        self._pools: dict[Origin, Http1Pool] = {}
        self._rest_until = 0.0
        self._headers = [(b"User-Agent", b"streamfs")]
        self._prefixes: dict[str, Origin] = {}  # see parse_url

    def usable(self) -> bool:
        return self.available is True and trio.current_time() >= self._rest_until

    def _fresh(self, oid: str, now: float) -> BlobUrl | None:
        url = self._urls.get(oid)
        return url if url is not None and url.fresh_until > now else None

    def known(self, ids: Sequence[str]) -> list[BlobUrl] | None:
        """URLs of all of ``ids`` that are still fresh, or None."""
        now = trio.current_time()
        found = []
        for oid in ids:
            url = self._fresh(oid, now)
            if url is None:
                return None
            found.append(url)
        return found

    def url_of(self, oid: str) -> BlobUrl | None:
        """The URL kept for ``oid``, from any thread (no clock: an expired one gets a 410)."""
        return self._urls.get(oid)

    def whole_check(self, oid: str) -> tuple[str, str]:
        """What to check the bytes of ``oid``, a one-block blob, by (see whole_check)."""
        return whole_check(oid, self._urls.get(oid))

    def lacking(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` without a fresh URL that no task is asking for now."""
        now = trio.current_time()
        return [
            oid
            for oid in dict.fromkeys(ids)
            if self._fresh(oid, now) is None and oid not in self._asking
        ]

    def being_asked(self, ids: Sequence[str]) -> list[trio.Event]:
        """What to wait on for those of ``ids`` another task is asking URLs for."""
        return list({id(e): e for oid in ids if (e := self._asking.get(oid)) is not None}.values())

    @contextlib.contextmanager
    def asking(self, ids: Sequence[str]) -> Iterator[None]:
        """This task asks for ``ids``' URLs: others wait for it instead of asking too."""
        done = trio.Event()
        for oid in ids:
            self._asking[oid] = done
        try:
            yield
        finally:
            for oid in ids:
                if self._asking.get(oid) is done:
                    del self._asking[oid]
            done.set()

    def remember(
        self, ids: Sequence[str], urls: object, ttl: object, digests: object = None
    ) -> None:
        """What ``blobs/urls`` answered for ``ids``, checked (RemoteError if malformed):
        their URLs, the seconds those stay valid and each blob's BLAKE3 or None (``digests``:
        None from a server that sends none)."""
        if not isinstance(urls, list) or len(urls) != len(ids):
            raise RemoteError("the server sent a list of blob URLs that does not match the ids")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 10 <= ttl <= 7 * 24 * 3600:
            raise RemoteError("the server sent blob URLs without a lifetime of 10 s to 7 days")
        if digests is None:
            digests = [None] * len(ids)
        elif not (
            isinstance(digests, list)
            and len(digests) == len(ids)
            and all(d is None or is_object_id(d) for d in digests)
        ):
            raise RemoteError("the server sent blobs' BLAKE3 that are not one digest or null each")
        fresh_until = trio.current_time() + ttl * 0.9
        parsed = [parse_url(url, self._prefixes) for url in urls]
        origins = set(self._pools) | {origin for origin, _ in parsed}
        if len(origins) > MAX_ORIGINS:
            raise RemoteError(f"the server's blob URLs point at more than {MAX_ORIGINS} origins")
        for oid, (origin, target), digest in zip(ids, parsed, digests, strict=True):
            self._urls[oid] = BlobUrl(origin, target, fresh_until, digest)
            self._urls.move_to_end(oid)
        while len(self._urls) > MAX_URLS:
            self._urls.popitem(last=False)

    def export(self, ids: Sequence[str]) -> tuple[list[str], list[str | None], float] | None:
        """The fresh URLs of all of ``ids``, spelled out, their blobs' BLAKE3 (or None), and
        the seconds they all stay fresh (for another process: see pack_shared); None if any
        lacks one."""
        urls = self.known(ids)
        if not urls:
            return None
        left = min(url.fresh_until for url in urls) - trio.current_time()
        return [_spelled(url) for url in urls], [url.blake3 for url in urls], left

    def fail(self, ids: Sequence[str], why: str) -> None:
        """The front did not deliver: forget these URLs and rest a while."""
        for oid in ids:
            self._urls.pop(oid, None)
        if trio.current_time() >= self._rest_until:
            log.warning("blob front failed (%s): reading from the API for %g s", why, REST)
        self._rest_until = trio.current_time() + REST

    def _pool(self, origin: Origin) -> Http1Pool:
        pool = self._pools.get(origin)
        if pool is None:
            scheme, host, port = origin
            pool = self._pools[origin] = Http1Pool(
                scheme,
                host,
                port,
                max_connections=self._max_connections,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                ssl_context=tls_context() if scheme == "https" else None,
            )
        return pool

    async def get_many(self, urls: Sequence[BlobUrl], sizes: Sequence[int]) -> list[bytes]:
        """Whole blobs, in order (Http1Error if the front fails): pipelined, one connection
        for each run of URLs on one origin."""
        blobs: list[bytes] = []
        for origin, run in itertools.groupby(zip(urls, sizes, strict=True), lambda p: p[0].origin):
            pairs = list(run)
            targets = [url.target for url, _ in pairs]
            blobs += await self._pool(origin).get_many(
                targets, [n for _, n in pairs], self._headers
            )
        return blobs

    async def get_range(
        self, url: BlobUrl, start: int, end: int, piece: int = 0
    ) -> tuple[bytes | bytearray, ...]:
        """Bytes [start, end) of one blob, in buffers of ``piece`` bytes if asked
        (Http1Error if the front fails)."""
        headers = [*self._headers, (b"Range", b"bytes=%d-%d" % (start, end - 1))]
        limit = max(end - start, 64 * 1024)  # room for an error's page
        pool = self._pool(url.origin)
        answer = await pool.request(b"GET", url.target, headers, None, limit, piece)
        if answer.status_code != 206 or sum(map(len, answer.parts)) != end - start:
            raise Http1Error(f"the front answered {answer.status_code} to a range")
        return answer.parts

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


def _spelled(url: BlobUrl) -> str:
    scheme, host, port = url.origin
    return f"{scheme}://{host_header(scheme, host, port).decode()}{url.target.decode()}"


def pack_shared(urls: list[str], digests: list[str | None], seconds: float, now: float) -> bytes:
    """A folder's signed URLs and its blobs' BLAKE3 (or None) for other processes sharing
    the cache (DataLoader workers), fresh for ``seconds`` from ``now`` (wall-clock time:
    processes share no other clock)."""
    return json.dumps({"until": now + seconds, "urls": urls, "blake3": digests}).encode()


def unpack_shared(
    record: bytes, count: int, now: float
) -> tuple[list[str], int, list[str | None]] | None:
    """The ``count`` URLs of a record pack_shared made, the whole seconds they stay fresh,
    and their blobs' BLAKE3 (or None); None if the record is malformed, of another length,
    or (almost) expired. The URLs and digests are checked like the server's when remembered
    (BlobFront.remember)."""
    try:
        value = load_json_object(record, "shared URLs")
    except InvalidInputError:
        return None
    urls, until, digests = value.get("urls"), value.get("until"), value.get("blake3")
    if not isinstance(urls, list) or len(urls) != count or not urls:
        return None
    if digests is None:  # shared by an older version
        digests = [None] * count
    elif not isinstance(digests, list) or len(digests) != count:
        return None
    if not isinstance(until, int | float) or isinstance(until, bool):
        return None
    seconds = until - now
    if not SHARE_MARGIN <= seconds <= 7 * 24 * 3600:
        return None
    return urls, int(seconds), digests


def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # the API client's trust store
