"""The system: the model objects every face shares, and the operations faces perform on them.

A ``System`` holds the IOASID core, the cgroup controller, the semantics knobs, one lock and a
source of facts about real processes. Faces (the FUSE file system, the user-API socket, the
control API, experiments) call its methods for every change, so that each change is made in one
place, under the lock, and then handed to ``on_change`` (the daemon's durable store) before the
face answers. Reads may use the model objects directly while holding ``system.lock``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from errno import EINVAL, ESRCH
from typing import TYPE_CHECKING, Any

from ioasidsd.model.cgroup import Cgroup, IoasidsController, Process
from ioasidsd.model.core import IoasidCore
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.formats import parse_flag, parse_limit, parse_pid, parse_release_agent
from ioasidsd.model.knobs import Knobs
from ioasidsd.model.workqueue import OrderedWorkQueue
from ioasidsd.userapi.device import IoasidDevice, IoasidFile
from ioasidsd.userapi.vtd_binder import VtdGuestBinder

if TYPE_CHECKING:
    from ioasidsd.vtd import VtdDriver


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What the system needs to know about a real process."""

    pid: int
    start_time: float  # seconds since boot, see start_time()
    uids: tuple[int, ...]  # real, effective, saved
    tgid: int
    threads: int = 1
    movable: bool = True  # False for kernel threads cgroup-v1 refuses to move (EINVAL)


