"""The experiment engine: a discrete-event simulation of a policy's tenants on the real model.

``run_replication(policy, replication)`` runs one replication and returns its raw counts and
time integrals (``Replication``, plain data that crosses process boundaries); ``results``
(``ioasidsd.experiments.results``) sums replications into the contract's result object.

What a run does, on simulated time and with its own random generators (nothing reads the wall
clock but the one figure ``wall_s``, nothing draws from a shared generator):

* ``build_system`` makes a ``System`` over a fresh model with the policy's profile, knobs and
  capacity (through the VT-d driver's boot when a workload binds devices, as the daemon does),
  whose processes are simulated (``SimulatedProcesses``), and creates the hierarchy in file
  order, writing each limit through ``System.write_max``; a workload's cgroup and a migration
  target are made if missing, like ``mkdir -p``.
* A tenant is one simulated process: at its arrival it is forked into its workload's cgroup
  (``System.fork``), opens ``/dev/ioasid`` (``System.ioasid_open``) and asks for its IOASIDs
  with one ``REQUEST_ALLOC`` (one IOASID) or ``REQUEST_ALLOC_BATCH`` (several) through
  ``System.ioasid_ioctl``: all or none. Refused, it exits at once (``leave``) or keeps its
  file and asks again after the ``retry`` delay, up to ``max`` more times. Admitted, it binds
  the share of its IOASIDs that ``bind`` names (``BIND_GPASID``, lowest IDs first), migrates
  once after the ``migrate`` delay (``System.write_procs`` into the target), and at the end
  of its lifetime exits (``System.exit``): the model releases its set, its charges and its
  bindings as it does for a real process's exit.
* Metrics consume the ``Change`` records ``System`` hands to ``on_change`` (``Recorder``): a
  ``Refusal`` says which level refused (its ``level``, or ``capacity`` when no limit did), the
  cgroups a change names are re-read (``counter``) and integrated over time.

Random numbers: every workload has its own generators for its arrivals, lifetimes, counts,
retries and migrations, seeded from the replication's seed and the workload's name, so that
two policies that differ in limits or semantics see the same tenants (common random numbers),
and replication ``i`` of seed ``s`` is the same wherever it runs.

The event loop is a binary heap of ``(time, sequence, action, argument)``: ties run in the order
they were scheduled.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import socket
import time
from array import array
from dataclasses import dataclass, field
from errno import ENOSPC
from random import Random
from typing import TYPE_CHECKING, Any

from ioasidsd.experiments.errors import PolicyError
from ioasidsd.experiments.processes import SimulatedProcesses
from ioasidsd.experiments.trace import schedule_trace, trace_cgroups, trace_devices
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change
from ioasidsd.model.core import PCI_PASID_MAX
from ioasidsd.model.errors import IoasidError
from ioasidsd.system import System

if TYPE_CHECKING:
    from collections.abc import Callable

    from ioasidsd.experiments.policy import Policy, Workload
    from ioasidsd.model.hierarchy import Cgroup
    from ioasidsd.model.ioasid_device import IoasidFile

CAPACITY = "capacity"
"""The ``refused_by`` key of refusals for want of an IOASID in the core."""
SERIES_POINTS = 400
"""How many samples of each cgroup's ``current`` a replication that keeps its series takes."""
ID_RANGE = (1, PCI_PASID_MAX - 1)
"""The range a tenant asks its IOASIDs in (a PASID-capable device's, without RID_PASID 0)."""
ALLOC_ONE = uapi.ALLOC_REQUEST.pack(16, 0, *ID_RANGE)
"""The argument of a tenant's ``REQUEST_ALLOC`` (the same for every tenant: packed once)."""
_REQUEST_ALLOC = uapi.IOASID_REQUEST_ALLOC
heappush = heapq.heappush


