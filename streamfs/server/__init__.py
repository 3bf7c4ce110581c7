"""The streamfs server: versioned repos over HTTP (docs/protocol.md)."""

from ._app import Limits, create_app
from ._auth import TokenBook
from ._serve import serve
from ._storage import LocalStorage, Storage
from ._store import RepoStore

__all__ = ["Limits", "LocalStorage", "RepoStore", "Storage", "TokenBook", "create_app", "serve"]
