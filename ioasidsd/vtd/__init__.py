"""A simulated Intel VT-d unit and the Linux-like driver that uses the IOASID core.

Hardware (what a unit is and does on its own):

* ``caps``: CAP/ECAP knobs and encodings; ``registers``: the MMIO register file;
* ``memory``: simulated physical pages; ``context``: root and context entries;
  ``pasid_table``: PASID directory, tables and the 512-bit entry;
* ``descriptors``: invalidation descriptor encodings; ``inval_queue``: the queue engine;
* ``page_requests``: page request descriptors and the PRQ; ``vcmd``: virtual commands;
* ``caches``, ``translation``, ``faults``: DMA remapping; ``device``: PCI devices;
* ``hardware``: the unit that ties them together.

Software (what Linux does with it):

* ``iommu``: the per-unit driver (queued invalidation, PASID entries, PRQ, drain);
* ``svm``: binding records; ``driver``: the facade (boot, binds, FREE listener, snapshot);
* ``config``: building the system from the daemon's configuration.

Observation: ``trace`` (ordered events) and ``counters``.
"""

from ioasidsd.vtd.caps import Capabilities
from ioasidsd.vtd.config import VtdConfig, build_driver, default_config, parse_config
from ioasidsd.vtd.device import PciDevice
from ioasidsd.vtd.driver import VtdDriver
from ioasidsd.vtd.hardware import Unit, UnitOptions
from ioasidsd.vtd.iommu import DriverOptions, IntelIommu

__all__ = [
    "Capabilities",
    "DriverOptions",
    "IntelIommu",
    "PciDevice",
    "Unit",
    "UnitOptions",
    "VtdConfig",
    "VtdDriver",
    "build_driver",
    "default_config",
    "parse_config",
]
