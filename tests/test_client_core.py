"""The streaming client core against a real server: pinning, reads, cache, faults, pull/verify."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import streamfs
from streamfs._model import BLOCK_SIZE
from streamfs._view import first_pass_cap

from .conftest import ServerProcess, run_cli, wait_for_prefetches


def publish(server: ServerProcess, repo: str, files: dict[str, bytes], tmp_path: Path) -> str:
    src = tmp_path / f"src-{len(files)}-{random.random()}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    if run_cli(server, "repo", "create", repo, check=False).returncode not in (0, 1):
        raise AssertionError("repo create failed")
    return run_cli(server, "upload", repo, str(src), "-m", "data").stdout.strip().splitlines()[-1]


def open_repo(server: ServerProcess, spec: str, cache: Path, **kwargs: object) -> streamfs.Repo:
    return streamfs.Repo(spec, remote=server.url, cache_dir=cache, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def big(server: ServerProcess, repo_name: str, tmp_path: Path) -> tuple[str, bytes]:
    data = random.Random(7).randbytes(2 * BLOCK_SIZE + 12345)
    publish(server, f"alice/{repo_name}", {"big.bin": data, "small.txt": b"hello"}, tmp_path)
    return f"alice/{repo_name}", data


def test_pinned_commit_and_stat_before_any_read(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, data = big
    repo = open_repo(server, f"{repo_id}@main", tmp_path / "cache")
    assert repo.commit == run_cli(server, "resolve", f"{repo_id}@main").stdout.strip()
    before = server.metrics().get("blob_get_requests", 0)
    assert repo.stat("big.bin").st_size == len(data)
    assert repo.listdir("") == ["big.bin", "small.txt"]
    assert server.metrics().get("blob_get_requests", 0) == before
    with pytest.raises(FileNotFoundError) as info:
        repo.stat("nope.txt")
    assert info.value.errno == errno.ENOENT

    # a path no repository can have is refused as such, even where a walk would stop first
    for bad in ("../small.txt", "small.txt/..", "./small.txt", "a//b", "big.bin/x\x00", "x/./y"):
        with pytest.raises(streamfs.InvalidInputError):
            repo.stat(bad)
    with pytest.raises(NotADirectoryError):
        repo.stat("small.txt/x")
    assert repo.stat("/small.txt/").st_size == 5  # slashes around a path are dropped

    # the branch moves on; the view does not
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"later")
    run_cli(server, "upload", f"{repo_id}@main", str(extra), "-m", "later")
    assert not repo.exists("extra.txt")
    assert open_repo(server, f"{repo_id}@main", tmp_path / "cache").exists("extra.txt")


def test_random_reads_return_exact_bytes(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, data = big
    repo = open_repo(server, repo_id, tmp_path / "cache")
    rng = random.Random(1)
    offsets = [
        0,
        BLOCK_SIZE - 1,
        BLOCK_SIZE,
        2 * BLOCK_SIZE - 3,
        len(data) - 1,
        len(data),
        len(data) + 10,
    ]
    offsets += [rng.randrange(len(data)) for _ in range(60)]
    with repo.open("big.bin") as f:
        for offset in offsets:
            size = rng.choice([1, 100, 4096, 131072, BLOCK_SIZE + 7, 3 * BLOCK_SIZE])
            f.seek(offset)
            assert f.read(size) == data[offset : offset + size], (offset, size)
    assert repo.read_bytes("small.txt") == b"hello"
    assert repo.read_bytes("big.bin") == data


def test_readinto_fills_exactly_the_bytes_asked_for_cold_and_warm(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    # warm blocks are read straight into the caller's buffer: every piece must land in place
    repo_id, data = big
    repo = open_repo(server, repo_id, tmp_path / "cache")
    rng = random.Random(2)
    reads = [(0, 3 * BLOCK_SIZE), (BLOCK_SIZE - 5, 10), (len(data) - 100, 4096)]
    reads += [
        (rng.randrange(len(data)), rng.choice([1, 4096, 1 << 20, BLOCK_SIZE + 9]))
        for _ in range(30)
    ]
    for temperature in ("cold", "warm"):
        repo.client.engine.settle()  # warm: every block written (a cold read may return first)
        with repo.raw_open("big.bin") as f:
            for offset, size in reads:
                buffer = bytearray(b"\xee" * (size + 3))
                f.seek(offset)
                n = f.readinto(memoryview(buffer)[:size])
                want = data[offset : offset + size]
                assert n == len(want), (temperature, offset, size)
                assert buffer[:n] == want and buffer[n:] == b"\xee" * (size + 3 - n)
    stats = repo.client.cache.stats()
    assert stats["hits"] > len(reads) and stats["misses"] > 0


def test_second_process_sends_no_blob_request(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, data = big
    cache = tmp_path / "cache"
    repo = open_repo(server, repo_id, cache)
    assert repo.read_bytes("big.bin") == data
    repo.client.engine.settle()  # a read may return before its blocks are written
    before = server.metrics()
    script = (
        "import hashlib, streamfs, sys\n"
        f"r = streamfs.Repo({repo_id!r}, remote={server.url!r}, cache_dir={str(cache)!r})\n"
        "print(hashlib.sha256(r.read_bytes('big.bin')).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    after = server.metrics()
    assert out.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert after.get("blob_get_requests", 0) == before.get("blob_get_requests", 0)
    assert after.get("tree_get_requests", 0) == before.get("tree_get_requests", 0)
    assert after.get("commit_get_requests", 0) == before.get("commit_get_requests", 0)


_EXIT_READER = """
import sys, time, streamfs
repo = streamfs.Repo(sys.argv[1], remote=sys.argv[2], cache_dir=sys.argv[3])
cache = repo.client.cache
write = cache.put_many
def slow_write(blocks, **options):  # a slow disk: the reads below return long before their blocks are written
    time.sleep(0.5)
    write(blocks, **options)
