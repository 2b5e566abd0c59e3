"""The driver's bookkeeping for shared virtual addressing (Linux's ``intel_svm`` records).

* ``Svm`` (``struct intel_svm``): one per bound PASID. A native SVM belongs to a process's mm and
  was allocated by the driver from the host PASID set; a guest SVM binds a guest's page tables
  (nested) to a host PASID that the guest's VMM owns, with the guest PASID as its SPID. It lists
  its per-device bindings and carries the deferred cleanup work the FREE listener queues.
* ``SvmDev`` (``struct intel_svm_dev``): one per (device, PASID) binding, with a bind count for
  native binds.
* ``Domain``: a second-level (host) address space with its domain id; guest binds nest their
  first level over the VMM's domain on that unit.

A binding describes itself as plain data (``Svm.snapshot_record``), which a snapshot of the core
keeps as the IOASID's private data: what was bound, to which devices, with which parameters, for
whom. ``ioasidsd.vtd.driver.restore`` rebuilds the binding (and the simulated hardware's entries)
from that record when the driver boots over a restored core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ioasidsd.model.workqueue import Work
    from ioasidsd.vtd.driver.iommu import DeviceInfo, IntelIommu


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


def cpu_pgd(process: Any) -> int:
    """A stand-in for a process's CPU page-table root (CPU page tables are not simulated): the
    first-level root of a native binding."""
    return (0x100000 + (int(getattr(process, "pid", 0)) & 0xFFFFFFF)) << 12


GUEST_RECORD = "vtd.guest"
NATIVE_RECORD = "vtd.native"
RECORD_KINDS = (GUEST_RECORD, NATIVE_RECORD)


@dataclass(eq=False, slots=True)
class SvmDev:
    """One device bound to one PASID, with what its entry was set up with: a guest bind's
    first-level root (``gpgd``, a GPA), address width, SRE and EAFE; a native bind's SRE
    (``supervisor``)."""

    info: DeviceInfo
    did: int
    users: int = 1
    domain: Domain | None = None
    bound_seq: int = 0  # trace sequence number when the binding was made
    gpgd: int = 0
    addr_width: int = 48
    sre: bool = False
    eafe: bool = False
    supervisor: bool = False

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
    created_seq: int = 0  # trace sequence number just before the binding's first event

    @property
    def owner_process(self) -> Any:
        """Whose binding this is: the VMM of a guest bind, the process of a native one."""
        return self.owner if self.guest else self.mm

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
            "owner_pid": getattr(self.owner_process, "pid", None),
            "devices": [{"bdf": s.bdf, "did": s.did, "users": s.users} for s in self.devs],
            "cleanup_queued": bool(self.work is not None and self.work.pending),
        }

    def snapshot_record(self) -> dict[str, Any]:
        """The binding as JSON data, which a snapshot keeps as the IOASID's private data:
        ``kind`` (``vtd.guest`` or ``vtd.native``), the PASID, the owner (the VMM, or the
        process whose address space is bound) by pid and start time, the guest PASID and
        first-level root, whether FREE was seen, and per device what its entry was set up with.
        Simulated hardware state (entries, domain ids, caches) is not part of it: it is rebuilt
        from the record."""
        owner = self.owner if self.guest else self.mm
        devices: list[dict[str, Any]] = []
        for sdev in self.devs:
            if self.guest:
                devices.append({"bdf": sdev.bdf, "gpgd": sdev.gpgd,
                                "addr_width": sdev.addr_width, "sre": sdev.sre,
                                "eafe": sdev.eafe})
            else:
                devices.append({"bdf": sdev.bdf, "users": sdev.users,
                                "supervisor": sdev.supervisor})
        return {
            "kind": GUEST_RECORD if self.guest else NATIVE_RECORD,
            "pasid": self.pasid,
            "owner": {"pid": getattr(owner, "pid", None),
                      "start_time": getattr(owner, "start_time", None)},
            "gpasid": self.gpasid,
            "pgd": self.pgd,
            "free_seen": self.free_seq is not None,
            "devices": devices,
        }
