"""Running policies: replications and grid points as tasks, here or on a Dask cluster.

``run_policies(policies, ...)`` runs every replication of every policy and returns one result
object per policy (``results.summarise``), in the order given. A task is one replication of one
policy (``engine.run_replication``); its outcome depends only on the policy and the
replication's index, so the results are the same whatever ran the tasks, in whatever order.

Where tasks run: with ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``) on that
existing Dask cluster; otherwise, when there is more than one task and more than one worker
is allowed, on an embedded ``distributed.LocalCluster`` of ``workers`` processes (default: the
number of cores) with one thread each; otherwise in this process. ``progress(done, total)`` is
called as tasks (or, in this process, parts of a replication) finish.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ioasidsd.experiments.engine import Engine, Replication
from ioasidsd.experiments.policy import Policy
from ioasidsd.experiments.results import summarise

Progress = Callable[[float, float], None]


def _task(policy: Policy, replication: int, keep_series: bool) -> Replication:
    return Engine(policy, replication, keep_series=keep_series).run()


def run_policies(policies: Sequence[Policy], *, workers: int | None = None,
                 scheduler: str | None = None, keep_series: bool = False,
                 progress: Progress | None = None,
                 ) -> tuple[list[dict[str, Any]], list[Replication]]:
    """Run ``policies``; their result objects, and the first replication of each (with its
    ``series`` of each cgroup's ``current`` when ``keep_series``)."""
    tasks = [(i, p, r) for i, p in enumerate(policies) for r in range(p.replications)]
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if scheduler is None and (len(tasks) == 1 or workers == 1):
        done: list[tuple[int, Replication]] = []
        for n, (i, policy, r) in enumerate(tasks):
            def step(fraction: float, n: int = n) -> None:
                if progress is not None:
                    progress(n + fraction, len(tasks))
            engine = Engine(policy, r, keep_series=keep_series and r == 0)
            done.append((i, engine.run(step)))
        outcomes = done
    else:
        outcomes = _run_dask(tasks, workers, scheduler, keep_series, progress)
    wall = time.perf_counter() - started
    results = []
    firsts = []
    for i, policy in enumerate(policies):
        reps = [rep for j, rep in outcomes if j == i]
        # each policy's share of the wall time, by its replications' own times
        total = sum(rep.wall_s for _, rep in outcomes) or 1.0
        share = wall * sum(rep.wall_s for rep in reps) / total
        results.append(summarise(policy, reps, share))
        firsts.append(min(reps, key=lambda rep: rep.index))
    return results, firsts


def _run_dask(tasks: list[tuple[int, Policy, int]], workers: int, scheduler: str | None,
              keep_series: bool, progress: Progress | None) -> list[tuple[int, Replication]]:
    from distributed import Client, as_completed

    cluster = None
    if scheduler is None:
        cluster = _local_cluster(workers)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        # each policy crosses to the cluster once, however many replications it has; the
        # tasks go in one message; a task's answer is its ``Replication`` (counts and sums)
        indices = sorted({i for i, _, _ in tasks})
        policies = dict(zip(indices, client.scatter([next(p for j, p, _ in tasks if j == i)
                                                     for i in indices], hash=False),
                            strict=True))
        futures = client.map(_task, [policies[i] for i, _, _ in tasks],
                             [r for _, _, r in tasks],
                             [keep_series and r == 0 for _, _, r in tasks], pure=False)
        index_of = {future.key: i for future, (i, _, _) in zip(futures, tasks, strict=True)}
        outcomes: list[tuple[int, Replication]] = []
        for n, future in enumerate(as_completed(futures), start=1):
            outcomes.append((index_of[future.key], future.result()))
            if progress is not None:
                progress(n, len(tasks))
        return outcomes
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                client.run(_quiet_shutdown)
        client.close()
        if cluster is not None:
            cluster.close()


def _quiet_shutdown() -> None:
    """In an embedded cluster's worker, before the cluster closes: a heartbeat caught by the
    scheduler's close is logged by Dask as an error with its traceback, on the command's
    stderr; the run is over, so the workers' own log is silenced (a task's failure has
    reached the client as its exception already)."""
    import logging

    for name in ("distributed.worker", "distributed.core", "distributed.comm",
                 "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


LOCAL_CLUSTER_CONFIG = {
    # workers forked from a fork server that has imported Dask and the engine (by default
    # each worker is a new interpreter that imports both again: about a second of CPU each)
    "distributed.worker.multiprocessing-method": "forkserver",
    # what every process of the cluster does by the clock, whatever it runs, costs CPU the
    # tasks need on a machine with as many cores as workers: the event loops' tick watch
    # (every 20 ms by default), the workers' sampling profiler (every 10 ms), the memory
    # monitor (every 100 ms: a task holds a few megabytes), the resource monitor (every
    # 500 ms), work stealing (tasks here are of one size, and queued evenly)
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "2s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.scheduler.work-stealing": False,
}
"""The Dask settings of the embedded cluster (an existing one given by address keeps its
own)."""


def _local_cluster(workers: int) -> Any:
    """An embedded ``LocalCluster`` of ``workers`` single-threaded processes with
    ``LOCAL_CLUSTER_CONFIG``."""
    import dask
    from distributed import LocalCluster
    from distributed.utils import get_mp_context

    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        get_mp_context().set_forkserver_preload(["distributed", "ioasidsd.experiments.engine"])
        # no dashboard; the scheduler's own HTTP endpoint (health, metrics) on a free port of
        # the loopback, not on 8787 of every interface (taken by a second run, with a warning)
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=None,
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
