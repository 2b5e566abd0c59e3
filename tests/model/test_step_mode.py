"""The model's default: deferred work runs when the outermost model call returns (step mode).

Each test here would fail if the core's default queue still ran a worker thread: the work
would not have run (or not on this thread) when the call returns, something would still be
pending, or a thread would be left behind.
"""

from __future__ import annotations

import threading
from errno import EINVAL
from typing import Any

import pytest

from ioasidsd.model import (
    NOTIFY_OK,
    IoasidCore,
    IoasidError,
    IoasidNbArgs,
    IoasidNotify,
    IoasidsController,
    IoasidSetType,
    NotifierBlock,
    Work,
    WorkMode,
    profile,
)

from .helpers import profiles


class Teardown:
    """A FREE listener that defers its teardown, as the VT-d driver does: the callback runs
    under the lock and only queues work; the work detaches the SPID (UNBIND) and puts the
    listener's reference, from outside the notifier."""

    def __init__(self, core: IoasidCore) -> None:
        self.core = core
        self.log: list[str] = []
        self.threads: list[int] = []
        self.works: dict[int, Work] = {}
        core.register_notifier(None, NotifierBlock(self.on_free, name="teardown"))

    def hold(self, ioasid: int) -> None:
        """Take the listener's reference on ``ioasid`` and give it a SPID."""
        self.core.get(None, ioasid)
        self.core.attach_spid(ioasid, 0x1000 + ioasid)
        self.works[ioasid] = Work(lambda: self.teardown(ioasid), f"teardown-{ioasid}")

    def on_free(self, nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        self.log.append(f"{event.name} {args.id}")
        work = self.works.get(args.id)
        if work is not None:
            self.log.append(f"queued={self.core.queue_work(work)}")
        return NOTIFY_OK

    def teardown(self, ioasid: int) -> None:
        self.threads.append(threading.get_ident())
        self.core.detach_spid(ioasid)
        self.log.append(f"teardown {ioasid} reclaimed={self.core.put(None, ioasid)}")


def _null_set_with_held_id(core: IoasidCore) -> tuple[Any, int, Teardown]:
    listener = Teardown(core)
    ioasid_set = core.set_alloc(None, 8, IoasidSetType.NULL)
    ioasid = core.alloc(ioasid_set, 1, 10)
    listener.hold(ioasid)
    return ioasid_set, ioasid, listener


@profiles()
def test_the_default_queue_runs_the_work_before_the_call_returns_and_starts_no_thread(
    prof: str,
) -> None:
    threads_before = set(threading.enumerate())
    core = IoasidCore(profile(prof))
    assert core.wq.mode is WorkMode.STEP
    ioasid_set, ioasid, listener = _null_set_with_held_id(core)
    core.free(ioasid_set, ioasid)
    # free returned: its deferred teardown has run, on this thread, and nothing is pending
    assert listener.log == [f"FREE {ioasid}", "queued=True",
                            f"teardown {ioasid} reclaimed=True"]
    assert listener.threads == [threading.get_ident()]
    assert ioasid not in core
    assert len(core.wq) == 0 and core.wq.completed == 1 and core.wq.errors == []
    assert core.wq.worker is None
    assert set(threading.enumerate()) == threads_before


def test_the_work_waits_for_the_outermost_call_not_the_inner_one() -> None:
    """A face holding ``core.lock`` around several calls is one call: the work runs when the
    face lets go, after everything the face did, before the face's operation returns."""
    core = IoasidCore(profile("fixed"))
    ioasid_set, ioasid, listener = _null_set_with_held_id(core)
    with core.lock:
        core.free(ioasid_set, ioasid)  # an inner call: it returns with the work queued
        assert len(core.wq) == 1 and listener.threads == []
        listener.log.append("the face's next call")
        core.set_alloc(None, 1, IoasidSetType.NULL)  # another inner call: still not the end
        assert len(core.wq) == 1
    assert listener.log == [f"FREE {ioasid}", "queued=True", "the face's next call",
                            f"teardown {ioasid} reclaimed=True"]
    assert len(core.wq) == 0 and ioasid not in core


def test_work_queued_by_work_runs_in_the_same_step_in_submission_order() -> None:
    core = IoasidCore(profile("fixed"))
    ioasid_set = core.set_alloc(None, 8, IoasidSetType.NULL)
    ioasid = core.alloc(ioasid_set, 1, 10)
    core.get(None, ioasid)
    order: list[str] = []
    third = Work(lambda: order.append("third"), "third")

    def first() -> None:
        order.append("first")
        assert core.queue_work(third)  # queued behind "second"
        assert order == ["first"]  # an item's own call does not run the queue again

    works = [Work(first, "first"), Work(lambda: order.append("second"), "second")]

    def on_free(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        for work in works:
            core.queue_work(work)
        return NOTIFY_OK

    core.register_notifier(None, NotifierBlock(on_free))
    core.free(ioasid_set, ioasid)
    assert order == ["first", "second", "third"]
    assert len(core.wq) == 0 and core.wq.completed == 3


def test_the_work_runs_when_the_outermost_call_raises_and_a_failing_item_is_kept() -> None:
    core = IoasidCore(profile("fixed"))
    ioasid_set, ioasid, listener = _null_set_with_held_id(core)
    with pytest.raises(IoasidError) as refused, core.lock:
        core.free(ioasid_set, ioasid)
        core.alloc(None, 1, 10)  # the face's next step is refused: EINVAL, no set
    assert refused.value.errno == EINVAL
    assert listener.log[-1] == f"teardown {ioasid} reclaimed=True" and len(core.wq) == 0

    def boom() -> None:
        raise ValueError("a subscriber's bug")

    assert core.queue_work(Work(boom, "boom")) is True  # returns normally
    assert [type(e) for e in core.wq.errors] == [ValueError] and len(core.wq) == 0


def test_queue_work_outside_any_call_has_run_when_it_returns() -> None:
    core = IoasidCore()
    ran: list[int] = []
    assert core.queue_work(Work(lambda: ran.append(threading.get_ident())))
    assert ran == [threading.get_ident()] and len(core.wq) == 0


def test_an_item_queued_on_the_queue_itself_waits_for_the_next_call_or_a_flush() -> None:
    """``core.wq.queue`` is not a model call: the item waits for the next call's return."""
    core = IoasidCore()
    ran: list[str] = []
    core.wq.queue(Work(lambda: ran.append("a")))
    assert ran == [] and len(core.wq) == 1
    core.set_alloc(None, 1, IoasidSetType.NULL)
    assert ran == ["a"]
    core.wq.queue(Work(lambda: ran.append("b")))
    assert core.wq.flush() and ran == ["a", "b"]


def test_an_unknown_mode_is_refused() -> None:
    from ioasidsd.model import OrderedWorkQueue

    with pytest.raises(ValueError):
        OrderedWorkQueue(mode="sometimes")


def _run(prof: str) -> dict[str, Any]:
    """A scenario through the core and the controller, with deferred teardowns, migrations and
    refusals; what every call gave, what the subscribers saw and what the model logged."""
    core = IoasidCore(profile(prof))
    ctl = IoasidsController(core)
    tree = ctl.hierarchy
    listener = Teardown(core)
    results: list[Any] = []
    pending: list[int] = []
    seen: list[str] = []

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except IoasidError as exc:
            result = f"errno {exc.errno}"
        results.append((fn.__name__, result if isinstance(result, int | str | bool) else None))
        if not core.lock.held():  # the outermost call returned: nothing may be left to run
            pending.append(len(core.wq))
        return result

    def record(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        seen.append(f"{event.name} {args.id} spid={args.spid:#x}")
        return 0

    call(core.install_capacity, 64)
    vm = call(tree.mkdir, tree.root, "vm")
    call(ctl.set_max, vm, 6)
    other = call(tree.mkdir, tree.root, "other")
    call(ctl.set_max, other, 3)
    vmm = call(tree.track, 4242, 1.0, vm)
    mm_set = call(core.set_alloc, vmm.mm, 0, IoasidSetType.MM)
    call(core.register_notifier, mm_set, NotifierBlock(record, name="kvm"))
    ids = [call(core.alloc, mm_set, 1, 100, task=vmm) for _ in range(7)]  # the 7th: EAGAIN
    for ioasid in ids[:3]:
        listener.hold(ioasid)
    call(core.free, mm_set, ids[0], task=vmm)
    call(tree.attach, vmm, other)  # a migration: the charges follow the process
    with core.lock:  # a face's compound change
        call(core.free, mm_set, ids[1], task=vmm)
        call(core.free, mm_set, ids[3], task=vmm)
    call(core.free_all_in_set, mm_set, task=vmm)
    call(tree.exit, vmm)
    return {
        "results": results,
        "pending": pending,
        "teardowns": listener.log,
        "seen": seen,
        "messages": list(core.messages),
        "ids": [(d.id, d.state.name, d.refs, d.spid) for d in core.ioasids()],
        "cgroups": [(cg.path, cg.counter, cg.peak, cg.events) for cg in (tree.root, vm, other)],
        "capacity": (core.capacity, core.capacity_avail),
        "completed": core.wq.completed,
        "threads": set(listener.threads),
    }


@profiles()
def test_the_same_calls_give_the_same_results_and_trace(prof: str) -> None:
    first, second = _run(prof), _run(prof)
    assert first == second
    assert set(first["pending"]) == {0}  # no call ever returned with work left
    assert first["threads"] == {threading.get_ident()}
    assert first["completed"] == 3 and len(first["teardowns"]) == 9
