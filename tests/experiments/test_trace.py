"""Traces: replayed under a policy's limits (what they would have refused), and malformed
rows rejected with their line number before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioasidsd.experiments import PolicyError, load_policy, run_policies

from .helpers import IOASIDCTL, write_policy

TRACE = """time,op,pid,cgroup,count,device
0.0,spawn,100,/vm/a,,
0.5,alloc,100,,3,
1.0,spawn,200,/vm/b,,
1.5,alloc,200,,2,
2.0,alloc,100,,1,
2.5,bind,100,,2,0000:03:00.0
3.0,free,100,,2,
3.5,alloc,200,,2,
4.0,move,200,/vm/a,,
5.0,exit,100,,,
5.5,alloc,200,,1,
6.0,exit,200,,,
"""


def _policy(tmp_path: Path, limit: int | str) -> Path:
    (tmp_path / "day.csv").write_text(TRACE)
    return write_policy(tmp_path / "replay.toml", {
        "name": "replay",
        # a new cgroup's limit is 0 in both profiles: the leaves are opened to "max"
        "cgroup": [{"path": "/vm", "max": limit}, {"path": "/vm/a", "max": "max"},
                   {"path": "/vm/b", "max": "max"}],
        "workload": [{"name": "recorded", "cgroup": "/vm",
                      "arrival": {"process": "trace", "file": "day.csv"}}],
        "run": {"duration": 10.0},
    })


def test_replay_under_other_limits(tmp_path: Path) -> None:
    (wide,), _ = run_policies([load_policy(str(_policy(tmp_path, 100)))], workers=1)
    w = wide["workloads"]["recorded"]
    assert (w["offered"], w["admitted"], w["refused"]) == (5, 5, 0)
    assert (w["bound"], w["migrated"]) == (2, 1)
    assert wide["cgroups"]["/vm"]["peak"] == 6  # 3 + 2 + 1 before the free
    (tight,), _ = run_policies([load_policy(str(_policy(tmp_path, 5)))], workers=1)
    t = tight["workloads"]["recorded"]
    # 3 + 2 fill /vm and the third alloc (1) is refused; the free of 2 leaves 100 one, so
    # 200's second alloc of 2 fits (1 + 2 + 2), and after 100's exit so does its last
    assert (t["offered"], t["admitted"], t["refused"]) == (5, 4, 1)
    assert t["refused_by"] == {"/vm": 1}
    assert tight["cgroups"]["/vm"]["peak"] == 5


@pytest.mark.parametrize(("row", "reason"), [
    ("1.0,leap,100,,1,", "unknown op 'leap'"),
    ("soon,alloc,100,,1,", "time 'soon' is not a number"),
    ("1.0,alloc,100,,many,", "count 'many' is not an integer"),
    ("1.0,alloc,300,,1,", "alloc of pid 300 before its spawn"),
    ("1.0,spawn,300,vm,,", "needs an absolute cgroup path"),
    ("1.0,bind,100,,1,", "needs a device"),
    ("1.0,alloc,100", "expected 6 columns"),
])
def test_malformed_row_names_its_line(tmp_path: Path, row: str, reason: str) -> None:
    lines = TRACE.splitlines()
    lines.insert(3, row)  # becomes line 4 of the file
    (tmp_path / "day.csv").write_text("\n".join(lines) + "\n")
    policy = _policy(tmp_path, 10)
    (tmp_path / "day.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyError) as info:
        load_policy(str(policy))
    assert info.value.key == "line 4" and reason in info.value.reason
    assert str(info.value).startswith(f"{tmp_path / 'day.csv'}: line 4: ")
    import subprocess

    proc = subprocess.run([str(IOASIDCTL), "experiment", "run", str(policy)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "line 4" in proc.stderr and proc.stdout == ""
