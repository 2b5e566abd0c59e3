"""The engine against queueing theory, on the real model: Erlang B for one pool of one-IOASID
tenants (on a cgroup limit and on the core's capacity), its insensitivity to the lifetime
distribution, and Kaufman-Roberts for tenants asking different numbers of IOASIDs from one
pool. Each theoretical value must lie within the run's 95% interval."""

from __future__ import annotations

from typing import Any

import pytest

from ioasidsd.experiments import parse_policy, run_policies
from ioasidsd.experiments.theory import erlang_b, kaufman_roberts

REPLICATIONS = 8


def _policy(cgroups: list[dict[str, Any]], workloads: list[dict[str, Any]], *,
            duration: float, seed: int, system: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    return {"name": "theory", "system": system or {}, "cgroup": cgroups,
            "workload": workloads,
            "run": {"duration": duration, "warmup": duration / 20, "seed": seed,
                    "replications": REPLICATIONS}}


def _tenants(name: str, rate: float, lifetime: dict[str, Any], count: int = 1,
             ) -> dict[str, Any]:
    return {"name": name, "cgroup": "/pool", "arrival": {"process": "poisson", "rate": rate},
            "lifetime": lifetime, "ioasids": {"dist": "fixed", "value": count}}


def _run(data: dict[str, Any]) -> dict[str, Any]:
    (result,), _ = run_policies([parse_policy(data, "theory.toml")], workers=1)
    return result


def _within(result: dict[str, Any], name: str, expected: float) -> None:
    w = result["workloads"][name]
    low, high = w["blocking_ci95"]
    assert low <= expected <= high, (name, expected, w["blocking"], (low, high))
    assert high - low < 0.35 * expected + 0.01  # an interval that says something


EXPO = {"dist": "exponential", "mean": 1.0}


@pytest.mark.parametrize(("load", "limit", "seed"), [(3.0, 4, 1), (8.0, 10, 2), (20.0, 18, 3)])
def test_erlang_b_on_a_cgroup_limit(load: float, limit: int, seed: int) -> None:
    result = _run(_policy([{"path": "/pool", "max": limit}],
                          [_tenants("w", load, EXPO)], duration=6000 / load, seed=seed))
    _within(result, "w", erlang_b(load, limit))
    assert result["workloads"]["w"]["refused_by"] == {"/pool": result["workloads"]["w"]["refused"]}
    assert result["cgroups"]["/pool"]["peak"] == limit


@pytest.mark.parametrize(("load", "capacity", "seed"), [(4.0, 5, 4), (12.0, 12, 5)])
def test_erlang_b_on_the_core_capacity(load: float, capacity: int, seed: int) -> None:
    result = _run(_policy([{"path": "/pool", "max": "max"}], [_tenants("w", load, EXPO)],
                          duration=6000 / load, seed=seed, system={"capacity": capacity}))
    _within(result, "w", erlang_b(load, capacity))
    w = result["workloads"]["w"]
    assert w["refused_by"] == {"capacity": w["refused"]} and w["refused"] > 0
    assert result["system"]["peak_in_use"] == capacity


@pytest.mark.parametrize("lifetime", [
    {"dist": "fixed", "value": 1.0},
    {"dist": "uniform", "low": 0.0, "high": 2.0},
    {"dist": "lognormal", "mean": 1.0, "sigma": 1.2},
    {"dist": "empirical", "values": [0.25, 4.0], "weights": [4, 1]},
], ids=["fixed", "uniform", "lognormal", "empirical"])
def test_erlang_b_is_insensitive_to_the_lifetime_distribution(lifetime: dict[str, Any]) -> None:
    load, limit = 6.0, 7
    result = _run(_policy([{"path": "/pool", "max": limit}], [_tenants("w", load, lifetime)],
                          duration=1000.0, seed=6))
    _within(result, "w", erlang_b(load, limit))


@pytest.mark.parametrize(("classes", "capacity", "seed"), [
    ([(4.0, 1), (1.0, 3)], 12, 7),
    ([(3.0, 1), (1.5, 2), (0.5, 4)], 16, 8),
])
def test_kaufman_roberts_for_classes_of_several_sizes(classes: list[tuple[float, int]],
                                                      capacity: int, seed: int) -> None:
    workloads = [_tenants(f"size{size}", load, EXPO, size) for load, size in classes]
    result = _run(_policy([{"path": "/pool", "max": capacity}], workloads, duration=1200.0,
                          seed=seed))
    for (_, size), expected in zip(classes, kaufman_roberts(classes, capacity), strict=True):
        _within(result, f"size{size}", expected)


def test_the_closed_forms_themselves() -> None:
    assert erlang_b(1.0, 1) == pytest.approx(0.5)
    assert erlang_b(2.0, 2) == pytest.approx(0.4)  # (4/2) / (1 + 2 + 2)
    assert kaufman_roberts([(5.0, 1)], 7) == pytest.approx([erlang_b(5.0, 7)])
    # a class as large as the pool blocks whenever anything is in use
    (small, big) = kaufman_roberts([(1.0, 1), (1.0, 4)], 4)
    assert big > small > 0
    with pytest.raises(ValueError):
        erlang_b(-1.0, 3)
