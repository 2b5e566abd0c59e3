"""PASID structures: behaviours B15-B22 of ``docs/behaviours.md``."""

from __future__ import annotations

from errno import EBUSY

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.model import IoasidError
from ioasidsd.vtd import Capabilities, DriverOptions, PciDevice
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import faults as f
from ioasidsd.vtd.hardware.pasid_table import PasidEntry, Pgtt, write_field

from .conftest import DEV_A, Env

PGD = 0x12345000


@pytest.mark.spec(15)
def test_b15_directory_size_and_pdts(env: Env) -> None:
    drv = env.build(devices=[PciDevice(DEV_A), PciDevice("0000:05:00.0", pasid_bits=5)])
    wide, narrow = drv.info(DEV_A), drv.info("05:00.0")
    assert wide.table.dir_pages == 32 and wide.table.pdts == 7
    assert narrow.table.dir_pages == 1 and narrow.table.pdts == 2
    assert drv.mem.live["pasid_dir"] == 33
    unit = wide.iommu.unit
    for info in (wide, narrow):
        ctx = unit.context_entry(info.sid)
        assert ctx.p and ctx.pasid_dir == info.table.dir_addr and ctx.pdts == info.table.pdts
        assert ctx.paside and ctx.dte and ctx.pre and ctx.rid_pasid == 0
        assert (drv.mem.read64(drv.mem.block(info.table.dir_addr).pfn << 12) == 0)


@pytest.mark.spec(16)
def test_b16_leaf_tables_are_allocated_per_64_pasid_block(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    assert info.table.leaf_pages == 0
    io.setup_pass_through(info, 1)
    assert info.table.leaf_pages == 1 and drv.mem.live["pasid_table"] == 1
    for pasid in (2, 40, 63):
        io.setup_pass_through(info, pasid)
    assert info.table.leaf_pages == 1
    io.setup_pass_through(info, 64)
    assert info.table.leaf_pages == 2
    assert set(info.table.leaves) == {0, 1}
    pde0 = drv.mem.read64(info.table.dir_addr)
    pde1 = drv.mem.read64(info.table.dir_addr + 8)
    assert pde0 & 1 and pde1 & 1 and pde0 & ~0xFFF != pde1 & ~0xFFF
    assert pde0 & ~0xFFF == info.table.leaves[0] and pde1 & ~0xFFF == info.table.leaves[1]


@pytest.mark.spec(17)
def test_b17_leaves_persist_until_the_table_is_freed(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    for pasid in (1, 2):
        io.setup_pass_through(info, pasid)
    for pasid in (1, 2):
        io.tear_down_entry(info, pasid, fault_ignore=False)
    assert info.table.leaf_pages == 1 and drv.mem.live["pasid_table"] == 1
    io.release_device(info)
    assert drv.mem.live["pasid_table"] == 0 and drv.mem.live["pasid_dir"] == 32  # DEV_B's
    assert drv.mem.peak["pasid_table"] == 1


@pytest.mark.spec(17)
def test_b17_reclaim_option_frees_empty_leaves(env: Env) -> None:
    drv = env.build(options=DriverOptions(reclaim_empty_pasid_tables=True))
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_pass_through(info, 1)
    io.setup_pass_through(info, 2)
    io.tear_down_entry(info, 1, fault_ignore=False)
    assert info.table.leaf_pages == 1
    io.tear_down_entry(info, 2, fault_ignore=False)
    assert info.table.leaf_pages == 0 and drv.mem.read64(info.table.dir_addr) == 0
    io.setup_pass_through(info, 3)
    io.tear_down_entry(info, 3, fault_ignore=True)  # an FPD-only entry keeps its leaf
    assert info.table.leaf_pages == 1


@pytest.mark.spec(18)
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, (1 << 20) - 1), min_size=1, max_size=8, unique=True))
def test_b18_hardware_indexing(pasids: list[int]) -> None:
    env = Env()
    drv = env.build()
    info = drv.info(DEV_A)
    for pasid in pasids:
        info.iommu.setup_first_level(info, PGD + (pasid << 12), pasid, 1)
    mem = drv.mem
    for pasid in pasids:
        pde = mem.read64(info.table.dir_addr + 8 * (pasid >> 6))
        assert pde & 1
        words = mem.read_words((pde & ~0xFFF) + 64 * (pasid & 0x3F), 8)
        entry = PasidEntry.decode(words)
        assert entry.p and entry.flptptr == PGD + (pasid << 12)
        result = drv.dma(DEV_A, pasid, 0x1000)
        assert result.ok and result.root == PGD + (pasid << 12)


@pytest.mark.spec(18)
def test_b18_pasid_beyond_the_directory_faults_0x46(env: Env) -> None:
    drv = env.build(devices=[PciDevice("0000:05:00.0", pasid_bits=5)])
    info = drv.info("05:00.0")
    assert info.table.max_pasid == 1 << (2 + 7 + 6)
    result = drv.dma("05:00.0", 1 << 15, 0x2000, write=True)
    assert not result.ok and result.fault == f.SM_PASID_TOO_LARGE and not result.suppressed
    unit = info.iommu.unit
    hi = unit.regs.read("FRCD0_HI")
    assert hi >> 63 == 1 and (hi >> 32) & 0xFF == 0x46 and (hi >> 40) & 0xFFFFF == 1 << 15
    assert hi & 0xFFFF == info.sid and unit.regs.read("FSTS") & 0x2  # PPF
    assert unit.counters["fault.0x46"] == 1
    # Within the directory but no leaf: 0x51 (directory entry not present).
    assert drv.dma("05:00.0", 100, 0x2000).fault == f.SM_PDE_NOT_PRESENT


