"""Reads of the host: what real processes are, what is mounted where, which boot this is; and
the one thing done to the host, signals to a process (``ProcessSource.signal``).

Every read of these files in the package is here, written once: ``/proc/PID/stat``
(``read_stat``), ``/proc/PID/status``, ``/proc/PID/task``, ``/proc/PID/comm`` and
``/proc/PID/cgroup`` (``ProcessSource``), ``/proc/self/mountinfo`` (``mounts``,
``filesystem_of``, ``cgroup_mount``) and
``/proc/sys/kernel/random/boot_id`` (``boot_id``); so is the clock of process start times
(``process_clock``). Nothing else in the package reads those files.

Contract:

- Every read of a process's files tolerates the process exiting meanwhile. A process that is
  gone, or exits while it is being read (a read after a successful open then fails with
  ``ESRCH``), is ``None`` (``read_stat``, ``ProcessSource.parent``, ``.stat`` and ``.cgroup``),
  ``False``
  (``ProcessSource.alive``), an empty list (``ProcessSource.thread_ids``) or
  ``IoasidError(ESRCH)`` (``ProcessSource.facts``): never another exception.
- ``ProcessSource.signal`` reaches the process it names or none: a pid another process has
  taken since is left alone.
- ``mounts``, ``filesystem_of`` and ``boot_id`` read files of this process and of the machine,
  which do not go away: they raise ``OSError`` when the file cannot be read.
  ``parse_mountinfo`` is pure and never raises on a line it cannot parse: it skips it.
"""

from __future__ import annotations

import os
import re
import signal as signals
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

    def identity(self, pid: int) -> tuple[int, float, ProcessFacts | None]:
        """``(tgid, start_time, facts)`` of ``facts(pid)``: what finds the tracked process of
        ``pid``, and the whole ``ProcessFacts`` when they had to be read for it (here: always),
        so that placing a process that is not tracked reads ``/proc`` once. A source that
        knows the two without building the whole (the experiments' simulated processes)
        answers cheaper, with ``None``. ``ESRCH`` as ``facts``."""
        facts = self.facts(pid)
        return facts.tgid, facts.start_time, facts

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

    def cgroup(self, pid: int, hierarchy: str) -> str | None:
        """The path of the cgroup the kernel has process ``pid`` in, in the named cgroup-v1
        hierarchy ``hierarchy`` (its line ``ID:name=HIERARCHY:PATH`` of ``/proc/PID/cgroup``),
        or, for ``UNIFIED``, in the cgroup-v2 hierarchy (its line ``0::PATH``); ``None`` if the
        process is gone or that hierarchy is not mounted."""
        try:
            with open(f"/proc/{pid}/cgroup", "rb") as lines:
                data = lines.read()
        except OSError:
            return None
        return cgroup_in(data, hierarchy)

    def command(self, pid: int) -> str | None:
        """The command name of process ``pid`` (``/proc/PID/comm``, as ``ps -o comm`` shows
        it), ``None`` if it is gone."""
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                return f.read().rstrip(b"\n").decode(errors="replace")
        except OSError:
            return None

    def signal(self, pid: int, start_time: float, signum: int) -> bool:
        """Send ``signum`` to the process ``pid`` that started at ``start_time`` (through a
        pidfd, opened before the start time is checked, so a pid taken by another process since
        is never signalled). Returns whether it was sent: ``False`` when that process is gone
        or a zombie, or may not be signalled by this process."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            stat = read_stat(pid)
            if stat is None or stat.start_time != start_time or not stat.running:
                return False
            signals.pidfd_send_signal(pidfd, signum)
            return True
        except OSError:
            return False
        finally:
            os.close(pidfd)

    def stopped(self, pid: int, start_time: float) -> bool:
        """Whether the process ``pid`` that started at ``start_time`` is stopped (state ``T``
        or ``t``) or gone: what a ``SIGSTOP`` sent to it waits for."""
        stat = read_stat(pid)
        if stat is None or stat.start_time != start_time or not stat.running:
            return True
        return stat.state in (b"T", b"t")

    def thread_ids(self, pid: int) -> list[int]:
        """The thread ids of process ``pid`` (empty if it is gone)."""
        try:
            return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return []


UNIFIED = ""
"""The hierarchy name that stands for the cgroup-v2 (unified) hierarchy in ``cgroup_in``,
``ProcessSource.cgroup`` and ``cgroup_mount``: its ``/proc/PID/cgroup`` line is ``0::PATH``."""


def cgroup_in(data: bytes, hierarchy: str) -> str | None:
    """The path that ``data`` (the text of a ``/proc/PID/cgroup`` file) gives for the named
    hierarchy ``hierarchy`` (``UNIFIED``: the line ``0::PATH``), ``None`` if no line names it.
    Pure."""
    wanted = f"name={hierarchy}".encode()
    for line in data.split(b"\n"):
        number, _, rest = line.partition(b":")
        controllers, sep, path = rest.partition(b":")
        if not sep:
            continue
        if hierarchy == UNIFIED:
            if number == b"0" and controllers == b"":
                return os.fsdecode(path)
        elif wanted in controllers.split(b","):
            return os.fsdecode(path)
    return None


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


# ---------------------------------------------------------------------- mounts
@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``mountinfo`` (proc(5)), every field's escapes decoded."""

    mount_id: int
    parent_id: int
    device: str  # major:minor of st_dev
    root: str  # the directory of the file system that is mounted
    mount_point: str  # relative to the reading process's root
    options: str  # per-mount options
    optional: tuple[str, ...]  # shared:N, master:N, propagate_from:N, unbindable
    fstype: str  # type[.subtype], e.g. "fuse.cgroupfs"
    source: str  # "none" when there is none
    super_options: str  # per-superblock options


