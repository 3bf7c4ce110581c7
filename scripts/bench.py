"""`make bench`: streamfs side by side with the baselines a user would pick instead.

Everything is measured in one invocation, on this machine, against one local
``streamfs serve`` and one nginx (or ``rclone serve http``) over the same bytes, each
behind scripts/latency_proxy.py so that every HTTP path pays the same RTT. Reports
are ratios between systems measured in the same run (these machines are small and
noisy), written to docs/benchmarks.md (tables, targets PASS/MISS) and a JSON file
with every run.

    python scripts/bench.py [--quick] [--rtt 0,20ms] [--runs N] [--only epoch,seq]
                            [--bandwidth 1Gbit] [--out docs/benchmarks.md]
                            [--json .bench/results.json]

Workloads: ttfb, epoch, loader (the epochs with reader processes), seq, random, meta, upload
(see docs/benchmarks.md, "Method").
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
WORK = ROOT / ".bench"
sys.path.insert(0, str(SCRIPTS))
os.environ.setdefault("STREAMFS_STATE_DIR", str(WORK / "state"))

import bench_data as data  # noqa: E402
import bench_report as report  # noqa: E402
from bench_infra import (  # noqa: E402
    BLOB_FRONT_PATH,
    PY,
    Proxy,
    RcloneMount,
    StreamfsMount,
    force_unmount,
    free_port,
    has_journal,
    scratch_disk,
    server_metrics,
    start_blob_front,
    start_file_server,
    start_server,
    streamfs_cli,
)
from latency_proxy import parse_duration  # noqa: E402

T = TypeVar("T")

MiB = 1024 * 1024
WORKLOADS = ("ttfb", "epoch", "loader", "smallcache", "seq", "random", "meta", "upload")
READERS = 8
DOWNLOAD_CONNECTIONS = 32
WARM_PASSES = 3  # warm figures are the median of these passes after the cold one
LOCAL_COPY = "local-"  # local_copy's folders in the scratch folder, kept across a run's systems


@dataclass
class Run:
    """What one benchmark invocation knows: settings, data, processes, results."""

    sizes: data.Sizes
    sets: data.Datasets
    server_url: str
    logs: Path
    hooks: bool
    rclone: bool
    http_kind: str
    bandwidth: str | None
    quick: bool = False
    rtt_ms: float = 0.0
    sf: Proxy | None = None
    http: Proxy | None = None
    front: Proxy | None = None  # in front of nginx serving signed blob URLs (--blob-front)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    small_bytes: int = 0
    big_bytes: int = 0

    @property
    def remote(self) -> str:
        assert self.sf is not None
        return self.sf.url

    @property
    def http_url(self) -> str:
        assert self.http is not None
        return self.http.url

    @property
    def proxies(self) -> list[Proxy]:
        return [p for p in (self.sf, self.http, self.front) if p is not None]

    def counters(self) -> dict[str, int]:
        out = {"down": 0, "up": 0}
        for proxy in self.proxies:
            stats = proxy.stats()
            out["down"] += stats["bytes_down"]
            out["up"] += stats["bytes_up"]
        served = server_metrics(self.server_url)
        out["blob_sent"] = served.get("blob_bytes_sent", 0)
        out["blob_gets"] = served.get("blob_get_requests", 0)
        out["batches"] = served.get("blob_batch_requests", 0)
        return out

    def measure(
        self, workload: str, system: str, run: int, fn: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        clear_outputs()
        before = self.counters()
        t0 = time.perf_counter()
        try:
            metrics = fn()
        except Exception as exc:
            metrics = {"error": f"{type(exc).__name__}: {exc}"}
            with open(self.logs / "errors.log", "a") as f:
                f.write(f"--- {workload} / {system} / run {run} / rtt {self.rtt_ms}\n")
                f.write(traceback.format_exc())
        after = self.counters()
        record = {
            "rtt_ms": self.rtt_ms,
            "workload": workload,
            "system": system,
            "run": run,
            "wall_s": time.perf_counter() - t0,
            "bytes_down": after["down"] - before["down"],
            "bytes_up": after["up"] - before["up"],
            "blob_bytes_sent": after["blob_sent"] - before["blob_sent"],
            # a file read before prefetching reached it is one GET; prefetched ones come in batches
            "blob_get_requests": after["blob_gets"] - before["blob_gets"],
            "blob_batch_requests": after["batches"] - before["batches"],
            **metrics,
        }
        self.records.append(record)
        shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
        print(
            f"  [{self.rtt_ms:g} ms] {workload:<7} {system:<42} run {run}: "
            f"{metrics.get('error') or shown}",
            flush=True,
        )
        return record


# --------------------------------------------------------------------------- helpers


def clear_outputs() -> None:
    """Delete what earlier systems left in the scratch folder (caches, downloads, new files).

    Each system then starts right after the memory of the one before it was freed. On this
    VM that matters: a cache written into memory freed a while ago (handed back to the
    host) cost the first system of a run up to 2x its speed (see "Order" in
    docs/benchmarks.md).
    """
    for path in (WORK / "run").iterdir():
        if path.is_dir() and path.name != "lost+found" and not path.name.startswith(LOCAL_COPY):
            remove(path)


def remove(path: Path) -> None:
    """Delete a scratch folder, unmounting it first if a mount was left on it."""
    force_unmount(path)
    shutil.rmtree(path, ignore_errors=True)


def in_turn(systems: list[T], run: int) -> list[T]:
    """The systems in this run's order: rotated by one a run, so that no system is always the
    first after a quiet spell (the previous workload, the publish step)."""
    k = run % len(systems)
    return systems[k:] + systems[:k]


def fresh(name: str) -> Path:
    path = WORK / "run" / name
    if path.exists():
        remove(path)
    path.mkdir(parents=True)
    return path


def worker(fn: str, timeout: float = 1800, **kwargs: Any) -> dict[str, Any]:
    """Run ``bench_workers.fn(**kwargs)`` in a new process; its JSON result."""
    args_file = WORK / "run" / f"args-{fn}.json"
    args_file.parent.mkdir(parents=True, exist_ok=True)
    args_file.write_text(json.dumps({"fn": fn, **kwargs}))
    proc = subprocess.run(
        [PY, str(SCRIPTS / "bench_workers.py"), str(args_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {fn} failed: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def client_worker(ctx: Run, fn: str, spec: str, **kwargs: Any) -> dict[str, Any]:
    """A worker that reads ``spec`` through the Python API, from a fresh cache."""
    return worker(fn, spec=spec, remote=ctx.remote, cache_dir=str(fresh("cache")), **kwargs)


def hooks_worker(ctx: Run, fn: str, spec: str, **kwargs: Any) -> dict[str, Any]:
    """A worker that reads ``spec`` through install_hooks, from a fresh cache."""
    return client_worker(ctx, fn, spec, root=str(WORK / "run" / "hooked"), **kwargs)


@contextlib.contextmanager
def sf_mount(ctx: Run, spec: str, *extra: str) -> Iterator[StreamfsMount]:
    point, cache = fresh("mnt"), fresh("cache")
    mount = StreamfsMount(spec, point, ctx.remote, cache, ctx.logs / "mount.log", *extra)
    try:
        yield mount
    finally:
        mount.stop()


@contextlib.contextmanager
def rclone_mount(ctx: Run, sub: str, profile: str = "stream") -> Iterator[RcloneMount]:
    point, cache = fresh("rclone-mnt"), fresh("rclone-cache")
    mount = RcloneMount(
        f"{ctx.http_url}/{sub}/", point, cache, ctx.logs / "rclone.log", profile=profile
    )
    try:
        yield mount
    finally:
        mount.stop()


def epoch_metrics(result: dict[str, Any], rss: float, fetched: int | None = None) -> dict[str, Any]:
    passes = result["passes"]
    out = {
        "epoch1_files_s": passes[0]["files"] / passes[0]["elapsed"],
        "epoch1_MBps": passes[0]["bytes"] / passes[0]["elapsed"] / 1e6,
        "rss_mb": rss,
    }
    local = result.get("local_passes")
    if len(passes) > 1:  # warm: the median of the passes after the first (short, so noisy)
        out["epoch2_files_s"] = statistics.median(p["files"] / p["elapsed"] for p in passes[1:])
        # a warm epoch reads nothing from disk unless memory ran short (whole machine, MB)
        warm = passes[1:] + (local or [])
        out["warm_disk_read_mb"] = sum(p.get("disk_read_mb", 0.0) for p in warm)
        out["warm_mem_available_mb"] = min(p.get("mem_available_mb", 0.0) for p in warm)
        # the machine's CPU in this system's warm epochs by kind (idle, steal, ...): a median
        mine = [p["cpu_share"] for p in passes[1:] if "cpu_share" in p]
        if mine:
            out["warm_cpu_share"] = {k: statistics.median(c[k] for c in mine) for k in mine[0]}
    if local:  # local disk's warm epochs, each read just before one of these (same order)
        rates = [p["files"] / p["elapsed"] for p in local]
        out["epoch2_local_files_s"] = statistics.median(rates)
        out["epoch2_vs_local"] = statistics.median(
            p["files"] / p["elapsed"] / rate for p, rate in zip(passes[1:], rates, strict=True)
        )
    return out


def seq_metrics(result: dict[str, Any], rss: float) -> dict[str, Any]:
    passes = result["passes"]
    out = {"cold_MBps": passes[0]["bytes"] / passes[0]["elapsed"] / 1e6, "rss_mb": rss}
    if len(passes) > 1:
        out["warm_MBps"] = statistics.median(p["bytes"] / p["elapsed"] / 1e6 for p in passes[1:])
    return out


def add_fetched(record: dict[str, Any], total: int) -> None:
    if "error" not in record and total:
        record["fetched_ratio"] = record["bytes_down"] / total


# --------------------------------------------------------------------------- workloads


def w_ttfb(ctx: Run, run: int) -> None:
    cases = [
        ("10 entries", "bench/tiny@v1", ctx.sets.tiny[0]),
        ("big listing", "bench/meta@v1", data.meta_paths(1)[0]),
    ]
    for label, spec, path in cases:

        def mount_ttfb(spec: str = spec, path: str = path) -> dict[str, Any]:
            point, cache = fresh("mnt"), fresh("cache")
            t0 = time.perf_counter()
            mount = StreamfsMount(spec, point, ctx.remote, cache, ctx.logs / "mount.log")
            try:
                mounted = time.perf_counter() - t0
                with open(point / path, "rb") as f:
                    f.read(1)
                ttfb = time.perf_counter() - t0
                return {"ttfb_s": ttfb, "mount_s": mounted, "rss_mb": mount.rss_mb()}
            finally:
                mount.stop()

        ctx.measure("ttfb", f"{report.MOUNT}, {label}", run, mount_ttfb)

        def api_ttfb(spec: str = spec, path: str = path) -> dict[str, Any]:
            r = client_worker(ctx, "api_first_byte", spec, path=path)
            return {"ttfb_s": r["elapsed"], "rss_mb": r["rss_mb"]}

        ctx.measure("ttfb", f"{report.API}, {label}", run, api_ttfb)
    if ctx.rclone:

        def rclone_ttfb() -> dict[str, Any]:
            point, cache = fresh("rclone-mnt"), fresh("rclone-cache")
            t0 = time.perf_counter()
            mount = RcloneMount(f"{ctx.http_url}/small/", point, cache, ctx.logs / "rclone.log")
            try:
                mounted = time.perf_counter() - t0
                with open(point / ctx.sets.small[0], "rb") as f:
                    f.read(1)
                return {
                    "ttfb_s": time.perf_counter() - t0,
                    "mount_s": mounted,
                    "rss_mb": mount.rss_mb(),
                }
            finally:
                mount.stop()

        ctx.measure("ttfb", f"{report.RCLONE}, small files", run, rclone_ttfb)


def _epoch_args(run: int, passes: int, procs: int = 0) -> dict[str, Any]:
    """What every epochs worker over the small files is given (bench_workers.fs_epochs ...)."""
    paths_file = str(WORK / "small-paths.json")
    return {
        "paths_file": paths_file,
        "threads": READERS,
        "procs": procs,
        "passes": passes,
        "seed": run,
    }


def w_epoch(ctx: Run, run: int, workload: str = "epoch", procs: int = 0) -> None:
    """Epochs over the small files: 8 reader threads of one process; with ``procs``, that many
    reader processes (w_loader)."""
    common = _epoch_args(run, WARM_PASSES + 1, procs)
    spec = "bench/small@v1"
    local_root = local_copy(ctx, "small")
    # streamfs's warm epochs alternate with local disk's, in the same process (epoch_metrics)
    paired = {**common, "local_root": str(local_root)}

    def mount() -> dict[str, Any]:
        with sf_mount(ctx, spec) as m:
            r = worker("fs_epochs", root=str(m.point), **paired)
            return epoch_metrics(r, m.rss_mb())

    def api() -> dict[str, Any]:
        r = client_worker(ctx, "api_epochs", spec, **paired)
        return epoch_metrics(r, r["rss_mb"])

    def hooks() -> dict[str, Any]:
        r = hooks_worker(ctx, "hooks_epochs", spec, **paired)
        return epoch_metrics(r, r["rss_mb"])

    def download(fn: str) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            r = worker(
                fn,
                base=f"{ctx.remote}/v1/repos/bench/small",
                items_file=str(WORK / "small-items.json"),
                dest=str(fresh("download")),
                connections=DOWNLOAD_CONNECTIONS,
            )
            return {
                "epoch1_files_s": r["files"] / r["elapsed"],
                "epoch1_MBps": r["bytes"] / r["elapsed"] / 1e6,
                "rss_mb": r["rss_mb"],
            }

        return go

    def local() -> dict[str, Any]:
        r = worker("fs_epochs", root=str(local_root), **common)
        return epoch_metrics(r, r["rss_mb"])

    def rclone() -> dict[str, Any]:
        with rclone_mount(ctx, "small") as m:
            r = worker("fs_epochs", root=str(m.point), **common)
            return epoch_metrics(r, m.rss_mb())

    systems = [(report.MOUNT, mount), (report.API, api)]
    systems += [(report.HOOKS, hooks)] if ctx.hooks else []
    if workload == "epoch":  # quick: curl only (the faster of the two everywhere we measured)
        systems += [] if ctx.quick else [(report.DL_HTTPX, download("download_httpx"))]
        systems += [(report.DL_CURL, download("download_curl"))]
    systems += [(report.DL_BATCH, download("download_curl_batches"))]  # the fastest, always
    systems += [(report.DL_FRONT, download("download_curl_signed"))] if ctx.front else []
    systems += [(report.LOCAL, local)] + ([(report.RCLONE, rclone)] if ctx.rclone else [])
    for name, fn in in_turn(systems, run):
        record = ctx.measure(workload, name, run, fn)
        add_fetched(record, ctx.small_bytes)
        if "error" not in record:  # files fetched by a request of their own, not in a batch
            record["gets_per_file"] = record["blob_get_requests"] / len(ctx.sets.small)
    remove(local_root)


def local_copy(ctx: Run, name: str) -> Path:
    """A fresh copy of a dataset (``small``, ``big``) on local disk, what a download leaves
    there, made at the start of each run of a workload: local disk's reads are of it. The
    generated files themselves read 10-25 % slower than a copy of them once hours of other
    workloads had passed over the machine (session 49; not where their bytes sit in the page
    cache, the cause not wholly found), while the streamfs cache files a warm read finds were
    written minutes before. In the scratch folder, beside those caches; written out to disk
    before the systems' cold reads begin."""
    dest = fresh(LOCAL_COPY + name)
    shutil.copytree(ctx.sets.root / name, dest, dirs_exist_ok=True)
    os.sync()
    return dest


