"""Benchmark of the experiment engine: speed against the bare model, sweeps on 2 workers
against 1, and memory with many live tenants against the model alone.

Throughput: the fixed workload of the experiments contract: one workload of one-IOASID
tenants with exponential lifetimes, born in ``/a/b`` where both levels have numeric limits
(``/a`` 125, ``/a/b`` 100), offered 80 Erlangs (80% of the tighter limit). The figure is
simulated tenant events per second (an arrival with its allocation, or a departure with its
release) through the full engine (``System``, the user API's calls, the change feed, the
metrics); the reference is the bare model's alloc+free pairs per second (``bench_model``'s
loop: the core and controller called directly, depth 4), measured alternately in the same
process, best round of each. Target: ratio >= 0.3.

Event loop: the same arrival/departure pattern with no model, on the engine's heap and on
SimPy (``simpy.Environment`` with a process per tenant), in events per second: what the loop
alone costs per event, beside what a model event costs. This is why the engine uses a heap.

Sweep: 8 grid points of about 200,000 events each (``--sweep-events``), run with
``run_policies`` on 1 worker (in this process) and on 2 (an embedded Dask ``LocalCluster``,
its start included). Target: 2 workers at least 1.7 times faster.

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


def engine_events_per_s(events: int) -> tuple[float, int]:
    from ioasidsd.experiments import Engine

    engine = Engine(fixed_policy(events))
    start = time.perf_counter()
    rep = engine.run()
    return rep.events / (time.perf_counter() - start), rep.events


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
    from bench_model import model_loop

    best_engine = best_model = best_heap = best_simpy = 0.0
    for _ in range(rounds):
        best_engine = max(best_engine, engine_events_per_s(events)[0])
        best_model = max(best_model, model_loop(events // 2))
        best_heap = max(best_heap, heap_loop(events))
        best_simpy = max(best_simpy, simpy_loop(events))
    return {"engine_events_per_s": best_engine, "model_pairs_per_s": best_model,
            "ratio": best_engine / best_model, "heap_loop_events_per_s": best_heap,
            "simpy_loop_events_per_s": best_simpy}


def sweep(events: int) -> dict[str, Any]:
    from ioasidsd.experiments import run_policies

    base = fixed_policy(events)
    grid = [base.with_settings({"run.seed": seed}) for seed in range(8)]
    start = time.perf_counter()
    one, _ = run_policies(grid, workers=1)
    t1 = time.perf_counter() - start
    start = time.perf_counter()
    two, _ = run_policies(grid, workers=2)
    t2 = time.perf_counter() - start
    same = all({k: v for k, v in a.items() if k not in ("wall_s", "events_per_s")}
               == {k: v for k, v in b.items() if k not in ("wall_s", "events_per_s")}
               for a, b in zip(one, two, strict=True))
    return {"points": len(grid), "events_per_point": one[0]["events"], "one_worker_s": t1,
            "two_workers_s": t2, "speedup": t1 / t2, "same_results": same}


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
    ok = (figures["throughput"]["ratio"] >= TARGET_RATIO
          and (args.skip_sweep or figures["sweep"]["speedup"] >= TARGET_SWEEP)
          and figures["memory"]["ratio"] <= TARGET_MEMORY)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        t = figures["throughput"]
        print(f"engine: {t['engine_events_per_s']:,.0f} tenant events/s; bare model: "
              f"{t['model_pairs_per_s']:,.0f} alloc+free pairs/s; ratio {t['ratio']:.3f} "
              f"(target >= {TARGET_RATIO})")
        print(f"event loop alone: heap {t['heap_loop_events_per_s']:,.0f} events/s, SimPy "
              f"{t['simpy_loop_events_per_s']:,.0f} events/s")
        if not args.skip_sweep:
            s = figures["sweep"]
            print(f"sweep of {s['points']} points x {s['events_per_point']:,} events: "
                  f"1 worker {s['one_worker_s']:.1f} s, 2 workers {s['two_workers_s']:.1f} s, "
                  f"speed-up {s['speedup']:.2f} (target >= {TARGET_SWEEP}); same results: "
                  f"{s['same_results']}")
        m = figures["memory"]
        print(f"memory for {m['live']:,} live tenants: engine {m['engine_mb']:.1f} MB, model "
              f"alone {m['model_mb']:.1f} MB, ratio {m['ratio']:.2f} (target <= "
              f"{TARGET_MEMORY})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
