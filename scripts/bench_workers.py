"""Benchmark workloads, each run in a process of its own by scripts/bench.py.

``python scripts/bench_workers.py ARGS.json`` runs ``ARGS["fn"]`` with the other keys as
arguments and prints one JSON line: the result, plus ``rss_mb``, this process's peak RSS
(for the Python API and hooks, the process that reads is the one that holds the engine, so
its peak RSS is what a mount daemon's is for the mount).

A worker times only its own reading: process start-up and imports are outside the clock.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def machine_state() -> dict[str, float]:
    """What the whole machine has read from its block devices so far (MB, /proc/vmstat's
    pgpgin), the memory it has available (MB), and its CPU time so far by kind (/proc/stat,
    in clock ticks): a warm epoch should read nothing from disk, and did not if its files
    stayed in the page cache; and time stolen by the VM's host is time the readers lost."""
    state = {"disk_read_mb": 0.0, "mem_available_mb": 0.0}
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        kinds = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        state.update({f"cpu_{kind}": float(n) for kind, n in zip(kinds, ticks, strict=True)})
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("pgpgin "):
                    state["disk_read_mb"] = int(line.split()[1]) * 1024 / 1e6
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    state["mem_available_mb"] = int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return state


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of a process in MB, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def shuffled(paths: list[str], seed: int) -> list[str]:
    order = list(paths)
    random.Random(seed).shuffle(order)
    return order


def _epochs(
    read: Callable[[str], int],
    paths: list[str],
    threads: int,
    passes: int,
    seed: int,
    procs: int = 0,
    local_paths: list[str] | None = None,
    stats_ports: list[int] | None = None,
) -> dict[str, Any]:
    """``passes`` epochs over ``paths``, each in a new shuffled order, ``threads`` readers;
    with ``procs``, that many reader processes instead (see _epochs_in_processes).

    With ``local_paths`` (the same files on local disk, in the same order as ``paths``), each
    warm epoch is preceded by one over the local copy in the same shuffled order, by the same
    readers: ``local_passes``, one a warm epoch. The warm target compares these pairs, taken
    seconds apart, instead of figures taken minutes apart in other processes (local disk's
    own warm epochs moved 12,000-16,800 files/s between runs).

    With ``stats_ports`` (the latency proxies' counters, see latency_proxy.read_stats), each
    epoch also records ``fetched``: the bytes the proxies carried to the readers during it.
    bench.py sees only a run's total, and a second epoch through a small cache fetches what
    the first could not keep."""
    epochs = _epochs_in_processes if procs else _epochs_in_threads
    fetched = _fetched_counter(stats_ports) if stats_ports else None
    return epochs(read, paths, local_paths or [], procs or threads, passes, seed, fetched)


def _fetched_counter(stats_ports: list[int]) -> Callable[[], int]:
    from latency_proxy import read_stats  # scripts/ is on sys.path: this file runs from there

    return lambda: sum(read_stats(port)["bytes_down"] for port in stats_ports)


def _epochs_in_threads(
    read: Callable[[str], int],
    paths: list[str],
    local_paths: list[str],
    threads: int,
    passes: int,
    seed: int,
    fetched: Callable[[], int] | None,
) -> dict[str, Any]:
    with ThreadPoolExecutor(threads) as pool:
        return _run_passes(
            lambda fn, order: pool.map(fn, order), read, paths, local_paths, passes, seed, fetched
        )


