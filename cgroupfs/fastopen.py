"""The mount's C parts (``cgroupfs/fastopen.c``): its ``open``, so that opening a file costs no
Python call (what the Python handler ``CgroupOperations.open`` does, decided by the file's
name); its ``getattr`` and ``read``, answered from a table of what the kernel cache published
(``Table``: attributes and texts the Python handlers rendered, forgotten when a change may
alter them), handing the rest to the Python handlers; its ``write``, which answers a write of
exactly the published text of a file a rewrite leaves unchanged (``Table.rewrites``) and hands
every other write to ``CgroupOperations.write_from`` (a callback of this module, without
mfusepy's wrapper); and its loop, which tells the mount
that libfuse's loop ended before libfuse tears the session down (``loop_ended``: the kernel
cache stops invalidating there, since a notification sent after that point reads freed memory
or writes into a closed descriptor's reused number).

The shared object ``cgroupfs/_fastopen.so`` is built by ``scripts/bootstrap`` (``cc`` and
libfuse3's headers). Without it the mount serves ``open`` from Python and lets the kernel cache
nothing it would have to be told about (``cgroupfs.mount``). mfusepy builds libfuse's
operations table and starts the loop in one call; ``serving`` wraps that call
(``mfusepy.fuse_main_real``) on the calling thread only, running ``fastopen_main`` instead with
the C ``open``, ``getattr`` and ``read`` in the table (mfusepy's ``getattr`` and ``read``
become their fallbacks); the names the C ``open`` hands to Python (``cgroup.events``, whose
handles tell open files apart) go to a callback of this module calling the operations'
``open``, which the mount registers for its ``struct fuse`` once libfuse is initialised
(``register``) and forgets when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from errno import EINVAL
from pathlib import Path
from typing import Any

import mfusepy
import structlog

from cgroupfs import files
from cgroupfs.operations import EVENTS_FILE

LIBRARY = Path(__file__).with_name("_fastopen.so")
log = structlog.get_logger(__name__)

_LOOP_ENDED = ctypes.CFUNCTYPE(None)
"""``fastopen_main``'s ``loop_ended``: ``void (*)(void)``."""

_local = threading.local()
_real_main = mfusepy.fuse_main_real
_library: ctypes.CDLL | None = None
_library_lock = threading.Lock()


def library() -> ctypes.CDLL | None:
    """The loaded shared object, or ``None`` when it was not built."""
    global _library
    with _library_lock:
        if _library is None and LIBRARY.exists():
            lib = ctypes.CDLL(str(LIBRARY))
            lib.fastopen_configure.argtypes = (ctypes.c_char_p, ctypes.c_size_t,
                                               ctypes.c_char_p, ctypes.c_size_t)
            lib.fastopen_configure.restype = ctypes.c_int
            lib.fastopen_register.argtypes = (ctypes.c_void_p,) * 6
            lib.fastopen_register.restype = ctypes.c_int
            lib.fastopen_registered.argtypes = (ctypes.c_void_p,)
            lib.fastopen_registered.restype = ctypes.c_int
            lib.fastopen_table_rewrites.argtypes = (ctypes.c_void_p, ctypes.c_char_p,
                                                    ctypes.c_size_t)
            lib.fastopen_table_rewrites.restype = ctypes.c_int
            lib.fastopen_table_new.restype = ctypes.c_void_p
            lib.fastopen_table_free.argtypes = (ctypes.c_void_p,)
            lib.fastopen_table_clear.argtypes = (ctypes.c_void_p,)
            lib.fastopen_publish.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_int64), ctypes.c_char_p,
                                             ctypes.c_int32)
            lib.fastopen_publish.restype = ctypes.c_int
            lib.fastopen_forget.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
            lib.fastopen_table_count.argtypes = (ctypes.c_void_p,)
            lib.fastopen_table_count.restype = ctypes.c_size_t
            lib.fastopen_table_served.argtypes = (ctypes.c_void_p, ctypes.c_int)
            lib.fastopen_table_served.restype = ctypes.c_uint64
            lib.fastopen_unregister.argtypes = (ctypes.c_void_p,)
            lib.fastopen_set_device.argtypes = (ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint)
            lib.fastopen_set_device.restype = ctypes.c_int
            lib.fastopen_kernel_inode.argtypes = (
                ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64),
                ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint))
            lib.fastopen_kernel_inode.restype = ctypes.c_int
            lib.fastopen_cached_walks.restype = ctypes.c_int
            lib.fastopen_main.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                          ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                          _LOOP_ENDED)
            lib.fastopen_main.restype = ctypes.c_int
            python, direct = _names([EVENTS_FILE]), _names(files.UNCACHED_NAMES)
            if lib.fastopen_configure(python, len(python), direct, len(direct)) == 0:
                _library = lib
        return _library


