"""Turning an overlay's staged changes into commits, batched.

A background thread waits until the overlay has changes and then for a quiet
moment (``delay`` seconds with no further change), so a burst of writes
becomes one commit. ``flush`` commits at once (``streamfs commit``,
unmount). A commit is made with the overlay's base as parent: the server
applies it on top of a branch that moved meanwhile, or answers 409 if
another writer changed the same paths; then the changes stay staged and the
error is reported (``streamfs status``, the log), never dropped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import trio

from ._errors import StreamfsError
from ._model import Entry
from ._overlay import Overlay, Staged, is_fuse_hidden
from ._remote import Remote
from ._tasks import task_group
from ._view import RepoView

log = logging.getLogger("streamfs.commit")


@dataclass
class _Snapshot:
    puts: dict[str, Staged]
    deletes: list[str]
    dirs_done: set[str]
    deleted_done: set[str]
    locals: set[str]  # staged files of ``puts`` (names in the staging folder)


class Committer:
    def __init__(self, overlay: Overlay, *, delay: float = 2.0, author: str | None = None) -> None:
        self.overlay = overlay
        self.delay = delay
        self.author = author
        self._commit_lock = threading.Lock()  # one commit at a time; never held by readers
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="streamfs-committer", daemon=True)
        self.commits: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        overlay = self.overlay
        while True:
            with overlay.changed:
                while not self._stop and not self._ready():
                    overlay.changed.wait()
                if self._stop:
                    return
                # quiet period: wait until no change arrives for `delay` seconds
                while overlay.changed.wait(self.delay) and not self._stop:
                    pass
                if self._stop:
                    return  # the owner makes the final commit
            try:
                self.flush("changes from a streamfs mount")
            except (StreamfsError, OSError) as exc:  # OSError: the staging folder's disk
                log.error("commit failed; changes stay staged: %s", exc)
                with overlay.changed:
                    if not self._stop:
                        overlay.changed.wait(max(self.delay, 5.0))

    def _ready(self) -> bool:
        o = self.overlay
        return bool(o.deleted) or any(_committable(p, s) for p, s in o.files.items())

    def stop(self) -> None:
        with self.overlay.changed:
            self._stop = True
            self.overlay.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(60)

    # ------------------------------------------------------------ one commit

    def flush(self, message: str, meta: dict[str, Any] | None = None) -> str | None:
        """Commit everything closed and staged now; returns the new commit id (None: nothing)."""
        with self._commit_lock:
            snap = self._snapshot()
            try:
                if not snap.puts and not snap.deletes:
                    return None
                try:
                    commit = self._commit(snap, message, meta or {})
                except (StreamfsError, OSError) as exc:
                    self.overlay.last_error = str(exc)
                    raise
                self.overlay.last_error = None
                self._forget(snap, commit)
            finally:
                self.overlay.uploaded(snap.locals)
            self.commits.append(commit)
            log.info("committed %d changes as %s", len(snap.puts) + len(snap.deletes), commit)
            return commit

    def _snapshot(self) -> _Snapshot:
        o = self.overlay
        with o._lock:
            puts = {p: Staged(**vars(s)) for p, s in o.files.items() if _committable(p, s)}
            deleted = set(o.deleted)
            dirs = set(o.dirs)
            locals_ = {s.local for s in puts.values() if s.local is not None}
            o.uploading(locals_)  # an unlink meanwhile leaves the bytes to this commit
        try:
            deletes = self._expand_deletes(deleted, set(puts))
        except BaseException:
            o.uploaded(locals_)
            raise
        return _Snapshot(puts, deletes, dirs, deleted, locals_)

    def _expand_deletes(self, deleted: set[str], puts: set[str]) -> list[str]:
        """Delete ops for masked base paths; a deleted folder with new files in it is
        expanded into deletes of its old files, so no change lies below another."""
        view = self.overlay.view
        result: list[str] = []
        for path in sorted(deleted):
            if any(q == path or q.startswith(path + "/") for q in puts):
                result.extend(p for p in _base_files(view, path) if p not in puts)
            elif not any(path.startswith(d + "/") for d in deleted):
                result.append(path)
        return result

    def _commit(self, snap: _Snapshot, message: str, meta: dict[str, Any]) -> str:
        view = self.overlay.view
        client = view.client
        engine = client.engine
        assert engine.remote is not None
        staging = self.overlay.staging

        async def go(remote: Remote) -> dict[str, Any]:
            local = {
                s.blob: staging / s.local
                for s in snap.puts.values()
                if s.local is not None and s.blob
            }
            missing = await remote.missing_blobs(view.owner, view.name, sorted(local))
            limiter = trio.Semaphore(8)

            async def send(blob: str) -> None:
                async with limiter:
                    path = local[blob]
                    await remote.put_blob(view.owner, view.name, blob, path, path.stat().st_size)

            async with task_group() as nursery:
                for blob in missing:
                    nursery.start_soon(send, blob)
            changes: list[dict[str, Any]] = [
                {"op": "put", "path": p, "blob": s.blob, "size": s.size}
                for p, s in sorted(snap.puts.items())
            ]
            changes += [{"op": "delete", "path": p} for p in snap.deletes]
            return await remote.commit(
                view.owner,
                view.name,
                branch=self.overlay.branch,
                parent=view.commit_id,
                changes=changes,
                message=message,
                author=self.author,
                meta=meta,
            )

        async def run() -> dict[str, Any]:
            assert engine.remote is not None
            return await go(engine.remote)

        result = engine.call(run)
        return str(result["commit"])

    def _forget(self, snap: _Snapshot, commit: str) -> None:
        """After a commit: the new commit is the base; drop what it contains."""
        o = self.overlay
        new_view = RepoView.open(o.view.client, o.view.owner, o.view.name, commit)
        with o._lock:
            o.view = new_view
            gone: set[str] = set()  # committed, then unlinked or renamed away meanwhile
            for path, staged in snap.puts.items():
                current = o.files.get(path)
                if current is None:
                    gone.add(path)
                elif current.generation == staged.generation and current.writers == 0:
                    del o.files[path]
                    if current.local is not None:
                        o._delete_local(current.local)
            o.deleted -= snap.deleted_done
            o.deleted |= gone  # the new base has them: the next commit deletes them
            o.dirs = {d for d in o.dirs if not _exists_in(new_view, d)}
        o.save_journal()


def _committable(path: str, staged: Staged) -> bool:
    """Closed, hashed, and not libfuse's name for a file deleted while open."""
    return staged.blob is not None and staged.writers == 0 and not is_fuse_hidden(path)


def _base_files(view: RepoView, path: str) -> list[str]:
    try:
        entry = view.lookup(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not entry.is_dir:
        return [path]
    return [f"{d}/{f.name}" if d else f.name for d, _, files in view.walk(path) for f in files]


def _exists_in(view: RepoView, path: str) -> bool:
    try:
        entry: Entry = view.lookup(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return entry.is_dir
