"""The data model: ids, names, paths, trees and commits. Pure code, no I/O.

Objects are content addressed: an object's id is the sha256 of its canonical
bytes (JSON with sorted keys, no spaces, UTF-8). Everything decoded here may
come from the network, so every decoder validates what it returns.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import blake3

from ._errors import InvalidInputError

ID_LENGTH = 64
BLOCK_SIZE = 4 * 1024 * 1024  # blocks of a blob: per-block hashes and cache keys
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_TREE_ENTRIES = 1_000_000
MAX_OBJECT_BYTES = 256 * 1024 * 1024  # trees and commits; blobs have their own limit

_ID_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_REF_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")

Kind = Literal["file", "dir"]


def object_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates, e.g. "\udcff" in a JSON request body
        raise InvalidInputError("text is not valid UTF-8 (lone surrogate)") from None


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_object_id(value: object, what: str = "object id") -> str:
    if not is_object_id(value):
        raise InvalidInputError(f"invalid {what}: {value!r} (want 64 lowercase hex digits)")
    assert isinstance(value, str)
    return value


def check_name(value: object, what: str = "name") -> str:
    """An owner or repository name: letters, digits, '.', '_' and '-'."""
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None or value in {".", ".."}:
        raise InvalidInputError(
            f"invalid {what} {value!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_ref_name(value: object, what: str = "ref name") -> str:
    """A branch or tag name: name parts separated by '/', like git's.

    A full commit id is not one: it names its commit, always, so a run pinned to a commit id
    cannot be moved by a branch that spells it (a shorter hex prefix can be shadowed, as in git).
    """
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise InvalidInputError(f"invalid {what} {value!r}")
    if is_object_id(value):
        raise InvalidInputError(f"invalid {what} {value!r}: a full commit id names that commit")
    parts = value.split("/")
    for part in parts:
        if _REF_PART_RE.fullmatch(part) is None or part.endswith(".lock") or ".." in part:
            raise InvalidInputError(f"invalid {what} {value!r}")
    return value


def check_path(value: object) -> str:
    """A path inside a repository: relative, '/'-separated, no '.', '..', NUL or empty parts.

    Returns the path unchanged; the empty string means the root and is refused
    here (use ``split_path`` for paths that may name the root).
    """
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"invalid path {value!r}: empty")
    if "\x00" in value:
        raise InvalidInputError(f"invalid path {value!r}: contains NUL")
    if value.startswith("/"):
        raise InvalidInputError(f"invalid path {value!r}: absolute paths are not allowed")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidInputError(f"invalid path: longer than {MAX_PATH_BYTES} bytes")
    for part in value.split("/"):
        check_entry_name(part, path=value)
    return value


def check_entry_name(name: object, *, path: object = None) -> str:
    shown = path if path is not None else name
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"invalid path {shown!r}: empty component")
    if name in {".", ".."}:
        raise InvalidInputError(f"invalid path {shown!r}: '.' and '..' are not allowed")
    if "/" in name or "\x00" in name:
        raise InvalidInputError(f"invalid path {shown!r}: bad character in {name!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"invalid path {shown!r}: not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidInputError(f"invalid path {shown!r}: a component is over 255 bytes")
    return name


def split_path(path: str) -> tuple[str, ...]:
    """'a/b/c' -> ('a', 'b', 'c'); '' or '/' -> (). Leading/trailing '/' are dropped."""
    stripped = path.strip("/")
    if not stripped:
        return ()
    return tuple(check_path(stripped).split("/"))


# --------------------------------------------------------------------------- trees


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory. ``size`` of a dir is the total bytes below it."""

    name: str
    kind: Kind
    id: str
    size: int
    mtime: int = 0  # seconds since the epoch: when this path last changed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "id": self.id,
            "size": self.size,
            "mtime": self.mtime,
        }

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


@dataclass(frozen=True, slots=True)
class Tree:
    entries: tuple[Entry, ...]
    _index: dict[str, Entry] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update((e.name, e) for e in self.entries)

    def get(self, name: str) -> Entry | None:
        return self._index.get(name)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def make_tree(entries: Iterable[Entry]) -> Tree:
    ordered = tuple(sorted(entries, key=lambda e: e.name))
    for a, b in itertools.pairwise(ordered):
        if a.name == b.name:
            raise InvalidInputError(f"duplicate entry {a.name!r} in a tree")
    return Tree(ordered)


EMPTY_TREE = make_tree(())


def encode_tree(tree: Tree) -> bytes:
    return canonical_json({"entries": [e.to_json() for e in tree.entries]})


