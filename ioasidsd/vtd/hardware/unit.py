"""One simulated VT-d remapping unit (a DMAR unit): registers, memory, caches and queues.

The unit is the hardware half of the model. Software (``iommu.IntelIommu``) reaches it only as
Linux reaches real hardware: through register reads and writes and through the structures it
builds in ``PhysMem``. Register writes run their side effects synchronously:

* GCMD: TE, QIE, IRE, EAFL and CFI act on a change of level (writing the same level again does
  nothing); SRTP latches RTADDR (and its SMT bit) and sets GSTS.RTPS, and with CAP.ESRTPS also
  invalidates every cache; WBF and SFL/SIRTP are one-shot and only mirrored.
* IQT (process the invalidation queue), FSTS (clearing IQE resumes it; the fault status bits are
  write-1-to-clear), ICS, IECTL/PECTL/FECTL (unmasking delivers a pending event), PQA (latch the
  page request queue), PRS (PRO is only cleared while the queue is empty), VCMD, and the fault
  recording registers' F bits.

Devices are attached by source id. ``dma`` translates a request; ``page_request`` is a device's
page request arriving (queued at once, or held in flight until a drain or
``deliver_page_requests``). Options that differ between implementations are in ``UnitOptions``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from errno import EEXIST, EINVAL
from typing import Any, Literal

from ioasidsd.model.errors import IoasidError
from ioasidsd.vtd.counters import Counters
from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.caches import ContextCache, Iotlb, PasidCache
from ioasidsd.vtd.hardware.caps import Capabilities
from ioasidsd.vtd.hardware.context import (
    CONTEXT_ENTRIES_PER_TABLE,
    CONTEXT_ENTRY_SIZE,
    ROOT_ENTRY_SIZE,
    RootEntry,
    SmContextEntry,
)
from ioasidsd.vtd.hardware.descriptors import QI_RESP_INVALID, QI_RESP_SUCCESS
from ioasidsd.vtd.hardware.device import PciDevice, Response
from ioasidsd.vtd.hardware.faults import SM_PRE_CLEAR, FaultRecorder
from ioasidsd.vtd.hardware.inval_queue import InvalidationQueue
from ioasidsd.vtd.hardware.memory import Block, MemoryAccessError, PhysMem
from ioasidsd.vtd.hardware.page_requests import PageRequest, PageRequestQueue
from ioasidsd.vtd.hardware.translation import DmaResult, Translator
from ioasidsd.vtd.hardware.vcmd import VCCAP_PAS, VirtualCommand
from ioasidsd.vtd.trace import Trace

VcmdLayoutName = Literal["3.1", "3.3"]


@dataclass(frozen=True, slots=True)
class UnitOptions:
    """Behaviours that differ between implementations of the specification.

    ``strict_sm_128bit``: a 128-bit descriptor while the root table is in scalable mode is an
    invalidation queue error (VT-d 6.5.2; QEMU does not check). ``pd_reserved_without_pds``: a
    wait with PD on a unit without ECAP.PDS is an error (the field is reserved; QEMU accepts
    it). ``prq_overflow_auto_response``: a page request dropped because the PRQ overflowed and
    that needs a response is answered "success" by the hardware, so the device retries (off:
    it is dropped silently, as QEMU's RFC does).
    """

    strict_sm_128bit: bool = True
    pd_reserved_without_pds: bool = True
    prq_overflow_auto_response: bool = False


class Unit:
    """A DMAR unit. ``caps`` sets CAP/ECAP; ``version`` is the VER register (0x10 as QEMU
    reports; a major version of 4 or more makes the LPIG bit of page group responses
    ignored); ``vccap_pas`` sets VCCAP.PAS when ECAP.VCS is set."""

    def __init__(
        self,
        name: str,
        caps: Capabilities | None = None,
        *,
        version: int = 0x10,
        vcmd_layout: VcmdLayoutName = "3.3",
        vccap_pas: bool = True,
        options: UnitOptions | None = None,
        mem: PhysMem | None = None,
        trace: Trace | None = None,
    ) -> None:
        if not 0 <= version <= 0xFF:
            raise IoasidError(EINVAL, f"unit {name}: version {version:#x} not a byte")
        if vcmd_layout not in r.VCMD_LAYOUTS:
            raise IoasidError(EINVAL, f"unit {name}: vcmd_layout {vcmd_layout!r}: "
                                      f"expected one of {', '.join(r.VCMD_LAYOUTS)}")
        self.name = name
        self.caps = caps or Capabilities()
        self.version = version
        self.options = options or UnitOptions()
        self.trace = trace or Trace()
        self.counters = Counters()
        self.mem = mem or PhysMem()
        if mem is None:
            self.mem.on_page_change = self._page_event
        self.devices: dict[int, PciDevice] = {}
        self.context_cache = ContextCache()
        self.pasid_cache = PasidCache()
        self.iotlb = Iotlb()
        self.root_table = 0  # latched by SRTP
        self.sm_root = False
        self._hw_depth = 0
        self._irqs: deque[Callable[[], None]] = deque()
        self.regs = r.RegisterFile(on_write=self._traced_write)
        self._define_registers(vcmd_layout, vccap_pas)
        self.iq = InvalidationQueue(self)
        self.prq = PageRequestQueue(self.regs, self.mem, self.counters, self.trace, name)
        self.faults = FaultRecorder(self.regs, self.caps.nfr, self.counters, self.trace, name)
        self.translator = Translator(self)
        self.vcmd: VirtualCommand | None = None
        if self.caps.vcs:
            self.vcmd = VirtualCommand(self.regs, r.VCMD_LAYOUTS[vcmd_layout], self.counters,
                                       self.trace, name)
        self.vcmd_layout = r.VCMD_LAYOUTS[vcmd_layout]

    @property
    def version_major(self) -> int:
        return (self.version >> 4) & 0xF

    # ------------------------------------------------------------------ registers
    def _define_registers(self, vcmd_layout: str, vccap_pas: bool) -> None:
        regs = self.regs
        caps = self.caps
        u32, u64 = 0xFFFFFFFF, (1 << 64) - 1
        regs.define("VER", r.VER, 4, value=self.version)
        regs.define("CAP", r.CAP, 8, value=caps.cap())
        regs.define("ECAP", r.ECAP, 8, value=caps.ecap())
        regs.define("GCMD", r.GCMD, 4, rw=u32, hook=self._guarded(self._gcmd_write))
        regs.define("GSTS", r.GSTS, 4)
        regs.define("RTADDR", r.RTADDR, 8, rw=u64 & ~0x3FF)
        regs.define("FSTS", r.FSTS, 4,
                    w1c=r.FSTS_PFO | r.FSTS_IQE | r.FSTS_ICE | r.FSTS_ITE,
                    hook=self._guarded(self._fsts_write))
        regs.define("FECTL", r.FECTL, 4, value=r.ECTL_IM, rw=r.ECTL_IM,
                    hook=self._guarded(self._fectl_write))
        regs.define("FEDATA", r.FEDATA, 4, rw=u32)
        regs.define("FEADDR", r.FEADDR, 4, rw=u32 & ~0x3)
        regs.define("FEUADDR", r.FEUADDR, 4, rw=u32)
        regs.define("IQH", r.IQH, 8)
        regs.define("IQT", r.IQT, 8, rw=r.IQT_QT_MASK, hook=self._guarded(self._iqt_write))
        regs.define("IQA", r.IQA, 8, rw=r.IQ_ADDR_MASK | r.IQA_DW | r.IQA_QS_MASK)
        regs.define("ICS", r.ICS, 4, w1c=r.ICS_IWC, hook=self._guarded(self._ics_write))
        regs.define("IECTL", r.IECTL, 4, value=r.ECTL_IM, rw=r.ECTL_IM,
                    hook=self._guarded(self._iectl_write))
        regs.define("IEDATA", r.IEDATA, 4, rw=u32)
        regs.define("IEADDR", r.IEADDR, 4, rw=u32 & ~0x3)
        regs.define("IEUADDR", r.IEUADDR, 4, rw=u32)
        regs.define("IQER", r.IQER, 8)
        regs.define("PQH", r.PQH, 8, rw=r.PQ_OFFSET_MASK)
        regs.define("PQT", r.PQT, 8)
        regs.define("PQA", r.PQA, 8, rw=r.IQ_ADDR_MASK | r.PQA_PQS_MASK,
                    hook=self._guarded(self._pqa_write))
        regs.define("PRS", r.PRS, 4, w1c=r.PRS_PPR | r.PRS_PRO, hook=self._guarded(self._prs_write))
        regs.define("PECTL", r.PECTL, 4, value=r.ECTL_IM, rw=r.ECTL_IM,
                    hook=self._guarded(self._pectl_write))
        regs.define("PEDATA", r.PEDATA, 4, rw=u32)
        regs.define("PEADDR", r.PEADDR, 4, rw=u32 & ~0x3)
        regs.define("PEUADDR", r.PEUADDR, 4, rw=u32)
        for i in range(caps.nfr + 1):
            base = caps.frcd_offset + 16 * i
            regs.define(f"FRCD{i}_LO", base, 8)
            regs.define(f"FRCD{i}_HI", base + 8, 8, w1c=r.FRCD_HI_F,
                        hook=self._guarded(self._frcd_write))
        if caps.vcs:
            layout = r.VCMD_LAYOUTS[vcmd_layout]
            regs.define("VCCAP", layout.vccap, 8, value=VCCAP_PAS if vccap_pas else 0)
            regs.define("VCMD", layout.vcmd, 8, rw=u64, hook=self._guarded(self._vcmd_write))
            regs.define("VCRSP", layout.vcrsp, 8)

    # Interrupts are taken after the hardware action that raised them is complete, as a CPU
    # takes them between instructions: a handler never runs inside descriptor processing.
    def _guarded(self, fn: Callable[[int, int], None]) -> Callable[[int, int], None]:
        def hook(value: int, old: int) -> None:
            self._hw_depth += 1
            try:
                fn(value, old)
            finally:
                self._leave()

        return hook

    def _leave(self) -> None:
        self._hw_depth -= 1
        while self._hw_depth == 0 and self._irqs:
            self._irqs.popleft()()

    def post_interrupt(self, handler: Callable[[], None]) -> None:
        """Deliver ``handler`` now, or once the hardware action in progress completes."""
        if self._hw_depth:
            self._irqs.append(handler)
        else:
            handler()

    def set_page_request_handler(self, handler: Callable[[], None] | None) -> None:
        """The software handler of the page-request event (the driver's PRQ thread)."""
        self.prq.interrupt = None if handler is None else (
            lambda: self.post_interrupt(handler))

    def _traced_write(self, name: str, offset: int, value: int) -> None:
        self.counters.inc("reg_write")
        self.trace.emit("reg_write", unit=self.name, name=name, offset=offset, value=value)

    def _page_event(self, event: str, block: Block) -> None:
        self.trace.emit(f"page_{event}", unit=self.name, page_kind=block.kind, pages=block.count,
                        addr=block.pfn << 12)

    def _gcmd_write(self, value: int, old: int) -> None:
        regs = self.regs
        status = regs.value("GSTS")
        changed = (value ^ status) & r.GCMD_LEVEL_BITS
        if changed & r.GCMD_QIE:
            if value & r.GCMD_QIE:
                if self.caps.qi:
                    self.iq.enable()
            else:
                self.iq.disable()
        for bit in (r.GCMD_TE, r.GCMD_IRE, r.GCMD_EAFL, r.GCMD_CFI):
            if changed & bit:
                if value & bit:
                    regs.set_bits("GSTS", bit)
                else:
                    regs.clear_bits("GSTS", bit)
        if value & r.GCMD_SRTP:
            rtaddr = regs.value("RTADDR")
            self.root_table = rtaddr & ~0xFFF & ((1 << 64) - 1)
            self.sm_root = bool(rtaddr & r.RTADDR_SMT) and self.caps.smts
            regs.set_bits("GSTS", r.GSTS_RTPS)
            if self.caps.esrtps:
                self.context_cache.invalidate_all()
                self.pasid_cache.invalidate_all()
                self.iotlb.invalidate_all()
        regs.set("GCMD", 0)

    def _fsts_write(self, value: int, old: int) -> None:
        if old & r.FSTS_IQE and value & r.FSTS_IQE:
            self.iq.resume()

    def _ics_write(self, value: int, old: int) -> None:
        if old & r.ICS_IWC and value & r.ICS_IWC:
            self.regs.clear_bits("IECTL", r.ECTL_IP)

    def _iectl_write(self, value: int, old: int) -> None:
        self._unmask("IECTL", "inv_complete", value)

    def _fectl_write(self, value: int, old: int) -> None:
        self._unmask("FECTL", "fault", value)

    def _pectl_write(self, value: int, old: int) -> None:
        regs = self.regs
        if not value & r.ECTL_IM and regs.value("PECTL") & r.ECTL_IP:
            self.prq.raise_event()

    def _unmask(self, reg: str, irq: str, value: int) -> None:
        if not value & r.ECTL_IM and self.regs.value(reg) & r.ECTL_IP:
            self.regs.clear_bits(reg, r.ECTL_IP)
            self.counters.inc(f"irq.{irq}")

    def _pqa_write(self, value: int, old: int) -> None:
        self.prq.latch(self.regs.value("PQA"))
        self.regs.set("PQH", 0)
        self.regs.set("PQT", 0)

    def _prs_write(self, value: int, old: int) -> None:
        if value & r.PRS_PRO and old & r.PRS_PRO and self.prq.head() != self.prq.tail():
            self.regs.set_bits("PRS", r.PRS_PRO)
            self.counters.inc("prq.pro_clear_refused")

    def _frcd_write(self, value: int, old: int) -> None:
        self.faults.refresh_ppf()

    def _vcmd_write(self, value: int, old: int) -> None:
        if self.vcmd is not None:
            self.vcmd.on_write(value, old)

    def _iqt_write(self, value: int, old: int) -> None:
        self.iq.on_iqt_write(value, old)

    # ------------------------------------------------------------------ devices
    def attach_device(self, device: PciDevice) -> None:
        """Put ``device`` behind this unit; ``EEXIST`` if its source id is taken."""
        if device.sid in self.devices:
            raise IoasidError(EEXIST, f"{device.bdf}: source id {device.sid:#06x} is taken on "
                                      f"{self.name}")
        if device.unit is not None:
            raise IoasidError(EEXIST, f"{device.bdf} is already behind {device.unit.name}")
        self.devices[device.sid] = device
        device.unit = self

    # ------------------------------------------------------------------ DMA and page requests
    def dma(self, sid: int, pasid: int | None, addr: int, *, write: bool = False,
            ats: bool = False, priv: bool = False) -> DmaResult:
        """A DMA (or, with ``ats``, a translation request) from ``sid``; see ``Translator``."""
        return self.translator.dma(sid, pasid, addr, write=write, ats=ats, priv=priv)

    def context_entry(self, sid: int) -> SmContextEntry | None:
        """The context entry memory holds for ``sid`` now (no cache), or ``None``."""
        if not self.root_table:
            return None
        try:
            lo, hi = self.mem.read_words(self.root_table + ROOT_ENTRY_SIZE * (sid >> 8), 2)
            root = RootEntry.decode(lo, hi)
            devfn = sid & 0xFF
            table = root.upper if devfn >= CONTEXT_ENTRIES_PER_TABLE else root.lower
            if not table:
                return None
            ctx = SmContextEntry.decode(self.mem.read_words(
                table + CONTEXT_ENTRY_SIZE * (devfn % CONTEXT_ENTRIES_PER_TABLE), 4))
        except MemoryAccessError:
            return None
        return ctx if ctx.p else None

    def page_request(self, device: PciDevice, req: PageRequest, *,
                     in_flight: bool = False) -> bool:
        """``device`` issues ``req``. With ``in_flight`` it is only on its way and reaches the
        unit at the next drain (or ``deliver_page_requests``). Returns whether it was queued
        in the PRQ now."""
        if req.rid != device.sid:
            raise IoasidError(EINVAL, f"{device.bdf}: request carries rid {req.rid:#06x}")
        if device.unit is not self:
            raise IoasidError(EINVAL, f"{device.bdf} is not behind {self.name}")
        if in_flight:
            device.in_flight.append(req)
            self.counters.inc("prq.in_flight")
            return False
        self._hw_depth += 1
        try:
            return self._receive(device, req)
        finally:
            self._leave()

    def deliver_page_requests(self) -> int:
        """Every request in flight from this unit's devices reaches the unit; returns how
        many arrived."""
        count = 0
        self._hw_depth += 1
        try:
            for device in self.devices.values():
                while device.in_flight:
                    self._receive(device, device.in_flight.popleft())
                    count += 1
        finally:
            self._leave()
        return count

    def _receive(self, device: PciDevice, req: PageRequest) -> bool:
        self.counters.inc("prq.requests")
        ctx = self.context_entry(device.sid)
        if ctx is None or not ctx.pre:
            self.faults.report(device.sid, req.pasid, req.addr, SM_PRE_CLEAR, write=req.write,
                               fpd=bool(ctx and ctx.fpd))
            self._auto_respond(device, req, QI_RESP_INVALID, "pre_clear")
            return False
        if req.needs_response and not req.is_stop_marker:
            device.pending_groups[req.group] = req
        queued = self.prq.enqueue(req)
        if not queued:
            device.pending_groups.pop(req.group, None)
            if self.options.prq_overflow_auto_response:
                self._auto_respond(device, req, QI_RESP_SUCCESS, "overflow")
        self.trace.emit("prq_request", unit=self.name, bdf=device.bdf, request=req.describe(),
                        queued=queued)
        return queued

    def _auto_respond(self, device: PciDevice, req: PageRequest, code: int, why: str) -> None:
        if not req.needs_response or req.is_stop_marker:
            return
        self.counters.inc(f"prq.auto_response.{why}")
        device.responses.append(Response(req.pasid, req.prg_index, code, req.private, req.lpig))

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> dict[str, Any]:
        regs = self.regs
        return {
            "name": self.name,
            "version": f"{self.version_major}.{self.version & 0xF}",
            "cap": f"{regs.value('CAP'):#018x}",
            "ecap": f"{regs.value('ECAP'):#018x}",
            "caps": self.caps.as_dict(),
            "pasid_space": self.caps.pasid_space,
            "gsts": f"{regs.value('GSTS'):#010x}",
            "fsts": f"{regs.value('FSTS'):#010x}",
            "scalable_root": self.sm_root,
            "iq": {
                "enabled": self.iq.enabled,
                "entries": self.iq.entries,
                "width": 256 if self.iq.wide else 128,
                "head": regs.value("IQH") >> self.iq.shift,
                "tail": regs.value("IQT") >> self.iq.shift,
                "processed": self.iq.processed,
            },
            "prq": {
                "entries": self.prq.entries,
                "head": self.prq.head() // 32,
                "tail": self.prq.tail() // 32,
                "prs": regs.value("PRS"),
            },
            "vcmd": None if self.vcmd is None else {
                "layout": self.vcmd_layout.name,
                "pas": bool(regs.value("VCCAP") & VCCAP_PAS),
            },
            "caches": {
                "context": {"entries": len(self.context_cache),
                            **self.context_cache.stats.as_dict()},
                "pasid": {"entries": len(self.pasid_cache), **self.pasid_cache.stats.as_dict()},
                "iotlb": {"entries": len(self.iotlb), **self.iotlb.stats.as_dict()},
            },
            "memory": self.mem.stats(),
            "devices": sorted(d.bdf for d in self.devices.values()),
        }
