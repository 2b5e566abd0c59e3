"""The root cgroup's own limit (``[limits] root_max``): what the processes of the root cgroup
itself may hold, enforced by the controller whatever face the request comes through."""

from __future__ import annotations

from errno import EAGAIN, EINVAL

import pytest
from userapi.helpers import Changes, FakeProcesses

from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.snapshot import dump, load
from ioasidsd.system import System


@pytest.fixture
def system() -> tuple[System, FakeProcesses, Changes]:
    procs = FakeProcesses()
    changes = Changes()
    return System(profile("fixed"), processes=procs, on_change=changes), procs, changes


def alloc(s: System, f, lo: int = 1, hi: int = 1 << 19) -> int:
    return s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, lo, hi))[0]


def batch(s: System, f, count: int) -> tuple[int, bytes]:
    return s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC_BATCH,
                          uapi.ALLOC_BATCH.pack(20, 0, 1, 1 << 19, count))


def free(s: System, f, ioasid: int) -> None:
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(ioasid))


def test_without_a_limit_a_root_process_takes_every_free_ioasid() -> None:
    """The kernel's behaviour, and the default: the root has no limit, and nothing counts
    there."""
    procs = FakeProcesses()
    s = System(profile("fixed"), processes=procs)
    s.core.install_capacity(64)
    procs.add(10)
    f = s.ioasid_open(10)
    avail = s.core.capacity_avail
    assert batch(s, f, avail)[0] == avail and s.core.capacity_avail == 0
    assert s.cgroups.root.limit is None and s.cgroups.root.counter == 0


def test_a_root_process_is_held_to_root_max_and_others_are_not(system) -> None:
    s, procs, changes = system
    procs.add(10)
    procs.add(20)
    s.mkdir("/a")
    s.write_max("/a", "8")
    s.write_procs("/a", "20", writer_pid=1, writer_uid=0)
    s.set_root_max(3)
    root = s.cgroups.root
    assert changes.log[-1].kind == "limit" and changes.log[-1].cgroups == (root,)
    g = s.ioasid_open(20)
    assert batch(s, g, 8)[0] == 8
    with pytest.raises(IoasidError) as info:
        alloc(s, g)
    limit_errno, limit_level = info.value.errno, info.value.level
    assert limit_errno == EAGAIN and limit_level == "/a"
    f = s.ioasid_open(10)
    ids = [alloc(s, f) for _ in range(3)]
    assert root.counter == 3 and root.peak == 3
    avail = s.core.capacity_avail
    before = dump(s.core)
    with pytest.raises(IoasidError) as info:
        alloc(s, f)
    assert info.value.errno == EAGAIN and info.value.level == "/"
    refusal = changes.log[-1].refusal
    assert refusal is not None and refusal.errno == EAGAIN and refusal.level == "/"
    # a refused batch takes nothing: all or nothing
    with pytest.raises(IoasidError) as info:
        batch(s, f, 2)
    assert info.value.errno == limit_errno
    assert s.core.capacity_avail == avail and root.counter == 3
    after = dump(s.core)
    for snap in (before, after):  # only the refusals' events differ
        for cg in snap["cgroups"]:
            cg["events"] = cg["events_local"] = 0
    assert after == before
    # a process below the root is not counted against it: /a's own limit applied
    assert root.counter == 3 and s.cgroups.lookup("/a").counter == 8
    free(s, f, ids[0])
    assert root.counter == 2
    alloc(s, f)
    assert root.counter == 3 and root.peak == 3


def test_a_limit_set_later_counts_what_the_root_holds_already(system) -> None:
    """Setting the limit recounts the IOASIDs charged to the root; below that count it is
    accepted and refuses new charges; ``max`` stops counting."""
    s, procs, _ = system
    procs.add(10)
    f = s.ioasid_open(10)
    assert batch(s, f, 5)[0] == 5
    s.set_root_max(4)
    root = s.cgroups.root
    assert root.counter == 5
    with pytest.raises(IoasidError) as info:
        alloc(s, f)
    assert info.value.errno == EAGAIN
    s.set_root_max(None)
    assert root.limit is None and root.counter == 0
    alloc(s, f)
    with pytest.raises(IoasidError) as info:
        s.set_root_max(-1)
    assert info.value.errno == EINVAL and root.limit is None


def test_moving_a_process_out_of_the_root_takes_its_charges_along(system) -> None:
    s, procs, _ = system
    procs.add(10)
    s.mkdir("/a")
    s.write_max("/a", "max")
    s.set_root_max(2)
    f = s.ioasid_open(10)
    alloc(s, f)
    alloc(s, f)
    root = s.cgroups.root
    s.write_procs("/a", "10", writer_pid=1, writer_uid=0)
    assert root.counter == 0 and s.cgroups.lookup("/a").counter == 2
    alloc(s, f)  # charged to /a now
    s.write_procs("/", "10", writer_pid=1, writer_uid=0)
    assert root.counter == 3 and root.peak == 3  # over the limit, as current over max may be
    with pytest.raises(IoasidError):
        alloc(s, f)


def test_v4_holds_a_root_process_to_root_max_too() -> None:
    """The limit is the daemon's, outside the series: the ``v4`` profile has it as well (a
    refusal there reads as every ``v4`` allocation failure does, ``EINVAL``)."""
    procs = FakeProcesses()
    s = System(profile("v4"), processes=procs)
    procs.add(10)
    s.set_root_max(2)
    f = s.ioasid_open(10)
    alloc(s, f)
    alloc(s, f)
    with pytest.raises(IoasidError) as info:
        alloc(s, f)
    assert info.value.errno == EINVAL
    assert s.cgroups.root.counter == 2


def test_the_root_limit_and_count_survive_a_snapshot(system) -> None:
    s, procs, _ = system
    procs.add(10)
    s.set_root_max(6)
    f = s.ioasid_open(10)
    count, out = batch(s, f, 4)
    assert count == 4
    free_batch = uapi.FREE_BATCH.pack(12 + 4, 0, 1) + out[:4]
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_FREE_BATCH, free_batch)
    snap = dump(s.core)
    again = System(s.knobs, processes=procs)
    load(snap, again.core)
    assert again.cgroups.root.limit == 6 and again.cgroups.root.counter == 3
    assert dump(again.core) == snap


def test_whole_batches_count_at_the_root_both_ways(system) -> None:
    """A batch that fits is charged at once (the model's bulk path) and counted at the root; a
    batch that would pass the limit is refused whole; a batch release uncounts them all."""
    s, procs, _ = system
    procs.add(10)
    s.set_root_max(5)
    f = s.ioasid_open(10)
    count, out = batch(s, f, 3)
    root = s.cgroups.root
    assert count == 3 and root.counter == 3 and root.peak == 3
    with pytest.raises(IoasidError) as info:
        batch(s, f, 3)
    assert info.value.errno == EAGAIN and root.counter == 3 and len(s.core) == 3
    free = uapi.FREE_BATCH.pack(12 + len(out), 0, count) + out
    assert s.ioasid_ioctl(f, uapi.IOASID_REQUEST_FREE_BATCH, free)[0] == 3
    assert root.counter == 0 and len(s.core) == 0
    assert batch(s, f, 5)[0] == 5 and root.counter == 5
