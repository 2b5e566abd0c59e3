"""Invalidation-queue descriptors: their 256-bit encodings and the hardware's decoder.

Encoders build the four qwords exactly as Linux's ``qi_flush_*``/``qi_desc_*`` helpers and the
``QI_*`` macros of ``iommu.h`` do (``tests/vtd/test_inval_queue.py`` checks them bit for bit
against reference encodings); a 128-bit descriptor is the first two qwords. ``decode`` is the
hardware side: it checks the type and the reserved bits and returns the named fields, or raises
``InvalidDescriptor`` with the IQEI code the unit latches in IQER.

Types and their trace labels (Linux's ``qi_submit`` tracepoint): 1 ``cc_inv``, 2
``iotlb_inv``, 3 ``dev_tlb_inv``, 4 ``iec_inv``, 5 ``inv_wait``, 6 ``p_iotlb_inv``, 7
``pc_inv``, 8 ``p_dev_tlb_inv``, 9 ``page_grp_resp``. The page-stream response (0xA) was
removed in VT-d 3.0 and is rejected, as are the type-high bits 11:9.
"""

from __future__ import annotations

from dataclasses import dataclass

from ioasidsd.vtd.hardware.bits import Field, bit, get

QI_CC_TYPE = 0x1
QI_IOTLB_TYPE = 0x2
QI_DIOTLB_TYPE = 0x3
QI_IEC_TYPE = 0x4
QI_IWD_TYPE = 0x5
QI_EIOTLB_TYPE = 0x6
QI_PC_TYPE = 0x7
QI_DEIOTLB_TYPE = 0x8
QI_PGRP_RESP_TYPE = 0x9

LABELS = {
    QI_CC_TYPE: "cc_inv",
    QI_IOTLB_TYPE: "iotlb_inv",
    QI_DIOTLB_TYPE: "dev_tlb_inv",
    QI_IEC_TYPE: "iec_inv",
    QI_IWD_TYPE: "inv_wait",
    QI_EIOTLB_TYPE: "p_iotlb_inv",
    QI_PC_TYPE: "pc_inv",
    QI_DEIOTLB_TYPE: "p_dev_tlb_inv",
    QI_PGRP_RESP_TYPE: "page_grp_resp",
}

# Granularities
CC_GLOBAL, CC_DOMAIN, CC_DEVICE = 1, 2, 3
IOTLB_GLOBAL, IOTLB_DSI, IOTLB_PSI = 1, 2, 3
QI_GRAN_NONG_PASID, QI_GRAN_PSI_PASID = 2, 3  # P_IOTLB: all of a PASID, pages of a PASID
QI_PC_ALL_PASIDS, QI_PC_PASID_SEL, QI_PC_GLOBAL = 0, 1, 3

# Invalidation-wait status values written by Linux's qi_submit_sync (enum qi_desc_status)
QI_FREE, QI_IN_USE, QI_DONE, QI_ABORT = 0, 1, 2, 3

QI_DEV_IOTLB_MAX_INVS = 32
MAX_AGAW_PFN_WIDTH = 52  # 64 - VTD_PAGE_SHIFT: a "whole address space" size order

# Page group response codes
QI_RESP_SUCCESS = 0x0
QI_RESP_INVALID = 0x1
QI_RESP_FAILURE = 0xF

# IQER.IQEI values latched with FSTS.IQE (VT-d 3.x numbering)
IQEI_TAIL = 1  # IQT beyond the queue or misaligned
IQEI_FETCH = 2  # descriptor fetch from an unbacked address
IQEI_TYPE = 3  # invalid descriptor type
IQEI_RESERVED = 4  # reserved field set
IQEI_WIDTH = 5  # 128-bit descriptor while the root table is in scalable mode

PAGE_MASK = ~0xFFF & ((1 << 64) - 1)

Desc = tuple[int, int, int, int]


class InvalidDescriptor(Exception):
    """The hardware rejects a descriptor; ``iqei`` is the error code for IQER."""

    def __init__(self, iqei: int, reason: str) -> None:
        super().__init__(reason)
        self.iqei = iqei
        self.reason = reason


