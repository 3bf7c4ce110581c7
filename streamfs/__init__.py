"""streamfs: a remote, versioned dataset used as if it were a local folder."""

from ._errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    IsADirError,
    NotADirError,
    NotFoundError,
    PathNotFoundError,
    ReadOnlyError,
    RemoteError,
    RemoteUnavailableError,
    RepoNotFoundError,
    RevisionNotFoundError,
    StreamfsError,
    TooLargeError,
)

__version__ = "0.1.0"

# Loaded on first use (PEP 562): `import streamfs` stays cheap for the CLI and
# the mount daemon, which need neither the hooks nor the Python API.
_LAZY = {
    "Repo": "._repo",
    "commit": "._hooks",
    "install_hooks": "._hooks",
    "materialize": "._hooks",
    "uninstall_hooks": "._hooks",
    "worker_init_fn": "._hooks",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamfs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
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
]
