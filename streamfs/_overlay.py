"""The writable layer of a branch mount: local changes over a pinned commit.

What a path is, in order: a staged file (written here, or a renamed file of
the base), a directory made here, nothing (deleted here, or below a deleted
directory), else whatever the base commit has. Nothing of the base is
downloaded for writing, except the old bytes of a file opened for writing
without O_TRUNC.

Durability: a written file is fsynced when closed, and the journal (what is
staged, what is deleted, which commit it applies to) is brought up to date
after every change, so a killed daemon loses nothing: the next mount of the
branch (or ``streamfs sync``) commits it. A change appends one line to
``journal.log`` (the paths it touched, as they are now); ``journal.json``,
the whole state, is rewritten atomically after a commit and whenever the
log grows past twice the state, so copying n files into a mount writes
O(n) journal bytes, not O(n^2). Each log line names the epoch of the
``journal.json`` it follows; lines of another epoch (a crash between the
rewrite and the log's removal) and a torn last line are ignored.

On a mount, "closed" is the FUSE flush that close(2) waits for, not the
release the kernel sends after close(2) has returned; a file is in the
journal from its first close on, and recovery hashes the staged bytes again
rather than trust a digest the killed daemon may not have had time to write.

Locking: ``_lock`` guards ``files``, ``deleted``, ``dirs`` and the journal
write; it is never held across network I/O. A commit snapshots the state
under the lock, uploads and commits without it, and then removes what it
committed, unless it changed meanwhile (generation numbers). While it
uploads, the staged bytes it took stay as they are: a file reopened for
writing gets a copy, and one unlinked or renamed over keeps its bytes until
the commit is done with them; a file it committed that was renamed away or
unlinked meanwhile is deleted by the next commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import (
    AlreadyExistsError,
    InvalidInputError,
    IsADirError,
    NotADirError,
    PathNotFoundError,
    StreamfsError,
)
from ._fetch import BlobRef
from ._model import EMPTY_TREE, Entry, Tree, check_path
from ._reader import BlobReader
from ._upload import hash_file
from ._view import RepoView, entry_stat

log = logging.getLogger("streamfs.overlay")
JOURNAL = "journal.json"
JOURNAL_LOG = "journal.log"  # changes since journal.json was written, a line each
JOURNAL_LOG_MIN = 1024  # lines the log may have before it is folded into journal.json
# libfuse (without hard_remove) renames a file unlinked while open to .fuse_hiddenNNNN in its
# folder and unlinks that name after the last release: a file the user deleted, never a change
FUSE_HIDDEN = ".fuse_hidden"


def is_fuse_hidden(path: str) -> bool:
    return path.rpartition("/")[2].startswith(FUSE_HIDDEN)


@dataclass
class Staged:
    """A file of the overlay: local bytes, or a base blob under a new name."""

    local: str | None  # file name in the staging folder
    blob: str | None  # sha256 once known (closed), or the base blob of a renamed file
    size: int
    mtime: int
    generation: int = 0
    writers: int = 0
    closed: bool = False  # closed once at least: journaled, whether or not hashed yet
    dropped: bool = False  # unlinked or replaced while open: its bytes go with its last writer

    def to_json(self) -> dict[str, Any]:
        return {"local": self.local, "blob": self.blob, "size": self.size, "mtime": self.mtime}


@dataclass
class StagedHandle:
    overlay: Overlay
    path: str
    staged: Staged
    fd: int
    writable: bool
    _digest: Any = field(default_factory=hashlib.sha256)
    _hashed: int = 0  # bytes hashed so far, while writes stay sequential from 0
    dirty: bool = False
    flushed: bool = False  # closed by close(2), not written since: its release is on the way

    def readinto(self, offset: int, out: memoryview) -> int:
        return os.preadv(self.fd, [out], offset)

    def write(self, offset: int, data: bytes) -> int:
        written = os.pwrite(self.fd, data, offset)
        if offset == self._hashed and self._digest is not None:
            self._digest.update(data[:written])
            self._hashed += written
        elif offset + written > self._hashed:
            self._digest = None  # not sequential: hash the file again at close
        self.dirty = True
        self.flushed = False
        return written

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        if length != self._hashed:
            self._digest = None if length else hashlib.sha256()
            self._hashed = 0
        self.dirty = True
        self.flushed = False

    def sync(self) -> None:
        """fsync(2): the bytes so far are durable (not journaled: the file is still open)."""
        if self.dirty:
            os.fsync(self.fd)

    def flush(self) -> None:
        """close(2) of a descriptor: the bytes so far are durable and journaled."""
        self.flushed = self.writable
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False
            if self.writable:
                self.overlay.journal_closed(self)

    def finish(self) -> tuple[str, int]:
        """(sha256, size) of the closed file."""
        os.fsync(self.fd)
        size = os.fstat(self.fd).st_size
        if self._digest is not None and self._hashed == size:
            return self._digest.hexdigest(), size
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(self.fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest(), size


class Overlay:
    def __init__(self, view: RepoView, branch: str, state_dir: Path) -> None:
        self.view = view
        self.branch = branch
        self.state_dir = state_dir
        self.staging = state_dir / "files"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Staged] = {}
        self.deleted: set[str] = set()
        self.dirs: set[str] = set()
        self._generation = 0
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        # staged files an in-flight commit is uploading (their names in ``staging``), and
        # those of them dropped meanwhile: deleted once that commit is done with them
        self._uploading: set[str] = set()
        self._orphans: set[str] = set()
        self._epoch: str | None = None  # of the journal.json on disk, once this overlay knows it
        self._logged = 0  # lines in journal.log
        self.last_error: str | None = None

    # ------------------------------------------------------------ persistence

    def load_journal(self) -> str | None:
        """Restore staged changes of an earlier daemon; returns the base commit they apply to."""
        path = self.state_dir / JOURNAL
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        files: dict[str, Any] = dict(raw.get("files", {}))
        deleted = set(raw.get("deleted", []))
        dirs = set(raw.get("dirs", []))
        epoch = raw.get("epoch")
        lines = self._log_lines(epoch) if isinstance(epoch, str) else []
        for line in lines:
            p = line["p"]
            if line.get("f") is not None:
                files[p] = line["f"]
            else:
                files.pop(p, None)
            (deleted.add if line.get("x") else deleted.discard)(p)
            (dirs.add if line.get("d") else dirs.discard)(p)
        for p, item in files.items():
            check_path(p)
            if is_fuse_hidden(p):  # deleted while open, under the daemon that is gone
                if item["local"] is not None:
                    self._delete_local(item["local"])
                continue
            staged = Staged(item["local"], item["blob"], int(item["size"]), int(item["mtime"]))
            if staged.local is not None:
                local = self.staging / staged.local
                try:
                    staged.size = local.stat().st_size
                    staged.blob = hash_file(local)
                except FileNotFoundError:
                    log.error("staged bytes of %s are missing from %s", p, self.staging)
                    continue
            staged.closed = True
            self.files[p] = staged
        self.deleted = {check_path(p) for p in deleted}
        self.dirs = {check_path(p) for p in dirs}
        self._epoch = epoch if isinstance(epoch, str) else None
        self._logged = len(lines)
        base: str | None = raw.get("base")
        return base

    def _log_lines(self, epoch: object) -> list[dict[str, Any]]:
        """The log's lines that follow the journal.json of ``epoch``, in order."""
        try:
            text = (self.state_dir / JOURNAL_LOG).read_text()
        except FileNotFoundError:
            return []
        lines = []
        for raw_line in text.splitlines():
            try:
                line = json.loads(raw_line)
            except ValueError:  # torn by a crash while it was written: the last one
                continue
            if isinstance(line, dict) and line.get("e") == epoch and isinstance(line.get("p"), str):
                lines.append(line)
        return lines

    def save_journal(self) -> None:
        """Rewrite the whole journal (a new epoch) and drop the log of changes."""
        with self._lock:
            epoch = uuid.uuid4().hex[:16]
            raw = {
                "epoch": epoch,
                "base": self.view.commit_id,
                "branch": self.branch,
                "files": {p: j for p in self.files if (j := self._file_json(p)) is not None},
                "deleted": sorted(self.deleted),
                "dirs": sorted(self.dirs),
            }
            tmp = self.state_dir / (JOURNAL + ".tmp")
            with open(tmp, "w") as f:
                json.dump(raw, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_dir / JOURNAL)
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / JOURNAL_LOG).unlink()
            self._epoch, self._logged = epoch, 0

    def journal_paths(self, *paths: str) -> None:
        """Journal what ``paths`` are now (a staged file or not, deleted, a folder made here):
        a line each appended to the log, or the whole journal when the log has outgrown it."""
        with self._lock:
            size = len(self.files) + len(self.deleted) + len(self.dirs)
            if self._epoch is None or self._logged + len(paths) > max(JOURNAL_LOG_MIN, 2 * size):
                self.save_journal()
                return
            text = "".join(
                json.dumps(
                    {
                        "e": self._epoch,
                        "p": p,
                        "f": self._file_json(p),
                        "x": p in self.deleted,
                        "d": p in self.dirs,
                    }
                )
                + "\n"
                for p in paths
            )
            with open(self.state_dir / JOURNAL_LOG, "a") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self._logged += len(paths)

    def _file_json(self, path: str) -> dict[str, Any] | None:
        """Under ``_lock``: the journal's record of the file staged at ``path``, if it has one
        (written and closed at least once, or a renamed file of the base)."""
        staged = self.files.get(path)
        if staged is None or (staged.blob is None and not staged.closed):
            return None
        return staged.to_json()

    def _journal_staged(self, handle: StagedHandle) -> None:
        """Under ``_lock``: journal the file of a writer that closed."""
        if handle.staged.dropped:
            return  # its unlink, or the file that replaced it, journaled its path
        if self.files.get(handle.path) is handle.staged:
            self.journal_paths(handle.path)
        else:  # renamed while open: its path is not at hand
            self.save_journal()

    @property
    def pending(self) -> int:
        """Changes a commit would take (not libfuse's names of files deleted while open)."""
        with self._lock:
            return sum(not is_fuse_hidden(p) for p in self.files) + len(self.deleted)

    # ------------------------------------------------------------ lookups

    def _masked(self, path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:i]) in self.deleted for i in range(1, len(parts) + 1))

    def lookup(self, path: str) -> Entry:
        if path == "":
            return self.view.root
        with self._lock:
            staged = self.files.get(path)
            if staged is not None:
                return Entry(
                    path.rsplit("/", 1)[-1], "file", staged.blob or "", staged.size, staged.mtime
                )
            if path in self.dirs:
                return Entry(path.rsplit("/", 1)[-1], "dir", "", 0, 0)
            masked = self._masked(path)
        if masked:
            raise PathNotFoundError("no such file or directory", filename=path)
        return self.view.lookup(path)

    def stat(self, path: str) -> tuple[int, ...]:
        entry = self.lookup(path)
        with self._lock:
            staged = self.files.get(path)
            if staged is not None and staged.local is not None:
                size = os.stat(self.staging / staged.local).st_size
                entry = Entry(entry.name, "file", entry.id, size, entry.mtime)
        return entry_stat(entry, path, writable=True)

    def listdir(self, path: str) -> list[str]:
        entry = self.lookup(path)
        if not entry.is_dir:
            raise NotADirError("not a directory", filename=path)
        base: Tree = EMPTY_TREE
        if entry.id:
            base = self.view.tree(entry.id)
        prefix = f"{path}/" if path else ""
        with self._lock:
            names = {e.name for e in base.entries if not self._masked(prefix + e.name)}
            for p in [*self.files, *self.dirs]:
                if p.startswith(prefix) and "/" not in p[len(prefix) :]:
                    names.add(p[len(prefix) :])
        return sorted(names)

    def _require_parent_dir(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if not self.lookup(parent).is_dir:
            raise NotADirError("not a directory", filename=parent)

    def _exists(self, path: str) -> Entry | None:
        try:
            return self.lookup(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    # ------------------------------------------------------------ files

    def _new_local(self) -> tuple[str, int]:
        name = uuid.uuid4().hex
        fd = os.open(self.staging / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        return name, fd

    def create(self, path: str) -> StagedHandle:
        check_path(path)
        self._require_parent_dir(path)
        existing = self._exists(path)
        if existing is not None and existing.is_dir:
            raise IsADirError("is a directory", filename=path)
        return self._open_new(path)

    def _open_new(self, path: str) -> StagedHandle:
        local, fd = self._new_local()
        with self._lock:
            self._generation += 1
            staged = Staged(local, None, 0, _now(), self._generation, writers=1)
            old = self.files.get(path)
            self.files[path] = staged
            if old is not None:
                self._drop(old)
        return StagedHandle(self, path, staged, fd, writable=True)

    def open_write(self, path: str, *, truncate: bool) -> StagedHandle:
        entry = self.lookup(path)
        if entry.is_dir:
            raise IsADirError("is a directory", filename=path)
        handle: StagedHandle | None = None
        with self._lock:
            staged = self.files.get(path)
            if staged is not None and staged.local is not None:
                if staged.local in self._uploading:
                    # A commit is uploading these bytes: write a copy and leave them to it
                    # (written in place, the upload would no longer match its digest). Copied
                    # under the lock (local disk only), so the journal never names a partial copy.
                    old = staged.local
                    local, fd = self._new_local()
                    if not truncate:
                        shutil.copyfile(self.staging / old, self.staging / local)
                    staged.local = local
                    self._delete_local(old)  # once that commit is done with it
                    self.journal_paths(path)
                else:
                    fd = os.open(self.staging / staged.local, os.O_RDWR)
                staged.writers += 1
                self._generation += 1
                staged.generation = self._generation
                staged.blob = None
                handle = StagedHandle(self, path, staged, fd, writable=True)
                handle._digest = None
                if truncate:
                    handle.truncate(0)
        if handle is not None:
            return handle
        handle = self._open_new(path)
        if not truncate and entry.size:
            self._copy_base(entry, path, handle)
        return handle

    def _copy_base(self, entry: Entry, path: str, handle: StagedHandle) -> None:
        """Copy-on-write of an existing file opened without O_TRUNC: fetch its bytes once."""
        blob = entry.id if entry.id else None
        with self._lock:
            staged_old = self.files.get(path)
        if blob is None and staged_old is not None:
            blob = staged_old.blob
        assert blob is not None
        reader = BlobReader(
            self.view.client, BlobRef(self.view.owner, self.view.name, blob, entry.size), path
        )
        offset = 0
        while offset < entry.size:
            data = reader.read(offset, 4 << 20)
            handle.write(offset, data)
            offset += len(data)

    def open_staged_read(self, path: str) -> StagedHandle | None:
        with self._lock:
            staged = self.files.get(path)
            if staged is None or staged.local is None:
                return None
            fd = os.open(self.staging / staged.local, os.O_RDONLY)
        return StagedHandle(self, path, staged, fd, writable=False)

    def journal_closed(self, handle: StagedHandle) -> None:
        """A writer's close(2): journal the file before the call returns (recovery hashes it)."""
        with self._lock:
            if handle.staged.dropped:
                return
            handle.staged.closed = True
            self._journal_staged(handle)

    def _drop(self, staged: Staged) -> None:
        """Under ``_lock``: ``staged`` left ``files`` uncommitted (unlinked, or replaced by
        another file); its bytes are deleted now, or by its last writer's close."""
        staged.dropped = True
        if staged.local is not None and staged.writers == 0:
            self._delete_local(staged.local)

    def _delete_local(self, local: str) -> None:
        """Under ``_lock``: delete a staged file's bytes, unless a commit is uploading them."""
        if local in self._uploading:
            self._orphans.add(local)
            return
        with contextlib.suppress(FileNotFoundError):
            (self.staging / local).unlink()

    def uploading(self, locals_: set[str]) -> None:
        """Under ``_lock``: a commit uploads these staged files; keep their bytes till ``uploaded``."""
        self._uploading |= locals_

    def uploaded(self, locals_: set[str]) -> None:
        with self._lock:
            self._uploading -= locals_
            for local in locals_ & self._orphans:
                self._orphans.discard(local)
                self._delete_local(local)

    def close_handle(self, handle: StagedHandle) -> None:
        try:
            if handle.writable:
                journaled = handle.staged.closed and not handle.dirty
                blob, size = handle.finish()
                with self._lock:
                    staged = handle.staged
                    staged.writers -= 1
                    # by identity, not by path: the file may have been renamed while open
                    if staged.writers == 0 and staged.dropped:
                        self._drop(staged)
                    elif staged.writers == 0:
                        staged.blob, staged.size = blob, size
                        staged.mtime = _now()
                        staged.closed = True
                    if not journaled:  # a mount's flush journaled it already: recovery hashes it
                        self._journal_staged(handle)
                with self.changed:
                    self.changed.notify_all()
        finally:
            os.close(handle.fd)

    def truncate(self, path: str, length: int) -> None:
        handle = self.open_write(path, truncate=length == 0)
        try:
            handle.truncate(length)
        finally:
            self.close_handle(handle)

    # ------------------------------------------------------------ namespace

    def unlink(self, path: str) -> None:
        entry = self.lookup(path)
        if entry.is_dir:
            raise IsADirError("is a directory", filename=path)
        with self._lock:
            staged = self.files.pop(path, None)
            if staged is not None:
                self._drop(staged)
            if self._in_base(path):
                self.deleted.add(path)
        self._changed(path)

    def _in_base(self, path: str) -> bool:
        if self._masked(path):
            return False
        try:
            self.view.lookup(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def mkdir(self, path: str) -> None:
        check_path(path)
        self._require_parent_dir(path)
        if self._exists(path) is not None:
            raise AlreadyExistsError("file exists", filename=path)
        with self._lock:
            self.dirs.add(path)
        self._changed(path)

    def rmdir(self, path: str) -> None:
        entry = self.lookup(path)
        if not entry.is_dir:
            raise NotADirError("not a directory", filename=path)
        if path == "":
            raise InvalidInputError("cannot remove the root")
        if self.listdir(path):
            raise StreamfsError("directory not empty", filename=path) from None
        with self._lock:
            self.dirs.discard(path)
            if self._in_base(path):
                self.deleted.add(path)
        self._changed(path)

    def rename(self, old: str, new: str) -> None:
        check_path(new)
        entry = self.lookup(old)
        self._require_parent_dir(new)
        target = self._exists(new)
        if target is not None and target.is_dir != entry.is_dir:
            raise (IsADirError if target.is_dir else NotADirError)(
                "cannot rename over", filename=new
            )
        if entry.is_dir:
            if target is not None and self.listdir(new):
                raise StreamfsError("directory not empty", filename=new) from None
            self.mkdir(new) if target is None else None
            for name in self.listdir(old):
                self.rename(f"{old}/{name}", f"{new}/{name}")
            self.rmdir(old)
            return
        with self._lock:
            staged = self.files.pop(old, None)
            if staged is None:
                staged = Staged(None, entry.id, entry.size, entry.mtime)
            self._generation += 1
            staged.generation = self._generation
            replaced = self.files.get(new)
            self.files[new] = staged
            if replaced is not None:
                self._drop(replaced)
            if self._in_base(old):
                self.deleted.add(old)
        self._changed(old, new)

    def _changed(self, *paths: str) -> None:
        self.journal_paths(*paths)
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.changed.notify_all()


def _now() -> int:
    import time

    return int(time.time())
