"""The service's system call filter against what the daemon really calls: a daemon run under
``strace -f`` (it, the ``mount`` it runs and the release agent) through a session of the usual
work, in each tracking mode, makes no system call the unit's ``SystemCallFilter=`` refuses.

systemd is not PID 1 here, so the filter cannot be applied; ``systemd-analyze syscall-filter``
says which calls its groups hold."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from daemon.daemons import BIN, pids, wait_until

TOP = Path(__file__).resolve().parents[2]
UNIT = TOP / "systemd" / "ioasidsd.service"

pytestmark = [
    pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                       reason="systemd-analyze is not installed"),
    pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon's work as a service is root's"),
]


@cache
def group(name: str) -> frozenset[str]:
    """The system calls of ``@name`` (nested groups expanded), as systemd lists them."""
    done = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                          text=True, timeout=60, check=True)
    calls: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= group(word) if word.startswith("@") else {word}
    return frozenset(calls)


def refused_by_unit() -> frozenset[str]:
    """What the unit's ``SystemCallFilter=`` lines refuse: the deny lists (``~``), less what
    later lines allow again."""
    refused: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.removeprefix("SystemCallFilter=")
        deny = value.startswith("~")
        names: set[str] = set()
        for word in value.lstrip("~").split():
            names |= group(word) if word.startswith("@") else {word}
        refused = refused | names if deny else refused - names
    return frozenset(refused)


CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_][a-z0-9_]*)[( ]")


def traced_calls(trace: Path) -> set[str]:
    found = set()
    for line in trace.read_text(errors="replace").splitlines():
        match = CALL.match(line)
        if match:
            found.add(match.group(1))
    return found


def session(d, tmp_path: Path) -> None:
    """The daemon's usual work: cgroups, limits, a moved process allocating (and refused past
    its limit), the read verbs, a release agent, a reload, a stop."""
    ctl = d.ctl
    assert ctl("create", "/vms").returncode == 0
    assert ctl("set", "-r", "ioasids.max=2", "/vms").returncode == 0
    (d.mount / "release_agent").write_text("/bin/true\n")
    (d.mount / "vms" / "notify_on_release").write_text("1\n")
    (d.mount / "vms" / "x").mkdir()
    (d.mount / "vms" / "x").rmdir()
    holder = subprocess.run(
        ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec "$2" --runtime-dir "$3" alloc -n 3',
         "holder", str(d.mount / "vms"), str(BIN / "ioasidctl"), str(d.run)],
        capture_output=True, text=True, timeout=60, check=False)
    assert holder.returncode == 1 and "EAGAIN" in holder.stderr, holder.stderr
    for verb in ("tree", "ids", "events", "status", "vtd", "snapshot"):
        assert ctl(verb).returncode == 0, verb
    wait_until(lambda: not pids(d.mount / "vms" / "cgroup.procs"), "the holder's exit")
    d.signal_daemon(signal.SIGHUP)
    d.wait_for("READY")


@pytest.mark.parametrize("tracking", ["kernel", "connector"])
def test_the_daemon_calls_nothing_the_filter_refuses(daemons, tmp_path, tracking):
    refused = refused_by_unit()
    assert {"reboot", "init_module", "settimeofday", "ptrace", "setrlimit"} <= refused
    assert "fchown" not in refused and "mount" not in refused
    trace = tmp_path / "trace"
    d = daemons("--tracking", tracking)
    d.start(prefix=("strace", "-f", "-qq", "-o", str(trace)))
    assert d.status()["tracking"]["mode"] == tracking
    session(d, tmp_path)
    d.signal_daemon(signal.SIGTERM)
    assert d.wait() == 0
    called = traced_calls(trace)
    assert {"mount", "openat", "epoll_wait"} <= called  # the trace is the daemon's
    assert called & refused == set()


def test_the_trace_would_see_a_refused_call(tmp_path):
    """The check has teeth: a process that calls ``setpriority`` (``@resources``) is caught."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-o", str(trace), sys.executable, "-c",
                    "import os; os.setpriority(os.PRIO_PROCESS, 0, os.getpriority("
                    "os.PRIO_PROCESS, 0))"], check=True, timeout=60)
    assert "setpriority" in traced_calls(trace) & refused_by_unit()
