"""The model's own contracts beyond the numbered behaviours, each a regression test of a fix:
the work queue handed in, peaks and refusals, error names, cgroup names, ``System`` hand-off."""

from __future__ import annotations

import errno
from errno import EAGAIN, EBUSY, EDEADLK, EDQUOT, EEXIST, EINVAL, EIO, ENAMETOOLONG, ENOSPC
from typing import Any

import pytest

from ioasidsd.model import IoasidCore, IoasidError, OrderedWorkQueue, Work, profile
from ioasidsd.model.changes import Change
from ioasidsd.system import System

from .helpers import World, refused, snapshot

# --------------------------------------------------------------------------- the work queue


def test_an_empty_work_queue_handed_in_is_kept() -> None:
    """An empty ``OrderedWorkQueue`` is falsy (it has ``__len__``); it must still be used."""
    wq = OrderedWorkQueue(mode="manual")
    assert not wq
    core = IoasidCore(profile("fixed"), wq=wq)
    assert core.wq is wq
    ran: list[str] = []
    assert core.queue_work(Work(lambda: ran.append("w")))
    assert ran == [] and len(wq) == 1  # manual mode: waits for run_pending
    wq.run_pending()
    assert ran == ["w"]
    assert System(profile("v4"), wq=wq).core.wq is wq


# --------------------------------------------------------------------------- peaks


def test_peak_follows_committed_allocations() -> None:
    w = World("fixed")
    parent, leaf = w.cgroup("a", 10), w.cgroup("a/b", 10)
    proc = w.spawn(leaf)
    s = w.mm_set(proc)
    ids = [w.core.alloc(s, 1, 100, task=proc) for _ in range(3)]
    w.core.free(s, ids[0], task=proc)
    assert [(cg.counter, cg.peak) for cg in (parent, leaf)] == [(2, 3), (2, 3)]
    other = w.cgroup("c", 10)
    w.tree.attach(proc, other)  # migration charges the destination: its peak too
    assert (other.counter, other.peak, leaf.peak) == (2, 2, 3)


@pytest.mark.parametrize("cause", ["EDQUOT", "ENOSPC range", "ENOSPC capacity"])
def test_a_refused_allocation_leaves_peaks_alone(cause: str) -> None:
    """The charge passes the cgroup walk, then the allocation is refused: the counters and the
    peaks are as before (the kernel's racy watermark would keep the transient charge)."""
    w = World(profile("fixed", capacity_model="overcommit"), capacity=3)
    cg = w.cgroup("vm", 10)
    proc = w.spawn(cg)
    s = w.mm_set(proc, 2 if cause == "EDQUOT" else 0)
    w.core.alloc(s, 5, 5, task=proc)
    w.core.alloc(s, 6, 6, task=proc)
    if cause == "ENOSPC capacity":
        w.core.alloc(s, 7, 7, task=proc)  # the third and last unit of capacity
    code = EDQUOT if cause == "EDQUOT" else ENOSPC
    lo, hi = (5, 6) if cause == "ENOSPC range" else (1, 100)
    with refused(code, w):
        w.core.alloc(s, lo, hi, task=proc)
    assert cg.peak == cg.counter


def test_the_v4_leaked_charge_keeps_peak_at_least_current() -> None:
    w = World("v4")
    cg = w.cgroup("vm", 10)
    proc = w.spawn(cg)
    s = w.mm_set(proc, 1)
    w.core.alloc(s, 1, 10, task=proc)
    with refused(EDQUOT):
        w.core.alloc(s, 1, 10, task=proc)
    assert (cg.counter, cg.peak) == (2, 2)


# --------------------------------------------------------------------------- errors


def test_error_names_are_the_kernels() -> None:
    deadlock = IoasidError(EDEADLK, "from a callback")
    assert deadlock.name == "EDEADLK" and str(deadlock) == "EDEADLK: from a callback"
    assert IoasidError(errno.EOPNOTSUPP).name == "EOPNOTSUPP"
    again = IoasidError(EAGAIN)
    assert (again.name, again.errno) == ("EAGAIN", EAGAIN)
    assert again.strerror == "Resource temporarily unavailable"
    assert isinstance(again, OSError)
    assert IoasidError(4242).name == "4242"


