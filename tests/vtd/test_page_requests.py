"""Page requests and drain: behaviours B29-B34 of ``docs/behaviours.md``."""

from __future__ import annotations

from errno import EINVAL, EIO, EPERM

import pytest

from ioasidsd.model import IoasidError
from ioasidsd.vtd import Capabilities, DriverOptions, PciDevice, UnitOptions
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import faults as f
from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.device import Response

from .conftest import DEV_A, DEV_B, Env

ADDR = 0x7F0000001000


def codes(device) -> list[int]:
    return [resp.code for resp in device.responses]


@pytest.mark.spec(29)
def test_b29_which_requests_get_a_response(env: Env) -> None:
    drv = env.build()
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_A)
    dev = drv.info(DEV_A).device
    drv.page_request(DEV_A, pasid, ADDR, lpig=True, prg_index=1)
    assert [(x.prg_index, x.code) for x in dev.responses] == [(1, d.QI_RESP_SUCCESS)]
    drv.page_request(DEV_A, pasid, ADDR, lpig=False, prg_index=2)  # not the last page
    assert len(dev.responses) == 1
    drv.page_request(DEV_A, pasid, ADDR, lpig=False, prg_index=3, private=(0xAA, 0xBB))
    assert dev.responses[-1] == Response(pasid, 3, d.QI_RESP_SUCCESS, (0xAA, 0xBB), False)
    drv.page_request(DEV_A, pasid, ADDR, read=False, write=False, lpig=True, prg_index=4)
    assert len(dev.responses) == 2  # a stop marker is dropped silently
    unit = drv.units["dmar0"]
    assert unit.counters["prq.stop_markers"] == 1 and unit.counters["prq.requests"] == 4
    assert not dev.pending_groups
    # Malformed requests are answered INVALID (privileged with read, execute with read).
    drv.page_request(DEV_A, pasid, ADDR, priv=True, prg_index=5)
    drv.page_request(DEV_A, pasid, ADDR, exe=True, prg_index=6)
    assert codes(dev)[-2:] == [d.QI_RESP_INVALID, d.QI_RESP_INVALID]


@pytest.mark.spec(30)
def test_b30_private_data_must_echo(env: Env) -> None:
    drv = env.build()
    pasid = drv.bind_mm(env.process(), DEV_A)
    io = drv.iommu_of(DEV_A)
    dev = drv.info(DEV_A).device
    unit = io.unit
    drv.page_request(DEV_A, pasid, ADDR, prg_index=7, private=(1, 2))
    assert unit.counters["prq.protocol_violations"] == 0
    io.prq_step_mode = True
    drv.page_request(DEV_A, pasid, ADDR, prg_index=8, private=(3, 4))
    io.qi_submit_sync([d.page_group_response(dev.sid, pasid, 0, 8, private=(3, 5), lpig=True)])
    assert unit.counters["prq.private_data_mismatch"] == 1
    io.qi_submit_sync([d.page_group_response(dev.sid, pasid, 0, 9)])
    assert unit.counters["prq.unexpected_response"] == 1
    assert unit.counters["prq.protocol_violations"] == 2


@pytest.mark.spec(30)
@pytest.mark.parametrize(("version", "counted"), [(0x10, 1), (0x40, 0)])
def test_b30_response_lpig_ignored_from_spec_4(env: Env, version: int, counted: int) -> None:
    drv = env.build(version=version)
    pasid = drv.bind_mm(env.process(), DEV_A)
    io = drv.iommu_of(DEV_A)
    io.prq_step_mode = True
    drv.page_request(DEV_A, pasid, ADDR, prg_index=1, lpig=True)
    io.qi_submit_sync([d.page_group_response(drv.info(DEV_A).sid, pasid, 0, 1, lpig=False)])
    assert io.unit.counters["prq.lpig_mismatch"] == counted


