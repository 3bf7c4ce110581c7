"""Import hooks against a real server: patched file APIs, processes, writes, uninstall.

The semantics shared with the mount (listing, stat, reads, errors, writes)
are in test_semantics.py; this file covers what only the hooks have.
"""

from __future__ import annotations

import builtins
import errno
import glob
import hashlib
import io
import mmap
import multiprocessing
import multiprocessing.spawn
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio

import streamfs
from streamfs._errors import ReadOnlyError
from streamfs._hookconfig import ENV_HOOKS, HookSpec, specs_from
from streamfs._hookfs import HookFS, is_normal
from streamfs._model import BLOCK_SIZE
from streamfs._remote import Remote

from .conftest import ServerProcess, run_cli, wait_for_prefetches


def publish(server: ServerProcess, repo: str, files: dict[str, bytes], src: Path) -> str:
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    run_cli(server, "repo", "create", repo)
    return run_cli(server, "upload", repo, str(src), "-m", "data").stdout.strip().splitlines()[-1]


def upload(server: ServerProcess, spec: str, files: dict[str, bytes], src: Path) -> str:
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return run_cli(server, "upload", spec, str(src), "-m", "more").stdout.strip().splitlines()[-1]


@pytest.fixture
def env(server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings every process of the test inherits; hooks always uninstalled afterwards."""
    monkeypatch.setenv("STREAMFS_REMOTE", server.url)
    monkeypatch.setenv("STREAMFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STREAMFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STREAMFS_TIMEOUT", "10")
    for name in ("STREAMFS_REPO", "STREAMFS_PATH", "STREAMFS_TOKEN", ENV_HOOKS):
        monkeypatch.delenv(name, raising=False)
    try:
        yield tmp_path
    finally:
        streamfs.uninstall_hooks()


def _engine_threads() -> int:
    return sum(t.name == "streamfs-engine" for t in threading.enumerate())


def touch_open(path: Path, mode: str) -> None:
    with open(path, mode):
        pass


def dataset(n: int = 24, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"d{i % 4}/f{i:03d}.bin": rng.randbytes(rng.randint(0, 50_000)) for i in range(n)}
    files["top.txt"] = b"top level\n"
    return files


@pytest.fixture
def data(env: Path, server: ServerProcess, repo_name: str) -> tuple[str, Path, dict[str, bytes]]:
    """A published repo hooked (at main) at ENV/data: (repo id, hooked folder, files)."""
    files = dataset()
    repo = f"alice/{repo_name}"
    publish(server, repo, files, env / "src")
    streamfs.install_hooks(f"{repo}@main", env / "data")
    return repo, env / "data", files


# ------------------------------------------------------------------ the core, without patching


def test_specs_come_from_arguments_then_environment_then_toml(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "streamfs.toml").write_text(
        'remote = "http://toml:1"\n[[hooks]]\nrepo = "o/r@v1"\npath = "data"\n'
        '[[hooks]]\nrepo = "o/s@main"\n'
    )
    cwd = str(tmp_path / "a" / "b")
    assert specs_from("o/x@v2", "here", env={}, cwd=cwd) == [
        HookSpec("o/x@v2", os.path.join(cwd, "here"))
    ]
    from_env = specs_from(None, None, env={"STREAMFS_REPO": "o/y", "STREAMFS_PATH": "p"}, cwd=cwd)
    assert from_env == [HookSpec("o/y", os.path.join(cwd, "p"))]
    from_toml = specs_from(None, None, env={}, cwd=cwd)
    assert [(s.repo, s.path, s.remote) for s in from_toml] == [
        ("o/r@v1", str(tmp_path / "data"), "http://toml:1"),
        ("o/s@main", str(tmp_path / "s"), "http://toml:1"),
    ]
    env_wins = specs_from(None, None, env={"STREAMFS_REMOTE": "http://env:2"}, cwd=cwd)
    assert env_wins[0].remote == "http://env:2"
    with pytest.raises(streamfs.InvalidInputError, match="no repository given"):
        specs_from(None, None, env={}, cwd="/")


def test_paths_map_to_the_longest_hooked_root(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = HookFS()

    class Fake:
        def __init__(self, root: str) -> None:
            self.root = root

    outer, inner = Fake("/w/data"), Fake("/w/data/labels")
    fs.add(outer)  # type: ignore[arg-type]
    fs.add(inner)  # type: ignore[arg-type]
    assert fs.match("/w/data/x/y.bin") == (outer, "x/y.bin")
    assert fs.match("/w/data/labels/a.txt") == (inner, "a.txt")
    assert fs.match("/w/data/./x/../z") == (outer, "z")
    assert fs.match("/w/data") == (outer, "")
    assert fs.match("/w/database") is None and fs.match("/w") is None
    # paths that are not normal ones are made so first
    assert fs.match("/w/data//x/y.bin/") == (outer, "x/y.bin")
    assert fs.match("/w/data/labels/..") == (outer, "")
    assert fs.match("/w/data/..") is None and fs.match("//w/data/x") is None
    assert fs.match("/w/data/.hidden/a") == (outer, ".hidden/a")
    monkeypatch.chdir("/")
    assert fs.match("w/data/x") == (outer, "x")


def test_a_path_taken_as_normal_is_what_abspath_makes_of_it() -> None:
    parts = ["w", "data", ".", "..", "", ".hidden", "..x", "x..", ".bench", "a.b", "..."]
    paths = {"/", "//", "", "."}
    for a in parts:
        for b in parts:
            for c in parts:
                for lead, tail in (("/", ""), ("/", "/"), ("//", ""), ("", "")):
                    paths.add(f"{lead}{a}/{b}/{c}{tail}")
    normal = [p for p in paths if is_normal(p)]
    assert all(os.path.abspath(p) == p for p in normal)  # no normpath skipped that mattered
    # and no path that abspath leaves alone is normalized for nothing, but the root and
    # those starting '//' (which POSIX lets a system read its own way, and abspath keeps)
    kept = [p for p in paths if os.path.abspath(p) == p and p != "/" and p[:2] != "//"]
    assert kept and all(is_normal(p) for p in kept)
    assert is_normal("/home/me/.cache/streamfs/.bench/run/hooked/d03/f0001.bin")


# ------------------------------------------------------------------ patching


def _patched_objects() -> dict[str, object]:
    return {
        "open": builtins.open,
        "io.open": io.open,
        **{
            f"os.{n}": getattr(os, n)
            for n in (
                "open",
                "stat",
                "lstat",
                "listdir",
                "scandir",
                "access",
                "listxattr",
                "mkdir",
                "unlink",
                "remove",
                "rmdir",
                "rename",
                "replace",
            )
        },
        "spawn": multiprocessing.spawn.get_preparation_data,
    }


def test_uninstall_restores_every_original(
    env: Path, server: ServerProcess, repo_name: str
) -> None:
    publish(server, f"alice/{repo_name}", {"a.txt": b"a"}, env / "src")
    before = _patched_objects()
    commits = streamfs.install_hooks(f"alice/{repo_name}", env / "data")
    assert list(commits) == [str(env / "data")]
    during = _patched_objects()
    assert all(during[k] is not before[k] for k in before)
    assert (env / "data" / "a.txt").read_bytes() == b"a"
    assert ENV_HOOKS in os.environ
    assert _engine_threads() == 1
    streamfs.uninstall_hooks()
    assert _engine_threads() == 0  # the engine (a thread and its connections) stopped too
    after = _patched_objects()
    assert all(after[k] is before[k] for k in before), [
        k for k in before if after[k] is not before[k]
    ]
    assert ENV_HOOKS not in os.environ
    assert not (env / "data" / "a.txt").exists()


def test_file_apis_see_the_commit(data: tuple[str, Path, dict[str, bytes]], tmp_path: Path) -> None:
    _, root, files = data
    dirs = {p.rsplit("/", 1)[0] for p in files if "/" in p}
    assert os.path.isdir(root) and os.path.exists(root / "top.txt")
    assert os.path.isfile(root / "d1/f001.bin") and not os.path.isdir(root / "d1/f001.bin")
    assert os.path.getsize(root / "d1/f001.bin") == len(files["d1/f001.bin"])
    assert os.access(root / "top.txt", os.R_OK) and not os.access(root / "top.txt", os.X_OK)
    assert sorted(os.listdir(root)) == sorted([*dirs, "top.txt"])
    assert sorted(os.listdir(os.fsencode(root))) == sorted(os.fsencode(n) for n in os.listdir(root))
    walked = {
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, fs in os.walk(root)
        for f in fs
    }
    assert walked == set(files)
    assert {os.path.relpath(p, root) for p in glob.glob(f"{root}/**/*.bin", recursive=True)} == {
        p for p in files if p.endswith(".bin")
    }
    with os.scandir(root / "d2") as it:
        entries = {e.name: e for e in it}
    entry = entries["f002.bin"]
    assert entry.is_file() and not entry.is_dir() and not entry.is_symlink()
    assert entry.stat().st_size == len(files["d2/f002.bin"]) and entry.inode() > 0
    assert os.fspath(entry) == str(root / "d2" / "f002.bin")

    path = Path(root)
    assert path.exists() and (path / "top.txt").exists() and not (path / "nope").exists()
    assert (path / "d0").is_dir() and (path / "top.txt").is_file()
    assert (path / "top.txt").stat().st_mtime > 0
    assert sorted(p.name for p in path.iterdir()) == sorted(os.listdir(root))
    assert {p.relative_to(path).as_posix() for p in path.rglob("*.bin")} == {
        p for p in files if p.endswith(".bin")
    }
    assert sorted(p.name for p in (path / "d3").glob("f*")) == sorted(
        p.split("/")[1] for p in files if p.startswith("d3/")
    )
    assert (path / "top.txt").read_text() == "top level\n"
    assert (path / "d0/f000.bin").read_bytes() == files["d0/f000.bin"]
    with (path / "top.txt").open() as f:
        assert f.readline() == "top level\n"

    shutil.copy(root / "d1/f005.bin", tmp_path / "copy.bin")
    shutil.copy2(root / "d1/f005.bin", tmp_path / "copy2.bin")
    assert (tmp_path / "copy.bin").read_bytes() == files["d1/f005.bin"]
    assert os.stat(tmp_path / "copy2.bin").st_mtime == os.stat(root / "d1/f005.bin").st_mtime
    shutil.copytree(root / "d3", tmp_path / "tree")
    assert sorted(os.listdir(tmp_path / "tree")) == sorted(os.listdir(root / "d3"))


def test_an_unknown_repo_or_revision_raises_its_own_error(
    env: Path, server: ServerProcess, repo_name: str
) -> None:
    from streamfs._errors import RepoNotFoundError, RevisionNotFoundError

    publish(server, f"alice/{repo_name}", {"a.txt": b"a"}, env / "src")
    with pytest.raises(RepoNotFoundError, match="not found"):
        streamfs.install_hooks(f"alice/{repo_name}-nope", env / "data")
    with pytest.raises(RevisionNotFoundError, match="'nope' not found"):
        streamfs.install_hooks(f"alice/{repo_name}@nope", env / "data")
    assert not (env / "data").exists()  # nothing hooked: the path is the user's as before


def test_local_files_take_precedence(env: Path, server: ServerProcess, repo_name: str) -> None:
    files = dataset()
    publish(server, f"alice/{repo_name}", files, env / "src")
    root = env / "data"
    (root / "d0").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"my own file")  # the user's own files, before the hooks
    (root / "d0" / "mine.txt").write_bytes(b"mine")
    (root / "d0" / "f004.bin").symlink_to(root / "nowhere")  # dangling, and still the user's
    streamfs.install_hooks(f"alice/{repo_name}", root)
    with pytest.raises(FileNotFoundError), open(root / "d0" / "f004.bin", "rb"):
        pass
    assert (root / "top.txt").read_bytes() == b"my own file"
    assert os.path.getsize(root / "top.txt") == len(b"my own file")
    names = os.listdir(root / "d0")
    assert len(names) == len(set(names))
    assert set(names) == {"mine.txt"} | {p.split("/")[1] for p in files if p.startswith("d0/")}
    with os.scandir(root / "d0") as it:
        assert sorted(e.name for e in it) == sorted(names)
    assert (root / "d0" / "f000.bin").read_bytes() == files["d0/f000.bin"]
    assert (root / "d0" / "mine.txt").read_bytes() == b"mine"


def test_a_ranged_read_fetches_the_slice(env: Path, server: ServerProcess, repo_name: str) -> None:
    big = random.Random(3).randbytes(3 * BLOCK_SIZE + 123)
    publish(server, f"alice/{repo_name}", {"big.bin": big}, env / "src")
    streamfs.install_hooks(f"alice/{repo_name}", env / "data")
    before = server.metrics().get("blob_bytes_sent", 0)
    with open(env / "data" / "big.bin", "rb") as f:
        f.seek(2 * BLOCK_SIZE + 5)
        assert f.read(1000) == big[2 * BLOCK_SIZE + 5 : 2 * BLOCK_SIZE + 1005]
    sent = server.metrics()["blob_bytes_sent"] - before
    assert 0 < sent <= BLOCK_SIZE  # one block of four
    assert hashlib.sha256((env / "data" / "big.bin").read_bytes()).digest() == (
        hashlib.sha256(big).digest()
    )


def test_descriptors_materialize_into_the_mirror(data: tuple[str, Path, dict[str, bytes]]) -> None:
    _, root, files = data
    want = files["d1/f009.bin"]
    with (
        open(root / "d1/f009.bin", "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        assert m[:] == want
    local = streamfs.materialize(root / "d1/f009.bin")
    assert not local.startswith(str(root)) and os.path.basename(local) == "f009.bin"
    assert os.stat(local).st_mtime == os.stat(root / "d1/f009.bin").st_mtime
    fd = os.open(root / "d1/f009.bin", os.O_RDONLY)
    try:
        assert os.read(fd, len(want) + 1) == want
    finally:
        os.close(fd)
    folder = streamfs.materialize(root / "d2")
    assert sorted(os.listdir(folder)) == sorted(os.listdir(root / "d2"))


def test_a_cached_small_file_opens_as_the_caches_own_file(
    data: tuple[str, Path, dict[str, bytes]], server: ServerProcess, env: Path
) -> None:
    """A warm open of a small file reads the cache's file natively (no Python a read), under
    the user's name, in every mode; one evicted since is fetched again."""
    from streamfs._cache import BlockCache

    _, root, files = data
    rel = max(files, key=lambda p: len(files[p]))
    assert len(files[rel]) >= 32 * 1024  # a file of the cache's own, not a value in SQLite
    path = root / rel
    with open(path, "rb") as f:  # fetched now
        assert not isinstance(f.raw, io.FileIO)
        assert f.read() == files[rel]
    blob_reads = ("blob_get_requests", "blob_batch_requests")
    before = server.metrics()
    with open(path, "rb") as f:
        assert type(f.raw) is io.FileIO and f.name == str(path)
        assert f.read(10) == files[rel][:10] and f.read() == files[rel][10:]
        assert os.fstat(f.fileno()).st_size == len(files[rel])
    with open(path, encoding="latin-1", newline="") as t:
        assert t.name == str(path) and t.read() == files[rel].decode("latin-1")
    with open(path, "rb", buffering=0) as raw:
        assert type(raw) is io.FileIO and raw.readall() == files[rel]
    after = server.metrics()
    assert [after.get(k, 0) for k in blob_reads] == [before.get(k, 0) for k in blob_reads]
    BlockCache(env / "cache").clear()  # another process empties the cache: the file is gone
    with open(path, "rb") as f:
        assert not isinstance(f.raw, io.FileIO)
        assert f.read() == files[rel]
    assert server.metrics()["blob_get_requests"] == before.get("blob_get_requests", 0) + 1


def test_prefetched_files_open_from_the_cache_and_leave_no_copy_in_memory(
    env: Path, server: ServerProcess, repo_name: str
) -> None:
    """The prefetcher keeps what it fetched in memory for its first reader too; an open from
    the cache's file drops that copy (it is in the cache: a copy kept would wait for a reader
    that never comes, and while any is held every open looks among them)."""
    from streamfs._hookpatch import fs

    rng = random.Random(5)
    files = {f"train/{i:03d}.bin": rng.randbytes(rng.randint(33_000, 60_000)) for i in range(30)}
    publish(server, f"alice/{repo_name}", files, env / "src")
    streamfs.install_hooks(f"alice/{repo_name}", env / "data")
    order = sorted(files)
    for rel in order[:2]:  # the second open starts the folder's prefetch
        assert (env / "data" / rel).read_bytes() == files[rel]
    wait_for_prefetches(fs.repos[0])
    fetcher = fs.repos[0].client.engine.fetcher
    assert fetcher is not None and len(fetcher.fresh) == len(files) - 2
    for rel in order[2:]:
        with open(env / "data" / rel, "rb") as f:
            assert type(f.raw) is io.FileIO and f.read() == files[rel]
    assert len(fetcher.fresh) == 0 and fetcher.fresh.nbytes == 0


def test_a_missing_file_is_one_plain_enoent(data: tuple[str, Path, dict[str, bytes]]) -> None:
    _, root, _ = data
    for attempt in (
        lambda: touch_open(root / "nope.txt", "rb"),
        lambda: os.stat(root / "d0" / "nope"),
        lambda: os.listdir(root / "nope"),
        lambda: Path(root / "nope" / "deeper").read_bytes(),
    ):
        with pytest.raises(FileNotFoundError) as info:
            attempt()
        exc = info.value
        assert exc.errno == errno.ENOENT and isinstance(exc, streamfs.PathNotFoundError)
        assert exc.__cause__ is None and exc.__suppress_context__
        assert str(root) in str(exc.filename)
        frames = traceback.extract_tb(exc.__traceback__)
        inside = [f for f in frames if os.sep + "streamfs" + os.sep in f.filename]
        assert len(inside) == 1, frames  # just the patched function itself


def test_negative_lookups_make_no_requests(
    data: tuple[str, Path, dict[str, bytes]], server: ServerProcess
) -> None:
    _, root, _ = data
    for d in ("d0", "d1", "d2", "d3"):
        os.listdir(root / d)
    before = server.metrics()
    for i in range(300):
        assert not os.path.exists(root / f"missing{i}.json")
        assert not (root / "d1" / f"f{i}.idx").exists()
        assert not os.path.isfile(root / f"no{i}" / "deeper" / "file")
        assert not os.access(root / "d2" / f"x{i}", os.F_OK)
    assert server.metrics() == before


def test_a_pinned_revision_refuses_writes(env: Path, server: ServerProcess, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    publish(server, repo, {"a.txt": b"a", "d/b.txt": b"b"}, env / "src")
    run_cli(server, "tag", f"{repo}@main", "v1")
    streamfs.install_hooks(f"{repo}@v1", env / "data")
    root = env / "data"
    for attempt in (
        lambda: touch_open(root / "new.txt", "w"),
        lambda: touch_open(root / "a.txt", "ab"),
        lambda: (root / "d" / "c.txt").write_bytes(b"c"),
        lambda: os.mkdir(root / "newdir"),
        lambda: os.unlink(root / "a.txt"),
        lambda: os.rename(root / "a.txt", root / "c.txt"),
        lambda: os.open(root / "x", os.O_CREAT | os.O_WRONLY),
    ):
        with pytest.raises(ReadOnlyError) as info:
            attempt()
        assert info.value.errno == errno.EROFS and "pinned revision" in str(info.value)
    assert not os.access(root / "a.txt", os.W_OK)
    assert streamfs.commit("nothing") is None


def test_files_renamed_or_removed_while_their_commit_uploads_are_settled_by_the_next(
    env: Path, server: ServerProcess, repo_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = f"alice/{repo_name}"
    publish(server, repo, {"keep.txt": b"keep"}, env / "src")
    streamfs.install_hooks(f"{repo}@main", env / "data")
    root = env / "data"
    (root / "a.txt").write_bytes(b"renamed while uploading")
    (root / "b.txt").write_bytes(b"removed while uploading")
    (root / "log.csv").write_bytes(b"epoch 1\n")
    uploading, go_on = threading.Event(), threading.Event()
    put_blob = Remote.put_blob

    async def held_put_blob(self: Remote, *args: Any) -> None:  # the real upload, held back
        uploading.set()
        await trio.to_thread.run_sync(go_on.wait)
        await put_blob(self, *args)

    monkeypatch.setattr(Remote, "put_blob", held_put_blob)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(streamfs.commit, "first")
        assert uploading.wait(30)
        os.replace(root / "a.txt", root / "c.txt")
        os.unlink(root / "b.txt")  # its staged bytes are being uploaded: kept till then
        with open(root / "log.csv", "a") as log:  # appended to a copy: the upload still matches
            log.write("epoch 2\n")
        go_on.set()
        made = first.result(60)
    assert made is not None
    listing = run_cli(server, "ls", f"{repo}@{made}").stdout
    assert "a.txt" in listing and "b.txt" in listing  # what was staged when it started
    assert streamfs.Repo(f"{repo}@{made}").read_bytes("log.csv") == b"epoch 1\n"

    second = streamfs.commit("second")
    assert second is not None
    listing = run_cli(server, "ls", f"{repo}@{second}").stdout
    assert "c.txt" in listing and "a.txt" not in listing and "b.txt" not in listing
    assert streamfs.Repo(f"{repo}@{second}").read_bytes("c.txt") == b"renamed while uploading"
    assert streamfs.Repo(f"{repo}@{second}").read_bytes("log.csv") == b"epoch 1\nepoch 2\n"
    assert (root / "log.csv").read_bytes() == b"epoch 1\nepoch 2\n"
    assert not list((env / "state").glob("branches/*/hooks/*/files/*"))  # nothing left behind
    assert streamfs.commit("again") is None


def test_writes_on_a_branch_appear_in_the_next_commit(
    env: Path, server: ServerProcess, repo_name: str
) -> None:
    repo = f"alice/{repo_name}"
    before = publish(server, repo, {"keep.txt": b"keep", "old.txt": b"old"}, env / "src")
    streamfs.install_hooks(f"{repo}@main", env / "data")
    root = env / "data"
    with open(root / "new.txt", "w") as f:
        f.write("written through open")
    os.makedirs(root / "ckpt" / "epoch1")
    Path(root / "ckpt" / "epoch1" / "model.bin").write_bytes(b"\x00" * 100_000)
    local = env / "tmp-log.txt"
    local.write_text("moved in")
    os.replace(local, root / "log.txt")
    os.rename(root / "old.txt", root / "ckpt" / "old.txt")
    with open(root / "keep.txt", "a") as f:
        f.write("+more")
    (root / "ckpt" / "touched").touch()  # os.open + os.close: taken as it is at the commit
    assert (root / "new.txt").read_text() == "written through open"
    assert run_cli(server, "resolve", repo).stdout.strip() == before  # batched: not yet

    made = streamfs.commit("checkpoint 1")
    assert made is not None and made == run_cli(server, "resolve", repo).stdout.strip()
    assert run_cli(server, "log", repo, "-n", "1").stdout.count("checkpoint 1") == 1
    listing = run_cli(server, "ls", f"{repo}@{made}", "-r").stdout
    for name in ("new.txt", "ckpt/epoch1/model.bin", "log.txt", "ckpt/old.txt", "ckpt/touched"):
        assert name in listing
    assert "  old.txt" not in listing
    check = streamfs.Repo(f"{repo}@{made}")
    assert check.read_bytes("keep.txt") == b"keep+more"
    assert check.read_bytes("log.txt") == b"moved in"
    assert (root / "ckpt" / "epoch1" / "model.bin").read_bytes() == b"\x00" * 100_000
    assert streamfs.commit("again") is None


_EXIT_SCRIPT = """
import os, signal, sys, streamfs
streamfs.install_hooks(sys.argv[1], sys.argv[2])
with open(os.path.join(sys.argv[2], sys.argv[3]), "w") as f:
    f.write("written by a child")
if sys.argv[4] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_writes_are_committed_at_exit_or_recovered_after_a_crash(
    env: Path, server: ServerProcess, repo_name: str
) -> None:
    repo = f"alice/{repo_name}"
    publish(server, repo, {"a.txt": b"a"}, env / "src")
    root = str(env / "data")
    script = [sys.executable, "-c", _EXIT_SCRIPT, f"{repo}@main", root]
    subprocess.run([*script, "atexit.txt", "exit"], check=True, timeout=120)
    assert "atexit.txt" in run_cli(server, "ls", repo).stdout

    killed = subprocess.run([*script, "crash.txt", "kill"], timeout=120)
    assert killed.returncode == -9
    assert "crash.txt" not in run_cli(server, "ls", repo).stdout
    streamfs.install_hooks(f"{repo}@main", root)  # commits what the dead process staged
    assert (env / "data" / "crash.txt").read_text() == "written by a child"
    assert "recovered" in run_cli(server, "log", repo, "-n", "1").stdout


# ------------------------------------------------------------------ processes


def _hash_file(path: str) -> tuple[str, int, int]:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return digest, os.path.getsize(path), os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_read_and_hash(
    data: tuple[str, Path, dict[str, bytes]], server: ServerProcess, method: str
) -> None:
    _, root, files = data
    names = sorted(files)
    assert (root / "top.txt").read_bytes() == files["top.txt"]  # the parent's engine runs
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_hash_file, [str(root / n) for n in names], chunksize=1)
        # workers that leave normally finish their cache writes (a read is served before its
        # block is written); the with block's exit would terminate them: SIGTERM, no wait
        pool.close()
        pool.join()
    assert [r[0] for r in results] == [hashlib.sha256(files[n]).hexdigest() for n in names]
    assert [r[1] for r in results] == [len(files[n]) for n in names]
    assert os.getpid() not in {r[2] for r in results}
    before = server.metrics().get("blob_get_requests", 0)
    for n in names:  # the workers filled the shared disk cache: no request from here
        assert (root / n).read_bytes() == files[n]
    assert server.metrics().get("blob_get_requests", 0) == before


def _write_file(path: str) -> int:
    with open(path, "w") as f:
        f.write(f"written by worker {os.getpid()}")
    return os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_writes_are_committed_when_they_exit(
    env: Path, server: ServerProcess, repo_name: str, method: str
) -> None:
    repo = f"alice/{repo_name}"
    publish(server, repo, {"a.txt": b"a"}, env / "src")
    streamfs.install_hooks(f"{repo}@main", env / "data")
    names = [f"{method}{i}.txt" for i in range(4)]
    pool = multiprocessing.get_context(method).Pool(2)
    try:
        pids = pool.map(_write_file, [str(env / "data" / n) for n in names], chunksize=1)
    finally:
        pool.close()
        pool.join()  # workers leave normally: each commits what it staged
    listing = run_cli(server, "ls", repo).stdout
    assert all(n in listing for n in names), listing
    assert os.getpid() not in pids
    assert streamfs.commit("nothing here") is None  # the parent staged nothing


def _listing(path: str) -> list[str]:
    return sorted(os.listdir(path))


def test_children_read_the_parents_commit_after_the_branch_moves(
    data: tuple[str, Path, dict[str, bytes]], server: ServerProcess, env: Path
) -> None:
    repo, root, _ = data
    seen = sorted(os.listdir(root))
    upload(server, f"{repo}@main", {"later.txt": b"later"}, env / "later")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_listing, (str(root),)) == seen
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys, streamfs; streamfs.worker_init_fn(); print(sorted(os.listdir(sys.argv[1])))",
            str(root),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert child.stdout.strip() == str(seen)


class ImageFolder:
    """A map-style dataset of image-like files: b'IMG' + (height, width) + RGB bytes."""

    def __init__(self, root: str) -> None:
        self.paths = sorted(str(p) for p in Path(root).rglob("*.img"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, object, int]:
        import torch

        with open(self.paths[index], "rb") as f:
            assert f.read(3) == b"IMG"
            height, width = struct.unpack("<HH", f.read(4))
            pixels = bytearray(f.read())
        image = torch.frombuffer(pixels, dtype=torch.uint8).reshape(height, width, 3)
        return index, image, os.getpid()


def make_images(n: int, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    images = {}
    for i in range(n):
        h, w = rng.randint(8, 64), rng.randint(8, 64)
        images[f"train/c{i % 3}/{i:03d}.img"] = (
            b"IMG" + struct.pack("<HH", h, w) + rng.randbytes(h * w * 3)
        )
    return images


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_with_two_workers(
    env: Path, server: ServerProcess, repo_name: str, method: str
) -> None:
    from torch.utils.data import DataLoader

    images = make_images(24)
    publish(server, f"alice/{repo_name}", images, env / "src")
    streamfs.install_hooks(f"alice/{repo_name}@main", env / "data")
    dataset = ImageFolder(str(env / "data"))
    assert len(dataset) == len(images)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=2, multiprocessing_context=method, shuffle=False
    )
    want = [images[k] for k in sorted(images)]
    pids = set()
    for index, image, pid in loader:
        assert (
            b"IMG" + struct.pack("<HH", *image.shape[:2]) + image.numpy().tobytes() == (want[index])
        )
        pids.add(pid)
    assert len(pids) == 2 and os.getpid() not in pids
