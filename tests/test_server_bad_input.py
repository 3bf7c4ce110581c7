"""Bad input against a real `streamfs serve`: always a 4xx with a JSON error, never a 500.

Every test runs on its own server and store. When a test ends, the fixture
checks what the bad requests must not have done: write a file outside the
store, leave a staging file or a partial object in it (every object file must
hash to its own id), or log a traceback.

Some requests go over a plain socket (``raw``): HTTP clients normalize
``..`` and percent-escapes in URLs, and refuse to send a Content-Length they
do not mean, and these tests need the bytes on the wire exactly as written.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import ServerProcess

ZERO_ID = "0" * 64
CANARY = "sfcanary"

# ----------------------------------------------------------------- helpers


def call(srv: ServerProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, srv.url + "/v1" + path, timeout=30, **kwargs)  # type: ignore[arg-type]


def post_raw_json(srv: ServerProcess, path: str, body: bytes) -> httpx.Response:
    return call(srv, "POST", path, content=body, headers={"Content-Type": "application/json"})


def raw(
    srv: ServerProcess,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> httpx.Response:
    """One request with exactly this target, these headers and these body bytes, in one write."""
    address = urlsplit(srv.url)
    assert address.hostname is not None and address.port is not None
    lines = [f"{method} {target} HTTP/1.1", f"Host: {address.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        content = response.read()
        # Wait for the server to close ("Connection: close") before closing our end, so a
        # server still writing never meets a client that already hung up.
        while sock.recv(65536):
            pass
        return httpx.Response(response.status, headers=response.getheaders(), content=content)


def chunked(data: bytes, piece: int = 700) -> bytes:
    """``data`` in HTTP/1.1 chunked transfer coding, terminator included."""
    out = b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + piece]), data[i : i + piece])
        for i in range(0, len(data), piece)
    )
    return out + b"0\r\n\r\n"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """A 4xx (or the given status) with the JSON error body of the protocol."""
    assert response.status_code == status, (status, response.status_code, response.text)
    try:
        method = response.request.method
    except RuntimeError:  # built by raw(): no request attached
        method = ""
    if method == "HEAD":
        return  # no body on HEAD
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Repo:
    srv: ServerProcess
    owner: str
    name: str
    blob: bytes
    blob_id: str
    head: str
    tree: str

    @property
    def path(self) -> str:
        return f"/repos/{self.owner}/{self.name}"

    def current_head(self, branch: str = "main") -> str:
        response = call(self.srv, "GET", self.path + "/resolve", params={"rev": branch})
        assert response.status_code == 200, response.text
        return str(response.json()["commit"])

    def commit(self, body: Mapping[str, object]) -> httpx.Response:
        """POST a commit on main; json.dumps escapes what httpx would refuse to encode."""
        data = json.dumps({"branch": "main", **body}).encode()
        return post_raw_json(self.srv, self.path + "/commits", data)


def put_blob(srv: ServerProcess, repo_path: str, data: bytes) -> str:
    oid = sha(data)
    response = call(srv, "PUT", f"{repo_path}/blobs/{oid}", content=data)
    assert response.status_code in (200, 201), response.text
    return oid


def make_repo(srv: ServerProcess, owner: str, name: str, blob: bytes | None = None) -> Repo:
    """A repo with one commit on main holding ``d/file.bin``."""
    blob = blob if blob is not None else f"bytes of {owner}/{name}\n".encode() * 4
    response = call(srv, "POST", "/repos", json={"owner": owner, "name": name})
    assert response.status_code == 201, response.text
    path = f"/repos/{owner}/{name}"
    oid = put_blob(srv, path, blob)
    response = call(
        srv,
        "POST",
        path + "/commits",
        json={"branch": "main", "changes": [{"op": "put", "path": "d/file.bin", "blob": oid}]},
    )
    assert response.status_code == 201, response.text
    head = response.json()["commit"]
    tree = call(srv, "GET", f"{path}/commits/{head}").json()["tree"]
    return Repo(srv, owner, name, blob, oid, head, tree)


# ----------------------------------------------------------------- store checks


def _outside_snapshot(tmp_path: Path) -> set[str]:
    """Names next to the test directory, and every path in it except the store."""
    names = {f"../{p.name}" for p in tmp_path.parent.iterdir()}
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        rel = Path(dirpath).relative_to(tmp_path)
        if rel.parts[:1] == ("store",):
            continue
        names.update(str(rel / n) for n in dirnames + filenames)
    return names


_HEX = "[0-9a-f]"
_NAME = "[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_STORE_FILE = re.compile(
    rf"data/objects/(blob|blockmap|tree|commit)/{_HEX}{{2}}/{_HEX}{{62}}"
    rf"|data/repos/{_NAME}/{_NAME}/repo"
    rf"|data/index/repos/{_NAME}/{_NAME}"
    rf"|data/repos/{_NAME}/{_NAME}/(heads|tags)/[A-Za-z0-9._%-]+"
    rf"|data/repos/{_NAME}/{_NAME}/has/(blob|tree|commit)/{_HEX}{{2}}/{_HEX}{{64}}"
    rf"|locks/{_HEX}{{32}}\.lock"
)


def staged_files(store: Path) -> list[Path]:
    """Files being received or left over from uploads: ``tmp/PID-xxx/*`` (not the locks)."""
    return [p for p in (store / "tmp").rglob("*") if p.is_file() and p.parent != store / "tmp"]


def check_store(store: Path) -> None:
    """Only the files the layout allows, no staging leftovers, every object whole."""
    assert not staged_files(store)
    for dirpath, dirnames, filenames in os.walk(store):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            assert not path.is_symlink(), path
            assert CANARY not in name, path
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(store).as_posix()
            if rel.startswith("tmp/"):
                continue  # the staging folders of server processes and their locks
            assert _STORE_FILE.fullmatch(rel), f"unexpected file in the store: {rel}"
            parts = rel.split("/")
            if parts[:2] == ["data", "objects"] and parts[2] != "blockmap":
                assert sha(path.read_bytes()) == parts[3] + parts[4], f"partial object {rel}"
            if parts[:2] == ["data", "repos"] and parts[4] == "has":
                oid = parts[7]
                assert (store / "data/objects" / parts[5] / oid[:2] / oid[2:]).is_file(), rel


def check_log(srv: ServerProcess) -> None:
    log = srv.log_text()
    assert "Traceback" not in log, log
    assert "internal error" not in log, log


S = TypeVar("S", bound=ServerProcess)


def served(server: S, tmp_path: Path) -> Iterator[S]:
    """Run ``server`` for a test; then: nothing new outside its store, a sound store, a clean log."""
    before = _outside_snapshot(tmp_path) | {"store", server.log_path.name}
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert _outside_snapshot(tmp_path) == before
    check_store(tmp_path / "store")
    check_log(server)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from served(ServerProcess(tmp_path / "store"), tmp_path)
    for place in (tmp_path, tmp_path.parent, Path("/tmp"), Path("/")):
        assert not (place / CANARY).exists(), place / CANARY


@pytest.fixture
def repo(srv: ServerProcess, repo_name: str) -> Repo:
    return make_repo(srv, "alice", repo_name)


# ----------------------------------------------------------------- JSON bodies

JSON_ROUTES = [
    "/repos",
    "{repo}/branches",
    "{repo}/tags",
    "{repo}/commits",
    "{repo}/blobs/missing",
    "{repo}/blobs/batch",
]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b'{"owner": "a",}',
        b'{"a": 1}{"b": 2}',
        b"\xff\xfe\x00\x00",
        b'{"owner": "\xff"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=[
        "empty",
        "open",
        "words",
        "trailing-comma",
        "two-docs",
        "bad-bom",
        "bad-utf8",
        "deep1",
        "deep2",
    ],
)
def test_malformed_json_is_400(srv: ServerProcess, repo: Repo, body: bytes) -> None:
    for route in JSON_ROUTES:
        assert_error(post_raw_json(srv, route.format(repo=repo.path), body), 400, "invalid")
    assert repo.current_head() == repo.head


@pytest.mark.parametrize("body", [b"null", b"[]", b'[{"owner": "a"}]', b"5", b'"text"', b"true"])
def test_json_that_is_not_an_object_is_400(srv: ServerProcess, repo: Repo, body: bytes) -> None:
    for route in JSON_ROUTES:
        assert_error(post_raw_json(srv, route.format(repo=repo.path), body), 400, "invalid")


def test_wrong_field_types_are_400(srv: ServerProcess, repo: Repo) -> None:
    change = {"op": "put", "path": "x.bin", "blob": repo.blob_id}
    cases: list[tuple[str, dict[str, object]]] = [
        ("/repos", {"owner": 5, "name": "x"}),
        ("/repos", {"owner": "alice", "name": ["x"]}),
        ("/repos", {"owner": "alice"}),
        ("/repos", {"owner": None, "name": None}),
        ("/repos", {"owner": "alice", "name": "x", "private": "yes"}),
        ("/repos", {"owner": "alice", "name": "x", "private": 1}),
        ("/repos", {"owner": "alice", "name": "x", "default_branch": 7}),
        ("/repos", {"owner": "alice", "name": "x", "default_branch": ""}),
        ("{repo}/branches", {"name": 5}),
        ("{repo}/branches", {}),
        ("{repo}/branches", {"name": "b", "rev": 5}),
        ("{repo}/branches", {"name": "b", "rev": ["main"]}),
        ("{repo}/tags", {"name": {"v": 1}}),
        ("{repo}/tags", {"name": "v1", "rev": True}),
        ("{repo}/blobs/missing", {}),
        ("{repo}/blobs/missing", {"ids": "abc"}),
        ("{repo}/blobs/missing", {"ids": {"a": 1}}),
        ("{repo}/blobs/missing", {"ids": [5]}),
        ("{repo}/blobs/missing", {"ids": [None]}),
        ("{repo}/blobs/batch", {}),
        ("{repo}/blobs/batch", {"ids": []}),
        ("{repo}/blobs/batch", {"ids": repo.blob_id}),
        ("{repo}/blobs/batch", {"ids": [repo.blob_id, 5]}),
        ("{repo}/blobs/batch", {"ids": [repo.blob_id] * 1001}),
        ("{repo}/commits", {"branch": "main"}),
        ("{repo}/commits", {"branch": "main", "changes": {"op": "put"}}),
        ("{repo}/commits", {"branch": "main", "changes": "x"}),
        ("{repo}/commits", {"branch": "main", "changes": [5]}),
        ("{repo}/commits", {"branch": "main", "changes": [["put", "x", repo.blob_id]]}),
        ("{repo}/commits", {"branch": 5, "changes": [change]}),
        ("{repo}/commits", {"changes": [change]}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "message": 5}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "message": "a\x00b"}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "message": "m" * 70_000}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "author": ["bob"]}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "meta": []}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "meta": "x"}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "parent": 5}),
        ("{repo}/commits", {"branch": "main", "changes": [change], "parent": "HEAD"}),
        ("{repo}/commits", {"branch": "main", "changes": [{**change, "size": "3"}]}),
        ("{repo}/commits", {"branch": "main", "changes": [{**change, "size": -1}]}),
        ("{repo}/commits", {"branch": "main", "changes": [{**change, "size": 1.5}]}),
        ("{repo}/commits", {"branch": "main", "changes": [{**change, "size": True}]}),
        ("{repo}/commits", {"branch": "main", "changes": [{**change, "blob": None}]}),
        ("{repo}/commits", {"branch": "main", "changes": [{**change, "blob": 5}]}),
        ("{repo}/commits", {"branch": "main", "changes": [{"op": "put", "blob": repo.blob_id}]}),
    ]
    for route, body in cases:
        response = call(srv, "POST", route.format(repo=repo.path), json=body)
        assert_error(response, 400, "invalid")
    assert repo.current_head() == repo.head
    names = [(r["owner"], r["name"]) for r in call(srv, "GET", "/repos").json()["repos"]]
    assert names == [(repo.owner, repo.name)]
    assert set(call(srv, "GET", repo.path + "/refs").json()["branches"]) == {"main"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message", "\ud800"),
        ("author", "x\udcffy"),
        ("meta", {"k": "\ud83d"}),
        ("meta", {"\ude00": 1}),
        ("meta", {"list": [1, ["\udfff"]]}),
        ("meta", {"deep": json.loads("[" * 200 + "]" * 200)}),
    ],
)
def test_strings_and_meta_that_cannot_be_stored_are_400(
    srv: ServerProcess, repo: Repo, field: str, value: object
) -> None:
    """Lone surrogates pass json.loads but cannot be UTF-8 encoded into a commit."""
    body = {"changes": [{"op": "put", "path": "new.bin", "blob": repo.blob_id}], field: value}
    assert_error(repo.commit(body), 400, "invalid")
    assert repo.current_head() == repo.head
    assert call(srv, "GET", repo.path + "/log").status_code == 200


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"[1e999]"])
def test_non_finite_numbers_in_meta_are_400_and_log_still_works(
    srv: ServerProcess, repo: Repo, number: bytes
) -> None:
    """Python's json reads NaN; a commit holding it is not JSON and its log cannot be served."""
    body = (
        b'{"branch": "main", "changes": [{"op": "put", "path": "n.bin", "blob": "%s"}],'
        b' "meta": {"x": %s}}' % (repo.blob_id.encode(), number)
    )
    assert_error(post_raw_json(srv, repo.path + "/commits", body), 400, "invalid")
    assert repo.current_head() == repo.head
    assert call(srv, "GET", repo.path + "/log").status_code == 200


def test_meta_within_limits_is_kept(srv: ServerProcess, repo: Repo) -> None:
    meta = {"job": "train", "nested": json.loads("[" * 60 + "]" * 60), "emoji": "\U0001f600"}
    body = {"changes": [{"op": "put", "path": "ok.bin", "blob": repo.blob_id}], "meta": meta}
    response = repo.commit(body)
    assert response.status_code == 201, response.text
    log = call(srv, "GET", repo.path + "/log").json()["commits"]
    assert log[0]["meta"] == meta


# ----------------------------------------------------------------- unknown things


def test_unknown_repo_is_404_on_every_route(srv: ServerProcess, repo: Repo) -> None:
    gone = "/repos/nobody/nothing"
    blob = f"/blobs/{repo.blob_id}"
    reads = ["", "/refs", "/resolve", "/log", "/diff?from=main&to=main"]
    reads += [f"/commits/{repo.head}", f"/trees/{repo.tree}", blob, blob + "/blocks"]
    for suffix in reads:
        assert_error(call(srv, "GET", gone + suffix), 404)
    assert_error(call(srv, "HEAD", gone + blob), 404)
    assert_error(call(srv, "PUT", gone + blob, content=repo.blob), 404)
    writes: list[tuple[str, dict[str, object]]] = [
        ("/branches", {"name": "b"}),
        ("/tags", {"name": "t"}),
        ("/blobs/missing", {"ids": [repo.blob_id]}),
        ("/blobs/batch", {"ids": [repo.blob_id]}),
        ("/commits", {"branch": "main", "changes": []}),
    ]
    for suffix, body in writes:
        assert_error(call(srv, "POST", gone + suffix, json=body), 404)
    assert_error(call(srv, "GET", "/repos/alice/nothing"), 404, "repo_not_found")
    assert_error(call(srv, "GET", f"/repos/nobody/{repo.name}"), 404, "repo_not_found")


def test_unknown_revisions_and_objects_are_404(srv: ServerProcess, repo: Repo) -> None:
    p = repo.path
    for rev in ["nope", "feature/x", "v9", "abcd", "0000", ZERO_ID, repo.tree]:
        assert_error(call(srv, "GET", p + "/resolve", params={"rev": rev}), 404)
        assert_error(call(srv, "GET", p + "/log", params={"rev": rev}), 404)
        assert_error(call(srv, "GET", p + "/diff", params={"from": "main", "to": rev}), 404)
        assert_error(call(srv, "POST", p + "/branches", json={"name": "b", "rev": rev}), 404)
        assert_error(call(srv, "POST", p + "/tags", json={"name": "t", "rev": rev}), 404)
    for oid in [ZERO_ID, sha(b"never uploaded")]:
        assert_error(call(srv, "GET", f"{p}/commits/{oid}"), 404)
        assert_error(call(srv, "GET", f"{p}/trees/{oid}"), 404)
        assert_error(call(srv, "GET", f"{p}/blobs/{oid}"), 404)
        assert_error(call(srv, "HEAD", f"{p}/blobs/{oid}"), 404)
        assert_error(call(srv, "GET", f"{p}/blobs/{oid}/blocks"), 404)
        for ids in ([oid], [repo.blob_id, oid]):
            assert_error(call(srv, "POST", f"{p}/blobs/batch", json={"ids": ids}), 404)
    # Objects do not change kind: a tree id is no commit, a commit id no tree or blob.
    assert_error(call(srv, "POST", f"{p}/blobs/batch", json={"ids": [repo.head]}), 404)
    assert_error(call(srv, "GET", f"{p}/commits/{repo.tree}"), 404)
    assert_error(call(srv, "GET", f"{p}/trees/{repo.head}"), 404)
    assert_error(call(srv, "GET", f"{p}/blobs/{repo.head}"), 404)
    assert_error(call(srv, "GET", f"{p}/commits/{repo.blob_id}"), 404)
    change = {"op": "put", "path": "x.bin", "blob": repo.blob_id}
    assert_error(
        call(srv, "POST", p + "/commits", json={"branch": "nope", "changes": [change]}), 404
    )
    assert_error(repo.commit({"changes": [change], "parent": ZERO_ID}), 404)
    assert_error(repo.commit({"changes": [change], "parent": repo.tree}), 404)
    assert_error(call(srv, "GET", p + "/resolve", params={"rev": "a\x00b"}), 400)
    assert_error(call(srv, "GET", p + "/resolve", params={"rev": "x" * 300}), 400)
    assert_error(call(srv, "GET", p + "/log", params={"limit": "abc"}), 400)
    assert_error(call(srv, "GET", p + "/log", params={"limit": "0"}), 400)
    assert_error(call(srv, "GET", p + "/log", params={"limit": "-1"}), 400)
    assert_error(call(srv, "GET", p + "/diff", params={"from": "main"}), 400)
    assert repo.current_head() == repo.head


def test_existing_names_are_409(srv: ServerProcess, repo: Repo) -> None:
    body = {"owner": repo.owner, "name": repo.name, "private": True}
    assert_error(call(srv, "POST", "/repos", json=body), 409, "already_exists")
    assert call(srv, "GET", repo.path).json()["private"] is False
    assert call(srv, "POST", repo.path + "/tags", json={"name": "v1"}).status_code == 201
    assert_error(call(srv, "POST", repo.path + "/tags", json={"name": "v1"}), 409)
    assert_error(call(srv, "POST", repo.path + "/branches", json={"name": "main"}), 409)


# ----------------------------------------------------------------- names


BAD_NAMES = [
    "..",
    ".",
    ".x",
    "-x",
    "_x",
    "a b",
    "a/b",
    "a\\b",
    "a%2Fb",
    "a\x00",
    "a\n",
    "é",
    "a" * 101,
    "a" * 200,
    "",
]


def test_invalid_owner_and_repo_names_in_the_body_are_400(srv: ServerProcess) -> None:
    for bad in BAD_NAMES:
        assert_error(call(srv, "POST", "/repos", json={"owner": bad, "name": "ok"}), 400)
        assert_error(call(srv, "POST", "/repos", json={"owner": "ok", "name": bad}), 400)
    assert call(srv, "GET", "/repos").json() == {"repos": []}


@pytest.mark.parametrize(
    "segment",
    [
        "..",
        ".",
        "%2E%2E",
        "%2e%2e",
        ".x",
        "%2Ex",
        "a%2Fb",
        f"..%2F..%2F{CANARY}",
        f"%2E%2E%2F%2E%2E%2F{CANARY}",
        "%252E%252E",
        "a%20b",
        "a+b",
        "a%00",
        "%C3%A9",
        "%FF",
        "a" * 101,
        "a" * 200,
        "a%5Cb",
    ],
)
def test_invalid_owner_and_repo_names_in_the_url_are_4xx(
    srv: ServerProcess, repo: Repo, segment: str
) -> None:
    targets = [
        f"/v1/repos/{segment}/{repo.name}",
        f"/v1/repos/{repo.owner}/{segment}",
        f"/v1/repos/{segment}/{segment}/refs",
        f"/v1/repos/{repo.owner}/{segment}/blobs/{repo.blob_id}",
    ]
    for target in targets:
        response = raw(srv, "GET", target)
        assert response.status_code in (400, 404), (target, response.status_code, response.text)
        assert_error(response, response.status_code)
        response = raw(srv, "PUT", target, {"Content-Length": str(len(repo.blob))}, repo.blob)
        assert response.status_code in (400, 404, 405), (target, response.text)
        assert_error(response, response.status_code)


BAD_REFS = [
    "",
    "/",
    "/main",
    "main/",
    "a//b",
    "a/../b",
    "..",
    ".",
    "a..b",
    ".hidden",
    "-x",
    "x.lock",
    "a/b.lock",
    "a b",
    "a\tb",
    "a:b",
    "a~1",
    "a^",
    "a?",
    "a*",
    "a[b",
    "@{-1}",
    "a\\b",
    "a%2Fb",
    "a\x00",
    "é",
    "x" * 201,
    "x" * 101,
    f"../../{CANARY}",
    "0" * 64,  # a full commit id names its commit: no ref may shadow a pinned revision
    "ab" * 32,
]


def test_invalid_ref_names_for_branches_and_tags_are_400(srv: ServerProcess, repo: Repo) -> None:
    for bad in BAD_REFS:
        assert_error(call(srv, "POST", repo.path + "/branches", json={"name": bad}), 400)
        assert_error(call(srv, "POST", repo.path + "/tags", json={"name": bad}), 400)
        body = {"branch": bad, "changes": [{"op": "delete", "path": "d/file.bin"}]}
        assert_error(call(srv, "POST", repo.path + "/commits", json=body), 400)
    bad_default = {"owner": "alice", "name": "other", "default_branch": "a..b"}
    assert_error(call(srv, "POST", "/repos", json=bad_default), 400)
    assert call(srv, "GET", repo.path + "/refs").json() == {
        "branches": {"main": repo.head},
        "tags": {},
    }
    for good in ["feature/x-1", "v1.0", "_tmp", "release/2024.01/rc_1"]:
        response = call(srv, "POST", repo.path + "/branches", json={"name": good})
        assert response.status_code == 201, (good, response.text)


# ----------------------------------------------------------------- change paths and ops

BAD_PATHS: list[object] = [
    "",
    "/",
    "/abs",
    "/etc/passwd",
    "..",
    ".",
    "../x",
    f"../../{CANARY}",
    "a/../x",
    "a/..",
    "./a",
    "a/./b",
    "a/.",
    "a//b",
    "//a",
    "a/",
    "a\x00b",
    "\x00",
    "x" * 256,
    "d/" + "y" * 256,
    "é" * 128,  # 256 bytes in UTF-8
    "d/" * 2100 + "f",  # over 4096 bytes in all
    "\ud800",
    None,
    5,
    ["a"],
]


def test_invalid_change_paths_are_400(srv: ServerProcess, repo: Repo) -> None:
    for bad in BAD_PATHS:
        for change in (
            {"op": "put", "path": bad, "blob": repo.blob_id},
            {"op": "add", "path": bad, "blob": repo.blob_id},
            {"op": "delete", "path": bad},
        ):
            body = json.dumps({"branch": "main", "changes": [change]}).encode()
            assert_error(post_raw_json(srv, repo.path + "/commits", body), 400, "invalid")
    assert repo.current_head() == repo.head
    for good in ["x" * 255, "é" * 127, "a b/c,d;e=f", "...", "a..b", ".hidden/..x"]:
        response = repo.commit({"changes": [{"op": "put", "path": good, "blob": repo.blob_id}]})
        assert response.status_code == 201, (good, response.text)


def test_invalid_change_ops_are_400(srv: ServerProcess, repo: Repo) -> None:
    for op in ["move", "PUT", "Put", "", " put", None, 5, ["put"], {"op": "put"}]:
        change = {"op": op, "path": "x.bin", "blob": repo.blob_id}
        assert_error(repo.commit({"changes": [change]}), 400, "invalid")
    clash: list[list[dict[str, object]]] = [
        [
            {"op": "put", "path": "x", "blob": repo.blob_id},
            {"op": "put", "path": "x", "blob": repo.blob_id},
        ],
        [
            {"op": "put", "path": "x", "blob": repo.blob_id},
            {"op": "put", "path": "x/y", "blob": repo.blob_id},
        ],
    ]
    for changes in clash:
        assert_error(repo.commit({"changes": changes}), 400, "invalid")
    misfits: list[dict[str, object]] = [
        {"op": "add", "path": "d/file.bin", "blob": repo.blob_id},
        {"op": "replace", "path": "d/nothing", "blob": repo.blob_id},
        {"op": "delete", "path": "nothing"},
        {"op": "put", "path": "d", "blob": repo.blob_id},
        {"op": "put", "path": "d/file.bin/x", "blob": repo.blob_id},
    ]
    for misfit in misfits:
        assert_error(repo.commit({"changes": [misfit]}), 409, "conflict")
    assert repo.current_head() == repo.head


# ----------------------------------------------------------------- blob ids

BAD_IDS = [
    "0" * 63,
    "0" * 65,
    "A" * 64,
    "g" * 64,
    " " + "0" * 63,
    "0" * 63 + "\n",
    "",
    "..",
    "xyz",
]


def test_invalid_object_ids_are_400(srv: ServerProcess, repo: Repo) -> None:
    p = repo.path
    upper = repo.blob_id.upper()
    for bad in [*BAD_IDS, upper, repo.blob_id[:12]]:
        if bad and bad.strip() == bad and bad != "..":
            assert_error(call(srv, "GET", f"{p}/blobs/{bad}"), 400, "invalid")
            assert_error(call(srv, "HEAD", f"{p}/blobs/{bad}"), 400)
            assert_error(call(srv, "GET", f"{p}/blobs/{bad}/blocks"), 400, "invalid")
            assert_error(call(srv, "PUT", f"{p}/blobs/{bad}", content=repo.blob), 400, "invalid")
            assert_error(call(srv, "GET", f"{p}/commits/{bad}"), 400, "invalid")
            assert_error(call(srv, "GET", f"{p}/trees/{bad}"), 400, "invalid")
        change = {"op": "put", "path": "x.bin", "blob": bad}
        assert_error(repo.commit({"changes": [change]}), 400, "invalid")
        assert_error(call(srv, "POST", p + "/blobs/missing", json={"ids": [bad]}), 400, "invalid")
        batch = {"ids": [repo.blob_id, bad]}
        assert_error(call(srv, "POST", p + "/blobs/batch", json=batch), 400, "invalid")
        assert_error(repo.commit({"changes": [], "parent": bad}), 400, "invalid")
    # The same bytes under the upper-case id are still refused (ids are one spelling only).
    assert_error(call(srv, "PUT", f"{p}/blobs/{sha(b'other').upper()}", content=b"other"), 400)
    assert call(srv, "POST", p + "/blobs/missing", json={"ids": [sha(b"other")]}).json() == {
        "missing": [sha(b"other")]
    }
    assert repo.current_head() == repo.head


# ----------------------------------------------------------------- uploads


def test_hash_mismatch_is_422_and_nothing_is_kept(
    srv: ServerProcess, repo: Repo, tmp_path: Path
) -> None:
    claimed = sha(b"what the client says it sends")
    for body in [b"something else entirely", b"", b"x" * 5_000_000]:
        response = call(srv, "PUT", f"{repo.path}/blobs/{claimed}", content=body)
        assert_error(response, 422, "integrity")
        missing = call(srv, "POST", repo.path + "/blobs/missing", json={"ids": [claimed]})
        assert missing.json() == {"missing": [claimed]}
        assert_error(call(srv, "GET", f"{repo.path}/blobs/{claimed}"), 404)
        stored = tmp_path / "store/data/objects/blob" / claimed[:2] / claimed[2:]
        assert not stored.exists()
        assert not (tmp_path / "store/data/objects/blockmap" / claimed[:2] / claimed[2:]).exists()
        assert not staged_files(tmp_path / "store")
    change = {"op": "put", "path": "x.bin", "blob": claimed}
    assert_error(repo.commit({"changes": [change]}), 400, "invalid")
    # The bytes that do match the id are then accepted.
    body = b"what the client says it sends"
    assert call(srv, "PUT", f"{repo.path}/blobs/{claimed}", content=body).status_code == 201
    assert call(srv, "GET", f"{repo.path}/blobs/{claimed}").content == body


def test_commit_with_a_blob_not_uploaded_here_is_400(srv: ServerProcess, repo: Repo) -> None:
    for oid in [ZERO_ID, sha(b"never sent")]:
        for op in ["put", "add"]:
            change = {"op": op, "path": "x.bin", "blob": oid}
            assert_error(repo.commit({"changes": [change]}), 400, "invalid")
    assert repo.current_head() == repo.head


def test_a_blob_of_repo_a_is_not_readable_through_repo_b(srv: ServerProcess) -> None:
    a = make_repo(srv, "alice", "a", blob=b"alice's secret bytes")
    b = make_repo(srv, "bob", "b")
    oid = a.blob_id
    assert call(srv, "GET", f"{a.path}/blobs/{oid}").content == a.blob
    assert_error(call(srv, "GET", f"{b.path}/blobs/{oid}"), 404)
    assert_error(call(srv, "HEAD", f"{b.path}/blobs/{oid}"), 404)
    assert_error(call(srv, "GET", f"{b.path}/blobs/{oid}", headers={"Range": "bytes=0-3"}), 404)
    assert_error(call(srv, "GET", f"{b.path}/blobs/{oid}", headers={"If-None-Match": "*"}), 404)
    assert_error(call(srv, "GET", f"{b.path}/blobs/{oid}/blocks"), 404)
    assert_error(call(srv, "GET", f"{b.path}/trees/{a.tree}"), 404)
    assert_error(call(srv, "GET", f"{b.path}/commits/{a.head}"), 404)
    assert_error(call(srv, "GET", b.path + "/resolve", params={"rev": a.head}), 404)
    assert_error(call(srv, "GET", b.path + "/resolve", params={"rev": a.head[:8]}), 404)
    missing = call(srv, "POST", b.path + "/blobs/missing", json={"ids": [oid, b.blob_id]})
    assert missing.json() == {"missing": [oid]}
    # Knowing the id is not enough to make it part of b ...
    assert_error(b.commit({"changes": [{"op": "put", "path": "stolen", "blob": oid}]}), 400)
    assert_error(b.commit({"changes": [], "parent": a.head}), 404)
    # ... and neither is an upload of other bytes under that id.
    assert_error(call(srv, "PUT", f"{b.path}/blobs/{oid}", content=b"guess"), 422)
    assert_error(call(srv, "GET", f"{b.path}/blobs/{oid}"), 404)
    assert b.current_head() == b.head
    # Sending the real bytes proves possession: then b holds it too.
    assert call(srv, "PUT", f"{b.path}/blobs/{oid}", content=a.blob).status_code == 201
    assert call(srv, "GET", f"{b.path}/blobs/{oid}").content == a.blob


# ----------------------------------------------------------------- sizes


def test_oversized_bodies_declared_by_content_length_are_413(
    srv: ServerProcess, repo: Repo
) -> None:
    """`streamfs serve` has no option for its limits: declare more than the defaults."""
    json_limit, blob_limit = 64 * 1024 * 1024, 64 * 1024**3
    oid = sha(b"big")
    for target in ["/v1/repos", f"/v1{repo.path}/commits", f"/v1{repo.path}/blobs/missing"]:
        headers = {"Content-Type": "application/json", "Content-Length": str(json_limit + 1)}
        assert_error(raw(srv, "POST", target, headers), 413, "too_large")
    for size in [blob_limit + 1, 10**18]:
        headers = {"Content-Length": str(size)}
        assert_error(raw(srv, "PUT", f"/v1{repo.path}/blobs/{oid}", headers), 413, "too_large")
    missing = call(srv, "POST", repo.path + "/blobs/missing", json={"ids": [oid]})
    assert missing.json() == {"missing": [oid]}


_LIMITED_SERVER = """
import sys
from streamfs.server import Limits, serve
root, fd, max_json, max_blob = sys.argv[1:]
limits = Limits(
    max_json_bytes=int(max_json), max_blob_bytes=int(max_blob), max_batch_bytes=int(max_blob)
)
serve(root, fd=int(fd), limits=limits)
"""


class LimitedServer(ServerProcess):
    """The real server with small limits, started through ``streamfs.server.serve``."""

    def __init__(self, root: Path, max_json: int, max_blob: int) -> None:
        super().__init__(root)
        self.limits = (max_json, max_blob)

    def start(self, port: int = 0) -> LimitedServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        args = [str(self.root), str(sock.fileno()), *map(str, self.limits)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LIMITED_SERVER, *args],
                pass_fds=[sock.fileno()],
                stdout=log,
                stderr=log,
            )
        return self


@pytest.fixture
def small(tmp_path: Path) -> Iterator[LimitedServer]:
    yield from served(LimitedServer(tmp_path / "store", max_json=1000, max_blob=1000), tmp_path)


def test_oversized_streamed_bodies_are_413_and_leave_nothing(
    small: LimitedServer, tmp_path: Path
) -> None:
    """Chunked bodies declare no length: the server must count while it reads."""
    assert call(small, "POST", "/repos", json={"owner": "alice", "name": "r"}).status_code == 201
    base = "/v1/repos/alice/r"
    te = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    padded = b'{"owner": "alice", "name": "r2"' + b" " * 2000 + b"}"
    assert_error(raw(small, "POST", "/v1/repos", te, chunked(padded)), 413, "too_large")
    assert_error(raw(small, "POST", base + "/blobs/missing", te, chunked(padded)), 413)
    prefix = b'{"owner": "alice", "name": "r3"'
    at_limit = prefix + b" " * (1000 - len(prefix) - 1) + b"}"
    assert len(at_limit) == 1000
    assert call(small, "POST", "/repos", content=at_limit).status_code == 201
    assert_error(call(small, "POST", "/repos", content=at_limit + b" "), 413, "too_large")

    big = os.urandom(1001)
    oid = sha(big)
    assert_error(raw(small, "PUT", f"{base}/blobs/{oid}", te, chunked(big)), 413, "too_large")
    assert_error(call(small, "PUT", f"/repos/alice/r/blobs/{oid}", content=big), 413)
    huge = os.urandom(300_000)
    assert_error(raw(small, "PUT", f"{base}/blobs/{sha(huge)}", te, chunked(huge, 65536)), 413)
    for blob_id in (oid, sha(huge)):
        assert not (tmp_path / "store/data/objects/blob" / blob_id[:2] / blob_id[2:]).exists()
        missing = call(small, "POST", "/repos/alice/r/blobs/missing", json={"ids": [blob_id]})
        assert missing.json() == {"missing": [blob_id]}
    assert not staged_files(tmp_path / "store")
    fits = big[:1000]
    response = raw(small, "PUT", f"{base}/blobs/{sha(fits)}", te, chunked(fits))
    assert response.status_code == 201, response.text
    assert call(small, "GET", f"/repos/alice/r/blobs/{sha(fits)}").content == fits


# ----------------------------------------------------------------- ranges


@pytest.fixture
def ranged(srv: ServerProcess) -> Repo:
    return make_repo(srv, "alice", "ranges", blob=bytes(range(100)))


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=10-10", 10, 11),
        ("bytes=90-", 90, 100),
        ("bytes=0-", 0, 100),
        ("bytes=95-1000", 95, 100),
        ("bytes=-5", 95, 100),
        ("bytes=-100", 0, 100),
        ("bytes=-1000", 0, 100),
        ("bytes=99-99", 99, 100),
    ],
)
def test_satisfiable_ranges_are_206(ranged: Repo, header: str, start: int, end: int) -> None:
    url = f"{ranged.path}/blobs/{ranged.blob_id}"
    response = call(ranged.srv, "GET", url, headers={"Range": header})
    assert response.status_code == 206, response.text
    assert response.content == ranged.blob[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/100"
    assert response.headers["content-length"] == str(end - start)
    head = call(ranged.srv, "HEAD", url, headers={"Range": header})
    assert head.status_code == 206
    assert head.headers["content-length"] == str(end - start)
    assert head.content == b""


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-6",
        "bytes=0-1, 5-6",
        "bytes=-5,0-1",
        "bytes=abc",
        "bytes=",
        "bytes=-",
        "bytes=1-2-3",
        "bytes=0x1-2",
        "bytes=+1-2",
        "bytes = 0-1",
        "items=0-1",
        "0-1",
        "",
        "bytes=5-3",
        "bytes=100-",
        "bytes=100-200",
        "bytes=1000-",
        "bytes=99999999999999999999999-",
        "bytes=" + "9" * 5000 + "-",
        "bytes=-" + "0" * 5000,
        "bytes=-0",
    ],
)
def test_unsatisfiable_or_malformed_ranges_are_416(ranged: Repo, header: str) -> None:
    url = f"{ranged.path}/blobs/{ranged.blob_id}"
    response = call(ranged.srv, "GET", url, headers={"Range": header})
    assert_error(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == "bytes */100"


