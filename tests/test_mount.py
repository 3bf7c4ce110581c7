"""Real FUSE mounts (`streamfs mount` as a daemon) against a real server.

These tests need /dev/fuse and fusermount. They fail, never skip, when FUSE
is missing: CI installs it (make install).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import diskcache
import pytest

from streamfs._model import BLOCK_SIZE
from streamfs._mount import readable_within

from .conftest import ServerProcess, run_cli


def require_fuse() -> None:
    assert os.path.exists("/dev/fuse"), (
        "FUSE is missing: /dev/fuse does not exist (run make install)"
    )
    assert shutil.which("fusermount"), "FUSE is missing: no fusermount (apt-get install fuse)"


class Mounts:
    """Mounts made by one test, always unmounted in teardown."""

    def __init__(self, server: ServerProcess, tmp_path: Path) -> None:
        self.server = server
        self.tmp = tmp_path
        self.env = dict(
            os.environ,
            STREAMFS_REMOTE=server.url,
            STREAMFS_STATE_DIR=str(tmp_path / "state"),
            STREAMFS_CACHE_DIR=str(tmp_path / "cache"),
            STREAMFS_TIMEOUT="3",
        )
        self.points: list[Path] = []

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "streamfs", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"streamfs {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def mount(self, spec: str, *extra: str, name: str | None = None) -> Path:
        require_fuse()
        point = self.tmp / (name or f"mnt{len(self.points)}")
        point.mkdir()
        self.points.append(point)
        out = self.cli("mount", spec, str(point), *extra)
        assert len(out.stdout.strip().splitlines()[-1]) == 64  # the pinned commit id
        return point

    def status(self, point: Path) -> dict[str, object]:
        return self.control(point, {"cmd": "status"})

    def commit_now(self, point: Path, message: str) -> bool:
        """``streamfs commit`` on the control socket (no CLI start-up); whether it committed."""
        changed = self.control(point, {"cmd": "commit", "message": message})["changed"]
        assert isinstance(changed, bool)
        return changed

    def staged_files(self) -> int:
        """Staged files on disk, of every branch mount of the test."""
        return len(list(Path(self.env["STREAMFS_STATE_DIR"]).glob("branches/*/files/*")))

    def control(self, point: Path, request: dict[str, object]) -> dict[str, object]:
        """A request on the daemon's control socket, from this process (no CLI start-up)."""
        from streamfs._mount import control_request

        old = os.environ.get("STREAMFS_STATE_DIR")
        os.environ["STREAMFS_STATE_DIR"] = self.env["STREAMFS_STATE_DIR"]
        try:
            return control_request(point, request)
        finally:
            if old is None:
                del os.environ["STREAMFS_STATE_DIR"]
            else:
                os.environ["STREAMFS_STATE_DIR"] = old

    def cleanup(self) -> None:
        for point in self.points:
            if os.path.ismount(point):
                self.cli("umount", str(point), check=False)
            if os.path.ismount(point):
                subprocess.run(["fusermount", "-u", "-z", str(point)], check=False)


