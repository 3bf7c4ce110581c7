"""Upload a local file or directory as ONE commit, sending only the blobs the repo lacks.

Steps: list the local files, hash them in parallel worker threads, compare
with the branch's tree at the target folder (unchanged paths are dropped),
ask the server which blobs it is missing, send those in parallel, commit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ._errors import InvalidInputError, NotFoundError, ReadOnlyError
from ._model import Entry, check_path, decode_commit, split_path
from ._remote import Remote
from ._tasks import task_group

HASH_CHUNK = 1024 * 1024
PARALLEL_UPLOADS = 8

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: Path
    remote_path: str
    size: int
    blob: str = ""


@dataclass
class UploadResult:
    commit: str
    parent: str
    branch: str  # the branch committed to (the default branch when none was named)
    changed_paths: int
    files: int
    blobs_sent: int
    bytes_sent: int
    rebased: bool = False
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.changed_paths > 0


def collect_files(local: Path, to: str) -> list[LocalFile]:
    """Every regular file at or below ``local``, with its path in the repo."""
    prefix = "/".join(split_path(to))
    if local.is_file():
        remote = f"{prefix}/{local.name}" if prefix else local.name
        return [LocalFile(local, check_path(remote), local.stat().st_size)]
    if not local.is_dir():
        raise NotFoundError(f"no such file or directory: {local}")
    files = []
    for dirpath, dirnames, filenames in os.walk(local):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(local).as_posix()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not path.is_file():
                continue  # sockets, fifos, dangling links
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            remote = f"{prefix}/{rel}" if prefix else rel
            try:
                files.append(LocalFile(path, check_path(remote), path.stat().st_size))
            except InvalidInputError as exc:
                raise InvalidInputError(f"cannot upload {path}: {exc.message}") from None
    return files


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def hash_files(files: list[LocalFile], progress: Progress) -> list[LocalFile]:
    limiter = trio.CapacityLimiter(max(2, (os.cpu_count() or 2)))
    hashed: list[LocalFile | None] = [None] * len(files)
    done = 0

    async def one(i: int, f: LocalFile) -> None:
        nonlocal done
        blob = await trio.to_thread.run_sync(hash_file, f.path, limiter=limiter)
        hashed[i] = LocalFile(f.path, f.remote_path, f.size, blob)
        done += f.size
        progress("hashing", done, total)

    total = sum(f.size for f in files)
    async with task_group() as nursery:
        for i, f in enumerate(files):
            nursery.start_soon(one, i, f)
    return [h for h in hashed if h is not None]


async def remote_files(
    remote: Remote, owner: str, name: str, tree: str, folder: str
) -> dict[str, Entry]:
    """path -> entry of every file below ``folder`` in the tree ``tree``."""
    current = tree
    for part in split_path(folder):
        entry = (await remote.get_tree(owner, name, current)).get(part)
        if entry is None or not entry.is_dir:
            return {}
        current = entry.id
    result: dict[str, Entry] = {}
    prefix = "/".join(split_path(folder))

    async def walk(tree_id: str, base: str) -> None:
        t = await remote.get_tree(owner, name, tree_id)
        async with task_group() as nursery:
            for e in t.entries:
                path = f"{base}/{e.name}" if base else e.name
                if e.is_dir:
                    nursery.start_soon(walk, e.id, path)
                else:
                    result[path] = e

    await walk(current, prefix)
    return result


async def upload(
    remote: Remote,
    owner: str,
    name: str,
    branch: str | None,
    local: Path,
    *,
    to: str = "",
    message: str,
    author: str | None = None,
    meta: dict[str, object] | None = None,
    progress: Progress = lambda phase, done, total: None,
) -> UploadResult:
    files = collect_files(local, to)
    head, raw, named = await remote.resolve_rev(owner, name, branch)
    if named is None:  # before any hashing or sending, not at the commit after them
        raise ReadOnlyError(
            f"{owner}/{name}@{branch} is not a branch (a tag or a commit id never moves): "
            "an upload adds a commit to a branch"
        )
    commit = decode_commit(raw) if raw is not None else await remote.get_commit(owner, name, head)
    files = await hash_files(files, progress)
    existing = await remote_files(remote, owner, name, commit.tree, to)
    changed = [f for f in files if (e := existing.get(f.remote_path)) is None or e.id != f.blob]
    if not changed:
        return UploadResult(head, head, named, 0, len(files), 0, 0)
    by_blob = {f.blob: f for f in changed}
    missing = await remote.missing_blobs(owner, name, list(by_blob))
    total = sum(by_blob[b].size for b in missing)
    sent = 0
    limiter = trio.Semaphore(PARALLEL_UPLOADS)

    async def send(blob: str) -> None:
        nonlocal sent
        async with limiter:
            f = by_blob[blob]
            await remote.put_blob(owner, name, blob, f.path, f.size)
            sent += f.size
            progress("uploading", sent, total)

    async with task_group() as nursery:
        for blob in missing:
            nursery.start_soon(send, blob)
    changes = [
        {"op": "put", "path": f.remote_path, "blob": f.blob, "size": f.size} for f in changed
    ]
    result = await remote.commit(
        owner,
        name,
        branch=named,
        parent=head,
        changes=changes,
        message=message,
        author=author,
        meta=meta,
    )
    return UploadResult(
        commit=result["commit"],
        parent=result["parent"],
        branch=named,
        changed_paths=len(changed) if result.get("changed", True) else 0,
        files=len(files),
        blobs_sent=len(missing),
        bytes_sent=total,
        rebased=bool(result.get("rebased")),
    )
