"""The virtual command interface: behaviours B41-B43 of ``docs/behaviours.md``."""

from __future__ import annotations

from errno import ENOSPC

import pytest

from ioasidsd.model import IoasidError
from ioasidsd.vtd import Capabilities
from ioasidsd.vtd.hardware.vcmd import (
    VCMD_CMD_ALLOC,
    VCMD_CMD_FREE,
    guest_alloc_pasid,
    guest_free_pasid,
)

from .conftest import Env


class Vcmd:
    """A unit with virtual commands, served from a VMM's set; the VMM is in cgroup ``vms``."""

    def __init__(self, layout: str = "3.3", *, pas: bool = True, quota: int = 0) -> None:
        self.env = Env()
        drv = self.env.build(Capabilities(vcs=True, cm=True), vcmd_layout=layout,
                             vccap_pas=pas)
        self.vm, self.vm_set = self.env.vm(quota=quota)
        vms = self.env.cgroups.mkdir(self.env.cgroups.root, "vms")
        self.env.controller.set_max(vms, 10)
        self.env.cgroups.attach(self.vm, vms)
        drv.vcmd_attach("dmar0", self.vm_set, self.vm)
        self.unit = drv.units["dmar0"]


@pytest.mark.spec(41)
@pytest.mark.parametrize("layout", ["3.1", "3.3"])
def test_b41_alloc_returns_the_pasid_with_ip_clear(layout: str) -> None:
    v = Vcmd(layout)
    unit, vm, vm_set = v.unit, v.vm, v.vm_set
    regs, lay = unit.regs, unit.vcmd_layout
    pasid = guest_alloc_pasid(regs, lay)
    assert pasid == 1 and pasid in vm_set.xa
    rsp = regs.read("VCRSP")
    shift = 8 if layout == "3.1" else 16
    assert rsp == pasid << shift  # IP = 0, SC = 0
    assert vm.cgroup.counter == 1  # charged to the VMM's cgroup
    assert unit.counters["vcmd.op.alloc"] == 1 and unit.counters["vcmd.sc.0"] == 1


@pytest.mark.spec(41)
def test_b41_ignored_without_pas_or_while_in_progress() -> None:
    v = Vcmd(pas=False)
    unit, vm_set = v.unit, v.vm_set
    unit.regs.write("VCMD", VCMD_CMD_ALLOC)
    assert unit.regs.read("VCRSP") == 0 and not vm_set.xa
    assert unit.counters["vcmd.ignored_no_pas"] == 1
    v = Vcmd()
    unit, vm_set = v.unit, v.vm_set
    unit.vcmd.step_mode = True
    unit.regs.write("VCMD", VCMD_CMD_ALLOC)
    assert unit.regs.read("VCRSP") == 1  # IP
    unit.regs.write("VCMD", VCMD_CMD_ALLOC)  # ignored: a command is in progress
    assert unit.counters["vcmd.ip_busy"] == 1
    assert unit.vcmd.complete() and not unit.vcmd.complete()
    assert unit.regs.read("VCRSP") == 1 << 16 and list(vm_set.xa) == [1]


@pytest.mark.spec(42)
@pytest.mark.parametrize(("layout", "no_pasid_rsp"), [("3.1", 2 << 1), ("3.3", 16 << 1)])
def test_b42_status_codes(layout: str, no_pasid_rsp: int) -> None:
    v = Vcmd(layout, quota=1)
    unit = v.unit
    regs, lay = unit.regs, unit.vcmd_layout
    assert guest_alloc_pasid(regs, lay) == 1
    with pytest.raises(IoasidError) as err:  # the VMM's set is exhausted
        guest_alloc_pasid(regs, lay)
    assert err.value.errno == ENOSPC
    assert regs.read("VCRSP") == no_pasid_rsp
    assert guest_free_pasid(regs, lay, 77) == lay.sc_no_pasid  # unknown: "invalid PASID"
    assert regs.read("VCRSP") == no_pasid_rsp
    regs.write("VCMD", 0x7)  # undefined opcode
    assert regs.read("VCRSP") == 1 << 1
    regs.write("VCMD", 0x0)  # NULL is not a command either
    assert regs.read("VCRSP") == 1 << 1
    assert guest_free_pasid(regs, lay, 1) == 0
    assert 1 not in v.env.core
    assert unit.counters[f"vcmd.sc.{lay.sc_no_pasid}"] == 2 and unit.counters["vcmd.sc.1"] == 2


@pytest.mark.spec(43)
@pytest.mark.parametrize(("layout", "vccap", "vcmd", "vcrsp"), [
    ("3.1", 0xE00, 0xE10, 0xE20),
    ("3.3", 0xE30, 0xE00, 0xE10),
])
def test_b43_register_offsets(layout: str, vccap: int, vcmd: int, vcrsp: int) -> None:
    v = Vcmd(layout)
    regs = v.unit.regs
    assert (regs.offset_of("VCCAP"), regs.offset_of("VCMD"), regs.offset_of("VCRSP")) == (
        vccap, vcmd, vcrsp)
    assert regs.read(vccap) == 1  # PAS
    shift = 8 if layout == "3.1" else 16
    regs.write(vcmd, VCMD_CMD_ALLOC)
    assert regs.read(vcrsp) == 1 << shift
    regs.write(vcmd, (1 << shift) | VCMD_CMD_FREE)
    assert regs.read(vcrsp) == 0 and 1 not in v.env.core


def test_no_vcmd_registers_without_vcs(env: Env) -> None:
    drv = env.build()
    assert "VCMD" not in drv.units["dmar0"].regs
    vm, vm_set = env.vm()
    with pytest.raises(IoasidError):
        drv.vcmd_attach("dmar0", vm_set, vm)
