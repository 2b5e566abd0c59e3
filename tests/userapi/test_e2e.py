"""End to end: the real daemon (``ioasidsd run`` on a temporary mount), a shell, ``ioasidctl``
and real client processes. The daemon runner is the daemon tests' (``tests/daemon/daemons.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from errno import EACCES, EEXIST
from pathlib import Path

import pytest
from daemon.daemons import BIN, Daemon, pids, wait_until

from .helpers import Agent

SERIES_EXAMPLE = r"""
set -u
cd "$MOUNT"
mkdir test1
echo 5 > test1/ioasids.max
echo $$ > test1/cgroup.procs
for i in 1 2 3 4 5 6; do
    ioasidctl alloc --hold > "$OUT/held.$i" 2> "$OUT/err.$i" &
    echo $! > "$OUT/pid.$i"
    # wait until it printed its ID or failed (a file to wait on, with a deadline)
    for t in $(seq 600); do
        if [ -s "$OUT/held.$i" ] || [ -s "$OUT/err.$i" ]; then break; fi
        sleep 0.05
    done
    echo "$i id=$(cat "$OUT/held.$i") current=$(cat test1/ioasids.current)"
done
echo "events $(cat test1/ioasids.events)"
"""


@pytest.fixture
def daemon(daemons):
    """The suite's factory of real daemons (``tests/conftest.py``)."""
    return daemons


def environment(d: Daemon) -> dict[str, str]:
    return dict(os.environ, IOASIDS_RUNTIME_DIR=str(d.run), MOUNT=str(d.mount),
                PATH=f"{BIN}:{os.environ['PATH']}")


def hold(d: Daemon, *args: str) -> tuple[subprocess.Popen, int]:
    """``ioasidctl alloc --hold`` started from this (root-cgroup) process: it and its ID."""
    proc = subprocess.Popen([str(BIN / "ioasidctl"), "alloc", "--hold", *args],
                            stdout=subprocess.PIPE, text=True, env=environment(d))
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def read(path: Path) -> str:
    return path.read_text().strip()


def test_the_series_example_in_a_shell(daemon, tmp_path) -> None:
    """The series' cgroup document, on the mount: five holders forked by a shell in test1 raise
    ioasids.current one by one, the sixth is refused and counted; a holder moved in from
    outside makes current 6 over max 5 and a further allocation fails; killing the holders
    brings current back to 0."""
    d = daemon().start()
    out = tmp_path / "out"
    out.mkdir()
    env = dict(environment(d), OUT=str(out))
    done = subprocess.run(["bash", "-c", SERIES_EXAMPLE], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:5] == [f"{i} id={i} current={i}" for i in range(1, 6)]
    assert lines[5] == "6 id= current=5"
    assert lines[6] == "events max 1"
    holders = [int(read(out / f"pid.{i}")) for i in range(1, 6)]
    assert "ioasids.max 5 reached" in read(out / "err.6")
    test1 = d.mount / "test1"
    assert set(holders) <= set(pids(test1 / "cgroup.procs"))  # forked into test1

    outsider, ioasid = hold(d)
    assert ioasid == 6 and outsider.pid not in pids(test1 / "cgroup.procs")
    assert read(test1 / "ioasids.current") == "5"
    (test1 / "cgroup.procs").write_text(f"{outsider.pid}\n")
    assert (read(test1 / "ioasids.current"), read(test1 / "ioasids.max")) == ("6", "5")
    more = subprocess.run(["bash", "-c", 'echo $$ > "$MOUNT/test1/cgroup.procs"; '
                           "exec ioasidctl alloc"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert more.returncode == 1 and "EAGAIN" in more.stderr
    assert read(test1 / "ioasids.events") == "max 2"

    for pid in holders:
        os.kill(pid, signal.SIGKILL)
    outsider.kill()
    outsider.wait()
    wait_until(lambda: read(test1 / "ioasids.current") == "0", "current back to 0")
    assert d.status()["ioasids"] == 0


def test_kill_9_of_the_daemon_loses_and_doubles_nothing(daemon, tmp_path) -> None:
    """Holders keep their IOASIDs across a kill -9 of the daemon: after the restart they are
    all there (same IDs, same charges), new allocations get other IDs, a reconnecting live
    process adopts its set (fixed) and can free its IDs, a holder that died while the daemon
    was down is released, and the others are released when they exit."""
    d = daemon().start()
    (d.mount / "vm").mkdir()
    (d.mount / "vm" / "ioasids.max").write_text("100\n")
    holders = []
    for first in (1, 5, 9):
        proc, ioasid = hold(d, "-n", "4", "--batch")  # IDs first..first+3, in one request
        assert ioasid == first
        holders.append(proc)
    for proc in holders:  # moved with their charges
        (d.mount / "vm" / "cgroup.procs").write_text(f"{proc.pid}\n")
    agent = Agent(str(d.run))
    agent.ok("open")
    mine = agent.ok("batch 5 1000 2000")
    assert mine == [1000, 1001, 1002, 1003, 1004]
    assert read(d.mount / "vm" / "ioasids.current") == "12"
    assert (d.status()["ioasids"], d.status()["sets"]) == (17, 5)  # with VT-d's host set

    d.kill9()
    dead = holders.pop()  # holds 9-12 and dies while no daemon runs
    dead.kill()
    dead.wait()
    d.start()

    assert (d.status()["ioasids"], d.status()["sets"]) == (13, 4)
    assert read(d.mount / "vm" / "ioasids.current") == "8"  # the dead holder was released
    fresh, new_id = hold(d)
    assert new_id == 9  # the dead holder's first ID is free again; the live ones are not
    agent.ok("open")  # the old connection died with the daemon: reconnect, adopt
    assert agent.ok(f"free {mine[0]}") == []
    assert agent.err("free 1") == EACCES  # a holder's, not ours
    assert agent.ok("batch 1 1000 2000") == [mine[0]]
    agent.stop()
    for proc in [*holders, fresh]:
        proc.kill()
        proc.wait()
    wait_until(lambda: d.status()["ioasids"] == 0, "every holder released")
    assert read(d.mount / "vm" / "ioasids.current") == "0"
    assert d.stop() == 0


def test_v4_reconnect_after_restart_is_eexist(daemon) -> None:
    d = daemon("--profile", "v4").start()
    agent = Agent(str(d.run))
    agent.ok("open")
    ioasid = agent.ok("alloc 1 100")[0]
    d.kill9()
    d.start()
    assert agent.err("open") == EEXIST  # the series: an MM set of this process exists
    assert d.status()["ioasids"] == 1
    agent.kill()
    wait_until(lambda: d.status()["ioasids"] == 0, "the agent's exit releasing its set")
    assert ioasid == 1


def test_a_stopped_daemon_keeps_the_ids(daemon) -> None:
    """SIGTERM stops serving without releasing the open files: a restart finds the IDs."""
    d = daemon().start()
    proc, ioasid = hold(d, "-n", "2", "--batch")
    assert d.stop() == 0
    d.start()
    assert d.status()["ioasids"] == 2
    proc.kill()
    proc.wait()
    wait_until(lambda: d.status()["ioasids"] == 0, "the holder's exit")
    del ioasid