def test_a_blob_the_client_has_is_304_and_one_the_repo_lacks_is_404(ranged: Repo) -> None:
    url = f"{ranged.path}/blobs/{ranged.blob_id}"
    etag = call(ranged.srv, "GET", url).headers["etag"]
    assert etag == f'"{ranged.blob_id}"'
    for method in ("GET", "HEAD"):
        response = call(ranged.srv, method, url, headers={"If-None-Match": etag, "Range": "x"})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    other = "0" * 64
    missing = call(
        ranged.srv, "GET", f"{ranged.path}/blobs/{other}", headers={"If-None-Match": "*"}
    )
    assert_error(missing, 404)


def test_whole_blob_and_range_on_an_empty_blob(srv: ServerProcess) -> None:
    empty = make_repo(srv, "alice", "empty", blob=b"")
    url = f"{empty.path}/blobs/{empty.blob_id}"
    whole = call(srv, "GET", url)
    assert whole.status_code == 200 and whole.content == b""
    for header in ["bytes=0-", "bytes=0-0", "bytes=-1"]:
        response = call(srv, "GET", url, headers={"Range": header})
        assert_error(response, 416, "range_not_satisfiable")
        assert response.headers["content-range"] == "bytes */0"


# ----------------------------------------------------------------- routes


@pytest.mark.parametrize("where", ["headers", "many empty headers", "target"])
def test_a_request_head_over_64_kib_is_400_and_the_server_carries_on(
    srv: ServerProcess, repo: Repo, where: str
) -> None:
    pad = "v" * 1000
    if where == "headers":
        response = raw(srv, "GET", f"/v1{repo.path}", {f"X-Pad-{i}": pad for i in range(70)})
    elif where == "many empty headers":
        response = raw(srv, "GET", f"/v1{repo.path}", {f"X{i}": "" for i in range(12_000)})
    else:
        response = raw(srv, "GET", f"/v1{repo.path}?pad={pad * 70}")
    assert response.status_code == 400
    assert call(srv, "GET", repo.path).status_code == 200
    just_under = raw(srv, "GET", f"/v1{repo.path}", {f"X-Pad-{i}": pad for i in range(60)})
    assert just_under.status_code == 200


