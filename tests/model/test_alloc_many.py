"""``IoasidCore.alloc_many_locked`` against ``count`` ``alloc_locked`` calls.

The batch allocation of ``/dev/ioasid`` takes the bulk path whenever it can. For any state,
profile and request, the bulk path must either leave the model exactly as it was (and say so
with ``None``), or leave it exactly as the one-by-one calls leave it, returning the same IDs;
and it must take the bulk path whenever the calls would all succeed without a notifier to call.
"""

from __future__ import annotations

import contextlib

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
    "root_max": st.none() | st.integers(0, 60),  # a limit on the root's own processes...
    "in_root": st.booleans(),                    # ...counted when the process is there
})


def case(profile: str, capacity_model: str, capacity: int, parent_limit: int | None,
         child_limit: int | None, quota: int, held: list[int], count: int) -> dict:
    """A setup of ``setups`` for an explicit example: IDs asked for in ``[1, 81]``."""
    return {"profile": profile, "capacity_model": capacity_model, "capacity": capacity,
            "parent_limit": parent_limit, "child_limit": child_limit, "quota": quota,
            "held": held, "lo": 1, "span": 80, "count": count, "root_max": None,
            "in_root": False}


def build(setup: dict) -> tuple[World, object, object]:
    """A world with a parent/child tree of limits, a process in the child, its MM set with
    some IDs held (holes between them), as ``setup`` says."""
    world = World(setup["profile"], capacity_model=setup["capacity_model"])
    core = world.core
    with contextlib.suppress(IoasidError):
        core.install_capacity(setup["capacity"])
    parent = world.cgroups.mkdir(world.cgroups.root, "p")
    child = world.cgroups.mkdir(parent, "c")
    for cg, limit in ((parent, setup["parent_limit"]), (child, setup["child_limit"])):
        with contextlib.suppress(IoasidError):
            world.controller.set_max(cg, limit)
    world.controller.set_root_max(setup["root_max"])
    task = world.proc("/" if setup["in_root"] else "/p/c")
    try:
        ioasid_set = core.set_alloc(task, setup["quota"], IoasidSetType.MM)
    except IoasidError:  # a quota above what is left: the process's set takes no quota
        ioasid_set = core.set_alloc(task, 0, IoasidSetType.MM)
    for ioasid in sorted(set(setup["held"])):
        with contextlib.suppress(IoasidError):
            core.alloc(ioasid_set, ioasid, ioasid, task=task)
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
@example(case("fixed", "reserve", 80, None, None, 10, [], 10))
@example(case("fixed", "reserve", 80, None, None, 10, [], 11))
@example(case("fixed", "reserve", 80, None, None, 10, [3, 4], 8))
@example(case("fixed", "reserve", 80, None, None, 10, [3, 4], 9))
@example(case("fixed", "reserve", 80, None, 7, 0, [], 7))
@example(case("fixed", "reserve", 80, None, 7, 0, [], 8))
@example(case("fixed", "overcommit", 80, 6, None, 0, [2], 5))
@example(case("fixed", "overcommit", 80, 6, None, 0, [2], 6))
@example(case("fixed", "overcommit", 12, None, None, 0, [], 12))
@example(case("fixed", "overcommit", 12, None, None, 0, [], 13))
@example(case("v4", "reserve-v4", 12, None, None, 0, [5], 11))
@example(case("v4", "reserve-v4", 12, None, None, 0, [5], 12))
@example({**case("fixed", "reserve", 80, None, None, 0, [3], 9), "root_max": 10, "in_root": True})
@example({**case("fixed", "reserve", 80, None, None, 0, [3], 10), "root_max": 10, "in_root": True})
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


frees = st.fixed_dictionaries({
    "profile": st.sampled_from(["fixed", "v4"]),
    "capacity_model": st.sampled_from(["reserve", "reserve-v4", "overcommit"]),
    "limit": st.integers(30, 60),  # v4: a new cgroup's limit is 0, and max takes everything
    "allocated": st.integers(1, 30),
    "freed": st.lists(st.integers(0, 29), min_size=1, unique=True),
    "referenced": st.lists(st.integers(0, 29), max_size=3),
    "spid": st.lists(st.integers(0, 29), max_size=2),
    "moved": st.sampled_from([None, "/d", "/"]),
    "migration": st.sampled_from(["move", "stay"]),
    "uncharge_target": st.sampled_from(["charged", "current"]),
    "exited": st.booleans(),
    "root_max": st.none() | st.integers(0, 60),
})


def build_frees(setup: dict) -> tuple[World, object, object, list[int]]:
    """A world whose process allocated some IDs in ``/c`` (some with an extra reference or an
    SPID), then perhaps moved to ``/d`` (uncharging the current cgroup with charges that stay
    where they were made takes a counter below zero) or exited (``v4`` then uncharges
    nothing); and the IDs to free."""
    world = World(setup["profile"], capacity_model=setup["capacity_model"],
                  migration=setup["migration"], uncharge_target=setup["uncharge_target"])
    core = world.core
    core.install_capacity(2000)
    for name in ("c", "d"):
        world.cgroups.mkdir(world.cgroups.root, name)
    for name in ("/c", "/d"):
        world.controller.set_max(world.cgroups.lookup(name), setup["limit"])
    world.controller.set_root_max(setup["root_max"])  # counts when a process moves to the root
    task = world.proc("/c")
    ioasid_set = core.set_alloc(task, 1000, IoasidSetType.MM)
    ids = [core.alloc(ioasid_set, 1, 1000, task=task) for _ in range(setup["allocated"])]
    world.hold_more(ioasid_set, ids, setup["referenced"], setup["spid"])
    if setup["moved"] is not None:
        world.cgroups.attach(task, world.cgroups.lookup(setup["moved"]))
    if setup["exited"]:
        task.alive = False
    return world, ioasid_set, task, [ids[i] for i in setup["freed"] if i < len(ids)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frees)
def test_bulk_free_is_the_one_by_one_free(setup: dict) -> None:
    bulk_world, bulk_set, bulk_task, bulk_ids = build_frees(setup)
    loop_world, loop_set, loop_task, loop_ids = build_frees(setup)
    before = dump(bulk_world.core)
    messages = list(bulk_world.core.messages)
    with bulk_world.core.lock:
        done = bulk_world.core.free_many_locked(bulk_set, bulk_ids, task=bulk_task) is not None
    with loop_world.core.lock:
        for ioasid in loop_ids:
            loop_world.core.free_locked(loop_set, ioasid, task=loop_task)
    if done:
        assert dump(bulk_world.core) == dump(loop_world.core)
        assert list(bulk_world.core.messages) == list(loop_world.core.messages)
    else:
        assert dump(bulk_world.core) == before, "a declined bulk free changed nothing"
        assert list(bulk_world.core.messages) == messages
        # declined only where one by one differs from plain reclaims: a reference, an SPID,
        # a warning
        plain = (not any(i < setup["allocated"] for i in setup["referenced"] + setup["spid"])
                 and list(loop_world.core.messages) == messages)
        assert not plain or not bulk_ids
