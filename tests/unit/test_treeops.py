"""Tree editing and diffing against a reference model: a dict {path: (blob, size)}.

Trees live in an in-memory store that counts loads, so the tests can also
check that a change in one folder touches only the trees on its path.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from streamfs._errors import ConflictError, InvalidInputError
from streamfs._model import EMPTY_TREE, Entry, Tree, decode_tree, encode_tree, object_id
from streamfs._treeops import OPS, Change, apply_changes, diff_trees, find_conflicts, walk_files

Model = dict[str, tuple[str, int]]  # path -> (blob id, size)


class MemoryStore:
    """Trees in a dict keyed by id; ``loads`` records every load the code under test makes."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.loads: list[str] = []

    def load(self, oid: str) -> Tree:
        self.loads.append(oid)
        return self.peek(oid)

    def peek(self, oid: str) -> Tree:
        return decode_tree(self.objects[oid])

    def store(self, tree: Tree) -> str:
        data = encode_tree(tree)
        oid = object_id(data)
        self.objects[oid] = data
        return oid

    def apply(self, root: str | None, changes: Sequence[Change], now: int = 1) -> str:
        return apply_changes(root, changes, self.load, self.store, now)

    def files(self, root: str | None) -> Model:
        return {p: (e.id, e.size) for p, e in walk_files(root, self.peek)}

    def dirs(self, root: str | None) -> dict[str, Entry]:
        """Every directory entry below ``root`` by path."""
        found: dict[str, Entry] = {}

        def walk(tree: Tree, prefix: str) -> None:
            for e in tree.entries:
                if e.is_dir:
                    found[prefix + e.name] = e
                    walk(self.peek(e.id), prefix + e.name + "/")

        if root is not None:
            walk(self.peek(root), "")
        return found


