"""Both sides of every knob of ``ioasidsd/model/knobs.py``, and ``profile()`` validation.

Each knob is switched alone over a profile (``profile("fixed", knob=...)``) and the test asserts
the difference it makes. Where the scenario means the same in both profiles, it also runs over
``v4`` with the knob switched back: the knob alone decides, whatever the other knobs say.
"""

from __future__ import annotations

import dataclasses
from errno import EACCES, EAGAIN, EBUSY, EDQUOT, EINVAL, ENOSPC
from pathlib import Path
from typing import Any

import pytest

from ioasidsd.model import (
    INVALID_IOASID,
    PCI_PASID_MAX,
    IoasidNotify,
    IoasidState,
    Knobs,
    TaskSet,
    profile,
)
from ioasidsd.model.formats import render_events, render_limit

from .helpers import Recorder, World, refused, snapshot

BASES = pytest.mark.parametrize("base", ["fixed", "v4"])
QUIRK = pytest.mark.parametrize("quirk", [False, True], ids=["off", "on"])


def world_with(base: str, capacity: int | None = None, **knobs: Any) -> World:
    return World(profile(base, **knobs), capacity=capacity)


# --------------------------------------------------------------------------- single quirks


@BASES
@QUIRK
def test_set_quota_zero_takes_all(base: str, quirk: bool) -> None:
    w = world_with(base, 100, set_quota_zero_takes_all=quirk)
    s = w.null_set(0)
    if quirk:
        assert (s.quota, w.core.capacity_avail) == (100, 0)
        with refused(ENOSPC, w):
            w.null_set(0)  # index range [0, 0] and index 0 is taken
    else:
        assert (s.quota, s.reserved, w.core.capacity_avail) == (0, 0, 100)
        assert w.null_set(0).id == 1
        assert w.core.alloc(s, 1, 10) == 1  # no quota of its own: not refused


@BASES
@QUIRK
def test_set_quota_leak(base: str, quirk: bool) -> None:
    w = world_with(base, 100, set_quota_leak=quirk)
    s = w.null_set(10)
    assert w.core.capacity_avail == 90
    w.core.set_free(s)
    assert w.core.capacity_avail == (90 if quirk else 100)


@BASES
@QUIRK
def test_charge_leak_on_failure(base: str, quirk: bool) -> None:
    w = world_with(base, charge_leak_on_failure=quirk)
    cg = w.cgroup("vm", 10)
    proc = w.spawn(cg)
    s = w.mm_set(proc, 1)
    w.core.alloc(s, 1, 10, task=proc)
    with refused(EDQUOT):
        w.core.alloc(s, 1, 10, task=proc)
    assert cg.counter == (2 if quirk else 1)


@BASES
@QUIRK
def test_same_limit_einval(base: str, quirk: bool) -> None:
    w = world_with(base, 100, same_limit_einval=quirk)
    cg = w.cgroup("vm", 5)
    if quirk:
        with refused(EINVAL, w):
            w.ctl.set_max(cg, 5)
    else:
        before = snapshot(w)
        w.ctl.set_max(cg, 5)
        assert snapshot(w) == before
    assert (cg.limit, w.core.capacity_avail) == (5, 95)


@BASES
@QUIRK
def test_uncharge_skips_defunct_mm(base: str, quirk: bool) -> None:
    """The owner exits while VT-d still holds its IOASID; its exit path (``task`` is the dead
    owner, as at ``do_exit``) then drops the last reference."""
    w = world_with(base, uncharge_skips_defunct_mm=quirk)
    cg = w.cgroup("vm", 10)
    owner = w.spawn(cg)
    s = w.mm_set(owner, 4)
    ioasid = w.core.alloc(s, 1, 10, task=owner)
    w.core.get(None, ioasid)
    w.core.free(s, ioasid, task=owner)
    w.tree.exit(owner)
    assert not owner.alive
    assert w.core.put(None, ioasid, task=owner) is True
    assert cg.counter == (1 if quirk else 0)


