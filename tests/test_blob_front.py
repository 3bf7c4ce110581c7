"""Blob bytes from a static front: `streamfs serve --blob-url` signing URLs that a real nginx,
configured by `streamfs nginx-location`, serves from the store (server/_front.py,
_blobfront.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import httpx
import pytest
import trio

import streamfs
from streamfs import _view
from streamfs._model import BLOCK_SIZE
from streamfs._remote import Remote
from streamfs.server._front import sign

from .conftest import ServerProcess, run_cli, wait_for_prefetches

SECRET = "front-secret-0123456789abcdef"

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {work}/access.log;
    keepalive_requests {keepalive_requests};
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
{location}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Nginx:
    """nginx serving the store's blobs at /blobs/, configured by `streamfs nginx-location`."""

    def __init__(self, work: Path, store: Path, secret: str, keepalive_requests: int) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(nginx), "nginx is missing (make install installs nginx-light)"
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/blobs"
        secret_file = work / "secret"
        secret_file.write_text(secret + "\n")
        location = subprocess.run(
            [
                *(sys.executable, "-m", "streamfs", "nginx-location", "--root", str(store)),
                *("--blob-url", self.url, "--blob-secret-file", str(secret_file)),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        conf = work / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                work=work,
                port=self.port,
                keepalive_requests=keepalive_requests,
                location=location,
            )
        )
        log = open(work / "nginx.out", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while not _accepts(self.port):
            assert self.proc.poll() is None, (work / "nginx.out").read_text()
            assert time.monotonic() < deadline, "nginx did not start listening in 30 s"
            time.sleep(0.01)  # polling an outside process's port: it has no event to wait on

    def statuses(self) -> list[int]:
        """The status of every request nginx has logged (combined format)."""
        lines = (self.work / "access.log").read_text().splitlines()
        return [int(line.split('" ')[1].split()[0]) for line in lines]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[ServerProcess, Nginx]]:
    """A server whose blobs nginx serves (nginx closes a connection after 5 requests, so
    pipelined batches must go on over new ones)."""
    store = tmp_path / "store"
    store.mkdir()
    nginx = Nginx(tmp_path / "nginx", store, SECRET, keepalive_requests=5)
    extra = ("--blob-url", nginx.url, "--blob-secret-file", str(nginx.work / "secret"))
    server = ServerProcess(store, extra=extra).start()
    try:
        yield server, nginx
    finally:
        server.stop()
        nginx.stop()


