"""The shared ordered work queue (``ioasid_wq``): one worker thread, one item at a time.

Items run in submission order, so cleanup work that different subscribers queue for the same
event completes in notification order. A ``Work`` item can be queued again once it has started
running; queueing it while it is still pending returns ``False``.

This is the model's only thread. Work functions call the core's public API, which takes the
core's lock. ``flush()`` waits until every item queued so far has run: tests use it instead of
sleeping, and ``run_pending()`` lets a test run items on its own thread in step mode.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class Work:
    """``struct work_struct``: a function to run on the queue, and whether it is pending."""

    __slots__ = ("fn", "name", "pending")

    def __init__(self, fn: Callable[[], None], name: str = "") -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", "work")
        self.pending = False

    def __repr__(self) -> str:
        return f"Work({self.name!r}, pending={self.pending})"


class OrderedWorkQueue:
    """An ordered work queue with a worker thread started on first use.

    ``step_mode=True`` starts no thread: items wait until ``run_pending()`` runs them, which
    lets tests interleave events deterministically. ``errors`` keeps the exceptions raised by
    work functions (the worker survives them).
    """

    def __init__(self, name: str = "ioasid_wq", *, step_mode: bool = False) -> None:
        self.name = name
        self.step_mode = step_mode
        self.errors: list[BaseException] = []
        self._items: deque[Work] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.completed = 0

    def queue(self, work: Work) -> bool:
        """Queue ``work``; ``False`` if it is already pending (``ioasid_queue_work``)."""
        with self._cond:
            if work.pending:
                return False
            if self._stopped:
                raise RuntimeError(f"work queue {self.name} is stopped")
            work.pending = True
            self._items.append(work)
            if not self.step_mode and self._thread is None:
                self._thread = threading.Thread(target=self._worker, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def __len__(self) -> int:
        with self._cond:
            return len(self._items) + (1 if self._running else 0)

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

    def run_pending(self, limit: int | None = None) -> int:
        """Step mode: run up to ``limit`` queued items on the calling thread; returns how many."""
        done = 0
        while limit is None or done < limit:
            with self._cond:
                work = self._take()
            if work is None:
                break
            self._run(work)
            done += 1
        return done

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until the queue is empty and idle (``flush_workqueue``); step mode runs them.

        Returns ``False`` if ``timeout`` seconds passed first.
        """
        if self.step_mode:
            self.run_pending()
            return True
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._running, timeout)

    def stop(self) -> None:
        """Run what is queued, then end the worker thread (``destroy_workqueue``)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self.step_mode:
            self.run_pending()