@pytest.mark.spec(31)
def test_b31_overflow_pro_and_ppr(env: Env) -> None:
    drv = env.build(options=DriverOptions(prq_order=0))
    pasid = drv.bind_mm(env.process(), DEV_A)
    io = drv.iommu_of(DEV_A)
    unit = io.unit
    regs = unit.regs
    io.prq_step_mode = True
    assert unit.prq.entries == 128
    for i in range(127):
        assert drv.page_request(DEV_A, pasid, ADDR, lpig=False, prg_index=i % 512)
    assert regs.read("PRS") == r.PRS_PPR
    assert unit.counters["irq.prq"] == 1  # only the first request raised the event
    assert not drv.page_request(DEV_A, pasid, ADDR, lpig=True, prg_index=200)
    assert regs.read("PRS") & r.PRS_PRO and unit.counters["prq.overflows"] == 1
    assert not drv.page_request(DEV_A, pasid, ADDR, lpig=False, prg_index=201)
    assert unit.counters["prq.dropped"] == 2 and unit.counters["prq.overflows"] == 1
    assert not drv.info(DEV_A).device.pending_groups  # a dropped group waits for nothing
    regs.write("PRS", r.PRS_PRO)  # refused: the queue is not empty
    assert regs.read("PRS") & r.PRS_PRO
    assert io.run_prq_thread() == 127
    assert regs.read("PRS") == 0 and unit.counters["prq.pro_cleared"] == 1
    # Masked: the event is pending instead, and delivered on unmask.
    regs.write("PECTL", r.ECTL_IM)
    drv.page_request(DEV_A, pasid, ADDR, lpig=False)
    assert regs.read("PECTL") & r.ECTL_IP and unit.counters["irq.prq"] == 1
    regs.write("PECTL", 0)
    assert unit.counters["irq.prq"] == 2 and not regs.read("PECTL") & r.ECTL_IP


@pytest.mark.spec(31)
def test_b31_overflow_auto_response_option(env: Env) -> None:
    drv = env.build(options=DriverOptions(prq_order=0),
                    unit_options=UnitOptions(prq_overflow_auto_response=True))
    pasid = drv.bind_mm(env.process(), DEV_A)
    io = drv.iommu_of(DEV_A)
    io.prq_step_mode = True
    for i in range(127):
        drv.page_request(DEV_A, pasid, ADDR, lpig=False, prg_index=i)
    drv.page_request(DEV_A, pasid, ADDR, lpig=True, prg_index=300)
    dev = drv.info(DEV_A).device
    assert [(x.prg_index, x.code) for x in dev.responses] == [(300, d.QI_RESP_SUCCESS)]


@pytest.mark.spec(32)
def test_b32_drain_is_a_noop_without_pri(env: Env, labels_after) -> None:
    drv = env.build()
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_B)
    info = drv.info(DEV_B)
    assert not info.pri_enabled
    mark = labels_after(drv)
    info.iommu.drain_prq(info, pasid)
    assert mark() == []
    assert info.iommu.counters["drain.runs"] == 0


@pytest.mark.spec(32)
def test_b32_drain_waits_then_fences_and_drains(env: Env) -> None:
    drv = env.build()
    pasid = drv.bind_mm(env.process(), DEV_A)
    info = drv.info(DEV_A)
    io = info.iommu
    io.prq_step_mode = True
    drv.page_request(DEV_A, pasid, ADDR, prg_index=1)
    drv.page_request(DEV_A, pasid + 1, ADDR, prg_index=2)  # another PASID: not waited for
    assert len(io.unit.prq.pending()) == 2
    seq = drv.trace.seq
    io.drain_prq(info, pasid)
    assert io.counters["drain.waits"] == 1 and io.unit.prq.pending() == []
    descs = [d.decode((e["qw0"], e["qw1"], 0, 0)) for e in drv.trace.since(seq, ["inv_desc"])]
    hw = descs[-4:]
    assert [x.label for x in hw] == ["inv_wait", "p_iotlb_inv", "p_dev_tlb_inv", "inv_wait"]
    assert hw[0]["fn"] and not hw[0]["sw"] and not hw[0]["pd"]
    assert hw[1]["pasid"] == pasid and hw[1]["g"] == d.QI_GRAN_NONG_PASID
    assert hw[2]["pasid"] == pasid and hw[2]["sid"] == info.sid
    assert hw[3]["sw"] and hw[3]["pd"]
    assert [e.kind for e in drv.trace.since(seq, ["drain_begin", "drain_end"])] == [
        "drain_begin", "drain_end"]


