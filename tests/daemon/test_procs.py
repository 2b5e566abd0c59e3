"""``ioasidsd.daemon.procs``: real forks and exits reach the model, by connector and by polling."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess

import pytest
import structlog

from ioasidsd.daemon.procs import (
    ConnectorTracker,
    PollTracker,
    adopt_children,
    open_tracker,
    release_gone,
)
from ioasidsd.system import System

LOG = structlog.get_logger()
TIMEOUT = 20.0


class Forker:
    """A shell that forks a `sleep` child when told, kills it when told, then exits."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["sh", "-c", 'read go; sleep 1000 & echo $!; read stop; kill $!; wait; echo done; '
                         "read end"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.child = 0

    def fork(self) -> int:
        self.proc.stdin.write("go\n")
        self.child = int(self.proc.stdout.readline())
        return self.child

    def kill_child(self) -> None:
        self.proc.stdin.write("stop\n")
        assert self.proc.stdout.readline().strip() == "done"

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def forker():
    f = Forker()
    yield f
    if f.child:
        with contextlib.suppress(ProcessLookupError):
            os.kill(f.child, signal.SIGKILL)  # an orphan would outlive the test
    f.proc.kill()
    f.proc.wait()


def wait_for(tracker, predicate) -> None:
    with tracker.handled:
        assert tracker.handled.wait_for(predicate, TIMEOUT), "the tracker did not get there"


def in_cgroup(system, pid, path):
    return lambda: (p := system.cgroups.processes.get(pid)) is not None and p.cgroup.path == path


def untracked(system, pid):
    return lambda: pid not in system.cgroups.processes


@pytest.fixture(params=["connector", "poll"])
def tracked(request):
    system = System()
    if request.param == "connector":
        tracker = ConnectorTracker(system, LOG)
    else:
        tracker = PollTracker(system, LOG, interval=0.05)
    tracker.start()
    yield system, tracker
    tracker.stop()


def test_fork_joins_the_parent_cgroup_and_exits_leave(tracked, forker):
    system, tracker = tracked
    system.mkdir("/a")
    system.write_procs("/a", str(forker.pid), writer_pid=1, writer_uid=0)
    child = forker.fork()
    wait_for(tracker, in_cgroup(system, child, "/a"))
    forker.kill_child()
    wait_for(tracker, untracked(system, child))
    forker.end()
    wait_for(tracker, untracked(system, forker.pid))
    assert system.cgroups.lookup("/a").procs == set()


def test_children_of_root_processes_are_not_tracked(tracked, forker):
    system, tracker = tracked
    system.write_procs("/", str(forker.pid), writer_pid=1, writer_uid=0)
    child = forker.fork()
    forker.kill_child()
    forker.end()
    wait_for(tracker, untracked(system, forker.pid))
    assert child not in system.cgroups.processes


def test_overflow_rescans(forker):
    system = System()
    system.mkdir("/a")
    system.write_procs("/a", str(forker.pid), writer_pid=1, writer_uid=0)
    tracker = ConnectorTracker(system, LOG, rcvbuf=1)  # the kernel's minimum buffer
    tracker.open()  # subscribed, nothing read yet: the buffer overflows
    child = forker.fork()
    for _ in range(20):
        subprocess.run(["true"], check=True)
    tracker.start()
    try:
        wait_for(tracker, lambda: tracker.overflows >= 1)
        wait_for(tracker, in_cgroup(system, child, "/a"))
    finally:
        tracker.stop()


def test_release_gone_and_adopt_children_catch_up(forker):
    system = System()
    system.mkdir("/a")
    system.write_procs("/a", str(forker.pid), writer_pid=1, writer_uid=0)
    before_fork = system.cgroups.processes[forker.pid].start_time
    child = forker.fork()  # nobody watching
    assert adopt_children(system, before_fork) == 1
    assert system.cgroups.processes[child].cgroup.path == "/a"
    assert release_gone(system) == 0  # start times agree with ProcessSource's: both alive
    forker.kill_child()
    forker.end()
    assert release_gone(system) == 2
    assert system.cgroups.processes == {}


def test_auto_falls_back_to_polling_with_the_reason():
    class Refused(ConnectorTracker):
        def open(self):
            raise PermissionError(errno.EPERM, "Operation not permitted")

    system = System()
    tracker = open_tracker(system, "auto", LOG, interval=0.5, connector=Refused)
    assert tracker.mode == "poll"
    assert "Operation not permitted" in tracker.detail and "0.5 s" in tracker.detail
    with pytest.raises(PermissionError):
        open_tracker(system, "connector", LOG, connector=Refused)
    assert open_tracker(system, "poll", LOG).mode == "poll"


