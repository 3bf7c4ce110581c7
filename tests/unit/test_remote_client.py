"""The HTTP client under Remote: no cookies (the server sets none; parsing costs), and
uploads retried whole."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from streamfs import _errors as errors
from streamfs._remote import Remote, RetryPolicy, _Client

pytestmark = pytest.mark.trio


async def test_a_set_cookie_is_neither_kept_nor_sent_back() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, content=b"ok")

    async with _Client(
        base_url="http://streamfs.test", transport=httpx.MockTransport(handler)
    ) as c:
        first = await c.get("/a")
        await c.get("/b")
        assert first.headers["set-cookie"].startswith("session=")  # the response is intact
        assert len(c.cookies) == 0
        with pytest.raises(TypeError):
            c.cookies = {"x": "y"}
    assert seen == [None, None]


async def test_an_upload_is_sent_again_whole_after_a_transient_error(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000  # several read chunks would be one stream
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    oid = hashlib.sha256(data).hexdigest()
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:
            return httpx.Response(503, json={"error": "unavailable", "message": "busy"})
        return httpx.Response(201, json={"id": oid, "stored": True, "size": len(data)})

    async with Remote("http://streamfs.test", retry=RetryPolicy(first_backoff=0.001)) as remote:
        remote._client = _Client(
            base_url="http://streamfs.test/v1", transport=httpx.MockTransport(handler)
        )
        await remote.put_blob("alice", "data", oid, path, len(data))
    assert bodies == [data, data]  # the second attempt carried the whole file again


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """A request's head, and the first bytes of its body that came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def _serve_put(chunk_pause: float, stream: trio.SocketStream) -> None:
    """Read one PUT's body, ``chunk_pause`` s between 64 KiB reads, then answer 201."""
    head, body = await _read_head(stream)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    received = len(body)
    while received < length:
        await trio.sleep(chunk_pause)
        received += len(await stream.receive_some(64 * 1024))
    answer = b'{"stored": true}'
    await stream.send_all(
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(answer)
        + answer
    )


async def _serve_stalled(stream: trio.SocketStream) -> None:
    """Read a request's head, then never its body."""
    await _read_head(stream)
    await trio.sleep_forever()


async def _serve_range(data: bytes, chunk_pause: float, stream: trio.SocketStream) -> None:
    """Answer one GET with ``data`` as a 206, 64 KiB at a time, ``chunk_pause`` s apart."""
    await _read_head(stream)
    await stream.send_all(
        b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(data)
    )
    for at in range(0, len(data), 64 * 1024):
        await trio.sleep(chunk_pause)
        await stream.send_all(data[at : at + 64 * 1024])


async def _slow_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_an_upload_slower_than_the_deadline_finishes_while_it_progresses(
    tmp_path: Path,
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    oid = hashlib.sha256(data).hexdigest()
    policy = RetryPolicy(deadline=0.3, read_timeout=5.0, first_backoff=0.01)
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_put, 0.02))  # 64 x 64 KiB
        started = trio.current_time()
        async with Remote(url, retry=policy) as remote:
            await remote.put_blob("alice", "data", oid, path, len(data))
        assert trio.current_time() - started > policy.deadline  # it did outlive the deadline
        nursery.cancel_scope.cancel()


async def test_an_upload_to_a_stalled_server_fails_within_the_retry_deadline(
    tmp_path: Path,
) -> None:
    data = os.urandom(64 * 1024 * 1024)  # more than the socket buffers take
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    oid = hashlib.sha256(data).hexdigest()
    # The size-scaled bound alone would allow 0.5 + 64 MiB / 64 KiB/s, over 17 minutes.
    policy = RetryPolicy(deadline=0.5, read_timeout=0.2, first_backoff=0.01)
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, _serve_stalled)
        with trio.fail_after(20):  # a hang fails the test instead of blocking the suite
            async with Remote(url, retry=policy) as remote:
                with pytest.raises(errors.RemoteUnavailableError, match="did not answer in time"):
                    await remote.put_blob("alice", "data", oid, path, len(data))
        nursery.cancel_scope.cancel()


