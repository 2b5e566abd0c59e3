"""Process tracking against an unprivileged user who tries to get out of its cgroup: a fork storm
must not stop tracking, and a grandchild re-parented to init, or to a subreaper the user runs in
the root, must not be charged to the root. Each runs in every membership mode: the kernel's
named hierarchy, the connector, polling.

Each test runs the user's own processes, as that user, inside its delegated ``/tenant`` (limit
100), and asks for one IOASID more than the limit from a process whose parent is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest
from daemon.daemons import pids, wait_until

from .conftest import LIMIT, Delegated

ESCAPE = r"""
import os, sys
cgroup, ctl = sys.argv[1], sys.argv[2:]
with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
    f.write("0")                      # this process joins the tenant's cgroup
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:                        # the child forks the grandchild and exits at once
    if os.fork() == 0:
        os.close(go_w)
        os.close(done_r)
        os.read(go_r, 1)              # until its parent has been reaped: re-parented by then
        os.write(2, f"grandchild ppid {os.getppid()}\n".encode())
        os.set_inheritable(done_w, True)
        os.execv(ctl[0], ctl)
    os._exit(0)
os.close(go_r)
os.close(done_w)
os.waitpid(child, 0)
os.write(go_w, b"x")
os.read(done_r, 1)                    # the grandchild's exit closes its end
"""


def escape(d: Delegated) -> subprocess.CompletedProcess[str]:
    """The tenant's process joins ``/tenant``; its grandchild, re-parented to init, asks for
    ``LIMIT + 1`` IOASIDs with ``ioasidctl alloc``."""
    argv = [d.python, "-c", ESCAPE, str(d.cgroup), *d.ctl(), "alloc", "-n", str(LIMIT + 1)]
    proc = d.user.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        start_new_session=True)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def assert_held_to_the_limit(d: Delegated, done: subprocess.CompletedProcess[str],
                             reparented: str = "grandchild ppid 1\n") -> None:
    assert reparented in done.stderr, done.stderr
    granted = done.stdout.split()
    assert len(granted) == LIMIT, (len(granted), done.stderr)
    assert "ioasidctl: alloc: " in done.stderr
    assert (d.cgroup / "ioasids.events").read_text() == "max 1\n"


MODES = ["kernel", "connector", "poll"]


@pytest.mark.parametrize("tracking", MODES)
def test_a_reparented_grandchild_is_charged_to_the_tenant(delegate, tracking: str) -> None:
    """The grandchild's parent exited before its fork was followed: the kernel kept it in the
    tenant's cgroup; the connector followed its parent's fork; polling places it by the process
    group it inherited. The limit holds."""
    d = delegate("--tracking", tracking)
    assert d.daemon.status()["tracking"]["mode"] == tracking
    assert_held_to_the_limit(d, escape(d))


SUBREAPER = r"""
import ctypes, os, sys
cgroup, ctl = sys.argv[1], sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:   # PR_SET_CHILD_SUBREAPER: orphans below come to us
    sys.exit(f"prctl: {os.strerror(ctypes.get_errno())}")
me = os.getpid()                      # stays in the root cgroup
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:                        # the child joins the tenant's cgroup, forks, exits
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write("0")
    if os.fork() == 0:
        os.close(go_w)
        os.close(done_r)
        os.read(go_r, 1)              # until its parent has been reaped: re-parented to `me`
        os.write(2, f"re-parented to the subreaper {os.getppid() == me}\n".encode())
        os.set_inheritable(done_w, True)
        os.execv(ctl[0], ctl)
    os._exit(0)
os.close(go_r)
os.close(done_w)
os.waitpid(child, 0)
os.write(go_w, b"x")
os.read(done_r, 1)                    # the grandchild's exit closes its end
os.wait()                             # and the subreaper reaps it
"""


@pytest.mark.parametrize("tracking", MODES)
def test_a_grandchild_reparented_to_a_subreaper_is_not_charged_to_the_root(
        delegate, tracking: str) -> None:
    """The user's own subreaper, in the root, forks a child that joins /tenant, forks and
    exits: the grandchild is re-parented to the subreaper. The kernel keeps it in /tenant and
    the connector followed the fork: the limit holds. Polling (unless a scan fell between the
    fork and the exit) sees a new process of an untracked parent just as a tracked process
    died unseen: it cannot tell, so the grandchild is placed by its process group and session,
    which nothing outside the root shares any more, and is refused; never charged to the
    root."""
    d = delegate("--tracking", tracking)
    argv = [d.python, "-c", SUBREAPER, str(d.cgroup), *d.ctl(), "alloc", "-n", str(LIMIT + 1)]
    proc = d.user.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        start_new_session=True)
    out, err = proc.communicate(timeout=60)
    reparented = "re-parented to the subreaper True\n"
    if tracking == "poll" and out == "":  # else a scan saw the fork: held to the limit
        assert reparented in err, err
        assert "cannot open /dev/ioasid: Operation not permitted" in err, err
        return
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    assert_held_to_the_limit(d, done, reparented)


def test_an_unplaceable_process_is_refused_not_charged_to_the_root(delegate) -> None:
    """In poll mode a grandchild that starts a session of its own after its parent is gone
    shows nothing of its origin: it is refused with EPERM, never charged to the root."""
    d = delegate("--tracking", "poll")
    script = ESCAPE.replace('os.read(go_r, 1)', 'os.read(go_r, 1); os.setsid()')
    argv = [d.python, "-c", script, str(d.cgroup), *d.ctl(), "alloc", "-n", "1"]
    proc = d.user.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        start_new_session=True)
    out, err = proc.communicate(timeout=60)
    assert "grandchild ppid 1\n" in err
    assert out == "" and "ioasidctl: cannot open /dev/ioasid: Operation not permitted" in err
    root = d.daemon.mount / "ioasids.current"
    assert root.read_text() == "0\n"
    refused = [e for e in d.daemon.events() if e.get("event") == "userapi open refused"]
    assert refused and "cannot be placed" in refused[-1]["error"]


STORM = r"""
set -e
echo $$ > "$1/cgroup.procs"
for j in $(seq "$2"); do
  for i in $(seq 200); do /bin/true & done
  wait
done
sleep 600 &
echo $!
exec sleep 600
"""


@pytest.mark.parametrize("tracking", ["kernel", "connector"])
def test_a_fork_storm_does_not_stop_tracking(delegate, tracking: str) -> None:
    """The probe's storm, 150 rounds of 200 short-lived children in ``/tenant`` (children that
    exit before their fork is read, their ``/proc`` files vanishing mid-read): tracking is not
    degraded afterwards, a fork is still followed, and the limit still holds for a re-parented
    grandchild. The storm takes 15-18 s here (it took minutes while the suite leaked named
    hierarchies, which slow every fork: see ``remove_hierarchy``). Lost events and the rescan
    they cause are tested apart (``tests/daemon/test_procs.py``, an overflow forced)."""
    d = delegate("--tracking", tracking)
    storm = d.user.popen(["/bin/sh", "-c", STORM, "storm", str(d.cgroup), "150"],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    last = 0
    try:
        assert storm.stdout is not None
        last = int(storm.stdout.readline())  # forked after the storm
        wait_until(lambda: last in pids(d.cgroup / "cgroup.procs"),
                   "the child forked after the storm in /tenant")
        status = d.daemon.status()["tracking"]
        assert status["state"] == "ok", status
        assert status["mode"] == tracking
        assert_held_to_the_limit(d, escape(d))
    finally:
        storm.kill()
        storm.wait()
        if last:
            with contextlib.suppress(ProcessLookupError):
                os.kill(last, signal.SIGKILL)
