"""``ModelLock`` (``modellock.py``): a re-entrant lock whose outermost release runs a hook.

No test sleeps: the one test with a second thread coordinates with events and timeouts.
"""

from __future__ import annotations

import threading

import pytest

from ioasidsd.model import ModelLock

TIMEOUT = 10.0


def depth(lock: ModelLock) -> int:
    """How many times the calling thread holds ``lock`` (0: not at all), read through the C
    lock's own save/restore pair, which runs no hook."""
    if not lock.held():
        return 0
    state = lock._release_save()
    lock._acquire_restore(state)
    return int(state[0])


def test_the_hook_runs_once_at_the_outermost_release_with_the_lock_held() -> None:
    seen: list[tuple[int, bool]] = []
    lock = ModelLock(lambda: seen.append((depth(lock), lock.held())))
    with lock:
        with lock:
            assert depth(lock) == 2
        assert seen == []  # an inner release is not the end of the call
        assert depth(lock) == 1
    assert seen == [(1, True)]
    assert depth(lock) == 0 and not lock.held()


def test_what_the_hook_calls_nests_and_does_not_run_it_again() -> None:
    runs: list[int] = []

    def hook() -> None:
        runs.append(depth(lock))
        with lock:  # a work item's own model call
            runs.append(depth(lock))

    lock = ModelLock(hook)
    with lock:
        pass
    assert runs == [1, 2]


def test_the_hook_waits_for_when_to_be_non_empty() -> None:
    due: list[str] = []
    ran: list[list[str]] = []
    lock = ModelLock(lambda: (ran.append(list(due)), due.clear()), when=due)
    with lock:
        pass
    assert ran == []  # nothing due: not even called
    with lock:
        due.append("work")
    assert ran == [["work"]] and due == []


def test_the_hook_runs_when_the_call_raises_and_the_lock_is_released() -> None:
    ran: list[str] = []
    lock = ModelLock(lambda: ran.append("hook"))
    with pytest.raises(ValueError, match="call failed"), lock:
        raise ValueError("call failed")
    assert ran == ["hook"] and depth(lock) == 0 and not lock.held()


def test_a_failing_hook_still_releases_the_lock() -> None:
    calls: list[int] = []

    def hook() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("hook failed")

    lock = ModelLock(hook)
    with pytest.raises(RuntimeError, match="hook failed"), lock:
        pass
    assert depth(lock) == 0 and not lock.held()
    assert lock.acquire(blocking=False)  # free again
    lock.release()
    assert calls == [0, 1]


def test_release_by_a_thread_that_does_not_hold_it_changes_nothing() -> None:
    ran: list[str] = []
    lock = ModelLock(lambda: ran.append("hook"))
    with pytest.raises(RuntimeError):
        lock.release()
    held = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            assert held.wait(TIMEOUT)
            lock.release()
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)
        finally:
            done.set()

    with lock:
        thread = threading.Thread(target=other)
        thread.start()
        held.set()
        assert done.wait(TIMEOUT)
        assert [type(e) for e in errors] == [RuntimeError]
        assert depth(lock) == 1 and lock.held() and ran == []
    thread.join(TIMEOUT)
    assert ran == ["hook"]


def test_acquire_without_blocking_while_another_thread_holds_it() -> None:
    lock = ModelLock()
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            assert release.wait(TIMEOUT)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(TIMEOUT)
        assert lock.acquire(blocking=False) is False
        assert not lock.held()
    finally:
        release.set()
        thread.join(TIMEOUT)
    assert lock.acquire(timeout=TIMEOUT)
    lock.release()


def test_the_after_release_hook_runs_without_the_lock_when_work_is_due() -> None:
    """``after_release``: after the outermost release, on the releasing thread, without the
    lock, only while ``when`` is non-empty; nested releases do not run it."""
    due: list[str] = []
    ran: list[bool] = []
    lock = ModelLock(lambda: ran.append(lock.held()), when=due)

    def after() -> None:
        ran.append(lock.held())
        due.clear()

    lock.after_release(after, due)
    with lock:
        pass
    assert ran == []  # nothing due
    with lock:
        with lock:
            due.append("x")
        assert ran == []  # not at a nested release
    assert ran == [True, False]  # on_return with the lock, then the after hook without it
    lock.after_release(None)
    due.append("y")
    with lock:
        pass
    assert ran == [True, False, True]  # removed: only on_return ran
