"""Access control against a real `streamfs serve` with a token file, and the open server's bind.

Tokens (see ``streamfs/server/_auth.py``):

- alice writes ``alice/*`` and reads everything,
- reader only reads ``alice/*``,
- bob writes ``bob/*`` and reads nothing else.

Anonymous requests may read public repos and nothing more: 401 for private
repos and for every write. A known token without the right scope gets 403.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import ServerProcess

ALICE = "alice-writes-alice"
READER = "reader-reads-alice"
BOB = "bob-writes-bob-only"

TOKENS = f"""
[[tokens]]
token = "{ALICE}"
user = "alice"
write = ["alice/*"]
read = ["*"]

[[tokens]]
token = "{READER}"
user = "reader"
read = ["alice/*"]

[[tokens]]
token = "{BOB}"
user = "bob"
write = ["bob/*"]
"""


def call(
    srv: ServerProcess, method: str, path: str, token: str | None = None, **kwargs: object
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = srv.url + "/v1" + path
    return httpx.request(method, url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def call_with_authorization(
    srv: ServerProcess, method: str, path: str, authorization: bytes, **kwargs: object
) -> httpx.Response:
    """A request with exactly this Authorization header (httpx refuses some of these bytes)."""
    body = kwargs.get("content")
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
    assert body is None or isinstance(body, bytes)
    address = urlsplit(srv.url)
    conn = http.client.HTTPConnection(address.netloc, timeout=30)
    try:
        conn.putrequest(method, "/v1" + path)
        conn.putheader("Authorization", authorization)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        reply = conn.getresponse()
        content = reply.read()
        request = httpx.Request(method, srv.url + "/v1" + path)
        return httpx.Response(
            reply.status, headers=reply.getheaders(), content=content, request=request
        )
    finally:
        conn.close()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (status, response.status_code, response.text)
    if response.request.method == "HEAD":
        return
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Fixture:
    srv: ServerProcess
    blob: bytes
    blob_id: str
    heads: dict[str, str]  # repo -> head commit
    trees: dict[str, str]  # repo -> root tree


def _make_repo(srv: ServerProcess, token: str, repo: str, private: bool, blob: bytes) -> str:
    owner, name = repo.split("/")
    body = {"owner": owner, "name": name, "private": private}
    response = call(srv, "POST", "/repos", token, json=body)
    assert response.status_code == 201, response.text
    oid = sha(blob)
    response = call(srv, "PUT", f"/repos/{repo}/blobs/{oid}", token, content=blob)
    assert response.status_code == 201, response.text
    change = {"op": "put", "path": "f.bin", "blob": oid}
    body2 = {"branch": "main", "changes": [change]}
    response = call(srv, "POST", f"/repos/{repo}/commits", token, json=body2)
    assert response.status_code == 201, response.text
    return str(response.json()["commit"])


@pytest.fixture
def auth(tmp_path: Path) -> Iterator[Fixture]:
    token_file = tmp_path / "tokens.toml"
    token_file.write_text(TOKENS)
    srv = ServerProcess(tmp_path / "store", token_file=token_file).start()
    try:
        blob = b"the same bytes in every repo\n"
        heads = {
            "alice/pub": _make_repo(srv, ALICE, "alice/pub", False, blob),
            "alice/priv": _make_repo(srv, ALICE, "alice/priv", True, blob),
            "bob/pub": _make_repo(srv, BOB, "bob/pub", False, blob),
            "bob/secret": _make_repo(srv, BOB, "bob/secret", True, blob),
        }
        trees = {
            repo: call(srv, "GET", f"/repos/{repo}/commits/{head}", ALICE).json()["tree"]
            for repo, head in heads.items()
        }
        yield Fixture(srv, blob, sha(blob), heads, trees)
    finally:
        srv.stop()
    log = srv.log_text()
    assert "Traceback" not in log, log
    assert "internal error" not in log, log


def read_requests(f: Fixture, repo: str) -> list[tuple[str, str]]:
    """Every read of the API on one repo, as (method, path)."""
    head, tree, blob = f.heads[repo], f.trees[repo], f.blob_id
    p = f"/repos/{repo}"
    return [
        ("GET", p),
        ("GET", p + "/refs"),
        ("GET", p + "/resolve?rev=main"),
        ("GET", p + "/log"),
        ("GET", p + f"/diff?from={head}&to=main"),
        ("GET", p + f"/commits/{head}"),
        ("GET", p + f"/trees/{tree}"),
        ("GET", p + f"/blobs/{blob}"),
        ("HEAD", p + f"/blobs/{blob}"),
        ("GET", p + f"/blobs/{blob}/blocks"),
    ]


def write_requests(f: Fixture, repo: str) -> list[tuple[str, str, dict[str, object]]]:
    """Every write of the API on one repo, as (method, path, request arguments)."""
    owner, name = repo.split("/")
    other = b"new bytes for " + repo.encode()
    change = {"op": "put", "path": "g.bin", "blob": f.blob_id}
    p = f"/repos/{repo}"
    return [
        ("POST", "/repos", {"json": {"owner": owner, "name": name + "-2"}}),
        ("PUT", p + f"/blobs/{sha(other)}", {"content": other}),
        ("PUT", p + f"/blobs/{f.blob_id}", {"content": f.blob}),
        ("POST", p + "/blobs/missing", {"json": {"ids": [f.blob_id]}}),
        ("POST", p + "/commits", {"json": {"branch": "main", "changes": [change]}}),
        ("POST", p + "/branches", {"json": {"name": "feature"}}),
        ("POST", p + "/tags", {"json": {"name": "v1"}}),
    ]


def assert_unchanged(f: Fixture) -> None:
    """No write got through: heads, refs, repos and stored blobs are as the fixture made them."""
    for repo, head in f.heads.items():
        refs = call(f.srv, "GET", f"/repos/{repo}/refs", ALICE).json()
        assert refs == {"branches": {"main": head}, "tags": {}}, repo
    repos = call(f.srv, "GET", "/repos", ALICE).json()["repos"]
    assert sorted(f"{r['owner']}/{r['name']}" for r in repos) == sorted(f.heads)
    root = f.srv.root / "data" / "objects" / "blob"
    assert sorted(p.parent.name + p.name for p in root.rglob("*") if p.is_file()) == [f.blob_id]


# ----------------------------------------------------------------- anonymous


def test_anonymous_reads_public_repos(auth: Fixture) -> None:
    for repo in ("alice/pub", "bob/pub"):
        for method, path in read_requests(auth, repo):
            response = call(auth.srv, method, path)
            assert response.status_code == 200, (method, path, response.text)
        blob = call(auth.srv, "GET", f"/repos/{repo}/blobs/{auth.blob_id}")
        assert blob.content == auth.blob
        assert blob.headers["cache-control"].startswith("public")
    listed = call(auth.srv, "GET", "/repos").json()["repos"]
    assert sorted(f"{r['owner']}/{r['name']}" for r in listed) == ["alice/pub", "bob/pub"]


def test_anonymous_cannot_read_private_repos(auth: Fixture) -> None:
    for repo in ("alice/priv", "bob/secret"):
        for method, path in read_requests(auth, repo):
            assert_error(call(auth.srv, method, path), 401, "unauthorized")


def test_a_private_repo_does_not_tell_whether_it_holds_a_blob(auth: Fixture) -> None:
    missing = sha(b"never uploaded")
    for oid in (auth.blob_id, missing):
        for method in ("GET", "HEAD"):
            path = f"/repos/alice/priv/blobs/{oid}"
            assert_error(call(auth.srv, method, path), 401, "unauthorized")
            assert_error(call(auth.srv, method, path, BOB), 403, "forbidden")
    response = call(auth.srv, "GET", f"/repos/alice/priv/blobs/{missing}", READER)
    assert_error(response, 404, "not_found")


def test_anonymous_cannot_write(auth: Fixture) -> None:
    for repo in auth.heads:
        for method, path, kwargs in write_requests(auth, repo):
            assert_error(call(auth.srv, method, path, None, **kwargs), 401, "unauthorized")
    assert_unchanged(auth)


# ----------------------------------------------------------------- read scope


def test_read_token_reads_private_repos_in_scope_but_cannot_write(auth: Fixture) -> None:
    for method, path in read_requests(auth, "alice/priv"):
        response = call(auth.srv, method, path, READER)
        assert response.status_code == 200, (method, path, response.text)
    blob = call(auth.srv, "GET", f"/repos/alice/priv/blobs/{auth.blob_id}", READER)
    assert blob.content == auth.blob
    assert blob.headers["cache-control"].startswith("private")
    for repo in ("alice/pub", "alice/priv", "bob/pub"):
        for method, path, kwargs in write_requests(auth, repo):
            assert_error(call(auth.srv, method, path, READER, **kwargs), 403, "forbidden")
    assert_unchanged(auth)


def test_read_token_does_not_read_private_repos_out_of_scope(auth: Fixture) -> None:
    for method, path in read_requests(auth, "bob/secret"):
        assert_error(call(auth.srv, method, path, READER), 403)
    for method, path in read_requests(auth, "bob/pub"):  # public: readable by anyone
        assert call(auth.srv, method, path, READER).status_code == 200
    listed = call(auth.srv, "GET", "/repos", READER).json()["repos"]
    assert sorted(f"{r['owner']}/{r['name']}" for r in listed) == [
        "alice/priv",
        "alice/pub",
        "bob/pub",
    ]


# ----------------------------------------------------------------- write scope


def test_write_token_writes_inside_its_pattern(auth: Fixture) -> None:
    srv = auth.srv
    response = call(srv, "POST", "/repos", ALICE, json={"owner": "alice", "name": "new"})
    assert response.status_code == 201, response.text
    data = b"alice's new data"
    response = call(srv, "PUT", f"/repos/alice/new/blobs/{sha(data)}", ALICE, content=data)
    assert response.status_code == 201, response.text
    change = {"op": "put", "path": "x.bin", "blob": sha(data)}
    body = {"branch": "main", "changes": [change], "message": "m"}
    response = call(srv, "POST", "/repos/alice/new/commits", ALICE, json=body)
    assert response.status_code == 201, response.text
    assert (
        call(srv, "GET", f"/repos/alice/new/commits/{response.json()['commit']}").json()["author"]
        == "alice"
    )
    assert call(srv, "POST", "/repos/alice/new/tags", ALICE, json={"name": "v1"}).status_code == 201
    response = call(srv, "POST", "/repos/alice/priv/branches", ALICE, json={"name": "dev"})
    assert response.status_code == 201, response.text
    # bob's token writes bob's repos, private ones included
    response = call(srv, "POST", "/repos/bob/secret/tags", BOB, json={"name": "v1"})
    assert response.status_code == 201, response.text


def test_write_token_cannot_write_outside_its_pattern(auth: Fixture) -> None:
    for token, repos in ((ALICE, ("bob/pub", "bob/secret")), (BOB, ("alice/pub", "alice/priv"))):
        for repo in repos:
            for method, path, kwargs in write_requests(auth, repo):
                assert_error(call(auth.srv, method, path, token, **kwargs), 403, "forbidden")
    for owner in ("bob", "carol", "alicex", "alic"):
        body = {"owner": owner, "name": "x"}
        assert_error(call(auth.srv, "POST", "/repos", ALICE, json=body), 403, "forbidden")
    assert_unchanged(auth)


def test_write_token_reads_only_what_its_scopes_allow(auth: Fixture) -> None:
    # alice reads "*": bob's private repo too; bob has no read scope beyond bob/*.
    assert call(auth.srv, "GET", "/repos/bob/secret/refs", ALICE).status_code == 200
    assert_error(call(auth.srv, "GET", "/repos/alice/priv/refs", BOB), 403, "forbidden")
    blob = f"/repos/alice/priv/blobs/{auth.blob_id}"
    assert_error(call(auth.srv, "GET", blob, BOB), 403, "forbidden")
    # bob holds the same bytes in his own repo: that does not open alice's copy.
    assert call(auth.srv, "GET", f"/repos/bob/secret/blobs/{auth.blob_id}", BOB).status_code == 200


# ----------------------------------------------------------------- bad credentials


BAD_AUTHORIZATION = [
    b"Bearer not-a-known-token",
    f"Bearer {ALICE}x".encode(),
    f"Bearer {ALICE[:-1]}".encode(),
    f"Bearer {ALICE[:8]}".encode(),
    f"Bearer {ALICE.upper()}".encode(),
    f"Bearer {READER}{ALICE}".encode(),
    f"Basic {ALICE}".encode(),
    f"Token {ALICE}".encode(),
    ALICE.encode(),
    b"Bearer",
    b"Bearer ",
    b"Bearer   ",
    f"Bearer{ALICE}".encode(),
    f"Bearer {ALICE} {ALICE}".encode(),
    f"Bearer {ALICE},Bearer {ALICE}".encode(),
    b"Bearer \xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9",
]


@pytest.mark.parametrize("header", BAD_AUTHORIZATION)
def test_bad_authorization_headers_are_rejected(auth: Fixture, header: bytes) -> None:
    srv = auth.srv
    requests: list[tuple[str, str, dict[str, object]]]
    requests = [(m, p, {}) for m, p in read_requests(auth, "alice/pub")]
    requests += [(m, p, {}) for m, p in read_requests(auth, "alice/priv")]
    requests += [("GET", "/repos", {}), *write_requests(auth, "alice/pub")]
    for method, path, kwargs in requests:
        response = call_with_authorization(srv, method, path, header, **kwargs)
        assert response.status_code in (401, 403), (header, method, path, response.status_code)
        assert_error(response, response.status_code)
    assert_unchanged(auth)


def test_bearer_scheme_is_case_insensitive_and_the_token_exact(auth: Fixture) -> None:
    for scheme in (b"bearer", b"BEARER", b"Bearer", b"bEaReR"):
        header = scheme + b" " + READER.encode()
        reply = call_with_authorization(auth.srv, "GET", "/repos/alice/priv", header)
        assert reply.status_code == 200, (scheme, reply.text)
    for token in (ALICE, READER, BOB):  # the same header works for each known token
        reply = call_with_authorization(auth.srv, "GET", "/repos", f"Bearer {token}".encode())
        assert reply.status_code == 200


# ----------------------------------------------------------------- the open server's bind


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening_ipv4(port: int) -> set[str] | None:
    """Addresses with a listening IPv4 TCP socket on ``port`` (None without /proc/net/tcp)."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    found = set()
    for row in table:
        local, state = row.split()[1], row.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


class LineReader:
    """The lines of a pipe, read by a thread, waited for with a deadline."""

    def __init__(self, pipe: object) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self.thread.start()

    def _pump(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {needle!r} in time; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"output ended before {needle!r}; saw {self.seen}")
            self.seen.append(line)
            if needle in line:
                return line


def test_open_server_asked_for_all_interfaces_binds_loopback_only(tmp_path: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "streamfs", "serve", "--root", str(tmp_path / "store")]
    cmd += ["--host", "0.0.0.0", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        stderr = LineReader(proc.stderr)
        warning = stderr.wait_for("no --token-file")
        assert "binding to 127.0.0.1 instead of 0.0.0.0" in warning
        assert f"http://127.0.0.1:{port}" in stderr.wait_for("serving")
        assert f"http://127.0.0.1:{port}" in stderr.wait_for("listening on")  # bound
        response = httpx.get(f"http://127.0.0.1:{port}/v1/repos", timeout=10)
        assert response.status_code == 200 and response.json() == {"repos": []}
        # The kernel's socket table says where it listens (no traffic to any other address).
        assert _listening_ipv4(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
