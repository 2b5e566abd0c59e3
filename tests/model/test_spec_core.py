"""Behaviours 1-62 of ``docs/behaviours.md``: the IOASID core.

One test per behaviour, marked ``spec(N)``. A behaviour that is one of the series' defects
("quirk N", numbered as in ``docs/profiles.md``) runs in the ``v4`` profile (the ``fixed`` side
is in ``test_knobs.py``); the others run in ``fixed`` and, where both profiles share them, in
``v4`` too.

Where the kernel returns ``INVALID_IOASID`` or only logs, the model raises an ``IoasidError``
whose errno names the cause (``core.py``'s documented contract); tests assert that contract and say
so. "Changes nothing" is checked against a snapshot of everything a face could observe.
"""

from __future__ import annotations

import threading
from errno import EACCES, EBUSY, EDQUOT, EEXIST, EINVAL, ENOENT, ENOSPC, EPERM

import pytest

from ioasidsd.model import (
    INVALID_IOASID,
    NOTIFY_DONE,
    PCI_PASID_MAX,
    IoasidCore,
    IoasidNotify,
    IoasidPrio,
    IoasidSet,
    IoasidSetType,
    IoasidState,
    NotifierBlock,
    OrderedWorkQueue,
    Work,
    profile,
)

from .helpers import MM, NULL, Recorder, World, profiles, refused, snapshot

ALLOC, FREE, BIND, UNBIND = (IoasidNotify.ALLOC, IoasidNotify.FREE, IoasidNotify.BIND,
                             IoasidNotify.UNBIND)


# --------------------------------------------------------------------------- capacity and sets


@pytest.mark.spec(1)
@profiles()
def test_01_boot_capacity_is_pci_pasid_max(world: World) -> None:
    assert PCI_PASID_MAX == 0x100000 == 1_048_576
    assert (world.core.capacity, world.core.capacity_avail) == (0x100000, 0x100000)


@pytest.mark.spec(2)
@profiles()
def test_02_install_capacity_from_default(world: World) -> None:
    world.core.install_capacity(4096)
    assert (world.core.capacity, world.core.capacity_avail) == (4096, 4096)


@pytest.mark.spec(3)
@profiles()
def test_03_second_install_is_ignored(world: World, prof: str) -> None:
    """The kernel logs "already set" and changes nothing. ``v4`` does exactly that (a warning
    in ``core.messages``); ``fixed`` allows one install and refuses a second with ``EBUSY``
    (its documented contract), also changing nothing."""
    core = world.core
    core.install_capacity(4096)
    core.reserve_capacity(96)
    if prof == "v4":
        before = snapshot(world)
        core.install_capacity(8192)
        assert snapshot(world) == before
        assert any("already set" in m for m in core.messages)
    else:
        with refused(EBUSY, world):
            core.install_capacity(8192)
    assert (core.capacity, core.capacity_avail) == (4096, 4000)


@pytest.mark.spec(4)
@profiles()
def test_04_reserve_more_than_available(world: World) -> None:
    world.core.install_capacity(100)
    world.core.reserve_capacity(60)
    with refused(ENOSPC, world):
        world.core.reserve_capacity(41)
    assert world.core.capacity_avail == 40


@pytest.mark.spec(5)
@profiles()
def test_05_reserve_zero_takes_everything(world: World) -> None:
    world.core.install_capacity(100)
    world.core.reserve_capacity(30)
    assert world.core.reserve_capacity(0) == 70
    assert world.core.capacity_avail == 0
    assert world.core.reserve_capacity(0) == 0  # nothing left: zero reserved, no error


@pytest.mark.spec(6)
@profiles()
def test_06_reserve_returns_the_amount_reserved(world: World) -> None:
    world.core.install_capacity(100)
    assert world.core.reserve_capacity(30) == 30  # not the remainder (70)
    assert world.core.reserve_capacity(70) == 70
    assert world.core.capacity_avail == 0


@pytest.mark.spec(7)
@profiles()
def test_07_cancel_returns_new_available(world: World) -> None:
    core = world.core
    core.install_capacity(100)
    core.reserve_capacity(50)
    assert core.cancel_capacity(20) == 70
    with refused(EINVAL, world):
        core.cancel_capacity(31)  # 70 + 31 > 100
    assert core.cancel_capacity(30) == 100


