"""The processes a benchmark run starts: server, latency proxies, a static file server, mounts.

Every process started here is owned by one object with ``stop()`` that ends exactly that
process (by its id). ``streamfs`` always runs as ``python -m streamfs`` of this checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from latency_proxy import read_stats  # scripts/ is on sys.path (bench.py puts it there)

SCRIPTS = Path(__file__).resolve().parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(interval)


class Background:
    """A process we started; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def streamfs_cli(
    *args: str, log: Path, remote: str | None = None, timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    cmd = [PY, "-m", "streamfs"] + (["--remote", remote] if remote else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"streamfs {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


# --------------------------------------------------------------------------- servers


def start_server(store: Path, log: Path, *extra: str) -> tuple[Background, str]:
    """``streamfs serve`` on an inherited loopback socket (as tests/conftest.py does), with
    ``extra`` options."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cmd = [PY, "-m", "streamfs", "serve", "--root", str(store), "--fd", str(sock.fileno())]
    cmd += extra
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, pass_fds=[sock.fileno()], stdout=out, stderr=out)
    sock.close()
    server = Background("streamfs serve", proc)
    wait_for(lambda: _answers(url + "/v1/metrics"), 60, "streamfs serve")
    return server, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def server_metrics(url: str) -> dict[str, int]:
    return dict(httpx.get(url + "/v1/metrics", timeout=30).json())


class Proxy:
    """scripts/latency_proxy.py in a process of its own, in front of ``target_port``."""

    def __init__(
        self,
        target_port: int,
        rtt_ms: float,
        bandwidth: str | None,
        log: Path,
        listen_port: int = 0,
    ) -> None:
        cmd = [
            PY,
            str(SCRIPTS / "latency_proxy.py"),
            "--target",
            f"127.0.0.1:{target_port}",
            "--listen",
            f"127.0.0.1:{listen_port}",
            "--rtt",
            f"{rtt_ms}ms",
        ]
        if bandwidth:
            cmd += ["--bandwidth", bandwidth]
        with open(log, "ab") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        self.bg = Background("latency proxy", proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "listening":
            self.bg.stop()
            raise RuntimeError(f"the latency proxy did not start (see {log})")
        self.port, self.stats_port = int(line[1]), int(line[2])
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        return read_stats(self.stats_port)

    def stop(self) -> None:
        self.bg.stop()


NGINX_CONF = """
user root;
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {work}/tmp-body;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-fastcgi;
    uwsgi_temp_path {work}/tmp-uwsgi;
    scgi_temp_path {work}/tmp-scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        autoindex on;
        autoindex_exact_size on;
    }}
}}
"""


BLOB_FRONT_PATH = "/blobs"


def start_blob_front(
    store: Path, work: Path, log: Path, public_port: int
) -> tuple[Background, int, Path] | None:
    """nginx serving the store's blobs to URLs the server signs (``streamfs serve
    --blob-url``), configured by ``streamfs nginx-location``; the URLs name ``public_port``
    (the latency proxy in front of it). Returns nginx, its port and the secret's file."""
    if not shutil.which("nginx"):
        return None
    work.mkdir(parents=True, exist_ok=True)
    secret = work / "blob.secret"
    secret.write_text(os.urandom(24).hex())
    url = f"http://127.0.0.1:{public_port}{BLOB_FRONT_PATH}"
    location = subprocess.run(
        [
            *(PY, "-m", "streamfs", "nginx-location", "--root", str(store)),
            *("--blob-url", url, "--blob-secret-file", str(secret)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    port = free_port()
    (work / "empty").mkdir(exist_ok=True)  # nothing but the blobs' location is served
    conf = NGINX_CONF.format(work=work, port=port, root=work / "empty").replace(
        "        autoindex on;\n        autoindex_exact_size on;\n", location
    )
    (work / "nginx.conf").write_text(conf)
    cmd = ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    bg = Background("nginx (blob front)", proc)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), 30, "nginx (blob front)")
    except RuntimeError:
        bg.stop()
        return None
    return bg, port, secret


def start_file_server(root: Path, work: Path, log: Path) -> tuple[Background, int, str] | None:
    """Plain HTTP over ``root`` for the rclone baseline: nginx, else ``rclone serve http``."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if shutil.which("nginx"):
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, port=port, root=root))
        cmd = ["nginx", "-c", str(conf), "-p", str(work)]
        kind = "nginx"
    elif shutil.which("rclone"):
        cmd = ["rclone", "serve", "http", str(root), "--addr", f"127.0.0.1:{port}", "--read-only"]
        kind = "rclone serve http"
    else:
        return None
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=rclone_env(work))
    bg = Background(kind, proc)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), 30, kind)
    except RuntimeError:
        bg.stop()
        return None
    return bg, port, kind


def rclone_env(work: Path) -> dict[str, str]:
    conf = work / "rclone.conf"
    if not conf.exists():
        conf.write_text("")
    return dict(os.environ, RCLONE_CONFIG=str(conf))


def ensure_tools(log: Path) -> dict[str, str]:
    """rclone and nginx from apt if missing (root only); returns what is missing and why."""
    missing = {}
    wanted = [("rclone", "rclone"), ("nginx", "nginx-light")]
    absent = [pkg for tool, pkg in wanted if not shutil.which(tool)]
    if absent and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        with open(log, "ab") as out:
            subprocess.run(["apt-get", "update", "-qq"], stdout=out, stderr=out, env=env)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", *absent], stdout=out, stderr=out, env=env
            )
    for tool, pkg in wanted:
        if not shutil.which(tool):
            missing[tool] = f"`apt-get install {pkg}` failed or not root (see {log.name})"
    return missing


# --------------------------------------------------------------------------- mounts


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def force_unmount(point: Path) -> None:
    if os.path.ismount(point):
        subprocess.run(["fusermount", "-u", "-z", str(point)], capture_output=True)


class StreamfsMount:
    """``streamfs mount SPEC POINT`` (the real CLI, detached daemon) until ``stop()``."""

    def __init__(
        self, spec: str, point: Path, remote: str, cache: Path, log: Path, *extra: str
    ) -> None:
        point.mkdir(parents=True, exist_ok=True)
        self.point = point
        self.log = log
        args = ["mount", spec, str(point), "--cache-dir", str(cache), "--log-file", str(log)]
        streamfs_cli(*args, *extra, log=log.with_suffix(".cli.log"), remote=remote)
        from streamfs._mount import mount_record_path

        record = json.loads(mount_record_path(point).read_text())
        self.pid = int(record["pid"])

    def rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def commit(self) -> None:
        streamfs_cli("commit", str(self.point), "-m", "bench", log=self.log.with_suffix(".cli.log"))

    def stop(self) -> None:
        try:
            streamfs_cli(
                "umount", str(self.point), log=self.log.with_suffix(".cli.log"), timeout=120
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            force_unmount(self.point)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


# rclone's best settings for each access pattern (all with the full VFS cache, as asked)
RCLONE_COMMON = [
    "--read-only",
    "--vfs-cache-mode",
    "full",
    "--dir-cache-time",
    "1h",
    "--attr-timeout",
    "1h",
    "--checkers",
    "32",
    "--no-modtime",
    "--vfs-cache-max-age",
    "1h",
]
RCLONE_PROFILES = {
    "stream": [
        "--buffer-size",
        "64M",
        "--vfs-read-ahead",
        "256M",
        "--vfs-read-chunk-size",
        "32M",
        "--vfs-read-chunk-size-limit",
        "off",
        "--max-read-ahead",
        "1M",
    ],
    "random": ["--buffer-size", "0", "--vfs-read-chunk-size", "1M", "--vfs-read-ahead", "0"],
}


def parse_kib(size: str) -> int:
    """rclone's size suffixes (1M, 512k, 2048) in KiB."""
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    unit = size[-1].lower()
    return int(size[:-1]) * units[unit] if unit in units else int(size) // 1024


class RcloneMount:
    """``rclone mount :http:`` of ``url`` at ``point`` (foreground process we own)."""

    def __init__(
        self, url: str, point: Path, cache: Path, log: Path, profile: str = "stream"
    ) -> None:
        point.mkdir(parents=True, exist_ok=True)
        self.point = point
        cmd = [
            "rclone",
            "mount",
            ":http:",
            str(point),
            "--http-url",
            url,
            "--cache-dir",
            str(cache),
            *RCLONE_COMMON,
            *RCLONE_PROFILES[profile],
            "--log-file",
            str(log),
        ]
        self.started = time.perf_counter()
        self.bg = Background(
            "rclone mount",
            subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=rclone_env(cache.parent),
            ),
        )
        try:
            wait_for(
                lambda: os.path.ismount(point) or self.bg.proc.poll() is not None,
                60,
                "rclone mount",
                0.002,
            )
        except RuntimeError:
            self.stop()
            raise
        if self.bg.proc.poll() is not None:
            raise RuntimeError(f"rclone mount exited (see {log})")
        self.pid = self.bg.pid
        # The kernel caps a FUSE mount's readahead at its 128 KiB default, whatever the daemon
        # asks (rclone's --max-read-ahead); as root, rclone gets the window it asks for, as the
        # streamfs daemon sets its own (streamfs/_fuseloop.py)
        ahead = RCLONE_PROFILES[profile] + RCLONE_COMMON
        if "--max-read-ahead" in ahead:
            from streamfs._fuseloop import raise_readahead

            size = ahead[ahead.index("--max-read-ahead") + 1]
            raise_readahead(str(point), parse_kib(size))

    def rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self) -> None:
        subprocess.run(["fusermount", "-u", str(self.point)], capture_output=True)
        self.bg.stop()
        force_unmount(self.point)