_OCTAL_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")


def unmangle(field: bytes) -> str:
    """A field of ``mountinfo`` as the kernel's ``mangle``/``seq_path`` wrote it, decoded: every
    octal escape ``\\ooo`` (the kernel writes space, tab, newline and backslash so: ``\\040``,
    ``\\011``, ``\\012``, ``\\134``) becomes its byte, and the bytes become a file name as
    ``os.fsdecode`` makes one. A backslash not followed by three octal digits stays."""
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes((int(m.group(1), 8),)), field))


def parse_mountinfo(data: bytes) -> list[Mount]:
    """The mounts ``data`` (the text of a ``mountinfo`` file) lists, in its order (a later
    mount on the same point is on top). A line that is not a mount line is skipped.

    Fields are separated by one space (no field holds one: it is escaped), so an empty field,
    such as an empty mount source, stays in its place.
    """
    found: list[Mount] = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            end = fields.index(b"-", 6)  # the optional fields end with a lone "-"
            fstype, source, super_options = fields[end + 1 : end + 4]
            found.append(Mount(
                int(fields[0]), int(fields[1]), unmangle(fields[2]), unmangle(fields[3]),
                unmangle(fields[4]), unmangle(fields[5]),
                tuple(unmangle(f) for f in fields[6:end]),
                unmangle(fstype), unmangle(source), unmangle(super_options)))
        except ValueError:  # no separator, too few fields after it, or a number that is not
            continue
    return found


def mounts() -> list[Mount]:
    """The mounts this process sees (``/proc/self/mountinfo``); ``OSError`` if it cannot be
    read."""
    with open("/proc/self/mountinfo", "rb") as info:
        return parse_mountinfo(info.read())


def cgroup_mount(hierarchy: str) -> Mount | None:
    """Where the named cgroup-v1 hierarchy ``hierarchy`` (``name=HIERARCHY``), or for
    ``UNIFIED`` the cgroup-v2 hierarchy, is mounted: the first such mount of its root
    directory (``Mount.root`` ``/``), else the first mount of it; ``None`` if it is not
    mounted. ``OSError`` if ``mountinfo`` cannot be read."""
    if hierarchy == UNIFIED:
        found = [m for m in mounts() if m.fstype == "cgroup2"]
    else:
        wanted = f"name={hierarchy}"
        found = [m for m in mounts() if m.fstype == "cgroup"
                 and wanted in m.super_options.split(",")]
    return next((m for m in found if m.root == "/"), found[0] if found else None)


def filesystem_of(path: str) -> str:
    """The type of the file system that holds ``path`` (its symbolic links resolved): that of
    the innermost mount containing it, ``""`` if none does. ``OSError`` if ``mountinfo``
    cannot be read."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    for mount in mounts():
        point = mount.mount_point
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, mount.fstype
    return fstype
