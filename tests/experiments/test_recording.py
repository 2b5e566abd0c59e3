"""Recording a live ``System``'s traffic as a trace (``ioasidsd.experiments.recording``) on
made-up processes and a made-up clock: the rows each request makes, what is left out, pid reuse,
the recording's own end, and the rows read back and replayed by a policy."""

from __future__ import annotations

import csv
from errno import EBUSY, EPERM, ESRCH
from pathlib import Path
from typing import Any

import pytest
from userapi.helpers import FakeProcesses

from ioasidsd.clients import Peer
from ioasidsd.control import verbs
from ioasidsd.experiments import load_policy, run_policies
from ioasidsd.experiments.recording import LEASE_S, PID_MAX_LIMIT, Recordings
from ioasidsd.experiments.trace import read_trace
from ioasidsd.host import ProcessFacts
from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.system import System

from .helpers import write_policy

ONE = uapi.ALLOC_REQUEST.pack(16, 0, 1, 1000)


def batch(count: int) -> bytes:
    return uapi.ALLOC_BATCH.pack(20, 0, 1, 1000, count)


class World:
    """A ``System`` with /a (limit 3) and /b, a clock the test moves, and the recording hooked
    on the change feed as the daemon hooks it."""

    def __init__(self) -> None:
        self.time = 100.0
        self.procs = FakeProcesses()
        self.system = System(profile("fixed"), processes=self.procs, on_change=self.feed)
        self.recordings = Recordings(self.system, lambda: self.time)
        for path in ("a", "b"):
            self.system.mkdir(path)
        self.system.write_max("a", "3")
        self.system.write_max("b", "max")

    def feed(self, change: Any) -> None:
        recordings = getattr(self, "recordings", None)
        if recordings is not None and recordings.active is not None:
            recordings.active.note(change)

    def process(self, pid: int, cgroup: str) -> None:
        self.procs.add(pid)
        self.system.write_procs(cgroup, str(pid), writer_pid=pid, writer_uid=0)

    # the verb's calls take the lock, as the control verb does
    def start(self) -> str:
        with self.system.lock:
            return self.recordings.start()

    def stop(self, token: str) -> tuple[list[list[Any]], str | None]:
        with self.system.lock:
            return self.recordings.stop(token)


def test_requests_become_rows_and_other_processes_are_left_out() -> None:
    w = World()
    system = w.system
    w.process(10, "a")
    f10 = system.ioasid_open(10)
    system.ioasid_ioctl(f10, uapi.IOASID_REQUEST_ALLOC, ONE)  # held before the recording
    w.process(30, "b")  # never asks for an IOASID
    token = w.start()
    w.time = 101.0
    w.process(20, "a")
    f20 = system.ioasid_open(20)
    system.ioasid_ioctl(f20, uapi.IOASID_REQUEST_ALLOC_BATCH, batch(2))  # /a is full: 3/3
    w.time = 102.0
    with pytest.raises(IoasidError):
        system.ioasid_ioctl(f20, uapi.IOASID_REQUEST_ALLOC, ONE)  # refused: still demand
    w.time = 103.5
    held = [d.id for d in system.core.ioasids() if d.set.token.pid == 20]
    system.ioasid_ioctl(f20, uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(held[0]))
    w.time = 104.0
    system.write_procs("b", "20", writer_pid=20, writer_uid=0)
    system.write_procs("a", "30", writer_pid=30, writer_uid=0)
    w.time = 105.0
    system.exit(20)
    system.exit(30)
    w.time = 106.0
    system.ioasid_release(f10)  # the last close while 10 lives: a free of what it held
    rows, ended = w.stop(token)
    assert ended is None
    assert rows == [
        [0.0, "spawn", 10, "/a", ""], [0.0, "alloc", 10, "", 1],
        [1.0, "spawn", 20, "/a", ""], [1.0, "alloc", 20, "", 2],
        [2.0, "alloc", 20, "", 1],
        [3.5, "free", 20, "", 1],
        [4.0, "move", 20, "/b", ""],
        [5.0, "exit", 20, "", ""],
        [6.0, "free", 10, "", 1],
    ]
    assert w.recordings.active is None


def test_a_reused_pid_gets_a_number_of_its_own_and_the_trace_reads_back(tmp_path: Path,
                                                                         ) -> None:
    w = World()
    token = w.start()
    for start in (5.0, 6.0):  # pid 40 twice: two processes
        w.procs.live[40] = ProcessFacts(40, start, (0, 0, 0), 40)
        w.system.write_procs("a", "40", writer_pid=40, writer_uid=0)
        f = w.system.ioasid_open(40)
        w.system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, ONE)
        w.time += 1
        w.system.exit(40)
        w.time += 1
    rows, _ = w.stop(token)
    pids = [row[2] for row in rows if row[1] == "spawn"]
    assert pids == [40, PID_MAX_LIMIT + 1]
    path = tmp_path / "day.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("time", "op", "pid", "cgroup", "count"))
        writer.writerows(rows)
    ops = read_trace(str(path))
    assert [(op.op, op.pid) for op in ops] == [
        ("spawn", 40), ("alloc", 40), ("exit", 40),
        ("spawn", PID_MAX_LIMIT + 1), ("alloc", PID_MAX_LIMIT + 1), ("exit", PID_MAX_LIMIT + 1)]


