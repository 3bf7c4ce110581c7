"""HookFS: which local paths show which repository, and what is there. Tested without patching.

The patching layer (_hooks.py) asks this core two questions per call: does
the path belong to a hooked repository (``HookFS.for_read`` /
``for_write`` / ``match``), and if so, what is it (``HookedRepo``). Local
files and folders that really exist win: a user's own file is never
shadowed, and a real folder's listing is merged with the repository's.

A ``HookedRepo`` reads one pinned commit (RepoView), and on a branch it
writes through an Overlay (HookWriter) made on the first write, per process.
Every answer about a missing name comes from trees, without a request once
the parent's tree is known.

Thread safety: ``HookFS.repos`` is replaced, never mutated, so readers need
no lock; ``HookedRepo._lock`` guards creating the writer only.
"""

from __future__ import annotations

import os
import stat as stat_mod
import threading
import uuid
from dataclasses import replace
from pathlib import Path

from ._client import Client, Hold
from ._errors import (
    AlreadyExistsError,
    InvalidInputError,
    IsADirError,
    PathNotFoundError,
    ReadOnlyError,
)
from ._hookconfig import HookSpec
from ._hookwrite import HookWriter, recover_orphans
from ._model import Entry, RepoSpec, Tree, parse_repo_spec
from ._overlay import Overlay, StagedHandle
from ._reader import BlobReader
from ._realos import real as _real
from ._realos import write_all
from ._view import RepoView, entry_stat, make_stat

CHUNK = 8 * 1024 * 1024


def real_lstat(path: str) -> os.stat_result | None:
    try:
        st: os.stat_result = _real.lstat(path)
        return st
    except (OSError, ValueError):
        return None


def real_exists(path: str) -> bool:
    """Whether anything (a dangling link too) is at ``path`` on the local disk; like
    ``real_lstat(path) is not None`` without raising (and building) an error when nothing is,
    the usual answer for a hooked path."""
    try:
        return bool(_real.access(path, os.F_OK, follow_symlinks=False))
    except ValueError:  # a NUL in the path: nothing local can be there
        return False