# --------------------------------------------------------------------------- encoders
def cc(granularity: int, did: int = 0, sid: int = 0, fm: int = 0) -> Desc:
    """Context-cache invalidation (``qi_flush_context``)."""
    return (QI_CC_TYPE | granularity << 4 | (did & 0xFFFF) << 16 | (sid & 0xFFFF) << 32
            | (fm & 0x3) << 48, 0, 0, 0)


def iotlb(granularity: int, did: int = 0, addr: int = 0, am: int = 0, ih: int = 0, *,
          dw: bool = False, dr: bool = False) -> Desc:
    """IOTLB invalidation (``qi_desc_iotlb``); DW/DR follow CAP.DWD/DRD."""
    qw0 = (QI_IOTLB_TYPE | granularity << 4 | int(dw) << 6 | int(dr) << 7
           | (did & 0xFFFF) << 16)
    return qw0, (addr & PAGE_MASK) | (ih & 1) << 6 | (am & 0x3F), 0, 0


def _pfsid(pfsid: int) -> int:
    return (pfsid & 0xF) << 12 | ((pfsid >> 4) & 0xFFF) << 52


def dev_iotlb(sid: int, pfsid: int, qdep: int, addr: int, mask: int) -> Desc:
    """Device-TLB invalidation without PASID (``qi_desc_dev_iotlb``): ``mask`` is the size
    order, encoded in the address's lowest zero bit with S=1."""
    if qdep >= QI_DEV_IOTLB_MAX_INVS:
        qdep = 0
    if mask:
        addr |= (1 << (12 + mask - 1)) - 1
        qw1 = (addr & PAGE_MASK) | 1
    else:
        qw1 = addr & PAGE_MASK
    return QI_DIOTLB_TYPE | (qdep & 0x1F) << 16 | (sid & 0xFFFF) << 32 | _pfsid(pfsid), qw1, 0, 0


def wait(status_addr: int = 0, status_data: int = QI_DONE, *, sw: bool = False,
         iflag: bool = False, fence: bool = False, pd: bool = False) -> Desc:
    """Invalidation wait: status write (SW), interrupt (IF), fence (FN), page drain (PD)."""
    qw0 = (QI_IWD_TYPE | int(iflag) << 4 | int(sw) << 5 | int(fence) << 6 | int(pd) << 7
           | (status_data & 0xFFFFFFFF) << 32)
    return qw0, status_addr & ~0x3 & ((1 << 64) - 1), 0, 0


def piotlb(did: int, pasid: int, addr: int = 0, npages: int = -1, ih: int = 0) -> Desc:
    """PASID-based IOTLB invalidation (``qi_desc_piotlb``): ``npages=-1`` for every mapping
    of the PASID, else the pages from ``addr`` rounded up to a power of two."""
    if npages == -1:
        return (QI_EIOTLB_TYPE | QI_GRAN_NONG_PASID << 4 | (did & 0xFFFF) << 16
                | (pasid & 0xFFFFF) << 32, 0, 0, 0)
    mask = max(npages - 1, 0).bit_length()
    addr &= ~((1 << (12 + mask)) - 1)
    qw0 = QI_EIOTLB_TYPE | QI_GRAN_PSI_PASID << 4 | (did & 0xFFFF) << 16 | (pasid & 0xFFFFF) << 32
    return qw0, (addr & PAGE_MASK) | (ih & 1) << 6 | mask, 0, 0


def pasid_cache(did: int, granularity: int, pasid: int = 0) -> Desc:
    """PASID-cache invalidation (``qi_flush_pasid_cache``)."""
    return (QI_PC_TYPE | granularity << 4 | (did & 0xFFFF) << 16 | (pasid & 0xFFFFF) << 32,
            0, 0, 0)


def dev_iotlb_pasid(sid: int, pfsid: int, pasid: int, qdep: int, addr: int,
                    size_order: int) -> Desc:
    """PASID-based device-TLB invalidation (``qi_desc_dev_iotlb_pasid``). A size order sets
    every address bit below the size, clears the bit that encodes it, and sets S."""
    if qdep >= QI_DEV_IOTLB_MAX_INVS:
        qdep = 0
    qw0 = (QI_DEIOTLB_TYPE | (qdep & 0x1F) << 4 | _pfsid(pfsid) | (sid & 0xFFFF) << 16
           | (pasid & 0xFFFFF) << 32)
    qw1 = addr & PAGE_MASK
    if size_order:
        qw1 |= ((1 << (size_order + 12)) - 1) & PAGE_MASK
        qw1 &= ~(1 << (12 + size_order - 1))
        qw1 |= 1 << 11
    return qw0, qw1, 0, 0


