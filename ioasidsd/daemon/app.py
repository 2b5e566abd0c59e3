"""``ioasidsd run``: one ``System`` with its durable state, process tracking, release agents, the
FUSE mount and the control API, from start to a clean stop.

Start-up, in order (any failure is one logged line and exit status 1):

1. claim the runtime directory (pid file) and the state directory, so a second daemon on either
   refuses to start;
2. open the state and rebuild the model from it (or start a new state; unlike the model's
   default, its deferred work, the VT-d FREE cleanup, runs on a worker thread as on the
   kernel's ``ioasid_wq``), then boot the VT-d simulation over it (``ioasidsd.vtd``, the
   ``[vtd]`` table or the default unit and devices): a new state gets the units' PASID space
   (or ``--capacity``) as capacity and a new host PASID set; a restored one keeps its capacity
   and host set and gets its bindings rebuilt. A state made with other knobs or another
   capacity (or a capacity beyond the units' PASID space, or bindings the configured units
   cannot hold) is refused unless it holds nothing;
3. let the faces attach to the system (exit hooks), start the release-agent runner and process
   tracking, then release the processes that died while no daemon ran (in another boot: all of
   them) and adopt the children tracked processes forked meanwhile; load the units
   (``[units]``): every slice with a unit file or drop-ins is realised with its limit
   (``ioasidsd.slices.manager``), and the empty transient scopes of an earlier run removed;
4. replace a stale mount left by a killed daemon, mount the hierarchy (``cgroupfs.mount``);
5. serve ``/dev/ioasid`` on ``RUNTIME_DIR/ioasid.sock`` (``ioasidsd.userapi.server``, its
   bind extension on the VT-d driver) and the control API (``status``, ``vtd``: a caller other
   than root sees only its own processes' bindings, ``ioasidsd.control.visibility``), then tell
   the service manager ``READY=1`` with a ``STATUS=`` line.

SIGTERM and SIGINT stop serving, unmount, save the state and exit 0 (``STOPPING=1``). SIGHUP
(and the ``daemon_reload`` verb) reloads the configuration file and the units: log format and
level, the poll interval and the ``[units]`` settings change at once, other changes are logged
as waiting for a restart; every slice is loaded and realised again. An unmount from outside
(``fusermount -u``) ends the daemon with status 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ioasidsd import __version__
from ioasidsd.clients import ConnectionCap, Peer
from ioasidsd.control import verbs
from ioasidsd.control.protocol import SOCKET_NAME as CONTROL_SOCKET_NAME
from ioasidsd.control.server import ControlServer, Handler
from ioasidsd.daemon.config import Config, ConfigError, load_config, reload_changes
from ioasidsd.daemon.logs import forward_model_messages, get_logger, setup_logging
from ioasidsd.daemon.membership import MOUNT_NAME as MEMBERSHIP_MOUNT
from ioasidsd.daemon.membership import (
    FollowedHierarchy,
    KernelHierarchy,
    followed_hierarchy,
    hierarchy_name,
)
from ioasidsd.daemon.notify import Heartbeat, sd_notify, watchdog_interval
from ioasidsd.daemon.procs import (
    KernelTracker,
    PollTracker,
    Tracker,
    adopt_children,
    open_tracker,
    release_gone,
)
from ioasidsd.daemon.release import ReleaseAgents
from ioasidsd.daemon.runtime import (
    PID_FILE,
    STATE_LOCK,
    AlreadyRunning,
    DirectoryLock,
)
from ioasidsd.eventloop import EventLoop
from ioasidsd.host import UNIFIED, boot_id, filesystem_of, process_clock
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.core import IoasidSetType
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Process
from ioasidsd.model.snapshot import SnapshotError, load
from ioasidsd.model.workqueue import OrderedWorkQueue, WorkMode
from ioasidsd.slices import SearchPath, SliceManager, parse_default_ioasids_max
from ioasidsd.store.refusals import RefusalLog
from ioasidsd.store.state import Store, StoreError
from ioasidsd.system import System
from ioasidsd.userapi.server import UserApiServer
from ioasidsd.vtd import VtdConfig, VtdDriver, build_driver, parse_config

if TYPE_CHECKING:
    from ioasidsd.experiments.recording import Recordings

Mounter = Callable[..., Any]


class StartError(Exception):
    """The daemon cannot start; the message says why in one line."""


def _cgroupfs() -> Any:
    try:
        import cgroupfs
    except ImportError as exc:
        raise StartError(f"the FUSE file system is not available: {exc}") from None
    return cgroupfs


def _holds_nothing(snap: dict[str, Any]) -> bool:
    """No cgroup, no IOASID, no set but the VT-d host set (which a new boot makes again)."""
    return (len(snap["cgroups"]) <= 1 and not snap["ioasids"]
            and all(s["type"] == IoasidSetType.NULL for s in snap["sets"]))


TRACE_EVENTS_MAX = verbs.TRACE_EVENTS_MAX

_LOGGED = frozenset({ChangeKind.MKDIR, ChangeKind.RMDIR, ChangeKind.RENAME, ChangeKind.LIMIT,
                     ChangeKind.ATTACH})
"""The changes the daemon's log records at info level, besides every refusal."""


