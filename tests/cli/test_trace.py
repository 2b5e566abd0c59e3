"""``ioasidctl trace record`` against a real daemon: real processes allocate through
``/dev/ioasid`` while it records, and the trace it writes, replayed by an experiment policy,
counts the same requests granted and refused as the daemon did."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from daemon.daemons import TIMEOUT, wait_until

from ioasidsd.experiments.trace import read_trace

from .conftest import IOASIDCTL, Served
from .test_ctl import hold, one_line_error


def _current(served: Served, path: str) -> int:
    return int(served.ok("get", "-n", "-v", "-r", "ioasids.current", path))


def _members(served: Served, path: str) -> int:
    """How many processes the daemon's model has in ``path`` (one leaves it when the daemon
    has seen it exit; its IOASIDs may be released before, when its socket closes)."""
    tree = json.loads(served.ok("tree", "--json", path))
    return len(tree["cgroups"][0]["procs"])


def _policy(tmp_path: Path, trace: Path, limit: int, duration: float) -> Path:
    policy = tmp_path / f"replay-{limit}.toml"
    policy.write_text(f"""name = "yesterday under ioasids.max {limit}"
[[cgroup]]
path = "/rec"
max = {limit}
[[workload]]
name = "live"
cgroup = "/rec"
arrival = {{ process = "trace", file = "{trace.name}" }}
[run]
duration = {duration}
""")
    return policy


def test_a_recorded_trace_replays_the_live_requests(served: Served, tmp_path: Path) -> None:
    served.ok("create", "/rec")
    served.ok("set", "-r", "ioasids.max=3", "/rec")
    out = tmp_path / "day.csv"
    run = str(served.daemon.run)
    recorder = subprocess.Popen([IOASIDCTL, "--runtime-dir", run, "trace", "record", "--out",
                                 str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        assert recorder.stdout is not None
        assert recorder.stdout.readline() == f"recording to {out}\n"
        holder = hold(served, "/rec", 2)  # two ALLOCs granted: 2/3
        try:
            # one ALLOC granted (3/3), the next refused by /rec; the process exits
            done = served.ctl("exec", "-g", "/rec", "--", IOASIDCTL, "--runtime-dir", run,
                              "alloc", "-n", "2")
            assert "EAGAIN" in one_line_error(done, 1)
            wait_until(lambda: _members(served, "/rec") == 1, "the refused process's exit")
            # a batch of one, granted (3/3)
            done = served.ctl("exec", "-g", "/rec", "--", IOASIDCTL, "--runtime-dir", run,
                              "alloc", "--batch", "-n", "1")
            assert done.returncode == 0, done.stderr
            wait_until(lambda: _members(served, "/rec") == 1, "the batch process's exit")
        finally:
            holder.send_signal(signal.SIGTERM)
            holder.wait(TIMEOUT)
        wait_until(lambda: _members(served, "/rec") == 0, "the holder's exit")
        assert _current(served, "/rec") == 0
    finally:
        recorder.send_signal(signal.SIGINT)
        stdout, stderr = recorder.communicate(timeout=TIMEOUT)
    assert recorder.returncode == 0, stderr
    assert stdout.startswith("recorded ") and stdout.rstrip().endswith(str(out))

    ops = read_trace(str(out))
    assert [op.op for op in ops if op.op != "free"] == [
        "spawn", "alloc", "alloc",  # the holder
        "spawn", "alloc", "alloc", "exit",  # granted, refused
        "spawn", "alloc", "exit",  # the batch
        "exit"]  # the holder
    assert {op.cgroup for op in ops if op.op == "spawn"} == {"/rec"}
    assert [op.count for op in ops if op.op == "alloc"] == [1, 1, 1, 1, 1]
    assert len({op.pid for op in ops}) == 3

    duration = ops[-1].time + 1.0
    replays = {}
    for limit in (3, 2):
        done = served.ctl("experiment", "run", "--json",
                          str(_policy(tmp_path, out, limit, duration)))
        assert done.returncode == 0, done.stderr
        replays[limit] = json.loads(done.stdout)["workloads"]["live"]
    same = replays[3]  # the daemon's own limit: what it granted and refused
    assert (same["offered"], same["admitted"], same["refused"]) == (5, 4, 1)
    assert same["refused_by"] == {"/rec": 1}
    # with a limit of 2 the holder fills /rec: the other three requests are refused
    tight = replays[2]
    assert (tight["offered"], tight["admitted"], tight["refused"]) == (5, 2, 3)
    served.ok("delete", "/rec")


def test_trace_record_refuses_bad_input_in_one_line(served: Served, tmp_path: Path) -> None:
    line = one_line_error(served.ctl("trace", "record", "--out",
                                     str(tmp_path / "no" / "such" / "dir.csv"),
                                     "--duration", "1"), 1)
    assert "No such file or directory" in line
    assert "--duration" in one_line_error(
        served.ctl("trace", "record", "--out", str(tmp_path / "x.csv"), "--duration", "-1"), 2)
    assert not (tmp_path / "x.csv").exists()


def test_trace_record_with_a_duration_stops_by_itself(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "short.csv"
    done = served.ctl("trace", "record", "--out", str(out), "--duration", "0.3")
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines()[0] == "time,op,pid,cgroup,count"
    assert read_trace(str(out)) == ()


def test_a_user_other_than_root_is_refused_in_one_line(served: Served, open_tmp: Path,
                                                       tenant) -> None:
    out = open_tmp / "user.csv"
    open_tmp.chmod(0o777)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LC_ALL": "C.UTF-8"}
    done = served.ctl("trace", "record", "--out", str(out), "--duration", "1", user=tenant,
                      env=env)
    assert "only root may record a trace" in one_line_error(done, 1)
    assert not out.exists()


def test_without_a_daemon_trace_record_fails_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "none.csv"
    done = subprocess.run([IOASIDCTL, "--runtime-dir", str(tmp_path), "trace", "record",
                           "--out", str(out)], capture_output=True, text=True, check=False,
                          timeout=TIMEOUT)
    assert "no ioasidsd is listening" in one_line_error(done, 1)
    assert not out.exists()
