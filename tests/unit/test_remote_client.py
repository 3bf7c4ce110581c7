"""The HTTP client under Remote keeps no cookies (the server sets none; parsing costs)."""

from __future__ import annotations

import httpx
import pytest

from streamfs._remote import _Client

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
