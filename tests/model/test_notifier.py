"""Notifier chains (``notifier.py``) and how the core calls them (``core.py``).

Linux atomic notifier chains: descending priority, then registration order; the stop bit ends the
walk and its value is returned; a block registered twice is refused with a warning (the call
still returns 0); unregistering an unknown block is a no-op. Callbacks run under the core's lock,
so from a callback only the ``_locked`` API may be used: the rest raise ``EDEADLK``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from errno import EINVAL
from typing import Any

import pytest

from ioasidsd.model import (
    INVALID_IOASID,
    NOTIFY_DONE,
    NOTIFY_OK,
    NOTIFY_STOP,
    NOTIFY_STOP_MASK,
    IoasidError,
    IoasidNbArgs,
    IoasidNotify,
    IoasidState,
    NotifierBlock,
    Work,
)
from ioasidsd.model.core import AllocatorOps
from ioasidsd.model.notifier import (
    IOASID_NOTIFY_FLAG_ALL,
    IOASID_NOTIFY_FLAG_SET,
    NOTIFY_BAD,
    NotifierChain,
)

from .helpers import Recorder, World, refused

FREE = IoasidNotify.FREE


def _args() -> IoasidNbArgs:
    return IoasidNbArgs(1, INVALID_IOASID, None, None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the chain itself


def test_priority_then_registration_order(rec: Recorder) -> None:
    chain = NotifierChain()
    for name, prio in [("d1", 1), ("c1", 3), ("d2", 1), ("i1", 2), ("c2", 3), ("l1", 0),
                       ("i2", 2)]:
        assert chain.register(rec.block(name, prio)) == 0
    chain.call(FREE, _args())
    assert rec.names() == ["c1", "c2", "i1", "i2", "d1", "d2", "l1"]


def test_negative_and_large_priorities(rec: Recorder) -> None:
    chain = NotifierChain()
    for name, prio in [("low", -5), ("high", 100), ("zero", 0)]:
        chain.register(rec.block(name, prio))
    chain.call(FREE, _args())
    assert rec.names() == ["high", "zero", "low"]


def test_stop_bit_ends_the_walk(rec: Recorder) -> None:
    chain = NotifierChain()
    chain.register(rec.block("first", 2, NOTIFY_OK))
    chain.register(rec.block("stopper", 1, NOTIFY_STOP))
    chain.register(rec.block("never", 0))
    assert chain.call(FREE, _args()) == NOTIFY_STOP
    assert rec.names() == ["first", "stopper"]
    rec.clear()
    bad = NotifierChain()
    bad.register(rec.block("bad", 1, NOTIFY_BAD))
    bad.register(rec.block("never", 0))
    assert bad.call(FREE, _args()) == NOTIFY_BAD
    assert NOTIFY_BAD & NOTIFY_STOP_MASK and rec.names() == ["bad"]


def test_the_chain_returns_the_last_value(rec: Recorder) -> None:
    chain = NotifierChain()
    assert chain.call(FREE, _args()) == NOTIFY_DONE  # empty
    chain.register(rec.block("ok", 1, NOTIFY_OK))
    chain.register(rec.block("done", 0, NOTIFY_DONE))
    assert chain.call(FREE, _args()) == NOTIFY_DONE
    assert rec.names() == ["ok", "done"]


def test_duplicate_registration_is_refused_with_a_warning(rec: Recorder) -> None:
    chain = NotifierChain()
    nb = rec.block("kvm", 3)
    assert chain.register(nb) == 0
    assert chain.register(nb) == 0  # refused, but the call still returns 0
    assert len(chain) == 1 and nb in chain
    assert chain.warnings == ["notifier kvm registered twice"]
    chain.call(FREE, _args())
    assert rec.names() == ["kvm"]


def test_unregister(rec: Recorder) -> None:
    chain = NotifierChain()
    a, b, c = rec.block("a", 1), rec.block("b", 1), rec.block("c", 1)
    for nb in (a, b, c):
        chain.register(nb)
    assert chain.unregister(a) is True
    assert chain.unregister(a) is False  # unknown: a no-op
    assert chain.unregister(rec.block("stranger")) is False
    chain.register(a)  # back at the end of its priority
    chain.call(FREE, _args())
    assert rec.names() == ["b", "c", "a"]
    assert not NotifierChain() and chain


def test_unregister_during_a_walk_takes_effect_next_time(rec: Recorder) -> None:
    chain = NotifierChain()
    later = rec.block("later", 0)

    def remover(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        rec.seen.append(("remover", event, args))
        chain.unregister(later)
        return NOTIFY_DONE

    chain.register(NotifierBlock(remover, 1))
    chain.register(later)
    chain.call(FREE, _args())
    chain.call(FREE, _args())
    assert rec.names() == ["remover", "later", "remover"]


# --------------------------------------------------------------------------- through the core


@pytest.fixture
def fixed() -> World:
    return World("fixed")


def test_the_payload_is_sampled_at_emission(fixed: World) -> None:
    core = fixed.core
    s = fixed.null_set(4)
    ioasid = core.alloc(s, 1, 10, "old data")
    core.attach_spid(ioasid, 5)
    core.get(None, ioasid)
    seen: list[IoasidNbArgs] = []

    def record(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        seen.append(args)
        return NOTIFY_OK

    core.register_notifier(None, NotifierBlock(record))
    core.free(s, ioasid)
    core.detach_data(ioasid)
    core.attach_data(ioasid, "new data")
    core.detach_spid(ioasid)
    assert (seen[0].id, seen[0].spid, seen[0].set, seen[0].pdata) == (ioasid, 5, s, "old data")
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].pdata = "changed"  # type: ignore[misc]


def test_a_stop_on_the_global_chain_does_not_skip_the_set_chain(
    fixed: World, rec: Recorder
) -> None:
    """FREE walks two chains; the stop bit ends only the chain it is returned on."""
    core = fixed.core
    s = fixed.null_set(4)
    ioasid = core.alloc(s, 1, 10)
    core.get(None, ioasid)
    core.register_notifier(None, rec.block("global-stop", 3, NOTIFY_STOP))
    core.register_notifier(None, rec.block("global-never", 0))
    core.register_notifier(s, rec.block("set", 0))
    core.free(s, ioasid)
    assert rec.names() == ["global-stop", "set"]


def test_the_emitter_returns_the_last_chain_and_checks_flags(fixed: World, rec: Recorder) -> None:
    """White box of the internal emitter (``ioasid_notify``): with both scopes the value of the
    set chain (called last) is returned; unknown flag bits are ``EINVAL``."""
    core = fixed.core
    s = fixed.null_set(4)
    data = core.data(core.alloc(s, 1, 10))
    core.register_notifier(None, rec.block("global", 0, NOTIFY_STOP))
    core.register_notifier(s, rec.block("set", 0, NOTIFY_OK))
    both = IOASID_NOTIFY_FLAG_ALL | IOASID_NOTIFY_FLAG_SET
    assert core._notify(FREE, data, both) == NOTIFY_OK
    assert core._notify(FREE, data, IOASID_NOTIFY_FLAG_ALL) == NOTIFY_STOP
    with refused(EINVAL):
        core._notify(FREE, data, 1 << 2)


# --------------------------------------------------------------------------- EDEADLK


def _calls(world: World, ioasid: int) -> dict[str, Callable[[], Any]]:
    """One call of each lock-taking API, as a callback might try it."""
    core, ctl, tree = world.core, world.ctl, world.tree
    s = core.find_set(ioasid)
    ops = AllocatorOps(lambda lo, hi, pdata: lo, lambda ioasid, pdata: None)
    nb = NotifierBlock(lambda *args: NOTIFY_DONE)
    return {
        "get": lambda: core.get(None, ioasid),
        "put": lambda: core.put(None, ioasid),
        "free": lambda: core.free(s, ioasid),
        "free_all_in_set": lambda: core.free_all_in_set(s),
        "alloc": lambda: core.alloc(s, 1, 100),
        "get_if_owned": lambda: core.get_if_owned(ioasid, None),
        "attach_data": lambda: core.attach_data(ioasid, "x"),
        "detach_data": lambda: core.detach_data(ioasid),
        "attach_spid": lambda: core.attach_spid(ioasid, 77),
        "detach_spid": lambda: core.detach_spid(ioasid),
        "find_by_spid": lambda: core.find_by_spid(s, 77),
        "set_alloc": lambda: core.set_alloc(None, 1, 1),
        "set_free": lambda: core.set_free(s),
        "install_capacity": lambda: core.install_capacity(10),
        "reserve_capacity": lambda: core.reserve_capacity(1),
        "cancel_capacity": lambda: core.cancel_capacity(1),
        "register_notifier": lambda: core.register_notifier(None, nb),
        "unregister_notifier": lambda: core.unregister_notifier(None, nb),
        "register_notifier_mm": lambda: core.register_notifier_mm("mm", nb),
        "unregister_notifier_mm": lambda: core.unregister_notifier_mm("mm", nb),
        "register_allocator": lambda: core.register_allocator(ops),
        "unregister_allocator": lambda: core.unregister_allocator(ops),
        "mkdir": lambda: tree.mkdir(tree.root, "from-callback"),
        "set_max": lambda: ctl.set_max(tree.lookup("vm"), 3),
        "rmdir": lambda: tree.rmdir(tree.lookup("vm")),
        "attach": lambda: tree.attach(next(iter(tree.lookup("vm").procs)), tree.root),
    }


def test_lock_taking_calls_from_a_callback_raise_edeadlk(fixed: World) -> None:
    core = fixed.core
    fixed.cgroup("vm", 5)
    fixed.spawn("vm")
    s = fixed.null_set(8)
    ioasid = core.alloc(s, 1, 10)
    core.attach_spid(ioasid, 3)
    core.get(None, ioasid)
    outcomes: dict[str, str] = {}

    def on_free(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        for name, call in _calls(fixed, args.id).items():
            try:
                call()
                outcomes[name] = "ran"
            except IoasidError as exc:
                outcomes[name] = exc.name
        return NOTIFY_OK

    core.register_notifier(None, NotifierBlock(on_free))
    core.free(s, ioasid)
    assert outcomes == dict.fromkeys(_calls(fixed, ioasid), "EDEADLK")
    data = core.data(ioasid)  # nothing happened through those calls
    assert (data.state, data.refs, data.spid, data.private) == (
        IoasidState.FREE_PENDING, 1, 3, None)
    core.get(None, core.alloc(s, 1, 10))  # and the lock-taking API works again afterwards


def test_locked_forms_and_queue_work_are_allowed_in_a_callback(fixed: World) -> None:
    """Callbacks may take and drop references with the ``_locked`` forms, look data up and
    defer work; the deferred work may then use the whole API (what the VT-d driver does)."""
    core = fixed.core
    s = fixed.null_set(8)
    log: list[str] = []
    holder: dict[str, int] = {}

    def teardown() -> None:
        ioasid = holder["id"]
        core.detach_spid(ioasid)  # UNBIND: not allowed in the FREE handler, fine from here
        core.detach_data(ioasid)
        log.append(f"put reclaimed={core.put(None, ioasid)}")

    work = Work(teardown)

    def on_set_event(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        log.append(f"{event.name} spid={args.spid:#x}")
        if event == IoasidNotify.ALLOC:
            core.get_locked(args.set, args.id)  # a subscriber's own reference
            core.get_locked(None, args.id)
            assert core.put_locked(args.set, args.id) is False
        return NOTIFY_DONE

    def on_free(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        log.append(f"find={core.find(None, args.id)} set={core.find_set(args.id) is s}")
        log.append(f"queued={core.queue_work(work)}")
        return NOTIFY_OK

    core.register_notifier(None, NotifierBlock(on_free))
    core.register_notifier(s, NotifierBlock(on_set_event))
    ioasid = holder["id"] = core.alloc(s, 1, 10, "svm")
    assert core.data(ioasid).refs == 2
    core.attach_spid(ioasid, 3)
    core.free(s, ioasid)
    assert log == ["ALLOC spid=0xffffffff", "BIND spid=0x3", "find=svm set=True",
                   "queued=True", "FREE spid=0x3"]
    assert core.data(ioasid).state == IoasidState.FREE_PENDING
    assert fixed.wq.flush()
    assert log[5:] == ["UNBIND spid=0x3", "put reclaimed=True"]
    assert ioasid not in core


def test_a_failing_callback_is_contained(fixed: World) -> None:
    """A subscriber's exception does not undo or abort the operation that emitted the event:
    it is recorded, counts as NOTIFY_DONE, and later subscribers still run."""
    core = fixed.core
    s = fixed.null_set(8)
    later: list[int] = []

    def broken(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        raise RuntimeError("subscriber bug")

    core.register_notifier(s, NotifierBlock(broken, 3, name="broken"))
    core.register_notifier(s, NotifierBlock(lambda nb, e, a: later.append(a.id) or 0))
    ioasid = core.alloc(s, 1, 10)
    assert ioasid in core and later == [ioasid]
    assert any("broken" in m and "subscriber bug" in m for m in core.messages)
    assert any("subscriber bug" in w for w in s.nh.warnings)
    core.get(None, core.alloc(s, 1, 10))  # not EDEADLK: the callback depth was restored
