"""What a real unprivileged user sees of ``ioasidctl vtd``: only its own processes' bindings,
and nothing in the reply that names root's PASID, guest PASID or pid; root sees everything.

It acts as the ``tenant`` user of ``tests/conftest.py`` against a real daemon run by root, with
a real process of each binding a PASID through ``/dev/ioasid``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from daemon.daemons import BIN, Daemon, fuse_missing
from userapi.helpers import Agent

from .hosts import DEV_B

A, B = "03:00.0", "04:00.0"  # the agent's form of DEV_A and DEV_B
# Values no count of the reply can take by chance, so that finding them in the text is a leak.
ROOT_PASID, ROOT_GPASID = 777001, 666013
TENANT_PASID, TENANT_GPASID = 888001, 555007


def leaks(text: str, *values: int) -> list[int]:
    """The ``values`` that occur in ``text`` as whole numbers."""
    return [v for v in values if re.search(rf"(?<![\w.]){v}(?![\w.])", text)]


def bindings(snap: dict[str, Any]) -> list[tuple[int, int | None, int]]:
    return [(b["pasid"], b["gpasid"], b["owner_pid"]) for b in snap["bindings"]]


def teardowns(snap: dict[str, Any]) -> list[tuple[str, int]]:
    return [(t["bdf"], t["pasid"]) for unit in snap["units"] for t in unit["teardowns"]]


def test_a_tenant_sees_only_its_own_binding_in_ioasidctl_vtd(tenant, open_tmp,
                                                             shared_python) -> None:
    """A root process and a tenant process each hold a bound PASID (root's was also bound to
    and torn down from a second device). ``ioasidctl vtd`` run as the tenant shows the
    tenant's binding and its trace events, says the view is filtered, and its output holds
    neither root's pid nor root's PASID nor root's guest PASID; run as root it shows both."""
    reason = fuse_missing()
    if reason:
        pytest.skip(reason)
    d = Daemon(open_tmp)
    agents: list[Agent] = []
    try:
        d.start()
        root_vmm = Agent(str(d.run))
        agents.append(root_vmm)
        root_vmm.ok("open")
        assert root_vmm.ok(f"alloc {ROOT_PASID} {ROOT_PASID}") == [ROOT_PASID]
        root_vmm.ok(f"bind {ROOT_PASID} {A} {ROOT_GPASID}")
        root_vmm.ok(f"bind {ROOT_PASID} {B} {ROOT_GPASID}")
        root_vmm.ok(f"unbind {ROOT_PASID} {B}")  # a tear-down naming root's PASID

        tenant_vmm = Agent(str(d.run), user=tenant)
        agents.append(tenant_vmm)
        tenant_vmm.ok("open")
        assert tenant_vmm.ok(f"alloc {TENANT_PASID} {TENANT_PASID}") == [TENANT_PASID]
        tenant_vmm.ok(f"bind {TENANT_PASID} {A} {TENANT_GPASID}")

        ctl = [str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "vtd"]
        done = tenant.run([*ctl, "--json", "--events", "4096"])
        assert done.returncode == 0, done.stderr
        mine = json.loads(done.stdout)
        assert leaks(done.stdout, root_vmm.pid, ROOT_PASID, ROOT_GPASID) == []
        assert bindings(mine) == [(TENANT_PASID, TENANT_GPASID, tenant_vmm.pid)]
        assert mine["filtered"] is True and mine["viewer_uid"] == tenant.uid
        assert teardowns(mine) == []
        own = [(e["kind"], e.get("gpasid")) for e in mine["trace"] if e["kind"] == "bind"]
        assert own == [("bind", TENANT_GPASID)]
        assert {e["pasid"] for e in mine["trace"]} == {TENANT_PASID}
        assert mine["totals"]["bound_pasids"] == 2  # a count that names no process

        human = tenant.run([*ctl, "--events", "4096"])
        assert human.returncode == 0, human.stderr
        first = human.stdout.splitlines()[0]
        assert first.startswith("shown") and f"only the processes of uid {tenant.uid}" in first
        assert f"PASID {TENANT_PASID}" in human.stdout
        assert leaks(human.stdout, root_vmm.pid, ROOT_PASID, ROOT_GPASID) == []

        done = d.ctl("vtd", "--json", "--events", "4096")
        assert done.returncode == 0, done.stderr
        everything = json.loads(done.stdout)
        assert everything["filtered"] is False and everything["viewer_uid"] == 0
        assert bindings(everything) == [(ROOT_PASID, ROOT_GPASID, root_vmm.pid),
                                        (TENANT_PASID, TENANT_GPASID, tenant_vmm.pid)]
        assert teardowns(everything) == [(DEV_B, ROOT_PASID)]
        assert "only the processes" not in d.ctl("vtd").stdout
    finally:
        for agent in agents:
            agent.stop()
        d.cleanup()
