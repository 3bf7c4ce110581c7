"""The public API is curated: this pins it, so a change to it is a decision."""

from __future__ import annotations

import subprocess
import sys

import streamfs

PUBLIC = {
    "AccessDeniedError",
    "AlreadyExistsError",
    "ConflictError",
    "IntegrityError",
    "InvalidInputError",
    "IsADirError",
    "NotADirError",
    "NotFoundError",
    "PathNotFoundError",
    "ReadOnlyError",
    "RemoteError",
    "RemoteUnavailableError",
    "Repo",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "StreamfsError",
    "TooLargeError",
    "__version__",
    "commit",
    "install_hooks",
    "materialize",
    "uninstall_hooks",
    "worker_init_fn",
}


def test_exported_members() -> None:
    assert set(streamfs.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(streamfs, name) is not None
        if name[0].isupper() or callable(getattr(streamfs, name)):
            assert getattr(streamfs, name).__module__.startswith("streamfs")


def test_import_is_cheap() -> None:
    """The CLI and the daemon import streamfs: the hooks and the API load only when used."""
    code = "import sys, streamfs; print(sorted(m for m in sys.modules if m.startswith(('streamfs._hook', 'streamfs._repo', 'httpx'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
