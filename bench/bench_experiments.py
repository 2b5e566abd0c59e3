"""Benchmark of the experiment engine: speed against the bare model, sweeps on 2 workers
against 1, and memory with many live tenants against the model alone.

Throughput: the fixed workload of the experiments contract: one workload of one-IOASID
tenants with exponential lifetimes, born in ``/a/b`` where both levels have numeric limits
(``/a`` 125, ``/a/b`` 100), offered 80 Erlangs (80% of the tighter limit). The figure is
simulated tenant events per second (an arrival with its allocation, or a departure with its
release) through the full engine (``System``, the user API's calls, the change feed, the
metrics); the reference is the bare model's alloc+free pairs per second (``bench_model``'s
loop: the core and controller called directly, depth 4), measured alternately in the same
process, best round of each. Target: ratio >= 0.3. Each figure is also measured by this
process's CPU time (``ratio_cpu``), which the machine's other work does not inflate, and beside
them the engine's ceiling: the four ``System`` calls a tenant makes, in a plain loop with no
event loop and no metrics (``system_calls_ratio_cpu``).

Event loop: the same arrival/departure pattern with no model, on the engine's heap and on
SimPy (``simpy.Environment`` with a process per tenant), in events per second: what the loop
alone costs per event, beside what a model event costs. This is why the engine uses a heap.

Sweep: 8 grid points of about 200,000 events each (``--sweep-events``), run with
``run_policies`` on 1 worker (in this process) and on 2 (an embedded Dask ``LocalCluster``,
its start included). Target: 2 workers at least 1.7 times faster. Also by CPU time (see
``sweep``): the one-worker run's CPU seconds against the two-worker run's critical path in CPU
seconds (the busier worker's tasks, or half of what every process of the run spent).

Memory: a child process holds ``--live`` tenants alive through the engine (each a simulated
process with its set and one IOASID, every statistic kept) and reports its resident set size
(RSS) above that of an identical child that builds nothing; the reference is a child that builds
the same processes, MM sets and IOASIDs on the model directly (hierarchy, core, controller).
Target: ratio <= 1.5.

Usage: ``.venv/bin/python bench/bench_experiments.py [--events N] [--rounds R]
[--sweep-events N] [--live N] [--json] [--skip-sweep]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TARGET_RATIO = 0.3
TARGET_SWEEP = 1.7
TARGET_MEMORY = 1.5


def fixed_policy(events: int, seed: int = 1) -> Any:
    """The contract's fixed workload, long enough for about ``events`` tenant events."""
    from ioasidsd.experiments import parse_policy

    rate = 80.0
    return parse_policy({
        "name": "bench: fixed workload",
        "cgroup": [{"path": "/a", "max": 125}, {"path": "/a/b", "max": 100}],
        "workload": [{"name": "w", "cgroup": "/a/b",
                      "arrival": {"process": "poisson", "rate": rate},
                      "lifetime": {"dist": "exponential", "mean": 1.0}}],
        "run": {"duration": events / (2 * rate), "seed": seed},
    }, "bench")


def engine_events_per_s(events: int, clock: str = "wall") -> tuple[float, int]:
    """Tenant events per second of ``clock`` (``wall`` or ``cpu``, this process's CPU time)
    through the engine on the fixed workload."""
    from ioasidsd.experiments import Engine

    timer = time.process_time if clock == "cpu" else time.perf_counter
    engine = Engine(fixed_policy(events))
    start = timer()
    rep = engine.run()
    return rep.events / (timer() - start), rep.events


