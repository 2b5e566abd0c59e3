"""The unit's MMIO register file: offsets, status bits and access rules.

Offsets and bits follow Linux's ``iommu.h`` (``DMAR_*_REG``, ``DMA_GCMD_*``, ``DMA_FSTS_*``...).
A ``RegisterFile`` stores each register with its width and three masks: bits software may write
(``rw``), bits a written 1 clears (``w1c``) and, implicitly, read-only bits. Software writes go
through ``write``, which applies the masks and then calls the register's hook (the hardware's
reaction, e.g. processing the invalidation queue on an IQT write); the hardware itself changes
registers with ``set``. Register-based context and IOTLB invalidation (CCMD, IVA/IOTLB) and
interrupt remapping registers are not modelled: the driver invalidates through the queue, as
Linux does in scalable mode.

The virtual-command registers move between the two published layouts (``VCMD_LAYOUTS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from errno import EINVAL

from ioasidsd.model.errors import IoasidError

# --- offsets (bytes from the unit's MMIO base)
VER = 0x00
CAP = 0x08
ECAP = 0x10
GCMD = 0x18
GSTS = 0x1C
RTADDR = 0x20
FSTS = 0x34
FECTL = 0x38
FEDATA = 0x3C
FEADDR = 0x40
FEUADDR = 0x44
IQH = 0x80
IQT = 0x88
IQA = 0x90
ICS = 0x9C
IECTL = 0xA0
IEDATA = 0xA4
IEADDR = 0xA8
IEUADDR = 0xAC
IQER = 0xB0
PQH = 0xC0
PQT = 0xC8
PQA = 0xD0
PRS = 0xDC
PECTL = 0xE0
PEDATA = 0xE4
PEADDR = 0xE8
PEUADDR = 0xEC

# --- GCMD / GSTS: command bits and their status mirrors
GCMD_TE = 1 << 31  # GSTS_TES
GCMD_SRTP = 1 << 30  # GSTS_RTPS
GCMD_SFL = 1 << 29
GCMD_EAFL = 1 << 28
GCMD_WBF = 1 << 27
GCMD_QIE = 1 << 26  # GSTS_QIES
GCMD_IRE = 1 << 25
GCMD_SIRTP = 1 << 24
GCMD_CFI = 1 << 23
GSTS_TES = GCMD_TE
GSTS_RTPS = GCMD_SRTP
GSTS_QIES = GCMD_QIE
GCMD_LEVEL_BITS = GCMD_TE | GCMD_EAFL | GCMD_QIE | GCMD_IRE | GCMD_CFI
"""Bits whose *level* is a state: writing the same level again does nothing."""
GCMD_ONE_SHOT_BITS = GCMD_SRTP | GCMD_SFL | GCMD_WBF | GCMD_SIRTP
"""Bits that trigger an action when written as 1 and read back 0 in GCMD."""

# --- RTADDR
RTADDR_SMT = 1 << 10  # scalable-mode root table (TTM = 01b)
RTADDR_TTM_MASK = 0b11 << 10

# --- FSTS
FSTS_PFO = 1 << 0
FSTS_PPF = 1 << 1
FSTS_IQE = 1 << 4
FSTS_ICE = 1 << 5
FSTS_ITE = 1 << 6
FSTS_FRI_SHIFT = 8

# --- event control registers (FECTL, IECTL, PECTL)
ECTL_IM = 1 << 31
ECTL_IP = 1 << 30

# --- IQA / IQT
IQA_DW = 1 << 11  # 256-bit descriptors
IQA_QS_MASK = 0x7
IQ_ADDR_MASK = ~0xFFF & ((1 << 64) - 1)
IQT_QT_MASK = 0x7FFF0  # bits 18:4, a byte offset

# --- ICS
ICS_IWC = 1 << 0

# --- IQER
IQER_IQEI_MASK = 0xF

# --- PQA / PRS
PQA_PQS_MASK = 0x7
PQ_OFFSET_MASK = 0x7FFE0  # bits 18:5, a byte offset in 32-byte granules
PRS_PPR = 1 << 0
PRS_PRO = 1 << 1

# --- FRCD (128-bit fault recording register, high qword)
FRCD_HI_F = 1 << 63


@dataclass(frozen=True, slots=True)
class VcmdLayout:
    """Where the virtual-command registers live and how their fields are laid out."""

    name: str
    vccap: int
    vcmd: int
    vcrsp: int
    operand_shift: int  # PASID operand and result field start bit
    sc_shift: int  # status code field start bit
    sc_width: int
    sc_no_pasid: int  # "no PASID available" / "invalid PASID"
    sc_undefined: int  # undefined command


VCMD_LAYOUTS: dict[str, VcmdLayout] = {
    # VT-d 3.1 (Linux v5.8-v5.14, QEMU's RFC): PASID in bits 27:8, SC in bits 2:1.
    "3.1": VcmdLayout("3.1", vccap=0xE00, vcmd=0xE10, vcrsp=0xE20, operand_shift=8,
                      sc_shift=1, sc_width=2, sc_no_pasid=2, sc_undefined=1),
    # VT-d 3.3 (Linux from Aug 2021 to the 2023 removal): PASID in bits 35:16, SC in bits 7:1.
    "3.3": VcmdLayout("3.3", vccap=0xE30, vcmd=0xE00, vcrsp=0xE10, operand_shift=16,
                      sc_shift=1, sc_width=7, sc_no_pasid=16, sc_undefined=1),
}


@dataclass(slots=True)
class Register:
    """One register: its name, offset, width in bytes, value and access masks."""

    name: str
    offset: int
    size: int
    value: int = 0
    rw: int = 0
    w1c: int = 0

    @property
    def width_mask(self) -> int:
        return (1 << (8 * self.size)) - 1


Hook = Callable[[int, int], None]
"""A write hook: ``hook(written, old)`` runs after the masked value is stored."""


class RegisterFile:
    """The unit's registers by name and by offset.

    ``write`` is the software path (masks, then the hook); ``set`` and ``value`` are the
    hardware's. ``on_write(name, offset, written)`` is called for every software write (the
    unit traces it). Writes to unknown offsets raise ``EINVAL``; a read of an unknown offset
    returns 0, as reserved MMIO space does.
    """

    def __init__(self, on_write: Callable[[str, int, int], None] | None = None) -> None:
        self._by_name: dict[str, Register] = {}
        self._by_offset: dict[int, Register] = {}
        self._hooks: dict[str, Hook] = {}
        self.on_write = on_write

    def define(self, name: str, offset: int, size: int, *, value: int = 0, rw: int = 0,
               w1c: int = 0, hook: Hook | None = None) -> None:
        """Add a register (hardware construction time)."""
        reg = Register(name, offset, size, value, rw, w1c)
        self._by_name[name] = reg
        self._by_offset[offset] = reg
        if hook is not None:
            self._hooks[name] = hook

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        """Register names in offset order."""
        return [r.name for r in sorted(self._by_name.values(), key=lambda r: r.offset)]

    def register(self, name: str) -> Register:
        return self._by_name[name]

    def offset_of(self, name: str) -> int:
        return self._by_name[name].offset

    # --- hardware side
    def value(self, name: str) -> int:
        """The stored value (hardware view; write-only registers included)."""
        return self._by_name[name].value

    def set(self, name: str, value: int) -> None:
        """Store ``value`` as the hardware does, without masks or hooks."""
        reg = self._by_name[name]
        reg.value = value & reg.width_mask

    def set_bits(self, name: str, bits: int) -> None:
        reg = self._by_name[name]
        reg.value |= bits

    def clear_bits(self, name: str, bits: int) -> None:
        reg = self._by_name[name]
        reg.value &= ~bits & reg.width_mask

    # --- software side
    def read(self, name_or_offset: str | int) -> int:
        """A software read. GCMD is write-only and reads 0."""
        reg = self._lookup(name_or_offset)
        if reg is None:
            return 0
        if reg.name == "GCMD":
            return 0
        return reg.value

    def write(self, name_or_offset: str | int, value: int) -> None:
        """A software write: store the writable bits, clear the written-1 ``w1c`` bits, then
        run the hook. ``EINVAL`` for an unknown register or a value wider than it."""
        reg = self._lookup(name_or_offset)
        if reg is None:
            raise IoasidError(EINVAL, f"no register at {name_or_offset!r}")
        if not 0 <= value <= reg.width_mask:
            raise IoasidError(EINVAL, f"{value:#x} does not fit {reg.size}-byte {reg.name}")
        old = reg.value
        new = (old & ~reg.rw) | (value & reg.rw)
        new &= ~(value & reg.w1c)
        reg.value = new & reg.width_mask
        if self.on_write is not None:
            self.on_write(reg.name, reg.offset, value)
        hook = self._hooks.get(reg.name)
        if hook is not None:
            hook(value, old)

    def _lookup(self, name_or_offset: str | int) -> Register | None:
        if isinstance(name_or_offset, str):
            return self._by_name.get(name_or_offset)
        return self._by_offset.get(name_or_offset)

    def dump(self) -> list[dict[str, object]]:
        """Every register as ``{name, offset, size, value}`` (the debugfs register dump)."""
        return [
            {"name": r.name, "offset": r.offset, "size": r.size, "value": r.value}
            for r in sorted(self._by_name.values(), key=lambda r: r.offset)
        ]