def kernel_inode(path: str, device: int | None = None, *,
                 cached_only: bool = False) -> int | None:
    """The inode number the kernel gives ``path`` (on a mount: libfuse's node id), without
    asking the server for its attributes; ``None`` if there is none, if ``device`` is given and
    the path shows another, or if the C parts are not built. ``cached_only``: resolved from the
    kernel's caches only, ``None`` if it cannot be; a handler of a mount must pass it for its
    own mount (see ``fastopen_kernel_inode`` in ``fastopen.c``)."""
    lib = library()
    if lib is None:
        return None
    ino, major, minor = ctypes.c_uint64(), ctypes.c_uint(), ctypes.c_uint()
    if lib.fastopen_kernel_inode(os.fsencode(path), int(cached_only), ctypes.byref(ino),
                                 ctypes.byref(major), ctypes.byref(minor)) != 0:
        return None
    if device is not None and (major.value, minor.value) != (os.major(device),
                                                             os.minor(device)):
        return None
    return int(ino.value)


def cached_walks() -> bool:
    """Whether the C parts are built and this kernel resolves paths from its caches only
    (``openat2``'s ``RESOLVE_CACHED``, Linux 5.12): without it, a handler finds no inode, so
    the C ``open`` pushes nothing (the read asks) and a handler drops no entry."""
    lib = library()
    return lib is not None and bool(lib.fastopen_cached_walks())


def _names(names: Iterable[str]) -> bytes:
    return b"".join(name.encode() + b"\0" for name in sorted(names))


def _main(argc: int, argv: Any, ops_p: Any, size: int, data: Any) -> int:
    """``fuse_main_real``; ``fastopen_main`` with the C ``open`` installed when this thread is
    serving a mount (``serving``)."""
    served: Serving | None = getattr(_local, "served", None)
    if served is None:
        return int(_real_main(argc, argv, ops_p, size, data))
    return served.main(argc, argv, ops_p, size, data)


_OPEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(mfusepy.fuse_file_info))
"""libfuse's ``open`` callback: ``int (*)(const char *path, struct fuse_file_info *fi)``."""


_WRITE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                          ctypes.c_uint64, ctypes.c_int32)
"""The C ``write``'s Python handler: ``int (*)(const char *path, const char *buf, size_t size,
uint64_t fh, int32_t pid)``."""


_STAT = ctypes.c_int64 * 8