def log_change(log: Any, change: Change) -> None:
    """One info line for a refusal, a limit change, a mkdir, an rmdir, a rename or a move
    (called under the system lock: the values are the model's now). A client's lines are
    rate-limited per uid (``ioasidsd.clients.ClientLogLimit``)."""
    refusal = change.refusal
    if refusal is not None:
        log.info(f"refused {refusal.command}: {refusal.message or refusal.error}",
                 pid=refusal.pid, uid=refusal.uid, cgroup=refusal.cgroup, level=refusal.level,
                 errno=refusal.error, request=dict(refusal.request))
        return
    kind = change.kind
    if kind is ChangeKind.ATTACH:
        for proc in change.processes:
            log.info("process moved", pid=proc.pid, cgroup=proc.cgroup.path,
                     source=change.cgroups[0].path if change.cgroups else None)
    elif kind is ChangeKind.RMDIR:
        log.info("cgroup removed", cgroup=change.path)
    elif kind is ChangeKind.RENAME:
        log.info("cgroup renamed", cgroup=change.cgroups[0].path, source=change.path)
    elif kind is ChangeKind.LIMIT:
        cg = change.cgroups[0]
        log.info("limit set", cgroup=cg.path,
                 max="max" if cg.limit is None else cg.limit, reserved=cg.reserved)
    else:
        log.info("cgroup created", cgroup=change.cgroups[0].path)


