"""Running a mount: the daemon, its registry entry and control socket, unmounting.

``streamfs mount`` starts ``streamfs mount --foreground`` as a detached
process and waits on a pipe until the file system is live (FUSE ``init``)
or the daemon failed, then prints the pinned commit. The daemon registers
itself in ``STATE/mounts/`` and answers ``status``/``commit`` requests on a
Unix socket there. ``streamfs umount`` asks it to commit what is staged,
unmounts (lazily if a reader is still inside, so it never hangs) and waits
for the daemon to exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ._client import Client
from ._committer import Committer
from ._engine import prefetch_alone
from ._errors import InvalidInputError, ReadOnlyError, RemoteError, StreamfsError
from ._malloc import keep_block_buffers
from ._model import RepoSpec
from ._mountfs import MountFS
from ._overlay import Overlay
from ._view import RepoView

log = logging.getLogger("streamfs.mount")


def state_root() -> Path:
    env = os.environ.get("STREAMFS_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "streamfs"


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def mount_record_path(mountpoint: Path) -> Path:
    return state_root() / "mounts" / (_key(str(mountpoint.resolve())) + ".json")


def branch_state_dir(client: Client, spec: RepoSpec, branch: str) -> Path:
    return state_root() / "branches" / _key(f"{client.url}|{spec.repo}|{branch}")


LOCK_WAIT = 5.0  # seconds: a daemon that was just killed may take a moment to let go
RELEASE_WAIT = 2.0  # seconds: a commit waits this long for releases of files close(2) closed


def lock_branch_state(path: Path, wait: float = LOCK_WAIT) -> int:
    """Hold the branch's staging folder for this process (one writer per branch and machine).

    A holder that is dying (killed, its FUSE threads still leaving the kernel)
    is waited for up to ``wait`` seconds; a live one makes this fail.
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
        os.close(fd)
        raise InvalidInputError(
            "this branch is already mounted writable on this machine (or `streamfs sync` runs); "
            "mount it with --read-only, or unmount the other one"
        ) from None


# ------------------------------------------------------------------ the daemon


