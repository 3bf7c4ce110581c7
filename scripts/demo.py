"""`make demo`: a local server, a small generated dataset, and what a user does with it.

Each step prints the command it runs, so the output reads like a terminal
session. The store and the data live under .demo/ and are made anew each run.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"


def generate(root: Path, files: int, seed: int, first: int = 0) -> None:
    """A tiny image-classification-like dataset: binary 'images' and a labels file."""
    rng = random.Random(seed)
    labels = []
    for i in range(first, first + files):
        cls = rng.choice(["cat", "dog", "bird"])
        path = root / "train" / cls / f"img{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(2_000, 40_000)))
        labels.append(f"train/{cls}/img{i:04d}.jpg,{cls}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(labels) + "\n")


def step(env: dict[str, str], *args: str) -> str:
    print(f"\n$ streamfs {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "streamfs", *args], env=env, capture_output=True, text=True
    )
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    sys.stdout.flush()
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed: streamfs {' '.join(args)}")
    return proc.stdout


def mount_demo(env: dict[str, str]) -> None:
    """Mount the pinned tag read-only, then the branch writable, and add a file through it."""
    env = dict(env, STREAMFS_STATE_DIR=str(WORK / "state"), STREAMFS_CACHE_DIR=str(WORK / "cache"))
    pinned, branch = WORK / "mnt-v1", WORK / "mnt-main"
    pinned.mkdir()
    branch.mkdir()
    try:
        step(env, "mount", "demo/pets@v1", str(pinned))
        labels = (pinned / "labels.csv").read_text().splitlines()
        some = pinned / labels[1].split(",")[0]
        print(
            f"\n$ python: read {len(labels) - 1} labels and {some.stat().st_size} bytes of "
            f"{some.relative_to(pinned)} straight from the mount"
        )
        print(f"  sha256 {__import__('hashlib').sha256(some.read_bytes()).hexdigest()}")
        try:
            (pinned / "new.txt").write_text("x")
        except OSError as exc:
            print(f"  writing to a pinned mount fails as it should: {exc.strerror}")
        step(env, "mount", "demo/pets@main", str(branch), "--commit-delay", "3600")
        (branch / "notes.txt").write_text("added through the FUSE mount\n")
        print(f"\n$ echo 'added through the FUSE mount' > {branch / 'notes.txt'}")
        step(env, "status")
        step(env, "commit", str(branch), "-m", "add notes through the mount")
        step(env, "log", "demo/pets", "--oneline", "-n", "3")
        step(env, "ls", "demo/pets@main")
    finally:
        for point in (branch, pinned):
            if os.path.ismount(point):
                step(env, "umount", str(point))


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    data = WORK / "dataset"
    generate(data, 60, seed=1)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    log = open(WORK / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamfs",
            "serve",
            "--root",
            str(WORK / "store"),
            "--fd",
            str(sock.fileno()),
        ],
        pass_fds=[sock.fileno()],
        stdout=log,
        stderr=log,
    )
    print(f"started `streamfs serve --root {WORK / 'store'}` at {url} (log: {WORK / 'server.log'})")
    env = dict(os.environ, STREAMFS_REMOTE=url)
    try:
        step(env, "repo", "create", "demo/pets")
        step(env, "upload", "demo/pets@main", str(data), "-m", "first import of the pets dataset")
        step(env, "tag", "demo/pets@main", "v1")
        step(env, "upload", "demo/pets@main", str(data), "-m", "same files again")
        extra = WORK / "extra"
        generate(extra, 5, seed=2, first=1000)
        (extra / "labels.csv").unlink()
        step(
            env,
            "upload",
            "demo/pets@main",
            str(extra / "train"),
            "--to",
            "train",
            "-m",
            "five more images",
        )
        step(env, "log", "demo/pets")
        step(env, "ls", "demo/pets@main")
        step(env, "ls", "demo/pets@v1:train/cat")
        step(env, "diff", "demo/pets@v1", "main")
        step(env, "resolve", "demo/pets@v1")
        mount_demo(env)
        print("\ndemo finished: every step above ran against the real server.")
    finally:
        server.terminate()
        server.wait(10)
        sock.close()
        log.close()


if __name__ == "__main__":
    main()
