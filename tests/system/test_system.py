"""The System's /dev/ioasid methods: what they change and what they report to on_change."""

from __future__ import annotations

import struct
from errno import EAGAIN, EPERM, ESRCH

import pytest
from userapi.helpers import Changes, FakeProcesses

from ioasidsd.host import ProcessFacts, ProcStat
from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.snapshot import dump, load
from ioasidsd.system import System


@pytest.fixture
def system() -> tuple[System, FakeProcesses, Changes]:
    procs = FakeProcesses()
    changes = Changes()
    return System(profile("fixed"), processes=procs, on_change=changes), procs, changes


def alloc_arg(lo: int = 1, hi: int = 100) -> bytes:
    return uapi.ALLOC_REQUEST.pack(16, 0, lo, hi)


def test_open_reports_the_set_and_process(system) -> None:
    s, procs, changes = system
    procs.add(10)
    f = s.ioasid_open(10)
    change = changes.log[-1]
    assert change.kind == "set" and change.sets == (f.user.ioasid_set.id,)
    assert change.processes == (f.opener,) and change.processes[0] is f.opener
    assert f.opener.pid == 10
    assert s.cgroups.process(10) is f.opener  # tracked (in the root) from now on


def test_the_first_open_of_an_untracked_process_reads_it_once(monkeypatch, system) -> None:
    """The lookup of the opener and its placing share one reading of its facts
    (``ProcessSource.identity`` hands them on, ``place`` keeps them); it is tracked after."""
    s, procs, _changes = system
    procs.add(10)
    reads: list[int] = []
    facts = procs.facts
    monkeypatch.setattr(procs, "facts", lambda pid: reads.append(pid) or facts(pid))
    first = s.ioasid_open(10)
    assert reads == [10]
    assert s.cgroups.process(10) is first.opener


def test_open_of_unknown_pid_esrch(system) -> None:
    s, _procs, changes = system
    with pytest.raises(IoasidError) as info:
        s.ioasid_open(4242)
    assert info.value.errno == ESRCH and changes.log == []


def test_alloc_and_refusal_report_ids_and_cgroups(system) -> None:
    s, procs, changes = system
    procs.add(10)
    s.mkdir("a")
    s.mkdir("a/b")
    s.write_max("a", "5")
    s.write_max("a/b", "1")
    s.write_procs("a/b", "10", writer_pid=10, writer_uid=0)
    f = s.ioasid_open(10)
    ret, _ = s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())
    change = changes.log[-1]
    b, a = s.cgroups.lookup("a/b"), s.cgroups.lookup("a")
    assert change.kind == "ioasid" and change.ids == (ret,) and set(change.cgroups) == {a, b}
    n = len(changes.log)
    with pytest.raises(IoasidError) as info:
        s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())
    assert info.value.errno == EAGAIN
    assert len(changes.log) == n + 1  # the refusal changed the events counters
    assert b.events == 1 and set(changes.log[-1].cgroups) == {a, b}


def test_read_only_ioctls_report_nothing(system) -> None:
    s, procs, changes = system
    procs.add(10)
    f = s.ioasid_open(10)
    n = len(changes.log)
    assert s.ioasid_ioctl(f, uapi.IOASID_GET_API_VERSION, b"") == (0, b"")
    s.ioasid_ioctl(f, uapi.IOASID_GET_INFO, uapi.INFO.pack(12, 0, 0))
    assert len(changes.log) == n


def test_ioctl_by_another_process(system) -> None:
    s, procs, _changes = system
    procs.add(10)
    procs.add(11)
    f = s.ioasid_open(10)
    with pytest.raises(IoasidError) as info:
        s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg(), pid=11)
    assert info.value.errno == EPERM
    assert s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg(), pid=10)[0] == 1


def test_release_and_exit_paths(system) -> None:
    s, procs, changes = system
    procs.add(10)
    procs.add(11)
    f10, f11 = s.ioasid_open(10), s.ioasid_open(11)
    set10 = f10.user.ioasid_set
    id10 = s.ioasid_ioctl(f10, uapi.IOASID_REQUEST_ALLOC, alloc_arg())[0]
    id11 = s.ioasid_ioctl(f11, uapi.IOASID_REQUEST_ALLOC, alloc_arg())[0]
    s.ioasid_release(f10)
    assert id10 not in s.core and s.cgroups.process(10) is not None
    assert changes.log[-1].kind == "set" and changes.log[-1].sets == (set10.id,)
    assert not s.core.set_valid(set10)  # the store deletes its row and its IOASIDs' rows
    s.ioasid_release(f11, exited=True)  # the connection ended because 11 is exiting
    assert id11 not in s.core and s.cgroups.process(11) is None
    assert [c.kind for c in changes.log[-2:]] == ["ioasid", "exit"]
    n = len(changes.log)
    s.ioasid_release(f11)
    s.exit(11)
    assert len(changes.log) == n  # released once