class Daemon:
    def __init__(
        self,
        spec: RepoSpec,
        mountpoint: Path,
        client: Client,
        *,
        read_only: bool,
        commit_delay: float,
    ) -> None:
        self.spec = spec
        self.mountpoint = mountpoint.resolve()
        self.client = client
        self.view, self.branch = RepoView.open_rev(
            client, spec.owner, spec.name, spec.rev, ask_branch=not read_only
        )
        self.overlay: Overlay | None = None
        self.committer: Committer | None = None
        if self.branch is not None:
            state = branch_state_dir(client, spec, self.branch)
            self._branch_lock = lock_branch_state(state)
            self.overlay = Overlay(self.view, self.branch, state)
            self._recover()
            self.committer = Committer(self.overlay, delay=commit_delay, author=_user())
        self.fs = MountFS(self.view, self.overlay)
        self.record = mount_record_path(self.mountpoint)
        self.control = self.record.with_suffix(".sock")

    @property
    def commit(self) -> str:
        return self.overlay.view.commit_id if self.overlay is not None else self.view.commit_id

    def _recover(self) -> None:
        """Commit what a killed daemon left staged, before anything else happens."""
        assert self.overlay is not None
        base = self.overlay.load_journal()
        if base is None or self.overlay.pending == 0:
            return
        self.overlay.view = RepoView.open(self.client, self.spec.owner, self.spec.name, base)
        committer = Committer(self.overlay, author=_user())
        commit = committer.flush("recovered changes staged by an earlier streamfs mount")
        log.info("recovered staged changes as commit %s", commit)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "mountpoint": str(self.mountpoint),
            "spec": str(self.spec),
            "commit": self.commit,
            "writable": self.overlay is not None,
            "pending": self.overlay.pending if self.overlay is not None else 0,
            "last_error": self.overlay.last_error if self.overlay is not None else None,
            "read_calls": self.fs.read_calls,
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "commit":
            if self.committer is None:
                raise ReadOnlyError("read-only mount: nothing to commit")
            if not self.fs.settle(RELEASE_WAIT):
                log.warning("a file closed by close(2) is still open elsewhere: left staged")
            commit = self.committer.flush(
                str(request.get("message") or "changes from a streamfs mount")
            )
            return {"commit": commit or self.commit, "changed": commit is not None}
        raise InvalidInputError(f"unknown control command {cmd!r}")

    def serve_control(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            try:
                request = json.loads(f.readline() or b"{}")
                reply: dict[str, Any] = {"ok": True, **self.handle(request)}
            except StreamfsError as exc:
                reply = {"ok": False, "error": str(exc), "errno": exc.errno}
            except Exception as exc:  # a bad request must not kill the daemon
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            f.write(json.dumps(reply).encode() + b"\n")
            f.flush()

    def run(self, ready_fd: int | None, debug: bool) -> None:
        from ._fuse import StreamfsFUSE, StreamfsOperations
        from ._fuseloop import MAX_PAGES

        keep_block_buffers()
        self.record.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.control))
        sock.listen(16)
        threading.Thread(target=self.serve_control, args=(sock,), daemon=True).start()

        def on_ready() -> None:
            self.record.write_text(json.dumps({**self.status(), "control": str(self.control)}))
            if self.committer is not None:
                self.committer.start()
            if ready_fd is not None:
                os.write(ready_fd, f"ready {self.commit}\n".encode())
                os.close(ready_fd)

        ops = StreamfsOperations(self.fs, on_ready)
        writable = self.overlay is not None
        options: dict[str, Any] = {
            "foreground": True,
            "nothreads": False,
            "fsname": f"streamfs:{self.spec.repo}",
            "subtype": "streamfs",
            "big_writes": True,
            "max_read": MAX_PAGES * 4096,  # the kernel caps it at 128 KiB without max_pages
        }
        if writable:
            options.update(attr_timeout=1.0, entry_timeout=1.0)
        else:
            # an immutable commit: let the kernel keep pages and attributes
            options.update(
                ro=True,
                kernel_cache=True,
                attr_timeout=3600.0,
                entry_timeout=3600.0,
                negative_timeout=3600.0,
            )
        (self.overlay.view if self.overlay is not None else self.view).load_root_soon()
        try:
            StreamfsFUSE(ops, str(self.mountpoint), **options)
        finally:
            sock.close()
            self.shutdown()

    def shutdown(self) -> None:
        if self.committer is not None:
            self.committer.stop()
            try:
                self.committer.flush("changes from a streamfs mount (unmount)")
            except StreamfsError as exc:
                log.error("final commit failed; changes stay staged for the next mount: %s", exc)
        for path in (self.record, self.control):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "streamfs"


# ------------------------------------------------------------------ the client side


