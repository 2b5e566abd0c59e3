"""Process tracking: the forks and exits of real processes, fed into the ``System``.

Two trackers with one interface (``start``, ``stop``, ``mode``, ``detail``):

* ``ConnectorTracker`` listens to the kernel's process events connector (netlink
  ``NETLINK_CONNECTOR``, ``CN_IDX_PROC``; root only), with pyroute2's message definitions. A fork
  whose parent is tracked outside the root puts the child in the parent's cgroup at once; the exit
  of a thread-group leader releases the process. If the socket overflows (``ENOBUFS``: events
  were lost), the tracker rescans the machine.
* ``PollTracker`` scans with psutil every ``interval`` seconds: tracked processes that are gone
  are released, processes that appeared since the last scan with a tracked parent outside the
  root join that parent's cgroup. A process that forks and is moved within one interval may
  place its child by its new cgroup rather than the one it forked in.

``open_tracker`` chooses: ``connector``, ``poll``, or ``auto`` (the connector when it can be
opened, else polling, with the reason in ``detail``).

``release_gone`` and ``adopt_children`` are the rescan, also run once at start-up for the time the
daemon was not running: processes that died are released as if they had exited, and children
created since the last saved change (``Store.clock``) by tracked parents join their parents.
Times are on the clock of process start times, seconds since boot (``process_clock``).

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
from collections.abc import Callable
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

from ioasidsd.model.errors import IoasidError
from ioasidsd.system import CLOCK_TICKS, System

Log = Any
# A tick of /proc's start times (USER_HZ): start times that close to a boundary count as after.
CLOCK_TICK = 1.0 / CLOCK_TICKS
RCVBUF = 8 << 20


def process_clock() -> float:
    """Now, on the clock of process start times (``ProcessFacts.start_time``): seconds since
    boot, suspend included (``CLOCK_BOOTTIME``, what ``/proc/PID/stat`` counts from)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _parent_and_start(pid: int) -> tuple[int, float] | None:
    """The parent pid and start time (as ``ProcessSource``) of ``pid``, ``None`` if it is gone
    or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[19]) / CLOCK_TICKS


class Tracker(Protocol):
    mode: str
    detail: str

    def start(self) -> None: ...
    def stop(self) -> None: ...


# ---------------------------------------------------------------------- rescans
def release_gone(system: System) -> int:
    """Release every tracked process that no longer runs (a dead pid, or a pid reused by a
    later process); returns how many."""
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
    return released


def adopt_children(system: System, since: float, *, new_pids: set[int] | None = None) -> int:
    """Track, in their parent's cgroup, the untracked processes created after ``since`` whose
    parent is tracked outside the root (their fork was not seen); returns how many.

    ``new_pids`` restricts the candidates (polling passes the pids that appeared since its last
    scan). Parents are handled before children, so a whole subtree follows its root.
    """
    with system.lock:
        if not any(p.cgroup is not system.cgroups.root
                   for p in system.cgroups.processes.values()):
            return 0
    found: list[tuple[float, int, int]] = []
    for pid in psutil.pids() if new_pids is None else new_pids:
        stat = _parent_and_start(pid)
        if stat is None or stat[1] + CLOCK_TICK < since:
            continue
        found.append((stat[1], pid, stat[0]))
    adopted = 0
    for created, pid, ppid in sorted(found):
        with system.lock:
            known = system.cgroups.processes.get(pid)
            if known is not None and known.start_time == created:
                continue
            parent = system.cgroups.processes.get(ppid)
            if parent is None or parent.cgroup is system.cgroups.root:
                continue
            system.fork(ppid, pid, created)
            adopted += 1
    return adopted


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


class ConnectorTracker:
    """Fork and exit events from the kernel's process events connector."""

    mode = "connector"

    def __init__(self, system: System, log: Log, *, rcvbuf: int = RCVBUF) -> None:
        self.system = system
        self.log = log
        self.detail = "netlink process events connector"
        self.overflows = 0
        self.events = 0
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._marshal = _Marshal()
        self._last_ok = process_clock()
        self.handled = threading.Condition()

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
            for msg in self._marshal.parse(data):
                if msg["what"] == PROC_EVENT_NONE:
                    if msg["err"]:
                        raise OSError(msg["err"], os.strerror(msg["err"]))
                    return
                self._handle(msg)
        raise OSError(errno.ETIMEDOUT, "the process events connector did not answer")

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
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(_control_message(False))
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping:
            ready, _, _ = select.select([sock, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        self.log.error("process events connector failed", error=str(exc))
                        return
                    self._overflow(self._last_ok)
                    continue
                self._last_ok = process_clock()
                for msg in self._marshal.parse(data):
                    self._handle(msg)
            with self.handled:
                self.handled.notify_all()

    def _overflow(self, since: float) -> None:
        self.overflows += 1
        self.log.warning("process events were lost (socket overflow); rescanning",
                         overflows=self.overflows)
        try:
            release_gone(self.system)
            adopt_children(self.system, since)
        except Exception:  # a daemon never dies of a rescan
            self.log.exception("rescan after overflow failed")

    def _handle(self, msg: Any) -> None:
        what = msg["what"]
        try:
            if what == PROC_EVENT_FORK:
                self.events += 1
                child = msg["child_pid"]
                if child != msg["child_tgid"]:
                    return  # a new thread
                parent = msg["parent_tgid"]
                known = self.system.cgroups.processes.get(parent)  # a quick filter, unlocked
                if known is None or known.cgroup is self.system.cgroups.root:
                    return
                facts = self.system.processes.facts(child)
                self.system.fork(parent, child, facts.start_time)
            elif what == PROC_EVENT_EXIT:
                self.events += 1
                pid = msg["process_pid"]
                if pid == msg["process_tgid"] and pid in self.system.cgroups.processes:
                    self.system.exit(pid)
        except IoasidError:
            pass  # the child is already gone: its exit follows or has been handled
        except Exception:
            self.log.exception("process event not handled", event=msg.get("event"))


# ---------------------------------------------------------------------- polling
class PollTracker:
    """Forks and exits found by scanning the process table with psutil."""

    mode = "poll"

    def __init__(self, system: System, log: Log, *, interval: float = 1.0,
                 reason: str = "") -> None:
        self.system = system
        self.log = log
        self.interval = interval
        self.detail = f"psutil polling every {interval:g} s" + (f" ({reason})" if reason else "")
        self.scans = 0
        self._known = set(psutil.pids())
        self._last = process_clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.handled = threading.Condition()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="proc-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def scan(self) -> None:
        """One scan: release the gone, adopt the children that appeared."""
        now = process_clock()
        pids = set(psutil.pids())
        new = pids - self._known
        release_gone(self.system)
        adopt_children(self.system, self._last, new_pids=new)
        self._known = pids
        self._last = now
        self.scans += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # a daemon never dies of a scan
                self.log.exception("process scan failed")
            with self.handled:
                self.handled.notify_all()


def open_tracker(system: System, mode: str, log: Log, *, interval: float = 1.0,
                 connector: Callable[..., ConnectorTracker] = ConnectorTracker) -> Tracker:
    """The tracker for ``mode`` (``auto``, ``connector`` or ``poll``), opened but not started.

    ``connector`` raises ``OSError`` when the connector cannot be opened; ``auto`` then falls
    back to polling and says why in ``detail``.
    """
    if mode == "poll":
        return PollTracker(system, log, interval=interval, reason="configured")
    tracker = connector(system, log)
    try:
        tracker.open()
    except OSError as exc:
        if mode == "connector":
            raise
        reason = f"no process events connector: {exc.strerror or exc}"
        return PollTracker(system, log, interval=interval, reason=reason)
    return tracker