class Table:
    """What the C ``getattr`` and ``read`` of one mount answer without Python: per path, the
    attributes (a ``getattr`` result with times in nanoseconds) and, for a file whose text the
    kernel may cache, the text. ``cgroupfs.kernelcache.KernelCache`` publishes only what it
    holds and forgets it when a change may alter it (see ``fastopen.c``). Thread-safe."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._table: int | None = lib.fastopen_table_new()
        if not self._table:
            raise MemoryError("cgroupfs: no memory for the published table")
        # held across every C call on the table, so that ``free`` never frees it under one
        self._lock = threading.Lock()

    @property
    def pointer(self) -> int | None:
        """The C table (``None`` once freed)."""
        return self._table

    def publish(self, path: str, stat: dict[str, int], text: bytes | None) -> None:
        """``path`` has the attributes ``stat`` and, unless ``None``, the content ``text``."""
        raw = path.encode("utf-8", "surrogateescape")
        values = _STAT(stat["st_mode"], stat["st_nlink"], stat["st_uid"], stat["st_gid"],
                       stat["st_size"], stat["st_atime"], stat["st_mtime"], stat["st_ctime"])
        with self._lock:
            if self._table:
                self._lib.fastopen_publish(self._table, raw, len(raw), values, text,
                                           -1 if text is None else len(text))

    def forget(self, paths: Iterable[str]) -> None:
        """Forget what was published for ``paths``."""
        raw = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
        with self._lock:
            if raw and self._table:
                self._lib.fastopen_forget(self._table, raw, len(raw))

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            if self._table:
                self._lib.fastopen_table_clear(self._table)

    def rewrites(self, names: Iterable[str]) -> None:
        """The files named ``names`` are left unchanged by a write of their current text
        (``cgroupfs.files.unchanged_by_rewrite``): the C ``write`` answers such a write when
        the bytes are exactly the published text (see ``fastopen.c``)."""
        raw = _names(names)
        with self._lock:
            if self._table and self._lib.fastopen_table_rewrites(self._table, raw,
                                                                 len(raw)) != 0:
                raise ValueError("cgroupfs: too many names for the C write")

    def _served(self, which: int) -> int:
        with self._lock:
            return int(self._lib.fastopen_table_served(self._table, which)) if self._table else 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._lib.fastopen_table_count(self._table)) if self._table else 0

    @property
    def getattrs_served(self) -> int:
        """``getattr`` requests answered from the table so far."""
        return self._served(0)

    @property
    def reads_served(self) -> int:
        """``read`` requests answered from the table so far."""
        return self._served(1)

    @property
    def texts_pushed(self) -> int:
        """Texts pushed into the kernel's page cache by an ``open`` so far (the read that
        follows costs no request; see ``fastopen.c``)."""
        return self._served(3)

    @property
    def writes_served(self) -> int:
        """``write`` requests answered from the table so far (writes of the current text)."""
        return self._served(2)

    def free(self) -> None:
        """Release the C table (once the mount's loop has ended: no handler uses it); a
        publication or forgetting from another thread meanwhile does nothing."""
        with self._lock:
            table, self._table = self._table, None
            if table:
                self._lib.fastopen_table_free(table)


class Serving:
    """A mount served by the C parts (see ``serving``) over ``operations``; ``loop_ended`` is
    called on the serving thread once libfuse's loop has ended, before the session is torn
    down (see the module)."""

    def __init__(self, lib: ctypes.CDLL, operations: Any, loop_ended: Callable[[], None]) -> None:
        self._lib = lib
        self._operations = operations
        self._callback = _OPEN(self._open)  # kept alive while the mount may call it
        self._write_callback = _WRITE(self._write)
        self._loop_ended = loop_ended
        self._ended_callback = _LOOP_ENDED(self._ended)
        self._fuse: int | None = None
        self.table = Table(lib)
        self._python: tuple[int, int] = (0, 0)  # mfusepy's getattr and read

    def main(self, argc: int, argv: Any, ops_p: Any, size: int, data: Any) -> int:
        """What ``fuse_main_real`` does, by ``fastopen_main``, with the C ``open``."""
        ops = ops_p.contents
        ops.open = ctypes.cast(self._lib.fastopen_open, type(ops.open))
        self._python = (ctypes.cast(ops.getattr, ctypes.c_void_p).value or 0,
                        ctypes.cast(ops.read, ctypes.c_void_p).value or 0)
        if all(self._python):
            ops.getattr = ctypes.cast(self._lib.fastopen_getattr, type(ops.getattr))
            ops.read = ctypes.cast(self._lib.fastopen_read, type(ops.read))
        ops.write = ctypes.cast(self._lib.fastopen_write, type(ops.write))
        return int(self._lib.fastopen_main(argc, argv, ops_p, size, data, self._ended_callback))

    def _ended(self) -> None:
        try:
            self._loop_ended()
        except BaseException:  # a C callback cannot raise: say it and go on tearing down
            log.exception("the mount's loop-end handler failed")

    def _open(self, path: bytes, fip: Any) -> int:
        """What mfusepy's ``open`` does with ``raw_fi``: the operations' ``open`` with the
        decoded path and the ``fuse_file_info``; ``-errno`` for an ``OSError``."""
        try:
            return int(self._operations.open(path.decode("utf-8", "surrogateescape"),
                                             fip.contents))
        except OSError as exc:
            return -(exc.errno or EINVAL)

    def _write(self, path: bytes | None, buf: int, size: int, fh: int, pid: int) -> int:
        """The C ``write``'s Python handler: the operations' ``write_from`` with the decoded
        path (``None`` once libfuse saw the file's directory go) and the bytes; ``-errno`` for
        an ``OSError``, ``-EINVAL`` (logged) for any other exception, as mfusepy answers."""
        try:
            name = None if path is None else path.decode("utf-8", "surrogateescape")
            return int(self._operations.write_from(name, ctypes.string_at(buf, size), fh, pid))
        except OSError as exc:
            return -(exc.errno or EINVAL)
        except Exception:  # a C callback cannot raise: bad input never stops the mount
            log.exception("cgroupfs write failed", path=path)
            return -EINVAL

    def register(self, fuse: int | None) -> None:
        """libfuse serves the mount as ``fuse`` (called from ``init``): the C ``open`` hands
        the names it does not open itself to this mount's operations, the C ``getattr`` and
        ``read`` what the table lacks."""
        if fuse is not None:
            self._fuse = fuse
            pointer = ctypes.cast(self._callback, ctypes.c_void_p)
            getattr_, read = self._python
            table = self.table.pointer if all(self._python) else None
            write = ctypes.cast(self._write_callback, ctypes.c_void_p)
            if self._lib.fastopen_register(fuse, pointer, getattr_ or None, read or None,
                                           write, table) != 0:
                raise OSError("too many cgroupfs mounts in one process for the C open")

    def set_device(self, device: int) -> None:
        """The mount is live and its mount point shows ``device`` (``st_dev``): the C
        ``open`` may find this mount's files by their paths under it (see ``fastopen.c``)."""
        if self._fuse is not None:
            self._lib.fastopen_set_device(self._fuse, os.major(device), os.minor(device))

    @property
    def registered(self) -> bool:
        """Whether the C handlers still serve this mount's ``struct fuse`` (from ``register``
        until its loop ends: ``fastopen_main`` forgets it before libfuse frees it)."""
        return self._fuse is not None and bool(self._lib.fastopen_registered(self._fuse))

    def forget(self) -> None:
        """The mount ended (its loop returned, which forgot its registration)."""
        self.table.free()


@contextlib.contextmanager
def serving(operations: Any, loop_ended: Callable[[], None]) -> Iterator[Serving | None]:
    """Within the block, the mount of ``operations`` served on this thread (``mfusepy.FUSE``)
    runs libfuse's loop in C, calls ``loop_ended`` when that loop ends (before libfuse tears
    the session down) and opens files in C; yields its ``Serving`` (``register`` it from
    ``init``), or ``None`` when the shared object was not built (libfuse's own
    ``fuse_main_real`` then serves, ``open`` stays in Python and ``loop_ended`` is not
    called)."""
    lib = library()
    if lib is None:
        yield None
        return
    if mfusepy.fuse_main_real is _real_main:
        mfusepy.fuse_main_real = _main
    served = Serving(lib, operations, loop_ended)
    _local.served = served
    try:
        yield served
    finally:
        _local.served = None
        served.forget()


__all__ = ["LIBRARY", "Serving", "Table", "cached_walks", "kernel_inode", "library", "serving"]
