"""The Python API: ``streamfs.Repo("OWNER/NAME@REV")``, a pinned, read-only view.

::

    with streamfs.Repo("alice/imagenet@main") as repo:
        print(repo.commit)                # the commit every read comes from
        with repo.open("train/cat/001.jpg") as f:
            header = f.read(64)

Repos of one process share its engine (a thread with the connections to the
server) and its open cache; closing the last Repo that uses them stops them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

from ._client import Client
from ._errors import IsADirError
from ._model import BLOCK_SIZE, Entry, Tree, parse_repo_spec
from ._reader import BlobReader, RepoFile
from ._view import RepoView, make_stat


class Repo:
    def __init__(
        self,
        spec: str,
        *,
        remote: str | None = None,
        token: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: int | str | None = None,
        timeout: float | None = None,
        prefetch: bool | None = None,
    ) -> None:
        parsed = parse_repo_spec(spec, allow_path=False)
        self.client = Client.create(
            remote,
            token,
            cache_dir=cache_dir,
            cache_size=cache_size,
            timeout=timeout,
            prefetch=prefetch,
        )
        self.owner, self.name, self.rev = parsed.owner, parsed.name, parsed.rev
        self._hold = self.client.hold()
        try:
            self.view = RepoView.open(self.client, parsed.owner, parsed.name, parsed.rev)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Done with this Repo: the last Repo of this process on its server and cache stops
        the engine and closes the cache. Files opened from it keep working."""
        self._hold.release()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Repo('{self.owner}/{self.name}@{self.rev or '(default)'}', commit={self.commit[:12]})"
        )

    @property
    def commit(self) -> str:
        """The commit id this view is pinned to: log it to reproduce a run."""
        return self.view.commit_id

    def stat(self, path: str) -> os.stat_result:
        return make_stat(self.view.stat(path))

    def exists(self, path: str) -> bool:
        try:
            self.view.lookup(path)
        except FileNotFoundError:
            return False
        return True

    def listdir(self, path: str = "") -> list[str]:
        return [e.name for e in self.view.listdir(path).entries]

    def walk(self, top: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        for dirpath, dirs, files in self.view.walk(top):
            yield dirpath, [d.name for d in dirs], [f.name for f in files]

    def open(self, path: str, mode: str = "rb", buffering: int = -1) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"Repo.open supports mode 'rb' only, not {mode!r}")
        raw = self.raw_open(path)
        size = io.DEFAULT_BUFFER_SIZE * 16 if buffering in (-1, 1) else max(1, buffering)
        return io.BufferedReader(raw, buffer_size=size)

    def raw_open(self, path: str) -> RepoFile:
        return RepoFile(self._reader(path), path)

    def read_bytes(self, path: str) -> bytes:
        entry, folder = self._locate_file(path)
        if 0 < entry.size <= BLOCK_SIZE:
            return self.view.read_small(path, entry, folder)
        return self.view.reader(path, entry, folder).read(0, entry.size)

    def _reader(self, path: str) -> BlobReader:
        return self.view.reader(path, *self._locate_file(path))

    def _locate_file(self, path: str) -> tuple[Entry, Tree | None]:
        entry, folder = self.view.locate(path)
        if entry.is_dir:
            raise IsADirError("is a directory", filename=path)
        return entry, folder
