"""The ``streamfs`` command line. Errors print one line and exit non-zero."""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from ._errors import InvalidInputError, StreamfsError
from ._model import RepoSpec, parse_repo_spec, split_path
from ._remote import Remote, remote_from_env

T = TypeVar("T")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StreamfsError as exc:
            click.echo(f"streamfs: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("streamfs: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option(
    "--remote",
    envvar="STREAMFS_REMOTE",
    help="Server URL [env STREAMFS_REMOTE; default http://127.0.0.1:8600].",
)
@click.option("--token", envvar="STREAMFS_TOKEN", help="Access token [env STREAMFS_TOKEN].")
@click.version_option(package_name="streamfs")
@click.pass_context
def cli(ctx: click.Context, remote: str | None, token: str | None) -> None:
    """Use a remote, versioned dataset as if it were a local folder."""
    ctx.obj = remote_from_env(remote, token)


def _run(ctx: click.Context, fn: Callable[[Remote], Awaitable[T]]) -> T:
    url, token = ctx.obj

    async def main() -> T:
        async with Remote(url, token) as remote:
            return await fn(remote)

    return trio.run(main)


def _spec(text: str, *, path: bool = False) -> RepoSpec:
    return parse_repo_spec(text, allow_path=path)


def _when(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


# ------------------------------------------------------------------ server


@cli.command()
@click.option(
    "--root", required=True, type=click.Path(file_okay=False), help="Directory of the store."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8600, show_default=True, type=int)
@click.option(
    "--token-file", type=click.Path(dir_okay=False, exists=True), help="TOML file of tokens."
)
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
@click.option(
    "--blob-url",
    metavar="URL",
    help="Serve blob bytes from a static front at this URL (e.g. http://host:8080/blobs): "
    "clients get signed URLs, see `streamfs nginx-location`.",
)
@click.option(
    "--blob-secret-file",
    type=click.Path(dir_okay=False, exists=True),
    help="File holding the secret the front's URLs are signed with (with --blob-url).",
)
@click.option(
    "--blob-url-ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(10, 7 * 24 * 3600),
    help="Seconds a signed blob URL stays valid.",
)
@click.option("--fd", type=int, hidden=True, help="Serve on an inherited listening socket.")
def serve(
    root: str,
    host: str,
    port: int,
    token_file: str | None,
    access_log: bool,
    blob_url: str | None,
    blob_secret_file: str | None,
    blob_url_ttl: int,
    fd: int | None,
) -> None:
    """Host versioned repos from a local directory."""
    from .server import serve as run_server
    from .server._front import BlobFront, read_secret

    if (blob_url is None) != (blob_secret_file is None):
        raise click.UsageError("--blob-url and --blob-secret-file go together")
    front = None
    if blob_url is not None and blob_secret_file is not None:
        front = BlobFront(blob_url, read_secret(blob_secret_file), blob_url_ttl)
    run_server(
        root,
        host=host,
        port=port,
        token_file=token_file,
        access_log=access_log,
        fd=fd,
        front=front,
    )


@cli.command("nginx-location")
@click.option(
    "--root", required=True, type=click.Path(file_okay=False), help="Directory of the store."
)
@click.option(
    "--blob-url",
    required=True,
    metavar="URL",
    help="The URL given to `streamfs serve --blob-url`; its path is the location's.",
)
@click.option(
    "--blob-secret-file",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="The file given to `streamfs serve --blob-secret-file`.",
)
def nginx_location(root: str, blob_url: str, blob_secret_file: str) -> None:
    """Print the nginx location block that serves the store's blobs to signed URLs.

    Put it in a server block of nginx (built with secure_link, as Debian's nginx-light is)
    that listens where --blob-url points; nginx must be able to read the store's files.
    """
    from .server._front import BlobFront, read_secret
    from .server._front import nginx_location as location

    secret = read_secret(blob_secret_file)
    front = BlobFront(blob_url, secret)
    click.echo(location(root, front.path, secret), nl=False)


@cli.command("upgrade-store")
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Directory of the store.",
)
def upgrade_store(root: str) -> None:
    """Give blobs an older server stored what this version keeps: the BLAKE3 of their blocks,
    which clients check them by (about 4x as fast as by sha256).

    It reads every blob that lacks them once; a blob whose bytes do not match its id is
    reported and left as it is (exit status 1). Safe to run while the server runs; running
    it again does nothing more.
    """
    from ._progress import ProgressBars
    from .server._storage import LocalStorage
    from .server._store import RepoStore

    if not (Path(root) / "data").is_dir():
        raise click.ClickException(f"{root} is not the root of a store (it has no data folder)")
    store = RepoStore(LocalStorage(root))
    with ProgressBars() as bars:
        done = store.upgrade(lambda hashed, total: bars.update("hashing", hashed, total))
    click.echo(
        f"{done.block_lists} block lists given BLAKE3 ({_size(done.hashed_bytes)} hashed),"
        f" {done.markers} markers of small blobs"
    )
    for oid in done.damaged:
        why = "its stored bytes do not match its id or cannot be read"
        click.echo(f"error: blob {oid}: {why} (left as they are)", err=True)
    if done.damaged:
        raise SystemExit(1)


# ------------------------------------------------------------------ repos


@cli.group()
def repo() -> None:
    """Create and inspect repositories."""


@repo.command("create")
@click.argument("repo_name", metavar="OWNER/NAME")
@click.option("--private", is_flag=True, help="Reading needs a token.")
@click.pass_context
def repo_create(ctx: click.Context, repo_name: str, private: bool) -> None:
    """Create a repository with an empty main branch."""
    spec = _spec(repo_name)
    info = _run(ctx, lambda r: r.create_repo(spec.owner, spec.name, private=private))
    click.echo(
        f"created {spec.repo} ({'private' if info['private'] else 'public'}, branch {info['default_branch']})"
    )


@repo.command("info")
@click.argument("repo_name", metavar="OWNER/NAME")
@click.pass_context
def repo_info(ctx: click.Context, repo_name: str) -> None:
    """Show a repository's branches and tags."""
    spec = _spec(repo_name)

    async def go(r: Remote) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        return await r.get_repo(spec.owner, spec.name), await r.refs(spec.owner, spec.name)

    info, refs = _run(ctx, go)
    click.echo(
        f"{spec.repo}  {'private' if info['private'] else 'public'}  default branch {info['default_branch']}"
    )
    for kind in ("branches", "tags"):
        for ref, commit in sorted(refs[kind].items()):
            click.echo(f"  {kind[:-1] if kind == 'tags' else 'branch'}  {ref:<30} {commit}")


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@BRANCH]")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.option("--to", "to", default="", help="Folder in the repo to upload into.")
@click.option("-m", "--message", required=True, help="Commit message.")
@click.pass_context
def upload(ctx: click.Context, target: str, local: Path, to: str, message: str) -> None:
    """Upload a file or directory as one commit (only new bytes are sent)."""
    from ._progress import ProgressBars
    from ._upload import upload as do_upload

    spec = _spec(target)
    split_path(to)
    with ProgressBars() as bars:
        result = _run(
            ctx,
            lambda r: do_upload(
                r,
                spec.owner,
                spec.name,
                spec.rev,  # None: the repository's default branch
                local,
                to=to,
                message=message,
                author=getpass.getuser(),
                progress=bars.update,
            ),
        )
    if not result.changed:
        click.echo(
            f"nothing changed: {result.files} files already at "
            f"{spec.repo}@{result.branch} {result.commit}"
        )
        return
    click.echo(
        f"{result.changed_paths} of {result.files} files changed; sent {result.blobs_sent} blobs "
        f"({_size(result.bytes_sent)})" + (" (rebased onto a newer head)" if result.rebased else "")
    )
    click.echo(result.commit)


