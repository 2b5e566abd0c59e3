"""Real daemons for the end-to-end tests: ``ioasidsd run`` as a subprocess on temporary
directories, synchronised through ``NOTIFY_SOCKET`` (``READY=1``), and real processes to track."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgroupfs import fuse_unavailable
from ioasidsd.daemon.membership import hierarchy_exists, hierarchy_name, retire_hierarchy

BIN = Path(sys.executable).parent
TIMEOUT = 30.0


def fuse_missing() -> str | None:
    """Why FUSE cannot be used on this machine, or ``None``."""
    return fuse_unavailable()


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read(path: Path) -> str:
    return path.read_text()


def pids(path: Path) -> list[int]:
    """The pids listed in a ``cgroup.procs`` file."""
    return [int(line) for line in path.read_text().split()]


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        return any(line.split()[4] == str(path) for line in info)


def units_table(base: Path) -> str:
    """A ``[units]`` table whose directories are under ``base`` (``units``, ``units.control``,
    ``units.runtime``), so that a test daemon reads no unit of the machine's."""
    return (f'[units]\npath = ["{base / "units"}"]\n'
            f'control_path = ["{base / "units.control"}", "{base / "units.runtime"}"]\n')


class Daemon:
    """One ``ioasidsd run`` on the directories of ``base``. Its units are read from
    ``base/units`` (``units_table``): a configuration file given with ``--config`` gets that
    table appended when it has none; without one, a file holding just that table is used."""

    def __init__(self, base: Path, *args: str, name: str = "d") -> None:
        self.base = base
        self.mount = base / "mnt"
        self.state = base / "state"
        self.run = base / "run"
        self.units = base / "units"
        self.units_control = base / "units.control"
        self.units_runtime = base / "units.runtime"
        args = self._with_units(base, name, args)
        self.args = ["--mount", str(self.mount), "--state-dir", str(self.state),
                     "--runtime-dir", str(self.run), "--log-format", "json", *args]
        self.notify_path = base / f"notify-{name}"
        self.log_path = base / f"log-{name}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        self.notify.bind(str(self.notify_path))
        self.messages: list[dict[str, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _with_units(base: Path, name: str, args: tuple[str, ...]) -> tuple[str, ...]:
        if "--config" in args:
            path = Path(args[args.index("--config") + 1])
            text = path.read_text() if path.exists() else ""
            if "[units]" not in text:
                path.write_text(f"{text}\n{units_table(base)}")
            elif "\npath = " not in text.partition("[units]")[2].partition("\n[")[0]:
                # a [units] table of the test's own (follow...): the directories go into it
                path.write_text(text.replace("[units]\n", units_table(base), 1))
            return args
        path = base / f"units-{name}.toml"
        path.write_text(units_table(base))
        return ("--config", str(path), *args)

    def start(self, *, ready: bool = True, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> Daemon:
        """Start it (waiting for ``READY=1`` unless ``ready`` is false); ``env``: more
        environment variables (``WATCHDOG_USEC``...); ``prefix``: a command it runs under
        (``strace``...), which must exec it as its child and end with it."""
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), **(env or {}))
        with open(self.log_path, "ab") as log:
            # a group of its own, so that cleanup also ends a daemon that a prefix command
            # (strace, runuser) left behind when it was killed
            self.proc = subprocess.Popen([*prefix, str(BIN / "ioasidsd"), "run", *self.args],
                                         env=env, start_new_session=True,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log)
        if ready:
            self.wait_for("READY")
        return self

    def wait_for(self, key: str, timeout: float = TIMEOUT) -> dict[str, str]:
        """The next notification holding ``key`` (``READY``, ``STOPPING``...)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if key in message:
                    self.messages.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc is not None and self.proc.poll() is not None
                                  and not self._receive(0.2)):
                raise AssertionError(f"no {key}= from the daemon; its log:\n{self.log()}")
            self._receive(min(remaining, 0.5))

    def _receive(self, timeout: float) -> bool:
        self.notify.settimeout(timeout)
        try:
            data = self.notify.recv(65536)
        except TimeoutError:
            return False
        self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def signal_daemon(self, signum: int) -> None:
        """Signal the daemon itself (its pid file's pid), not a ``prefix`` command it runs
        under."""
        os.kill(int((self.run / "ioasidsd.pid").read_text().split()[0]), signum)

    def stop(self) -> int:
        """SIGTERM and the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(TIMEOUT)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (libfuse's own lines are skipped)."""
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ioasidctl"), "--runtime-dir", str(self.run), *args],
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)

    def status(self) -> dict[str, Any]:
        done = self.ctl("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def cleanup(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # a group of its own (start)
                os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon under a prefix too
            if self.proc.poll() is None:  # started elsewhere, in the caller's group
                self.proc.kill()
            self.proc.wait()
        self.notify.close()
        if mounted(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], check=False)
        membership = self.run / "membership"  # a killed daemon leaves it for its restart
        if mounted(membership):
            subprocess.run(["umount", "-l", str(membership)], check=False)
        drop_membership(self.state)


def drop_membership(state: Path) -> None:
    """Remove the empty cgroups of the named hierarchy a root daemon on ``state`` kept its
    members in (it outlives the daemon), so that the kernel drops it. ``AssertionError`` if
    the kernel still has it with nothing left in it: every hierarchy left behind slows each
    ``fork`` and each read of ``/proc/PID/cgroup`` on the machine, every later test's too."""
    try:
        # a removed cgroup is freed once the last process that was in it is reaped: an orphan
        # waits for init, which may be slow on a busy machine
        left = retire_hierarchy(state, timeout=15)
    except OSError:
        return
    name = hierarchy_name(state)
    assert left or not hierarchy_exists(name), \
        f"the kernel kept the hierarchy name={name} (a process that was in it not reaped?)"


FORKER = r"""
import os, signal, sys
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "fork":
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        print(pid, flush=True)
    elif cmd[0] == "kill":
        pid = int(cmd[1])
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("killed", flush=True)
"""


class Forker:
    """A real process that forks and kills children when told (its children pause)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.children: list[int] = []

    def fork(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("fork\n")
        child = int(self.proc.stdout.readline())
        self.children.append(child)
        return child

    def kill(self, child: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"kill {child}\n")
        assert self.proc.stdout.readline().strip() == "killed"
        self.children.remove(child)

    def exit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(TIMEOUT)

    def cleanup(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
