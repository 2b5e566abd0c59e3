"""A VMM's exit with IOASIDs still bound, as the daemon sees it: the exit releases its
``/dev/ioasid`` first (every IOASID freed: the bound ones FREE_PENDING), then the VT-d driver's
exit hook, which leaves those to the cleanup their FREE queued instead of failing to unbind
them; the cleanup's changes are saved."""

from __future__ import annotations

from ioasidsd.model import IoasidState

from .hosts import DEV_A, DEV_B, Host


def test_exit_with_bound_ioasids_is_torn_down_by_the_cleanup(host: Host) -> None:
    host.vmm(99, "/vm")
    f = host.open(99)
    bound, spare = host.alloc(f), host.alloc(f)
    host.bind(f, bound, DEV_A, 3)
    host.bind(f, bound, DEV_B, 3)
    host.system.exit(99)
    assert host.core.data(bound).state == IoasidState.FREE_PENDING and spare not in host.core
    counters = host.driver.counters
    assert counters["exit.left_to_cleanup"] == 1 and counters["warn"] == 0
    assert host.core.wq.run_pending() == 1
    assert bound not in host.core and not host.present(DEV_A, bound)
    assert host.driver.snapshot()["bindings"] == [] and counters["warn"] == 0
    assert host.saved()["ioasids"] == []
    assert host.restart().dump() == host.dump()


def test_the_cleanup_of_an_exited_vmm_survives_a_restart(host: Host) -> None:
    """kill -9 between the VMM's exit and its bindings' cleanup: the saved set outlives its
    (dead) owner, the restarted driver rebuilds the binding for that owner and runs the cleanup
    again; then nothing is left, in the model or the database."""
    host.vmm(99, "/vm")
    f = host.open(99)
    bound = host.alloc(f)
    host.bind(f, bound, DEV_A, 3)
    host.system.exit(99)
    host.processes.live.pop(99)
    again = host.restart()
    owner = again.core.data(bound).set.token
    assert owner.pid == 99 and not owner.alive and 99 not in again.system.cgroups.processes
    assert again.driver.guest[bound].owner is owner and again.present(DEV_A, bound)
    assert again.core.wq.run_pending() == 1
    assert len(again.core) == 0 and not again.present(DEV_A, bound)
    assert again.saved()["ioasids"] == [] and again.saved()["sets"] == [
        s for s in again.saved()["sets"] if s["token"] is None]
