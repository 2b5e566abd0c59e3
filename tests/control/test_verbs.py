"""The control verbs behind ``ioasidctl tree``, ``top``, ``which``, ``ids`` and ``events``, on a
``System`` with made-up processes: what each shows, what a caller other than root sees, and
the errors of bad arguments."""

from __future__ import annotations

from errno import EINVAL, ENOENT, ENOSPC, EPERM, ESRCH
from typing import Any

import pytest
from userapi.helpers import FakeProcesses

from ioasidsd.clients import Peer
from ioasidsd.control import verbs
from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.store.refusals import RefusalLog
from ioasidsd.store.state import Store
from ioasidsd.system import System

ROOT = Peer(pid=1, uid=0, gid=0)
TENANT = Peer(pid=2, uid=1000, gid=1000)


class Service:
    def __init__(self, system: System, refusals: RefusalLog | None) -> None:
        self.system = system
        self.vtd = None
        self.refusals = refusals

    def service_status(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def world(tmp_path):
    """/a (limit 2) with /a/b and /a/empty, /c; process 10 (root's) in /a/b holding 2
    IOASIDs, process 20 (the tenant's) in /c holding 1; /a/b over its limit 1."""
    procs = FakeProcesses()
    store = Store.open(tmp_path)
    system = System(profile("fixed"), processes=procs, on_change=store.apply)
    store.bind(system)
    for path in ("a", "a/b", "a/empty", "c"):
        system.mkdir(path)
    system.write_max("a", "2")
    system.write_max("a/b", "max")
    system.write_max("c", "5")
    procs.add(10, uid=0)
    procs.add(20, uid=1000)
    system.write_procs("a/b", "10", writer_pid=10, writer_uid=0)
    system.write_procs("c", "20", writer_pid=20, writer_uid=0)
    arg = uapi.ALLOC_REQUEST.pack(16, 0, 1, 1000)
    f10 = system.ioasid_open(10)
    for _ in range(2):
        system.ioasid_ioctl(f10, uapi.IOASID_REQUEST_ALLOC, arg, uid=0)
    with pytest.raises(IoasidError):  # /a is full: a refusal of uid 0
        system.ioasid_ioctl(f10, uapi.IOASID_REQUEST_ALLOC, arg, uid=0)
    f20 = system.ioasid_open(20)
    system.ioasid_ioctl(f20, uapi.IOASID_REQUEST_ALLOC, arg, uid=1000)
    system.write_max("c", "1")
    with pytest.raises(IoasidError):  # a refusal of uid 1000
        system.ioasid_ioctl(f20, uapi.IOASID_REQUEST_ALLOC, arg, uid=1000)
    system.write_max("a/b", "1")  # 2 charged: over its limit now
    yield Service(system, store.refusals)
    store.close()


def test_tree_hides_cgroups_without_processes_and_marks_those_over_their_limit(world) -> None:
    shown = verbs.tree(world, {}, TENANT)
    assert shown["schema"] == 1
    assert [c["path"] for c in shown["cgroups"]] == ["/", "/a", "/a/b", "/c"]
    b = shown["cgroups"][2]
    assert (b["current"], b["max"], b["over"]) == (2, 1, True)
    assert [p["pid"] for p in b["procs"]] == [10]  # processes are shown to everyone
    assert shown["cgroups"][1]["over"] is False
    every = verbs.tree(world, {"path": "a", "all": True}, ROOT)
    assert [c["path"] for c in every["cgroups"]] == ["/a", "/a/b", "/a/empty"]


def test_tree_lists_the_processes_cgroup_procs_lists(world, monkeypatch) -> None:
    """Not only the tracked ones: the root lists every process in no child cgroup; a tracked
    member that has exited (its exit not reported yet) is not listed."""
    source = world.system.processes
    monkeypatch.setattr(source, "all_pids", lambda: sorted(source.live))
    source.add(30)  # never tracked: in the root
    shown = {c["path"]: [p["pid"] for p in c["procs"]]
             for c in verbs.tree(world, {"all": True}, ROOT)["cgroups"]}
    assert shown["/"] == [30] and shown["/a/b"] == [10] and shown["/c"] == [20]
    for cg in world.system.cgroups.cgroups():
        assert shown[cg.path] == world.system.member_pids(cg)
    del source.live[10]  # exited; the tracker has not said so yet
    shown = {c["path"]: [p["pid"] for p in c["procs"]]
             for c in verbs.tree(world, {}, ROOT)["cgroups"]}
    assert "/a/b" not in shown and shown["/c"] == [20]


def test_top_counts_processes_below_and_stops_at_the_depth(world) -> None:
    shown = verbs.top(world, {"depth": 1}, ROOT)
    assert shown["columns"] == {"path": ["/", "/a", "/c"], "procs": [2, 1, 1],
                                "current": [3, 2, 1], "max": [None, 2, 1],
                                "peak": [None, 2, 1], "events": [0, 1, 1]}
    deep = verbs.top(world, {}, ROOT)["columns"]
    assert deep["path"] == ["/", "/a", "/a/b", "/a/empty", "/c"]
    # /a/b is over its limit (lowered below what it holds)
    assert [deep[k][2] for k in verbs.TOP_COLUMNS] == ["/a/b", 1, 2, 1, 2, 0]
    only = verbs.top(world, {"path": "/a", "depth": 0}, ROOT)["columns"]
    assert only["path"] == ["/a"] and only["procs"] == [1]  # counted below the depth too


def test_which_names_the_cgroup_of_each_process(world) -> None:
    world.system.processes.add(30)  # not tracked: in the root
    answer = verbs.which(world, {"pids": [20, 10, 30]}, TENANT)["processes"]
    assert answer == [{"pid": 20, "cgroup": "/c"}, {"pid": 10, "cgroup": "/a/b"},
                      {"pid": 30, "cgroup": "/"}]
    with pytest.raises(IoasidError) as info:
        verbs.which(world, {"pids": [10, 99]}, ROOT)
    assert info.value.errno == ESRCH and "99" in str(info.value)


def test_ids_shows_root_everything_and_a_user_its_own(world) -> None:
    every = verbs.ids(world, {}, ROOT)
    assert [(r["owner"], r["cgroup"]) for r in every["ids"]] == [
        (10, "/a/b"), (10, "/a/b"), (20, "/c")]
    assert every["filtered"] is False
    mine = verbs.ids(world, {}, TENANT)
    assert [r["owner"] for r in mine["ids"]] == [20] and mine["filtered"] is True
    assert [r["owner"] for r in verbs.ids(world, {"path": "/a"}, ROOT)["ids"]] == [10, 10]
    assert [r["owner"] for r in verbs.ids(world, {"pid": 20}, ROOT)["ids"]] == [20]


def test_events_shows_root_every_refusal_and_a_user_its_own(world) -> None:
    every = verbs.events(world, {}, ROOT)
    assert [(e["pid"], e["level"], e["errno"]) for e in every["events"]] == [
        (10, "/a", "EAGAIN"), (20, "/c", "EAGAIN")]
    assert every["last_seq"] == 2
    mine = verbs.events(world, {}, TENANT)["events"]
    assert [e["pid"] for e in mine] == [20]
    assert verbs.events(world, {"after": 1}, ROOT)["events"][0]["pid"] == 20
    assert [e["pid"] for e in verbs.events(world, {"path": "/a"}, ROOT)["events"]] == [10]
    assert verbs.events(world, {"path": "/a/empty"}, ROOT)["events"] == []


@pytest.mark.parametrize(("verb", "request_", "code"), [
    (verbs.tree, {"path": "/nope"}, ENOENT),
    (verbs.tree, {"path": "/a/../c"}, EINVAL),
    (verbs.tree, {"path": 7}, EINVAL),
    (verbs.top, {"depth": -1}, EINVAL),
    (verbs.top, {"depth": True}, EINVAL),
    (verbs.which, {"pids": []}, EINVAL),
    (verbs.which, {"pids": ["1"]}, EINVAL),
    (verbs.ids, {"path": "/nope"}, ENOENT),
    (verbs.ids, {"pid": 0}, EINVAL),
    (verbs.events, {"path": "/nope"}, ENOENT),
    (verbs.events, {"after": -1}, EINVAL),
    (verbs.events, {"limit": 0}, EINVAL),
    (verbs.rehearse, {"steps": "/a"}, EINVAL),
    (verbs.rehearse, {"steps": [["/a", "ioasids.max"]]}, EINVAL),
    (verbs.rehearse, {"steps": [["/a/../c", None, ""]]}, EINVAL),
    (verbs.rehearse, {"steps": [["/a/b", "ioasids.max", "3"]]}, ENOSPC),
])
def test_a_bad_argument_is_an_errno_and_changes_nothing(world, verb, request_, code) -> None:
    before = verbs.top(world, {}, ROOT)
    with pytest.raises(IoasidError) as info:
        verb(world, request_, ROOT)
    assert info.value.errno == code
    assert verbs.top(world, {}, ROOT) == before


def test_rehearse_is_roots_alone_and_changes_nothing(world) -> None:
    """A rehearsal copies the whole model: a user other than root may not make the daemon do
    that (``EPERM``); root's is answered and changes nothing."""
    steps = {"steps": [["/new", None, ""], ["/new", "ioasids.max", "1"]]}
    with pytest.raises(IoasidError) as info:
        verbs.rehearse(world, steps, TENANT)
    assert info.value.errno == EPERM
    before = verbs.top(world, {}, ROOT)
    assert verbs.rehearse(world, steps, ROOT) == {"schema": 1}
    assert verbs.top(world, {}, ROOT) == before


def test_every_new_verb_is_served() -> None:
    assert {"tree", "top", "which", "ids", "events", "slice_list", "slice_status",
            "set_property", "run", "daemon_reload", "rehearse"} <= set(verbs.VERBS)
