"""``cgroup.freeze`` and ``cgroup.kill`` in the model and in ``System``: which cgroups are frozen
as requests come and go, which processes get which signal, the parsers' errnos, durability of
the request; each refusal changing nothing. Signals go to a recording ``ProcessSource`` here
(real processes: ``tests/cgroupfs/test_cgroupfs_v2_freezer.py``)."""

from __future__ import annotations

import errno
import json
from signal import SIGCONT, SIGKILL, SIGSTOP

import pytest

from ioasidsd.host import ProcessFacts, ProcessSource
from ioasidsd.model import IoasidError
from ioasidsd.model.formats import parse_freeze, parse_kill
from ioasidsd.model.snapshot import dump, load
from ioasidsd.model.unified import UnifiedHierarchy
from ioasidsd.system import System


class Recorder(ProcessSource):
    """Processes 1000 and up exist, started at their pid; signals are recorded, not sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def facts(self, pid: int) -> ProcessFacts:
        if pid < 1000:
            raise IoasidError(errno.ESRCH, f"no process {pid}")
        return ProcessFacts(pid, float(pid), (0, 0, 0), pid)

    def alive(self, pid: int, start_time: float) -> bool:
        return pid >= 1000 and start_time == float(pid)

    def signal(self, pid: int, start_time: float, signum: int) -> bool:
        self.sent.append((pid, signum))
        return True

    def stopped(self, pid: int, start_time: float) -> bool:
        return True


def world() -> tuple[System, UnifiedHierarchy, Recorder]:
    recorder = Recorder()
    system = System(hierarchy="v2", processes=recorder)
    tree = system.cgroups
    assert isinstance(tree, UnifiedHierarchy)
    return system, tree, recorder


def move(system: System, path: str, pid: int) -> None:
    system.write_procs(path, str(pid), writer_pid=1, writer_uid=0)


def test_frozen_is_asked_by_the_cgroup_or_an_ancestor() -> None:
    system, tree, _ = world()
    a = system.mkdir("/a")
    b = system.mkdir("/a/b")
    turned: list[str] = []
    tree.watchers.append(lambda cg: turned.append(cg.path))
    system.write_freeze("/a", "1")
    assert (a.freeze, b.freeze, tree.frozen(a), tree.frozen(b)) == (True, False, True, True)
    assert sorted(turned) == ["/a", "/a/b"]
    c = system.mkdir("/a/c")  # born frozen, its own request 0
    assert tree.frozen(c) and not c.freeze
    turned.clear()
    system.write_freeze("/a/b", "1")  # its state does not turn: a keeps it frozen
    assert turned == []
    system.write_freeze("/a", "0")  # b stays frozen by its own request
    assert sorted(turned) == ["/a", "/a/c"]
    assert (tree.frozen(a), tree.frozen(b), tree.frozen(c)) == (False, True, False)
    turned.clear()
    system.write_freeze("/a", "0")  # what it asked already: nothing
    assert turned == []


def test_freezing_stops_and_thawing_continues_the_processes_that_turn() -> None:
    system, _tree, recorder = world()
    system.mkdir("/a")
    system.mkdir("/a/b")
    system.mkdir("/c")
    move(system, "/a", 1001)
    move(system, "/a/b", 1002)
    move(system, "/c", 1003)
    system.write_freeze("/a/b", "1")
    assert recorder.sent == [(1002, SIGSTOP)]
    recorder.sent.clear()
    system.write_freeze("/a", "1")
    assert recorder.sent == [(1001, SIGSTOP)]  # 1002 is stopped already
    recorder.sent.clear()
    move(system, "/c", 1001)  # leaving a frozen cgroup thaws it
    move(system, "/a", 1003)  # entering one freezes it
    move(system, "/a/b", 1003)  # frozen to frozen: nothing
    assert recorder.sent == [(1001, SIGCONT), (1003, SIGSTOP)]
    recorder.sent.clear()
    system.write_freeze("/a", "0")
    assert recorder.sent == []  # b still asks
    system.write_freeze("/a/b", "0")
    assert sorted(recorder.sent) == [(1002, SIGCONT), (1003, SIGCONT)]


def test_a_fork_in_a_frozen_cgroup_is_stopped() -> None:
    system, _tree, recorder = world()
    system.mkdir("/a")
    move(system, "/a", 1001)
    system.write_freeze("/a", "1")
    recorder.sent.clear()
    system.fork(1001, 1005, 1005.0)
    assert recorder.sent == [(1005, SIGSTOP)]


def test_kill_signals_the_subtree_only() -> None:
    system, _tree, recorder = world()
    system.mkdir("/a")
    system.mkdir("/a/b")
    system.mkdir("/c")
    move(system, "/a", 1001)
    move(system, "/a/b", 1002)
    move(system, "/c", 1003)
    system.write_kill("/a", "1\n")
    assert sorted(recorder.sent) == [(1001, SIGKILL), (1002, SIGKILL)]


def test_kill_looks_again_after_the_tracker_caught_up() -> None:
    system, _tree, recorder = world()
    system.mkdir("/a")
    move(system, "/a", 1001)
    forks = iter([(1001, 1007)])

    def settle() -> None:  # the tracker reports a fork made before the kill
        for parent, child in forks:
            system.fork(parent, child, float(child))

    system.settle = settle
    system.write_kill("/a", "1")
    assert recorder.sent == [(1001, SIGKILL), (1007, SIGKILL)]


@pytest.mark.parametrize(("write", "code"), [
    ("abc", errno.EINVAL), ("1 1", errno.EINVAL), ("\n", errno.EINVAL), ("1abc", errno.EINVAL),
    ("0", errno.ERANGE), ("2", errno.ERANGE), ("-1", errno.ERANGE),
    ("99999999999", errno.ERANGE),
])
def test_kill_takes_only_one(write: str, code: int) -> None:
    with pytest.raises(IoasidError) as refused:
        parse_kill(write)
    assert refused.value.errno == code


@pytest.mark.parametrize(("write", "value"), [("0", False), ("1", True), (" 1 \n", True),
                                              ("0x1", True), ("01", True), ("+1", True)])
def test_freeze_parses_as_kstrtoint(write: str, value: bool) -> None:
    assert parse_freeze(write) is value


@pytest.mark.parametrize(("write", "code"), [
    ("abc", errno.EINVAL), ("\n", errno.EINVAL), ("2", errno.ERANGE), ("-1", errno.ERANGE),
])
def test_freeze_refuses_other_values(write: str, code: int) -> None:
    system, _tree, recorder = world()
    a = system.mkdir("/a")
    with pytest.raises(IoasidError) as refused:
        system.write_freeze("/a", write)
    assert refused.value.errno == code
    assert not a.freeze and recorder.sent == []


def test_the_root_and_threaded_cgroups_refuse() -> None:
    system, tree, recorder = world()
    system.mkdir("/d")
    x = system.mkdir("/d/x")
    system.write_cgroup_type("/d/x", "threaded")
    move(system, "/d/x", 1001)
    for path, write in (("/", system.write_freeze), ("/", system.write_kill)):
        with pytest.raises(IoasidError) as refused:
            write(path, "1")
        assert refused.value.errno == errno.EINVAL
    with pytest.raises(IoasidError) as threaded:
        system.write_kill("/d/x", "1")
    assert threaded.value.errno == errno.EOPNOTSUPP
    assert recorder.sent == []
    system.write_freeze("/d/x", "1")  # a threaded cgroup freezes
    assert tree.frozen(x) and recorder.sent == [(1001, SIGSTOP)]


def test_the_request_survives_a_snapshot() -> None:
    system, _tree, _ = world()
    system.mkdir("/a")
    system.mkdir("/a/b")
    system.write_freeze("/a", "1")
    restored = System(hierarchy="v2", processes=Recorder())
    load(json.loads(json.dumps(dump(system.core))), restored.core)
    tree = restored.cgroups
    assert isinstance(tree, UnifiedHierarchy)
    a, b = tree.lookup("/a"), tree.lookup("/a/b")
    assert (a.freeze, b.freeze, tree.frozen(b)) == (True, False, True)


def test_frozen_time_adds_up_the_periods_from_request_or_birth_to_thaw() -> None:
    _system, tree, _ = world()
    a = tree.mkdir(tree.root, "a", now=0)
    assert tree.frozen_ns(a, 100) == 0
    tree.set_freeze(a, True, now=1_000)
    assert tree.frozen_ns(a, 1_500) == 500  # the open period counts
    b = tree.mkdir(a, "b", now=2_000)  # born frozen
    tree.set_freeze(b, True, now=2_500)  # asked too: its period goes on from its birth
    tree.set_freeze(a, False, now=3_000)
    assert (tree.frozen_ns(a, 9_000), tree.frozen_ns(b, 4_000)) == (2_000, 2_000)
    tree.set_freeze(b, False, now=5_000)
    assert tree.frozen_ns(b, 9_000) == 3_000
    tree.set_freeze(a, True, now=10_000)
    assert tree.frozen_ns(a, 9_000) == 2_000  # a clock that went back counts nothing
    assert tree.frozen_ns(b, 10_250) == 3_250