# --------------------------------------------------------------------------- cgroup names


@pytest.mark.parametrize(
    ("name", "code"),
    [("", EINVAL), (".", EINVAL), ("..", EINVAL), ("a/b", EINVAL), ("a\0b", EINVAL),
     ("a\nb", EINVAL), ("trailing\n", EINVAL), ("x" * 256, ENAMETOOLONG),
     ("é" * 128, ENAMETOOLONG), ("taken", EEXIST), ("ioasids.max", EEXIST)],
)
def test_mkdir_refuses_bad_names(name: str, code: int) -> None:
    w = World("fixed")
    w.cgroup("taken")
    with refused(code, w):
        w.tree.mkdir(w.tree.root, name, reserved_names=frozenset({"ioasids.max"}))


def test_mkdir_accepts_unusual_but_valid_names() -> None:
    w = World("fixed")
    for name in ("x" * 255, "with space", "tab\there", "ünïcode", "-dash", "a.slice"):
        assert w.tree.mkdir(w.tree.root, name).name == name


def test_rename_rules() -> None:
    w = World("fixed")
    a, b = w.cgroup("p/a"), w.cgroup("p/b")
    other = w.cgroup("q")
    with refused(EINVAL, w):
        w.tree.rename(a, other, "x\n")  # the newline is checked before the parent
    with refused(EIO, w):
        w.tree.rename(a, other, "x")
    with refused(EEXIST, w):
        w.tree.rename(a, a.parent, "b")  # type: ignore[arg-type]
    with refused(EBUSY, w):
        w.tree.rename(w.tree.root, w.tree.root, "x")
    w.tree.rename(a, a.parent, "a")  # type: ignore[arg-type]  # same name: nothing to do
    w.tree.rename(a, a.parent, "renamed")  # type: ignore[arg-type]
    assert a.path == "/p/renamed" and w.tree.lookup("p/renamed") is a and b.path == "/p/b"


# --------------------------------------------------------------------------- System


def test_system_hands_each_change_over_once_and_refusals_never() -> None:
    changes: list[Change] = []
    system = System(profile("fixed"), wq=OrderedWorkQueue(mode="manual"),
                    on_change=changes.append)
    system.core.install_capacity(10)
    system.mkdir("vm")
    system.write_max("vm", b"4\n")
    for bad in (lambda: system.mkdir("vm"), lambda: system.write_max("vm", b"junk"),
                lambda: system.write_max("vm", b"11"), lambda: system.rmdir("/"),
                lambda: system.mkdir("no/such/parent")):
        with pytest.raises(IoasidError):
            bad()
    system.rename("vm", "guest")
    system.rmdir("guest")
    assert [change.kind for change in changes] == ["mkdir", "limit", "rename", "rmdir"]
    assert system.core.capacity_avail == 10


def test_system_hands_over_no_write_that_changes_nothing() -> None:
    """Rewriting the current limit, a flag or the release agent changes no state, so there is
    nothing for the durable store to write (in ``v4`` the same limit is refused anyway)."""
    changes: list[str] = []
    system = System(profile("fixed"), wq=OrderedWorkQueue(mode="manual"),
                    on_change=lambda change: changes.append(change.kind))
    system.mkdir("vm")
    for _ in range(2):
        system.write_max("vm", b"5\n")
        system.write_max("vm", b"max")
        system.write_flag("vm", "notify_on_release", b"1")
        system.write_release_agent(b"/sbin/agent")
    assert changes == ["mkdir", "limit", "limit", "flag", "release_agent", "limit", "limit"]
    assert system.cgroups.lookup("vm").limit is None


def test_system_refusals_change_nothing() -> None:
    system = System(profile("fixed"), wq=OrderedWorkQueue(mode="manual"))
    world = World.__new__(World)  # view the system's model through the snapshot helper
    world.core, world.ctl, world.tree = system.core, system.controller, system.cgroups
    world.wq = system.core.wq
    system.core.install_capacity(10)
    system.mkdir("vm")
    before = snapshot(world)
    for data in (b"-1", b"11", b"0x", b"99999999999999999999"):
        with pytest.raises(IoasidError):
            system.write_max("vm", data)
    assert snapshot(world) == before


# --------------------------------------------------------------------------- lead's review fixes


