"""Behaviours 63-81 of ``docs/behaviours.md``: the ``ioasids`` cgroup controller.

Same rules as ``test_spec_core.py``. Allocation "through ``/dev/ioasid``" is tested at the model
level: a process allocates from its own MM set (quota 0, as the user API creates it) with itself as
the calling task; the user API face maps the model's errno to its own reply later.
"""

from __future__ import annotations

from errno import EAGAIN, EINVAL, ENOSPC, EPERM

import pytest

from ioasidsd.model import Cgroup, IoasidState, OrderedWorkQueue, profile
from ioasidsd.model.formats import render_count, render_events, render_limit
from ioasidsd.system import System

from .helpers import World, profiles, refused, snapshot


def _system(prof: str, capacity: int | None = None) -> System:
    system = System(profile(prof), wq=OrderedWorkQueue(mode="manual"))
    if capacity is not None:
        system.core.install_capacity(capacity)
    return system


@pytest.mark.spec(63)
@profiles()
def test_63_new_cgroup_max_reads_zero(world: World) -> None:
    parent = world.cgroup("a")
    child = world.cgroup("a/b")
    assert (parent.limit, child.limit) == (0, 0)
    assert render_limit(child.limit) == "0\n"
    assert world.core.capacity_avail == 0x100000  # a new cgroup reserves nothing


@pytest.mark.spec(64)
@profiles()
def test_64_root_has_no_controller_state(world: World) -> None:
    """The files themselves belong to the cgroupfs face. In the model the root has no limit
    to read or write (``EINVAL``), is never on a charge walk and never counts anything."""
    root = world.tree.root
    assert root.limit is None
    with refused(EINVAL, world):
        world.ctl.set_max(root, 5)
    world.cgroup("a", 5)  # first: in fixed, the nested limit is carved out of it
    leaf = world.cgroup("a/b", 5)
    assert list(leaf.walk()) == [leaf, leaf.parent]
    for cg in (root, leaf):
        proc = world.spawn(cg)
        world.core.alloc(world.mm_set(proc, 2), 1, 100, task=proc)
    assert root.counter == 0 and leaf.counter == 1


@pytest.mark.spec(65)
@profiles()
def test_65_limit_zero_refuses_allocation(world: World) -> None:
    """The model refuses with the charge's ``EAGAIN``; the user API turns it into ``-EINVAL``
    in ``v4`` (knob ``user_errors``), which is that face's test."""
    proc = world.spawn("vm")
    s = world.mm_set(proc)
    with refused(EAGAIN, world):
        world.core.alloc(s, 1, 100, task=proc)
    assert world.cgroup("vm").counter == 0


@pytest.mark.spec(66)
@profiles()
def test_66_growing_the_limit_reserves(prof: str) -> None:
    system = _system(prof, 1000)
    system.mkdir("vm")
    system.write_max("vm", b"5\n")
    cg = system.cgroups.lookup("vm")
    assert render_limit(cg.limit) == "5\n"
    assert system.core.capacity_avail == 995


@pytest.mark.spec(67)
@profiles()
def test_67_growing_beyond_available(world: World) -> None:
    world.core.install_capacity(100)
    cg = world.cgroup("vm", 10)
    assert world.core.capacity_avail == 90
    with refused(ENOSPC, world):
        world.ctl.set_max(cg, 101)  # 91 more, 90 available
    world.ctl.set_max(cg, 100)
    assert (cg.limit, world.core.capacity_avail) == (100, 0)


@pytest.mark.spec(68)
@profiles("v4")
def test_68_writing_the_same_limit_fails(prof: str) -> None:
    """Quirk 5 (``fixed`` accepts it and changes nothing; see ``test_knobs.py``)."""
    system = _system(prof, 100)
    system.mkdir("vm")
    system.write_max("vm", "5")
    with refused(EINVAL):
        system.write_max("vm", "5\n")
    assert (system.cgroups.lookup("vm").limit, system.core.capacity_avail) == (5, 95)


@pytest.mark.spec(69)
@profiles()
def test_69_negative_or_junk_limits(prof: str) -> None:
    system = _system(prof, 100)
    system.mkdir("vm")
    system.write_max("vm", "5")
    for junk in (b"-1", b"-0x10", b"five", b"5 apples", b"", b"  \n", b"MAX", b"max2", b"0x"):
        with refused(EINVAL):
            system.write_max("vm", junk)
    assert (system.cgroups.lookup("vm").limit, system.core.capacity_avail) == (5, 95)


