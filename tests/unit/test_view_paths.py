"""RepoView.locate: a path found through the folders it remembers is the path a walk finds,
and what it remembers never keeps a tree the view has let go of."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfs import _view
from streamfs._client import Client
from streamfs._errors import InvalidInputError, NotADirError, PathNotFoundError
from streamfs._model import Commit, Entry, encode_tree, make_tree, object_id
from streamfs._view import RepoView


def _file(name: str) -> Entry:
    return Entry(name, "file", object_id(name.encode()), 10)


def _dir(client: Client, name: str, entries: list[Entry]) -> Entry:
    """A folder entry whose tree the view finds in the disk cache (no server)."""
    raw = encode_tree(make_tree(entries))
    oid = object_id(raw)
    client.cache.put_meta(f"tree:{oid}", raw)
    return Entry(name, "dir", oid, 10 * len(entries))


def _new_view(tmp_path: Path, folders: int = 1) -> RepoView:
    client = Client("http://127.0.0.1:9", cache_dir=str(tmp_path), cache_size=1 << 30)
    inner = _dir(client, "b", [_file("y")])
    dirs = [_dir(client, f"d{i}", [_file("x"), _file(f"only{i}"), inner]) for i in range(folders)]
    root = _dir(client, "", [*dirs, _file("t")])
    return RepoView(client, "o", "n", "c" * 64, Commit(root.id, (), "m", "me", 0))


def _found(view: RepoView, path: str) -> tuple[Entry, int] | type[Exception]:
    """What locate answers, the folder by identity; the error's type if it raises one."""
    try:
        entry, folder = view.locate(path)
    except (InvalidInputError, NotADirError, PathNotFoundError) as exc:
        return type(exc)
    return entry, id(folder)


PATHS = [
    *("d0/x", "/d0/x/", "d0/only0", "t", "d0", "d0/b", "d0/b/y", "", "/"),  # found
    *("d0/nope", "d0/x/z", "d0//x", "d0/./x", "d0/../d0/x", "nope/x", "t/x", "d0/b/"),
    *("d0/b//y", "d0/\x00", "d0/only1"),
]


def test_a_path_found_through_a_remembered_folder_is_what_the_walk_finds(
    tmp_path: Path,
) -> None:
    walked = {}
    for i, path in enumerate(PATHS):  # each path first in a view of its own: found by the walk
        walked[path] = _found(_new_view(tmp_path / f"w{i}"), path)
    view = _new_view(tmp_path / "one")
    for path in PATHS * 2:  # in one view: the folders of the paths before are remembered
        answer = _found(view, path)
        expected = walked[path]
        if isinstance(answer, tuple):
            assert isinstance(expected, tuple) and answer[0] == expected[0], path
        else:
            assert answer is expected, path
    assert set(view._folder_trees) == {"", "d0", "d0/b"}
    assert view.lookup("d0/x") is view.lookup("/d0/x")  # the same entry either way
    assert view.locate("d0/b/y")[1] is view.tree(view.lookup("d0/b").id)


def test_the_folders_remembered_are_trees_the_view_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_view, "MAX_ENTRIES_IN_MEMORY", 10)  # ~3 folders of 3 entries
    view = _new_view(tmp_path, folders=12)
    for _ in range(2):
        for i in range(12):
            assert view.lookup(f"d{i}/only{i}").name == f"only{i}"
            kept = [id(tree) for tree in view._trees.values()]
            assert view._folder_trees  # the last folder found is remembered ...
            assert all(id(tree) in kept for tree in view._folder_trees.values())  # ... if kept
    assert len(view._trees) < 12  # trees were let go of: the check above saw them go
