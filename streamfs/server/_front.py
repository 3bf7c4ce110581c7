"""Blob bytes from a static file server in front of the store: signed URLs.

The API answers ``POST blobs/urls`` with a short-lived URL per blob that a static
server reads straight from the store, so the Python server carries metadata
only (Git LFS's batch API, S3's presigned URLs). The local store's front is
nginx with its ``secure_link`` module: a URL carries ``expires`` (Unix time)
and ``md5``, the unpadded base64url MD5 of ``"{expires}{path} {secret}"``,
which nginx recomputes (``secure_link_md5 "$secure_link_expires$uri SECRET"``)
before it serves the file under ``root/data/objects/blob/``: 403 for a wrong
signature, 410 once expired. :func:`nginx_location` writes that block.

Access is checked when a URL is signed (the repository is readable by the
caller and holds the blob); the URL grants that one blob until it expires. The
secret is shared with nginx's configuration only; the client never sees it.
Without a front the server keeps serving bytes itself (``GET blobs/ID``,
``POST blobs/batch``), and ``blobs/urls`` says so.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .._errors import InvalidInputError

SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,256}")  # nothing nginx's config syntax would read
DEFAULT_TTL = 3600  # seconds a URL stays valid; clients refresh a URL a minute before


@dataclass(frozen=True)
class BlobFront:
    """Where blob ``ID`` is served: ``{base}/{ID[:2]}/{ID[2:]}``, signed with ``secret``."""

    base: str
    secret: str
    ttl: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"--blob-url must be an http(s) URL, not {self.base!r}")
        if parts.query or parts.fragment or not parts.path.startswith("/"):
            raise InvalidInputError(
                f"--blob-url must be an origin and a path, like http://host:8080/blobs: {self.base!r}"
            )
        check_secret(self.secret)
        if not 10 <= self.ttl <= 7 * 24 * 3600:
            raise InvalidInputError("a blob URL's lifetime must be 10 s to 7 days")

    @functools.cached_property
    def path(self) -> str:
        """The URL path blobs are under, without a trailing slash."""
        return urllib.parse.urlsplit(self.base).path.rstrip("/")

    @functools.cached_property
    def _origin(self) -> str:
        return self.base.rstrip("/").removesuffix(self.path)

    def url(self, oid: str, expires: int) -> str:
        """The signed URL of blob ``oid`` (an id already checked), valid until ``expires``."""
        path = f"{self.path}/{oid[:2]}/{oid[2:]}"
        return f"{self._origin}{path}?md5={sign(self.secret, path, expires)}&expires={expires}"


def sign(secret: str, path: str, expires: int) -> str:
    """nginx secure_link_md5 over ``"$secure_link_expires$uri SECRET"``."""
    digest = hashlib.md5(f"{expires}{path} {secret}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def read_secret(path: str | Path) -> str:
    """The secret in a file (surrounding whitespace ignored), checked."""
    return check_secret(Path(path).read_text().strip(), f"{path}: ")


def check_secret(secret: str, where: str = "") -> str:
    if SECRET_RE.fullmatch(secret) is None:
        raise InvalidInputError(
            f"{where}the blob URL secret must be 16 to 256 letters, digits, '-' or '_'"
        )
    return secret


def nginx_location(store_root: str | Path, path: str, secret: str) -> str:
    """An nginx ``location`` block that serves the blobs of the store at ``store_root`` under
    URL ``path`` to holders of URLs that ``BlobFront(..., secret)`` signed. nginx must run as a
    user who can read the store's files (the server writes them for its own user only)."""
    check_secret(secret)
    path = "/" + path.strip("/")
    if not re.fullmatch(r"[A-Za-z0-9/_.-]+", path) or "/../" in path + "/":
        raise InvalidInputError(f"not a plain URL path: {path!r}")
    blobs = Path(store_root).resolve() / "data" / "objects" / "blob"
    if re.search(r'[\s;{}"\'$\\]', str(blobs)):
        raise InvalidInputError(f"the store's path has characters nginx would misread: {blobs}")
    return f"""location {path}/ {{
    secure_link $arg_md5,$arg_expires;
    secure_link_md5 "$secure_link_expires$uri {secret}";
    if ($secure_link = "") {{ return 403; }}
    if ($secure_link = "0") {{ return 410; }}
    alias {blobs}/;
    types {{ }}
    default_type application/octet-stream;
    add_header Cache-Control "private, max-age=60";
}}
"""
