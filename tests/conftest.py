"""Shared fixtures: a real `streamfs serve` process on a loopback port.

The test binds the listening socket itself and hands it to the server
(``--fd``), so clients may connect at once: the kernel queues connections
until the server accepts them. No sleeps, no port races.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio.testing

import streamfs
from streamfs._client import close_all
from streamfs._hookfs import HookedRepo

_counter = itertools.count()


class ServerProcess:
    def __init__(
        self,
        root: Path,
        token_file: Path | None = None,
        log: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.token_file = token_file
        self.extra = extra  # more `streamfs serve` options
        self.log_path = log or root.with_name(root.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.url = ""

    def start(self, port: int = 0) -> ServerProcess:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        cmd = [
            sys.executable,
            "-m",
            "streamfs",
            "serve",
            "--root",
            str(self.root),
            "--fd",
            str(sock.fileno()),
        ]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        cmd += self.extra
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, pass_fds=[sock.fileno()], stdout=log, stderr=log)
        log.close()
        return self

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a crash or a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_socket()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_socket()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def restart(self) -> ServerProcess:
        port = self.port if self.sock is not None else 0
        self.kill()
        return self.start(port)

    def metrics(self) -> dict[str, int]:
        return dict(httpx.get(self.url + "/v1/metrics", timeout=10).json())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(autouse=True)
def _close_engines_and_caches() -> Iterator[None]:
    """Each test's engines and caches go with it: left open, a run of the whole suite held
    ~1,000 descriptors (threads, sockets, SQLite) by its end."""
    yield
    close_all()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "store").start()
    try:
        yield srv
    finally:
        close_all()  # while the server still answers
        srv.stop()


@pytest.fixture
def repo_name() -> str:
    return f"t{os.getpid()}x{next(_counter)}"


def run_cli(
    server: ServerProcess,
    *args: str,
    token: str | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The real `streamfs` command against ``server``."""
    env = dict(os.environ, STREAMFS_REMOTE=server.url)
    env.pop("STREAMFS_TOKEN", None)
    if token is not None:
        env["STREAMFS_TOKEN"] = token
    proc = subprocess.run(
        [sys.executable, "-m", "streamfs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"streamfs {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def wait_for_prefetches(repo: streamfs.Repo | HookedRepo) -> None:
    """Until the prefetches that ``repo``'s reads began in this process are done (a Repo, or
    a folder the hooks show)."""
    engine = repo.client.engine
    assert engine.fetcher is not None
    # Engine.spawn hands work to the loop without waiting for it to start: first let every task
    # the reads queued take its first steps (so the fetcher counts what they began; a loaded
    # machine can otherwise get here before the loop has run them), then wait for the fetches
    engine.call(trio.testing.wait_all_tasks_blocked)
    engine.call(engine.fetcher.quiet)