def w_loader(ctx: Run, run: int) -> None:
    """The epochs again, read by 8 processes instead of 8 threads: a PyTorch DataLoader with 8
    workers, forked once the dataset exists (see bench_workers._epochs_in_processes). Python
    readers (the API, the hooks) then run on every core instead of under one interpreter lock,
    and so does local disk's."""
    w_epoch(ctx, run, workload="loader", procs=READERS)


def w_smallcache(ctx: Run, run: int) -> None:
    """Two epochs over the small files through a cache half their size (a dataset bigger than
    the disk a user gives it): 8 reader threads through the mount and the API, and 8 reader
    processes through the API. Prefetched files wait for their readers in such a cache; what
    counts is that each file is fetched as few times as the cache allows (bytes fetched /
    dataset, each epoch's own: at best 1 in the first, and in the second the half that could
    not be kept) and the pace. The workers read the proxies' counters between the epochs."""
    size = ctx.small_bytes // 2
    common = {**_epoch_args(run, 2), "stats_ports": [p.stats_port for p in ctx.proxies]}
    spec = "bench/small@v1"

    def metrics(r: dict[str, Any], rss: float) -> dict[str, Any]:
        out = epoch_metrics(r, rss)
        for i, p in enumerate(r["passes"], 1):
            out[f"epoch{i}_fetched_ratio"] = p["fetched"] / ctx.small_bytes
        return out

    def mount() -> dict[str, Any]:
        with sf_mount(ctx, spec, "--cache-size", str(size)) as m:
            r = worker("fs_epochs", root=str(m.point), **common)
            return metrics(r, m.rss_mb())

    def api(procs: int) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            args = {**common, "procs": procs}
            r = client_worker(ctx, "api_epochs", spec, cache_size=size, **args)
            return metrics(r, r["rss_mb"])

        return go

    systems = [
        (report.MOUNT, mount),
        (report.API, api(0)),
        (f"{report.API}, 8 reader processes", api(READERS)),
    ]
    for name, fn in in_turn(systems, run):
        add_fetched(ctx.measure("smallcache", name, run, fn), ctx.small_bytes)


