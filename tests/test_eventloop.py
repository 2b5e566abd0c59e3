"""The event loop the daemon's sockets share: handlers, calls from other threads, timers,
failures that do not end it."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest

from ioasidsd.eventloop import EventLoop


class Log:
    def __init__(self) -> None:
        self.exceptions: list[str] = []

    def exception(self, event: str, **kw: object) -> None:
        self.exceptions.append(event)


@pytest.fixture
def loop():
    log = Log()
    loop = EventLoop(log, name="test-loop")
    loop.start()
    yield loop
    loop.stop()


def test_handlers_run_on_the_loop_thread_and_a_failing_one_does_not_end_it(loop) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    seen: list[tuple[str, bytes, str]] = []
    done = threading.Event()

    def failing(fd: int, events: int) -> None:
        os.read(fd, 100)
        raise RuntimeError("a bug in one connection")

    def echo(fd: int, events: int) -> None:
        seen.append(("d", os.read(fd, 100), threading.current_thread().name))
        done.set()

    loop.call(lambda: loop.register(b.fileno(), select.EPOLLIN, failing))
    loop.call(lambda: loop.register(d.fileno(), select.EPOLLIN, echo))
    a.send(b"boom")
    c.send(b"hello")
    assert done.wait(5)
    assert seen == [("d", b"hello", "test-loop")]
    # the failure was logged, and the loop still serves
    assert loop.call(lambda: loop.log.exceptions) == ["event handler failed"]
    done.clear()
    c.send(b"again")
    assert done.wait(5) and seen[-1][1] == b"again"
    for s in (a, b, c, d):
        s.close()


def test_call_returns_the_result_or_raises_in_the_caller(loop) -> None:
    assert loop.call(lambda: threading.current_thread().name) == "test-loop"
    with pytest.raises(ZeroDivisionError):
        loop.call(lambda: 1 // 0)
    assert loop.call(lambda: 7) == 7  # the loop goes on


def test_a_timer_runs_at_its_deadline_on_the_loop(loop) -> None:
    fired = threading.Event()
    names: list[str] = []

    def fire() -> None:
        names.append(threading.current_thread().name)
        fired.set()

    start = time.monotonic()
    loop.call(lambda: loop.call_at(start + 0.05, fire))
    assert fired.wait(5)
    assert time.monotonic() - start >= 0.05 and names == ["test-loop"]


def test_after_stop_calls_run_in_the_caller_and_stop_is_idempotent() -> None:
    loop = EventLoop(Log())
    loop.start()
    loop.stop()
    loop.stop()
    assert loop.call(lambda: threading.current_thread().name) == \
        threading.current_thread().name