def test_replaying_the_recording_counts_what_the_system_granted_and_refused(
        tmp_path: Path) -> None:
    w = World()
    token = w.start()
    granted = refused = 0
    for i, pid in enumerate(range(50, 56)):
        w.time = 100.0 + i
        w.process(pid, "a")
        f = w.system.ioasid_open(pid)
        try:
            w.system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, ONE)
            granted += 1
        except IoasidError:
            refused += 1
        if i % 2:
            w.system.exit(pid - 1)
    rows, _ = w.stop(token)
    assert (granted, refused) == (5, 1)  # the sixth finds /a full (3/3)
    with open(tmp_path / "day.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("time", "op", "pid", "cgroup", "count"))
        writer.writerows(rows)
    results = {}
    for limit in (3, 1):
        policy = write_policy(tmp_path / f"replay-{limit}.toml", {
            "name": "replay", "cgroup": [{"path": "/a", "max": limit}],
            "workload": [{"name": "day", "cgroup": "/a",
                          "arrival": {"process": "trace", "file": "day.csv"}}],
            "run": {"duration": 10.0}})
        (result,), _ = run_policies([load_policy(str(policy))], workers=1)
        day = result["workloads"]["day"]
        results[limit] = (day["offered"], day["admitted"], day["refused"], day["refused_by"])
    assert results[3] == (6, granted, refused, {"/a": refused})
    # under a limit of 1 only every other process (after the one before exited) gets one
    assert results[1] == (6, 3, 3, {"/a": 3})


def test_one_recording_at_a_time_and_its_own_end() -> None:
    w = World()
    token = w.start()
    with pytest.raises(IoasidError) as busy:
        w.start()
    assert busy.value.errno == EBUSY
    with pytest.raises(IoasidError) as wrong, w.system.lock:
        w.recordings.take("0" * 32)
    assert wrong.value.errno == ESRCH
    w.time += LEASE_S + 1  # nobody reads: the next change ends it
    w.process(60, "a")
    f = w.system.ioasid_open(60)
    w.system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, ONE)
    with w.system.lock:
        rows, ended = w.recordings.take(token)
    assert rows == [] and ended is not None and "nobody read" in ended
    second = w.start()  # an ended recording does not hold the place
    assert second != token
    with pytest.raises(IoasidError) as gone, w.system.lock:
        w.recordings.stop(token)
    assert gone.value.errno == ESRCH
    w.stop(second)


class Service:
    def __init__(self, world: World) -> None:
        self.system = world.system
        self.vtd = None
        self.refusals = None
        self.recordings = world.recordings

    def service_status(self) -> dict[str, Any]:
        return {}


def test_the_trace_verb_is_root_only_and_checks_its_arguments() -> None:
    w = World()
    service = Service(w)
    tenant = Peer(pid=2, uid=1000, gid=1000)
    root = Peer(pid=1, uid=0, gid=0)
    with pytest.raises(IoasidError) as refused:
        verbs.trace(service, {"action": "start"}, tenant)
    assert refused.value.errno == EPERM and w.recordings.active is None
    for request in ({}, {"action": "pause"}, {"action": "read", "token": 5}):
        with pytest.raises(IoasidError) as bad:
            verbs.trace(service, request, root)
        assert bad.value.name == "EINVAL"
    token = verbs.trace(service, {"action": "start"}, root)["token"]
    w.process(70, "a")
    f = w.system.ioasid_open(70)
    w.system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, ONE)
    with pytest.raises(IoasidError) as other:
        verbs.trace(service, {"action": "read", "token": token}, tenant)
    assert other.value.errno == EPERM
    read = verbs.trace(service, {"action": "read", "token": token}, root)
    assert [row[1] for row in read["rows"]] == ["spawn", "alloc"] and read["ended"] is None
    stop = verbs.trace(service, {"action": "stop", "token": token}, root)
    assert stop == {"schema": verbs.SCHEMA, "rows": [], "ended": None}
    assert "trace" in verbs.VERBS


def test_a_bound_ioasid_freed_is_recorded_when_the_vtd_cleanup_releases_it() -> None:
    from ioasidsd.experiments import parse_policy
    from ioasidsd.experiments.engine import build_system, devid

    policy = parse_policy({
        "name": "bound", "cgroup": [{"path": "/a", "max": 4}],
        "workload": [{"name": "w", "cgroup": "/a", "arrival": {"process": "fixed",
                                                               "interval": 1.0},
                      "lifetime": {"dist": "fixed", "value": 1.0},
                      "bind": {"device": "0000:03:00.0"}}],
        "run": {"duration": 1.0}}, "test")
    clock = [0.0]
    built = build_system(policy)
    system = built.system
    recordings = Recordings(system, lambda: clock[0])
    system.on_change = lambda change: recordings.active and recordings.active.note(change)
    with system.lock:
        token = recordings.start()
    pid = built.processes.spawn(0.0)
    system.fork(1, pid, 0.0, into=built.cgroups["/a"])
    f = system.ioasid_open(pid)
    hpasid, _ = system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, ONE)
    system.ioasid_ioctl(f, uapi.IOASID_BIND_GPASID, uapi.BIND_GPASID.pack(
        32, 0, hpasid, 0, devid("0000:03:00.0"), 0, 0))
    clock[0] = 2.0
    system.ioasid_ioctl(f, uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(hpasid))
    assert hpasid not in system.core  # the cleanup ran before the free returned
    with system.lock:
        rows, _ = recordings.stop(token)
    assert rows == [[0.0, "spawn", pid, "/a", ""], [0.0, "alloc", pid, "", 1],
                    [2.0, "free", pid, "", 1]]