cache.put_many = slow_write
def read():
    with repo.open("big.bin", buffering=0) as f:
        for index in range(3):
            f.seek(index * 4 * 1024 * 1024 + 7)
            f.read(10)
if sys.argv[4] == "child":  # a DataLoader worker: leaves by os._exit, no atexit
    import multiprocessing
    child = multiprocessing.get_context("fork").Process(target=read)
    child.start()
    child.join()
    sys.exit(child.exitcode)
read()
assert ("multiprocessing.util" in sys.modules) == (sys.argv[4] == "child")  # both exit paths
"""


@pytest.mark.parametrize("who", ["process", "child"])
def test_a_reader_that_exits_leaves_its_blocks_cached(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path, who: str
) -> None:
    # blocks go to a waiting reader before they are written; an exit waits for the writes
    repo_id, data = big
    cache = tmp_path / "cache"
    args = [repo_id, server.url, str(cache), who]
    subprocess.run([sys.executable, "-c", _EXIT_READER, *args], check=True, timeout=120)
    before = server.metrics()
    with open_repo(server, repo_id, cache).open("big.bin", buffering=0) as f:
        for index in range(3):
            f.seek(index * BLOCK_SIZE + 7)
            assert f.read(10) == data[index * BLOCK_SIZE + 7 : index * BLOCK_SIZE + 17]
    assert server.metrics().get("blob_get_requests", 0) == before.get("blob_get_requests", 0)


def _child_read(repo: streamfs.Repo, path: str) -> str:
    return hashlib.sha256(repo.read_bytes(path)).hexdigest()


def test_forked_child_gets_its_own_engine(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, data = big
    repo = open_repo(server, repo_id, tmp_path / "cache")
    assert repo.read_bytes("small.txt") == b"hello"  # the parent's engine thread is running
    parent_engine = repo.client.engine
    with multiprocessing.get_context("fork").Pool(2) as pool:
        hashes = pool.starmap(_child_read, [(repo, "big.bin"), (repo, "small.txt")])
    assert hashes == [hashlib.sha256(data).hexdigest(), hashlib.sha256(b"hello").hexdigest()]
    assert repo.client.engine is parent_engine and parent_engine.alive


@pytest.mark.parametrize("listed", ["sha256 and blake3", "sha256 only (an older server)"])
def test_corrupted_block_is_never_served(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path, listed: str
) -> None:
    repo_id, data = big
    blob = hashlib.sha256(data).hexdigest()
    if "only" in listed:  # the block list a server stored before it listed BLAKE3
        path = server.root / "data" / "objects" / "blockmap" / blob[:2] / blob[2:]
        block_list = json.loads(path.read_bytes())
        del block_list["blake3"]
        path.write_bytes(json.dumps(block_list).encode())
    stored = server.root / "data" / "objects" / "blob" / blob[:2] / blob[2:]
    with open(stored, "r+b") as f:  # the server's disk rots under block 1
        f.seek(BLOCK_SIZE + 100)
        f.write(b"\xff" if data[BLOCK_SIZE + 100] != 0xFF else b"\x00")
    repo = open_repo(server, repo_id, tmp_path / "cache")
    with repo.open("big.bin") as f:
        assert f.read(1000) == data[:1000]  # block 0 is intact
        f.seek(BLOCK_SIZE)
        with pytest.raises(streamfs.IntegrityError) as info:
            f.read(10)
    assert info.value.errno == errno.EIO and "big.bin" in str(info.value)
    assert repo.client.cache.get_block(blob, 1, 0, 10) is None
    with repo.open("big.bin") as f:
        f.seek(2 * BLOCK_SIZE)
        assert f.read() == data[2 * BLOCK_SIZE :]  # block 2 is intact


def test_a_corrupted_small_file_read_whole_is_never_served(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    data = random.Random(12).randbytes(100_000)
    blob = hashlib.sha256(data).hexdigest()
    publish(server, f"alice/{repo_name}", {"img/cat.jpg": data}, tmp_path)
    stored = server.root / "data" / "objects" / "blob" / blob[:2] / blob[2:]
    with open(stored, "r+b") as f:
        f.seek(500)
        f.write(bytes([data[500] ^ 0xFF]))
    repo = open_repo(server, f"alice/{repo_name}", tmp_path / "cache")
    for _ in range(2):  # the second read finds nothing cached either
        with pytest.raises(streamfs.IntegrityError) as info:
            repo.read_bytes("img/cat.jpg")
        assert info.value.errno == errno.EIO and "img/cat.jpg" in str(info.value)
    assert repo.client.cache.get_block(blob, 0) is None


def test_dead_server_is_an_error_within_the_bound(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, data = big
    repo = open_repo(server, repo_id, tmp_path / "cache", timeout=3)
    with repo.open("big.bin", buffering=0) as f:
        assert f.read(100) == data[:100]
        server.kill()
        f.seek(2 * BLOCK_SIZE + 5)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            f.read(100)
        elapsed = time.monotonic() - started
    assert info.value.errno == errno.EIO
    assert isinstance(info.value, streamfs.RemoteUnavailableError)
    assert elapsed < 3 * 3, f"took {elapsed:.1f} s with a 3 s bound"


def test_sixteen_threads_read_sixteen_files(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    rng = random.Random(3)
    files = {f"f{i:02d}.bin": rng.randbytes(rng.randint(1, 3 * 1024 * 1024)) for i in range(16)}
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    repo = open_repo(server, repo_id, tmp_path / "cache")
    results: dict[str, str] = {}
    barrier = threading.Barrier(16)

    def reader(name: str) -> None:
        barrier.wait()
        results[name] = hashlib.sha256(repo.read_bytes(name)).hexdigest()

    threads = [threading.Thread(target=reader, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


def test_cache_stays_under_its_limit(server: ServerProcess, repo_name: str, tmp_path: Path) -> None:
    limit = 24 * 1024 * 1024
    rng = random.Random(5)
    files = {
        f"f{i}.bin": rng.randbytes(4 * 1024 * 1024) for i in range(12)
    }  # 48 MiB: twice the limit
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    repo = open_repo(server, repo_id, tmp_path / "cache", cache_size=limit)
    for name, data in files.items():
        assert repo.read_bytes(name) == data
        # the limit holds once a write's eviction ran: a prefetch batch lands in the cache
        # first and evicts after (a stats() in between saw 6 blocks of 4 MiB, 1 in ~12 runs)
        wait_for_prefetches(repo)
        assert repo.client.cache.stats()["size"] <= limit
    usage = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert usage <= limit * 1.25  # the files on disk, SQLite included


def test_pull_then_verify_round_trip(server: ServerProcess, repo_name: str, tmp_path: Path) -> None:
    rng = random.Random(9)
    files = {f"d{i % 3}/f{i}.bin": rng.randbytes(rng.randint(0, 200_000)) for i in range(30)}
    files["big/huge.bin"] = rng.randbytes(BLOCK_SIZE + 999)
    repo_id = f"alice/{repo_name}"
    commit = publish(server, repo_id, files, tmp_path)
    env_cache = ["--cache-dir", str(tmp_path / "cache")]
    dest = tmp_path / "copy"

    out = run_cli(server, "pull", f"{repo_id}@{commit[:10]}", str(dest), *env_cache)
    assert "31 written" in out.stdout
    assert {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
    } == files
    assert "OK: 31 match" in run_cli(server, "verify", repo_id, str(dest), *env_cache).stdout

    again = run_cli(server, "pull", repo_id, str(dest), *env_cache)
    assert "0 written" in again.stdout and "31 already there" in again.stdout

    (dest / "d1" / "f1.bin").write_bytes(b"tampered")
    (dest / "d0" / "f0.bin").unlink()
    (dest / "stray.txt").write_text("not in the repo")
    bad = run_cli(server, "verify", repo_id, str(dest), *env_cache, check=False)
    assert bad.returncode == 1
    assert "modified  d1/f1.bin" in bad.stdout and "missing   d0/f0.bin" in bad.stdout
    assert "extra     stray.txt" in bad.stdout

    part = tmp_path / "part"
    run_cli(
        server, "pull", repo_id, str(part), "--include", "d2/*", "--exclude", "*f5.bin", *env_cache
    )
    expected = {p for p in files if p.startswith("d2/") and not p.endswith("f5.bin")}
    assert {p.relative_to(part).as_posix() for p in part.rglob("*") if p.is_file()} == expected


def test_cache_stats_and_clear(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, _data = big
    cache = tmp_path / "cache"
    repo = open_repo(server, repo_id, cache)
    repo.read_bytes("big.bin")
    repo.read_bytes("big.bin")
    out = run_cli(server, "cache", "stats", "--cache-dir", str(cache)).stdout
    assert "blocks     3" in out and "hit ratio" in out
    run_cli(server, "cache", "clear", "--cache-dir", str(cache))
    assert "blocks     0" in run_cli(server, "cache", "stats", "--cache-dir", str(cache)).stdout
    assert os.path.isdir(cache)


# ----------------------------------------------------------------- prefetch of small files


def folder_of_images(count: int, seed: int = 3) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"train/img{i:04d}.jpg": rng.randbytes(rng.randint(1000, 30_000)) for i in range(count)}


def published_images(
    server: ServerProcess, repo_name: str, tmp_path: Path, count: int, seed: int = 3
) -> tuple[str, dict[str, bytes]]:
    """A repo alice/REPO_NAME holding ``folder_of_images(count, seed)``: its id and files."""
    files = folder_of_images(count, seed)
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    return repo_id, files


def published_folders(
    server: ServerProcess, repo_name: str, tmp_path: Path, count: int, seed: int
) -> tuple[str, dict[str, bytes]]:
    """A repo alice/REPO_NAME holding ``count`` files of 40,000 bytes in 4 folders, file i in
    ``train/{i % 4}/img{i:03d}.jpg``: its id and files."""
    rng = random.Random(seed)
    files = {f"train/{i % 4}/img{i:03d}.jpg": rng.randbytes(40_000) for i in range(count)}
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    return repo_id, files


def test_reading_through_a_folder_prefetches_the_rest_in_batches(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo_id, files = published_images(server, repo_name, tmp_path, 120)
    repo = open_repo(server, repo_id, tmp_path / "cache")
    before = server.metrics()
    order = list(files)
    random.Random(5).shuffle(order)
    assert repo.read_bytes(order[0]) == files[order[0]]
    wait_for_prefetches(repo)
    assert server.metrics()["blob_batch_requests"] == before["blob_batch_requests"]  # one file: no
    assert repo.read_bytes(order[1]) == files[order[1]]
    wait_for_prefetches(repo)
    for path in order[2:]:
        assert repo.read_bytes(path) == files[path]
    wait_for_prefetches(repo)
    after = server.metrics()
    batches = after["blob_batch_requests"] - before["blob_batch_requests"]
    gets = after["blob_get_requests"] - before["blob_get_requests"]
    sent = after["blob_bytes_sent"] - before["blob_bytes_sent"]
    assert batches >= 2  # 64 files a batch at most
    assert after["blob_batch_blobs"] - before["blob_batch_blobs"] == len(files) - 2
    assert gets == 2  # the two files read before the folder counted as read through
    assert sent == sum(len(d) for d in files.values())  # every byte once


def test_a_process_reading_a_folder_that_another_cached_looks_it_up_in_one_query(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    # like a DataLoader worker in a warm epoch: the files are cached, by other processes
    rng = random.Random(9)
    files = {f"train/img{i:03d}.jpg": rng.randbytes(rng.randint(40_000, 90_000)) for i in range(40)}
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    writer = open_repo(server, repo_id, tmp_path / "cache", cache_size="1G")
    for path, data in files.items():
        assert writer.read_bytes(path) == data
    wait_for_prefetches(writer)
    # another cache size: another BlockCache, which knows none of the block files' names
    reader = open_repo(server, repo_id, tmp_path / "cache", cache_size="2G")
    before = server.metrics()
    statements: list[str] = []
    connection = reader.client.cache._blocks._cache._con  # this thread's: reads run on it
    connection.set_trace_callback(statements.append)
    try:
        for path, data in files.items():
            assert reader.read_bytes(path) == data
    finally:
        connection.set_trace_callback(None)
    assert server.metrics()["blob_bytes_sent"] == before["blob_bytes_sent"]
    # the first file's lookup, then one for the folder; not one a file
    assert len(statements) == 2, statements


def test_a_cache_smaller_than_the_data_fetches_each_file_of_an_epoch_once(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    # A shuffled epoch over 16 MB through a 4 MB cache: prefetched files wait in the cache for
    # their readers while the files read pile up behind them. Store order alone evicted
    # waiting files, which were then fetched again.
    repo_id, files = published_folders(server, repo_name, tmp_path, 400, seed=11)
    repo = open_repo(server, repo_id, tmp_path / "cache", cache_size=4_000_000)
    order = list(files)
    random.Random(11).shuffle(order)
    before = server.metrics()
    assert repo.read_bytes(order[0]) == files[order[0]]
    fetcher = repo.client.engine.fetcher
    assert fetcher is not None
    fetcher.fresh.max_bytes = 0  # no prefetched copies in memory: they would hide the cache's part
    for path in order[1:]:
        assert repo.read_bytes(path) == files[path]
        wait_for_prefetches(repo)
    after = server.metrics()
    assert after["blob_batch_blobs"] > before["blob_batch_blobs"]  # prefetching took part
    sent = after["blob_bytes_sent"] - before["blob_bytes_sent"]
    assert sent == sum(len(d) for d in files.values())  # every file once
    assert repo.client.cache.stats()["size"] <= 4_000_000


def _read_as_a_worker(repo: streamfs.Repo, paths: list[str]) -> dict[str, int]:
    planner, engine = repo.view._planner, repo.client.engine
    assert planner is not None and engine.fetcher is not None
    for path in paths:
        repo.read_bytes(path)
        wait_for_prefetches(repo)  # a batch claims its picks: the cache counts a sharer then
    return {
        "sharers": repo.client.cache.sharers,
        "cap": planner.cap,
        "known": planner.known_bytes,
        "claims": engine.claims,  # a worker's engine
        "held": len(engine.fetcher.fresh),  # prefetched blocks kept in memory
    }


@pytest.mark.parametrize("cache_size", [4_000_000, 64_000_000])
def test_worker_processes_share_the_prefetch_window_once_the_files_outgrow_the_cache(
    server: ServerProcess, repo_name: str, tmp_path: Path, cache_size: int
) -> None:
    # DataLoader workers each keep a prefetch window of up to half the cache. Once the files
    # being read outgrow the cache, eight windows of half of it evicted each other's files
    # before their readers came (8 processes fetched 1.54x the data); while the files fit,
    # nothing of them is evicted and a share of the window only slows the prefetch down.
    # 16 MB in 4 folders of 4 MB
    repo_id, _ = published_folders(server, repo_name, tmp_path, 400, seed=13)
    repo = open_repo(server, repo_id, tmp_path / "cache", cache_size=cache_size)
    fork = multiprocessing.get_context("fork")
    with fork.Pool(1) as pool:  # a worker reads a folder through
        first = pool.apply(_read_as_a_worker, (repo, ["train/0/img000.jpg", "train/0/img004.jpg"]))
    assert first["sharers"] == 1
    # another reads two folders (its batches count the first worker too), then a third
    paths = ["train/1/img001.jpg", "train/2/img002.jpg", "train/1/img005.jpg"]
    paths += ["train/2/img006.jpg", "train/3/img003.jpg"]
    with fork.Pool(1) as pool:
        second = pool.apply(_read_as_a_worker, (repo, paths))
    assert second["sharers"] == 2
    half = repo.client.cache_size // 2
    if cache_size < 12_000_000:
        assert second["known"] == 12_000_000 > cache_size
        assert second["cap"] == first_pass_cap(repo.client.cache_size) // 2
    else:
        assert second["known"] == 12_000_000 <= cache_size
        assert second["cap"] == half


def test_the_window_takes_more_of_a_small_cache_in_a_first_pass_than_in_a_later_one(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    # A first pass's read files go first; a later pass finds the cache full of the files it has
    # yet to read, which a bigger window would evict.
    repo_id, _ = published_folders(server, repo_name, tmp_path, 400, seed=19)
    repo = open_repo(server, repo_id, tmp_path / "cache", cache_size=4_000_000)
    planner = repo.view._planner
    assert planner is not None
    size = repo.client.cache_size
    # one file a folder (no prefetch); the window is set at a miss, before the folder counts
    for path in ["train/0/img000.jpg", "train/1/img001.jpg", "train/2/img002.jpg"]:
        repo.read_bytes(path)
    assert planner.known_bytes == 12_000_000 > size  # the folders being read outgrow the cache
    assert planner.cap == first_pass_cap(size) > size // 2
    repo.read_bytes("train/0/img000.jpg")  # read again: the next pass
    repo.read_bytes("train/3/img003.jpg")  # a miss
    assert planner.furthest_pass == 1
    assert planner.cap == size // 2


_FORKED: list[streamfs.Repo] = []  # what a forked pool's workers read through


def _read_in_fork(paths: list[str]) -> dict[str, int]:
    return _read_as_a_worker(_FORKED[0], paths)


def test_a_worker_does_not_prefetch_what_another_worker_read_in_this_pass(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    # Through a cache smaller than the data a file read is evicted first; a worker's planner
    # sees only its own opens, and its prefetch fetched the others' read files again.
    rng = random.Random(17)
    files = {f"train/img{i:03d}.jpg": rng.randbytes(40_000) for i in range(20)}  # 800 KB
    files |= {f"big/img{i:03d}.jpg": rng.randbytes(100_000) for i in range(100)}  # 10 MB
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    repo = open_repo(server, repo_id, tmp_path / "cache", cache_size=4_000_000)
    read = "train/img000.jpg"
    fork = multiprocessing.get_context("fork")
    _FORKED.append(repo)  # as a DataLoader's dataset: forked with it, not sent to each task
    try:
        with fork.Pool(1) as later, fork.Pool(1) as first:  # two workers of one epoch
            # one file a folder (no prefetch), the files of both outgrowing the cache
            first.apply(_read_in_fork, (["big/img000.jpg", read],))
            key = f"{hashlib.sha256(files[read]).hexdigest()}:0"
            assert repo.client.cache._blocks.delete(key)  # evicted, as read files are first
            before = server.metrics()
            paths = ["big/img001.jpg", "train/img004.jpg", "train/img008.jpg"]
            later.apply(_read_in_fork, (paths,))
            after = server.metrics()
    finally:
        _FORKED.clear()
    assert after["blob_batch_blobs"] - before["blob_batch_blobs"] == 20 - 3
    assert key not in repo.client.cache._blocks


def _window_in_fork(paths: list[str]) -> list[str]:
    """In a forked pool's worker: read ``paths`` through the repo, each followed by its
    prefetches; the ids of the files its prefetch window holds then."""
    repo = _FORKED[0]
    _read_as_a_worker(repo, paths)
    planner = repo.view._planner
    assert planner is not None
    return list(planner._outstanding)


def test_a_worker_lets_go_of_prefetched_files_another_worker_read(
    server: ServerProcess, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DataLoader worker's prefetches are mostly read by the other workers, which its planner
    # never sees. Its window, capped at its share, stayed full of files read long before, and
    # it prefetched nothing more for the rest of the epoch.
    # 32 MB in folders of 200: more of a folder than both windows hold (with folders of 100,
    # the other worker's window took all of the folder the first had left, one run in five,
    # and the first had nothing to take in their place)
    repo_id, files = published_folders(server, repo_name, tmp_path, 800, seed=17)
    paths = {hashlib.sha256(data).hexdigest(): path for path, data in files.items()}
    # a full window asks at every open, not at most every 0.25 s: the other worker's reads may
    # take less than that (the forked workers inherit the setting)
    monkeypatch.setattr(streamfs._view, "RELEASE_SECONDS", 0.0)
    _FORKED.append(open_repo(server, repo_id, tmp_path / "cache", cache_size=4_000_000))
    fork = multiprocessing.get_context("fork")
    try:
        with fork.Pool(1) as first, fork.Pool(1) as second:
            opened = ["train/0/img000.jpg", "train/0/img004.jpg"]
            window = first.apply(_window_in_fork, (opened,))
            assert len(window) >= 10 and set(window) <= set(paths)
            # the other worker misses a file of the folder, then reads what the first fetched,
            # then a file of another folder (its write marks them read in the cache)
            folder = [p for i, p in paths.items() if p.startswith("train/0/") and i not in window]
            unpicked = next(p for p in folder if p not in opened)
            later = [unpicked, *(paths[i] for i in window), "train/3/img003.jpg"]
            second.apply(_window_in_fork, (later,))
            # the first opens another file: its window, full, lets go of what the other read
            # and takes new picks in their place
            after = first.apply(_window_in_fork, (["train/0/img008.jpg"],))
            assert after and not set(after) & set(window), (len(after), len(window))
    finally:
        _FORKED[0].close()
        _FORKED.clear()


def test_a_cached_folder_plans_no_prefetch_and_an_evicted_one_is_refilled(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo_id, files = published_images(server, repo_name, tmp_path, 90, seed=4)
    repo = open_repo(server, repo_id, tmp_path / "cache")
    planner = repo.view._planner
    assert planner is not None

    def epoch(seed: int) -> dict[str, int]:
        before = server.metrics()
        order = list(files)
        random.Random(seed).shuffle(order)
        for i, path in enumerate(order):
            assert repo.read_bytes(path) == files[path]
            if i == 1:  # two files read: a folder that missed is prefetched now
                wait_for_prefetches(repo)
                planned[seed] = planner.outstanding_bytes
        wait_for_prefetches(repo)
        after = server.metrics()
        return {k: after[k] - before[k] for k in ("blob_get_requests", "blob_batch_blobs")}

    planned: dict[int, int] = {}
    assert epoch(1) == {"blob_get_requests": 2, "blob_batch_blobs": len(files) - 2}
    assert planned[1] > 0
    # a warm epoch: every file in the cache, so the new pass prefetches nothing
    assert epoch(2) == {"blob_get_requests": 0, "blob_batch_blobs": 0}
    assert planned[2] == 0
    repo.client.cache.clear()  # evicted: the next pass misses, and refills the rest ahead
    assert epoch(3) == {"blob_get_requests": 2, "blob_batch_blobs": len(files) - 2}
    assert planned[3] > 0


def test_a_prefetched_file_is_handed_over_in_memory_and_left_in_the_cache(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo_id, files = published_images(server, repo_name, tmp_path, 40, seed=8)
    repo = open_repo(server, repo_id, tmp_path / "cache")
    order = sorted(files)
    for path in order[:2]:  # the second open starts the folder's prefetch
        assert repo.read_bytes(path) == files[path]
    wait_for_prefetches(repo)
    cache, fetcher = repo.client.cache, repo.client.engine.fetcher
    assert fetcher is not None and len(fetcher.fresh) == len(files) - 2
    for path in order[2:]:  # in the disk cache for every other process ...
        assert cache.contains(hashlib.sha256(files[path]).hexdigest(), 0)
    hits = cache.stats()["hits"]
    for path in order[2:]:
        assert repo.read_bytes(path) == files[path]
    assert cache.stats()["hits"] == hits  # ... and handed to this one without a read back
    assert len(fetcher.fresh) == 0 and fetcher.fresh.nbytes == 0
    assert repo.read_bytes(order[5]) == files[order[5]]  # a second read: from the cache
    assert cache.stats()["hits"] == hits + 1


def test_a_worker_keeps_no_prefetched_file_in_memory(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    # A DataLoader worker's prefetches are mostly read by the other workers, from the cache:
    # copies kept for a reader in the worker itself waited for one that seldom came (40-63 MiB
    # a worker after epoch 1), and while any was held each of its opens looked for its file
    # among them (8 processes' warm epochs were 8-13 % slower in the 10 s they stay).
    repo_id, files = published_images(server, repo_name, tmp_path, 40, seed=8)
    repo = open_repo(server, repo_id, tmp_path / "cache")
    before = server.metrics()
    order = sorted(files)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        # the second read starts the folder's prefetch
        worker = pool.apply(_read_as_a_worker, (repo, order[:2]))
    assert worker["claims"]
    assert server.metrics()["blob_batch_blobs"] - before["blob_batch_blobs"] == len(files) - 2
    ids = [entry.id for entry in map(repo.view.lookup, order)]
    cached = sum(repo.client.cache.contains(oid, 0) for oid in ids)  # the disk cache, shared
    assert (worker["held"], cached) == (0, len(files))


def test_readahead_blocks_are_handed_over_in_memory_and_left_in_the_cache(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    data = random.Random(9).randbytes(6 * BLOCK_SIZE + 777)
    publish(server, f"alice/{repo_name}", {"video.bin": data}, tmp_path)
    repo = open_repo(server, f"alice/{repo_name}", tmp_path / "cache")
    blob = hashlib.sha256(data).hexdigest()
    mib = 1024 * 1024
    with repo.open("video.bin", buffering=0) as f:
        head = b"".join(f.read(mib) for _ in range(3))  # 2 MiB in: a stream, blocks 1-2 ahead
        wait_for_prefetches(repo)
        cache, fetcher = repo.client.cache, repo.client.engine.fetcher
        assert fetcher is not None and len(fetcher.fresh) == 2
        assert cache.contains(blob, 1) and cache.contains(blob, 2)  # there for other processes
        hits = cache.stats()["hits"]
        rest = f.read(len(data))
    assert head + rest == data
    assert cache.stats()["hits"] == hits  # each block came from memory or its own fetch
    assert len(fetcher.fresh) == 0  # every prefetched block went to the reader


def _stream(repo: streamfs.Repo, path: str, between: Callable[[], None] = lambda: None) -> bytes:
    """``path`` read start to end in 1 MiB reads, as a training loop streams a big file."""
    pieces = []
    with repo.open(path, buffering=0) as f:
        while piece := f.read(1024 * 1024):
            pieces.append(piece)
            between()
    return b"".join(pieces)


def test_a_warm_sequential_read_wakes_no_readahead(
    server: ServerProcess, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # readahead of blocks this process knows are cached would only wake the engine to find
    # them there, while the reader's system calls wait for the interpreter lock
    data = random.Random(10).randbytes(6 * BLOCK_SIZE + 321)
    publish(server, f"alice/{repo_name}", {"video.bin": data}, tmp_path)
    repo = open_repo(server, f"alice/{repo_name}", tmp_path / "cache")
    engine = repo.client.engine
    spawned: list[object] = []
    spawn = engine.spawn
    monkeypatch.setattr(engine, "spawn", lambda fn, *args: spawned.append(fn) or spawn(fn, *args))
    assert _stream(repo, "video.bin") == data
    assert spawned  # the cold read streamed: readahead ran
    wait_for_prefetches(repo)
    spawned.clear()
    before = server.metrics()
    assert _stream(repo, "video.bin") == data
    assert spawned == []
    assert server.metrics()["blob_bytes_sent"] == before["blob_bytes_sent"]


def test_readahead_recalls_the_blocks_another_process_cached(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    data = random.Random(12).randbytes(6 * BLOCK_SIZE + 321)
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, {"video.bin": data}, tmp_path)
    cache = tmp_path / "cache"
    script = (  # the other process: reads the file whole, its blocks written before it exits
        "import streamfs\n"
        f"streamfs.Repo({repo_id!r}, remote={server.url!r}, cache_dir={str(cache)!r})"
        ".read_bytes('video.bin')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    reader = open_repo(server, repo_id, cache)
    before = server.metrics()
    statements: list[str] = []
    connection = reader.client.cache._blocks._cache._con  # this thread's: reads run on it
    connection.set_trace_callback(statements.append)
    try:
        assert _stream(reader, "video.bin", lambda: wait_for_prefetches(reader)) == data
    finally:
        connection.set_trace_callback(None)
    assert server.metrics()["blob_bytes_sent"] == before["blob_bytes_sent"]
    blob = hashlib.sha256(data).hexdigest()
    assert all(reader.client.cache.known(blob, i) for i in range(7))
    # the reads looked up only the blocks they came to before the readahead began; the
    # readahead found the others, a query each time it moved on
    assert len(statements) <= 2


def test_prefetch_can_be_turned_off(server: ServerProcess, repo_name: str, tmp_path: Path) -> None:
    repo_id, files = published_images(server, repo_name, tmp_path, 30)
    before = server.metrics()
    repo = open_repo(server, repo_id, tmp_path / "cache", prefetch=False)
    for path in files:
        assert repo.read_bytes(path) == files[path]
    wait_for_prefetches(repo)
    after = server.metrics()
    assert after["blob_batch_requests"] == before["blob_batch_requests"]
    assert after["blob_get_requests"] - before["blob_get_requests"] == len(files)


def test_a_rotten_blob_in_a_batch_is_never_served(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo_id, files = published_images(server, repo_name, tmp_path, 20)
    victim = "train/img0010.jpg"
    oid = hashlib.sha256(files[victim]).hexdigest()
    stored = server.root / "data" / "objects" / "blob" / oid[:2] / oid[2:]
    with open(stored, "r+b") as f:  # same length, different bytes: the batch stays aligned
        f.seek(100)
        f.write(bytes(b ^ 0xFF for b in files[victim][100:110]))
    repo = open_repo(server, repo_id, tmp_path / "cache")
    for path in ("train/img0000.jpg", "train/img0001.jpg"):
        assert repo.read_bytes(path) == files[path]
    wait_for_prefetches(repo)  # the batch held the victim: refused, fetched alone, refused again
    with pytest.raises(OSError) as info:
        repo.read_bytes(victim)
    assert info.value.errno == errno.EIO
    for path, data in files.items():
        if path != victim:
            assert repo.read_bytes(path) == data
    assert not repo.client.cache.has_block(oid, 0)


def test_decoded_trees_stay_under_the_entry_cap(
    server: ServerProcess, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamfs import _view

    monkeypatch.setattr(_view, "MAX_ENTRIES_IN_MEMORY", 25)
    files = {f"d{d}/f{i:02d}.txt": f"{d}/{i}".encode() for d in range(8) for i in range(10)}
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    repo = open_repo(server, repo_id, tmp_path / "cache", prefetch=False)
    for _ in range(2):  # the second pass decodes dropped trees again, from the disk cache
        for path, data in files.items():
            assert repo.stat(path).st_size == len(data)
            assert repo.read_bytes(path) == data
            assert repo.view._entries <= 25
    with pytest.raises(FileNotFoundError):
        repo.stat("d3/nope.txt")


def test_a_prefetch_naming_a_blob_twice_or_two_repos_resolves_every_claim(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    from streamfs._fetch import BlobRef

    datasets = {
        f"alice/{repo_name}": folder_of_images(6, seed=11),
        f"alice/{repo_name}-b": folder_of_images(6, seed=12),
    }
    refs = []
    for repo_id, files in datasets.items():
        publish(server, repo_id, files, tmp_path)
        owner, name = repo_id.split("/")
        refs += [
            BlobRef(owner, name, hashlib.sha256(d).hexdigest(), len(d)) for d in files.values()
        ]
    repo = open_repo(server, f"alice/{repo_name}", tmp_path / "cache", prefetch=False)
    engine = repo.client.engine
    assert engine.fetcher is not None
    before = server.metrics()
    engine.call(engine.fetcher.prefetch_whole, refs + refs)  # every blob named twice, two repos
    wait_for_prefetches(repo)
    after = server.metrics()
    assert after["blob_batch_blobs"] - before["blob_batch_blobs"] == len(refs)
    assert after["blob_batch_requests"] - before["blob_batch_requests"] == 2  # one per repo
    for repo_id, files in datasets.items():
        reader = open_repo(server, repo_id, tmp_path / "cache", prefetch=False)
        for path, data in files.items():
            assert reader.read_bytes(path) == data
    assert server.metrics()["blob_get_requests"] == after["blob_get_requests"]


def test_a_revision_resolves_with_its_branch_in_one_call(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    from streamfs._errors import RepoNotFoundError, RevisionNotFoundError
    from streamfs._view import RepoView

    def resolve_rev(*args: object, **kwargs: bool) -> tuple[str, str | None]:
        view, branch = RepoView.open_rev(*args, **kwargs)  # type: ignore[arg-type]
        return view.commit_id, branch

    repo_id = f"alice/{repo_name}"
    first = publish(server, repo_id, {"a.txt": b"a"}, tmp_path)
    run_cli(server, "tag", f"{repo_id}@main", "v1")
    head = publish(server, repo_id, {"b.txt": b"b"}, tmp_path)
    assert head != first
    before = server.metrics().get("commit_get_requests", 0)
    repo = open_repo(server, repo_id, tmp_path / "cache")
    assert repo.commit == head and repo.listdir("") == ["a.txt", "b.txt"]
    assert server.metrics().get("commit_get_requests", 0) == before  # it came with the resolve
    client = repo.client
    owner, name = repo_id.split("/")
    assert resolve_rev(client, owner, name, None) == (head, "main")
    assert resolve_rev(client, owner, name, "main") == (head, "main")
    assert resolve_rev(client, owner, name, "main", ask_branch=False) == (head, None)
    assert resolve_rev(client, owner, name, "v1") == (first, None)
    assert resolve_rev(client, owner, name, first) == (first, None)
    # one plain error, as the CLI and the hooks show it, not a group of the parallel questions
    with pytest.raises(RevisionNotFoundError, match="nope"):
        resolve_rev(client, owner, name, "nope")
    with pytest.raises(RepoNotFoundError, match="not found"):
        resolve_rev(client, owner, "no-such-repo", None)


def test_threads_that_open_the_same_new_folder_load_its_tree_once(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    files = {f"d{d}/f{i}.txt": f"{d}/{i}".encode() for d in range(3) for i in range(5)}
    repo_id = f"alice/{repo_name}"
    publish(server, repo_id, files, tmp_path)
    repo = open_repo(server, repo_id, tmp_path / "cache", prefetch=False)
    folder = repo.view.lookup("d1")
    before = server.metrics().get("tree_get_requests", 0)
    start = threading.Barrier(8)
    trees: list[object] = []

    def load() -> None:
        start.wait()
        trees.append(repo.view.tree(folder.id))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trees) == 8 and all(t is trees[0] for t in trees)
    assert server.metrics().get("tree_get_requests", 0) == before + 1
    assert repo.view._loading == {}


def test_closing_the_last_repo_stops_the_engine_and_closes_the_cache(
    server: ServerProcess, big: tuple[str, bytes], tmp_path: Path
) -> None:
    repo_id, data = big
    cache = tmp_path / "cache"

    def engines() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "streamfs-engine"]

    first = open_repo(server, f"{repo_id}@main", cache)
    with open_repo(server, f"{repo_id}@main", cache) as second:
        assert first.read_bytes("small.txt") == b"hello"
        [engine] = engines()
        opened = first.client.cache
        first.close()
        first.close()  # a second close counts for nothing
        assert engines() == [engine]  # the other Repo still holds it
        assert second.read_bytes("big.bin") == data
        assert second.client.cache is opened
    assert engines() == []

    # a Repo that fails to open lets go of what it started
    with pytest.raises(streamfs.RevisionNotFoundError):
        open_repo(server, f"{repo_id}@nope", cache)
    assert engines() == []

    # used again after close, a Repo opens the cache again, as it was left, and reads on
    assert first.client.cache is not opened
    before = server.metrics().get("blob_get_requests", 0)
    assert first.read_bytes("big.bin") == data
    assert server.metrics().get("blob_get_requests", 0) == before