def system_calls_events_per_s(events: int, clock: str = "wall", live: int = 80) -> float:
    """The engine's ceiling: the ``System`` calls a tenant makes (``fork``, ``ioasid_open``,
    ``REQUEST_ALLOC``, ``exit``), in a plain loop with ``live`` tenants alive (the fixed
    workload's mean), no event loop, no sampling, no metrics: tenant events per second."""
    from collections import deque

    from ioasidsd.experiments.engine import ALLOC_ONE, build_system
    from ioasidsd.model import ioasid_uapi as uapi

    timer = time.process_time if clock == "cpu" else time.perf_counter
    built = build_system(fixed_policy(1000))
    system, procs, cgroup = built.system, built.processes, built.cgroups["/a/b"]
    fork, open_, ioctl, exit_ = (system.fork, system.ioasid_open, system.ioasid_ioctl,
                                 system.exit)
    alive: deque[int] = deque()
    tenants = events // 2
    start = timer()
    for i in range(tenants):
        now = float(i)
        pid = procs.spawn(now)
        fork(1, pid, now, into=cgroup)
        ioctl(open_(pid), uapi.IOASID_REQUEST_ALLOC, ALLOC_ONE)
        alive.append(pid)
        if len(alive) > live:
            gone = alive.popleft()
            exit_(gone)
            procs.reap(gone)
    return 2 * tenants / (timer() - start)


def heap_loop(events: int) -> float:
    """Arrivals and departures on a heap, no model: events per second."""
    rng = random.Random(1)
    heap: list[tuple[float, int, int]] = []
    seq = 0
    heapq.heappush(heap, (rng.expovariate(80.0), 0, 0))
    done = 0
    start = time.perf_counter()
    while done < events:
        when, _, kind = heapq.heappop(heap)
        seq += 1
        if kind == 0:
            heapq.heappush(heap, (when + rng.expovariate(80.0), seq, 0))
            seq += 1
            heapq.heappush(heap, (when + rng.expovariate(1.0), seq, 1))
        done += 1
    return events / (time.perf_counter() - start)


def simpy_loop(events: int) -> float:
    """The same pattern on SimPy: a process per tenant. Events per second."""
    import simpy

    rng = random.Random(1)
    env = simpy.Environment()
    count = [0]

    def tenant(env: simpy.Environment) -> Any:
        count[0] += 1  # its arrival
        yield env.timeout(rng.expovariate(1.0))
        count[0] += 1  # its departure

    def arrivals(env: simpy.Environment) -> Any:
        while True:
            yield env.timeout(rng.expovariate(80.0))
            env.process(tenant(env))

    env.process(arrivals(env))
    start = time.perf_counter()
    while count[0] < events:
        env.step()
    return count[0] / (time.perf_counter() - start)