# ------------------------------------------------------------------ inspecting


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.pass_context
def resolve(ctx: click.Context, target: str) -> None:
    """Print the commit id a revision names."""
    spec = _spec(target)
    click.echo(_run(ctx, lambda r: r.resolve(spec.owner, spec.name, spec.rev)))


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.option("-n", "--max-count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--oneline", is_flag=True, help="One line a commit.")
@click.pass_context
def log(ctx: click.Context, target: str, max_count: int, oneline: bool) -> None:
    """Show the history of a revision (first parents)."""
    spec = _spec(target)
    entries = _run(ctx, lambda r: r.log(spec.owner, spec.name, spec.rev, max_count))
    for oid, commit in entries:
        if oneline:
            click.echo(f"{oid[:12]} {commit.message.splitlines()[0] if commit.message else ''}")
            continue
        click.echo(f"commit {oid}")
        click.echo(f"Author: {commit.author}")
        click.echo(f"Date:   {_when(commit.time)}")
        if commit.meta:
            click.echo(f"Meta:   {commit.meta}")
        click.echo("")
        for line in (commit.message or "(no message)").splitlines():
            click.echo(f"    {line}")
        click.echo("")


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV][:PATH]")
@click.option("-r", "--recursive", is_flag=True, help="List everything below PATH.")
@click.pass_context
def ls(ctx: click.Context, target: str, recursive: bool) -> None:
    """List a folder of a revision."""
    from ._listing import list_path

    spec = _spec(target, path=True)
    commit, rows = _run(ctx, lambda r: list_path(r, spec, recursive=recursive))
    click.echo(f"# {spec.repo}@{spec.rev or '(default)'} = {commit}", err=True)
    for path, entry in rows:
        kind = "d" if entry.is_dir else "-"
        shown = path + ("/" if entry.is_dir else "")
        click.echo(f"{kind} {entry.size:>14} {_when(entry.mtime)}  {shown}")