@pytest.mark.spec(70)
@profiles()
def test_70_automatic_base(prof: str) -> None:
    """``kstrtoll(buf, 0)``: ``0x`` hexadecimal, a leading ``0`` octal."""
    system = _system(prof, 100)
    system.mkdir("vm")
    system.write_max("vm", "0x10")
    assert system.cgroups.lookup("vm").limit == 16
    system.write_max("vm", "010\n")
    assert system.cgroups.lookup("vm").limit == 8
    assert system.core.capacity_avail == 92


@pytest.mark.spec(71)
@profiles()
def test_71_shrinking_returns_capacity(world: World) -> None:
    world.core.install_capacity(100)
    cg = world.cgroup("vm", 10)
    world.ctl.set_max(cg, 4)
    assert (cg.limit, world.core.capacity_avail) == (4, 96)
    world.ctl.set_max(cg, 0)
    assert world.core.capacity_avail == 100


@pytest.mark.spec(72)
@profiles("v4")
def test_72_max_takes_what_is_left(prof: str) -> None:
    """Quirk 5: ``max`` becomes the capacity still available (the old reservation is
    not counted back and leaks), nothing is left, and the file reads the number."""
    system = _system(prof, 100)
    system.mkdir("a")
    system.mkdir("b")
    system.write_max("a", "30")
    system.write_max("b", "20")
    system.write_max("b", "max")
    b = system.cgroups.lookup("b")
    assert b.limit == 50  # not 20 + 50
    assert system.core.capacity_avail == 0
    assert render_limit(b.limit) == "50\n"
    system.write_max("a", "max")  # nothing left: the limit becomes 0, the write succeeds
    assert system.cgroups.lookup("a").limit == 0
    assert system.core.capacity_avail == 0


@pytest.mark.spec(73)
@profiles()
def test_73_allocation_charges_every_non_root_level(world: World) -> None:
    # in fixed, nested limits are carved out of a's: b's 10 and its sibling's 10 fit in 20
    a, b, c = world.cgroup("a", 20), world.cgroup("a/b", 10), world.cgroup("a/b/c", 10)
    sibling = world.cgroup("a/d", 10)
    proc = world.spawn(c)
    s = world.mm_set(proc)
    world.core.alloc(s, 1, 100, task=proc)
    assert world.currents(a, b, c, sibling, world.tree.root) == [1, 1, 1, 0, 0]
    world.core.alloc(s, 1, 100, task=proc)
    assert world.currents(a, b, c) == [2, 2, 2]
    assert render_count(a.counter) == "2\n"


@pytest.mark.spec(74)
@profiles()
def test_74_ancestor_limit_refuses_and_restores(world: World) -> None:
    """The kernel's ``ioasid_alloc`` returns ``INVALID_IOASID``; the model raises the charge's
    ``EAGAIN``."""
    # below a's 1, fixed allows only nested limits carved out of it: b and c are max there
    below = None if world.knobs.capacity_model == "reserve" else 10
    a, b, c = world.cgroup("a", 1), world.cgroup("a/b", below), world.cgroup("a/b/c", below)
    proc = world.spawn(c)
    s = world.mm_set(proc)
    world.core.alloc(s, 1, 100, task=proc)
    with refused(EAGAIN, world):
        world.core.alloc(s, 1, 100, task=proc)
    assert world.currents(a, b, c) == [1, 1, 1]
    assert s.nr_ioasids == 1


@pytest.mark.spec(75)
@profiles("v4")
def test_75_events_stay_at_zero(world: World) -> None:
    """Quirk 4 (``fixed`` counts refusals; see ``test_knobs.py``)."""
    parent, leaf = world.cgroup("a", 1), world.cgroup("a/b", 5)
    proc = world.spawn(leaf)
    s = world.mm_set(proc)
    world.core.alloc(s, 1, 100, task=proc)
    for _ in range(3):
        with refused(EAGAIN):
            world.core.alloc(s, 1, 100, task=proc)
    assert render_events(parent.events) == render_events(leaf.events) == "max 0\n"
    assert parent.events_local == leaf.events_local == 0


