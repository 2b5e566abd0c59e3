"""Stateful property tests: random sequences of operations on the core and the controller.

``FixedMachine`` drives the ``fixed`` profile through everything a face can do to the model:
cgroups (mkdir, rmdir, limits), processes (spawn, move, exit, whose exit frees the process's set as
``/dev/ioasid``'s release does), capacity reservations, sets, IOASIDs (alloc, get, put, free,
free_all_in_set, get_if_owned), SPIDs. After every step it checks the invariants:

* an ID is never held twice: one live record per value, every live value marked in the
  allocator and nothing else marked, each set's count equal to its live records;
* every cgroup's ``counter`` equals the live IOASIDs charged to it or a descendant, and its peak
  is never below it;
* the available capacity is never negative, and capacity = available + set reservations +
  cgroup reservations + pooled IDs + what callers reserved directly;
* states agree with references (ACTIVE exactly while extra references exist);
* a refused operation (any ``IoasidError``) changed nothing (``helpers.snapshot``).

``V4Machine`` runs the same rules in ``v4`` and checks what still holds there: unique IDs, the
allocator, set counts, non-negative capacity, and that refusals change nothing except the charge
that quirk 8 (``docs/profiles.md``) leaks on a quota refusal (exactly one along the allocating
task's walk).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ioasidsd.model import (
    INVALID_IOASID,
    NOTIFY_DONE,
    Cgroup,
    IoasidError,
    IoasidNbArgs,
    IoasidNotify,
    IoasidSet,
    IoasidState,
    NotifierBlock,
    Process,
)

from .helpers import MM, NULL, World, snapshot

CAPACITY = 32
SETTINGS = settings(
    max_examples=500,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

picks = st.integers(0, 63)
maybe_picks = st.one_of(st.none(), picks)
limits = st.one_of(st.none(), st.integers(0, 8), st.integers(0, CAPACITY + 4))
quotas = st.integers(0, 12)
spids = st.integers(0, 5)
names = st.sampled_from(["a", "b", "c"])


class FixedMachine(RuleBasedStateMachine):
    PROFILE = "fixed"

    def __init__(self) -> None:
        super().__init__()
        self.world = World(self.PROFILE, capacity=CAPACITY)
        self.core, self.ctl, self.tree = self.world.core, self.world.ctl, self.world.tree
        self.cgroups: list[Cgroup] = [self.tree.root]
        self.procs: list[Process] = []
        self.sets: list[IoasidSet] = []
        self.external = 0  # capacity reserved by direct reserve_capacity calls
        self.tree.exit_hooks.append(self._release_on_exit)
        self.core.register_notifier(None, NotifierBlock(self._global_event, 0, "global"))

    # ------------------------------------------------------------------ helpers
    def _release_on_exit(self, proc: Process) -> None:
        """What ``/dev/ioasid``'s release does when its process exits."""
        ioasid_set = self.core.find_mm_set(proc.mm)
        if ioasid_set is None:
            return
        self.core.free_all_in_set(ioasid_set, task=proc)
        with contextlib.suppress(IoasidError):  # v4: EBUSY while IDs are pending, EINVAL once
            self.core.set_free(ioasid_set, when_empty=self.PROFILE == "fixed")  # auto-destroyed

    def _global_event(self, nb: NotifierBlock, ev: IoasidNotify, args: IoasidNbArgs) -> int:
        assert ev == IoasidNotify.FREE, f"{ev.name} on the global chain"
        data = self.core.data(args.id)
        assert data.state == IoasidState.FREE_PENDING and data.refs >= 1
        return NOTIFY_DONE

    def _pick(self, items: list[Any], i: int | None) -> Any:
        return None if i is None or not items else items[i % len(items)]

    def _task(self, i: int | None) -> Process | None:
        return self._pick(self.procs, i)

    def _ioasid(self, i: int) -> int:
        live = sorted(self.core._ids)
        return live[i % len(live)] if live and i < 56 else 5000 + i

    def _live_cgroups(self) -> list[Cgroup]:
        return list(self.tree.cgroups())

    def attempt(self, what: str, fn: Any) -> Any:
        before = snapshot(self.world)
        try:
            result = fn()
        except IoasidError as exc:
            event(f"{what}: {exc.name}")
            self.check_refusal(exc, before, snapshot(self.world))
            return None
        event(f"{what}: ok")
        return result

    def check_refusal(self, exc: IoasidError, before: dict[str, Any],
                      after: dict[str, Any]) -> None:
        assert after == before, f"refused with {exc.name} but changed the model"

    @initialize()
    def populate(self) -> None:
        """Start from a small populated system so that short runs reach deep states: two
        limited cgroups, a process in each and one in the root, their MM sets, a host set."""
        vm = self.world.cgroup("vm", 8)
        nested = self.world.cgroup("vm/a", 4)
        self.cgroups += [vm, nested]
        self._new_set(self.core.set_alloc(None, 3, NULL))
        for cg in (self.tree.root, vm, nested):  # the quota-0 set last: in v4 it takes the rest
            proc = self.world.spawn(cg)
            self.procs.append(proc)
            self._new_set(self.core.set_alloc(proc.mm, 0 if cg is nested else 3, MM))

    # ------------------------------------------------------------------ cgroups
    @rule(parent=picks, name=names)
    def mkdir(self, parent: int, name: str) -> None:
        node = self._pick(self._live_cgroups(), parent)
        cg = self.attempt("mkdir", lambda: self.tree.mkdir(node, name))
        if cg is not None:
            self.cgroups.append(cg)

    @rule(i=picks)
    def rmdir(self, i: int) -> None:
        cg = self._pick(self.cgroups, i)
        self.attempt("rmdir", lambda: self.tree.rmdir(cg))

    @rule(i=picks, limit=limits)
    def set_max(self, i: int, limit: int | None) -> None:
        cg = self._pick(self._live_cgroups(), i)
        self.attempt("set_max", lambda: self.ctl.set_max(cg, limit))

    @rule(nr=st.integers(0, 6))
    def reserve(self, nr: int) -> None:
        got = self.attempt("reserve", lambda: self.core.reserve_capacity(nr))
        if got is not None:
            self.external += got

    @rule(nr=st.integers(1, 6))
    def cancel(self, nr: int) -> None:
        nr = min(nr, self.external)  # a caller only returns what it reserved
        if self.attempt("cancel", lambda: self.core.cancel_capacity(nr)) is not None:
            self.external -= nr

    # ------------------------------------------------------------------ processes
    @rule(i=picks, threads=st.integers(1, 3))
    def spawn(self, i: int, threads: int) -> None:
        cg = self._pick(self._live_cgroups(), i)
        self.procs.append(self.world.spawn(cg, threads))

    @rule(p=picks, i=picks)
    def move(self, p: int, i: int) -> None:
        proc = self._task(p)
        if proc is not None:
            cg = self._pick(self.cgroups, i)
            self.attempt("move", lambda: self.tree.attach(proc, cg))

    @rule(p=picks)
    def exit(self, p: int) -> None:
        proc = self._task(p)
        if proc is not None:
            self.tree.exit(proc)

    # ------------------------------------------------------------------ sets
    def _new_set(self, ioasid_set: IoasidSet | None) -> None:
        if ioasid_set is None:
            return

        def on_set_event(nb: NotifierBlock, ev: IoasidNotify, args: IoasidNbArgs) -> int:
            assert args.set is ioasid_set, "an event on the chain of another set"
            return NOTIFY_DONE

        self.core.register_notifier(ioasid_set, NotifierBlock(on_set_event, 1, "set"))
        self.sets.append(ioasid_set)

    @rule(p=picks, quota=quotas)
    def set_alloc_mm(self, p: int, quota: int) -> None:
        proc = self._task(p)
        if proc is not None:
            new = self.attempt("set_alloc", lambda: self.core.set_alloc(proc.mm, quota, MM))
            self._new_set(new)

    @rule(quota=quotas)
    def set_alloc_null(self, quota: int) -> None:
        self._new_set(self.attempt("set_alloc", lambda: self.core.set_alloc(None, quota, NULL)))

    @rule(s=picks, when_empty=st.booleans())
    def set_free(self, s: int, when_empty: bool) -> None:
        ioasid_set = self._pick(self.sets, s)
        if ioasid_set is not None:
            self.attempt("set_free", lambda: self.core.set_free(ioasid_set, when_empty=when_empty))

    # ------------------------------------------------------------------ IOASIDs
    @rule(s=maybe_picks, t=maybe_picks, lo=st.integers(0, 40), width=st.integers(0, 30))
    def alloc(self, s: int | None, t: int | None, lo: int, width: int) -> None:
        ioasid_set, task = self._pick(self.sets, s), self._task(t)
        self.attempt("alloc", lambda: self.core.alloc(ioasid_set, lo, lo + width, task=task))

    @rule(s=picks, lo=st.integers(0, 40), width=st.integers(0, 30))
    def alloc_as_owner(self, s: int, lo: int, width: int) -> None:
        """An allocation likely to pass: a live set, by its owner (any task for NULL sets)."""
        ioasid_set = self._pick([x for x in self.sets if self.core.set_valid(x)], s)
        if ioasid_set is None:
            return
        task = ioasid_set.token if ioasid_set.type == MM else self._task(s)
        self.attempt("alloc", lambda: self.core.alloc(ioasid_set, lo, lo + width, task=task))

    @rule(i=picks)
    def take_reference(self, i: int) -> None:
        """A subscriber (VT-d, KVM) takes a reference on a live ID."""
        ioasid = self._ioasid(i)
        self.attempt("get", lambda: self.core.get(None, ioasid))

    @rule(i=picks, s=maybe_picks)
    def get(self, i: int, s: int | None) -> None:
        ioasid, ioasid_set = self._ioasid(i), self._pick(self.sets, s)
        self.attempt("get", lambda: self.core.get(ioasid_set, ioasid))

    @rule(i=picks, s=maybe_picks, t=maybe_picks)
    def put(self, i: int, s: int | None, t: int | None) -> None:
        ioasid, ioasid_set = self._ioasid(i), self._pick(self.sets, s)
        data = self.core._ids.get(ioasid)
        refused = data is None or (ioasid_set is not None and data.set is not ioasid_set)
        before = snapshot(self.world)
        reclaimed = self.core.put(ioasid_set, ioasid, task=self._task(t))
        if refused:
            assert not reclaimed and snapshot(self.world) == before
        else:
            assert reclaimed == (ioasid not in self.core)

    @rule(i=picks, s=maybe_picks, t=maybe_picks)
    def free(self, i: int, s: int | None, t: int | None) -> None:
        ioasid, ioasid_set = self._ioasid(i), self._pick(self.sets, s)
        self.attempt("free", lambda: self.core.free(ioasid_set, ioasid, task=self._task(t)))

    @rule(s=picks, t=maybe_picks)
    def free_all(self, s: int, t: int | None) -> None:
        ioasid_set = self._pick(self.sets, s)
        if ioasid_set is not None:
            self.core.free_all_in_set(ioasid_set, task=self._task(t))

    @rule(i=picks, t=maybe_picks)
    def get_if_owned(self, i: int, t: int | None) -> None:
        ioasid, task = self._ioasid(i), self._task(t)
        self.attempt("get_if_owned", lambda: self.core.get_if_owned(ioasid, task))

    @rule(i=picks, spid=spids)
    def attach_spid(self, i: int, spid: int) -> None:
        ioasid = self._ioasid(i)
        self.attempt("attach_spid", lambda: self.core.attach_spid(ioasid, spid))

    @rule(i=picks)
    def detach_spid(self, i: int) -> None:
        ioasid = self._ioasid(i)
        self.attempt("detach_spid", lambda: self.core.detach_spid(ioasid))

    @rule(s=picks, spid=spids, get=st.booleans())
    def find_by_spid(self, s: int, spid: int, get: bool) -> None:
        ioasid_set = self._pick(self.sets, s)
        if ioasid_set is not None:
            found = self.attempt("find_by_spid",
                                 lambda: self.core.find_by_spid(ioasid_set, spid, get))
            if found not in (None, INVALID_IOASID):
                assert self.core.data(found).spid == spid

    # ------------------------------------------------------------------ invariants
    @invariant()
    def ids_are_held_once(self) -> None:
        core = self.core
        values = list(core._ids)
        for value in values:
            data = core._ids.get(value)
            assert data is not None and data.id == value and data.refs >= 1
            assert core.set_valid(data.set), "a live IOASID in a destroyed set"
        assert len(core._ids) == len(values)  # the count matches what is marked used
        counts = Counter(id(d.set) for d in core._ids.values())
        for s in core.sets:
            assert s.nr_ioasids == counts[id(s)]
            members = [core._ids.get(k) for k in s.xa]
            assert all(d is not None and d.set is s for d in members)
            assert s.spids == {d.spid: d.id for d in members if d.spid != INVALID_IOASID}
            spids = [d.spid for d in members if d.spid != INVALID_IOASID]
            assert len(spids) == len(set(spids)), "a SPID used twice in one set"

    @invariant()
    def capacity_never_negative(self) -> None:
        assert 0 <= self.core.capacity_avail <= self.core.capacity

    @invariant()
    def processes_are_in_the_tree(self) -> None:
        for proc in self.tree.processes.values():
            assert proc.alive and proc in proc.cgroup.procs
            assert not self.tree.parent_gone(proc.cgroup)