def page_group_response(rid: int, pasid: int, code: int, prg_index: int, *,
                        pasid_present: bool = True, private: tuple[int, int] | None = None,
                        lpig: bool = False) -> Desc:
    """Page group response (``intel_iommu_page_response``). ``private`` echoes the request's
    private data (sets PDP); ``lpig`` is only programmed by pre-4.0 drivers."""
    qw0 = (QI_PGRP_RESP_TYPE | int(pasid_present) << 4 | int(private is not None) << 5
           | (code & 0xF) << 12 | (rid & 0xFFFF) << 16 | (pasid & 0xFFFFF) << 32)
    qw1 = int(lpig) << 2 | (prg_index & 0x1FF) << 3
    qw2, qw3 = private if private is not None else (0, 0)
    return qw0, qw1, qw2, qw3


# --------------------------------------------------------------------------- decoder
F_TYPE_HI = Field(11, 9)

# Per type: named fields of qw0 and qw1, and the reserved bits of qw0..qw3.
_ALL = (1 << 64) - 1
_LAYOUTS: dict[int, tuple[dict[str, Field], dict[str, Field], tuple[int, int, int, int]]] = {
    QI_CC_TYPE: (
        {"g": Field(5, 4), "did": Field(31, 16), "sid": Field(47, 32), "fm": Field(49, 48)},
        {},
        (Field(8, 6).mask | Field(15, 12).mask | Field(63, 50).mask, _ALL, _ALL, _ALL),
    ),
    QI_IOTLB_TYPE: (
        {"g": Field(5, 4), "dw": bit(6), "dr": bit(7), "did": Field(31, 16)},
        {"am": Field(5, 0), "ih": bit(6), "addr": Field(63, 12)},
        (bit(8).mask | Field(15, 12).mask | Field(63, 32).mask, Field(11, 7).mask, _ALL, _ALL),
    ),
    QI_DIOTLB_TYPE: (
        {"pfsid_lo": Field(15, 12), "qdep": Field(20, 16), "sid": Field(47, 32),
         "pfsid_hi": Field(63, 52)},
        {"s": bit(0), "addr": Field(63, 12)},
        (Field(8, 4).mask | Field(31, 21).mask | Field(51, 48).mask, Field(11, 1).mask,
         _ALL, _ALL),
    ),
    QI_IEC_TYPE: (
        {"g": bit(4), "im": Field(31, 27), "iidx": Field(47, 32)},
        {},
        (Field(8, 5).mask | Field(26, 12).mask | Field(63, 48).mask, _ALL, _ALL, _ALL),
    ),
    QI_IWD_TYPE: (
        {"if": bit(4), "sw": bit(5), "fn": bit(6), "pd": bit(7), "status_data": Field(63, 32)},
        {"status_addr": Field(63, 2)},
        (bit(8).mask | Field(31, 12).mask, Field(1, 0).mask, _ALL, _ALL),
    ),
    QI_EIOTLB_TYPE: (
        {"g": Field(5, 4), "did": Field(31, 16), "pasid": Field(51, 32)},
        {"am": Field(5, 0), "ih": bit(6), "addr": Field(63, 12)},
        (0xFFF000000000F1C0 & ~F_TYPE_HI.mask, 0xF80, _ALL, _ALL),
    ),
    QI_PC_TYPE: (
        {"g": Field(5, 4), "did": Field(31, 16), "pasid": Field(51, 32)},
        {},
        (Field(8, 6).mask | Field(15, 12).mask | Field(63, 52).mask, _ALL, _ALL, _ALL),
    ),
    QI_DEIOTLB_TYPE: (
        {"qdep": Field(8, 4), "pfsid_lo": Field(15, 12), "sid": Field(31, 16),
         "pasid": Field(51, 32), "pfsid_hi": Field(63, 52)},
        {"g": bit(0), "s": bit(11), "addr": Field(63, 12)},
        (0, Field(10, 1).mask, _ALL, _ALL),
    ),
    QI_PGRP_RESP_TYPE: (
        {"pasid_present": bit(4), "pdp": bit(5), "code": Field(15, 12), "rid": Field(31, 16),
         "pasid": Field(51, 32)},
        {"lpig": bit(2), "prg_index": Field(11, 3)},
        (Field(8, 6).mask | Field(63, 52).mask, Field(1, 0).mask | Field(63, 12).mask, 0, 0),
    ),
}
_VALID_G = {
    QI_CC_TYPE: {CC_GLOBAL, CC_DOMAIN, CC_DEVICE},
    QI_IOTLB_TYPE: {IOTLB_GLOBAL, IOTLB_DSI, IOTLB_PSI},
    QI_EIOTLB_TYPE: {QI_GRAN_NONG_PASID, QI_GRAN_PSI_PASID},
    QI_PC_TYPE: {QI_PC_ALL_PASIDS, QI_PC_PASID_SEL, QI_PC_GLOBAL},
}


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A decoded descriptor: its type, trace label, raw qwords and named fields."""

    type: int
    label: str
    words: tuple[int, ...]
    fields: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.fields[name]


def decode(words: tuple[int, ...]) -> Descriptor:
    """Decode a 128-bit (two qwords) or 256-bit (four qwords) descriptor.

    Raises ``InvalidDescriptor`` (IQEI_TYPE) for an unknown type or type-high bits, and
    (IQEI_RESERVED) for a reserved bit or granularity. The PD bit of a wait is returned as a
    field; whether it is allowed depends on ECAP.PDS and is the queue's decision.
    """
    qw0 = words[0]
    dtype = qw0 & 0xF
    if get(qw0, F_TYPE_HI) or dtype not in _LAYOUTS:
        raise InvalidDescriptor(IQEI_TYPE, f"invalid descriptor type {qw0 & 0xE0F:#x}")
    f0, f1, reserved = _LAYOUTS[dtype]
    for i, word in enumerate(words):
        if word & reserved[i]:
            raise InvalidDescriptor(
                IQEI_RESERVED, f"{LABELS[dtype]}: reserved bits {word & reserved[i]:#x} in qw{i}"
            )
    fields = {name: get(qw0, f) for name, f in f0.items()}
    fields.update({name: get(words[1], f) for name, f in f1.items()})
    if dtype == QI_PGRP_RESP_TYPE and len(words) == 4:
        fields["private0"], fields["private1"] = words[2], words[3]
    valid_g = _VALID_G.get(dtype)
    if valid_g is not None and fields["g"] not in valid_g:
        raise InvalidDescriptor(IQEI_RESERVED, f"{LABELS[dtype]}: reserved granularity "
                                               f"{fields['g']}")
    return Descriptor(dtype, LABELS[dtype], tuple(words), fields)


def granularity_name(desc: Descriptor) -> str | None:
    """The granularity of a descriptor as the counters name it (``None`` if it has none)."""
    t = desc.type
    if t == QI_CC_TYPE:
        return {CC_GLOBAL: "global", CC_DOMAIN: "domain", CC_DEVICE: "device"}[desc["g"]]
    if t == QI_IOTLB_TYPE:
        return {IOTLB_GLOBAL: "global", IOTLB_DSI: "dsi", IOTLB_PSI: "psi"}[desc["g"]]
    if t == QI_EIOTLB_TYPE:
        return "pasid" if desc["g"] == QI_GRAN_NONG_PASID else "page"
    if t == QI_PC_TYPE:
        return {QI_PC_ALL_PASIDS: "dsi", QI_PC_PASID_SEL: "psi", QI_PC_GLOBAL: "global"}[desc["g"]]
    if t == QI_DEIOTLB_TYPE:
        return "all" if desc["g"] else "pasid"
    return None


def devtlb_range(addr_field: int, s: int) -> tuple[int, int] | None:
    """The ``[start, end)`` byte range of a device-TLB invalidation address (PCIe ATS: with S
    set, the lowest zero bit of the address above bit 11 gives the size), or ``None`` for
    the whole address space."""
    addr = addr_field << 12
    if not s:
        return addr, addr + 4096
    bits = addr >> 12
    order = 0
    while bits & 1:
        bits >>= 1
        order += 1
    if order >= MAX_AGAW_PFN_WIDTH - 1:
        return None
    size = 1 << (12 + order + 1)
    start = addr & ~(size - 1)
    return start, start + size