def w_seq(ctx: Run, run: int) -> None:
    spec, path = "bench/big@v1", ctx.sets.big
    local_root = local_copy(ctx, "big")

    def mount() -> dict[str, Any]:
        with sf_mount(ctx, spec) as m:
            r = worker("fs_seq", path=str(m.point / path), passes=WARM_PASSES + 1)
            return seq_metrics(r, m.rss_mb())

    def api() -> dict[str, Any]:
        r = client_worker(ctx, "api_seq", spec, path=path, passes=WARM_PASSES + 1)
        return seq_metrics(r, r["rss_mb"])

    def hooks() -> dict[str, Any]:
        r = hooks_worker(ctx, "hooks_seq", spec, path=path, passes=WARM_PASSES + 1)
        return seq_metrics(r, r["rss_mb"])

    def download(fn: str, connections: int) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            r = worker(
                fn,
                base=f"{ctx.remote}/v1/repos/bench/big",
                items_file=str(WORK / "big-items.json"),
                dest=str(fresh("download")),
                connections=connections,
            )
            return {"cold_MBps": r["bytes"] / r["elapsed"] / 1e6, "rss_mb": r["rss_mb"]}

        return go

    def local() -> dict[str, Any]:
        r = worker("fs_seq", path=str(local_root / path), passes=WARM_PASSES + 1)
        return seq_metrics(r, r["rss_mb"])

    def rclone() -> dict[str, Any]:
        with rclone_mount(ctx, "big") as m:
            r = worker("fs_seq", path=str(m.point / path), passes=WARM_PASSES + 1)
            return seq_metrics(r, m.rss_mb())

    systems = [(report.MOUNT, mount), (report.API, api)]
    systems += [(report.HOOKS, hooks)] if ctx.hooks and not ctx.quick else []
    systems += [
        (report.DL_HTTPX, download("download_httpx", 16)),
        (report.DL_CURL, download("download_curl", 1)),
    ]
    systems += [(report.DL_FRONT, download("download_curl_signed", 1))] if ctx.front else []
    systems += [(report.LOCAL, local)] + ([(report.RCLONE, rclone)] if ctx.rclone else [])
    for name, fn in in_turn(systems, run):
        add_fetched(ctx.measure("seq", name, run, fn), ctx.big_bytes)
    remove(local_root)