def _run_passes(
    each: Callable[[Callable[[str], int], list[str]], Iterable[int]],
    read: Callable[[str], int],
    paths: list[str],
    local_paths: list[str],
    passes: int,
    seed: int,
    fetched: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """The timed epochs; ``each(fn, order)`` reads every path of ``order`` with ``fn``.
    ``fetched``, if given, is read before and after each of them, outside its clock."""

    def epoch(fn: Callable[[str], int], order: list[str]) -> dict[str, Any]:
        before = fetched() if fetched else 0
        machine = machine_state()
        t0 = time.perf_counter()
        total = sum(each(fn, order))
        out = {"elapsed": time.perf_counter() - t0, "files": len(order), "bytes": total}
        if fetched:
            out["fetched"] = fetched() - before
        after = machine_state()
        out["disk_read_mb"] = after["disk_read_mb"] - machine["disk_read_mb"]
        out["mem_available_mb"] = machine["mem_available_mb"]  # when it began
        spent = {k: after[k] - machine[k] for k in after if k.startswith("cpu_")}
        out["cpu_share"] = {k[4:]: v / (sum(spent.values()) or 1) for k, v in spent.items()}
        return out

    results: list[dict[str, Any]] = []
    local: list[dict[str, Any]] = []
    for p in range(passes):
        order = shuffled(list(range(len(paths))), seed + p)
        if p and local_paths:
            local.append(epoch(_read_local, [local_paths[i] for i in order]))
        results.append(epoch(read, [paths[i] for i in order]))
    return {"passes": results, "local_passes": local} if local else {"passes": results}


_child_read: Callable[[str], int] | None = None  # what a reader process calls (set before fork)


def _read_in_child(path: str) -> int:
    assert _child_read is not None
    return _child_read(path)


def _epochs_in_processes(
    read: Callable[[str], int],
    paths: list[str],
    local_paths: list[str],
    procs: int,
    passes: int,
    seed: int,
    fetched: Callable[[], int] | None,
) -> dict[str, Any]:
    """Epochs read by ``procs`` processes, as a PyTorch DataLoader with that many workers does
    on Linux: forked (its default there) once the dataset exists (a Repo made, hooks installed)
    and kept for every epoch (``persistent_workers``), each reading its share of a shuffled
    order, 16 files at a time. ``children_rss_mb``: the peak RSS of the largest of them."""
    global _child_read
    _child_read = read
    with multiprocessing.get_context("fork").Pool(procs) as pool:

        def each(fn: Callable[[str], int], order: list[str]) -> Iterable[int]:
            # ``read`` may be a closure, which a pool cannot pickle: the child calls it
            return pool.imap_unordered(_read_in_child if fn is read else fn, order, chunksize=16)

        out = _run_passes(each, read, paths, local_paths, passes, seed, fetched)
        pool.close()
        pool.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6
    return {**out, "children_rss_mb": largest}


_local_open = open  # the real one: a hooked process reads local disk as any program would


def _read_local(path: str) -> int:
    with _local_open(path, "rb") as f:
        return len(f.read())


def _read_path(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def _load_paths(paths_file: str, root: str) -> list[str]:
    rel = json.loads(Path(paths_file).read_text())
    return [os.path.join(root, p) for p in rel] if root else rel


def _paths_and_local(paths_file: str, root: str, local_root: str) -> tuple[list[str], list[str]]:
    """The paths under ``root``, and the same files under ``local_root`` (none without it)."""
    local = _load_paths(paths_file, local_root) if local_root else []
    return _load_paths(paths_file, root), local


def _repo(spec: str, remote: str, cache_dir: str, cache_size: int | None = None) -> Any:
    import streamfs

    return streamfs.Repo(spec, remote=remote, cache_dir=cache_dir, cache_size=cache_size)


def _install_hooks(spec: str, remote: str, cache_dir: str, path: str) -> None:
    os.environ["STREAMFS_REMOTE"] = remote
    os.environ["STREAMFS_CACHE_DIR"] = cache_dir
    import streamfs

    streamfs.install_hooks(spec, path)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ small files


def fs_epochs(
    root: str,
    paths_file: str,
    threads: int,
    passes: int,
    seed: int,
    procs: int = 0,
    local_root: str = "",
    stats_ports: list[int] | None = None,
) -> dict[str, Any]:
    paths, local = _paths_and_local(paths_file, root, local_root)
    return _epochs(_read_path, paths, threads, passes, seed, procs, local, stats_ports)


def api_epochs(
    spec: str,
    remote: str,
    cache_dir: str,
    paths_file: str,
    threads: int,
    passes: int,
    seed: int,
    procs: int = 0,
    local_root: str = "",
    cache_size: int | None = None,
    stats_ports: list[int] | None = None,
) -> dict[str, Any]:
    repo = _repo(spec, remote, cache_dir, cache_size)
    paths, local = _paths_and_local(paths_file, "", local_root)
    read = lambda p: len(repo.read_bytes(p))  # noqa: E731
    return _epochs(read, paths, threads, passes, seed, procs, local, stats_ports)


def hooks_epochs(
    spec: str,
    remote: str,
    cache_dir: str,
    root: str,
    paths_file: str,
    threads: int,
    passes: int,
    seed: int,
    procs: int = 0,
    local_root: str = "",
) -> dict[str, Any]:
    _install_hooks(spec, remote, cache_dir, root)
    paths, local = _paths_and_local(paths_file, root, local_root)
    return _epochs(_read_path, paths, threads, passes, seed, procs, local)


# ------------------------------------------------------------------ one big file


def _seq_pass(readinto: Callable[[memoryview], int]) -> dict[str, float]:
    buf = memoryview(bytearray(MiB))
    total = 0
    t0 = time.perf_counter()
    while n := readinto(buf):
        total += n
    return {"elapsed": time.perf_counter() - t0, "bytes": total}


def fs_seq(path: str, passes: int) -> dict[str, Any]:
    results = []
    for _ in range(passes):
        with open(path, "rb", buffering=0) as f:
            results.append(_seq_pass(f.readinto))
    return {"passes": results}


def api_seq(spec: str, remote: str, cache_dir: str, path: str, passes: int) -> dict[str, Any]:
    repo = _repo(spec, remote, cache_dir)
    results = []
    for _ in range(passes):
        with repo.raw_open(path) as f:
            results.append(_seq_pass(f.readinto))
    return {"passes": results}


def hooks_seq(
    spec: str, remote: str, cache_dir: str, root: str, path: str, passes: int
) -> dict[str, Any]:
    _install_hooks(spec, remote, cache_dir, root)
    return fs_seq(os.path.join(root, path), passes)


def _random(read_at: Callable[[int, int], int], offsets: list[int], size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    total = sum(read_at(off, size) for off in offsets)
    return {"elapsed": time.perf_counter() - t0, "reads": len(offsets), "bytes": total}


def fs_random(path: str, offsets: list[int], size: int) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _random(lambda off, n: len(os.pread(fd, n, off)), offsets, size)
    finally:
        os.close(fd)


def api_random(
    spec: str, remote: str, cache_dir: str, path: str, offsets: list[int], size: int
) -> dict[str, Any]:
    repo = _repo(spec, remote, cache_dir)
    with repo.raw_open(path) as f:

        def read_at(off: int, n: int) -> int:
            f.seek(off)
            return len(f.read(n))

        return _random(read_at, offsets, size)


def hooks_random(
    spec: str, remote: str, cache_dir: str, root: str, path: str, offsets: list[int], size: int
) -> dict[str, Any]:
    _install_hooks(spec, remote, cache_dir, root)
    # os.pread on a hooked path is not Python's open(): use the file object hooks give
    with open(os.path.join(root, path), "rb", buffering=0) as f:

        def read_at(off: int, n: int) -> int:
            f.seek(off)
            return len(f.read(n))

        return _random(read_at, offsets, size)


# ------------------------------------------------------------------ download everything


def download_httpx(
    base: str, items_file: str, dest: str, connections: int, piece: int = 8 * MiB
) -> dict[str, Any]:
    """Every blob of ``items`` (path, id, size) with ``connections`` parallel GETs on trio;
    blobs larger than ``piece`` in parallel range requests. Written to disk, not verified
    (the baseline gets the cheapest settings: streamfs hashes every block it serves)."""
    import httpx
    import trio

    from streamfs._realos import write_all

    items = json.loads(Path(items_file).read_text())
    for folder in {os.path.dirname(os.path.join(dest, p)) for p, _, _ in items}:
        os.makedirs(folder, exist_ok=True)

    async def main() -> int:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        timeout = httpx.Timeout(120.0)
        total = 0
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
            sem = trio.Semaphore(connections)

            async def get(oid: str, path: str, start: int, end: int, whole: bool) -> None:
                nonlocal total
                async with sem:
                    headers = {} if whole else {"Range": f"bytes={start}-{end - 1}"}
                    r = await client.get(f"/blobs/{oid}", headers=headers)
                    r.raise_for_status()
                # opened per piece, as curl does: 20,000 files open at once exceed the fd limit
                fd = os.open(path, os.O_WRONLY | os.O_CREAT)
                try:
                    # in the pieces streamfs writes its cache in: big writes are slow on this
                    # VM (see streamfs._realos.write_all), and the baseline gets its best
                    os.lseek(fd, start, os.SEEK_SET)
                    write_all(fd, r.content)
                finally:
                    os.close(fd)
                total += len(r.content)

            async with trio.open_nursery() as nursery:
                for rel, oid, size in items:
                    path = os.path.join(dest, rel)
                    for start in range(0, max(size, 1), piece):
                        end = min(size, start + piece)
                        nursery.start_soon(get, oid, path, start, end, size <= piece)
        return total

    t0 = time.perf_counter()
    total = trio.run(main)
    return {"elapsed": time.perf_counter() - t0, "files": len(items), "bytes": total}


def download_curl(base: str, items_file: str, dest: str, connections: int) -> dict[str, Any]:
    """The same with curl --parallel (C, connection reuse): one GET per blob."""
    items = json.loads(Path(items_file).read_text())
    config = Path(dest).with_suffix(".curlrc")
    lines = []
    for rel, oid, _ in items:
        lines.append(f'url = "{base}/blobs/{oid}"\noutput = "{os.path.join(dest, rel)}"\n')
    config.write_text("".join(lines))
    cmd = ["curl", "-sSf", "--create-dirs", "--parallel", "--parallel-max", str(connections)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "-K", str(config)], check=True)
    elapsed = time.perf_counter() - t0
    total = sum(size for _, _, size in items)
    return {"elapsed": elapsed, "files": len(items), "bytes": total}


def download_curl_signed(base: str, items_file: str, dest: str, connections: int) -> dict[str, Any]:
    """curl --parallel from the blob front: URLs signed by the API (``POST blobs/urls``, 1,000
    a request, timed too), then one GET per blob from nginx, which reads the store's files."""
    items = json.loads(Path(items_file).read_text())
    import httpx

    config = Path(dest).with_suffix(".curlrc")
    t0 = time.perf_counter()
    urls: list[str] = []
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(items), 1000):
            ids = [oid for _, oid, _ in items[start : start + 1000]]
            answer = client.post(f"{base}/blobs/urls", json={"ids": ids})
            answer.raise_for_status()
            if answer.json()["urls"] is None:
                raise RuntimeError("the server has no blob front")
            urls += answer.json()["urls"]
    lines = [
        f'url = "{url}"\noutput = "{os.path.join(dest, rel)}"\n'
        for (rel, _, _), url in zip(items, urls, strict=True)
    ]
    config.write_text("".join(lines))
    cmd = ["curl", "-sSf", "--create-dirs", "--parallel", "--parallel-max", str(connections)]
    subprocess.run([*cmd, "-K", str(config)], check=True)
    elapsed = time.perf_counter() - t0
    total = sum(size for _, _, size in items)
    return {"elapsed": elapsed, "files": len(items), "bytes": total}


def download_curl_batches(
    base: str, items_file: str, dest: str, connections: int, per_batch: int = 64
) -> dict[str, Any]:
    """curl --parallel over ``POST blobs/batch``: 64 blobs a request, each batch one file.

    The fastest full fetch our server offers for small files. Each response is
    written as it comes (not split into files), which flatters the baseline a little.
    """
    items = json.loads(Path(items_file).read_text())
    Path(dest).mkdir(parents=True, exist_ok=True)
    config = Path(dest).with_suffix(".curlrc")
    lines = []
    for n, start in enumerate(range(0, len(items), per_batch)):
        ids = [oid for _, oid, _ in items[start : start + per_batch]]
        body = json.dumps({"ids": ids}).replace('"', '\\"')
        lines.append(  # "next": each POST its own body and headers (they would add up)
            ("next\n" if n else "")
            + f'url = "{base}/blobs/batch"\noutput = "{os.path.join(dest, f"batch{n}")}"\n'
            + f'fail\nheader = "Content-Type: application/json"\ndata = "{body}"\n'
        )
    config.write_text("".join(lines))
    cmd = ["curl", "-sSf", "--parallel", "--parallel-max", str(connections)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "-K", str(config)], check=True)
    elapsed = time.perf_counter() - t0
    total = sum(size for _, _, size in items)
    written = sum(f.stat().st_size for f in Path(dest).glob("batch*"))
    if written != total:
        raise RuntimeError(f"batched download wrote {written} bytes, expected {total}")
    return {"elapsed": elapsed, "files": len(items), "bytes": total}


