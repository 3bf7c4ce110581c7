"""One semantics suite, run against every front end: the import hooks and a real FUSE mount.

Each test gets a ``front``: a local folder showing the same published commit
(pinned, through a tag) or branch, and whether it may be written. What a
test expects comes from the streamfs core (``streamfs.Repo``), so the two
front ends must agree with it and with each other. The mount runs need FUSE
and fail, never skip, without it.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import streamfs
from streamfs._model import BLOCK_SIZE

from .conftest import ServerProcess, run_cli
from .test_mount import Mounts

_rng = random.Random(11)
FILES = {
    "a.txt": b"alpha\n",
    "empty": b"",
    "dir/b.bin": _rng.randbytes(300_000),
    "dir/sub/c.txt": b"c",
    "big.bin": _rng.randbytes(2 * BLOCK_SIZE + 777),
}
DIRS = {"dir", "dir/sub"}


@dataclass
class FrontEnd:
    kind: str
    root: Path
    writable: bool
    repo: str  # OWNER/NAME
    commit: Callable[[str], str | None]  # commit what was written; the new commit id

    def core(self, rev: str = "main") -> streamfs.Repo:
        return streamfs.Repo(f"{self.repo}@{rev}")


def _publish(server: ServerProcess, repo: str, src: Path) -> None:
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    run_cli(server, "repo", "create", repo)
    run_cli(server, "upload", repo, str(src), "-m", "data")
    run_cli(server, "tag", f"{repo}@main", "v1")


@pytest.fixture(params=["hooks-pinned", "hooks-branch", "mount-pinned", "mount-branch"])
def front(
    request: pytest.FixtureRequest,
    server: ServerProcess,
    tmp_path: Path,
    repo_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FrontEnd]:
    kind, revision = str(request.param).split("-")
    writable = revision == "branch"
    repo = f"alice/{repo_name}"
    spec = f"{repo}@{'main' if writable else 'v1'}"
    monkeypatch.setenv("STREAMFS_REMOTE", server.url)
    monkeypatch.setenv("STREAMFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STREAMFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("STREAMFS_HOOKS", raising=False)
    _publish(server, repo, tmp_path / "src")
    if kind == "hooks":
        root = tmp_path / "hooked"
        streamfs.install_hooks(spec, root)
        try:
            yield FrontEnd(kind, root, writable, repo, lambda m: streamfs.commit(m))
        finally:
            streamfs.uninstall_hooks()
        return
    mounts = Mounts(server, tmp_path)
    try:
        extra = ("--commit-delay", "3600") if writable else ()
        point = mounts.mount(spec, *extra)

        def commit(message: str) -> str | None:
            mounts.cli("commit", str(point), "-m", message)
            return run_cli(server, "resolve", repo).stdout.strip()

        yield FrontEnd(kind, point, writable, repo, commit)
    finally:
        mounts.cleanup()


# ------------------------------------------------------------------ reading


def test_listing(front: FrontEnd) -> None:
    root = front.root
    assert sorted(os.listdir(root)) == ["a.txt", "big.bin", "dir", "empty"]
    assert sorted(os.listdir(root / "dir")) == ["b.bin", "sub"]
    with os.scandir(root / "dir") as it:
        kinds = {e.name: (e.is_dir(), e.is_file()) for e in it}
    assert kinds == {"b.bin": (False, True), "sub": (True, False)}
    walked = {
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    }
    assert walked == set(FILES)
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()} == DIRS


def test_stat_sizes_mtimes_and_modes(front: FrontEnd) -> None:
    core = front.core("main" if front.writable else "v1")
    file_mode, dir_mode = (0o644, 0o755) if front.writable else (0o444, 0o555)
    for rel, data in FILES.items():
        st = os.stat(front.root / rel)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == file_mode, rel
        assert st.st_size == len(data)
        assert st.st_mtime == core.view.lookup(rel).mtime > 0
        assert st.st_uid == os.getuid()
        assert st.st_gid == os.getgid() and st.st_nlink == 1
        if front.kind.startswith("mount"):  # what the kernel was told (hooks: no such fields)
            assert st.st_atime == st.st_ctime == st.st_mtime
            assert st.st_blocks == (len(data) + 511) // 512 and st.st_blksize == 128 * 1024
    inodes = {os.stat(front.root / rel).st_ino for rel in FILES}
    assert len(inodes) == len(FILES) and 0 not in inodes
    for rel in DIRS:
        st = os.stat(front.root / rel)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == dir_mode, rel
        assert st.st_nlink == 2
    assert os.path.getsize(front.root / "big.bin") == len(FILES["big.bin"])
    assert os.path.isdir(front.root) and os.path.isfile(front.root / "empty")


def test_whole_and_ranged_reads(front: FrontEnd) -> None:
    for rel, data in FILES.items():
        assert (front.root / rel).read_bytes() == data, rel
    assert (front.root / "a.txt").read_text() == "alpha\n"
    big = FILES["big.bin"]
    rng = random.Random(5)
    offsets = [0, BLOCK_SIZE - 1, BLOCK_SIZE, 2 * BLOCK_SIZE + 700, len(big) - 1, len(big)]
    offsets += [rng.randrange(len(big)) for _ in range(20)]
    with open(front.root / "big.bin", "rb") as f:
        for offset in offsets:
            size = rng.choice([1, 4096, 131_072, BLOCK_SIZE + 3])
            f.seek(offset)
            assert f.read(size) == big[offset : offset + size], (offset, size)


def test_missing_paths_and_wrong_kinds(front: FrontEnd) -> None:
    root = front.root
    for attempt in (
        lambda: os.stat(root / "nope.txt"),
        lambda: os.stat(root / "dir" / "nope"),
        lambda: os.stat(root / "nope" / "deeper"),
        lambda: (root / "dir" / "nope.bin").read_bytes(),
        lambda: os.listdir(root / "nope"),
    ):
        with pytest.raises(FileNotFoundError) as missing:
            attempt()
        assert missing.value.errno == errno.ENOENT
    assert not os.path.exists(root / "nope.txt") and not (root / "dir" / "x").exists()
    with pytest.raises(NotADirectoryError) as below_file:
        os.stat(root / "a.txt" / "child")
    assert below_file.value.errno == errno.ENOTDIR
    with pytest.raises(NotADirectoryError):
        os.listdir(root / "a.txt")
    with pytest.raises(IsADirectoryError) as is_dir:
        (root / "dir").read_bytes()
    assert is_dir.value.errno == errno.EISDIR


# ------------------------------------------------------------------ writing


def _write_ops(root: Path) -> list[Callable[[], object]]:
    return [
        lambda: (root / "new.txt").write_bytes(b"new file"),
        lambda: (root / "dir" / "b.bin").write_bytes(b"overwritten"),
        lambda: (root / "out").mkdir(),
        lambda: os.unlink(root / "a.txt"),
        lambda: os.rename(root / "dir" / "sub" / "c.txt", root / "dir" / "c2.txt"),
    ]


def test_writes_where_allowed_and_erofs_where_not(front: FrontEnd) -> None:
    root = front.root
    if not front.writable:
        for op in _write_ops(root):
            with pytest.raises(OSError) as info:
                op()
            assert info.value.errno == errno.EROFS
        assert sorted(os.listdir(root)) == ["a.txt", "big.bin", "dir", "empty"]
        return
    for op in _write_ops(root):
        op()
    (root / "out" / "x.bin").write_bytes(b"x" * 70_000)
    with open(root / "empty", "a") as f:
        f.write("appended")
    assert sorted(os.listdir(root)) == ["big.bin", "dir", "empty", "new.txt", "out"]
    assert sorted(os.listdir(root / "dir")) == ["b.bin", "c2.txt", "sub"]
    assert (root / "dir" / "b.bin").read_bytes() == b"overwritten"
    assert os.stat(root / "out" / "x.bin").st_size == 70_000
    assert (root / "dir" / "c2.txt").read_bytes() == b"c"
    made = front.commit("semantics writes")
    assert made is not None
    core = front.core(made)
    assert core.read_bytes("new.txt") == b"new file"
    assert core.read_bytes("empty") == b"appended"
    assert core.read_bytes("out/x.bin") == b"x" * 70_000
    assert core.read_bytes("dir/c2.txt") == b"c"
    assert not core.exists("a.txt") and not core.exists("dir/sub/c.txt")
    assert core.read_bytes("big.bin") == FILES["big.bin"]