# --------------------------------------------------------------------------- scratch disk


def has_journal(path: Path) -> bool | None:
    """Whether the ext4 file system holding ``path`` keeps a journal; None if it is not ext4."""
    dev = os.stat(path).st_dev
    name = Path(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")).name
    task = Path(f"/sys/fs/ext4/{name}/journal_task")
    return task.read_text().strip() != "<none>" if task.exists() else None


@contextlib.contextmanager
def scratch_disk(point: Path, image: Path, size_gb: int, log: Path) -> Iterator[tuple[bool, str]]:
    """A journaled ext4 file system at ``point`` (a sparse image on a loop device, direct I/O),
    its inode tables and journal written at creation.

    Yields (True, what it is) or, when it cannot be made (not root, no loop device, no
    mkfs.ext4), (False, why not) with ``point`` a plain folder. Unmounted, detached and deleted
    at the end.
    """

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout.strip()

    if os.path.ismount(point):  # left over from a run that was killed
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
    point.mkdir(parents=True, exist_ok=True)
    missing = [t for t in ("losetup", "mkfs.ext4", "mount", "umount") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        yield False, "not root" if os.geteuid() != 0 else f"no {', '.join(missing)}"
        return
    device = ""
    try:
        with open(image, "wb") as f:
            f.truncate(size_gb * 1024**3)
        device = run("losetup", "--find", "--show", "--direct-io=on", str(image))
        # Inode tables and journal zeroed now: left to the kernel's lazy init thread, they were
        # written while the first system ran, which read ~40 % slower than when it ran again.
        # No online discard: every delete of a cache punched holes in the image, and the next
        # system's writes allocated them again. Blocks freed in the file system are reused.
        init = "nodiscard,lazy_itable_init=0,lazy_journal_init=0"
        run("mkfs.ext4", "-q", "-F", "-E", init, device)
        run("mount", device, str(point))
    except (OSError, RuntimeError) as exc:
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        image.unlink(missing_ok=True)
        yield False, str(exc)
        return
    try:
        yield (
            True,
            (
                f"cold caches, downloads and mount points on a journaled ext4 file system made for "
                f"the run ({size_gb} GiB sparse image on a loop device, direct I/O)"
            ),
        )
    finally:
        for sub in point.iterdir():
            force_unmount(sub)
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)
        image.unlink(missing_ok=True)
