"""The invalidation queue: behaviours B7-B14 of ``docs/behaviours.md``."""

from __future__ import annotations

from errno import EINVAL

import pytest

from ioasidsd.model import IoasidError
from ioasidsd.vtd import Capabilities, Unit, UnitOptions
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import registers as r

from .conftest import DEV_A


class Qi:
    """A bare unit with a scalable-mode root table and queued invalidation enabled."""

    def __init__(self, *, dw: bool = True, qs: int = 1, smts: bool = True,
                 strict: bool = True, sm_root: bool = True, pds: bool = True) -> None:
        self.unit = Unit("u", Capabilities(smts=smts, pds=pds),
                         options=UnitOptions(strict_sm_128bit=strict))
        self.regs = self.unit.regs
        self.mem = self.unit.mem
        root = self.mem.alloc("root")
        self.regs.write("RTADDR", root | (r.RTADDR_SMT if sm_root else 0))
        self.regs.write("GCMD", r.GCMD_SRTP)
        self.base = self.mem.alloc("iq", 1 << qs)
        self.status = self.mem.alloc("iq_status")
        self.regs.write("IQA", self.base | (r.IQA_DW if dw else 0) | qs)
        self.regs.write("GCMD", r.GCMD_QIE)
        self.tail = 0

    @property
    def shift(self) -> int:
        return self.unit.iq.shift

    def put(self, *descs: d.Desc) -> None:
        for desc in descs:
            addr = self.base + (self.tail << self.shift)
            for i in range(4 if self.shift == 5 else 2):
                self.mem.write64(addr + 8 * i, desc[i])
            self.tail = (self.tail + 1) % self.unit.iq.entries

    def go(self) -> None:
        self.regs.write("IQT", self.tail << self.shift)

    @property
    def head(self) -> int:
        return self.regs.read("IQH") >> self.shift

    def iqe(self) -> bool:
        return bool(self.regs.read("FSTS") & r.FSTS_IQE)

    def wait(self, data: int = 2, **flags: bool) -> d.Desc:
        return d.wait(self.status, data, **flags)


@pytest.mark.spec(7)
def test_b07_queue_geometry() -> None:
    q = Qi(dw=True, qs=1)
    assert q.unit.iq.entries == 256 and q.shift == 5
    q = Qi(dw=False, qs=1, sm_root=False)
    assert q.unit.iq.entries == 512 and q.shift == 4
    # Without scalable mode DW is ignored: 128-bit descriptors, 2^(QS+8) of them.
    q = Qi(dw=True, qs=1, smts=False, sm_root=False)
    assert q.unit.iq.entries == 512 and q.shift == 4
    q.put(q.wait(9, sw=True))
    q.go()
    assert q.head == 1 and q.mem.read32(q.status) == 9


@pytest.mark.spec(8)
def test_b08_128_bit_descriptors_invalid_in_scalable_mode() -> None:
    q = Qi(dw=False, qs=0)
    q.put(q.wait(5, sw=True))
    q.go()
    assert q.iqe() and q.head == 0
    assert q.regs.read("IQER") & r.IQER_IQEI_MASK == d.IQEI_WIDTH
    assert q.mem.read32(q.status) == 0
    # QEMU's behaviour with the strictness option off.
    q = Qi(dw=False, qs=0, strict=False)
    q.put(q.wait(5, sw=True))
    q.go()
    assert not q.iqe() and q.mem.read32(q.status) == 5


@pytest.mark.spec(9)
def test_b09_tail_beyond_queue_and_misaligned_tail() -> None:
    q = Qi(dw=True, qs=0)
    assert q.unit.iq.entries == 128
    q.regs.write("IQT", 200 << 5)
    assert q.iqe()
    assert q.regs.read("IQER") & r.IQER_IQEI_MASK == d.IQEI_TAIL
    q = Qi(dw=True, qs=0)
    q.put(q.wait(3, sw=True))
    q.regs.write("IQT", (1 << 5) | 0x10)  # bit 4 with 256-bit descriptors: ignored
    assert q.regs.read("IQT") == 0 and q.head == 0 and not q.iqe()
    assert q.unit.counters["iq.iqt_write_ignored"] == 1
    assert q.mem.read32(q.status) == 0


