"""Quirk 16 of ``docs/profiles.md`` (``vtd_quirks``): what ``v4`` reproduces and ``fixed``
corrects, beyond the BIND payload and the notifier priority checked in test_lifecycle."""

from __future__ import annotations

from errno import EINVAL, ENODEV

import pytest

from ioasidsd.model import IoasidError
from ioasidsd.model.core import INVALID_IOASID
from ioasidsd.vtd.hardware import descriptors as d

from .conftest import DEV_A, Env

ADDR = 0x7F0000002000


@pytest.mark.parametrize("profile", ["fixed", "v4"])
def test_attach_spid_failure(profile: str) -> None:
    env = Env(profile)
    drv = env.build()
    vm, vm_set = env.vm()
    core = env.core
    first = core.alloc(vm_set, 1, 100, task=vm)
    second = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, first, 55, DEV_A)
    if profile == "v4":
        drv.bind_gpasid(vm, second, 55, DEV_A)  # the duplicate SPID is ignored
        assert core.data(second).spid == INVALID_IOASID and core.data(second).refs == 2
        assert any(e["msg"] == "attach_spid failed (ignored)"
                   for e in drv.trace.events if e.kind == "warn")
        drv.unbind_gpasid(vm, second, DEV_A)  # detach_spid then fails, logged only
        assert any(e["msg"] == "detach_spid failed" for e in drv.trace.events
                   if e.kind == "warn")
        assert core.data(second).refs == 1
    else:
        with pytest.raises(IoasidError) as err:
            drv.bind_gpasid(vm, second, 55, DEV_A)
        assert err.value.errno == EINVAL
        data = core.data(second)
        assert (data.refs, data.private, data.spid) == (1, None, INVALID_IOASID)
        entry = drv.info(DEV_A).table.read_entry(second)
        assert entry is None or not entry.p


@pytest.mark.parametrize("profile", ["fixed", "v4"])
def test_guest_page_requests_and_responses(profile: str) -> None:
    env = Env(profile)
    drv = env.build()
    vm, vm_set = env.vm()
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 3, DEV_A)
    dev = drv.info(DEV_A).device
    drv.page_request(DEV_A, hpasid, ADDR, prg_index=2)
    if profile == "v4":
        # The lookup only searches the host set: the guest's request is refused at once,
        # and a guest's response cannot be delivered.
        assert [r.code for r in dev.responses] == [d.QI_RESP_INVALID]
        with pytest.raises(IoasidError) as err:
            drv.page_response(vm, DEV_A, hpasid, 2)
        assert err.value.errno == ENODEV
    else:
        assert not dev.responses and dev.pending_groups  # reported to the guest
        drv.page_response(vm, DEV_A, hpasid, 2)
        assert [r.code for r in dev.responses] == [d.QI_RESP_SUCCESS]


def test_native_page_requests_work_in_both_profiles(env_v4: Env) -> None:
    drv = env_v4.build()
    proc = env_v4.process()
    pasid = drv.bind_mm(proc, DEV_A)
    drv.page_request(DEV_A, pasid, ADDR, prg_index=1)
    assert [r.code for r in drv.info(DEV_A).device.responses] == [d.QI_RESP_SUCCESS]
