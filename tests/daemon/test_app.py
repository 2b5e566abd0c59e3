"""The daemon in this process (``Daemon.start``/``shutdown``, a real mount), where a test needs
to reach into it: faces' exit hooks, a connector that cannot be opened, a prepared state."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading

import pytest
import structlog

from ioasidsd.daemon import procs
from ioasidsd.daemon.app import Daemon
from ioasidsd.daemon.config import load_config
from ioasidsd.model import NOTIFY_OK, IoasidSetType, NotifierBlock, Work, WorkMode
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.snapshot import dump, load
from ioasidsd.store.state import Store
from ioasidsd.system import System

from .daemons import drop_membership, pids, wait_until


def config_for(tmp_path, **settings):
    return load_config(None, {"mount": str(tmp_path / "mnt"), "state_dir": str(tmp_path / "s"),
                              "runtime_dir": str(tmp_path / "r"), "units_path": [],
                              "units_control_path": [str(tmp_path / "uc"),
                                                     str(tmp_path / "ur")], **settings})


def close_dev_ioasid(system):
    """What the user API's exit hook does: free the exiting process's IOASIDs and set."""
    def hook(proc):
        s = system.core.find_mm_set_locked(proc)
        if s is not None:
            system.core.free_all_in_set(s, task=proc)
            system.core.set_free(s, when_empty=True)
    system.cgroups.exit_hooks.append(hook)


@pytest.fixture
def started(tmp_path, needs_fuse):
    daemons = []

    def start(**kwargs):
        daemon = Daemon(config_for(tmp_path, **kwargs.pop("settings", {})), **kwargs)
        daemons.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        daemon.shutdown()
    drop_membership(tmp_path / "s")


def test_an_exit_releases_the_ioasids_through_the_faces_hooks(tmp_path, started, forkers):
    daemon = started(attach=close_dev_ioasid)
    system = daemon.system
    mnt = tmp_path / "mnt"
    (mnt / "a").mkdir()
    (mnt / "a" / "ioasids.max").write_text("10")
    proc = forkers()
    (mnt / "a" / "cgroup.procs").write_text(str(proc.pid))
    with system.lock:  # what the user API does for an open and three ALLOCs
        owner = system.cgroups.processes[proc.pid]
        s = system.core.set_alloc(owner.mm, 0, IoasidSetType.MM)
        ids = [system.core.alloc(s, 1, 100, task=owner) for _ in range(3)]
        system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(owner,)))
    assert (mnt / "a" / "ioasids.current").read_text() == "3\n"
    assert saved_state(tmp_path / "s")["ioasids"] != []
    proc.exit()
    def released():
        with system.lock:  # the exit, its hooks and its saving happen under the lock
            return len(system.core) == 0

    wait_until(released, "the IOASIDs released")
    # the mount hears of it once the exit's handler has let go of the lock (its page is
    # dropped then, before the handler returns): the file follows within that moment
    wait_until(lambda: (mnt / "a" / "ioasids.current").read_text() == "0\n",
               "ioasids.current showing the release")
    after = saved_state(tmp_path / "s")
    assert after["ioasids"] == [] and after["processes"] == []
    assert [s["type"] for s in after["sets"]] == [IoasidSetType.NULL]  # only VT-d's host set


def test_the_daemon_runs_the_models_deferred_work_on_a_worker_thread(tmp_path, needs_fuse):
    """The model runs deferred work as the outermost call returns; the daemon opts into the
    worker thread, as the kernel's ``ioasid_wq``: a FREE listener's work (the VT-d cleanup's
    path) runs on that thread, after the ``free`` that queued it has returned."""
    daemon = Daemon(config_for(tmp_path))
    try:
        daemon.start()
        _free_with_a_deferred_cleanup(daemon)
    finally:
        daemon.shutdown()
        if daemon.system is not None:
            daemon.system.core.wq.stop()  # the process would end here: no thread left behind


def _free_with_a_deferred_cleanup(daemon):
    core = daemon.system.core
    assert core.wq.mode is WorkMode.THREAD and daemon.vtd.core is core
    running, release = threading.Event(), threading.Event()
    ran_on: list[threading.Thread] = []

    def cleanup():
        ran_on.append(threading.current_thread())
        running.set()
        if not release.wait(10):
            raise TimeoutError("never released")
        core.put(None, ioasid)

    work = Work(cleanup, "probe-cleanup")

    def on_free(nb, event, args):
        if args.id == ioasid:
            core.queue_work(work)
        return NOTIFY_OK

    listener = NotifierBlock(on_free, name="probe")
    core.register_notifier(None, listener)
    try:
        probe_set = core.set_alloc(None, 1, IoasidSetType.NULL)
        ioasid = core.alloc(probe_set, 1, 10)
        core.get(None, ioasid)
        core.free(probe_set, ioasid)  # returns with the cleanup queued, not run
        assert running.wait(10)
        assert ioasid in core and len(core.wq) == 1  # still running, on the worker
        release.set()
        assert core.wq.flush(10)
        assert ran_on == [core.wq.worker] and ran_on[0] is not threading.current_thread()
        assert ioasid not in core and core.wq.errors == []
    finally:
        release.set()
        core.unregister_notifier(None, listener)


def test_without_the_connector_auto_polls_and_says_so(tmp_path, started, monkeypatch):
    def refuse(self):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(procs.ConnectorTracker, "open", refuse)
    monkeypatch.setattr(procs.KernelTracker, "open", refuse)
    with structlog.testing.capture_logs() as logs:
        daemon = started(settings={"poll_interval": 0.1})
    tracking = daemon.status()["tracking"]
    assert tracking["mode"] == "poll" and "Operation not permitted" in tracking["detail"]
    fallback = [e for e in logs if e["event"] == "process tracking falls back to polling"]
    assert fallback and fallback[0]["log_level"] == "warning"


def test_without_a_named_hierarchy_auto_uses_the_connector_and_says_so(tmp_path, started,
                                                                      monkeypatch):
    def refuse(self):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(procs.KernelTracker, "open", refuse)
    with structlog.testing.capture_logs() as logs:
        daemon = started()
    tracking = daemon.status()["tracking"]
    assert tracking["mode"] == "connector" and tracking["membership"] == "daemon"
    assert "no named cgroup-v1 hierarchy: Operation not permitted" in tracking["detail"]
    assert daemon.system.kernel is None
    fallback = [e for e in logs if e["event"].startswith("membership is not kept by the kernel")]
    assert fallback and fallback[0]["log_level"] == "warning"


def test_kernel_only_is_refused_when_unavailable(tmp_path, started, monkeypatch):
    def refuse(self):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(procs.KernelTracker, "open", refuse)
    with pytest.raises(Exception, match="tracking = kernel, but a named cgroup-v1 hierarchy"):
        started(settings={"tracking": "kernel"})


def test_connector_only_is_refused_when_unavailable(tmp_path, started, monkeypatch):
    def refuse(self):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(procs.ConnectorTracker, "open", refuse)
    with pytest.raises(Exception, match="tracking = connector"):
        started(settings={"tracking": "connector"})


def test_a_saved_state_with_ioasids_comes_back_whole(tmp_path, needs_fuse, daemons):
    """A state written in this process (as the user API would leave it) with a live owner in
    /a and an owner that died in /b: the daemon releases the dead one as its exit would (its
    membership, and through the user API's exit hook its /dev/ioasid set, IOASIDs and charges),
    keeps the live one's set and IOASIDs, and a kill -9 and restart change nothing more."""
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        store = Store.open(tmp_path / "state")
        system = System(on_change=store.apply)
        store.bind(system)
        for path, pid in (("/a", alive.pid), ("/b", None)):
            system.mkdir(path)
            system.write_max(path, "50")
            if pid is None:  # a process that has exited by the time the daemon starts
                owner = system.cgroups.track(gone.pid, 1.0, system.cgroups.lookup(path))
            else:
                owner = system.write_procs(path, str(pid), writer_pid=1, writer_uid=0)
            with system.lock:
                s = system.core.set_alloc(owner.mm, 0, IoasidSetType.MM)
                ids = [system.core.alloc(s, 1, 1000, task=owner) for _ in range(20)]
                system.core.attach_spid(ids[0], 77)
                system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(owner,)))
        store.close()

        d = daemons().start()
        status = d.status()
        # the MM set and the VT-d host set, made for this state which had none
        assert (status["processes"], status["sets"], status["ioasids"]) == (1, 2, 20)
        assert pids(d.mount / "a" / "cgroup.procs") == [alive.pid]
        assert pids(d.mount / "b" / "cgroup.procs") == []
        assert (d.mount / "a" / "ioasids.current").read_text() == "20\n"
        assert (d.mount / "b" / "ioasids.current").read_text() == "0\n"
        first = saved_state(tmp_path / "state")
        d.kill9()
        d.start()
        assert saved_state(tmp_path / "state") == first
        assert d.status()["ioasids"] == 20
        assert d.stop() == 0
        assert saved_state(tmp_path / "state") == first
    finally:
        alive.kill()
        alive.wait()


