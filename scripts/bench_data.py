"""Benchmark datasets: deterministic, incompressible, generated once and kept in .bench/data.

- ``small``: image-like files of 64-256 KiB (log-normal, median ~110 KiB) in 100 folders.
- ``big``: one large file.
- ``meta``: many tiny entries (1,000 a folder) for listing; every file has the same 16 bytes,
  so the repository is published with one blob and commits that name it (no million uploads).
- ``tiny``: 10 small files, the baseline for time-to-first-byte.
- ``new files`` for the upload workload: fresh per run (a blob the repo holds is never resent).

A folder is (re)generated only when its ``.NAME.params`` file beside it does not match, so a second
``make bench`` starts at once.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
META_BLOB = b"streamfs bench\n\x00"  # 16 bytes, the content of every metadata-repo file
META_PER_DIR = 1000


@dataclass(frozen=True)
class Sizes:
    small_files: int
    small_dirs: int
    big_bytes: int
    meta_entries: int
    upload_files: int
    random_reads: int
    runs: int

    @classmethod
    def quick(cls) -> Sizes:
        # Folders keep the full run's 200 small files each, and random reads its density (1,000
        # reads per 2 GiB), so prefetching and amplification mean the same thing at both sizes.
        return cls(800, 4, 128 * MiB, 10_000, 50, 64, 2)

    @classmethod
    def full(cls) -> Sizes:
        return cls(20_000, 100, 2 * GiB, 1_000_000, 1_000, 1_000, 3)


def small_size(rng: random.Random) -> int:
    """64-256 KiB, log-normal around 110 KiB (like ImageNet JPEGs)."""
    size = math.exp(rng.gauss(math.log(110 * KiB), 0.35))
    return int(min(256 * KiB, max(64 * KiB, size)))


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def _fresh(folder: Path, params: dict[str, object]) -> bool:
    """True if ``folder`` holds data made with ``params``; else empty it for regeneration."""
    marker = _marker(folder)
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return False


def _marker(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.params"  # beside, not inside: uploads take the folder


def _mark(folder: Path, params: dict[str, object]) -> None:
    _marker(folder).write_text(json.dumps(params))


def small_paths(files: int, dirs: int) -> list[str]:
    return [f"d{i % dirs:03d}/f{i:06d}.jpg" for i in range(files)]


def make_small(folder: Path, files: int, dirs: int, seed: int = 1) -> list[str]:
    params = {"kind": "small", "files": files, "dirs": dirs, "seed": seed}
    paths = small_paths(files, dirs)
    if not _fresh(folder, params):
        rng = random.Random(seed)
        for rel in paths:
            _write_random(folder / rel, small_size(rng), rng)
        _mark(folder, params)
    return paths


def make_big(folder: Path, size: int, seed: int = 2) -> str:
    params = {"kind": "big", "size": size, "seed": seed}
    if not _fresh(folder, params):
        _write_random(folder / "big.bin", size, random.Random(seed))
        _mark(folder, params)
    return "big.bin"


def make_tiny(folder: Path, seed: int = 3) -> list[str]:
    params = {"kind": "tiny", "seed": seed}
    paths = [f"f{i}.bin" for i in range(10)]
    if not _fresh(folder, params):
        rng = random.Random(seed)
        for rel in paths:
            _write_random(folder / rel, 4 * KiB, rng)
        _mark(folder, params)
    return paths


def meta_paths(entries: int) -> list[str]:
    return [f"m{i // META_PER_DIR:04d}/e{i:07d}" for i in range(entries)]


def make_meta_local(folder: Path, entries: int) -> None:
    """The metadata repo as local files (for the local-disk and rclone baselines)."""
    params = {"kind": "meta", "entries": entries}
    if _fresh(folder, params):
        return
    for rel in meta_paths(entries):
        path = folder / rel
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
        path.write_bytes(META_BLOB)
    _mark(folder, params)


def make_new_files(folder: Path, files: int, seed: int) -> int:
    """``files`` fresh small files for one upload run; returns their total size."""
    shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(1_000_000 + seed)
    total = 0
    for i in range(files):
        size = small_size(rng)
        _write_random(folder / f"n{i // 100:02d}" / f"new{i:05d}.jpg", size, rng)
        total += size
    return total


@dataclass(frozen=True)
class Datasets:
    root: Path
    small: list[str]
    big: str
    tiny: list[str]
    meta_entries: int

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "small"} | {
            "small_files": len(self.small)
        }


def generate(root: Path, sizes: Sizes) -> Datasets:
    small = make_small(root / "small", sizes.small_files, sizes.small_dirs)
    big = make_big(root / "big", sizes.big_bytes)
    tiny = make_tiny(root / "tiny")
    make_meta_local(root / "meta", sizes.meta_entries)
    return Datasets(root, small, big, tiny, sizes.meta_entries)
