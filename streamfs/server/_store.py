"""Repositories over a Storage: refs, objects held per repo, commits that never lose work.

Layout of keys (every name in them is validated before use)::

    objects/blob/ab/cdef...          blob bytes, stored once per server
    objects/blockmap/ab/cdef...      per-block sha256 and BLAKE3 of a blob (JSON)
    objects/tree/ab/cdef...          canonical tree bytes
    objects/commit/ab/cdef...        canonical commit bytes
    repos/OWNER/NAME/repo            the repo record (a ref: JSON)
    index/repos/OWNER/NAME           marker: lists repos without walking their objects
    repos/OWNER/NAME/heads/BRANCH    branch -> commit id (a ref, quoted name)
    repos/OWNER/NAME/tags/TAG        tag -> commit id (a ref, created once)
    repos/OWNER/NAME/has/KIND/ab/ID  marker: this repo holds that object; a one-block blob's
                                     holds its BLAKE3 (hex), empty if stored before it did

An object is served through a repo only if the repo holds it, so knowing a
hash does not open another repo's data. Blocking methods: call them from a
worker thread.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote

from .._errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from .._model import (
    BLOCK_SIZE,
    EMPTY_TREE,
    BlobDigests,
    Commit,
    Tree,
    check_name,
    check_object_id,
    check_ref_name,
    decode_commit,
    decode_tree,
    encode_commit,
    encode_tree,
    is_object_id,
    load_json_object,
    object_id,
)
from .._treeops import Change, FileDiff, apply_changes, diff_trees, find_conflicts
from ._storage import Storage

ObjectKind = Literal["blob", "tree", "commit"]
MAX_COMMIT_ATTEMPTS = 50


def object_key(kind: str, oid: str) -> str:
    return f"objects/{kind}/{oid[:2]}/{oid[2:]}"


@dataclass
class Upgraded:
    """What RepoStore.upgrade did."""

    block_lists: int = 0  # blobs' block lists given every block's BLAKE3
    hashed_bytes: int = 0
    markers: int = 0  # repos' markers of one-block blobs given the blob's BLAKE3
    damaged: list[str] = field(default_factory=list)  # blobs whose bytes are not their id's


@dataclass(frozen=True, slots=True)
class RepoInfo:
    owner: str
    name: str
    private: bool
    default_branch: str
    created: int

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "name": self.name,
            "private": self.private,
            "default_branch": self.default_branch,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class CommitResult:
    commit: str
    parent: str
    rebased: bool
    changed: bool


class RepoStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._load_tree_cached = functools.lru_cache(maxsize=8192)(self._load_tree_uncached)
        # A repo's record is written once, by create_repo, and never changed or removed, so a
        # record read once is kept (misses are not: another server on the storage may create
        # the repo). It spares every request of a repo a file read and a JSON parse.
        self._repo_cached = functools.lru_cache(maxsize=4096)(self._get_repo_uncached)

    # ------------------------------------------------------------ repos

    def _repo_prefix(self, owner: str, name: str) -> str:
        return f"repos/{check_name(owner, 'owner')}/{check_name(name, 'repository name')}"

    def create_repo(
        self, owner: str, name: str, *, private: bool = False, default_branch: str = "main"
    ) -> RepoInfo:
        prefix = self._repo_prefix(owner, name)
        check_ref_name(default_branch, "branch name")
        info = RepoInfo(owner, name, private, default_branch, int(time.time()))
        if not self.storage.cas_ref(f"{prefix}/repo", None, json.dumps(info.to_json())):
            raise AlreadyExistsError(f"repository {owner}/{name} already exists")
        self.storage.write(f"index/repos/{owner}/{name}", b"")
        tree = self._store_tree(owner, name, EMPTY_TREE)
        root = Commit(tree, (), "create repository", "streamfs", info.created)
        commit = self._store_commit(owner, name, root)
        self.storage.cas_ref(self._head_key(owner, name, default_branch), None, commit)
        return info

    def get_repo(self, owner: str, name: str) -> RepoInfo:
        return self._repo_cached(owner, name)

    def _get_repo_uncached(self, owner: str, name: str) -> RepoInfo:
        raw = self.storage.get_ref(f"{self._repo_prefix(owner, name)}/repo")
        if raw is None:
            raise RepoNotFoundError(f"repository {owner}/{name} not found")
        data = json.loads(raw)
        return RepoInfo(
            data["owner"], data["name"], data["private"], data["default_branch"], data["created"]
        )

    def list_repos(self) -> Iterator[RepoInfo]:
        """Every repo, from the small index written at creation (not a walk of all objects)."""
        for key in self.storage.list("index/repos"):
            _, _, owner, name = key.split("/")
            yield self.get_repo(owner, name)

    # ------------------------------------------------------------ objects

    def _has_key(self, owner: str, name: str, kind: str, oid: str) -> str:
        return f"{self._repo_prefix(owner, name)}/has/{kind}/{oid[:2]}/{oid}"

    def holds(self, owner: str, name: str, kind: ObjectKind, oid: str) -> bool:
        if not is_object_id(oid):
            return False
        return self.storage.size(self._has_key(owner, name, kind, oid)) is not None

    def _mark(self, owner: str, name: str, kind: ObjectKind, oid: str, note: bytes = b"") -> None:
        self.storage.write(self._has_key(owner, name, kind, oid), note)

    def get_object(self, owner: str, name: str, kind: ObjectKind, oid: str) -> bytes:
        check_object_id(oid)
        data = (
            self.storage.read(object_key(kind, oid)) if self.holds(owner, name, kind, oid) else None
        )
        if data is None:
            raise NotFoundError(f"no {kind} {oid} in {owner}/{name}")
        return data

    def blob_size(self, owner: str, name: str, oid: str) -> int:
        check_object_id(oid, "blob id")
        size = (
            self.storage.size(object_key("blob", oid))
            if self.holds(owner, name, "blob", oid)
            else None
        )
        if size is None:
            raise NotFoundError(f"no blob {oid} in {owner}/{name}")
        return size

    def missing_blobs(self, owner: str, name: str, ids: Sequence[str]) -> list[str]:
        self.get_repo(owner, name)
        return [oid for oid in ids if not self.holds(owner, name, "blob", check_object_id(oid))]

    def whole_blake3s(self, owner: str, name: str, ids: Sequence[str]) -> list[str | None]:
        """The BLAKE3 of each of ``ids`` (NotFoundError for one this repo lacks): a one-block
        blob's, which its marker holds (a client checks a small blob by it, ~4x as fast as by
        sha256); None for a larger blob and for one stored before markers held it (see
        ``upgrade``). One small read an id, of the marker ``missing_blobs`` stats."""
        self.get_repo(owner, name)
        found: list[str | None] = []
        for oid in ids:
            note = self.storage.read(self._has_key(owner, name, "blob", check_object_id(oid)))
            if note is None:
                raise NotFoundError(f"no blob {oid} in {owner}/{name}")
            digest = note.decode("ascii", "replace")
            found.append(digest if is_object_id(digest) else None)
        return found

    def blob_known(self, oid: str) -> bool:
        return self.storage.size(object_key("blob", oid)) is not None

    def adopt_blob(
        self, owner: str, name: str, oid: str, staged: Any, blocks: dict[str, list[str]]
    ) -> None:
        """Keep a received and verified blob (``staged`` is a file in the staging dir) and
        its block list: ``blocks`` has every block's sha256 and BLAKE3 (_model.BLOCK_HASHES)."""
        if self.blob_known(oid):
            staged.unlink(missing_ok=True)
        else:
            self.storage.write_file(object_key("blob", oid), staged)
        self._write_block_list(oid, blocks)
        whole = blocks["blake3"][0].encode() if len(blocks["blake3"]) == 1 else b""
        self._mark(owner, name, "blob", oid, whole)

    def _write_block_list(self, oid: str, blocks: dict[str, list[str]]) -> None:
        blockmap = {
            "block_size": BLOCK_SIZE,
            "blocks": blocks["sha256"],
            "blake3": blocks["blake3"],
        }
        self.storage.write(object_key("blockmap", oid), json.dumps(blockmap).encode())

    def _listed_blake3(self, oid: str) -> list[str] | None:
        """The BLAKE3 of every block of ``oid`` its block list has; None if it lacks them
        (a list an older server wrote), or the list is missing or malformed."""
        raw = self.storage.read(object_key("blockmap", oid))
        try:
            listed = None if raw is None else load_json_object(raw, "block list")
        except InvalidInputError:
            return None
        if listed is None:
            return None
        sha256, digests = listed.get("blocks"), listed.get("blake3")
        if not isinstance(sha256, list) or not isinstance(digests, list):
            return None
        if len(digests) != len(sha256) or not all(is_object_id(d) for d in digests):
            return None
        return digests

    # ------------------------------------------------------------ upgrade

    def upgrade(self, progress: Callable[[int, int], None] | None = None) -> Upgraded:
        """Give what an older server stored what this one keeps for clients to check blobs
        by BLAKE3 (~4x as fast as sha256): every block's in a blob's block list, hashed from
        the stored bytes, which must match the blob's id (a blob that does not is reported
        and left as it is); and a one-block blob's in every repo's marker of it, which
        blobs/urls sends. ``progress(done, total)``: bytes hashed so far. Idempotent, and
        safe while a server runs on the store: each write replaces a file whole with what
        the server would write itself."""
        done = Upgraded()
        lacking = []  # (id, size) of the blobs whose block lists lack BLAKE3
        for key in self.storage.list("objects/blob"):
            oid = "".join(key.split("/")[2:])
            size = self.storage.size(key)
            if is_object_id(oid) and size is not None and self._listed_blake3(oid) is None:
                lacking.append((oid, size))
        total = sum(size for _, size in lacking)
        for oid, size in lacking:
            digests = BlobDigests()
            try:
                for piece in self.storage.iter_range(object_key("blob", oid), 0, size, BLOCK_SIZE):
                    digests.update(piece)
                    done.hashed_bytes += len(piece)
                    if progress is not None:
                        progress(done.hashed_bytes, total)
            except OSError:  # cut short meanwhile, or unreadable
                done.damaged.append(oid)
                continue
            if digests.finish() != oid:
                done.damaged.append(oid)
                continue
            self._write_block_list(oid, digests.blocks)
            done.block_lists += 1
        for info in self.list_repos():
            for key in self.storage.list(f"{self._repo_prefix(info.owner, info.name)}/has/blob"):
                oid = key.rsplit("/", 1)[1]
                if not is_object_id(oid) or self.storage.read(key) != b"":
                    continue
                listed = self._listed_blake3(oid)
                if listed is not None and len(listed) == 1:
                    self.storage.write(key, listed[0].encode())
                    done.markers += 1
        return done

    def _load_tree_uncached(self, oid: str) -> Tree:
        data = self.storage.read(object_key("tree", oid))
        if data is None:
            raise NotFoundError(f"tree {oid} is missing from the store")
        return decode_tree(data)

    def load_tree(self, oid: str) -> Tree:
        tree: Tree = self._load_tree_cached(oid)
        return tree

    def _store_tree(self, owner: str, name: str, tree: Tree) -> str:
        data = encode_tree(tree)
        oid = object_id(data)
        self.storage.write(object_key("tree", oid), data)
        self._mark(owner, name, "tree", oid)
        return oid

    def _store_commit(self, owner: str, name: str, commit: Commit) -> str:
        data = encode_commit(commit)
        oid = object_id(data)
        self.storage.write(object_key("commit", oid), data)
        self._mark(owner, name, "commit", oid)
        return oid

    def load_commit(self, owner: str, name: str, oid: str) -> Commit:
        return decode_commit(self.get_object(owner, name, "commit", oid))

    # ------------------------------------------------------------ refs

    def _head_key(self, owner: str, name: str, branch: str) -> str:
        return f"{self._repo_prefix(owner, name)}/heads/{quote(branch, safe='')}"

    def _tag_key(self, owner: str, name: str, tag: str) -> str:
        return f"{self._repo_prefix(owner, name)}/tags/{quote(tag, safe='')}"

    def refs(self, owner: str, name: str) -> dict[str, dict[str, str]]:
        self.get_repo(owner, name)
        prefix = self._repo_prefix(owner, name)
        result: dict[str, dict[str, str]] = {"branches": {}, "tags": {}}
        for kind, folder in (("branches", "heads"), ("tags", "tags")):
            for key in self.storage.list(f"{prefix}/{folder}"):
                value = self.storage.get_ref(key)
                if value is not None:
                    result[kind][unquote(key.rsplit("/", 1)[1])] = value
        return result

    def resolve(self, owner: str, name: str, rev: str | None) -> str:
        """A branch, tag, full commit id or unique prefix (4+ hex digits) -> commit id."""
        info = self.get_repo(owner, name)
        rev = info.default_branch if rev is None or rev == "" else rev
        if not isinstance(rev, str) or len(rev) > 200 or "\x00" in rev:
            raise InvalidInputError(f"invalid revision {rev!r}")
        for key in (self._head_key, self._tag_key):
            try:
                value = self.storage.get_ref(key(owner, name, check_ref_name(rev)))
            except (InvalidInputError, ValueError):
                value = None
            if value is not None:
                return value
        if is_object_id(rev) and self.holds(owner, name, "commit", rev):
            return rev
        if 4 <= len(rev) < 64 and all(c in "0123456789abcdef" for c in rev):
            return self._resolve_prefix(owner, name, rev)
        raise RevisionNotFoundError(f"revision {rev!r} not found in {owner}/{name}")

    def _resolve_prefix(self, owner: str, name: str, prefix: str) -> str:
        folder = f"{self._repo_prefix(owner, name)}/has/commit/{prefix[:2]}"
        found = [k.rsplit("/", 1)[1] for k in self.storage.list(folder)]
        matches = [oid for oid in found if oid.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidInputError(f"revision {prefix!r} is ambiguous: {len(matches)} commits")
        raise RevisionNotFoundError(f"revision {prefix!r} not found in {owner}/{name}")

    def create_tag(self, owner: str, name: str, tag: str, rev: str) -> str:
        commit = self.resolve(owner, name, rev)
        if not self.storage.cas_ref(
            self._tag_key(owner, name, check_ref_name(tag, "tag")), None, commit
        ):
            raise AlreadyExistsError(
                f"tag {tag!r} already exists in {owner}/{name}; tags never move"
            )
        return commit

    def create_branch(self, owner: str, name: str, branch: str, rev: str | None) -> str:
        commit = self.resolve(owner, name, rev)
        key = self._head_key(owner, name, check_ref_name(branch, "branch name"))
        if not self.storage.cas_ref(key, None, commit):
            raise AlreadyExistsError(f"branch {branch!r} already exists in {owner}/{name}")
        return commit

    # ------------------------------------------------------------ history

    def log(self, owner: str, name: str, rev: str | None, limit: int) -> list[tuple[str, Commit]]:
        oid: str | None = self.resolve(owner, name, rev)
        result: list[tuple[str, Commit]] = []
        while oid is not None and len(result) < limit:
            commit = self.load_commit(owner, name, oid)
            result.append((oid, commit))
            oid = commit.parents[0] if commit.parents else None
        return result

    def diff(self, owner: str, name: str, old: str, new: str) -> list[FileDiff]:
        a = self.load_commit(owner, name, self.resolve(owner, name, old))
        b = self.load_commit(owner, name, self.resolve(owner, name, new))
        return list(diff_trees(a.tree, b.tree, self.load_tree))

    # ------------------------------------------------------------ commits

    def commit(
        self,
        owner: str,
        name: str,
        *,
        branch: str,
        parent: str | None,
        changes: Sequence[Change],
        message: str,
        author: str,
        meta: dict[str, Any],
    ) -> CommitResult:
        """Make one commit on ``branch`` and move the branch to it.

        ``parent`` is the commit the writer started from (None: the current
        head). If the branch has moved since, the changes are applied on top
        of the new head unless they touch a path that moved too: then
        ConflictError names the paths. A lost compare-and-swap is retried.
        """
        key = self._head_key(owner, name, check_ref_name(branch, "branch name"))
        self.get_repo(owner, name)
        changes = [self._with_real_size(owner, name, c) for c in changes]
        if parent is not None and not self.holds(owner, name, "commit", parent):
            raise RevisionNotFoundError(f"parent commit {parent} not found in {owner}/{name}")
        for _ in range(MAX_COMMIT_ATTEMPTS):
            head = self.storage.get_ref(key)
            if head is None:
                raise RevisionNotFoundError(f"branch {branch!r} not found in {owner}/{name}")
            base = parent if parent is not None else head
            head_commit = self.load_commit(owner, name, head)
            if base != head:
                self._check_no_conflict(owner, name, base, head_commit, changes)
            now = int(time.time())
            tree = apply_changes(
                head_commit.tree,
                changes,
                self.load_tree,
                lambda t: self._store_tree(owner, name, t),
                now,
            )
            if tree == head_commit.tree:
                return CommitResult(head, head, base != head, changed=False)
            new = self._store_commit(owner, name, Commit(tree, (head,), message, author, now, meta))
            if self.storage.cas_ref(key, head, new):
                return CommitResult(new, head, base != head, changed=True)
        raise ConflictError(
            f"branch {branch!r} kept moving; gave up after {MAX_COMMIT_ATTEMPTS} tries"
        )

    def _with_real_size(self, owner: str, name: str, change: Change) -> Change:
        if change.blob is None:
            return change
        if not self.holds(owner, name, "blob", change.blob):
            raise InvalidInputError(
                f"blob {change.blob} for {change.path!r} has not been uploaded to {owner}/{name}"
            )
        size = self.storage.size(object_key("blob", change.blob))
        assert size is not None
        return Change(change.op, change.path, change.blob, size)

    def _check_no_conflict(
        self, owner: str, name: str, base: str, head: Commit, changes: Sequence[Change]
    ) -> None:
        base_commit = self.load_commit(owner, name, base)
        moved = (d.path for d in diff_trees(base_commit.tree, head.tree, self.load_tree))
        conflicts = find_conflicts(changes, moved)
        if conflicts:
            shown = ", ".join(repr(p) for p in conflicts[:10])
            more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            raise ConflictError(
                f"the branch moved since {base[:12]} and another commit changed {shown}{more}"
            )
