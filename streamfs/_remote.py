"""The client side of API v1 (docs/protocol.md): httpx.AsyncClient on trio.

Everything that comes back is checked before use: trees and commits against
their ids, blob bytes by the caller (they know the expected hash). HTTP and
transport errors become the exception tree of ``_errors`` at one place,
``_map_errors``. Idempotent requests are retried with backoff until a
deadline, so a dead server is an error within a bounded time, never a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import trio

from . import _errors as errors
from ._blobfront import (
    BIG_READ,
    MAX_IDS,
    SHARE_MARGIN,
    BlobFront,
    pack_shared,
    unpack_shared,
    whole_check,
)
from ._blobfront import HEADER as FRONT_HEADER
from ._http1 import Answer, Http1Error, Http1Pool, Http1Timeout, joined
from ._model import BLOCK_SIZE, Commit, Tree, decode_commit, decode_tree, object_id
from ._tasks import task_group
from ._transport import WideReadTransport

DEFAULT_REMOTE = "http://127.0.0.1:8600"
UPLOAD_CHUNK = 1024 * 1024
MISSING_BATCH = 10_000
MIN_BODY_LIMIT = 1024 * 1024  # a blob read's answer may be this long, whatever it asked for
MAX_UNSIZED_BODY = 1 << 30  # ... and this long when it did not say how much (a whole blob)


class _NoCookies(httpx.Cookies):
    """No cookie jar: the server sets none and streamfs sends none, yet httpx would wrap every
    response in urllib's cookie machinery to look for them (about 5 % of the mount daemon's
    interpreter time in a cold epoch, py-spy; docs/benchmarks.md)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    """An AsyncClient without cookies (see _NoCookies)."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("streamfs' HTTP client keeps no cookies")


@dataclass(frozen=True)
class RetryPolicy:
    deadline: float = 30.0  # seconds a request may take, retries included
    # A request that moves n bytes (a file sent, a block or a batch asked for) may take
    # n / transfer_floor seconds more than the deadline, so a big transfer on a slow link is not
    # cut off; a stall is still caught by the read and write timeouts.
    transfer_floor: float = 64 * 1024  # bytes a second
    first_backoff: float = 0.1
    max_backoff: float = 2.0
    connect_timeout: float = 5.0
    read_timeout: float = 15.0


def remote_from_env(remote: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    url = remote or os.environ.get("STREAMFS_REMOTE") or DEFAULT_REMOTE
    return url.rstrip("/"), token if token is not None else os.environ.get("STREAMFS_TOKEN") or None


T = TypeVar("T")

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
# servers (by URL) that have a blob front, as their answers said: kept across Remotes and forks
_FRONTS: dict[str, bool] = {}


@contextlib.contextmanager
def _map_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (httpx.TimeoutException, Http1Timeout) as exc:
        raise errors.RemoteUnavailableError(
            f"{what}: the server did not answer in time ({exc!r})"
        ) from None
    except (httpx.TransportError, Http1Error) as exc:
        raise errors.RemoteUnavailableError(f"{what}: cannot reach the server: {exc}") from None


class _Direct:
    """Blob reads on the server's own HTTP/1.1 connections, without httpx (see _http1.py).

    Same origin, path prefix, headers (bar Accept-Encoding: blobs are incompressible) and
    timeouts as the httpx client; used only when no proxy is set in the environment (httpx
    would route through it).
    """

    def __init__(self, client: httpx.AsyncClient, retry: RetryPolicy, max_connections: int) -> None:
        base = client.base_url
        self._pool = Http1Pool(
            base.scheme,
            base.raw_host.decode("ascii"),  # IDNA-encoded: the Host header is ASCII
            base.port or (443 if base.scheme == "https" else 80),
            max_connections=max_connections,
            connect_timeout=retry.connect_timeout,
            read_timeout=retry.read_timeout,
            ssl_context=httpx.create_ssl_context() if base.scheme == "https" else None,
        )
        self._prefix = base.raw_path.rstrip(b"/")
        self._headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in client.headers.items()
            if name.lower() != "accept-encoding"  # blobs are incompressible: none is asked for
        ]

    async def request(
        self,
        method: bytes,
        path: str,
        headers: dict[str, str],
        content: bytes | None,
        limit: int,
        piece: int = 0,
    ) -> Answer:
        target = self._prefix + urllib.parse.quote(path, safe="/").encode("ascii")
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return await self._pool.request(
            method, target, self._headers + extra, content, limit, piece
        )

    async def preconnect(self) -> None:
        await self._pool.preconnect()

    async def aclose(self) -> None:
        await self._pool.aclose()


def _proxy_in_environment() -> bool:
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARIABLES)


def _raise_for_status(response: httpx.Response | Answer, what: str) -> None:
    if response.status_code < 400:
        return
    code, message = "error", response.reason_phrase
    try:
        body = json.loads(response.content)
        code, message = body["error"]["code"], body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    if response.status_code >= 500:
        raise errors.RemoteError(f"{what}: server error {response.status_code}: {message}")
    if response.status_code in (401, 403):
        raise errors.AccessDeniedError(f"{what}: {message}")
    cls = errors.ERROR_CODES.get(code, errors.InvalidInputError)
    raise cls(message)


class Remote:
    """One server. Use as ``async with Remote(url, token) as remote:`` inside trio."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        headers = {"User-Agent": "streamfs"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = httpx.Timeout(
            self.retry.read_timeout, connect=self.retry.connect_timeout, pool=self.retry.deadline
        )
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        transport = WideReadTransport(limits)
        self._client = _Client(
            base_url=self.url + "/v1", headers=headers, timeout=timeout, transport=transport
        )
        self._direct = (
            None if _proxy_in_environment() else _Direct(self._client, self.retry, max_connections)
        )
        # the server's static front for blob bytes, if it has one (_blobfront.py); not through
        # a proxy either
        self._front = (
            None
            if self._direct is None
            else BlobFront(self.retry.connect_timeout, self.retry.read_timeout, max_connections)
        )
        if self._front is not None:
            self._front.available = _FRONTS.get(self.url)

    async def __aenter__(self) -> Remote:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def preconnect(self) -> None:
        """Open a blob connection now, while other questions are out: the first read then
        costs one round trip, not two. Nothing to do when reads go through httpx."""
        if self._direct is not None:
            await self._direct.preconnect()

    async def aclose(self) -> None:
        if self._front is not None:
            await self._front.aclose()
        if self._direct is not None:
            await self._direct.aclose()
        await self._client.aclose()

    # ------------------------------------------------------------ plumbing

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        idempotent: bool = True,
        body: Callable[[], httpx.AsyncByteStream] | None = None,
        size: int = 0,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, retried (if idempotent) on transport errors and 5xx until the deadline.

        ``body`` makes the body: a stream is read once, so each attempt gets its own.
        ``size`` is the bytes it moves (the body, or what a read asks for): an attempt may take
        that much longer (see RetryPolicy.transfer_floor), but none starts after the deadline.
        """
        response = await self._retried(
            lambda: self._attempt(method, url, body, kwargs), what, idempotent=idempotent, size=size
        )
        assert isinstance(response, httpx.Response)
        if self._front is not None:
            has = FRONT_HEADER in response.headers
            if has is not self._front.available:
                self._front.available = _FRONTS[self.url] = has
        return response

    async def _retried(
        self,
        attempt: Callable[[], Awaitable[httpx.Response | Answer]],
        what: str,
        *,
        idempotent: bool,
        size: int,
    ) -> httpx.Response | Answer:
        """``attempt()``, again (if idempotent) on transport errors and 5xx until the deadline."""
        backoff = self.retry.first_backoff
        start = trio.current_time()
        deadline = start + self.retry.deadline  # no attempt starts later
        bound = self.retry.deadline + size / self.retry.transfer_floor
        attempt_deadline = start + bound
        while True:
            try:
                with trio.fail_at(attempt_deadline), _map_errors(what):
                    response = await attempt()
                if response.status_code < 500 or not idempotent:
                    _raise_for_status(response, what)
                    return response
                _raise_for_status(response, what)
            except trio.TooSlowError:
                raise errors.RemoteUnavailableError(
                    f"{what}: no answer within {bound:.0f} s"
                ) from None
            except errors.RemoteError:
                if not idempotent or trio.current_time() + backoff >= deadline:
                    raise
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.retry.max_backoff)

    async def _attempt(
        self,
        method: str,
        url: str,
        body: Callable[[], httpx.AsyncByteStream] | None,
        kwargs: dict[str, Any],
    ) -> httpx.Response:
        if body is None:
            return await self._client.request(method, url, **kwargs)
        merged = self._client.build_request(method, url, **kwargs)  # base URL, headers, timeout
        stream = body()
        request = httpx.Request(
            method, merged.url, headers=merged.headers, stream=stream, extensions=merged.extensions
        )
        try:
            return await self._client.send(request)
        finally:
            await stream.aclose()

    async def _json(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, url, what, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise errors.RemoteError(f"{what}: the server sent malformed JSON")
        return body

    @staticmethod
    def _repo(owner: str, name: str) -> str:
        return f"/repos/{owner}/{name}"

    # ------------------------------------------------------------ repos and refs

    async def create_repo(self, owner: str, name: str, *, private: bool = False) -> dict[str, Any]:
        body = {"owner": owner, "name": name, "private": private}
        return await self._json(
            "POST", "/repos", f"create {owner}/{name}", json=body, idempotent=False
        )

    async def get_repo(self, owner: str, name: str) -> dict[str, Any]:
        return await self._json("GET", self._repo(owner, name), f"{owner}/{name}")

    async def refs(self, owner: str, name: str) -> dict[str, dict[str, str]]:
        return await self._json("GET", self._repo(owner, name) + "/refs", f"{owner}/{name}")

    async def resolve(self, owner: str, name: str, rev: str | None) -> str:
        return (await self.resolve_commit(owner, name, rev))[0]

    async def resolve_commit(
        self, owner: str, name: str, rev: str | None
    ) -> tuple[str, bytes | None]:
        """The commit id ``rev`` names, and the commit itself when the server sends it along
        (checked against its id: one round trip fewer than asking for it next)."""
        params = {"rev": rev} if rev else {}
        what = f"{owner}/{name}@{rev or '(default branch)'}"
        body = await self._json("GET", self._repo(owner, name) + "/resolve", what, params=params)
        oid = _checked_id(body.get("commit"))
        text = body.get("object")
        if not isinstance(text, str):
            return oid, None  # a server from before it was sent
        raw = text.encode("utf-8", "surrogatepass")
        _check_object(raw, oid, "commit")
        return oid, raw

    async def resolve_rev(
        self, owner: str, name: str, rev: str | None, *, ask_branch: bool = True
    ) -> tuple[str, bytes | None, str | None]:
        """``resolve_commit``, and the branch ``rev`` names (None: the default branch's name;
        None for a tag or a commit id, and unless ``ask_branch``), in one round trip."""
        answers: dict[str, Any] = {}

        async def ask(key: str, question: Callable[..., Awaitable[Any]], *args: Any) -> None:
            answers[key] = await question(owner, name, *args)

        async with task_group() as tasks:
            tasks.start_soon(ask, "commit", self.resolve_commit, rev)
            if ask_branch:
                tasks.start_soon(ask, "refs", self.refs)
                if rev is None:
                    tasks.start_soon(ask, "repo", self.get_repo)
        commit_id, raw = answers["commit"]
        if not ask_branch:
            return commit_id, raw, None
        branches = answers["refs"].get("branches")
        named = rev or answers["repo"].get("default_branch")
        if not isinstance(branches, dict) or not isinstance(named, str):
            raise errors.RemoteError(f"{owner}/{name}: the server sent malformed refs")
        return commit_id, raw, named if named in branches else None

    async def create_tag(self, owner: str, name: str, tag: str, rev: str) -> str:
        body = await self._json(
            "POST",
            self._repo(owner, name) + "/tags",
            f"tag {tag}",
            json={"name": tag, "rev": rev},
            idempotent=False,
        )
        return _checked_id(body.get("commit"))

    async def create_branch(self, owner: str, name: str, branch: str, rev: str | None) -> str:
        body = await self._json(
            "POST",
            self._repo(owner, name) + "/branches",
            f"branch {branch}",
            json={"name": branch, "rev": rev},
            idempotent=False,
        )
        return _checked_id(body.get("commit"))

    # ------------------------------------------------------------ objects

    async def get_commit(self, owner: str, name: str, oid: str) -> Commit:
        response = await self._request(
            "GET", self._repo(owner, name) + f"/commits/{oid}", f"commit {oid}"
        )
        _check_object(response.content, oid, "commit")
        return decode_commit(response.content)

    async def get_tree_bytes(self, owner: str, name: str, oid: str) -> bytes:
        response = await self._request(
            "GET", self._repo(owner, name) + f"/trees/{oid}", f"tree {oid}"
        )
        _check_object(response.content, oid, "tree")
        return response.content

    async def get_tree(self, owner: str, name: str, oid: str) -> Tree:
        return decode_tree(await self.get_tree_bytes(owner, name, oid))

    async def log(
        self, owner: str, name: str, rev: str | None, limit: int = 50
    ) -> list[tuple[str, Commit]]:
        params: dict[str, Any] = {"limit": limit}
        if rev:
            params["rev"] = rev
        body = await self._json(
            "GET", self._repo(owner, name) + "/log", f"log of {owner}/{name}", params=params
        )
        result = []
        for item in body.get("commits", []):
            oid = _checked_id(item.pop("id", None))
            commit = decode_commit(json.dumps(item).encode())
            result.append((oid, commit))
        return result

    async def diff(self, owner: str, name: str, old: str, new: str) -> dict[str, Any]:
        params = {"from": old, "to": new}
        return await self._json(
            "GET", self._repo(owner, name) + "/diff", f"diff {old}..{new}", params=params
        )

    async def commit(
        self,
        owner: str,
        name: str,
        *,
        branch: str,
        parent: str | None,
        changes: Sequence[dict[str, Any]],
        message: str,
        author: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "branch": branch,
            "parent": parent,
            "changes": list(changes),
            "message": message,
            "meta": meta or {},
        }
        if author:
            body["author"] = author
        # Not retried blindly: a commit that reached the server must not be made twice.
        result = await self._json(
            "POST",
            self._repo(owner, name) + "/commits",
            f"commit to {owner}/{name}@{branch}",
            json=body,
            idempotent=False,
        )
        _checked_id(result.get("commit"))
        return result

    # ------------------------------------------------------------ blobs

    async def missing_blobs(self, owner: str, name: str, ids: Sequence[str]) -> list[str]:
        missing: list[str] = []
        for start in range(0, len(ids), MISSING_BATCH):
            batch = list(ids[start : start + MISSING_BATCH])
            body = await self._json(
                "POST",
                self._repo(owner, name) + "/blobs/missing",
                "missing blobs",
                json={"ids": batch},
            )
            asked = set(batch)
            missing.extend(oid for oid in body.get("missing", []) if oid in asked)
        return missing

    async def put_blob(self, owner: str, name: str, oid: str, path: Path, size: int) -> None:
        """Upload the file at ``path`` as blob ``oid`` (the server checks the hash)."""
        url = self._repo(owner, name) + f"/blobs/{oid}"
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        # Retried like a read: the server keeps a blob once, whatever number of PUTs carry it.
        await self._request(
            "PUT",
            url,
            f"upload {path}",
            body=lambda: _FileBody(path),
            size=size,
            headers=headers,
        )

    async def put_blob_bytes(self, owner: str, name: str, oid: str, data: bytes) -> None:
        url = self._repo(owner, name) + f"/blobs/{oid}"
        await self._request("PUT", url, f"upload blob {oid[:12]}", content=data, size=len(data))

    async def read_blob(
        self,
        owner: str,
        name: str,
        oid: str,
        start: int = 0,
        end: int | None = None,
        *,
        front: bool = True,
    ) -> bytes | bytearray:
        """Bytes [start, end) of a blob (end None: to its end). Not verified here.
        ``front=False``: from the API even when the server has a front (a second try after
        bytes that did not match their hash)."""
        return joined(await self._read_range(owner, name, oid, start, end, front, 0))

    async def read_blocks(
        self, owner: str, name: str, oid: str, start: int, end: int, *, front: bool = True
    ) -> list[bytes | bytearray]:
        """Bytes [start, end) of a blob as blocks: pieces of BLOCK_SIZE from ``start``, the
        last one shorter. Not verified here. On our own connections each block is received
        into a buffer of its own; through httpx (a proxy is set) it is cut out of the body."""
        parts = await self._read_range(owner, name, oid, start, end, front, BLOCK_SIZE)
        if len(parts) == 1 and len(parts[0]) > BLOCK_SIZE:
            view = memoryview(parts[0])
            return [bytes(view[at : at + BLOCK_SIZE]) for at in range(0, len(view), BLOCK_SIZE)]
        return list(parts)

    async def _read_range(
        self, owner: str, name: str, oid: str, start: int, end: int | None, front: bool, piece: int
    ) -> tuple[bytes | bytearray, ...]:
        if front and end is not None and end > start and self._front is not None:
            parts = await self._range_from_front(owner, name, oid, start, end, piece)
            if parts is not None:
                return parts
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        path = self._repo(owner, name) + f"/blobs/{oid}"
        size = 0 if end is None else end - start
        return await self._blob_parts("GET", path, f"blob {oid[:12]}", size, headers, piece=piece)

    @property
    def front(self) -> BlobFront | None:
        """The blob front's client, unless a proxy is set (see _blobfront.py)."""
        return self._front

    async def read_blobs(
        self, owner: str, name: str, ids: Sequence[str], sizes: Sequence[int]
    ) -> list[bytes]:
        """Whole blobs of ``sizes`` bytes, in the order of ``ids`` (POST blobs/batch, or the
        server's front). Not verified. An answer of another length than the sizes add up
        to gives none (the caller fetches them again, alone)."""
        if self._front is not None:
            blobs = await self._blobs_from_front(owner, name, ids, sizes)
            if blobs is not None:
                return blobs
        path = self._repo(owner, name) + "/blobs/batch"
        what = f"{len(ids)} blobs of {owner}/{name}"
        body = json.dumps({"ids": list(ids)}).encode()
        headers = {"Content-Type": "application/json"}
        data = joined(await self._blob_parts("POST", path, what, sum(sizes), headers, body))
        if len(data) != sum(sizes):
            return []
        view, offset, blobs = memoryview(data), 0, []
        for size in sizes:
            blobs.append(bytes(view[offset : offset + size]))
            offset += size
        return blobs

    # ------------------------------------------------------------ the blob front

    async def _blobs_from_front(
        self, owner: str, name: str, ids: Sequence[str], sizes: Sequence[int]
    ) -> list[bytes] | None:
        """The blobs from the front (see _blobfront.py), or None: read them from the API."""
        front = self._front
        assert front is not None
        if not front.usable() or not await self._ask_urls(front, owner, name, ids):
            return None
        urls = front.known(ids)
        if urls is None:
            return None
        return await self._from_front(front, ids, sum(sizes), lambda: front.get_many(urls, sizes))

    async def _range_from_front(
        self, owner: str, name: str, oid: str, start: int, end: int, piece: int
    ) -> tuple[bytes | bytearray, ...] | None:
        front = self._front
        assert front is not None
        if not front.usable():
            return None
        urls = front.known([oid])
        if urls is None:
            if end - start < BIG_READ or not await self._ask_urls(front, owner, name, [oid]):
                return None  # a small read without a URL: one round trip to the API
            urls = front.known([oid])
            if urls is None:
                return None
        return await self._from_front(
            front, [oid], end - start, lambda: front.get_range(urls[0], start, end, piece)
        )

    async def _from_front(
        self, front: BlobFront, ids: Sequence[str], size: int, fetch: Callable[[], Awaitable[T]]
    ) -> T | None:
        """``fetch`` (bytes of ``ids`` on the front) within the time its size allows, or None
        when the front failed: its URLs are forgotten and the front rests (BlobFront.fail)."""
        try:
            with trio.fail_after(self._transfer_bound(size)):
                return await fetch()
        except (Http1Error, trio.TooSlowError) as exc:
            front.fail(ids, str(exc) or "no answer in time")
            return None

    async def sign_ahead(self, owner: str, name: str, ids: Sequence[str]) -> None:
        """Signed URLs of blobs likely read soon (a folder about to be prefetched), when the
        server has a front: the prefetch batches, and the files read before a batch holds
        them, then skip a round trip to the API."""
        front = self._front
        if front is not None and front.usable() and ids:
            await self._ask_urls(front, owner, name, ids[:MAX_IDS])

    def whole_check(self, oid: str) -> tuple[str, str]:
        """The hash (of _model.BLOCK_HASHES) to check the bytes of ``oid``, a one-block blob,
        by, and their digest: the BLAKE3 the API sent with its URL, else its id (sha256)."""
        front = self._front
        return whole_check(oid, None) if front is None else front.whole_check(oid)

    def signs_urls(self) -> bool:
        """Whether blob reads go to the server's front now (its URLs are worth asking)."""
        return self._front is not None and self._front.usable()

    def shared_urls(self, ids: Sequence[str]) -> tuple[bytes, float] | None:
        """The fresh URLs this process holds for all of ``ids``, packed for other processes
        (pack_shared), and the seconds they stay fresh; None if it lacks any."""
        front = self._front
        got = None if front is None else front.export(ids)
        if got is None or got[2] <= SHARE_MARGIN:
            return None
        urls, digests, seconds = got
        return pack_shared(urls, digests, seconds, time.time()), seconds

    def adopt_urls(self, ids: Sequence[str], record: bytes) -> bool:
        """Take the URLs of ``ids`` another process shared (shared_urls); False if the front
        is not in use or the record will not do (then they are asked as usual)."""
        front = self._front
        if front is None or not front.usable():
            return False
        got = unpack_shared(record, len(ids), time.time())
        if got is None:
            return False
        try:
            front.remember(ids, *got)
        except errors.RemoteError:
            return False
        return True

    async def _ask_urls(self, front: BlobFront, owner: str, name: str, ids: Sequence[str]) -> bool:
        """Signed URLs of those of ``ids`` that lack a fresh one (waiting for those another
        task is asking for); False if the front is not to be used for them (none, an error:
        the API then answers, or says what is wrong)."""
        lacking, asked_elsewhere = front.lacking(ids), front.being_asked(ids)
        with front.asking(lacking):
            for i in range(0, len(lacking), MAX_IDS):
                part = lacking[i : i + MAX_IDS]
                try:
                    body = await self._signed_urls(owner, name, part)
                    if body.get("urls") is None:
                        return False  # the server has no front any more: its answers say so now
                    front.remember(part, body["urls"], body.get("ttl"), body.get("blake3"))
                except errors.NotFoundError:
                    return False  # a blob this repository lacks: the API says so
                except errors.RemoteUnavailableError:
                    raise  # the API is down or silent: reading from it would fail as well
                except errors.StreamfsError as exc:
                    front.fail(part, str(exc))
                    return False
        for event in asked_elsewhere:
            await event.wait()
        return True

    async def _signed_urls(self, owner: str, name: str, ids: list[str]) -> dict[str, Any]:
        """``POST blobs/urls`` on the blob connections (a front is used only with them): a
        request a prefetch batch, which through httpx would cost as much CPU as the batch."""
        direct = self._direct
        assert direct is not None
        what = f"URLs of {len(ids)} blobs of {owner}/{name}"
        path = self._repo(owner, name) + "/blobs/urls"
        content = json.dumps({"ids": ids}).encode()
        headers = {"Content-Type": "application/json"}
        answer = await self._retried(
            lambda: direct.request(b"POST", path, headers, content, MIN_BODY_LIMIT),
            what,
            idempotent=True,  # signing changes nothing
            size=0,
        )
        try:
            body = json.loads(answer.content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise errors.RemoteError(f"{what}: the server sent malformed JSON")
        return body

    def _transfer_bound(self, size: int) -> float:
        return self.retry.deadline + size / self.retry.transfer_floor

    async def _blob_parts(
        self,
        method: str,
        path: str,
        what: str,
        size: int,
        headers: dict[str, str],
        content: bytes | None = None,
        *,
        piece: int = 0,
    ) -> tuple[bytes | bytearray, ...]:
        """A blob read's body, on our own connections unless a proxy is set (see _Direct):
        there, bytearrays the answer was read into, of ``piece`` bytes each if asked (the
        caller copies out what it keeps); through httpx, one piece."""
        direct = self._direct
        if direct is None:
            response = await self._request(
                method, path, what, headers=headers, content=content, size=size
            )
            return (response.content,)
        # a body of ``size`` bytes, or an error's few; unsized: a whole blob
        limit = max(size, MIN_BODY_LIMIT) if size else MAX_UNSIZED_BODY
        answer = await self._retried(
            lambda: direct.request(method.encode("ascii"), path, headers, content, limit, piece),
            what,
            idempotent=True,  # a read, whatever its method: a batch is a POST
            size=size,
        )
        return answer.parts if isinstance(answer, Answer) else (answer.content,)

    async def blob_blocks(self, owner: str, name: str, oid: str) -> tuple[int, str, list[str]]:
        """The blob's block size, and the hash (of _model.BLOCK_HASHES) and hex digest of each
        block to check it by: BLAKE3 when the server lists it, else sha256 (an older server,
        or a blob it stored before it listed BLAKE3)."""
        body = await self._json(
            "GET", self._repo(owner, name) + f"/blobs/{oid}/blocks", f"blocks of {oid[:12]}"
        )
        block_size = _checked_count(body.get("block_size"))
        sha256 = _checked_list(body.get("blocks"))
        fast = body.get("blake3")
        if fast is None:
            return block_size, "sha256", sha256
        blake3 = _checked_list(fast)
        if len(blake3) != len(sha256):
            raise errors.RemoteError(f"the server's block lists of {oid[:12]} differ in length")
        return block_size, "blake3", blake3

    async def metrics(self) -> dict[str, int]:
        return await self._json("GET", "/metrics", "metrics")


class _FileBody(httpx.AsyncByteStream):
    """A file as a request body, read UPLOAD_CHUNK bytes at a time off the event loop.

    Not an async generator: when an attempt stops half-way (a timeout, a dropped connection)
    httpx drops its iterator, and the file is closed by ``aclose`` at once, not by the GC.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: BinaryIO | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._file is None:
            self._file = await trio.to_thread.run_sync(open, self._path, "rb")
        data = await trio.to_thread.run_sync(self._file.read, UPLOAD_CHUNK)
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()  # read-only: closing does not wait on the disk


def _checked_list(value: object) -> list[str]:
    if not isinstance(value, list):
        raise errors.RemoteError(f"the server sent {type(value).__name__} for a list of ids")
    return [_checked_id(item) for item in value]


def _checked_count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise errors.RemoteError(f"the server sent an invalid block size: {value!r}")
    return value


def _checked_id(value: object) -> str:
    from ._model import is_object_id

    if not is_object_id(value):
        raise errors.RemoteError(f"the server sent an invalid id: {value!r}")
    assert isinstance(value, str)
    return value


def _check_object(data: bytes, oid: str, kind: str) -> None:
    if object_id(data) != oid:
        raise errors.IntegrityError(f"{kind} {oid} from the server does not match its id")
