"""The model's lock: one re-entrant lock whose outermost release ends a model call.

Every public call of the core, the cgroup controller and the VT-d driver takes ``core.lock``,
and faces take it around compound changes (``System``, the daemon). Calls nest: a public call
made while the lock is held (from another call, a face's critical section or a work item) is
part of the outer call. So "the outermost model call returns" is exactly "the outermost holder
releases the lock", and that is where ``ModelLock`` runs its ``on_return`` hook: the core uses
it to run, in step mode, the work the call queued (``ioasidsd.model.workqueue``).

Contract:

* It is a ``threading.RLock`` (the C lock, subclassed): ``acquire``, ``held`` and taking it
  with ``with`` cost what an ``RLock`` costs; a ``release`` by a thread that does not hold the
  lock raises ``RuntimeError`` and changes nothing.
* When the holder lets go of its outermost hold and ``when`` is non-empty (always, without
  ``when``), ``on_return()`` runs on that thread with the lock held again (what it calls nests
  inside it and does not run the hook again), then the lock is released. It runs whether the
  call returned or raised, and the lock is released even if the hook raises (its exception then
  propagates, chained to the call's if there was one).
* Between the outermost release and the hook taking the lock again, another thread may take
  the lock; its own outermost release then runs what is due, in the same order. With one thread
  (experiments, tests) the hook always runs before the call returns to its caller.
* ``after_release(hook, when)`` adds a second hook, for work that must not run under the lock
  but must be done before the call returns (a face telling the kernel that a file it caches
  changed): after the outermost release, and after ``on_return``, ``hook()`` runs on the
  releasing thread, **without** the lock, whenever ``when`` is non-empty. While ``when`` is
  empty it costs one attribute test.

Every model call goes through this lock, so taking it is the C lock's own ``__enter__``, and
letting go costs one attribute test more than the C lock while ``when`` is empty. The
model's hottest calls (one IOASID allocated or freed) skip even ``with``: they take and let
go with the C lock's own methods, ``hold`` and ``let_go`` (a ``with`` makes two bound methods
and, here, a Python ``__exit__``: together 7% of an alloc+free pair), and then, when ``when``
is non-empty, call ``finish`` as ``__exit__`` would have. Calls that must also run the
``after_release`` hook as ``__exit__`` does (``System``'s fork, open and exit, every tenant of
an experiment) test ``after_when`` too and call ``finish_all``.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable, Sized
from types import TracebackType
from typing import TYPE_CHECKING

_ALWAYS = (True,)  # a ``when`` that is never empty
_c_acquire = _thread.RLock.acquire
_c_release = _thread.RLock.release  # called directly: ``super()`` costs as much as the release

hold = _c_acquire
"""Take a ``ModelLock`` (``hold(lock)``) with the C lock's own ``acquire``: for the hottest
calls, with ``let_go`` and ``finish`` (see the module)."""
let_go = _c_release
"""Let go of one hold with the C lock's own ``release``, without the hook: the caller then
calls ``finish`` if ``when`` is non-empty (see the module)."""


class ModelLock(_thread.RLock):  # type: ignore[misc]  # the C RLock type, subclassable
    """A re-entrant lock that runs ``on_return`` when its outermost holder lets go, if ``when``
    is non-empty at that moment (see the module)."""

    __slots__ = ("_after", "_on_return", "_when", "after_when")

    if TYPE_CHECKING:
        def _is_owned(self) -> bool:
            """The C lock's own test (``threading.RLock._is_owned``); typeshed omits it."""
            ...

    def __init__(self, on_return: Callable[[], object] | None = None, *,
                 when: Sized | None = None) -> None:
        self._on_return = on_return
        self._when: Sized = () if on_return is None else _ALWAYS if when is None else when
        self._after: Callable[[], object] | None = None
        self.after_when: Sized = ()
        """The ``when`` of the ``after_release`` hook (empty without one): read it, set it
        with ``after_release``."""

    def after_release(self, hook: Callable[[], object] | None, when: Sized = _ALWAYS) -> None:
        """Run ``hook()`` without the lock after every outermost release at which ``when`` is
        non-empty (see the module); ``None`` removes the hook. One such hook at a time."""
        self._after = hook
        self.after_when = () if hook is None else when

    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return bool(self._is_owned())

    def release(self) -> None:
        """Let go once; the outermost release may run ``on_return`` (see the module).

        ``RuntimeError`` if this thread does not hold the lock.
        """
        _c_release(self)
        if self._when and not self._is_owned():
            self._run_hook()
        if self.after_when and not self._is_owned():
            self._after()  # type: ignore[misc]  # set whenever ``after_when`` can be non-empty

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _c_release(self)
        if self._when and not self._is_owned():
            self._run_hook()
        if self.after_when and not self._is_owned():
            self._after()  # type: ignore[misc]  # set whenever ``after_when`` can be non-empty

    def finish(self) -> None:
        """After ``let_go``: run the hook if that was the outermost hold (what ``__exit__``
        does after its release). Call it when ``when`` is non-empty; otherwise it is a test."""
        if self._when and not self._is_owned():
            self._run_hook()

    def finish_all(self) -> None:
        """After ``let_go``: what ``__exit__`` does after its release, both hooks (for a caller
        that holds the lock without ``with`` and tests ``when`` and ``after_when`` itself:
        call it when either is non-empty)."""
        if self._when and not self._is_owned():
            self._run_hook()
        if self.after_when and not self._is_owned():
            self._after()  # type: ignore[misc]  # set whenever ``after_when`` can be non-empty

    def _run_hook(self) -> None:
        """The outermost hold was just let go with work due: take the lock again, run the hook
        (what it calls nests), let go without running it again."""
        _c_acquire(self)
        try:
            if self._when:
                self._on_return()  # type: ignore[misc]  # set whenever ``_when`` can be non-empty
        finally:
            _c_release(self)

    def __repr__(self) -> str:
        return f"<ModelLock held={self.held()}>"
