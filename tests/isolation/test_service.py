"""Bounded service: an unprivileged user cannot starve the daemon of descriptors, make it spin,
or flood its log.

The daemon runs with systemd's default of 1,024 descriptors (``prlimit``), the tenant holds as
many connections as it can, and root must still be served.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon.daemons import BIN

from .conftest import Delegated

HOG = r"""
import json, os, resource, socket, sys
run, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(f"{run}/{kind}.sock")   # blocking: waits while the listen backlog is full
    s.settimeout(10)
    return s


answers = {}
if kind == "control":                 # one process, many connections
    conns = [connect() for _ in range(count)]
    for s in conns:
        try:
            s.sendall(b'{"verb": "status"}\n')
        except OSError:
            pass                      # refused: the answer is waiting to be read
        try:
            line = s.makefile("rb").readline()
        except OSError as exc:        # a timeout too: counted
            key = type(exc).__name__
        else:
            reply = json.loads(line) if line else {"ok": False, "error": "no answer"}
            key = "ok" if reply["ok"] else reply["error"]
        answers[key] = answers.get(key, 0) + 1
else:                                 # /dev/ioasid: one open file per process
    r, w = os.pipe()
    for _ in range(count):
        if os.fork() == 0:
            os.close(r)
            try:
                sock = connect()         # kept open until this process ends
                greeting = sock.recv(8)
            except OSError as exc:       # a timeout too: counted, so that the parent ends
                key = type(exc).__name__
            else:
                ret = int.from_bytes(greeting[:4], "little", signed=True) if greeting else None
                key = "ok" if ret == 0 else f"errno {-ret}" if ret is not None else "no answer"
            os.write(w, (key + "\n").encode())
            sys.stdin.read()          # hold the connection until told to go
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as results:
        for _ in range(count):
            key = results.readline().strip()
            answers[key] = answers.get(key, 0) + 1
print(json.dumps(answers), flush=True)
sys.stdin.read()                      # hold every connection until told to go
"""


def hold(d: Delegated, kind: str, count: int) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """The tenant opens ``count`` connections to ``kind``.sock and keeps them; how each was
    answered."""
    proc = d.user.popen([d.python, "-c", HOG, str(d.daemon.run), kind, str(count)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the tenant's connections were not answered"
    return proc, json.loads(line)


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(30)


def test_one_user_cannot_starve_the_daemon_of_descriptors(delegate, tmp_path: Path) -> None:
    """1,100 idle control connections and 200 user-API connections of one user: 64 of each
    are served, the rest refused at once with EAGAIN; root is still served on both sockets and
    through the mount, and the refusals do not flood the log."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is missing")
    d = delegate()
    wrapper = tmp_path / "limited-ioasidsd"
    wrapper.write_text(f"#!/bin/sh\nexec prlimit --nofile=1024:1024 {BIN / 'ioasidsd'} \"$@\"\n")
    wrapper.chmod(0o755)
    assert d.daemon.stop() == 0
    _restart_limited(d, wrapper)
    control, control_answers = hold(d, "control", 1100)
    userapi, userapi_answers = hold(d, "ioasid", 200)
    try:
        assert control_answers == {"ok": 64, "EAGAIN": 1036}, control_answers
        assert userapi_answers == {"ok": 64, "errno 11": 136}, userapi_answers  # EAGAIN
        status = d.daemon.status()  # root, on the control socket
        assert status["control"]["refused"] >= 1036
        root_alloc = subprocess.run([*d.ctl(), "alloc", "-n", "3"], capture_output=True,
                                    text=True, timeout=30, check=False)
        assert root_alloc.returncode == 0 and len(root_alloc.stdout.split()) == 3
        (d.daemon.mount / "rooted").mkdir()  # the mount answers root
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            (d.daemon.mount / "rooted" / "cgroup.procs").write_text(str(sleeper.pid))
        finally:
            sleeper.kill()
            sleeper.wait()
        refused = [e for e in d.daemon.events() if "connection refused" in e.get("event", "")]
        assert 0 < len(refused) <= 20, len(refused)
    finally:
        release(control)
        release(userapi)


