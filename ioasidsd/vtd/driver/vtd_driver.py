"""The VT-d driver facade: SVA binds, guest binds and the FREE listener over the IOASID core.

``VtdDriver`` is what the rest of the project talks to. It owns the simulated units, their
devices and one ``iommu.IntelIommu`` per unit, and uses the IOASID core as the V4 series' VT-d
patches do (Linux's ``init_dmars`` and ``intel/svm.c`` of 2020, with the series' FREE listener):

* ``boot`` (``init_dmars``): bring every unit up, install the system capacity (the minimum over
  the units of 2^(PSS+1), at most 2^20) when every unit supports scalable mode, create the host
  PASID set (quota ``DriverOptions.host_quota``, 32768 by default) and register the FREE
  listener on the global chain, then probe the devices. Over a core restored from a snapshot
  (``adopt=True``) it keeps the restored capacity, adopts the restored host set and rebuilds the
  bindings the snapshot recorded (``ioasidsd.vtd.driver.restore``);
* native SVA: ``bind_mm``/``unbind_mm`` a process to a device (first-level entry over the
  process's page table, PASID from the host set, ``put`` on the last unbind);
* guest SVA: ``bind_gpasid``/``unbind_gpasid`` (process, hpasid, gpasid, bdf): the generic
  layer's ownership check (``get_if_owned``) and temporary reference around the driver's part,
  which attaches the guest PASID as SPID and the binding as private data, takes a reference,
  and sets up a nested entry over the VMM's second-level domain;
* the FREE listener queues the binding's cleanup on the core's ordered work queue; the cleanup
  tears down every device's entry (FPD kept), drains its page requests, detaches the SPID
  (UNBIND), detaches the data and drops the reference, then reports what it changed to
  ``on_change`` as a ``Change`` of kind ``vtd_cleanup`` (the one change the driver makes on its
  own, after the caller's operation: as that call returns in the model's step mode, on the
  worker thread in the daemon);
* page requests: the decisions of the PRQ handler, and ``page_response`` for requests reported
  to a guest.

The ``vtd_quirks`` knob (profile ``v4``) reproduces the series' VT-d defects: the
SPID is attached before the private data and its failure ignored, the listener has priority 0,
and page-request lookups only search the host set (guest PASIDs fail them). ``fixed`` attaches
the data first, fails the bind when the SPID cannot be attached, registers at
``IoasidPrio.IOMMU`` and looks PASIDs up in any set.

Every operation takes the core's lock (the kernel's ``pasid_mutex``; the daemon runs every model
change under that one lock) and raises ``IoasidError`` with the kernel's errno, leaving nothing
half done.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict
from errno import EBUSY, EEXIST, EINVAL, ENODEV, ENOSPC, EOPNOTSUPP, EPERM
from functools import partial
from typing import TYPE_CHECKING, Any

from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.core import (
    INVALID_IOASID,
    PCI_PASID_MAX,
    IoasidCore,
    IoasidSet,
    IoasidSetType,
    IoasidState,
)
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.notifier import (
    NOTIFY_DONE,
    NOTIFY_OK,
    IoasidNbArgs,
    IoasidNotify,
    IoasidPrio,
    NotifierBlock,
)
from ioasidsd.model.workqueue import Work
from ioasidsd.vtd.counters import Counters
from ioasidsd.vtd.driver import restore
from ioasidsd.vtd.driver.iommu import (
    ADDR_WIDTH_4LEVEL,
    ADDR_WIDTH_5LEVEL,
    DeviceInfo,
    DriverOptions,
    IntelIommu,
)
from ioasidsd.vtd.driver.svm import Domain, Svm, SvmDev, cpu_pgd
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware.caps import Capabilities, system_pasid_space
from ioasidsd.vtd.hardware.device import PciDevice, format_bdf, parse_bdf
from ioasidsd.vtd.hardware.memory import Block, PhysMem
from ioasidsd.vtd.hardware.page_requests import PageRequest
from ioasidsd.vtd.hardware.pasid_table import FLPT_DEFAULT_DID, PASID_MIN, Pgtt
from ioasidsd.vtd.hardware.translation import DmaResult
from ioasidsd.vtd.hardware.unit import Unit, UnitOptions
from ioasidsd.vtd.trace import Trace

if TYPE_CHECKING:
    from ioasidsd.model.hierarchy import Process

RESPONSE_CODES = (d.QI_RESP_SUCCESS, d.QI_RESP_INVALID, d.QI_RESP_FAILURE)

OWNED_EVENT_KINDS = frozenset({
    "bind", "unbind", "restore", "pasid_entry_set", "pasid_entry_clear", "drain_begin",
    "drain_end", "ioasid_state", "fault", "prq_response", "warn",
})
"""The trace event kinds a snapshot filtered by owner may show: those whose ``pasid`` field
says which binding they are about and whose other fields (the owner's own pid and guest PASID,
a device, a domain id, an address of that PASID) tell nothing of another process. Kinds not
listed here are never shown in a filtered snapshot (``inv_desc`` encodes PASIDs in its
quadwords, ``page_alloc`` names page owners, ``prq_*`` carry requests, ``vcmd`` allocations)."""


def _check_address(addr: int) -> None:
    if isinstance(addr, bool) or not isinstance(addr, int) or not 0 <= addr < 1 << 64:
        raise IoasidError(EINVAL, f"address {addr!r} is not a 64-bit value")


class CoreVcmdAllocator:
    """The host side of a unit's virtual command interface: PASIDs for a guest from its VMM's
    IOASID set, charged to the VMM (``task``)."""

    def __init__(self, core: IoasidCore, ioasid_set: IoasidSet, task: Any, lo: int,
                 hi: int) -> None:
        self.core = core
        self.set = ioasid_set
        self.task = task
        self.lo = lo
        self.hi = hi

    def alloc(self) -> int:
        return self.core.alloc(self.set, self.lo, self.hi, task=self.task)

    def free(self, pasid: int) -> None:
        self.core.free(self.set, pasid, task=self.task)


class VtdDriver:
    """The simulated VT-d units and the Linux-like driver over them."""

    def __init__(self, core: IoasidCore, *, options: DriverOptions | None = None,
                 trace: Trace | None = None, mem: PhysMem | None = None) -> None:
        self.core = core
        self.knobs = core.knobs
        self.lock = core.lock
        self.options = options or DriverOptions()
        self.trace = trace or Trace()
        self.mem = mem or PhysMem()
        self.mem.on_page_change = self._page_event
        self.counters = Counters()
        self.units: dict[str, Unit] = {}
        self.iommus: dict[str, IntelIommu] = {}
        self.devices: dict[str, PciDevice] = {}
        self.infos: dict[str, DeviceInfo] = {}
        self.host_set: IoasidSet | None = None
        self.pasid_max = PCI_PASID_MAX
        self.sm_enabled = False
        self.booted = False
        self.native: dict[Any, Svm] = {}
        self.guest: dict[int, Svm] = {}
        self.domains: dict[tuple[str, Any], Domain] = {}
        self.on_change: Callable[[Change], None] | None = None
        self.restored = 0  # bindings rebuilt by an adopting boot
        quirks = self.knobs.vtd_quirks
        self.nb = NotifierBlock(self._pasid_status_change,
                                IoasidPrio.LAST if quirks else IoasidPrio.IOMMU, "vtd")

    def _page_event(self, event: str, block: Block) -> None:
        self.trace.emit(f"page_{event}", page_kind=block.kind, pages=block.count,
                        addr=block.pfn << 12, owner=str(block.owner))

    def _warn(self, msg: str, **fields: Any) -> None:
        self.counters.inc("warn")
        self.trace.emit("warn", msg=msg, **fields)

    # ------------------------------------------------------------------ topology
    def add_unit(self, name: str, caps: Capabilities | None = None, *, version: int = 0x10,
                 vcmd_layout: str = "3.3", vccap_pas: bool = True,
                 options: UnitOptions | None = None) -> Unit:
        """Create a unit named ``name``; ``EEXIST`` if taken, ``EBUSY`` after boot."""
        with self.lock:
            if self.booted:
                raise IoasidError(EBUSY, "units are added before boot")
            if name in self.units:
                raise IoasidError(EEXIST, f"unit {name} exists")
            unit = Unit(name, caps, version=version, vcmd_layout=vcmd_layout,  # type: ignore[arg-type]
                        vccap_pas=vccap_pas, options=options, mem=self.mem, trace=self.trace)
            self.units[name] = unit
            iommu = IntelIommu(unit, self.mem, self.options, self.trace, unit.counters)
            iommu.page_request_handler = self._decide_page_request
            self.iommus[name] = iommu
            return unit

    def add_device(self, device: PciDevice, unit: str) -> DeviceInfo | None:
        """Put ``device`` behind unit ``unit`` (probed at once after boot). ``ENODEV`` for an
        unknown unit, ``EEXIST`` for a BDF or source id already present."""
        with self.lock:
            target = self.units.get(unit)
            if target is None:
                raise IoasidError(ENODEV, f"no unit {unit}")
            if device.bdf in self.devices:
                raise IoasidError(EEXIST, f"device {device.bdf} exists")
            target.attach_device(device)
            self.devices[device.bdf] = device
            if self.booted:
                return self._probe(device)
            return None

    def _probe(self, device: PciDevice) -> DeviceInfo:
        iommu = self.iommus[device.unit.name]
        info = iommu.probe_device(device, self.pasid_max)
        self.infos[device.bdf] = info
        return info

    # ------------------------------------------------------------------ boot
    def pasid_space(self) -> tuple[int, bool]:
        """What boot would find: the units' PASID space (the minimum over units with PASID
        support of 2^(PSS+1), at most 2^20) and whether scalable mode is on (every unit has
        ECAP.SMTS)."""
        return system_pasid_space(i.caps for i in self.iommus.values())

    def boot(self, *, capacity: int | None = None, adopt: bool = False) -> None:
        """``init_dmars``: units, capacity, host set, FREE listener, devices.

        ``capacity``: install this system capacity instead of the units' PASID space (an
        administrator's choice, as ``ioasidsd run --capacity``); with scalable mode it may not
        exceed that space (``EINVAL``), without it it is installed alone (VT-d installs
        nothing then). ``adopt``: the core was restored from a snapshot made over a driver
        like this one: its capacity stays as restored (nothing is installed), its host set is
        the core's NULL-type set of lowest id when there is one (created otherwise), and the
        bindings its IOASIDs record are rebuilt without touching their references, SPIDs or
        charges (``restore.restore_bindings``: its errors, which leave the driver unusable).
        ``EBUSY`` if booted already; ``ENODEV`` without units."""
        with self.lock:
            if self.booted:
                raise IoasidError(EBUSY, "already booted")
            if not self.units:
                raise IoasidError(ENODEV, "no VT-d unit")
            pasid_max, sm_enabled = self.pasid_space()
            if capacity is not None and sm_enabled and capacity > pasid_max:
                raise IoasidError(EINVAL, f"capacity {capacity} exceeds the units' "
                                          f"{pasid_max} PASIDs")
            for iommu in self.iommus.values():
                iommu.boot()
            self.pasid_max = pasid_max
            self.sm_enabled = sm_enabled
            install = capacity
            if adopt:
                install = None  # the restored core has its capacity
            elif capacity is None and sm_enabled:
                install = pasid_max
            if install is not None:
                try:
                    self.core.install_capacity(install)
                except IoasidError as exc:
                    self._warn("capacity not installed", error=exc.name, capacity=install)
            if self.sm_enabled:
                adopted = restore.host_set(self.core) if adopt else None
                if adopted is not None:
                    self.host_set = adopted
                    if adopted.quota != self.options.host_quota:
                        self._warn("host PASID set adopted with its own quota",
                                   set=adopted.id, quota=adopted.quota,
                                   host_quota=self.options.host_quota)
                else:
                    try:
                        self.host_set = self.core.set_alloc(None, self.options.host_quota,
                                                            IoasidSetType.NULL)
                    except IoasidError as exc:
                        self._warn("host PASID set not created: scalable mode disabled",
                                   error=exc.name)
                        self.sm_enabled = False
                if self.host_set is not None:
                    self.core.register_notifier(None, self.nb)
            for device in self.devices.values():
                self._probe(device)
            if self.core.controller is not None:
                self.core.controller.hierarchy.exit_hooks.append(self._process_exit)
            self.booted = True
            self.trace.emit("boot", units=list(self.units), pasid_max=pasid_max,
                            scalable_mode=self.sm_enabled, adopt=adopt,
                            host_set=None if self.host_set is None else self.host_set.id)
            if adopt:
                self.restored = restore.restore_bindings(self)

    # ------------------------------------------------------------------ lookups
    def info(self, bdf: str) -> DeviceInfo:
        """The probed device at ``bdf``; ``EINVAL`` for a malformed address, ``ENODEV`` for
        an unknown or unprobed one."""
        key = format_bdf(*parse_bdf(bdf))
        info = self.infos.get(key)
        if info is None:
            raise IoasidError(ENODEV, f"no probed device {key}")
        return info

    def iommu_of(self, bdf: str) -> IntelIommu:
        return self.info(bdf).iommu

    def require_pasid(self, info: DeviceInfo) -> None:
        """Refuse a PASID operation on ``info``'s device: ``IoasidError(EOPNOTSUPP)`` when its
        unit is not in scalable mode or lacks ECAP.PASID, or the device has no enabled PASID
        capability (no PASID table); otherwise does nothing. Changes nothing."""
        if not self.sm_enabled or not info.iommu.caps.pasid_supported:
            raise IoasidError(EOPNOTSUPP, f"{info.iommu.name}: PASIDs not supported "
                                          f"(scalable mode and ECAP.PASID)")
        if not info.pasid_enabled or info.table is None:
            raise IoasidError(EOPNOTSUPP, f"{info.device.bdf} has no PASID capability")

    def check_pasid_value(self, pasid: int) -> None:
        """Refuse a PASID the units cannot hold: ``IoasidError(EINVAL)`` unless ``pasid`` is an
        ``int`` in ``[0, pasid_max)``; otherwise does nothing. Changes nothing."""
        if not isinstance(pasid, int) or not 0 <= pasid < self.pasid_max:
            raise IoasidError(EINVAL, f"PASID {pasid!r} outside the units' "
                                      f"{self.pasid_max} PASIDs")

    # ------------------------------------------------------------------ native SVA
    def bind_mm(self, process: Process, bdf: str, *, supervisor: bool = False) -> int:
        """Bind ``process``'s address space to the device; returns the PASID.

        A second bind of the same (process, device) only counts a user; a second device
        reuses the process's PASID with an entry in its own table. Errors: ``ENODEV`` (no
        device), ``EOPNOTSUPP`` (no PASID support), ``ENOSPC`` (the process's PASID is beyond
        this device's width, or none free), ``EDQUOT`` (host set quota), ``EINVAL`` (no
        first-level translation, or supervisor without ECAP.SRS).
        """
        if getattr(process, "pid", None) is None:
            raise IoasidError(EINVAL, f"{process!r} is not a process")
        with self.lock:
            info = self.info(bdf)
            self.require_pasid(info)
            iommu = info.iommu
            pasid_max = min(info.device.max_pasids, self.pasid_max)
            svm = self.native.get(process)
            if svm is not None:
                if svm.pasid >= pasid_max:
                    raise IoasidError(ENOSPC, f"PASID {svm.pasid} beyond {info.device.bdf}'s "
                                              f"{pasid_max}")
                sdev = svm.find(info.sid)
                if sdev is not None:
                    sdev.users += 1
                    self.trace.emit("bind", mode="native", pasid=svm.pasid, bdf=info.device.bdf,
                                    users=sdev.users)
                    return svm.pasid
            new = svm is None
            if svm is None:
                assert self.host_set is not None
                svm = Svm(pasid=0, guest=False, mm=process, pgd=cpu_pgd(process),
                          created_seq=self.trace.seq)
                svm.pasid = self.core.alloc(self.host_set, PASID_MIN, pasid_max - 1, svm)
                self.counters.inc("ioasid.allocs")
            try:
                iommu.setup_first_level(info, svm.pgd, svm.pasid, FLPT_DEFAULT_DID,
                                        supervisor=supervisor)
            except IoasidError:
                if new:
                    self.core.put(self.host_set, svm.pasid)
                raise
            svm.devs.append(SvmDev(info, FLPT_DEFAULT_DID, bound_seq=self.trace.seq,
                                   supervisor=supervisor))
            if new:
                self.native[process] = svm
            self.counters.inc("bind.native")
            self.trace.emit("bind", mode="native", pasid=svm.pasid, bdf=info.device.bdf,
                            pid=getattr(process, "pid", None))
            return svm.pasid

    def unbind_mm(self, process: Process, bdf: str) -> None:
        """Drop one bind of ``process`` to the device. The last one tears the entry down,
        drains page requests and, for the last device, releases the PASID. ``EINVAL`` if not
        bound."""
        with self.lock:
            info = self.info(bdf)
            svm = self.native.get(process)
            sdev = svm.find(info.sid) if svm is not None else None
            if svm is None or sdev is None:
                raise IoasidError(EINVAL, f"process {getattr(process, 'pid', '?')} is not "
                                          f"bound to {info.device.bdf}")
            sdev.users -= 1
            if sdev.users:
                return
            svm.devs.remove(sdev)
            info.iommu.tear_down_entry(info, svm.pasid, fault_ignore=False)
            info.iommu.drain_prq(info, svm.pasid, sdev.did)
            self.counters.inc("unbind.native")
            self.trace.emit("unbind", mode="native", pasid=svm.pasid, bdf=info.device.bdf)
            if not svm.devs:
                del self.native[process]
                self.core.put(self.host_set, svm.pasid)
                self.counters.inc("ioasid.puts")

    def mm_release(self, process: Process) -> None:
        """The process's address space is going away (``intel_mm_release``): tear down every
        entry of its native binding with FPD set, so the faults that follow are silent. No
        drain; the binding stays until unbound."""
        with self.lock:
            svm = self.native.get(process)
            if svm is None:
                return
            for sdev in svm.devs:
                sdev.info.iommu.tear_down_entry(sdev.info, svm.pasid, fault_ignore=True)

    def _process_exit(self, process: Process) -> None:
        """Exit hook: the mm goes first (``mm_release``), then its file descriptors, whose
        release unbinds what the process had bound. A guest binding whose IOASID is being
        freed already (the process's ``/dev/ioasid`` was released first) is left to the
        cleanup its FREE queued."""
        with self.lock:
            svm = self.native.get(process)
            if svm is not None:
                self.mm_release(process)
                for sdev in list(svm.devs):
                    for _ in range(sdev.users):
                        self.unbind_mm(process, sdev.bdf)
            for hpasid, gsvm in list(self.guest.items()):
                if gsvm.owner is process:
                    if self.core.data(hpasid).state == IoasidState.FREE_PENDING:
                        self.counters.inc("exit.left_to_cleanup")
                        continue
                    for sdev in list(gsvm.devs):
                        try:
                            self.unbind_gpasid(process, hpasid, sdev.bdf)
                        except IoasidError as exc:
                            self._warn("unbind at exit failed", pasid=hpasid, error=exc.name)

    # ------------------------------------------------------------------ guest SVA
    def guest_domain_get(self, iommu: IntelIommu, owner: Any) -> Domain:
        """The nesting domain of ``owner`` on ``iommu``, allocated on first use, with a user
        reference taken (the binding that holds it drops it when torn down). Raises
        ``IoasidError(ENOSPC)`` when a new one is needed and the unit has no free domain id;
        nothing changes then."""
        key = (iommu.name, owner)
        domain = self.domains.get(key)
        if domain is None:
            domain = iommu.domain_alloc(nesting=True, owner=owner)
            self.domains[key] = domain
        domain.users += 1
        return domain

    def _domain_put(self, domain: Domain | None) -> None:
        if domain is None:
            return
        domain.users -= 1
        if domain.users == 0:
            self.domains.pop((domain.iommu.name, domain.owner), None)
            domain.iommu.domain_free(domain)

    def bind_gpasid(self, process: Process, hpasid: int, gpasid: int | None, bdf: str, *,
                    gpgd: int | None = None, addr_width: int = ADDR_WIDTH_4LEVEL,
                    sre: bool = False, eafe: bool = False) -> None:
        """Bind a guest's page table (``gpgd``, a guest-physical address) to the device under
        host PASID ``hpasid``, which ``process`` (the VMM) must own; ``gpasid`` is the guest's
        PASID (``None``: the guest uses the host's).

        Errors: from the ownership check ``ENOENT`` (unknown PASID), ``EINVAL`` (not in an MM
        set), ``EPERM`` (another process's), ``EBUSY`` (being freed); then ``ENODEV`` (no
        device), ``EOPNOTSUPP`` (no PASID support), ``EINVAL`` (device without 20-bit PASIDs,
        hpasid 0 or beyond the units' PASIDs, no nested translation, a bad address width or
        guest PGD, SRE/EAFE not supported, or, in ``fixed``, a guest PASID already used in
        the set), ``EBUSY`` (this device is bound to ``hpasid`` already).
        """
        self.core.get_if_owned(hpasid, process)
        try:
            with self.lock:
                self._bind_gpasid(process, hpasid, gpasid, bdf, gpgd, addr_width, sre, eafe)
        finally:
            self.core.put(None, hpasid, task=process)

    def _bind_gpasid(self, process: Process, hpasid: int, gpasid: int | None, bdf: str,
                     gpgd: int | None, addr_width: int, sre: bool, eafe: bool) -> None:
        core = self.core
        info = self.info(bdf)
        self.require_pasid(info)
        if info.device.max_pasids != PCI_PASID_MAX:
            raise IoasidError(EINVAL, f"{info.device.bdf} does not support 20-bit PASIDs")
        if hpasid <= 0 or hpasid >= PCI_PASID_MAX:
            raise IoasidError(EINVAL, f"host PASID {hpasid} out of range")
        self.check_pasid_value(hpasid)
        if gpasid is not None and (not isinstance(gpasid, int) or
                                   not 0 <= gpasid < INVALID_IOASID):
            raise IoasidError(EINVAL, f"guest PASID {gpasid!r} out of range")
        self.check_nested_request(info, gpgd, addr_width, sre, eafe)
        svm = core.find(None, hpasid)
        if svm is not None and not (isinstance(svm, Svm) and svm.guest):
            raise IoasidError(EBUSY, f"PASID {hpasid} carries another user's data")
        if svm is not None and svm.find(info.sid) is not None:
            raise IoasidError(EBUSY, f"{info.device.bdf} is bound to PASID {hpasid} already")
        new = svm is None
        if svm is None:
            svm = Svm(pasid=hpasid, guest=True, owner=process, gpasid=gpasid,
                      pgd=gpgd if gpgd is not None else (hpasid + 1) << 12,
                      created_seq=self.trace.seq)
            self._attach(svm)
            svm.work = self.cleanup_work(svm)
        domain = self.guest_domain_get(info.iommu, process)
        root = svm.pgd if gpgd is None else gpgd
        try:
            info.iommu.setup_nested(info, root, hpasid, domain, addr_width=addr_width, sre=sre,
                                    eafe=eafe)
        except IoasidError:
            self._domain_put(domain)
            if new:
                self._drop_pasid(svm, task=process)
            raise
        svm.devs.append(SvmDev(info, domain.did, domain=domain, bound_seq=self.trace.seq,
                               gpgd=root, addr_width=addr_width, sre=sre, eafe=eafe))
        self.guest[hpasid] = svm
        self.counters.inc("bind.guest")
        self.trace.emit("bind", mode="guest", pasid=hpasid, gpasid=gpasid, bdf=info.device.bdf,
                        pid=getattr(process, "pid", None), refs=core.data(hpasid).refs)

    @staticmethod
    def check_nested_request(info: DeviceInfo, gpgd: int | None, addr_width: int, sre: bool,
                              eafe: bool) -> None:
        """Refuse, before anything changes, what ``setup_nested`` would refuse: raises
        ``IoasidError(EINVAL)`` without ECAP.NEST, for an address width other than 4 or 5
        levels (5 without FL5LP), a guest PGD that is not a page below the unit's limit, ``sre``
        without ECAP.SRS or ``eafe`` without ECAP.EAFS; otherwise does nothing."""
        caps = info.iommu.caps
        if not caps.nest:
            raise IoasidError(EINVAL, f"{info.iommu.name}: no nested translation (ECAP.NEST)")
        if addr_width not in (ADDR_WIDTH_4LEVEL, ADDR_WIDTH_5LEVEL):
            raise IoasidError(EINVAL, f"invalid guest address width {addr_width!r}")
        if addr_width == ADDR_WIDTH_5LEVEL and not caps.fl5lp:
            raise IoasidError(EINVAL, f"{info.iommu.name}: 5-level paging not supported")
        limit = 1 << (ADDR_WIDTH_5LEVEL if info.iommu.agaw == 3 else ADDR_WIDTH_4LEVEL)
        if gpgd is not None and (not isinstance(gpgd, int) or not 0 <= gpgd < limit
                                 or gpgd & 0xFFF):
            raise IoasidError(EINVAL, f"guest PGD {gpgd!r} is not a page below {limit:#x}")
        if sre and not caps.srs:
            raise IoasidError(EINVAL, f"{info.iommu.name}: no supervisor requests (ECAP.SRS)")
        if eafe and not caps.eafs:
            raise IoasidError(EINVAL, f"{info.iommu.name}: no extended accessed flag")

    def _attach(self, svm: Svm) -> None:
        """First bind of a host PASID: SPID, private data and the driver's reference."""
        core = self.core
        pasid = svm.pasid
        if self.knobs.vtd_quirks:
            if svm.gpasid is not None:
                try:
                    core.attach_spid(pasid, svm.gpasid)
                except IoasidError as exc:  # the series ignores the result
                    self._warn("attach_spid failed (ignored)", pasid=pasid, error=exc.name)
            core.attach_data(pasid, svm)
        else:
            core.attach_data(pasid, svm)
            if svm.gpasid is not None:
                try:
                    core.attach_spid(pasid, svm.gpasid)
                except IoasidError:
                    core.detach_data(pasid)
                    raise
        core.get(None, pasid)

    def _drop_pasid(self, svm: Svm, *, task: Any) -> None:
        """``intel_svm_drop_pasid``: detach the SPID (UNBIND, while the set still exists),
        detach the data, drop the driver's reference."""
        core = self.core
        pasid = svm.pasid
        if svm.gpasid is not None:
            try:
                core.detach_spid(pasid)
            except IoasidError as exc:
                self._warn("detach_spid failed", pasid=pasid, error=exc.name)
        core.detach_data(pasid)
        self.guest.pop(pasid, None)
        reclaimed = core.put(None, pasid, task=task)
        self.counters.inc("ioasid.puts")
        self.trace.emit("ioasid_state", pasid=pasid, what="reference dropped",
                        reclaimed=reclaimed)

    def unbind_gpasid(self, process: Process, hpasid: int, bdf: str) -> None:
        """Unbind the device from ``hpasid``. The entry is torn down and page requests
        drained; the last device also drops the SPID, the data and the driver's reference
        (the PASID itself stays allocated). A PASID or device that is not bound is a no-op,
        as in Linux. Errors: those of the ownership check, ``ENODEV`` for no device."""
        self.core.get_if_owned(hpasid, process)
        try:
            with self.lock:
                info = self.info(bdf)
                svm = self.core.find(None, hpasid)
                sdev = svm.find(info.sid) if isinstance(svm, Svm) and svm.guest else None
                if sdev is None:
                    self.counters.inc("unbind.noop")
                    self.trace.emit("unbind", mode="guest", pasid=hpasid, bdf=info.device.bdf,
                                    noop=True)
                    return
                assert isinstance(svm, Svm)
                svm.devs.remove(sdev)
                info.iommu.tear_down_entry(info, hpasid, fault_ignore=False)
                info.iommu.drain_prq(info, hpasid, sdev.did)
                self._domain_put(sdev.domain)
                self.counters.inc("unbind.guest")
                self.trace.emit("unbind", mode="guest", pasid=hpasid, bdf=info.device.bdf)
                if not svm.devs:
                    self._drop_pasid(svm, task=process)
        finally:
            self.core.put(None, hpasid, task=process)

    # ------------------------------------------------------------------ FREE listener
    def _pasid_status_change(self, nb: NotifierBlock, event: IoasidNotify,
                             args: IoasidNbArgs) -> int:
        """``pasid_status_change``: runs under the core's lock, so it only queues work."""
        if event != IoasidNotify.FREE:
            return NOTIFY_DONE
        svm = args.pdata
        if svm is None:
            self.counters.inc("ioasid.free_unbound")
            return NOTIFY_DONE
        if not isinstance(svm, Svm) or svm.pasid != args.id or svm.work is None:
            self._warn("FREE for a PASID whose data is not a guest binding", pasid=args.id)
            return NOTIFY_DONE
        self.counters.inc("ioasid.free_seen")
        event_rec = self.trace.emit("ioasid_state", pasid=args.id, what="FREE seen",
                                    devices=len(svm.devs))
        if svm.free_seq is None:
            svm.free_seq = event_rec.seq
        if not self.core.queue_work(svm.work):
            self.counters.inc("ioasid.cleanup_already_queued")
            self._warn("Cleanup work already queued", pasid=args.id)
        else:
            self.counters.inc("ioasid.cleanup_queued")
        return NOTIFY_OK

    def cleanup_work(self, svm: Svm) -> Work:
        """A new work item that, queued on the core's work queue (as FREE_PENDING of the
        binding's PASID does), tears the guest binding ``svm`` down outside notifier context
        (``intel_svm_free_async_fn``); nothing runs until it is queued. Never raises."""
        return Work(partial(self._free_async, svm), name=f"vtd-free-{svm.pasid}")

    def _free_async(self, svm: Svm) -> None:
        """``intel_svm_free_async_fn``: on the work queue, outside notifier context. What it
        changed in the core (the binding's data, SPID and reference, hence the reclaim, the
        uncharge, perhaps the set) is reported to ``on_change`` before the lock is released,
        even if the cleanup failed half way."""
        with self.lock:
            pasid = svm.pasid
            charged = self.core.data(pasid).cgroup if pasid in self.core else None
            try:
                self.trace.emit("ioasid_state", pasid=pasid, what="cleanup begins",
                                devices=[s.bdf for s in svm.devs])
                for sdev in list(svm.devs):
                    svm.devs.remove(sdev)
                    iommu = sdev.info.iommu
                    iommu.tear_down_entry(sdev.info, pasid, fault_ignore=True)
                    iommu.drain_prq(sdev.info, pasid, sdev.did)
                    self._domain_put(sdev.domain)
                self._drop_pasid(svm, task=None)
                self.counters.inc("ioasid.cleanups")
                if svm.free_seq is not None:
                    self.counters.high("ioasid.max_steps_free_to_reclaim",
                                       self.trace.seq - svm.free_seq)
            finally:
                if self.on_change is not None:
                    self.on_change(Change(ChangeKind.VTD_CLEANUP, ids=(pasid,),
                                          cgroups=() if charged is None else (charged,)))

    # ------------------------------------------------------------------ page requests
    def _decide_page_request(self, iommu: IntelIommu, info: DeviceInfo | None,
                             req: PageRequest) -> int | None:
        if info is None or req.pasid is None:
            return d.QI_RESP_INVALID
        lookup = self.host_set if self.knobs.vtd_quirks else None
        try:
            svm = self.core.find(lookup, req.pasid)
        except IoasidError:
            svm = None
        sdev = svm.find(req.rid) if isinstance(svm, Svm) else None
        if sdev is None:
            return d.QI_RESP_INVALID
        arrived = iommu.current_arrival
        if arrived is not None and arrived < sdev.bound_seq:
            iommu.counters.inc("hazard.stale_prq")
            self.trace.emit("hazard", unit=iommu.name, what="page request of an earlier owner "
                            "delivered to the PASID's new binding", pasid=req.pasid,
                            bdf=sdev.bdf)
        assert isinstance(svm, Svm)
        if svm.guest:
            return None  # reported to the guest, which answers with page_response
        return d.QI_RESP_SUCCESS if getattr(svm.mm, "alive", True) else d.QI_RESP_INVALID

    def page_request(self, bdf: str, pasid: int | None, addr: int, *, read: bool = True,
                     write: bool = False, exe: bool = False, priv: bool = False,
                     lpig: bool = True, prg_index: int = 0,
                     private: tuple[int, int] | None = None, in_flight: bool = False) -> bool:
        """The device at ``bdf`` issues a page request (see ``Unit.page_request``)."""
        with self.lock:
            device = self.info(bdf).device
            if pasid is not None:
                self.check_pasid_value(pasid)
            _check_address(addr)
            if not isinstance(prg_index, int) or not 0 <= prg_index <= 0x1FF:
                raise IoasidError(EINVAL, f"page request group index {prg_index!r} not in "
                                          f"0..511")
            if private is not None and (
                    not isinstance(private, tuple) or len(private) != 2
                    or not all(isinstance(w, int) and 0 <= w < 1 << 64 for w in private)):
                raise IoasidError(EINVAL, f"private data {private!r} is not two 64-bit words")
            req = PageRequest(device.sid, addr & ~0xFFF, pasid, read, write, exe, priv, lpig,
                              prg_index, private)
            return device.unit.page_request(device, req, in_flight=in_flight)

    def page_response(self, process: Process, bdf: str, pasid: int, prg_index: int,
                      code: int = d.QI_RESP_SUCCESS) -> None:
        """Answer a page request that was reported to the guest (``intel_svm_page_response``).

        ``ENODEV`` when the PASID is not bound to the device (in ``v4`` also for every guest
        PASID, whose lookup is restricted to the host set), ``EPERM`` when ``process`` does
        not own the binding, ``EINVAL`` for an unknown request or response code."""
        with self.lock:
            if code not in RESPONSE_CODES:
                raise IoasidError(EINVAL, f"response code {code!r} is not 0, 1 or 15")
            info = self.info(bdf)
            lookup = self.host_set if self.knobs.vtd_quirks else None
            try:
                svm = self.core.find(lookup, pasid)
            except IoasidError:
                svm = None
            if not isinstance(svm, Svm) or svm.find(info.sid) is None:
                raise IoasidError(ENODEV, f"PASID {pasid} is not bound to {info.device.bdf}")
            if (svm.owner if svm.guest else svm.mm) is not process:
                raise IoasidError(EPERM, f"PASID {pasid} is bound by another process")
            req = info.iommu.reported.pop((info.sid, pasid, prg_index), None)
            if req is None:
                raise IoasidError(EINVAL, f"no reported page request {prg_index} for PASID "
                                          f"{pasid}")
            info.iommu.page_response(req, code)

    # ------------------------------------------------------------------ DMA, VCMD
    def dma(self, bdf: str, pasid: int | None, addr: int, *, write: bool = False,
            ats: bool = False) -> DmaResult:
        """A DMA (or ATS translation request) from the device at ``bdf``."""
        with self.lock:
            info = self.info(bdf)
            if pasid is not None:
                self.check_pasid_value(pasid)
            _check_address(addr)
            return info.iommu.unit.dma(info.sid, pasid, addr, write=write, ats=ats)

    def vcmd_attach(self, unit: str, ioasid_set: IoasidSet, task: Any) -> None:
        """Serve unit ``unit``'s virtual command interface from ``ioasid_set``, charging
        ``task``. ``ENODEV`` for an unknown unit, ``EOPNOTSUPP`` without ECAP.VCS."""
        with self.lock:
            target = self.units.get(unit)
            if target is None:
                raise IoasidError(ENODEV, f"no unit {unit}")
            if target.vcmd is None:
                raise IoasidError(EOPNOTSUPP, f"unit {unit} has no virtual commands (ECAP.VCS)")
            target.vcmd.allocator = CoreVcmdAllocator(self.core, ioasid_set, task, PASID_MIN,
                                                      self.pasid_max - 1)

    # ------------------------------------------------------------------ observation
    def counters_total(self) -> Counters:
        total = Counters()
        total.merge(self.counters)
        for unit in self.units.values():
            total.merge(unit.counters)
        return total

    def owners(self) -> list[Any]:
        """The processes that own a binding now (the VMM of a guest bind, the process of a
        native one), each once, in PASID order: what a caller filtering ``snapshot`` by owner
        decides about."""
        with self.lock:
            found: list[Any] = []
            for svm in self._shown_bindings(None):
                owner = svm.owner_process
                if not any(owner is seen for seen in found):
                    found.append(owner)
            return found

    def snapshot(self, events: int = 50, *, owners: Collection[Any] | None = None,
                 ) -> dict[str, Any]:
        """Units, devices, bindings, counters and the last ``events`` trace events, as plain
        data (what the daemon and ``ioasidctl`` show), with ``filtered`` false.

        With ``owners`` (a collection of processes, normally chosen from ``owners()``; compared
        by identity) the snapshot shows only those processes' bindings and ``filtered`` is
        true. Whatever else names a PASID is then shown only when it is about one of the
        bindings shown and came after that binding was made (a PASID reused from an earlier
        owner shows nothing of that owner): a unit's tear-downs, and the trace events of the
        kinds in ``OWNED_EVENT_KINDS`` whose ``pasid`` field is such a PASID (``events`` counts
        those); the other trace events (register writes, descriptors whose quadwords encode
        PASIDs, page owners, page requests) are left out. Counts that name no process (devices'
        present entries and table pages, ``totals``, ``host_set``, counters, memory,
        ``trace_seq``) stay whole. A process in ``owners`` that owns nothing adds nothing.
        Raises nothing of its own.
        """
        with self.lock:
            shown = self._shown_bindings(owners)
            since = None if owners is None else {svm.pasid: svm.created_seq for svm in shown}

            def about_shown(pasid: Any, seq: int) -> bool:
                return since is None or (pasid in since and seq > since[pasid])

            devices = []
            for bdf, device in sorted(self.devices.items()):
                row = device.describe()
                info = self.infos.get(bdf)
                if info is not None:
                    row.update({
                        "pasid_enabled": info.pasid_enabled,
                        "ats_enabled": info.ats_enabled,
                        "pri_enabled": info.pri_enabled,
                        "pasid_table": None if info.table is None else {
                            **info.table.stats(),
                            "present_by_pgtt": {Pgtt(k).name.lower(): v
                                                for k, v in sorted(info.table.present.items())
                                                if v},
                        },
                    })
                devices.append(row)
            units = []
            for name, unit in self.units.items():
                row = unit.snapshot()
                row.pop("memory", None)
                iommu = self.iommus[name]
                teardowns = [t for t in iommu.teardowns if about_shown(t.pasid, t.seq)]
                row["teardowns"] = [{"bdf": t.bdf, "pasid": t.pasid, "descriptors": list(t.labels)}
                                    for t in teardowns[-5:]]
                row["reported_page_requests"] = len(iommu.reported)
                units.append(row)
            host = self.host_set
            present: dict[str, int] = {}
            for info in self.infos.values():
                if info.table is not None:
                    for pgtt, n in info.table.present.items():
                        if n:
                            name = Pgtt(pgtt).name.lower()
                            present[name] = present.get(name, 0) + n
            bindings = self._shown_bindings(None)
            if since is None:
                trace = self.trace.last(events)
            else:
                trace = [e for e in self.trace.events if e.kind in OWNED_EVENT_KINDS
                         and about_shown(e.get("pasid"), e.seq)]
                trace = trace[-events:] if events > 0 else []
            return {
                "filtered": owners is not None,
                "profile": self.knobs.profile,
                "vtd_quirks": self.knobs.vtd_quirks,
                "booted": self.booted,
                "scalable_mode": self.sm_enabled,
                "pasid_max": self.pasid_max,
                "host_set": None if host is None else {
                    "id": host.id, "quota": host.quota, "nr_ioasids": host.nr_ioasids},
                "options": asdict(self.options),
                "units": units,
                "devices": devices,
                "bindings": [s.describe() for s in shown],
                "totals": {
                    "bound_pasids": len(bindings),
                    "device_bindings": sum(len(s.devs) for s in bindings),
                    "present_by_pgtt": present,
                    "pasid_table_pages": self.mem.live["pasid_dir"] + self.mem.live["pasid_table"],
                    "pasid_table_pages_peak": (self.mem.peak["pasid_dir"]
                                               + self.mem.peak["pasid_table"]),
                },
                "memory": self.mem.stats(),
                "counters": {
                    "driver": self.counters.as_dict(),
                    "units": {n: u.counters.as_dict() for n, u in self.units.items()},
                    "total": self.counters_total().as_dict(),
                },
                "trace_seq": self.trace.seq,
                "trace": [e.as_dict() for e in trace],
            }

    def _shown_bindings(self, owners: Collection[Any] | None) -> list[Svm]:
        """The bindings (PASID order) whose owner is in ``owners`` (all of them for ``None``).
        The caller holds the lock."""
        bindings = sorted([*self.native.values(), *self.guest.values()], key=lambda s: s.pasid)
        if owners is None:
            return bindings
        return [svm for svm in bindings
                if any(svm.owner_process is owner for owner in owners)]

