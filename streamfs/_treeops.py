"""Editing and comparing trees. Pure logic over a tree loader; no I/O of its own.

A commit that adds files to one folder rewrites only the trees on that path:
``apply_changes`` loads and stores just those, and ``diff_trees`` descends
only into subtrees whose ids differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ._errors import ConflictError, InvalidInputError
from ._model import EMPTY_TREE, Entry, Tree, check_object_id, check_path, make_tree

Op = Literal["put", "add", "replace", "delete"]
OPS: tuple[Op, ...] = ("put", "add", "replace", "delete")

LoadTree = Callable[[str], Tree]
StoreTree = Callable[[Tree], str]


@dataclass(frozen=True, slots=True)
class Change:
    """``put`` adds or replaces a file, ``add`` requires that the path is new,
    ``replace`` that it is an existing file, ``delete`` removes a file or a
    whole directory."""

    op: Op
    path: str
    blob: str | None = None
    size: int = 0

    @staticmethod
    def checked(op: object, path: object, blob: object = None, size: object = 0) -> Change:
        if op not in OPS:
            raise InvalidInputError(f"invalid change op {op!r}: want one of {', '.join(OPS)}")
        clean = check_path(path)
        if op == "delete":
            return Change("delete", clean)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInputError(f"invalid size {size!r} for {clean!r}")
        return Change(op, clean, check_object_id(blob, "blob id"), size)


@dataclass(frozen=True, slots=True)
class FileDiff:
    path: str
    old: Entry | None
    new: Entry | None

    @property
    def status(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "modified"


# A plan is a nested dict: name -> Change (a leaf) or name -> plan (a directory).
_Plan = dict[str, "Change | _Plan"]


def _build_plan(changes: Sequence[Change]) -> _Plan:
    root: _Plan = {}
    for change in changes:
        *dirs, leaf = change.path.split("/")
        node = root
        for part in dirs:
            child = node.setdefault(part, {})
            if isinstance(child, Change):
                raise InvalidInputError(f"changes to both {child.path!r} and {change.path!r}")
            node = child
        if leaf in node:
            raise InvalidInputError(f"more than one change to {change.path!r}")
        node[leaf] = change
    return root


def apply_changes(
    root: str | None, changes: Sequence[Change], load: LoadTree, store: StoreTree, now: int
) -> str:
    """Apply ``changes`` to the tree ``root`` (None: empty) and return the new root id.

    Raises ConflictError naming the path when a change does not fit the tree
    (add of an existing path, replace or delete of a missing one, a file where
    a directory is, ...). Trees that do not change keep their ids.
    """
    plan = _build_plan(changes)
    tree = load(root) if root is not None else EMPTY_TREE
    new_tree = _apply(tree, plan, "", load, store, now)
    return store(new_tree if new_tree is not None else EMPTY_TREE)


def _apply(
    tree: Tree, plan: _Plan, prefix: str, load: LoadTree, store: StoreTree, now: int
) -> Tree | None:
    entries = {e.name: e for e in tree.entries}
    for name, item in plan.items():
        existing = entries.get(name)
        if isinstance(item, Change):
            updated = _apply_leaf(existing, item, now)
        else:
            updated = _apply_dir(existing, item, prefix + name, load, store, now)
        if updated is None:
            entries.pop(name, None)
        else:
            entries[name] = updated
    if not entries:
        return None
    return make_tree(entries.values())


def _apply_leaf(existing: Entry | None, change: Change, now: int) -> Entry | None:
    path, name = change.path, change.path.rsplit("/", 1)[-1]
    if change.op == "delete":
        if existing is None:
            raise ConflictError(f"cannot delete {path!r}: no such file or directory")
        return None
    if existing is not None and existing.is_dir:
        raise ConflictError(f"cannot write {path!r}: it is a directory")
    if change.op == "add" and existing is not None:
        raise ConflictError(f"cannot add {path!r}: it already exists")
    if change.op == "replace" and existing is None:
        raise ConflictError(f"cannot replace {path!r}: no such file")
    assert change.blob is not None
    if existing is not None and existing.id == change.blob:
        return existing  # same bytes: the path did not change
    return Entry(name, "file", change.blob, change.size, now)


def _apply_dir(
    existing: Entry | None, plan: _Plan, path: str, load: LoadTree, store: StoreTree, now: int
) -> Entry | None:
    if existing is not None and not existing.is_dir:
        raise ConflictError(f"cannot use {path!r} as a directory: it is a file")
    subtree = load(existing.id) if existing is not None else EMPTY_TREE
    new_subtree = _apply(subtree, plan, path + "/", load, store, now)
    if new_subtree is None:
        return None
    if existing is not None and new_subtree == subtree:
        return existing
    name = path.rsplit("/", 1)[-1]
    mtime = max((e.mtime for e in new_subtree.entries), default=now)
    return Entry(name, "dir", store(new_subtree), new_subtree.size, mtime)


def diff_trees(old: str | None, new: str | None, load: LoadTree) -> Iterator[FileDiff]:
    """Every file that differs between two trees, in path order."""
    if old == new:
        return
    old_tree = load(old) if old is not None else EMPTY_TREE
    new_tree = load(new) if new is not None else EMPTY_TREE
    yield from _diff(old_tree, new_tree, "", load)


def _diff(old: Tree, new: Tree, prefix: str, load: LoadTree) -> Iterator[FileDiff]:
    names = sorted({e.name for e in old.entries} | {e.name for e in new.entries})
    for name in names:
        a, b = old.get(name), new.get(name)
        if a is not None and b is not None and a.id == b.id and a.kind == b.kind:
            continue
        path = prefix + name
        if a is not None and b is not None and not a.is_dir and not b.is_dir:
            yield FileDiff(path, a, b)
            continue
        if a is not None and not a.is_dir:
            yield FileDiff(path, a, None)
        a_sub = load(a.id) if a is not None and a.is_dir else EMPTY_TREE
        b_sub = load(b.id) if b is not None and b.is_dir else EMPTY_TREE
        if a_sub.entries or b_sub.entries:
            yield from _diff(a_sub, b_sub, path + "/", load)
        if b is not None and not b.is_dir:
            yield FileDiff(path, None, b)


def walk_files(root: str | None, load: LoadTree, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Every file below ``root`` as (path, entry), in path order."""
    for d in diff_trees(None, root, load):
        assert d.new is not None
        yield prefix + d.path, d.new


def find_conflicts(changes: Iterable[Change], changed_paths: Iterable[str]) -> list[str]:
    """Paths of ``changes`` that touch what another commit changed.

    A change conflicts when its path was changed, when something below it was
    changed (it is a directory there), or when one of its parent directories
    was changed as a file.
    """
    changed = set(changed_paths)
    changed_dirs = {p.rsplit("/", i)[0] for p in changed for i in range(1, p.count("/") + 1)}
    conflicts = []
    for change in changes:
        parts = change.path.split("/")
        ancestors = ("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = change.path in changed or change.path in changed_dirs
        if clash or any(a in changed for a in ancestors):
            conflicts.append(change.path)
    return conflicts