def start_daemon(run: Callable[[int], None], log_file: Path, timeout: float = 120.0) -> str:
    """Run ``run(ready_fd)`` as a detached daemon; return the commit once it says it is mounted.

    The daemon is this process, forked twice (so that init adopts it and no
    zombie is left behind), not a new interpreter: the mount comes up without
    a second Python start-up and a second import of streamfs, trio and httpx.
    The caller must not have started threads yet. ``run`` writes
    ``ready COMMIT`` to the fd once FUSE is up, or ``failed MESSAGE`` if it cannot
    come up (``report_failure``); its output goes to ``log_file``.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        _become_daemon(run, write_fd, log_file)  # never returns
    os.close(write_fd)
    os.waitpid(child, 0)  # the first child exits at once; the daemon is its child
    with os.fdopen(read_fd, "rb") as ready:
        readable = readable_within(ready.fileno(), timeout)
        line = ready.readline().decode().strip() if readable else ""
    if line.startswith("ready "):
        return line.split(" ", 1)[1]
    if line.startswith("failed "):
        raise StreamfsError(line.split(" ", 1)[1])
    if not readable:
        raise RemoteError(f"the mount did not come up within {timeout:.0f} s (log: {log_file})")
    tail = (
        log_file.read_text(errors="replace").strip().splitlines()[-1:] if log_file.exists() else []
    )
    raise StreamfsError(f"the mount failed: {tail[0] if tail else 'see ' + str(log_file)}")


def report_failure(ready_fd: int, exc: BaseException) -> None:
    """Tell ``start_daemon`` why the mount could not come up (before it was ready)."""
    message = " ".join(str(exc).split())  # one line
    os.write(ready_fd, f"failed {message}\n".encode())
    os.close(ready_fd)


def _become_daemon(run: Callable[[int], None], ready_fd: int, log_file: Path) -> NoReturn:
    """In the first child: detach, fork the daemon, run it, and exit like an interpreter does.

    The daemon leaves by SystemExit, which unwinds through the CLI's stack (no
    ``finally`` there does anything) so that exit handlers run as in any
    process: logs flushed, cache counters saved.
    """
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for target in (0, 1, 2):
            os.dup2(null if target == 0 else out, target)
        os.close(null)
        os.close(out)
        prefetch_alone()  # the only reader of its engine, not a DataLoader worker
    except BaseException:
        os._exit(1)  # nothing to report to: the caller sees the ready pipe close
    try:
        run(ready_fd)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None
    raise SystemExit(0)


def control_request(
    mountpoint: Path, request: dict[str, Any], timeout: float = 300.0
) -> dict[str, Any]:
    record = mount_record_path(mountpoint)
    if not record.exists():
        raise InvalidInputError(f"{mountpoint} is not a streamfs mount on this machine")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(record.with_suffix(".sock")))
        with sock.makefile("rwb") as f:
            f.write(json.dumps(request).encode() + b"\n")
            f.flush()
            reply: dict[str, Any] = json.loads(f.readline() or b"{}")
    except (OSError, ValueError) as exc:
        raise StreamfsError(f"cannot talk to the mount daemon of {mountpoint}: {exc}") from None
    finally:
        sock.close()
    if not reply.get("ok"):
        raise StreamfsError(str(reply.get("error", "the mount daemon failed")))
    return reply


def list_mounts() -> list[dict[str, Any]]:
    folder = state_root() / "mounts"
    result = []
    for record in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            info = json.loads(record.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue  # a stale record of a dead daemon
        with contextlib.suppress(StreamfsError):
            info.update(control_request(Path(info["mountpoint"]), {"cmd": "status"}, timeout=10))
        result.append(info)
    return result


def unmount(mountpoint: Path, timeout: float = 300.0) -> bool:
    """Commit what is staged and unmount; False when the unmount had to be lazy."""
    record = mount_record_path(mountpoint)
    pid = None
    if record.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            pid = int(json.loads(record.read_text())["pid"])
        with contextlib.suppress(StreamfsError):
            control_request(
                mountpoint, {"cmd": "commit", "message": "changes from a streamfs mount (unmount)"}
            )
    done = subprocess.run(["fusermount", "-u", str(mountpoint)], capture_output=True, text=True)
    if done.returncode == 0:
        if pid is not None:
            _wait_for_exit(pid, timeout)
        return True
    # Busy (a reader inside): detach now; the daemon serves open files and exits after the last close.
    lazy = subprocess.run(
        ["fusermount", "-u", "-z", str(mountpoint)], capture_output=True, text=True
    )
    if lazy.returncode != 0:
        raise StreamfsError(
            f"cannot unmount {mountpoint}: {lazy.stderr.strip() or done.stderr.strip()}"
        )
    return False


def readable_within(fd: int, timeout: float) -> bool:
    """Whether ``fd`` (a pipe, a pidfd) is readable within ``timeout`` seconds. poll, not
    select: select fails outright for a descriptor numbered 1024 or more, which a process
    holding many files and sockets (a test run, a training job) reaches."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _wait_for_exit(pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not readable_within(fd, timeout):
            os.kill(pid, signal.SIGTERM)
            raise StreamfsError(f"the mount daemon (pid {pid}) did not exit within {timeout:.0f} s")
    finally:
        os.close(fd)
