"""Reservations that cannot escape a subtree (the ``reserve`` capacity model of ``fixed``), and
the flat reservation ``v4`` keeps as a reproduced defect.

In ``fixed`` a numeric limit under a numerically limited ancestor is carved out of that
ancestor's limit and never drawn from the pool; a top limit that shrinks, turns to ``max`` or
is removed gives back only what no live IOASID needs. The property test drives the owner of a
delegated subtree through every write, move, allocation and exit it may make, and checks that
nothing available outside the subtree changes and that the capacity adds up after every step.
"""

from __future__ import annotations

from errno import EAGAIN, EBUSY, ENOSPC

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioasidsd.model import Cgroup, IoasidError, Process, profile
from ioasidsd.model.snapshot import dump, load

from .helpers import World, refused

CAPACITY = 1 << 20


def accounted(w: World) -> None:
    """capacity = available + set quotas + cgroup reservations + pooled IDs."""
    core = w.core
    sets = sum(s.reserved for s in core.sets)
    cgroups = sum(cg.reserved for cg in w.tree.cgroups())
    pooled = sum(1 for s in core.sets for d in core.set_members(s) if d.pooled)
    assert core.capacity == core.capacity_avail + sets + cgroups + pooled


def test_a_delegated_over_reservation_is_refused_and_takes_nothing() -> None:
    """The owner of /tenant (limit 100) makes /tenant/sub and asks for 1,015,000: ENOSPC, the
    pool keeps everything, and root's next limit and allocations in the root still work."""
    w = World("fixed", capacity=CAPACITY)
    tenant = w.cgroup("tenant", 100)
    sub = w.cgroup("tenant/sub")
    available = w.core.capacity_avail
    with refused(ENOSPC, w):
        w.ctl.set_max(sub, 1_015_000)
    with refused(ENOSPC, w):
        w.ctl.set_max(sub, 101)
    assert w.core.capacity_avail == available == CAPACITY - 100
    w.ctl.set_max(sub, 100)  # all of /tenant's limit: carved, not drawn from the pool
    assert (sub.limit, sub.reserved, tenant.reserved) == (100, 0, 100)
    assert w.core.capacity_avail == available
    w.cgroup("other", 1000)  # root's next limit
    proc = w.spawn()
    w.core.alloc(w.mm_set(proc), 1, 100, task=proc)  # an allocation in the root cgroup
    accounted(w)


def test_carve_outs_add_up_to_the_ancestors_limit() -> None:
    w = World("fixed", capacity=CAPACITY)
    a = w.cgroup("a", 100)
    b, c = w.cgroup("a/b", 60), w.cgroup("a/c")
    with refused(ENOSPC, w):
        w.ctl.set_max(c, 41)
    w.ctl.set_max(c, 40)
    mid = w.cgroup("a/m", None)  # max levels are skipped: /a/m/d is carved out of /a
    d = w.cgroup("a/m/d")
    with refused(ENOSPC, w):
        w.ctl.set_max(d, 1)
    w.ctl.set_max(b, 30)  # a shrink is never refused, and frees room in /a
    w.ctl.set_max(d, 30)
    with refused(EBUSY, w):  # /a cannot go below what is carved out of it
        w.ctl.set_max(a, 99)
    with refused(ENOSPC, w):  # /a/m cannot carve 31 out of /a
        w.ctl.set_max(mid, 31)
    w.ctl.set_max(mid, 30)  # /a/m now carves 30 out of /a and /a/m/d its 30 out of /a/m
    assert w.core.capacity_avail == CAPACITY - 100
    accounted(w)
    w.ctl.set_max(a, None)  # the limits below become top limits, each holding itself
    assert [cg.reserved for cg in (a, b, c, mid, d)] == [0, 30, 40, 30, 0]
    assert w.core.capacity_avail == CAPACITY - 100
    w.ctl.set_max(a, 100)  # and come back under it
    assert [cg.reserved for cg in (a, b, c, mid, d)] == [100, 0, 0, 0, 0]
    accounted(w)