@BASES
@QUIRK
def test_cancel_attach_per_task(base: str, quirk: bool) -> None:
    w = world_with(base, cancel_attach_per_task=quirk)
    src, dst = w.cgroup("src", 10), w.cgroup("dst", 10)
    proc = w.spawn(src, threads=3)
    s = w.mm_set(proc, 4)
    for _ in range(2):
        w.core.alloc(s, 1, 10, task=proc)
    tset = TaskSet((proc,), src, dst)
    w.ctl.can_attach(tset)
    assert (src.counter, dst.counter) == (0, 2)
    w.ctl.cancel_attach(tset)
    assert (src.counter, dst.counter) == ((3, -1) if quirk else (2, 0))


@BASES
@QUIRK
def test_free_null_set_fails(base: str, quirk: bool) -> None:
    w = world_with(base, free_null_set_fails=quirk)
    s = w.null_set(4)
    w.core.alloc(s, 1, 10)
    ioasid = w.core.alloc(s, 1, 10)
    if quirk:
        with refused(EACCES, w):
            w.core.free(None, ioasid)
    else:
        w.core.free(None, ioasid)  # None: no ownership check, as for get and put
        assert ioasid not in w.core


@BASES
@QUIRK
def test_find_by_spid_get_pending(base: str, quirk: bool) -> None:
    w = world_with(base, find_by_spid_get_pending=quirk)
    s = w.null_set(4)
    ioasid = w.core.alloc(s, 1, 10)
    w.core.attach_spid(ioasid, 7)
    w.core.get(None, ioasid)
    w.core.free(s, ioasid)
    assert w.core.data(ioasid).state == IoasidState.FREE_PENDING
    if quirk:
        assert w.core.find_by_spid(s, 7, get=True) == ioasid
        assert w.core.data(ioasid).refs == 2
    else:
        with refused(EBUSY, w):
            w.core.find_by_spid(s, 7, get=True)
    assert w.core.find_by_spid(s, 7) == ioasid  # a plain lookup still finds it


@BASES
@QUIRK
def test_free_all_hides_pending(base: str, quirk: bool) -> None:
    w = world_with(base, free_all_hides_pending=quirk)
    s = w.null_set(4)
    w.core.alloc(s, 1, 10)
    held = w.core.alloc(s, 1, 10)
    w.core.attach_spid(held, 9)
    w.core.get(None, held)
    w.core.free_all_in_set(s)
    listed: list[int] = []
    w.core.set_for_each_ioasid(s, lambda i, _: listed.append(i))
    assert s.nr_ioasids == 1
    if quirk:
        assert (listed, w.core.find_by_spid(s, 9)) == ([], INVALID_IOASID)
    else:
        assert (listed, w.core.find_by_spid(s, 9)) == ([held], held)


@BASES
@QUIRK
def test_install_capacity_resets(base: str, quirk: bool) -> None:
    w = world_with(base, install_capacity_resets=quirk)
    w.core.install_capacity(PCI_PASID_MAX)  # installing the default value
    w.core.reserve_capacity(10)
    if quirk:
        w.core.install_capacity(100)  # still the default: allowed, and it drops the 10
        assert (w.core.capacity, w.core.capacity_avail) == (100, 100)
        w.core.install_capacity(200)  # ignored with a warning
        assert (w.core.capacity, w.core.capacity_avail) == (100, 100)
    else:
        with refused(EBUSY, w):
            w.core.install_capacity(100)  # installed once already
        fresh = world_with(base, install_capacity_resets=quirk)
        fresh.core.reserve_capacity(10)
        fresh.core.install_capacity(100)
        assert (fresh.core.capacity, fresh.core.capacity_avail) == (100, 90)
        busy = world_with(base, install_capacity_resets=quirk)
        busy.core.reserve_capacity(10)
        with refused(ENOSPC, busy):
            busy.core.install_capacity(9)  # less than what is already reserved


