"""The model's fast paths, as the faces drive them, against the general paths they stand for.

Tenants of ``/dev/ioasid`` live and die through ``System`` as the daemon's faces and the
experiment engine drive it: fork into a cgroup, open, allocate (one or a batch), free, take an
extra reference on the process's set (``user_get_from_task``, as VFIO does) or on one of its
IOASIDs (``ioasid_get``, as a binding does), move, exit, close.
The same random steps run on two equal systems, one of which has the fast paths turned off (each
declines, so the general path runs); after every step both have made the same ``Change``
records, hold the same snapshot and have logged the same messages.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioasidsd.model import IoasidError
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change
from ioasidsd.model.knobs import profile
from ioasidsd.model.snapshot import dump
from ioasidsd.system import System

from .ops import FakeProcesses

PROFILES = (
    ("fixed", {}),
    ("v4", {"set_quota_zero_takes_all": False}),
    ("v4", {}),
    ("fixed", {"set_lifetime": "auto", "migration": "stay"}),
    ("fixed", {"free_all_hides_pending": True, "uncharge_target": "current"}),
)

STEPS = ("fork", "open", "alloc", "batch", "free", "get", "put", "ref", "unref", "move", "exit",
         "close")
# a whole tenant's arrival (fork, open, allocate) in one step, and its usual next steps weighted,
# so that short scripts reach the states that matter: sets with IDs, references, exits
WEIGHTED = (*STEPS, "tenant", "tenant", "tenant", "ref", "exit", "exit")
steps = st.lists(st.tuples(st.sampled_from(WEIGHTED), st.integers(0, 5), st.integers(1, 4)),
                 max_size=60)


def record(change: Change) -> tuple[Any, ...]:
    """A change with its objects by name, comparable across two systems. Its cgroups as a
    set: when a change names several charge walks, their order is that of a set of cgroups,
    which differs between two systems (by the objects' addresses) and means nothing."""
    refusal = change.refusal
    return (change.kind, sorted(cg.path for cg in change.cgroups),
            tuple(p.key for p in change.processes), change.ids, change.ids_alike, change.sets,
            change.path, dict(change.orphans),
            None if refusal is None else (refusal.pid, refusal.command, refusal.cgroup,
                                          refusal.level, refusal.errno))


class Tenants:
    """A system, its processes and the tenants' open files and extra references."""

    def __init__(self, profile_name: str, knobs: dict[str, Any], fast: bool,
                 listening: bool = True) -> None:
        self.procs = FakeProcesses()
        self.changes: list[tuple[Any, ...]] = []
        self.system = System(profile(profile_name, **knobs), processes=self.procs,
                             on_change=self.listen if listening else None)
        if not fast:  # every fast path declines: the general path runs
            self.system.core.release_set_locked = lambda *_, **__: False  # type: ignore
            self.system.ioasid_device.release_at_exit_locked = lambda *_: False  # type: ignore
        for path, limit in (("/a", "6"), ("/a/b", "4"), ("/c", "5")):
            self.system.mkdir(path)
            with contextlib.suppress(IoasidError):
                self.system.write_max(path, limit)
        self.files: dict[int, Any] = {}
        self.users: list[Any] = []
        self.next_pid = 100

    def listen(self, change: Change) -> None:
        self.changes.append(record(change))

    def alive(self) -> list[int]:
        return sorted(self.procs.live)

    def step(self, name: str, i: int, n: int) -> None:
        system, alive = self.system, self.alive()
        pid = alive[i % len(alive)] if alive else None
        if name == "tenant":
            for part in ("fork", "open", "batch" if n > 1 else "alloc"):
                self.step(part, -1, n)
            return
        if name == "fork":
            self.next_pid += 1
            self.procs.live[self.next_pid] = float(self.next_pid)
            cg = system.cgroups.lookup(("/a/b", "/a", "/c")[i % 3])
            system.fork(1, self.next_pid, float(self.next_pid), into=cg)
        elif pid is None:
            return
        elif name == "open":
            self.files[pid] = system.ioasid_open(pid, closes_at_exit=i % 4 != 0)
        elif name in ("alloc", "batch", "free") and pid in self.files:
            file = self.files[pid]
            if name == "alloc":
                system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC,
                                    uapi.ALLOC_REQUEST.pack(16, 0, 1, 40))
            elif name == "batch":
                system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH,
                                    uapi.ALLOC_BATCH.pack(20, 0, 1, 40, n))
            else:
                system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE,
                                    uapi.FREE_ARG.pack(i * 3 + n))
        elif name == "get":
            proc = system.cgroups.process(pid)
            if proc is not None:
                with system.lock:
                    user = system.ioasid_device.user_get_from_task(proc)
                if user is not None:
                    self.users.append(user)
        elif name == "put" and self.users:
            with system.lock:
                system.ioasid_device.user_put(self.users.pop(i % len(self.users)))
        elif name in ("ref", "unref"):
            core = system.core
            ids = sorted(data.id for data in core.ioasids())
            if ids:
                data = core.data(ids[(i * 5 + n) % len(ids)])
                if name == "ref":
                    core.get(data.set, data.id)
                else:
                    core.put(data.set, data.id)
        elif name == "move":
            system.write_procs(("/a/b", "/a", "/c", "/")[n % 4], str(pid), writer_pid=pid,
                               writer_uid=0)
        elif name == "exit":
            system.exit(pid)
            del self.procs.live[pid]
        elif name == "close" and pid in self.files:
            system.ioasid_release(self.files.pop(pid))

    def state(self) -> tuple[Any, ...]:
        core = self.system.core
        return dump(core), list(core.messages), self.changes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PROFILES), steps)
