"""A guest's life cycle (allocate, bind, unbind, free), with the VT-d driver: reference
counts and notifications at each step, for the normal path and for "free before unbind", in
both profiles."""

from __future__ import annotations

from errno import ENOENT
from typing import Any

import pytest

from ioasidsd.model import (
    NOTIFY_DONE,
    IoasidError,
    IoasidNotify,
    IoasidPrio,
    IoasidState,
    NotifierBlock,
)
from ioasidsd.model.core import INVALID_IOASID
from ioasidsd.vtd.driver.svm import Svm

from .conftest import DEV_A, DEV_B, Env


class Kvm:
    """A subscriber registered by mm before the set exists (KVM, out of the series): it
    records each event with the reference count and state it saw."""

    def __init__(self, env: Env, mm: Any) -> None:
        self.env = env
        self.seen: list[tuple[str, int, int, bool, int, str]] = []
        self.nb = NotifierBlock(self.callback, IoasidPrio.CPU, "kvm")
        env.core.register_notifier_mm(mm, self.nb)

    def callback(self, nb: NotifierBlock, event: IoasidNotify, args: Any) -> int:
        data = self.env.core.data(args.id)
        self.seen.append((event.name, args.id, args.spid, isinstance(args.pdata, Svm),
                          data.refs, data.state.name))
        assert self.env.driver is not None
        self.env.driver.trace.emit("kvm", event=event.name, pasid=args.id)
        return NOTIFY_DONE

    def events(self) -> list[str]:
        return [s[0] for s in self.seen]


def start(env: Env) -> tuple[Any, Any, Kvm, Any, int]:
    drv = env.build()
    vm = env.process()
    vms = env.cgroups.mkdir(env.cgroups.root, "vm")
    env.controller.set_max(vms, 4)
    env.cgroups.attach(vm, vms)
    kvm = Kvm(env, vm.mm)  # step 2: before the set exists
    assert drv.nb in env.core.notifier  # VT-d registered on the global chain at boot
    expected_prio = IoasidPrio.LAST if env.core.knobs.vtd_quirks else IoasidPrio.IOMMU
    assert drv.nb.priority == expected_prio
    vm_set = env.core.set_alloc(vm.mm, 0, 2)  # step 1: QEMU opens /dev/ioasid (MM set)
    assert vm_set.nr_ioasids == 0 and kvm.nb in vm_set.nh
    hpasid = env.core.alloc(vm_set, 1, (1 << 20) - 1, task=vm)  # step 3
    data = env.core.data(hpasid)
    assert (data.refs, data.state) == (1, IoasidState.IDLE)
    assert kvm.seen == [("ALLOC", hpasid, INVALID_IOASID, False, 1, "IDLE")]
    assert vms.counter == 1
    return drv, vm, kvm, vm_set, hpasid


def bind(env: Env, drv: Any, vm: Any, kvm: Kvm, hpasid: int) -> None:
    drv.bind_gpasid(vm, hpasid, 101, DEV_A)  # step 4
    drv.bind_gpasid(vm, hpasid, 101, DEV_B)  # a second device: no second BIND
    quirks = env.core.knobs.vtd_quirks
    # The BIND comes after the generic layer's reference; in v4 before the private data.
    assert kvm.seen[1:] == [("BIND", hpasid, 101, not quirks, 2, "ACTIVE" if not quirks
                             else "IDLE")]
    data = env.core.data(hpasid)
    assert data.refs == 2 and data.spid == 101
    assert isinstance(env.core.find(None, hpasid), Svm)


@pytest.mark.parametrize("profile", ["fixed", "v4"])
def test_lifecycle_normal_path(profile: str) -> None:
    env = Env(profile)
    drv, vm, kvm, vm_set, hpasid = start(env)
    vms = vm.cgroup
    bind(env, drv, vm, kvm, hpasid)
    drv.unbind_gpasid(vm, hpasid, DEV_B)
    assert env.core.data(hpasid).refs == 2 and kvm.events() == ["ALLOC", "BIND"]
    drv.unbind_gpasid(vm, hpasid, DEV_A)  # step 6: the last device
    # UNBIND came while the generic layer and VT-d still held theirs: 1 + 1 + 1.
    assert kvm.seen[-1] == ("UNBIND", hpasid, 101, True, 3,
                            "IDLE" if env.core.knobs.vtd_quirks else "ACTIVE")
    data = env.core.data(hpasid)
    assert data.refs == 1 and data.spid == INVALID_IOASID
    assert env.core.find(None, hpasid) is None
    env.core.free(vm_set, hpasid, task=vm)  # IOASID_REQUEST_FREE: refs 0, no FREE event
    assert hpasid not in env.core
    assert kvm.events() == ["ALLOC", "BIND", "UNBIND"]
    assert len(env.core.wq) == 0 and drv.counters["ioasid.free_seen"] == 0
    assert vms.counter == 0


@pytest.mark.parametrize("profile", ["fixed", "v4"])
def test_lifecycle_free_before_unbind(profile: str) -> None:
    env = Env(profile)
    drv, vm, kvm, vm_set, hpasid = start(env)
    vms = vm.cgroup
    bind(env, drv, vm, kvm, hpasid)
    seq = drv.trace.seq
    env.core.free(vm_set, hpasid, task=vm)  # step 7: refs 2 -> FREE_PENDING, refs 1
    data = env.core.data(hpasid)
    assert (data.refs, data.state) == (1, IoasidState.FREE_PENDING)
    assert kvm.seen[-1] == ("FREE", hpasid, 101, True, 1, "FREE_PENDING")
    order = [(e.kind, e.get("what"), e.get("event")) for e in
             drv.trace.since(seq, ["ioasid_state", "kvm"])]
    assert order == [("ioasid_state", "FREE seen", None), ("kvm", None, "FREE")]  # global first
    assert len(env.core.wq) == 1  # VT-d queued its work; nothing torn down yet
    assert drv.info(DEV_A).table.read_entry(hpasid).p
    env.core.wq.run_pending()  # the work: teardown (both devices), UNBIND, put
    assert kvm.seen[-1] == ("UNBIND", hpasid, 101, True, 1, "FREE_PENDING")
    assert hpasid not in env.core  # refs 0: reclaimed by the worker
    for bdf in (DEV_A, DEV_B):
        assert not drv.info(bdf).table.read_entry(hpasid).p
    assert kvm.events() == ["ALLOC", "BIND", "FREE", "UNBIND"]
    # The worker has no cgroup: fixed uncharges the cgroup it charged, v4 uncharges the
    # worker's (root) and leaks the charge (quirk 7 of docs/profiles.md).
    assert vms.counter == (1 if profile == "v4" else 0)
    # A late unbind from the VMM finds nothing to do and drops nothing.
    with pytest.raises(IoasidError) as err:
        drv.unbind_gpasid(vm, hpasid, DEV_A)
    assert err.value.errno == ENOENT  # reclaimed
    assert drv.counters["ioasid.cleanups"] == 1