def w_random(ctx: Run, run: int) -> None:
    spec, path, size = "bench/big@v1", ctx.sets.big, MiB
    rng = random.Random(100 + run)
    offsets = [rng.randrange(0, ctx.big_bytes - size) for _ in range(ctx.sizes.random_reads)]

    def metrics(r: dict[str, Any], rss: float) -> dict[str, Any]:
        return {"reads_s": r["reads"] / r["elapsed"], "bytes_read": r["bytes"], "rss_mb": rss}

    def mount() -> dict[str, Any]:
        with sf_mount(ctx, spec) as m:
            r = worker("fs_random", path=str(m.point / path), offsets=offsets, size=size)
            return metrics(r, m.rss_mb())

    def api() -> dict[str, Any]:
        r = client_worker(ctx, "api_random", spec, path=path, offsets=offsets, size=size)
        return metrics(r, r["rss_mb"])

    def hooks() -> dict[str, Any]:
        r = hooks_worker(ctx, "hooks_random", spec, path=path, offsets=offsets, size=size)
        return metrics(r, r["rss_mb"])

    def local() -> dict[str, Any]:
        r = worker("fs_random", path=str(ctx.sets.root / "big" / path), offsets=offsets, size=size)
        return metrics(r, r["rss_mb"])

    def rclone() -> dict[str, Any]:
        with rclone_mount(ctx, "big", profile="random") as m:
            r = worker("fs_random", path=str(m.point / path), offsets=offsets, size=size)
            return metrics(r, m.rss_mb())

    systems = [(report.MOUNT, mount), (report.API, api)]
    systems += [(report.HOOKS, hooks)] if ctx.hooks and not ctx.quick else []
    systems += [(report.LOCAL, local)] + ([(report.RCLONE, rclone)] if ctx.rclone else [])
    for name, fn in in_turn(systems, run):
        record = ctx.measure("random", name, run, fn)
        if "error" not in record and name != report.LOCAL:
            record["amplification"] = record["bytes_down"] / record["bytes_read"]


