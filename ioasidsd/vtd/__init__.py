"""A simulated Intel VT-d unit and the Linux-like driver that uses the IOASID core.

``hardware`` (what a unit is and does on its own; it never imports ``driver``):

* ``caps``: CAP/ECAP knobs and encodings; ``registers``: the MMIO register file;
* ``memory``: simulated physical pages; ``context``: root and context entries;
  ``pasid_table``: PASID directory, tables and the 512-bit entry;
* ``descriptors``: invalidation descriptor encodings; ``inval_queue``: the queue engine;
* ``page_requests``: page request descriptors and the PRQ; ``vcmd``: virtual commands;
* ``caches``, ``translation``, ``faults``: DMA remapping; ``device``: PCI devices;
* ``unit``: the unit that ties them together.

``driver`` (what Linux does with it, through registers and memory only):

* ``iommu``: the per-unit driver (queued invalidation, PASID entries, PRQ, drain);
* ``svm``: binding records; ``vtd_driver``: the facade (boot, binds, FREE listener, snapshot);
* ``restore``: the bindings rebuilt over a restored core; ``config``: building the system from
  the daemon's configuration.

Observation, shared by both: ``trace`` (ordered events) and ``counters``.
"""

from ioasidsd.vtd.driver.config import VtdConfig, build_driver, default_config, parse_config
from ioasidsd.vtd.driver.iommu import DriverOptions, IntelIommu
from ioasidsd.vtd.driver.vtd_driver import VtdDriver
from ioasidsd.vtd.hardware.caps import Capabilities
from ioasidsd.vtd.hardware.device import PciDevice
from ioasidsd.vtd.hardware.unit import Unit, UnitOptions

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
