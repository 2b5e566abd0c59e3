"""Notifier chains with the semantics of Linux's atomic notifier chains.

A chain calls its blocks by descending priority, and among equal priorities in registration
order. A callback whose return value has the stop bit set ends the walk; the chain returns the
last value returned. Registering a block twice on one chain is refused with a warning (the call
still returns 0); unregistering an unknown block is a no-op.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ioasidsd.model.core import IoasidSet

NOTIFY_DONE = 0x0000
NOTIFY_OK = 0x0001
NOTIFY_STOP_MASK = 0x8000
NOTIFY_BAD = NOTIFY_STOP_MASK | 0x0002
NOTIFY_STOP = NOTIFY_OK | NOTIFY_STOP_MASK


class IoasidNotify(enum.IntEnum):
    """``enum ioasid_notify_val``."""

    ALLOC = 1
    FREE = 2
    BIND = 3
    UNBIND = 4


class IoasidPrio(enum.IntEnum):
    """``enum ioasid_notifier_prios``: higher runs first."""

    LAST = 0
    DEVICE = 1
    IOMMU = 2
    CPU = 3


# Scope flags of the internal emitter.
IOASID_NOTIFY_FLAG_ALL = 1 << 0
IOASID_NOTIFY_FLAG_SET = 1 << 1


@dataclass(frozen=True, slots=True)
class IoasidNbArgs:
    """The payload handed to callbacks (``struct ioasid_nb_args``), sampled at emission time."""

    id: int
    spid: int
    set: IoasidSet
    pdata: Any


Callback = Callable[["NotifierBlock", IoasidNotify, IoasidNbArgs], int]


class NotifierBlock:
    """``struct notifier_block``: a callback and its priority.

    ``callback(nb, event, args)`` returns ``NOTIFY_DONE``, ``NOTIFY_OK`` or a value with
    ``NOTIFY_STOP_MASK`` set to stop the walk. Callbacks run while the core's lock is held: they
    must use the ``*_locked`` forms of the core's API (the others raise ``EDEADLK``) or defer
    work to the core's ordered work queue.
    """

    __slots__ = ("callback", "name", "priority")

    def __init__(self, callback: Callback, priority: int = IoasidPrio.LAST, name: str = "") -> None:
        self.callback = callback
        self.priority = int(priority)
        self.name = name or getattr(callback, "__qualname__", "notifier")

    def __repr__(self) -> str:
        return f"NotifierBlock({self.name!r}, priority={self.priority})"


class NotifierChain:
    """An ordered list of notifier blocks.

    ``warnings`` collects the messages that the kernel would log (duplicate registration).
    """

    __slots__ = ("blocks", "warnings")

    def __init__(self) -> None:
        self.blocks: list[NotifierBlock] = []
        self.warnings: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def register(self, nb: NotifierBlock) -> int:
        """Insert ``nb`` after every block of higher or equal priority; always returns 0."""
        if any(b is nb for b in self.blocks):
            self.warnings.append(f"notifier {nb.name} registered twice")
            return 0
        index = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if nb.priority > block.priority:
                index = i
                break
        self.blocks.insert(index, nb)
        return 0

    def unregister(self, nb: NotifierBlock) -> bool:
        """Remove ``nb``; returns whether it was registered."""
        for i, block in enumerate(self.blocks):
            if block is nb:
                del self.blocks[i]
                return True
        return False

    def __contains__(self, nb: object) -> bool:
        return any(b is nb for b in self.blocks)

    def call(
        self, event: IoasidNotify, args: IoasidNbArgs, log: Callable[[str], None] | None = None
    ) -> int:
        """Call the blocks in order until one returns a value with the stop bit.

        A callback that raises is a subscriber's bug: it is recorded in ``warnings`` (and given
        to ``log``), counts as ``NOTIFY_DONE``, and the walk goes on, so that the operation that
        emitted the event completes and no other subscriber misses it. An ``IoasidError`` raised
        on purpose (e.g. ``EDEADLK`` from a forbidden call) is recorded the same way.
        """
        ret = NOTIFY_DONE
        for nb in list(self.blocks):
            try:
                ret = nb.callback(nb, event, args)
            except Exception as exc:
                message = f"notifier {nb.name} failed on {event.name} of IOASID {args.id}: {exc!r}"
                self.warnings.append(message)
                if log is not None:
                    log(message)
                ret = NOTIFY_DONE
                continue
            if ret & NOTIFY_STOP_MASK:
                break
        return ret