@pytest.mark.spec(32)
def test_b32_drain_repeats_while_pro(env: Env) -> None:
    drv = env.build(options=DriverOptions(prq_order=0))
    pasid = drv.bind_mm(env.process(), DEV_A)
    info = drv.info(DEV_A)
    io = info.iommu
    io.prq_step_mode = True
    for i in range(120):
        drv.page_request(DEV_A, pasid + 1, ADDR, lpig=False, prg_index=i)
    for i in range(20):  # still on their way: the PD wait brings them in and overflows
        drv.page_request(DEV_A, pasid, ADDR, lpig=True, prg_index=i, in_flight=True)
    io.drain_prq(info, pasid)
    assert io.counters["drain.retries"] >= 1
    assert not io.regs.read("PRS") & r.PRS_PRO
    assert not info.device.in_flight


@pytest.mark.spec(33)
def test_b33_no_pri_without_pds(env: Env) -> None:
    drv = env.build(Capabilities(pds=False))
    info = drv.info(DEV_A)
    assert not info.pri_enabled and not info.iommu.unit.context_entry(info.sid).pre
    assert any("no PDS" in e["msg"] for e in drv.trace.events if e.kind == "warn")
    pasid = drv.bind_mm(env.process(), DEV_A)
    drv.page_request(DEV_A, pasid, ADDR, prg_index=3)  # PRE clear: answered by the hardware
    assert codes(info.device) == [d.QI_RESP_INVALID]
    assert info.iommu.unit.counters["fault.0x47"] == 1
    assert info.iommu.unit.counters["prq.auto_response.pre_clear"] == 1


@pytest.mark.spec(33)
@pytest.mark.parametrize("pd_reserved", [True, False])
def test_b33_legacy_pri_without_pds(env: Env, pd_reserved: bool) -> None:
    drv = env.build(Capabilities(pds=False), options=DriverOptions(pri_requires_pds=False),
                    unit_options=UnitOptions(pd_reserved_without_pds=pd_reserved))
    info = drv.info(DEV_A)
    assert info.pri_enabled
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_A)
    drv.unbind_mm(proc, DEV_A)
    io = info.iommu
    assert pasid not in env.core  # the unbind itself completes (Linux ignores the error)
    if not pd_reserved:  # QEMU's reading: PD accepted, the drain works
        assert io.counters["drain.submit_failed"] == 0 and io.unit.counters["iq.iqe"] == 0
        return
    # The rejected descriptor is the PD wait itself: Linux's recovery copies that wait over
    # itself, IQE latches again and the queue stays stuck. Hence the 2025 rule.
    assert io.counters["drain.submit_failed"] == 1
    assert io.counters["qi.invalid_descriptor"] == 1
    assert io.unit.counters["iq.iqe"] == 2
    assert io.regs.read("FSTS") & r.FSTS_IQE
    with pytest.raises(IoasidError) as err:
        io.flush_pasid_cache(1, d.QI_PC_PASID_SEL, 1)
    assert err.value.errno == EIO


