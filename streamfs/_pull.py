"""``pull`` (a full or filtered local copy of a revision) and ``verify`` (check one).

Pull is parallel (worker threads reading through the block cache, so a
second pull of the same data is served locally), resumable (a file already
present with the right hash is kept), and atomic per file (written to a
temporary name in the destination folder, checked, then renamed).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import IntegrityError
from ._fetch import BlobRef
from ._model import Entry, check_path
from ._reader import BlobReader
from ._realos import write_all
from ._upload import hash_file
from ._view import RepoView

CHUNK = 4 * 1024 * 1024
TMP_PREFIX = ".streamfs-tmp-"
Progress = Callable[[str, int, int], None]


def selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Glob filters on repo paths ('*' also matches '/'); no include means everything."""
    if include and not any(fnmatch.fnmatchcase(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(path, p) for p in exclude)


def repo_files(view: RepoView) -> Iterable[tuple[str, Entry]]:
    for dirpath, _dirs, files in view.walk(""):
        for entry in files:
            yield (f"{dirpath}/{entry.name}" if dirpath else entry.name), entry


def local_target(dest: Path, path: str) -> Path:
    """dest/path, refusing anything that would land outside dest."""
    return dest.joinpath(*check_path(path).split("/"))


@dataclass
class PullResult:
    commit: str
    files: int = 0
    fetched: int = 0
    kept: int = 0
    bytes_written: int = 0


def pull(
    view: RepoView,
    dest: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    workers: int = 8,
    progress: Progress = lambda phase, done, total: None,
) -> PullResult:
    todo = [(p, e) for p, e in repo_files(view) if selected(p, include, exclude)]
    total = sum(e.size for _, e in todo)
    result = PullResult(view.commit_id, files=len(todo))
    lock = threading.Lock()
    done = 0

    def one(item: tuple[str, Entry]) -> None:
        nonlocal done
        path, entry = item
        target = local_target(dest, path)
        kept = (
            target.is_file()
            and target.stat().st_size == entry.size
            and hash_file(target) == entry.id
        )
        if not kept:
            _fetch_file(view, path, entry, target)
        with lock:
            done += entry.size
            result.kept += kept
            result.fetched += not kept
            result.bytes_written += 0 if kept else entry.size
            progress("pulling", done, total)

    dest.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(one, todo):
            pass
    return result


def _fetch_file(view: RepoView, path: str, entry: Entry, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    reader = BlobReader(view.client, BlobRef(view.owner, view.name, entry.id, entry.size), path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
    try:
        digest = hashlib.sha256()
        try:
            offset = 0
            while offset < entry.size:
                data = reader.read(offset, CHUNK)
                digest.update(data)
                write_all(fd, data)  # in pieces: see write_all
                offset += len(data)
        finally:
            os.close(fd)
        if digest.hexdigest() != entry.id:
            raise IntegrityError("pulled bytes do not match the file's hash", filename=path)
        os.utime(tmp, (entry.mtime, entry.mtime))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class VerifyReport:
    commit: str
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.modified or self.extra)


def verify(
    view: RepoView,
    local: Path,
    *,
    workers: int = 4,
    progress: Progress = lambda phase, done, total: None,
) -> VerifyReport:
    report = VerifyReport(view.commit_id)
    expected = dict(repo_files(view))
    present = {
        p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() or p.is_symlink()
    }
    report.extra = sorted(present - expected.keys())
    report.missing = sorted(expected.keys() - present)
    to_hash = sorted(expected.keys() & present)
    total = sum(expected[p].size for p in to_hash)
    done = 0
    lock = threading.Lock()

    def check(path: str) -> bool:
        nonlocal done
        entry = expected[path]
        target = local / path
        same = target.stat().st_size == entry.size and hash_file(target) == entry.id
        with lock:
            done += entry.size
            progress("verifying", done, total)
        return same

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, same in zip(to_hash, pool.map(check, to_hash), strict=True):
            if same:
                report.matched += 1
            else:
                report.modified.append(path)
    return report