def w_meta(ctx: Run, run: int) -> None:
    spec = "bench/meta@v1"

    def metrics(r: dict[str, Any], rss: float) -> dict[str, Any]:
        return {"entries_s": r["entries"] / r["elapsed"], "entries": r["entries"], "rss_mb": rss}

    def mount() -> dict[str, Any]:
        with sf_mount(ctx, spec) as m:
            r = worker("fs_find", root=str(m.point))
            return metrics(r, m.rss_mb())

    def api() -> dict[str, Any]:
        r = client_worker(ctx, "api_walk_stat", spec)
        return metrics(r, r["rss_mb"])

    def local() -> dict[str, Any]:
        r = worker("fs_find", root=str(ctx.sets.root / "meta"))
        return metrics(r, r["rss_mb"])

    def rclone() -> dict[str, Any]:
        with rclone_mount(ctx, "meta") as m:
            r = worker("fs_find", root=str(m.point))
            return metrics(r, m.rss_mb())

    systems = [(report.MOUNT, mount), (report.API, api), (report.LOCAL, local)]
    # rclone's http backend sends a HEAD per file to learn its size (~entries/32 round trips),
    # so it lists slowly: one run only, and only for a listing of at most 100,000 entries
    if ctx.rclone and ctx.sizes.meta_entries <= 100_000 and run == 0:
        systems.append((report.RCLONE, rclone))
    for name, fn in in_turn(systems, run):
        ctx.measure("meta", name, run, fn)


