"""VT-d state across a restart, on the model with the daemon's store: bindings are saved as their
records, rebuilt at boot without touching the restored counts, the host set and capacity are
adopted, and the FREE cleanup's changes reach the store (nothing torn down comes back)."""

from __future__ import annotations

from errno import EBUSY, EINVAL, ENODEV

import pytest

from ioasidsd.model import (
    IoasidCore,
    IoasidError,
    IoasidsController,
    IoasidSetType,
    IoasidState,
    profile,
)
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.core import INVALID_IOASID
from ioasidsd.model.snapshot import SnapshotError, dump, load, plain_private
from ioasidsd.vtd import build_driver
from ioasidsd.vtd.hardware.pasid_table import Pgtt

from .hosts import DEV_A, DEV_B, Host, entry_fields

GPGD = 0x7F000


def bound_vm(h: Host, pid: int = 4242):
    """A VMM in /vm (limit 10) with /dev/ioasid open, two IOASIDs, the first bound on both
    devices as guest PASID 101 (DEV_B with its own guest page table)."""
    h.vmm(pid, "/vm")
    f = h.open(pid)
    first, second = h.alloc(f), h.alloc(f)
    h.bind(f, first, DEV_A, 101)
    h.bind(f, first, DEV_B, 101, gpgd=GPGD)
    return f, first, second


def test_a_binding_is_saved_as_its_record(host: Host) -> None:
    f, h1, h2 = bound_vm(host)
    record = {
        "kind": "vtd.guest", "pasid": h1, "gpasid": 101, "pgd": (h1 + 1) << 12,
        "owner": {"pid": 4242, "start_time": 4242.0}, "free_seen": False,
        "devices": [
            {"bdf": DEV_A, "gpgd": (h1 + 1) << 12, "addr_width": 48, "sre": False,
             "eafe": False},
            {"bdf": DEV_B, "gpgd": GPGD, "addr_width": 48, "sre": False, "eafe": False},
        ],
    }
    saved = {rec["id"]: rec for rec in host.saved()["ioasids"]}
    assert saved[h1]["private"] == record and saved[h1]["refs"] == 2
    assert saved[h2]["private"] is None and saved[h2]["refs"] == 1
    host.unbind(f, h1, DEV_B)
    del record["devices"][1]
    assert {r["id"]: r for r in host.saved()["ioasids"]}[h1]["private"] == record


def test_objects_describe_themselves_to_snapshots() -> None:
    class Described:
        def snapshot_record(self):
            return {"n": [1, 2]}

    assert plain_private({"a": Described()}) == {"a": {"n": [1, 2]}}
    with pytest.raises(SnapshotError, match="not JSON data"):
        plain_private(object())


def test_restart_rebuilds_the_bindings_and_changes_no_count(host: Host) -> None:
    """After a kill -9 the model is exactly what was saved (references, SPIDs, charges,
    capacity, one host set) and the PASID entries are programmed again as the binds did."""
    _, h1, h2 = bound_vm(host)
    before = host.dump()
    entries = {bdf: entry_fields(host.driver, bdf, h1) for bdf in (DEV_A, DEV_B)}
    assert entries[DEV_B]["flptptr"] == GPGD and entries[DEV_A]["pgtt"] == Pgtt.NESTED

    again = host.restart()
    after = again.dump()
    private = {r["id"]: r["private"] for r in after["ioasids"]}
    assert after == before and private[h1]["kind"] == "vtd.guest"
    assert [s["type"] for s in after["sets"]].count(IoasidSetType.NULL) == 1
    assert again.driver.host_set.id == host.driver.host_set.id and again.driver.restored == 1
    assert {bdf: entry_fields(again.driver, bdf, h1) for bdf in (DEV_A, DEV_B)} == entries
    assert not again.present(DEV_A, h2)
    svm = again.core.data(h1).private
    assert svm is again.driver.guest[h1] and [d.bdf for d in svm.devs] == [DEV_A, DEV_B]
    assert svm.owner is again.system.cgroups.processes[4242]
    assert again.driver.snapshot()["totals"]["present_by_pgtt"] == {"nested": 2}
    assert again.restart().dump() == before  # and a second restart adopts the same again