def test_the_400_for_a_head_over_64_kib_reaches_a_client_that_is_still_sending(
    srv: ServerProcess, repo: Repo
) -> None:
    # Half a megabyte follows the oversized head in the same write: a server that closed with
    # those bytes unread would reset the connection before the client could read its answer.
    headers = {f"X-Pad-{i}": "v" * 1000 for i in range(70)}
    for _ in range(3):
        response = raw(srv, "GET", f"/v1{repo.path}", headers, body=b"\0" * (512 * 1024))
        assert response.status_code == 400
    assert call(srv, "GET", repo.path).status_code == 200


def test_a_client_that_goes_on_sending_after_the_400_is_cut_off(
    srv: ServerProcess, repo: Repo
) -> None:
    address = urlsplit(srv.url)
    assert address.hostname is not None and address.port is not None
    head = b"GET /v1%s HTTP/1.1\r\n%s\r\n" % (
        repo.path.encode(),
        b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)),
    )
    sent = 0
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while sent < 64 * 1024 * 1024:
                sent += sock.send(b"\0" * 65536)
    assert sent < 64 * 1024 * 1024  # the server read some of it, then hung up
    assert call(srv, "GET", repo.path).status_code == 200


def test_unknown_routes_are_404_json(srv: ServerProcess, repo: Repo) -> None:
    for target in [
        "/",
        "/v1",
        "/v2/repos",
        "/v1/repo",
        "/v1/repos/alice",
        f"/v1{repo.path}/nothing",
        f"/v1{repo.path}/blobs/{repo.blob_id}/extra",
        f"/v1{repo.path}/commits/{repo.head}/tree",
        f"/v1{repo.path}/blobs",
        "/v1/repos//x",
        "//v1/repos",
    ]:
        assert_error(raw(srv, "GET", target), 404, "not_found")


