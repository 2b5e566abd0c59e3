"""The change feed: every change ``System`` reports is one immutable ``Change`` of a
``ChangeKind``; a refused ioctl carries a ``Refusal`` saying who asked what and who refused
(through the socket: ``tests/userapi/test_server.py``)."""

from __future__ import annotations

import ast
import dataclasses
from errno import EAGAIN, EINVAL, EPERM
from pathlib import Path

import pytest
from userapi.helpers import Changes, FakeProcesses

from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change, ChangeKind, Refusal
from ioasidsd.system import System

ROOT = Path(__file__).resolve().parents[2]


def alloc_arg(lo: int = 1, hi: int = 100) -> bytes:
    return uapi.ALLOC_REQUEST.pack(16, 0, lo, hi)


def make(profile_name: str = "fixed") -> tuple[System, FakeProcesses, Changes]:
    """A system in ``profile_name`` (in ``v4`` with the quota-0 grab off, so that a limit
    refuses a second allocation)."""
    procs = FakeProcesses()
    changes = Changes()
    knobs = profile(profile_name, **({"set_quota_zero_takes_all": False}
                                     if profile_name == "v4" else {}))
    return System(knobs, processes=procs, on_change=changes), procs, changes


def test_every_kind_system_emits_is_a_change_kind() -> None:
    """A run through every System method that changes something: each report is a ``Change``
    whose kind is a ``ChangeKind``, and every kind System has is seen."""
    s, procs, changes = make()
    s.unplaced = "root"
    for pid in (10, 30):
        procs.add(pid)
    s.note_orphans({30: 30.0})  # orphans
    s.ioasid_open(30)  # place (in the root: no cgroup of its own), set
    s.mkdir("a")  # mkdir
    s.write_max("a", "4")  # limit
    s.write_flag("a", "notify_on_release", "1")  # flag
    s.write_release_agent("/sbin/agent")  # release_agent
    s.set_attrs("a", {"": {"mode": 0o755}})  # attrs
    s.rename("a", "b")  # rename
    s.write_procs("b", "10", writer_pid=10, writer_uid=0)  # attach
    procs.add(11, parent=10)
    s.fork(10, 11, 11.0)  # fork
    f = s.ioasid_open(10)
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg())  # ioasid
    s.exit(11)  # exit
    s.ioasid_release(f, exited=True)  # ioasid (the exit hook), exit
    s.mkdir("c")
    s.rmdir("c")  # rmdir
    assert all(type(c) is Change and type(c.kind) is ChangeKind for c in changes.log)
    emitted = {ChangeKind.MKDIR, ChangeKind.RMDIR, ChangeKind.RENAME, ChangeKind.LIMIT,
               ChangeKind.FLAG, ChangeKind.RELEASE_AGENT, ChangeKind.ATTACH, ChangeKind.FORK,
               ChangeKind.EXIT, ChangeKind.ATTRS, ChangeKind.PLACE, ChangeKind.ORPHANS,
               ChangeKind.SET, ChangeKind.IOASID}
    assert {c.kind for c in changes.log} == emitted
    by_kind = {c.kind: c for c in changes.log}
    assert by_kind[ChangeKind.RENAME].path == "/a"
    assert by_kind[ChangeKind.RMDIR].path == "/c"
    assert dict(by_kind[ChangeKind.ORPHANS].orphans) == {30: 30.0}
    attach = by_kind[ChangeKind.ATTACH]
    assert attach.cgroups == (s.cgroups.root,) and attach.processes[0].pid == 10


def _on_change_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "on_change"]


def test_every_reporter_in_the_code_hands_over_a_change_of_a_known_kind() -> None:
    """The emitters outside ``System``'s own methods (the VT-d driver's cleanup, the daemon's
    ``vtd_boot``) and System itself: every ``on_change`` call passes one record, built with a
    ``ChangeKind`` member that exists (no kind spelled as a string)."""
    calls = 0
    for path in sorted((ROOT / "ioasidsd").rglob("*.py")):
        for call in _on_change_calls(path):
            calls += 1
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            assert len(call.args) == 1 and not call.keywords, where
            (arg,) = call.args
            if isinstance(arg, ast.Call) and getattr(arg.func, "id", None) in ("Change",
                                                                           "exact_change"):
                kind = arg.args[0]
                if isinstance(kind, ast.Name):  # a kind handed in (System._ioasid_changed)
                    continue
                assert isinstance(kind, ast.Attribute), where
                assert isinstance(kind.value, ast.Name) and kind.value.id == "ChangeKind", where
                assert kind.attr in ChangeKind.__members__, where
            else:
                assert isinstance(arg, ast.Name), where  # passing on a record it was given
    assert calls >= 15
    assert {k.value for k in ChangeKind} >= {
        "mkdir", "rmdir", "rename", "limit", "flag", "release_agent", "attach", "fork", "exit",
        "attrs", "place", "orphans", "set", "ioasid", "vtd_cleanup", "vtd_boot", "sync"}