async def test_a_block_read_slower_than_the_deadline_finishes_while_it_arrives() -> None:
    data = os.urandom(2 * 1024 * 1024)
    policy = RetryPolicy(deadline=0.3, read_timeout=5.0, first_backoff=0.01)
    async with trio.open_nursery() as nursery:
        url = await _slow_server(
            nursery, functools.partial(_serve_range, data, 0.02)
        )  # 32 x 64 KiB
        started = trio.current_time()
        async with Remote(url, retry=policy) as remote:
            got = await remote.read_blob("alice", "data", "ab" * 32, 0, len(data))
        assert got == data
        assert trio.current_time() - started > policy.deadline  # it did outlive the deadline
        nursery.cancel_scope.cancel()


async def _serve_answers(
    answers: list[bytes], seen: list[bytes], stream: trio.SocketStream
) -> None:
    """Answer each request on this connection with the next of ``answers``; keep the heads."""
    while answers:
        head, _ = await _read_head(stream)
        seen.append(head)
        await stream.send_all(answers.pop(0))
    # Until the client hangs up: closing with a request body unread would reset the connection
    # and could drop the last answer before the client read it.
    while await stream.receive_some(65536):
        pass


def _answer(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body)


async def test_blob_reads_skip_httpx_and_keep_its_headers_and_retries() -> None:
    data = os.urandom(100_000)
    seen: list[bytes] = []
    answers = [
        _answer(b"503 Service Unavailable", b'{"error": {"code": "error", "message": "busy"}}'),
        _answer(b"206 Partial Content", data),
        _answer(b"200 OK", data + data),
    ]
    policy = RetryPolicy(first_backoff=0.01)
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_answers, answers, seen))
        async with Remote(url + "/prefix", token="secret", retry=policy) as remote:
            assert remote._direct is not None
            assert await remote.read_blob("alice", "data", "ab" * 32, 10, 100_010) == data
            ids, sizes = ["ab" * 32, "cd" * 32], [len(data)] * 2
            assert await remote.read_blobs("alice", "data", ids, sizes) == [data, data]
        nursery.cancel_scope.cancel()
    first, again, batch = (head.decode().split("\r\n") for head in seen)
    assert first == again  # the 503 was retried, the same request
    assert first[0] == f"GET /prefix/v1/repos/alice/data/blobs/{'ab' * 32} HTTP/1.1"
    assert batch[0] == "POST /prefix/v1/repos/alice/data/blobs/batch HTTP/1.1"
    for head in (first, batch):
        fields = {line.split(": ")[0].lower(): line.split(": ")[1] for line in head[1:]}
        assert fields["authorization"] == "Bearer secret"
        assert fields["user-agent"] == "streamfs"
        assert "accept-encoding" not in fields  # blobs are not compressed
    assert "range: bytes=10-100009" in [line.lower() for line in first]


async def test_a_resolved_commit_sent_along_is_checked_against_its_id() -> None:
    raw = b'{"author":"a","message":"m","meta":{},"parents":[],"time":1,"tree":"%b"}' % (b"ab" * 32)
    oid = hashlib.sha256(raw).hexdigest()

    def resolved(commit: str, text: bytes | None) -> bytes:
        sent = b"" if text is None else b', "object": "%b"' % text.replace(b'"', b'\\"')
        return _answer(b"200 OK", b'{"rev": "main", "commit": "%b"%b}' % (commit.encode(), sent))

    answers = [
        resolved(oid, raw),
        resolved(oid, None),  # a server from before the commit was sent along
        resolved(oid, raw.replace(b'"m"', b'"forged"')),
    ]
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_answers, answers, []))
        async with Remote(url) as remote:
            assert await remote.resolve_commit("alice", "data", "main") == (oid, raw)
            assert await remote.resolve_commit("alice", "data", "main") == (oid, None)
            with pytest.raises(errors.IntegrityError, match="does not match its id"):
                await remote.resolve_commit("alice", "data", "main")
        nursery.cancel_scope.cancel()


async def test_malformed_refs_are_an_error_not_a_crash() -> None:
    body = b'{"commit": "%b", "branches": ["main"], "default_branch": 5}' % (b"ab" * 32)
    answers = [_answer(b"200 OK", body)] * 3  # resolve, refs and the repo, in any order
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_answers, answers, []))
        async with Remote(url) as remote:
            with pytest.raises(errors.RemoteError, match="malformed refs"):
                await remote.resolve_rev("alice", "data", None)
        nursery.cancel_scope.cancel()