@pytest.mark.spec(8)
@profiles()
def test_08_set_type_out_of_range(world: World) -> None:
    for bad in (IoasidSetType.NR, 4, 99):
        with refused(EINVAL, world):
            world.core.set_alloc(None, 1, bad)


@pytest.mark.spec(9)
@profiles()
def test_09_mm_set_needs_a_token(world: World) -> None:
    with refused(EINVAL, world):
        world.core.set_alloc(None, 1, MM)


@pytest.mark.spec(10)
@profiles()
def test_10_null_set_takes_no_token(world: World) -> None:
    token = world.spawn().mm
    with refused(EINVAL, world):
        world.core.set_alloc(token, 1, NULL)


@pytest.mark.spec(11)
@profiles()
def test_11_one_mm_set_per_mm(world: World) -> None:
    proc = world.spawn()
    world.mm_set(proc, 4)
    with refused(EEXIST, world):
        world.mm_set(proc, 4)
    world.mm_set(world.spawn(), 4)  # another mm is fine


@pytest.mark.spec(12)
@profiles()
def test_12_set_quota_above_available(world: World) -> None:
    world.core.install_capacity(100)
    with refused(ENOSPC, world):
        world.null_set(101)
    world.null_set(100)


@pytest.mark.spec(13)
@profiles("v4")
def test_13_quota_zero_takes_all_available(world: World) -> None:
    """Quirk 2 (``fixed``: quota 0 reserves nothing; see ``test_knobs.py``)."""
    world.core.install_capacity(100)
    world.null_set(30)
    s = world.null_set(0)
    assert s.quota == 70
    assert world.core.capacity_avail == 0


@pytest.mark.spec(14)
@profiles()
def test_14_set_quota_is_subtracted(world: World) -> None:
    world.core.install_capacity(100)
    world.null_set(10)
    assert world.core.capacity_avail == 90
    world.mm_set(world.spawn(), 25)
    assert world.core.capacity_avail == 65


@pytest.mark.spec(15)
@profiles()
def test_15_set_ids_lowest_free_first(world: World, prof: str) -> None:
    """Lowest free index first, from 0, in both profiles. The bound of the index range by the
    available capacity (before subtraction) is part of quirk 2: ``v4`` reproduces it (ENOSPC
    once no index in [0, avail] is free); ``fixed`` has no such bound."""
    core = world.core
    core.install_capacity(4)
    a = world.null_set(2)  # index range [0, 4]
    b = world.null_set(2)  # index range [0, 2]
    assert (a.id, b.id) == (0, 1)
    if prof == "v4":
        with refused(ENOSPC, world):
            world.null_set(0)  # quota 0 -> avail (0); index range [0, 0], 0 is taken
        core.set_free(a)
        c = world.null_set(0)
        assert c.id == 0  # the freed index, the only one in [0, 0]
    else:
        c = world.null_set(0)
        d = world.null_set(0)
        assert (c.id, d.id) == (2, 3)  # no bound: indexes beyond the available capacity
        core.set_free(a)
        assert world.null_set(0).id == 0  # the freed index is reused first


@pytest.mark.spec(16)
@profiles()
def test_16_set_free_busy_empty_stale(world: World) -> None:
    """``ioasid_set_free`` returns 0; the model returns ``True`` ("destroyed now")."""
    core = world.core
    s = world.null_set(4)
    ioasid = core.alloc(s, 1, 100)
    with refused(EBUSY, world):
        core.set_free(s)
    empty = world.null_set(4)
    assert core.set_free(empty) is True
    assert not core.set_valid(empty)
    with refused(EINVAL, world):
        core.set_free(empty)  # stale
    with refused(EINVAL, world):
        core.set_free(IoasidSet(7, None, 0, NULL))  # never registered
    core.put(s, ioasid)


@pytest.mark.spec(17)
@profiles("v4")
def test_17_destroyed_sets_keep_their_quota(world: World) -> None:
    """Quirk 1: neither explicit nor automatic destruction returns the quota."""
    core = world.core
    core.install_capacity(100)
    explicit = world.null_set(10)
    automatic = world.null_set(20)
    assert core.capacity_avail == 70
    core.set_free(explicit)
    ioasid = core.alloc(automatic, 1, 10)
    core.put(automatic, ioasid)  # last ID reclaimed: the set auto-destroys
    assert not core.set_valid(explicit) and not core.set_valid(automatic)
    assert core.capacity_avail == 70