def throughput(events: int, rounds: int) -> dict[str, Any]:
    """Best of ``rounds`` of each figure, by elapsed time and by CPU time (what the machine's
    other work takes inflates the first, not the second)."""
    from bench_model import model_loop

    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    for _ in range(rounds):
        for clock in ("wall", "cpu"):
            keep(f"engine_{clock}", engine_events_per_s(events, clock)[0])
            keep(f"model_{clock}", model_loop(events // 2, clock))
            keep(f"system_{clock}", system_calls_events_per_s(events, clock))
        keep("heap", heap_loop(events))
        keep("simpy", simpy_loop(events))
    return {"engine_events_per_s": best["engine_wall"], "model_pairs_per_s": best["model_wall"],
            "ratio": best["engine_wall"] / best["model_wall"],
            "engine_events_per_cpu_s": best["engine_cpu"],
            "model_pairs_per_cpu_s": best["model_cpu"],
            "ratio_cpu": best["engine_cpu"] / best["model_cpu"],
            "system_calls_events_per_cpu_s": best["system_cpu"],
            "system_calls_ratio_cpu": best["system_cpu"] / best["model_cpu"],
            "system_calls_ratio": best["system_wall"] / best["model_wall"],
            "heap_loop_events_per_s": best["heap"], "simpy_loop_events_per_s": best["simpy"]}


class ChildCpu:
    """CPU seconds of this process's descendants (the Dask cluster's fork server and
    workers), sampled by a thread every ``interval`` seconds while it runs: the last sample
    of each process counts (what a process spends after it, at most ``interval``, is missed)."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval = interval
        self.seen: dict[int, float] = {}
        self.own = 0.0
        """This thread's own CPU seconds (spent in this process: not the run's)."""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        started = time.thread_time()
        while not self.done.wait(self.interval):
            for child in me.children(recursive=True):
                try:
                    t = child.cpu_times()
                except psutil.Error:
                    continue
                self.seen[child.pid] = t.user + t.system
            self.own = time.thread_time() - started

    def __enter__(self) -> ChildCpu:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()

    @property
    def total(self) -> float:
        return sum(self.seen.values())


def sweep(events: int) -> dict[str, Any]:
    """The sweep on 1 worker (this process) and on 2 (an embedded cluster, started and closed
    in the measure), by elapsed time and by CPU time.

    By CPU time, which what the machine's other work takes does not inflate: the one-worker
    run's CPU seconds against the two-worker run's critical path, the larger of the busier
    worker's task CPU seconds (how evenly the tasks split) and half the CPU seconds of every
    process of the run (this one: client and scheduler; the fork server and the workers:
    their start, imports and messages): what the elapsed times would give on two idle cores.
    """
    from ioasidsd.experiments import run_policies

    base = fixed_policy(events)
    grid = [base.with_settings({"run.seed": seed}) for seed in range(8)]
    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    one, one_reps = run_policies(grid, workers=1)
    t1, c1 = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    with ChildCpu() as children:
        two, two_reps = run_policies(grid, workers=2)
    t2, c2_self = time.perf_counter() - start, time.process_time() - cpu - children.own
    c2 = c2_self + children.total
    busy: dict[str, float] = {}
    busy_wall: dict[str, float] = {}
    for rep in two_reps:  # the first replication of each point: here, the only one
        busy[rep.worker] = busy.get(rep.worker, 0.0) + rep.cpu_s
        busy_wall[rep.worker] = busy_wall.get(rep.worker, 0.0) + rep.wall_s
    critical = max(max(busy.values()), c2 / 2)
    same = all({k: v for k, v in a.items() if k not in ("wall_s", "events_per_s")}
               == {k: v for k, v in b.items() if k not in ("wall_s", "events_per_s")}
               for a, b in zip(one, two, strict=True))
    return {"points": len(grid), "events_per_point": one[0]["events"], "one_worker_s": t1,
            "two_workers_s": t2, "speedup": t1 / t2, "one_worker_cpu_s": c1,
            "tasks_cpu_s": sum(rep.cpu_s for rep in one_reps),
            "two_workers_cpu_s": c2, "two_workers_client_cpu_s": c2_self,
            "worker_busy_cpu_s": sorted(busy.values()), "workers_used": len(busy),
            "cpu_speedup": c1 / critical, "same_results": same,
            # where the elapsed time went: the share of a core each run's tasks got (their CPU
            # time over their elapsed time), each worker's tasks' elapsed time, and what the
            # two-worker run spent outside the busier worker's tasks (the cluster's start and
            # close, placing tasks, gathering results, a worker waiting for the other)
            "one_worker_task_share": (sum(rep.cpu_s for rep in one_reps)
                                      / sum(rep.wall_s for rep in one_reps)),
            "worker_task_wall_s": [busy_wall[w] for w in sorted(busy, key=busy.get)],
            "worker_task_share": [busy[w] / busy_wall[w] for w in sorted(busy, key=busy.get)],
            "outside_tasks_s": t2 - max(busy_wall.values()),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def rss_child(kind: str, live: int) -> int:
    """In a child: hold ``live`` tenants (``engine``) or the same on the bare model
    (``model``), or nothing (``empty-engine``, ``empty-model``, with the same imports); RSS."""
    import gc

    import psutil

    held: Any = None
    if kind.endswith("engine"):
        from ioasidsd.experiments import Engine, parse_policy

        if kind == "engine":
            policy = parse_policy({
                "name": "bench: live tenants",
                "cgroup": [{"path": "/a", "max": live + 10}],
                "workload": [{"name": "w", "cgroup": "/a",
                              "arrival": {"process": "fixed", "interval": 1.0},
                              "lifetime": {"dist": "fixed", "value": 10.0 * live}}],
                "run": {"duration": live + 0.5},
            }, "bench")
            held = Engine(policy)
            held.run()
            assert len(held.processes.start_times) == live
    else:
        from ioasidsd.model import IoasidCore, IoasidSetType, profile
        from ioasidsd.model.ioasids import IoasidsController

        if kind == "model":
            core = IoasidCore(profile("fixed"))
            controller = IoasidsController(core)
            cgroups = controller.hierarchy
            cg = cgroups.mkdir(cgroups.root, "a")
            controller.set_max(cg, live + 10)
            sets = []
            for i in range(live):
                task = cgroups.track(1000 + i, float(i), cg)
                s = core.set_alloc(task.mm, 0, IoasidSetType.MM)
                core.alloc(s, 1, 0xFFFFF, None, task=task)
                sets.append(s)
            held = (core, controller, sets)
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def measure_rss(kind: str, live: int) -> int:
    done = subprocess.run([sys.executable, __file__, "--rss-child", kind, str(live)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def memory(live: int) -> dict[str, Any]:
    engine = measure_rss("engine", live) - measure_rss("empty-engine", live)
    model = measure_rss("model", live) - measure_rss("empty-model", live)
    return {"live": live, "engine_mb": engine / 2**20, "model_mb": model / 2**20,
            "ratio": engine / model}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep-events", type=int, default=200_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rss-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        print(rss_child(args.rss_child[0], int(args.rss_child[1])))
        return 0
    figures: dict[str, Any] = {"throughput": throughput(args.events, args.rounds)}
    if not args.skip_sweep:
        figures["sweep"] = sweep(args.sweep_events)
    figures["memory"] = memory(args.live)
    ok = (max(figures["throughput"]["ratio"], figures["throughput"]["ratio_cpu"]) >= TARGET_RATIO
          and (args.skip_sweep or max(figures["sweep"]["speedup"],
                                      figures["sweep"]["cpu_speedup"]) >= TARGET_SWEEP)
          and figures["memory"]["ratio"] <= TARGET_MEMORY)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        t = figures["throughput"]
        print(f"engine: {t['engine_events_per_s']:,.0f} tenant events/s; bare model: "
              f"{t['model_pairs_per_s']:,.0f} alloc+free pairs/s; ratio {t['ratio']:.3f} "
              f"(target >= {TARGET_RATIO})")
        print(f"  by CPU time: engine {t['engine_events_per_cpu_s']:,.0f}, model "
              f"{t['model_pairs_per_cpu_s']:,.0f}, ratio {t['ratio_cpu']:.3f}; the System "
              f"calls alone (the engine's ceiling) {t['system_calls_events_per_cpu_s']:,.0f}, "
              f"ratio {t['system_calls_ratio_cpu']:.3f}")
        print(f"event loop alone: heap {t['heap_loop_events_per_s']:,.0f} events/s, SimPy "
              f"{t['simpy_loop_events_per_s']:,.0f} events/s")
        if not args.skip_sweep:
            s = figures["sweep"]
            print(f"sweep of {s['points']} points x {s['events_per_point']:,} events: "
                  f"1 worker {s['one_worker_s']:.1f} s, 2 workers {s['two_workers_s']:.1f} s, "
                  f"speed-up {s['speedup']:.2f} (target >= {TARGET_SWEEP}); same results: "
                  f"{s['same_results']}")
            busy = ", ".join(f"{b:.1f}" for b in s["worker_busy_cpu_s"])
            print(f"  by CPU time: 1 worker {s['one_worker_cpu_s']:.1f} s (its tasks "
                  f"{s['tasks_cpu_s']:.1f} s); 2 workers {s['two_workers_cpu_s']:.1f} s in all "
                  f"(client and scheduler {s['two_workers_client_cpu_s']:.1f} s), tasks per "
                  f"worker {busy} s; speed-up {s['cpu_speedup']:.2f}")
            walls = ", ".join(f"{w:.1f}" for w in s["worker_task_wall_s"])
            shares = ", ".join(f"{x:.2f}" for x in s["worker_task_share"])
            print(f"  elapsed: 1 worker's tasks got {s['one_worker_task_share']:.2f} of a core; "
                  f"2 workers' tasks took {walls} s at {shares} of a core each; outside the "
                  f"busier worker's tasks {s['outside_tasks_s']:.1f} s; load average "
                  f"{s['load_average'][0]:.2f} before, {s['load_average'][1]:.2f} after")
        m = figures["memory"]
        print(f"memory for {m['live']:,} live tenants: engine {m['engine_mb']:.1f} MB, model "
              f"alone {m['model_mb']:.1f} MB, ratio {m['ratio']:.2f} (target <= "
              f"{TARGET_MEMORY})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
