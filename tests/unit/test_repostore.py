"""RepoStore's memory of repo records: kept once read (they never change), misses never."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfs._errors import RepoNotFoundError
from streamfs.server._storage import LocalStorage
from streamfs.server._store import RepoStore


class CountingStorage(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ref_reads: list[str] = []

    def get_ref(self, key: str) -> str | None:
        self.ref_reads.append(key)
        return super().get_ref(key)


def test_a_repo_record_is_read_from_storage_once_and_a_missing_one_every_time(
    tmp_path: Path,
) -> None:
    storage = CountingStorage(tmp_path / "store")
    store = RepoStore(storage)
    record = "repos/alice/data/repo"
    for _ in range(2):
        with pytest.raises(RepoNotFoundError):
            store.get_repo("alice", "data")
    assert storage.ref_reads.count(record) == 2
    made = store.create_repo("alice", "data", private=True)
    storage.ref_reads.clear()
    assert [store.get_repo("alice", "data") for _ in range(3)] == [made] * 3
    assert storage.ref_reads.count(record) == 1
    # another store on the same storage (another server process) finds it too
    assert RepoStore(LocalStorage(tmp_path / "store")).get_repo("alice", "data") == made