@pytest.mark.spec(18)
@profiles("v4")
def test_18_last_reclaim_destroys_the_set(world: World) -> None:
    """Quirk 3 (the series' authors meant it; it is listed as a defect all the same).
    ``fixed`` keeps a set until ``set_free`` (knob ``set_lifetime``)."""
    core = world.core
    proc = world.spawn()
    s = world.mm_set(proc)
    a = core.alloc(s, 1, 10, task=proc)
    b = core.alloc(s, 1, 10, task=proc)
    core.free(s, a, task=proc)
    assert core.set_valid(s)  # one left
    core.free(s, b, task=proc)
    assert not core.set_valid(s)
    assert core.find_mm_set(proc.mm) is None
    with refused(EINVAL):
        core.alloc(s, 1, 10, task=proc)  # the creator's dangling pointer


@pytest.mark.spec(19)
@profiles()
def test_19_empty_set_lives_until_freed(world: World) -> None:
    core = world.core
    idle = world.null_set(4)
    busy = world.null_set(4)
    core.alloc(busy, 1, 10)  # keeps the busy set alive in v4
    for _ in range(3):
        core.put(busy, core.alloc(busy, 1, 10))
    assert core.set_valid(idle)
    assert core.set_free(idle)
    assert not core.set_valid(idle)


@pytest.mark.spec(20)
@profiles()
def test_20_find_mm_set(world: World) -> None:
    proc, other = world.spawn(), world.spawn()
    world.null_set(1)
    s = world.mm_set(proc)
    assert world.core.find_mm_set(proc.mm) is s
    assert world.core.find_mm_set(other.mm) is None
    assert world.core.find_mm_set(None) is None


# --------------------------------------------------------------------------- allocation


@pytest.mark.spec(21)
@profiles()
def test_21_alloc_on_null_or_destroyed_set(world: World) -> None:
    """The kernel returns ``INVALID_IOASID``; the model raises ``EINVAL``."""
    with refused(EINVAL, world):
        world.core.alloc(None, 1, 10)
    s = world.null_set(4)
    world.core.set_free(s)
    with refused(EINVAL, world):
        world.core.alloc(s, 1, 10)


@pytest.mark.spec(22)
@profiles()
def test_22_alloc_lowest_free_in_range(world: World) -> None:
    """The kernel returns ``INVALID_IOASID`` for a full range; the model raises ``ENOSPC``."""
    core = world.core
    s = world.null_set(10)
    assert [core.alloc(s, 10, 20) for _ in range(3)] == [10, 11, 12]
    core.put(s, 11)
    assert core.alloc(s, 10, 20) == 11
    assert core.alloc(s, 5, 20) == 5
    assert core.alloc(s, 20, 20) == 20  # both ends inclusive
    with refused(ENOSPC, world):
        core.alloc(s, 20, 20)


@pytest.mark.spec(23)
@profiles()
def test_23_alloc_beyond_set_quota(world: World) -> None:
    """The kernel returns ``INVALID_IOASID``; the model raises ``EDQUOT``."""
    core = world.core
    s = world.null_set(2)
    core.alloc(s, 1, 100)
    core.alloc(s, 1, 100)
    with refused(EDQUOT, world):
        core.alloc(s, 1, 100)
    assert s.nr_ioasids == 2


@pytest.mark.spec(24)
@profiles()
def test_24_min_zero_can_return_zero(world: World) -> None:
    s = world.null_set(2)
    assert world.core.alloc(s, 0, 10) == 0


@pytest.mark.spec(25)
@profiles()
def test_25_new_ioasid_record(world: World) -> None:
    core = world.core
    s = world.null_set(2)
    ioasid = core.alloc(s, 1, 10, "private")
    data = core.data(ioasid)
    assert (data.refs, data.state, data.spid) == (1, IoasidState.IDLE, INVALID_IOASID)
    assert data.set is s and data.private == "private"
    assert ioasid in s.xa and core.set_members(s) == [data] and s.nr_ioasids == 1
    seen: list[int] = []
    core.set_for_each_ioasid(s, lambda i, _: seen.append(i))
    assert seen == [ioasid]


