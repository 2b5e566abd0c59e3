"""The result object of a run: replications summed and averaged into the contract's keys.

``summarise(policy, replications, wall_s)`` returns the mapping that ``--json`` prints and
``results.json`` holds: ``schema``, ``ioasids`` (this version), ``policy``, ``profile``,
``knobs`` (every knob's value), ``seed``, ``replications``, ``duration``, ``warmup``;
``workloads`` (per workload ``offered``, ``admitted``, ``refused`` summed over
replications: a tenant still waiting to retry when the run ends is offered but neither
admitted nor refused; ``blocking`` = refused / offered, ``blocking_ci95``: the Student-t 95%
interval over the replications' own blocking ratios, clipped to [0, 1], ``None`` for one
replication, and ``refused_by``: refused tenants by the level whose refusal was their last,
a cgroup path or ``capacity``; plus
``migrated``, ``migrations_refused``, ``bound``, ``binds_refused``); ``cgroups`` (per path
``mean_current``, the time average of ``ioasids.current`` after warm-up averaged over
replications, ``peak`` after warm-up, the largest over replications, and ``refusals``, every
refused request at that level, retries included); ``system`` (``capacity``, ``mean_in_use``,
``peak_in_use``, ``utilisation`` = mean in use / capacity, ``fairness_jain``: Jain's index over
the workloads that were offered tenants of their admitted share over their offered share,
``None`` when nothing was admitted); ``events``, ``events_per_s``, ``wall_s``.

Everything but ``events_per_s`` and ``wall_s`` is a function of the policy and its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ioasidsd.experiments.engine import Replication
    from ioasidsd.experiments.policy import Policy

SCHEMA = 1


def package_version() -> str:
    """The installed ioasids version."""
    try:
        return version("ioasids")
    except PackageNotFoundError:
        return "unknown"


def t_interval(samples: Sequence[float]) -> list[float] | None:
    """The Student-t 95% confidence interval of the mean of ``samples`` (ratios: the interval
    is clipped to [0, 1]); ``None`` for fewer than two."""
    n = len(samples)
    if n < 2:
        return None
    from scipy.stats import t

    mean = sum(samples) / n
    var = sum((x - mean) ** 2 for x in samples) / (n - 1)
    half = float(t.ppf(0.975, n - 1)) * math.sqrt(var / n)
    return [max(0.0, mean - half), min(1.0, mean + half)]


def jain(values: Sequence[float]) -> float | None:
    """Jain's fairness index of ``values`` (1: all equal); ``None`` if all are 0 or none."""
    total = sum(values)
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return None
    return total * total / (len(values) * squares)


def summarise(policy: Policy, reps: Sequence[Replication], wall_s: float) -> dict[str, Any]:
    """The result object of ``policy`` from its replications (in index order)."""
    reps = sorted(reps, key=lambda r: r.index)
    n = len(reps)
    workloads: dict[str, Any] = {}
    for w in policy.workloads:
        name = w.name
        counts = [r.workloads[name] for r in reps]
        offered = sum(c.offered for c in counts)
        refused = sum(c.refused for c in counts)
        refused_by: dict[str, int] = {}
        for c in counts:
            for level, k in c.refused_by.items():
                refused_by[level] = refused_by.get(level, 0) + k
        ratios = [c.refused / c.offered for c in counts if c.offered]
        workloads[name] = {
            "offered": offered,
            "admitted": sum(c.admitted for c in counts),
            "refused": refused,
            "blocking": refused / offered if offered else 0.0,
            "blocking_ci95": t_interval(ratios) if len(ratios) == n else None,
            "refused_by": dict(sorted(refused_by.items())),
            "migrated": sum(c.migrated for c in counts),
            "migrations_refused": sum(c.migrations_refused for c in counts),
            "bound": sum(c.bound for c in counts),
            "binds_refused": sum(c.binds_refused for c in counts),
        }
    cgroups: dict[str, Any] = {}
    for path in reps[0].cgroup_area:
        cgroups[path] = {
            "mean_current": sum(r.cgroup_area[path] / r.window for r in reps) / n,
            "peak": max(r.cgroup_peak[path] for r in reps),
            "refusals": sum(r.refusals.get(path, 0) for r in reps),
        }
    mean_in_use = sum(r.in_use_area / r.window for r in reps) / n
    shares = [v["admitted"] / v["offered"] for v in workloads.values() if v["offered"]]
    events = sum(r.events for r in reps)
    return {
        "schema": SCHEMA,
        "ioasids": package_version(),
        "policy": policy.name,
        "profile": policy.profile,
        "knobs": {k: v for k, v in policy.knobs.as_dict().items() if k != "profile"},
        "seed": policy.seed,
        "replications": n,
        "duration": policy.duration,
        "warmup": policy.warmup,
        "workloads": workloads,
        "cgroups": cgroups,
        "system": {
            "capacity": policy.capacity,
            "mean_in_use": mean_in_use,
            "peak_in_use": max(r.in_use_peak for r in reps),
            "utilisation": mean_in_use / policy.capacity,
            "fairness_jain": jain(shares),
        },
        "events": events,
        "events_per_s": events / wall_s if wall_s > 0 else 0.0,
        "wall_s": wall_s,
    }