@cli.command()
@click.argument("old", metavar="OWNER/NAME@REV_A")
@click.argument("new", metavar="[OWNER/NAME@]REV_B")
@click.pass_context
def diff(ctx: click.Context, old: str, new: str) -> None:
    """Files added, removed and modified between two revisions."""
    spec = _spec(old)
    if "/" in new.split("@", 1)[0] and "@" in new:
        other = _spec(new)
        if other.repo != spec.repo:
            raise InvalidInputError("diff compares two revisions of one repository")
        new_rev = other.rev
    else:
        new_rev = new
    body = _run(ctx, lambda r: r.diff(spec.owner, spec.name, spec.rev or "main", new_rev or "main"))
    click.echo(f"# {body['from']} .. {body['to']}", err=True)
    for status, mark in (("added", "A"), ("removed", "D"), ("modified", "M")):
        for item in body[status]:
            click.echo(f"{mark}  {item['path']}  ({_size(item['size'])})")
    counts = body["counts"]
    click.echo(
        f"{counts['added']} added, {counts['removed']} removed, {counts['modified']} modified"
    )


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.argument("tag_name", metavar="TAG")
@click.pass_context
def tag(ctx: click.Context, target: str, tag_name: str) -> None:
    """Tag a revision (tags never move)."""
    spec = _spec(target)
    commit = _run(ctx, lambda r: r.create_tag(spec.owner, spec.name, tag_name, spec.rev or ""))
    click.echo(f"{tag_name} -> {commit}")


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.argument("branch_name", metavar="BRANCH")
@click.pass_context
def branch(ctx: click.Context, target: str, branch_name: str) -> None:
    """Create a branch at a revision."""
    spec = _spec(target)
    commit = _run(ctx, lambda r: r.create_branch(spec.owner, spec.name, branch_name, spec.rev))
    click.echo(f"{branch_name} -> {commit}")


# ------------------------------------------------------------------ local copies and cache

_cache_dir_opt = click.option(
    "--cache-dir",
    envvar="STREAMFS_CACHE_DIR",
    help="Block cache directory [env STREAMFS_CACHE_DIR].",
)
_cache_size_opt = click.option(
    "--cache-size",
    envvar="STREAMFS_CACHE_SIZE",
    help="Cache limit, e.g. 20G [env STREAMFS_CACHE_SIZE].",
)


