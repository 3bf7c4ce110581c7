"""Where the hooks' configuration comes from: arguments, else environment, else streamfs.toml.

Pure code apart from reading the environment and one file. A ``HookSpec``
says which repository revision shows at which local directory; a spec that
carries ``commit`` (and ``branch``) was resolved by a parent process, so a
child re-installs exactly the commit its parent reads, with no request.

``streamfs.toml`` (the nearest one in the working directory or a parent)::

    remote = "http://127.0.0.1:8600"     # optional, for every [[hooks]] entry
    cache_dir = "/scratch/streamfs"      # optional

    [[hooks]]
    repo = "alice/imagenet@v1"
    path = "data"                        # relative to the folder of streamfs.toml

    [[hooks]]
    repo = "alice/labels@main"
    path = "labels"
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ._errors import InvalidInputError
from ._model import parse_repo_spec

CONFIG_FILE = "streamfs.toml"
ENV_HOOKS = "STREAMFS_HOOKS"  # JSON of every mapping of the installing process (for children)


@dataclass(frozen=True)
class HookSpec:
    repo: str  # OWNER/NAME[@REV] as the user wrote it
    path: str  # absolute local directory
    remote: str | None = None
    token: str | None = None
    cache_dir: str | None = None
    commit: str | None = None  # the pinned commit, once resolved
    branch: str | None = None  # the branch REV names, if it names one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HookSpec:
        known: dict[str, Any] = {k: raw.get(k) for k in cls.__dataclass_fields__}
        if not isinstance(known["repo"], str) or not isinstance(known["path"], str):
            raise InvalidInputError(f"invalid hook mapping {dict(raw)!r}")
        return cls(**known)

    def resolved(self, commit: str, branch: str | None) -> HookSpec:
        return replace(self, commit=commit, branch=branch)


def default_path(repo: str, env: Mapping[str, str]) -> str:
    """``$STREAMFS_PATH``, else the repository's name (like ``git clone``)."""
    return env.get("STREAMFS_PATH") or parse_repo_spec(repo, allow_path=False).name


def specs_from(
    repo: str | None,
    path: str | os.PathLike[str] | None,
    *,
    remote: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> list[HookSpec]:
    """The mappings to install: from the arguments, else the environment, else streamfs.toml."""
    env = os.environ if env is None else env
    cwd = cwd or os.getcwd()
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    if repo is None:
        repo = env.get("STREAMFS_REPO") or None
    if repo is not None:
        local = os.fspath(path) if path is not None else default_path(repo, env)
        parse_repo_spec(repo, allow_path=False)
        return [HookSpec(repo, _absolute(local, cwd), remote, token, cache)]
    found = find_config(Path(cwd))
    if found is None:
        raise InvalidInputError(
            "streamfs.install_hooks: no repository given; pass one, set STREAMFS_REPO, "
            f"or write a {CONFIG_FILE} (see docs/hooks.md)"
        )
    return specs_from_toml(found, remote=remote, token=token, cache_dir=cache, env=env)


def find_config(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def specs_from_toml(
    file: Path,
    *,
    remote: str | None,
    token: str | None,
    cache_dir: str | None,
    env: Mapping[str, str],
) -> list[HookSpec]:
    try:
        raw = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"cannot read {file}: {exc}") from None
    entries = raw.get("hooks")
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(f"{file}: want one or more [[hooks]] tables with repo and path")
    specs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("repo"), str):
            raise InvalidInputError(f"{file}: every [[hooks]] table needs repo = 'OWNER/NAME@REV'")
        repo = entry["repo"]
        parse_repo_spec(repo, allow_path=False)
        local = str(entry.get("path") or parse_repo_spec(repo, allow_path=False).name)
        specs.append(
            HookSpec(
                repo,
                _absolute(local, str(file.parent)),
                remote or env.get("STREAMFS_REMOTE") or entry.get("remote") or raw.get("remote"),
                token,
                cache_dir or _toml_cache_dir(entry, raw, env),
            )
        )
    return specs


def _toml_cache_dir(
    entry: Mapping[str, Any], raw: Mapping[str, Any], env: Mapping[str, str]
) -> str | None:
    if env.get("STREAMFS_CACHE_DIR"):
        return None  # the environment wins over the file; Client reads it
    value = entry.get("cache_dir") or raw.get("cache_dir")
    return str(value) if value else None


def _absolute(path: str, base: str) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


# ------------------------------------------------------------------ for child processes


def dump_specs(specs: list[HookSpec], pid: int, env: Mapping[str, str] | None = None) -> str:
    """JSON of the mappings, and of the STREAMFS_* settings a child should share."""
    settings = {
        k: v for k, v in (env or {}).items() if k.startswith("STREAMFS_") and k != ENV_HOOKS
    }
    return json.dumps({"pid": pid, "hooks": [s.to_json() for s in specs], "env": settings})


def load_env(text: str) -> dict[str, str]:
    """The STREAMFS_* settings saved by ``dump_specs`` (a forkserver's own may be stale)."""
    try:
        raw = json.loads(text).get("env") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in raw.items() if str(k).startswith("STREAMFS_")}


def load_specs(text: str) -> tuple[int, list[HookSpec]]:
    try:
        raw = json.loads(text)
        return int(raw["pid"]), [HookSpec.from_json(item) for item in raw["hooks"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"invalid {ENV_HOOKS}: {exc}") from None


def inherited(spec: HookSpec, env: Mapping[str, str]) -> HookSpec:
    """``spec`` pinned to the commit a parent process resolved for the same mapping, if any.

    A spawned child that runs the script's top level again calls
    ``install_hooks("alice/x@main", "data")`` again: it must read the commit
    its parent reads, not whatever ``main`` is now.
    """
    text = env.get(ENV_HOOKS)
    if not text or spec.commit is not None:
        return spec
    try:
        pid, parents = load_specs(text)
    except InvalidInputError:
        return spec
    if pid == os.getpid():
        return spec
    for parent in parents:
        if (parent.repo, parent.path) == (spec.repo, spec.path) and parent.commit:
            return spec.resolved(parent.commit, parent.branch)
    return spec
