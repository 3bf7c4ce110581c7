"""The FUSE front end: a thin translator from kernel callbacks to the core.

Each callback looks the path up in the mount's core (``MountFS``), calls one
method, and turns a StreamfsError into its errno (``FuseOSError``). No
policy lives here; see _mountfs.py.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import fuse
from fuse import FUSE, FuseOSError, Operations, fuse_operations

from ._fuseloop import WORKERS, Session
from ._mountfs import MountFS

log = logging.getLogger("streamfs.fuse")
F = TypeVar("F", bound=Callable[..., Any])
_STAT_SIZE = ctypes.sizeof(fuse.c_stat)
BLKSIZE = 128 * 1024  # st_blksize: the I/O size a reader of the mount is told to prefer


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    return errno.EIO


def translated(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: StreamfsOperations, *args: Any) -> Any:
        try:
            return fn(self, *args)
        except FuseOSError:
            raise
        except Exception as exc:
            code = _errno_of(exc)
            if code not in (errno.ENOENT, errno.EROFS):
                log.warning("%s%r failed: %s", fn.__name__, args[:1], exc)
            raise FuseOSError(code) from None

    return wrapper  # type: ignore[return-value]


def _short(value: Any) -> str:
    """A log-sized repr: the length of a data buffer, not its bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return repr(value)