# ---------------------------------------------------------------------- never dies silently
class Recording:
    """A structlog-like logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        def log(event, **fields):
            self.lines.append((level, event, fields))
        return log

    def events(self, level: str) -> list[str]:
        return [event for lvl, event, _ in self.lines if lvl == level]


def test_an_event_that_fails_is_logged_and_resynchronised(forker):
    """An unexpected exception while a fork is handled loses that event only: it is logged
    (the handler's own logging must not fail), and a resync from /proc puts the child where
    its fork would have."""
    system = System()
    system.mkdir("/a")
    system.write_procs("/a", str(forker.pid), writer_pid=1, writer_uid=0)
    log = Recording()
    tracker = ConnectorTracker(system, log)
    real_fork = system.fork
    failures = []

    def failing_fork(*args, **kwargs):
        if not failures and args[0] == forker.pid:  # not another process's fork on this machine
            failures.append(args)
            raise RuntimeError("a bug in a fork handler")
        return real_fork(*args, **kwargs)

    system.fork = failing_fork
    tracker.start()
    try:
        child = forker.fork()
        wait_for(tracker, in_cgroup(system, child, "/a"))
        assert failures and failures[0][1] == child
        assert "process event not handled; resynchronising" in log.events("warning")
        assert tracker.state == "ok" and tracker.settle()
    finally:
        tracker.stop()


def test_a_failed_tracker_is_restarted_and_says_degraded_meanwhile(forker):
    """The serving loop itself fails: the tracker says ``degraded`` and why, reopens the
    connector, resynchronises, and follows forks again."""
    system = System()
    system.mkdir("/a")
    system.write_procs("/a", str(forker.pid), writer_pid=1, writer_uid=0)
    log = Recording()
    tracker = ConnectorTracker(system, log)
    real_serve = tracker._serve
    seen: list[str] = []

    def failing_serve():
        if not seen:
            seen.append(tracker.state)
            raise OSError(errno.EBADF, "the socket broke")
        seen.append(tracker.reason or "")
        return real_serve()

    tracker._serve = failing_serve
    tracker.start()
    try:
        wait_for(tracker, lambda: tracker.restarts == 1)
        assert seen[0] == "ok"
        assert "process tracking degraded; restarting it" in log.events("exception")
        assert tracker.state == "ok" and tracker.reason is None
        child = forker.fork()
        wait_for(tracker, in_cgroup(system, child, "/a"))
        assert tracker.settle()
    finally:
        tracker.stop()


@pytest.mark.parametrize("kind", [ConnectorTracker, PollTracker])
def test_a_recovery_wakes_whoever_waits_on_the_tracker(kind):
    """``handled`` is notified when a tracker follows processes again, with the new state in
    place: a waiter for the recovery does not wait for the next process event, which a quiet
    machine may not send for a long time."""
    tracker = kind(System(), Recording())
    tracker._degrade("OSError: the socket broke")
    woken: list[tuple[str, int]] = []
    notify_all = tracker.handled.notify_all

    def noting() -> None:
        woken.append((tracker.state, tracker.restarts))
        notify_all()

    tracker.handled.notify_all = noting  # type: ignore[method-assign]
    tracker._recovered()
    assert woken == [("ok", 1)]


def test_settle_waits_for_the_events_before_it(forker):
    """After ``settle`` returns ``True``, a fork that happened before the call has been
    followed (no waiting for the tracker by other means)."""
    system = System()
    system.mkdir("/a")
    system.write_procs("/a", str(forker.pid), writer_pid=1, writer_uid=0)
    tracker = ConnectorTracker(system, LOG)
    tracker.start()
    try:
        child = forker.fork()
        assert tracker.settle()
        assert system.cgroups.processes[child].cgroup.path == "/a"
    finally:
        tracker.stop()


def test_status_says_degraded_and_why():
    from store.test_journal import _status

    from ioasidsd.cli.render import format_status

    tracking = {"mode": "connector", "detail": "netlink", "state": "degraded",
                "reason": "OSError: the socket broke", "orphans": 2, "unplaced": "refuse"}
    line = next(line for line in format_status(_status({"tracking": tracking,
                                                         "state": {"path": "p",
                                                                   "synchronous": "normal"}})
                                                ).splitlines() if line.startswith("tracking"))
    assert "DEGRADED: OSError: the socket broke" in line
    assert "2 processes of unknown origin (unplaced = refuse)" in line
