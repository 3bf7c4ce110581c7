"""The Python API: ``streamfs.Repo("OWNER/NAME@REV")``, a pinned, read-only view.

::

    repo = streamfs.Repo("alice/imagenet@main")
    print(repo.commit)                    # the commit every read comes from
    with repo.open("train/cat/001.jpg") as f:
        header = f.read(64)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

from ._client import Client
from ._errors import IsADirError
from ._model import parse_repo_spec
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
        self.view = RepoView.open(self.client, parsed.owner, parsed.name, parsed.rev)
        self.owner, self.name, self.rev = parsed.owner, parsed.name, parsed.rev

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
        reader = self._reader(path)
        return reader.read(0, reader.blob.size)

    def _reader(self, path: str) -> BlobReader:
        entry, folder = self.view.locate(path)
        if entry.is_dir:
            raise IsADirError("is a directory", filename=path)
        return self.view.reader(path, entry, folder)
