"""``IoasidCore.alloc_many_locked`` against ``count`` ``alloc_locked`` calls.

The batch allocation of ``/dev/ioasid`` takes the bulk path whenever it can. For any state,
profile and request, the bulk path must either leave the model exactly as it was (and say so
with ``None``), or leave it exactly as the one-by-one calls leave it, returning the same IDs;
and it must take the bulk path whenever the calls would all succeed without a notifier to call.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from userapi.helpers import World

from ioasidsd.model import IoasidError, IoasidSetType
from ioasidsd.model.snapshot import dump

setups = st.fixed_dictionaries({
    "profile": st.sampled_from(["fixed", "v4"]),
    "capacity_model": st.sampled_from(["reserve", "reserve-v4", "overcommit"]),
    "capacity": st.integers(4, 80),
    "parent_limit": st.none() | st.integers(0, 60),
    "child_limit": st.none() | st.integers(0, 60),
    "quota": st.integers(0, 60),
    "held": st.lists(st.integers(1, 90), max_size=20),
    "lo": st.integers(0, 40),
    "span": st.integers(-2, 90),
    "count": st.integers(0, 50),
})


def build(setup: dict) -> tuple[World, object, object]:
    """A world with a parent/child tree of limits, a process in the child, its MM set with
    some IDs held (holes between them), as ``setup`` says."""
    world = World(setup["profile"], capacity_model=setup["capacity_model"])
    core = world.core
    try:
        core.install_capacity(setup["capacity"])
    except IoasidError:
        pass
    parent = world.cgroups.mkdir(world.cgroups.root, "p")
    child = world.cgroups.mkdir(parent, "c")
    for cg, limit in ((parent, setup["parent_limit"]), (child, setup["child_limit"])):
        try:
            world.controller.set_max(cg, limit)
        except IoasidError:
            pass
    task = world.proc("/p/c")
    try:
        ioasid_set = core.set_alloc(task, setup["quota"], IoasidSetType.MM)
    except IoasidError:  # a quota above what is left: the process's set takes no quota
        ioasid_set = core.set_alloc(task, 0, IoasidSetType.MM)
    for ioasid in sorted(set(setup["held"])):
        try:
            core.alloc(ioasid_set, ioasid, ioasid, task=task)
        except IoasidError:
            pass
    for ioasid in sorted(set(setup["held"]))[::3]:  # holes
        if ioasid in core:
            core.free(ioasid_set, ioasid, task=task)
    return world, ioasid_set, task


def one_by_one(world: World, ioasid_set, task, lo: int, hi: int, count: int) -> list[int] | int:
    """What ``_alloc_batch``'s slow path does: the IDs, or the errno after undoing."""
    core = world.core
    ids: list[int] = []
    with core.lock:
        try:
            for _ in range(count):
                ids.append(core.alloc_locked(ioasid_set, lo, hi, None, task=task))
        except IoasidError as exc:
            for ioasid in reversed(ids):
                core.free_locked(ioasid_set, ioasid, task=task)
            return exc.errno
    return ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setups)
@example({"profile": "fixed", "capacity_model": "reserve", "capacity": 80, "parent_limit": None, "child_limit": None, "quota": 10, "held": [], "lo": 1, "span": 80, "count": 10})
@example({"profile": "fixed", "capacity_model": "reserve", "capacity": 80, "parent_limit": None, "child_limit": None, "quota": 10, "held": [], "lo": 1, "span": 80, "count": 11})
@example({"profile": "fixed", "capacity_model": "reserve", "capacity": 80, "parent_limit": None, "child_limit": None, "quota": 10, "held": [3, 4], "lo": 1, "span": 80, "count": 8})
@example({"profile": "fixed", "capacity_model": "reserve", "capacity": 80, "parent_limit": None, "child_limit": None, "quota": 10, "held": [3, 4], "lo": 1, "span": 80, "count": 9})
@example({"profile": "fixed", "capacity_model": "reserve", "capacity": 80, "parent_limit": None, "child_limit": 7, "quota": 0, "held": [], "lo": 1, "span": 80, "count": 7})
@example({"profile": "fixed", "capacity_model": "reserve", "capacity": 80, "parent_limit": None, "child_limit": 7, "quota": 0, "held": [], "lo": 1, "span": 80, "count": 8})
@example({"profile": "fixed", "capacity_model": "overcommit", "capacity": 80, "parent_limit": 6, "child_limit": None, "quota": 0, "held": [2], "lo": 1, "span": 80, "count": 5})
@example({"profile": "fixed", "capacity_model": "overcommit", "capacity": 80, "parent_limit": 6, "child_limit": None, "quota": 0, "held": [2], "lo": 1, "span": 80, "count": 6})
@example({"profile": "fixed", "capacity_model": "overcommit", "capacity": 12, "parent_limit": None, "child_limit": None, "quota": 0, "held": [], "lo": 1, "span": 80, "count": 12})
@example({"profile": "fixed", "capacity_model": "overcommit", "capacity": 12, "parent_limit": None, "child_limit": None, "quota": 0, "held": [], "lo": 1, "span": 80, "count": 13})
@example({"profile": "v4", "capacity_model": "reserve-v4", "capacity": 12, "parent_limit": None, "child_limit": None, "quota": 0, "held": [5], "lo": 1, "span": 80, "count": 11})
@example({"profile": "v4", "capacity_model": "reserve-v4", "capacity": 12, "parent_limit": None, "child_limit": None, "quota": 0, "held": [5], "lo": 1, "span": 80, "count": 12})
def test_bulk_allocation_is_the_one_by_one_allocation(setup: dict) -> None:
    lo = setup["lo"]
    hi = lo + setup["span"]
    count = setup["count"]
    bulk_world, bulk_set, bulk_task = build(setup)
    loop_world, loop_set, loop_task = build(setup)
    before = dump(bulk_world.core)
    assert before == dump(loop_world.core)

    with bulk_world.core.lock:
        bulk = bulk_world.core.alloc_many_locked(bulk_set, lo, hi, count, task=bulk_task)
    loop = one_by_one(loop_world, loop_set, loop_task, lo, hi, count)

    if bulk is None:
        assert dump(bulk_world.core) == before, "a declined bulk allocation changed nothing"
        # declined only where one call would refuse (or nothing was asked)
        assert count == 0 or not isinstance(loop, list)
    else:
        assert list(bulk) == loop
        assert dump(bulk_world.core) == dump(loop_world.core)