@pytest.mark.spec(34)
def test_b34_unbind_leaves_no_request_behind(env: Env) -> None:
    drv = env.build()
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_A)
    info = drv.info(DEV_A)
    dev = info.device
    for i in range(3):
        drv.page_request(DEV_A, pasid, ADDR, prg_index=10 + i, in_flight=True)

    def late_request(event) -> None:
        if event.kind == "pasid_entry_clear":
            drv.page_request(DEV_A, pasid, ADDR, prg_index=20)

    unsubscribe = drv.trace.subscribe(late_request)
    drv.unbind_mm(proc, DEV_A)
    unsubscribe()
    assert [req for _, req in info.iommu.unit.prq.pending()] == []
    assert not dev.pending_groups and not dev.in_flight
    late = [x for x in dev.responses if x.prg_index in (10, 11, 12, 20)]
    assert sorted(x.prg_index for x in late) == [10, 11, 12, 20]
    assert {x.code for x in late} == {d.QI_RESP_INVALID}
    # DMA to the unbound PASID faults; a new owner of the same number sees nothing old.
    assert drv.dma(DEV_A, pasid, ADDR).fault == f.SM_PTE_NOT_PRESENT
    other = env.process()
    assert drv.bind_mm(other, DEV_A) == pasid
    drv.page_request(DEV_A, pasid, ADDR, prg_index=30)
    assert dev.responses[-1] == Response(pasid, 30, d.QI_RESP_SUCCESS, None, True)
    assert info.iommu.counters["hazard.stale_prq"] == 0


@pytest.mark.spec(34)
def test_b34_a_missing_drain_is_flagged(env: Env) -> None:
    drv = env.build()
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_A)
    info = drv.info(DEV_A)
    io = info.iommu
    io.prq_step_mode = True
    drv.page_request(DEV_A, pasid, ADDR, prg_index=5)
    # A driver that forgets to drain: tear down and release, leaving the request queued.
    svm = drv.native.pop(proc)
    io.tear_down_entry(info, pasid, fault_ignore=False)
    env.core.put(drv.host_set, svm.pasid)
    newcomer = env.process()
    assert drv.bind_mm(newcomer, DEV_A) == pasid
    io.run_prq_thread()
    assert io.counters["hazard.stale_prq"] == 1
    assert [e for e in drv.trace.events if e.kind == "hazard"][-1]["pasid"] == pasid


@pytest.mark.spec(34)
def test_b34_guest_reports_are_aborted_at_unbind(env: Env) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 7, DEV_A)
    dev = drv.info(DEV_A).device
    drv.page_request(DEV_A, hpasid, ADDR, prg_index=4, private=(9, 9))
    assert dev.pending_groups and not dev.responses  # reported to the guest
    drv.unbind_gpasid(vm, hpasid, DEV_A)
    assert not dev.pending_groups
    assert dev.responses[-1] == Response(hpasid, 4, d.QI_RESP_INVALID, (9, 9), True)
    assert drv.iommu_of(DEV_A).counters["prq.aborted_reports"] == 1


def test_guest_page_response_goes_back_to_the_device(env: Env) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 7, DEV_A)
    dev = drv.info(DEV_A).device
    drv.page_request(DEV_A, hpasid, ADDR, prg_index=4, private=(1, 2))
    with pytest.raises(IoasidError) as err:
        drv.page_response(env.process(), DEV_A, hpasid, 4)
    assert err.value.errno == EPERM
    drv.page_response(vm, DEV_A, hpasid, 4, d.QI_RESP_SUCCESS)
    assert dev.responses[-1] == Response(hpasid, 4, d.QI_RESP_SUCCESS, (1, 2), True)
    assert not dev.pending_groups
    with pytest.raises(IoasidError) as err:
        drv.page_response(vm, DEV_A, hpasid, 4)
    assert err.value.errno == EINVAL  # nothing left to answer


def test_requests_without_pasid_or_from_unknown_pasids_are_invalid(env: Env) -> None:
    drv = env.build(devices=[PciDevice(DEV_A)])
    dev = drv.info(DEV_A).device
    drv.page_request(DEV_A, None, ADDR, prg_index=1)
    drv.page_request(DEV_A, 77, ADDR, prg_index=2)
    assert codes(dev) == [d.QI_RESP_INVALID, d.QI_RESP_INVALID]
