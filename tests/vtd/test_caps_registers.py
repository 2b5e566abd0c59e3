"""Capabilities and registers: behaviours B1-B6 of ``docs/behaviours.md``."""

from __future__ import annotations

from errno import EINVAL, ENOSPC, EOPNOTSUPP

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.model import IoasidError
from ioasidsd.vtd import Capabilities, DriverOptions, PciDevice, Unit
from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.caps import CAP_FIELDS, ECAP_FIELDS
from ioasidsd.vtd.hardware.memory import PhysMem
from ioasidsd.vtd.hardware.pasid_table import FLPT_DEFAULT_DID

from .conftest import DEV_A, Env


@pytest.mark.spec(1)
@pytest.mark.parametrize(("pss", "space"), [(19, 1 << 20), (7, 256), (4, 32)])
def test_b01_pss_gives_pasid_space_and_capacity(env: Env, pss: int, space: int) -> None:
    caps = Capabilities(pss=pss)
    assert caps.pasid_space == space
    assert (caps.ecap() >> 35) & 0x1F == pss
    drv = env.build(caps, options=DriverOptions(host_quota=min(32, space)))
    assert drv.pasid_max == space
    assert env.core.capacity == space


@pytest.mark.spec(1)
def test_b01_binds_reject_pasids_beyond_pss(env: Env) -> None:
    drv = env.build(Capabilities(pss=7), options=DriverOptions(host_quota=256))
    procs = [env.process() for _ in range(256)]
    pasids = [drv.bind_mm(p, DEV_A) for p in procs[:255]]
    assert sorted(pasids) == list(range(1, 256))
    with pytest.raises(IoasidError) as err:
        drv.bind_mm(procs[255], DEV_A)
    assert err.value.errno == ENOSPC  # the range [1, 255] is used up, not the quota
    assert drv.host_set.nr_ioasids == 255


@pytest.mark.spec(1)
def test_b01_guest_bind_rejects_pasids_beyond_pss(env: Env) -> None:
    drv = env.build(Capabilities(pss=7), options=DriverOptions(host_quota=16))
    # The VMM's set may hold values above 255 (capacity counts IDs, it does not bound them).
    vm, vm_set = env.vm()
    big = env.core.alloc(vm_set, 300, 400, task=vm)
    with pytest.raises(IoasidError) as err:
        drv.bind_gpasid(vm, big, 7, DEV_A)
    assert err.value.errno == EINVAL
    assert env.core.find(None, big) is None


@pytest.mark.spec(1)
def test_b01_host_quota_above_capacity_disables_scalable_mode(env: Env) -> None:
    # As in init_dmars: a host set of 32768 does not fit 256 PASIDs; scalable mode goes off.
    drv = env.build(Capabilities(pss=7))
    assert drv.host_set is None and not drv.sm_enabled
    with pytest.raises(IoasidError) as err:
        drv.bind_mm(env.process(), DEV_A)
    assert err.value.errno == EOPNOTSUPP
    assert any(e["msg"].startswith("host PASID set not created")
               for e in drv.trace.events if e.kind == "warn")


@pytest.mark.spec(2)
def test_b02_pasid_zero_is_never_handed_out(env_v4: Env) -> None:
    env = env_v4
    drv = env.build()
    assert drv.bind_mm(env.process(), DEV_A) == 1
    # v4's /dev/ioasid may hand PASID 0 to a VMM (quirk 11); the driver refuses to bind it.
    vm, vm_set = env.vm(quota=10)
    zero = env.core.alloc(vm_set, 0, 0, task=vm)
    assert zero == 0
    with pytest.raises(IoasidError) as err:
        drv.bind_gpasid(vm, zero, 5, DEV_A)
    assert err.value.errno == EINVAL
    assert drv.info(DEV_A).table.read_entry(0) is None or not drv.info(DEV_A).table.read_entry(
        0).p


@pytest.mark.spec(3)
@pytest.mark.parametrize("missing", ["smts", "pasid"])
def test_b03_no_scalable_mode_or_pasid_fails_every_pasid_operation(env: Env,
                                                                   missing: str) -> None:
    drv = env.build(Capabilities().replace(**{missing: False}))
    vm, vm_set = env.vm()
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    proc = env.process()
    for op in (lambda: drv.bind_mm(proc, DEV_A),
               lambda: drv.bind_gpasid(vm, hpasid, 1, DEV_A)):
        with pytest.raises(IoasidError) as err:
            op()
        assert err.value.errno == EOPNOTSUPP
    assert not drv.native and not drv.guest
    assert env.core.data(hpasid).refs == 1
    if missing == "smts":
        assert drv.host_set is None
        assert env.core.reserved == 1  # the VMM's own IOASID; no host set quota