@pytest.mark.spec(19)
def test_b19_setup_of_a_present_entry_is_ebusy(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_first_level(info, PGD, 9, 1)
    addr = info.table.entry_addr(9)
    before = drv.mem.read_words(addr, 8)
    for op in (lambda: io.setup_first_level(info, 0x999000, 9, 1),
               lambda: io.setup_pass_through(info, 9)):
        with pytest.raises(IoasidError) as err:
            op()
        assert err.value.errno == EBUSY
        assert drv.mem.read_words(addr, 8) == before


@pytest.mark.spec(20)
@pytest.mark.parametrize("kind", ["first_level", "nested", "second_level", "pass_through"])
def test_b20_present_and_pgtt_are_written_last(drv, kind: str) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_pass_through(info, 20)  # allocate the leaf before observing
    addr = info.table.entry_addr(21)
    snapshots: list[tuple[int, ...]] = []

    def observe(waddr: int, value: int) -> None:
        if addr <= waddr < addr + 64:
            snapshots.append(drv.mem.read_words(addr, 8))

    domain = io.domain_alloc(nesting=True)
    drv.mem.observers.append(observe)
    {
        "first_level": lambda: io.setup_first_level(info, PGD, 21, 1),
        "nested": lambda: io.setup_nested(info, PGD, 21, domain),
        "second_level": lambda: io.setup_second_level(info, domain, 21),
        "pass_through": lambda: io.setup_pass_through(info, 21),
    }[kind]()
    drv.mem.observers.remove(observe)
    final = snapshots[-1]
    present = [s for s in snapshots if s[0] & 1]
    assert present == [final]  # P appears only in the last store
    before_p = snapshots[-2]
    assert before_p[1:] == final[1:] and before_p[0] == final[0] & ~1
    assert (before_p[0] >> 6) & 7 == PasidEntry.decode(final).pgtt  # PGTT just before P
    assert all((s[0] >> 6) & 7 == 0 for s in snapshots[:-2])  # and not earlier
    assert len(snapshots) >= 8 + 3  # cleared word by word, then one store per field


@pytest.mark.spec(21)
def test_b21_first_level_and_nested_entry_layout(drv) -> None:
    info = drv.info(DEV_A)
    io = info.iommu
    io.setup_first_level(info, PGD, 30, 1)
    words = drv.mem.read_words(info.table.entry_addr(30), 8)
    assert words[1] & 0xFFFF == 1  # FLPT_DEFAULT_DID
    assert (words[0] >> 6) & 7 == 1  # PGTT first-level only
    assert words[2] >> 12 == PGD >> 12  # FLPTPTR, bits 191:140
    assert words[0] >> 12 == 0 and words[3:] == (0,) * 5
    domain = io.domain_alloc(nesting=True)
    io.setup_nested(info, PGD, 31, domain)
    words = drv.mem.read_words(info.table.entry_addr(31), 8)
    entry = PasidEntry.decode(words)
    assert entry.pgtt == Pgtt.NESTED == 3 and entry.p and not entry.fpd
    assert entry.flptptr == PGD and entry.slptptr == domain.pgd and entry.did == domain.did
    assert (words[0] >> 12) << 12 == domain.pgd


@pytest.mark.spec(22)
@pytest.mark.parametrize("cm", [False, True])
def test_b22_caching_mode_flushes_after_setup(env: Env, labels_after, cm: bool) -> None:
    drv = env.build(Capabilities(cm=cm))
    info = drv.info(DEV_A)
    mark = labels_after(drv)
    info.iommu.setup_first_level(info, PGD, 40, 1)
    if cm:
        assert mark() == ["pc_inv", "inv_wait", "p_iotlb_inv", "inv_wait"]
        total = drv.counters_total()
        assert total["gran.pc_inv.psi"] == 1 and total["gran.p_iotlb_inv.pasid"] == 1
    else:
        assert mark() == []


@pytest.mark.spec(22)
def test_b22_why_caching_mode_needs_the_flush(env: Env) -> None:
    # A caching-mode unit may cache a not-present entry; without the driver's flush after
    # setup, DMA would keep faulting on it. Show both halves.
    drv = env.build(Capabilities(cm=True))
    info = drv.info(DEV_A)
    assert drv.dma(DEV_A, 50, 0x1000).fault == f.SM_PDE_NOT_PRESENT  # no leaf yet
    info.iommu.setup_pass_through(info, 49)  # now a leaf exists, entry 50 not present
    assert drv.dma(DEV_A, 50, 0x1000).fault == f.SM_PTE_NOT_PRESENT  # cached, not present
    info.iommu.setup_pass_through(info, 50)  # CM: PC + P_IOTLB follow
    assert drv.dma(DEV_A, 50, 0x1000).ok
    # The same change written to memory without the flush keeps faulting on the cached entry.
    assert drv.dma(DEV_A, 51, 0x1000).fault == f.SM_PTE_NOT_PRESENT
    addr = info.table.entry_addr(51)
    for name, value in (("did", 1), ("pgtt", Pgtt.PT), ("p", 1)):
        write_field(drv.mem, addr, name, value)
    stale = drv.dma(DEV_A, 51, 0x1000)
    assert stale.fault == f.SM_PTE_NOT_PRESENT and stale.hazards == ("stale_pasid_cache",)
    assert info.iommu.unit.counters["hazard.stale_pasid_cache"] == 1
    info.iommu.flush_pasid_cache(1, d.QI_PC_PASID_SEL, 51)
    assert drv.dma(DEV_A, 51, 0x1000).ok
