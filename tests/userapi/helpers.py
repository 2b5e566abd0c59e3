"""Helpers of the user-API tests: a model world (core, controller, /dev/ioasid device) per
profile, real client processes (``agent.py``) and a served System."""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from errno import ESRCH
from pathlib import Path
from typing import Any

from ioasidsd.host import ProcessFacts, ProcessSource
from ioasidsd.model import IoasidCore, IoasidsController, OrderedWorkQueue, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Process
from ioasidsd.model.ioasid_device import IoasidDevice, IoasidFile
from ioasidsd.system import System
from ioasidsd.userapi.server import UserApiServer

MAX31 = (1 << 31) - 1


class World:
    """A core, its controller, the controller's hierarchy (``cgroups``) and the device, in one
    profile, with step-mode work queue."""

    def __init__(self, profile_name: str, **knobs: object) -> None:
        self.core = IoasidCore(profile(profile_name, **knobs),
                               wq=OrderedWorkQueue(mode="manual"))
        self.controller = IoasidsController(self.core)
        self.cgroups = self.controller.hierarchy
        self.device = IoasidDevice(self.core)
        self.cgroups.exit_hooks.append(self.device.process_exit)
        self._next_pid = 1000

    def proc(self, cgroup_path: str = "/") -> Process:
        self._next_pid += 1
        cg = self.cgroups.lookup(cgroup_path)
        return self.cgroups.track(self._next_pid, float(self._next_pid), cg)

    def cgroup(self, name: str, limit: int | None) -> object:
        cg = self.cgroups.mkdir(self.cgroups.root, name)
        self.controller.set_max(cg, limit)
        return cg

    def hold_more(self, ioasid_set: object, ids: list[int], referenced: list[int],
                  spid: list[int]) -> None:
        """Take one more reference on ``ids[i]`` for each ``i`` of ``referenced``, and attach
        SPID ``5000 + i`` to ``ids[i]`` for each ``i`` of ``spid`` (a refusal left as it is);
        indices past the end of ``ids`` are skipped."""
        for i in referenced:
            if i < len(ids):
                self.core.get(ioasid_set, ids[i])
        for i in spid:
            if i < len(ids):
                with contextlib.suppress(IoasidError):
                    self.core.attach_spid(ids[i], 5000 + i)

    def ioctl(self, file: IoasidFile, cmd: int, arg: bytes = b"", task: Process | None = None):
        return self.device.ioctl(file, cmd, arg, task or file.opener)

    def alloc(self, file: IoasidFile, lo: int = 1, hi: int = MAX31, task: Process | None = None,
              argsz: int = 16, flags: int = 0) -> int:
        arg = uapi.ALLOC_REQUEST.pack(argsz, flags, lo, hi)
        ret, out = self.ioctl(file, uapi.IOASID_REQUEST_ALLOC, arg, task)
        assert out == b""
        return ret

    def free(self, file: IoasidFile, ioasid: int, task: Process | None = None) -> int:
        ret, _ = self.ioctl(file, uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(ioasid), task)
        return ret


class FakeProcesses(ProcessSource):
    """A ``ProcessSource`` over made-up processes: ``add(pid, parent=...)`` makes one exist."""

    def __init__(self) -> None:
        self.live: dict[int, ProcessFacts] = {}
        self.parents: dict[int, int] = {}

    def add(self, pid: int, uid: int = 0, parent: int | None = None) -> None:
        self.live[pid] = ProcessFacts(pid, float(pid), (uid, uid, uid), pid)
        if parent is not None:
            self.parents[pid] = parent

    def facts(self, pid: int) -> ProcessFacts:
        if pid not in self.live:
            raise IoasidError(ESRCH, f"no process {pid}")
        return self.live[pid]

    def alive(self, pid: int, start_time: float) -> bool:
        return pid in self.live and self.live[pid].start_time == start_time

    def parent(self, pid: int) -> int | None:
        return self.parents.get(pid)


# ---------------------------------------------------------------------------------- server
AGENT = str(Path(__file__).with_name("agent.py"))


class Changes:
    """An ``on_change`` that records every change and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.log: list[Change] = []
        self.cond = threading.Condition()

    def __call__(self, change: Change) -> None:
        with self.cond:
            self.log.append(change)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds (it must not take ``system.lock``)."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def kinds(self) -> list[str]:
        with self.cond:
            return [change.kind for change in self.log]


class Agent:
    """A real client process (``agent.py``) driven line by line.

    ``user`` (a ``LocalUser`` of ``tests/conftest.py``: anything with its ``popen``) runs it as
    that user; ``runtime`` must then be reachable by the user and this interpreter runnable by
    it (the ``shared_python`` fixture)."""

    def __init__(self, runtime: str, *, user: Any = None) -> None:
        argv = [sys.executable, AGENT, runtime]
        pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                                 "text": True, "bufsize": 1}
        self.proc = (subprocess.Popen(argv, **pipes) if user is None
                     else user.popen(argv, **pipes))
        self.pid = self.proc.pid

    def __call__(self, line: str, timeout: float = 20.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"agent did not answer {line!r} within {timeout}s"
        return self.proc.stdout.readline().strip()

    def ok(self, line: str) -> list[int]:
        """Run ``line``; it must succeed: the integers it answered."""
        answer = self(line)
        assert answer.startswith("ok"), f"{line!r}: {answer}"
        return [int(w) for w in answer.split()[1:]]

    def err(self, line: str) -> int:
        """Run ``line``; it must fail: the errno."""
        answer = self(line)
        assert answer.startswith("err"), f"{line!r} succeeded: {answer}"
        return int(answer.split()[1])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except Exception:
                self.kill()


class Served:
    """A System in one profile with its /dev/ioasid server on a temporary runtime dir."""

    def __init__(self, profile_name: str, runtime: str, **knobs: object) -> None:
        self.changes = Changes()
        self.system = System(profile(profile_name, **knobs), on_change=self.changes,
                             wq=OrderedWorkQueue(mode="manual"))
        self.runtime = runtime
        self.server = UserApiServer(self.system, runtime)
        self.server.start()
        self.agents: list[Agent] = []

    def agent(self, cgroup: str | None = None) -> Agent:
        """A real client process, moved into ``cgroup`` first when given."""
        a = Agent(self.runtime)
        self.agents.append(a)
        if cgroup is not None:
            self.system.write_procs(cgroup, str(a.pid), writer_pid=a.pid, writer_uid=0)
        return a

    def cgroup(self, name: str, limit: int) -> object:
        cg = self.system.mkdir(name)
        self.system.write_max(name, str(limit))
        return cg

    def close(self) -> None:
        for a in self.agents:
            a.stop()
        self.server.stop()




@contextlib.contextmanager
def serving(profile_name: str, runtime: str, *, two: bool = False) -> Iterator[Served]:
    """A ``Served`` in ``profile_name`` on ``runtime``, closed at the end; ``two``: where two
    processes can open (in v4 with the quota-0 grab switched off)."""
    knobs = {"set_quota_zero_takes_all": False} if two and profile_name == "v4" else {}
    served = Served(profile_name, runtime, **knobs)
    try:
        yield served
    finally:
        served.close()
