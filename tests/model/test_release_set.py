"""``IoasidCore.release_set_locked`` against the two calls it stands for.

The release of a process's ``/dev/ioasid`` set (at its last close, at every exit) frees every ID
of the set and then frees the set (``free_all_in_set_locked``, then ``set_free_locked`` if the
set is still registered). The core makes both at once when it can. For any state of the set
and any profile, that path must either leave the model exactly as it was (and say so with
``False``), or leave it, and the messages the kernel would log, exactly as the two calls do;
and it must be taken whenever every ID holds only its allocation's reference and no SPID.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from userapi.helpers import World

from ioasidsd.model import IoasidError, IoasidSetType
from ioasidsd.model.core import INVALID_IOASID, IoasidState
from ioasidsd.model.snapshot import dump

releases = st.fixed_dictionaries({
    "profile": st.sampled_from(["fixed", "v4"]),
    "capacity_model": st.sampled_from(["reserve", "reserve-v4", "overcommit"]),
    "set_lifetime": st.sampled_from(["auto", "explicit"]),
    "hides": st.booleans(),                 # free_all_hides_pending
    "limit": st.integers(30, 60),
    "quota": st.sampled_from([0, 1000]),
    "allocated": st.integers(0, 12),
    "referenced": st.lists(st.integers(0, 11), max_size=3),
    "spid": st.lists(st.integers(0, 11), max_size=2),
    "freed": st.lists(st.integers(0, 11), max_size=4),  # through the core before the release
    "freed_all": st.booleans(),  # free_all_in_set once before (hides referenced IDs, v4)...
    "more": st.integers(0, 4),   # ...and then this many more IDs allocated
    "free_requested": st.booleans(),
    "moved": st.sampled_from([None, "/d", "/"]),
    "uncharge_target": st.sampled_from(["charged", "current"]),
    "exited": st.booleans(),
    "task": st.sampled_from(["owner", "other", None]),
})


def case(**changes: object) -> dict:
    """A setup of ``releases`` for an explicit example: a plain set of three IDs."""
    setup = {"profile": "fixed", "capacity_model": "overcommit", "set_lifetime": "explicit",
             "hides": False, "limit": 40, "quota": 0, "allocated": 3, "referenced": [],
             "spid": [], "freed": [], "freed_all": False, "more": 0, "free_requested": False,
             "moved": None,
             "uncharge_target": "charged", "exited": True, "task": "owner"}
    setup.update(changes)
    return setup


def build(setup: dict) -> tuple[World, object, object]:
    """A world whose process in ``/c`` allocated IDs in its MM set (some with an extra
    reference or an SPID, some freed already: FREE_PENDING where referenced; perhaps all freed
    once, which hides the pending ones from the index with ``free_all_hides_pending``, and
    more allocated), perhaps moved and exited; and the task that releases the set."""
    world = World(setup["profile"], capacity_model=setup["capacity_model"],
                  uncharge_target=setup["uncharge_target"],
                  set_lifetime=setup["set_lifetime"],
                  free_all_hides_pending=setup["hides"])
    core = world.core
    with contextlib.suppress(IoasidError):
        core.install_capacity(2000)
    for name in ("c", "d"):
        world.cgroups.mkdir(world.cgroups.root, name)
    for name in ("/c", "/d"):
        with contextlib.suppress(IoasidError):
            world.controller.set_max(world.cgroups.lookup(name), setup["limit"])
    owner = world.proc("/c")
    other = world.proc("/d")
    ioasid_set = core.set_alloc(owner, setup["quota"], IoasidSetType.MM)
    ids = []
    for _ in range(setup["allocated"]):
        with contextlib.suppress(IoasidError):
            ids.append(core.alloc(ioasid_set, 1, 1000, task=owner))
    world.hold_more(ioasid_set, ids, setup["referenced"], setup["spid"])
    for i in setup["freed"]:
        if i < len(ids):
            with contextlib.suppress(IoasidError):
                core.free(ioasid_set, ids[i], task=owner)
    if setup["freed_all"]:
        core.free_all_in_set(ioasid_set, task=owner)
        for _ in range(setup["more"]):
            with contextlib.suppress(IoasidError):
                core.alloc(ioasid_set, 1, 1000, task=owner)
    if setup["free_requested"] and core.set_valid(ioasid_set):
        core.set_free(ioasid_set, when_empty=True)
    if setup["moved"] is not None:
        world.cgroups.attach(owner, world.cgroups.lookup(setup["moved"]))
    if setup["exited"]:
        owner.alive = False
    task = {"owner": owner, "other": other, None: None}[setup["task"]]
    return world, ioasid_set, task


def two_calls(world: World, ioasid_set, task) -> None:
    """What the device's release does without the combined path."""
    core = world.core
    with core.lock:
        core.free_all_in_set_locked(ioasid_set, task=task)
        if not core.set_valid(ioasid_set):
            return
        if core.knobs.set_lifetime == "explicit":
            core.set_free_locked(ioasid_set, when_empty=True)
        else:
            try:
                core.set_free_locked(ioasid_set)
            except IoasidError as exc:
                core.warn(f"ioasid_user: set {ioasid_set.id} not freed: {exc}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(releases)
@example(case())
@example(case(allocated=0))
@example(case(set_lifetime="auto", profile="v4", capacity_model="reserve-v4",
              uncharge_target="current"))
@example(case(referenced=[1], freed=[1]))  # an ID FREE_PENDING: declined
@example(case(referenced=[1], freed=[1], hides=True))  # hidden from the index: declined
@example(case(spid=[0]))
@example(case(referenced=[1], freed_all=True, hides=True, more=2, profile="v4",
              capacity_model="reserve-v4"))  # a pending ID hidden from the index: declined
@example(case(free_requested=True, referenced=[0], freed=[0]))
def test_combined_release_is_the_two_calls(setup: dict) -> None:
    fast_world, fast_set, fast_task = build(setup)
    slow_world, slow_set, slow_task = build(setup)
    before = dump(fast_world.core)
    assert before == dump(slow_world.core)
    messages = list(fast_world.core.messages)
    assert messages == list(slow_world.core.messages)

    with fast_world.core.lock:
        done = fast_world.core.release_set_locked(fast_set, task=fast_task)
    two_calls(slow_world, slow_set, slow_task)

    if done:
        assert dump(fast_world.core) == dump(slow_world.core)
        assert list(fast_world.core.messages) == list(slow_world.core.messages)
        assert not fast_world.core.set_valid(fast_set)
    else:
        assert dump(fast_world.core) == before, "a declined release changed nothing"
        assert list(fast_world.core.messages) == messages
        # declined only where an ID holds another reference or an SPID, or is pending, or
        # where the set counts pending IDs its index hides, or is gone already
        world, ioasid_set, _ = build(setup)
        plain = all(d.refs == 1 and d.spid == INVALID_IOASID and d.state != IoasidState.FREE_PENDING
                    for d in world.core.ioasids())
        hidden = ioasid_set.nr_ioasids != len(ioasid_set.xa)
        assert not plain or hidden or not world.core.set_valid(ioasid_set)
