"""Membership kept by the kernel: a real root daemon in ``kernel`` mode, its named cgroup-v1
hierarchy, and real processes that fork while no daemon runs.

Each test compares the daemon's files with the kernel's own view (``/proc/PID/cgroup`` and the
named hierarchy, mounted by the test where it must act behind the daemon's back).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ioasidsd.daemon.membership import (
    KernelHierarchy,
    hierarchy_exists,
    hierarchy_name,
    retire_hierarchy,
)
from ioasidsd.host import ProcessSource

from .daemons import BIN, Daemon, pids, read, wait_until


def kernel_mode(d: Daemon) -> Daemon:
    d.start()
    if d.status()["tracking"]["mode"] != "kernel":
        pytest.skip("this machine cannot mount a named cgroup-v1 hierarchy")
    return d


@contextlib.contextmanager
def behind_the_back(d: Daemon) -> Iterator[KernelHierarchy]:
    """The daemon's named hierarchy, mounted apart (the daemon is stopped)."""
    where = d.base / "kernel-view"
    hierarchy = KernelHierarchy(hierarchy_name(d.state), where)
    hierarchy.mount()
    try:
        yield hierarchy
    finally:
        hierarchy.unmount()


def kernel_cgroup(d: Daemon, pid: int) -> str | None:
    return ProcessSource().cgroup(pid, hierarchy_name(d.state))


WAITER = r"""
import os, sys
r, w = os.pipe()
for line in sys.stdin:
    if line.startswith("fork"):
        child = os.fork()
        if child == 0:
            os.close(w)
            os.read(r, 1)
            out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, 1)
            os.execv(sys.argv[2], sys.argv[2:])
        print(child, flush=True)
    elif line.startswith("go"):
        os.write(w, b"x")
        os.waitpid(child, 0)
        print("done", flush=True)
"""


