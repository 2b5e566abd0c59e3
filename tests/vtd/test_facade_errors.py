"""Bad input to the driver facade gets a clear errno and changes nothing."""

from __future__ import annotations

from errno import EBUSY, EINVAL, ENODEV

import pytest

from ioasidsd.model import NOTIFY_DONE, IoasidError, NotifierBlock
from ioasidsd.model.core import INVALID_IOASID

from .conftest import DEV_A, Env


def refused(errno: int, op) -> None:
    with pytest.raises(IoasidError) as err:
        op()
    assert err.value.errno == errno, err.value


def test_native_bind_refuses_bad_input(drv, env: Env) -> None:
    proc = env.process()
    refused(EINVAL, lambda: drv.bind_mm(None, DEV_A))
    refused(EINVAL, lambda: drv.bind_mm(proc, "zz:00"))
    refused(ENODEV, lambda: drv.bind_mm(proc, "0000:09:00.0"))
    assert not drv.native and drv.host_set.nr_ioasids == 0


@pytest.mark.parametrize("kwargs", [
    {"addr_width": 39},
    {"addr_width": 57},  # the default unit has no 5-level first level
    {"gpgd": 0x1234},  # not a page
    {"gpgd": 1 << 48},  # beyond the domain
    {"gpgd": "0x1000"},
    {"eafe": True},  # no ECAP.EAFS by default
])
def test_guest_bind_refuses_bad_requests_before_any_change(env: Env, kwargs: dict) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    seen = []
    env.core.register_notifier(vm_set, NotifierBlock(
        lambda nb, event, args: seen.append(event.name) or NOTIFY_DONE, name="watch"))
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    seq = drv.trace.seq
    refused(EINVAL, lambda: drv.bind_gpasid(vm, hpasid, 5, DEV_A, **kwargs))
    data = env.core.data(hpasid)
    assert (data.refs, data.private, data.spid) == (1, None, INVALID_IOASID)
    assert seen == ["ALLOC"]  # no BIND, no UNBIND
    assert drv.trace.since(seq, ["pasid_entry_set", "page_alloc"]) == []


def test_guest_bind_rolls_back_when_the_entry_is_taken(env: Env) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    info = drv.info(DEV_A)
    info.iommu.setup_pass_through(info, hpasid)  # taken behind the driver's back
    pages = drv.mem.live.copy()
    refused(EBUSY, lambda: drv.bind_gpasid(vm, hpasid, 5, DEV_A))
    data = env.core.data(hpasid)
    assert (data.refs, data.private, data.spid) == (1, None, INVALID_IOASID)
    assert +drv.mem.live == +pages and not drv.domains and not drv.guest  # + drops zeros


def test_page_requests_dma_and_responses_refuse_bad_input(env: Env) -> None:
    drv = env.build()
    pasid = drv.bind_mm(env.process(), DEV_A)
    refused(EINVAL, lambda: drv.page_request(DEV_A, pasid, "0x1000"))
    refused(EINVAL, lambda: drv.page_request(DEV_A, pasid, 0x1000, prg_index=600))
    refused(EINVAL, lambda: drv.page_request(DEV_A, pasid, 0x1000, private=(1,)))
    refused(EINVAL, lambda: drv.page_request(DEV_A, 1 << 20, 0x1000))
    refused(EINVAL, lambda: drv.dma(DEV_A, pasid, -1))
    refused(EINVAL, lambda: drv.dma(DEV_A, -5, 0x1000))
    refused(EINVAL, lambda: drv.page_response(env.process(), DEV_A, pasid, 0, code=7))
    unit = drv.units["dmar0"]
    assert unit.counters["prq.requests"] == 0 and unit.iotlb.stats.misses == 0