def test_after_a_restart_the_vmm_unbinds_and_frees(fixed_host: Host) -> None:
    """fixed: the VMM reconnects (adopting its set), a second bind of a bound device is EBUSY,
    unbinding both devices drops the driver's reference and the SPID, FREE reclaims at once."""
    _, h1, _ = bound_vm(fixed_host)
    h = fixed_host.restart()
    f = h.open(4242)
    with pytest.raises(IoasidError) as busy:
        h.bind(f, h1, DEV_A, 101)
    assert busy.value.errno == EBUSY
    h.unbind(f, h1, DEV_A)
    assert h.core.data(h1).refs == 2 and not h.present(DEV_A, h1) and h.present(DEV_B, h1)
    h.unbind(f, h1, DEV_B)
    data = h.core.data(h1)
    assert (data.refs, data.spid, data.private) == (1, INVALID_IOASID, None)
    h.free(f, h1)
    assert h1 not in h.core and h.system.cgroups.lookup("/vm").counter == 1
    assert h1 not in {r["id"] for r in h.saved()["ioasids"]}
    assert h.restart().dump() == h.dump()


def test_the_free_cleanup_reaches_the_store(host: Host) -> None:
    """Free before unbind: FREE_PENDING is saved with the binding; the cleanup on the work
    queue then tears down, reclaims and uncharges, and that is saved too, so a restart does
    not resurrect the PASID. (v4 uncharges nothing from the worker: the saved charge stays.)"""
    f, h1, _ = bound_vm(host)
    host.free(f, h1)
    pending = {r["id"]: r for r in host.saved()["ioasids"]}[h1]
    assert pending["state"] == IoasidState.FREE_PENDING and pending["private"]["free_seen"]
    assert host.core.wq.run_pending() == 1
    assert h1 not in host.core and not host.present(DEV_A, h1) and not host.present(DEV_B, h1)
    charge = 1 if host.core.knobs.uncharge_target == "current" else 0
    saved = host.saved()
    assert h1 not in {r["id"] for r in saved["ioasids"]}
    assert [c["counter"] for c in saved["cgroups"] if c["name"] == "vm"] == [1 + charge]
    again = host.restart()
    assert again.dump() == host.dump() and again.driver.restored == 0
    assert h1 not in again.core and again.driver.snapshot()["bindings"] == []


def test_a_cleanup_the_restart_interrupted_runs_after_it(host: Host) -> None:
    """kill -9 after FREE, before the queued cleanup ran (queued work is not saved): the
    restarted driver rebuilds the binding and queues its cleanup again, which then completes
    and is saved."""
    f, h1, _ = bound_vm(host)
    host.free(f, h1)  # the cleanup stays queued (manual mode) and the daemon dies
    again = host.restart()
    assert again.core.data(h1).state == IoasidState.FREE_PENDING
    assert again.present(DEV_A, h1) and again.present(DEV_B, h1)
    assert len(again.core.wq) == 1 and again.driver.counters["restore.cleanups_queued"] == 1
    assert again.core.wq.run_pending() == 1
    assert h1 not in again.core and not again.present(DEV_A, h1)
    assert again.driver.counters["ioasid.cleanups"] == 1
    assert h1 not in {r["id"] for r in again.saved()["ioasids"]}
    assert len(host.core.wq) == 1  # the dead run's queue never ran


def test_a_native_binding_comes_back(fixed_host: Host) -> None:
    """Native SVA (no face of the daemon makes one, an embedding program may): the host-set
    PASID, its first-level entries and bind counts are rebuilt for the same tracked process."""
    proc = fixed_host.vmm(777, "/n")
    driver = fixed_host.driver
    with fixed_host.system.lock:
        pasid = driver.bind_mm(proc, DEV_A, supervisor=True)
        driver.bind_mm(proc, DEV_A)
        driver.bind_mm(proc, DEV_B)
        fixed_host.system.on_change(Change(ChangeKind.VTD_BOOT, sets=(driver.host_set.id,)))
    fields = entry_fields(driver, DEV_A, pasid)
    assert fields["sre"] and fields["pgtt"] == Pgtt.FL_ONLY
    h = fixed_host.restart()
    assert h.dump() == fixed_host.dump()
    svm = h.driver.native[h.system.cgroups.processes[777]]
    assert [(d.bdf, d.users) for d in svm.devs] == [(DEV_A, 2), (DEV_B, 1)]
    assert entry_fields(h.driver, DEV_A, pasid) == fields
    proc = h.system.cgroups.processes[777]
    for bdf in (DEV_A, DEV_A, DEV_B):
        h.driver.unbind_mm(proc, bdf)
    assert pasid not in h.core and not h.present(DEV_A, pasid)


