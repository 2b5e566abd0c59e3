"""Binds and the IOASID life cycle: behaviours B35-B40 of ``docs/behaviours.md``."""

from __future__ import annotations

from errno import EBUSY, EINVAL, ENOENT, EPERM

import pytest

from ioasidsd.model import (
    NOTIFY_DONE,
    IoasidError,
    IoasidNbArgs,
    IoasidNotify,
    IoasidState,
    NotifierBlock,
)
from ioasidsd.vtd import PciDevice
from ioasidsd.vtd.hardware.pasid_table import Pgtt

from .conftest import DEV_A, DEV_B, Env

DEV_C = "0000:05:00.0"


@pytest.mark.spec(35)
def test_b35_native_binds_share_a_pasid(env: Env, labels_after) -> None:
    drv = env.build()
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_A)
    pages = drv.mem.live_total
    mark = labels_after(drv)
    assert drv.bind_mm(proc, DEV_A) == pasid
    assert mark() == [] and drv.mem.live_total == pages
    assert drv.native[proc].find(drv.info(DEV_A).sid).users == 2
    assert drv.bind_mm(proc, DEV_B) == pasid
    a, b = drv.info(DEV_A).table, drv.info(DEV_B).table
    assert a is not b and a.read_entry(pasid).p and b.read_entry(pasid).p
    assert a.entry_addr(pasid, alloc=False) != b.entry_addr(pasid, alloc=False)
    assert env.core.data(pasid).refs == 1 and drv.host_set.nr_ioasids == 1
    drv.unbind_mm(proc, DEV_A)  # one user left
    assert a.read_entry(pasid).p
    drv.unbind_mm(proc, DEV_A)
    assert not a.read_entry(pasid).p and b.read_entry(pasid).p
    drv.unbind_mm(proc, DEV_B)
    assert pasid not in env.core and proc not in drv.native
    with pytest.raises(IoasidError) as err:
        drv.unbind_mm(proc, DEV_B)
    assert err.value.errno == EINVAL


@pytest.mark.spec(36)
def test_b36_guest_bind_checks(env: Env) -> None:
    drv = env.build(devices=[PciDevice(DEV_A), PciDevice(DEV_C, pasid_bits=16)])
    vm, vm_set = env.vm()
    core = env.core
    hpasid = core.alloc(vm_set, 1, 100, task=vm)
    zero = core.alloc(vm_set, 0, 0, task=vm)
    huge = core.alloc(vm_set, 1 << 20, 1 << 20, task=vm)
    for pasid, bdf in ((hpasid, DEV_C), (zero, DEV_A), (huge, DEV_A)):
        with pytest.raises(IoasidError) as err:
            drv.bind_gpasid(vm, pasid, 5, bdf)
        assert err.value.errno == EINVAL
        assert core.data(pasid).refs == 1 and core.find(None, pasid) is None
    drv.bind_gpasid(vm, hpasid, 5, DEV_A)
    with pytest.raises(IoasidError) as err:
        drv.bind_gpasid(vm, hpasid, 5, DEV_A)
    assert err.value.errno == EBUSY
    assert core.data(hpasid).refs == 2
    # The ownership check of the generic layer comes first.
    with pytest.raises(IoasidError) as err:
        drv.bind_gpasid(env.process(), hpasid, 5, DEV_A)
    assert err.value.errno == EPERM
    with pytest.raises(IoasidError) as err:
        drv.bind_gpasid(vm, 999, 5, DEV_A)
    assert err.value.errno == ENOENT


@pytest.mark.spec(37)
def test_b37_unbind_keeps_the_pasid_but_drops_data_and_reference(env: Env) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    core = env.core
    hpasid = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 42, DEV_A)
    data = core.data(hpasid)
    assert data.refs == 2 and data.spid == 42 and core.find(None, hpasid) is not None
    drv.unbind_gpasid(vm, hpasid, DEV_A)
    data = core.data(hpasid)
    assert hpasid in core and data.state != IoasidState.FREE_PENDING
    assert data.refs == 1 and core.find(None, hpasid) is None
    assert core.find_by_spid(vm_set, 42) == 0xFFFFFFFF  # the SPID is gone too
    assert not drv.info(DEV_A).table.read_entry(hpasid).p


def _set_event_recorder(drv, vm_set, env: Env) -> None:
    def on_set_event(nb: NotifierBlock, event: IoasidNotify, args: IoasidNbArgs) -> int:
        if event in (IoasidNotify.FREE, IoasidNotify.UNBIND):
                drv.trace.emit("test_set_event", event=event.name, pasid=args.id,
                           spid=args.spid, pdata=args.pdata is not None)
        return NOTIFY_DONE

    env.core.register_notifier(vm_set, NotifierBlock(on_set_event, name="recorder"))


