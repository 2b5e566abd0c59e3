"""Process tracking: the forks and exits of real processes, fed into the ``System``.

Three trackers with one interface (``start``, ``stop``, ``settle``, ``mode``, ``detail``,
``state``, ``reason``):

* ``KernelTracker`` follows no fork: membership is kept by the kernel in a named cgroup-v1
  hierarchy (``ioasidsd.daemon.membership``), which places every fork itself. It reconciles the
  state with that hierarchy at start and scans it every ``interval`` seconds so that the
  system's records (exits, ``notify_on_release``) follow. Where the process events connector
  can be opened it also listens to it for exits only (a ``ConnectorTracker`` with
  ``exits_only``), so that an exit is recorded when it happens; its lost events, and every
  failure of it, fall back to the scan.
  system's records (exits, ``notify_on_release``) follow. Pointed at the host's hierarchy
  (``FollowedHierarchy``: systemd's, or the unified one), it changes nothing there and takes
  the host's membership as it finds it.
* ``ConnectorTracker`` listens to the kernel's process events connector (netlink
  ``NETLINK_CONNECTOR``, ``CN_IDX_PROC``; root only), with pyroute2's message definitions. A fork
  whose parent is tracked outside the root puts the child in the parent's cgroup at once (a child
  that exited before its fork was read still passes its cgroup on to the children it forked);
  the exit of a thread-group leader releases the process. If the socket overflows (``ENOBUFS``:
  events were lost), the tracker rescans the machine.
* ``PollTracker`` scans with psutil every ``interval`` seconds: tracked processes that are gone
  are released, processes that appeared since the last scan with a tracked parent outside the
  root join that parent's cgroup. A process that forks and is moved within one interval may
  place its child by its new cgroup rather than the one it forked in.

Neither dies silently. An unexpected failure is logged, the tracker is restarted (the connector
reopened) and resynchronised from ``/proc``; until it is, ``state`` is ``degraded`` and
``reason`` says why (``ioasidctl status`` shows both).

A rescan cannot see a process that was born and exited unseen: its children, re-parented to
init, are *orphans* whose cgroup is unknown. Every rescan hands them to ``System.note_orphans``,
and ``System.place`` decides where such a process is charged (by process group and session) or
refuses it. ``settle`` lets a placement wait until the tracker has caught up with every fork
that happened before it was called.

``open_tracker`` chooses: ``kernel``, ``connector``, ``poll``, or ``auto`` (the kernel's
hierarchy when it can be mounted, else the connector when it can be opened, else polling, with
the reasons in ``detail``).

``release_gone`` and ``adopt_children`` are the rescan, also run once at start-up for the time the
daemon was not running: processes that died are released as if they had exited, and children
created since the last saved change (``Store.clock``) by tracked parents join their parents.
Times are on the clock of process start times, seconds since boot
(``ioasidsd.host.process_clock``).

Threads of a process are not followed: the ``Process`` records only the count seen when it was
first tracked. A thread-group leader that exits before its other threads ends the process here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import psutil
from pyroute2.netlink import NETLINK_CONNECTOR, NLMSG_DONE
from pyroute2.netlink.connector.cn_proc import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    ProcEventMarshal,
    proc_event_base,
    proc_event_control,
)

from ioasidsd.daemon.membership import FollowedHierarchy, KernelHierarchy
from ioasidsd.host import CLOCK_TICKS, process_clock, read_stat
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup, Process
from ioasidsd.system import System

Log = Any
# A tick of /proc's start times (USER_HZ): start times that close to a boundary count as after.
CLOCK_TICK = 1.0 / CLOCK_TICKS
RCVBUF = 8 << 20


class Tracker(Protocol):
    mode: str
    detail: str
    state: str  # "ok" or "degraded"
    reason: str | None  # why degraded

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def settle(self, timeout: float = ...) -> bool: ...


# ---------------------------------------------------------------------- rescans
def release_gone(system: System, gone: list[Process] | None = None) -> int:
    """Release every tracked process that no longer runs (a dead pid, or a pid reused by a
    later process); returns how many, and appends them to ``gone`` when given."""
    with system.lock:
        tracked = list(system.cgroups.processes.values())
    released = 0
    for proc in tracked:
        if system.processes.alive(proc.pid, proc.start_time):
            continue
        with system.lock:
            if system.cgroups.processes.get(proc.pid) is proc:
                system.exit(proc.pid)
                released += 1
                if gone is not None:
                    gone.append(proc)
    return released


def adopt_children(system: System, since: float, *, new_pids: set[int] | None = None,
                   gone: Sequence[Process] = ()) -> int:
    """Track, in their parent's cgroup, the untracked processes created after ``since`` whose
    parent is tracked outside the root (their fork was not seen); returns how many.

    ``new_pids`` restricts the candidates (polling passes the pids that appeared since its last
    scan). Parents are handled before children, so a whole subtree follows its root.

    The candidates left untracked whose parent is init are noted as orphans
    (``System.note_orphans``): their parent may have been a tracked process's child that was
    born and exited unseen. So are those whose parent is a subreaper they may have been
    re-parented to (``PR_SET_CHILD_SUBREAPER``, which ``/proc`` does not show): an untracked
    parent that started before a process of ``gone`` (tracked outside the root, found dead by
    this rescan: its exit was not seen) that itself started before the candidate.
    """
    lost = sorted(p.start_time for p in gone if not p.cgroup.is_root)
    with system.lock:
        if not lost and not any(p.cgroup is not system.cgroups.root
                                for p in system.cgroups.processes.values()):
            return 0
    found: list[tuple[float, int, int]] = []
    for pid in psutil.pids() if new_pids is None else new_pids:
        stat = read_stat(pid)
        if stat is None or not stat.running or stat.start_time + CLOCK_TICK < since:
            continue
        found.append((stat.start_time, pid, stat.ppid))
    adopted = 0
    orphans: dict[int, float] = {}
    for created, pid, ppid in sorted(found):
        with system.lock:
            known = system.cgroups.processes.get(pid)
            if known is not None and known.start_time == created:
                continue
            parent = system.cgroups.processes.get(ppid)
            if parent is None or parent.cgroup is system.cgroups.root:
                if ppid == 1 or _maybe_reparented(ppid, created, lost):
                    orphans[pid] = created
                continue
            system.fork(ppid, pid, created)
            adopted += 1
    system.note_orphans(orphans)
    return adopted


def _maybe_reparented(ppid: int, created: float, lost: list[float]) -> bool:
    """Whether a process created at ``created`` with the untracked parent ``ppid`` may descend
    from a process that started at one of ``lost`` (found dead, its exit unseen) and have been
    re-parented to ``ppid``, an ancestor of that process: ``ppid`` started before it, and it
    before the child."""
    if not lost or lost[0] > created:
        return False
    stat = read_stat(ppid)
    return stat is not None and any(stat.start_time <= t <= created for t in lost)


RESTART_BACKOFF = (0.05, 5.0)
"""Seconds a failed tracker waits before it tries again: the first wait, and the longest."""


class _Supervised:
    """What both trackers share: the health they report and the resync after a failure.

    ``state`` is ``ok`` or ``degraded``; ``reason`` says why it is degraded. ``restarts`` counts
    the failures recovered from.
    """

    mode = ""

    def __init__(self, system: System, log: Log) -> None:
        self.system = system
        self.log = log
        self.state = "ok"
        self.reason: str | None = None
        self.restarts = 0
        self.handled = threading.Condition()

    def _degrade(self, reason: str) -> None:
        """Say the tracker is not following processes, and why (logged with the exception
        being handled)."""
        if self.state != "degraded":
            self.log.exception("process tracking degraded; restarting it", reason=reason,
                               mode=self.mode)
        self.state, self.reason = "degraded", reason

    def _recovered(self) -> None:
        """Say the tracker follows processes again; who waits on ``handled`` is woken (the
        next event may be long in coming on a quiet machine)."""
        if self.state == "degraded":
            self.restarts += 1
            self.log.warning("process tracking resynchronised", mode=self.mode,
                             was=self.reason, restarts=self.restarts)
        with self.handled:
            self.state, self.reason = "ok", None
            self.handled.notify_all()

    def _resync(self, since: float) -> None:
        """Catch up with ``/proc``: release the gone, adopt the children born since ``since``,
        note the orphans. Exceptions propagate (the caller stays degraded)."""
        gone: list[Process] = []
        released = release_gone(self.system, gone)
        adopted = adopt_children(self.system, since, gone=gone)
        self.log.info("processes resynchronised", mode=self.mode, released=released,
                      adopted=adopted, orphans=len(self.system.orphans))


# ---------------------------------------------------------------------- the connector
class _proc_event_ack(proc_event_base):
    """The connector's answer to a (un)subscription: ``err`` is 0 or an errno."""

    fields = (*proc_event_base.fields, ("err", "I"))