def test_wrong_methods_are_405_json_with_allow(srv: ServerProcess, repo: Repo) -> None:
    cases = [
        ("DELETE", "/v1/repos", "GET, HEAD, POST"),
        ("PUT", "/v1/repos", "GET, HEAD, POST"),
        ("DELETE", f"/v1{repo.path}", "GET, HEAD"),
        ("POST", f"/v1{repo.path}", "GET, HEAD"),
        ("GET", f"/v1{repo.path}/commits", "POST"),
        ("PUT", f"/v1{repo.path}/commits/{repo.head}", "GET, HEAD"),
        ("GET", f"/v1{repo.path}/branches", "POST"),
        ("GET", f"/v1{repo.path}/tags", "POST"),
        ("POST", f"/v1{repo.path}/blobs/{repo.blob_id}", "GET, HEAD, PUT"),
        ("DELETE", f"/v1{repo.path}/blobs/{repo.blob_id}", "GET, HEAD, PUT"),
        ("PATCH", f"/v1{repo.path}/trees/{repo.tree}", "GET, HEAD"),
    ]
    for method, target, allow in cases:
        response = raw(srv, method, target, {"Content-Length": "0"})
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allow, (method, target)
    assert call(srv, "GET", f"{repo.path}/blobs/{repo.blob_id}").content == repo.blob


