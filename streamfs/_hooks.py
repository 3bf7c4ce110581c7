"""The hooks' public API: install_hooks, uninstall_hooks, materialize, commit, worker_init_fn.

::

    import streamfs
    streamfs.install_hooks("alice/imagenet@v1", "data")   # or no arguments: env / streamfs.toml
    open("data/train/cat/001.jpg", "rb").read()           # streamed from the pinned commit

Processes (docs/hooks.md says more):

- **fork**: the child has the hooks already; its first network use starts an
  engine of its own (Client is fork-safe), the disk cache is shared. A
  writer (staged files) stays the parent's; the child gets its own on its
  first write.
- **spawn / forkserver** (multiprocessing, DataLoader): while hooks are
  installed, ``multiprocessing.spawn.get_preparation_data`` adds one small
  object to the data every new child unpickles first; unpickling it
  re-installs the parent's mappings in the child, pinned to the parent's
  commits, with no request. Nothing else changes in the child.
- **anything else** (subprocess, other pools): ``STREAMFS_HOOKS`` in the
  environment holds every mapping; ``streamfs.worker_init_fn()`` (or
  ``install_hooks()`` with no arguments when STREAMFS_REPO is unset and
  there is no streamfs.toml) installs them. ``import streamfs`` alone never
  installs anything.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from ._errors import StreamfsError
from ._hookconfig import (
    ENV_HOOKS,
    HookSpec,
    dump_specs,
    inherited,
    load_env,
    load_specs,
    specs_from,
)
from ._hookfs import HookedRepo
from ._hookpatch import _text, _user_error, fs, is_patched, patch, unpatch

log = logging.getLogger("streamfs.hooks")
DEFAULT_MESSAGE = "changes written through streamfs hooks"
PREP_KEY = "streamfs_hooks"

_lock = threading.RLock()  # install/uninstall/commit; never held by a hooked call
_env_before: list[str | None] = []  # STREAMFS_HOOKS before the first install (for uninstall)
_prep_orig: list[Any] = []
_exit_registered = False


def install_hooks(
    repo: str | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    remote: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Show ``repo`` (OWNER/NAME@REV) at the local folder ``path``; {folder: pinned commit}.

    Without ``repo``: ``STREAMFS_REPO``/``STREAMFS_PATH``/``STREAMFS_REMOTE``/
    ``STREAMFS_TOKEN``, else the mappings a parent process exported in
    ``STREAMFS_HOOKS``, else the nearest ``streamfs.toml``. ``path`` defaults
    to ``STREAMFS_PATH``, else the repository's name. Call it again to hook
    more repositories at other folders.
    """
    env = os.environ
    if repo is None and not env.get("STREAMFS_REPO") and env.get(ENV_HOOKS):
        specs = load_specs(env[ENV_HOOKS])[1]
    else:
        specs = specs_from(repo, path, remote=remote, token=token, cache_dir=cache_dir)
        specs = [inherited(s, env) for s in specs]
    installed = _install_specs(specs)
    return {r.root: r.view.commit_id for r in installed}


def _install_specs(specs: list[HookSpec]) -> list[HookedRepo]:
    with _lock:
        result = []
        for spec in specs:
            same = next((r for r in fs.repos if _same(r, spec)), None)
            if same is not None:
                result.append(same)
                continue
            repo = HookedRepo.open(spec)
            old = fs.add(repo)
            if old is not None:
                old.close(DEFAULT_MESSAGE)
            result.append(repo)
        _activate()
        _export_env()
        return result


def _same(repo: HookedRepo, spec: HookSpec) -> bool:
    mine = repo.spec
    return (
        (mine.repo, mine.path) == (spec.repo, spec.path)
        and spec.commit in (None, mine.commit)
        and spec.remote in (None, mine.remote)
    )


def _activate() -> None:
    global _exit_registered
    if not is_patched():
        _env_before[:] = [os.environ.get(ENV_HOOKS)]
        patch()
        _patch_spawn()
    if not _exit_registered:
        atexit.register(_at_exit)
        _exit_registered = True


def _export_env() -> None:
    os.environ[ENV_HOOKS] = dump_specs([r.spec for r in fs.repos], os.getpid(), os.environ)