class _Marshal(ProcEventMarshal):
    msg_map: ClassVar = {**ProcEventMarshal.msg_map, PROC_EVENT_NONE: _proc_event_ack}


def _control_message(listen: bool) -> bytes:
    msg = proc_event_control()
    msg["header"]["type"] = NLMSG_DONE
    msg["header"]["flags"] = 0
    msg["header"]["pid"] = 0
    msg["idx"] = CN_IDX_PROC
    msg["val"] = CN_VAL_PROC
    msg["len"] = 4
    msg["action"] = PROC_CN_MCAST_LISTEN if listen else PROC_CN_MCAST_IGNORE
    msg.encode()
    return bytes(msg.data)


class ConnectorTracker(_Supervised):
    """Fork and exit events from the kernel's process events connector."""

    mode = "connector"

    def __init__(self, system: System, log: Log, *, rcvbuf: int = RCVBUF,
                 exits_only: bool = False,
                 rescan: Callable[[], None] | None = None) -> None:
        super().__init__(system, log)
        self.detail = "netlink process events connector"
        self._exits_only = exits_only  # forks are placed by someone else (the kernel)
        self._rescan = rescan  # what catches up after lost events, instead of _resync
        self.overflows = 0
        self.events = 0
        self.passes = 0  # reads of the socket until it was empty
        self._requested = 0  # settle() calls so far
        self._served = 0  # the settle() calls a whole pass begun after them has answered
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._marshal = _Marshal()
        self._last_ok = process_clock()
        self._resync_since: float | None = None  # a resync is due: events since then were lost
        # children that exited before their fork was read: pid -> the cgroup they were born in,
        # until their exit event (their own forks come before it and inherit that cgroup)
        self._ghosts: dict[int, Cgroup] = {}

    def open(self) -> None:
        """Subscribe to process events. ``OSError`` when the connector cannot be used (not
        root: ``EPERM``; a kernel without it: ``EPROTONOSUPPORT``...)."""
        self._last_ok = process_clock()  # events are watched from here on
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             NETLINK_CONNECTOR)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, self._rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.bind((0, CN_IDX_PROC))
            sock.send(_control_message(True))
            sock.settimeout(2.0)
            self._expect_ack(sock)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def _expect_ack(self, sock: socket.socket) -> None:
        # the kernel answers a subscription with a PROC_EVENT_NONE whose `err` is 0 or an errno
        # (a subscriber without CAP_NET_ADMIN gets EPERM there, or already at bind)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # events overflowed the buffer before the answer came (a busy machine): the
                # kernel is sending them, so the subscription took; what was lost, the answer
                # perhaps with it, is rescanned before the first event is served
                self.overflows += 1
                self._resync_since = self._last_ok
                return
            for msg in self._marshal.parse(data):
                if msg["what"] == PROC_EVENT_NONE:
                    if msg["err"]:
                        raise OSError(msg["err"], os.strerror(msg["err"]))
                    return
                self._handle(msg)
        raise OSError(errno.ETIMEDOUT, "the process events connector did not answer")

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(_control_message(False))
            self._sock.close()
            self._sock = None

    def start(self) -> None:
        """Open (if not yet) and serve events on a thread."""
        if self._sock is None:
            self.open()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, unsubscribe and close. Idempotent."""
        self._stopping = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        self._close_socket()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def settle(self, timeout: float = 2.0) -> bool:
        """Return once every event the kernel sent before this call has been handled (and any
        resync it made due is done): ``True``; ``False`` if the tracker is degraded or did not
        get there within ``timeout`` seconds."""
        if self._thread is None or self.state != "ok":
            return False
        with self.handled:
            self._requested += 1
            mine = self._requested
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        with self.handled:
            self.handled.wait_for(
                lambda: self._served >= mine or self.state != "ok" or self._stopping, timeout)
            return self._served >= mine and self.state == "ok"

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        """Serve events; after a failure, reopen and resynchronise, with a growing pause
        between attempts, until it works or the tracker stops."""
        pause = RESTART_BACKOFF[0]
        while not self._stopping:
            try:
                if self._sock is None:
                    self.open()
                if self.state == "degraded" or self._resync_since is not None:
                    since = self._resync_since if self._resync_since is not None \
                        else self._last_ok
                    self._ghosts.clear()
                    self._resync(since)
                    self._resync_since = None
                    self._recovered()
                    pause = RESTART_BACKOFF[0]
                self._serve()
            except Exception as exc:  # a daemon never loses its tracker silently
                self._resync_since = min(self._resync_since or self._last_ok, self._last_ok)
                self._degrade(f"{type(exc).__name__}: {exc}")
                self._close_socket()
                with self.handled:
                    self.handled.notify_all()
                if self._wait(pause):
                    return
                pause = min(pause * 2, RESTART_BACKOFF[1])

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` unless woken to stop; whether the tracker is stopping."""
        select.select([self._wake_r], [], [], seconds)
        self._drain_wake()
        return self._stopping

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _serve(self) -> None:
        """Read and handle events until stopped; raises on a socket failure."""
        sock = self._sock
        assert sock is not None
        while not self._stopping:
            watched: list[socket.socket | int] = [sock, self._wake_r]
            ready, _, _ = select.select(watched, [], [])
            if self._wake_r in ready:
                self._drain_wake()
                if self._stopping:
                    return
            with self.handled:
                begun = self._requested
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self._overflow()
                    continue
                received = process_clock()
                for msg in self._marshal.parse(data):
                    self._handle(msg)  # one that fails resyncs from before this batch
                self._last_ok = received
            if self._resync_since is not None:  # an event could not be handled
                since, self._resync_since = self._resync_since, None
                self._resync(since)
            with self.handled:
                self.passes += 1
                self._served = begun
                self.handled.notify_all()

    def _resync(self, since: float) -> None:
        if self._rescan is not None:
            self._rescan()
        else:
            super()._resync(since)

    def _overflow(self) -> None:
        self.overflows += 1
        self.log.warning("process events were lost (socket overflow); rescanning",
                         overflows=self.overflows)
        self._ghosts.clear()
        self._resync(self._last_ok)

    def _handle(self, msg: Any) -> None:
        what = msg["what"]
        try:
            if what == PROC_EVENT_FORK:
                if self._exits_only:
                    return
                self.events += 1
                child = msg["child_pid"]
                if child != msg["child_tgid"]:
                    return  # a new thread
                parent = msg["parent_tgid"]
                root = self.system.cgroups.root
                known = self.system.cgroups.processes.get(parent)  # a quick filter, unlocked
                if known is not None and known.cgroup is not root:
                    born_in = known.cgroup
                else:
                    ghost = self._ghosts.get(parent)
                    if ghost is None:
                        return
                    born_in = ghost
                stat = self.system.processes.stat(child)
                if stat is None or not stat.running:
                    self._ghosts[child] = born_in  # gone already: its children inherit
                    return
                if known is not None and known.cgroup is not root:
                    self.system.fork(parent, child, stat.start_time)
                else:
                    self.system.fork(parent, child, stat.start_time, into=born_in)
            elif what == PROC_EVENT_EXIT:
                self.events += 1
                pid = msg["process_pid"]
                if pid != msg["process_tgid"]:
                    return
                self._ghosts.pop(pid, None)
                if pid in self.system.cgroups.processes:
                    self.system.exit(pid)
        except Exception as exc:  # this event is lost: resynchronise after the batch
            self.log.warning("process event not handled; resynchronising", what=what,
                             error=f"{type(exc).__name__}: {exc}")
            if self._resync_since is None:
                self._resync_since = self._last_ok


