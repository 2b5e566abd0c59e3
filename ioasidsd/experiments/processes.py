"""The simulated processes of an experiment, as the ``ProcessSource`` its ``System`` asks.

Each tenant is one simulated process with a pid of its own (never reused within a run),
started at a simulated time, owned by root, single-threaded and a child of init. ``System``
asks this source what it would ask ``/proc`` about a real process; nothing here reads the host.
"""

from __future__ import annotations

from errno import ESRCH

from ioasidsd.host import ProcessFacts, ProcessSource, ProcStat
from ioasidsd.model.errors import IoasidError

FIRST_PID = 1000
"""The first simulated pid; pids below it are never handed out."""


class SimulatedProcesses(ProcessSource):
    """Processes that exist because the experiment says so: ``spawn`` makes one run,
    ``reap`` ends it."""

    def __init__(self) -> None:
        self.start_times: dict[int, float] = {}
        self.next_pid = FIRST_PID

    def spawn(self, start_time: float) -> int:
        """A new running process started at ``start_time``: its pid."""
        pid = self.next_pid
        self.next_pid = pid + 1
        self.start_times[pid] = start_time
        return pid

    def reap(self, pid: int) -> None:
        """Process ``pid`` has exited (nothing if it was not running)."""
        self.start_times.pop(pid, None)

    def facts(self, pid: int) -> ProcessFacts:
        start = self.start_times.get(pid)
        if start is None:
            raise IoasidError(ESRCH, f"no simulated process {pid}")
        return ProcessFacts(pid, start, (0, 0, 0), pid, 1, True, 1, pid, pid)

    def identity(self, pid: int) -> tuple[int, float, ProcessFacts | None]:
        start = self.start_times.get(pid)
        if start is None:
            raise IoasidError(ESRCH, f"no simulated process {pid}")
        return pid, start, None

    def alive(self, pid: int, start_time: float) -> bool:
        return self.start_times.get(pid) == start_time

    def all_pids(self) -> list[int]:
        return list(self.start_times)

    def parent(self, pid: int) -> int | None:
        return 1 if pid in self.start_times else None

    def stat(self, pid: int) -> ProcStat | None:
        start = self.start_times.get(pid)
        if start is None:
            return None
        return ProcStat(b"S", 1, pid, pid, 0, start)

    def thread_ids(self, pid: int) -> list[int]:
        return [pid] if pid in self.start_times else []
