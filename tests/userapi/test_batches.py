"""Large batches served in slices: other clients are served between the slices (checked by the
order of the changes, not by time), and a batch is still all or nothing."""

from __future__ import annotations

import struct
from errno import EAGAIN, ENOENT

import pytest

from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change
from ioasidsd.model.snapshot import dump
from ioasidsd.userapi import protocol
from ioasidsd.userapi.batches import SLICE, sliced

from .helpers import FakeProcesses, Served
from .test_server import RawConn

OTHER = (500_000, 600_000)  # the range the small client allocates from


def frame(cmd: int, arg: bytes) -> bytes:
    return protocol.REQUEST.pack(cmd, len(arg)) + arg


def small_alloc() -> bytes:
    return frame(uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, *OTHER))


def test_a_small_request_is_served_before_the_next_slice(served_fixed: Served) -> None:
    """While a client's 65,536-ID batch runs, another client's request, sent during one slice,
    is served right after that slice, before the next one: it waits for one slice, not for
    the batch. The batch's own client gets every ID, in one reply."""
    served = served_fixed
    system = served.system
    other = RawConn(served)
    assert other.reply() == (0, b"")  # the greeting
    order: list[str] = []
    sent: list[int] = []
    record = system.on_change

    def on_change(change: Change) -> None:
        record(change)
        ids = change.ids
        if len(ids) == 1 and OTHER[0] <= ids[0] <= OTHER[1]:
            order.append("small")
        elif len(ids) == SLICE:
            order.append("slice")
            if len(sent) < 10 and len(order) > 1:  # during slices 2..11: one small request
                other.sock.send(small_alloc())
                sent.append(len(order))
    system.on_change = on_change
    a = served.agent()
    a.ok("open")
    ids = a.ok(f"batch {uapi.IOASID_BATCH_MAX}")
    assert len(ids) == uapi.IOASID_BATCH_MAX and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert order.count("slice") == uapi.IOASID_BATCH_MAX // SLICE
    assert order.count("small") == len(sent) == 10
    for at in sent:  # sent during the slice at order[at - 1]: served before the next one
        assert order[at - 1] == "slice" and order[at] == "small", (at, order[:30])
    for _ in sent:
        ret, _ = other.reply()
        assert OTHER[0] <= ret <= OTHER[1]
    other.close()


def test_requests_behind_a_batch_on_its_connection_keep_their_order(served_fixed: Served):
    """A batch and two small requests sent at once: three replies, in order, the batch's
    whole."""
    conn = RawConn(served_fixed)
    assert conn.reply() == (0, b"")
    count = 3 * SLICE + 5
    conn.send(frame(uapi.IOASID_REQUEST_ALLOC_BATCH,
                    uapi.ALLOC_BATCH.pack(20, 0, 1, 1 << 19, count))
              + frame(uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, 1, 1 << 19))
              + frame(uapi.IOASID_GET_API_VERSION, b""))
    ret, out = conn.reply()
    assert ret == count and struct.unpack(f"={count}I", out) == tuple(range(1, count + 1))
    assert conn.reply() == (count + 1, b"")
    assert conn.reply()[0] == uapi.IOASID_API_VERSION
    conn.close()


def test_a_client_that_reads_late_gets_every_reply_in_order(served_fixed: Served) -> None:
    """Two full batches and a small request sent at once, the replies read only after all were
    sent: the first batch's reply (256 KiB) does not fit in the socket and waits while the
    second batch is served; all three come, whole and in order."""
    conn = RawConn(served_fixed)
    assert conn.reply() == (0, b"")
    full = uapi.IOASID_BATCH_MAX
    batch = frame(uapi.IOASID_REQUEST_ALLOC_BATCH, uapi.ALLOC_BATCH.pack(20, 0, 1, 1 << 19, full))
    conn.send(batch + batch
              + frame(uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, 1, 1 << 19)))
    ret, out = conn.reply()
    assert ret == full and struct.unpack(f"={full}I", out) == tuple(range(1, full + 1))
    ret, out = conn.reply()
    assert ret == full and struct.unpack(f"={full}I", out) == tuple(range(full + 1, 2 * full + 1))
    assert conn.reply() == (2 * full + 1, b"")
    conn.close()


def test_a_batch_refused_in_a_later_slice_changes_nothing(served_fixed: Served) -> None:
    """A limit of 5,000 and a batch of 6,000: the first slices are made, the sixth is refused,
    and those before it are freed again: the reply is the refusal, and the model is as it was
    (but for the refusal's events and the peak the slices reached, as for one request)."""
    served = served_fixed
    served.cgroup("/a", 5000)
    a = served.agent("/a")
    a.ok("open")
    a.ok("alloc")
    before = dump(served.system.core)
    assert a.err("batch 6000") == EAGAIN
    after = dump(served.system.core)
    for snap in (before, after):
        for cg in snap["cgroups"]:
            cg["events"] = cg["events_local"] = cg["peak"] = 0
    assert after == before
    assert len(a.ok("batch 4999")) == 4999


def test_a_free_batch_that_would_be_refused_frees_nothing(served_fixed: Served) -> None:
    served = served_fixed
    a = served.agent()
    a.ok("open")
    ids = a.ok(f"batch {4 * SLICE}")
    assert a.err("freebatch " + " ".join(map(str, [*ids, 999_999]))) == ENOENT
    assert len(served.system.core) == len(ids)
    assert a.ok("freebatch " + " ".join(map(str, ids))) == [len(ids)]
    assert len(served.system.core) == 0


def test_a_batch_closed_before_its_end_frees_what_it_made() -> None:
    """The generator of a sliced batch, closed after two slices (its connection went away):
    the IDs of those slices are freed; a free batch runs to its end by slices."""
    from ioasidsd.model import profile
    from ioasidsd.system import System

    procs = FakeProcesses()
    procs.add(10)
    system = System(profile("fixed"), processes=procs)
    file = system.ioasid_open(10)
    arg = uapi.ALLOC_BATCH.pack(20, 0, 1, 1 << 19, 5 * SLICE)
    batch = sliced(system, file, uapi.IOASID_REQUEST_ALLOC_BATCH, arg, pid=10, uid=0)
    assert batch is not None
    next(batch)
    next(batch)
    assert len(system.core) == 2 * SLICE
    batch.close()
    assert len(system.core) == 0
    assert sliced(system, file, uapi.IOASID_REQUEST_ALLOC_BATCH,
                  uapi.ALLOC_BATCH.pack(20, 0, 1, 1 << 19, SLICE), pid=10, uid=0) is None
    batch = sliced(system, file, uapi.IOASID_REQUEST_ALLOC_BATCH, arg, pid=10, uid=0)
    assert batch is not None
    with pytest.raises(StopIteration) as done:
        while True:
            next(batch)
    count, out = done.value.value
    assert count == 5 * SLICE and len(out) == 4 * count
    free = uapi.FREE_BATCH.pack(12 + len(out), 0, count) + out
    batch = sliced(system, file, uapi.IOASID_REQUEST_FREE_BATCH, free, pid=10, uid=0)
    assert batch is not None
    slices = 0
    with pytest.raises(StopIteration) as done:
        while True:
            next(batch)
            slices += 1
            assert len(system.core) == max(0, count - max(0, slices - 5) * SLICE)
    assert done.value.value == (count, b"") and len(system.core) == 0


