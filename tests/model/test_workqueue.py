"""The shared ordered work queue (``workqueue.py``): threaded, manual and step mode.

No test sleeps: threads are coordinated with events and every wait has a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from ioasidsd.model import (
    NOTIFY_OK,
    IoasidCore,
    IoasidNbArgs,
    IoasidNotify,
    IoasidSetType,
    NotifierBlock,
    OrderedWorkQueue,
    Work,
)

from .helpers import World

TIMEOUT = 10.0


@pytest.fixture
def threaded() -> Iterator[OrderedWorkQueue]:
    wq = OrderedWorkQueue("test_wq", mode="thread")
    yield wq
    wq.stop()


def _appender(log: list[str], name: str) -> Work:
    return Work(lambda: log.append(name), name)


class Gate:
    """A work function that reports it started and then waits to be released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.started.set()
        if not self.release.wait(TIMEOUT):
            raise TimeoutError("gate never released")


def test_manual_mode_runs_nothing_until_asked() -> None:
    wq = OrderedWorkQueue(mode="manual")
    log: list[str] = []
    for name in "abc":
        assert wq.queue(_appender(log, name))
    assert log == [] and len(wq) == 3
    assert wq.run_pending(limit=1) == 1
    assert log == ["a"]
    assert wq.run_pending() == 2
    assert log == ["a", "b", "c"] and len(wq) == 0
    assert wq.run_pending() == 0
    assert wq.completed == 3
    assert threading.active_count() >= 1 and not any(
        t.name == wq.name for t in threading.enumerate())  # no worker thread


def test_a_pending_item_is_not_queued_twice() -> None:
    wq = OrderedWorkQueue(mode="manual")
    log: list[str] = []
    work = _appender(log, "w")
    assert wq.queue(work) is True
    assert work.pending
    assert wq.queue(work) is False
    assert len(wq) == 1
    wq.run_pending()
    assert log == ["w"] and not work.pending
    assert wq.queue(work) is True  # it ran: it may be queued again


def test_an_item_may_requeue_itself_while_running() -> None:
    """Like ``queue_work`` on a running work_struct: it is no longer pending, so it is queued
    again and runs once more after what was queued before it."""
    wq = OrderedWorkQueue(mode="manual")
    log: list[str] = []
    runs = 0

    def again() -> None:
        nonlocal runs
        runs += 1
        log.append(f"self{runs}")
        if runs == 1:
            assert wq.queue(work) is True

    work = Work(again)
    wq.queue(work)
    wq.queue(_appender(log, "other"))
    wq.flush()
    assert log == ["self1", "other", "self2"]


def test_threaded_order_is_submission_order(threaded: OrderedWorkQueue) -> None:
    log: list[str] = []
    gate = Gate()
    threaded.queue(Work(gate))
    assert gate.started.wait(TIMEOUT)
    names = [f"w{i}" for i in range(20)]
    for name in names:
        threaded.queue(_appender(log, name))
    assert len(threaded) == 21  # the running item counts
    gate.release.set()
    assert threaded.flush(TIMEOUT)
    assert log == names and len(threaded) == 0 and threaded.completed == 21


def test_flush_waits_for_the_running_item(threaded: OrderedWorkQueue) -> None:
    gate = Gate()
    threaded.queue(Work(gate))
    assert gate.started.wait(TIMEOUT)
    assert threaded.flush(timeout=0.01) is False  # still running: flush gives up at its timeout
    gate.release.set()
    assert threaded.flush(TIMEOUT) is True
    assert threaded.flush(0) is True  # idle: at once


def test_a_failing_item_does_not_kill_the_worker(threaded: OrderedWorkQueue) -> None:
    log: list[str] = []

    def boom() -> None:
        raise ValueError("work item bug")

    threaded.queue(Work(boom, "boom"))
    threaded.queue(_appender(log, "after"))
    assert threaded.flush(TIMEOUT)
    assert log == ["after"]
    assert [type(e) for e in threaded.errors] == [ValueError]
    threaded.queue(_appender(log, "later"))  # the same worker still serves the queue
    assert threaded.flush(TIMEOUT) and log == ["after", "later"]