def test_tracker_exit_closes_the_file(system) -> None:
    s, procs, _changes = system
    procs.add(10)
    f = s.ioasid_open(10)
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())
    s.exit(10)
    assert f.released and len(s.core) == 0
    s.ioasid_release(f, exited=True)  # the connection's end after the tracker's report
    assert len(s.core) == 0


@pytest.mark.parametrize("profile_name", ["fixed", "v4"])
def test_a_file_held_by_descriptors_outlives_its_openers_exit(profile_name) -> None:
    """``closes_at_exit=False`` (the socket face): the opener's exit does not release the file
    (a forked child may hold the descriptor); the last close does, with the opener's mm gone
    (``v4`` then skips the uncharge)."""
    procs = FakeProcesses()
    s = System(profile(profile_name), processes=procs)
    s.mkdir("vmm")
    s.write_max("vmm", "10")
    procs.add(10)
    s.write_procs("vmm", "10", writer_pid=10, writer_uid=0)
    f = s.ioasid_open(10, closes_at_exit=False)
    ioasid = s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())[0]
    s.exit(10)
    assert not f.released and ioasid in s.core
    assert s.cgroups.lookup("vmm").counter == 1
    s.ioasid_release(f, exited=True)
    assert f.released and ioasid not in s.core
    assert s.cgroups.lookup("vmm").counter == (1 if profile_name == "v4" else 0)


@pytest.mark.parametrize("profile_name", ["fixed", "v4"])
def test_after_a_restart_a_held_file_of_an_exited_opener_is_released(profile_name) -> None:
    """The opener exited while another descriptor held its file; a restart (the model saved
    and loaded) ends every connection: ``ioasid_release_unheld`` releases that set as the
    last close would have, and leaves alone the sets of live processes and released ones."""
    procs = FakeProcesses()
    s = System(profile(profile_name, set_quota_zero_takes_all=False), processes=procs)
    s.mkdir("vmm")
    s.write_max("vmm", "10")
    for pid in (10, 11):
        procs.add(pid)
        s.write_procs("vmm", str(pid), writer_pid=pid, writer_uid=0)
    held = s.ioasid_open(10, closes_at_exit=False)
    live = s.ioasid_open(11, closes_at_exit=False)
    gone = s.ioasid_ioctl(held, uapi.IOASID_REQUEST_ALLOC, alloc_arg())[0]
    kept = s.ioasid_ioctl(live, uapi.IOASID_REQUEST_ALLOC, alloc_arg())[0]
    s.exit(10)
    assert gone in s.core
    restarted = System(profile(profile_name, set_quota_zero_takes_all=False), processes=procs)
    load(dump(s.core), restarted.core)
    changes = Changes()
    restarted.on_change = changes
    assert restarted.ioasid_release_unheld() == 1
    assert gone not in restarted.core and kept in restarted.core
    assert changes.log[-1].kind == "set"
    assert restarted.cgroups.lookup("vmm").counter == (2 if profile_name == "v4" else 1)
    assert restarted.ioasid_release_unheld() == 0


def test_requests_and_batches_report_the_ids_they_changed(system) -> None:
    """A change names what changed: a single request its ID, a batch its IDs, never the whole
    set they belong to (the store's cost follows the change)."""
    s, procs, changes = system
    procs.add(10)
    f = s.ioasid_open(10)
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())
    assert changes.log[-1].sets == () and changes.log[-1].ids == (1,)
    assert changes.log[-1].processes == ()
    ret, _ = s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC_BATCH,
                            uapi.ALLOC_BATCH.pack(20, 0, 1, 100, 3))
    assert ret == 3
    assert changes.log[-1].sets == () and changes.log[-1].ids == (2, 3, 4)
    free = uapi.FREE_BATCH.pack(12 + 8, 0, 2) + struct.pack("=2I", 4, 2)
    assert s.ioasid_ioctl(f, uapi.IOASID_REQUEST_FREE_BATCH, free)[0] == 2
    assert changes.log[-1].sets == () and sorted(changes.log[-1].ids) == [2, 4]


def test_a_child_not_reported_yet_opens_in_its_parents_cgroup(system) -> None:
    """The tracker has not reported the forks of 11 (child of 10, in /a) and 12 (child of 11):
    12's open places both where their forks did, and 12's allocation is charged to /a."""
    s, procs, changes = system
    procs.add(10)
    procs.add(11, parent=10)
    procs.add(12, parent=11)
    procs.add(20, parent=1)  # a child of an untracked process: the root
    s.mkdir("a")
    s.write_max("a", "3")
    s.write_procs("a", "10", writer_pid=10, writer_uid=0)
    f = s.ioasid_open(12)
    a = s.cgroups.lookup("a")
    assert f.opener.cgroup is a and s.cgroups.process(11).cgroup is a
    assert "fork" in [c.kind for c in changes.log]  # the adoption is durable like a fork
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())
    assert a.counter == 1
    assert s.ioasid_open(20).opener.cgroup is s.cgroups.root


