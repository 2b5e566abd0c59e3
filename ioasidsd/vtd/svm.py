"""The driver's bookkeeping for shared virtual addressing (Linux's ``intel_svm`` records).

* ``Svm`` (``struct intel_svm``): one per bound PASID. A native SVM belongs to a process's mm and
  was allocated by the driver from the host PASID set; a guest SVM binds a guest's page tables
  (nested) to a host PASID that the guest's VMM owns, with the guest PASID as its SPID. It lists
  its per-device bindings and carries the deferred cleanup work the FREE listener queues.
* ``SvmDev`` (``struct intel_svm_dev``): one per (device, PASID) binding, with a bind count for
  native binds.
* ``Domain``: a second-level (host) address space with its domain id; guest binds nest their
  first level over the VMM's domain on that unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ioasidsd.model.workqueue import Work
    from ioasidsd.vtd.iommu import DeviceInfo, IntelIommu


@dataclass(eq=False, slots=True)
class Domain:
    """A second-level domain on one unit: its DID, its page-table root page, its address
    width (the PASID entry's AW code) and largest input address."""

    iommu: IntelIommu
    did: int
    pgd: int
    aw: int
    max_addr: int
    nesting: bool = False
    owner: Any = None
    users: int = 0


@dataclass(eq=False, slots=True)
class SvmDev:
    """One device bound to one PASID."""

    info: DeviceInfo
    did: int
    users: int = 1
    domain: Domain | None = None
    bound_seq: int = 0  # trace sequence number when the binding was made

    @property
    def sid(self) -> int:
        return self.info.sid

    @property
    def bdf(self) -> str:
        return self.info.device.bdf


@dataclass(eq=False, slots=True)
class Svm:
    """One bound PASID and its devices."""

    pasid: int
    guest: bool
    mm: Any = None  # the process of a native bind
    owner: Any = None  # the VMM process of a guest bind
    gpasid: int | None = None
    pgd: int = 0  # first-level root: the mm's page table, or the guest's (a GPA)
    devs: list[SvmDev] = field(default_factory=list)
    work: Work | None = None
    free_seq: int | None = None  # trace sequence number when FREE was seen

    def find(self, sid: int) -> SvmDev | None:
        for sdev in self.devs:
            if sdev.sid == sid:
                return sdev
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "pasid": self.pasid,
            "kind": "guest" if self.guest else "native",
            "gpasid": self.gpasid,
            "owner_pid": getattr(self.owner if self.guest else self.mm, "pid", None),
            "devices": [{"bdf": s.bdf, "did": s.did, "users": s.users} for s in self.devs],
            "cleanup_queued": bool(self.work is not None and self.work.pending),
        }