@pytest.mark.spec(26)
@profiles()
def test_26_alloc_notifies_the_set_chain_once(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(2)
    core.register_notifier(None, rec.block("global"))
    core.register_notifier(s, rec.block("set"))
    ioasid = core.alloc(s, 1, 10, "p")
    assert [(n, e) for n, e, _ in rec.seen] == [("set", ALLOC)]
    args = rec.seen[0][2]
    assert (args.id, args.spid, args.set, args.pdata) == (ioasid, INVALID_IOASID, s, "p")
    assert int(ALLOC) == 1


@pytest.mark.spec(27)
@profiles()
def test_27_get_unknown(world: World) -> None:
    with refused(EINVAL, world):
        world.core.get(None, 1234)


@pytest.mark.spec(28)
@profiles()
def test_28_get_through_another_set(world: World) -> None:
    a, b = world.null_set(2), world.null_set(2)
    ioasid = world.core.alloc(a, 1, 10)
    with refused(EACCES, world):
        world.core.get(b, ioasid)
    world.core.get(a, ioasid)
    world.core.get(None, ioasid)
    assert world.core.data(ioasid).refs == 3


@pytest.mark.spec(29)
@profiles()
def test_29_get_free_pending(world: World) -> None:
    core = world.core
    s = world.null_set(2)
    ioasid = core.alloc(s, 1, 10)
    core.get(s, ioasid)
    core.free(s, ioasid)
    assert core.data(ioasid).state == IoasidState.FREE_PENDING
    with refused(EBUSY, world):
        core.get(s, ioasid)
    with refused(EBUSY, world):
        core.get(None, ioasid)


@pytest.mark.spec(30)
@profiles()
def test_30_put_last_reference_reclaims_silently(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(2)
    keep = core.alloc(s, 1, 10)  # keeps the v4 set alive
    ioasid = core.alloc(s, 1, 10)
    core.register_notifier(None, rec.block("global"))
    core.register_notifier(s, rec.block("set"))
    assert core.put(s, ioasid) is True
    assert ioasid not in core
    assert rec.seen == []
    core.get(None, keep)
    assert core.put(None, keep) is False  # not the last reference
    assert keep in core


@pytest.mark.spec(31)
@profiles()
def test_31_put_through_another_set(world: World) -> None:
    a, b = world.null_set(2), world.null_set(2)
    ioasid = world.core.alloc(a, 1, 10)
    before = snapshot(world)
    assert world.core.put(b, ioasid) is False
    assert world.core.put(None, 999) is False  # unknown: also False
    assert snapshot(world) == before


@pytest.mark.spec(32)
@profiles()
def test_32_free_single_reference_reclaims_silently(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(2)
    core.register_notifier(None, rec.block("global"))
    core.register_notifier(s, rec.block("set"))
    ioasid = core.alloc(s, 1, 10)
    rec.clear()
    core.free(s, ioasid)
    assert ioasid not in core
    assert rec.seen == []


@pytest.mark.spec(33)
@profiles()
def test_33_free_referenced_goes_pending_global_first(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(2)
    ioasid = core.alloc(s, 1, 10, "p")
    core.get(None, ioasid)
    core.get(None, ioasid)
    core.register_notifier(s, rec.block("set", IoasidPrio.CPU))  # priority is per chain
    core.register_notifier(None, rec.block("global", IoasidPrio.LAST))
    core.free(s, ioasid)
    data = core.data(ioasid)
    assert (data.state, data.refs) == (IoasidState.FREE_PENDING, 2)
    assert [(n, e) for n, e, _ in rec.seen] == [("global", FREE), ("set", FREE)]
    assert all(a.id == ioasid and a.pdata == "p" and a.set is s for _, _, a in rec.seen)
    assert int(FREE) == 2


@pytest.mark.spec(34)
@profiles()
def test_34_second_free_does_nothing(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(2)
    ioasid = core.alloc(s, 1, 10)
    core.get(None, ioasid)
    core.get(None, ioasid)
    core.free(s, ioasid)
    core.register_notifier(None, rec.block("global"))
    core.register_notifier(s, rec.block("set"))
    before = snapshot(world)
    core.free(s, ioasid)
    assert snapshot(world) == before
    assert rec.seen == []
    assert core.data(ioasid).refs == 2


@pytest.mark.spec(35)
@profiles("v4")
def test_35_free_with_null_set_never_frees(world: World, rec: Recorder) -> None:
    """Quirk 12. The kernel warns and returns; the model raises ``EACCES``. (``fixed``:
    ``None`` skips the ownership check, as for get/put; see ``test_knobs.py``.)"""
    core = world.core
    s = world.null_set(2)
    ioasid = core.alloc(s, 1, 10)
    core.register_notifier(None, rec.block("global"))
    with refused(EACCES, world):
        core.free(None, ioasid)
    assert rec.seen == []


@pytest.mark.spec(36)
@profiles()
def test_36_free_through_another_set(world: World) -> None:
    """The kernel logs and does nothing; the model raises ``EACCES`` and changes nothing. An
    unknown ID gives ``ENOENT`` (the kernel's rate-limited log)."""
    a, b = world.null_set(2), world.null_set(2)
    ioasid = world.core.alloc(a, 1, 10)
    world.core.get(None, ioasid)
    with refused(EACCES, world):
        world.core.free(b, ioasid)
    with refused(ENOENT, world):
        world.core.free(a, 999)


@pytest.mark.spec(37)
@profiles()
def test_37_pending_reclaimed_by_last_put(world: World) -> None:
    core = world.core
    s = world.null_set(2)
    ioasid = core.alloc(s, 1, 10)
    core.get(None, ioasid)
    core.get(None, ioasid)
    core.free(s, ioasid)
    assert core.put(None, ioasid) is False
    assert core.data(ioasid).state == IoasidState.FREE_PENDING
    assert core.put(None, ioasid) is True
    assert ioasid not in core


@pytest.mark.spec(38)
@profiles()
def test_38_reclaim_counts_down_and_frees_the_value(world: World) -> None:
    core = world.core
    s = world.null_set(4)
    a, b, c = (core.alloc(s, 1, 10) for _ in range(3))
    assert s.nr_ioasids == 3
    core.free(s, b)
    assert s.nr_ioasids == 2 and b not in s.xa
    assert core.alloc(s, 1, 10) == b  # the value is free again, and the lowest
    assert (a, c) == (1, 3)


@pytest.mark.spec(39)
@profiles()
def test_39_free_all_in_set(world: World, prof: str, rec: Recorder) -> None:
    """Every ID of the set is freed in ascending order; referenced ones go FREE_PENDING (with
    FREE events) and still count. Quirk 14 (``v4``): those also vanish from the set's index, so
    iteration no longer shows them; ``fixed`` keeps them listed until they are reclaimed."""
    core = world.core
    s = world.null_set(8)
    ids = [core.alloc(s, 1, 100) for _ in range(4)]
    core.get(None, ids[1])
    core.get(None, ids[3])
    core.register_notifier(s, rec.block("set"))
    core.free_all_in_set(s)
    assert [(e, a.id) for _, e, a in rec.seen] == [(FREE, ids[1]), (FREE, ids[3])]
    assert ids[0] not in core and ids[2] not in core
    assert all(core.data(i).state == IoasidState.FREE_PENDING for i in (ids[1], ids[3]))
    assert s.nr_ioasids == 2
    listed: list[int] = []
    core.set_for_each_ioasid(s, lambda i, _: listed.append(i))
    assert listed == ([] if prof == "v4" else [ids[1], ids[3]])
    core.put(None, ids[1])
    core.put(None, ids[3])
    assert s.nr_ioasids == 0


@pytest.mark.spec(40)
@profiles()
def test_40_get_if_owned(world: World) -> None:
    core = world.core
    owner, stranger = world.spawn(), world.spawn()
    mm = world.mm_set(owner, 4)
    kernel = world.null_set(2)
    ioasid = core.alloc(mm, 1, 10, task=owner)
    host = core.alloc(kernel, 1, 10)
    with refused(ENOENT, world):
        core.get_if_owned(999, owner)
    with refused(EINVAL, world):
        core.get_if_owned(host, owner)
    with refused(EPERM, world):
        core.get_if_owned(ioasid, stranger)
    core.get_if_owned(ioasid, owner)
    assert core.data(ioasid).refs == 2
    core.free(mm, ioasid, task=owner)
    with refused(EBUSY, world):
        core.get_if_owned(ioasid, owner)


@pytest.mark.spec(41)
@profiles()
def test_41_find(world: World) -> None:
    """The kernel returns error pointers; the model raises ``ENOENT`` / ``EACCES``."""
    core = world.core
    a, b = world.null_set(2), world.null_set(2)
    ioasid = core.alloc(a, 1, 10, "p")
    with refused(ENOENT):
        core.find(a, 999)
    with refused(EACCES):
        core.find(b, ioasid)
    assert core.find(a, ioasid) == "p" and core.find(None, ioasid) == "p"
    assert core.find(a, ioasid, lambda p: False) is None


@pytest.mark.spec(42)
@profiles()
def test_42_find_set(world: World) -> None:
    """The kernel returns an error pointer; the model raises ``ENOENT``."""
    s = world.null_set(2)
    ioasid = world.core.alloc(s, 1, 10)
    assert world.core.find_set(ioasid) is s
    with refused(ENOENT):
        world.core.find_set(999)


# --------------------------------------------------------------------------- private data, SPIDs


@pytest.mark.spec(43)
@profiles()
def test_43_attach_data_over_data(world: World) -> None:
    s = world.null_set(2)
    ioasid = world.core.alloc(s, 1, 10)
    world.core.attach_data(ioasid, None)  # NULL over NULL is fine
    world.core.attach_data(ioasid, "first")
    with refused(EBUSY, world):
        world.core.attach_data(ioasid, "second")
    assert world.core.find(s, ioasid) == "first"


@pytest.mark.spec(44)
@profiles()
def test_44_attach_data_unknown(world: World) -> None:
    with refused(ENOENT, world):
        world.core.attach_data(999, "p")


@pytest.mark.spec(45)
@profiles()
def test_45_detach_data_then_attach(world: World) -> None:
    s = world.null_set(2)
    ioasid = world.core.alloc(s, 1, 10, "old")
    world.core.detach_data(ioasid)
    assert world.core.find(s, ioasid) is None
    world.core.attach_data(ioasid, "new")
    assert world.core.find(s, ioasid) == "new"


@pytest.mark.spec(46)
@profiles()
def test_46_attach_invalid_spid(world: World) -> None:
    s = world.null_set(2)
    ioasid = world.core.alloc(s, 1, 10)
    with refused(EINVAL, world):
        world.core.attach_spid(ioasid, INVALID_IOASID)


@pytest.mark.spec(47)
@profiles()
def test_47_attach_spid_unknown(world: World) -> None:
    with refused(ENOENT, world):
        world.core.attach_spid(999, 5)


@pytest.mark.spec(48)
@profiles()
def test_48_spid_unique_within_a_set(world: World) -> None:
    core = world.core
    s = world.null_set(4)
    a, b = core.alloc(s, 1, 10), core.alloc(s, 1, 10)
    core.attach_spid(a, 101)
    with refused(EINVAL, world):
        core.attach_spid(b, 101)
    with refused(EINVAL, world):
        core.attach_spid(a, 101)  # the same ID again
    core.attach_spid(a, 102)  # another SPID for the same ID is allowed
    assert core.data(a).spid == 102


@pytest.mark.spec(49)
@profiles()
def test_49_same_spid_in_two_sets(world: World) -> None:
    core = world.core
    vm1, vm2 = world.null_set(4), world.null_set(4)
    h1, h2 = core.alloc(vm1, 200, 300), core.alloc(vm2, 200, 300)
    core.attach_spid(h1, 101)
    core.attach_spid(h2, 101)
    assert core.find_by_spid(vm1, 101) == h1
    assert core.find_by_spid(vm2, 101) == h2


@pytest.mark.spec(50)
@profiles()
def test_50_attach_spid_emits_bind(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(4)
    ioasid = core.alloc(s, 1, 10, "pdata")
    core.register_notifier(None, rec.block("global"))
    core.register_notifier(s, rec.block("set"))
    core.attach_spid(ioasid, 101)
    assert [(n, e) for n, e, _ in rec.seen] == [("set", BIND)]
    args = rec.seen[0][2]
    assert (args.id, args.spid, args.set, args.pdata) == (ioasid, 101, s, "pdata")
    assert int(BIND) == 3


@pytest.mark.spec(51)
@profiles()
def test_51_detach_spid_emits_unbind_first(world: World) -> None:
    core = world.core
    s = world.null_set(4)
    ioasid = core.alloc(s, 1, 10)
    core.attach_spid(ioasid, 101)
    seen: list[tuple[IoasidNotify, int, int]] = []

    def callback(nb, event, args):  # type: ignore[no-untyped-def]
        seen.append((event, args.spid, core.data(args.id).spid))
        return NOTIFY_DONE

    core.register_notifier(s, NotifierBlock(callback))
    core.detach_spid(ioasid)
    assert seen == [(UNBIND, 101, 101)]  # emitted while the SPID is still attached
    assert core.data(ioasid).spid == INVALID_IOASID
    assert int(UNBIND) == 4


@pytest.mark.spec(52)
@profiles()
def test_52_detach_without_spid(world: World, rec: Recorder) -> None:
    """The kernel logs an error and emits nothing; the model also raises ``ENOENT``."""
    s = world.null_set(4)
    ioasid = world.core.alloc(s, 1, 10)
    world.core.register_notifier(s, rec.block("set"))
    with refused(ENOENT, world):
        world.core.detach_spid(ioasid)
    assert rec.seen == []


@pytest.mark.spec(53)
@profiles()
def test_53_find_by_spid(world: World, prof: str) -> None:
    """Lookup and ``get=True`` on a live ID in both profiles. Quirk 13 (``v4``): ``get=True``
    also takes a reference on a FREE_PENDING ID; ``fixed`` refuses that with ``EBUSY``."""
    core = world.core
    s = world.null_set(4)
    ioasid = core.alloc(s, 1, 10)
    core.attach_spid(ioasid, 7)
    assert core.find_by_spid(s, 7) == ioasid
    assert core.find_by_spid(s, 8) == INVALID_IOASID
    assert core.data(ioasid).refs == 1
    assert core.find_by_spid(s, 7, get=True) == ioasid
    assert core.data(ioasid).refs == 2
    core.free(s, ioasid)  # FREE_PENDING, refs 1
    if prof == "v4":
        assert core.find_by_spid(s, 7, get=True) == ioasid
        assert core.data(ioasid).refs == 2
    else:
        with refused(EBUSY, world):
            core.find_by_spid(s, 7, get=True)


# --------------------------------------------------------------------------- notifiers, work queue


@pytest.mark.spec(54)
@profiles()
def test_54_register_global_or_per_set(world: World, rec: Recorder) -> None:
    core = world.core
    a, b = world.null_set(4), world.null_set(4)
    core.register_notifier(None, rec.block("global"))
    core.register_notifier(a, rec.block("a"))
    in_b = core.alloc(b, 1, 10)
    core.get(None, in_b)
    core.free(b, in_b)  # FREE: global then b's chain (no subscriber)
    core.alloc(a, 1, 10)  # ALLOC: a's chain only
    assert [(n, e) for n, e, _ in rec.seen] == [("global", FREE), ("a", ALLOC)]


@pytest.mark.spec(55)
@profiles()
def test_55_priority_order(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(4)
    for prio in (IoasidPrio.LAST, IoasidPrio.DEVICE, IoasidPrio.CPU, IoasidPrio.IOMMU):
        core.register_notifier(s, rec.block(prio.name, prio))
    core.alloc(s, 1, 10)
    assert rec.names() == ["CPU", "IOMMU", "DEVICE", "LAST"]
    assert [int(p) for p in (IoasidPrio.CPU, IoasidPrio.IOMMU, IoasidPrio.DEVICE,
                             IoasidPrio.LAST)] == [3, 2, 1, 0]


@pytest.mark.spec(56)
@profiles()
def test_56_equal_priority_in_registration_order(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(4)
    for name in ("first", "second", "third"):
        core.register_notifier(s, rec.block(name, IoasidPrio.IOMMU))
    core.register_notifier(s, rec.block("cpu", IoasidPrio.CPU))
    core.alloc(s, 1, 10)
    assert rec.names() == ["cpu", "first", "second", "third"]


@pytest.mark.spec(57)
@profiles()
def test_57_alloc_bind_unbind_never_global(world: World, rec: Recorder) -> None:
    core = world.core
    s = world.null_set(4)
    core.register_notifier(None, rec.block("global"))
    ioasid = core.alloc(s, 1, 10)
    core.attach_spid(ioasid, 5)
    core.detach_spid(ioasid)
    core.put(s, core.alloc(s, 1, 10))
    assert rec.seen == []
    core.get(None, ioasid)
    core.free(s, ioasid)
    assert rec.events() == [FREE]  # the only event the global chain ever sees


@pytest.mark.spec(58)
@profiles()
def test_58_mm_registration_before_the_set(world: World, rec: Recorder) -> None:
    core = world.core
    proc = world.spawn()
    assert core.register_notifier_mm(proc.mm, rec.block("kvm")) == 0
    s = world.mm_set(proc)
    first = core.alloc(s, 1, 10, task=proc)
    core.attach_spid(first, 3)
    assert [(e, a.id) for _, e, a in rec.seen] == [(ALLOC, first), (BIND, first)]


@pytest.mark.spec(59)
@profiles("v4")
def test_59_mm_registration_on_a_busy_set(world: World, rec: Recorder) -> None:
    """Quirk 19 (``fixed`` subscribes and replays the set's IDs; see ``test_knobs``)."""
    core = world.core
    proc = world.spawn()
    s = world.mm_set(proc)
    core.alloc(s, 1, 10, task=proc)
    with refused(EBUSY, world):
        core.register_notifier_mm(proc.mm, rec.block("kvm"))
    core.alloc(s, 1, 10, task=proc)
    assert rec.seen == []


@pytest.mark.spec(60)
@profiles()
def test_60_mm_registration_twice(world: World, rec: Recorder) -> None:
    core = world.core
    proc = world.spawn()
    nb = rec.block("kvm")
    core.register_notifier_mm(proc.mm, nb)
    with refused(EBUSY, world):
        core.register_notifier_mm(proc.mm, nb)
    world.mm_set(proc)  # and once the set exists
    with refused(EBUSY, world):
        core.register_notifier_mm(proc.mm, nb)
    core.register_notifier_mm(world.spawn().mm, nb)  # the same block for another mm is fine


@pytest.mark.spec(61)
@profiles()
def test_61_mm_registration_survives_its_set(world: World, rec: Recorder) -> None:
    core = world.core
    proc = world.spawn()
    core.register_notifier_mm(proc.mm, rec.block("kvm"))
    first = world.mm_set(proc, 4)
    assert core.pending_registrations()[0].active
    core.set_free(first)
    reg = core.pending_registrations()[0]
    assert (reg.active, reg.set) == (False, None)
    second = world.mm_set(proc, 4)
    ioasid = core.alloc(second, 1, 10, task=proc)
    assert [(e, a.id, a.set) for _, e, a in rec.seen] == [(ALLOC, ioasid, second)]


@pytest.mark.spec(62)
@profiles()
def test_62_queue_work_ordered_and_pending_once(prof: str) -> None:
    """With the real worker thread: a pending item is refused (``False``), items run one at a
    time in submission order. The first item blocks on an event so the others are queued
    behind it; no sleeping, every wait has a timeout."""
    wq = OrderedWorkQueue(mode="thread")
    core = IoasidCore(profile(prof), wq=wq)
    started = threading.Event()
    release = threading.Event()
    order: list[str] = []
    running = 0
    overlap = False
    lock = threading.Lock()

    def job(name: str, block: bool = False):  # type: ignore[no-untyped-def]
        def fn() -> None:
            nonlocal running, overlap
            with lock:
                running += 1
                overlap = overlap or running > 1
            if block:
                started.set()
                assert release.wait(10)
            order.append(name)
            with lock:
                running -= 1

        return Work(fn, name)

    first, second, third = job("first", block=True), job("second"), job("third")
    try:
        assert core.queue_work(first)
        assert started.wait(10)
        assert core.queue_work(third)
        assert core.queue_work(second)
        assert core.queue_work(third) is False  # still pending
        assert order == []
    finally:
        release.set()
    assert wq.flush(10)
    assert wq.errors == []
    assert order == ["first", "third", "second"]
    assert not overlap and wq.errors == []
    assert core.queue_work(third)  # it ran: it may be queued again
    assert wq.flush(10)
    wq.stop()