def _restart_limited(d: Delegated, wrapper: Path) -> None:
    """Start the daemon again under ``wrapper`` (the same directories and state)."""
    daemon = d.daemon
    env = dict(os.environ, NOTIFY_SOCKET=str(daemon.notify_path))
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen([str(wrapper), "run", *daemon.args], env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=log)
    daemon.wait_for("READY")
    os.chmod(daemon.run, 0o755)
    limits = Path(f"/proc/{daemon.pid}/limits").read_text()
    assert any(line.startswith("Max open files") and line.split()[3] == "1024"
               for line in limits.splitlines()), limits


FLOOD = r"""
import sys
from ioasidsd.userapi.client import IoasidClient
with IoasidClient.open(sys.argv[1]) as dev:
    for i in range(500):
        try:
            dev.ioctl(0x7777, b"")                     # an ioctl the device does not know
        except OSError:
            pass
        try:
            dev.free(900000 + i)                       # an IOASID that is not there
        except OSError:
            pass
print("done", flush=True)
"""


def test_one_client_cannot_flood_the_log(delegate) -> None:
    """500 requests that each log a warning: the daemon logs a few, then one line says how
    many it dropped."""
    d = delegate()
    done = d.user.run([d.python, "-c", FLOOD, str(d.daemon.run)])
    assert done.stdout == "done\n", done.stderr
    events = d.daemon.events()
    caused = [e for e in events if e.get("event", "").startswith("ioasid_user: Unsupported")]
    assert all(e.get("client_uid") == d.user.uid for e in caused)
    assert 0 < len(caused) <= 20, len(caused)
    summaries = [e for e in events if e.get("event") == "log lines caused by a client were "
                 "suppressed" and e.get("client_uid") == d.user.uid]
    # 500 unknown ioctls warned each (FREE of an unknown ID is only an errno in this profile)
    assert summaries and sum(e["suppressed"] for e in summaries) + len(caused) >= 500


SERVER = r"""
import faulthandler, os, resource, signal, sys
import structlog
faulthandler.register(signal.SIGUSR1, file=sys.stderr)  # the test's view of a hang
run, kind = sys.argv[1], sys.argv[2]
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
if kind == "control":
    from ioasidsd.control.server import ControlServer
    server = ControlServer(os.path.join(run, "control.sock"), {"ping": lambda r, p: "pong"},
                           structlog.get_logger())
else:
    from ioasidsd.system import System
    from ioasidsd.userapi.server import UserApiServer
    server = UserApiServer(System(), run)
server.start()
hogs = []
while True:
    try:
        hogs.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break
print("full", flush=True)
sys.stdin.read()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answer(path: Path, kind: str) -> int:
    """Connect to ``path`` and return the errno the server answered with (0: served)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)  # a bound for a loaded machine: answered at once when idle
        s.connect(str(path))
        if kind == "control":
            reply = json.loads(s.makefile("rb").readline())
            return 0 if reply["ok"] else getattr(errno, reply["error"])
        greeting = s.recv(8)
        return -int.from_bytes(greeting[:4], "little", signed=True)


@pytest.mark.parametrize("kind", ["control", "ioasid"])
def test_out_of_descriptors_a_server_answers_and_does_not_spin(tmp_path: Path,
                                                               kind: str) -> None:
    """A server with no descriptor left (alone in its process, so that nothing else frees or
    takes one meanwhile): a connection is answered EMFILE at once (not left hanging), and the
    server waits instead of retrying accept in a loop."""
    errors = tmp_path / "server.err"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), kind], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    path = tmp_path / f"{kind}.sock"
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "full\n"
        for _ in range(3):
            assert answer(path, kind) == errno.EMFILE
        before, start = cpu_seconds(proc.pid), time.monotonic()
        # a client that connects and goes away before it is answered: nothing left to spin on
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
        time.sleep(1.0)  # a measurement window, not a synchronisation
        used = cpu_seconds(proc.pid) - before
        assert used < 0.2 * (time.monotonic() - start), used  # a spinning loop uses ~1.0
        assert answer(path, kind) == errno.EMFILE  # and it still answers
    except BaseException:
        proc.send_signal(signal.SIGUSR1)  # the server's threads, for the report
        time.sleep(0.5)  # time for the dump to be written, not a synchronisation
        print(errors.read_text(), file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_the_unit_sets_a_descriptor_limit() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "ioasidsd.service").read_text()
    assert "\nLimitNOFILE=65536\n" in unit
