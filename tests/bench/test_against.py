"""``--against TREE`` of ``bench/bench_model.py`` and ``bench/bench_userapi.py``, on tiny
workloads: each runs to its end, reports a new/old ratio for every figure, and the "old"
version's processes imported the project from TREE.

TREE is a copy of this tree's packages at another path: the code is the current tree's, but
where a process imported it from tells the two apart (run against this tree itself, the check
could not fail). No timing is asserted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def other_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this tree's packages (``ioasidsd``, ``cgroupfs``) in a fresh directory."""
    tree = tmp_path_factory.mktemp("other-tree")
    for package in ("ioasidsd", "cgroupfs"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def run_bench(script: str, *args: str) -> str:
    """The standard output of ``bench/script args``, which must end without a traceback (its
    exit status may say that a target was missed: such small workloads say nothing of
    targets)."""
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=90, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def test_model_against(other_tree: Path) -> None:
    out = json.loads(run_bench("bench_model.py", "--pairs", "2000", "--rounds", "2",
                               "--live", "1000", "--json", "--against", str(other_tree)))
    result = out["against"]
    assert result["old"] == str(other_tree)
    assert result["rounds"] == 2
    assert Path(result["origins"]["old"]) == other_tree / "ioasidsd" / "__init__.py"
    assert Path(result["origins"]["new"]) == ROOT / "ioasidsd" / "__init__.py"
    assert set(result["figures"]) == {
        "model alloc+free pairs/s", "model alloc+free pairs per CPU-second", "RSS empty (MB)",
        "RSS with 1,000 IOASIDs (MB)",
        "RSS held by 1,000 IOASIDs (MB)"}
    for figure, values in result["figures"].items():
        assert values["new/old"] > 0, figure
        assert len(values["rounds"]) == 2, figure
    assert out["model_pairs_per_s"] > 0  # the usual figures are still there


def test_userapi_against(other_tree: Path) -> None:
    out = run_bench("bench_userapi.py", "--seconds", "0.02", "--rounds", "1",
                    "--against", str(other_tree))
    assert f"old: ioasidsd imported from {other_tree / 'ioasidsd' / '__init__.py'}\n" in out
    assert f"new: ioasidsd imported from {ROOT / 'ioasidsd' / '__init__.py'}\n" in out
    rows = dict(re.findall(r"^\| (ioasid [^|]+) \| [\d,.]+ \| [\d,.]+ \| ([\d.]+) \| [\d.]+ \|$",
                           out, re.MULTILINE))
    assert set(rows) == {"ioasid x1 round trips/s", "ioasid x4 round trips/s",
                         "ioasid batch IDs/s (alloc+free)", "ioasid batch IDs/s (alloc)",
                         "ioasid batch IDs/s (free)", "ioasid in-process pairs per CPU-second",
                         "ioasid in-process batch IDs per CPU-second"}
    assert all(float(ratio) > 0 for ratio in rows.values())
    assert "ratio ioasid/echo round trips, 1 client" in out  # the usual figures are still there


def test_fairness_against(other_tree: Path) -> None:
    out = run_bench("bench_fairness.py", "--seconds", "0.05", "--rounds", "1",
                    "--against", str(other_tree))
    assert f"old: ioasidsd imported from {other_tree / 'ioasidsd' / '__init__.py'}\n" in out
    rows = dict(re.findall(r"^\| (ioasid [^|]+) \| [\d,.]+ \| [\d,.]+ \| ([\d.]+) \| [\d.]+ \|$",
                           out, re.MULTILINE))
    assert set(rows) == {f"ioasid small request {label}, {name} ms"
                         for label in ("alone", "with batches")
                         for name in ("p50", "p99", "max")} | {"ioasid batch client IDs/s"}
    assert all(float(ratio) >= 0 for ratio in rows.values())  # 0.000: a ratio below 0.0005
    assert re.search(r"^round 0 new with batches +p50 ms ", out, re.MULTILINE)


def test_against_refuses_a_tree_without_the_project(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "bench_model.py"), "--against",
                           str(tmp_path)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode != 0
    assert "not a checkout of this project" in done.stderr


def test_against_refuses_a_tree_that_imports_from_elsewhere(tmp_path: Path) -> None:
    """A tree lacking one of the project's packages would take it from this tree's
    installation: refused before anything is measured."""
    shutil.copytree(ROOT / "ioasidsd", tmp_path / "ioasidsd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, str(BENCH / "bench_model.py"), "--against",
                           str(tmp_path)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode != 0
    assert "imported from elsewhere" in done.stderr
    assert str(ROOT / "cgroupfs") in done.stderr