def is_normal(path: str) -> bool:
    """Whether ``path`` is absolute and ``os.path.abspath`` would return it unchanged: no
    empty, '.' or '..' part and no '/' at the end. What a loader passes, every open: then no
    ``abspath`` (0.53 µs for a path 7 parts deep). A path through a dot-folder
    (``~/.cache/data``, the bench's ``.bench/run``) is normal too."""
    return (
        path[:1] == "/"
        and "//" not in path
        and "/./" not in path
        and "/../" not in path
        and not path.endswith(("/", "/.", "/.."))
    )


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class HookedRepo:
    """One repository revision shown at one local directory."""

    def __init__(
        self, spec: HookSpec, client: Client, view: RepoView, branch: str | None, hold: Hold
    ) -> None:
        self.root = spec.path
        self.parsed: RepoSpec = parse_repo_spec(spec.repo, allow_path=False)
        self._spec = spec
        self.client = client
        self._view = view
        self.branch = branch
        self._writer: HookWriter | None = None
        self._lock = threading.Lock()
        self._hold = hold  # of ``client``, let go by close

    @classmethod
    def open(cls, spec: HookSpec) -> HookedRepo:
        parsed = parse_repo_spec(spec.repo, allow_path=False)
        client = Client.create(spec.remote, spec.token, cache_dir=spec.cache_dir)
        hold = client.hold()
        try:
            if spec.commit is not None:
                view = RepoView.at(client, parsed.owner, parsed.name, spec.commit)
                return cls(spec, client, view, spec.branch, hold)
            view, branch = RepoView.open_rev(client, parsed.owner, parsed.name, parsed.rev)
            if branch is not None and recover_orphans(client, parsed, branch):
                view = RepoView.open(client, parsed.owner, parsed.name, branch)
            return cls(spec, client, view, branch, hold)
        except BaseException:
            hold.release()
            raise

    @property
    def spec(self) -> HookSpec:
        """The mapping as a child process should re-install it: pinned to what we read now,
        on the same server and cache (a child's environment may differ)."""
        client = self.client
        spec = replace(
            self._spec, remote=client.url, token=client.token, cache_dir=client.cache_dir
        )
        return spec.resolved(self.view.commit_id, self.branch)

    @property
    def writable(self) -> bool:
        return self.branch is not None

    @property
    def view(self) -> RepoView:
        writer = self._writer
        return writer.overlay.view if writer is not None else self._view

    def _overlay_or_none(self) -> Overlay | None:
        writer = self._writer
        return writer.overlay if writer is not None else None

    # ------------------------------------------------------------ reading

    def lookup(self, rel: str) -> Entry:
        return self._locate(rel)[0]

    def _locate(self, rel: str) -> tuple[Entry, Tree | None]:
        """The entry at ``rel`` and, on a pinned view, the tree of its folder (one walk)."""
        writer = self._writer  # none on a pinned revision: every warm open comes this way
        try:
            return self._view.locate(rel) if writer is None else (writer.overlay.lookup(rel), None)
        except InvalidInputError:  # a name no repository path can have
            raise PathNotFoundError("no such file or directory", filename=rel) from None

    def exists(self, rel: str) -> bool:
        try:
            self.lookup(rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def is_dir(self, rel: str) -> bool:
        try:
            return self.lookup(rel).is_dir
        except (FileNotFoundError, NotADirectoryError):
            return False

    def stat(self, rel: str) -> os.stat_result:
        overlay = self._overlay_or_none()
        if overlay is not None:
            self.lookup(rel)  # maps invalid names to ENOENT
            return make_stat(overlay.stat(rel))
        return make_stat(entry_stat(self.lookup(rel), rel, writable=self.writable))

    def names(self, rel: str) -> list[str]:
        overlay = self._overlay_or_none()
        if overlay is not None:
            self.lookup(rel)
            return overlay.listdir(rel)
        self.lookup(rel)
        return [e.name for e in self._view.listdir(rel).entries]

    def entries(self, rel: str) -> list[tuple[str, os.stat_result]]:
        """(name, stat) of every entry of a directory, from its tree (no request per name)."""
        if self._overlay_or_none() is not None:
            return [(n, self.stat(_join(rel, n))) for n in self.names(rel)]
        self.lookup(rel)
        tree = self._view.listdir(rel)
        return [
            (e.name, make_stat(entry_stat(e, _join(rel, e.name), writable=self.writable)))
            for e in tree.entries
        ]

    def access(self, rel: str, mode: int) -> bool:
        entry = self.lookup(rel)
        if mode & os.W_OK and not self.writable:
            return False
        return not (mode & os.X_OK and not entry.is_dir)

    def staged_path(self, rel: str) -> Path | None:
        """The local file of a file staged (written) in this process, if ``rel`` is one."""
        overlay = self._overlay_or_none()
        if overlay is None:
            return None
        with overlay._lock:
            staged = overlay.files.get(rel)
            local = staged.local if staged is not None else None
        return overlay.staging / local if local is not None else None

    def _locate_file(self, rel: str) -> tuple[Entry, Tree | None]:
        entry, folder = self._locate(rel)
        if entry.is_dir:
            raise IsADirError("is a directory", filename=rel)
        return entry, folder

    def reader(self, rel: str) -> BlobReader:
        return self.view.reader(rel, *self._locate_file(rel))

    def open_read(self, rel: str) -> Path | BlobReader | int:
        """What an ``open`` of ``rel`` for reading reads: the local file of a file staged
        (written) in this process; a descriptor of the cache's own file when ``rel`` is a
        small file wholly cached where this process knows the file (a warm epoch: native
        reads, no Python per read); else a reader."""
        if self._writer is not None and (staged := self.staged_path(rel)) is not None:
            return staged  # (no overlay on a pinned revision: nothing staged to ask for)
        entry, folder = self._locate_file(rel)
        view = self.view
        fd = view.open_cached(rel, entry, folder)
        return fd if fd is not None else view.reader(rel, entry, folder)

    # ------------------------------------------------------------ materializing

    def mirror_path(self, rel: str) -> Path:
        view = self.view
        base = Path(self.client.cache_dir) / "mirror" / view.owner / view.name / view.commit_id
        return base.joinpath(*rel.split("/")) if rel else base

    def materialize(self, rel: str) -> str:
        """A real local file (or folder) with the bytes of ``rel``, written atomically once."""
        staged = self.staged_path(rel)
        if staged is not None:
            return str(staged)
        entry = self.lookup(rel)
        target = self.mirror_path(rel)
        if entry.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            for name in self.names(rel):
                self.materialize(_join(rel, name))
            return str(target)
        present = real_lstat(str(target))
        if present is None or present.st_size != entry.size:
            self._write_mirror(rel, entry, target)
        return str(target)

    def _write_mirror(self, rel: str, entry: Entry, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        reader = self.reader(rel)
        try:
            fd = _real.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                offset = 0
                while offset < entry.size:
                    data = reader.read(offset, CHUNK)
                    write_all(fd, data)
                    offset += len(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.utime(tmp, (entry.mtime, entry.mtime))
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            if real_lstat(str(tmp)) is not None:
                os.unlink(tmp)

    # ------------------------------------------------------------ writing

    def writer(self, rel: str) -> HookWriter:
        if self.branch is None:
            raise ReadOnlyError(
                f"read-only: {self._spec.repo} is hooked at a pinned revision (a tag or a "
                "commit); hook a branch to write",
                filename=rel,
            )
        with self._lock:
            if self._writer is None:
                self._writer = HookWriter(self._view, self.parsed, self.branch)
            return self._writer

    def open_write(
        self, rel: str, *, create: bool, truncate: bool, exclusive: bool
    ) -> StagedHandle:
        overlay = self.writer(rel).overlay
        if not self.exists(rel):
            if not create:
                raise PathNotFoundError("no such file or directory", filename=rel)
            return overlay.create(rel)
        if exclusive:
            raise AlreadyExistsError("file exists", filename=rel)
        return overlay.open_write(rel, truncate=truncate)

    def mkdir(self, rel: str) -> None:
        if self.exists(rel):
            raise AlreadyExistsError("file exists", filename=rel)
        self.writer(rel).overlay.mkdir(rel)

    def unlink(self, rel: str) -> None:
        self.lookup(rel)
        self.writer(rel).overlay.unlink(rel)

    def rmdir(self, rel: str) -> None:
        self.lookup(rel)
        self.writer(rel).overlay.rmdir(rel)

    def rename(self, old: str, new: str) -> None:
        self.lookup(old)
        self.writer(new).overlay.rename(old, new)

    def import_file(self, rel: str, local: str) -> None:
        """Stage the bytes of a real local file at ``rel`` (a move into the hooked folder)."""
        writer = self.writer(rel)
        handle = self.open_write(rel, create=True, truncate=True, exclusive=False)
        try:
            with open(local, "rb") as src:  # a real file: passes through the hooks
                offset = 0
                while data := src.read(CHUNK):
                    handle.write(offset, data)
                    offset += len(data)
        finally:
            writer.overlay.close_handle(handle)

    def commit(self, message: str) -> str | None:
        writer = self._writer
        return writer.commit(message) if writer is not None else None

    def close(self, message: str) -> None:
        """Commit what is staged, then let go of the engine and cache (Client.hold)."""
        with self._lock:
            writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close(message)
                self._view = writer.overlay.view
        finally:
            self._hold.release()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.forget_in_child()
            self._view = writer.overlay.view


class HookFS:
    """Local directory -> HookedRepo, longest root first."""

    def __init__(self) -> None:
        self.repos: tuple[HookedRepo, ...] = ()

    def add(self, repo: HookedRepo) -> HookedRepo | None:
        """Add ``repo``; returns the one it replaces at the same directory, if any."""
        old = next((r for r in self.repos if r.root == repo.root), None)
        rest = [r for r in self.repos if r is not old]
        self.repos = tuple(sorted([*rest, repo], key=lambda r: len(r.root), reverse=True))
        return old

    def clear(self) -> tuple[HookedRepo, ...]:
        repos, self.repos = self.repos, ()
        return repos

    def match(self, path: str) -> tuple[HookedRepo, str] | None:
        """The hooked repository and repository path of a local path, by name only."""
        repos = self.repos
        if not repos:
            return None
        norm = path if is_normal(path) else os.path.abspath(path)
        for repo in repos:
            root = repo.root
            if norm == root:
                return repo, ""
            if norm.startswith(root) and norm[len(root) : len(root) + 1] == os.sep:
                return repo, norm[len(root) + 1 :].replace(os.sep, "/")
        return None

    def for_read(self, path: str) -> tuple[HookedRepo, str] | None:
        """Hooked, unless a real local file or folder is there (it wins)."""
        hit = self.match(path)
        if hit is None or real_exists(path):
            return None
        return hit

    def for_write(self, path: str) -> tuple[HookedRepo, str] | None:
        """Hooked when nothing real is there and the repository has the parent folder."""
        hit = self.for_read(path)
        if hit is None:
            return None
        repo, rel = hit
        return hit if rel and repo.is_dir(_parent(rel)) else None

    def for_listing(self, path: str) -> tuple[HookedRepo, str, bool] | None:
        """(repo, rel, real folder there too) for a listing that merges both."""
        hit = self.match(path)
        if hit is None:
            return None
        st = real_lstat(path)
        if st is not None and not stat_mod.S_ISDIR(st.st_mode):
            return None
        return hit[0], hit[1], st is not None