@BASES
@QUIRK
def test_active_state_unused(base: str, quirk: bool) -> None:
    """``fixed``: an ID is ACTIVE while references beyond the core's exist, whichever call
    took them (``get``, ``get_if_owned``, ``find_by_spid(get=True)``), IDLE again when they go."""
    w = world_with(base, active_state_unused=quirk)
    busy = IoasidState.IDLE if quirk else IoasidState.ACTIVE
    proc = w.spawn()
    s = w.mm_set(proc, 4)
    ioasid = w.core.alloc(s, 1, 10, task=proc)
    w.core.attach_spid(ioasid, 5)
    w.core.get(None, ioasid)
    assert w.core.data(ioasid).state == busy
    w.core.put(None, ioasid)
    assert w.core.data(ioasid).state == IoasidState.IDLE
    w.core.get_if_owned(ioasid, proc)
    assert w.core.data(ioasid).state == busy
    w.core.put(None, ioasid)
    w.core.find_by_spid(s, 5, get=True)
    assert w.core.data(ioasid).state == busy
    w.core.put(None, ioasid)
    assert w.core.data(ioasid).state == IoasidState.IDLE


@BASES
@QUIRK
def test_mm_notifier_needs_empty_set(base: str, quirk: bool) -> None:
    w = world_with(base, mm_notifier_needs_empty_set=quirk)
    rec = Recorder()
    proc = w.spawn()
    s = w.mm_set(proc, 4)
    a = w.core.alloc(s, 1, 10, task=proc)
    w.core.attach_spid(a, 5)
    b = w.core.alloc(s, 1, 10, task=proc)
    nb = rec.block("kvm")
    if quirk:
        with refused(EBUSY, w):
            w.core.register_notifier_mm(proc.mm, nb)
        return
    assert w.core.register_notifier_mm(proc.mm, nb) == 0
    replay = [(e, x.id, x.spid) for _, e, x in rec.seen]
    assert replay == [  # the IDs as they are now, to this block alone
        (IoasidNotify.ALLOC, a, 5),
        (IoasidNotify.BIND, a, 5),
        (IoasidNotify.ALLOC, b, INVALID_IOASID),
    ]
    c = w.core.alloc(s, 1, 10, task=proc)  # and it is subscribed from now on
    assert [(e, x.id) for _, e, x in rec.seen[3:]] == [(IoasidNotify.ALLOC, c)]


FACE_KNOBS = {  # knob -> the tests (a folder or a module under tests/) of where it acts
    "user_min_zero": "model/test_ioasid_device.py",
    "user_errors": "model/test_ioasid_device.py",
    "user_reopen_eexist": "model/test_ioasid_device.py",
    "vtd_quirks": "vtd",
}


@pytest.mark.parametrize("knob", sorted(FACE_KNOBS))
def test_face_knobs_are_tested_by_their_face(knob: str) -> None:
    """Knobs that act in a face (the /dev/ioasid device, VT-d) are tested with that face, on
    both sides: its tests must set the knob in a test, or run both profiles."""
    assert knob in {f.name for f in dataclasses.fields(Knobs)}
    folder = Path(__file__).parent.parent / FACE_KNOBS[knob]
    if not folder.exists():
        pytest.skip(f"{knob} acts in tests/{FACE_KNOBS[knob]}, which is not built yet")
    modules = sorted(folder.glob("test_*.py")) if folder.is_dir() else [folder]
    text = "\n".join(p.read_text() for p in modules)
    assert knob in text, f"no test in tests/{FACE_KNOBS[knob]} names {knob}"
    assert '"v4"' in text and '"fixed"' in text, f"tests/{FACE_KNOBS[knob]} runs one profile only"


# --------------------------------------------------------------------------- enumerated knobs