# ----------------------------------------------------------------- traversal


def test_path_traversal_writes_nothing_outside_the_store(
    srv: ServerProcess, repo: Repo, tmp_path: Path
) -> None:
    """Encoded ``../`` in every place a name or id reaches a storage key."""
    escapes = [
        "..",
        "%2E%2E",
        f"..%2F{CANARY}",
        f"..%2F..%2F{CANARY}",
        f"%2E%2E%2F%2E%2E%2F%2E%2E%2F{CANARY}",
        f"..%5C..%5C{CANARY}",
        f"%252E%252E%252F{CANARY}",
        f"....%2F%2F{CANARY}",
        f"%2F{CANARY}",
        f"%2Ftmp%2F{CANARY}",
    ]
    data = f"{CANARY} bytes".encode()
    oid = sha(data)
    length = {"Content-Length": str(len(data))}
    for esc in escapes:
        for target in [
            f"/v1/repos/{esc}/x/blobs/{oid}",
            f"/v1/repos/alice/{esc}/blobs/{oid}",
            f"/v1/repos/{esc}/{esc}/blobs/{oid}",
            f"/v1{repo.path}/blobs/{esc}",
            f"/v1{repo.path}/blobs/{esc}{oid}",
            f"/v1{repo.path}/blobs/{oid}{esc}",
        ]:
            response = raw(srv, "PUT", target, length, data)
            assert 400 <= response.status_code < 500, (target, response.status_code)
            assert_error(response, response.status_code)
            response = raw(srv, "GET", target.replace("/blobs/", "/trees/"))
            assert 400 <= response.status_code < 500, (target, response.status_code)
        for target in [
            f"/v1/repos/{esc}/x",
            f"/v1{repo.path}/resolve?rev={esc}",
            f"/v1{repo.path}/log?rev={esc}",
        ]:
            response = raw(srv, "GET", target)
            assert 400 <= response.status_code < 500, (target, response.status_code)
        body = json.dumps({"owner": esc, "name": CANARY}).encode()
        headers = {"Content-Length": str(len(body)), "Content-Type": "application/json"}
        assert_error(raw(srv, "POST", "/v1/repos", headers, body), 400)
    for name in [f"../{CANARY}", f"../../{CANARY}", f"..%2F{CANARY}", f"a/../../{CANARY}"]:
        for route in ["/branches", "/tags"]:
            assert_error(call(srv, "POST", repo.path + route, json={"name": name}), 400)
        assert_error(call(srv, "POST", "/repos", json={"owner": "alice", "name": name}), 400)
        if "%" not in name:  # in a repo, '..%2Fx' is one file name like any other
            change = {"op": "put", "path": name, "blob": repo.blob_id}
            assert_error(repo.commit({"changes": [change]}), 400)
    # Nothing was stored under the canary's id, in this store or anywhere near it.
    missing = call(srv, "POST", repo.path + "/blobs/missing", json={"ids": [oid]})
    assert missing.json() == {"missing": [oid]}
    near = [tmp_path.parent, tmp_path, *tmp_path.iterdir()]
    for folder in near:
        if folder.is_dir():
            assert not [p for p in folder.iterdir() if CANARY in p.name], folder
    found = [p for p in (tmp_path / "store").rglob("*") if CANARY in p.name]
    assert not found
    assert [r["name"] for r in call(srv, "GET", "/repos").json()["repos"]] == [repo.name]


def test_a_batch_over_its_byte_limit_is_413(small: LimitedServer) -> None:
    """The small server's batches hold at most 1,000 bytes (its blob limit)."""
    assert call(small, "POST", "/repos", json={"owner": "alice", "name": "r"}).status_code == 201
    blobs = [os.urandom(600), os.urandom(400)]
    ids = [sha(b) for b in blobs]
    for blob, oid in zip(blobs, ids, strict=True):
        assert call(small, "PUT", f"/repos/alice/r/blobs/{oid}", content=blob).status_code == 201
    ok = call(small, "POST", "/repos/alice/r/blobs/batch", json={"ids": ids})
    assert ok.status_code == 200 and ok.content == b"".join(blobs)
    over = call(small, "POST", "/repos/alice/r/blobs/batch", json={"ids": [ids[0], ids[0]]})
    assert_error(over, 413, "too_large")