def limited_below(cg: Cgroup) -> list[Cgroup]:
    """The cgroups under ``cg`` with a numeric limit and none between."""
    found, todo = [], list(cg.children.values())
    while todo:
        node = todo.pop()
        if node.limit is not None:
            found.append(node)
        else:
            todo.extend(node.children.values())
    return found


class FixedInvariants(FixedMachine):
    """The ``fixed`` profile's own invariants on top of the shared ones."""

    @invariant()
    def counters_match_charges(self) -> None:
        charged: Counter[int] = Counter()
        for data in self.core._ids.values():
            if data.cgroup is not None:
                for node in data.cgroup.walk():
                    charged[id(node)] += 1
        for cg in self.tree.cgroups():
            assert cg.counter == charged[id(cg)], f"{cg.path}: {cg.counter} != {charged[id(cg)]}"
            assert cg.peak >= cg.counter

    @invariant()
    def capacity_is_accounted(self) -> None:
        core = self.core
        sets = sum(s.reserved for s in core.sets)
        cgroups = sum(cg.reserved for cg in self.tree.cgroups())
        pooled = sum(1 for d in core._ids.values() if d.pooled)
        assert core.capacity == core.capacity_avail + sets + cgroups + pooled + self.external
        for cg in self.tree.cgroups():
            if not cg.is_root:
                # a top limit holds itself from the pool; a nested one is carved out of its
                # nearest limited ancestor and holds nothing; the carve-outs fit
                nested = any(n.limit is not None for n in cg.chain[1:])
                assert cg.reserved == (0 if nested else cg.limit or 0)
                if cg.limit is not None:
                    assert sum(d.limit for d in limited_below(cg)) <= cg.limit

    @invariant()
    def state_follows_references(self) -> None:
        for data in self.core._ids.values():
            if data.state != IoasidState.FREE_PENDING:
                expected = IoasidState.ACTIVE if data.refs > 1 else IoasidState.IDLE
                assert data.state == expected, data