@pytest.mark.spec(10)
@pytest.mark.parametrize("bad", [
    (0xB, 0, 0, 0),  # unknown type
    (d.QI_PC_TYPE | 1 << 9, 0, 0, 0),  # type-high bits
    (d.pasid_cache(1, d.QI_PC_PASID_SEL, 5)[0] | 1 << 60, 0, 0, 0),  # reserved in qw0
    (d.pasid_cache(1, d.QI_PC_PASID_SEL, 5)[0], 1, 0, 0),  # PC's qw1 must be zero
    (d.pasid_cache(1, 2, 5)[0], 0, 0, 0),  # reserved granularity
])
def test_b10_invalid_descriptor_latches_iqe_and_stops(bad: d.Desc) -> None:
    q = Qi()
    q.put(q.wait(1, sw=True), bad, q.wait(7, sw=True))
    q.go()
    assert q.iqe() and q.head == 1
    assert q.mem.read32(q.status) == 1  # the first wait ran, the later one did not
    q.regs.write("IQT", q.tail << 5)  # nothing more is fetched while IQE is set
    assert q.head == 1 and q.mem.read32(q.status) == 1
    # Software repairs the slot and clears IQE: processing resumes from IQH.
    q.tail = 1
    q.put(q.wait(4, sw=True))
    q.tail = 3
    q.regs.write("FSTS", r.FSTS_IQE)
    assert not q.iqe() and q.head == 3 and q.mem.read32(q.status) == 7


@pytest.mark.spec(11)
def test_b11_wait_status_write_and_completion_interrupt() -> None:
    q = Qi()
    q.regs.write("IECTL", 0)  # unmask
    q.put(q.wait(0xABCD, sw=True, iflag=True))
    q.go()
    assert q.mem.read32(q.status) == 0xABCD
    assert q.regs.read("ICS") & r.ICS_IWC
    assert q.unit.counters["irq.inv_complete"] == 1
    q.put(q.wait(1, iflag=True))  # IWC still set: no new interrupt
    q.go()
    assert q.unit.counters["irq.inv_complete"] == 1
    assert q.unit.counters["wait.if_coalesced"] == 1
    q.regs.write("ICS", r.ICS_IWC)
    assert not q.regs.read("ICS") & r.ICS_IWC
    q.regs.write("IECTL", r.ECTL_IM)  # masked: pending instead
    q.put(q.wait(1, iflag=True))
    q.go()
    assert q.unit.counters["irq.inv_complete"] == 1
    assert q.regs.read("IECTL") & r.ECTL_IP
    q.regs.write("IECTL", 0)  # unmasking delivers it
    assert q.unit.counters["irq.inv_complete"] == 2
    assert not q.regs.read("IECTL") & r.ECTL_IP


@pytest.mark.spec(12)
def test_b12_disable_only_when_idle_after_a_wait() -> None:
    q = Qi()
    q.put(d.pasid_cache(1, d.QI_PC_PASID_SEL, 5))
    q.go()
    q.regs.write("GCMD", 0)
    assert q.regs.read("GSTS") & r.GSTS_QIES  # refused: the last descriptor was no wait
    q.put(q.wait(1, sw=True), (0xB, 0, 0, 0))
    q.go()
    assert q.iqe() and q.head != q.regs.read("IQT") >> 5
    q.regs.write("GCMD", 0)
    assert q.regs.read("GSTS") & r.GSTS_QIES  # refused: head != tail
    assert q.unit.counters["iq.disable_refused"] == 2
    q.regs.write("IQT", q.head << 5)  # software rewinds to the bad slot; IQE cleared below
    q.tail = q.head
    q.regs.write("FSTS", r.FSTS_IQE)
    q.put(q.wait(2, sw=True))
    q.go()
    q.regs.write("GCMD", 0)
    assert not q.regs.read("GSTS") & r.GSTS_QIES
    assert q.regs.read("IQH") == 0


