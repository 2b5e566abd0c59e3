"""The pure model: IOASID core, the cgroup-v1 hierarchy and the ``ioasids`` controller it hosts,
knobs, notifiers, the ordered work queue, the ``/dev/ioasid`` device.

The contract every model object keeps:

* No I/O, no clock, no randomness: nothing in ``ioasidsd.model`` reads the time or draws a
  random number. Times the model keeps (a process's start time) are passed in by the caller.
* Deterministic and single-threaded by default: the same calls in the same order give the same
  results, messages and notifications. The model starts no thread of its own: deferred work
  (``IoasidCore.queue_work``: FREE cleanups, notifier-driven teardown) runs in ``step`` mode,
  when the outermost model call returns (the last release of ``core.lock``, a ``ModelLock``),
  in order, on the calling thread, before that call returns to its face.
* The daemon opts into a worker thread (``OrderedWorkQueue(mode="thread")``), as the kernel's
  ``ioasid_wq``: there deferred work runs after, and concurrently with, the call that queued
  it. Tests that look at the queue between a call and its work use ``mode="manual"`` and
  ``run_pending``/``flush``.
* Every refusal raises ``IoasidError`` with the kernel's errno and changes nothing.
"""

from ioasidsd.model.core import (
    INVALID_IOASID,
    PCI_PASID_MAX,
    IoasidCore,
    IoasidData,
    IoasidSet,
    IoasidSetType,
    IoasidState,
)
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup, Controller, Hierarchy, Process, TaskSet
from ioasidsd.model.ioasids import Charge, IoasidsController
from ioasidsd.model.knobs import Knobs, profile
from ioasidsd.model.modellock import ModelLock
from ioasidsd.model.notifier import (
    NOTIFY_DONE,
    NOTIFY_OK,
    NOTIFY_STOP,
    NOTIFY_STOP_MASK,
    IoasidNbArgs,
    IoasidNotify,
    IoasidPrio,
    NotifierBlock,
)
from ioasidsd.model.workqueue import OrderedWorkQueue, Work, WorkMode

__all__ = [
    "INVALID_IOASID",
    "NOTIFY_DONE",
    "NOTIFY_OK",
    "NOTIFY_STOP",
    "NOTIFY_STOP_MASK",
    "PCI_PASID_MAX",
    "Cgroup",
    "Charge",
    "Controller",
    "Hierarchy",
    "IoasidCore",
    "IoasidData",
    "IoasidError",
    "IoasidNbArgs",
    "IoasidNotify",
    "IoasidPrio",
    "IoasidSet",
    "IoasidSetType",
    "IoasidState",
    "IoasidsController",
    "Knobs",
    "ModelLock",
    "NotifierBlock",
    "OrderedWorkQueue",
    "Process",
    "TaskSet",
    "Work",
    "WorkMode",
    "profile",
]