def test_a_failing_item_in_manual_mode() -> None:
    wq = OrderedWorkQueue(mode="manual")
    log: list[str] = []
    wq.queue(Work(lambda: 1 / 0, "div"))
    wq.queue(_appender(log, "after"))
    assert wq.run_pending() == 2
    assert log == ["after"] and isinstance(wq.errors[0], ZeroDivisionError)


def test_stop_runs_what_is_queued_then_refuses(threaded: OrderedWorkQueue) -> None:
    log: list[str] = []
    gate = Gate()
    threaded.queue(Work(gate))
    assert gate.started.wait(TIMEOUT)
    threaded.queue(_appender(log, "queued before stop"))
    stopper = threading.Thread(target=threaded.stop)
    stopper.start()
    gate.release.set()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert log == ["queued before stop"]
    assert not any(t.name == "test_wq" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="stopped"):
        threaded.queue(_appender(log, "too late"))


def test_one_worker_runs_one_item_at_a_time(threaded: OrderedWorkQueue) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()
    threads: set[int] = set()

    def item() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        with lock:
            running -= 1

    for _ in range(50):
        threaded.queue(Work(item))
    assert threaded.flush(TIMEOUT)
    assert (peak, len(threads)) == (1, 1)
    assert threading.get_ident() not in threads


def test_cleanup_completes_in_notification_order() -> None:
    """Subscribers that defer their cleanup of one FREE event (KVM at CPU priority,
    then the IOMMU driver) see it complete in the order they were notified."""
    world = World("fixed")
    core = world.core
    s = world.null_set(4)
    log: list[str] = []

    def subscriber(name: str) -> Callable[[NotifierBlock, IoasidNotify, IoasidNbArgs], int]:
        work = _appender(log, f"{name} cleanup")

        def callback(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
            log.append(f"{name} notified")
            core.queue_work(work)
            return NOTIFY_OK

        return callback

    core.register_notifier(None, NotifierBlock(subscriber("iommu"), 2))
    core.register_notifier(None, NotifierBlock(subscriber("kvm"), 3))
    ioasid = core.alloc(s, 1, 10)
    core.get(None, ioasid)
    core.free(s, ioasid)
    assert world.wq.flush()
    assert log == ["kvm notified", "iommu notified", "kvm cleanup", "iommu cleanup"]


def test_only_step_mode_runs_items_when_a_call_returns() -> None:
    log: list[str] = []
    for mode in ("manual", "thread"):
        wq = OrderedWorkQueue(f"wq_{mode}", mode=mode)
        gate = Gate()
        if mode == "thread":
            wq.queue(Work(gate))  # the worker is busy: what follows stays queued
            assert gate.started.wait(TIMEOUT)
        wq.queue(_appender(log, mode))
        assert len(wq.due) == 0 and wq.call_returned() == 0 and log == []
        gate.release.set()
        assert wq.flush(TIMEOUT) and log == [mode]
        log.clear()
        wq.stop()
    step = OrderedWorkQueue(mode="step")
    step.queue(_appender(log, "a"))
    step.queue(_appender(log, "b"))
    assert len(step.due) == 2 and step.worker is None
    assert step.call_returned() == 2 and log == ["a", "b"] and len(step.due) == 0


def test_running_a_step_queue_by_hand_does_not_nest_the_items() -> None:
    """Items queued on the queue itself wait; when a test runs them, each item's own model call
    returns while the queue is being run: the items still run one after the other, not each
    inside the previous one's return."""
    core = IoasidCore(wq=OrderedWorkQueue(mode="step"))
    active = 0
    peak = 0
    order: list[int] = []

    def item(n: int) -> Work:
        def fn() -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            core.set_alloc(None, 0, IoasidSetType.NULL)  # a model call of its own
            order.append(n)
            active -= 1

        return Work(fn, f"item{n}")

    for n in range(50):
        core.wq.queue(item(n))
    assert core.wq.run_pending() == 50
    assert order == list(range(50)) and peak == 1 and len(core.wq) == 0