class StreamfsOperations(Operations):  # type: ignore[misc]
    """The callbacks libfuse may make. An operation set to None is not registered at all.

    libfuse then answers it in C (ENOSYS, or success for opendir/releasedir) without a
    call into Python: every such call costs a ctypes crossing and the GIL, and an epoch over
    small files made one ``ioctl`` (Python's ``open()`` asks ``isatty``) and one ``flush``
    (every ``close()``) per file. A read-only mount has nothing to flush.
    """

    ioctl = None
    opendir = None
    releasedir = None

    def __init__(self, fs: MountFS, on_ready: Callable[[], None] | None = None) -> None:
        self.fs = fs
        self._on_ready = on_ready
        if fs.overlay is None:
            # A pinned commit keeps no per-open state: reads come by path. The first open is
            # answered ENOSYS, which the kernel (since Linux 3.14) takes as "this file system
            # needs no open": it sends no FUSE_OPEN and no FUSE_RELEASE for any file from then
            # on and keeps the page cache across opens (FOPEN_KEEP_CACHE). Answered with
            # success in C instead, every open was still a round trip to a libfuse thread.
            self.flush = None  # type: ignore[method-assign,assignment]
            self.open = self._no_open  # type: ignore[method-assign]
            self.release = None  # type: ignore[method-assign,assignment]
            self.read_into = self._read_into_by_path  # type: ignore[method-assign]

    def __call__(self, op: str, path: str, *args: Any) -> Any:
        # Not fusepy's LoggingMixIn: it formats repr() of every argument and result (a 128 KiB
        # read's bytes included) on every call, logged or not; that was a quarter of the
        # daemon's CPU on a sequential read. Here the cost is paid only under --debug.
        if not log.isEnabledFor(logging.DEBUG):
            return super().__call__(op, path, *args)
        log.debug("-> %s %s %s", op, path, ", ".join(_short(a) for a in args))
        result: Any = "[exception]"
        try:
            result = super().__call__(op, path, *args)
            return result
        except OSError as exc:
            result = str(exc)
            raise
        finally:
            log.debug("<- %s %s", op, _short(result))

    def _no_open(self, path: str, flags: int) -> int:
        raise FuseOSError(errno.ENOSYS)

    def init(self, path: str) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        self.fs.close()

    @translated
    def getattr(self, path: str, fh: int | None = None) -> tuple[int, ...]:
        """os.stat_result's first ten fields (StreamfsFUSE.fgetattr fills the kernel's stat)."""
        return self.fs.getattr(path, fh)

    @translated
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.fs.readdir(path)]

    @translated
    def open(self, path: str, flags: int) -> int:
        return self.fs.open(path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        # fusepy registers a read callback only for operations that have ``read``;
        # StreamfsFUSE answers that callback with read_into
        out = bytearray(size)
        return bytes(out[: self.read_into(path, memoryview(out), offset, fh)])

    @translated
    def read_into(self, path: str, out: memoryview, offset: int, fh: int) -> int:
        """A read into ``out``, libfuse's buffer (see StreamfsFUSE); the bytes read."""
        return self.fs.readinto(fh, offset, out)

    @translated
    def _read_into_by_path(self, path: str, out: memoryview, offset: int, fh: int) -> int:
        return self.fs.read_path_into(path, offset, out)

    @translated
    def release(self, path: str, fh: int) -> None:
        self.fs.release(fh)

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()

    @translated
    def access(self, path: str, amode: int) -> None:
        self.fs.access(path, amode)

    # ------------------------------------------------------------ writing

    @translated
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self.fs.create(path, mode)

    @translated
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.fs.write(fh, offset, data)

    @translated
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self.fs.truncate(path, length, fh)

    @translated
    def flush(self, path: str, fh: int) -> None:
        self.fs.flush(fh)

    @translated
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self.fs.fsync(fh)

    @translated
    def unlink(self, path: str) -> None:
        self.fs.unlink(path)

    @translated
    def mkdir(self, path: str, mode: int) -> None:
        self.fs.mkdir(path)

    @translated
    def rmdir(self, path: str) -> None:
        self.fs.rmdir(path)

    @translated
    def rename(self, old: str, new: str) -> None:
        self.fs.rename(old, new)

    @translated
    def chmod(self, path: str, mode: int) -> None:
        self.fs.chmod(path, mode)

    @translated
    def chown(self, path: str, uid: int, gid: int) -> None:
        self.fs.chown(path)

    @translated
    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        self.fs.utimens(path, times)

    # Not supported by a dataset mount: links and extended attributes.
    def symlink(self, target: str, source: str) -> None:
        raise FuseOSError(errno.EPERM)

    def link(self, target: str, source: str) -> None:
        raise FuseOSError(errno.EPERM)

    def readlink(self, path: str) -> str:
        raise FuseOSError(errno.EINVAL)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise FuseOSError(errno.ENODATA)

    def listxattr(self, path: str) -> list[str]:
        return []


class StreamfsFUSE(FUSE):  # type: ignore[misc]
    """fusepy's FUSE, served by a fixed pool of Python threads (see _fuseloop.py), with
    reads written straight into libfuse's buffer.

    fusepy's ``read`` takes the bytes an operation returns and copies them into
    the buffer. A read of a block in memory was then two copies (the slice
    joined into bytes, and the copy into the buffer); here it is one, and a
    read of a block in the cache is read from its file into the buffer. On
    a cold sequential read each 128 KiB read cost a copy more than it needed.

    The constructor mounts and serves until the file system is unmounted, as
    fusepy's does; it builds the same table of callbacks, but runs libfuse's
    session itself instead of ``fuse_main``.
    """

    def __init__(
        self, operations: Operations, mountpoint: str, workers: int = WORKERS, **options: Any
    ) -> None:
        self.operations = operations
        self.raw_fi = False
        self.encoding = "utf-8"
        self.use_ns = getattr(operations, "use_ns", False)
        args = ["fuse"] + [flag for name, flag in self.OPTIONS if options.pop(name, False)]
        options.setdefault("fsname", type(operations).__name__)
        args += ["-o", ",".join(self._normalize_fuse_options(**options)), mountpoint]
        table = fuse_operations()
        for name, prototype, *_ in fuse_operations._fields_:
            # fgetattr and ftruncate are answered by getattr and truncate
            value = getattr(
                operations, name[1:] if name in ("fgetattr", "ftruncate") else name, None
            )
            if value is None:
                continue
            if hasattr(prototype, "argtypes"):  # a callback: self.<name> decodes its arguments
                value = prototype(functools.partial(self._wrapper, getattr(self, name)))
            setattr(table, name, value)  # or a flag (flag_nullpath_ok, flag_nopath, ...)
        served = Session(fuse._libfuse, [a.encode() for a in args], table, workers).run()
        critical = getattr(self, "_FUSE__critical_exception", None)  # set by fusepy's _wrapper
        del self.operations
        if critical is not None:
            raise critical
        if not served:
            raise RuntimeError("reading the FUSE device failed")

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        """libfuse's stat buffer, filled from the operation's tuple field by field.

        fusepy's asks for a dictionary and sets each key it names on the buffer, looking each
        up twice. Every file's first open and every entry of a ``find`` + ``stat`` is one such
        call: the daemon spent 27 µs of CPU an entry of a ``find`` + ``stat`` that way, 24
        this way."""
        fh = None if not fip else fip.contents.fh
        st = self.operations("getattr", self._decode_optional_path(path), fh)
        mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime = st
        ctypes.memset(buf, 0, _STAT_SIZE)
        out = buf.contents
        out.st_mode, out.st_ino, out.st_dev, out.st_nlink = mode, ino, dev, nlink
        out.st_uid, out.st_gid, out.st_size = uid, gid, size
        out.st_blocks, out.st_blksize = (size + 511) // 512, BLKSIZE
        for spec, seconds in (
            (out.st_atimespec, atime),
            (out.st_mtimespec, mtime),
            (out.st_ctimespec, ctime),
        ):
            whole = int(seconds)
            spec.tv_sec, spec.tv_nsec = whole, int((seconds - whole) * 1e9)
        return 0

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        if size == 0:
            return 0
        fh = fip.contents if self.raw_fi else fip.contents.fh
        # libfuse's buffer of ``size`` bytes, valid until this call returns: the operations
        # write into it and keep no reference
        place = (ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))
        out = memoryview(place).cast("B")
        return int(self.operations("read_into", self._decode_optional_path(path), out, offset, fh))
