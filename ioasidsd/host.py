"""Reads of the host: what real processes are, which boot this is.

Every read of these files in the package is here, written once: ``/proc/PID/stat``
(``read_stat``), ``/proc/PID/status`` and ``/proc/PID/task`` (``ProcessSource``) and
``/proc/sys/kernel/random/boot_id`` (``boot_id``); so is the clock of process start times
(``process_clock``). Nothing else in the package reads those files.

Contract:

- Every read of a process's files tolerates the process exiting meanwhile. A process that is
  gone, or exits while it is being read (a read after a successful open then fails with
  ``ESRCH``), is ``None`` (``read_stat``, ``ProcessSource.parent`` and ``.stat``), ``False``
  (``ProcessSource.alive``), an empty list (``ProcessSource.thread_ids``) or
  ``IoasidError(ESRCH)`` (``ProcessSource.facts``): never another exception.
- ``boot_id`` reads a file of the machine, which does not go away: it raises ``OSError`` when
  the file cannot be read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from errno import ESRCH

from ioasidsd.model.errors import IoasidError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Ticks per second of the start times in ``/proc/PID/stat`` (``USER_HZ``)."""

PF_EXITING = 0x00000004
"""``PF_EXITING``: the task is in ``do_exit`` (it has begun to close its files)."""
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000


def process_clock() -> float:
    """Now, on the clock of process start times (``ProcessFacts.start_time``): seconds since
    boot, suspend included (``CLOCK_BOOTTIME``, what ``/proc/PID/stat`` counts from)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``); ``OSError`` if it cannot be
    read."""
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


# ---------------------------------------------------------------------- processes
@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What the system needs to know about a real process."""

    pid: int
    start_time: float  # seconds since boot (the kernel's starttime, see ProcStat)
    uids: tuple[int, ...]  # real, effective, saved
    tgid: int
    threads: int = 1
    movable: bool = True  # False for kernel threads cgroup-v1 refuses to move (EINVAL)
    ppid: int = 0  # the parent now (after a re-parenting: init or a subreaper)
    pgid: int = 0  # process group and session, inherited at fork: what the kernel still
    sid: int = 0  # shows of a process's origin once its parent is gone


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the daemon uses (see proc(5))."""

    state: bytes  # R, S, D, Z (zombie), X...
    ppid: int
    pgid: int
    sid: int
    flags: int  # PF_* of the task
    start_time: float  # seconds since boot (field 22 / USER_HZ)

    @property
    def running(self) -> bool:
        """Not a zombie nor dead: a process ``cgroup.procs`` lists."""
        return self.state not in (b"Z", b"X", b"x")

    @property
    def exiting(self) -> bool:
        """A zombie, dead, or in ``do_exit`` (``PF_EXITING``): the kernel closes an exiting
        process's files after setting that flag."""
        return not self.running or bool(self.flags & PF_EXITING)


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/PID/stat`` of ``pid``, parsed; ``None`` if there is no such process (or it went
    away while being read: a read of an exited process's file fails with ``ESRCH``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        # state ppid pgrp session tty tpgid flags ... starttime (the 20th after the name)
        fields = data[data.rindex(b")") + 2 :].split()
        return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                        int(fields[6]), int(fields[19]) / CLOCK_TICKS)
    except (OSError, ValueError, IndexError):
        return None


def _read_status(pid: int) -> tuple[int, tuple[int, int, int], int] | None:
    """``Tgid``, the real, effective and saved uids and ``Threads`` of ``/proc/PID/status``;
    ``None`` if there is no such process."""
    tgid, uids, threads = pid, (0, 0, 0), 1
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                elif line.startswith(b"Uid:"):
                    real, effective, saved = line.split()[1:4]
                    uids = (int(real), int(effective), int(saved))
                elif line.startswith(b"Threads:"):
                    threads = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        return None
    return tgid, uids, threads


class ProcessSource:
    """Facts about real processes, from ``/proc``. Tests may substitute their own.

    Every read tolerates the process exiting meanwhile: a process that is gone (or exits
    while it is being read) is ``ESRCH``, never another exception.
    """

    def facts(self, pid: int) -> ProcessFacts:
        """Facts about ``pid`` (a process or a thread id, a zombie included: the kernel still
        finds it); ``ESRCH`` if there is none."""
        stat = read_stat(pid)
        status = _read_status(pid) if stat is not None else None
        if stat is None or status is None:
            raise IoasidError(ESRCH, f"no process {pid}")
        tgid, uids, threads = status
        return ProcessFacts(pid, stat.start_time, uids, tgid, threads, _movable(stat),
                            stat.ppid, stat.pgid, stat.sid)

    def alive(self, pid: int, start_time: float) -> bool:
        """Whether the process ``pid`` that started at ``start_time`` still runs (a zombie, which
        has exited, does not)."""
        try:
            return self.facts(pid).start_time == start_time and _running(pid)
        except IoasidError:
            return False

    def all_pids(self) -> list[int]:
        """Every process id on the machine, zombies excluded (``cgroup.procs`` omits them)."""
        import psutil

        return [pid for pid in psutil.pids() if _running(pid)]

    def parent(self, pid: int) -> int | None:
        """The parent pid of process ``pid`` (field 4 of ``/proc/PID/stat``), ``None`` if it is
        gone or has none."""
        stat = read_stat(pid)
        return (stat.ppid or None) if stat is not None else None

    def stat(self, pid: int) -> ProcStat | None:
        """``/proc/PID/stat`` of ``pid`` (``read_stat``); ``None`` if it is gone."""
        return read_stat(pid)

    def thread_ids(self, pid: int) -> list[int]:
        """The thread ids of process ``pid`` (empty if it is gone)."""
        try:
            return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return []


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (state ``Z`` in ``/proc/<pid>/stat``)."""
    stat = read_stat(pid)
    return stat is not None and stat.running


def _movable(stat: ProcStat) -> bool:
    """Whether cgroup-v1 lets userspace move the process: not a kernel thread with
    ``PF_NO_SETAFFINITY`` (per-CPU workers) nor ``kthreadd`` (the kernel thread without a
    parent), which ``cgroup_procs_write_start`` refuses with ``EINVAL``."""
    if stat.flags & PF_NO_SETAFFINITY:
        return False
    return not (stat.flags & PF_KTHREAD and stat.ppid == 0)