class Daemon:
    """One run of the daemon. ``run()`` returns the exit status.

    ``attach`` is called with the restored ``System`` before process tracking starts: where
    faces register their exit hooks (the user API closing ``/dev/ioasid``), so that processes
    that died while no daemon ran are released through them too. ``mounter`` stands in for
    ``cgroupfs.mount`` (default: the real one, with stale mounts replaced first).
    """

    def __init__(self, config: Config, *, flags: dict[str, Any] | None = None,
                 log: Any = None, attach: Callable[[System], None] | None = None,
                 mounter: Mounter | None = None, reset_state: bool = False) -> None:
        self.config = config
        self.reset_state = reset_state
        self.flags = dict(flags or {})
        self.log = log or get_logger()
        self._attach = attach
        self._mounter = mounter
        self.system: System | None = None
        self.store: Store | None = None
        self.tracker: Tracker | None = None
        self.releases: ReleaseAgents | None = None
        self.control: ControlServer | None = None
        self.sockets: EventLoop | None = None
        self.userapi: UserApiServer | None = None
        self.vtd: VtdDriver | None = None
        self._recordings: Recordings | None = None
        self.slices: SliceManager | None = None
        self.mount: Any = None
        self.started = time.time()
        self.exit_code = 0
        self._locks: list[DirectoryLock] = []
        self._wakeup = threading.Event()
        self._stopping = False
        self._reload = False
        self._reloading = threading.Lock()
        self._stop_reason = ""
        self._clock_before: float | None = None
        self._saved_boot: str | None = None
        self.heartbeat: Heartbeat | None = None
        self._probe_pending = False

    # ------------------------------------------------------------------ life cycle
    def run(self) -> int:
        """Start, serve until a signal (or an external unmount), stop. Returns the exit code."""
        self._install_signals()
        try:
            self.start()
        except (StartError, AlreadyRunning, StoreError, ConfigError) as exc:
            self.log.error(str(exc))
            self.exit_code = 1
        except OSError as exc:
            where = {"path": exc.filename} if exc.filename else {}
            self.log.error(f"cannot start: {exc.strerror or exc}", **where)
            self.exit_code = 1
        else:
            self.serve()
        self.shutdown()
        return self.exit_code

    def _install_signals(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.request_stop(signal.Signals(signum).name)

        def reload(signum: int, frame: Any) -> None:
            self._reload = True
            self._wakeup.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Ask the main loop to stop (from a signal handler or any thread)."""
        if not self._stopping:
            self._stop_reason = reason
            self.exit_code = exit_code or self.exit_code
        self._stopping = True
        self._wakeup.set()

    def _notify(self, *lines: str) -> None:
        try:
            sd_notify(*lines)
        except (OSError, ValueError) as exc:
            self.log.warning("the service manager cannot be notified", error=str(exc),
                             notify_socket=os.environ.get("NOTIFY_SOCKET"))

    def start(self) -> None:
        """Everything up to ready (see the module's documentation); raises what ``run``
        reports. ``shutdown`` undoes whatever part was done."""
        config = self.config
        for directory, name, role in ((config.runtime_dir, PID_FILE, "runtime directory"),
                                      (config.state_dir, STATE_LOCK, "state directory")):
            lock = DirectoryLock(directory, name, role)
            lock.acquire()
            self._locks.append(lock)
        self._open_state()
        system = self.system
        store = self.store
        assert system is not None and store is not None
        if self._attach is not None:
            self._attach(system)

        self.releases = ReleaseAgents(system, self.log)
        self.releases.start()
        # the kernel keeps membership in a mirror of a v1 hierarchy only (no threaded cgroups,
        # no v2 move rules there)
        if config.hierarchy != "v1" and config.tracking == "kernel":
            raise StartError("tracking = kernel keeps membership in a cgroup-v1 mirror: with "
                             "hierarchy = v2, use tracking = auto, connector or poll")
        hierarchy: KernelHierarchy | FollowedHierarchy | None = \
            KernelHierarchy(hierarchy_name(config.state_dir),
                            config.runtime_dir / MEMBERSHIP_MOUNT) \
            if config.hierarchy == "v1" else None
        if config.follow != "none":
            hierarchy = self._followed()
        try:
            self.tracker = open_tracker(system, config.tracking, self.log,
                                        interval=config.poll_interval, hierarchy=hierarchy)
        except OSError as exc:
            what = ("a named cgroup-v1 hierarchy cannot be mounted"
                    if config.tracking == "kernel" else
                    "the process events connector cannot be used")
            raise StartError(f"tracking = {config.tracking}, but {what}: "
                             f"{exc.strerror or exc}") from None
        if config.follow != "none" and not isinstance(self.tracker, KernelTracker):
            raise StartError(f"follow = {config.follow}, but the host's hierarchy cannot be "
                             f"followed: {self.tracker.detail}")
        if hierarchy is not None and hierarchy.follows:
            self.log.info("membership follows the host's hierarchy", follow=config.follow,
                          hierarchy=str(hierarchy.mountpoint))
        if self.tracker.mode == "poll" and config.tracking == "auto":
            self.log.warning("process tracking falls back to polling", reason=self.tracker.detail)
        elif self.tracker.mode == "connector" and config.tracking == "auto":
            self.log.warning("membership is not kept by the kernel: process tracking falls back "
                             "to the connector", reason=self.tracker.detail)
        system.unplaced = config.unplaced
        system.set_root_max(config.root_max)  # the configuration's, over the saved one
        system.settle = self.tracker.settle
        # before the first scan: the cgroups following makes get their units' limits
        self.slices = SliceManager(system, units_search_path(config),
                                   parse_default_ioasids_max(config.default_ioasids_max),
                                   self.log)
        system.realise_followed = self.slices.realise_followed
        if isinstance(hierarchy, FollowedHierarchy):
            self.slices.scope_removed = hierarchy.remove_empty  # run's scopes made there
        if isinstance(self.tracker, KernelTracker):
            # the state's guesses for the time no daemon ran first, then the kernel's word
            self._catch_up(adopt=self.tracker.fresh)
            self.tracker.start()
        else:
            self.tracker.start()
            self._catch_up()
        self._load_units(sweep=True)
        self.slices.start()

        self._mount()
        others = descriptor_budget() // 2  # what users other than root may hold, per socket
        self.sockets = EventLoop(self.log, name="sockets")  # one thread serves both sockets
        self.userapi = UserApiServer(
            system, str(config.runtime_dir),
            cap=ConnectionCap(config.max_connections_per_uid, total=others), loop=self.sockets)
        self.userapi.start()
        handlers: dict[str, Handler] = {name: functools.partial(verb, self)
                                        for name, verb in verbs.VERBS.items()}
        self.control = ControlServer(config.runtime_dir / CONTROL_SOCKET_NAME, handlers,
                                     self.log,
                                     cap=ConnectionCap(config.max_connections_per_uid,
                                                       total=others), loop=self.sockets)
        self.control.start()
        self.sockets.start()
        line = self.status_line()
        # the heartbeat first: a change made as soon as READY=1 is read is in its next line
        self._start_heartbeat(line)
        self._notify("READY=1", f"STATUS={line}")
        self.log.info("ready", mount=str(config.mount), pid=os.getpid(),
                      tracking=self.tracker.mode, profile=system.knobs.profile)

    def _followed(self) -> FollowedHierarchy:
        """The host's hierarchy ``[units] follow`` names; ``StartError`` when it cannot be
        followed (not mounted, another tracking mode, a cgroup-v2 hierarchy served)."""
        config = self.config
        if config.tracking not in ("auto", "kernel"):
            raise StartError(f"follow = {config.follow} takes membership from the host's "
                             f"hierarchy: tracking must be auto or kernel, not "
                             f"{config.tracking}")
        if config.hierarchy != "v1":
            raise StartError(f"follow = {config.follow} mirrors the host's membership in a "
                             f"cgroup-v1 hierarchy: hierarchy must be v1")
        try:
            return followed_hierarchy(config.follow, log=self.log)
        except OSError as exc:
            raise StartError(f"follow = {config.follow}, but {exc.strerror or exc}") from None

    def _open_state(self) -> None:
        config = self.config
        if self.reset_state:
            moved = move_state_aside(config.state_dir)
            if moved is not None:
                self.log.warning("the saved state was moved aside (--reset-state)",
                                 saved=str(moved))
        store = Store.open(config.state_dir, synchronous=config.synchronous,
                           warn=lambda message: self.log.error(message),
                           note=lambda message: self.log.info(message),
                           refusal_ring=config.events_ring)
        self.store = store
        snap = store.load()
        if snap is not None:
            self._clock_before, self._saved_boot = store.clock, store.boot
        try:
            vtd_config = parse_config(config.vtd)
        except ValueError as exc:  # load_config checked it: only a Config built by hand
            raise StartError(f"[vtd]: {exc}") from None
        space, scalable = vtd_config.pasid_space()
        knobs = config.semantics()
        # The kernel runs ioasid_wq on a kworker: the daemon keeps the model's deferred work (the
        # VT-d FREE cleanup) on a worker thread, after and apart from the call that queued it.
        system = System(knobs, on_change=self._on_change,
                        wq=OrderedWorkQueue(mode=WorkMode.THREAD), hierarchy=config.hierarchy)
        forward_model_messages(system.core, self.log)
        self.system = system
        if snap is not None:
            differs = []
            saved = snap["knobs"] or {}
            if saved != knobs.as_dict():
                differs.append(_knob_diff(saved, knobs.as_dict()))
            saved_hierarchy = f"v{snap['core'].get('hierarchy', 1)}"
            if saved_hierarchy != config.hierarchy:
                differs.append(f"hierarchy {saved_hierarchy} (now {config.hierarchy})")
            saved_capacity = snap["core"]["capacity"]
            if config.capacity is not None and config.capacity != saved_capacity:
                differs.append(f"capacity {saved_capacity}")
            elif scalable and saved_capacity > space:
                differs.append(f"capacity {saved_capacity}, more than the {space} PASIDs of "
                               f"the configured VT-d units")
            if differs and not _holds_nothing(snap):
                raise StartError(
                    f"the state in {config.state_dir} was made with {'; '.join(differs)}: "
                    f"start with the same settings, or with --reset-state to move that state "
                    f"aside and start afresh")
            if differs:
                self.log.warning("the saved state held nothing: starting afresh with the new "
                                 "settings", saved=", ".join(differs))
                snap = None
        with system.lock:
            if snap is None:
                self._boot_vtd(vtd_config, capacity=config.capacity)
                store.bind(system)
                self.log.info("new state", state=str(store.path), capacity=system.core.capacity)
                return
            try:
                rows = load(snap, system.core)
            except SnapshotError as exc:
                raise StartError(f"the state in {store.path} cannot be loaded: {exc}") from None
            store.bind(system, rows)
            system.orphans = store.orphans
            for path, amount in system.controller.over_reserved:
                self.log.warning("a limit holds capacity beyond the reservation rule (a state "
                                 "saved by an earlier version): returned when it is written "
                                 "again or its cgroup removed", cgroup=path, amount=amount)
            self._boot_vtd(vtd_config, adopt=True)
            assert self.vtd is not None
            if self.vtd.host_set is not None:  # adopted (no change), or made for an old state
                system.on_change(Change(ChangeKind.VTD_BOOT, sets=(self.vtd.host_set.id,)))
        self.log.info("state restored", state=str(store.path),
                      cgroups=len(snap["cgroups"]), processes=len(snap["processes"]),
                      sets=len(snap["sets"]), ioasids=len(snap["ioasids"]),
                      vtd_bindings=self.vtd.restored)

    def _boot_vtd(self, vtd_config: VtdConfig, *, capacity: int | None = None,
                  adopt: bool = False) -> None:
        """Build and boot the VT-d driver over the system (under its lock) and attach it: a new
        state's boot installs ``capacity`` (default: the units' PASID space) and creates the
        host set; ``adopt`` keeps what the restored state holds and rebuilds its bindings.
        ``StartError`` when the driver refuses (bindings the configuration cannot hold)."""
        system = self.system
        assert system is not None
        try:
            driver = build_driver(system.core, vtd_config, capacity=capacity, adopt=adopt)
        except IoasidError as exc:
            where = f"the state in {self.config.state_dir}" if adopt else "the configuration"
            raise StartError(f"the VT-d simulation cannot boot over {where}: {exc.strerror}; "
                             f"configure the units and devices it was saved with, or move the "
                             f"state away to start afresh") from None
        system.vtd_attach(driver)
        self.vtd = driver
        for event in driver.trace.last(TRACE_EVENTS_MAX, kinds=("warn",)):
            fields = {k: v for k, v in event.fields.items() if k != "msg"}
            self.log.warning(f"VT-d: {event['msg']}", source="vtd", **fields)
        self.log.info("VT-d booted", units=list(driver.units), devices=sorted(driver.devices),
                      pasid_max=driver.pasid_max, scalable_mode=driver.sm_enabled,
                      host_set=None if driver.host_set is None else driver.host_set.id,
                      restored_bindings=driver.restored)

    def _catch_up(self, *, adopt: bool = True) -> None:
        """Processes that died while no daemon ran are released as if they had exited, and so
        are the /dev/ioasid files of exited openers that a connection inherited by another
        process held until the restart ended it; the children tracked processes forked
        meanwhile join their parents' cgroups (``adopt``; not when the kernel kept membership
        meanwhile)."""
        system, store = self.system, self.store
        assert system is not None and store is not None
        if self._saved_boot is not None and self._saved_boot != boot_id():
            with system.lock:
                pids = list(system.cgroups.processes)
                for pid in pids:
                    system.exit(pid)
            system.note_orphans({})  # those of the earlier boot are gone
            released, adopted = len(pids), 0
            if pids:
                self.log.info("the saved processes belong to an earlier boot")
        else:
            gone: list[Process] = []
            released = release_gone(system, gone)
            clock = self._clock_before
            adopted = adopt_children(system, clock, gone=gone) \
                if clock is not None and adopt else 0
        released += system.ioasid_release_unheld()
        with system.lock:
            store.set_clock(process_clock())
        if released or adopted:
            self.log.info("processes caught up", released=released, adopted=adopted)

    def _load_units(self, *, sweep: bool = False) -> dict[str, Any]:
        """Load the units and realise the slices; one log line with the counts."""
        assert self.slices is not None
        counts = self.slices.load(sweep=sweep)
        self.log.info("units loaded", **counts,
                      path=[str(p) for p in self.slices.search.directories])
        return counts

    def _on_change(self, change: Change) -> None:
        assert self.store is not None
        self.store.apply(change)
        recordings = self._recordings
        if recordings is not None and recordings.active is not None:
            recordings.active.note(change)
        if self.slices is not None:
            self.slices.note_change(change)
        if self.releases is not None:
            self.releases.wake()
        heartbeat = self.heartbeat
        if heartbeat is not None and heartbeat.changed():
            self._wakeup.set()
        if change.refusal is not None or change.kind in _LOGGED:
            log_change(self.log, change)

    @property
    def recordings(self) -> Recordings | None:
        """The trace recording (``ioasidsd.control.verbs.Service``), once the system exists;
        made at the first ``trace`` request (until then, and while no recording runs, the
        change feed costs two attribute tests)."""
        if self._recordings is None and self.system is not None:
            from ioasidsd.experiments.recording import Recordings

            self._recordings = Recordings(self.system, time.monotonic)
        return self._recordings

    @property
    def refusals(self) -> RefusalLog | None:
        """The refusal log (``ioasidsd.control.verbs.Service``), once the state is open."""
        return None if self.store is None else self.store.refusals

    def _mount(self) -> None:
        mountpoint = str(self.config.mount)
        if not os.path.exists(mountpoint):
            fstype = filesystem_of(os.path.dirname(os.path.abspath(mountpoint)))
            if fstype in ("cgroup", "cgroup2"):
                raise StartError(
                    f"{mountpoint} does not exist and its parent is a kernel {fstype} "
                    f"hierarchy, where mkdir would create a kernel cgroup: create the mount "
                    f"point yourself (e.g. on a tmpfs) or choose another --mount")
        fs = None
        mounter = self._mounter
        if mounter is None:
            fs = _cgroupfs()
            mounter = fs.mount
            if fs.stale_mount(mountpoint):
                self.log.warning("replacing the stale mount of a daemon that died",
                                 mount=mountpoint)
                fs.force_unmount(mountpoint)
        self.mount = mounter(self.system, mountpoint, allow_other=True, fsname="ioasids")
        threading.Thread(target=self._watch_mount, name="mount-watch", daemon=True).start()

    def _watch_mount(self) -> None:
        mount = self.mount
        with contextlib.suppress(Exception):
            mount.wait()
        if not self._stopping:
            self.log.error("the hierarchy was unmounted from outside; stopping",
                           mount=str(self.config.mount))
            self.request_stop("unmounted", exit_code=1)

    def serve(self) -> None:
        """The main loop: wait for signals, and send the heartbeat's lines when due."""
        while True:
            heartbeat = self.heartbeat
            self._wakeup.wait(None if heartbeat is None else heartbeat.due())
            self._wakeup.clear()
            if self._stopping:
                self.log.info("stopping", reason=self._stop_reason)
                return
            if self._reload:
                self._reload = False
                self.reload()
            if heartbeat is not None:
                heartbeat.tick()

    # ------------------------------------------------------------------ the service manager
    def _start_heartbeat(self, status: str) -> None:
        """With a service manager to tell (``$NOTIFY_SOCKET``): ``WATCHDOG=1`` at half the
        interval of ``$WATCHDOG_USEC`` while the model lock and the socket thread answer, and
        the ``STATUS=`` line again when it changes, at most once a second."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        interval = watchdog_interval()
        checks = () if interval is None else (
            functools.partial(self._model_answers, min(5.0, interval / 4)),
            self._sockets_answer)
        self.heartbeat = Heartbeat(interval=interval, status=self._status_if_free, checks=checks,
                                   send=sd_notify, warn=self.log.warning)
        self.heartbeat.sent_status(status)
        if interval is not None:
            self.log.info("watchdog enabled", interval=interval)

    def _status_if_free(self) -> str | None:
        """``status_line()`` if the model lock is free within a second, else ``None``: the main
        loop never waits long for a lock a wedged thread may keep."""
        system = self.system
        if system is None or not system.lock.acquire(timeout=1.0):
            return None
        try:
            return self.status_line()
        finally:
            system.lock.release()

    def _model_answers(self, timeout: float) -> str | None:
        """Whether the model lock can be taken within ``timeout`` seconds (a liveness check
        of ``Heartbeat``)."""
        system = self.system
        if system is None:
            return None
        if not system.lock.acquire(timeout=timeout):
            return f"the model lock was not free for {timeout:g} s"
        system.lock.release()
        return None

    def _sockets_answer(self) -> str | None:
        """Whether the socket thread ran what it was handed at the last check (a liveness
        check of ``Heartbeat``); hands it the next probe."""
        sockets = self.sockets
        if sockets is None:
            return None
        if self._probe_pending:
            return "the socket thread did not answer since the last check"

        def answered() -> None:
            self._probe_pending = False

        self._probe_pending = True
        if not sockets.post(answered):
            self._probe_pending = False
            return "the socket thread has stopped"
        return None

    def reload(self) -> dict[str, Any]:
        """SIGHUP and ``daemon-reload``: read the configuration file again (command-line flags
        still win), then the units. Returns the counts of the units loaded."""
        with self._reloading:
            return self._reload_now()

    def _reload_now(self) -> dict[str, Any]:
        self._notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_config(self.config.config_file, self.flags)
        except ConfigError as exc:
            self.log.error("configuration not reloaded", error=str(exc))
        else:
            applied, pending = reload_changes(self.config, new)
            if "log_format" in applied or "log_level" in applied:
                setup_logging(new.log_format, new.log_level)
            if "poll_interval" in applied and isinstance(self.tracker,
                                                         PollTracker | KernelTracker):
                self.tracker.interval = new.poll_interval
            if "unplaced" in applied and self.system is not None:
                self.system.unplaced = new.unplaced
            if "root_max" in applied and self.system is not None:
                self.system.set_root_max(new.root_max)
            if "max_connections_per_uid" in applied:
                for server in (self.userapi, self.control):
                    if server is not None:
                        server.cap.per_uid = new.max_connections_per_uid
            self.config = dataclasses.replace(self.config, **applied)
            if self.slices is not None:
                self.slices.configure(units_search_path(self.config), parse_default_ioasids_max(
                    self.config.default_ioasids_max))
            self.log.info("configuration reloaded", applied=sorted(applied),
                          file=str(new.config_file) if new.config_file else None)
            if pending:
                self.log.warning("settings changed that need a restart", settings=pending)
        counts: dict[str, Any] = {}
        if self.slices is not None:
            counts = self._load_units()
        line = self.status_line()
        self._notify("READY=1", f"STATUS={line}")
        if self.heartbeat is not None:
            self.heartbeat.sent_status(line)
        return counts

    def shutdown(self) -> None:
        """Stop everything that was started, in reverse order; never raises."""
        self._notify("STOPPING=1")
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.userapi is not None:
            steps.append(("user API socket", self.userapi.stop))
        if self.control is not None:
            steps.append(("control socket", self.control.stop))
        if self.sockets is not None:
            steps.append(("socket thread", self.sockets.stop))
        if self.mount is not None:
            steps.append(("unmount", self.mount.unmount))
        stopped = process_clock()
        if self.tracker is not None:
            tracker = self.tracker
            steps.append(("process tracking", tracker.stop))
        if self.slices is not None:
            steps.append(("scope reaper", self.slices.stop))
        if self.releases is not None:
            steps.append(("release agents", self.releases.stop))
        if self.store is not None:
            steps.append(("state", lambda: self._close_store(stopped)))
        steps.extend((lock.role, lock.release) for lock in reversed(self._locks))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                self.log.error("shutdown step failed", step=what, error=str(exc))
                self.exit_code = self.exit_code or 1
        if self.system is not None:
            self.log.info("stopped", exit_code=self.exit_code)

    def _close_store(self, stopped: float) -> None:
        assert self.store is not None
        lock = self.system.lock if self.system is not None else threading.RLock()
        with lock:
            if self.tracker is not None:
                self.store.set_clock(stopped)
            self.store.close()

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """What ``ioasidctl status`` shows (the ``status`` verb, as root asks it)."""
        return verbs.status(self, {}, Peer(os.getpid(), 0, 0))

    def service_status(self) -> dict[str, Any]:
        """The daemon's own parts of ``status`` (``ioasidsd.control.verbs.Service``)."""
        system = self.system
        assert system is not None and self.store is not None and self.tracker is not None
        tracker = self.tracker
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "version": __version__,
            "started": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "uptime": round(time.time() - self.started, 3),
            "tracking": {"mode": tracker.mode, "detail": tracker.detail,
                         "membership": "kernel" if tracker.mode == "kernel" else "daemon",
                         "state": tracker.state, "reason": tracker.reason,
                         "restarts": getattr(tracker, "restarts", 0),
                         "orphans": len(system.orphans), "unplaced": system.unplaced,
                         "follow": self.config.follow, "followed": self._followed_status()},
            "mount": str(self.config.mount),
            "hierarchy": self.config.hierarchy,
            "state": {"path": str(self.store.path), "synchronous": self.config.synchronous,
                      "error": self.store.error, "unfolded": self.store.pending},
            "runtime_dir": str(self.config.runtime_dir),
        }
        if self.userapi is not None:
            status["userapi"] = {"socket": self.userapi.path,
                                 "connections": self.userapi.connections,
                                 "refused": self.userapi.cap.refused}
        if self.control is not None:
            status["control"] = {"connections": self.control.connections,
                                 "refused": self.control.cap.refused,
                                 "max_connections_per_uid": self.control.cap.per_uid}
        if self.releases is not None:
            status["release_agents"] = {"started": self.releases.started,
                                        "failed": self.releases.failed}
        if self.slices is not None:
            slices = self.slices.slices()
            status["units"] = {"slices": len(slices),
                               "failed": [row["unit"] for row in slices
                                          if row["active"] == "failed"]}
        return status

    def _followed_status(self) -> dict[str, str] | None:
        """The host's hierarchy membership follows (where ``classify`` moves processes)."""
        tracker = self.tracker
        if not isinstance(tracker, KernelTracker) or not tracker.hierarchy.follows:
            return None
        followed = tracker.hierarchy
        return {"mount": str(followed.mountpoint),
                "hierarchy": "cgroup2" if followed.name == UNIFIED else f"name={followed.name}"}

    def status_line(self) -> str:
        """One line for ``STATUS=``: ``serving MOUNT: N of M IOASIDs in use, K cgroups``
        (live IOASIDs, the capacity, the cgroups with the root)."""
        system = self.system
        assert system is not None
        with system.lock:
            core = system.core
            cgroups = sum(1 for _ in system.cgroups.cgroups())
            return (f"serving {self.config.mount}: {len(core)} of {core.capacity} IOASIDs in "
                    f"use, {cgroups} cgroups")


