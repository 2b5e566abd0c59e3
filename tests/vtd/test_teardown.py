"""Tear-down of a PASID entry: behaviours B23-B28 of ``docs/behaviours.md``."""

from __future__ import annotations

import pytest

from ioasidsd.vtd import Capabilities, DriverOptions, PciDevice
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import faults as f
from ioasidsd.vtd.hardware.pasid_table import PasidEntry, clear_entry

from .conftest import DEV_A, Env

PGD = 0x40000000


def processed(drv, seq: int) -> list[d.Descriptor]:
    """The descriptors the hardware processed since trace sequence ``seq``, decoded."""
    return [d.decode((e["qw0"], e["qw1"], 0, 0)) for e in drv.trace.since(seq, ["inv_desc"])]


@pytest.mark.spec(23)
def test_b23_first_level_teardown_order(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_first_level(info, PGD, 0x10, 1)
    seq = drv.trace.seq
    io.tear_down_entry(info, 0x10, fault_ignore=False)
    descs = processed(drv, seq)
    assert [x.label for x in descs] == ["pc_inv", "inv_wait", "p_iotlb_inv", "inv_wait",
                                        "p_dev_tlb_inv", "inv_wait"]
    pc, _, piotlb, _, devtlb, wait = descs
    assert (pc["g"], pc["did"], pc["pasid"]) == (d.QI_PC_PASID_SEL, 1, 0x10)
    assert (piotlb["g"], piotlb["did"], piotlb["pasid"]) == (d.QI_GRAN_NONG_PASID, 1, 0x10)
    assert devtlb.words[1] == 0x7FFFFFFFFFFFF800 and devtlb["sid"] == info.sid
    assert wait["sw"] and not wait["pd"]
    assert io.teardowns[-1].labels == tuple(x.label for x in descs)


@pytest.mark.spec(24)
@pytest.mark.parametrize("style", ["current", "2020"])
def test_b24_second_level_and_nested_use_domain_iotlb_flush(env: Env, style: str) -> None:
    drv = env.build(options=DriverOptions(teardown=style))
    info = drv.info(DEV_A)
    io = info.iommu
    domain = io.domain_alloc(nesting=True)
    io.setup_second_level(info, domain, 5)
    io.setup_nested(info, PGD, 6, domain)
    for pasid in (5, 6):
        seq = drv.trace.seq
        io.tear_down_entry(info, pasid, fault_ignore=False)
        descs = processed(drv, seq)
        second = descs[2]
        if style == "current":
            assert (second.label, second["g"], second["did"]) == ("iotlb_inv", d.IOTLB_DSI,
                                                                  domain.did)
        else:
            assert (second.label, second["g"], second["pasid"]) == (
                "p_iotlb_inv", d.QI_GRAN_NONG_PASID, pasid)
        assert descs[0]["did"] == domain.did


@pytest.mark.spec(25)
def test_b25_device_tlb_only_with_ats_and_without_caching_mode(env: Env) -> None:
    drv = env.build(devices=[PciDevice(DEV_A), PciDevice("0000:06:00.0", ats=False, pri=False)])
    for bdf, expect_devtlb in ((DEV_A, True), ("06:00.0", False)):
        info = drv.info(bdf)
        info.iommu.setup_pass_through(info, 7)
        seq = drv.trace.seq
        info.iommu.tear_down_entry(info, 7, fault_ignore=False)
        labels = [x.label for x in processed(drv, seq)]
        assert ("p_dev_tlb_inv" in labels) is expect_devtlb
    cm_env = Env()
    drv = cm_env.build(Capabilities(cm=True))
    info = drv.info(DEV_A)
    info.iommu.setup_pass_through(info, 7)
    seq = drv.trace.seq
    info.iommu.tear_down_entry(info, 7, fault_ignore=False)
    assert [x.label for x in processed(drv, seq)] == ["pc_inv", "inv_wait", "p_iotlb_inv",
                                                      "inv_wait"]


@pytest.mark.spec(25)
def test_b25_pasid_zero_uses_the_plain_device_tlb_descriptor(drv) -> None:
    info = drv.info(DEV_A)
    info.iommu.setup_pass_through(info, 0)
    seq = drv.trace.seq
    info.iommu.tear_down_entry(info, 0, fault_ignore=False)
    devtlb = processed(drv, seq)[4]
    assert devtlb.label == "dev_tlb_inv"
    assert devtlb["sid"] == info.sid and devtlb.words[1] == 0x7FFFFFFFFFFFF001


@pytest.mark.spec(26)
@pytest.mark.parametrize(("style", "expected"), [("current", 0), ("2020", 6)])
def test_b26_teardown_of_a_non_present_entry(env: Env, style: str, expected: int) -> None:
    drv = env.build(options=DriverOptions(teardown=style))
    info = drv.info(DEV_A)
    info.iommu.setup_pass_through(info, 1)  # the leaf exists; PASID 2 is not set
    seq = drv.trace.seq
    info.iommu.tear_down_entry(info, 2, fault_ignore=False)
    assert len(processed(drv, seq)) == expected


@pytest.mark.spec(27)
def test_b27_fault_ignore_leaves_only_fpd(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    unit = io.unit
    for pasid in (3, 4):
        io.setup_first_level(info, PGD, pasid, 1)
        assert drv.dma(DEV_A, pasid, 0x5000).ok
    io.tear_down_entry(info, 3, fault_ignore=True)
    io.tear_down_entry(info, 4, fault_ignore=False)
    assert drv.mem.read_words(info.table.entry_addr(3), 8) == (2, 0, 0, 0, 0, 0, 0, 0)
    assert drv.mem.read_words(info.table.entry_addr(4), 8) == (0,) * 8
    silent = drv.dma(DEV_A, 3, 0x5000)
    assert not silent.ok and silent.fault == f.SM_PTE_NOT_PRESENT and silent.suppressed
    assert unit.counters["fault.suppressed"] == 1 and unit.counters["fault.0x59"] == 0
    loud = drv.dma(DEV_A, 4, 0x5000)
    assert not loud.ok and not loud.suppressed
    assert unit.counters["fault.0x59"] == 1
    assert (unit.regs.read("FRCD0_HI") >> 32) & 0xFF == 0x59


@pytest.mark.spec(28)
def test_b28_missing_pasid_cache_invalidation_is_a_hazard(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_first_level(info, PGD, 60, 1)
    io.setup_first_level(info, PGD, 61, 1)
    assert drv.dma(DEV_A, 60, 0x7000).source == "walk"
    assert drv.dma(DEV_A, 60, 0x7000).source == "iotlb"
    # A wrong teardown: clear the entry, flush the IOTLB for the PASID, forget the PASID cache.
    clear_entry(drv.mem, info.table.entry_addr(60))
    io.flush_piotlb(1, 60, 0, -1)
    stale = drv.dma(DEV_A, 60, 0x8000)
    assert stale.ok and stale.root == PGD  # the freed entry still translates
    assert stale.hazards == ("stale_pasid_cache",)
    hazard = [e for e in drv.trace.events if e.kind == "hazard"][-1]
    assert hazard["what"] == "stale translation after free" and hazard["pasid"] == 60
    # Linux's order leaves nothing behind.
    assert drv.dma(DEV_A, 61, 0x7000).ok
    io.tear_down_entry(info, 61, fault_ignore=False)
    after = drv.dma(DEV_A, 61, 0x7000)
    assert not after.ok and after.hazards == () and after.fault == f.SM_PTE_NOT_PRESENT
    assert io.unit.counters["hazard.stale_pasid_cache"] == 1


@pytest.mark.spec(28)
def test_b28_missing_device_tlb_invalidation_is_a_hazard(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_first_level(info, PGD, 62, 1)
    assert drv.dma(DEV_A, 62, 0x9000, ats=True).ok
    assert len(info.device.devtlb) == 1
    addr = info.table.entry_addr(62)
    entry = PasidEntry.decode(drv.mem.read_words(addr, 8))
    clear_entry(drv.mem, addr)
    io.flush_pasid_cache(entry.did, d.QI_PC_PASID_SEL, 62)
    io.flush_piotlb(entry.did, 62, 0, -1)
    stale = drv.dma(DEV_A, 62, 0x9000, ats=True)
    assert stale.source == "devtlb" and stale.hazards == ("stale_devtlb",)