@pytest.mark.spec(38)
def test_b38_free_with_two_bound_devices(env: Env) -> None:
    drv = env.build(devices=[PciDevice(DEV_A), PciDevice(DEV_C)])
    vm, vm_set = env.vm()
    core = env.core
    hpasid = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 11, DEV_A)
    drv.bind_gpasid(vm, hpasid, 11, DEV_C)
    assert core.data(hpasid).refs == 2
    _set_event_recorder(drv, vm_set, env)
    seq = drv.trace.seq
    core.free(vm_set, hpasid, task=vm)
    assert core.data(hpasid).state == IoasidState.FREE_PENDING
    assert core.alloc(vm_set, hpasid, hpasid + 1, task=vm) == hpasid + 1  # not reusable yet
    assert drv.info(DEV_A).table.read_entry(hpasid).p  # nothing torn down in the notifier
    assert len(core.wq) == 1
    assert core.wq.run_pending() == 1
    wanted = ["pasid_entry_clear", "drain_begin", "drain_end", "test_set_event",
              "ioasid_state"]
    steps = [(e.kind, e.get("bdf"), e.get("event"), e.get("what"))
             for e in drv.trace.since(seq, wanted)]
    assert steps == [
        ("ioasid_state", None, None, "FREE seen"),  # the global chain first
        ("test_set_event", None, "FREE", None),  # then the set's
        ("ioasid_state", None, None, "cleanup begins"),
        ("pasid_entry_clear", "0000:03:00.0", None, None),
        ("drain_begin", "0000:03:00.0", None, None),
        ("drain_end", "0000:03:00.0", None, None),
        ("pasid_entry_clear", "0000:05:00.0", None, None),
        ("drain_begin", "0000:05:00.0", None, None),
        ("drain_end", "0000:05:00.0", None, None),
        ("test_set_event", None, "UNBIND", None),
        ("ioasid_state", None, None, "reference dropped"),
    ]
    assert hpasid not in core
    for bdf in (DEV_A, DEV_C):
        entry = drv.info(bdf).table.read_entry(hpasid)
        assert not entry.p and entry.fpd  # torn down with fault_ignore
    assert core.alloc(vm_set, hpasid, hpasid, task=vm) == hpasid  # reusable now
    assert drv.counters["ioasid.cleanups"] == 1


@pytest.mark.spec(39)
def test_b39_free_after_unbind_and_unbind_after_free(env: Env, labels_after) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    core = env.core
    kvm = NotifierBlock(lambda nb, ev, args: NOTIFY_DONE, name="kvm")
    core.register_notifier(vm_set, kvm)
    # FREE after every unbind: KVM still holds a reference, so FREE is emitted, pdata NULL.
    first = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, first, 1, DEV_A)
    core.get(vm_set, first)  # KVM's reference
    drv.unbind_gpasid(vm, first, DEV_A)
    mark = labels_after(drv)
    core.free(vm_set, first, task=vm)
    assert drv.counters["ioasid.free_unbound"] == 1 and len(core.wq) == 0
    assert mark() == []
    # Unbind after a FREE-driven cleanup: refused while pending, nothing dropped twice.
    second = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, second, 2, DEV_A)
    core.get(vm_set, second)  # KVM's reference
    core.free(vm_set, second, task=vm)
    core.wq.run_pending()
    assert core.data(second).refs == 1 and core.find(None, second) is None
    with pytest.raises(IoasidError) as err:
        drv.unbind_gpasid(vm, second, DEV_A)
    assert err.value.errno == EBUSY and core.data(second).refs == 1
    core.put(vm_set, second)  # KVM lets go: reclaimed
    with pytest.raises(IoasidError) as err:
        drv.unbind_gpasid(vm, second, DEV_A)
    assert err.value.errno == ENOENT
    # A second unbind of a still-allocated PASID is a no-op in the driver.
    third = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, third, 3, DEV_A)
    drv.unbind_gpasid(vm, third, DEV_A)
    drv.unbind_gpasid(vm, third, DEV_A)
    assert core.data(third).refs == 1 and drv.counters["unbind.noop"] == 1


@pytest.mark.spec(40)
def test_b40_cleanup_queued_twice_runs_once(env: Env) -> None:
    drv = env.build()
    vm, vm_set = env.vm()
    core = env.core
    hpasid = core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 9, DEV_A)
    core.free(vm_set, hpasid, task=vm)
    assert drv.counters["ioasid.cleanup_queued"] == 1
    data = core.data(hpasid)
    args = IoasidNbArgs(hpasid, data.spid, data.set, data.private)
    with core.lock:  # as from a second FREE emission, under the core's lock
        drv._pasid_status_change(drv.nb, IoasidNotify.FREE, args)
    assert drv.counters["ioasid.cleanup_already_queued"] == 1
    assert any(e["msg"] == "Cleanup work already queued"
               for e in drv.trace.events if e.kind == "warn")
    seq = drv.trace.seq
    assert core.wq.run_pending() == 1
    assert len(drv.trace.since(seq, ["pasid_entry_clear"])) == 1
    assert hpasid not in core


def test_native_bind_failure_releases_the_new_pasid(env: Env) -> None:
    drv = env.build()
    proc = env.process()
    info = drv.info(DEV_A)
    info.iommu.setup_pass_through(info, 1)  # PASID 1's entry is taken behind the driver's back
    with pytest.raises(IoasidError) as err:
        drv.bind_mm(proc, DEV_A)
    assert err.value.errno == EBUSY
    assert drv.host_set.nr_ioasids == 0 and proc not in drv.native
    assert info.table.read_entry(1).pgtt == Pgtt.PT


def test_process_exit_releases_native_and_guest_bindings(env: Env) -> None:
    drv = env.build()
    proc = env.process()
    pasid = drv.bind_mm(proc, DEV_A)
    vm, vm_set = env.vm()
    hpasid = env.core.alloc(vm_set, 1, 100, task=vm)
    drv.bind_gpasid(vm, hpasid, 3, DEV_B)
    env.cgroups.exit(proc)
    env.cgroups.exit(vm)
    assert pasid not in env.core and not drv.native
    assert not drv.guest and env.core.find(None, hpasid) is None
    entry = drv.info(DEV_A).table.read_entry(pasid)
    assert not entry.p and entry.fpd  # mm release left FPD; the unbind found it not present