def publish(server: ServerProcess, repo: str, files: dict[str, bytes], tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    run_cli(server, "repo", "create", repo)
    run_cli(server, "upload", repo, str(src), "-m", "data")


def small_files(n: int) -> dict[str, bytes]:
    rng = random.Random(n)
    return {f"images/{i:03}.jpg": rng.randbytes(rng.randint(5_000, 90_000)) for i in range(n)}


def blob_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_big_file_and_a_folder_come_from_the_front_and_the_api_only_signs(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    server, nginx = front
    big = random.Random(1).randbytes(2 * BLOCK_SIZE + 777)
    files = {"big.bin": big, **small_files(40)}
    publish(server, f"alice/{repo_name}", files, tmp_path)
    before = server.metrics()
    repo = streamfs.Repo(f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c")
    assert repo.read_bytes("big.bin") == big
    after_big = server.metrics()
    assert after_big["blob_bytes_sent"] == before["blob_bytes_sent"]  # not a byte from the API
    assert after_big["blob_urls_signed"] > before["blob_urls_signed"]
    for rel, data in files.items():
        if rel.startswith("images/"):
            assert repo.read_bytes(rel) == data
    after = server.metrics()
    assert after["blob_batch_requests"] == before["blob_batch_requests"]  # batches: the front's
    assert 200 in nginx.statuses() and 206 in nginx.statuses()
    assert set(nginx.statuses()) <= {200, 206}


def test_batches_and_ranges_through_the_remote(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    server, nginx = front
    files = small_files(12)
    publish(server, f"alice/{repo_name}", files, tmp_path)
    ids = [blob_id(data) for data in files.values()]
    sizes = [len(data) for data in files.values()]
    first = next(iter(files.values()))

    async def reads() -> tuple[bytes, bytes, dict[str, int], bytes, dict[str, int]]:
        async with Remote(server.url) as remote:
            await remote.resolve("alice", repo_name, "main")  # its answer tells of the front
            small = bytes(await remote.read_blob("alice", repo_name, ids[0], 10, 1010))
            after_small = server.metrics()  # no URL yet: a small range went to the API
            batch = b"".join(await remote.read_blobs("alice", repo_name, ids, sizes))
            again = bytes(await remote.read_blob("alice", repo_name, ids[0], 10, 1010))
            return small, batch, after_small, again, server.metrics()

    before = server.metrics()
    small, batch, after_small, again, after = trio.run(reads)
    assert small == again == first[10:1010]
    assert batch == b"".join(files.values())  # 12 pipelined GETs over 3 connections
    assert after_small["blob_get_requests"] == before["blob_get_requests"] + 1
    assert after["blob_get_requests"] == after_small["blob_get_requests"]  # the URL was known
    assert after["blob_batch_requests"] == before["blob_batch_requests"]
    assert nginx.statuses().count(200) == 12 and nginx.statuses().count(206) == 1


def test_signed_urls_grant_one_blob_until_they_expire(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    server, nginx = front
    files = small_files(2)
    publish(server, f"alice/{repo_name}", files, tmp_path)
    (a, data_a), (b, _) = ((blob_id(d), d) for d in files.values())
    asked = httpx.post(
        f"{server.url}/v1/repos/alice/{repo_name}/blobs/urls", json={"ids": [a]}, timeout=10
    )
    assert asked.status_code == 200 and asked.headers["cache-control"] == "no-store"
    body = asked.json()
    assert body["ttl"] == 3600 and body["expires"] >= time.time() + 3000
    assert body["blake3"] == [blake3.blake3(data_a).hexdigest()]
    url = body["urls"][0]
    assert url.startswith(nginx.url + f"/{a[:2]}/{a[2:]}?")
    assert httpx.get(url, timeout=10).content == data_a
    other_blob = url.replace(f"/{a[:2]}/{a[2:]}?", f"/{b[:2]}/{b[2:]}?")
    assert httpx.get(other_blob, timeout=10).status_code == 403
    later = url.replace(f"expires={body['expires']}", f"expires={body['expires'] + 1}")
    assert httpx.get(later, timeout=10).status_code == 403
    path = f"/blobs/{a[:2]}/{a[2:]}"
    past = int(time.time()) - 1
    expired = f"{nginx.url}/{a[:2]}/{a[2:]}?md5={sign(SECRET, path, past)}&expires={past}"
    assert httpx.get(expired, timeout=10).status_code == 410
    unsigned = f"{nginx.url}/{a[:2]}/{a[2:]}"
    assert httpx.get(unsigned, timeout=10).status_code == 403


def test_blob_urls_are_checked_like_every_read(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    server, _ = front
    publish(server, f"alice/{repo_name}", small_files(1), tmp_path)
    base = f"{server.url}/v1/repos/alice/{repo_name}/blobs/urls"
    missing = httpx.post(base, json={"ids": ["ab" * 32]}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    for bad in ({"ids": []}, {"ids": ["../x"]}, {"ids": "ab"}, {"ids": ["ab" * 32] * 1001}):
        answer = httpx.post(base, json=bad, timeout=10)
        assert answer.status_code == 400, (bad, answer.text)
    unknown = httpx.post(server.url + "/v1/repos/alice/nope/blobs/urls", json={"ids": ["ab" * 32]})
    assert unknown.status_code == 404


def test_a_server_without_a_front_says_so_and_serves_bytes_itself(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    files = small_files(8)
    publish(server, f"alice/{repo_name}", files, tmp_path)
    ids = [blob_id(d) for d in files.values()]
    answer = httpx.post(
        f"{server.url}/v1/repos/alice/{repo_name}/blobs/urls", json={"ids": ids}, timeout=10
    )
    assert answer.status_code == 200 and answer.json() == {"urls": None}
    repo = streamfs.Repo(f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c")
    for rel, data in files.items():
        assert repo.read_bytes(rel) == data
    assert server.metrics()["blob_bytes_sent"] >= sum(len(d) for d in files.values())


@pytest.mark.parametrize("fault", ["wrong secret", "front down"])
def test_a_front_that_fails_leaves_the_reads_to_the_api(
    fault: str, repo_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    nginx = Nginx(tmp_path / "nginx", store, SECRET, keepalive_requests=100)
    secret = tmp_path / "server-secret"
    secret.write_text("another-secret-0123456789" if fault == "wrong secret" else SECRET)
    if fault == "front down":
        nginx.stop()
    extra = ("--blob-url", nginx.url, "--blob-secret-file", str(secret))
    server = ServerProcess(store, extra=extra).start()
    try:
        big = random.Random(2).randbytes(BLOCK_SIZE + 5)
        files = {"big.bin": big, **small_files(10)}
        publish(server, f"alice/{repo_name}", files, tmp_path)
        repo = streamfs.Repo(f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c")
        with caplog.at_level("WARNING", logger="streamfs.remote"):
            for rel, data in files.items():
                assert repo.read_bytes(rel) == data
        assert server.metrics()["blob_bytes_sent"] >= len(big)
        assert "blob front failed" in caplog.text
        if fault == "wrong secret":
            assert set(nginx.statuses()) == {403}
    finally:
        server.stop()
        if fault != "front down":
            nginx.stop()


def test_serve_wants_the_url_and_the_secret_together(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "streamfs", "serve", "--root", str(tmp_path / "s")]
    alone = subprocess.run(
        [*cmd, "--blob-url", "http://127.0.0.1:1/blobs"], capture_output=True, text=True
    )
    assert alone.returncode == 2 and "go together" in alone.stderr
    weak = tmp_path / "weak"
    weak.write_text("short")
    bad = subprocess.run(
        [*cmd, "--blob-url", "http://127.0.0.1:1/blobs", "--blob-secret-file", str(weak)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "16 to 256" in bad.stderr


def test_a_folder_signed_ahead_is_read_from_the_front_and_signed_once(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    server, nginx = front
    files = small_files(30)
    publish(server, f"alice/{repo_name}", files, tmp_path)
    ids = [blob_id(data) for data in files.values()]

    async def reads() -> list[bytes]:
        async with Remote(server.url) as remote:
            await remote.resolve("alice", repo_name, "main")
            async with trio.open_nursery() as nursery:  # two tasks, one request
                nursery.start_soon(remote.sign_ahead, "alice", repo_name, ids)
                nursery.start_soon(remote.sign_ahead, "alice", repo_name, ids[:10])
            return [bytes(await remote.read_blob("alice", repo_name, oid, 0, 100)) for oid in ids]

    before = server.metrics()
    heads = trio.run(reads)
    after = server.metrics()
    assert heads == [data[:100] for data in files.values()]
    assert after["blob_urls_signed"] - before["blob_urls_signed"] == len(ids)
    assert after["blob_get_requests"] == before["blob_get_requests"]  # all from the front
    assert nginx.statuses().count(206) == len(ids)


def test_bytes_from_the_front_that_do_not_match_are_read_again_from_the_api(
    repo_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nginx serves a copy of the store whose blobs were overwritten (a front pointed at a
    stale or damaged copy): every read still returns the right bytes, from the API."""
    store, copy = tmp_path / "store", tmp_path / "copy"
    store.mkdir()
    nginx = Nginx(tmp_path / "nginx", copy, SECRET, keepalive_requests=100)
    extra = ("--blob-url", nginx.url, "--blob-secret-file", str(nginx.work / "secret"))
    server = ServerProcess(store, extra=extra).start()
    try:
        big = random.Random(3).randbytes(BLOCK_SIZE + 9)
        files = {"big.bin": big, **small_files(6)}
        publish(server, f"alice/{repo_name}", files, tmp_path)
        shutil.copytree(store, copy)
        damaged = [p for p in (copy / "data/objects/blob").rglob("*") if p.is_file()]
        assert len(damaged) == len(files)
        for path in damaged:  # the same sizes, other bytes
            path.write_bytes(bytes(path.stat().st_size))
        before = server.metrics()
        repo = streamfs.Repo(f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c")
        with caplog.at_level("WARNING", logger="streamfs.fetch"):
            for rel, data in files.items():
                assert repo.read_bytes(rel) == data
        sent = server.metrics()["blob_bytes_sent"] - before["blob_bytes_sent"]
        assert sent >= sum(len(d) for d in files.values())
        assert 200 in nginx.statuses() or 206 in nginx.statuses()  # the front was asked first
        assert "fetching it again from the API" in caplog.text
    finally:
        server.stop()
        nginx.stop()


def test_a_small_file_is_checked_by_the_blake3_its_url_came_with(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    """The API sends a one-block blob's BLAKE3 with its URL and the client checks the bytes
    by it: a digest the store recorded wrong (its marker) is never served, though the
    bytes are the blob's; a blob stored before markers held one is checked by its id."""
    server, _ = front
    files = {**small_files(3), "big.bin": random.Random(5).randbytes(BLOCK_SIZE + 1)}
    publish(server, f"alice/{repo_name}", files, tmp_path)
    ids = [blob_id(data) for data in files.values()]
    asked = httpx.post(
        f"{server.url}/v1/repos/alice/{repo_name}/blobs/urls", json={"ids": ids}, timeout=10
    )
    assert asked.json()["blake3"] == [
        *(blake3.blake3(data).hexdigest() for data in list(files.values())[:3]),
        None,  # a larger blob: its blocks are checked by its block list
    ]
    has = server.root / "data" / "repos" / "alice" / repo_name / "has" / "blob"
    wrong, older, _, _ = ids
    (has / wrong[:2] / wrong).write_text(blake3.blake3(b"other bytes").hexdigest())
    (has / older[:2] / older).write_bytes(b"")
    repo = streamfs.Repo(
        f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c", prefetch=False
    )
    engine = repo.client.engine
    engine.call(_view._sign_ahead, engine, "alice", repo_name, ids)  # as a folder's first open
    for rel, data in files.items():
        if blob_id(data) == wrong:
            with pytest.raises(streamfs.IntegrityError) as info:
                repo.read_bytes(rel)
            assert info.value.errno == errno.EIO and rel in str(info.value)
        else:
            assert repo.read_bytes(rel) == data
    assert repo.client.cache.get_block(wrong, 0) is None


def test_upgrade_store_gives_an_older_servers_blobs_their_blake3(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    """`streamfs upgrade-store` on a store an older server left (block lists of sha256
    only, empty markers), while the server runs: block lists and small blobs' URLs then
    come with BLAKE3; a blob whose bytes rotted is reported and left as it is."""
    server, _ = front
    files = {**small_files(3), "big.bin": random.Random(6).randbytes(BLOCK_SIZE + 5)}
    publish(server, f"alice/{repo_name}", files, tmp_path)
    ids = [blob_id(data) for data in files.values()]
    data_dir = server.root / "data"
    for oid in ids:
        block_list = data_dir / "objects" / "blockmap" / oid[:2] / oid[2:]
        listed = json.loads(block_list.read_bytes())
        del listed["blake3"]
        block_list.write_text(json.dumps(listed))
        (data_dir / "repos" / "alice" / repo_name / "has" / "blob" / oid[:2] / oid).write_bytes(b"")
    rotten = ids[2]
    with open(data_dir / "objects" / "blob" / rotten[:2] / rotten[2:], "r+b") as f:
        f.write(bytes([files["images/002.jpg"][0] ^ 1]))
    urls = f"{server.url}/v1/repos/alice/{repo_name}/blobs/urls"
    assert httpx.post(urls, json={"ids": ids}, timeout=10).json()["blake3"] == [None] * 4

    def upgrade(root: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "streamfs", "upgrade-store", "--root", str(root)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    first = upgrade(server.root)
    assert first.returncode == 1, first.stderr
    assert first.stdout.startswith("3 block lists given BLAKE3 (") and "2 markers" in first.stdout
    why = "its stored bytes do not match its id or cannot be read"
    assert first.stderr.splitlines() == [f"error: blob {rotten}: {why} (left as they are)"]
    assert httpx.post(urls, json={"ids": ids}, timeout=10).json()["blake3"] == [
        *(blake3.blake3(data).hexdigest() for data in list(files.values())[:2]),
        None,  # rotten
        None,  # two blocks: checked by its block list
    ]
    big = files["big.bin"]
    blocks = httpx.get(f"{server.url}/v1/repos/alice/{repo_name}/blobs/{ids[3]}/blocks").json()
    assert blocks["blake3"] == [
        blake3.blake3(big[:BLOCK_SIZE]).hexdigest(),
        blake3.blake3(big[BLOCK_SIZE:]).hexdigest(),
    ]
    assert (
        "blake3"
        not in httpx.get(f"{server.url}/v1/repos/alice/{repo_name}/blobs/{rotten}/blocks").json()
    )
    again = upgrade(server.root)
    assert again.returncode == 1 and again.stderr == first.stderr  # read again, still rotten
    assert again.stdout.startswith("0 block lists given BLAKE3 (") and "0 markers" in again.stdout
    source = sorted(p.name for p in (tmp_path / "src").iterdir())
    not_a_store = upgrade(tmp_path / "src")
    assert not_a_store.returncode == 1 and "not the root of a store" in not_a_store.stderr
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == source  # nothing made there


def signed_repo(
    server: ServerProcess, repo_name: str, files: dict[str, bytes], tmp_path: Path
) -> streamfs.Repo:
    """``files`` published, and a Repo (no prefetching) whose engine holds their blob URLs."""
    publish(server, f"alice/{repo_name}", files, tmp_path)
    repo = streamfs.Repo(
        f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c", prefetch=False
    )
    engine = repo.client.engine
    assert engine.remote is not None
    engine.call(_view._sign_ahead, engine, "alice", repo_name, [blob_id(d) for d in files.values()])
    return repo


def test_a_small_file_with_a_known_url_is_one_get_of_the_readers_own_and_cached(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    """With its URL known (asked ahead for its folder), a small file the cache lacks is one
    whole GET from the reader's thread (_directget.py), no request to the API, and the engine
    caches it: another reader of the same cache asks nothing."""
    server, nginx = front
    files = small_files(12)
    repo = signed_repo(server, repo_name, files, tmp_path)
    before = server.metrics()
    for rel, data in files.items():
        assert repo.read_bytes(rel) == data
    repo.client.engine.settle()
    after = server.metrics()
    assert after["blob_get_requests"] == before["blob_get_requests"]  # none from the API
    assert after.get("blob_bytes_sent", 0) == before.get("blob_bytes_sent", 0)
    assert nginx.statuses() == [200] * len(files)  # whole GETs, not the engine's ranges (206)
    spec, cache = f"alice/{repo_name}@main", tmp_path / "c"
    again = streamfs.Repo(spec, remote=server.url, cache_dir=cache, prefetch=False)
    assert [again.read_bytes(rel) for rel in files] == list(files.values())
    assert len(nginx.statuses()) == len(files)  # all from the cache


def test_when_the_front_goes_down_a_reader_falls_back_to_the_engine(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    server, nginx = front
    files = small_files(6)
    repo = signed_repo(server, repo_name, files, tmp_path)
    nginx.stop()  # the URLs are known, the front is gone
    before = server.metrics()
    for rel, data in files.items():
        assert repo.read_bytes(rel) == data
    assert server.metrics()["blob_get_requests"] == before["blob_get_requests"] + len(files)


_SHARED_URLS_READER = """
import sys
import streamfs
from streamfs import _view

url, cache, name, *pairs = sys.argv[1:]
rels, ids = zip(*(pair.split("=") for pair in pairs))
repo = streamfs.Repo(f"alice/{name}@main", remote=url, cache_dir=cache, prefetch=False)
engine = repo.client.engine
engine.call(_view._sign_ahead, engine, "alice", name, list(ids))
for rel in rels:
    sys.stdout.buffer.write(repo.read_bytes(rel))
engine.settle()
"""


def test_a_folders_urls_signed_for_one_process_serve_another_sharing_its_cache(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path
) -> None:
    """DataLoader workers share one cache: the first to sign a folder's URLs ahead leaves
    them there, and another process takes them instead of asking the server again; its
    reads are GETs of the front (no blob bytes from the API)."""
    server, nginx = front
    files = small_files(10)
    signed_repo(server, repo_name, files, tmp_path)  # this process asks for the folder's URLs
    signed = server.metrics()["blob_urls_signed"]
    assert signed >= len(files)
    before = server.metrics()
    rels = list(files)
    pairs = [f"{rel}={blob_id(data)}" for rel, data in files.items()]
    cache = str(tmp_path / "c")
    got = subprocess.run(
        [sys.executable, "-c", _SHARED_URLS_READER, server.url, cache, repo_name, *pairs],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert got.stdout == b"".join(files[rel] for rel in rels)
    after = server.metrics()
    assert after["blob_urls_signed"] == signed  # taken from the cache, not asked again
    assert after["blob_get_requests"] == before["blob_get_requests"]
    assert after.get("blob_bytes_sent", 0) == before.get("blob_bytes_sent", 0)
    assert nginx.statuses()[-len(files) :] == [200] * len(files)


_WORKER_REPO: list[streamfs.Repo] = []  # what a forked pool's worker reads (set before the fork)


def _read_in_worker(paths: list[str], ids: list[str], round_trip: float) -> list[bytes]:
    """In a forked pool's worker (a DataLoader's): with the URLs of ``ids`` (if any) asked
    ahead, read ``paths``, a miss taken as cheaper than a prefetch below ``round_trip``
    seconds."""
    _view.WORKER_PREFETCH_ROUND_TRIP = round_trip
    repo = _WORKER_REPO[0]
    engine = repo.client.engine
    assert engine.claims  # a worker's
    if ids:
        engine.call(_view._sign_ahead, engine, "alice", repo.view.name, ids)
    got = [repo.read_bytes(path) for path in paths]
    wait_for_prefetches(repo)
    engine.settle()
    return got


@pytest.mark.parametrize(
    ("cheap", "ahead"),
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["cheap-misses", "dear-misses", "cheap-misses-urls-later", "dear-misses-urls-later"],
)
def test_a_worker_prefetches_only_when_a_miss_costs_more_than_a_round_trip_it_can_bear(
    front: tuple[ServerProcess, Nginx], repo_name: str, tmp_path: Path, cheap: bool, ahead: bool
) -> None:
    """A DataLoader worker whose GETs of the front come back quicker than
    WORKER_PREFETCH_ROUND_TRIP fetches each file it reads itself and prefetches nothing:
    the others would read most of what it prefetched, each from the cache, for more CPU than
    their own GET. One whose round trip is longer prefetches the folder it reads through.
    Without the folder's URLs asked ahead (``ahead``), its first miss is no GET of its own:
    no round trip is known at its second, which prefetches nothing either until one is."""
    server, nginx = front
    files = small_files(40)
    publish(server, f"alice/{repo_name}", files, tmp_path)
    ids = [blob_id(data) for data in files.values()]
    paths = random.Random(5).sample(list(files), 8)
    repo = streamfs.Repo(f"alice/{repo_name}@main", remote=server.url, cache_dir=tmp_path / "c")
    before = server.metrics().get("blob_get_requests", 0)
    _WORKER_REPO.append(repo)
    try:
        with multiprocessing.get_context("fork").Pool(1) as worker:
            # every round trip is under a minute, none is under no time at all
            got = worker.apply(
                _read_in_worker, (paths, ids if ahead else [], 60.0 if cheap else 0.0)
            )
    finally:
        _WORKER_REPO.clear()
        repo.close()
    assert got == [files[path] for path in paths]
    statuses = nginx.statuses()
    # blobs from the front: whole, or (a miss fetched by the engine) as a block's range
    assert (set(statuses) == {200}) if ahead else (set(statuses) <= {200, 206})
    # from the API: none with the URLs at hand, else misses before their folder's came
    from_api = server.metrics().get("blob_get_requests", 0) - before
    assert (from_api == 0) if ahead else (from_api < len(paths))
    if cheap:
        # the files read, each once, and nothing else
        assert len(statuses) + from_api == len(paths)
    else:
        # the rest of the folder came ahead of its reader
        assert len(statuses) + from_api == len(files)
