"""The shared ordered work queue (``ioasid_wq``): deferred work, one item at a time, in order.

Items run in submission order, so cleanup work that different subscribers queue for the same
event completes in notification order. A ``Work`` item can be queued again once it has started
running; queueing it while it is still pending returns ``False``.

Who runs the items is the queue's ``mode`` (``WorkMode``):

* ``step`` (the default, the model's own): no thread. The queue's owner runs the items when its
  outermost call returns: ``IoasidCore`` wires ``call_returned`` to the return of its lock
  (``ioasidsd.model.modellock``), so the work a model call queues (and the work that work
  queues) has run, on the calling thread and in order, before the call returns to its face.
  Items queued outside any model call wait for the next one to return, or for
  ``run_pending``/``flush``. The model stays single-threaded and deterministic.
* ``manual``: no thread, and nothing runs until ``run_pending()`` or ``flush()``: tests that
  look at the queue between a call and its deferred work use it.
* ``thread``: a worker thread, started on first use, runs the items as a kworker does, after
  and concurrently with the call that queued them. Work functions call the core's public API,
  which takes the core's lock. The daemon runs in this mode.

Exceptions raised by work functions never reach the caller nor stop the queue: they are kept in
``errors``. ``flush()`` waits until every item queued so far has run (tests use it instead of
sleeping).
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable, Sized


class Work:
    """``struct work_struct``: a function to run on the queue, and whether it is pending."""

    __slots__ = ("fn", "name", "pending")

    def __init__(self, fn: Callable[[], None], name: str = "") -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", "work")
        self.pending = False

    def __repr__(self) -> str:
        return f"Work({self.name!r}, pending={self.pending})"


class WorkMode(enum.StrEnum):
    """Who runs a queue's items (see the module)."""

    STEP = "step"
    MANUAL = "manual"
    THREAD = "thread"


class OrderedWorkQueue:
    """An ordered work queue; ``mode`` (a ``WorkMode`` or its value) says who runs the items.

    ``ValueError`` for an unknown mode. ``errors`` keeps the exceptions raised by work functions;
    ``completed`` counts the items that ran.
    """

    def __init__(self, name: str = "ioasid_wq", *, mode: WorkMode | str = WorkMode.STEP) -> None:
        self.name = name
        self._mode = WorkMode(mode)
        self.errors: list[BaseException] = []
        self._items: deque[Work] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._drainer: int | None = None  # the thread running items in step mode
        self.completed = 0

    def queue(self, work: Work) -> bool:
        """Queue ``work``; ``False`` if it is already pending (``ioasid_queue_work``).

        ``RuntimeError`` once the queue is stopped.
        """
        with self._cond:
            if work.pending:
                return False
            if self._stopped:
                raise RuntimeError(f"work queue {self.name} is stopped")
            work.pending = True
            self._items.append(work)
            if self._mode is WorkMode.THREAD and self._thread is None:
                self._thread = threading.Thread(target=self._worker, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def __len__(self) -> int:
        """Items queued and not finished (the running one included)."""
        with self._cond:
            return len(self._items) + (1 if self._running else 0)

    @property
    def mode(self) -> WorkMode:
        """Who runs the items; fixed for the queue's life."""
        return self._mode

    @property
    def due(self) -> Sized:
        """What ``call_returned`` has to run, for a cheap test before calling it: the queued
        items in ``step`` mode, always empty in the other modes."""
        return self._items if self._mode is WorkMode.STEP else ()

    @property
    def worker(self) -> threading.Thread | None:
        """The worker thread (``thread`` mode, once something was queued), else ``None``."""
        return self._thread

    def _take(self) -> Work | None:
        if not self._items:
            return None
        work = self._items.popleft()
        work.pending = False
        self._running = True
        return work

    def _run(self, work: Work) -> None:
        try:
            work.fn()
        except BaseException as exc:  # the worker outlives a failing item, as a kworker does
            self.errors.append(exc)
        finally:
            with self._cond:
                self._running = False
                self.completed += 1
                self._cond.notify_all()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopped:
                    self._cond.wait()
                if self._stopped and not self._items:
                    return
                work = self._take()
            if work is not None:
                self._run(work)

    def call_returned(self) -> int:
        """The owner's outermost call is returning (``IoasidCore`` calls this from its lock).

        In ``step`` mode: run every queued item on the calling thread, including those the items
        queue, and return how many ran. Other modes, and a call made while this thread is
        already running the queue's items, run nothing (0). Never raises for a failing item.
        """
        if self._mode is not WorkMode.STEP or not self._items:
            return 0
        if self._drainer == threading.get_ident():
            return 0  # an item's own call returned: the loop running it picks up the rest
        return self.run_pending()

    def run_pending(self, limit: int | None = None) -> int:
        """Run up to ``limit`` queued items on the calling thread, in order; returns how many.

        For the ``manual`` and ``step`` modes (in ``thread`` mode the worker would run them
        concurrently: use ``flush``).
        """
        done = 0
        outer = self._drainer is None
        if outer:
            self._drainer = threading.get_ident()
        try:
            while limit is None or done < limit:
                with self._cond:
                    work = self._take()
                if work is None:
                    break
                self._run(work)
                done += 1
        finally:
            if outer:
                self._drainer = None
        return done

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until the queue is empty and idle (``flush_workqueue``); without a thread, run
        the items here.

        Returns ``False`` if ``timeout`` seconds passed first (``thread`` mode only).
        """
        if self._mode is not WorkMode.THREAD:
            self.run_pending()
            return True
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._running, timeout)

    def stop(self) -> None:
        """Run what is queued, then end the worker thread (``destroy_workqueue``); later
        ``queue`` calls raise ``RuntimeError``."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._mode is not WorkMode.THREAD:
            self.run_pending()
