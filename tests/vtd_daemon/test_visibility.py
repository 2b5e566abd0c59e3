"""Who sees what in the ``vtd`` view: a snapshot filtered by owner shows only those owners'
bindings, and nothing else in it (tear-downs, trace events) names another process's PASID,
guest PASID or pid, even for a PASID that an earlier owner used."""

from __future__ import annotations

from typing import Any

from ioasidsd.vtd.driver.vtd_driver import OWNED_EVENT_KINDS

from .hosts import DEV_A, DEV_B, Host


def bindings(snap: dict[str, Any]) -> list[tuple[int, int | None, int]]:
    return [(b["pasid"], b["gpasid"], b["owner_pid"]) for b in snap["bindings"]]


def teardowns(snap: dict[str, Any]) -> list[tuple[str, int]]:
    return [(t["bdf"], t["pasid"]) for unit in snap["units"] for t in unit["teardowns"]]


def test_a_filtered_snapshot_shows_nothing_of_an_earlier_owner_of_the_pasid(
        fixed_host: Host) -> None:
    """Process 99 binds PASID 500 on both devices, unbinds and frees it; process 100 gets the
    same PASID, binds it on both devices and unbinds one. Filtered to process 100, the
    snapshot shows its binding, its own tear-down and trace events, and none of 99's (the
    tear-downs and events about PASID 500 before 100's binding was made)."""
    host = fixed_host
    host.vmm(99, "/vm")
    first = host.open(99)
    pasid = host.alloc(first, 500, 500)
    for dev in (DEV_A, DEV_B):
        host.bind(first, pasid, dev, 3)
    for dev in (DEV_B, DEV_A):
        host.unbind(first, pasid, dev)
    host.free(first, pasid)
    assert pasid not in host.core

    host.vmm(100, "/vm")
    second = host.open(100)
    assert host.alloc(second, 500, 500) == pasid
    for dev in (DEV_A, DEV_B):
        host.bind(second, pasid, dev, 4)
    host.unbind(second, pasid, DEV_B)

    owners = host.driver.owners()
    assert [o.pid for o in owners] == [100]
    full = host.driver.snapshot(events=4096)
    mine = host.driver.snapshot(events=4096, owners=owners)
    assert full["filtered"] is False and mine["filtered"] is True
    assert teardowns(full) == [(DEV_B, pasid), (DEV_A, pasid), (DEV_B, pasid)]
    assert teardowns(mine) == [(DEV_B, pasid)]
    assert bindings(mine) == bindings(full) == [(pasid, 4, 100)]

    earlier = [e for e in full["trace"] if e.get("pid") == 99 or e.get("gpasid") == 3]
    assert earlier  # the full trace does name the earlier owner
    start = max(e["seq"] for e in earlier)
    assert mine["trace"], "the owner's own events are shown"
    assert all(e["kind"] in OWNED_EVENT_KINDS and e["pasid"] == pasid and e["seq"] > start
               for e in mine["trace"])
    assert [e["pid"] for e in mine["trace"] if e["kind"] == "bind"] == [100, 100]
    assert host.driver.snapshot(events=2, owners=owners)["trace"] == mine["trace"][-2:]

    nobody = host.driver.snapshot(events=4096, owners=[])
    assert (nobody["bindings"], teardowns(nobody), nobody["trace"]) == ([], [], [])
    assert nobody["totals"] == full["totals"]