def test_process_source_parent() -> None:
    import os

    from ioasidsd.host import ProcessSource

    source = ProcessSource()
    assert source.parent(os.getpid()) == os.getppid()
    assert source.parent(1) is None  # init has no parent
    assert source.parent(2**22 + 12345) is None  # beyond pid_max: no such process


# ---------------------------------------------------------------------- placement
class Lineage(FakeProcesses):
    """Fake processes with a process group and a session each (``ProcStat``)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: dict[int, tuple[int, int]] = {}

    def join(self, pid: int, parent: int, pgid: int, sid: int) -> None:
        self.add(pid, parent=parent)
        self.groups[pid] = (pgid, sid)
        facts = self.live[pid]
        self.live[pid] = ProcessFacts(pid, facts.start_time, facts.uids, pid, ppid=parent,
                                      pgid=pgid, sid=sid)

    def stat(self, pid: int) -> ProcStat | None:
        if pid not in self.live:
            return None
        pgid, sid = self.groups.get(pid, (pid, pid))
        return ProcStat(b"S", self.parents.get(pid, 1), pgid, sid, 0, self.live[pid].start_time)


@pytest.fixture
def lineage() -> tuple[System, Lineage]:
    procs = Lineage()
    s = System(profile("fixed"), processes=procs)
    s.mkdir("a")
    s.write_max("a", "5")
    procs.join(10, 1, 10, 10)  # the tenant's shell, moved into /a
    s.write_procs("a", "10", writer_pid=10, writer_uid=0)
    return s, procs


def test_a_child_of_init_is_in_the_root_when_tracking_is_exact(lineage) -> None:
    s, procs = lineage
    s.settle = lambda: True
    procs.join(30, 1, 30, 30)  # a daemon that double-forked: its own session
    assert s.ioasid_open(30).opener.cgroup is s.cgroups.root


def test_a_lagging_tracker_makes_a_child_of_init_uncertain(lineage) -> None:
    """Tracking that could not catch up: a process whose chain reaches init is placed by its
    process group or session, and refused (never charged to the root) when that shows
    nothing."""
    s, procs = lineage
    s.settle = lambda: False
    procs.join(30, 1, 30, 30)
    with pytest.raises(IoasidError) as info:
        s.ioasid_open(30)
    assert info.value.errno == EPERM and "not keeping up" in info.value.strerror
    assert s.cgroups.process(30) is None
    procs.join(31, 1, 10, 10)  # re-parented out of the tenant's session
    assert s.ioasid_open(31).opener.cgroup.path == "/a"


def test_an_orphan_is_placed_by_its_group_or_refused(lineage) -> None:
    s, procs = lineage
    s.settle = lambda: True
    procs.join(32, 1, 10, 10)
    procs.join(33, 1, 33, 33)
    s.note_orphans({32: procs.live[32].start_time, 33: procs.live[33].start_time})
    assert s.ioasid_open(32).opener.cgroup.path == "/a"
    with pytest.raises(IoasidError) as info:
        s.ioasid_open(33)
    assert info.value.errno == EPERM and "cannot be placed" in info.value.strerror
    s.unplaced = "root"
    assert s.ioasid_open(33).opener.cgroup is s.cgroups.root


def test_rehearse_tries_every_step_on_a_copy_and_changes_nothing(system) -> None:
    from errno import EINVAL, ENOSPC

    s, _procs, changes = system
    s.mkdir("/a")
    s.write_max("/a", "5")
    before, logged = dump(s.core), len(changes.log)
    s.rehearse([("/a/b", None, ""), ("/a/b", "ioasids.max", "5"),
                ("/a/b", "notify_on_release", "1"), ("/", "release_agent", "/bin/true")])
    with pytest.raises(IoasidError) as refused:  # the second child finds /a's 5 taken
        s.rehearse([("/a/b", None, ""), ("/a/b", "ioasids.max", "5"),
                    ("/a/c", None, ""), ("/a/c", "ioasids.max", "1")])
    assert refused.value.errno == ENOSPC and refused.value.strerror.startswith(
        "/a/c ioasids.max: ")
    for bad in ([("/a", "tasks", "1")], [("/a", "release_agent", "x")],
                [("/a/x\ny", None, "")]):
        with pytest.raises(IoasidError):
            s.rehearse(bad)
    with pytest.raises(IoasidError) as refused:
        s.rehearse([("/a", "cgroup.subtree_control", "+ioasids")])  # not a v2 hierarchy
    assert refused.value.errno == EINVAL
    assert dump(s.core) == before and len(changes.log) == logged
