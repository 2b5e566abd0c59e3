"""Linux's per-unit VT-d driver code, over a simulated unit: ``struct intel_iommu``.

``IntelIommu`` programs a ``unit.Unit`` the way ``drivers/iommu/intel`` does, through
registers and memory only:

* bring-up (``boot``): queued invalidation (256 slots; 256-bit descriptors in two pages with
  scalable mode), the root table with the global context-cache, PASID-cache and IOTLB flushes
  that follow SRTP unless CAP.ESRTPS, the page request queue (2^``prq_order`` pages), then
  translation;
* ``qi_submit_sync``: copy a batch into the ring, append one wait (status write of ``QI_DONE``,
  with PD for a drain), bump IQT and wait for the status word, handling IQE as Linux does (the
  bad descriptor is overwritten with the wait, IQE is cleared, the caller gets ``EINVAL``);
* device probe: the PASID directory (``pasid_table.PasidTable``) and the scalable-mode context
  entry (PDTS, PASIDE, PRE, DTE), and the device's release;
* PASID entries: first-level, second-level, pass-through and nested set-up, each checking its
  capability, refusing a present entry with ``EBUSY``, writing fields one store at a time with
  PGTT and P last, then flushing caches in caching mode; tear-down in the order of the current
  kernel (or of 2020 kernels with ``teardown="2020"``);
* page requests: the PRQ handler loop (``run_prq_thread``), page group responses, and the
  drain of a PASID (software scan, then fence wait + P_IOTLB + PASID device-TLB + PD wait,
  repeated while PRS.PRO).

Decisions that belong to the SVA layer (which PASID is bound where, what answer a page
request gets) are the ``page_request_handler``'s, set by ``vtd_driver.VtdDriver``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from errno import EBUSY, EINVAL, EIO, ENODEV, ENOSPC
from typing import TYPE_CHECKING, Any, Literal

from ioasidsd.model.errors import IoasidError
from ioasidsd.vtd.counters import Counters
from ioasidsd.vtd.driver.svm import Domain
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.caps import Capabilities
from ioasidsd.vtd.hardware.context import (
    CONTEXT_ENTRIES_PER_TABLE,
    CONTEXT_ENTRY_SIZE,
    ROOT_ENTRY_SIZE,
    SmContextEntry,
)
from ioasidsd.vtd.hardware.memory import PhysMem
from ioasidsd.vtd.hardware.page_requests import PRQ_DESC_SIZE, PageRequest
from ioasidsd.vtd.hardware.pasid_table import (
    FLPT_DEFAULT_DID,
    PASID_ENTRY_WORDS,
    PASID_RID2PASID,
    PasidEntry,
    PasidTable,
    Pgtt,
    clear_entry,
    write_field,
)
from ioasidsd.vtd.trace import Trace

if TYPE_CHECKING:
    from ioasidsd.vtd.hardware.device import PciDevice
    from ioasidsd.vtd.hardware.unit import Unit

QI_LENGTH = 256
ADDR_WIDTH_4LEVEL = 48
ADDR_WIDTH_5LEVEL = 57
MAX_DRAIN_ROUNDS = 1024

TeardownStyle = Literal["current", "2020"]


@dataclass(frozen=True, slots=True)
class DriverOptions:
    """Choices of the driver, by kernel era.

    ``teardown``: ``current`` (skip non-present entries; P_IOTLB for first-level and
    pass-through, IOTLB DSI for second-level and nested) or ``2020`` (always PC then P_IOTLB).
    ``response_lpig``: page group responses carry LPIG (kernels before the 2025 removal).
    ``pri_requires_pds``: PRI is only enabled on units with ECAP.PDS (the 2025 rule).
    ``reclaim_empty_pasid_tables``: free a leaf table once nothing in it is set (Linux never
    does). ``prq_order``: the PRQ is 2^order pages (Linux: 4). ``host_quota``: the quota of the
    host PASID set (``PID_MAX_DEFAULT``).
    """

    teardown: TeardownStyle = "current"
    response_lpig: bool = True
    pri_requires_pds: bool = True
    reclaim_empty_pasid_tables: bool = False
    prq_order: int = 4
    host_quota: int = 32768

    def __post_init__(self) -> None:
        if self.teardown not in ("current", "2020"):
            raise ValueError(f"teardown={self.teardown!r}: expected current or 2020")
        if not 0 <= self.prq_order <= 7:
            raise ValueError(f"prq_order={self.prq_order!r}: expected 0..7")
        if not isinstance(self.host_quota, int) or self.host_quota < 0:
            raise ValueError(f"host_quota={self.host_quota!r}: expected a count >= 0")


@dataclass(eq=False)
class DeviceInfo:
    """What the driver knows of a probed device (``struct device_domain_info``)."""

    device: PciDevice
    iommu: IntelIommu
    table: PasidTable | None
    pasid_enabled: bool
    ats_enabled: bool
    pri_enabled: bool
    qdep: int
    pfsid: int

    @property
    def sid(self) -> int:
        return self.device.sid


@dataclass(frozen=True, slots=True)
class TeardownRecord:
    """The descriptors the hardware processed while one PASID entry was torn down, and the
    trace sequence number when the tear-down ended (``seq``)."""

    unit: str
    bdf: str
    pasid: int
    labels: tuple[str, ...]
    seq: int = 0


PageRequestHandler = Callable[["IntelIommu", DeviceInfo | None, PageRequest], int | None]
"""Decides a page request: the response code, or ``None`` when it is reported elsewhere and
answered later (guest mode)."""


class IntelIommu:
    """The driver state and operations of one unit."""

    def __init__(self, unit: Unit, mem: PhysMem, options: DriverOptions, trace: Trace,
                 counters: Counters) -> None:
        self.unit = unit
        self.name = unit.name
        self.regs = unit.regs
        self.mem = mem
        self.options = options
        self.trace = trace
        self.counters = counters
        # The driver reads what the hardware offers, as Linux does.
        self.caps = Capabilities.decode(self.regs.read("CAP"), self.regs.read("ECAP"))
        self.gcmd = 0
        self.agaw = 3 if self.caps.sagaw & 0b01000 and not self.caps.sagaw & 0b00100 else 2
        self._dids = {0, FLPT_DEFAULT_DID}  # domain ids in use; 0 and 1 are reserved
        self.devices: dict[int, DeviceInfo] = {}
        self.root = 0
        self._context_tables: dict[tuple[int, bool], int] = {}
        self.qi_base = 0
        self.qi_status = 0
        self.qi_shift = 4
        self.free_head = 0
        self.prq_base = 0
        self.prq_size = 0
        self.page_request_handler: PageRequestHandler | None = None
        self.prq_step_mode = False
        self.prq_interrupt_pending = False
        self._in_prq_thread = False
        self.teardowns: list[TeardownRecord] = []
        self.reported: dict[tuple[int, int | None, int], PageRequest] = {}
        self.current_arrival: int | None = None  # trace seq of the request being handled

    # ------------------------------------------------------------------ bring-up
    def boot(self) -> None:
        """``init_dmars`` for this unit: QI, root table, PRQ, translation."""
        self.enable_qi()
        self.set_root_entry()
        if self.caps.pasid_supported and self.caps.prs:
            self.enable_prq()
        self.enable_translation()

    def _set_gcmd(self, bit: int, status: int, on: bool, what: str) -> None:
        if on:
            self.gcmd |= bit
        else:
            self.gcmd &= ~bit
        self.regs.write("GCMD", self.gcmd)
        if bool(self.regs.read("GSTS") & status) != on:
            raise IoasidError(EIO, f"{self.name}: {what} did not {'set' if on else 'clear'}")

    def enable_qi(self) -> None:
        """``dmar_enable_qi``: allocate the ring and the status words, program IQA, set QIE."""
        if not self.caps.qi:
            raise IoasidError(ENODEV, f"{self.name}: no queued invalidation (ECAP.QI)")
        sm = self.caps.smts
        order = 1 if sm else 0
        self.qi_base = self.mem.alloc("iq", 1 << order, owner=self.name)
        self.qi_status = self.mem.alloc("iq_status", 1, owner=self.name)
        self.qi_shift = 5 if sm else 4
        self.free_head = 0
        self.regs.write("IQT", 0)
        self.regs.write("IQA", self.qi_base | (r.IQA_DW if sm else 0) | order)
        self._set_gcmd(r.GCMD_QIE, r.GSTS_QIES, True, "QIES")

    def set_root_entry(self) -> None:
        """``iommu_set_root_entry``: program RTADDR (SMT in scalable mode), SRTP, then the
        global context-cache, PASID-cache and IOTLB invalidations unless CAP.ESRTPS."""
        self.root = self.mem.alloc("root", 1, owner=self.name)
        self.regs.write("RTADDR", self.root | (r.RTADDR_SMT if self.caps.smts else 0))
        self.regs.write("GCMD", self.gcmd | r.GCMD_SRTP)
        if not self.regs.read("GSTS") & r.GSTS_RTPS:
            raise IoasidError(EIO, f"{self.name}: RTPS did not set")
        if self.caps.esrtps:
            return
        self.flush_context(0, 0, 0, d.CC_GLOBAL)
        if self.caps.smts:
            self.flush_pasid_cache(0, d.QI_PC_GLOBAL, 0)
        self.flush_iotlb(0, 0, 0, d.IOTLB_GLOBAL)

    def enable_prq(self) -> None:
        """Allocate and program the page request queue and unmask its event."""
        order = self.options.prq_order
        self.prq_base = self.mem.alloc("prq", 1 << order, owner=self.name)
        self.prq_size = (1 << order) * 4096
        self.regs.write("PQH", 0)
        self.regs.write("PQA", self.prq_base | order)
        self.unit.set_page_request_handler(self._prq_interrupt)
        self.regs.write("PECTL", 0)

    def enable_translation(self) -> None:
        self._set_gcmd(r.GCMD_TE, r.GSTS_TES, True, "TES")

    # ------------------------------------------------------------------ queued invalidation
    def _write_desc(self, slot: int, desc: d.Desc) -> None:
        addr = self.qi_base + (slot << self.qi_shift)
        for i in range(4 if self.qi_shift == 5 else 2):
            self.mem.write64(addr + 8 * i, desc[i])

    def _status_addr(self, slot: int) -> int:
        return self.qi_status + 4 * slot

    def qi_submit_sync(self, descs: list[d.Desc], *, drain: bool = False) -> None:
        """Submit a batch and wait for it. ``EINVAL`` if the hardware rejected a descriptor
        of the batch (after Linux's recovery), ``EIO`` if the queue cannot make progress."""
        n = len(descs)
        if not self.regs.read("GSTS") & r.GSTS_QIES:
            raise IoasidError(EIO, f"{self.name}: queued invalidation is not enabled")
        if n + 2 > QI_LENGTH:
            raise IoasidError(EINVAL, f"batch of {n} descriptors exceeds the queue")
        index = self.free_head
        for i, desc in enumerate(descs):
            slot = (index + i) % QI_LENGTH
            self._write_desc(slot, desc)
            self.mem.write32(self._status_addr(slot), d.QI_IN_USE)
        wait_index = (index + n) % QI_LENGTH
        wait_desc = d.wait(self._status_addr(wait_index), d.QI_DONE, sw=True, pd=drain)
        self._write_desc(wait_index, wait_desc)
        self.mem.write32(self._status_addr(wait_index), d.QI_IN_USE)
        self.free_head = (wait_index + 1) % QI_LENGTH
        labels = [d.LABELS.get(desc[0] & 0xF, "?") for desc in descs]
        self.counters.inc("qi.batches")
        self.trace.emit("qi_submit", unit=self.name, labels=labels, drain=drain,
                        first=index, wait=wait_index)
        self.regs.write("IQT", self.free_head << self.qi_shift)
        rc = 0
        while self.mem.read32(self._status_addr(wait_index)) != d.QI_DONE:
            rc = self._qi_check_fault(index, wait_index)
            if rc:
                break
        for i in range(n + 1):
            self.mem.write32(self._status_addr((index + i) % QI_LENGTH), d.QI_FREE)
        if rc:
            raise IoasidError(rc, f"{self.name}: invalid descriptor in {labels}")

    def _qi_check_fault(self, index: int, wait_index: int) -> int:
        """Linux ``qi_check_fault``; returns an errno to give up with, 0 to keep waiting."""
        fsts = self.regs.read("FSTS")
        shift = self.qi_shift
        if fsts & r.FSTS_IQE:
            head = self.regs.read("IQH") >> shift
            in_batch = (head - index) % QI_LENGTH <= (wait_index - index) % QI_LENGTH
            if in_batch:
                words = self.mem.read_words(self.qi_base + (head << shift), 2)
                self.trace.emit("warn", unit=self.name, msg="VT-d detected invalid descriptor",
                                qw0=words[0], qw1=words[1])
                self.counters.inc("qi.invalid_descriptor")
                wait_words = self.mem.read_words(self.qi_base + (wait_index << shift),
                                                 4 if shift == 5 else 2)
                self._write_desc(head, (*wait_words, 0, 0)[:4])  # type: ignore[arg-type]
                self.regs.write("FSTS", r.FSTS_IQE)
                return EINVAL
            return EIO  # an error outside this batch: Linux would spin forever
        return EIO  # idle hardware and no completion: nothing else could complete it

    def flush_context(self, did: int, sid: int, fm: int, granularity: int) -> None:
        self.qi_submit_sync([d.cc(granularity, did, sid, fm)])

    def flush_iotlb(self, did: int, addr: int, size_order: int, granularity: int) -> None:
        self.qi_submit_sync([d.iotlb(granularity, did, addr, size_order,
                                     dw=self.caps.dwd, dr=self.caps.drd)])

    def flush_piotlb(self, did: int, pasid: int, addr: int, npages: int, ih: int = 0) -> None:
        self.qi_submit_sync([d.piotlb(did, pasid, addr, npages, ih)])

    def flush_pasid_cache(self, did: int, granularity: int, pasid: int) -> None:
        self.qi_submit_sync([d.pasid_cache(did, granularity, pasid)])

    def flush_dev_iotlb(self, info: DeviceInfo, addr: int, mask: int) -> None:
        if not self.gcmd & r.GCMD_TE:
            return
        self.qi_submit_sync([d.dev_iotlb(info.sid, info.pfsid, info.qdep, addr, mask)])

    def flush_dev_iotlb_pasid(self, info: DeviceInfo, pasid: int, addr: int,
                              size_order: int) -> None:
        if not self.gcmd & r.GCMD_TE:
            return
        self.qi_submit_sync([d.dev_iotlb_pasid(info.sid, info.pfsid, pasid, info.qdep, addr,
                                               size_order)])

    # ------------------------------------------------------------------ domains
    def domain_alloc(self, *, nesting: bool = False, owner: Any = None) -> Domain:
        """A second-level domain with a fresh DID; ``ENOSPC`` when the DIDs run out."""
        did = next((i for i in range(2, self.caps.domain_ids) if i not in self._dids), -1)
        if did < 0:
            raise IoasidError(ENOSPC, f"{self.name}: no free domain id")
        self._dids.add(did)
        pgd = self.mem.alloc("sl_pgd", 1, owner=owner)
        max_addr = (1 << (ADDR_WIDTH_5LEVEL if self.agaw == 3 else ADDR_WIDTH_4LEVEL)) - 1
        return Domain(self, did, pgd, self.agaw, max_addr, nesting, owner)

    def domain_free(self, domain: Domain) -> None:
        self.mem.free(domain.pgd)
        self._dids.discard(domain.did)

    # ------------------------------------------------------------------ devices
    def probe_device(self, device: PciDevice, pasid_max: int) -> DeviceInfo:
        """Allocate the device's PASID directory and program its context entry."""
        caps = self.caps
        pasid_enabled = caps.pasid_supported and device.pasid_bits > 0
        ats = device.ats and caps.dt
        pri = (device.pri and ats and caps.pasid_supported and caps.prs
               and (caps.pds or not self.options.pri_requires_pds))
        if device.pri and caps.prs and not caps.pds and self.options.pri_requires_pds:
            self.trace.emit("warn", unit=self.name, bdf=device.bdf,
                            msg="PRI not enabled: the unit cannot drain page requests (no PDS)")
        info = DeviceInfo(device, self, None, pasid_enabled, ats, bool(pri),
                          device.qdep if ats else 0, device.pf_sid if caps.dit else 0)
        if caps.smts:
            pasids = min(device.max_pasids, pasid_max) if pasid_enabled else 0
            info.table = PasidTable(self.mem, pasids, owner=device.bdf,
                                    reclaim_empty=self.options.reclaim_empty_pasid_tables)
            self._program_context(info)
        self.devices[device.sid] = info
        return info

    def _context_addr(self, device: PciDevice, *, alloc: bool) -> int | None:
        upper = device.devfn >= CONTEXT_ENTRIES_PER_TABLE
        key = (device.bus, upper)
        table = self._context_tables.get(key)
        if table is None:
            if not alloc:
                return None
            table = self.mem.alloc("context", 1, owner=self.name)
            self._context_tables[key] = table
            root_word = self.root + ROOT_ENTRY_SIZE * device.bus + (8 if upper else 0)
            self.mem.write64(root_word, table | 1)
        return table + CONTEXT_ENTRY_SIZE * (device.devfn % CONTEXT_ENTRIES_PER_TABLE)

    def _program_context(self, info: DeviceInfo) -> None:
        table = info.table
        assert table is not None
        addr = self._context_addr(info.device, alloc=True)
        assert addr is not None
        entry = SmContextEntry(p=True, dte=info.ats_enabled, paside=info.pasid_enabled,
                               pre=info.pri_enabled, pdts=table.pdts,
                               pasid_dir=table.dir_addr, rid_pasid=PASID_RID2PASID)
        lo, hi, _, _ = entry.encode()
        for i in range(4):
            self.mem.write64(addr + 8 * i, 0)
        self.mem.write64(addr + 8, hi)
        self.mem.write64(addr, lo & ~1)
        self.mem.write64(addr, lo)  # present last
        if self.caps.cm:
            self.flush_context(0, info.sid, 0, d.CC_DEVICE)

    def release_device(self, info: DeviceInfo) -> None:
        """Tear down every entry still set, clear the context entry (context-cache flush),
        and free the PASID table."""
        table = info.table
        if table is not None:
            for index, leaf in list(table.leaves.items()):
                for i in range(64):
                    if self.mem.read64(leaf + 64 * i) & 1:
                        self.tear_down_entry(info, (index << 6) | i, fault_ignore=False)
            addr = self._context_addr(info.device, alloc=False)
            if addr is not None:
                for i in range(4):
                    self.mem.write64(addr + 8 * i, 0)
                self.flush_context(0, info.sid, 0, d.CC_DEVICE)
            table.free()
            info.table = None
        self.devices.pop(info.sid, None)

    # ------------------------------------------------------------------ PASID entries
    def _entry(self, info: DeviceInfo, pasid: int) -> int:
        table = info.table
        if table is None:
            raise IoasidError(ENODEV, f"{info.device.bdf}: no PASID table (scalable mode off)")
        addr = table.entry_addr(pasid)
        if addr is None:
            raise IoasidError(ENODEV, f"{info.device.bdf}: PASID {pasid} beyond its table "
                                      f"({table.max_pasid})")
        return addr

    def _begin_setup(self, info: DeviceInfo, pasid: int) -> int:
        addr = self._entry(info, pasid)
        if self.mem.read64(addr) & 1:
            raise IoasidError(EBUSY, f"{info.device.bdf}: PASID {pasid} entry is present")
        clear_entry(self.mem, addr)
        return addr

    def _finish_setup(self, info: DeviceInfo, pasid: int, addr: int, pgtt: Pgtt,
                      did: int) -> None:
        write_field(self.mem, addr, "pgtt", pgtt)
        write_field(self.mem, addr, "p", 1)
        assert info.table is not None
        info.table.account(pasid, (False, 0), (True, int(pgtt)))
        self.counters.inc(f"entry.set.{pgtt.name.lower()}")
        self.trace.emit("pasid_entry_set", unit=self.name, bdf=info.device.bdf, pasid=pasid,
                        pgtt=pgtt.name, did=did)
        self._flush_after_setup(pasid, did)

    def _flush_after_setup(self, pasid: int, did: int) -> None:
        """``pasid_flush_caches``: in caching mode, PASID-selective PASID-cache then P_IOTLB
        invalidations (each its own batch); otherwise only the write buffer."""
        if not self.caps.c:
            self.counters.inc("cpu.clflush")
        if self.caps.cm:
            self.flush_pasid_cache(did, d.QI_PC_PASID_SEL, pasid)
            self.flush_piotlb(did, pasid, 0, -1)

    def setup_first_level(self, info: DeviceInfo, pgd: int, pasid: int, did: int, *,
                          five_level: bool = False, supervisor: bool = False) -> None:
        """``intel_pasid_setup_first_level``. ``EINVAL`` without ECAP.FLTS, for 5-level
        without CAP.FL5LP or supervisor requests without ECAP.SRS; ``ENODEV`` beyond the
        table; ``EBUSY`` if present."""
        caps = self.caps
        if not caps.flts:
            raise IoasidError(EINVAL, f"{self.name}: no first-level translation (ECAP.FLTS)")
        if five_level and not caps.fl5lp:
            raise IoasidError(EINVAL, f"{self.name}: no 5-level first level (CAP.FL5LP)")
        if supervisor and not caps.srs:
            raise IoasidError(EINVAL, f"{self.name}: no supervisor requests (ECAP.SRS)")
        addr = self._begin_setup(info, pasid)
        mem = self.mem
        write_field(mem, addr, "flptptr", pgd)
        if five_level:
            write_field(mem, addr, "flpm", 1)
        write_field(mem, addr, "did", did)
        write_field(mem, addr, "aw", self.agaw)
        write_field(mem, addr, "pwsnp", int(caps.smpwc))
        if supervisor:
            write_field(mem, addr, "sre", 1)
        self._finish_setup(info, pasid, addr, Pgtt.FL_ONLY, did)

    def setup_second_level(self, info: DeviceInfo, domain: Domain, pasid: int) -> None:
        """``intel_pasid_setup_second_level``: ``EINVAL`` without ECAP.SLTS."""
        if not self.caps.slts:
            raise IoasidError(EINVAL, f"{self.name}: no second-level translation (ECAP.SLTS)")
        addr = self._begin_setup(info, pasid)
        mem = self.mem
        write_field(mem, addr, "did", domain.did)
        write_field(mem, addr, "slptptr", domain.pgd)
        write_field(mem, addr, "aw", domain.aw)
        write_field(mem, addr, "fpd", 0)
        write_field(mem, addr, "pwsnp", int(self.caps.smpwc))
        self._finish_setup(info, pasid, addr, Pgtt.SL_ONLY, domain.did)

    def setup_pass_through(self, info: DeviceInfo, pasid: int) -> None:
        """``intel_pasid_setup_pass_through``: ``EINVAL`` without ECAP.PT."""
        if not self.caps.pt:
            raise IoasidError(EINVAL, f"{self.name}: no pass-through (ECAP.PT)")
        addr = self._begin_setup(info, pasid)
        mem = self.mem
        write_field(mem, addr, "did", FLPT_DEFAULT_DID)
        write_field(mem, addr, "aw", self.agaw)
        write_field(mem, addr, "fpd", 0)
        write_field(mem, addr, "pwsnp", int(self.caps.smpwc))
        self._finish_setup(info, pasid, addr, Pgtt.PT, FLPT_DEFAULT_DID)

    def setup_nested(self, info: DeviceInfo, gpgd: int, pasid: int, domain: Domain, *,
                     addr_width: int = ADDR_WIDTH_4LEVEL, sre: bool = False,
                     eafe: bool = False) -> None:
        """``intel_pasid_setup_nested`` (2020): ``EINVAL`` without ECAP.NEST or a nesting
        domain, for an address width other than 48 or 57 (57 needs CAP.FL5LP), a guest PGD
        above the domain's reach, SRE without ECAP.SRS or EAFE without ECAP.EAFS."""
        caps = self.caps
        if not caps.nest:
            raise IoasidError(EINVAL, f"{self.name}: no nested translation (ECAP.NEST)")
        if not domain.nesting:
            raise IoasidError(EINVAL, f"domain {domain.did} is not in nesting mode")
        addr = self._begin_setup(info, pasid)
        mem = self.mem
        if addr_width == ADDR_WIDTH_5LEVEL:
            if not caps.fl5lp:
                raise IoasidError(EINVAL, f"{self.name}: 5-level paging not supported")
            write_field(mem, addr, "flpm", 1)
        elif addr_width == ADDR_WIDTH_4LEVEL:
            write_field(mem, addr, "flpm", 0)
        else:
            raise IoasidError(EINVAL, f"invalid guest address width {addr_width}")
        if gpgd > domain.max_addr or gpgd & 0xFFF:
            raise IoasidError(EINVAL, f"guest PGD {gpgd:#x} not supported, max "
                                      f"{domain.max_addr:#x}")
        write_field(mem, addr, "flptptr", gpgd)
        if sre:
            if not caps.srs:
                raise IoasidError(EINVAL, f"{self.name}: no supervisor requests (ECAP.SRS)")
            write_field(mem, addr, "sre", 1)
        if eafe:
            if not caps.eafs:
                raise IoasidError(EINVAL, f"{self.name}: no extended accessed flag (ECAP.EAFS)")
            write_field(mem, addr, "eafe", 1)
        write_field(mem, addr, "slptptr", domain.pgd)
        write_field(mem, addr, "fpd", 0)
        write_field(mem, addr, "did", domain.did)
        write_field(mem, addr, "aw", domain.aw)
        write_field(mem, addr, "pwsnp", int(caps.smpwc))
        self._finish_setup(info, pasid, addr, Pgtt.NESTED, domain.did)

    def tear_down_entry(self, info: DeviceInfo, pasid: int, *, fault_ignore: bool) -> None:
        """``intel_pasid_tear_down_entry``: clear the entry (leaving FPD with
        ``fault_ignore``), then invalidate the PASID cache, the IOTLB and the device TLB."""
        table = info.table
        if table is None:
            return
        addr = table.entry_addr(pasid)
        if addr is None:
            return
        start = self.unit.iq.processed
        entry = PasidEntry.decode(self.mem.read_words(addr, PASID_ENTRY_WORDS))
        current = self.options.teardown == "current"
        if current and not entry.p:
            return
        clear_entry(self.mem, addr, keep_fpd=fault_ignore and entry.p)
        table.account(pasid, (entry.p, entry.pgtt), (False, 0))
        self.trace.emit("pasid_entry_clear", unit=self.name, bdf=info.device.bdf, pasid=pasid,
                        did=entry.did, pgtt=entry.pgtt, fpd=fault_ignore and entry.p)
        if not self.caps.c:
            self.counters.inc("cpu.clflush")
        did = entry.did
        self.flush_pasid_cache(did, d.QI_PC_PASID_SEL, pasid)
        if not current or entry.pgtt in (Pgtt.PT, Pgtt.FL_ONLY):
            self.flush_piotlb(did, pasid, 0, -1)
        else:
            self.flush_iotlb(did, 0, 0, d.IOTLB_DSI)
        if info.ats_enabled and not self.caps.cm:
            self._devtlb_invalidation_with_pasid(info, pasid)
        table.reclaim_if_empty(pasid)
        done = self.unit.iq.processed - start
        labels = tuple(list(self.unit.iq.recent)[-done:]) if done else ()
        self.teardowns.append(TeardownRecord(self.name, info.device.bdf, pasid, labels,
                                             self.trace.seq))
        del self.teardowns[:-64]
        self.counters.inc("entry.cleared")

    def _devtlb_invalidation_with_pasid(self, info: DeviceInfo, pasid: int) -> None:
        if pasid == PASID_RID2PASID:
            self.flush_dev_iotlb(info, 0, d.MAX_AGAW_PFN_WIDTH)
        else:
            self.flush_dev_iotlb_pasid(info, pasid, 0, d.MAX_AGAW_PFN_WIDTH)

    # ------------------------------------------------------------------ page requests
    def _prq_interrupt(self) -> None:
        if self.prq_step_mode or self._in_prq_thread:
            self.prq_interrupt_pending = True
            return
        self.run_prq_thread()

    def run_prq_thread(self) -> int:
        """The page request handler (``prq_event_thread``): clear PPR, handle every queued
        request from head to tail, write PQH, clear PRO once empty. Returns how many."""
        if not self.prq_size:
            return 0
        self._in_prq_thread = True
        self.prq_interrupt_pending = False
        handled = 0
        try:
            self.regs.write("PRS", r.PRS_PPR)
            tail = self.regs.read("PQT") & r.PQ_OFFSET_MASK
            head = self.regs.read("PQH") & r.PQ_OFFSET_MASK
            while head != tail:
                words = self.mem.read_words(self.prq_base + head, 4)
                self.current_arrival = self.unit.prq.arrivals.pop(head, None)
                self._handle_page_request(PageRequest.decode(words))
                handled += 1
                head = (head + PRQ_DESC_SIZE) % self.prq_size
            self.regs.write("PQH", tail)
            if self.regs.read("PRS") & r.PRS_PRO and head == (self.regs.read("PQT")
                                                              & r.PQ_OFFSET_MASK):
                self.regs.write("PRS", r.PRS_PRO)
                self.counters.inc("prq.pro_cleared")
            self.counters.inc("prq.thread_runs")
        finally:
            self._in_prq_thread = False
        if self.prq_interrupt_pending and not self.prq_step_mode:
            handled += self.run_prq_thread()
        return handled

    def _handle_page_request(self, req: PageRequest) -> None:
        addr = req.addr
        canonical = (addr >> 47) in (0, (1 << 17) - 1)
        info = self.devices.get(req.rid)
        if not canonical or (req.priv and (req.read or req.write)) or (req.exe and req.read):
            self._report(req, "bad request", d.QI_RESP_INVALID)
            self.page_response(req, d.QI_RESP_INVALID)
            return
        if req.is_stop_marker:
            self._report(req, "stop marker", None)
            self.counters.inc("prq.stop_markers")
            return
        code = None
        if self.page_request_handler is not None:
            code = self.page_request_handler(self, info, req)
        else:
            code = d.QI_RESP_INVALID
        if code is None:
            self.reported[(req.rid, req.pasid, req.prg_index)] = req
            self._report(req, "reported", None)
            return
        self._report(req, "handled", code)
        self.page_response(req, code)

    def _report(self, req: PageRequest, what: str, code: int | None) -> None:
        self.counters.inc("prq.reports")
        self.trace.emit("prq_report", unit=self.name, request=req.describe(), decision=what,
                        code=code)

    def page_response(self, req: PageRequest, code: int) -> bool:
        """Send the page group response ``req`` needs (LPIG or private data); returns whether
        one was sent."""
        if not req.needs_response:
            return False
        self.qi_submit_sync([d.page_group_response(
            req.rid, req.pasid or 0, code, req.prg_index, pasid_present=req.pasid is not None,
            private=req.private, lpig=req.lpig and self.options.response_lpig)])
        self.counters.inc(f"prq.responses.{code:#x}")
        return True

    def drain_prq(self, info: DeviceInfo, pasid: int, did: int = FLPT_DEFAULT_DID) -> None:
        """``intel_iommu_drain_pasid_prq``: nothing without PRI; otherwise wait until no
        queued request matches (RID, PASID), abort the requests reported and unanswered for
        it, then submit fence wait + P_IOTLB + device TLB with a PD wait, again while PRO."""
        if not info.pri_enabled:
            return
        sid = info.sid
        self.counters.inc("drain.runs")
        self.trace.emit("drain_begin", unit=self.name, bdf=info.device.bdf, pasid=pasid)
        waits = 0
        while any(req.rid == sid and (req.pasid == pasid if req.pasid is not None
                                      else pasid == PASID_RID2PASID)
                  for _, req in self.unit.prq.pending()):
            waits += 1
            if waits > MAX_DRAIN_ROUNDS:
                raise IoasidError(EIO, f"{self.name}: page requests for PASID {pasid} "
                                       f"never drain")
            self.run_prq_thread()
        self.counters.inc("drain.waits", waits)
        self.counters.high("drain.max_wait", waits)
        for key in [k for k in self.reported if k[0] == sid and k[1] == pasid]:
            self.counters.inc("prq.aborted_reports")
            self.page_response(self.reported.pop(key), d.QI_RESP_INVALID)
        if pasid == PASID_RID2PASID:
            descs = [d.wait(0, d.QI_DONE, fence=True),
                     d.iotlb(d.IOTLB_DSI, did, dw=self.caps.dwd, dr=self.caps.drd),
                     d.dev_iotlb(sid, info.pfsid, info.qdep, 0, d.MAX_AGAW_PFN_WIDTH)]
        else:
            descs = [d.wait(0, d.QI_DONE, fence=True),
                     d.piotlb(did, pasid, 0, -1),
                     d.dev_iotlb_pasid(sid, info.pfsid, pasid, info.qdep, 0,
                                       d.MAX_AGAW_PFN_WIDTH)]
        rounds = 0
        while True:
            try:
                self.qi_submit_sync(descs, drain=True)
            except IoasidError as exc:  # Linux ignores the result here
                self.counters.inc("drain.submit_failed")
                self.trace.emit("warn", unit=self.name, msg="drain submission failed",
                                error=exc.name)
                break
            if not self.regs.read("PRS") & r.PRS_PRO:
                break
            rounds += 1
            if rounds > MAX_DRAIN_ROUNDS:
                raise IoasidError(EIO, f"{self.name}: page request overflow never clears")
            self.counters.inc("drain.retries")
            self.run_prq_thread()
        self.trace.emit("drain_end", unit=self.name, bdf=info.device.bdf, pasid=pasid,
                        waits=waits, retries=rounds)