def blob(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def put(path: str, n: int = 0, op: str = "put") -> Change:
    return Change(op, path, blob(n), 10 + n)  # type: ignore[arg-type]


def build(store: MemoryStore, paths: Iterable[str], now: int = 1) -> str:
    return store.apply(None, [put(p, i) for i, p in enumerate(paths)], now)


# ------------------------------------------------------------------ the reference model


def ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def model_dirs(model: Iterable[str]) -> set[str]:
    return {a for p in model for a in ancestors(p)}


def overlapping(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def expected_apply(model: Model, changes: Sequence[Change]) -> Model | set[str]:
    """The model after ``changes``, or the set of paths a ConflictError may name.

    Raises InvalidInputError itself for change lists that overlap.
    """
    for a, b in itertools.combinations([c.path for c in changes], 2):
        if overlapping(a, b):
            raise InvalidInputError(f"{a!r} and {b!r} overlap")
    dirs = model_dirs(model)
    new, conflicts = dict(model), set()
    for c in changes:
        file_ancestors = [a for a in ancestors(c.path) if a in model]
        if file_ancestors:
            conflicts.add(file_ancestors[0])
        elif c.op == "delete":
            if c.path in model:
                del new[c.path]
            elif c.path in dirs:
                new = {p: v for p, v in new.items() if not p.startswith(c.path + "/")}
            else:
                conflicts.add(c.path)
        elif (
            c.path in dirs
            or (c.op == "add" and c.path in model)
            or (c.op == "replace" and c.path not in model)
        ):
            conflicts.add(c.path)
        else:
            assert c.blob is not None
            new[c.path] = (c.blob, c.size)
    return conflicts or new


def expected_diff(old: Model, new: Model) -> dict[str, str]:
    result = {p: "removed" for p in old.keys() - new.keys()}
    result |= {p: "added" for p in new.keys() - old.keys()}
    result |= {p: "modified" for p in old.keys() & new.keys() if old[p][0] != new[p][0]}
    return result


def check_tree_invariants(store: MemoryStore, root: str, model: Model) -> None:
    """No empty directories, and every directory's size and mtime summarise what is below it."""
    tree = store.peek(root)
    assert tree.size == sum(size for _, size in model.values())
    for path, entry in store.dirs(root).items():
        sub = store.peek(entry.id)
        assert sub.entries, f"empty directory {path!r} left behind"
        below = [s for p, (_, s) in model.items() if p.startswith(path + "/")]
        assert entry.size == sum(below) == sub.size
        assert entry.mtime == max(e.mtime for e in sub.entries)


# ------------------------------------------------------------------ strategies

NAMES = "abc"
fresh_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)


def change_lists(model: Model) -> st.SearchStrategy[list[Change]]:
    known = sorted(model.keys() | model_dirs(model))
    paths = st.sampled_from(known) | fresh_paths if known else fresh_paths
    change = st.builds(
        lambda op, path, n: Change("delete", path) if op == "delete" else put(path, n, op),
        st.sampled_from(OPS),
        paths,
        st.integers(0, 4),
    )
    return st.lists(change, max_size=5)


def drop_overlaps(changes: list[Change]) -> list[Change]:
    kept: list[Change] = []
    for c in changes:
        if not any(overlapping(c.path, k.path) for k in kept):
            kept.append(c)
    return kept


# ------------------------------------------------------------------ the state machine


class TreeMachine(RuleBasedStateMachine):
    """Random change sets against the tree code and the model; compare after each."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.model: Model = {}
        self.root = self.store.apply(None, [], now=0)
        self.now = 0

    @rule(data=st.data())
    def apply_random_changes(self, data: st.DataObject) -> None:
        changes = data.draw(change_lists(self.model), label="changes")
        if data.draw(st.booleans(), label="drop overlaps"):
            changes = drop_overlaps(changes)
        self.now += 1
        try:
            expected = expected_apply(self.model, changes)
        except InvalidInputError:
            event("overlapping change list")
            self.store.loads.clear()
            with pytest.raises(InvalidInputError):
                self.store.apply(self.root, changes, self.now)
            assert self.store.loads == []  # refused before reading anything
            return
        if isinstance(expected, set):
            event("conflict")
            with pytest.raises(ConflictError) as info:
                self.store.apply(self.root, changes, self.now)
            assert any(repr(p) in str(info.value) for p in expected), (expected, info.value)
            return
        event("applied")
        self.check_apply(changes, expected)

    def check_apply(self, changes: list[Change], expected: Model) -> None:
        old_root, old_dirs = self.root, self.store.dirs(self.root)
        self.store.loads.clear()
        new_root = self.store.apply(self.root, changes, self.now)
        # Only the root and the existing directories above a change are read.
        on_paths = {a for c in changes for a in ancestors(c.path)}
        wanted = [old_root] + [old_dirs[d].id for d in on_paths if d in old_dirs]
        assert Counter(self.store.loads) == Counter(wanted)
        # A directory whose content did not change keeps its id (and its entry).
        new_dirs = self.store.dirs(new_root)
        for d in old_dirs.keys() & new_dirs.keys():
            if _below(self.model, d) == _below(expected, d):
                assert new_dirs[d] == old_dirs[d]
        # The diff is exactly the model difference, read only where ids differ.
        self.store.loads.clear()
        diff = list(diff_trees(old_root, new_root, self.store.load))
        assert {d.path: d.status for d in diff} == expected_diff(self.model, expected)
        assert len(diff) == len({d.path for d in diff})
        changed_ids = {
            e.id
            for d in old_dirs.keys() | new_dirs.keys()
            if old_dirs.get(d) != new_dirs.get(d)
            for e in (old_dirs.get(d), new_dirs.get(d))
            if e is not None
        }
        assert set(self.store.loads) <= changed_ids | {old_root, new_root}
        self.model, self.root = expected, new_root

    @invariant()
    def tree_matches_model(self) -> None:
        assert self.store.files(self.root) == self.model
        check_tree_invariants(self.store, self.root, self.model)


def _below(model: Model, directory: str) -> Model:
    return {p: v for p, v in model.items() if p.startswith(directory + "/")}


TestTreeMachine = TreeMachine.TestCase
TestTreeMachine.settings = settings(max_examples=60, stateful_step_count=12, deadline=None)


# ------------------------------------------------------------------ properties


models = st.dictionaries(fresh_paths, st.integers(0, 4)).map(
    lambda d: {p: (blob(n), 10 + n) for p, n in d.items() if not model_dirs(d) & {p}}
)


@settings(max_examples=60, deadline=None)
@given(models, st.data())
def test_the_root_id_depends_only_on_the_content(start: Model, data: st.DataObject) -> None:
    """With a fixed clock, any history that ends in the same files ends in the same root id."""
    store = MemoryStore()
    root = store.apply(None, [Change("put", p, b, s) for p, (b, s) in start.items()], now=7)
    model = start
    for _ in range(3):
        changes = drop_overlaps(data.draw(change_lists(model)))
        expected = expected_apply(model, changes)
        if isinstance(expected, set):
            continue
        root, model = store.apply(root, changes, now=7), expected
    fresh = MemoryStore()
    rebuilt = fresh.apply(None, [Change("put", p, b, s) for p, (b, s) in model.items()], now=7)
    assert rebuilt == root
    assert fresh.objects.items() <= store.objects.items()


@settings(max_examples=60, deadline=None)
@given(models)
def test_walk_files_lists_every_file_once_in_tree_order(model: Model) -> None:
    store = MemoryStore()
    root = store.apply(None, [Change("put", p, b, s) for p, (b, s) in model.items()])
    walked = [p for p, _ in walk_files(root, store.peek)]
    assert walked == sorted(model, key=lambda p: p.split("/"))
    assert [p for p, _ in walk_files(root, store.peek, prefix="x/")] == ["x/" + p for p in walked]


@settings(max_examples=60, deadline=None)
@given(models, models)
def test_diff_between_any_two_trees_is_the_model_difference(old: Model, new: Model) -> None:
    store = MemoryStore()
    a = store.apply(None, [Change("put", p, b, s) for p, (b, s) in old.items()])
    b = store.apply(None, [Change("put", p, b_, s) for p, (b_, s) in new.items()])
    diff = list(diff_trees(a, b, store.peek))
    assert {d.path: d.status for d in diff} == expected_diff(old, new)
    for d in diff:
        assert (d.old is None or (d.old.id, d.old.size) == old[d.path]) and not (
            d.old and d.old.is_dir
        )
        assert (d.new is None or (d.new.id, d.new.size) == new[d.path]) and not (
            d.new and d.new.is_dir
        )
    reverse = {d.path: d.status for d in diff_trees(b, a, store.peek)}
    assert reverse == expected_diff(new, old)


# ------------------------------------------------------------------ examples

DATASET = ["a/x/1", "a/x/2", "a/y/3", "b/4", "b/c/5", "top"]


def test_a_change_in_one_folder_loads_only_the_trees_on_its_path() -> None:
    store = MemoryStore()
    root = build(store, DATASET)
    before = store.dirs(root)
    store.loads.clear()
    new_root = store.apply(root, [put("a/x/new", 9)])
    assert store.loads == [root, before["a"].id, before["a/x"].id]
    after = store.dirs(new_root)
    assert {d for d in before if before[d] != after[d]} == {"a", "a/x"}
    store.loads.clear()
    diff = list(diff_trees(root, new_root, store.load))
    assert [(d.path, d.status) for d in diff] == [("a/x/new", "added")]
    assert Counter(store.loads) == Counter(
        [root, new_root, before["a"].id, after["a"].id, before["a/x"].id, after["a/x"].id]
    )


def test_diff_of_identical_roots_loads_nothing() -> None:
    store = MemoryStore()
    root = build(store, DATASET)
    store.loads.clear()
    assert list(diff_trees(root, root, store.load)) == []
    assert list(diff_trees(None, None, store.load)) == []
    assert store.loads == []


def test_putting_the_same_blob_changes_nothing() -> None:
    store = MemoryStore()
    root = build(store, DATASET, now=1)
    again = store.apply(root, [put("a/x/1", 0), put("b/c/5", 4, "replace")], now=99)
    assert again == root


def test_empty_change_list_keeps_the_root() -> None:
    store = MemoryStore()
    root = build(store, DATASET)
    assert store.apply(root, []) == root
    assert store.apply(None, []) == object_id(encode_tree(EMPTY_TREE))


def test_deleting_the_last_file_removes_empty_directories() -> None:
    store = MemoryStore()
    root = build(store, ["a/b/c/f", "a/g"])
    root = store.apply(root, [Change("delete", "a/b/c/f")])
    assert set(store.files(root)) == {"a/g"}
    assert set(store.dirs(root)) == {"a"}
    root = store.apply(root, [Change("delete", "a/g")])
    assert root == object_id(encode_tree(EMPTY_TREE))
    assert store.peek(root) == EMPTY_TREE


def test_deleting_a_directory_removes_everything_below_it() -> None:
    store = MemoryStore()
    root = store.apply(build(store, DATASET), [Change("delete", "a")])
    assert set(store.files(root)) == {"b/4", "b/c/5", "top"}


def test_new_files_record_the_commit_time_and_directories_the_latest() -> None:
    store = MemoryStore()
    root = build(store, DATASET, now=5)
    root = store.apply(root, [put("b/c/6", 6)], now=8)
    tree = store.peek(root)
    assert tree.get("b").mtime == 8  # type: ignore[union-attr]
    assert tree.get("a").mtime == 5  # type: ignore[union-attr]
    assert tree.get("top").mtime == 5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "change, named",
    [
        (put("a/x/1", 7, "add"), "a/x/1"),
        (put("a/x/new", 7, "replace"), "a/x/new"),
        (put("nope/deeper", 7, "replace"), "nope/deeper"),
        (Change("delete", "missing"), "missing"),
        (Change("delete", "a/nope/deeper"), "a/nope/deeper"),
        (put("a", 7), "a"),  # a file where a directory is
        (put("a/x", 7, "add"), "a/x"),
        (put("top/inside", 7), "top"),  # a directory where a file is
        (Change("delete", "top/inside"), "top"),
        (put("b/4/x/y", 7, "add"), "b/4"),
    ],
)
def test_changes_that_do_not_fit_the_tree_conflict_naming_the_path(
    change: Change, named: str
) -> None:
    store = MemoryStore()
    root = build(store, DATASET)
    with pytest.raises(ConflictError) as info:
        store.apply(root, [put("b/ok", 8), change])
    assert repr(named) in str(info.value)
    assert info.value.errno == 16  # EBUSY
    assert store.files(root) == {p: (blob(i), 10 + i) for i, p in enumerate(DATASET)}


@pytest.mark.parametrize(
    "paths",
    [["a", "a"], ["a", "a/b"], ["a/b", "a"], ["x/y", "x/y/z"], ["x/y/z", "q", "x/y"]],
)
def test_duplicate_or_overlapping_paths_in_one_change_list_are_invalid(paths: list[str]) -> None:
    store = MemoryStore()
    root = build(store, DATASET)
    store.loads.clear()
    with pytest.raises(InvalidInputError):
        store.apply(root, [put(p) for p in paths])
    with pytest.raises(InvalidInputError):
        store.apply(root, [Change("delete", p) for p in paths])
    assert store.loads == []


@pytest.mark.parametrize(
    "args",
    [
        ("move", "a", blob(0), 1),
        ("put", "a/../b", blob(0), 1),
        ("put", "/a", blob(0), 1),
        ("put", "", blob(0), 1),
        ("put", "a", "nothex", 1),
        ("put", "a", None, 1),
        ("add", "a", blob(0), -1),
        ("add", "a", blob(0), True),
        ("replace", "a", blob(0), 1.5),
        ("delete", "a//b", None, 0),
    ],
)
def test_change_checked_rejects_bad_requests(args: tuple[object, ...]) -> None:
    with pytest.raises(InvalidInputError):
        Change.checked(*args)


def test_change_checked_accepts_good_requests() -> None:
    assert Change.checked("put", "a/b", blob(1), 5) == Change("put", "a/b", blob(1), 5)
    assert Change.checked("delete", "a/b", "ignored", -1) == Change("delete", "a/b")


# ------------------------------------------------------------------ find_conflicts


@pytest.mark.parametrize(
    "path, conflicts",
    [
        ("d/f", True),  # the same path
        ("d", True),  # something below it changed: it is a directory there
        ("d/f/g", True),  # an ancestor was changed as a file
        ("d/f/g/h", True),
        ("d/fg", False),  # a sibling with a common prefix
        ("d/e", False),
        ("e", False),
        ("df", False),
    ],
)
def test_find_conflicts_examples(path: str, conflicts: bool) -> None:
    got = find_conflicts([Change("delete", path)], ["d/f"])
    assert got == ([path] if conflicts else [])


@given(
    st.lists(fresh_paths, unique=True, max_size=6),
    st.lists(fresh_paths, max_size=6),
)
def test_find_conflicts_is_overlap_with_any_changed_path(
    change_paths: list[str], changed: list[str]
) -> None:
    changes = [Change("delete", p) for p in change_paths]
    expected = [p for p in change_paths if any(overlapping(p, c) for c in changed)]
    assert find_conflicts(changes, iter(changed)) == expected
