"""Run the API on Hypercorn with the trio worker."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ._app import Limits, create_app
from ._auth import TokenBook
from ._storage import LocalStorage
from ._store import RepoStore

log = logging.getLogger("streamfs.server")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8600,
    token_file: str | Path | None = None,
    limits: Limits | None = None,
    access_log: bool = False,
    fd: int | None = None,
) -> None:
    """Serve the store at ``root`` until interrupted."""
    tokens = TokenBook.load(token_file)
    if tokens.is_open and not _is_loopback(host):
        print(
            f"streamfs: no --token-file: binding to 127.0.0.1 instead of {host} "
            "(an open server is for this machine only)",
            file=sys.stderr,
        )
        host = "127.0.0.1"
    app = create_app(RepoStore(LocalStorage(root)), tokens, limits)
    config = Config()
    if fd is not None:
        config.bind = [f"fd://{fd}"]
    else:
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = "-" if access_log else None
    config.errorlog = "-"
    config.keep_alive_timeout = 75
    mode = "open (no token file)" if tokens.is_open else f"tokens from {token_file}"
    where = f"inherited socket {fd}" if fd is not None else f"http://{host}:{port}"
    print(
        f"streamfs: serving {Path(root).resolve()} on {where} ({mode})", file=sys.stderr, flush=True
    )
    trio.run(hypercorn_serve, app, config)  # type: ignore[arg-type]
