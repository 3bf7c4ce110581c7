"""A RepoView in a forked child (a DataLoader worker made by fork): state of its own, and what
it learns of the cache that the other workers fill."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from streamfs._cache import BlockCache
from streamfs._client import Client
from streamfs._model import Commit, Entry, make_tree
from streamfs._view import KNOWN, RepoView


def _files(n: int) -> tuple[Entry, ...]:
    return tuple(
        Entry(f"f{i:03d}", "file", hashlib.sha256(str(i).encode()).hexdigest(), 100_000)
        for i in range(n)
    )


def test_a_forked_child_plans_its_own_prefetch_and_finds_the_locks_free(tmp_path: Path) -> None:
    client = Client("http://127.0.0.1:9", cache_dir=str(tmp_path), cache_size=1 << 30)
    view = RepoView(client, "o", "n", "c" * 64, Commit("a" * 64, (), "m", "me", 0))
    parent_planner = view._planner
    assert parent_planner is not None
    files = _files(50)
    parent_planner.on_open("d", files, files[0])
    assert parent_planner.on_open("d", files, files[1])  # the folder is active: picks went out
    outstanding = parent_planner.outstanding_bytes
    assert outstanding > 0
    view._recalled["d"] = 0  # the parent looked up where the folder's cached files are

    read_fd, write_fd = os.pipe()
    # held by a parent thread at the moment of the fork: the child must not inherit them held
    with view._lock, view._plan_lock:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child, reports through the pipe
            try:
                planner = view._planner
                report = {
                    "new_planner": planner is not None and planner is not parent_planner,
                    "salt": getattr(planner, "_salt", None),
                    "outstanding": getattr(planner, "outstanding_bytes", None),
                    "recalled": sorted(view._recalled),
                    "lock": view._lock.acquire(timeout=5),
                    "plan_lock": view._plan_lock.acquire(timeout=5),
                }
                os.write(write_fd, json.dumps(report).encode())
            finally:
                os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = json.loads(pipe.read())
    os.waitpid(child, 0)

    assert report == {
        "new_planner": True,
        "salt": child,  # workers start a folder at offsets of their own
        "outstanding": 0,
        "recalled": [],  # its cache is new and knows no file names: it recalls folders again
        "lock": True,
        "plan_lock": True,
    }
    # the parent keeps its own plan
    assert view._planner is parent_planner
    assert view._recalled == {"d": 0}
    assert parent_planner.outstanding_bytes == outstanding


def test_each_pass_over_a_folder_learns_the_cached_files_that_others_added(
    tmp_path: Path,
) -> None:
    """A DataLoader worker's first cached open in a folder looks up where the folder's cached
    files are, in one query; files that the other workers cache after that are looked up
    again at its next pass over the folder, not one SQL lookup each when it comes to them."""
    client = Client("http://127.0.0.1:9", cache_dir=str(tmp_path), cache_size=1 << 30)
    view = RepoView(client, "o", "n", "c" * 64, Commit("a" * 64, (), "m", "me", 0))
    size = 40 * 1024  # a block in a file of its own (smaller ones stay inside SQLite)
    folder = make_tree(replace(e, size=size) for e in _files(20))
    files = folder.entries
    here = client.cache

    def known() -> set[str]:
        found = set()
        for e in files:
            fd = here.open_block_file(e.id, 0, size)
            if fd is not None:
                os.close(fd)
                found.add(e.name)
        return found

    def opened(entry: Entry) -> None:  # a cached open, as RepoView.open_cached tells it
        view._note_open("d/" + entry.name, entry, folder, False)

    with BlockCache(str(tmp_path)) as other:  # the other workers' handle on the same cache
        for e in files[:10]:
            other.put(e.id, 0, b"x" * size)
        opened(files[0])
        assert known() == {e.name for e in files[:10]}
        for e in files[10:]:  # epoch 1 goes on: the others cache the rest
            other.put(e.id, 0, b"x" * size)
        for e in files[1:]:  # the rest of this pass recalls nothing more
            opened(e)
        assert known() == {e.name for e in files[:10]}
        opened(files[1])  # opened again: epoch 2
        assert known() == {e.name for e in files}
    # all known: later passes do not go over the folder's names again
    assert view._recalled == {"d": KNOWN}
