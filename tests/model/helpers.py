"""A small world to drive the model in tests: a core with a manual-mode work queue, the cgroup
controller over it, processes and cgroups made on demand, a notifier recorder and a snapshot of
everything a face could observe."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from ioasidsd.model import (
    NOTIFY_DONE,
    Cgroup,
    IoasidCore,
    IoasidError,
    IoasidNbArgs,
    IoasidNotify,
    IoasidsController,
    IoasidSet,
    IoasidSetType,
    Knobs,
    NotifierBlock,
    OrderedWorkQueue,
    Process,
    profile,
)

NULL = IoasidSetType.NULL
MM = IoasidSetType.MM


def profiles(*names: str) -> pytest.MarkDecorator:
    """Parametrize a test over the named profiles (argument ``prof``)."""
    return pytest.mark.parametrize("prof", names or ("fixed", "v4"))


class World:
    """An ``IoasidCore`` and an ``IoasidsController`` (``ctl``) under one set of knobs, with the
    hierarchy the controller is bound to (``tree``).

    The work queue runs in manual mode (no thread), so tests decide when deferred work runs.
    """

    def __init__(self, knobs: Knobs | str = "fixed", *, capacity: int | None = None) -> None:
        self.knobs = profile(knobs) if isinstance(knobs, str) else knobs
        self.wq = OrderedWorkQueue(mode="manual")
        self.core = IoasidCore(self.knobs, wq=self.wq)
        self.ctl = IoasidsController(self.core)
        self.tree = self.ctl.hierarchy
        self._next_pid = 1000
        if capacity is not None:
            self.core.install_capacity(capacity)

    # ------------------------------------------------------------------ the hierarchy
    def cgroup(self, path: str, limit: int | str | None = "keep") -> Cgroup:
        """The cgroup at ``path``, made (with its parents) if missing; ``limit`` is written to
        it unless it is ``"keep"`` (``None`` writes ``max``)."""
        node = self.tree.root
        for name in path.strip("/").split("/"):
            node = node.children.get(name) or self.tree.mkdir(node, name)
        if limit != "keep":
            self.ctl.set_max(node, limit)  # type: ignore[arg-type]
        return node

    def spawn(self, cgroup: Cgroup | str | None = None, threads: int = 1) -> Process:
        """A new process with ``threads`` threads, tracked in ``cgroup`` (default: the root)."""
        cg = self.cgroup(cgroup) if isinstance(cgroup, str) else cgroup
        self._next_pid += 1
        return self.tree.track(self._next_pid, float(self._next_pid), cg, threads)

    # ------------------------------------------------------------------ sets
    def mm_set(self, proc: Process, quota: int = 0) -> IoasidSet:
        """The MM set of ``proc`` (as ``/dev/ioasid`` makes it, quota 0 by default)."""
        return self.core.set_alloc(proc.mm, quota, MM)

    def null_set(self, quota: int = 0) -> IoasidSet:
        """A NULL-token (kernel) set."""
        return self.core.set_alloc(None, quota, NULL)

    def currents(self, *cgroups: Cgroup) -> list[int]:
        return [cg.counter for cg in cgroups]


@dataclass
class Recorder:
    """Notifier blocks that record what they see, in one shared order."""

    seen: list[tuple[str, IoasidNotify, IoasidNbArgs]] = field(default_factory=list)

    def block(self, name: str, priority: int = 0, ret: int = NOTIFY_DONE) -> NotifierBlock:
        def callback(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
            self.seen.append((name, event, args))
            return ret

        return NotifierBlock(callback, priority, name)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.seen]

    def events(self, name: str | None = None) -> list[IoasidNotify]:
        return [ev for n, ev, _ in self.seen if name is None or n == name]

    def clear(self) -> None:
        self.seen.clear()


@contextmanager
def refused(code: int, world: World | None = None) -> Iterator[pytest.ExceptionInfo[IoasidError]]:
    """Expect an ``IoasidError`` with errno ``code``; with ``world``, also expect that the
    refusal changed nothing a face could observe (see ``snapshot``)."""
    before = snapshot(world) if world is not None else None
    with pytest.raises(IoasidError) as excinfo:
        yield excinfo
    got = excinfo.value.errno
    assert got == code, f"expected {errno.errorcode[code]}, got {excinfo.value.name}"
    if world is not None:
        assert snapshot(world) == before, "a refused operation changed the model"


def snapshot(world: World) -> dict[str, Any]:
    """Everything about the model that a face could observe, as plain values.

    Left out on purpose: the refusal counters (``events``, ``events_local``), whose job is to
    record refusals, and the log (``core.messages``, chain warnings).
    """
    core, tree = world.core, world.tree
    return {
        "capacity": (core.capacity, core.capacity_avail),
        "sets": [
            (
                s.id, s.type, s.token, s.quota, s.reserved, s.nr_ioasids, sorted(s.xa),
                s.free_requested, [nb.name for nb in s.nh.blocks],
            )
            for s in core.sets
        ],
        "ids": [
            (
                d.id, d.set.id, d.state, d.refs, d.spid, d.private,
                d.cgroup.path if d.cgroup is not None else None, d.pooled,
            )
            for d in core.ioasids()
        ],
        "allocator": len(core._ids),
        "global_chain": [nb.name for nb in core.notifier.blocks],
        "mm_registrations": [
            (r.token, r.nb.name, r.active, r.set.id if r.set is not None else None)
            for r in core.pending_registrations()
        ],
        "cgroups": [
            (cg.path, cg.limit, cg.reserved, cg.counter, cg.peak, sorted(p.pid for p in cg.procs))
            for cg in tree.cgroups()
        ],
        "processes": sorted((p.pid, p.cgroup.path, p.alive) for p in tree.processes.values()),
        "work": len(world.wq),
    }