def test_removed_cgroups_answer_enodev() -> None:
    """cgroup-v1 answers ENODEV for a cgroup that is already removed (mkdir below it, moving a
    process into it), not ENOENT, as the kernel's cgroup core does."""
    w = World("fixed")
    gone = w.cgroup("gone")
    proc = w.spawn()
    w.tree.rmdir(gone)
    with refused(errno.ENODEV, w):
        w.tree.mkdir(gone, "child")
    with refused(errno.ENODEV, w):
        w.tree.attach(proc, gone)


def test_a_set_being_freed_takes_no_new_ids() -> None:
    """After ``set_free(when_empty=True)`` on a busy set, allocation into it is refused."""
    w = World("fixed")
    s = w.null_set(4)
    held = w.core.alloc(s, 1, 10)
    assert w.core.set_free(s, when_empty=True) is False
    with refused(EINVAL, w):
        w.core.alloc(s, 1, 10)
    w.core.free(s, held)
    assert not w.core.set_valid(s)  # destroyed once empty


def test_mm_registration_replays_no_dying_ids(rec: Any) -> None:
    """In ``fixed``, registering by mm replays the set's live IDs, but not FREE_PENDING ones."""
    w = World("fixed")
    proc = w.spawn(w.cgroup("vm", 10))
    s = w.mm_set(proc)
    live = w.core.alloc(s, 1, 10, task=proc)
    dying = w.core.alloc(s, 1, 10, task=proc)
    w.core.get(None, dying)
    w.core.free(s, dying, task=proc)
    w.core.register_notifier_mm(proc.mm, rec.block("kvm"))
    assert [(ev.name, args.id) for _, ev, args in rec.seen] == [("ALLOC", live)]


@pytest.mark.parametrize(
    ("written", "stored"),
    [(b"  /sbin/agent \n", "/sbin/agent"), (b"/bin/a\0junk", "/bin/a"), (b"\n", ""),
     # the kernel's isspace counts the byte 0xA0 and nothing outside ASCII else; other bytes
     # are kept as they are (as text with surrogateescape)
     (b"\xa05\xa0", "5"), (b"\xc2\xa0/a\xc2\xa0", "\xa0/a\udcc2"), (b"/a\xa0b", "/a\udca0b"),
     (b"\xff\xfe/x\xe9\x85", "\udcff\udcfe/x\udce9\udc85"), (b"\x1c/a\x1c \v", "\x1c/a\x1c"),
     ("/caf\xe9\udcff\n", "/caf\xe9\udcff")],
)
def test_release_agent_is_stripped_like_the_kernel(written: bytes | str, stored: str) -> None:
    """``cgroup_release_agent_write``: ``strstrip`` of the C string (cut at the first NUL),
    any byte kept; a ``str`` stands for its UTF-8 bytes (``surrogateescape``)."""
    system = System(profile("fixed"))
    system.write_release_agent(written)
    assert system.cgroups.release_agent == stored
    if isinstance(written, bytes):
        kept = written.split(b"\0")[0].strip(b" \t\n\v\f\r\xa0")
        assert stored.encode("utf-8", "surrogateescape") == kept


def test_release_agent_text_without_bytes_is_einval() -> None:
    system = System(profile("fixed"))
    with pytest.raises(IoasidError) as info:
        system.write_release_agent("/a\ud800")  # a surrogate no byte decodes to
    assert info.value.errno == EINVAL and system.cgroups.release_agent == ""


def test_a_refusal_above_restores_the_peaks_raised_below() -> None:
    """The charge walk raises each level's peak as it goes; when a level above refuses, the
    levels below it that were already charged get their peaks back too."""
    w = World("fixed")
    top = w.cgroup("top", 1)
    leaf = w.cgroup("top/leaf", None)  # max: the leaf itself never refuses
    other = w.spawn(w.cgroup("top/other", None))
    w.core.alloc(w.mm_set(other), 1, 100, task=other)  # fills top's limit of 1
    proc = w.spawn(leaf)
    s = w.mm_set(proc)
    with refused(EAGAIN, w):
        w.core.alloc(s, 1, 100, task=proc)
    assert (leaf.counter, leaf.peak, top.counter, top.peak) == (0, 0, 1, 1)
