"""The pure model: IOASID core, ioasids controller, knobs, the ``/dev/ioasid`` device. No I/O, no
wall-clock time."""

from ioasidsd.model.cgroup import Cgroup, IoasidsController, Process
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
    "Work",
    "profile",
]
