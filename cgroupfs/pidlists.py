"""The process lists of ``cgroup.procs`` and ``tasks``.

A non-root cgroup lists its member processes that still run: the model may still hold a process
whose exit the daemon has not yet reported, so each member is checked against the machine
(pid and start time, through ``system.processes``). The root lists every process of the machine
that is in no child cgroup, as in a kernel cgroup-v1 hierarchy. ``tasks`` lists the thread ids
of the same processes. Lists are sorted; ``cgroup.procs`` has no duplicates
(``pidlist_array_load`` in ``kernel/cgroup/cgroup-v1.c`` does the same).

The model lock is held only to copy the members; the checks against ``/proc`` run without it.

With membership kept by the kernel (``system.kernel``, a named cgroup-v1 hierarchy that mirrors
this one), both lists are the kernel's own lists of the mirrored cgroup.
"""

from __future__ import annotations

from collections.abc import Callable
from errno import ENOENT

from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.system import System


def procs(system: System, cg: Cgroup, *, threaded_subtree: bool = False) -> list[int]:
    """The process ids of ``cg`` (``cgroup.procs``), ascending, without duplicates; with
    ``threaded_subtree``, also those of its threaded descendants (a v2 threaded domain lists
    every process with a thread in its threaded subtree)."""
    kernel = system.kernel
    if kernel is not None:
        return _kernel_list(kernel.procs, system, cg)
    if cg.parent is None:
        return _root_procs(system)
    with system.lock:
        members = [(proc.pid, proc.start_time) for proc in cg.procs]
        if threaded_subtree:
            members += [(proc.pid, proc.start_time) for node in cg.descendants()
                        if node.threaded for proc in node.procs]
    alive = system.processes.alive
    return sorted({pid for pid, start in members if alive(pid, start)})


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
    """The thread ids of the processes of ``cg`` (``tasks``), ascending."""
    kernel = system.kernel
    if kernel is not None:
        return _kernel_list(kernel.tasks, system, cg)
    thread_ids = system.processes.thread_ids
    return sorted(tid for pid in procs(system, cg) for tid in thread_ids(pid))


def _kernel_list(read: Callable[[str], list[int]], system: System, cg: Cgroup) -> list[int]:
    """The kernel's list of ``cg``; ``ENOENT`` if the cgroup is gone from it meanwhile."""
    with system.lock:
        path = cg.path
    try:
        return read(path)
    except OSError as exc:
        raise IoasidError(exc.errno or ENOENT, f"{path}: {exc.strerror or exc}") from None


def _root_procs(system: System) -> list[int]:
    """Every process of the machine except those that live in a child cgroup."""
    with system.lock:
        root = system.cgroups.root
        elsewhere = {
            proc.pid: proc.start_time
            for proc in system.cgroups.processes.values()
            if proc.cgroup is not root
        }
    pids = system.processes.all_pids()
    if not elsewhere:
        return sorted(pids)
    alive = system.processes.alive
    # A tracked pid whose process has gone may have been reused by a process of the root.
    return sorted(
        pid for pid in pids if pid not in elsewhere or not alive(pid, elsewhere[pid])
    )