def uninstall_hooks() -> None:
    """Commit what hooked writes staged, then put back every patched function exactly."""
    with _lock:
        repos = fs.clear()
        if is_patched():
            unpatch()
            _unpatch_spawn()
            before = _env_before[0] if _env_before else None
            if before is None:
                os.environ.pop(ENV_HOOKS, None)
            else:
                os.environ[ENV_HOOKS] = before
        failures = []
        for repo in repos:
            try:
                repo.close(DEFAULT_MESSAGE)
            except StreamfsError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def hooks_installed() -> dict[str, str]:
    """{local folder: OWNER/NAME@REV} of every hooked repository."""
    return {r.root: r.spec.repo for r in fs.repos}


def materialize(path: str | os.PathLike[str]) -> str:
    """A real local path with the bytes of ``path``, for code that opens paths in C.

    A hooked file (or folder) is copied once, atomically, into the mirror
    ``CACHE_DIR/mirror/OWNER/NAME/COMMIT/PATH``; any other path is returned as
    it is. ``cv2.imread(streamfs.materialize("data/img.png"))``.
    """
    text = _text(path)
    if text is None:
        raise TypeError(f"materialize() wants a path, not {type(path).__name__}")
    hit = fs.for_read(text)
    if hit is None:
        return text
    try:
        return hit[0].materialize(hit[1])
    except StreamfsError as exc:
        raise _user_error(exc, path) from None


def commit(
    message: str = DEFAULT_MESSAGE, *, path: str | os.PathLike[str] | None = None
) -> str | None:
    """Commit the files written under hooked branches now; the new commit id, or None.

    With several hooked branches each gets a commit and the last one is
    returned; ``path`` (a hooked folder) commits that one only.
    """
    with _lock:
        repos = fs.repos
        if path is not None:
            root = os.path.abspath(os.fspath(path))
            repos = tuple(r for r in repos if r.root == root)
        made = None
        for repo in repos:
            made = repo.commit(message) or made
        if made is not None and fs.repos:
            _export_env()
        return made


def worker_init_fn(worker_id: int | None = None) -> None:
    """Install the hooks a parent exported in ``STREAMFS_HOOKS`` (for any kind of worker).

    Use it as ``DataLoader(..., worker_init_fn=streamfs.worker_init_fn)`` or in
    a pool initializer when workers are started some other way than
    multiprocessing's spawn/forkserver (which re-install by themselves).
    """
    text = os.environ.get(ENV_HOOKS)
    if text:
        _install_specs(load_specs(text)[1])


# ------------------------------------------------------------------ processes


def _at_exit() -> None:
    for repo in fs.repos:
        try:
            repo.close(DEFAULT_MESSAGE + " (exit)")
        except StreamfsError as exc:
            log.error("streamfs hooks: final commit failed, changes stay staged: %s", exc)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    for repo in fs.repos:
        repo.after_fork_in_child()
    if fs.repos:
        _register_child_exit()


def _register_child_exit() -> None:
    """multiprocessing children leave by os._exit: commit from its exit finalizers too."""
    import sys

    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(_fork_marker, _child_finalizer)


class _ForkMarker:
    pass


_fork_marker = _ForkMarker()


def _child_finalizer(_: object) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _at_exit, exitpriority=10)


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ChildHooks:
    """Re-installs the parent's hooks in a spawned child when it is unpickled there."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_install_in_child, (self.text,))


def _install_in_child(text: str) -> None:
    os.environ.update(load_env(text))  # a forkserver started earlier has older settings
    try:
        _install_specs(load_specs(text)[1])
    except Exception as exc:  # a child must start even if the server cannot be reached
        log.error("streamfs hooks: cannot re-install in this process: %s", exc)
        return
    _register_child_exit()


def _preparation_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = _prep_orig[0](name)
    if fs.repos:
        specs = [r.spec for r in fs.repos]
        data[PREP_KEY] = _ChildHooks(dump_specs(specs, os.getpid(), os.environ))
    return data


def _patch_spawn() -> None:
    import multiprocessing.spawn as spawn

    _prep_orig[:] = [spawn.get_preparation_data]
    spawn.get_preparation_data = _preparation_data


def _unpatch_spawn() -> None:
    import multiprocessing.spawn as spawn

    if _prep_orig:
        spawn.get_preparation_data = _prep_orig.pop()
