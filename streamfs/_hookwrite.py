"""Writes under hooks: the branch mount's Overlay and Committer, one per hooked branch and process.

A process that writes under a hooked branch gets a staging folder of its own,
``STATE/branches/KEY/hooks/PID-RANDOM/``, held with a lock for as long as it
lives (the mount uses ``STATE/branches/KEY/`` itself, so a mount and hooked
scripts of the same branch never share staged files). Staged files are
fsynced and journaled exactly as on a branch mount; ``commit`` turns them
into one commit whose parent is the commit the process reads. The server
applies it on top of a branch that moved meanwhile when the paths differ.

A process that dies before committing leaves its folder behind, unlocked:
the next ``install_hooks`` of that branch on the machine commits it
(``recover_orphans``), as the next mount of a branch does.

Files opened with ``os.open`` for writing hand the caller a raw descriptor,
so their close is not seen: they are taken as they are at the next commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from ._client import Client
from ._committer import Committer
from ._errors import InvalidInputError, StreamfsError
from ._model import RepoSpec
from ._mount import _user, branch_state_dir, lock_branch_state
from ._overlay import Overlay, StagedHandle
from ._view import RepoView

log = logging.getLogger("streamfs.hooks")
RECOVERED = "recovered changes staged by an earlier streamfs hooks process"


def hooks_state_root(client: Client, spec: RepoSpec, branch: str) -> Path:
    return branch_state_dir(client, spec, branch) / "hooks"


class HookWriter:
    """The write layer of one hooked branch in this process."""

    def __init__(self, view: RepoView, spec: RepoSpec, branch: str) -> None:
        root = hooks_state_root(view.client, spec, branch)
        self.folder = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock_fd = lock_branch_state(self.folder)
        self.overlay = Overlay(view, branch, self.folder)
        self.committer = Committer(self.overlay, author=_user())
        self.fd_handles: list[StagedHandle] = []  # opened by os.open: finished at commit

    def commit(self, message: str) -> str | None:
        """Commit what is staged now; the new commit id, or None when nothing changed."""
        handles, self.fd_handles = self.fd_handles, []
        for handle in handles:
            self.overlay.close_handle(handle)
        return self.committer.flush(message)

    def close(self, message: str) -> None:
        """Commit what is staged; keep the folder (for recovery) only if that fails."""
        try:
            self.commit(message)
        except StreamfsError as exc:
            log.error("commit failed; changes stay staged for the next install: %s", exc)
            os.close(self._lock_fd)
            return
        os.close(self._lock_fd)
        if self.overlay.pending == 0:
            shutil.rmtree(self.folder, ignore_errors=True)

    def forget_in_child(self) -> None:
        """After fork(): the parent owns the folder and the staged files; drop our copies."""
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self.fd_handles = []


def recover_orphans(client: Client, spec: RepoSpec, branch: str) -> list[str]:
    """Commit what dead hooked processes left staged on this branch; the commits made."""
    root = hooks_state_root(client, spec, branch)
    if not root.is_dir():
        return []
    commits = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            fd = lock_branch_state(folder, wait=0)  # probing: a held one is live
        except InvalidInputError:
            continue  # a live process holds it
        try:
            commit = _recover_one(client, spec, branch, folder)
        finally:
            os.close(fd)
        if commit is not None:
            commits.append(commit)
    return commits


def _recover_one(client: Client, spec: RepoSpec, branch: str, folder: Path) -> str | None:
    view = RepoView.open(client, spec.owner, spec.name, branch)
    overlay = Overlay(view, branch, folder)
    base = overlay.load_journal()
    commit = None
    if base is not None and overlay.pending:
        overlay.view = RepoView.open(client, spec.owner, spec.name, base)
        try:
            commit = Committer(overlay, author=_user()).flush(RECOVERED)
        except StreamfsError as exc:
            log.error("cannot commit changes staged in %s; kept: %s", folder, exc)
            return None
        log.info("recovered staged changes from %s as commit %s", folder, commit)
    shutil.rmtree(folder, ignore_errors=True)
    return commit
