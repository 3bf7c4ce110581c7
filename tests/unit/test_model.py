"""The data model (names, paths, trees, commits, specs) and the exception tree. Pure code."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfs import _errors as errors
from streamfs import _model
from streamfs._model import (
    EMPTY_TREE,
    Commit,
    Entry,
    RepoSpec,
    Tree,
    check_name,
    check_path,
    check_ref_name,
    decode_commit,
    decode_tree,
    encode_commit,
    encode_tree,
    make_tree,
    object_id,
    parse_repo_spec,
    split_path,
)

ID_A = "a" * 64
ID_B = "b" * 64

# ------------------------------------------------------------------ strategies

ids = st.binary(max_size=8).map(lambda b: hashlib.sha256(b).hexdigest())
counts = st.integers(min_value=0, max_value=2**63 - 1)
# Any Unicode that encodes to UTF-8 (no surrogates), no '/' or NUL.
names = st.text(
    st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=16
).filter(lambda s: s not in {".", ".."})
paths = st.lists(names, min_size=1, max_size=5).map("/".join)
entries = st.builds(
    Entry, name=names, kind=st.sampled_from(["file", "dir"]), id=ids, size=counts, mtime=counts
)
entry_lists = st.lists(entries, max_size=12, unique_by=lambda e: e.name)
keys = st.text(st.characters(codec="utf-8"), max_size=8)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | keys
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
plain_text = st.text(st.characters(codec="utf-8"), max_size=40)
commits = st.builds(
    Commit,
    tree=ids,
    parents=st.lists(ids, max_size=16).map(tuple),
    message=plain_text,
    author=plain_text,
    time=counts,
    meta=st.dictionaries(keys, json_values, max_size=4),
)
ref_parts = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,8}", fullmatch=True)
ref_names = st.lists(ref_parts, min_size=1, max_size=3).map("/".join)
repo_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


# ------------------------------------------------------------------ names and paths


@pytest.mark.parametrize("good", ["a", "alice", "A-1_b.c", "9lives", "x" * 100, "a.."])
def test_check_name_accepts(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", ".hidden", "-dash", "_under", "a/b", "a b", "é", "x" * 101, "a\n", None, 3],
)
def test_check_name_rejects(bad: object) -> None:
    with pytest.raises(errors.InvalidInputError):
        check_name(bad)


@pytest.mark.parametrize("good", ["main", "_x", "feature/x-1", "v1.0", "a/b/c", "x" * 100])
def test_check_ref_name_accepts(good: str) -> None:
    assert check_ref_name(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/main",
        "main/",
        "a//b",
        "a..b",
        "x.lock",
        "a/x.lock/b",
        ".hidden",
        "a/.b",
        "-x",
        "a b",
        "a:b",
        "a\x00",
        "x" * 101,
        "/".join(["x" * 50] * 4) + "/y",  # parts are fine, total over 200
        None,
    ],
)
def test_check_ref_name_rejects(bad: object) -> None:
    with pytest.raises(errors.InvalidInputError):
        check_ref_name(bad)


# 17 components, 16 slashes, 4096 bytes in all; the last one pushed to 4097.
_PATH_4096 = "/".join(["a" * 255] * 15 + ["b" * 200, "c" * 55])
_PATH_4097 = _PATH_4096 + "c"


@pytest.mark.parametrize(
    "good", ["a", "a/b.txt", "ünï/cødé", "a b/c:d", ".a/..b/...", "x" * 255, "é" * 127, _PATH_4096]
)
def test_check_path_accepts(good: str) -> None:
    assert len(_PATH_4096.encode()) == 4096
    assert check_path(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "a/..",
        "../a",
        "a/./b",
        "/a",
        "/",
        "a/",
        "a//b",
        "a\x00b",
        "x" * 256,
        "é" * 128,  # 128 characters but 256 bytes
        "a/\udcff",  # a surrogate: what os.fsdecode makes of a non-UTF-8 name
        "\ud800",
        _PATH_4097,
        None,
        b"a",
    ],
)
def test_check_path_rejects(bad: object) -> None:
    with pytest.raises(errors.InvalidInputError):
        check_path(bad)


@given(paths)
def test_valid_paths_are_accepted_and_split_on_slashes(path: str) -> None:
    assert check_path(path) == path
    assert split_path(path) == tuple(path.split("/"))
    assert split_path("/" + path + "/") == split_path(path)


@given(st.lists(names, max_size=3), st.sampled_from(["", ".", "..", "\ud800", "a\x00", "x" * 256]))
def test_one_bad_component_rejects_the_whole_path(parts: list[str], bad: str) -> None:
    path = "/".join(["head", *parts, bad, "tail"])
    with pytest.raises(errors.InvalidInputError):
        check_path(path)
    with pytest.raises(errors.InvalidInputError):
        split_path(path)


@pytest.mark.parametrize("root", ["", "/", "///"])
def test_split_path_of_the_root_is_empty(root: str) -> None:
    assert split_path(root) == ()


@pytest.mark.parametrize("bad", ["a//b", "a/../b", "a/\x00", "/./"])
def test_split_path_rejects_what_check_path_rejects(bad: str) -> None:
    with pytest.raises(errors.InvalidInputError):
        split_path(bad)


# ------------------------------------------------------------------ trees


@given(entry_lists)
def test_tree_round_trips_through_canonical_bytes(items: list[Entry]) -> None:
    tree = make_tree(items)
    data = encode_tree(tree)
    assert decode_tree(data) == tree
    assert encode_tree(decode_tree(data)) == data
    assert (
        data
        == json.dumps(
            json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


@given(entry_lists, st.randoms(use_true_random=False))
def test_tree_id_does_not_depend_on_entry_order(items: list[Entry], rng: Any) -> None:
    shuffled = list(items)
    rng.shuffle(shuffled)
    data = encode_tree(make_tree(items))
    assert encode_tree(make_tree(shuffled)) == data
    assert object_id(data) == hashlib.sha256(data).hexdigest()


def test_tree_encoding_is_pinned() -> None:
    # The wire format: changing it changes every id in every repository.
    tree = make_tree([Entry("b", "dir", ID_B, 7, 9), Entry("a", "file", ID_A, 3, 5)])
    assert encode_tree(EMPTY_TREE) == b'{"entries":[]}'
    assert encode_tree(tree) == (
        b'{"entries":[{"id":"' + ID_A.encode() + b'","kind":"file","mtime":5,"name":"a","size":3},'
        b'{"id":"' + ID_B.encode() + b'","kind":"dir","mtime":9,"name":"b","size":7}]}'
    )
    assert tree.size == 10
    assert tree.get("a") == Entry("a", "file", ID_A, 3, 5)
    assert tree.get("c") is None


def test_make_tree_rejects_duplicate_names() -> None:
    with pytest.raises(errors.InvalidInputError, match="duplicate"):
        make_tree([Entry("a", "file", ID_A, 1), Entry("a", "dir", ID_B, 1)])


def _tree_bytes(*items: object) -> bytes:
    return json.dumps({"entries": list(items)}).encode()


def _entry(**changes: object) -> dict[str, object]:
    return {"name": "a", "kind": "file", "id": ID_A, "size": 1, "mtime": 0} | changes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"{}",
        b'{"entries": {}}',
        b'{"entries": null}',
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting must not escape as RecursionError
        b'{"entries": [' * 50_000,
        _tree_bytes("a"),
        _tree_bytes(_entry(name=None)),
        _tree_bytes(_entry(name="")),
        _tree_bytes(_entry(name=".")),
        _tree_bytes(_entry(name="..")),
        _tree_bytes(_entry(name="a/b")),
        _tree_bytes(_entry(name="a\x00")),
        _tree_bytes(_entry(name="\ud800")),
        _tree_bytes(_entry(name="x" * 256)),
        _tree_bytes(_entry(kind="link")),
        _tree_bytes(_entry(kind=None)),
        _tree_bytes(_entry(id=ID_A.upper())),
        _tree_bytes(_entry(id=ID_A[:-1])),
        _tree_bytes(_entry(id=None)),
        _tree_bytes(_entry(size=-1)),
        _tree_bytes(_entry(size=True)),
        _tree_bytes(_entry(size=1.0)),
        _tree_bytes(_entry(size="1")),
        _tree_bytes(_entry(size=None)),
        _tree_bytes(_entry(size=2**63)),
        _tree_bytes(_entry(mtime=-1)),
        _tree_bytes(_entry(mtime=False)),
        b'{"entries": [{"name": "a", "kind": "file", "id": "'
        + ID_A.encode()
        + b'", "size": NaN}]}',
        _tree_bytes(_entry(name="b"), _entry(name="a")),  # unsorted
        _tree_bytes(_entry(name="a"), _entry(name="a", kind="dir")),  # duplicate
    ],
)
def test_decode_tree_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(errors.InvalidInputError):
        decode_tree(data)


# What a tree's entries may carry instead of a good field
_BAD_FIELDS: dict[str, list[Any]] = {
    "name": ["", ".", "..", "a/b", "a\x00", "\ud800", "\u00e9" * 128, None, 1, ["a"]],
    "kind": ["link", "", "File", None, 1, ["file"]],
    "id": [ID_A.upper(), ID_A[:-1], ID_A + "a", "g" * 64, " " * 64, "", None, 5],
    "size": [-1, 2**63, True, False, 1.0, "1", None, [1]],
    "mtime": [-1, 2**63, True, 0.0, "0", None],
}


@pytest.mark.parametrize(
    ("field", "value"), [(field, value) for field, bad in _BAD_FIELDS.items() for value in bad]
)
def test_a_tree_with_a_bad_field_is_not_checked_by_columns(field: str, value: Any) -> None:
    items = [_entry(**{field: value})]
    assert _model._well_formed_fields(items) is None
    with pytest.raises(errors.InvalidInputError):
        decode_tree(_tree_bytes(*items))


@st.composite
def _entry_objects(draw: st.DrawFn) -> list[Any]:
    """A tree's entries as JSON objects, sorted by name, with at most one flaw: a bad or
    missing field, an entry that is no object, two entries out of order, a name twice."""
    items: list[Any] = [e.to_json() for e in sorted(draw(entry_lists), key=lambda e: e.name)]
    if not items:
        return items
    at = draw(st.integers(0, len(items) - 1))
    flaw = draw(st.sampled_from(["none", "field", "missing", "not an object", "order", "twice"]))
    if flaw == "field":
        field = draw(st.sampled_from(sorted(_BAD_FIELDS)))
        items[at][field] = draw(st.sampled_from(_BAD_FIELDS[field]))
    elif flaw == "missing":
        del items[at][draw(st.sampled_from(["name", "kind", "id", "size", "mtime"]))]
    elif flaw == "not an object":
        items[at] = draw(st.sampled_from(["a", 1, None, [], {}]))
    elif flaw == "order" and len(items) > 1:
        items[at], items[at - 1] = items[at - 1], items[at]
    elif flaw == "twice" and len(items) > 1:
        items[at] = items[at - 1] | {"kind": "dir"}
    return items


@given(_entry_objects())
def test_a_tree_checked_by_columns_accepts_what_entry_by_entry_accepts(items: list[Any]) -> None:
    # decode_tree checks a tree's entries a column at a time, falling back to one at a time
    # (which names what is wrong) when anything is off; it must accept nothing more
    try:
        expected = _model._decode_entries(items)
    except errors.InvalidInputError:
        expected = None
    fields = _model._well_formed_fields(items)
    if expected is None:
        assert fields is None
    elif fields is not None:
        assert Tree(tuple(itertools.starmap(Entry, fields))) == expected
    data = json.dumps({"entries": items}).encode()
    if expected is None:
        with pytest.raises(errors.InvalidInputError):
            decode_tree(data)
    else:
        assert decode_tree(data) == expected


@given(entry_lists)
def test_a_well_formed_tree_is_checked_by_columns(items: list[Entry]) -> None:
    # ``names`` have at most 16 characters: the column check takes every such tree itself
    data = encode_tree(make_tree(items))
    assert _model._well_formed_fields(json.loads(data)["entries"]) is not None
    assert decode_tree(data) == make_tree(items)


def test_decode_refuses_objects_over_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode_tree(make_tree([Entry("a", "file", ID_A, 1)]))
    monkeypatch.setattr(_model, "MAX_OBJECT_BYTES", len(data) - 1)
    with pytest.raises(errors.InvalidInputError, match="larger"):
        decode_tree(data)


def test_decode_tree_defaults_a_missing_mtime_to_zero() -> None:
    entry = _entry()
    del entry["mtime"]
    assert decode_tree(_tree_bytes(entry)).entries == (Entry("a", "file", ID_A, 1, 0),)


# ------------------------------------------------------------------ commits


@given(commits)
def test_commit_round_trips_through_canonical_bytes(commit: Commit) -> None:
    data = encode_commit(commit)
    assert decode_commit(data) == commit
    assert encode_commit(decode_commit(data)) == data
    assert object_id(data) == hashlib.sha256(data).hexdigest()


def test_commit_id_is_stable_for_the_same_content() -> None:
    meta_a = {"x": 1, "y": [1, 2]}
    meta_b = {"y": [1, 2], "x": 1}
    a = Commit(ID_A, (ID_B,), "msg", "alice", 5, meta_a)
    b = Commit(ID_A, (ID_B,), "msg", "alice", 5, meta_b)
    assert encode_commit(a) == encode_commit(b)
    assert encode_commit(a) == (
        b'{"author":"alice","message":"msg","meta":{"x":1,"y":[1,2]},'
        b'"parents":["' + ID_B.encode() + b'"],"time":5,"tree":"' + ID_A.encode() + b'"}'
    )


@pytest.mark.parametrize(
    "field, value", [("message", "bad \udcff"), ("author", "\ud800"), ("meta", {"k": "\udc80"})]
)
def test_encode_commit_rejects_text_that_is_not_utf8(field: str, value: object) -> None:
    good = Commit(ID_A, (), "m", "a", 0)
    bad = Commit(**{**good.to_json(), "parents": (), field: value})
    with pytest.raises(errors.InvalidInputError):
        encode_commit(bad)


def _commit_bytes(**changes: object) -> bytes:
    raw: dict[str, object] = {
        "tree": ID_A,
        "parents": [ID_B],
        "message": "m",
        "author": "a",
        "time": 1,
        "meta": {},
    }
    for key, value in changes.items():
        if value is _MISSING:
            del raw[key]
        else:
            raw[key] = value
    return json.dumps(raw).encode()


_MISSING = object()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[1]",
        b"{" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        _commit_bytes(tree=_MISSING),
        _commit_bytes(tree=ID_A.upper()),
        _commit_bytes(tree=None),
        _commit_bytes(parents=_MISSING),
        _commit_bytes(parents=ID_B),
        _commit_bytes(parents=[ID_B[:10]]),
        _commit_bytes(parents=[ID_B] * 17),
        _commit_bytes(message=None),
        _commit_bytes(message=_MISSING),
        _commit_bytes(author=3),
        _commit_bytes(meta=[]),
        _commit_bytes(meta=None),
        _commit_bytes(time=-1),
        _commit_bytes(time=True),
        _commit_bytes(time=1.5),
        _commit_bytes(time=_MISSING),
    ],
)
def test_decode_commit_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(errors.InvalidInputError):
        decode_commit(data)


def test_decode_commit_defaults_missing_meta_to_empty() -> None:
    assert decode_commit(_commit_bytes(meta=_MISSING)).meta == {}


# ------------------------------------------------------------------ repo specs


@pytest.mark.parametrize(
    "text, spec",
    [
        ("alice/data", RepoSpec("alice", "data")),
        ("alice/data@main", RepoSpec("alice", "data", "main")),
        ("alice/data@feature/x", RepoSpec("alice", "data", "feature/x")),
        ("alice/data@" + ID_A, RepoSpec("alice", "data", ID_A)),
        ("alice/data@v1.0:sub/dir", RepoSpec("alice", "data", "v1.0", "sub/dir")),
        ("alice/data:sub/dir/", RepoSpec("alice", "data", None, "sub/dir")),
        ("alice/data:/sub", RepoSpec("alice", "data", None, "sub")),
        ("alice/data:", RepoSpec("alice", "data")),
        ("alice/data:/", RepoSpec("alice", "data")),
        ("alice/data:a@b:c", RepoSpec("alice", "data", None, "a@b:c")),
    ],
)
def test_parse_repo_spec(text: str, spec: RepoSpec) -> None:
    assert parse_repo_spec(text) == spec


def test_parse_repo_spec_without_paths() -> None:
    assert parse_repo_spec("alice/data@main", allow_path=False) == RepoSpec("alice", "data", "main")
    with pytest.raises(errors.InvalidInputError):
        parse_repo_spec("alice/data:sub", allow_path=False)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "alice",
        "alice@main",
        "/data",
        "alice/",
        "alice/data@",
        "alice/data@:x",
        "alice/da/ta",
        "alice/.",
        "alice/..",
        "-alice/data",
        "alice/data:../x",
        "alice/data:a//b",
        "alice/data:a/\x00",
        ":x",
    ],
)
def test_parse_repo_spec_rejects(bad: str) -> None:
    with pytest.raises(errors.InvalidInputError):
        parse_repo_spec(bad)


@given(repo_names, repo_names, st.none() | ref_names, st.none() | paths)
def test_repo_spec_round_trips_through_str(
    owner: str, name: str, rev: str | None, path: str | None
) -> None:
    spec = RepoSpec(owner, name, rev, path or "")
    assert parse_repo_spec(str(spec)) == spec
    assert spec.repo == f"{owner}/{name}"


# ------------------------------------------------------------------ the exception tree

ERRNOS = [
    (errors.StreamfsError, errno.EIO, OSError),
    (errors.NotFoundError, errno.ENOENT, FileNotFoundError),
    (errors.RepoNotFoundError, errno.ENOENT, FileNotFoundError),
    (errors.RevisionNotFoundError, errno.ENOENT, FileNotFoundError),
    (errors.PathNotFoundError, errno.ENOENT, FileNotFoundError),
    (errors.NotADirError, errno.ENOTDIR, NotADirectoryError),
    (errors.IsADirError, errno.EISDIR, IsADirectoryError),
    (errors.AlreadyExistsError, errno.EEXIST, FileExistsError),
    (errors.ConflictError, errno.EBUSY, OSError),
    (errors.InvalidInputError, errno.EINVAL, OSError),
    (errors.AccessDeniedError, errno.EACCES, PermissionError),
    (errors.ReadOnlyError, errno.EROFS, OSError),
    (errors.TooLargeError, errno.EFBIG, OSError),
    (errors.IntegrityError, errno.EIO, OSError),
    (errors.RemoteError, errno.EIO, OSError),
    (errors.RemoteUnavailableError, errno.EIO, ConnectionError),
]


@pytest.mark.parametrize("cls, code, builtin", ERRNOS)
def test_errors_carry_errno_and_builtin_base(
    cls: type[errors.StreamfsError], code: int, builtin: type[OSError]
) -> None:
    exc = cls("it broke")
    assert type(exc) is cls
    assert isinstance(exc, errors.StreamfsError)
    assert isinstance(exc, builtin)
    assert exc.errno == code
    assert exc.message == exc.strerror == str(exc) == "it broke"
    assert exc.filename is None


def test_error_family_relations() -> None:
    assert issubclass(errors.PathNotFoundError, errors.NotFoundError)
    assert issubclass(errors.RemoteUnavailableError, errors.RemoteError)
    for cls in (errors.ConflictError, errors.InvalidInputError, errors.ReadOnlyError):
        assert not issubclass(cls, FileNotFoundError | FileExistsError | PermissionError)
    assert not issubclass(errors.RemoteError, ConnectionError)
    with pytest.raises(FileNotFoundError):
        raise errors.PathNotFoundError("gone", filename="a/b")


def test_error_with_filename_formats_like_oserror() -> None:
    exc = errors.PathNotFoundError("no such file", filename="a/b.txt")
    assert exc.filename == "a/b.txt"
    assert str(exc) == "no such file: a/b.txt"
    assert exc.errno == errno.ENOENT


def _all_error_classes() -> list[type[errors.StreamfsError]]:
    found = [v for v in vars(errors).values() if isinstance(v, type)]
    return [c for c in found if issubclass(c, errors.StreamfsError)]


def test_every_error_class_has_a_documented_errno() -> None:
    assert {c for c, _, _ in ERRNOS} == set(_all_error_classes())


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("filename", [None, "dir/file"])
def test_errors_pickle_across_processes(
    cls: type[errors.StreamfsError], filename: str | None
) -> None:
    exc = cls("went wrong", filename=filename)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert (back.errno, back.message, back.filename, str(back), back.args) == (
        exc.errno,
        exc.message,
        exc.filename,
        str(exc),
        exc.args,
    )


def test_error_codes_map_to_the_tree() -> None:
    assert errors.ERROR_CODES["path_not_found"] is errors.PathNotFoundError
    assert all(issubclass(c, errors.StreamfsError) for c in errors.ERROR_CODES.values())


@settings(max_examples=30)
@given(
    st.sampled_from([c for c, _, _ in ERRNOS]),
    st.text(max_size=20),
    st.none() | st.text(max_size=20),
)
def test_any_error_message_survives_pickling(
    cls: type[errors.StreamfsError], message: str, filename: str | None
) -> None:
    back = pickle.loads(pickle.dumps(cls(message, filename=filename)))
    assert (type(back), back.message, back.filename) == (cls, message, filename)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3 * 64), st.lists(st.integers(1, 100), min_size=1, max_size=8), st.data())
def test_blob_digests_fed_in_any_pieces_are_the_whole_blobs(
    size: int, cuts: list[int], data: st.DataObject
) -> None:
    """A blob's id and block list, from its bytes in pieces that do not follow its blocks
    (blocks of 64 bytes here, so pieces straddle them)."""
    block = 64
    blob = data.draw(st.binary(min_size=size, max_size=size))
    original = _model.BLOCK_SIZE
    _model.BLOCK_SIZE = block
    try:
        digests = _model.BlobDigests()
        at = 0
        for cut in itertools.cycle(cuts):
            if at >= len(blob):
                break
            digests.update(blob[at : at + cut])
            at += cut
        assert digests.finish() == hashlib.sha256(blob).hexdigest()
    finally:
        _model.BLOCK_SIZE = original
    pieces = [blob[i : i + block] for i in range(0, len(blob), block)] or [b""]
    assert digests.size == len(blob)
    assert digests.blocks == {
        name: [_model.block_digest(name, p) for p in pieces] for name in _model.BLOCK_HASHES
    }
