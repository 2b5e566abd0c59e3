"""The change the VT-d driver reports on its own, the FREE cleanup on the work queue, is a typed
record of kind ``vtd_cleanup``."""

from __future__ import annotations

from ioasidsd.model.changes import Change, ChangeKind

from .hosts import DEV_A, Host


def test_the_cleanup_reports_a_vtd_cleanup_change_naming_its_pasid_and_cgroup(
        host: Host) -> None:
    host.vmm(99, "/vm")
    f = host.open(99)
    bound = host.alloc(f)
    host.bind(f, bound, DEV_A, 3)
    seen: list[Change] = []
    store = host.system.on_change

    def record(change: Change) -> None:
        seen.append(change)
        store(change)

    host.system.on_change = record
    host.free(f, bound)  # bound: FREE_PENDING until the cleanup runs
    assert [c.kind for c in seen] == [ChangeKind.IOASID]
    assert host.core.wq.run_pending() == 1
    cleanup = seen[-1]
    assert cleanup.kind is ChangeKind.VTD_CLEANUP and cleanup.ids == (bound,)
    assert cleanup.cgroups == (host.system.cgroups.lookup("/vm"),)
    assert bound not in host.core and host.saved()["ioasids"] == []