@pytest.mark.spec(76)
@profiles("v4")
def test_76_reclaim_uncharges_the_reclaiming_task(world: World) -> None:
    """Quirk 7: the cgroup of whoever performs the final release is uncharged, not the
    one charged; a kernel worker (no task, root cgroup) uncharges nothing."""
    home, other = world.cgroup("home", 10), world.cgroup("other", 10)
    owner, stranger = world.spawn(home), world.spawn(other)
    s = world.mm_set(owner)
    ids = [world.core.alloc(s, 1, 100, task=owner) for _ in range(3)]
    assert home.counter == 3
    for ioasid in ids:
        world.core.get(None, ioasid)  # VT-d's reference
        world.core.free(s, ioasid, task=owner)  # FREE_PENDING: nothing uncharged yet
    assert home.counter == 3
    world.core.put(None, ids[0], task=None)  # the kernel worker reclaims
    assert (home.counter, other.counter) == (3, 0)
    world.core.put(None, ids[1], task=stranger)
    assert (home.counter, other.counter) == (3, -1)
    world.core.put(None, ids[2], task=owner)
    assert (home.counter, other.counter) == (2, -1)


@pytest.mark.spec(77)
@profiles()
def test_77_null_sets_are_never_charged(world: World) -> None:
    cg = world.cgroup("vm")  # limit 0
    proc = world.spawn(cg)
    host = world.null_set(8)
    ids = [world.core.alloc(host, 1, 100, task=proc) for _ in range(3)]
    assert cg.counter == 0
    for ioasid in ids:
        world.core.free(host, ioasid, task=proc)
    assert cg.counter == 0


@pytest.mark.spec(78)
@profiles()
def test_78_allocation_by_a_non_owner(world: World) -> None:
    """The charge's ``-EPERM`` makes the kernel's ``ioasid_alloc`` return ``INVALID_IOASID``;
    the model raises ``EPERM``."""
    cg = world.cgroup("vm", 10)
    owner, intruder = world.spawn(cg), world.spawn(cg)
    s = world.mm_set(owner)
    with refused(EPERM, world):
        world.core.alloc(s, 1, 100, task=intruder)
    root_intruder = world.spawn()
    with refused(EPERM, world):
        world.core.alloc(s, 1, 100, task=root_intruder)


@pytest.mark.spec(79)
@profiles()
def test_79_migration_moves_the_charges(world: World) -> None:
    """N counts the set's FREE_PENDING IDs too (they still hold the set's count)."""
    a, src = world.cgroup("a", 10), world.cgroup("a/src", 10)
    b, dst = world.cgroup("b", 10), world.cgroup("b/dst", 1)
    proc = world.spawn(src)
    s = world.mm_set(proc)
    ids = [world.core.alloc(s, 1, 100, task=proc) for _ in range(3)]
    world.core.get(None, ids[0])
    world.core.free(s, ids[0], task=proc)
    assert world.core.data(ids[0]).state == IoasidState.FREE_PENDING
    world.tree.attach(proc, dst)  # never refused, though dst ends above its limit
    assert proc.cgroup is dst
    assert world.currents(a, src, b, dst) == [0, 0, 3, 3]
    assert dst.counter > dst.limit  # type: ignore[operator]


@pytest.mark.spec(80)
@profiles()
def test_80_over_limit_after_a_move(world: World) -> None:
    """Refusals are the charge's ``EAGAIN`` (the kernel returns ``INVALID_IOASID``)."""
    src, dst = world.cgroup("src", 10), world.cgroup("dst", 2)
    proc = world.spawn(src)
    s = world.mm_set(proc)
    ids = [world.core.alloc(s, 1, 100, task=proc) for _ in range(3)]
    world.tree.attach(proc, dst)
    assert dst.counter == 3
    with refused(EAGAIN, world):
        world.core.alloc(s, 1, 100, task=proc)
    world.core.free(s, ids[0], task=proc)
    with refused(EAGAIN, world):
        world.core.alloc(s, 1, 100, task=proc)  # 2 of 2: still no room
    world.core.free(s, ids[1], task=proc)
    world.core.alloc(s, 1, 100, task=proc)
    assert dst.counter == 2


@pytest.mark.spec(81)
@profiles()
def test_81_root_processes_are_not_limited(world: World) -> None:
    world.core.install_capacity(1000)
    limited: list[Cgroup] = [world.cgroup("a"), world.cgroup("b", 1)]
    proc = world.spawn()
    s = world.mm_set(proc, 100)
    ids = [world.core.alloc(s, 1, 1000, task=proc) for _ in range(50)]
    assert len(ids) == 50
    assert [cg.counter for cg in world.tree.cgroups()] == [0, 0, 0]
    assert snapshot(world)["cgroups"][1:] == [
        (cg.path, cg.limit, cg.reserved, 0, 0, []) for cg in limited
    ]
