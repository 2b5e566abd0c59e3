"""The engine on the real model: determinism from the seed, the same results wherever the
tasks run, admission all or nothing, refusals by level, migration under both knobs, binds
torn down at exit, retries, the v4 profile."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ioasidsd.experiments import Engine, parse_policy, run_policies
from ioasidsd.model.changes import Change

from .helpers import one_pool, without_timings


def _result(data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    (result,), _ = run_policies([parse_policy(data, "test.toml")], **kwargs)
    return result


def test_same_seed_same_results_other_seed_other_results() -> None:
    data = one_pool(replications=3)
    first, again = _result(data, workers=1), _result(data, workers=1)
    assert without_timings(first) == without_timings(again)
    assert first["events"] > 3000
    other = copy.deepcopy(data)
    other["run"]["seed"] = 2
    assert without_timings(_result(other, workers=1)) != without_timings(first)


def test_results_do_not_depend_on_where_tasks_run() -> None:
    data = one_pool(replications=4)
    here = _result(data, workers=1)
    on_dask = _result(data, workers=2)  # an embedded LocalCluster of 2 worker processes
    assert without_timings(on_dask) == without_timings(here)


def test_all_or_nothing_admission_and_refusals_by_level() -> None:
    data = one_pool(limit=10, rate=5.0)
    data["cgroup"] = [{"path": "/a", "max": 10}, {"path": "/a/b", "max": "max"}]
    data["workload"][0]["cgroup"] = "/a/b"
    data["workload"][0]["ioasids"] = {"dist": "fixed", "value": 4}
    result = _result(data)
    w = result["workloads"]["w"]
    assert w["refused"] > 0 and w["admitted"] > 0
    assert w["refused_by"] == {"/a": w["refused"]}  # the level that refused, not the leaf
    assert result["cgroups"]["/a"]["refusals"] == w["refused"]
    assert result["cgroups"]["/a/b"]["refusals"] == 0
    # at most two tenants of 4 fit under 10: never a partial third
    assert result["cgroups"]["/a"]["peak"] == 8 == result["system"]["peak_in_use"]


def test_metrics_come_from_the_change_feed() -> None:
    policy = parse_policy(one_pool(limit=2, rate=4.0), "test.toml")
    engine = Engine(policy)
    seen: list[Change] = []
    record = engine.system.on_change

    def spy(change: Change) -> None:
        seen.append(change)
        record(change)

    engine.system.on_change = spy
    rep = engine.run()
    refusals = [c.refusal for c in seen if c.refusal is not None]
    assert refusals and all(r.level == "/a" and r.command == "REQUEST_ALLOC" for r in refusals)
    assert sum(rep.refusals.values()) <= len(refusals)  # those before warm-up are not counted
    assert rep.workloads["w"].refused == rep.refusals["/a"]


@pytest.mark.parametrize(("migration", "stays"), [("move", False), ("stay", True)])
def test_migration_follows_the_knob(migration: str, stays: bool) -> None:
    data = one_pool(limit=1000, rate=2.0, mean=10.0)
    data["system"] = {"knobs": {"migration": migration}}
    data["cgroup"].append({"path": "/b", "max": 1000})
    data["workload"][0]["migrate"] = {"after": {"dist": "fixed", "value": 1.0}, "to": "/b"}
    result = _result(data)
    w, cg = result["workloads"]["w"], result["cgroups"]
    assert w["migrated"] > 0 and w["migrations_refused"] == 0
    # tenants live ~10, move after 1: with "move" their charge goes to /b, with "stay" it
    # stays in /a, where they were charged
    if stays:
        assert cg["/a"]["mean_current"] > 5 * cg["/b"]["mean_current"]
    else:
        assert cg["/b"]["mean_current"] > 5 * cg["/a"]["mean_current"]


def test_binds_on_the_vtd_simulation_and_torn_down_at_exit() -> None:
    data = one_pool(limit=64, rate=1.0, mean=5.0, duration=200.0)
    data["workload"][0]["ioasids"] = {"dist": "fixed", "value": 3}
    data["workload"][0]["bind"] = {"device": "0000:03:00.0", "share": 0.5}
    policy = parse_policy(data, "test.toml")
    engine = Engine(policy)
    rep = engine.run()
    w = rep.workloads["w"]
    assert w.admitted > 50 and w.bound == w.admitted and w.binds_refused == 0  # floor(1.5)
    driver = engine.system.ioasid_device.binder.driver  # type: ignore[union-attr]
    bindings = driver.snapshot()["bindings"]
    # the bindings left are exactly those of the tenants still alive, one each
    assert sorted(b["owner_pid"] for b in bindings) == sorted(engine.processes.start_times)
    assert rep.events > 2 * w.admitted


def test_retry_lowers_blocking() -> None:
    leave = one_pool(limit=4, rate=4.0)
    retry = copy.deepcopy(leave)
    retry["workload"][0]["on_refusal"] = {"retry": {"after": {"dist": "exponential",
                                                              "mean": 1.0}, "max": 5}}
    assert (_result(retry)["workloads"]["w"]["blocking"]
            < 0.5 * _result(leave)["workloads"]["w"]["blocking"])


def test_v4_profile_runs_the_same_workload() -> None:
    data = one_pool(limit=10, rate=8.0)
    fixed = _result(data)
    data["system"] = {"profile": "v4"}
    v4 = _result(data)
    assert v4["profile"] == "v4" and v4["knobs"]["capacity_model"] == "reserve-v4"
    assert v4["workloads"]["w"]["offered"] == fixed["workloads"]["w"]["offered"]  # same tenants


def test_cli_out_dir_files(tmp_path: Path) -> None:
    import json
    import subprocess

    from .helpers import IOASIDCTL, write_policy

    path = write_policy(tmp_path / "p.toml", one_pool(replications=2))
    out = tmp_path / "out"
    proc = subprocess.run([str(IOASIDCTL), "experiment", "run", str(path), "--json", "--out",
                           str(out), "--workers", "1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert without_timings(json.loads((out / "results.json").read_text())) == \
        without_timings(printed)
    assert set(printed) == {"schema", "ioasids", "policy", "profile", "knobs", "seed",
                            "replications", "duration", "warmup", "workloads", "cgroups",
                            "system", "events", "events_per_s", "wall_s"}
    assert {"offered", "admitted", "refused", "blocking", "blocking_ci95",
            "refused_by"} <= set(printed["workloads"]["w"])
    assert set(printed["cgroups"]["/a"]) == {"mean_current", "peak", "refusals"}
    assert set(printed["system"]) == {"capacity", "mean_in_use", "peak_in_use", "utilisation",
                                      "fairness_jain"}
    for name in ("workloads.csv", "refused_by.csv", "cgroups.csv", "current.csv"):
        assert (out / name).read_text().count("\n") >= 2, name
    for name in ("blocking.png", "current.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert proc.stderr == ""  # not a terminal: no progress bar