class ProcessSource:
    """Facts about real processes, from ``psutil``. Tests may substitute their own."""

    def facts(self, pid: int) -> ProcessFacts:
        """Facts about ``pid`` (a process or a thread id); ``ESRCH`` if there is none."""
        import psutil

        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                uids = proc.uids()
                threads = proc.num_threads()
            start = start_time(pid)
            tgid = _tgid(pid)
            movable = _movable(pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError):
            raise IoasidError(ESRCH, f"no process {pid}") from None
        uids3 = (uids.real, uids.effective, uids.saved)
        return ProcessFacts(pid, start, uids3, tgid, threads, movable)

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
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                data = stat.read()
            return int(data[data.rindex(b")") + 2 :].split()[1]) or None
        except (OSError, ValueError, IndexError):
            return None

    def thread_ids(self, pid: int) -> list[int]:
        """The thread ids of process ``pid`` (empty if it is gone)."""
        try:
            return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return []


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_time(pid: int) -> float:
    """When ``pid`` started, in seconds since boot: the kernel's ``starttime`` (field 22 of
    ``/proc/PID/stat``), which changes of the wall clock do not move, unlike psutil's
    ``create_time`` (boot time + start, re-read each call). ``FileNotFoundError`` if it is gone.
    Processes of different boots may share a (pid, start time): whoever keeps them across a
    reboot must tell the boots apart."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return int(data[data.rindex(b")") + 2 :].split()[19]) / CLOCK_TICKS


def _tgid(pid: int) -> int:
    """The thread-group id of ``pid`` (``pid`` itself for a process)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    return pid


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (state ``Z`` in ``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return False
    end = data.rindex(b")")
    return data[end + 2 : end + 3] != b"Z"


PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000


def _movable(pid: int) -> bool:
    """Whether cgroup-v1 lets userspace move ``pid``: not a kernel thread with
    ``PF_NO_SETAFFINITY`` (per-CPU workers) nor ``kthreadd`` (the kernel thread without a
    parent), which ``cgroup_procs_write_start`` refuses with ``EINVAL``."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    fields = data[data.rindex(b")") + 2 :].split()  # state ppid pgrp session tty tpgid flags
    ppid, flags = int(fields[1]), int(fields[6])
    if flags & PF_NO_SETAFFINITY:
        return False
    return not (flags & PF_KTHREAD and ppid == 0)


class System:
    """The shared model and the changes faces make to it.

    ``on_change(kind, detail)`` is called under the lock after every change succeeds and before
    the method returns (the daemon makes the change durable there). A method that raises has
    changed nothing.
    """

    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        processes: ProcessSource | None = None,
        wq: OrderedWorkQueue | None = None,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.core = IoasidCore(knobs, wq=wq)
        self.cgroups = IoasidsController(self.core)
        self.knobs = self.core.knobs
        self.lock: threading.RLock = self.core.lock
        self.processes = processes or ProcessSource()
        self.on_change = on_change or (lambda kind, detail: None)
        self._init_userapi()

    def _changed(self, kind: str, **detail: Any) -> None:
        self.on_change(kind, detail)

    # ------------------------------------------------------------------ hierarchy
    def mkdir(self, path: str, *, reserved_names: frozenset[str] = frozenset()) -> Cgroup:
        """Create the cgroup at ``path``; see ``IoasidsController.mkdir`` for errors."""
        parent_path, _, name = path.strip("/").rpartition("/")
        with self.lock:
            parent = self.cgroups.lookup(parent_path)
            cg = self.cgroups.mkdir(parent, name, reserved_names=reserved_names)
            self._changed("mkdir", cgroup=cg)
            return cg

    def rmdir(self, path: str) -> None:
        """Remove the cgroup at ``path``; see ``IoasidsController.rmdir``."""
        with self.lock:
            cg = self.cgroups.lookup(path)
            self.cgroups.rmdir(cg)
            self._changed("rmdir", cgroup=cg, path=path)

    def rename(self, old: str, new: str, *, reserved_names: frozenset[str] = frozenset()) -> None:
        """Rename ``old`` to ``new`` (same parent only); see ``IoasidsController.rename``."""
        new_parent_path, _, new_name = new.strip("/").rpartition("/")
        with self.lock:
            cg = self.cgroups.lookup(old)
            new_parent = self.cgroups.lookup(new_parent_path)
            old_path = cg.path
            self.cgroups.rename(cg, new_parent, new_name, reserved_names=reserved_names)
            self._changed("rename", cgroup=cg, old_path=old_path)

    def write_max(self, path: str, data: bytes | str) -> None:
        """A write to ``ioasids.max``: parse (``EINVAL``/``ERANGE``) and grant it."""
        limit = parse_limit(data)
        with self.lock:
            cg = self.cgroups.lookup(path)
            before = (cg.limit, cg.reserved, self.core.capacity_avail)
            self.cgroups.set_max(cg, limit)
            if (cg.limit, cg.reserved, self.core.capacity_avail) != before:
                self._changed("limit", cgroup=cg)  # rewriting the same limit has nothing to store

    def write_flag(self, path: str, name: str, data: bytes | str) -> None:
        """A write to ``notify_on_release`` or ``cgroup.clone_children``."""
        value = parse_flag(data)
        attr = {"notify_on_release": "notify_on_release",
                "cgroup.clone_children": "clone_children"}.get(name)
        if attr is None:
            raise IoasidError(EINVAL, f"{name} is not a flag")
        with self.lock:
            cg = self.cgroups.lookup(path)
            if getattr(cg, attr) != value:
                setattr(cg, attr, value)
                self._changed("flag", cgroup=cg, name=name)

    def write_release_agent(self, data: bytes | str) -> None:
        """A write to the root's ``release_agent``: as ``cgroup_release_agent_write``, the bytes
        up to the first NUL with white space stripped at both ends (``strstrip``), any other
        byte kept; stored as text with ``surrogateescape`` (``formats.parse_release_agent``,
        which also says what a ``str`` means). ``EINVAL`` only for a ``str`` that encodes to
        no bytes."""
        text = parse_release_agent(data)
        with self.lock:
            if self.cgroups.release_agent != text:
                self.cgroups.release_agent = text
                self._changed("release_agent", value=text)

    # ------------------------------------------------------------------ processes
    def process(self, pid: int) -> Process:
        """The model's process for a real ``pid`` (tracked in the root if new). ``ESRCH``."""
        facts = self.processes.facts(pid)
        with self.lock:
            proc = self.cgroups.process(facts.tgid)
            if proc is not None and proc.start_time == facts.start_time:
                return proc
            leader = facts if facts.tgid == pid else self.processes.facts(facts.tgid)
            return self.cgroups.track(leader.pid, leader.start_time, None, leader.threads)

    def write_procs(self, path: str, data: bytes | str, *, writer_pid: int, writer_uid: int,
                    ) -> Process:
        """A write to ``cgroup.procs`` or ``tasks``: move a real process (``0``: the process of
        ``writer_pid``, the thread calling write(2)).

        ``writer_uid`` is the effective uid the write is judged by. cgroup-v1 judges the
        credentials the file was opened with (``of->file->f_cred``), so a face passes the
        opener's, not those of the process calling write(2): they differ for a descriptor
        passed over a socket or inherited across a ``setuid``.

        ``EINVAL`` for junk or a kernel thread that may not move, ``ESRCH`` for no such process,
        ``EACCES`` when ``writer_uid`` is not root and matches neither the target's uid nor its
        saved uid.
        """
        pid = parse_pid(data) or writer_pid
        facts = self.processes.facts(pid)
        if not facts.movable:
            raise IoasidError(EINVAL, f"process {pid} is a kernel thread that may not move")
        self.cgroups.check_owner(writer_uid, (facts.uids[0], facts.uids[2]))
        with self.lock:
            dst = self.cgroups.lookup(path)
            proc = self.process(pid)
            src = proc.cgroup
            self.cgroups.attach(proc, dst)
            self._changed("attach", process=proc, src=src)
            return proc

    def fork(self, parent_pid: int, pid: int, start_time: float) -> None:
        """A real process forked (from the process tracker)."""
        with self.lock:
            child = self.cgroups.fork(parent_pid, pid, start_time)
            if child is not None:
                self._changed("fork", process=child)

    def exit(self, pid: int) -> None:
        """A real process exited (from the process tracker): release what it held."""
        with self.lock:
            proc = self.cgroups.process(pid)
            if proc is not None:
                self.cgroups.exit(proc)
                self._changed("exit", process=proc)

    # ------------------------------------------------------------------ file attributes
    def set_attrs(self, path: str, changes: Mapping[str, Mapping[str, int]]) -> None:
        """Record file attributes of the cgroup at ``path`` (``chmod``, ``chown``, ``touch``
        through the file system, and the owner of a cgroup a non-root user created).

        ``changes`` maps a file name (``""`` for the directory) to the attributes that change:
        ``mode`` (permission bits), ``uid``, ``gid``, ``atime``, ``mtime`` (nanoseconds). The
        model keeps them in ``Cgroup.attrs`` without interpreting them; the kernel enforces them
        on the mount. ``ENOENT`` if there is no such cgroup.
        """
        with self.lock:
            cg = self.cgroups.lookup(path)
            for name, attrs in changes.items():
                cg.attrs.setdefault(name, {}).update(attrs)
            self._changed("attrs", cgroup=cg, changes=changes)

    # ------------------------------------------------------------------ /dev/ioasid (issue 5)
    # The user API's changes: an open file per connection of a real process. Each method reports
    # what it changed, as kind "set" (open, release) or "ioasid" (ioctl, exit), with the records
    # touched: ``ids`` (IOASIDs changed one by one: still in ``core`` means upsert, absent
    # delete), ``sets`` (sets changed as a whole or in bulk, with all their IOASIDs),
    # ``cgroups`` (counters, events) and, for open and exit, ``process``. A refused ioctl may
    # still have changed cgroup events: it reports them too.
    def _init_userapi(self) -> None:
        self.ioasid_device = IoasidDevice(self.core)
        self.cgroups.exit_hooks.append(self._ioasid_exit_hook)

    def _ioasid_changed(self, kind: str, **detail: Any) -> None:
        touched = self.ioasid_device.take_touched()
        if touched:
            detail.update(ids=touched.ids, sets=touched.sets, cgroups=touched.cgroups)
            self.on_change(kind, detail)

    def _ioasid_exit_hook(self, proc: Process) -> None:
        self.ioasid_device.process_exit(proc)
        self._ioasid_changed("ioasid", process=proc)

    def ioasid_use_vtd(self, driver: VtdDriver) -> None:
        """Serve the bind extension of ``/dev/ioasid`` with ``driver`` (a booted VT-d driver
        over this system's core); without one, binds answer ``ENODEV``. The same as
        ``vtd_attach``."""
        self.vtd_attach(driver)

    def ioasid_process(self, pid: int) -> Process:
        """The process ``pid`` as ``process`` gives it, except that an untracked descendant of a
        process tracked outside the root joins that ancestor's cgroup first (as ``fork`` would:
        its fork was not reported yet). A connecting child is charged where it was born, not
        where the tracker's delay would leave it. ``ESRCH`` for no such process."""
        facts = self.processes.facts(pid)
        with self.lock:
            known = self.cgroups.process(facts.tgid)
            if known is not None and known.start_time == facts.start_time:
                return known
        chain = [facts if facts.tgid == pid else self.processes.facts(facts.tgid)]
        ancestor = None
        for _ in range(64):
            ppid = self.processes.parent(chain[-1].pid)
            if ppid is None:
                break
            with self.lock:
                tracked = self.cgroups.process(ppid)
            if tracked is not None:
                if tracked.start_time <= chain[-1].start_time:
                    ancestor = tracked
                break
            try:
                chain.append(self.processes.facts(ppid))
            except IoasidError:
                break
        if ancestor is not None and ancestor.cgroup is not self.cgroups.root:
            parent_pid = ancestor.pid
            for child in reversed(chain):
                self.fork(parent_pid, child.pid, child.start_time)
                parent_pid = child.pid
        return self.process(pid)

    def ioasid_open(self, pid: int) -> IoasidFile:
        """``open("/dev/ioasid")`` by the real process ``pid`` (see ``ioasid_process`` for the
        cgroup of a process not tracked yet).

        ``ESRCH`` for no such process, then the errors of ``IoasidDevice.open``.
        """
        proc = self.ioasid_process(pid)
        with self.lock:
            try:
                return self.ioasid_device.open(proc)
            finally:
                self._ioasid_changed("set", process=proc)

    def ioasid_ioctl(self, file: IoasidFile, cmd: int, arg: bytes, *,
                     pid: int | None = None) -> tuple[int, bytes]:
        """An ioctl on ``file`` by the real process ``pid`` (default: the opener); returns the
        result and the output bytes, or raises the ``IoasidError`` the ioctl fails with."""
        opener = file.opener
        task = opener if pid is None or pid == opener.pid else self.ioasid_process(pid)
        with self.lock:
            try:
                return self.ioasid_device.ioctl(file, cmd, arg, task)
            finally:
                self._ioasid_changed("ioasid")

    def ioasid_release(self, file: IoasidFile, *, exited: bool = False) -> None:
        """The last close of ``file``. ``exited``: its opener is exiting, so this is the
        process's exit (as ``exit``, which also closes the file). Releasing twice does nothing."""
        with self.lock:
            if exited and file.opener.alive:
                self.cgroups.exit(file.opener)
                self._changed("exit", process=file.opener)
                return
            self.ioasid_device.release(file)
            self._ioasid_changed("set")

    # ------------------------------------------------------------------ VT-d (issues 3-5)
    # The simulated IOMMU. Its binds and unbinds come through the faces (the user API's bind
    # extension), which report them; the one change it makes on its own is the FREE cleanup on
    # the core's work queue, reported here.
    def vtd_attach(self, driver: VtdDriver) -> None:
        """Make ``driver`` (booted over this system's core) the system's IOMMU: it serves the
        bind extension of ``/dev/ioasid``, and what its FREE cleanup changes on the work queue
        (the UNBIND, the final reclaim, the uncharge, perhaps the end of a set) is handed to
        ``on_change`` as kind ``vtd_cleanup`` with the IOASIDs (``ids``) and cgroups it touched,
        under the lock, before the cleanup lets go of it."""
        with self.lock:
            driver.on_change = self._vtd_changed
            self.ioasid_device.binder = VtdGuestBinder(driver)

    def _vtd_changed(self, kind: str, detail: dict[str, Any]) -> None:
        self.on_change(kind, detail)