@pytest.mark.spec(4)
def test_b04_feature_gating(env: Env) -> None:
    cases = [
        (dict(flts=False), lambda io, info, dom: io.setup_first_level(info, 0x1000, 5, 1)),
        (dict(slts=False), lambda io, info, dom: io.setup_second_level(info, dom, 5)),
        (dict(nest=False), lambda io, info, dom: io.setup_nested(info, 0x1000, 5, dom)),
        (dict(srs=False), lambda io, info, dom: io.setup_first_level(info, 0x1000, 5, 1,
                                                                     supervisor=True)),
        (dict(srs=False), lambda io, info, dom: io.setup_nested(info, 0x1000, 5, dom,
                                                                sre=True)),
        (dict(eafs=False), lambda io, info, dom: io.setup_nested(info, 0x1000, 5, dom,
                                                                 eafe=True)),
        (dict(fl5lp=False), lambda io, info, dom: io.setup_first_level(info, 0x1000, 5, 1,
                                                                       five_level=True)),
        (dict(fl5lp=False), lambda io, info, dom: io.setup_nested(info, 0x1000, 5, dom,
                                                                  addr_width=57)),
        (dict(pt=False), lambda io, info, dom: io.setup_pass_through(info, 5)),
    ]
    for knobs, op in cases:
        case_env = Env()
        drv = case_env.build(Capabilities(eafs=True).replace(**knobs))
        info = drv.info(DEV_A)
        domain = info.iommu.domain_alloc(nesting=True)
        with pytest.raises(IoasidError) as err:
            op(info.iommu, info, domain)
        assert err.value.errno == EINVAL, knobs
        entry = info.table.read_entry(5)
        assert entry is None or not entry.p, knobs
    # With every capability present the same calls succeed.
    drv = env.build(Capabilities(eafs=True, fl5lp=True))
    info = drv.info(DEV_A)
    domain = info.iommu.domain_alloc(nesting=True)
    info.iommu.setup_nested(info, 0x1000, 5, domain, sre=True, eafe=True, addr_width=57)
    entry = info.table.read_entry(5)
    assert entry.p and entry.sre and entry.eafe and entry.flpm == 1


@pytest.mark.spec(5)
def test_b05_cap_ecap_golden_values() -> None:
    zero = {name: (False if f.width == 1 else 0) for name, f in (CAP_FIELDS | ECAP_FIELDS).items()}
    ecap_only = Capabilities(**(zero | dict(pss=19, smts=True, pasid=True, nest=True, prs=True,
                                            pds=True)))
    assert ecap_only.ecap() == 0x00000D9824000000
    assert ecap_only.cap() == 0
    cap_only = Capabilities(**(zero | dict(nd=6, cm=True, sagaw=4, mgaw=47, fro=0x22,
                                           fl5lp=True, esrtps=True)))
    assert cap_only.cap() == 0x90000000222F0486
    assert cap_only.ecap() == 0


@pytest.mark.spec(5)
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_b05_codecs_round_trip_every_field(data: st.DataObject) -> None:
    values = {}
    for name, field in (CAP_FIELDS | ECAP_FIELDS).items():
        if field.width == 1:
            values[name] = data.draw(st.booleans(), label=name)
        else:
            values[name] = data.draw(st.integers(0, field.max), label=name)
    caps = Capabilities(**values)
    cap, ecap = caps.cap(), caps.ecap()
    assert Capabilities.decode(cap, ecap) == caps
    # The positions Linux's decoders read (iommu.h cap_*/ecap_*), written out independently.
    assert cap & 0x7 == caps.nd
    assert (cap >> 7) & 1 == caps.cm
    assert (cap >> 8) & 0x1F == caps.sagaw
    assert (cap >> 16) & 0x3F == caps.mgaw
    assert (cap >> 24) & 0x3FF == caps.fro
    assert (cap >> 40) & 0xFF == caps.nfr
    assert (cap >> 60) & 1 == caps.fl5lp
    assert (cap >> 63) & 1 == caps.esrtps
    assert (ecap >> 1) & 1 == caps.qi
    assert (ecap >> 8) & 0x3FF == caps.iro
    assert (ecap >> 26) & 1 == caps.nest
    assert (ecap >> 29) & 1 == caps.prs
    assert (ecap >> 35) & 0x1F == caps.pss
    assert (ecap >> 40) & 1 == caps.pasid
    assert (ecap >> 42) & 1 == caps.pds
    assert (ecap >> 43) & 1 == caps.smts
    assert (ecap >> 44) & 1 == caps.vcs
    assert (ecap >> 46) & 1 == caps.slts
    assert (ecap >> 47) & 1 == caps.flts


