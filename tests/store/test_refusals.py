"""The refusal log (``ioasidsd.store.refusals``): a bounded ring per cgroup, fed by the
refusals of the change feed, following rmdir and rename, and durable through the store (a
restarted daemon reads back what it held, a smaller ring keeps only the newest)."""

from __future__ import annotations

from errno import EAGAIN

import pytest
from userapi.helpers import FakeProcesses

from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Refusal
from ioasidsd.store.refusals import RefusalLog, entry
from ioasidsd.store.state import Store
from ioasidsd.system import System


def refusal(cgroup: str, pid: int = 10) -> Refusal:
    return Refusal(pid=pid, uid=1000, command="REQUEST_ALLOC", cgroup=cgroup, level=cgroup,
                   errno=EAGAIN, request={"min": 1, "max": 9}, message="limit reached")


def test_each_ring_keeps_its_newest_entries_and_numbers_never_repeat() -> None:
    log = RefusalLog(ring=3)
    for seq in range(1, 8):
        out = log.add(entry(refusal("/a" if seq % 2 else "/b"), seq=seq, time=0.0,
                            command="x"))
        if seq == 7:  # /a: 1 3 5 7 -> the 4th pushes 1 out
            assert [e["seq"] for e in out] == [1]
    assert [e["seq"] for e in log.entries("/a")] == [3, 5, 7]
    assert [e["seq"] for e in log.entries("/")] == [2, 3, 4, 5, 6, 7]
    assert [e["seq"] for e in log.entries("/", after=5)] == [6, 7]
    assert log.last_seq == 7


def test_a_ring_follows_its_cgroup() -> None:
    log = RefusalLog()
    log.add(entry(refusal("/a/b"), seq=1, time=0.0, command=None))
    log.add(entry(refusal("/ab"), seq=2, time=0.0, command=None))
    moved = log.rename("/a", "/z")
    assert [e["cgroup"] for e in moved] == ["/z/b"] and moved[0]["level"] == "/z/b"
    assert [e["seq"] for e in log.entries("/z")] == [1]
    assert log.entries("/a") == []
    assert [e["seq"] for e in log.drop("/ab")] == [2]
    assert [e["seq"] for e in log.entries()] == [1]


def test_entries_under_a_path_do_not_take_a_sibling_with_the_same_prefix() -> None:
    log = RefusalLog()
    log.add(entry(refusal("/ab"), seq=1, time=0.0, command=None))
    assert log.entries("/a") == []


def refuse_once(system: System, procs: FakeProcesses, pid: int, path: str) -> None:
    """One refused allocation by process ``pid`` in ``path`` (whose limit is 0)."""
    procs.add(pid, uid=1000)
    system.write_procs(path, str(pid), writer_pid=pid, writer_uid=0)
    f = system.ioasid_open(pid)
    with pytest.raises(IoasidError):
        system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, 1, 9),
                            uid=1000)


def test_the_store_records_refusals_and_reads_them_back(tmp_path) -> None:
    procs = FakeProcesses()
    store = Store.open(tmp_path, refusal_ring=2)
    system = System(profile("fixed"), processes=procs, on_change=store.apply)
    store.bind(system)
    system.mkdir("a")
    system.mkdir("gone")
    for pid in (10, 11, 12):
        refuse_once(system, procs, pid, "a")
    refuse_once(system, procs, 13, "gone")
    system.write_procs("/", "13", writer_pid=13, writer_uid=0)
    system.rmdir("gone")
    assert [e["pid"] for e in store.refusals.entries()] == [11, 12]
    first = store.refusals.entries()[0]
    assert first["uid"] == 1000 and first["errno"] == "EAGAIN" and first["level"] == "/a"
    assert first["request"] == {"ioctl": "REQUEST_ALLOC", "argsz": 16, "flags": 0, "min": 1,
                                "max": 9}
    assert store.error is None
    store.close()  # and again, as a restarted daemon with a smaller ring

    again = Store.open(tmp_path, refusal_ring=1)
    snap = again.load()
    from ioasidsd.model.snapshot import load

    copy = System(profile("fixed"), processes=procs, on_change=again.apply)
    with copy.lock:
        rows = load(snap, copy.core)
        again.bind(copy, rows)
    assert [e["pid"] for e in again.refusals.entries()] == [12]
    assert again.refusals.last_seq == 4  # numbering goes on after the newest kept
    again.close()
