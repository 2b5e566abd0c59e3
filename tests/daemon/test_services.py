"""The daemon's small services: directory locks, sd_notify, the control API, release agents."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import threading

import pytest
import structlog
from system.ops import FakeProcesses

from ioasidsd.control.client import ControlClient, ControlError
from ioasidsd.control.server import ControlServer
from ioasidsd.daemon.notify import sd_notify
from ioasidsd.daemon.release import ReleaseAgents
from ioasidsd.daemon.runtime import AlreadyRunning, DirectoryLock, read_pid
from ioasidsd.model import IoasidError
from ioasidsd.system import System

LOG = structlog.get_logger()


# ---------------------------------------------------------------------- locks
def test_a_second_lock_on_a_directory_is_refused_with_the_owner(tmp_path):
    first = DirectoryLock(tmp_path / "run", "ioasidsd.pid", "runtime directory")
    first.acquire()
    assert read_pid(first.path) == os.getpid()
    second = DirectoryLock(tmp_path / "run", "ioasidsd.pid", "runtime directory")
    with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}.*runtime directory"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()
    assert first.path.exists() and read_pid(first.path) is None


# ---------------------------------------------------------------------- sd_notify
@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_one_datagram(tmp_path, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"ioasidsd-test-{os.getpid()}"
            server.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            server.bind(address)
        assert sd_notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": address})
        server.settimeout(5)
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"


def test_sd_notify_without_a_socket_does_nothing():
    assert sd_notify("READY=1", environ={}) is False
    with pytest.raises(ValueError, match="vsock"):
        sd_notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:9"})


# ---------------------------------------------------------------------- control API
@pytest.fixture
def control(tmp_path):
    def status(request, peer):
        return {"uid": peer.uid, "pid": peer.pid, "echo": request.get("x")}

    def refuse(request, peer):
        raise IoasidError(28, "no room")

    def crash(request, peer):
        raise RuntimeError("bug")

    server = ControlServer(tmp_path / "control.sock",
                           {"status": status, "refuse": refuse, "crash": crash}, LOG)
    server.start()
    yield server
    server.stop()


def test_control_round_trip_with_peer_credentials(control):
    client = ControlClient(control.path)
    assert client.call("status", x=[1, 2]) == {"uid": os.getuid(), "pid": os.getpid(),
                                               "echo": [1, 2]}
    assert stat.S_IMODE(os.stat(control.path).st_mode) == 0o666


@pytest.mark.parametrize("verb, error", [("refuse", "ENOSPC"), ("crash", "EIO"),
                                         ("stauts", "EINVAL")])
def test_control_errors_are_replies(control, verb, error):
    with pytest.raises(ControlError) as info:
        ControlClient(control.path).call(verb)
    assert info.value.error == error
    assert ControlClient(control.path).call("status")["uid"] == os.getuid()  # still serving


def test_control_survives_junk(control):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(control.path))
        sock.sendall(b"not json\n[1]\n" + b"x" * 70000 + b"\n")
        replies = sock.makefile("rb").read().splitlines()
    assert [json.loads(r)["error"] for r in replies] == ["EINVAL", "EINVAL", "E2BIG"]
    assert ControlClient(control.path).call("status")["pid"] == os.getpid()


def test_no_daemon_is_enotconn(tmp_path):
    with pytest.raises(ControlError) as info:
        ControlClient(tmp_path / "control.sock").call("status")
    assert info.value.error == "ENOTCONN" and "no ioasidsd" in str(info.value)


def test_stop_removes_the_socket_and_start_replaces_a_stale_one(tmp_path):
    path = tmp_path / "control.sock"
    path.write_text("left by a killed daemon")
    server = ControlServer(path, {"status": lambda r, p: 1}, LOG)
    server.start()
    assert ControlClient(path).call("status") == 1
    server.stop()
    assert not path.exists()


# ---------------------------------------------------------------------- release agents
def test_release_agent_runs_like_the_kernel_s(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    agent = tmp_path / "agent"
    agent.write_text(f'#!/bin/sh\necho "$# $1 $HOME $PATH $(pwd)" > {fifo}\n')
    agent.chmod(0o755)
    system = System(processes=FakeProcesses())
    runner = ReleaseAgents(system, LOG)
    system.on_change = lambda change: runner.wake()
    runner.start()
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        system.write_release_agent(f"{agent}\n")
        system.mkdir("/a")
        system.write_flag("/a", "notify_on_release", "1")
        system.mkdir("/a/b")  # inherits the flag
        system.processes.live[5] = 1.0
        system.write_procs("/a/b", "5", writer_pid=1, writer_uid=0)
        system.write_procs("/", "5", writer_pid=1, writer_uid=0)  # /a/b became empty
        ready, _, _ = select.select([reader], [], [], 20)
        assert ready, "the release agent did not run"
        line = b""
        while not line.endswith(b"\n"):
            select.select([reader], [], [], 20)
            line += os.read(reader, 4096)
        assert line.decode() == "1 /a/b / /sbin:/bin:/usr/sbin:/usr/bin /\n"
    finally:
        runner.stop()
        os.close(reader)
    assert runner.started == 1 and runner.failed == 0


def test_release_agent_and_cgroup_of_any_bytes_run_with_those_bytes(tmp_path):
    """The agent's path and the cgroup's name are handed to execve as the bytes written: a
    path that is not UTF-8 runs, and the agent gets the name's own bytes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    agent = os.path.join(os.fsencode(tmp_path), b"agent \xff\xa0caf\xc3\xa9")
    with open(agent, "w") as script:
        script.write(f'#!/bin/sh\nprintf "%s\\n" "$1" > {fifo}\n')
    os.chmod(agent, 0o755)
    name = "\xe9t\xe9 \xa0"  # UTF-8: a name that is not fails in the model (another fault)
    system = System(processes=FakeProcesses())
    runner = ReleaseAgents(system, LOG)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        system.write_release_agent(b" " + agent + b"\xa0\n")
        system.mkdir(f"/{name}")
        system.write_flag(f"/{name}", "notify_on_release", "1")
        system.processes.live[5] = 1.0
        system.write_procs(f"/{name}", "5", writer_pid=1, writer_uid=0)
        system.exit(5)
        assert runner.run_pending() == 1 and runner.failed == 0
        line = b""
        while not line.endswith(b"\n"):
            assert select.select([reader], [], [], 20)[0], "the release agent did not write"
            line += os.read(reader, 4096)
    finally:
        os.close(reader)
    assert line == b"/\xc3\xa9t\xc3\xa9 \xc2\xa0\n"


def test_no_agent_no_run_and_a_bad_agent_is_logged(tmp_path):
    system = System(processes=FakeProcesses())
    runner = ReleaseAgents(system, LOG)
    system.mkdir("/a")
    system.write_flag("/a", "notify_on_release", "1")
    system.processes.live[5] = 1.0
    system.write_procs("/a", "5", writer_pid=1, writer_uid=0)
    system.exit(5)
    assert runner.run_pending() == 0  # release_agent is empty: the kernel runs nothing
    system.write_release_agent(str(tmp_path / "missing"))
    system.write_procs("/a", "5", writer_pid=1, writer_uid=0)
    system.exit(5)
    assert runner.run_pending() == 0 and runner.failed == 1
    assert not system.cgroups.releases


def test_wake_is_cheap_and_thread_safe():
    system = System()
    runner = ReleaseAgents(system, LOG)
    threads = [threading.Thread(target=runner.wake) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not runner._wake.is_set()  # nothing queued: nothing to wake for
