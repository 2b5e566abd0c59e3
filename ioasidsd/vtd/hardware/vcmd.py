"""The virtual command interface: a guest asks the host for PASIDs through registers.

A unit with ECAP.VCS exposes VCCAP (bit 0, PAS: PASID allocation supported), VCMD and VCRSP, at
the offsets of the chosen layout (``registers.VCMD_LAYOUTS``: VT-d 3.1 or 3.3). The hardware side
(``VirtualCommand``) follows QEMU's ``vtd_handle_vcmd_write``: ignore the write unless PAS is set
and no command is in progress; set IP; ALLOC asks the host allocator for a PASID and returns it
in the result field; FREE gives back the PASID of the operand field; any other opcode answers
"undefined command"; clear IP. With ``step_mode`` the command stays in progress (IP set) until
``complete()`` runs it, so the "IP busy" case can be observed.

``guest_alloc_pasid``/``guest_free_pasid`` are the guest driver's side (Linux's
``vcmd_alloc_pasid``/``vcmd_free_pasid``): write VCMD, read VCRSP, map the status code
("no PASID" to ``ENOSPC``, anything else non-zero to ``ENODEV``).
"""

from __future__ import annotations

from errno import ENODEV, ENOSPC
from typing import TYPE_CHECKING, Protocol

from ioasidsd.model.errors import IoasidError

if TYPE_CHECKING:
    from ioasidsd.vtd.counters import Counters
    from ioasidsd.vtd.hardware.registers import RegisterFile, VcmdLayout
    from ioasidsd.vtd.trace import Trace

VCMD_CMD_NULL = 0x0
VCMD_CMD_ALLOC = 0x1
VCMD_CMD_FREE = 0x2
VCRSP_IP = 0x1
VCCAP_PAS = 0x1
PASID_FIELD_MASK = 0xFFFFF
_OPCODES = {VCMD_CMD_NULL: "null", VCMD_CMD_ALLOC: "alloc", VCMD_CMD_FREE: "free"}


class HostPasidAllocator(Protocol):
    """Where the host takes the guest's PASIDs from. Both raise ``IoasidError`` on failure."""

    def alloc(self) -> int: ...

    def free(self, pasid: int) -> None: ...


class VirtualCommand:
    """The hardware end of VCMD/VCRSP for one unit."""

    def __init__(self, regs: RegisterFile, layout: VcmdLayout, counters: Counters,
                 trace: Trace, unit_name: str) -> None:
        self.regs = regs
        self.layout = layout
        self.counters = counters
        self.trace = trace
        self.unit_name = unit_name
        self.allocator: HostPasidAllocator | None = None
        self.step_mode = False
        self._queued: int | None = None

    def on_write(self, value: int, old: int) -> None:
        """The VCMD write hook."""
        if not self.regs.value("VCCAP") & VCCAP_PAS:
            self.counters.inc("vcmd.ignored_no_pas")
            return
        if self.regs.value("VCRSP") & VCRSP_IP:
            self.counters.inc("vcmd.ip_busy")
            self.trace.emit("vcmd", unit=self.unit_name, value=value, ignored="in progress")
            return
        self.regs.set("VCRSP", VCRSP_IP)
        self._queued = value
        if not self.step_mode:
            self.complete()

    def complete(self) -> bool:
        """Run the command in progress; returns whether there was one."""
        value = self._queued
        if value is None:
            return False
        self._queued = None
        layout = self.layout
        opcode = value & 0xFF
        result = 0
        sc = 0
        if opcode == VCMD_CMD_ALLOC:
            try:
                if self.allocator is None:
                    raise IoasidError(ENODEV, "no host allocator")
                result = self.allocator.alloc()
            except IoasidError as exc:
                sc = layout.sc_no_pasid
                self.trace.emit("vcmd", unit=self.unit_name, op="alloc", error=exc.name)
        elif opcode == VCMD_CMD_FREE:
            pasid = (value >> layout.operand_shift) & PASID_FIELD_MASK
            try:
                if self.allocator is None:
                    raise IoasidError(ENODEV, "no host allocator")
                self.allocator.free(pasid)
            except IoasidError as exc:
                sc = layout.sc_no_pasid
                self.trace.emit("vcmd", unit=self.unit_name, op="free", pasid=pasid,
                                error=exc.name)
        else:
            sc = layout.sc_undefined
        op = _OPCODES.get(opcode, f"{opcode:#x}")
        self.counters.inc(f"vcmd.op.{op}")
        self.counters.inc(f"vcmd.sc.{sc}")
        rsp = (result << layout.operand_shift) | (sc << layout.sc_shift)
        self.regs.set("VCRSP", rsp)  # IP clear
        self.trace.emit("vcmd", unit=self.unit_name, op=op, sc=sc, result=result)
        return True


def _status(rsp: int, layout: VcmdLayout) -> int:
    return (rsp >> layout.sc_shift) & ((1 << layout.sc_width) - 1)


def guest_alloc_pasid(regs: RegisterFile, layout: VcmdLayout) -> int:
    """The guest driver's allocation: ``ENOSPC`` for "no PASID", ``ENODEV`` for other codes
    or a command still in progress after the write."""
    regs.write("VCMD", VCMD_CMD_ALLOC)
    rsp = regs.read("VCRSP")
    if rsp & VCRSP_IP:
        raise IoasidError(ENODEV, "virtual command still in progress")
    sc = _status(rsp, layout)
    if sc == layout.sc_no_pasid:
        raise IoasidError(ENOSPC, "no PASID available")
    if sc:
        raise IoasidError(ENODEV, f"unexpected virtual command status {sc}")
    return (rsp >> layout.operand_shift) & PASID_FIELD_MASK


def guest_free_pasid(regs: RegisterFile, layout: VcmdLayout, pasid: int) -> int:
    """The guest driver's free; returns the status code (Linux only logs a failure)."""
    regs.write("VCMD", (pasid << layout.operand_shift) | VCMD_CMD_FREE)
    return _status(regs.read("VCRSP"), layout)
