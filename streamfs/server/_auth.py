"""Access control: tokens with read or write scope per repo, from a TOML file.

::

    [[tokens]]
    token = "s3cret-alice"        # what the client sends as "Authorization: Bearer ..."
    user = "alice"
    write = ["alice/*"]           # fnmatch patterns of OWNER/NAME; write implies read
    read = ["*"]

Without a token file the server is open (every request may read and write)
and binds to loopback only. With one, anonymous requests may read public
repos and nothing else.
"""

from __future__ import annotations

import fnmatch
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .._errors import AccessDeniedError, InvalidInputError


@dataclass(frozen=True, slots=True)
class Grant:
    user: str
    token: str
    read: tuple[str, ...]
    write: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user with a grant, anonymous (grant None), or everyone (open)."""

    user: str
    grant: Grant | None
    open_server: bool = False

    def can_read(self, repo: str, private: bool) -> bool:
        if self.open_server or not private:
            return True
        return self.grant is not None and _matches(repo, self.grant.read + self.grant.write)

    def can_write(self, repo: str) -> bool:
        if self.open_server:
            return True
        return self.grant is not None and _matches(repo, self.grant.write)


def _matches(repo: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(repo, p) for p in patterns)


class TokenBook:
    def __init__(self, grants: list[Grant] | None) -> None:
        self._grants = grants  # None: an open server

    @property
    def is_open(self) -> bool:
        return self._grants is None

    @classmethod
    def load(cls, path: str | Path | None) -> TokenBook:
        if path is None:
            return cls(None)
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(f"cannot read token file {path}: {exc}") from None
        grants = []
        for item in raw.get("tokens", []):
            token = item.get("token")
            if not isinstance(token, str) or len(token) < 8:
                raise InvalidInputError(f"token file {path}: every token needs 8+ characters")
            grants.append(
                Grant(
                    user=str(item.get("user", "anonymous")),
                    token=token,
                    read=tuple(str(p) for p in item.get("read", [])),
                    write=tuple(str(p) for p in item.get("write", [])),
                )
            )
        return cls(grants)

    def authenticate(self, authorization: str | None) -> Principal:
        if self._grants is None:
            return Principal("local", None, open_server=True)
        if not authorization:
            return Principal("anonymous", None)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AccessDeniedError("malformed Authorization header: want 'Bearer TOKEN'")
        for grant in self._grants:
            if hmac.compare_digest(grant.token.encode(), token.strip().encode()):
                return Principal(grant.user, grant)
        raise AccessDeniedError("unknown token")
