"""LocalStorage: objects, refs, compare-and-swap under threads and processes, crash safety."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfs.server._storage import LocalStorage, check_key

DATA = bytes(range(256)) * 40  # 10 KiB, every byte value


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def temp_files(storage: LocalStorage) -> list[str]:
    return sorted(p.name for p in storage.staging_dir().iterdir())


# ------------------------------------------------------------------ objects


def test_write_then_read_size_and_overwrite(storage: LocalStorage) -> None:
    assert storage.read("blobs/ab/x") is None
    assert storage.size("blobs/ab/x") is None
    storage.write("blobs/ab/x", DATA)
    assert storage.read("blobs/ab/x") == DATA
    assert storage.size("blobs/ab/x") == len(DATA)
    storage.write("blobs/ab/x", b"")
    assert storage.read("blobs/ab/x") == b""
    assert storage.size("blobs/ab/x") == 0
    assert temp_files(storage) == []


def test_a_key_below_an_object_does_not_exist(storage: LocalStorage) -> None:
    storage.write("a", b"file")
    assert storage.read("a/b") is None
    assert storage.size("a/b") is None


def test_iter_range_yields_the_bytes_in_bounded_chunks(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.write("o", DATA)

    @settings(max_examples=50, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        start = data.draw(st.integers(0, len(DATA)))
        length = data.draw(st.integers(0, len(DATA) - start))
        chunk = data.draw(st.integers(1, 4096))
        pieces = list(storage.iter_range("o", start, length, chunk))
        assert b"".join(pieces) == DATA[start : start + length]
        assert all(0 < len(p) <= chunk for p in pieces)

    check()


def test_iter_range_past_the_end_or_of_a_missing_object_fails(storage: LocalStorage) -> None:
    storage.write("o", b"0123456789")
    with pytest.raises(OSError, match="shorter"):
        list(storage.iter_range("o", 5, 10, 4))
    with pytest.raises(FileNotFoundError):
        list(storage.iter_range("missing", 0, 1, 4))


def test_a_range_of_at_most_a_chunk_comes_in_one_piece(storage: LocalStorage) -> None:
    storage.write("o", DATA)
    for start, length in [(0, len(DATA)), (1, 255), (len(DATA) - 7, 7), (4096, 4096)]:
        assert list(storage.iter_range("o", start, length, length)) == [
            DATA[start : start + length]
        ]
    assert list(storage.iter_range("o", 0, 0, 1)) == []
    with pytest.raises(OSError, match="shorter"):
        list(storage.iter_range("o", len(DATA) - 5, 10, 10))
    with pytest.raises(FileNotFoundError):
        list(storage.iter_range("missing", 0, 1, 1))


def test_write_file_moves_a_staged_file_into_place(storage: LocalStorage) -> None:
    staged = storage.staging_dir() / "upload-1"
    staged.write_bytes(DATA)
    storage.write_file("blobs/cd/y", staged)
    assert not staged.exists()  # consumed, not copied
    assert storage.read("blobs/cd/y") == DATA
    assert storage.local_path("blobs/cd/y").read_bytes() == DATA


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("good", ["a", "blobs/ab/cdef", "a.b-c_d%2F", "...", "a/.../b"])
def test_check_key_accepts(good: str) -> None:
    assert check_key(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "../x",
        "a/../b",
        "a/..",
        "a/./b",
        "/a",
        "a/",
        "a//b",
        "a\\b",
        "a b",
        "a\x00",
        "é",
    ],
)
def test_check_key_rejects_keys_that_could_leave_the_store(storage: LocalStorage, bad: str) -> None:
    with pytest.raises(ValueError):
        check_key(bad)
    for call in (
        lambda: storage.read(bad),
        lambda: storage.size(bad),
        lambda: storage.write(bad, b"x"),
        lambda: storage.get_ref(bad),
        lambda: storage.cas_ref(bad, None, "x"),
    ):
        with pytest.raises(ValueError):
            call()
    assert temp_files(storage) == []
    assert not (storage.root.parent / "x").exists()


# ------------------------------------------------------------------ refs


def test_cas_ref_semantics(storage: LocalStorage) -> None:
    key = "refs/alice/data/heads/main"
    assert storage.get_ref(key) is None
    assert storage.cas_ref(key, "c1", "c2") is False  # not there: only None matches
    assert storage.cas_ref(key, None, "c1") is True  # create
    assert storage.cas_ref(key, None, "c9") is False  # exists already
    assert storage.get_ref(key) == "c1"
    assert storage.cas_ref(key, "c0", "c9") is False  # stale expectation
    assert storage.cas_ref(key, "c1", "c2") is True  # swap
    assert storage.get_ref(key) == "c2"
    assert storage.cas_ref(key, "c1", None) is False
    assert storage.get_ref(key) == "c2"
    assert storage.cas_ref(key, "c2", None) is True  # delete
    assert storage.get_ref(key) is None
    assert storage.cas_ref(key, None, "c3") is True  # and create again
    assert storage.get_ref(key) == "c3"


def increment(storage: LocalStorage, key: str, times: int) -> int:
    """Read-increment-swap ``times`` times; returns how many swaps were lost and retried."""
    retries = 0
    for _ in range(times):
        while True:
            current = storage.get_ref(key)
            if storage.cas_ref(key, current, str(int(current or 0) + 1)):
                break
            retries += 1
    return retries


def run_threads(targets: list[Callable[[], object]]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def run(target: Callable[[], object]) -> None:
        try:
            barrier.wait()
            target()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_16_threads_never_lose_an_increment(storage: LocalStorage) -> None:
    run_threads([lambda: increment(storage, "refs/counter", 25) for _ in range(16)])
    assert storage.get_ref("refs/counter") == str(16 * 25)
    assert temp_files(storage) == []


def test_two_storages_on_one_root_never_lose_an_increment(tmp_path: Path) -> None:
    # Separate instances share no in-process lock: only the flock keeps them apart.
    a, b = LocalStorage(tmp_path / "store"), LocalStorage(tmp_path / "store")
    run_threads([lambda s=s: increment(s, "refs/counter", 25) for s in (a, b) * 4])  # type: ignore[misc]
    assert a.get_ref("refs/counter") == str(8 * 25)


def _increment_in_process(root: str, times: int, ready: threading.Barrier) -> None:
    storage = LocalStorage(root)
    ready.wait()  # both opened: opening clears tmp/, which must not race the other's writes
    increment(storage, "refs/counter", times)


def test_two_processes_never_lose_an_increment(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalStorage(root)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_increment_in_process, args=(str(root), 100, ready)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert LocalStorage(root).get_ref("refs/counter") == "200"


# ------------------------------------------------------------------ crash safety


def test_reopening_removes_temporary_files_of_a_killed_server(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.write("objects/keep", b"kept")
    assert storage.cas_ref("refs/main", None, "c1")
    # What a SIGKILL leaves behind: a half-written object and a half-received upload.
    (storage.staging_dir() / "tmpa1b2c3").write_bytes(b"half an obj")
    (storage.staging_dir() / "upload-7").write_bytes(b"half an upload")
    reopened = LocalStorage(tmp_path / "store")
    assert temp_files(reopened) == []
    assert reopened.read("objects/keep") == b"kept"
    assert reopened.get_ref("refs/main") == "c1"


def _fail(*args: object, **kwargs: object) -> None:
    raise OSError(5, "injected I/O error")


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("fault", [_fail, _interrupt], ids=["EIO", "KeyboardInterrupt"])
@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failed_write_leaves_no_object_and_no_temp_file(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, where: str, fault: Callable[..., None]
) -> None:
    storage.write("objects/old", b"old bytes")
    with monkeypatch.context() as m:
        m.setattr(os, where, fault)
        with pytest.raises((OSError, KeyboardInterrupt)):
            storage.write("objects/new", DATA)
        with pytest.raises((OSError, KeyboardInterrupt)):
            storage.write("objects/old", b"new bytes")
    assert storage.read("objects/new") is None
    assert storage.read("objects/old") == b"old bytes"  # all or nothing
    assert temp_files(storage) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failed_write_file_consumes_the_source_and_installs_nothing(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    staged = storage.staging_dir() / "upload-1"
    staged.write_bytes(DATA)
    with monkeypatch.context() as m:
        m.setattr(os, where, _fail)
        with pytest.raises(OSError, match="injected"):
            storage.write_file("blobs/x", staged)
    assert storage.read("blobs/x") is None
    assert temp_files(storage) == []


def test_a_failed_cas_keeps_the_old_value_and_releases_the_lock(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert storage.cas_ref("refs/main", None, "c1")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _fail)
        with pytest.raises(OSError, match="injected"):
            storage.cas_ref("refs/main", "c1", "c2")
    assert storage.get_ref("refs/main") == "c1"
    assert temp_files(storage) == []
    # Not deadlocked: the in-process lock and the flock were released.
    run_threads([lambda: storage.cas_ref("refs/main", "c1", "c2")])
    assert storage.get_ref("refs/main") == "c2"


def test_opening_a_second_storage_keeps_the_first_ones_writes_in_flight(tmp_path: Path) -> None:
    first = LocalStorage(tmp_path / "store")
    staged = first.staging_dir() / "upload-1"
    staged.write_bytes(DATA)
    LocalStorage(tmp_path / "store")  # a second server process starts on the same root
    first.write_file("blobs/x", staged)
    assert first.read("blobs/x") == DATA
