"""The HTTP client under Remote: no cookies (the server sets none; parsing costs), and
uploads retried whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

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
