"""The mount's C parts (``cgroupfs/fastopen.c``): its ``open``, so that opening a file costs no
Python call (what the Python handler ``CgroupOperations.open`` does, decided by the file's
name), and its loop, which tells the mount that libfuse's loop ended before libfuse tears the
session down (``loop_ended``: the kernel cache stops invalidating there, since a notification
sent after that point reads freed memory or writes into a closed descriptor's reused number).

The shared object ``cgroupfs/_fastopen.so`` is built by ``scripts/bootstrap`` (``cc`` and
libfuse3's headers). Without it the mount serves ``open`` from Python and lets the kernel cache
nothing it would have to be told about (``cgroupfs.mount``). mfusepy builds libfuse's
operations table and starts the loop in one call; ``serving`` wraps that call
(``mfusepy.fuse_main_real``) on the calling thread only, running ``fastopen_main`` instead with
the C ``open`` in the table; the names the C ``open`` hands to Python (``cgroup.events``, whose
handles tell open files apart) go to a callback of this module calling the operations'
``open``, which the mount registers for its ``struct fuse`` once libfuse is initialised
(``register``) and forgets when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
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
            lib.fastopen_register.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
            lib.fastopen_register.restype = ctypes.c_int
            lib.fastopen_unregister.argtypes = (ctypes.c_void_p,)
            lib.fastopen_main.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                          ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                          _LOOP_ENDED)
            lib.fastopen_main.restype = ctypes.c_int
            python, direct = _names([EVENTS_FILE]), _names(files.UNCACHED_NAMES)
            if lib.fastopen_configure(python, len(python), direct, len(direct)) == 0:
                _library = lib
        return _library


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


class Serving:
    """A mount served by the C parts (see ``serving``) over ``operations``; ``loop_ended`` is
    called on the serving thread once libfuse's loop has ended, before the session is torn
    down (see the module)."""

    def __init__(self, lib: ctypes.CDLL, operations: Any, loop_ended: Callable[[], None]) -> None:
        self._lib = lib
        self._operations = operations
        self._callback = _OPEN(self._open)  # kept alive while the mount may call it
        self._loop_ended = loop_ended
        self._ended_callback = _LOOP_ENDED(self._ended)
        self._fuse: int | None = None

    def main(self, argc: int, argv: Any, ops_p: Any, size: int, data: Any) -> int:
        """What ``fuse_main_real`` does, by ``fastopen_main``, with the C ``open``."""
        ops = ops_p.contents
        ops.open = ctypes.cast(self._lib.fastopen_open, type(ops.open))
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

    def register(self, fuse: int | None) -> None:
        """libfuse serves the mount as ``fuse`` (called from ``init``): the C ``open`` hands
        the names it does not open itself to this mount's operations."""
        if fuse is not None:
            self._fuse = fuse
            pointer = ctypes.cast(self._callback, ctypes.c_void_p)
            if self._lib.fastopen_register(fuse, pointer) != 0:
                raise OSError("too many cgroupfs mounts in one process for the C open")

    def forget(self) -> None:
        """The mount ended."""
        if self._fuse is not None:
            self._lib.fastopen_unregister(self._fuse)
            self._fuse = None


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


__all__ = ["LIBRARY", "Serving", "library", "serving"]