def decode_tree(data: bytes) -> Tree:
    raw = load_json_object(data, "tree")
    items = raw.get("entries")
    if not isinstance(items, list) or len(items) > MAX_TREE_ENTRIES:
        raise InvalidInputError("malformed tree: 'entries' must be a list")
    fields = _well_formed_fields(items)
    if fields is None:  # something is off: entry by entry, for the error that names it
        return _decode_entries(items)
    return Tree(tuple(itertools.starmap(Entry, fields)))


def _decode_entries(items: list[Any]) -> Tree:
    entries = [_decode_entry(item) for item in items]
    tree = make_tree(entries)
    if [e.name for e in tree.entries] != [e.name for e in entries]:
        raise InvalidInputError("malformed tree: entries are not sorted")
    return tree


_FieldRow = tuple[str, Kind, str, int, int]
_MAX_SAFE_NAME = MAX_NAME_BYTES // 4  # characters: no name this long is over in UTF-8
_DROP_HEX_DIGITS = str.maketrans("", "", "0123456789abcdef")


def _well_formed_fields(items: list[Any]) -> list[_FieldRow] | None:
    """The fields of ``items`` (a tree's entries, decoded JSON) for ``Entry``, if every one is
    well formed and the names are in strictly rising order; else None (``_decode_entry`` then
    says what is wrong).

    The same checks as ``_decode_entry`` and ``make_tree``, a column at a time, for a
    folder's first look in every process and every folder of a listing: a tree of 200 entries
    decodes in 344 µs instead of 515, and a walk with a stat of every entry of the 1,000,000-entry
    listing through the API read 118,000-119,000 entries/s instead of 109,000-114,000."""
    try:
        rows = [(i["name"], i["kind"], i["id"], i["size"], i.get("mtime", 0)) for i in items]
    except (TypeError, KeyError):  # not an object, or a field missing
        return None
    if not rows:
        return []
    names, kinds, ids, sizes, mtimes = zip(*rows, strict=True)
    if not all(type(n) is str for n in names) or not all(type(i) is str for i in ids):
        return None
    joined = "\n".join(names)
    try:
        joined.encode()
    except UnicodeEncodeError:
        return None
    if (
        "/" in joined
        or "\x00" in joined
        or not {"", ".", ".."}.isdisjoint(names)
        or max(map(len, names)) > _MAX_SAFE_NAME
        or not all(map(str.__lt__, names, names[1:]))  # sorted, no name twice
        or any(kind != "file" and kind != "dir" for kind in kinds)
        or any(len(i) != ID_LENGTH for i in ids)
        or "".join(ids).translate(_DROP_HEX_DIGITS)  # a character that is not one
        or not _counts(sizes)
        or not _counts(mtimes)
    ):
        return None
    return rows


def _counts(values: tuple[Any, ...]) -> bool:
    """Whether every one of ``values`` is an int (not a bool) in [0, 2**63)."""
    return all(type(v) is int for v in values) and min(values) >= 0 and max(values) < 2**63


def _decode_entry(item: object) -> Entry:
    if not isinstance(item, dict):
        raise InvalidInputError("malformed tree entry")
    name = check_entry_name(item.get("name"))
    kind = item.get("kind")
    if kind not in ("file", "dir"):
        raise InvalidInputError(f"malformed tree entry {name!r}: kind {kind!r}")
    return Entry(
        name=name,
        kind=kind,
        id=check_object_id(item.get("id")),
        size=_check_count(item.get("size"), "size"),
        mtime=_check_count(item.get("mtime", 0), "mtime"),
    )


def _check_count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise InvalidInputError(f"malformed {what}: {value!r}")
    return value


# --------------------------------------------------------------------------- commits


@dataclass(frozen=True, slots=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    message: str
    author: str
    time: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tree": self.tree,
            "parents": list(self.parents),
            "message": self.message,
            "author": self.author,
            "time": self.time,
            "meta": dict(self.meta),
        }


def encode_commit(commit: Commit) -> bytes:
    return canonical_json(commit.to_json())


