"""The HTTP API v1 (docs/protocol.md): a Starlette app over a RepoStore.

Handlers are thin: check access, parse and validate input, call the store in
a worker thread, shape the JSON. Every error leaves as a JSON body
``{"error": {"code": ..., "message": ...}}`` with a 4xx status; a 500 means a
bug. Blocking store calls never run on the event loop.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _errors as errors
from .._model import (
    BlobDigests,
    check_name,
    check_object_id,
    check_ref_name,
)
from .._treeops import Change
from . import _metrics as metrics
from ._auth import Principal, TokenBook
from ._front import BlobFront
from ._http import RangeNotSatisfiable, etag_matches, parse_range
from ._openapi import openapi_document
from ._storage import Storage
from ._store import ObjectKind, RepoInfo, RepoStore, object_key

log = logging.getLogger("streamfs.server")
T = TypeVar("T")

IMMUTABLE = "public, max-age=31536000, immutable"
IMMUTABLE_PRIVATE = "private, max-age=31536000, immutable"
CHUNK = 1024 * 1024
FRONT_HEADER = (b"x-streamfs-blob-front", b"signed-urls")  # see _FrontHeader
_DIGITS = re.compile(r"[0-9]+")


def _declared_size(value: str | None) -> int:
    """A Content-Length as a number (ASCII digits only; absurd lengths count as huge)."""
    if value is None or not _DIGITS.fullmatch(value):
        return 0
    return int(value) if len(value) <= 18 else 10**19


@dataclass(frozen=True)
class Limits:
    max_json_bytes: int = 64 * 1024 * 1024
    max_blob_bytes: int = 64 * 1024 * 1024 * 1024
    max_log: int = 10_000
    max_batch_blobs: int = 1_000
    max_batch_bytes: int = 256 * 1024 * 1024
    max_diff_entries: int = 1_000_000


_STATUS = [
    (errors.NotFoundError, 404),
    (errors.AlreadyExistsError, 409),
    (errors.ConflictError, 409),
    (errors.InvalidInputError, 400),
    (errors.TooLargeError, 413),
    (errors.IntegrityError, 422),
]


def _error_code(exc: errors.StreamfsError) -> str:
    for code, cls in errors.ERROR_CODES.items():
        if type(exc) is cls:
            return code
    return "error"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


class Api:
    def __init__(
        self, store: RepoStore, tokens: TokenBook, limits: Limits, front: BlobFront | None = None
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.limits = limits
        self.front = front
        self.metrics: Counter[str] = metrics.new_counters()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    # ---------------------------------------------------------------- access

    def principal(self, request: Request) -> Principal:
        try:
            return self.tokens.authenticate(request.headers.get("authorization"))
        except errors.AccessDeniedError as exc:
            raise _Unauthorized(exc.message) from None  # RFC 6750: a bad token is a 401

    async def repo(self, request: Request, *, write: bool = False) -> tuple[str, str, RepoInfo]:
        owner, name = _repo_names(request)
        principal = self.principal(request)
        info = await self.run(self.store.get_repo, owner, name)
        self.authorize(principal, owner, name, info, write=write)
        return owner, name, info

    def authorize(
        self, principal: Principal, owner: str, name: str, info: RepoInfo, *, write: bool = False
    ) -> None:
        full = f"{owner}/{name}"
        if not principal.can_read(full, info.private):
            _deny(principal, f"no read access to {full}")
        if write and not principal.can_write(full):
            _deny(principal, f"no write access to {full}")

    # ---------------------------------------------------------------- repos

    async def list_repos(self, request: Request) -> Response:
        principal = self.principal(request)
        repos = await self.run(lambda: list(self.store.list_repos()))
        visible = [
            r.to_json() for r in repos if principal.can_read(f"{r.owner}/{r.name}", r.private)
        ]
        return JSONResponse({"repos": visible})

    async def create_repo(self, request: Request) -> Response:
        body = await self.json_body(request)
        owner = check_name(body.get("owner"), "owner")
        name = check_name(body.get("name"), "repository name")
        private = _bool(body.get("private", False), "private")
        branch = check_ref_name(body.get("default_branch", "main"), "branch name")
        principal = self.principal(request)
        if not principal.can_write(f"{owner}/{name}"):
            _deny(principal, f"no write access to {owner}/{name}")
        info = await self.run(
            partial(self.store.create_repo, owner, name, private=private, default_branch=branch)
        )
        return JSONResponse(info.to_json(), 201)

    async def get_repo(self, request: Request) -> Response:
        _, _, info = await self.repo(request)
        return JSONResponse(info.to_json())

    async def refs(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request)
        return JSONResponse(await self.run(self.store.refs, owner, name))

    async def create_branch(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request, write=True)
        body = await self.json_body(request)
        branch = check_ref_name(body.get("name"), "branch name")
        rev = _opt_str(body.get("rev"), "rev")
        commit = await self.run(self.store.create_branch, owner, name, branch, rev)
        return JSONResponse({"name": branch, "commit": commit}, 201)

    async def create_tag(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request, write=True)
        body = await self.json_body(request)
        tag = check_ref_name(body.get("name"), "tag")
        rev = _opt_str(body.get("rev"), "rev")
        commit = await self.run(self.store.create_tag, owner, name, tag, rev or "")
        return JSONResponse({"name": tag, "commit": commit}, 201)

    async def resolve(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request)
        rev = request.query_params.get("rev")
        # the commit itself too: a client opening a revision needs it next (canonical JSON,
        # so its UTF-8 bytes hash to the id and the client can check them)
        commit, raw = await self.run(self._resolved, owner, name, rev)
        return JSONResponse({"rev": rev, "commit": commit, "object": raw.decode()})

    def _resolved(self, owner: str, name: str, rev: str | None) -> tuple[str, bytes]:
        commit = self.store.resolve(owner, name, rev)  # one hop to a thread for both
        return commit, self.store.get_object(owner, name, "commit", commit)

    # ---------------------------------------------------------------- history

    async def log(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request)
        limit = _int_param(request, "limit", 50, 1, self.limits.max_log)
        entries = await self.run(
            self.store.log, owner, name, request.query_params.get("rev"), limit
        )
        return JSONResponse({"commits": [{"id": oid, **c.to_json()} for oid, c in entries]})

    async def diff(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request)
        old, new = request.query_params.get("from"), request.query_params.get("to")
        if not old or not new:
            raise errors.InvalidInputError("diff needs the query parameters 'from' and 'to'")
        old_id = await self.run(self.store.resolve, owner, name, old)
        new_id = await self.run(self.store.resolve, owner, name, new)
        diffs = await self.run(self.store.diff, owner, name, old_id, new_id)
        lists: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "modified": []}
        for d in diffs[: self.limits.max_diff_entries]:
            entry = d.new if d.new is not None else d.old
            assert entry is not None
            item: dict[str, Any] = {"path": d.path, "id": entry.id, "size": entry.size}
            if d.old is not None and d.new is not None:
                item["old_id"], item["old_size"] = d.old.id, d.old.size
            lists[d.status].append(item)
        counts = {k: len(v) for k, v in lists.items()}
        truncated = len(diffs) > self.limits.max_diff_entries
        return JSONResponse(
            {"from": old_id, "to": new_id, **lists, "counts": counts, "truncated": truncated}
        )

    # ---------------------------------------------------------------- objects

    async def get_commit(self, request: Request) -> Response:
        return await self._object(request, "commit")

    async def get_tree(self, request: Request) -> Response:
        return await self._object(request, "tree")

    async def _object(self, request: Request, kind: ObjectKind) -> Response:
        owner, name, info = await self.repo(request)
        oid = check_object_id(request.path_params["id"], f"{kind} id")
        headers = _immutable_headers(oid, info.private)
        data = await self.run(self.store.get_object, owner, name, kind, oid)  # 404 before any 304
        if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        self.metrics[metrics.OBJECT_GET_REQUESTS[kind]] += 1
        return Response(data, media_type="application/json", headers=headers)

    async def create_commit(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request, write=True)
        body = await self.json_body(request)
        raw_changes = body.get("changes")
        if not isinstance(raw_changes, list):
            raise errors.InvalidInputError("'changes' must be a list")
        changes = [_change(c) for c in raw_changes]
        meta = _meta(body.get("meta", {}))
        parent = body.get("parent")
        if parent is not None:
            parent = check_object_id(parent, "parent commit id")
        result = await self.run(
            partial(
                self.store.commit,
                owner,
                name,
                branch=check_ref_name(body.get("branch"), "branch name"),
                parent=parent,
                changes=changes,
                message=_opt_str(body.get("message"), "message") or "",
                author=_opt_str(body.get("author"), "author") or self.principal(request).user,
                meta=meta,
            )
        )
        return JSONResponse(
            {
                "commit": result.commit,
                "parent": result.parent,
                "rebased": result.rebased,
                "changed": result.changed,
            },
            201 if result.changed else 200,
        )

    # ---------------------------------------------------------------- blobs

    async def missing_blobs(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request, write=True)
        body = await self.json_body(request)
        ids = body.get("ids")
        if not isinstance(ids, list) or len(ids) > 1_000_000:
            raise errors.InvalidInputError("'ids' must be a list of blob ids")
        missing = await self.run(self.store.missing_blobs, owner, name, ids)
        return JSONResponse({"missing": missing})

    async def blob_blocks(self, request: Request) -> Response:
        owner, name, info = await self.repo(request)
        oid = check_object_id(request.path_params["id"], "blob id")
        await self.run(self.store.blob_size, owner, name, oid)
        data = await self.run(self.store.storage.read, object_key("blockmap", oid))
        if data is None:
            raise errors.NotFoundError(f"no block hashes for blob {oid}")
        return Response(
            data, media_type="application/json", headers=_immutable_headers(oid, info.private)
        )

    async def get_blob(self, request: Request) -> Response:
        # The hottest request of an epoch (a file read before its folder was prefetched): the
        # repository, access, the blob's size and, for a range of at most CHUNK, its bytes
        # come in one hop to a worker thread and go out as one body (two hops: 1.2 ms of server
        # CPU a GET of 110 KiB, 7 context switches of the loop thread; docs/benchmarks.md).
        owner, name = _repo_names(request)
        principal = self.principal(request)
        oid = check_object_id(request.path_params["id"], "blob id")
        fresh = etag_matches(request.headers.get("if-none-match"), _etag(oid))
        wanted = request.headers.get("range")
        read = request.method != "HEAD" and not fresh
        info, size, body = await self.run(
            self._blob_for_get, principal, owner, name, oid, wanted, read
        )
        if size is None:  # told only to a reader of the repository
            raise errors.NotFoundError(f"no blob {oid} in {owner}/{name}")
        headers = _immutable_headers(oid, info.private)
        headers["Accept-Ranges"] = "bytes"
        if fresh:
            return Response(status_code=304, headers=headers)
        try:
            span = parse_range(wanted, size)
        except RangeNotSatisfiable as exc:
            headers["Content-Range"] = f"bytes */{size}"
            return error_response(416, "range_not_satisfiable", str(exc), headers)
        status, (start, end) = (200, (0, size)) if span is None else (206, span)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        self.metrics[metrics.BLOB_GET_REQUESTS] += 1
        if request.method == "HEAD":
            return Response(
                status_code=status, headers=headers, media_type="application/octet-stream"
            )
        self.metrics[metrics.BLOB_BYTES_SENT] += end - start
        if body is not None:
            return Response(body, status, headers, media_type="application/octet-stream")
        chunks = self.store.storage.iter_range(object_key("blob", oid), start, end - start, CHUNK)
        return StreamingResponse(
            iterate_in_threadpool(chunks), status, headers, media_type="application/octet-stream"
        )

    def _blob_for_get(
        self,
        principal: Principal,
        owner: str,
        name: str,
        oid: str,
        wanted: str | None,
        read: bool,
    ) -> tuple[RepoInfo, int | None, bytes | None]:
        """A GET's work in its worker thread: the repository (access checked), the blob's size
        (None: not in it) and, if ``read`` and the range ``wanted`` is at most CHUNK, its bytes."""
        info = self.store.get_repo(owner, name)
        self.authorize(principal, owner, name, info)
        try:
            size = self.store.blob_size(owner, name, oid)
        except errors.NotFoundError:
            return info, None, None
        if not read:
            return info, size, None
        try:
            span = parse_range(wanted, size)
        except RangeNotSatisfiable:
            return info, size, None  # answered 416 on the loop
        start, end = (0, size) if span is None else span
        if end - start > CHUNK:
            return info, size, None  # streamed
        return (
            info,
            size,
            _read_range(self.store.storage, object_key("blob", oid), start, end - start),
        )

    async def _batch(self, request: Request) -> tuple[str, str, list[Any]]:
        """The repository (read access checked) and the ``ids`` of a batch request's body
        (``blobs/batch``, ``blobs/urls``): a list of 1 to ``max_batch_blobs``, unchecked."""
        owner, name, _ = await self.repo(request)
        body = await self.json_body(request)
        ids = body.get("ids")
        most = self.limits.max_batch_blobs
        if not isinstance(ids, list) or not 1 <= len(ids) <= most:
            raise errors.InvalidInputError(f"'ids' must be a list of 1 to {most} blob ids")
        return owner, name, ids

    async def get_blobs(self, request: Request) -> Response:
        """Many whole blobs in one response, one after another in the order asked."""
        owner, name, ids = await self._batch(request)
        sizes = await self.run(lambda: [self.store.blob_size(owner, name, oid) for oid in ids])
        total = sum(sizes)
        if total > self.limits.max_batch_bytes:
            raise errors.TooLargeError(
                f"these blobs add up to {total} bytes, over the {self.limits.max_batch_bytes}"
                " bytes of one batch: ask for fewer"
            )
        self.metrics[metrics.BLOB_BATCH_REQUESTS] += 1
        self.metrics[metrics.BLOB_BATCH_BLOBS] += len(ids)
        self.metrics[metrics.BLOB_BYTES_SENT] += total
        keys = [(object_key("blob", oid), size) for oid, size in zip(ids, sizes, strict=True)]
        chunks = _concatenated(self.store.storage, keys, CHUNK)
        headers = {"Content-Length": str(total), "Cache-Control": "no-store"}
        return StreamingResponse(
            iterate_in_threadpool(chunks), 200, headers, media_type="application/octet-stream"
        )

    async def blob_urls(self, request: Request) -> Response:
        """Signed URLs of blobs on the front (``_front.py``), in the order asked, and the
        BLAKE3 of those of one block (null for others: see RepoStore.whole_blake3s); ``"urls":
        null`` when this server has no front (the client then reads bytes from the API)."""
        owner, name, ids = await self._batch(request)
        front = self.front
        if front is None:
            return JSONResponse({"urls": None}, headers={"Cache-Control": "no-store"})
        digests = await self.run(self.store.whole_blake3s, owner, name, ids)
        expires = int(time.time()) + front.ttl
        self.metrics[metrics.BLOB_URLS_SIGNED] += len(ids)
        urls = [front.url(oid, expires) for oid in ids]
        return JSONResponse(
            {"urls": urls, "expires": expires, "ttl": front.ttl, "blake3": digests},
            headers={"Cache-Control": "no-store"},
        )

    async def put_blob(self, request: Request) -> Response:
        owner, name, _ = await self.repo(request, write=True)
        oid = check_object_id(request.path_params["id"], "blob id")
        declared = request.headers.get("content-length")
        if declared is not None and _declared_size(declared) > self.limits.max_blob_bytes:
            raise errors.TooLargeError(f"blob is larger than {self.limits.max_blob_bytes} bytes")
        if await self.run(self.store.holds, owner, name, "blob", oid):
            async for _ in request.stream():
                pass
            return JSONResponse({"id": oid, "stored": False})
        staged = await self._receive(request, oid)
        try:
            await self.run(self.store.adopt_blob, owner, name, oid, staged.path, staged.blocks)
        finally:
            staged.path.unlink(missing_ok=True)
        self.metrics[metrics.BLOB_PUT_REQUESTS] += 1
        self.metrics[metrics.BLOB_BYTES_RECEIVED] += staged.size
        return JSONResponse({"id": oid, "stored": True, "size": staged.size}, 201)

    async def _receive(self, request: Request, oid: str) -> _Staged:
        """Stream the body to a staging file, hashing it whole and per block."""
        staging = await self.run(self.store.storage.staging_dir)
        receiver = await self.run(_Receiver, staging, self.limits.max_blob_bytes)
        try:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in request.stream():
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= CHUNK:
                    await self.run(receiver.write, b"".join(pending))
                    pending, pending_size = [], 0
            await self.run(receiver.write, b"".join(pending))
            staged = await self.run(receiver.finish)
        except BaseException:
            await self.run(receiver.abort)
            raise
        if staged.sha256 != oid:
            staged.path.unlink(missing_ok=True)
            raise errors.IntegrityError(
                f"upload does not match its id: sha256 of the body is {staged.sha256}, not {oid}"
            )
        return staged

    # ---------------------------------------------------------------- meta

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def get_metrics(self, request: Request) -> Response:
        return JSONResponse(dict(self.metrics))

    async def json_body(self, request: Request) -> dict[str, Any]:
        limit = self.limits.max_json_bytes
        declared = request.headers.get("content-length")
        if _declared_size(declared) > limit:
            raise errors.TooLargeError(f"request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise errors.TooLargeError(f"request body is larger than {limit} bytes")
        try:
            value = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise errors.InvalidInputError("malformed JSON in the request body") from None
        if not isinstance(value, dict):
            raise errors.InvalidInputError("the request body must be a JSON object")
        return value


@dataclass
class _Staged:
    path: Path
    size: int
    sha256: str
    blocks: dict[str, list[str]]  # each of BLOCK_HASHES: the hex digest of every block


class _Receiver:
    """A staging file being written; all methods block (run them in a thread)."""

    def __init__(self, staging: Path, limit: int) -> None:
        import tempfile

        fd, name = tempfile.mkstemp(dir=staging, prefix="upload-")
        self.path = Path(name)
        self.file = open(fd, "wb")  # noqa: SIM115 - closed in finish/abort
        self.limit = limit
        self.digests = BlobDigests()

    def write(self, data: bytes) -> None:
        if self.digests.size + len(data) > self.limit:
            raise errors.TooLargeError(f"blob is larger than {self.limit} bytes")
        self.file.write(data)
        self.digests.update(data)

    def finish(self) -> _Staged:
        sha256 = self.digests.finish()
        self.file.close()
        return _Staged(self.path, self.digests.size, sha256, self.digests.blocks)

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _repo_names(request: Request) -> tuple[str, str]:
    owner = check_name(request.path_params["owner"], "owner")
    return owner, check_name(request.path_params["name"], "repository name")


def _read_range(storage: Storage, key: str, start: int, length: int) -> bytes:
    return b"".join(storage.iter_range(key, start, length, CHUNK))  # one piece: not copied


def _concatenated(storage: Storage, keys: list[tuple[str, int]], chunk: int) -> Iterator[bytes]:
    """The objects' bytes one after another, gathered into pieces of about ``chunk`` bytes.

    Small blobs are joined so that a response of many of them costs one
    worker-thread hop per ``chunk``, not one per blob.
    """
    pending: list[bytes] = []
    pending_size = 0
    for key, size in keys:
        for piece in storage.iter_range(key, 0, size, chunk):
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= chunk:
                yield b"".join(pending)
                pending, pending_size = [], 0
    if pending:
        yield b"".join(pending)


def _etag(oid: str) -> str:
    return f'"{oid}"'


def _immutable_headers(oid: str, private: bool) -> dict[str, str]:
    return {"ETag": _etag(oid), "Cache-Control": IMMUTABLE_PRIVATE if private else IMMUTABLE}


def _deny(principal: Principal, message: str) -> None:
    if principal.grant is None and not principal.open_server:
        raise _Unauthorized(message + " (send a token: STREAMFS_TOKEN)")
    raise errors.AccessDeniedError(message)


class _Unauthorized(errors.AccessDeniedError):
    pass


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise errors.InvalidInputError(f"'{what}' must be true or false")
    return value


def _opt_str(value: object, what: str) -> str | None:
    if value is not None and (
        not isinstance(value, str) or len(value) > 65536 or "\x00" in value or not _is_utf8(value)
    ):
        raise errors.InvalidInputError(f"'{what}' must be a string")
    return value


def _is_utf8(text: str) -> bool:
    """False for strings with lone surrogates (JSON "\\ud800"): they cannot be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_META_DEPTH = 64


