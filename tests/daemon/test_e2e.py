"""End to end: ``ioasidsd run`` as a subprocess on temporary directories, driven with plain file
operations and real processes, killed and restarted."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
import time

from .daemons import BIN, TIMEOUT, mounted, pids, read, units_table, wait_until


def test_serve_stop_and_come_back(daemons, tmp_path):
    d = daemons().start()
    mnt = d.mount
    assert (mnt / "cgroup.procs").exists()
    (mnt / "a").mkdir()
    (mnt / "a" / "notify_on_release").write_text("1\n")
    (mnt / "a" / "b").mkdir()
    (mnt / "a" / "ioasids.max").write_text("7\n")
    (mnt / "a" / "b" / "ioasids.max").write_text("max\n")
    os.chmod(mnt / "a", 0o700)
    status = d.status()
    assert status["pid"] == d.pid
    assert (status["cgroups"], status["processes"], status["ioasids"]) == (3, 0, 0)
    assert status["profile"] == "fixed" and status["quirks"] == []
    # a's limit and the VT-d host set's quota are reserved
    assert status["capacity"] - status["available"] == 7 + 32768
    # root on this kind of machine: the kernel keeps membership in a named hierarchy
    assert status["tracking"]["mode"] == "kernel"
    assert status["tracking"]["membership"] == "kernel"

    assert d.stop() == 0
    d.wait_for("STOPPING")
    assert not mounted(mnt)
    assert any(e["event"] == "stopped" for e in d.events())

    d.start()
    assert read(mnt / "a" / "ioasids.max") == "7\n"
    assert read(mnt / "a" / "b" / "ioasids.max") == "max\n"
    assert read(mnt / "a" / "notify_on_release") == "1\n"
    assert read(mnt / "a" / "b" / "notify_on_release") == "1\n"  # inherited at mkdir
    assert stat.S_IMODE(os.stat(mnt / "a").st_mode) == 0o700
    assert d.status()["available"] == status["available"]
    assert d.stop() == 0


def test_ready_carries_a_status_line(daemons):
    d = daemons()
    d.start(ready=False)
    message = d.wait_for("READY")
    assert message["READY"] == "1"
    assert message["STATUS"].startswith(f"serving {d.mount}")
    assert message["STATUS"].endswith(" IOASIDs in use, 1 cgroups")
    assert d.stop() == 0


def test_kill9_then_restart_releases_the_dead_and_adopts_the_born(daemons, forkers):
    d = daemons().start()
    parent = forkers()
    procs = d.mount / "a" / "cgroup.procs"
    (d.mount / "a").mkdir()
    procs.write_text(f"{parent.pid}\n")
    first = parent.fork()  # a child starts in its parent's cgroup
    wait_until(lambda: pids(procs) == sorted([parent.pid, first]), "the child in /a")
    assert pids(d.mount / "cgroup.procs").count(first) == 0

    d.kill9()  # no goodbye: the mount is left dead
    parent.kill(first)  # died while no daemon ran
    second = parent.fork()  # born while no daemon ran
    d.start()
    assert any("stale mount" in e["event"] for e in d.events())
    assert pids(procs) == sorted([parent.pid, second])
    assert d.status()["processes"] == 2

    parent.kill(second)  # an exit with the daemon running
    wait_until(lambda: pids(procs) == [parent.pid], "the exit seen")
    parent.exit()
    wait_until(lambda: pids(procs) == [], "the parent's exit seen")
    assert d.stop() == 0


def test_polling_tracks_the_same_and_says_so(daemons, forkers):
    d = daemons("--tracking", "poll").start()
    status = d.status()
    assert status["tracking"]["mode"] == "poll" and "psutil" in status["tracking"]["detail"]
    text = d.ctl("status").stdout
    assert "tracking   poll: psutil polling" in text
    parent = forkers()
    procs = d.mount / "a" / "cgroup.procs"
    (d.mount / "a").mkdir()
    procs.write_text(str(parent.pid))
    child = parent.fork()
    wait_until(lambda: pids(procs) == sorted([parent.pid, child]), "the child found by a scan")
    parent.kill(child)
    wait_until(lambda: pids(procs) == [parent.pid], "the exit found by a scan")
    assert d.stop() == 0


def test_a_second_daemon_on_the_same_directories_refuses(daemons, tmp_path):
    first = daemons().start()
    other = tmp_path / "other"
    for args, role in ((["--runtime-dir", str(first.run), "--state-dir", str(other / "s")],
                        "runtime directory"),
                       (["--runtime-dir", str(other / "r"), "--state-dir", str(first.state)],
                        "state directory")):
        done = subprocess.run([str(BIN / "ioasidsd"), "run", "--mount", str(other / "m"),
                               *args], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 1
        assert f"another ioasidsd (pid {first.pid}) is using {role}" in done.stderr
        assert not mounted(other / "m")
    assert first.status()["pid"] == first.pid  # untouched
    assert first.stop() == 0


def test_release_agent_runs_when_a_cgroup_empties(daemons, forkers, tmp_path):
    fifo = tmp_path / "released"
    os.mkfifo(fifo)
    agent = tmp_path / "agent.sh"
    agent.write_text(f'#!/bin/sh\necho "$1" > {fifo}\n')
    agent.chmod(0o755)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    d = daemons().start()
    try:
        (d.mount / "release_agent").write_text(f"{agent}\n")
        (d.mount / "a").mkdir()
        (d.mount / "a" / "notify_on_release").write_text("1")
        (d.mount / "a" / "b").mkdir()
        proc = forkers()
        (d.mount / "a" / "b" / "cgroup.procs").write_text(str(proc.pid))
        proc.exit()  # the last process of /a/b is gone
        assert select.select([reader], [], [], 30)[0], "the agent did not run"
        assert os.read(reader, 4096) == b"/a/b\n"
    finally:
        os.close(reader)
    assert d.status()["release_agents"] == {"started": 1, "failed": 0}
    assert d.stop() == 0


def test_a_release_agent_of_any_bytes_survives_restarts_and_runs(daemons, forkers, tmp_path):
    """``release_agent`` keeps any byte but NUL (``printf '\\xa05\\xa0'`` stores ``5``, as the
    kernel's does): read back exactly after ``kill -9`` and after a clean stop, and run from a
    path that is not UTF-8."""
    fifo = tmp_path / "released"
    os.mkfifo(fifo)
    agent = os.path.join(os.fsencode(tmp_path), b"agent \xff\xa0caf\xc3\xa9")
    with open(agent, "w") as script:
        script.write(f'#!/bin/sh\necho "$1" > {fifo}\n')
    os.chmod(agent, 0o755)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    d = daemons().start()
    try:
        release_agent = d.mount / "release_agent"
        release_agent.write_bytes(b"\xa05\xa0")
        assert release_agent.read_bytes() == b"5\n"
        release_agent.write_bytes(b"\xa0 " + agent + b"\xa0\n")
        d.kill9()  # the value is in the journal only
        d.start()
        assert release_agent.read_bytes() == agent + b"\n"
        assert d.stop() == 0  # folded into the database
        d.start()
        assert release_agent.read_bytes() == agent + b"\n"
        (d.mount / "a").mkdir()
        (d.mount / "a" / "notify_on_release").write_text("1")
        proc = forkers()
        (d.mount / "a" / "cgroup.procs").write_text(str(proc.pid))
        proc.exit()  # the last process of /a is gone
        assert select.select([reader], [], [], 30)[0], "the agent did not run"
        assert os.read(reader, 4096) == b"/a\n"
    finally:
        os.close(reader)
    assert d.status()["release_agents"] == {"started": 1, "failed": 0}
    assert d.stop() == 0


def test_sighup_reloads_the_configuration(daemons, tmp_path):
    config = tmp_path / "ioasidsd.toml"
    config.write_text('log_level = "warning"\npoll_interval = 1.0\n')
    d = daemons("--config", str(config)).start()
    assert not any(e["event"] == "ready" for e in d.events())  # info is below warning
    config.write_text('log_level = "info"\npoll_interval = 2.0\nprofile = "v4"\n'
                      + units_table(tmp_path))
    d.signal(signal.SIGHUP)
    d.wait_for("RELOADING")
    d.wait_for("READY")
    events = {e["event"]: e for e in d.events()}
    assert events["configuration reloaded"]["applied"] == ["log_level", "poll_interval"]
    assert events["settings changed that need a restart"]["settings"] == ["profile"]
    assert d.status()["profile"] == "fixed"
    config.write_text("log_level = 3\n")
    d.signal(signal.SIGHUP)
    d.wait_for("READY")
    assert any(e["event"] == "configuration not reloaded" for e in d.events())
    assert d.stop() == 0


def test_an_unmount_from_outside_stops_the_daemon(daemons):
    d = daemons().start()
    subprocess.run(["fusermount3", "-u", str(d.mount)], check=True)
    assert d.wait() == 1
    assert any(e["event"].startswith("the hierarchy was unmounted") for e in d.events())


CHURN = r"""
import sys
from ioasidsd.userapi.client import IoasidClient
client = IoasidClient.open(sys.argv[1])
pairs = 0
try:
    while True:
        client.free(client.alloc())
        pairs += 1
        if pairs == 200:
            print("churning", flush=True)
except OSError:  # the daemon went away
    pass
"""


ROUNDS = 3


def _unmount_from_outside(path, how):
    """``umount`` or ``fusermount3 -u`` (never lazy), retried while a reader holds a file."""
    deadline = time.monotonic() + TIMEOUT
    while subprocess.run([*how, str(path)], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"{how[0]} {path} kept failing"


def test_unmounts_from_outside_racing_invalidations_neither_crash_nor_lose_state(daemons):
    """An unmount from outside ends libfuse's loop while another thread of the daemon (the
    socket's) is invalidating files the kernel holds: libfuse must not be sent a notification
    once its loop has ended (it tears the session down: a crash, or a write into a reused
    descriptor). Each round: many files looked up (a large node table for libfuse to free), a
    reader keeping the root's counters held, a client allocating and freeing (each change
    invalidates them), then the unmount; the daemon exits as after any outside unmount, and
    the next start finds what the last one wrote. (The window is a few microseconds: the
    ordering itself is checked in ``tests/cgroupfs``.)"""
    d = daemons()
    hows = (["umount"], ["fusermount3", "-u"])
    for round_ in range(ROUNDS):
        d.start()
        mnt = d.mount
        if round_ == 0:
            for i in range(100):
                (mnt / f"g{i}").mkdir()
        else:
            assert read(mnt / "g0" / "ioasids.max") == f"{100 + round_ - 1}\n"
            assert len([p for p in mnt.iterdir() if p.is_dir()]) == 100
        (mnt / "g0" / "ioasids.max").write_text(f"{100 + round_}\n")
        held = " ".join(str(mnt / f"g{i}" / "ioasids.current") for i in range(100))
        reader = subprocess.Popen(
            ["sh", "-c", f"cat {held} >/dev/null; "
                         f"while cat {mnt}/ioasids.current {mnt}/ioasids.max >/dev/null; do :; "
                         "done"], stderr=subprocess.DEVNULL)
        churn = subprocess.Popen([sys.executable, "-c", CHURN, str(d.run)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert churn.stdout is not None and churn.stdout.readline() == "churning\n"
            _unmount_from_outside(mnt, hows[round_ % 2])
            code = d.wait()
            assert code == 1, f"the daemon ended with {code} (a negative code is a signal)"
            assert any(e["event"].startswith("the hierarchy was unmounted") for e in d.events())
        finally:
            for proc in (churn, reader):
                proc.kill()
                proc.wait()
    d.start()
    assert read(d.mount / "g0" / "ioasids.max") == f"{100 + ROUNDS - 1}\n"
    assert d.stop() == 0


def test_ctl_without_a_daemon_is_one_line_and_exit_1(tmp_path):
    done = subprocess.run([str(BIN / "ioasidctl"), "status"], capture_output=True, text=True,
                          env=dict(os.environ, IOASIDS_RUNTIME_DIR=str(tmp_path)), check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and str(tmp_path) in done.stderr


def test_bad_settings_are_refused_before_anything_starts(daemons, tmp_path):
    done = subprocess.run([str(BIN / "ioasidsd"), "run", "--capacity", "0", "--mount",
                           str(tmp_path / "m")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "capacity = 0" in done.stderr
    d = daemons("--profile", "v4").start()
    (d.mount / "a").mkdir()
    assert d.stop() == 0
    again = daemons(name="fixed")
    again.args = [a for a in again.args if a not in ("--profile", "v4")]
    again.start(ready=False)
    assert again.wait() == 1
    assert "was made with profile 'v4'" in again.log()
    assert not mounted(again.mount)


def test_a_v2_hierarchy_is_served_restored_and_kept_apart_from_v1(daemons):
    d = daemons("--hierarchy", "v2").start()
    (d.mount / "cgroup.subtree_control").write_text("+ioasids")
    (d.mount / "a").mkdir()
    (d.mount / "a" / "b").mkdir()
    (d.mount / "a" / "cgroup.subtree_control").write_text("+ioasids")
    (d.mount / "a" / "ioasids.max").write_text("max")  # fixed carves b's limit out of a's
    (d.mount / "a" / "b" / "ioasids.max").write_text("7")
    (d.mount / "a" / "cgroup.max.depth").write_text("3")
    (d.mount / "t").mkdir()
    (d.mount / "t" / "x").mkdir()
    (d.mount / "t" / "x" / "cgroup.type").write_text("threaded")
    assert (d.mount / "a" / "cgroup.type").read_text() == "domain\n"
    assert not (d.mount / "tasks").exists()
    status = d.status()  # ioasidctl, unchanged
    assert status["cgroups"] == 5 and status["hierarchy"] == "v2"
    assert d.stop() == 0
    again = daemons("--hierarchy", "v2", name="v2-again").start()
    assert (again.mount / "a" / "cgroup.subtree_control").read_text() == "ioasids\n"
    assert (again.mount / "a" / "b" / "ioasids.max").read_text() == "7\n"
    assert (again.mount / "a" / "cgroup.max.depth").read_text() == "3\n"
    assert (again.mount / "t" / "cgroup.type").read_text() == "domain threaded\n"
    assert not (again.mount / "t" / "x" / "ioasids.max").exists()
    assert again.stop() == 0
    v1 = daemons(name="v1")
    v1.start(ready=False)
    assert v1.wait() == 1
    assert "was made with hierarchy v2" in v1.log()
    assert not mounted(v1.mount)