def saved_state(state_dir):
    store = Store.open(state_dir)
    try:
        snap = store.load()
    finally:
        store.close()
    copy = System(processes=None)
    load(snap, copy.core)
    return dump(copy.core)


def test_no_mount_point_is_made_inside_a_kernel_cgroup_hierarchy(tmp_path):
    from ioasidsd.daemon.app import StartError
    from ioasidsd.host import filesystem_of

    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        cgroupfs = [line.split()[4] for line in info
                    if line.partition(" - ")[2].split()[:1] in (["cgroup"], ["cgroup2"])]
    if not cgroupfs:
        pytest.skip("no kernel cgroup hierarchy is mounted here")
    assert filesystem_of(cgroupfs[0]) in ("cgroup", "cgroup2")
    target = f"{cgroupfs[0]}/ioasids-test-{tmp_path.name}"
    daemon = Daemon(config_for(tmp_path, mount=target))
    try:
        with pytest.raises(StartError, match="would create a kernel cgroup"):
            daemon.start()
    finally:
        daemon.shutdown()
    import os

    assert not os.path.exists(target)


def test_a_state_saved_under_the_flat_rule_loads_and_says_what_it_over_reserves(
        tmp_path, started):
    """A state where /tenant/sub's limit was also reserved from the pool (as before nested
    limits were carved out of their ancestor's): it loads, the start-up log and ``status``
    name the over-reservation, and rewriting the limit returns it to the pool."""
    import json
    import sqlite3

    from ioasidsd.cli.render import format_status

    daemon = started()
    mnt = tmp_path / "mnt"
    (mnt / "tenant").mkdir()
    (mnt / "tenant" / "ioasids.max").write_text("100")
    (mnt / "tenant" / "sub").mkdir()
    (mnt / "tenant" / "sub" / "ioasids.max").write_text("50")
    available = daemon.status()["available"]
    assert daemon.status()["over_reserved"] == []
    daemon.shutdown()
    with sqlite3.connect(tmp_path / "s" / "state.sqlite") as db:  # what the flat rule saved
        db.execute("UPDATE cgroups SET reserved = 50 WHERE name = 'sub'")
        core = json.loads(db.execute("SELECT value FROM meta WHERE key = 'core'").fetchone()[0])
        core["capacity_avail"] -= 50
        db.execute("UPDATE meta SET value = ? WHERE key = 'core'", (json.dumps(core),))
    with structlog.testing.capture_logs() as logs:
        daemon = started()
    status = daemon.status()
    assert status["available"] == available - 50
    assert status["over_reserved"] == [{"cgroup": "/tenant/sub", "amount": 50}]
    assert "over-reserved  /tenant/sub 50 " in format_status(status)
    warned = [e for e in logs if e["event"].startswith("a limit holds capacity beyond")]
    assert warned and warned[0]["cgroup"] == "/tenant/sub" and warned[0]["amount"] == 50
    (mnt / "tenant" / "sub" / "ioasids.max").write_text("40")
    status = daemon.status()
    assert status["over_reserved"] == [] and status["available"] == available