@pytest.mark.spec(13)
def test_b13_one_wait_per_batch(drv) -> None:
    iommu = drv.iommu_of(DEV_A)
    regs = iommu.regs
    before_tail = regs.read("IQT") >> 5
    before_waits = drv.counters_total()["desc.inv_wait"]
    iommu.flush_pasid_cache(1, d.QI_PC_PASID_SEL, 9)
    assert (regs.read("IQT") >> 5) - before_tail == 2
    assert drv.counters_total()["desc.inv_wait"] - before_waits == 1
    iommu.qi_submit_sync([d.pasid_cache(1, d.QI_PC_PASID_SEL, 9),
                          d.piotlb(1, 9), d.dev_iotlb_pasid(0x300, 0, 9, 0, 0, 52)])
    assert (regs.read("IQT") >> 5) - before_tail == 6
    assert drv.counters_total()["desc.inv_wait"] - before_waits == 2
    submits = [e for e in drv.trace.events if e.kind == "qi_submit"][-1]
    assert submits["labels"] == ["pc_inv", "p_iotlb_inv", "p_dev_tlb_inv"]
    # The status word of every slot is back to FREE.
    assert all(iommu.mem.read32(iommu.qi_status + 4 * i) == d.QI_FREE for i in range(256))


@pytest.mark.spec(13)
def test_b13_submit_recovers_from_a_bad_descriptor_like_linux(drv) -> None:
    iommu = drv.iommu_of(DEV_A)
    with pytest.raises(IoasidError) as err:
        iommu.qi_submit_sync([d.pasid_cache(1, d.QI_PC_PASID_SEL, 3), (0xB, 0, 0, 0)])
    assert err.value.errno == EINVAL
    assert not iommu.regs.read("FSTS") & r.FSTS_IQE
    assert iommu.regs.read("IQH") == iommu.regs.read("IQT")
    iommu.flush_pasid_cache(1, d.QI_PC_PASID_SEL, 3)  # the queue works again
    assert iommu.counters["qi.invalid_descriptor"] == 1


@pytest.mark.spec(14)
def test_b14_golden_vectors() -> None:
    assert d.pasid_cache(1, d.QI_PC_PASID_SEL, 0x10)[0] == 0x0000001000010017
    assert d.piotlb(1, 0x10)[:2] == (0x0000001000010026, 0)
    assert d.piotlb(1, 0x10, 0x7F0000001000, 1)[:2] == (0x0000001000010036, 0x00007F0000001000)
    assert d.wait(0x1000, d.QI_DONE, sw=True)[0] == 0x0000000200000025
    assert d.wait(0x1000, d.QI_DONE, sw=True, pd=True)[0] == 0x00000002000000A5
    assert d.wait(0, d.QI_DONE, fence=True)[0] == 0x0000000200000045
    assert d.dev_iotlb_pasid(0x0300, 0, 0x10, 0, 0, 52)[:2] == (0x0000001003000008,
                                                                0x7FFFFFFFFFFFF800)
    assert d.cc(d.CC_DEVICE, 1, 0x0300, 0)[0] == 0x0000030000010031
    # A queue depth of 32 or more is written as 0; the PF source id is split in two.
    assert d.dev_iotlb_pasid(0x300, 0x1234, 1, 32, 0, 0)[0] == (
        d.QI_DEIOTLB_TYPE | 0x300 << 16 | 1 << 32 | 0x4 << 12 | 0x123 << 52)
    # Decoding gives back the fields; 4 pages from 0x5000 align down to 16 KiB (0x4000).
    desc = d.decode(d.piotlb(7, 0x123, 0x5000, 4))
    assert (desc.label, desc["did"], desc["pasid"], desc["g"], desc["am"], desc["addr"]) == (
        "p_iotlb_inv", 7, 0x123, d.QI_GRAN_PSI_PASID, 2, 0x4)
    assert d.devtlb_range(0x7FFFFFFFFFFFF, 1) is None
    assert d.devtlb_range(0x5, 0) == (0x5000, 0x6000)
    assert d.devtlb_range(0x4, 1) == (0x4000, 0x6000)  # bit 12 clear: 8 KiB