def _repo_view(
    ctx: click.Context, target: str, cache_dir: str | None, cache_size: str | None
) -> Any:
    from ._client import Client
    from ._view import RepoView

    url, token = ctx.obj
    spec = _spec(target)
    client = Client.create(url, token, cache_dir=cache_dir, cache_size=cache_size)
    view = RepoView.open(client, spec.owner, spec.name, spec.rev)
    click.echo(f"# {spec.repo}@{spec.rev or '(default)'} = {view.commit_id}", err=True)
    return view


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--include", multiple=True, help="Only paths matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Skip paths matching this glob (repeatable).")
@_cache_dir_opt
@_cache_size_opt
@click.pass_context
def pull(
    ctx: click.Context,
    target: str,
    dest: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    cache_dir: str | None,
    cache_size: str | None,
) -> None:
    """Make a full (or filtered) local copy of a revision; resumable."""
    from ._progress import ProgressBars
    from ._pull import pull as do_pull

    view = _repo_view(ctx, target, cache_dir, cache_size)
    with ProgressBars() as bars:
        result = do_pull(view, dest, include=include, exclude=exclude, progress=bars.update)
    click.echo(
        f"pulled {result.files} files of {view.commit_id[:12]} into {dest}: "
        f"{result.fetched} written ({_size(result.bytes_written)}), {result.kept} already there"
    )


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.argument("local", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_cache_dir_opt
@click.pass_context
def verify(ctx: click.Context, target: str, local: Path, cache_dir: str | None) -> None:
    """Check a local copy against a revision: exit 0 only if it matches exactly."""
    from ._progress import ProgressBars
    from ._pull import verify as do_verify

    view = _repo_view(ctx, target, cache_dir, None)
    with ProgressBars() as bars:
        report = do_verify(view, local, progress=bars.update)
    for label, paths in (
        ("missing", report.missing),
        ("modified", report.modified),
        ("extra", report.extra),
    ):
        for path in paths:
            click.echo(f"{label:<9} {path}")
    summary = (
        f"{report.matched} match, {len(report.missing)} missing, "
        f"{len(report.modified)} modified, {len(report.extra)} extra"
    )
    if not report.ok:
        click.echo(f"MISMATCH: {summary}")
        sys.exit(1)
    click.echo(f"OK: {summary} ({view.commit_id})")


@cli.group()
def cache() -> None:
    """Inspect or clear the local block cache."""


@cache.command("stats")
@_cache_dir_opt
@_cache_size_opt
def cache_stats(cache_dir: str | None, cache_size: str | None) -> None:
    """Size, limit, blocks and hit ratio of the cache."""
    from ._client import Client

    client = Client.create(cache_dir=cache_dir, cache_size=cache_size)
    stats = client.cache.stats()
    asked = stats["hits"] + stats["misses"]
    ratio = f"{100 * stats['hits'] / asked:.1f}%" if asked else "n/a"
    click.echo(f"directory  {client.cache_dir}")
    click.echo(f"size       {_size(stats['size'])} of {_size(stats['limit'])}")
    click.echo(f"blocks     {stats['blocks']}")
    click.echo(f"hits       {stats['hits']}  misses {stats['misses']}  hit ratio {ratio}")


@cache.command("clear")
@_cache_dir_opt
def cache_clear(cache_dir: str | None) -> None:
    """Remove every cached block and tree."""
    from ._client import Client

    client = Client.create(cache_dir=cache_dir)
    client.cache.clear()
    click.echo(f"cleared {client.cache_dir}")


# ------------------------------------------------------------------ mounts


@cli.command()
@click.argument("target", metavar="OWNER/NAME[@REV]")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@_cache_dir_opt
@_cache_size_opt
@click.option("--read-only", is_flag=True, help="Never write, even on a branch.")
@click.option("--foreground", is_flag=True, help="Stay in the foreground (logs to stderr).")
@click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Daemon log file."
)
@click.option("--debug", is_flag=True, help="Log every file system call.")
@click.option(
    "--commit-delay",
    default=2.0,
    show_default=True,
    type=float,
    help="Seconds of quiet before staged writes are committed.",
)
@click.option("--ready-fd", type=int, hidden=True)
@click.pass_context
def mount(
    ctx: click.Context,
    target: str,
    mountpoint: Path,
    cache_dir: str | None,
    cache_size: str | None,
    read_only: bool,
    foreground: bool,
    log_file: Path | None,
    debug: bool,
    commit_delay: float,
    ready_fd: int | None,
) -> None:
    """Mount a revision as a directory (a branch mount is writable)."""
    import logging

    from ._client import Client
    from ._mount import Daemon, report_failure, start_daemon, state_root

    spec = _spec(target)
    if not mountpoint.is_dir():
        raise InvalidInputError(f"mount point {mountpoint} is not a directory")
    url, token = ctx.obj

    def daemon(log_path: Path | None) -> Daemon:
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            filename=str(log_path) if log_path else None,
            force=True,
        )
        if not debug:
            logging.getLogger("httpx").setLevel(logging.WARNING)
        client = Client.create(url, token, cache_dir=cache_dir, cache_size=cache_size)
        return Daemon(
            spec, mountpoint.resolve(), client, read_only=read_only, commit_delay=commit_delay
        )

    if foreground:
        daemon(log_file).run(ready_fd, debug)
        return
    log_path = (
        log_file
        or state_root()
        / "logs"
        / f"mount-{spec.owner}-{spec.name}-{(spec.rev or 'default').replace('/', '_')}.log"
    )

    def detached(fd: int) -> None:
        try:
            started = daemon(None)  # stderr is the log file already
        except StreamfsError as exc:  # the caller shows it as it is, not as a log line
            click.echo(f"streamfs: error: {exc}", err=True)
            report_failure(fd, exc)
            sys.exit(1)
        started.run(fd, debug)

    commit = start_daemon(detached, log_path)
    click.echo(f"mounted {spec} at {mountpoint} (commit {commit}; log {log_path})")
    click.echo(commit)


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount(mountpoint: Path) -> None:
    """Commit staged changes and unmount."""
    from ._mount import unmount

    if unmount(mountpoint):
        click.echo(f"unmounted {mountpoint}")
    else:
        click.echo(
            f"unmounted {mountpoint} lazily: files still open there keep working until closed"
        )


