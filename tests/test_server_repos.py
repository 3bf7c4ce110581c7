"""The server and the upload/inspect CLI end to end: a real `streamfs serve` on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
from pathlib import Path

import blake3
import httpx
import pytest

from streamfs._model import BLOCK_SIZE, decode_commit, decode_tree, object_id

from .conftest import ServerProcess, run_cli


def make_dataset(root: Path, files: int, dirs: int = 10, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    content = {}
    for i in range(files):
        rel = f"d{i % dirs:02d}/f{i:05d}.bin"
        data = rng.randbytes(rng.randint(0, 3000))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        content[rel] = data
    return content


def api(server: ServerProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, server.url + "/v1" + path, timeout=60, **kwargs)  # type: ignore[arg-type]


def put_blob(server: ServerProcess, repo: str, data: bytes) -> str:
    oid = hashlib.sha256(data).hexdigest()
    response = api(server, "PUT", f"/repos/{repo}/blobs/{oid}", content=data)
    assert response.status_code in (200, 201), response.text
    return oid


def head(server: ServerProcess, repo: str, branch: str = "main") -> str:
    return str(
        api(server, "GET", f"/repos/{repo}/resolve", params={"rev": branch}).json()["commit"]
    )


def files_at(server: ServerProcess, repo: str, rev: str) -> dict[str, str]:
    """path -> blob id of every file at a revision, read through the API."""
    commit = api(server, "GET", f"/repos/{repo}/commits/{head(server, repo, rev)}").json()
    result: dict[str, str] = {}

    def walk(tree_id: str, prefix: str) -> None:
        body = api(server, "GET", f"/repos/{repo}/trees/{tree_id}").content
        assert object_id(body) == tree_id
        for entry in decode_tree(body).entries:
            if entry.is_dir:
                walk(entry.id, prefix + entry.name + "/")
            else:
                result[prefix + entry.name] = entry.id

    walk(commit["tree"], "")
    return result


def test_upload_1000_files_then_ls_log_diff(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo = f"alice/{repo_name}"
    data = make_dataset(tmp_path / "data", 1000)
    run_cli(server, "repo", "create", repo)
    out = run_cli(
        server, "upload", f"{repo}@main", str(tmp_path / "data"), "-m", "first import"
    ).stdout
    first = out.strip().splitlines()[-1]
    assert "1000 of 1000 files changed" in out
    assert head(server, repo) == first

    stored = files_at(server, repo, "main")
    assert stored == {p: hashlib.sha256(b).hexdigest() for p, b in data.items()}

    listing = run_cli(server, "ls", f"{repo}@main", "-r").stdout.splitlines()
    assert sum(1 for line in listing if line.startswith("-")) == 1000
    assert sum(1 for line in listing if line.startswith("d")) == 10
    sub = run_cli(server, "ls", f"{repo}@{first[:10]}:d03").stdout.splitlines()
    assert len(sub) == 100 and all(line.split()[-1].startswith("d03/") for line in sub)

    (tmp_path / "data" / "d00" / "f00000.bin").write_bytes(b"changed")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "new.txt").write_bytes(b"new file")
    run_cli(
        server,
        "upload",
        f"{repo}@main",
        str(tmp_path / "data" / "d00" / "f00000.bin"),
        "--to",
        "d00",
        "-m",
        "fix",
    )
    run_cli(server, "upload", f"{repo}@main", str(tmp_path / "more"), "-m", "add")

    log = run_cli(server, "log", repo, "--oneline").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in log] == [
        "add",
        "fix",
        "first import",
        "create repository",
    ]
    full_log = run_cli(server, "log", repo, "-n", "1").stdout
    assert f"commit {head(server, repo)}" in full_log

    diff = run_cli(server, "diff", f"{repo}@{first}", "main").stdout
    assert "A  new.txt" in diff and "M  d00/f00000.bin" in diff
    assert diff.strip().splitlines()[-1] == "1 added, 0 removed, 1 modified"

    run_cli(server, "tag", f"{repo}@{first}", "v1")
    assert run_cli(server, "resolve", f"{repo}@v1").stdout.strip() == first
    again = run_cli(server, "tag", f"{repo}@main", "v1", check=False)
    assert (
        again.returncode == 1
        and "already exists" in again.stderr
        and "Traceback" not in again.stderr
    )


def test_reupload_sends_no_blob_bytes(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo = f"alice/{repo_name}"
    make_dataset(tmp_path / "data", 200, seed=1)
    run_cli(server, "repo", "create", repo)
    run_cli(server, "upload", repo, str(tmp_path / "data"), "-m", "one")
    before = server.metrics()
    commit = head(server, repo)

    out = run_cli(server, "upload", repo, str(tmp_path / "data"), "-m", "two").stdout
    after = server.metrics()

    assert "nothing changed" in out
    assert after.get("blob_bytes_received", 0) == before.get("blob_bytes_received", 0)
    assert after.get("blob_put_requests", 0) == before.get("blob_put_requests", 0)
    assert head(server, repo) == commit


def test_an_upload_goes_to_the_default_branch_and_never_to_a_tag(
    server: ServerProcess, repo_name: str, tmp_path: Path
) -> None:
    repo = f"alice/{repo_name}"
    body = {"owner": "alice", "name": repo_name, "default_branch": "dev"}
    assert api(server, "POST", "/repos", json=body).status_code == 201
    make_dataset(tmp_path / "data", 20, seed=2)
    run_cli(server, "upload", repo, str(tmp_path / "data"), "-m", "one")  # no branch named
    commit = head(server, repo, "dev")
    assert api(server, "GET", f"/repos/{repo}").json()["default_branch"] == "dev"
    assert "main" not in api(server, "GET", f"/repos/{repo}/refs").json()["branches"]
    out = run_cli(server, "upload", repo, str(tmp_path / "data"), "-m", "again").stdout
    assert f"already at {repo}@dev {commit}" in out

    run_cli(server, "tag", f"{repo}@dev", "v1")
    make_dataset(tmp_path / "more", 20, seed=3)
    before = server.metrics()
    for rev in ("v1", commit):
        refused = run_cli(
            server, "upload", f"{repo}@{rev}", str(tmp_path / "more"), "-m", "x", check=False
        )
        assert refused.returncode == 1
        assert f"{repo}@{rev} is not a branch" in refused.stderr
    after = server.metrics()
    assert after.get("blob_put_requests", 0) == before.get("blob_put_requests", 0)  # nothing sent
    assert head(server, repo, "dev") == commit


def test_eight_writers_on_one_branch_lose_nothing(server: ServerProcess, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    assert (
        api(server, "POST", "/repos", json={"owner": "alice", "name": repo_name}).status_code == 201
    )
    base = head(server, repo)
    expected: dict[str, str] = {}
    failures: list[str] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        changes = []
        for i in range(5):
            oid = put_blob(server, repo, f"writer {n} file {i}".encode())
            path = f"w{n}/f{i}.txt"
            changes.append({"op": "add", "path": path, "blob": oid})
            expected[path] = oid
        start.wait()
        response = api(
            server,
            "POST",
            f"/repos/{repo}/commits",
            json={"branch": "main", "parent": base, "changes": changes, "message": f"writer {n}"},
        )
        if response.status_code != 201:
            failures.append(response.text)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    assert files_at(server, repo, "main") == expected
    log = api(server, "GET", f"/repos/{repo}/log", params={"limit": 100}).json()["commits"]
    assert sorted(c["message"] for c in log[:8]) == [f"writer {n}" for n in range(8)]
    assert len(log) == 9


def test_same_path_race_gets_409_naming_the_path(server: ServerProcess, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    api(server, "POST", "/repos", json={"owner": "alice", "name": repo_name})
    base = head(server, repo)
    first, second = put_blob(server, repo, b"first"), put_blob(server, repo, b"second")
    other = put_blob(server, repo, b"other")

    def commit(changes: list[dict[str, str]]) -> httpx.Response:
        body = {"branch": "main", "parent": base, "changes": changes, "message": "m"}
        return api(server, "POST", f"/repos/{repo}/commits", json=body)

    won = commit([{"op": "put", "path": "labels/train.csv", "blob": first}])
    lost = commit(
        [
            {"op": "put", "path": "labels/train.csv", "blob": second},
            {"op": "put", "path": "other.txt", "blob": other},
        ]
    )
    as_dir = commit([{"op": "put", "path": "labels/train.csv/x", "blob": other}])

    assert won.status_code == 201
    assert lost.status_code == 409 and lost.json()["error"]["code"] == "conflict"
    assert "labels/train.csv" in lost.json()["error"]["message"]
    assert as_dir.status_code == 409
    assert files_at(server, repo, "main") == {"labels/train.csv": first}


def test_rebase_of_disjoint_paths_keeps_both(server: ServerProcess, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    api(server, "POST", "/repos", json={"owner": "alice", "name": repo_name})
    base = head(server, repo)
    a, b = put_blob(server, repo, b"a"), put_blob(server, repo, b"b")
    body = {"branch": "main", "parent": base, "message": "m"}
    r1 = api(
        server,
        "POST",
        f"/repos/{repo}/commits",
        json={**body, "changes": [{"op": "put", "path": "x/a", "blob": a}]},
    )
    r2 = api(
        server,
        "POST",
        f"/repos/{repo}/commits",
        json={**body, "changes": [{"op": "put", "path": "x/b", "blob": b}]},
    )
    assert (r1.json()["rebased"], r2.json()["rebased"]) == (False, True)
    assert r2.json()["parent"] == r1.json()["commit"]
    assert files_at(server, repo, "main") == {"x/a": a, "x/b": b}


def _verify_store(root: Path) -> int:
    """Every object under the store matches its key; returns how many were checked."""
    checked = 0
    objects = root / "data" / "objects"
    for kind in ("blob", "tree", "commit"):
        for path in (objects / kind).glob("*/*") if (objects / kind).exists() else []:
            oid = path.parent.name + path.name
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == oid, f"corrupt {kind} {oid}"
            if kind == "tree":
                decode_tree(data)
            elif kind == "commit":
                decode_commit(data)
            checked += 1
    return checked


def test_server_killed_mid_upload_leaves_a_readable_store(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "store").start()
    try:
        api(server, "POST", "/repos", json={"owner": "alice", "name": "crash"})
        small = put_blob(server, "alice/crash", b"committed before the crash")
        api(
            server,
            "POST",
            "/repos/alice/crash/commits",
            json={
                "branch": "main",
                "changes": [{"op": "put", "path": "kept.txt", "blob": small}],
                "message": "m",
            },
        )
        before = head(server, "alice/crash")

        big = os.urandom(16 * 1024 * 1024)
        oid = hashlib.sha256(big).hexdigest()
        conn = socket.create_connection(("127.0.0.1", server.port))
        conn.sendall(
            f"PUT /v1/repos/alice/crash/blobs/{oid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(big)}\r\n\r\n".encode()
            + big[: len(big) // 2]
        )
        staging = tmp_path / "store" / "tmp"
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in staging.glob("*/upload-*")):
            assert time.monotonic() < deadline, "the server never started receiving the upload"
            time.sleep(0.01)  # polling another process's disk: there is no event to wait on
        server.kill()
        conn.close()

        server.start()
        assert head(server, "alice/crash") == before
        missing = api(
            server, "POST", "/repos/alice/crash/blobs/missing", json={"ids": [oid, small]}
        ).json()
        assert missing["missing"] == [oid]
        assert (
            api(server, "GET", f"/repos/alice/crash/blobs/{small}").content
            == b"committed before the crash"
        )
        assert list(staging.glob("**/upload-*")) == []  # the dead server's partial upload is gone
        assert _verify_store(tmp_path / "store") >= 3
        put_blob(server, "alice/crash", big)
        assert (
            api(
                server, "GET", f"/repos/alice/crash/blobs/{oid}", headers={"Range": "bytes=-5"}
            ).content
            == big[-5:]
        )
    finally:
        server.stop()


def test_server_killed_during_commits_keeps_refs_consistent(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "store").start()
    try:
        api(server, "POST", "/repos", json={"owner": "alice", "name": "crash"})
        done = threading.Event()
        committed: list[str] = []

        def committer(n: int) -> None:
            i = 0
            while not done.is_set():
                try:
                    oid = put_blob(server, "alice/crash", f"{n}-{i}".encode())
                    r = api(
                        server,
                        "POST",
                        "/repos/alice/crash/commits",
                        json={
                            "branch": "main",
                            "changes": [{"op": "put", "path": f"{n}/{i}", "blob": oid}],
                            "message": "m",
                        },
                    )
                    if r.status_code == 201:
                        committed.append(f"{n}/{i}")
                except (httpx.HTTPError, AssertionError):
                    return
                i += 1

        threads = [threading.Thread(target=committer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        while len(committed) < 20:
            assert all(t.is_alive() for t in threads)
            time.sleep(0.005)  # waiting for progress made by another process
        server.kill()
        done.set()
        for t in threads:
            t.join()

        server.start()
        present = files_at(server, "alice/crash", "main")
        assert set(committed) <= set(present)  # every acknowledged commit survived
        assert _verify_store(tmp_path / "store") > 20
        log = api(server, "GET", "/repos/alice/crash/log", params={"limit": 10000}).json()[
            "commits"
        ]
        assert log[-1]["message"] == "create repository"
        assert (
            json.loads(api(server, "GET", "/repos/alice/crash/refs").text)["branches"]["main"]
            == log[0]["id"]
        )
    finally:
        server.stop()


@pytest.mark.parametrize("rev_kind", ["branch", "tag", "full", "prefix"])
def test_resolve_revision_kinds(server: ServerProcess, repo_name: str, rev_kind: str) -> None:
    repo = f"alice/{repo_name}"
    api(server, "POST", "/repos", json={"owner": "alice", "name": repo_name})
    commit = head(server, repo)
    api(server, "POST", f"/repos/{repo}/tags", json={"name": "v1", "rev": "main"})
    rev = {"branch": "main", "tag": "v1", "full": commit, "prefix": commit[:8]}[rev_kind]
    assert run_cli(server, "resolve", f"{repo}@{rev}").stdout.strip() == commit
    answer = api(server, "GET", f"/repos/{repo}/resolve", params={"rev": rev}).json()
    assert answer["commit"] == commit
    assert object_id(answer["object"].encode()) == commit  # the commit itself, checkable
    assert decode_commit(answer["object"].encode()).parents == ()


def test_batch_sends_whole_blobs_in_the_order_asked(server: ServerProcess, repo_name: str) -> None:
    repo = f"alice/{repo_name}"
    assert api(server, "POST", "/repos", json={"owner": "alice", "name": repo_name}).is_success
    rng = random.Random(7)
    # empty, small, and larger than the server's 1 MiB read size, so pieces are joined and split
    blobs = [b"", *(rng.randbytes(rng.randint(1, 200_000)) for _ in range(20)), os.urandom(3 << 20)]
    ids = [put_blob(server, repo, b) for b in blobs]
    order = [*ids[::-1], ids[3], ids[3]]  # any order, duplicates allowed
    before = api(server, "GET", "/metrics").json()
    response = api(server, "POST", f"/repos/{repo}/blobs/batch", json={"ids": order})
    assert response.status_code == 200, response.text
    by_id = dict(zip(ids, blobs, strict=True))
    expected = b"".join(by_id[oid] for oid in order)
    assert int(response.headers["content-length"]) == len(expected)
    assert response.content == expected
    after = api(server, "GET", "/metrics").json()
    assert after["blob_batch_requests"] - before["blob_batch_requests"] == 1
    assert after["blob_batch_blobs"] - before["blob_batch_blobs"] == len(order)
    assert after["blob_bytes_sent"] - before["blob_bytes_sent"] == len(expected)
    assert after["blob_get_requests"] == before["blob_get_requests"]


def test_a_blobs_block_list_has_each_blocks_sha256_and_blake3(
    server: ServerProcess, repo_name: str
) -> None:
    repo = f"alice/{repo_name}"
    assert api(server, "POST", "/repos", json={"owner": "alice", "name": repo_name}).is_success
    # 2.5 blocks (the last one short), and an empty blob (one empty block)
    data = os.urandom(BLOCK_SIZE * 5 // 2)
    for blob in (data, b""):
        oid = put_blob(server, repo, blob)
        body = api(server, "GET", f"/repos/{repo}/blobs/{oid}/blocks").json()
        pieces = [blob[at : at + BLOCK_SIZE] for at in range(0, len(blob), BLOCK_SIZE)] or [b""]
        assert body == {
            "block_size": BLOCK_SIZE,
            "blocks": [hashlib.sha256(p).hexdigest() for p in pieces],
            "blake3": [blake3.blake3(p).hexdigest() for p in pieces],
        }


def test_batch_never_sends_another_repos_blob(server: ServerProcess, repo_name: str) -> None:
    for name in (repo_name, repo_name + "-other"):
        assert api(server, "POST", "/repos", json={"owner": "alice", "name": name}).is_success
    secret = os.urandom(1000)
    oid = put_blob(server, f"alice/{repo_name}-other", secret)
    mine = put_blob(server, f"alice/{repo_name}", b"mine")
    batch = {"ids": [mine, oid]}
    response = api(server, "POST", f"/repos/alice/{repo_name}/blobs/batch", json=batch)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert secret not in response.content


def test_two_servers_on_one_store_see_each_others_new_repos_and_blobs(tmp_path: Path) -> None:
    """A server keeps repo records it has read, never a miss: a repo (or a blob) another
    server on the same store adds after this one answered 404 is found by this one."""
    first = ServerProcess(tmp_path / "store", log=tmp_path / "first.log").start()
    second = ServerProcess(tmp_path / "store", log=tmp_path / "second.log").start()
    try:
        assert api(first, "GET", "/repos/alice/shared").status_code == 404
        made = api(second, "POST", "/repos", json={"owner": "alice", "name": "shared"})
        assert made.status_code == 201
        assert api(first, "GET", "/repos/alice/shared").json()["name"] == "shared"
        data = os.urandom(3000)
        oid = hashlib.sha256(data).hexdigest()
        assert api(first, "GET", f"/repos/alice/shared/blobs/{oid}").status_code == 404
        put_blob(second, "alice/shared", data)
        assert api(first, "GET", f"/repos/alice/shared/blobs/{oid}").content == data
        ranged = api(
            first, "GET", f"/repos/alice/shared/blobs/{oid}", headers={"Range": "bytes=10-19"}
        )
        assert ranged.status_code == 206 and ranged.content == data[10:20]
    finally:
        first.stop()
        second.stop()