def test_the_fast_paths_make_what_the_general_paths_make(setup: tuple[str, dict[str, Any]],
                                                           script: list[tuple[str, int, int]],
                                                           ) -> None:
    fast, general = Tenants(*setup, fast=True), Tenants(*setup, fast=False)
    for name, i, n in script:
        outcomes = []
        for tenants in (fast, general):
            try:
                tenants.step(name, i, n)
                outcomes.append(None)
            except IoasidError as exc:
                outcomes.append(exc.errno)
        assert outcomes[0] == outcomes[1], (name, i, n)
        assert fast.state() == general.state(), (name, i, n)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PROFILES), steps, steps)
def test_a_system_nobody_listens_to_changes_the_model_alike(
        setup: tuple[str, dict[str, Any]], unheard: list[tuple[str, int, int]],
        heard: list[tuple[str, int, int]]) -> None:
    """Without ``on_change`` a tenant's calls make no ``Change``: the model ends in the same
    state, with the same errors and messages, as with a listener; and a listener set later
    gets, from then on, the records one set from the start gets."""
    quiet, listened = Tenants(*setup, fast=True, listening=False), Tenants(*setup, fast=True)
    for part, script in (("unheard", unheard), ("heard", heard)):
        if part == "heard":
            quiet.system.on_change = quiet.listen
            listened.changes.clear()
        for name, i, n in script:
            outcomes = []
            for tenants in (quiet, listened):
                try:
                    tenants.step(name, i, n)
                    outcomes.append(None)
                except IoasidError as exc:
                    outcomes.append(exc.errno)
            assert outcomes[0] == outcomes[1], (part, name, i, n)
            compared = slice(None) if part == "heard" else slice(2)  # the records once heard
            assert quiet.state()[compared] == listened.state()[compared], (part, name, i, n)


def test_a_batch_nobody_heard_is_not_taken_for_a_later_change() -> None:
    """A batch allocation made while nobody listens leaves nothing behind: a later change of
    as many IDs (their batch free) is not reported as one batch allocation's IDs."""
    tenants = Tenants("fixed", {}, fast=True, listening=False)
    for part in ("fork", "open", "batch"):
        tenants.step(part, 1, 3)
    system = tenants.system
    (file,) = tenants.files.values()
    ids = sorted(data.id for data in system.core.ioasids())
    assert len(ids) == 3
    system.on_change = tenants.listen
    free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + 12, 0, 3) + b"".join(
        i.to_bytes(4, "little") for i in ids)
    assert system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)[0] == 3
    (freed,) = tenants.changes
    assert freed[3] == tuple(ids) and freed[4] is False  # ids, ids_alike


@pytest.mark.parametrize("setup", PROFILES)
def test_an_exit_records_the_cgroups_its_ids_stay_charged_to(setup: tuple[str, dict[str, Any]],
                                                              ) -> None:
    """A tenant moved after its allocation and then exiting: where the migration leaves the
    charges (``stay``), its exit touches the cgroup it left as well as its own; the exit's
    fast path records both, as the general path does."""
    fast, general = Tenants(*setup, fast=True), Tenants(*setup, fast=False)
    charged: set[str] = set()
    for name, i, n in (("fork", 0, 1), ("open", 1, 1), ("alloc", 0, 1), ("move", 0, 2),
                       ("exit", 0, 1)):
        if name == "exit":  # what the exit must name: the walks of its IDs' cgroups and its own
            core = fast.system.core
            charged = {cg.path for data in core.ioasids() if data.cgroup is not None
                       for cg in data.cgroup.chain} | {"/c"}
        for tenants in (fast, general):
            tenants.step(name, i, n)
        assert fast.state() == general.state(), name
    exits = [c for c in fast.changes if c[0] == "ioasid" and c[2]]
    assert exits and set(exits[-1][1]) == charged


def test_a_tenants_calls_run_the_after_release_hook_without_the_lock() -> None:
    """``fork``, ``ioasid_open`` and ``exit`` hold the lock without ``with``; each still runs
    the ``after_release`` hook once, after letting go, as ``with`` would; an empty ``when``
    leaves it alone."""
    procs = FakeProcesses()
    system = System(profile("fixed"), processes=procs)
    cg = system.mkdir("/a")
    seen: list[bool] = []
    due: list[int] = [1]
    system.lock.after_release(lambda: seen.append(system.lock.held()), when=due)
    procs.live[200] = 200.0
    system.fork(1, 200, 200.0, into=cg)
    assert seen == [False]
    system.ioasid_open(200)
    assert seen == [False, False]
    system.exit(200)
    assert seen == [False, False, False]
    due.clear()
    procs.live[201] = 201.0
    system.fork(1, 201, 201.0, into=cg)
    system.ioasid_open(201)
    system.exit(201)
    assert seen == [False, False, False]