# ------------------------------------------------------------------ listing


def fs_find(root: str) -> dict[str, Any]:
    """``find ROOT -printf '%s'``: readdir plus a stat of every entry, in C."""
    t0 = time.perf_counter()
    out = subprocess.run(["find", root, "-printf", "%s\n"], check=True, capture_output=True).stdout
    elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "entries": out.count(b"\n")}


def api_walk_stat(spec: str, remote: str, cache_dir: str) -> dict[str, Any]:
    repo = _repo(spec, remote, cache_dir)
    t0 = time.perf_counter()
    entries = 0
    for dirpath, dirs, files in repo.walk(""):
        for name in (*dirs, *files):
            repo.stat(f"{dirpath}/{name}" if dirpath else name)
            entries += 1
    return {"elapsed": time.perf_counter() - t0, "entries": entries}


# ------------------------------------------------------------------ time to first byte


def api_first_byte(spec: str, remote: str, cache_dir: str, path: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    repo = _repo(spec, remote, cache_dir)
    with repo.raw_open(path) as f:
        n = len(f.read(1))
    return {"elapsed": time.perf_counter() - t0, "bytes": n}


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    fn = globals()[args.pop("fn")]
    result = fn(**args)
    # the process that reads holds the engine; with reader processes, the largest of them
    result["rss_mb"] = max(peak_rss_mb(), result.pop("children_rss_mb", 0.0))
    result["threads_left"] = threading.active_count()
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # engines and hooks run daemon threads: do not wait for them


if __name__ == "__main__":
    main()