def decode_commit(data: bytes) -> Commit:
    raw = load_json_object(data, "commit")
    parents = raw.get("parents")
    if not isinstance(parents, list) or len(parents) > 16:
        raise InvalidInputError("malformed commit: parents")
    message, author, meta = raw.get("message"), raw.get("author"), raw.get("meta", {})
    if not isinstance(message, str) or not isinstance(author, str) or not isinstance(meta, dict):
        raise InvalidInputError("malformed commit: message, author or meta")
    return Commit(
        tree=check_object_id(raw.get("tree"), "tree id"),
        parents=tuple(check_object_id(p, "parent id") for p in parents),
        message=message,
        author=author,
        time=_check_count(raw.get("time"), "time"),
        meta=meta,
    )


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object; InvalidInputError (naming ``what``) if it is not one, is
    nested too deeply or is larger than MAX_OBJECT_BYTES."""
    if len(data) > MAX_OBJECT_BYTES:
        raise InvalidInputError(f"{what} is larger than {MAX_OBJECT_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(f"malformed {what}: not JSON") from None
    except RecursionError:  # deeply nested arrays or objects
        raise InvalidInputError(f"malformed {what}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"malformed {what}: not a JSON object")
    return raw


# --------------------------------------------------------------------------- blocks


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    return max(1, -(-size // block_size))


# The hashes a blob's block list carries (GET .../blobs/ID/blocks): sha256, as the blob id, and
# BLAKE3, which a client checks instead when the list has it. BLAKE3 runs ~4x as fast here
# (7.7 against 1.9 GB/s a core): a cold read of a 2 GiB file spent ~1.2 s of CPU on sha256,
# a quarter of what the reader, the server and the network stack took on two cores
# (docs/benchmarks.md, session 45). Lists stored by older servers have sha256 only.
_BLOCK_HASHERS: dict[str, Callable[..., Any]] = {"blake3": blake3.blake3, "sha256": hashlib.sha256}
BLOCK_HASHES = tuple(_BLOCK_HASHERS)  # the one a client prefers first


def block_hasher(algorithm: str, data: bytes | bytearray | memoryview = b"") -> Any:
    """A hash object of one of BLOCK_HASHES (``update``, ``hexdigest``), fed ``data``; both
    let go of the interpreter lock while they hash a large piece."""
    try:
        new = _BLOCK_HASHERS[algorithm]
    except KeyError:
        raise ValueError(f"unknown block hash {algorithm!r}") from None
    return new(data)


def block_digest(algorithm: str, data: bytes | bytearray | memoryview) -> str:
    """The hex digest of a block by one of BLOCK_HASHES."""
    return str(block_hasher(algorithm, data).hexdigest())


class BlobDigests:
    """A blob's sha256 (its id) and every block's digest by each of BLOCK_HASHES (its block
    list), from its bytes fed in pieces of any size. The first block's sha256 is the whole
    blob's as it stood at the block's end (a copy of its state), not hashed a second time:
    for a blob of one block, most of them, that is a third of the hashing."""

    def __init__(self) -> None:
        self.size = 0
        self.whole = hashlib.sha256()
        self.blocks: dict[str, list[str]] = {name: [] for name in BLOCK_HASHES}
        self._block = self._new_block()  # fed as the block's bytes arrive
        self._fill = 0

    def _new_block(self) -> dict[str, Any]:
        first = not self.blocks["sha256"]
        return {
            name: block_hasher(name) for name in BLOCK_HASHES if not (first and name == "sha256")
        }

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), BLOCK_SIZE - self._fill)
            piece = view[:take]
            self.whole.update(piece)
            for hasher in self._block.values():
                hasher.update(piece)
            self._fill += take
            view = view[take:]
            if self._fill == BLOCK_SIZE:
                self._end_block()

    def _end_block(self) -> None:
        for name in BLOCK_HASHES:
            hasher = self._block.get(name)
            if hasher is None:  # the first block's sha256: the whole blob's so far
                hasher = self.whole.copy()
            self.blocks[name].append(hasher.hexdigest())
        self._block, self._fill = self._new_block(), 0

    def finish(self) -> str:
        """The blob's sha256; ``blocks`` is then complete (a blob of 0 bytes has one block)."""
        if self._fill or not self.blocks["sha256"]:
            self._end_block()
        return str(self.whole.hexdigest())


# --------------------------------------------------------------------------- rev specs


@dataclass(frozen=True, slots=True)
class RepoSpec:
    """``OWNER/NAME[@REV][:PATH]`` as a user types it."""

    owner: str
    name: str
    rev: str | None = None
    path: str = ""

    @property
    def repo(self) -> str:
        return f"{self.owner}/{self.name}"

    def __str__(self) -> str:
        text = self.repo
        if self.rev is not None:
            text += f"@{self.rev}"
        if self.path:
            text += f":{self.path}"
        return text


def parse_repo_spec(text: str, *, allow_path: bool = True) -> RepoSpec:
    rest, sep, path = text.partition(":") if allow_path else (text, "", "")
    repo, at, rev = rest.partition("@")
    owner, slash, name = repo.partition("/")
    if not slash:
        raise InvalidInputError(f"invalid repository {text!r}: want OWNER/NAME[@REV]")
    if at and not rev:
        raise InvalidInputError(f"invalid repository {text!r}: empty revision after '@'")
    clean_path = "/".join(split_path(path)) if sep else ""
    return RepoSpec(
        owner=check_name(owner, "owner"),
        name=check_name(name, "repository name"),
        rev=rev if at else None,
        path=clean_path,
    )