def test_root_max_holds_a_process_in_the_root_cgroup(tmp_path, started):
    """``[limits] root_max``: a process in the root cgroup (this one) gets that many IOASIDs
    over the socket and no more, all or nothing for a batch; a process in a child cgroup is not
    counted; ``status`` shows the limit and what the root's processes hold."""
    from ioasidsd.cli.render import format_status
    from ioasidsd.userapi.client import IoasidClient

    daemon = started(settings={"root_max": 3})
    assert daemon.status()["root"] == {"max": 3, "current": 0}
    with IoasidClient.open(str(tmp_path / "r")) as dev:
        first = dev.alloc_batch(2)
        dev.alloc()
        with pytest.raises(OSError) as info:
            dev.alloc_batch(2)
        assert info.value.errno == errno.EAGAIN
        with pytest.raises(OSError) as info:
            dev.alloc()
        assert info.value.errno == errno.EAGAIN
        status = daemon.status()
        assert status["root"] == {"max": 3, "current": 3} and status["ioasids"] == 3
        assert "root max   3, 3 held by processes in the root cgroup" in format_status(status)
        dev.free(first[0])
        dev.alloc()
    assert daemon.status()["root"] == {"max": 3, "current": 0}  # freed at close
    daemon.shutdown()
    default = started()
    assert default.status()["root"] == {"max": None, "current": None}
    assert "root max   max (" in format_status(default.status())


def test_a_wedged_daemon_withholds_the_watchdog(tmp_path, started, monkeypatch):
    """The daemon's own liveness checks: while its socket thread is stuck, or another thread
    keeps the model lock, no WATCHDOG=1 goes out; once they answer again, it does."""
    import socket

    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = started()
    assert manager.recv(4096).startswith(b"READY=1\n")
    beat = daemon.heartbeat
    assert beat is not None and beat.interval == 2.0
    manager.setblocking(False)

    def tick() -> bytes | None:
        beat.next_ping = 0.0  # due now
        beat.tick()
        try:
            return manager.recv(4096)
        except BlockingIOError:
            return None

    assert tick() == b"WATCHDOG=1"
    stuck = threading.Event()
    assert daemon.sockets.post(stuck.wait)  # the socket thread stops answering
    try:
        tick()  # hands it a probe it cannot run
        assert tick() is None
        assert beat.failing is not None and "socket thread" in beat.failing
    finally:
        stuck.set()
    wait_until(lambda: tick() == b"WATCHDOG=1", "the pings resumed")

    taken, leave = threading.Event(), threading.Event()

    def hold_the_model() -> None:
        with daemon.system.lock:
            taken.set()
            leave.wait()

    holder = threading.Thread(target=hold_the_model)
    holder.start()
    taken.wait()
    try:
        assert tick() is None
        assert "model lock" in beat.failing
    finally:
        leave.set()
        holder.join()
    assert tick() == b"WATCHDOG=1"
    manager.close()