def test_b05_capability_values_are_validated() -> None:
    with pytest.raises(ValueError, match="pss"):
        Capabilities(pss=32)
    with pytest.raises(ValueError, match="unknown"):
        Capabilities().replace(bogus=1)


def _unit(**caps: object) -> Unit:
    unit = Unit("u", Capabilities(**caps))  # type: ignore[arg-type]
    return unit


@pytest.mark.spec(6)
def test_b06_gcmd_srtp_qie_te() -> None:
    unit = _unit()
    regs = unit.regs
    mem = unit.mem
    root = mem.alloc("root")
    regs.write("RTADDR", root | r.RTADDR_SMT)
    regs.write("GCMD", r.GCMD_SRTP)
    assert regs.read("GSTS") & r.GSTS_RTPS
    assert unit.sm_root and unit.root_table == root
    assert regs.read("GCMD") == 0  # write-only
    # QIE: level-triggered.
    iq = mem.alloc("iq", 2)
    regs.write("IQA", iq | r.IQA_DW | 1)
    regs.write("GCMD", r.GCMD_QIE)
    assert regs.read("GSTS") & r.GSTS_QIES
    status = mem.alloc("iq_status")
    for i, w in enumerate(d.wait(status, 7, sw=True)):
        mem.write64(iq + 8 * i, w)
    regs.write("IQT", 1 << 5)
    assert regs.read("IQH") == 1 << 5 and mem.read32(status) == 7
    regs.write("GCMD", r.GCMD_QIE)  # the same level again: no re-enable, IQH not reset
    assert regs.read("IQH") == 1 << 5
    regs.write("GCMD", r.GCMD_QIE | r.GCMD_TE)
    assert regs.read("GSTS") & r.GSTS_TES
    regs.write("GCMD", r.GCMD_QIE)
    assert not regs.read("GSTS") & r.GSTS_TES
    regs.write("GCMD", 0)
    assert not regs.read("GSTS") & r.GSTS_QIES
    assert regs.read("GSTS") & r.GSTS_RTPS  # RTPS stays


@pytest.mark.spec(6)
@pytest.mark.parametrize("esrtps", [False, True])
def test_b06_driver_flushes_after_srtp_unless_esrtps(env: Env, esrtps: bool) -> None:
    drv = env.build(Capabilities(esrtps=esrtps), devices=[])
    processed = [e["label"] for e in drv.trace.events if e.kind == "inv_desc"]
    if esrtps:
        assert processed == []
    else:
        assert processed == ["cc_inv", "inv_wait", "pc_inv", "inv_wait", "iotlb_inv",
                             "inv_wait"]
        assert drv.counters_total()["gran.cc_inv.global"] == 1
        assert drv.counters_total()["gran.pc_inv.global"] == 1
        assert drv.counters_total()["gran.iotlb_inv.global"] == 1


def test_registers_reject_unknown_offsets_and_wide_values() -> None:
    unit = _unit()
    with pytest.raises(IoasidError):
        unit.regs.write(0x7F0, 1)
    with pytest.raises(IoasidError):
        unit.regs.write("GCMD", 1 << 40)
    assert unit.regs.read(0x7F0) == 0


def test_unit_mem_is_separate_from_a_shared_one() -> None:
    mem = PhysMem()
    a = Unit("a", mem=mem)
    b = Unit("b", mem=mem)
    assert a.mem is b.mem
    assert FLPT_DEFAULT_DID == 1
    assert PciDevice("3:0.0").bdf == "0000:03:00.0"