def _meta(value: object) -> dict[str, Any]:
    """A commit's ``meta``: an object that encodes to canonical JSON every client can read."""
    if not isinstance(value, dict):
        raise errors.InvalidInputError("'meta' must be an object")
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise errors.InvalidInputError(f"'meta' is nested deeper than {MAX_META_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and not _is_utf8(item):
            raise errors.InvalidInputError("'meta' holds a string that is not valid UTF-8")
        elif isinstance(item, float) and not math.isfinite(item):
            raise errors.InvalidInputError("'meta' holds NaN or an infinite number")
    return value


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or len(raw) > 18 or not low <= int(raw) <= high:
        raise errors.InvalidInputError(f"'{key}' must be a whole number from {low} to {high}")
    return int(raw)


def _change(raw: object) -> Change:
    if not isinstance(raw, dict):
        raise errors.InvalidInputError("every change must be an object")
    return Change.checked(raw.get("op"), raw.get("path"), raw.get("blob"), raw.get("size", 0))


async def _streamfs_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.StreamfsError)
    if isinstance(exc, _Unauthorized):
        return error_response(401, "unauthorized", exc.message, {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, errors.AccessDeniedError):
        return error_response(403, "forbidden", exc.message)
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return error_response(status, _error_code(exc), exc.message)
    log.exception("unexpected streamfs error", exc_info=exc)
    return error_response(500, "internal", exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, code, str(exc.detail), headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes for this path (a path may have one route per method)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.fullmatch(request.scope["path"]):
            methods |= route.methods or set()
    return sorted(methods)


async def _disconnect(request: Request, exc: Exception) -> Response:
    return error_response(400, "client_disconnected", "the client went away mid-request")


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal server error (see the server log)")


def create_app(
    store: RepoStore,
    tokens: TokenBook,
    limits: Limits | None = None,
    front: BlobFront | None = None,
) -> Starlette:
    api = Api(store, tokens, limits or Limits(), front)
    repo = "/v1/repos/{owner}/{name}"
    routes = [
        Route("/v1/openapi.json", api.openapi),
        Route("/v1/metrics", api.get_metrics),
        Route("/v1/repos", api.list_repos, methods=["GET"]),
        Route("/v1/repos", api.create_repo, methods=["POST"]),
        Route(repo, api.get_repo),
        Route(repo + "/refs", api.refs),
        Route(repo + "/branches", api.create_branch, methods=["POST"]),
        Route(repo + "/tags", api.create_tag, methods=["POST"]),
        Route(repo + "/resolve", api.resolve),
        Route(repo + "/log", api.log),
        Route(repo + "/diff", api.diff),
        Route(repo + "/commits", api.create_commit, methods=["POST"]),
        Route(repo + "/commits/{id}", api.get_commit),
        Route(repo + "/trees/{id}", api.get_tree),
        Route(repo + "/blobs/missing", api.missing_blobs, methods=["POST"]),
        Route(repo + "/blobs/batch", api.get_blobs, methods=["POST"]),
        Route(repo + "/blobs/urls", api.blob_urls, methods=["POST"]),
        Route(repo + "/blobs/{id}", api.get_blob, methods=["GET", "HEAD"]),
        Route(repo + "/blobs/{id}", api.put_blob, methods=["PUT"]),
        Route(repo + "/blobs/{id}/blocks", api.blob_blocks),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        errors.StreamfsError: _streamfs_error,
        HTTPException: _http_error,
        ClientDisconnect: _disconnect,
        Exception: _internal,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.api = api
    if front is not None:
        app.add_middleware(_FrontHeader)
    return app


class _FrontHeader:
    """Marks every answer: this server hands out blob URLs (clients learn it from whatever
    they ask first, and ask for URLs only then)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), FRONT_HEADER]
            await send(message)

        await self.app(scope, receive, marked)
