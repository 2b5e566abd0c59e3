"""Large batches served in slices, so that other clients' requests are served between them.

A batch of 65,536 IDs is a long model call: served whole, it would hold the one thread that
serves both sockets for all of that time, and a small request of another client would wait
behind it. ``sliced`` turns one ``IOASID_REQUEST_ALLOC_BATCH`` or ``IOASID_REQUEST_FREE_BATCH``
of more than ``SLICE`` IDs into a generator: each ``next()`` makes one slice of at most
``SLICE`` IDs (one ``System.ioasid_ioctl`` of the same command, so one change, journaled before
the next slice), and the generator returns the whole request's result and output once the
last slice is made. Between two ``next()`` calls the server serves its other connections.

What a client sees is the batch's contract, unchanged:

* all or nothing: an allocation batch some slice of which is refused frees the IDs its earlier
  slices allocated, then raises that slice's error (a refusal is logged for the slice that was
  refused, with that slice's count). A release batch is checked whole first, by slices too
  (``System.ioasid_free_batch_ok``; an ID given twice is found before any): one that would be
  refused is made as one request, which refuses it before it frees anything; an ID another
  request of the same process frees meanwhile is freed already, as the batch asked.
* durable before the reply: every slice is journaled when it is made, the last one before the
  generator returns.
* the IDs are those one request would give (the lowest free ones in the range, in order) when
  nothing else allocates in that range meanwhile.

Between slices the batch's IDs so far are allocated (or freed) for everybody: another request
may be refused for capacity an allocation batch then gives back, as concurrent allocations race
in the kernel. A generator closed before its end (the connection went away, the server stops)
frees what its allocation made, so that an unanswered batch leaves nothing; a daemon killed in
the middle keeps the slices made so far, as it keeps a request journaled and never answered.
"""

from __future__ import annotations

import contextlib
from array import array
from collections.abc import Generator
from typing import TYPE_CHECKING

from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.errors import IoasidError

if TYPE_CHECKING:
    from ioasidsd.model.ioasid_device import IoasidFile
    from ioasidsd.system import System

SLICE = 1024
"""IDs allocated or freed in one slice: about a millisecond of the model's time."""

Batch = Generator[None, None, tuple[int, bytes]]


def sliced(system: System, file: IoasidFile, cmd: int, arg: bytes, *, pid: int,
           uid: int | None, size: int = SLICE) -> Batch | None:
    """The batch request ``cmd``/``arg`` served in slices of ``size`` IDs (see the module), or
    ``None`` for a request that is served whole: not a batch, a batch of at most ``size`` IDs,
    or one whose argument the model would refuse (it then refuses it as one request)."""
    if cmd == uapi.IOASID_REQUEST_ALLOC_BATCH:
        if len(arg) < uapi.ALLOC_BATCH.size:
            return None
        argsz, flags, lo, hi, count = uapi.ALLOC_BATCH.unpack_from(arg)
        if flags or argsz < uapi.ALLOC_BATCH.size or not size < count <= uapi.IOASID_BATCH_MAX:
            return None
        return _alloc_in_slices(system, file, lo, hi, count, pid=pid, uid=uid, size=size)
    if cmd == uapi.IOASID_REQUEST_FREE_BATCH:
        if len(arg) < uapi.FREE_BATCH.size:
            return None
        argsz, flags, count = uapi.FREE_BATCH.unpack_from(arg)
        start = uapi.FREE_BATCH.size
        ids = arg[start:start + 4 * count]
        if flags or not size < count <= uapi.IOASID_BATCH_MAX or argsz < start + 4 * count \
                or len(ids) < 4 * count or len(set(_ids(ids))) < count:
            return None
        return _free_in_slices(system, file, cmd, arg, ids, pid=pid, uid=uid, size=size)
    return None


def _ids(data: bytes) -> array[int]:
    ids = array("I")
    ids.frombytes(data)
    return ids


def _free_request(ids: bytes | memoryview) -> bytes:
    count = len(ids) // 4
    return uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + 4 * count, 0, count) + ids


def _alloc_in_slices(system: System, file: IoasidFile, lo: int, hi: int, count: int, *,
                     pid: int, uid: int | None, size: int) -> Batch:
    ioctl = system.ioasid_ioctl
    made = bytearray()
    done = False
    try:
        left = count
        while left:
            n = min(size, left)
            request = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, lo, hi, n)
            made += ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, request, pid=pid, uid=uid)[1]
            left -= n
            if left:
                yield
        done = True
        return count, bytes(made)
    finally:
        if not done and made:
            _undo(system, file, made, pid=pid, uid=uid, size=size)


def _undo(system: System, file: IoasidFile, made: bytearray, *, pid: int, uid: int | None,
          size: int) -> None:
    """Free the IDs ``made`` of a batch that did not complete (by slices, without yielding)."""
    view = memoryview(made)
    for start in range(0, len(made), 4 * size):
        part = view[start:start + 4 * size]
        try:
            system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, _free_request(part),
                                pid=pid, uid=uid)
        except IoasidError:  # one freed meanwhile by another request: the rest one by one
            for (ioasid,) in uapi.FREE_ARG.iter_unpack(bytes(part)):
                with contextlib.suppress(IoasidError):
                    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE,
                                        uapi.FREE_ARG.pack(ioasid), pid=pid, uid=uid)


def _free_in_slices(system: System, file: IoasidFile, cmd: int, arg: bytes, ids: bytes, *,
                    pid: int, uid: int | None, size: int) -> Batch:
    view = memoryview(ids)
    count = len(ids) // 4
    step = 4 * size
    for start in range(0, len(ids), step):  # checked whole first, by slices
        if not system.ioasid_free_batch_ok(file, _free_request(view[start:start + step])):
            # refused as one request, before it frees anything (as it would have been whole)
            return system.ioasid_ioctl(file, cmd, arg, pid=pid, uid=uid)
        yield
    for start in range(0, len(ids), step):
        part = view[start:start + step]
        try:
            system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, _free_request(part),
                                pid=pid, uid=uid)
        except IoasidError:  # checked whole before: an ID freed meanwhile by the same process
            for (ioasid,) in uapi.FREE_ARG.iter_unpack(bytes(part)):
                with contextlib.suppress(IoasidError):
                    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE,
                                        uapi.FREE_ARG.pack(ioasid), pid=pid, uid=uid)
        if start + step < len(ids):
            yield
    return count, b""