def w_upload(ctx: Run, run: int) -> None:
    n = ctx.sizes.upload_files
    tag = f"r{int(ctx.rtt_ms)}x{run}"

    def cli() -> dict[str, Any]:
        new = WORK / "run" / "new"
        total = data.make_new_files(new, n, seed=zlib.crc32(f"{tag}-cli".encode()))
        branch = f"up-cli-{tag}"
        streamfs_cli(
            "branch", "bench/small@main", branch, log=ctx.logs / "cli.log", remote=ctx.server_url
        )
        before = ctx.counters()["up"]
        t0 = time.perf_counter()
        streamfs_cli(
            "upload",
            f"bench/small@{branch}",
            str(new),
            "--to",
            "new",
            "-m",
            "bench upload",
            log=ctx.logs / "cli.log",
            remote=ctx.remote,
        )
        elapsed = time.perf_counter() - t0
        sent = ctx.counters()["up"] - before
        return {
            "seconds": elapsed,
            "files_s": n / elapsed,
            "sent_ratio": sent / total,
            "new_bytes": total,
        }

    def mount() -> dict[str, Any]:
        new = WORK / "run" / "new"
        total = data.make_new_files(new, n, seed=zlib.crc32(f"{tag}-mount".encode()))
        branch = f"up-mount-{tag}"
        streamfs_cli(
            "branch", "bench/small@main", branch, log=ctx.logs / "cli.log", remote=ctx.server_url
        )
        with sf_mount(ctx, f"bench/small@{branch}", "--commit-delay", "3600") as m:
            before = ctx.counters()["up"]
            t0 = time.perf_counter()
            shutil.copytree(new, m.point / "new")
            m.commit()
            elapsed = time.perf_counter() - t0
            sent = ctx.counters()["up"] - before
            return {
                "seconds": elapsed,
                "files_s": n / elapsed,
                "sent_ratio": sent / total,
                "new_bytes": total,
                "rss_mb": m.rss_mb(),
            }

    ctx.measure("upload", "streamfs upload (CLI)", run, cli)
    ctx.measure("upload", f"{report.MOUNT} (branch, cp + commit)", run, mount)


RUNNERS = {
    "ttfb": w_ttfb,
    "epoch": w_epoch,
    "loader": w_loader,
    "smallcache": w_smallcache,
    "seq": w_seq,
    "random": w_random,
    "meta": w_meta,
    "upload": w_upload,
}


# --------------------------------------------------------------------------- set-up


def publish(ctx: Run) -> None:
    """The datasets as repos bench/{small,big,tiny,meta}, each tagged v1."""
    log = ctx.logs / "cli.log"
    url = ctx.server_url
    for name in ("small", "big", "tiny"):
        streamfs_cli("repo", "create", f"bench/{name}", log=log, remote=url)
        streamfs_cli(
            "upload",
            f"bench/{name}@main",
            str(ctx.sets.root / name),
            "-m",
            "import",
            log=log,
            remote=url,
            timeout=3600,
        )
        streamfs_cli("tag", f"bench/{name}@main", "v1", log=log, remote=url)
    import trio

    trio.run(publish_meta, url, ctx.sizes.meta_entries)
    streamfs_cli("tag", "bench/meta@main", "v1", log=log, remote=url)
    small = trio.run(tree_items, url, "small")
    (WORK / "small-items.json").write_text(json.dumps(small))
    (WORK / "small-paths.json").write_text(json.dumps([p for p, _, _ in small]))
    big = trio.run(tree_items, url, "big")
    (WORK / "big-items.json").write_text(json.dumps(big))
    ctx.small_bytes = sum(s for _, _, s in small)
    ctx.big_bytes = sum(s for _, _, s in big)


async def publish_meta(url: str, entries: int) -> None:
    """The big listing: one 16-byte blob under every path, committed 100,000 paths at a time."""
    from streamfs._model import object_id
    from streamfs._remote import Remote

    oid = object_id(data.META_BLOB)
    async with Remote(url) as remote:
        await remote.create_repo("bench", "meta")
        await remote.put_blob_bytes("bench", "meta", oid, data.META_BLOB)
        paths = data.meta_paths(entries)
        for start in range(0, len(paths), 100_000):
            head = await remote.resolve("bench", "meta", "main")
            changes = [
                {"op": "put", "path": p, "blob": oid, "size": len(data.META_BLOB)}
                for p in paths[start : start + 100_000]
            ]
            await remote.commit(
                "bench", "meta", branch="main", parent=head, changes=changes, message="entries"
            )