def test_a_shrink_returns_only_what_no_live_ioasid_needs() -> None:
    w = World("fixed", capacity=CAPACITY)
    a = w.cgroup("a", 100)
    proc = w.spawn(a)
    s = w.mm_set(proc)
    ids = [w.core.alloc(s, 1, 1000, task=proc) for _ in range(50)]
    w.ctl.set_max(a, 10)
    # 10 held by the limit, 40 by the live IOASIDs beyond it, which became pooled
    assert w.core.capacity_avail == CAPACITY - 50
    assert sum(1 for d in w.core.set_members(s) if d.pooled) == 40
    accounted(w)
    for ioasid in ids:
        w.core.free(s, ioasid)
    w.wq.flush()
    assert w.core.capacity_avail == CAPACITY - 10
    accounted(w)


def test_a_removed_limit_returns_only_what_no_live_ioasid_needs() -> None:
    w = World("fixed", capacity=CAPACITY)
    a, b = w.cgroup("a", 100), w.cgroup("b", None)
    proc = w.spawn(a)
    s = w.mm_set(proc)
    ids = [w.core.alloc(s, 1, 1000, task=proc) for _ in range(5)]
    w.ctl.set_max(a, None)  # max: the five are not covered by any limit now
    assert w.core.capacity_avail == CAPACITY - 5
    w.ctl.set_max(a, 100)
    w.tree.attach(proc, b)  # the charges move with the process...
    w.tree.attach(proc, a)  # ...and back
    accounted(w)
    for ioasid in ids:
        w.core.free(s, ioasid)
    w.wq.flush()
    assert w.core.capacity_avail == CAPACITY - 100
    accounted(w)


def test_rmdir_of_a_limit_with_live_charges_keeps_what_they_need() -> None:
    # charges stay where they were made when their process moves: /a keeps them at its rmdir
    w = World(profile("fixed", migration="stay"), capacity=CAPACITY)
    a = w.cgroup("a", 100)
    proc = w.spawn(a)
    s = w.mm_set(proc)
    ids = [w.core.alloc(s, 1, 1000, task=proc) for _ in range(3)]
    w.tree.attach(proc, w.tree.root)
    w.tree.rmdir(a)
    assert w.core.capacity_avail == CAPACITY - 3
    accounted(w)
    for ioasid in ids:
        w.core.free(s, ioasid)
    w.wq.flush()
    assert w.core.capacity_avail == CAPACITY
    accounted(w)


def test_v4_keeps_the_flat_reservation() -> None:
    """The series reserves every numeric limit from the pool, nested or not: the delegated
    over-reservation is accepted and drains the pool (a reproduced defect)."""
    w = World("v4", capacity=CAPACITY)
    w.cgroup("tenant", 100)
    sub = w.cgroup("tenant/sub")
    w.ctl.set_max(sub, 1_015_000)
    assert w.core.capacity_avail == CAPACITY - 100 - 1_015_000
    assert w.ctl.over_reserved == []  # not a state to repair: the profile's rule


def test_a_state_saved_under_the_flat_rule_loads_and_shows_its_over_reservation() -> None:
    """A state of an earlier version, where /tenant/sub's 50 was reserved from the pool as
    well, and /tenant/big carved beyond /tenant: it loads as saved, ``over_reserved`` names
    both, and writing or removing them returns what they held."""
    w = World("fixed", capacity=CAPACITY)
    w.cgroup("tenant", 100)
    w.cgroup("tenant/sub", 50)
    w.cgroup("tenant/big", 50)
    snap = dump(w.core)
    for rec in snap["cgroups"]:  # what the flat rule saved
        if rec["name"] in ("sub", "big"):
            rec["reserved"] = rec["limit"] = 50 if rec["name"] == "sub" else 500
            snap["core"]["capacity_avail"] -= rec["reserved"]
    again = World("fixed")
    load(snap, again.core)
    tenant = again.tree.lookup("tenant")
    assert again.ctl.over_reserved == [("/tenant/big", 500), ("/tenant/sub", 50)]
    accounted(again)
    available = again.core.capacity_avail
    again.ctl.set_max(again.tree.lookup("tenant/big"), 50)
    again.ctl.set_max(again.tree.lookup("tenant/sub"), 40)
    assert again.ctl.over_reserved == []
    assert again.core.capacity_avail == available + 500 + 50
    assert tenant.reserved == 100
    accounted(again)


# ---------------------------------------------------------------------- the property
OUTSIDE = 40  # /other's limit: what the rest of the machine may count on


