"""The seam between the cgroup-v1 hierarchy and the controllers bound to it: a hierarchy with stub
controllers that record their hooks calls them in the kernel's order, a refusal leaves the tree
and the membership as they were, and the ``ioasids`` controller's ``Charge`` undoes exactly one
``try_charge``."""

from __future__ import annotations

from errno import EAGAIN, EBUSY, EDEADLK, EPERM

import pytest

from ioasidsd.model import Cgroup, Controller, Hierarchy, IoasidError, Process, TaskSet

from .helpers import World


class Stub(Controller):
    """A controller that records every hook as ``(name, hook, what)``, ``what`` being what the
    hook could observe of the tree, and raises ``EPERM`` from the hooks named in ``refuse``."""

    def __init__(self, name: str, calls: list[tuple[str, str, object]],
                 refuse: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.calls = calls
        self.refuse = refuse

    def _record(self, hook: str, what: object) -> None:
        self.calls.append((self.name, hook, what))
        if hook in self.refuse:
            raise IoasidError(EPERM, f"{self.name} refuses {hook}")

    @staticmethod
    def _linked(cg: Cgroup) -> bool:
        return cg.parent is None or cg.parent.children.get(cg.name) is cg

    def css_alloc(self, cg: Cgroup) -> None:
        self._record("css_alloc", (cg.path, self._linked(cg)))

    def css_online(self, cg: Cgroup) -> None:
        self._record("css_online", (cg.path, self._linked(cg)))

    def css_offline(self, cg: Cgroup) -> None:
        self._record("css_offline", (cg.path, self._linked(cg)))

    def css_free(self, cg: Cgroup) -> None:
        self._record("css_free", (cg.path, self._linked(cg)))

    @staticmethod
    def _where(tset: TaskSet) -> tuple[str, str, list[str]]:
        return (tset.src.path, tset.dst.path, [p.cgroup.path for p in tset.procs])

    def can_attach(self, tset: TaskSet) -> None:
        self._record("can_attach", self._where(tset))

    def cancel_attach(self, tset: TaskSet) -> None:
        self._record("cancel_attach", self._where(tset))

    def attach(self, tset: TaskSet) -> None:
        self._record("attach", self._where(tset))

    def fork(self, proc: Process) -> None:
        self._record("fork", (proc.pid, proc.cgroup.path, proc in proc.cgroup.procs))

    def exit(self, proc: Process) -> None:
        self._record("exit", (proc.pid, proc.alive, proc in proc.cgroup.procs))


def hierarchy(*refusals: tuple[str, str]) -> tuple[Hierarchy, list[tuple[str, str, object]]]:
    """A hierarchy with stub controllers ``a`` then ``b`` bound, the calls they record (binding
    cleared) and ``refusals`` as ``(controller, hook)`` pairs."""
    calls: list[tuple[str, str, object]] = []
    tree = Hierarchy()
    for name in ("a", "b"):
        stub = Stub(name, calls)
        tree.bind(stub)
        stub.refuse = frozenset(hook for who, hook in refusals if who == name)
    calls.clear()
    return tree, calls


def membership(tree: Hierarchy) -> dict[str, list[int]]:
    return {cg.path: sorted(p.pid for p in cg.procs) for cg in tree.cgroups()}


def test_bind_sets_up_the_root_and_refuses_a_populated_tree() -> None:
    calls: list[tuple[str, str, object]] = []
    tree = Hierarchy()
    tree.bind(Stub("a", calls))
    assert calls == [("a", "css_alloc", ("/", True)), ("a", "css_online", ("/", True))]
    tree.mkdir(tree.root, "x")
    with pytest.raises(IoasidError) as info:
        tree.bind(Stub("b", calls))
    assert info.value.errno == EBUSY


def test_mkdir_allocates_before_linking_then_onlines() -> None:
    tree, calls = hierarchy()
    tree.mkdir(tree.root, "x")
    assert calls == [
        ("a", "css_alloc", ("/x", False)),
        ("b", "css_alloc", ("/x", False)),
        ("a", "css_online", ("/x", True)),
        ("b", "css_online", ("/x", True)),
    ]


def test_a_refused_css_alloc_fails_mkdir_and_frees_what_was_allocated() -> None:
    tree, calls = hierarchy(("b", "css_alloc"))
    with pytest.raises(IoasidError) as info:
        tree.mkdir(tree.root, "x")
    assert info.value.errno == EPERM and tree.root.children == {}
    assert calls == [
        ("a", "css_alloc", ("/x", False)),
        ("b", "css_alloc", ("/x", False)),
        ("a", "css_free", ("/x", False)),
    ]


def test_rmdir_offlines_while_linked_then_frees_once_unlinked() -> None:
    tree, calls = hierarchy()
    x = tree.mkdir(tree.root, "x")
    calls.clear()
    tree.rmdir(x)
    assert calls == [
        ("a", "css_offline", ("/x", True)),
        ("b", "css_offline", ("/x", True)),
        ("a", "css_free", ("/x", False)),
        ("b", "css_free", ("/x", False)),
    ]


def test_a_busy_rmdir_reaches_no_controller_and_a_refused_offline_keeps_the_cgroup() -> None:
    tree, calls = hierarchy(("b", "css_offline"))
    x = tree.mkdir(tree.root, "x")
    tree.track(7, 1.0, x)
    calls.clear()
    with pytest.raises(IoasidError) as info:
        tree.rmdir(x)
    assert info.value.errno == EBUSY and calls == []
    tree.exit(tree.processes[7])
    calls.clear()
    with pytest.raises(IoasidError) as info:
        tree.rmdir(x)
    assert info.value.errno == EPERM and tree.lookup("x") is x
    assert calls == [
        ("a", "css_offline", ("/x", True)),
        ("b", "css_offline", ("/x", True)),
        ("a", "css_online", ("/x", True)),
    ]


def test_attach_asks_every_controller_moves_then_tells_them() -> None:
    tree, calls = hierarchy()
    src, dst = tree.mkdir(tree.root, "src"), tree.mkdir(tree.root, "dst")
    proc = tree.track(7, 1.0, src)
    calls.clear()
    tree.attach(proc, dst)
    assert calls == [
        ("a", "can_attach", ("/src", "/dst", ["/src"])),
        ("b", "can_attach", ("/src", "/dst", ["/src"])),
        ("a", "attach", ("/src", "/dst", ["/dst"])),
        ("b", "attach", ("/src", "/dst", ["/dst"])),
    ]
    assert membership(tree) == {"/": [], "/dst": [7], "/src": []}


def test_a_refused_can_attach_cancels_the_controllers_before_it_and_moves_nothing() -> None:
    tree, calls = hierarchy(("b", "can_attach"))
    src, dst = tree.mkdir(tree.root, "src"), tree.mkdir(tree.root, "dst")
    src.notify_on_release = True
    proc = tree.track(7, 1.0, src)
    before = membership(tree)
    calls.clear()
    with pytest.raises(IoasidError) as info:
        tree.attach(proc, dst)
    assert info.value.errno == EPERM
    assert calls == [
        ("a", "can_attach", ("/src", "/dst", ["/src"])),
        ("b", "can_attach", ("/src", "/dst", ["/src"])),
        ("a", "cancel_attach", ("/src", "/dst", ["/src"])),
    ]
    assert membership(tree) == before and proc.cgroup is src and not tree.releases


def test_attach_into_the_same_cgroup_reaches_no_controller() -> None:
    tree, calls = hierarchy()
    src = tree.mkdir(tree.root, "src")
    proc = tree.track(7, 1.0, src)
    calls.clear()
    tree.attach(proc, src)
    assert calls == []


def test_fork_tells_the_controllers_once_the_child_is_a_member() -> None:
    tree, calls = hierarchy()
    src = tree.mkdir(tree.root, "src")
    tree.track(7, 1.0, src)
    tree.track(8, 1.0)  # in the root: its children are not tracked
    calls.clear()
    child = tree.fork(7, 9, 2.0)
    assert child is not None and tree.fork(8, 10, 2.0) is None
    assert tree.fork(7, 9, 2.0) is child  # seen twice: one fork
    assert calls == [("a", "fork", (9, "/src", True)), ("b", "fork", (9, "/src", True))]


def test_exit_runs_the_exit_hooks_then_leaves_then_tells_the_controllers() -> None:
    tree, calls = hierarchy()
    src = tree.mkdir(tree.root, "src")
    proc = tree.track(7, 1.0, src)
    tree.exit_hooks.append(
        lambda p: calls.append(("hook", "exit_hook", (p.pid, p.alive, p in p.cgroup.procs))))
    calls.clear()
    tree.exit(proc)
    tree.exit(proc)  # exiting twice does nothing
    assert calls == [
        ("hook", "exit_hook", (7, False, True)),
        ("a", "exit", (7, False, False)),
        ("b", "exit", (7, False, False)),
    ]
    assert 7 not in tree.processes


def test_the_hierarchy_alone_keeps_no_controller_state() -> None:
    tree = Hierarchy()
    cg = tree.mkdir(tree.root, "x")
    tree.attach(tree.track(7, 1.0), cg)
    for name in ("limit", "reserved", "counter", "peak", "events", "events_local"):
        assert not hasattr(cg, name) and not hasattr(tree.root, name)


def test_enter_guards_every_change_a_face_makes() -> None:
    def refuse() -> None:
        raise IoasidError(EDEADLK, "in a callback")

    tree = Hierarchy(enter=refuse)
    proc = tree.track(7, 1.0)  # the process tracker's learning is not a face's change
    for change in (lambda: tree.mkdir(tree.root, "x"), lambda: tree.rmdir(tree.root),
                   lambda: tree.rename(tree.root, tree.root, "y"),
                   lambda: tree.attach(proc, tree.root)):
        with pytest.raises(IoasidError) as info:
            change()
        assert info.value.errno == EDEADLK


# ---------------------------------------------------------------------- the Charge token
def levels(*cgs: Cgroup) -> list[tuple[int, int]]:
    return [(cg.counter, cg.peak) for cg in cgs]


def test_cancel_charge_with_its_token_restores_exactly_the_counters_and_peaks() -> None:
    w = World("fixed")
    top = w.cgroup("top", 10)
    mid = w.cgroup("top/mid", None)
    leaf = w.cgroup("top/mid/leaf", None)
    w.ctl.charge(mid, 2)  # mid and top at 2 with peak 2; leaf untouched
    w.ctl.uncharge(mid, 1)  # counters 1, peaks stay 2
    before = levels(top, mid, leaf)
    charge = w.ctl.try_charge(leaf, 3)  # raises every peak: leaf 3, mid 4, top 4
    assert charge.cgroup is leaf and charge.n == 3 and charge.covered
    assert levels(top, mid, leaf) == [(4, 4), (4, 4), (3, 3)]
    w.ctl.cancel_charge(charge)
    assert levels(top, mid, leaf) == before == [(1, 2), (1, 2), (0, 0)]


def test_a_charge_elsewhere_in_between_does_not_change_what_cancel_charge_undoes() -> None:
    w = World("fixed")
    a, b = w.cgroup("a", 5), w.cgroup("b", 5)
    first = w.ctl.try_charge(a, 1)
    second = w.ctl.try_charge(b, 2)
    w.ctl.cancel_charge(first)
    assert levels(a, b) == [(0, 0), (2, 2)]
    w.ctl.cancel_charge(second)
    assert levels(a, b) == [(0, 0), (0, 0)]


def test_a_charge_is_a_frozen_record_and_a_refused_one_leaves_every_level() -> None:
    w = World("fixed")
    a = w.cgroup("a", 1)
    charge = w.ctl.try_charge(a, 1)
    with pytest.raises(AttributeError):
        charge.n = 2  # type: ignore[misc]
    with pytest.raises(IoasidError) as info:
        w.ctl.try_charge(a, 1)
    assert info.value.errno == EAGAIN and levels(a) == [(1, 1)]
