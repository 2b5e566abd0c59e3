"""The process lists of ``cgroup.procs`` and ``tasks``, and the member checks the files need.

What a cgroup lists is decided in one place, ``System.member_pids`` and ``member_tids`` (the
control verb ``tree`` shows the same lists): a non-root cgroup its members that still run, the
root every process of the machine in no child cgroup, as in a kernel cgroup-v1 hierarchy; with
membership kept by the kernel, the kernel's own lists. Lists are sorted; ``cgroup.procs`` has no
duplicates (``pidlist_array_load`` in ``kernel/cgroup/cgroup-v1.c`` does the same).
"""

from __future__ import annotations

from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.system import System


def procs(system: System, cg: Cgroup, *, threaded_subtree: bool = False) -> list[int]:
    """The process ids of ``cg`` (``cgroup.procs``): ``System.member_pids``, the one home of
    what a cgroup lists, which ``ioasidctl tree`` shows too."""
    return system.member_pids(cg, threaded_subtree=threaded_subtree)


def forget_exited(system: System, cg: Cgroup) -> None:
    """Report to ``system`` the exits of members of ``cg`` that no longer run, so that an
    ``rmdir`` agrees with what ``cgroup.procs`` shows (the daemon's tracker may not have
    reported them yet; reporting twice is harmless)."""
    with system.lock:
        members = [(proc.pid, proc.start_time) for proc in cg.procs]
    alive = system.processes.alive
    for pid, start in members:
        if alive(pid, start):
            continue
        with system.lock:
            proc = system.cgroups.process(pid)
            if proc is not None and proc.start_time == start:
                system.exit(pid)


def populated(system: System, cg: Cgroup) -> bool:
    """Whether a running process is in ``cg`` or below it (``cgroup.events``)."""
    with system.lock:
        members = [(proc.pid, proc.start_time) for node in cg.descendants()
                   for proc in node.procs]
    alive = system.processes.alive
    return any(alive(pid, start) for pid, start in members)


def tasks(system: System, cg: Cgroup) -> list[int]:
    """The thread ids of the processes of ``cg`` (``tasks``): ``System.member_tids``."""
    return system.member_tids(cg)