@st.composite
def steps(draw: st.DrawFn) -> list[tuple]:
    return draw(st.lists(st.one_of(
        st.tuples(st.just("mkdir"), st.integers(0, 9), st.sampled_from("xyz")),
        st.tuples(st.just("rmdir"), st.integers(0, 9)),
        st.tuples(st.just("max"), st.integers(0, 9),
                  st.one_of(st.none(), st.integers(0, 60), st.integers(0, 2_000_000))),
        st.tuples(st.just("spawn"), st.integers(0, 9)),
        st.tuples(st.just("move"), st.integers(0, 9), st.integers(0, 9)),
        st.tuples(st.just("alloc"), st.integers(0, 9), st.integers(1, 8)),
        st.tuples(st.just("free"), st.integers(0, 9)),
        st.tuples(st.just("exit"), st.integers(0, 9)),
    ), max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps(), st.sampled_from([None, 20, 50]))
def test_the_owner_of_a_subtree_cannot_change_what_is_available_outside_it(
        ops: list[tuple], tenant_limit: int | None) -> None:
    """Whatever the owner of /tenant does below it, the pool (what root and every other
    cgroup may still reserve) stays as it was, /other can still use its whole limit, and the
    capacity adds up after every step. With /tenant at ``max`` its subtree's top limits draw on
    the pool as the admin's own would: there only the accounting is checked."""
    w = World("fixed", capacity=4096)
    tenant = w.cgroup("tenant", tenant_limit if tenant_limit is not None else None)
    other = w.cgroup("other", OUTSIDE)
    cgroups: list[Cgroup] = [tenant]
    procs: list[Process] = []
    available = w.core.capacity_avail

    def release(proc: Process) -> None:
        s = w.core.find_mm_set_locked(proc)
        if s is not None:
            w.core.free_all_in_set(s, task=proc)
            w.core.set_free(s, when_empty=True)

    w.tree.exit_hooks.append(release)
    for op, *args in ops:
        pick = args[0]
        try:
            if op == "mkdir":
                parent = cgroups[pick % len(cgroups)]
                if args[1] not in parent.children and not w.tree.parent_gone(parent):
                    cgroups.append(w.tree.mkdir(parent, args[1]))
            elif op == "rmdir":
                cg = cgroups[pick % len(cgroups)]
                if cg is not tenant:
                    w.tree.rmdir(cg)
                    cgroups.remove(cg)
            elif op == "max":
                cg = cgroups[pick % len(cgroups)]
                if cg is not tenant:  # the admin's limit, not the tenant's
                    w.ctl.set_max(cg, args[1])
            elif op == "spawn":
                cg = cgroups[pick % len(cgroups)]
                if not w.tree.parent_gone(cg):
                    procs.append(w.spawn(cg))
            elif op == "move" and procs:
                proc, cg = procs[pick % len(procs)], cgroups[args[1] % len(cgroups)]
                w.tree.attach(proc, cg)
            elif op == "alloc" and procs:
                proc = procs[pick % len(procs)]
                s = w.core.find_mm_set_locked(proc) or w.mm_set(proc)
                for _ in range(args[1]):
                    w.core.alloc(s, 1, 100_000, task=proc)
            elif op == "free" and procs:
                proc = procs[pick % len(procs)]
                s = w.core.find_mm_set_locked(proc)
                if s is not None and s.xa:
                    w.core.free(s, min(s.xa))
            elif op == "exit" and procs:
                proc = procs.pop(pick % len(procs))
                w.tree.exit(proc)
        except IoasidError as exc:
            assert exc.errno in (EAGAIN, EBUSY, ENOSPC), exc
        w.wq.flush()
        accounted(w)
        if tenant_limit is not None:
            assert w.core.capacity_avail == available
            assert other.reserved == OUTSIDE
    outsider = w.spawn(other)
    s = w.mm_set(outsider)
    for _ in range(OUTSIDE):
        w.core.alloc(s, 1, 100_000, task=outsider)
    assert other.counter == OUTSIDE


@pytest.mark.parametrize("limit", [None, 0, 7])
def test_rewriting_a_nested_limit_is_idempotent(limit: int | None) -> None:
    w = World("fixed", capacity=CAPACITY)
    w.cgroup("a", 10)
    b = w.cgroup("a/b", limit)
    before = (b.limit, b.reserved, w.core.capacity_avail)
    w.ctl.set_max(b, limit)
    assert (b.limit, b.reserved, w.core.capacity_avail) == before
