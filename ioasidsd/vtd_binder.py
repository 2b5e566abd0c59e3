"""The bind extension's IOMMU: the simulated VT-d driver as a ``GuestBinder``.

``IOASID_BIND_GPASID`` / ``IOASID_UNBIND_GPASID`` reach ``VtdDriver.bind_gpasid`` /
``unbind_gpasid`` as VFIO's bind-guest-page-table ioctl reaches the kernel's generic layer: the
driver checks ownership (``get_if_owned``) and does the rest. The uAPI's numeric ``devid``
becomes the driver's ``SSSS:BB:DD.F``; a ``gpgd`` of 0 or an ``addr_width`` of 0 take the
driver's defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.vtd.driver.iommu import ADDR_WIDTH_4LEVEL

if TYPE_CHECKING:
    from ioasidsd.model.hierarchy import Process
    from ioasidsd.vtd import VtdDriver


class VtdGuestBinder:
    """Guest binds of ``/dev/ioasid`` IOASIDs on the devices of ``driver``."""

    def __init__(self, driver: VtdDriver) -> None:
        self.driver = driver

    def bind_gpasid(self, task: Process, hpasid: int, gpasid: int | None, devid: int, *,
                    addr_width: int, gpgd: int) -> None:
        self.driver.bind_gpasid(task, hpasid, gpasid, uapi.format_devid(devid),
                                gpgd=gpgd or None, addr_width=addr_width or ADDR_WIDTH_4LEVEL)

    def unbind_gpasid(self, task: Process, hpasid: int, devid: int) -> None:
        self.driver.unbind_gpasid(task, hpasid, uapi.format_devid(devid))