@pytest.mark.parametrize("profile_name", ["fixed", "v4"])
@pytest.mark.parametrize(("limits", "level"), [({"a": "5", "a/b": "1"}, "/a/b"),
                                               ({"a": "1", "a/b": "max"}, "/a")])
def test_a_refused_alloc_over_a_limit_reports_who_asked_and_which_level_refused(
        profile_name: str, limits: dict[str, str], level: str) -> None:
    s, procs, changes = make(profile_name)
    procs.add(10)
    s.mkdir("a")
    s.mkdir("a/b")
    for path, limit in limits.items():
        s.write_max(path, limit)
    s.write_procs("a/b", "10", writer_pid=10, writer_uid=0)
    f = s.ioasid_open(10)
    s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg(), uid=1000)
    assert changes.log[-1].refusal is None
    with pytest.raises(IoasidError) as info:
        s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg(2, 90), uid=1000)
    change = changes.log[-1]
    assert change.kind is ChangeKind.IOASID
    refusal = change.refusal
    assert refusal is not None
    assert refusal.pid == 10 and refusal.uid == 1000
    assert refusal.command == "REQUEST_ALLOC" and refusal.cgroup == "/a/b"
    assert refusal.level == level
    assert refusal.errno == info.value.errno == (EAGAIN if profile_name == "fixed" else EINVAL)
    assert dict(refusal.request) == {"argsz": 16, "flags": 0, "min": 2, "max": 90}
    if s.knobs.events == "hierarchical":  # the counted refusal is in the record
        assert s.cgroups.lookup(level).events_local == 1
        assert s.cgroups.lookup(level) in change.cgroups


def test_a_refusal_no_limit_made_names_no_level_and_is_reported_even_if_nothing_changed(
        ) -> None:
    s, procs, changes = make()
    procs.add(10)
    procs.add(11)
    f = s.ioasid_open(10)
    n = len(changes.log)
    with pytest.raises(IoasidError):
        s.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, alloc_arg(), pid=11)
    assert len(changes.log) == n + 1  # the refusal, though it changed nothing
    change = changes.log[-1]
    assert change.ids == () and change.sets == () and change.cgroups == ()
    assert change.refusal == Refusal(pid=11, uid=None, command="REQUEST_ALLOC", cgroup="/",
                                     level=None, errno=EPERM,
                                     request={"argsz": 16, "flags": 0, "min": 1, "max": 100},
                                     message=change.refusal.message)
    assert change.refusal.error == "EPERM"
    with pytest.raises(IoasidError):
        s.ioasid_ioctl(f, 0x1234, b"\0\0")
    assert changes.log[-1].refusal.command == "0x1234"
    assert dict(changes.log[-1].refusal.request) == {"bytes": 2}


def test_a_change_is_immutable() -> None:
    s, procs, _changes = make()
    procs.add(10)
    proc = s.process(10)
    ids = [1, 2]
    orphans = {5: 1.0}
    change = Change(ChangeKind.IOASID, processes=[proc], ids=ids, sets=[3])
    assert change.ids == (1, 2) and change.processes == (proc,) and change.sets == (3,)
    ids.append(3)
    assert change.ids == (1, 2)  # a copy, not the caller's list
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.ids = (9,)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.kind = ChangeKind.SYNC  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        change.extra = 1  # type: ignore[attr-defined]  # slots: no new attributes
    lost = Change(ChangeKind.ORPHANS, orphans=orphans)
    orphans[6] = 2.0
    assert dict(lost.orphans) == {5: 1.0}
    with pytest.raises(TypeError):
        lost.orphans[7] = 3.0  # type: ignore[index]
    refusal = Refusal(pid=1, uid=None, command="REQUEST_FREE", cgroup="/", level=None,
                      errno=EINVAL, request={"ioasid": -1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        refusal.errno = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        refusal.request["ioasid"] = 0  # type: ignore[index]
    assert Change("mkdir").kind is ChangeKind.MKDIR  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Change("no-such-kind")  # type: ignore[arg-type]


def test_the_hot_path_constructor_makes_an_equal_frozen_change() -> None:
    from ioasidsd.model.changes import exact_change

    fast = exact_change(ChangeKind.IOASID, (), (), (5, 6), (2,), None)
    assert fast == Change("ioasid", ids=[5, 6], sets=[2])
    assert type(fast) is Change and fast.path is None and dict(fast.orphans) == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.ids = ()  # type: ignore[misc]