async def test_a_block_list_names_blake3_when_the_server_lists_it_and_is_checked() -> None:
    sha, fast = ["ab" * 32, "cd" * 32], ["ef" * 32, "01" * 32]
    lists = [
        {"block_size": 4194304, "blocks": sha, "blake3": fast},
        {"block_size": 4194304, "blocks": sha},  # an older server's, or an older blob's
        {"block_size": 4194304, "blocks": sha, "blake3": fast[:1]},
        {"block_size": 4194304, "blocks": sha, "blake3": ["EF" * 32, "01" * 32]},
        {"block_size": "4194304", "blocks": sha},
        {"block_size": 4194304, "blocks": "ab" * 32},
    ]
    answers = [_answer(b"200 OK", json.dumps(body).encode()) for body in lists]
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_answers, answers, []))
        async with Remote(url) as remote:
            oid = "99" * 32
            assert await remote.blob_blocks("alice", "data", oid) == (4194304, "blake3", fast)
            assert await remote.blob_blocks("alice", "data", oid) == (4194304, "sha256", sha)
            for why in ("differ in length", "invalid id", "invalid block size", "for a list"):
                with pytest.raises(errors.RemoteError, match=why):
                    await remote.blob_blocks("alice", "data", oid)
        nursery.cancel_scope.cancel()


async def test_a_blob_read_error_is_the_servers_error() -> None:
    body = b'{"error": {"code": "repo_not_found", "message": "no repository alice/data"}}'
    answers = [_answer(b"404 Not Found", body)]
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_answers, answers, []))
        async with Remote(url) as remote:
            with pytest.raises(errors.RepoNotFoundError, match="no repository alice/data"):
                await remote.read_blob("alice", "data", "ab" * 32)
        nursery.cancel_scope.cancel()


async def test_a_blob_read_from_a_stalled_server_fails_within_the_deadline() -> None:
    policy = RetryPolicy(deadline=0.5, read_timeout=0.2, first_backoff=0.01)
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, _serve_stalled)
        with trio.fail_after(20):
            async with Remote(url, retry=policy) as remote:
                started = trio.current_time()
                with pytest.raises(
                    errors.RemoteUnavailableError, match=r"in time|no answer within"
                ):
                    await remote.read_blob("alice", "data", "ab" * 32, 0, 1000)
                assert trio.current_time() - started < 5  # the deadline, not a hang
        nursery.cancel_scope.cancel()


async def test_a_blob_read_from_a_closed_port_is_unavailable() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    policy = RetryPolicy(deadline=0.3, first_backoff=0.01)
    with trio.fail_after(20):
        async with Remote(f"http://127.0.0.1:{port}", retry=policy) as remote:
            with pytest.raises(errors.RemoteUnavailableError, match="cannot reach the server"):
                await remote.read_blobs("alice", "data", ["ab" * 32], [1])


async def test_with_a_proxy_in_the_environment_blob_reads_go_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = os.urandom(1000)
    seen: list[bytes] = []
    answers = [_answer(b"206 Partial Content", data), _answer(b"200 OK", data)]
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # httpx honours it: the test server is reached
    async with trio.open_nursery() as nursery:
        url = await _slow_server(nursery, functools.partial(_serve_answers, answers, seen))
        async with Remote(url) as remote:
            assert remote._direct is None
            assert await remote.read_blob("alice", "data", "ab" * 32, 0, 1000) == data
            assert await remote.read_blobs("alice", "data", ["ab" * 32], [len(data)]) == [data]
        nursery.cancel_scope.cancel()
    assert [head.split(b"\r\n")[0] for head in seen] == [
        b"GET /v1/repos/alice/data/blobs/" + b"ab" * 32 + b" HTTP/1.1",
        b"POST /v1/repos/alice/data/blobs/batch HTTP/1.1",
    ]
    assert b"accept-encoding" in seen[0].lower()  # httpx's own request, not the direct one
    monkeypatch.delenv("HTTP_PROXY")
    async with Remote(url) as remote:
        assert remote._direct is not None


async def test_a_server_with_an_international_name_is_asked_by_its_ascii_name() -> None:
    policy = RetryPolicy(deadline=0.3, connect_timeout=0.2, first_backoff=0.01)
    with trio.fail_after(20):
        async with Remote("http://bücher.invalid:1", retry=policy) as remote:
            assert remote._direct is not None
            with pytest.raises(errors.RemoteUnavailableError, match=r"xn--bcher-kva\.invalid"):
                await remote.read_blob("alice", "data", "ab" * 32, 0, 10)
