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
from ._hooks import commit, install_hooks, materialize, uninstall_hooks, worker_init_fn
from ._repo import Repo

__version__ = "0.1.0"

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