class Waiter:
    """A process that forks a child when told, which execs ``argv`` when told ``go``, its
    output in ``out``."""

    def __init__(self, argv: list[str], out: Path) -> None:
        self.out = out.with_suffix(".err").open("w")
        self.proc = subprocess.Popen([sys.executable, "-c", WAITER, str(out), *argv],
                                     text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.out, bufsize=1)
        self.pid = self.proc.pid

    def say(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.out.close()


def test_a_fork_while_no_daemon_runs_is_charged_where_the_kernel_kept_it(daemons, tmp_path):
    """kill -9, a fork in /a while down, a restart: the child is listed in /a, and its
    allocations are charged to /a and held to /a's limit."""
    d = kernel_mode(daemons())
    (d.mount / "a").mkdir()
    (d.mount / "a" / "ioasids.max").write_text("5")
    alloc = [str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "alloc", "-n", "6"]
    waiter = Waiter(alloc, tmp_path / "alloc.out")
    try:
        (d.mount / "a" / "cgroup.procs").write_text(str(waiter.pid))
        d.kill9()
        child = int(waiter.say("fork"))
        assert kernel_cgroup(d, child) == "/a"  # the kernel placed it, no daemon running
        d.start()
        assert child in pids(d.mount / "a" / "cgroup.procs")
        assert waiter.say("go") == "done"
        assert len((tmp_path / "alloc.out").read_text().split()) == 5
        assert read(d.mount / "a" / "ioasids.events") == "max 1\n"
        assert read(d.mount / "a" / "ioasids.peak") == "5\n"
    finally:
        waiter.close()


def test_an_emptied_hierarchy_is_seeded_from_the_state(daemons, forkers):
    """A hierarchy that kept nothing (its cgroups removed while no daemon ran) is made again
    from the state, with the state's processes moved into it."""
    d = kernel_mode(daemons())
    (d.mount / "a").mkdir()
    proc = forkers()
    (d.mount / "a" / "cgroup.procs").write_text(str(proc.pid))
    assert d.stop() == 0
    with behind_the_back(d) as kernel:
        kernel.attach(proc.pid, "/")
        kernel.rmdir("/a")
        assert kernel.paths() == []
    d.start()
    assert kernel_cgroup(d, proc.pid) == "/a"
    assert pids(d.mount / "a" / "cgroup.procs") == [proc.pid]


def test_a_retired_hierarchy_is_gone_from_the_kernel(daemons):
    """``retire_hierarchy`` after a daemon that made cgroups has stopped: the kernel no longer
    has the hierarchy, though it keeps one whose last unmount comes right after the removal of
    its last child (the child is freed later)."""
    d = kernel_mode(daemons())
    for path in ("a", "a/b", "c"):
        (d.mount / path).mkdir()
    assert d.stop() == 0
    name = hierarchy_name(d.state)
    assert hierarchy_exists(name)  # kept across the stop, with its cgroups
    assert retire_hierarchy(d.state) == []  # ``remove_hierarchy`` of the state's hierarchy
    assert not hierarchy_exists(name)
    assert retire_hierarchy(d.state) is None  # none left to remove


def test_a_kept_hierarchy_wins_over_the_state(daemons, forkers):
    """While no daemon ran, the kernel's hierarchy changed: a process moved to /b, a cgroup
    /x with a process in it, an empty /y. At start the kernel wins: the process is recorded in
    /b, /x is added to the state (with a warning), /y is removed."""
    d = kernel_mode(daemons())
    for name in ("a", "b"):
        (d.mount / name).mkdir()
    moved, other = forkers(), forkers()
    (d.mount / "a" / "cgroup.procs").write_text(str(moved.pid))
    assert d.stop() == 0
    with behind_the_back(d) as kernel:
        kernel.attach(moved.pid, "/b")
        kernel.mkdir("/x")
        kernel.attach(other.pid, "/x")
        kernel.mkdir("/y")
    d.start()
    assert pids(d.mount / "b" / "cgroup.procs") == [moved.pid]
    assert pids(d.mount / "a" / "cgroup.procs") == []
    assert pids(d.mount / "x" / "cgroup.procs") == [other.pid]
    assert not (d.mount / "y").exists()
    assert any(e["event"].startswith("cgroups found only in the kernel")
               and e["cgroups"] == ["/x"] for e in d.events())

    def recorded() -> bool:  # the records follow the kernel within a scan
        state = d.status()
        return state["processes"] == 2
    wait_until(recorded, "both processes recorded")


def test_listings_and_rmdir_are_the_kernels(daemons, forkers):
    """A child forked in /a is listed at once (no event to wait for), threads come with
    ``tasks``, and /a cannot be removed while the kernel keeps a process in it."""
    d = kernel_mode(daemons())
    (d.mount / "a").mkdir()
    proc = forkers()
    (d.mount / "a" / "cgroup.procs").write_text(str(proc.pid))
    child = proc.fork()
    assert pids(d.mount / "a" / "cgroup.procs") == sorted([proc.pid, child])
    assert child not in pids(d.mount / "cgroup.procs")
    with pytest.raises(OSError) as busy:
        os.rmdir(d.mount / "a")
    assert busy.value.errno == 16  # EBUSY
    (d.mount / "cgroup.procs").write_text(str(proc.pid))
    (d.mount / "cgroup.procs").write_text(str(child))
    assert pids(d.mount / "a" / "cgroup.procs") == []
    os.rmdir(d.mount / "a")
    assert kernel_cgroup(d, child) == "/"


def test_tasks_lists_every_thread_of_a_moved_process(daemons):
    d = kernel_mode(daemons())
    (d.mount / "a").mkdir()
    script = "import threading, time\n" \
             "for _ in range(3): threading.Thread(target=time.sleep, args=(600,), " \
             "daemon=True).start()\nprint('ready', flush=True)\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        (d.mount / "a" / "cgroup.procs").write_text(str(proc.pid))
        tids = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
        assert len(tids) == 4
        assert pids(d.mount / "a" / "tasks") == tids
    finally:
        proc.kill()
        proc.wait()


STORM = r"""
import os, signal, sys, time
with open(sys.argv[1], "w") as procs:
    procs.write("0")
stop = False
def halt(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, halt)
keep = []
while not stop:
    for _ in range(20):              # short-lived children
        if os.fork() == 0:
            os._exit(0)
    if len(keep) < 20 and os.fork() == 0:   # and sleepers that stay, each forking one more
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.fork() == 0:
            signal.pause()
            os._exit(0)
        signal.pause()
        os._exit(0)
    keep.append(1)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    time.sleep(0.005)
print("stopped", flush=True)
signal.pause()
"""


def test_kill9_during_a_fork_storm_loses_no_member(daemons, tmp_path):
    """A process in /tenant forks without pause (short-lived children, and sleepers that fork
    once more) while the daemon is killed with SIGKILL and restarted three times; a process of
    /tenant forks a child while no daemon runs. Afterwards the daemon's records are the
    kernel's (every live process of /tenant recorded, nothing else), the capacity is as it was,
    tracking is not degraded, and the child born while no daemon ran is held to /tenant's
    limit."""
    d = kernel_mode(daemons())
    (d.mount / "tenant").mkdir()
    (d.mount / "tenant" / "ioasids.max").write_text("5")
    before = d.status()
    alloc = [str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "alloc", "-n", "6"]
    waiter = Waiter(alloc, tmp_path / "alloc.out")
    (d.mount / "tenant" / "cgroup.procs").write_text(str(waiter.pid))
    storm = subprocess.Popen([sys.executable, "-c", STORM,
                              str(d.mount / "tenant" / "cgroup.procs")],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: len(pids(d.mount / "tenant" / "cgroup.procs")) > 10,
                   "the storm under way")
        for round_ in range(3):
            d.kill9()
            if round_ == 1:
                waiter.say("fork")
            d.start()
        storm.terminate()
        assert storm.stdout is not None and storm.stdout.readline() == "stopped\n"
        kernel = pids(d.run / "membership" / "tenant" / "cgroup.procs")
        assert len(kernel) > 20 and pids(d.mount / "tenant" / "cgroup.procs") == kernel
        wait_until(lambda: d.status()["processes"] == len(kernel),
                   "the records to follow the kernel")
        status = d.status()
        assert (status["capacity"], status["available"]) == (before["capacity"],
                                                             before["available"])
        assert status["over_reserved"] == [] and status["tracking"]["state"] == "ok"
        assert waiter.say("go") == "done"
        assert len((tmp_path / "alloc.out").read_text().split()) == 5
        assert read(d.mount / "tenant" / "ioasids.events") == "max 1\n"
    finally:
        os.killpg(storm.pid, 9)
        storm.wait()
        waiter.close()
        wait_until(lambda: not pids(d.mount / "tenant" / "cgroup.procs"), "the storm gone")


def test_an_exit_is_recorded_from_the_connector_without_waiting_for_a_scan(daemons, forkers,
                                                                           tmp_path):
    """Kernel mode with a scan once an hour: a process's exit is still recorded at once, from
    the process events connector (exits only: the kernel keeps membership)."""
    config = tmp_path / "hourly.toml"
    config.write_text("poll_interval = 3600\n")
    d = kernel_mode(daemons("--config", str(config)))
    detail = d.status()["tracking"]["detail"]
    if "no process events connector" in detail:
        pytest.skip(f"the process events connector cannot be opened here: {detail}")
    assert "exits from the process events connector" in detail
    (d.mount / "a").mkdir()
    proc = forkers()
    (d.mount / "a" / "cgroup.procs").write_text(str(proc.pid))
    wait_until(lambda: d.status()["processes"] == 1, "the moved process recorded")
    proc.exit()
    wait_until(lambda: d.status()["processes"] == 0, "its exit recorded before any scan")
    assert d.status()["tracking"]["mode"] == "kernel"
