"""Primary (translation) faults: their reason codes and the fault-recording registers.

Reason codes are the scalable-mode ones of Linux's ``dma_remap_sm_fault_reasons`` (0x30 is
the first). A fault is *qualified* unless FPD is set in the PASID directory entry or the PASID
entry that the walk reached; a qualified fault with FPD set is suppressed and only counted. A
recorded fault fills the next fault-recording register (FRCD, 128 bits: the page address in the
low qword; source id 15:0, PASID-present 31, reason 39:32, PASID 59:40, type 62 and the F bit
63 in the high qword), sets FSTS.PPF and raises the fault event unless FECTL.IM. When the next
register still holds an unread fault (F set) the new one is lost and FSTS.PFO is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.bits import Field, bit, pack

if TYPE_CHECKING:
    from ioasidsd.vtd.counters import Counters
    from ioasidsd.vtd.hardware.registers import RegisterFile
    from ioasidsd.vtd.trace import Trace

SM_ROOT_ACCESS = 0x38
SM_ROOT_NOT_PRESENT = 0x39
SM_CTX_ACCESS = 0x40
SM_CTX_NOT_PRESENT = 0x41
SM_CTX_RESERVED = 0x42
SM_DTE_CLEAR = 0x44
SM_PASIDE_CLEAR = 0x45
SM_PASID_TOO_LARGE = 0x46
SM_PRE_CLEAR = 0x47
SM_PDE_ACCESS = 0x50
SM_PDE_NOT_PRESENT = 0x51
SM_PTE_ACCESS = 0x58
SM_PTE_NOT_PRESENT = 0x59
SM_PTE_RESERVED = 0x5A
SM_PTE_INVALID = 0x5B
SM_SRE_CLEAR = 0x5D

REASONS = {
    SM_ROOT_ACCESS: "SM: Error attempting to access Root Entry",
    SM_ROOT_NOT_PRESENT: "SM: Present bit in Root Entry is clear",
    SM_CTX_ACCESS: "SM: Error attempting to access Context Entry",
    SM_CTX_NOT_PRESENT: "SM: Present bit in Context Entry is clear",
    SM_CTX_RESERVED: "SM: Non-zero reserved field set in the Context Entry",
    SM_DTE_CLEAR: "SM: DTE field in Context Entry is clear",
    SM_PASIDE_CLEAR: "SM: PASID Enable field in Context Entry is clear",
    SM_PASID_TOO_LARGE: "SM: PASID is larger than the max in Context Entry",
    SM_PRE_CLEAR: "SM: PRE field in Context-Entry is clear",
    SM_PDE_ACCESS: "SM: Error attempting to access the PASID Directory Entry",
    SM_PDE_NOT_PRESENT: "SM: Present bit in Directory Entry is clear",
    SM_PTE_ACCESS: "SM: Error attempting to access PASID Table Entry",
    SM_PTE_NOT_PRESENT: "SM: Present bit in PASID Table Entry is clear",
    SM_PTE_RESERVED: "SM: Non-zero reserved field set in PASID Table Entry",
    SM_PTE_INVALID: "SM: Invalid Scalable-Mode PASID Table Entry",
    SM_SRE_CLEAR: "SM: SRE field in the PASID Table Entry is clear",
}

FRCD_HI_FIELDS = {
    "sid": Field(15, 0),
    "pp": bit(31),
    "fr": Field(39, 32),
    "pv": Field(59, 40),
    "t": bit(62),
    "f": bit(63),
}


class FaultRecorder:
    """The fault-recording side of a unit: FRCD registers, FSTS.PPF/PFO/FRI, counters."""

    def __init__(self, regs: RegisterFile, nfr: int, counters: Counters, trace: Trace,
                 unit_name: str) -> None:
        self.regs = regs
        self.slots = nfr + 1
        self.counters = counters
        self.trace = trace
        self.unit_name = unit_name

    def report(self, sid: int, pasid: int | None, addr: int, reason: int, *, write: bool,
               fpd: bool) -> bool:
        """A fault happened; returns whether it was recorded (not suppressed or lost)."""
        reason_name = REASONS.get(reason, "Unknown")
        if fpd:
            self.counters.inc("fault.suppressed")
            self.counters.inc(f"fault.suppressed.{reason:#x}")
            self.trace.emit("fault", unit=self.unit_name, sid=sid, pasid=pasid, addr=addr,
                            reason=reason, name=reason_name, suppressed=True)
            return False
        self.counters.inc(f"fault.{reason:#x}")
        fsts = self.regs.value("FSTS")
        index = (fsts >> r.FSTS_FRI_SHIFT) & 0xFF
        hi_name = f"FRCD{index}_HI"
        if self.regs.value(hi_name) & r.FRCD_HI_F:
            self.regs.set_bits("FSTS", r.FSTS_PFO)
            self.counters.inc("fault.overflow")
            self.trace.emit("fault", unit=self.unit_name, sid=sid, pasid=pasid, addr=addr,
                            reason=reason, name=reason_name, lost=True)
            return False
        hi = pack(FRCD_HI_FIELDS, {
            "sid": sid, "pp": pasid is not None, "fr": reason, "pv": pasid or 0,
            "t": not write, "f": 1,
        })
        self.regs.set(f"FRCD{index}_LO", addr & ~0xFFF & ((1 << 64) - 1))
        self.regs.set(hi_name, hi)
        fsts = (fsts & ~(0xFF << r.FSTS_FRI_SHIFT)) | (((index + 1) % self.slots)
                                                       << r.FSTS_FRI_SHIFT)
        self.regs.set("FSTS", fsts | r.FSTS_PPF)
        if not self.regs.value("FECTL") & r.ECTL_IM:
            self.counters.inc("irq.fault")
        else:
            self.regs.set_bits("FECTL", r.ECTL_IP)
        self.trace.emit("fault", unit=self.unit_name, sid=sid, pasid=pasid, addr=addr,
                        reason=reason, name=reason_name, index=index)
        return True

    def refresh_ppf(self) -> None:
        """Recompute FSTS.PPF after software cleared F bits."""
        pending = any(self.regs.value(f"FRCD{i}_HI") & r.FRCD_HI_F for i in range(self.slots))
        if pending:
            self.regs.set_bits("FSTS", r.FSTS_PPF)
        else:
            self.regs.clear_bits("FSTS", r.FSTS_PPF)
