"""``compare`` and ``sweep``: their JSON in argument and grid order, their tables and files,
bad ``--set`` values; ``--scheduler`` sends the tasks to a Dask scheduler and workers that run
as separate processes, with the same results as in this process."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import IOASIDCTL, one_pool, without_timings, write_policy

BIN = Path(sys.executable).parent


def ctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IOASIDCTL), "experiment", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_compare_in_argument_order(tmp_path: Path) -> None:
    reserve = one_pool(limit=6, rate=5.0)
    reserve["name"] = "small limit"
    wide = copy.deepcopy(reserve)
    wide["name"] = "wide limit"
    wide["cgroup"][0]["max"] = 12
    a = write_policy(tmp_path / "a.toml", reserve)
    b = write_policy(tmp_path / "b.toml", wide)
    proc = ctl("compare", str(b), str(a), "--json", "--out", str(tmp_path / "out"),
               "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["schema"] == 1 and [r["policy"] for r in out["runs"]] == ["wide limit",
                                                                        "small limit"]
    wide_b, small_b = (r["workloads"]["w"]["blocking"] for r in out["runs"])
    assert wide_b < small_b
    assert (tmp_path / "out" / "blocking.png").exists()
    assert "wide limit" in (tmp_path / "out" / "workloads.csv").read_text()
    table = ctl("compare", str(a), str(b), "--workers", "1")
    assert table.returncode == 0 and "w: blocking" in table.stdout


def test_sweep_grid_order_and_files(tmp_path: Path) -> None:
    path = write_policy(tmp_path / "p.toml", one_pool(limit=6, rate=5.0))
    out = tmp_path / "out"
    proc = ctl("sweep", str(path), "--set", "cgroup[/a].max=4,8", "--set",
               "workload[w].arrival.rate=2,6", "--json", "--out", str(out), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    grid = json.loads(proc.stdout)["grid"]
    assert [p["set"] for p in grid] == [
        {"cgroup[/a].max": 4, "workload[w].arrival.rate": 2},
        {"cgroup[/a].max": 4, "workload[w].arrival.rate": 6},
        {"cgroup[/a].max": 8, "workload[w].arrival.rate": 2},
        {"cgroup[/a].max": 8, "workload[w].arrival.rate": 6}]
    blocking = [p["results"]["workloads"]["w"]["blocking"] for p in grid]
    assert blocking[1] > blocking[0] and blocking[1] > blocking[3]
    assert (out / "grid.csv").read_text().count("\n") == 5
    for name in ("blocking.png", "utilisation.png", "fairness.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("setting", "message"), [
    ("workload[nobody].arrival.rate=1", "workload[nobody].arrival.rate: no workload"),
    ("workload[w].arrival.rate=-1,2", "workload[w].arrival.rate: must be positive"),
    ("cgroup[/a].max=lots", "cgroup[/a].max: expected a non-negative integer"),
    ("rate", "is not KEY=V1,V2"),
])
def test_sweep_rejects_bad_settings(tmp_path: Path, setting: str, message: str) -> None:
    path = write_policy(tmp_path / "p.toml", one_pool())
    proc = ctl("sweep", str(path), "--set", setting)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A Dask scheduler and two workers, each a process of its own; the scheduler's
    address."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                               "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=tmp_path)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads",
                                           "1", "--no-dashboard"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=tmp_path))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        # the workers first, while their scheduler still answers their goodbye (a worker
        # whose scheduler is gone retries it for seconds), then the scheduler
        for group in (procs[1:], procs[:1]):
            for proc in group:
                proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_scheduler_runs_tasks_elsewhere_with_the_same_results(tmp_path: Path,
                                                              dask_cluster: str) -> None:
    path = write_policy(tmp_path / "p.toml", one_pool(replications=4))
    remote = ctl("run", str(path), "--json", "--scheduler", dask_cluster)
    assert remote.returncode == 0, remote.stderr
    local = ctl("run", str(path), "--json", "--workers", "1")
    assert without_timings(json.loads(remote.stdout)) == \
        without_timings(json.loads(local.stdout))