@pytest.fixture
def mounts(server: ServerProcess, tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(server, tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


def publish(mounts: Mounts, repo: str, files: dict[str, bytes]) -> str:
    src = mounts.tmp / f"src-{repo.replace('/', '-')}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    mounts.cli("repo", "create", repo)
    return mounts.cli("upload", repo, str(src), "-m", "data").stdout.strip().splitlines()[-1]


def dataset(n: int, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d{i % 20:02d}/f{i:04d}.bin": rng.randbytes(rng.randint(0, 2000)) for i in range(n)}


def test_find_over_1000_files_and_stat_before_read(mounts: Mounts, repo_name: str) -> None:
    files = dataset(1000)
    publish(mounts, f"alice/{repo_name}", files)
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    found = subprocess.run(
        ["find", str(point), "-type", "f"], capture_output=True, text=True, check=True
    )
    paths = {Path(p).relative_to(point).as_posix() for p in found.stdout.split()}
    assert paths == set(files)
    sizes = {p: os.stat(point / p).st_size for p in files}
    assert sizes == {p: len(d) for p, d in files.items()}
    assert mounts.status(point)["read_calls"] == 0  # sizes came from trees, not reads


def test_reads_are_byte_exact_and_mmap_works(mounts: Mounts, repo_name: str) -> None:
    rng = random.Random(2)
    big = rng.randbytes(3 * BLOCK_SIZE + 777)
    files = {"big.bin": big, "small.txt": b"small file\n", "empty": b""}
    commit = publish(mounts, f"alice/{repo_name}", files)
    point = mounts.mount(f"alice/{repo_name}@{commit}")
    for name, data in files.items():
        assert (point / name).read_bytes() == data
        assert (
            subprocess.run(
                ["cmp", str(point / name), str(mounts.tmp / f"src-alice-{repo_name}" / name)]
            ).returncode
            == 0
        )
    with open(point / "big.bin", "rb") as f:
        for _ in range(50):
            offset, size = (
                rng.randrange(len(big) + 10),
                rng.choice([1, 4096, 200_000, BLOCK_SIZE + 3]),
            )
            f.seek(offset)
            assert f.read(size) == big[offset : offset + size]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert m[BLOCK_SIZE - 10 : BLOCK_SIZE + 10] == big[BLOCK_SIZE - 10 : BLOCK_SIZE + 10]
            assert hashlib.sha256(m).hexdigest() == hashlib.sha256(big).hexdigest()


def test_a_read_only_mount_is_opened_once_and_never_released(
    mounts: Mounts, repo_name: str
) -> None:
    files = {"a.txt": b"alpha\n", "b.txt": b"beta\n"}
    commit = publish(mounts, f"alice/{repo_name}", files)
    log = mounts.tmp / "daemon.log"
    point = mounts.mount(f"alice/{repo_name}@{commit}", "--debug", "--log-file", str(log))
    for _ in range(2):  # the second time from the kernel's page cache
        for name, data in files.items():
            with open(point / name, "rb") as f:  # Python's open() asks isatty: an ioctl
                assert not f.isatty() and f.read() == data
    mounts.cli("umount", str(point))
    calls = [
        line.split("-> ", 1)[1].split()[0] for line in log.read_text().splitlines() if "-> " in line
    ]
    assert calls.count("read_into") == 2  # one a file: a warm open costs the daemon nothing
    # the first open is answered ENOSYS and the kernel sends no open or release after it;
    # ioctl and flush are answered in C; reads come by path
    assert calls.count("open") == 1, calls
    assert not {"release", "ioctl", "flush"} & set(calls), calls


def _fuse_reads(log: Path) -> dict[str, list[tuple[int, int]]]:
    """(offset, size) of each read the daemon was asked for, by file name, from its debug log."""
    reads: dict[str, list[tuple[int, int]]] = {}
    for line in log.read_text().splitlines():
        if "-> read_into " in line:
            path, args = line.split("-> read_into ", 1)[1].split(" ", 1)
            size, offset = args.split(", ")[:2]
            reads.setdefault(path.lstrip("/"), []).append((int(offset), int(size[1:].split()[0])))
    return reads


def test_fuse_reads_are_large_for_a_stream_and_no_larger_than_a_random_read(
    mounts: Mounts, repo_name: str
) -> None:
    # libfuse 2 gets 128 KiB requests from the kernel; the daemon widens its INIT reply to
    # 1 MiB ones and (as root) the mount's readahead to 4 MiB. Not root, the readahead
    # stays at the kernel's 128 KiB: two reads for 256 KiB.
    rng = random.Random(13)
    files = {
        "small.bin": rng.randbytes(256 * 1024),
        "big.bin": rng.randbytes(2 * 1024 * 1024),
        "random.bin": rng.randbytes(16 * 1024 * 1024),
    }
    commit = publish(mounts, f"alice/{repo_name}", files)
    log = mounts.tmp / "daemon.log"
    point = mounts.mount(f"alice/{repo_name}@{commit}", "--debug", "--log-file", str(log))
    root = os.geteuid() == 0
    if root:
        device = next(
            line.split()[2]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == str(point)
        )
        assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "4096"
    assert (point / "small.bin").read_bytes() == files["small.bin"]
    assert (point / "big.bin").read_bytes() == files["big.bin"]
    # A random 1 MiB read, not page-aligned (257 pages): read as it is, with nothing ahead
    at = 5 * 1024 * 1024 + 12345
    with open(point / "random.bin", "rb", buffering=0) as f:
        f.seek(at)
        assert f.read(1024 * 1024) == files["random.bin"][at : at + 1024 * 1024]
    mounts.cli("umount", str(point))
    reads = _fuse_reads(log)
    request = 1024 * 1024 if root else 128 * 1024  # the largest a request can be
    assert len(reads["small.bin"]) == (1 if root else 2)
    assert len(reads["big.bin"]) <= 2 * 1024 * 1024 // request, reads["big.bin"]
    if root:
        first = at - at % 4096
        asked = sorted(reads["random.bin"])
        assert asked[0][0] == first, asked
        assert sum(size for _, size in asked) == 257 * 4096, asked


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_eight_processes_read_different_files(mounts: Mounts, repo_name: str) -> None:
    rng = random.Random(4)
    files = {
        f"f{i}.bin": rng.randbytes(rng.randint(BLOCK_SIZE // 2, 2 * BLOCK_SIZE)) for i in range(8)
    }
    publish(mounts, f"alice/{repo_name}", files)
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        hashes = pool.map(_hash_file, [str(point / n) for n in files])
    assert hashes == [hashlib.sha256(d).hexdigest() for d in files.values()]


def test_two_streams_through_one_file_each_read_right_and_fetch_each_block_once(
    mounts: Mounts, repo_name: str
) -> None:
    data = random.Random(6).randbytes(6 * BLOCK_SIZE + 4321)
    publish(mounts, f"alice/{repo_name}", {"video.bin": data})
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    before = mounts.server.metrics()["blob_bytes_sent"]
    mib = 1024 * 1024
    half = 3 * BLOCK_SIZE
    with open(point / "video.bin", "rb") as a, open(point / "video.bin", "rb") as b:
        b.seek(half)
        first, second = [], []
        for _ in range(half // mib):  # the two interleave: a stream each in the daemon
            first.append(a.read(mib))
            second.append(b.read(mib))
        second.append(b.read())
    assert b"".join(first) == data[:half]
    assert b"".join(second) == data[half:]
    assert mounts.server.metrics()["blob_bytes_sent"] - before == len(data)


def test_second_read_does_not_reach_the_daemon(mounts: Mounts, repo_name: str) -> None:
    data = random.Random(5).randbytes(BLOCK_SIZE + 1000)
    publish(mounts, f"alice/{repo_name}", {"a.bin": data})
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    assert (point / "a.bin").read_bytes() == data
    after_first = mounts.status(point)["read_calls"]
    assert isinstance(after_first, int) and after_first > 0
    assert (point / "a.bin").read_bytes() == data
    assert mounts.status(point)["read_calls"] == after_first


def test_the_daemon_prefetches_a_folder_without_claiming_it(mounts: Mounts, repo_name: str) -> None:
    # The daemon is a forked process, as a DataLoader worker is, but it is the machine's only
    # reader of its mount: claims in the shared cache would only cost it time (see _engine)
    rng = random.Random(8)
    files = {f"train/img{i:03d}.jpg": rng.randbytes(rng.randint(1000, 30_000)) for i in range(80)}
    publish(mounts, f"alice/{repo_name}", files)
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    before = mounts.server.metrics()
    for rel, data in files.items():
        assert (point / rel).read_bytes() == data
    after = mounts.server.metrics()
    assert after["blob_batch_blobs"] - before["blob_batch_blobs"] > 0  # it did prefetch
    claims = diskcache.Cache(mounts.env["STREAMFS_CACHE_DIR"] + "/claims")
    try:
        assert len(claims) == 0
    finally:
        claims.close()


def test_erofs_enoent_and_eio(mounts: Mounts, repo_name: str) -> None:
    data = random.Random(6).randbytes(2 * BLOCK_SIZE + 5)
    publish(mounts, f"alice/{repo_name}", {"a.bin": data, "dir/b.txt": b"b"})
    mounts.cli("tag", f"alice/{repo_name}@main", "v1")
    point = mounts.mount(f"alice/{repo_name}@v1")

    for attempt in (
        lambda: (point / "new.txt").write_bytes(b"x"),
        lambda: (point / "a.bin").unlink(),
        lambda: (point / "newdir").mkdir(),
        lambda: os.rename(point / "a.bin", point / "c.bin"),
        lambda: open(point / "a.bin", "r+b").close(),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    for missing in ("nope.txt", "dir/nope", "nope/deeper"):
        with pytest.raises(FileNotFoundError):
            os.stat(point / missing)

    with open(point / "a.bin", "rb", buffering=0) as f:
        assert f.read(100) == data[:100]
        mounts.server.kill()
        f.seek(2 * BLOCK_SIZE)
        with pytest.raises(OSError) as info:
            f.read(5)
    assert info.value.errno == errno.EIO
    mounts.cli("umount", str(point))  # unmounting works with the server gone
    assert not os.path.ismount(point)


def test_an_unknown_repo_or_revision_fails_the_mount_with_its_own_message(
    mounts: Mounts, repo_name: str
) -> None:
    require_fuse()
    publish(mounts, f"alice/{repo_name}", {"a.txt": b"a"})
    cases = [
        (f"alice/{repo_name}-nope", f"repository alice/{repo_name}-nope not found"),
        (f"alice/{repo_name}@nope", f"revision 'nope' not found in alice/{repo_name}"),
    ]
    for i, (spec, message) in enumerate(cases):
        point = mounts.tmp / f"point{i}"
        point.mkdir()
        failed = mounts.cli("mount", spec, str(point), check=False)
        assert failed.returncode == 1
        assert failed.stderr.strip() == f"streamfs: error: {message}"  # no log line, no traceback
        assert not os.path.ismount(point)


def test_branch_mount_writes_become_one_commit(mounts: Mounts, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    publish(
        mounts,
        repo,
        {"keep.txt": b"keep", "old.txt": b"old", "gone.txt": b"gone", "sub/x.txt": b"x"},
    )
    before = run_cli(mounts.server, "resolve", repo).stdout.strip()
    point = mounts.mount(f"{repo}@main", "--commit-delay", "3600")

    (point / "new").mkdir()
    (point / "new" / "a.bin").write_bytes(b"A" * 300_000)
    (point / "top.txt").write_text("hello")
    (point / "gone.txt").unlink()
    os.rename(point / "old.txt", point / "sub" / "renamed.txt")
    assert sorted(os.listdir(point)) == ["keep.txt", "new", "sub", "top.txt"]
    assert (point / "sub" / "renamed.txt").read_bytes() == b"old"
    assert run_cli(mounts.server, "resolve", repo).stdout.strip() == before  # nothing committed yet

    out = mounts.cli("commit", str(point), "-m", "edits through the mount").stdout
    after = run_cli(mounts.server, "resolve", repo).stdout.strip()
    assert after in out and after != before
    log = run_cli(mounts.server, "log", repo, "--oneline").stdout.splitlines()
    assert log[0].endswith("edits through the mount") and log[1].split()[0] == before[:12]
    diff = run_cli(mounts.server, "diff", f"{repo}@{before}", after).stdout.splitlines()
    assert sorted(diff[:-1]) == sorted(
        [
            "A  new/a.bin  (293.0 KiB)",
            "A  sub/renamed.txt  (3 B)",
            "A  top.txt  (5 B)",
            "D  gone.txt  (4 B)",
            "D  old.txt  (3 B)",
        ]
    )

    second = mounts.mount(f"{repo}@main", "--read-only")
    assert (second / "new" / "a.bin").read_bytes() == b"A" * 300_000
    assert (second / "top.txt").read_text() == "hello"
    assert not (second / "gone.txt").exists()


def test_staged_file_survives_a_killed_daemon(mounts: Mounts, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    publish(mounts, repo, {"a.txt": b"a"})
    point = mounts.mount(f"{repo}@main", "--commit-delay", "3600")
    (point / "precious.txt").write_bytes(b"do not lose me")  # closed: staged and journaled
    # close(2) returns before the kernel's release reaches the daemon; a descriptor still
    # open (a dup) holds the release back for good, so only close(2)'s flush journals this
    fd = os.open(point / "held.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"closed once, still open")
    held = os.dup(fd)
    os.close(fd)
    pid = int(mounts.status(point)["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.close(held)
    subprocess.run(["fusermount", "-u", "-z", str(point)], check=False)
    assert "precious.txt" not in run_cli(mounts.server, "ls", repo).stdout

    mounts.points.remove(point)
    again = mounts.mount(f"{repo}@main", name="again")
    listed = run_cli(mounts.server, "ls", repo).stdout
    assert "precious.txt" in listed and "held.txt" in listed
    assert (again / "precious.txt").read_bytes() == b"do not lose me"
    assert (again / "held.txt").read_bytes() == b"closed once, still open"
    assert run_cli(mounts.server, "log", repo, "-n", "1").stdout.count("recovered") == 1


def test_commit_right_after_close_includes_the_file(mounts: Mounts, repo_name: str) -> None:
    # close(2) returns before the kernel's release reaches the daemon; a commit asked at once
    # (here on the control socket, faster than any CLI start-up) must still include the file
    repo = f"alice/{repo_name}"
    publish(mounts, repo, {"a.txt": b"a"})
    point = mounts.mount(f"{repo}@main", "--commit-delay", "3600")
    for i in range(30):
        (point / f"f{i}.bin").write_bytes(bytes([i]) * 200_000)
        assert mounts.commit_now(point, f"f{i}"), i
        assert mounts.status(point)["pending"] == 0
    listed = run_cli(mounts.server, "ls", repo).stdout
    assert all(f"f{i}.bin" in listed for i in range(30))

    # fsync(2) makes bytes durable but does not close: a file still open is not committed
    with open(point / "open.bin", "wb") as f:
        f.write(b"half")
        f.flush()
        os.fsync(f.fileno())
        assert not mounts.commit_now(point, "x")
        f.write(b" and the rest")
    assert mounts.commit_now(point, "open.bin")
    assert mounts.status(point)["pending"] == 0  # read back from the new commit, not staging
    assert (point / "open.bin").read_bytes() == b"half and the rest"


def test_a_file_saved_by_rename_right_after_close_is_committed(
    mounts: Mounts, repo_name: str
) -> None:
    # the atomic-save pattern (write a temporary file, close, rename it into place): the
    # rename may reach the daemon before the release of the file it moves
    repo = f"alice/{repo_name}"
    publish(mounts, repo, {"a.txt": b"a"})
    point = mounts.mount(f"{repo}@main", "--commit-delay", "3600")
    for i in range(20):
        (point / f".tmp{i}").write_bytes(b"saved %d" % i)
        os.replace(point / f".tmp{i}", point / f"saved{i}.txt")
    assert mounts.commit_now(point, "saves")
    assert mounts.status(point)["pending"] == 0
    listed = run_cli(mounts.server, "ls", repo).stdout
    assert all(f"saved{i}.txt" in listed for i in range(20)) and ".tmp" not in listed
    assert (point / "saved7.txt").read_bytes() == b"saved 7"

    # deterministic: a file renamed while still open for writing, closed after
    with open(point / ".partial", "wb") as f:
        f.write(b"first half, ")
        os.replace(point / ".partial", point / "whole.txt")
        f.write(b"second half")
    assert mounts.commit_now(point, "whole")
    assert mounts.status(point)["pending"] == 0
    assert (point / "whole.txt").read_bytes() == b"first half, second half"

    # a file unlinked (or renamed over) while open: its staged bytes go with its last close
    before = mounts.staged_files()
    with open(point / "doomed.bin", "wb") as f:
        f.write(b"x" * 1000)
        os.unlink(point / "doomed.bin")
        with open(point / "other.bin", "wb") as g:
            g.write(b"y")
        os.replace(point / "whole.txt", point / "other.bin")  # other.bin's bytes: replaced
        f.write(b"more")
    assert mounts.commit_now(point, "x")
    assert mounts.staged_files() == before
    assert mounts.status(point)["pending"] == 0
    assert (point / "other.bin").read_bytes() == b"first half, second half"
    assert not (point / "doomed.bin").exists() and not (point / "whole.txt").exists()


def test_a_file_deleted_while_open_is_never_committed_under_libfuses_hidden_name(
    mounts: Mounts, repo_name: str
) -> None:
    # libfuse renames a file unlinked while open to .fuse_hiddenNNNN and unlinks that name
    # after the last release: a commit meanwhile (or the commit timer) must not upload it
    repo = f"alice/{repo_name}"
    publish(mounts, repo, {"a.txt": b"a", "b.txt": b"b"})
    point = mounts.mount(f"{repo}@main", "--commit-delay", "3600")
    with open(point / "a.txt", "rb") as reader, open(point / "new.bin", "wb") as writer:
        writer.write(b"new")
        os.unlink(point / "a.txt")
        os.unlink(point / "new.bin")
        hidden = [n for n in os.listdir(point) if n.startswith(".fuse_hidden")]
        assert len(hidden) == 2  # what libfuse did with them
        assert mounts.commit_now(point, "a.txt deleted")
        assert mounts.status(point)["pending"] == 0
        assert reader.read() == b"a"  # still readable by the process that holds it
    listed = run_cli(mounts.server, "ls", repo).stdout
    assert "b.txt" in listed and "a.txt" not in listed and ".fuse_hidden" not in listed
    assert not mounts.commit_now(point, "nothing left")  # whether libfuse unlinked them yet


def test_umount_with_a_reader_inside_does_not_hang(mounts: Mounts, repo_name: str) -> None:
    publish(mounts, f"alice/{repo_name}", {"a.txt": b"a" * 1000})
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    with open(point / "a.txt", "rb") as reader:  # a reader still inside
        assert reader.read(10) == b"a" * 10
        mounts.cli("umount", str(point))
        assert not os.path.ismount(point)


def _serving_threads(pid: int) -> set[int]:
    """The daemon's threads but trio's workers, which come and go with the cache writes they
    run: trio renames a worker ("Trio thread N", or its job's name while it runs one, a write
    that may still run after the reads it served returned), the others keep the process's."""
    own = Path(f"/proc/{pid}/comm").read_text()
    tids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "comm").read_text() == own:
                tids.add(int(task.name))
    return tids


def test_bursts_of_parallel_reads_are_served_by_the_same_threads(
    mounts: Mounts, repo_name: str
) -> None:
    # libfuse's own loop starts a thread whenever none is idle and ends one whenever more than
    # ten are: two bursts of 16 readers, and the threads of the first are gone by the second
    rng = random.Random(12)
    files = {f"d{i % 4}/f{i:03d}.bin": rng.randbytes(rng.randint(1000, 300_000)) for i in range(96)}
    publish(mounts, f"alice/{repo_name}", files)
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    pid = int(mounts.status(point)["pid"])  # type: ignore[call-overload]
    names = sorted(files)

    def burst(part: list[str]) -> None:
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda rel: (point / rel).read_bytes(), part))
        assert got == [files[rel] for rel in part]

    burst(names[:48])
    before = _serving_threads(pid)
    burst(names[48:])
    assert _serving_threads(pid) == before


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not a child of this one) ended within ``timeout`` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return readable_within(fd, timeout)
    finally:
        os.close(fd)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "a-file-held-open"])
def test_sigterm_unmounts_and_ends_the_daemon(mounts: Mounts, repo_name: str, busy: bool) -> None:
    publish(mounts, f"alice/{repo_name}", {"a.txt": b"a" * 1000})
    point = mounts.mount(f"alice/{repo_name}@main", "--read-only")
    pid = int(mounts.status(point)["pid"])  # type: ignore[call-overload]
    # held open, the detached file system stays alive: the daemon leaves it to the kernel
    held = os.open(point / "a.txt", os.O_RDONLY) if busy else None
    try:
        if held is not None:
            assert os.read(held, 10) == b"a" * 10
        os.kill(pid, signal.SIGTERM)
        assert _wait_for_exit(pid, 30), "the daemon did not end after SIGTERM"
        assert not os.path.ismount(point)
    finally:
        if held is not None:
            with contextlib.suppress(OSError):  # ENOTCONN: the daemon is gone
                os.close(held)


def test_racing_writer_on_the_same_path_is_reported_and_kept(
    mounts: Mounts, repo_name: str
) -> None:
    repo = f"alice/{repo_name}"
    publish(mounts, repo, {"labels.csv": b"v1"})
    point = mounts.mount(f"{repo}@main", "--commit-delay", "3600")
    (point / "labels.csv").write_bytes(b"from the mount")
    other = mounts.tmp / "labels.csv"
    other.write_bytes(b"from someone else")
    mounts.cli("upload", f"{repo}@main", str(other), "-m", "racing writer")

    failed = mounts.cli("commit", str(point), "-m", "mine", check=False)
    assert failed.returncode == 1 and "labels.csv" in failed.stderr
    status = mounts.status(point)
    assert status["pending"] == 1 and "labels.csv" in str(status["last_error"])
    assert (point / "labels.csv").read_bytes() == b"from the mount"  # kept, not lost
    assert (
        run_cli(mounts.server, "log", repo, "-n", "1", "--oneline").stdout.split(" ", 1)[1].strip()
        == "racing writer"
    )
