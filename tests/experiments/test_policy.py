"""Policy files: defaults, and every kind of bad input rejected before anything runs, with
the file, the key and the reason in one line (exit status 2 from the CLI)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ioasidsd.experiments import PolicyError, load_policy
from ioasidsd.experiments.distributions import parse_distribution
from ioasidsd.experiments.policy import check_limits
from ioasidsd.model.core import PCI_PASID_MAX

from .helpers import IOASIDCTL, one_pool, write_policy


def test_defaults(tmp_path: Path) -> None:
    data = one_pool()
    del data["run"]["warmup"], data["run"]["seed"]
    policy = load_policy(str(write_policy(tmp_path / "p.toml", data)))
    assert policy.capacity == PCI_PASID_MAX
    assert policy.profile == "fixed" and policy.knobs.capacity_model == "reserve"
    assert (policy.warmup, policy.seed, policy.replications) == (0.0, 0, 1)
    (w,) = policy.workloads
    assert w.ioasids.kind == "fixed" and w.ioasids.params == (1,)
    assert w.retry_after is None and w.migrate_to is None and w.bind_device is None


def _broken(change: Any) -> dict[str, Any]:
    data = one_pool()
    change(data)
    return data


def _set(path: list[Any], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return change


def _delete(path: list[Any]) -> Any:
    def change(data: dict[str, Any]) -> None:
        node = data
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return change


BAD = [
    ("unknown top-level key", _set(["colour"], "blue"), "colour", "unknown key"),
    ("unknown workload key", _set(["workload", 0, "priority"], 1), "workload[w].priority",
     "unknown key"),
    ("unknown distribution key", _set(["workload", 0, "lifetime", "median"], 1.0),
     "workload[w].lifetime.median", "unknown key"),
    ("wrong type", _set(["run", "duration"], "long"), "run.duration", "expected a number"),
    ("wrong type of limit", _set(["cgroup", 0, "max"], "lots"), "cgroup[/a].max",
     "non-negative integer"),
    ("missing name", _delete(["name"]), "name", "missing required key"),
    ("missing run", _delete(["run"]), "run", "missing required table"),
    ("missing arrival", _delete(["workload", 0, "arrival"]), "workload[w].arrival",
     "missing required key"),
    ("missing lifetime", _delete(["workload", 0, "lifetime"]), "workload[w].lifetime",
     "missing required key"),
    ("no workload", _delete(["workload"]), "workload", "at least one"),
    ("missing parent", _set(["cgroup"], [{"path": "/a/b", "max": 3}]), "cgroup[/a/b].path",
     "parent /a is not declared"),
    ("negative rate", _set(["workload", 0, "arrival", "rate"], -1.0),
     "workload[w].arrival.rate", "must be positive"),
    ("empty empirical", _set(["workload", 0, "lifetime"], {"dist": "empirical", "values": []}),
     "workload[w].lifetime.values", "non-empty"),
    ("count from exponential", _set(["workload", 0, "ioasids"],
                                    {"dist": "exponential", "mean": 2.0}),
     "workload[w].ioasids.dist", "integer-valued"),
    ("count from a real", _set(["workload", 0, "ioasids"], {"dist": "fixed", "value": 2.5}),
     "workload[w].ioasids.value", "needs an integer"),
    ("count from real values", _set(["workload", 0, "ioasids"],
                                    {"dist": "empirical", "values": [1, 2.5]}),
     "workload[w].ioasids.values", "integer values"),
    ("limit the profile refuses", _set(["system"], {"capacity": 8}), "cgroup[/a].max",
     "refused by the model"),
    ("unknown knob value", _set(["system"], {"knobs": {"migration": "teleport"}}),
     "system.knobs.migration", "expected one of"),
    ("unknown profile", _set(["system"], {"profile": "v5"}), "system.profile",
     "unknown profile"),
    ("warm-up past the end", _set(["run", "warmup"], 900.0), "run.warmup", "below the duration"),
    ("duplicate workload", lambda d: d["workload"].append(copy.deepcopy(d["workload"][0])),
     "workload[w].name", "given twice"),
    ("unknown arrival process", _set(["workload", 0, "arrival"], {"process": "bursty"}),
     "workload[w].arrival.process", "unknown arrival process"),
    ("bad retry", _set(["workload", 0, "on_refusal"], "sulk"), "workload[w].on_refusal",
     "expected \"leave\""),
]


@pytest.mark.parametrize(("what", "change", "key", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_is_rejected(tmp_path: Path, what: str, change: Any, key: str,
                                reason: str) -> None:
    path = write_policy(tmp_path / "bad.toml", _broken(change))
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert info.value.key == key, what
    assert reason in info.value.reason
    assert str(info.value) == f"{path}: {key}: {info.value.reason}"


@pytest.mark.parametrize("index", [0, 10, 16])
def test_cli_rejects_with_one_line_and_status_2(tmp_path: Path, index: int) -> None:
    _, change, key, reason = BAD[index]
    path = write_policy(tmp_path / "bad.toml", _broken(change))
    out = tmp_path / "out"
    proc = subprocess.run([str(IOASIDCTL), "experiment", "run",
                           str(path), "--out", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ioasidctl: {path}: {key}: "), lines
    assert reason in lines[0]
    assert proc.stdout == "" and not out.exists()  # nothing ran


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(PolicyError, match=r"bad\.toml: \(toml\)"):
        load_policy(str(bad))
    with pytest.raises(PolicyError, match=r"nothing\.toml: \(file\)"):
        load_policy(str(tmp_path / "nothing.toml"))


def test_settings_by_path(tmp_path: Path) -> None:
    data = one_pool()
    data["system"] = {"capacity": 4096}
    policy = load_policy(str(write_policy(tmp_path / "p.toml", data)))
    changed = policy.with_settings({"workload[w].arrival.rate": 2,
                                    "cgroup[/a].max": "max",
                                    "system.knobs.capacity_model": "overcommit",
                                    "system.capacity": 512})
    assert changed.workloads[0].arrival.rate == 2
    assert changed.cgroups[0].max is None
    assert changed.knobs.capacity_model == "overcommit" and changed.capacity == 512
    assert policy.workloads[0].arrival.rate == 8.0  # the original is unchanged
    with pytest.raises(PolicyError, match=r"workload\[nobody\]\.arrival\.rate: no workload"):
        policy.with_settings({"workload[nobody].arrival.rate": 1})
    with pytest.raises(PolicyError, match=r"workload\[w\]\.arrival\.rate: must be positive"):
        policy.with_settings({"workload[w].arrival.rate": 0})


def test_distributions_sample_what_they_say() -> None:
    import random

    rng = random.Random(5)
    uniform = parse_distribution({"dist": "uniform", "low": 2, "high": 4}, "x", count=True)
    draws = [uniform.sampler(rng)() for _ in range(2000)]
    assert set(draws) == {2, 3, 4}  # integers in [low, high] for a count
    real = parse_distribution({"dist": "uniform", "low": 2, "high": 4}, "x").sampler(rng)
    assert all(2 <= v < 4 and v != int(v) for v in (real() for _ in range(100)))
    logn = parse_distribution({"dist": "lognormal", "mean": 3.0, "sigma": 1.0}, "x")
    mean = sum(logn.sampler(rng)() for _ in range(50000)) / 50000
    assert abs(mean - 3.0) < 0.1  # ``mean`` is the distribution's own mean
    emp = parse_distribution({"dist": "empirical", "values": [1, 5], "weights": [3, 1]}, "x",
                             count=True)
    draws = [emp.sampler(rng)() for _ in range(8000)]
    assert abs(draws.count(1) / 8000 - 0.75) < 0.03 and emp.mean == 2.0
    det = parse_distribution({"dist": "deterministic", "value": 3}, "x", count=True)
    assert det.sampler(rng)() == 3 and det.kind == "fixed"



def test_exponential_draws_what_expovariate_draws() -> None:
    """The exponential samplers (lifetimes, Poisson gaps) compute ``expovariate`` themselves
    to save a call: the same numbers, bit for bit, so results do not depend on it."""
    import random

    from ioasidsd.experiments.distributions import Arrival

    expo = parse_distribution({"dist": "exponential", "mean": 0.37}, "x")
    for make, rate in ((expo.sampler, 1.0 / 0.37), (Arrival("poisson", rate=80.0).gaps, 80.0)):
        ours, reference = make(random.Random(11)), random.Random(11)
        assert [ours() for _ in range(5000)] == [reference.expovariate(rate)
                                                for _ in range(5000)]


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_policy_is_accepted(path):
    """The worked examples load, and the model takes their limits, as a run would check."""
    check_limits(load_policy(str(path)))


def test_the_policies_are_there():
    assert len(SHIPPED) >= 6