def units_search_path(config: Config) -> SearchPath:
    """The unit search path of ``[units]``: the control directories, then the others."""
    return SearchPath(tuple(config.units_control_path), tuple(config.units_path))


DESCRIPTORS_WANTED = 65536
"""The descriptor limit the daemon raises its own soft limit to (at most the hard limit)."""
DESCRIPTORS_KEPT = 256
"""Descriptors kept for root's connections and the daemon's own work (state, journal, FUSE,
/proc reads, release agents), whatever other users hold."""


def descriptor_budget() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``DESCRIPTORS_WANTED`` (as far as the hard limit
    allows) and return how many descriptors connections of users other than root may take:
    the soft limit less ``DESCRIPTORS_KEPT`` (at least 2)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DESCRIPTORS_WANTED if hard == resource.RLIM_INFINITY else \
        min(hard, DESCRIPTORS_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft == resource.RLIM_INFINITY:
        soft = DESCRIPTORS_WANTED
    return max(2, soft - DESCRIPTORS_KEPT)


def _knob_diff(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """The saved semantics in a few words: the profile when that differs (not every knob it
    implies), else the knobs that differ."""
    if saved.get("profile") != wanted.get("profile"):
        return f"profile {saved.get('profile')!r} (now {wanted.get('profile')!r})"
    names = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    shown = ", ".join(f"{k}={saved.get(k)!r} (now {wanted.get(k)!r})" for k in names[:3])
    more = f" and {len(names) - 3} more knobs" if len(names) > 3 else ""
    return f"knobs {shown}{more}"


SAVED_PREFIX = "saved-"
"""The name of a directory of the state directory where ``--reset-state`` moved a state."""


def move_state_aside(state_dir: Path) -> Path | None:
    """Move the state in ``state_dir`` (every entry but the lock and states moved aside
    before) into a new directory ``state_dir/saved-<UTC time>``, and return it; ``None`` when
    there was nothing to move. Nothing is deleted. ``OSError`` if it cannot be moved."""
    if not state_dir.is_dir():
        return None
    entries = [entry for entry in state_dir.iterdir()
               if entry.name != STATE_LOCK and not entry.name.startswith(SAVED_PREFIX)]
    if not entries:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = state_dir / f"{SAVED_PREFIX}{stamp}"
    target.mkdir(mode=0o700)
    for entry in entries:
        entry.rename(target / entry.name)
    return target


def run(config: Config, flags: dict[str, Any] | None = None, *,
        reset_state: bool = False) -> int:
    """Run the daemon in the foreground with logging set up; returns the exit status.
    ``reset_state``: move a saved state aside first (``move_state_aside``)."""
    setup_logging(config.log_format, config.log_level)
    return Daemon(config, flags=flags, reset_state=reset_state).run()