@BASES
@pytest.mark.parametrize("value", ["0", "max"])
def test_new_cgroup_max(base: str, value: str) -> None:
    w = world_with(base, new_cgroup_max=value)
    cg = w.cgroup("vm")
    proc = w.spawn(cg)
    s = w.mm_set(proc, 4)
    if value == "0":
        assert render_limit(cg.limit) == "0\n"
        with refused(EAGAIN, w):
            w.core.alloc(s, 1, 10, task=proc)
    else:
        assert render_limit(cg.limit) == "max\n"
        w.core.alloc(s, 1, 10, task=proc)
        assert cg.counter == 1
    assert w.core.capacity_avail == PCI_PASID_MAX - 4  # either way nothing reserved


@BASES
@pytest.mark.parametrize("model", ["reserve", "reserve-v4", "overcommit"])
def test_capacity_model_grants(base: str, model: str) -> None:
    """Granting limits: ``reserve`` and ``reserve-v4`` take numeric limits from the pool and
    refuse what it lacks; ``overcommit`` takes nothing and accepts any limit."""
    w = world_with(base, 100, capacity_model=model)
    a, b = w.cgroup("a"), w.cgroup("b")
    w.ctl.set_max(a, 60)
    if model == "overcommit":
        w.ctl.set_max(b, 1000)
        assert w.core.capacity_avail == 100
    else:
        assert w.core.capacity_avail == 40
        with refused(ENOSPC, w):
            w.ctl.set_max(b, 41)
        w.ctl.set_max(b, 40)
        assert w.core.capacity_avail == 0


@BASES
@pytest.mark.parametrize("model", ["reserve", "reserve-v4", "overcommit"])
def test_capacity_model_max_and_rmdir(base: str, model: str) -> None:
    """``max``: ``reserve`` returns the reservation and reads ``max``; ``reserve-v4`` grabs
    what is left and reads the number. ``rmdir``: ``reserve`` returns the reservation,
    ``reserve-v4`` leaks it."""
    w = world_with(base, 100, capacity_model=model)
    a, b = w.cgroup("a", 10), w.cgroup("b", 20)
    w.ctl.set_max(a, None)
    if model == "reserve":
        assert (render_limit(a.limit), w.core.capacity_avail) == ("max\n", 80)
    elif model == "reserve-v4":
        assert (render_limit(a.limit), w.core.capacity_avail) == ("70\n", 0)
    else:
        assert (render_limit(a.limit), w.core.capacity_avail) == ("max\n", 100)
    avail = w.core.capacity_avail
    w.tree.rmdir(b)
    assert w.core.capacity_avail == avail + (20 if model == "reserve" else 0)


@pytest.mark.parametrize("model", ["reserve", "reserve-v4", "overcommit"])
def test_capacity_model_allocation(model: str) -> None:
    """Allocation against capacity (over ``fixed``: in ``v4`` a quota-0 set takes the pool).
    ``reserve`` and ``overcommit`` draw an unreserved ID from the pool and refuse with
    ``ENOSPC`` when it is empty, whatever the limits; ``reserve-v4`` never looks at it."""
    w = world_with("fixed", 5, capacity_model=model)
    proc = w.spawn()  # root: no limit covers it
    s = w.mm_set(proc)
    for _ in range(5):
        w.core.alloc(s, 1, 100, task=proc)
    if model == "reserve-v4":
        w.core.alloc(s, 1, 100, task=proc)
        assert w.core.capacity_avail == 5
        return
    assert w.core.capacity_avail == 0
    with refused(ENOSPC, w):
        w.core.alloc(s, 1, 100, task=proc)
    w.core.put(s, 1)
    assert w.core.capacity_avail == 1  # the reclaimed ID went back to the pool
    if model == "overcommit":
        big = w.cgroup("big", 1000)  # accepted though it exceeds the capacity
        tenant = w.spawn(big)
        t = w.mm_set(tenant)
        w.core.alloc(t, 1, 100, task=tenant)
        with refused(ENOSPC, w):
            w.core.alloc(t, 1, 100, task=tenant)  # the limit allows it, the capacity not
        assert big.counter == 1


