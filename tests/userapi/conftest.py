"""Fixtures of the user-API tests: a model world (core, controller, /dev/ioasid device) per
profile, and helpers that speak the uAPI's argument layouts."""

from __future__ import annotations

import pytest

from ioasidsd.model import IoasidCore, IoasidsController, OrderedWorkQueue, profile
from ioasidsd.model.cgroup import Process
from ioasidsd.system import ProcessFacts
from ioasidsd.userapi import uapi
from ioasidsd.userapi.device import IoasidDevice, IoasidFile

MAX31 = (1 << 31) - 1


class World:
    """A core, its controller and the device, in one profile, with step-mode work queue."""

    def __init__(self, profile_name: str, **knobs: object) -> None:
        self.core = IoasidCore(profile(profile_name, **knobs),
                               wq=OrderedWorkQueue(step_mode=True))
        self.cgroups = IoasidsController(self.core)
        self.device = IoasidDevice(self.core)
        self.cgroups.exit_hooks.append(self.device.process_exit)
        self._next_pid = 1000

    def proc(self, cgroup_path: str = "/") -> Process:
        self._next_pid += 1
        cg = self.cgroups.lookup(cgroup_path)
        return self.cgroups.track(self._next_pid, float(self._next_pid), cg)

    def cgroup(self, name: str, limit: int | None) -> object:
        cg = self.cgroups.mkdir(self.cgroups.root, name)
        self.cgroups.set_max(cg, limit)
        return cg

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


@pytest.fixture(params=["fixed", "v4"])
def world(request: pytest.FixtureRequest) -> World:
    """A world in each profile."""
    return World(request.param)


@pytest.fixture
def fixed() -> World:
    return World("fixed")


@pytest.fixture
def v4() -> World:
    return World("v4")


class FakeProcesses:
    """A ``ProcessSource`` over made-up processes: ``add(pid)`` makes one exist."""

    def __init__(self) -> None:
        self.live: dict[int, ProcessFacts] = {}

    def add(self, pid: int, uid: int = 0) -> None:
        self.live[pid] = ProcessFacts(pid, float(pid), (uid, uid, uid), pid)

    def facts(self, pid: int) -> ProcessFacts:
        from errno import ESRCH

        from ioasidsd.model.errors import IoasidError

        if pid not in self.live:
            raise IoasidError(ESRCH, f"no process {pid}")
        return self.live[pid]

    def alive(self, pid: int, start_time: float) -> bool:
        return pid in self.live and self.live[pid].start_time == start_time
