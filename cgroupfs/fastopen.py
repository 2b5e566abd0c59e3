"""The mount's ``open`` in C (``cgroupfs/fastopen.c``), so that opening a file costs no Python
call: what the Python handler (``CgroupOperations.open``) does, decided by the file's name.

The shared object ``cgroupfs/_fastopen.so`` is built by ``scripts/bootstrap`` (``cc`` and
libfuse3's headers). Without it the mount serves ``open`` from Python, with the same results.
mfusepy builds libfuse's operations table and starts the loop in one call; ``serving`` wraps
that call (``mfusepy.fuse_main_real``) on the calling thread only, putting the C ``open`` in the
table; the names the C ``open`` hands to Python (``cgroup.events``, whose handles tell open
files apart) go to a callback of this module calling the operations' ``open``, which the mount
registers for its ``struct fuse`` once libfuse is initialised (``register``) and forgets when it
ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterable, Iterator
from errno import EINVAL
from pathlib import Path
from typing import Any

import mfusepy

from cgroupfs import files
from cgroupfs.operations import EVENTS_FILE

LIBRARY = Path(__file__).with_name("_fastopen.so")

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
            python, direct = _names([EVENTS_FILE]), _names(files.UNCACHED_NAMES)
            if lib.fastopen_configure(python, len(python), direct, len(direct)) == 0:
                _library = lib
        return _library


def _names(names: Iterable[str]) -> bytes:
    return b"".join(name.encode() + b"\0" for name in sorted(names))


def _main(argc: int, argv: Any, ops_p: Any, size: int, data: Any) -> int:
    """``fuse_main_real``, with the C ``open`` installed when this thread asked for it."""
    lib = getattr(_local, "lib", None)
    if lib is not None:
        ops = ops_p.contents
        ops.open = ctypes.cast(lib.fastopen_open, type(ops.open))
    return int(_real_main(argc, argv, ops_p, size, data))


_OPEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(mfusepy.fuse_file_info))
"""libfuse's ``open`` callback: ``int (*)(const char *path, struct fuse_file_info *fi)``."""


class Serving:
    """A mount served with the C ``open`` (see ``serving``) over ``operations``."""

    def __init__(self, lib: ctypes.CDLL, operations: Any) -> None:
        self._lib = lib
        self._operations = operations
        self._callback = _OPEN(self._open)  # kept alive while the mount may call it
        self._fuse: int | None = None

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
def serving(operations: Any) -> Iterator[Serving | None]:
    """Within the block, the mount of ``operations`` served on this thread (``mfusepy.FUSE``)
    opens files in C; yields its ``Serving`` (``register`` it from ``init``), or ``None`` when
    the shared object was not built (``open`` then stays in Python)."""
    lib = library()
    if lib is None:
        yield None
        return
    if mfusepy.fuse_main_real is _real_main:
        mfusepy.fuse_main_real = _main
    served = Serving(lib, operations)
    _local.lib = lib
    try:
        yield served
    finally:
        _local.lib = None
        served.forget()


__all__ = ["LIBRARY", "Serving", "library", "serving"]