def test_an_old_state_without_a_host_set_gets_one_once(tmp_path) -> None:
    """A state saved before the daemon ran VT-d has no host set: the first boot over it makes
    one (and saves it); later boots adopt it."""
    from ioasidsd.store.state import Store
    from ioasidsd.system import System

    store = Store.open(tmp_path / "state")
    store.bind(System(on_change=store.apply))
    first = Host(tmp_path / "state")
    assert [s.type for s in first.core.sets] == [IoasidSetType.NULL]
    assert first.saved()["sets"][0]["quota"] == 32768
    assert first.core.capacity_avail == first.core.capacity - 32768
    assert first.restart().dump() == first.dump()


def test_a_restart_refuses_bindings_the_configuration_cannot_hold(fixed_host: Host) -> None:
    _, h1, _ = bound_vm(fixed_host)
    only_a = {"device": [{"bdf": DEV_A, "unit": "dmar0"}]}
    with pytest.raises(IoasidError) as gone:
        fixed_host.restart(vtd=only_a)
    assert gone.value.errno == ENODEV
    assert f"IOASID {h1}" in gone.value.strerror and DEV_B in gone.value.strerror
    no_nesting = {"unit": [{"name": "dmar0", "nest": False}],
                  "device": [{"bdf": DEV_A}, {"bdf": DEV_B, "pri": False}]}
    with pytest.raises(IoasidError) as refused:
        fixed_host.restart(vtd=no_nesting)
    assert refused.value.errno == EINVAL and "NEST" in refused.value.strerror
    assert fixed_host.restart().driver.restored == 1  # the state itself is untouched


@pytest.mark.parametrize(("change", "errno", "words"), [
    (lambda r: r.update(pasid=r["pasid"] + 1), EINVAL, "records PASID"),
    (lambda r: r.update(devices=[]), EINVAL, "no devices"),
    (lambda r: r["devices"].append(dict(r["devices"][0])), EINVAL, "listed twice"),
    (lambda r: r["devices"][0].update(addr_width="48"), EINVAL, "malformed device"),
    (lambda r: r["owner"].update(pid=1), EINVAL, "does not own"),
    (lambda r: r.update(kind="vtd.native"), EINVAL, "malformed device"),
])
def test_a_malformed_record_is_refused_by_name(fixed_host: Host, change, errno, words) -> None:
    _, h1, _ = bound_vm(fixed_host)
    snap = fixed_host.dump()
    change(next(r for r in snap["ioasids"] if r["id"] == h1)["private"])
    core = IoasidCore(profile("fixed"))
    IoasidsController(core)
    load(snap, core)
    with pytest.raises(IoasidError) as info:
        build_driver(core, adopt=True)
    assert info.value.errno == errno and words in info.value.strerror
    assert info.value.strerror.startswith(f"IOASID {h1}: ")


def test_boot_installs_the_given_capacity_within_the_pasid_space() -> None:
    """``capacity`` replaces the units' PASID space, never exceeds it; a host set that does
    not fit turns scalable mode off (init_dmars); without scalable mode VT-d installs nothing
    but a given capacity still is."""
    core = IoasidCore()
    driver = build_driver(core, capacity=5000)  # the host set's 32768 do not fit
    assert (core.capacity, core.capacity_avail) == (5000, 5000)
    assert driver.host_set is None and not driver.sm_enabled
    assert [e["msg"] for e in driver.trace.last(10, kinds=("warn",))] == [
        "host PASID set not created: scalable mode disabled"]
    small = {"unit": [{"name": "dmar0", "pss": 7}], "host_quota": 16}
    core = IoasidCore()
    with pytest.raises(IoasidError) as over:
        build_driver(core, small, capacity=257)
    assert over.value.errno == EINVAL and core.capacity == 1 << 20
    driver = build_driver(core, small)
    assert (core.capacity, core.capacity_avail, driver.host_set.quota) == (256, 240, 16)
    off = {"unit": [{"name": "dmar0", "smts": False}]}
    core = IoasidCore()
    driver = build_driver(core, off, capacity=3)
    assert core.capacity == 3 and not driver.sm_enabled and driver.host_set is None
    core = IoasidCore()
    build_driver(core, off)
    assert core.capacity == 1 << 20 and core.capacity_avail == 1 << 20


def test_dump_of_a_bound_core_is_json(fixed_host: Host) -> None:
    import json

    bound_vm(fixed_host)
    with fixed_host.system.lock:
        snap = dump(fixed_host.core)
    assert json.loads(json.dumps(snap)) == snap