@BASES
@pytest.mark.parametrize("value", ["move", "stay"])
def test_migration(base: str, value: str) -> None:
    w = world_with(base, migration=value)
    src, dst = w.cgroup("src", 10), w.cgroup("dst", 10)
    proc = w.spawn(src)
    s = w.mm_set(proc, 4)
    for _ in range(2):
        w.core.alloc(s, 1, 10, task=proc)
    w.tree.attach(proc, dst)
    assert proc.cgroup is dst
    assert (src.counter, dst.counter) == ((0, 2) if value == "move" else (2, 0))


@pytest.mark.parametrize("value", ["move", "stay"])
def test_migration_stay_uncharges_where_charged(value: str) -> None:
    """With ``stay``, the charge is released where it was made, even after the move."""
    w = world_with("fixed", migration=value)
    src, dst = w.cgroup("src", 10), w.cgroup("dst", 10)
    proc = w.spawn(src)
    s = w.mm_set(proc, 4)
    ioasid = w.core.alloc(s, 1, 10, task=proc)
    w.tree.attach(proc, dst)
    w.core.free(s, ioasid, task=proc)
    assert (src.counter, dst.counter) == (0, 0)


@BASES
@pytest.mark.parametrize("target", ["charged", "current"])
def test_uncharge_target(base: str, target: str) -> None:
    w = world_with(base, uncharge_target=target)
    home, other = w.cgroup("home", 10), w.cgroup("other", 10)
    owner, stranger = w.spawn(home), w.spawn(other)
    s = w.mm_set(owner, 4)
    ids = [w.core.alloc(s, 1, 10, task=owner) for _ in range(2)]
    for ioasid in ids:
        w.core.get(None, ioasid)
        w.core.free(s, ioasid, task=owner)
    w.core.put(None, ids[0], task=None)  # a kernel worker
    w.core.put(None, ids[1], task=stranger)
    if target == "charged":
        assert (home.counter, other.counter) == (0, 0)
    else:
        assert (home.counter, other.counter) == (2, -1)


@BASES
@pytest.mark.parametrize("value", ["hierarchical", "v4"])
def test_events(base: str, value: str) -> None:
    w = world_with(base, events=value)
    # fixed carves nested limits out of a's 1: b and c are max until a grows
    below = None if w.knobs.capacity_model == "reserve" else 5
    a, b, c = w.cgroup("a", 1), w.cgroup("a/b", below), w.cgroup("a/c", below)
    proc = w.spawn(b)
    s = w.mm_set(proc, 8)
    w.core.alloc(s, 1, 100, task=proc)
    with refused(EAGAIN):
        w.core.alloc(s, 1, 100, task=proc)  # refused by a
    w.ctl.set_max(a, 10)
    w.ctl.set_max(b, 1)
    with refused(EAGAIN):
        w.core.alloc(s, 1, 100, task=proc)  # refused by b
    counts = [(cg.events, cg.events_local) for cg in (a, b, c)]
    if value == "v4":
        assert counts == [(0, 0)] * 3
        assert render_events(a.events) == "max 0\n"
    else:
        # events: the refusing level and its ancestors below the root; local: that level only
        assert counts == [(2, 1), (1, 1), (0, 0)]
        assert render_events(a.events) == "max 2\n"


@BASES
@pytest.mark.parametrize("value", ["explicit", "auto"])
def test_set_lifetime(base: str, value: str) -> None:
    w = world_with(base, set_lifetime=value)
    s = w.null_set(4)
    w.core.free(s, w.core.alloc(s, 1, 10))
    if value == "auto":
        assert not w.core.set_valid(s)
        with refused(EINVAL, w):
            w.core.alloc(s, 1, 10)
        return
    assert w.core.set_valid(s)
    held = w.core.alloc(s, 1, 10)
    w.core.get(None, held)
    assert w.core.set_free(s, when_empty=True) is False  # busy: destroyed when it empties
    w.core.free(s, held)
    assert w.core.set_valid(s)
    w.core.put(None, held)
    assert not w.core.set_valid(s)


