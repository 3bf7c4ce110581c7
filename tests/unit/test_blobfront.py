"""The client's checks of what a server says about its blob front (streamfs/_blobfront.py)."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

from streamfs._blobfront import (
    MAX_ORIGINS,
    MAX_URLS,
    SHARE_MARGIN,
    BlobFront,
    Origin,
    pack_shared,
    parse_url,
    unpack_shared,
)
from streamfs._errors import RemoteError


def test_a_signed_url_becomes_an_origin_and_a_request_target() -> None:
    assert parse_url("http://127.0.0.1:8080/blobs/ab/cd?md5=x-y_z&expires=9") == (
        ("http", "127.0.0.1", 8080),
        b"/blobs/ab/cd?md5=x-y_z&expires=9",
    )
    assert parse_url("https://cdn.example/b/ab") == (("https", "cdn.example", 443), b"/b/ab")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/blob",
        "file:///etc/passwd",
        "http:///no-host",
        "http://host",  # no path
        "http://user:pw@host/blob",
        "http://host/blob#frag",
        "http://host/bl ob",
        "http://host/blob\r\nX-Injected: 1",
        "http://host/bl\x00ob",
        "http://host/blöb",
        "http://host:99999/blob",
        "http://host/" + "a" * 2048,
        "",
        42,
        None,
    ],
)
def test_a_url_that_is_not_a_plain_http_one_is_refused(url: object) -> None:
    with pytest.raises(RemoteError):
        parse_url(url)
    prefixes: dict[str, Origin] = {}
    for good in ("http://host/b/ab?md5=1", "http://user:pw@host/b", "http://host:99999/b"):
        with contextlib.suppress(RemoteError):
            parse_url(good, prefixes)
    assert prefixes == {"http://host": ("http", "host", 80)}  # only what was checked whole
    with pytest.raises(RemoteError):  # a known origin spares the URL none of its checks
        parse_url(url, prefixes)


def test_urls_on_a_known_origin_are_read_as_if_checked_whole() -> None:
    prefixes: dict[str, Origin] = {}
    urls = [f"https://cdn.example:8443/b/{i:02x}/x?md5=a-b_c&expires={i}" for i in range(20)]
    assert [parse_url(u, prefixes) for u in urls] == [parse_url(u) for u in urls]
    assert list(prefixes) == ["https://cdn.example:8443"]


def run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_urls_are_kept_for_90_percent_of_their_lifetime_and_bounded() -> None:
    async def main() -> None:
        front = BlobFront(1.0, 1.0, 4)
        ids = [f"{i:064x}" for i in range(3)]
        front.remember(ids, [f"http://h/b/{oid}" for oid in ids], 100)
        assert front.lacking(ids) == []
        assert [u.target for u in front.known(ids) or []] == [f"/b/{oid}".encode() for oid in ids]
        await trio.sleep(89)
        assert front.known(ids) is not None
        await trio.sleep(2)
        assert front.known(ids) is None and front.lacking(ids) == ids
        front.remember(ids[:1], ["http://h/b/x"], 100)
        front.fail(ids[:1], "a test")
        assert front.lacking(ids[:1]) == ids[:1]  # forgotten

    run(main)


@pytest.mark.parametrize(
    ("urls", "ttl", "digests"),
    [
        (["http://h/a"], 100, None),  # one URL for two ids
        (["http://h/a", "http://h/b", "http://h/c"], 100, None),
        (["http://h/a", "http://h/b"], 5, None),  # a lifetime under 10 s
        (["http://h/a", "http://h/b"], True, None),
        (["http://h/a", "http://h/b"], None, None),
        ("http://h/a", 100, None),
        (["http://h/a", "gopher://h/b"], 100, None),
        (["http://h/a", "http://h/b"], 100, ["d" * 64]),  # a BLAKE3 for one of two
        (["http://h/a", "http://h/b"], 100, ["d" * 64, "D" * 64]),
        (["http://h/a", "http://h/b"], 100, ["d" * 64, "d" * 63]),
        (["http://h/a", "http://h/b"], 100, [None, 7]),
        (["http://h/a", "http://h/b"], 100, "d" * 64),
    ],
)
def test_a_malformed_answer_is_refused_whole(urls: object, ttl: object, digests: object) -> None:
    async def main() -> None:
        front = BlobFront(1.0, 1.0, 4)
        with pytest.raises(RemoteError):
            front.remember(["a" * 64, "b" * 64], urls, ttl, digests)
        assert front.lacking(["a" * 64, "b" * 64]) == ["a" * 64, "b" * 64]

    run(main)


def test_urls_on_too_many_origins_are_refused_and_the_oldest_urls_dropped() -> None:
    async def main() -> None:
        front = BlobFront(1.0, 1.0, 4)
        hosts = [f"http://h{i}/b" for i in range(MAX_ORIGINS + 1)]
        with pytest.raises(RemoteError, match="origins"):
            front.remember([f"{i:064x}" for i in range(len(hosts))], hosts, 100)
        many = [f"{i:064x}" for i in range(MAX_URLS + 10)]
        front.remember(many, ["http://h/b"] * len(many), 100)
        assert front.lacking(many) == many[:10]

    run(main)


def test_a_front_is_used_only_once_the_server_said_it_has_one_and_rests_after_a_failure() -> None:
    async def main() -> None:
        front = BlobFront(1.0, 1.0, 4)
        assert not front.usable()
        front.available = True
        assert front.usable()
        front.fail([], "a test")
        assert not front.usable()
        await trio.sleep(31)
        assert front.usable()

    run(main)


def test_urls_shared_with_another_process_come_back_as_spelled_and_with_the_time_left() -> None:
    async def main() -> None:
        front = BlobFront(1.0, 1.0, 4)
        ids = [f"{i:064x}" for i in range(3)]
        urls = [f"http://h/b/{oid}?md5=x&expires=9" for oid in ids] + ["http://[::1]:81/b/c"]
        digests = ["d" * 64, None, "e" * 64, None]  # a larger blob's or an older server's: None
        front.remember([*ids, "c" * 64], urls, 1000, digests)
        await trio.sleep(100)
        exported = front.export([*ids, "c" * 64])
        assert exported is not None
        spelled, sent, left = exported
        assert sent == digests
        assert left == pytest.approx(800)  # kept for 90 % of the lifetime, 100 s gone
        other = BlobFront(1.0, 1.0, 4)  # another process
        got = unpack_shared(pack_shared(spelled, sent, left, 5_000.0), 4, 5_010.0)
        assert got == (spelled, 790, digests)
        other.remember([*ids, "c" * 64], *got)
        theirs, ours = other.known([*ids, "c" * 64]), front.known([*ids, "c" * 64])
        assert theirs is not None and ours is not None
        assert [(u.origin, u.target, u.blake3) for u in theirs] == [
            (u.origin, u.target, u.blake3) for u in ours
        ]
        assert [other.whole_check(oid) for oid in ids] == [
            ("blake3", "d" * 64),
            ("sha256", ids[1]),
            ("blake3", "e" * 64),
        ]
        older = b'{"until": 6000, "urls": ["http://h/b/a"]}'  # shared by an older version
        assert unpack_shared(older, 1, 5_000.0) == (["http://h/b/a"], 1000, [None])
        assert front.export([*ids, "d" * 64]) is None  # one lacks a URL

    run(main)


@pytest.mark.parametrize(
    ("record", "count"),
    [
        (b"not json", 1),
        (b"[]", 1),
        (b'{"until": 10000, "urls": ["http://h/a"]}', 2),  # not as many as asked
        (b'{"until": 10000, "urls": []}', 0),
        (b'{"until": true, "urls": ["http://h/a"]}', 1),
        (b'{"until": "10000", "urls": ["http://h/a"]}', 1),
        (b'{"urls": ["http://h/a"]}', 1),
        (b'{"until": %d, "urls": ["http://h/a"]}' % (1000 + SHARE_MARGIN - 1), 1),  # nearly gone
        (b'{"until": 1e12, "urls": ["http://h/a"]}', 1),  # beyond any URL's lifetime
        (b'{"until": 10000, "urls": ["http://h/a"], "blake3": []}', 1),
        (b'{"until": 10000, "urls": ["http://h/a"], "blake3": "%s"}' % (b"d" * 64), 1),
    ],
)
def test_a_shared_record_that_will_not_do_is_ignored(record: bytes, count: int) -> None:
    assert unpack_shared(record, count, 1000.0) is None
