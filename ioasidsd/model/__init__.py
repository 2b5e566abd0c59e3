"""The pure model: IOASID core, the cgroup-v1 hierarchy and the ``ioasids`` controller it hosts,
knobs, the ``/dev/ioasid`` device. No I/O, no wall-clock time."""

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
from ioasidsd.model.workqueue import OrderedWorkQueue, Work

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
    "NotifierBlock",
    "OrderedWorkQueue",
    "Process",
    "TaskSet",
    "Work",
    "profile",
]
