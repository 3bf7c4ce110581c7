"""The one exception tree of streamfs.

Every error a user can see is a ``StreamfsError``, which is an ``OSError`` with
the errno a file system would report. The same exception therefore serves the
FUSE mount (``errno``), the hooks (``except FileNotFoundError``) and the
Python API::

    StreamfsError (OSError, EIO)
    ├── NotFoundError (FileNotFoundError, ENOENT)
    │   ├── RepoNotFoundError
    │   ├── RevisionNotFoundError
    │   └── PathNotFoundError
    ├── NotADirError (NotADirectoryError, ENOTDIR)
    ├── IsADirError (IsADirectoryError, EISDIR)
    ├── AlreadyExistsError (FileExistsError, EEXIST)
    ├── ConflictError (EBUSY)           a commit touched a path another commit changed
    ├── InvalidInputError (EINVAL)      bad name, path, revision or request
    ├── AccessDeniedError (PermissionError, EACCES)
    ├── ReadOnlyError (EROFS)           write to a pinned revision
    ├── TooLargeError (EFBIG)
    ├── IntegrityError (EIO)            bytes that do not match their hash
    └── RemoteError (EIO)               the server failed or could not be reached
        └── RemoteUnavailableError (ConnectionError)   timeout, refused, reset
"""

from __future__ import annotations

import errno as _errno


class StreamfsError(OSError):
    """Base of every streamfs error; ``errno`` says what a file system would."""

    default_errno = _errno.EIO

    def __init__(self, message: str, *, filename: str | None = None) -> None:
        if filename is None:
            super().__init__(self.default_errno, message)
        else:
            super().__init__(self.default_errno, message, filename)

    @property
    def message(self) -> str:
        return str(self.strerror)

    def __str__(self) -> str:
        if self.filename is not None:
            return f"{self.strerror}: {self.filename}"
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions cross process boundaries (multiprocessing, DataLoader).
        return (_rebuild, (type(self), self.message, self.filename))


def _rebuild(cls: type[StreamfsError], message: str, filename: str | None) -> StreamfsError:
    return cls(message, filename=filename)


class NotFoundError(StreamfsError, FileNotFoundError):
    default_errno = _errno.ENOENT


class RepoNotFoundError(NotFoundError):
    pass


class RevisionNotFoundError(NotFoundError):
    pass


class PathNotFoundError(NotFoundError):
    pass


class NotADirError(StreamfsError, NotADirectoryError):
    default_errno = _errno.ENOTDIR


class IsADirError(StreamfsError, IsADirectoryError):
    default_errno = _errno.EISDIR


class AlreadyExistsError(StreamfsError, FileExistsError):
    default_errno = _errno.EEXIST


class ConflictError(StreamfsError):
    default_errno = _errno.EBUSY


class InvalidInputError(StreamfsError):
    default_errno = _errno.EINVAL


class AccessDeniedError(StreamfsError, PermissionError):
    default_errno = _errno.EACCES


class ReadOnlyError(StreamfsError):
    default_errno = _errno.EROFS


class TooLargeError(StreamfsError):
    default_errno = _errno.EFBIG


class IntegrityError(StreamfsError):
    default_errno = _errno.EIO


class RemoteError(StreamfsError):
    default_errno = _errno.EIO


class RemoteUnavailableError(RemoteError, ConnectionError):
    default_errno = _errno.EIO


# The wire names of errors (docs/protocol.md) and the class each maps to.
ERROR_CODES: dict[str, type[StreamfsError]] = {
    "repo_not_found": RepoNotFoundError,
    "revision_not_found": RevisionNotFoundError,
    "path_not_found": PathNotFoundError,
    "not_found": NotFoundError,
    "already_exists": AlreadyExistsError,
    "conflict": ConflictError,
    "invalid": InvalidInputError,
    "unauthorized": AccessDeniedError,
    "forbidden": AccessDeniedError,
    "too_large": TooLargeError,
    "integrity": IntegrityError,
}