@cli.command()
def status() -> None:
    """Active mounts with their commit and pending changes."""
    from ._mount import list_mounts

    mounts = list_mounts()
    if not mounts:
        click.echo("no streamfs mounts")
    for m in mounts:
        mode = "rw" if m.get("writable") else "ro"
        line = f"{m['mountpoint']}  {m['spec']}  {mode}  commit {m['commit']}  pending {m.get('pending', 0)}"
        if m.get("last_error"):
            line += f"  last error: {m['last_error']}"
        click.echo(line)


@cli.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-m", "--message", required=True, help="Commit message.")
def commit(mountpoint: Path, message: str) -> None:
    """Commit a branch mount's staged changes now."""
    from ._mount import control_request

    reply = control_request(mountpoint, {"cmd": "commit", "message": message})
    click.echo(
        ("committed " if reply.get("changed") else "nothing to commit; at ") + str(reply["commit"])
    )


@cli.command()
@click.argument("target", metavar="OWNER/NAME@BRANCH")
@_cache_dir_opt
@click.pass_context
def sync(ctx: click.Context, target: str, cache_dir: str | None) -> None:
    """Commit changes a killed mount left staged for a branch."""
    from ._client import Client
    from ._committer import Committer
    from ._mount import branch_state_dir, lock_branch_state
    from ._overlay import Overlay
    from ._view import RepoView

    url, token = ctx.obj
    spec = _spec(target)
    branch = spec.rev or "main"
    client = Client.create(url, token, cache_dir=cache_dir)
    state = branch_state_dir(client, spec, branch)
    lock = lock_branch_state(state)
    try:
        view = RepoView.open(client, spec.owner, spec.name, branch)
        overlay = Overlay(view, branch, state)
        base = overlay.load_journal()
        if base is None or overlay.pending == 0:
            click.echo(f"nothing staged for {spec.repo}@{branch}")
            return
        overlay.view = RepoView.open(client, spec.owner, spec.name, base)
        new = Committer(overlay).flush("recovered changes staged by an earlier streamfs mount")
        click.echo(f"committed staged changes: {new}")
    finally:
        import os

        os.close(lock)


def main() -> None:
    cli(prog_name="streamfs")
