"""The model's lock: one re-entrant lock whose outermost release ends a model call.

Every public call of the core, the cgroup controller and the VT-d driver takes ``core.lock``,
and faces take it around compound changes (``System``, the daemon). Calls nest: a public call
made while the lock is held (from another call, a face's critical section or a work item) is
part of the outer call. So "the outermost model call returns" is exactly "the outermost holder
releases the lock", and that is where ``ModelLock`` runs its ``on_return`` hook: the core uses
it to run, in step mode, the work the call queued (``ioasidsd.model.workqueue``).

Contract:

* ``acquire``/``release`` and the ``with`` statement behave as ``threading.RLock``'s; a
  ``release`` by a thread that does not hold the lock raises ``RuntimeError`` and changes
  nothing.
* At the holder's outermost release, if ``when`` is non-empty (always, without ``when``),
  ``on_return()`` runs first, on that thread, with the lock still held at depth 1: what it
  calls takes the lock again (depth 2), so it is part of the same call and does not run the
  hook again, and no other thread can come in between the call and its hook. Then the lock is
  released. The hook runs whether the call returned or raised, and the lock is released even if
  the hook raises (its exception then propagates, chained to the call's if there was one).
* ``depth`` is the holder's nesting (0 when free); only the holder may rely on its value.

Every model call goes through this lock, so its fast path is kept to two attribute tests: the
hook is not even called while ``when`` is empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sized
from types import TracebackType

_ALWAYS = (True,)  # a ``when`` that is never empty


class ModelLock:
    """A re-entrant lock that runs ``on_return`` when its outermost holder lets go, if ``when``
    is non-empty at that moment (see the module)."""

    __slots__ = ("_acquire", "_is_owned", "_on_return", "_release", "_when", "depth")

    def __init__(self, on_return: Callable[[], object] | None = None, *,
                 when: Sized | None = None) -> None:
        lock = threading.RLock()
        self._acquire = lock.acquire
        self._release = lock.release
        self._is_owned = lock._is_owned  # type: ignore[attr-defined]  # as threading.Condition
        self.depth = 0
        self._on_return = on_return
        self._when: Sized = () if on_return is None else _ALWAYS if when is None else when

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (``threading.RLock.acquire``); ``False`` if it was not taken."""
        if not self._acquire(blocking, timeout):
            return False
        self.depth += 1  # only the holder writes depth
        return True

    def release(self) -> None:
        """Let go once; the outermost release may run ``on_return`` first (see the module).

        ``RuntimeError`` if this thread does not hold the lock.
        """
        if not self._is_owned():
            raise RuntimeError("cannot release un-acquired lock")
        self.__exit__(None, None, None)

    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return bool(self._is_owned())

    def __enter__(self) -> bool:
        self._acquire()
        self.depth += 1
        return True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.depth == 1 and self._when:
            try:
                self._on_return()  # type: ignore[misc]  # set whenever ``_when`` can be non-empty
            finally:
                self.depth = 0
                self._release()
            return
        self.depth -= 1
        self._release()

    def __repr__(self) -> str:
        return f"<ModelLock depth={self.depth} held={self.held()}>"
