"""The event loop the daemon's sockets share: one thread, one ``epoll`` set.

The user API (``ioasidsd.userapi.server``) and the control API (``ioasidsd.control.server``)
register their listening and connected sockets on one ``EventLoop``; its thread calls each
socket's handler when the events it waits for arrive, so every request of every socket face is
served by that one thread, in the order the kernel reports them, and no connection has a thread
of its own.

Contract:

* ``register(fd, events, handler)``, ``modify(fd, events)`` and ``unregister(fd)`` may be
  called from a handler or a timer (on the loop's thread), or before ``start``; another thread
  goes through ``call``. ``handler(fd, events)`` gets the ``select.EPOLL*`` bits that came.
* ``call(fn)`` runs ``fn()`` on the loop's thread and returns what it returns (or raises what
  it raises) to the calling thread, which waits; called on the loop's thread, or while the
  loop is not running, it runs ``fn`` at once.
* ``post(fn)`` runs ``fn()`` on the loop's thread soon, without waiting for it (the daemon's
  watchdog asks the loop to answer so); ``False`` when the loop is not running, and then
  ``fn`` is not run.
* ``call_at(deadline, fn)``: ``fn()`` runs on the loop's thread once ``time.monotonic()`` has
  reached ``deadline`` (a face pausing its listener after a failed accept).
* A handler or timer that raises is logged with its traceback and the loop goes on: a bug in
  one connection never ends the others' service. Faces catch what they expect themselves.
* ``start()`` starts the thread (named ``name``); ``stop()`` makes it return after the
  handler running now, joins it and closes the ``epoll`` set. Sockets stay open: their owners
  close them.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["EventLoop", "Handler"]

Handler = Callable[[int, int], object]
T = TypeVar("T")


class EventLoop:
    """One thread serving the handlers of many file descriptors (see the module)."""

    def __init__(self, log: Any, *, name: str = "sockets") -> None:
        self.log = log
        self.name = name
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._timer_seq = 0
        self._calls: list[Callable[[], object]] = []
        self._calls_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._serving = False  # the thread takes calls (under _calls_lock)

    # ------------------------------------------------------------------ registration
    def register(self, fd: int, events: int, handler: Handler) -> None:
        """Call ``handler(fd, events)`` when ``events`` come on ``fd``. ``OSError`` as
        ``epoll_ctl`` raises it (``EEXIST`` for a descriptor registered already)."""
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        """Wait for ``events`` on the registered ``fd`` instead."""
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``. Does nothing for a descriptor not registered (or closed)."""
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    # ------------------------------------------------------------------ other threads
    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the loop's thread and return its result (see the module)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return fn()
        done = threading.Event()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the caller, not the loop
                outcome.append((False, exc))
            finally:
                done.set()

        with self._calls_lock:
            if not self._serving:  # the thread has ended (or is ending): nothing else runs
                return fn()
            self._calls.append(run)
        self._wake()
        done.wait()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def post(self, fn: Callable[[], object]) -> bool:
        """Have ``fn()`` run on the loop's thread after what it is doing now, without waiting
        (see the module); ``False``, ``fn`` not run, when the loop is not serving."""
        def run() -> None:
            try:
                fn()
            except Exception:
                with contextlib.suppress(Exception):
                    self.log.exception("posted call failed")

        with self._calls_lock:
            if not self._serving:
                return False
            self._calls.append(run)
        self._wake()
        return True

    def call_at(self, deadline: float, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the loop's thread once ``time.monotonic()`` reaches ``deadline``.
        From the loop's thread, or through ``call``."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, fn))

    # ------------------------------------------------------------------ the thread
    def start(self) -> None:
        """Start serving on a thread of its own."""
        self._stopping = False
        self._serving = True
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread after its current handler, join it and close the ``epoll`` set.
        Idempotent."""
        thread = self._thread
        if thread is not None:
            self._stopping = True
            self._wake()
            thread.join()
            self._thread = None
        if self._wake_r >= 0:
            self._epoll.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop already
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with self._calls_lock:
                self._serving = False
                calls, self._calls = self._calls, []
            for run in calls:  # asked before the end: answered, never left waiting
                run()

    def _serve(self) -> None:
        handlers = self._handlers
        poll = self._epoll.poll
        wake_r = self._wake_r
        while not self._stopping:
            timeout = -1.0
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for fd, events in poll(timeout):
                if fd == wake_r:
                    self._drain()
                    continue
                handler = handlers.get(fd)
                if handler is None:
                    continue  # unregistered by a handler earlier in this round
                try:
                    handler(fd, events)
                except Exception:
                    with contextlib.suppress(Exception):
                        self.log.exception("event handler failed", fd=fd)
            if self._timers:
                self._run_timers()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for run in calls:
            run()

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            try:
                fn()
            except Exception:
                with contextlib.suppress(Exception):
                    self.log.exception("event timer failed")