async def tree_items(url: str, name: str) -> list[tuple[str, str, int]]:
    """(path, blob id, size) of every file of bench/NAME@v1."""
    from streamfs._remote import Remote

    items: list[tuple[str, str, int]] = []
    async with Remote(url) as remote:
        commit = await remote.get_commit("bench", name, await remote.resolve("bench", name, "v1"))

        async def walk(tree_id: str, base: str) -> None:
            for e in (await remote.get_tree("bench", name, tree_id)).entries:
                path = f"{base}/{e.name}" if base else e.name
                if e.is_dir:
                    await walk(e.id, path)
                else:
                    items.append((path, e.id, e.size))

        await walk(commit.tree, "")
    return sorted(items)


def machine() -> str:
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores, {mem} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


def git_commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (proc.stdout.strip() or "unknown") + ("+changes" if dirty else "")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="small data, 2 runs: under 5 minutes")
    p.add_argument("--rtt", default="0,20ms", help="comma list of round-trip times to add")
    p.add_argument("--bandwidth", default=None, help="cap each direction, e.g. 1Gbit")
    p.add_argument("--runs", type=int, default=None, help="runs of each cell (median reported)")
    p.add_argument(
        "--only", default=None, help=f"comma list of workloads out of {','.join(WORKLOADS)}"
    )
    p.add_argument("--no-rclone", action="store_true", help="leave rclone out")
    p.add_argument(
        "--blob-front",
        choices=("nginx", "off"),
        default="nginx",
        help="blob bytes from nginx through signed URLs (`streamfs serve --blob-url`), or "
        "from the Python server",
    )
    p.add_argument(
        "--scratch",
        choices=("ext4", "here"),
        default="ext4",
        help="where cold caches go: a journaled ext4 image made for the run (needs root), "
        "or .bench/run as it is",
    )
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--json", default=str(WORK / "results.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    sizes = data.Sizes.quick() if args.quick else data.Sizes.full()
    if args.runs:
        sizes = data.Sizes(**{**sizes.__dict__, "runs": args.runs})
    only = [w.strip() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    rtts = [parse_duration(x) * 1000 for x in args.rtt.split(",")]

    WORK.mkdir(exist_ok=True)
    logs = WORK / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    print(f"streamfs bench ({'quick' if args.quick else 'full'}): logs in {logs}", flush=True)
    from bench_infra import ensure_tools

    missing = {} if args.no_rclone else ensure_tools(logs / "apt.log")
    t0 = time.perf_counter()
    sets = data.generate(WORK / "data", sizes)
    print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)

    import streamfs

    # An installed package has its bytecode (pip compiles it); a checkout under
    # PYTHONDONTWRITEBYTECODE would compile every module at every start, in every
    # time to first byte. Written here explicitly: that variable does not stop compileall.
    compileall.compile_dir(Path(streamfs.__file__).parent, quiet=1)
    hooks = hasattr(streamfs, "install_hooks")
    notes = []
    if not hooks:
        notes.append(
            "streamfs hooks skipped: `streamfs.install_hooks` does not exist in this checkout"
        )
    elif args.quick:
        notes.append("quick: hooks measured on small files only (full size: every workload)")
    store = WORK / "store"
    shutil.rmtree(store, ignore_errors=True)
    background: list[Any] = []
    front = None
    front_port = free_port()  # the latency proxy before nginx listens here at every RTT
    if args.blob_front == "nginx":
        front = start_blob_front(store, WORK / "front", logs / "front.log", front_port)
        if front is None:
            notes.append("blob front off: nginx did not start (see logs/front.log)")
        else:
            background.append(front[0])
            notes.append(
                "blob bytes from nginx through signed URLs (`streamfs serve --blob-url`); "
                "`--blob-front off` for the Python server's"
            )
    else:
        notes.append("blob bytes from the Python server (`--blob-front off`)")
    extra = []
    if front is not None:
        front_url = f"http://127.0.0.1:{front_port}{BLOB_FRONT_PATH}"
        extra = ["--blob-url", front_url, "--blob-secret-file", str(front[2])]
    server, server_url = start_server(store, logs / "server.log", *extra)
    background.append(server)
    file_server = None
    if args.no_rclone:
        notes.append("rclone left out (--no-rclone)")
    elif "rclone" in missing:
        notes.append(f"rclone baseline skipped: {missing['rclone']}")
    else:
        file_server = start_file_server(sets.root, WORK / "httpd", logs / "httpd.log")
        if file_server is None:
            notes.append(
                "rclone baseline skipped: no HTTP file server (nginx or rclone serve) started"
            )
        else:
            background.append(file_server[0])
    ctx = Run(
        sizes,
        sets,
        server_url,
        logs,
        hooks,
        file_server is not None,
        file_server[2] if file_server else "",
        args.bandwidth,
        quick=args.quick,
        notes=notes,
    )
    stack = contextlib.ExitStack()
    try:
        made, why = False, "`--scratch here`"
        if args.scratch == "ext4":
            size_gb = 8 if args.quick else 32
            made, why = stack.enter_context(
                scratch_disk(WORK / "run", WORK / "scratch.img", size_gb, logs / "scratch.log")
            )
        notes.append(scratch_note(made, why))
        t0 = time.perf_counter()
        publish(ctx)
        print(f"published in {time.perf_counter() - t0:.0f} s", flush=True)
        for rtt in rtts:
            ctx.rtt_ms = rtt
            ctx.sf = Proxy(
                int(server_url.rsplit(":", 1)[1]), rtt, args.bandwidth, logs / "proxy.log"
            )
            ctx.http = (
                Proxy(file_server[1], rtt, args.bandwidth, logs / "proxy.log")
                if file_server
                else None
            )
            ctx.front = (
                Proxy(front[1], rtt, args.bandwidth, logs / "proxy.log", listen_port=front_port)
                if front
                else None
            )
            try:
                for workload in only:
                    for run in range(sizes.runs):
                        RUNNERS[workload](ctx, run)
            finally:
                for proxy in ctx.proxies:
                    proxy.stop()
    finally:
        for bg in reversed(background):
            bg.stop()
        shutil.rmtree(WORK / "run", ignore_errors=True)
        stack.close()
    write_results(args, ctx, sets, sizes, rtts, started)


