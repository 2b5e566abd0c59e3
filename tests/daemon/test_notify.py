"""The service manager's side of the daemon: ``WATCHDOG=1`` and ``STATUS=`` lines
(``ioasidsd.daemon.notify``), read from a datagram socket standing in for systemd's
``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from ioasidsd.daemon.notify import Heartbeat, sd_notify, watchdog_interval
from ioasidsd.eventloop import EventLoop


class FakeManager:
    """A ``$NOTIFY_SOCKET``: a datagram socket the test reads."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.environ = {"NOTIFY_SOCKET": path}

    def send(self, *lines: str) -> bool:
        return sd_notify(*lines, environ=self.environ)

    def received(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def manager(tmp_path):
    fake = FakeManager(str(tmp_path / "notify"))
    yield fake
    fake.sock.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_interval_comes_from_the_environment():
    me = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(me)}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(me + 1)}) is None
    for junk in ("", "0", "-5", "1.5", "abc"):
        assert watchdog_interval({"WATCHDOG_USEC": junk}) is None
    assert watchdog_interval({}) is None


def test_watchdog_pings_at_half_the_interval(manager):
    clock = Clock()
    beat = Heartbeat(interval=4.0, status=lambda: "s", send=manager.send, clock=clock)
    assert beat.due() == 0
    beat.tick()
    assert manager.received() == ["WATCHDOG=1"]
    assert beat.due() == 2.0
    clock.now += 1.9
    beat.tick()
    assert manager.received() == []
    clock.now += 0.1
    beat.tick()
    assert manager.received() == ["WATCHDOG=1"]
    assert beat.pings == 2


def test_no_watchdog_without_an_interval(manager):
    beat = Heartbeat(interval=None, status=lambda: "s", send=manager.send, clock=Clock())
    assert beat.due() is None
    beat.tick()
    assert manager.received() == []


def test_a_wedged_lock_withholds_the_ping_until_it_is_free(manager):
    """The check the daemon makes: its model lock can be taken. Held by a thread that does not
    let go, no WATCHDOG=1 is sent (systemd then kills the daemon); let go, the pings resume."""
    lock = threading.RLock()
    warnings = []
    clock = Clock()

    def lock_answers() -> str | None:
        if not lock.acquire(timeout=0.05):
            return "the model lock was not free"
        lock.release()
        return None

    beat = Heartbeat(interval=1.0, status=lambda: "s", checks=[lock_answers], send=manager.send,
                     warn=lambda message, **fields: warnings.append(message), clock=clock)
    taken, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            taken.set()
            leave.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait()
    try:
        for _ in range(3):
            beat.tick()
            clock.now += 0.5
        assert manager.received() == []
        assert beat.failing == "the model lock was not free"
        assert len(warnings) == 1  # one warning for the whole time, not one per tick
    finally:
        leave.set()
        thread.join()
    beat.tick()
    assert manager.received() == ["WATCHDOG=1"]
    assert beat.failing is None


def test_status_follows_changes_at_most_once_per_interval(manager):
    clock = Clock()
    used = [0]
    beat = Heartbeat(interval=None, status=lambda: f"{used[0]} of 8 IOASIDs in use, 1 cgroups",
                     send=manager.send, clock=clock, status_interval=1.0)
    beat.sent_status("0 of 8 IOASIDs in use, 1 cgroups")  # with READY=1
    used[0] = 1
    assert beat.changed() is True
    assert beat.changed() is False  # already pending: no second wake-up
    assert beat.due() == 1.0  # the line READY=1 carried was just sent
    beat.tick()
    assert manager.received() == []
    clock.now += 1.0
    used[0] = 3
    beat.tick()
    assert manager.received() == ["STATUS=3 of 8 IOASIDs in use, 1 cgroups"]
    assert beat.due() is None
    beat.changed()  # a change that leaves the line as it was sends nothing
    clock.now += 5
    beat.tick()
    assert manager.received() == []


def test_a_manager_that_went_away_is_a_warning(tmp_path):
    warnings = []
    beat = Heartbeat(interval=1.0, status=lambda: "s",
                     send=lambda *lines: sd_notify(*lines, environ={
                         "NOTIFY_SOCKET": str(tmp_path / "gone")}),
                     warn=lambda message, **fields: warnings.append(message), clock=Clock())
    beat.tick()
    assert warnings == ["the service manager cannot be notified"]


def test_post_runs_on_the_loop_without_waiting():
    loop = EventLoop(log=None, name="test-loop")
    ran = threading.Event()
    where = []
    assert loop.post(ran.set) is False  # not serving: not run
    assert not ran.is_set()
    loop.start()
    try:
        assert loop.post(lambda: (where.append(threading.current_thread().name), ran.set()))
        assert ran.wait(5)
        assert where == ["test-loop"]
    finally:
        loop.stop()


def test_a_status_that_cannot_be_read_now_stays_pending(manager):
    clock = Clock()
    answers: list[str | None] = [None, "1 of 8 IOASIDs in use, 1 cgroups"]
    beat = Heartbeat(interval=None, status=lambda: answers.pop(0), send=manager.send,
                     clock=clock)
    beat.changed()
    beat.tick()  # the model is busy: nothing sent, still pending
    assert manager.received() == [] and beat.dirty
    assert beat.due() == 1.0
    clock.now += 1.0
    beat.tick()
    assert manager.received() == ["STATUS=1 of 8 IOASIDs in use, 1 cgroups"]
