"""Listing a folder of a revision over the API (``streamfs ls``)."""

from __future__ import annotations

from ._errors import PathNotFoundError
from ._model import Entry, RepoSpec, split_path
from ._remote import Remote


async def list_path(
    remote: Remote, spec: RepoSpec, *, recursive: bool = False
) -> tuple[str, list[tuple[str, Entry]]]:
    """(commit id, [(path, entry), ...]) for the folder or file ``spec.path``."""
    commit = await remote.resolve(spec.owner, spec.name, spec.rev)
    tree_id = (await remote.get_commit(spec.owner, spec.name, commit)).tree
    parts = split_path(spec.path)
    for i, part in enumerate(parts):
        entry = (await remote.get_tree(spec.owner, spec.name, tree_id)).get(part)
        if entry is None:
            raise PathNotFoundError(
                f"{spec.repo}@{spec.rev or '(default)'}: no such path",
                filename="/".join(parts[: i + 1]),
            )
        if not entry.is_dir:
            if i != len(parts) - 1:
                raise PathNotFoundError("not a directory", filename="/".join(parts[: i + 1]))
            return commit, [(spec.path, entry)]
        tree_id = entry.id
    rows: list[tuple[str, Entry]] = []
    await _collect(remote, spec, tree_id, "/".join(parts), recursive, rows)
    return commit, rows


async def _collect(
    remote: Remote,
    spec: RepoSpec,
    tree_id: str,
    base: str,
    recursive: bool,
    rows: list[tuple[str, Entry]],
) -> None:
    tree = await remote.get_tree(spec.owner, spec.name, tree_id)
    for entry in tree.entries:
        path = f"{base}/{entry.name}" if base else entry.name
        rows.append((path, entry))
        if recursive and entry.is_dir:
            await _collect(remote, spec, entry.id, path, recursive, rows)