# --------------------------------------------------------------------------- profiles


def test_every_knob_has_a_test() -> None:
    tested = {
        name.removeprefix("test_")
        for name, obj in globals().items()
        if name.startswith("test_") and callable(obj)
    }
    tested |= set(FACE_KNOBS)  # tested by their faces, checked above
    knobs = {f.name for f in dataclasses.fields(Knobs)} - {"profile"}
    untested = {k for k in knobs if not any(t == k or t.startswith(k + "_") for t in tested)}
    assert untested == set()


def test_profiles_match_the_design_table() -> None:
    """The profiles of ``docs/profiles.md``: ``fixed`` corrects every defect, ``v4`` reproduces
    each; the design choices take the values ``docs/model.md``'s table gives each profile."""
    fixed, v4 = profile("fixed"), profile("v4")
    assert fixed == Knobs() and fixed.profile == "fixed" and v4.profile == "v4"
    design = {
        "new_cgroup_max": ("0", "0"),
        "capacity_model": ("reserve", "reserve-v4"),
        "migration": ("move", "move"),
        "uncharge_target": ("charged", "current"),
        "events": ("hierarchical", "v4"),
        "user_errors": ("distinct", "v4"),
        "set_lifetime": ("explicit", "auto"),
    }
    for name, (in_fixed, in_v4) in design.items():
        assert (getattr(fixed, name), getattr(v4, name)) == (in_fixed, in_v4), name
    quirks = [f.name for f in dataclasses.fields(Knobs) if f.type in (bool, "bool")]
    assert "set_quota_leak" in quirks and "vtd_quirks" in quirks
    assert fixed.quirk_names == []
    assert v4.quirk_names == quirks


def test_profile_overrides_one_knob() -> None:
    knobs = profile("fixed", uncharge_target="current", free_null_set_fails=True)
    assert knobs.profile == "fixed"
    assert (knobs.uncharge_target, knobs.free_null_set_fails) == ("current", True)
    changed = {k for k, v in knobs.as_dict().items() if v != profile("fixed").as_dict()[k]}
    assert changed == {"uncharge_target", "free_null_set_fails"}
    assert knobs.quirk_names == ["free_null_set_fails"]
    assert profile("v4", events="hierarchical").replace(events="v4") == profile("v4")


@pytest.mark.parametrize(
    ("args", "overrides", "message"),
    [
        (("v5",), {}, "unknown profile 'v5'"),
        (("fixed",), {"no_such_knob": True}, "unknown knob"),
        (("fixed",), {"capacity_model": "lots"}, "capacity_model='lots'"),
        (("v4",), {"migration": "teleport"}, "migration='teleport'"),
        (("fixed",), {"events": None}, "events=None"),
        (("fixed",), {"set_quota_leak": 1}, "set_quota_leak=1: expected true or false"),
        (("fixed",), {"vtd_quirks": "yes"}, "vtd_quirks='yes'"),
    ],
)
def test_profile_validation(args: tuple[str, ...], overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        profile(*args, **overrides)


def test_knobs_are_immutable() -> None:
    knobs = profile("fixed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        knobs.events = "v4"  # type: ignore[misc]
    assert knobs.replace(events="v4").events == "v4" and knobs.events == "hierarchical"


def test_every_knob_is_documented() -> None:
    """``docs/model.md`` lists every knob (its table is what users read to choose them)."""
    doc = (Path(__file__).parents[2] / "docs" / "model.md").read_text()
    missing = [f.name for f in dataclasses.fields(Knobs)
               if f.name != "profile" and f"`{f.name}`" not in doc]
    assert not missing, f"knobs missing from docs/model.md: {missing}"
