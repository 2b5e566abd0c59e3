"""The control API's visibility rule (``ioasidsd.control.visibility.may_see_process``): root sees
every process; another caller sees a process whose real or effective uid is its uid, read at
request time, and never one that exited or whose pid another process now has."""

from __future__ import annotations

import pytest
from userapi.helpers import FakeProcesses

from ioasidsd.clients import Peer
from ioasidsd.control.visibility import may_see_process
from ioasidsd.host import ProcessFacts
from ioasidsd.model import Hierarchy
from ioasidsd.model.hierarchy import Process

TENANT = 1000


def world(uids: tuple[int, int, int] | None, *, start: float = 7.0,
          tgid: int = 42) -> tuple[Process, FakeProcesses]:
    """The model's process 42 (started at 7.0) and a source where pid 42 has ``uids`` (real,
    effective, saved) and started at ``start`` (``None``: there is no process 42)."""
    root = Hierarchy().root
    source = FakeProcesses()
    if uids is not None:
        source.live[42] = ProcessFacts(42, start, uids, tgid)
    return Process(42, 7.0, root), source


@pytest.mark.parametrize(("uids", "seen"), [
    ((TENANT, TENANT, TENANT), True),
    ((TENANT, 0, 0), True),  # its real uid: a set-uid program the tenant started
    ((0, TENANT, 0), True),  # its effective uid
    ((0, 0, TENANT), False),  # the saved uid alone does not make it the tenant's
    ((0, 0, 0), False),
    ((TENANT + 1, TENANT + 1, TENANT + 1), False),
])
def test_a_user_sees_the_processes_whose_real_or_effective_uid_is_its_own(uids, seen) -> None:
    proc, source = world(uids)
    assert may_see_process(Peer(pid=1, uid=TENANT, gid=TENANT), proc, source) is seen


def test_root_sees_every_process_even_one_that_is_gone() -> None:
    proc, source = world(None)
    assert may_see_process(Peer(pid=1, uid=0, gid=0), proc, source)


def test_a_pid_now_held_by_another_process_is_not_seen() -> None:
    """The pid was reused by a process of the tenant's own: the start time differs from the
    one the model recorded, so the model's (exited) process stays hidden."""
    proc, source = world((TENANT, TENANT, TENANT), start=8.0)
    assert not may_see_process(Peer(pid=1, uid=TENANT, gid=TENANT), proc, source)


def test_a_process_that_is_gone_or_exited_in_the_model_is_not_seen() -> None:
    peer = Peer(pid=1, uid=TENANT, gid=TENANT)
    proc, source = world(None)
    assert not may_see_process(peer, proc, source)
    proc, source = world((TENANT, TENANT, TENANT))
    proc.alive = False
    assert not may_see_process(peer, proc, source)


def test_a_thread_id_and_unreadable_credentials_are_not_seen() -> None:
    peer = Peer(pid=1, uid=TENANT, gid=TENANT)
    proc, source = world((TENANT, TENANT, TENANT), tgid=41)  # 42 is now a thread of 41
    assert not may_see_process(peer, proc, source)

    class Broken(FakeProcesses):
        def facts(self, pid: int) -> ProcessFacts:
            raise RuntimeError("psutil failed")

    assert not may_see_process(peer, proc, Broken())
    assert not may_see_process(peer, object(), source)  # no pid, no start time