class V4Invariants(FixedMachine):
    """The ``v4`` profile: the shared invariants, and refusals change nothing but quirk 8."""

    PROFILE = "v4"

    def check_refusal(self, exc: IoasidError, before: dict[str, Any],
                      after: dict[str, Any]) -> None:
        if exc.name != "EDQUOT" or after == before:
            super().check_refusal(exc, before, after)
            return
        # Quirk 8: the charge made before the quota check stays: +1 on each level of one walk
        # (current and peak), nothing else changes.
        for key in before:
            if key != "cgroups":
                assert after[key] == before[key], key
        grown = {a[0] for b, a in zip(before["cgroups"], after["cgroups"], strict=True)
                 if (a[3], a[4]) != (b[3], b[4])}
        assert grown, "EDQUOT changed something other than a charge"
        leaf = max(grown, key=len)
        walk = {"/".join(leaf.split("/")[:n]) for n in range(2, leaf.count("/") + 2)}
        assert grown == walk
        for b, a in zip(before["cgroups"], after["cgroups"], strict=True):
            assert a[:3] + a[5:] == b[:3] + b[5:]
            if a[0] in grown:
                assert a[3] == b[3] + 1


TestFixedProfile = FixedInvariants.TestCase
TestFixedProfile.settings = SETTINGS
TestV4Profile = V4Invariants.TestCase
TestV4Profile.settings = SETTINGS