def scratch_note(made: bool, why: str) -> str:
    """What the report says about the disk the cold caches were written to."""
    if made:
        return why
    note = f"cold caches in .bench/run ({why})"
    if has_journal(WORK) is False:
        note += (
            ", on ext4 without a journal: there ext4 passes over every inode freed in the last "
            "1-6 minutes before it reuses one, so each file made after a deleted cache costs "
            "more (see 'Disk' in Method)"
        )
    return note


def write_results(
    args: argparse.Namespace,
    ctx: Run,
    sets: data.Datasets,
    sizes: data.Sizes,
    rtts: list[float],
    started: float,
) -> None:
    summary = report.summarize(ctx.records)
    rows = report.evaluate(summary, ctx.records)
    bw = f", bandwidth cap {args.bandwidth} each way" if args.bandwidth else ""
    meta = {
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "mode": ("quick" if args.quick else "full")
        + f", RTT {', '.join(f'{r:g} ms' for r in rtts)}{bw}",
        "machine": machine(),
        "commit": git_commit(),
        "runs": sizes.runs,
        "elapsed_s": time.perf_counter() - started,
        "data": (
            f"{len(sets.small):,} small files ({ctx.small_bytes / 1e6:,.0f} MB, 64-256 KiB, median ~110 KiB, "
            f"{sizes.small_dirs} folders); one file of {ctx.big_bytes / MiB:,.0f} MiB; a listing of "
            f"{sizes.meta_entries:,} entries ({data.META_PER_DIR:,} a folder); {sizes.upload_files:,} new "
            f"files to upload; {sizes.random_reads:,} random reads; HTTP baseline server: "
            f"{ctx.http_kind or 'none'}"
        ),
        "notes": ctx.notes,
        "sizes": sizes.__dict__,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "meta": meta,
                "records": ctx.records,
                "targets": rows,
                "summary": [
                    {"rtt_ms": k[0], "workload": k[1], "system": k[2], **v}
                    for k, v in summary.items()
                ],
            },
            indent=1,
        )
    )
    generated = report.render(meta, summary, rows, ctx.records)
    out = Path(args.out)
    existing = out.read_text() if out.exists() else None
    out.write_text(report.merge_into(existing, generated, TEMPLATE))
    print(f"\nwrote {out} and {args.json} ({meta['elapsed_s']:.0f} s)")
    print("\n".join(report.targets_table(rows)))


TEMPLATE = """# Benchmarks

`make bench` (full size) or `make bench QUICK=1` (under 5 minutes) runs scripts/bench.py,
which rewrites the generated part of this page and writes every run to .bench/results.json.

{generated}
"""

if __name__ == "__main__":
    main()