# ---------------------------------------------------------------------- polling
class _Scanning(_Supervised):
    """A tracker that scans every ``interval`` seconds on a thread of its own (``scan`` is the
    subclass's): a failed scan is logged and retried, ``degraded`` until one succeeds."""

    def __init__(self, system: System, log: Log, interval: float) -> None:
        super().__init__(system, log)
        self.interval = interval
        self.scans = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scan_lock = threading.Lock()

    def scan(self) -> None:
        raise NotImplementedError

    def _start_scanning(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _stop_scanning(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def settle(self, timeout: float = 2.0) -> bool:
        """Scan now, so that what changed since the last scan is followed (processes adopted,
        or noted as orphans); ``False`` if the scan failed."""
        try:
            self.scan()
        except Exception:
            self._degrade("a scan failed")
            return False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception as exc:  # a daemon never dies of a scan: the next one retries
                self._degrade(f"{type(exc).__name__}: {exc}")
            else:
                self._recovered()
            with self.handled:
                self.handled.notify_all()


class PollTracker(_Scanning):
    """Forks and exits found by scanning the process table with psutil."""

    mode = "poll"

    def __init__(self, system: System, log: Log, *, interval: float = 1.0,
                 reason: str = "") -> None:
        super().__init__(system, log, interval)
        self.detail = f"psutil polling every {interval:g} s" + (f" ({reason})" if reason else "")
        self._known = set(psutil.pids())
        self._last = process_clock()

    def start(self) -> None:
        self._start_scanning("proc-poll")

    def stop(self) -> None:
        self._stop_scanning()

    def scan(self) -> None:
        """One scan: release the gone, adopt the children that appeared, note the orphans."""
        with self._scan_lock:
            now = process_clock()
            pids = set(psutil.pids())
            new = pids - self._known
            gone: list[Process] = []
            release_gone(self.system, gone)
            adopt_children(self.system, self._last, new_pids=new, gone=gone)
            self._known = pids
            self._last = now
            self.scans += 1



# ---------------------------------------------------------------------- the kernel's hierarchy
class KernelTracker(_Scanning):
    """Membership kept by the kernel in a named cgroup-v1 hierarchy (``KernelHierarchy``).

    Nothing is followed: the kernel places every fork. ``open`` mounts the hierarchy and makes
    its tree the daemon's (a cgroup of the state that the kernel lacks is made there; one the
    state lacks is removed when empty, else adopted into the state with a warning), and hands
    it to the system (``System.kernel``). ``start`` then reconciles the state with the kernel:
    a hierarchy that kept nothing (new, or emptied since) is seeded with the processes the
    state has outside the root; a kept one wins, every process it has outside the root being
    recorded where it is (``System.sync_member``), every recorded process it no longer has
    there being moved to the root or released if gone. A scan every ``interval`` seconds does
    the same, so that the records (exits, ``notify_on_release``) follow within an interval,
    while listings and charges ask the kernel at once.

    A failed scan is logged and retried (``degraded`` until one succeeds); the kernel's
    membership itself cannot be lost.
    """

    mode = "kernel"

    def __init__(self, system: System, log: Log,
                 hierarchy: KernelHierarchy | FollowedHierarchy, *,
                 interval: float = 1.0) -> None:
        super().__init__(system, log, interval)
        self.hierarchy = hierarchy
        self.detail = hierarchy.detail
        self.adopted: list[str] = []  # cgroups found in the kernel only, added to the state
        self.exits: ConnectorTracker | None = None  # exits as they happen, where it can

    @property
    def fresh(self) -> bool:
        """Whether the kernel kept nothing: membership was seeded from the state."""
        return self.hierarchy.fresh

    def open(self) -> None:
        """Mount the hierarchy and mirror the tree; ``OSError`` when it cannot be mounted.
        A followed hierarchy is only checked: its tree is the host's, and the cgroups of it
        that hold processes are made in the system's as the scans find them."""
        hierarchy, system = self.hierarchy, self.system
        hierarchy.mount()
        if hierarchy.follows:
            system.kernel = hierarchy
            return
        try:
            with system.lock:
                ours = [cg.path for cg in system.cgroups.cgroups() if not cg.is_root]
            theirs = set(hierarchy.paths())
            for path in ours:
                if path not in theirs:
                    hierarchy.mkdir(path)
            known = set(ours)
            for path in reversed(sorted(theirs - known)):
                try:
                    hierarchy.rmdir(path)
                except OSError:
                    self.adopted.append(path)
            for path in sorted(self.adopted):
                system.mkdir(path)  # before System.kernel is set: the kernel has it already
            if self.adopted:
                self.log.warning("cgroups found only in the kernel's hierarchy, with processes, "
                                 "were added to the state", cgroups=sorted(self.adopted))
        except BaseException:
            hierarchy.unmount()
            raise
        system.kernel = hierarchy

    def start(self) -> None:
        """Reconcile (see the class), then scan every ``interval`` seconds on a thread."""
        if self.hierarchy.fresh:
            self._seed()
        self.scan()
        self._listen_for_exits()
        self._start_scanning("proc-kernel")

    def _listen_for_exits(self) -> None:
        """Follow exits through the process events connector when it can be opened (else the
        scan alone learns of them, and ``detail`` says why)."""
        exits = ConnectorTracker(self.system, self.log, exits_only=True, rescan=self.scan)
        try:
            exits.start()
        except OSError as exc:
            self.detail = (f"{self.hierarchy.detail}; exits found by a scan every "
                           f"{self.interval:g} s (no process events connector: "
                           f"{exc.strerror or exc})")
            return
        self.exits = exits
        self.detail = f"{self.hierarchy.detail}; exits from the process events connector"

    def _seed(self) -> None:
        """Move the processes the state has outside the root into the kernel's cgroups."""
        with self.system.lock:
            members = [(p.pid, p.start_time, p.cgroup.path)
                       for p in self.system.cgroups.processes.values() if not p.cgroup.is_root]
        seeded = 0
        for pid, start, path in members:
            if not self.system.processes.alive(pid, start):
                continue
            try:
                self.hierarchy.attach(pid, path)
                seeded += 1
            except OSError as exc:
                self.log.warning("a process of the state cannot be moved in the kernel",
                                 pid=pid, cgroup=path, error=exc.strerror or str(exc))
        self.log.info("the kernel's hierarchy was seeded from the state", processes=seeded,
                      hierarchy=self.hierarchy.name)

    def stop(self) -> None:
        """Stop scanning, hand membership back to the model and unmount (the hierarchy stays in
        the kernel while it has cgroups). Idempotent."""
        if self.exits is not None:
            self.exits.stop()
            self.exits = None
        self._stop_scanning()
        if self.system.kernel is self.hierarchy:
            self.system.kernel = None
        self.hierarchy.unmount()

    def scan(self) -> None:
        """Bring the records into line with the kernel: its members outside the root are
        recorded where it has them; recorded processes it has elsewhere are moved; gone ones
        released. Members are added before the gone are released, so that a cgroup is not
        found empty while the kernel still has a process in it."""
        system, hierarchy = self.system, self.hierarchy
        with self._scan_lock:
            where: dict[int, str] = {}
            present = hierarchy.paths()
            for path in present:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    for pid in hierarchy.procs(path):
                        where[pid] = path
            with system.lock:
                records = {pid: p.cgroup.path for pid, p in system.cgroups.processes.items()}
            differ = [pid for pid, path in where.items() if records.get(pid) != path]
            differ += [pid for pid, path in records.items() if path != "/" and pid not in where]
            for pid in differ:
                try:
                    system.sync_member(pid)
                except IoasidError as exc:
                    self.log.warning("a process's cgroup cannot be recorded", pid=pid,
                                     error=exc.strerror or str(exc))
            release_gone(system)
            if isinstance(hierarchy, FollowedHierarchy):
                self._drop_leftovers(hierarchy, set(present))
            self.scans += 1

    def _drop_leftovers(self, hierarchy: FollowedHierarchy, present: set[str]) -> None:
        """Remove the cgroups made by following that are empty and whose host cgroups were
        removed (``System.followed_leftovers``), as the host removed its own: a scope whose
        VM exited. One the host has again by now, or that a process entered meanwhile, stays."""
        for path in self.system.followed_leftovers(present):
            if hierarchy.has(path):
                continue
            try:
                self.system.rmdir(path)
            except IoasidError:
                continue  # a process (or a cgroup) came in meanwhile, or it went already
            self.log.info("a followed cgroup removed: the host removed its own", cgroup=path)



def open_tracker(system: System, mode: str, log: Log, *, interval: float = 1.0,
                 connector: Callable[..., ConnectorTracker] = ConnectorTracker,
                 hierarchy: KernelHierarchy | FollowedHierarchy | None = None) -> Tracker:
    """The tracker for ``mode`` (``auto``, ``kernel``, ``connector`` or ``poll``), opened but
    not started.

    ``kernel`` mounts ``hierarchy`` (``KernelTracker.open``); ``connector`` raises ``OSError``
    when the connector cannot be opened. ``auto`` tries them in that order (the kernel's
    hierarchy only when ``hierarchy`` is given) and falls back to polling, saying in ``detail``
    why each better one could not be used.
    """
    if mode == "poll":
        return PollTracker(system, log, interval=interval, reason="configured")
    reasons = []
    if mode in ("auto", "kernel") and hierarchy is not None:
        kernel = KernelTracker(system, log, hierarchy, interval=interval)
        try:
            kernel.open()
        except OSError as exc:
            if mode == "kernel":
                raise
            reasons.append(f"no named cgroup-v1 hierarchy: {exc.strerror or exc}")
        else:
            return kernel
    elif mode == "kernel":
        raise OSError(errno.EINVAL, "no named hierarchy was given")
    tracker = connector(system, log)
    try:
        tracker.open()
    except OSError as exc:
        if mode == "connector":
            raise
        reasons.append(f"no process events connector: {exc.strerror or exc}")
        return PollTracker(system, log, interval=interval, reason="; ".join(reasons))
    if reasons:
        tracker.detail += f" ({'; '.join(reasons)})"
    return tracker
