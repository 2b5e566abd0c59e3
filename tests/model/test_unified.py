"""The cgroup-v2 hierarchy of the model (``ioasidsd.model.unified``): where charges walk as the
controller is enabled and disabled, and the rules that refuse, each changing nothing."""

from __future__ import annotations

import errno

import pytest

from ioasidsd.model import IoasidError, IoasidSetType, profile
from ioasidsd.model.unified import UnifiedHierarchy
from ioasidsd.system import System


def world() -> tuple[System, UnifiedHierarchy]:
    system = System(hierarchy="v2")
    tree = system.cgroups
    assert isinstance(tree, UnifiedHierarchy)
    return system, tree


def allocate(system: System, cgroup_path: str, pid: int, n: int) -> None:
    tree = system.cgroups
    proc = tree.track(pid, float(pid), tree.lookup(cgroup_path))
    ioasid_set = system.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
    for _ in range(n):
        system.core.alloc(ioasid_set, 1, 1000, task=proc)


def test_charges_follow_the_controller_as_it_is_enabled_and_disabled() -> None:
    system, _tree = world()
    system.write_subtree_control("/", "+ioasids")
    a = system.mkdir("/a")
    system.write_max("/a", "max")
    b = system.mkdir("/a/b")
    assert b.chain == (a,)  # the controller is not enabled in b: b's processes charge a
    allocate(system, "/a/b", 100, 3)
    assert (a.counter, a.peak) == (3, 3)
    system.write_subtree_control("/a", "+ioasids")
    assert b.chain == (b, a)
    assert (b.counter, b.peak, b.limit, a.counter) == (3, 3, 0, 3)
    avail = system.core.capacity_avail
    system.write_max("/a/b", "5")
    assert system.core.capacity_avail == avail - 5
    system.write_subtree_control("/a", "-ioasids")
    assert b.chain == (a,)
    assert (b.limit, b.counter, b.peak, b.reserved, a.counter) == (0, 0, 0, 0, 3)
    assert system.core.capacity_avail == avail  # b's reservation came back
    system.write_subtree_control("/a", "+ioasids")  # enabled again: afresh, charges included
    assert (b.limit, b.counter, a.counter) == (0, 3, 3)


def test_disabling_at_the_top_leaves_only_the_root() -> None:
    system, _tree = world()
    system.write_subtree_control("/", "+ioasids")
    a = system.mkdir("/a")
    system.write_max("/a", "max")
    allocate(system, "/a", 100, 2)
    system.write_subtree_control("/", "-ioasids")
    assert a.chain == () and a.counter == 0
    system.write_subtree_control("/", "+ioasids")
    assert a.chain == (a,) and (a.counter, a.limit) == (2, 0)


@pytest.mark.parametrize("write, code", [
    ("+ioasids", errno.ENOENT),  # /a/b: its parent does not enable it
])
def test_enable_what_the_parent_lacks(write: str, code: int) -> None:
    system, _tree = world()
    system.mkdir("/a")
    system.mkdir("/a/b")
    with pytest.raises(IoasidError) as refused:
        system.write_subtree_control("/a/b", write)
    assert refused.value.errno == code


def test_refusals_change_nothing() -> None:
    system, tree = world()
    a = system.mkdir("/a")
    tree.track(7, 7.0, a)
    with pytest.raises(IoasidError) as absent:
        system.write_max("/a", "5")  # the root does not enable ioasids: a has no ioasids.max
    assert absent.value.errno == errno.ENOENT and a.limit == 0
    system.write_subtree_control("/", "+ioasids")
    for data, code in (("+ioasids", errno.EBUSY), ("+memory", errno.EINVAL),
                       ("ioasids", errno.EINVAL)):
        with pytest.raises(IoasidError) as refused:
            system.write_subtree_control("/a", data)
        assert refused.value.errno == code
        assert a.subtree_control == frozenset()
    with pytest.raises(IoasidError) as renamed:
        system.rename("/a", "/b")
    assert renamed.value.errno == errno.EPERM
    system.write_hierarchy_limit("/", "cgroup.max.descendants", "1")
    with pytest.raises(IoasidError) as too_many:
        system.mkdir("/c")
    assert too_many.value.errno == errno.EAGAIN and "c" not in tree.root.children


def test_delegation_is_the_common_ancestors_procs_file() -> None:
    system, tree = world()
    system.mkdir("/a")
    b = system.mkdir("/a/b")
    c = system.mkdir("/a/c")
    with pytest.raises(IoasidError) as denied:
        tree.check_move(b, c, 1000, 1000)
    assert denied.value.errno == errno.EACCES
    system.set_attrs("/a", {"cgroup.procs": {"uid": 1000}})
    tree.check_move(b, c, 1000, 1000)
    with pytest.raises(IoasidError):
        tree.check_move(tree.root, c, 1000, 1000)  # the common ancestor is the root
    system.set_attrs("/a", {"cgroup.procs": {"uid": 0, "gid": 1000, "mode": 0o664}})
    tree.check_move(b, c, 1000, 1000)
    tree.check_move(b, c, 0, 0)


def test_v1_is_the_default_and_other_names_are_refused() -> None:
    assert System().cgroups.version == 1
    with pytest.raises(ValueError):
        System(hierarchy="v3")


def test_a_removed_cgroup_still_charged_leaves_the_walk_of_a_disabled_parent() -> None:
    system = System(profile("fixed", migration="stay"), hierarchy="v2")
    system.write_subtree_control("/", "+ioasids")
    a = system.mkdir("/a")
    system.write_max("/a", "max")
    system.write_subtree_control("/a", "+ioasids")
    b = system.mkdir("/a/b")
    system.write_max("/a/b", "max")
    proc = system.cgroups.track(100, 100.0, b)
    ioasid_set = system.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
    ioasid = system.core.alloc(ioasid_set, 1, 1000, task=proc)
    system.cgroups.attach(proc, a.parent)  # to the root; the charge stays with b
    assert system.core.data(ioasid).cgroup is b
    system.rmdir("/a/b")
    system.write_subtree_control("/a", "-ioasids")
    system.write_subtree_control("/", "-ioasids")
    system.write_subtree_control("/", "+ioasids")
    assert a.counter == 0
    system.core.free(ioasid_set, ioasid, task=proc)
    assert a.counter == 0 and not system.controller.warned_negative