def replication_seed(seed: int, replication: int) -> int:
    """The seed of replication ``replication`` of a run seeded ``seed``: a 64-bit digest, so
    neighbouring seeds and replications give unrelated streams."""
    digest = hashlib.sha256(f"ioasids-experiment:{seed}:{replication}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def stream(seed: int, *names: str) -> Random:
    """An independent generator for one purpose (``names``) of a replication seeded ``seed``."""
    digest = hashlib.sha256(":".join((str(seed), *names)).encode()).digest()
    return Random(int.from_bytes(digest[:8], "big"))


def devid(bdf: str) -> int:
    """The user API's numeric ``devid`` of the PCI address ``SSSS:BB:DD.F``."""
    seg, bus, devfn = bdf.split(":")
    dev, fn = devfn.split(".")
    return int(seg, 16) << 16 | int(bus, 16) << 8 | int(dev, 16) << 3 | int(fn)


# ---------------------------------------------------------------------- the system
@dataclass
class Built:
    """A policy's system, ready to run: the ``System``, its simulated processes and its
    cgroups by path (every cgroup the policy names, with their ancestors)."""

    system: System
    processes: SimulatedProcesses
    cgroups: dict[str, Cgroup]


def build_system(policy: Policy, on_change: Callable[[Change], None] | None = None) -> Built:
    """A ``System`` over a fresh model with the policy's profile, knobs, capacity and hierarchy
    (see the module's documentation). ``PolicyError`` naming the ``[[cgroup]]`` whose limit
    the model refuses."""
    processes = SimulatedProcesses()
    system = System(policy.knobs, processes=processes, on_change=on_change)
    devices = sorted({w.bind_device for w in policy.workloads if w.bind_device}
                     | {d for w in policy.workloads for d in trace_devices(w.trace)})
    if devices:
        from ioasidsd.vtd import build_driver

        driver = build_driver(system.core, {"host_quota": 0,
                                            "device": [{"bdf": bdf} for bdf in devices]},
                              capacity=policy.capacity)
        system.vtd_attach(driver)
    elif policy.capacity != system.core.capacity:
        system.core.install_capacity(policy.capacity)
    cgroups: dict[str, Cgroup] = {"/": system.cgroups.root}
    for spec in policy.cgroups:
        cgroups[spec.path] = system.mkdir(spec.path)
        if spec.max != "default":
            try:
                system.write_max(spec.path, "max" if spec.max is None else str(spec.max))
            except IoasidError as exc:
                raise PolicyError(f"cgroup[{spec.path}].max",
                                  f"refused by the model: {exc.strerror} ({exc.name})") from None
    for w in policy.workloads:
        for path in (w.cgroup, w.migrate_to, *sorted(trace_cgroups(w.trace))):
            if path is None:
                continue
            parts = path.strip("/").split("/") if path != "/" else []
            for i in range(1, len(parts) + 1):
                sub = "/" + "/".join(parts[:i])
                if sub not in cgroups:
                    cgroups[sub] = system.mkdir(sub)
    return Built(system, processes, cgroups)


# ---------------------------------------------------------------------- metrics
class Recorder:
    """The metrics of one replication, from the ``Change`` records of its ``System``.

    ``on_change`` is the ``System``'s hook: it keeps each record, as it comes, for the end of
    the event (``changes``; a list's own ``append``, so that a record costs no Python call).
    ``settle(now)``, after every event, counts the refusals the records carry (by level, once
    ``now`` has reached ``warmup``), re-reads the cgroups they name and their ancestors, and
    the IOASIDs in use, and integrates each value over time from ``warmup`` on.
    ``refusal_level(now)`` gives, within an event, the level of the last refusal so far (for
    the engine to attribute to the tenant), counting the records kept until then.
    """

    def __init__(self, built: Built, warmup: float) -> None:
        self.warmup = warmup
        self.index_of: dict[Cgroup, int] = {}
        self.paths: list[str] = []
        self.nodes: list[Cgroup] = []
        for path, cg in built.cgroups.items():
            if path != "/":
                self.index_of[cg] = len(self.paths)
                self.paths.append(path)
                self.nodes.append(cg)
        n = len(self.paths)
        self.value = [0] * n
        self.since = [0.0] * n
        self.area = [0.0] * n
        self.peak = [0] * n
        self.refusals: dict[str, int] = {}
        self.last_refusal: str | None = None
        """The level of the last refusal counted (see ``refusal_level``)."""
        self.ids = built.system.core.ioasid_index
        self.in_use = 0
        self.in_use_since = 0.0
        self.in_use_area = 0.0
        self.in_use_peak = 0
        self.changes: list[Change] = []
        """The records reported since the last ``settle``, in order."""
        self.on_change: Callable[[Change], None] = self.changes.append
        self.counted = 0
        """How many of ``changes`` had their refusals counted already (``_count_refusals``)."""
        # what a change naming a cgroup makes to re-read: the indices of it and of its
        # ancestors the run follows, by the cgroup's ``id`` (an int key: no Python ``__hash__``
        # on the hot path); a cgroup the run does not follow has none
        self.reread: dict[int, tuple[int, ...]] = {
            id(cg): tuple(self.index_of[node] for node in cg.chain if node in self.index_of)
            for cg in self.nodes}
        # the same for a change's whole ``cgroups`` (nearly always one cgroup's ``chain``, the
        # same tuple every time): each index once, by the tuple (see ``_reread_all``)
        self.reread_all: dict[tuple[Cgroup, ...], tuple[int, ...]] = {}

    def _count_refusals(self, now: float) -> None:
        """Count the refusals of the records not counted yet, in order, at time ``now``."""
        changes = self.changes
        for i in range(self.counted, len(changes)):
            refusal = changes[i].refusal
            if refusal is not None:
                self._count(refusal.level or CAPACITY, now)
        self.counted = len(changes)

    def _count(self, level: str, now: float) -> None:
        self.last_refusal = level
        if now >= self.warmup:
            self.refusals[level] = self.refusals.get(level, 0) + 1

    def refusal_level(self, now: float) -> str:
        """The level of the last refusal reported so far (``capacity`` when none was), at
        time ``now`` within the current event: what a refused request is attributed to."""
        self._count_refusals(now)
        return self.last_refusal or CAPACITY

    def refused_open(self, exc: IoasidError, now: float) -> str:
        """An ``open`` of ``/dev/ioasid`` was refused (``v4``: no capacity left for a set) at
        time ``now``: the level to count, as a ``Refusal`` would have been counted."""
        self._count_refusals(now)  # the records before it first, in their order
        level = CAPACITY if exc.errno == ENOSPC else (exc.level or exc.name)
        self._count(level, now)
        return level

    def _reread_all(self, cgroups: tuple[Cgroup, ...]) -> tuple[int, ...]:
        """The indices to re-read for a change naming ``cgroups``, each once, in order (an
        index read twice finds its value unchanged the second time: the same result). Kept
        for the next change naming the same cgroups, up to a bound on how many are kept."""
        seen: dict[int, None] = {}
        for cg in cgroups:
            for i in self.reread.get(id(cg), ()):
                seen[i] = None
        indices = tuple(seen)
        if len(self.reread_all) < 4096:
            self.reread_all[cgroups] = indices
        return indices

    def _integrate(self, i: int, now: float, value: int) -> None:
        start = self.since[i]
        if start < self.warmup:
            start = self.warmup
        if now > start:
            self.area[i] += self.value[i] * (now - start)
        self.value[i] = value
        self.since[i] = now
        if now >= self.warmup and value > self.peak[i]:
            self.peak[i] = value

    def settle(self, now: float) -> None:
        """Count and re-read what the records since the last call name, at simulated time
        ``now``; the records are then dropped."""
        changes = self.changes
        if changes:
            # ``_integrate`` inlined: this runs after nearly every event
            reread_all, value, nodes, since = self.reread_all, self.value, self.nodes, self.since
            warmup = self.warmup
            refused = False
            for change in changes:
                if change.refusal is not None:
                    refused = True
                cgroups = change.cgroups
                if not cgroups:
                    continue
                indices = reread_all.get(cgroups)
                if indices is None:
                    indices = self._reread_all(cgroups)
                for i in indices:
                    counter = nodes[i].counter
                    old = value[i]
                    if counter == old:  # an unchanged value adds nothing to integrate
                        continue
                    start = since[i]
                    if start < warmup:
                        start = warmup
                    if now > start:
                        self.area[i] += old * (now - start)
                    value[i] = counter
                    since[i] = now
                    if now >= warmup and counter > self.peak[i]:
                        self.peak[i] = counter
            if refused:
                self._count_refusals(now)
            changes.clear()
            self.counted = 0
        in_use = self.ids.count
        if in_use != self.in_use or now <= self.warmup:
            start = self.in_use_since
            if start < self.warmup:
                start = self.warmup
            if now > start:
                self.in_use_area += self.in_use * (now - start)
            self.in_use = in_use
            self.in_use_since = now
            if now >= self.warmup and in_use > self.in_use_peak:
                self.in_use_peak = in_use

    def start_statistics(self) -> None:
        """At ``warmup``: the values then are the first peaks."""
        for i in range(len(self.paths)):
            self.peak[i] = max(self.peak[i], self.value[i])
        self.in_use_peak = max(self.in_use_peak, self.in_use)

    def close(self, end: float) -> None:
        """Integrate every value up to ``end``."""
        for i in range(len(self.paths)):
            self._integrate(i, end, self.value[i])
        start = max(self.in_use_since, self.warmup)
        if end > start:
            self.in_use_area += self.in_use * (end - start)
        self.in_use_since = end


# ---------------------------------------------------------------------- one replication
@dataclass
class WorkloadCounts:
    """What happened to one workload's tenants arriving after warm-up (``migrated`` and
    ``migrations_refused``, ``bound`` and ``binds_refused`` count actions after warm-up)."""

    offered: int = 0
    admitted: int = 0
    refused: int = 0
    refused_by: dict[str, int] = field(default_factory=dict)
    migrated: int = 0
    migrations_refused: int = 0
    bound: int = 0
    binds_refused: int = 0


@dataclass
class Replication:
    """The raw outcome of one replication: counts per workload, and per cgroup (by path) the
    integral of ``current`` over the statistics window, its peak and the refusals at it;
    the same for the IOASIDs in use; ``events`` handled; ``series`` (``time`` and a list of
    ``current`` per cgroup) when kept; ``wall_s`` its wall-clock time, ``cpu_s`` the CPU time
    of the thread that ran it (not that of its process's other threads: a Dask worker's own),
    and ``worker`` which process that was (``host:pid``). The last three depend on where and
    when it ran: no result uses them but ``wall_s`` and ``events_per_s``, and benchmarks."""

    index: int
    seed: int
    window: float
    workloads: dict[str, WorkloadCounts]
    cgroup_area: dict[str, float]
    cgroup_peak: dict[str, int]
    refusals: dict[str, int]
    in_use_area: float
    in_use_peak: int
    events: int
    wall_s: float
    series: dict[str, list[float]] | None = None
    cpu_s: float = 0.0
    worker: str = ""


class _Tenant:
    """A tenant's simulated process: ``file`` is its ``/dev/ioasid`` file while it lives,
    ``None`` once it has exited. The events scheduled for it carry it."""

    __slots__ = ("count", "file", "pid", "stats", "tries", "workload")

    def __init__(self, workload: WorkloadRun, pid: int, file: IoasidFile | None, count: int,
                 stats: WorkloadCounts | None) -> None:
        self.workload = workload
        self.pid = pid
        self.file = file
        self.count = count
        self.tries = 0
        self.stats = stats  # None: arrived during warm-up, not counted


class WorkloadRun:
    """A workload's generators and counters within one replication."""

    def __init__(self, w: Workload, seed: int, cgroup: Cgroup) -> None:
        self.spec = w
        self.cgroup = cgroup
        self.path = w.cgroup
        self.stats = WorkloadCounts()
        arrivals = stream(seed, w.name, "arrival")
        self.gap = w.arrival.gaps(arrivals)
        self.first_gap = w.arrival.gaps(arrivals)
        self.lifetime = (w.lifetime.sampler(stream(seed, w.name, "lifetime"))
                         if w.lifetime is not None else None)
        self.count = w.ioasids.sampler(stream(seed, w.name, "ioasids"))
        self.retry_after = (w.retry_after.sampler(stream(seed, w.name, "retry"))
                            if w.retry_after is not None else None)
        self.migrate_after = (w.migrate_after.sampler(stream(seed, w.name, "migrate"))
                              if w.migrate_after is not None else None)
        self.devid = devid(w.bind_device) if w.bind_device else 0


class Engine:
    """One replication of a policy (see the module's documentation); ``run()`` once."""

    def __init__(self, policy: Policy, replication: int = 0, *, keep_series: bool = False,
                 ) -> None:
        self.policy = policy
        self.warmup = policy.warmup
        self.index = replication
        self.seed = replication_seed(policy.seed, replication)
        self.built = build_system(policy)
        self.recorder = Recorder(self.built, policy.warmup)
        self.built.system.on_change = self.recorder.on_change
        self.system = self.built.system
        self.processes = self.built.processes
        # the calls every tenant makes, bound once
        self.spawn, self.reap = self.processes.spawn, self.processes.reap
        self.fork, self.exit = self.system.fork, self.system.exit
        self.ioasid_open, self.ioasid_ioctl = self.system.ioasid_open, self.system.ioasid_ioctl
        self.heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self.sequence = 0
        self.now = 0.0
        self.events = 0
        self.workloads = [WorkloadRun(w, self.seed, self.built.cgroups[w.cgroup])
                          for w in policy.workloads]
        self.keep_series = keep_series
        self.series: dict[str, list[float]] | None = None

    def schedule(self, when: float, action: Callable[[Any], None], arg: Any) -> None:
        """Run ``action(arg)`` at simulated time ``when``."""
        self.sequence += 1
        heappush(self.heap, (when, self.sequence, action, arg))

    # ------------------------------------------------------------------ tenants
    def arrive(self, run: WorkloadRun) -> None:
        now = self.now
        self.sequence = sequence = self.sequence + 1
        heappush(self.heap, (now + run.gap(), sequence, self.arrive, run))
        stats = run.stats if now >= self.warmup else None
        if stats is not None:
            stats.offered += 1
        count = run.count()
        pid = self.spawn(now)
        self.fork(1, pid, now, into=run.cgroup)
        try:
            file = self.ioasid_open(pid)
        except IoasidError as exc:
            level = self.recorder.refused_open(exc, now)
            self.depart_pid(pid)
            if stats is not None:
                stats.refused += 1
                stats.refused_by[level] = stats.refused_by.get(level, 0) + 1
            return
        self.request(_Tenant(run, pid, file, count, stats))

    def request(self, tenant: _Tenant) -> None:
        """The tenant asks for its IOASIDs: admitted, retrying later, or gone."""
        count = tenant.count
        file = tenant.file
        assert file is not None
        try:
            if count == 1:
                result, _ = self.ioasid_ioctl(file, _REQUEST_ALLOC, ALLOC_ONE)
            else:
                _, out = self.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH,
                                           uapi.ALLOC_BATCH.pack(20, 0, *ID_RANGE, count))
        except IoasidError:
            self.refused(tenant)
            return
        run, stats = tenant.workload, tenant.stats
        if stats is not None:
            stats.admitted += 1
        if run.lifetime is not None:
            self.sequence = sequence = self.sequence + 1
            heappush(self.heap, (self.now + run.lifetime(), sequence, self.depart, tenant))
        if run.devid:
            self.bind(tenant, file, (result,) if count == 1 else tuple(array("I", out)))
        if run.migrate_after is not None:
            self.schedule(self.now + run.migrate_after(), self.migrate, tenant)

    def refused(self, tenant: _Tenant) -> None:
        run = tenant.workload
        if tenant.tries < run.spec.retry_max and run.retry_after is not None:
            tenant.tries += 1
            self.schedule(self.now + run.retry_after(), self.retry, tenant)
            return
        stats = tenant.stats
        if stats is not None:
            level = self.recorder.refusal_level(self.now)
            stats.refused += 1
            stats.refused_by[level] = stats.refused_by.get(level, 0) + 1
        self.depart(tenant)

    def retry(self, tenant: _Tenant) -> None:
        if tenant.file is not None:
            self.request(tenant)

    def bind(self, tenant: _Tenant, file: IoasidFile, ids: tuple[int, ...]) -> None:
        run = tenant.workload
        n = math.floor(run.spec.bind_share * len(ids) + 1e-9)
        counting = self.now >= self.policy.warmup
        for hpasid in sorted(ids)[:n]:
            arg = uapi.BIND_GPASID.pack(32, 0, hpasid, 0, run.devid, 0, 0)
            try:
                self.system.ioasid_ioctl(file, uapi.IOASID_BIND_GPASID, arg)
            except IoasidError:
                if counting:
                    run.stats.binds_refused += 1
                continue
            if counting:
                run.stats.bound += 1

    def migrate(self, tenant: _Tenant) -> None:
        if tenant.file is None:
            return  # gone already
        pid = tenant.pid
        run = tenant.workload
        counting = self.now >= self.policy.warmup
        try:
            self.system.write_procs(run.spec.migrate_to or "/", str(pid), writer_pid=pid,
                                    writer_uid=0)
        except IoasidError:
            if counting:
                run.stats.migrations_refused += 1
            return
        if counting:
            run.stats.migrated += 1

    def depart(self, tenant: _Tenant) -> None:
        if tenant.file is not None:
            tenant.file = None
            pid = tenant.pid  # ``depart_pid`` inlined: every admitted tenant ends here
            self.exit(pid)
            self.reap(pid)

    def depart_pid(self, pid: int) -> None:
        self.exit(pid)
        self.reap(pid)

    # ------------------------------------------------------------------ the loop
    def sample(self, _: object) -> None:
        assert self.series is not None
        self.series["time"].append(self.now)
        for path, cg in zip(self.recorder.paths, self.recorder.nodes, strict=True):
            self.series[path].append(cg.counter)
        self.schedule(self.now + self.policy.duration / SERIES_POINTS, self.sample, None)

    def start_statistics(self, _: object) -> None:
        self.recorder.start_statistics()

    def run(self, progress: Callable[[float], None] | None = None) -> Replication:
        """Run the replication to ``duration``; its outcome. ``progress(fraction)`` is called
        now and then with the share of simulated time done."""
        policy = self.policy
        started = time.perf_counter()
        cpu_started = time.thread_time()
        for run in self.workloads:
            if run.spec.arrival.process == "trace":
                schedule_trace(self, run)
            else:
                self.schedule(run.first_gap(), self.arrive, run)
        if policy.warmup > 0:
            self.schedule(policy.warmup, self.start_statistics, None)
        if self.keep_series:
            self.series = {"time": [], **{p: [] for p in self.recorder.paths}}
            self.schedule(0.0, self.sample, None)
        heap, pop, end = self.heap, heapq.heappop, policy.duration
        recorder = self.recorder
        events = 0
        while heap:
            when, _, action, arg = pop(heap)
            if when >= end:
                break
            self.now = when
            action(arg)
            recorder.settle(when)
            events += 1
            if progress is not None and not events & 0x3FFF:
                progress(when / end)
        recorder.close(end)
        samples = len(self.series["time"]) if self.series else 0
        self.events = events - samples - (1 if policy.warmup > 0 else 0)
        window = end - policy.warmup
        return Replication(
            index=self.index, seed=self.seed, window=window,
            workloads={r.spec.name: r.stats for r in self.workloads},
            cgroup_area=dict(zip(recorder.paths, recorder.area, strict=True)),
            cgroup_peak=dict(zip(recorder.paths, recorder.peak, strict=True)),
            refusals=dict(recorder.refusals), in_use_area=recorder.in_use_area,
            in_use_peak=recorder.in_use_peak, events=self.events,
            wall_s=time.perf_counter() - started, series=self.series,
            cpu_s=time.thread_time() - cpu_started, worker=f"{socket.gethostname()}:{os.getpid()}")


def run_replication(policy: Policy, replication: int = 0, *, keep_series: bool = False,
                    ) -> Replication:
    """Run replication ``replication`` of ``policy``; its raw outcome."""
    return Engine(policy, replication, keep_series=keep_series).run()
