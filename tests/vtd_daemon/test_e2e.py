"""End to end: ``ioasidsd run`` boots the VT-d simulation and serves the bind extension; a real
client process (``tests/userapi/agent.py``) allocates and binds; ``ioasidctl vtd`` and
``status`` show the units; ``kill -9`` of the daemon loses and doubles nothing."""

from __future__ import annotations

import json
import subprocess
from errno import EBUSY
from typing import Any

from daemon.daemons import BIN, read, wait_until
from userapi.helpers import Agent

from .hosts import DEV_A, DEV_B

A, B = "03:00.0", "04:00.0"  # the agent's form of DEV_A and DEV_B


def vtd(d) -> dict[str, Any]:
    done = d.ctl("vtd", "--json", "--events", "200")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def present(snap: dict[str, Any]) -> dict[str, int]:
    """Present PASID entries per device."""
    return {dev["bdf"]: dev["pasid_table"]["present"] for dev in snap["devices"]}


def vm_agent(d, limit: int = 4) -> Agent:
    """A client process in the cgroup ``vm`` (made with ``limit``), /dev/ioasid open."""
    vm = d.mount / "vm"
    if not vm.exists():
        vm.mkdir()
        (vm / "ioasids.max").write_text(f"{limit}\n")
    agent = Agent(str(d.run))
    (vm / "cgroup.procs").write_text(f"{agent.pid}\n")
    agent.ok("open")
    return agent


def test_free_before_unbind_tears_down_in_the_daemon(daemons) -> None:
    """A real process allocates, binds on both devices and frees before unbinding: the VT-d
    cleanup tears both entries down on the work queue, the IOASID is reclaimed and uncharged,
    and ``ioasidctl vtd`` shows it; after a kill -9 nothing of it comes back."""
    d = daemons().start()
    agent = vm_agent(d)
    try:
        h = agent.ok("alloc 1 100")[0]
        agent.ok(f"bind {h} {A} 101")
        agent.ok(f"bind {h} {B} 101")
        snap = vtd(d)
        assert [(b["pasid"], b["gpasid"], b["owner_pid"]) for b in snap["bindings"]] == [
            (h, 101, agent.pid)]
        assert present(snap) == {DEV_A: 1, DEV_B: 1}
        assert read(d.mount / "vm" / "ioasids.current") == "1\n"

        agent.ok(f"free {h}")
        snap = wait_until(lambda: (s := vtd(d))["counters"]["total"].get("ioasid", {})
                          .get("cleanups") == 1 and s, "the FREE cleanup")
        assert snap["bindings"] == [] and present(snap) == {DEV_A: 0, DEV_B: 0}
        assert [(t["bdf"], t["pasid"]) for t in snap["units"][0]["teardowns"]] == [
            (DEV_A, h), (DEV_B, h)]
        assert "pc_inv" in snap["units"][0]["teardowns"][0]["descriptors"]
        clears = [e for e in snap["trace"] if e["kind"] == "pasid_entry_clear"]
        assert [(e["bdf"], e["pasid"], e["fpd"]) for e in clears] == [
            (DEV_A, h, True), (DEV_B, h, True)]
        assert read(d.mount / "vm" / "ioasids.current") == "0\n"
        assert d.status()["ioasids"] == 0
        text = d.ctl("vtd").stdout
        assert f"PASID {h} on {DEV_A}: pc_inv" in text and "bindings             none" in text

        d.kill9()
        d.start()
        assert d.status()["ioasids"] == 0 and vtd(d)["bindings"] == []
        assert read(d.mount / "vm" / "ioasids.current") == "0\n"
    finally:
        agent.stop()
    assert d.stop() == 0


def test_kill_9_while_bound_brings_the_binding_and_charges_back(daemons) -> None:
    """kill -9 with one of two IOASIDs bound on both devices: the restarted daemon has the same
    IDs, charges, sets and capacity (the host set adopted, not made again), the binding with its
    entries, and the reconnected VMM can unbind and free."""
    d = daemons().start()
    agent = vm_agent(d)
    try:
        h1, h2 = agent.ok("alloc 1 100")[0], agent.ok("alloc 1 100")[0]
        agent.ok(f"bind {h1} {A} 101")
        agent.ok(f"bind {h1} {B} 101")
        before = d.status()
        assert (before["ioasids"], before["sets"]) == (2, 2)

        d.kill9()
        d.start()
        after = d.status()
        for key in ("ioasids", "sets", "capacity", "available", "processes"):
            assert after[key] == before[key], key
        assert after["vtd"]["bound_pasids"] == 1
        assert read(d.mount / "vm" / "ioasids.current") == "2\n"
        snap = vtd(d)
        assert [(b["pasid"], b["gpasid"], [x["bdf"] for x in b["devices"]])
                for b in snap["bindings"]] == [(h1, 101, [DEV_A, DEV_B])]
        assert present(snap) == {DEV_A: 1, DEV_B: 1}
        assert snap["counters"]["driver"]["restore"] == {"guest": 1}
        assert snap["host_set"]["id"] == 0

        agent.ok("open")  # the connection died with the daemon: reconnect, adopting the set
        h3 = agent.ok("alloc 1 100")[0]
        assert h3 not in (h1, h2)  # nothing handed out twice
        agent.ok(f"free {h3}")
        assert agent.err(f"bind {h1} {A} 101") == EBUSY  # bound there already
        agent.ok(f"unbind {h1} {A}")
        agent.ok(f"unbind {h1} {B}")
        snap = vtd(d)
        assert snap["bindings"] == [] and present(snap) == {DEV_A: 0, DEV_B: 0}
        agent.ok(f"free {h1}")  # no reference left but the file's: reclaimed at once
        assert read(d.mount / "vm" / "ioasids.current") == "1\n"

        d.kill9()
        d.start()
        assert (d.status()["ioasids"], d.status()["vtd"]["bound_pasids"]) == (1, 0)
        assert read(d.mount / "vm" / "ioasids.current") == "1\n"
        agent.ok("open")
        agent.ok(f"bind {h2} {B} -")  # the restarted daemon binds as the first did
        assert present(vtd(d)) == {DEV_A: 0, DEV_B: 1}
    finally:
        agent.kill()
    wait_until(lambda: d.status()["ioasids"] == 0, "the VMM's exit releasing its IOASIDs")
    assert read(d.mount / "vm" / "ioasids.current") == "0\n"
    assert present(vtd(d)) == {DEV_A: 0, DEV_B: 0}
    assert d.stop() == 0


def test_a_vmm_that_died_while_no_daemon_ran_is_released_with_its_binding(daemons) -> None:
    """The VMM dies between a kill -9 and the restart: the restarted daemon rebuilds its
    binding, then releases the process as if it had exited (its file frees the IOASIDs, the
    bound one through the VT-d cleanup); nothing stays charged or bound."""
    d = daemons().start()
    agent = vm_agent(d)
    h = agent.ok("alloc 1 100")[0]
    agent.ok(f"bind {h} {A} 5")
    agent.ok("alloc 1 100")
    d.kill9()
    agent.kill()
    d.start()
    wait_until(lambda: d.status()["ioasids"] == 0, "the dead VMM's IOASIDs released")
    snap = vtd(d)
    assert snap["bindings"] == [] and present(snap) == {DEV_A: 0, DEV_B: 0}
    assert snap["counters"]["driver"]["restore"] == {"guest": 1}
    assert [(t["bdf"], t["pasid"]) for t in snap["units"][0]["teardowns"]] == [(DEV_A, h)]
    assert read(d.mount / "vm" / "ioasids.current") == "0\n"
    d.kill9()
    d.start()
    assert d.status()["ioasids"] == 0 and d.status()["sets"] == 1  # the host set alone


def test_v4_free_before_unbind_keeps_the_charge_across_a_restart(daemons) -> None:
    """v4 (quirk 7): the cleanup reclaims from the work queue, which uncharges nothing; the
    reclaim and the kept charge are both saved."""
    d = daemons("--profile", "v4").start()
    agent = vm_agent(d)
    try:
        h = agent.ok("alloc 1 100")[0]
        agent.ok(f"bind {h} {A} 7")
        agent.ok(f"free {h}")
        wait_until(lambda: d.status()["ioasids"] == 0, "the FREE cleanup")
        assert read(d.mount / "vm" / "ioasids.current") == "1\n"
        d.kill9()
        d.start()
        assert d.status()["ioasids"] == 0 and vtd(d)["bindings"] == []
        assert read(d.mount / "vm" / "ioasids.current") == "1\n"
    finally:
        agent.stop()


def test_a_restart_without_a_bound_device_is_refused(daemons, tmp_path) -> None:
    """The state holds a binding on a device the new configuration lacks: the daemon refuses
    to start and says which; with the device configured again it starts and keeps it."""
    d = daemons().start()
    agent = vm_agent(d)
    try:
        h = agent.ok("alloc 1 100")[0]
        agent.ok(f"bind {h} {B} -")
        d.kill9()
        config = tmp_path / "only-a.toml"
        config.write_text(f'[vtd]\n[[vtd.device]]\nbdf = "{DEV_A}"\n')
        refused = daemons("--config", str(config), name="refused").start(ready=False)
        assert refused.wait() == 1
        message = [e["event"] for e in refused.events() if e.get("level") == "error"]
        assert len(message) == 1 and f"IOASID {h}" in message[0] and DEV_B in message[0]
        d.start()
        assert vtd(d)["bindings"][0]["pasid"] == h
    finally:
        agent.stop()


def test_capacity_beyond_the_pasid_space_is_a_configuration_error(tmp_path) -> None:
    config = tmp_path / "small.toml"
    config.write_text('[vtd]\n[[vtd.unit]]\nname = "dmar0"\npss = 7\n')
    for args, where in ((["--capacity", "2000000"], "command line"),
                        (["--config", str(config), "--capacity", "300"], "command line")):
        done = subprocess.run([str(BIN / "ioasidsd"), "run", "--mount", str(tmp_path / "m"),
                               "--state-dir", str(tmp_path / "s"), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2
        assert done.stderr.startswith(f"ioasidsd: {where}: capacity = ")
        assert "PASIDs of the VT-d units" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_state_that_holds_only_the_host_set_starts_afresh(daemons) -> None:
    """A new capacity is accepted over a state that holds nothing but VT-d's host set; once
    the state holds a cgroup it is refused."""
    d = daemons("--capacity", "50000").start()
    assert d.stop() == 0
    again = daemons("--capacity", "60000", name="again").start()
    assert again.status()["capacity"] == 60000 and again.status()["sets"] == 1
    (again.mount / "a").mkdir()
    assert again.stop() == 0
    refused = daemons("--capacity", "50000", name="refused").start(ready=False)
    assert refused.wait() == 1 and "capacity 60000" in refused.log()


def test_ioasidctl_vtd(daemons) -> None:
    d = daemons().start()
    seq = vtd(d)["trace_seq"]
    text = d.ctl("vtd", "--events", "3")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split(None, 1) == [
        "VT-d", "profile fixed, scalable mode, 1048576 PASIDs, host set 0 (quota 32768, 0 in use)"]
    assert any(line.startswith(f"device {DEV_A}") and "PASID, ATS, PRI enabled" in line
               for line in lines)
    assert lines[-4] == f"last 3 of {seq} trace events:"
    assert lines[-1].startswith(f"  #{seq} boot units=['dmar0'] ")
    status = d.ctl("status").stdout
    assert "VT-d       dmar0, 2 devices, scalable mode, 1048576 PASIDs, 0 bound PASIDs" in status
    bad = d.ctl("vtd", "--events", "-1")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    from ioasidsd.control.client import ControlClient, ControlError

    client = ControlClient(d.run / "control.sock")
    for events in ("x", True, 5000):
        try:
            client.call("vtd", events=events)
        except ControlError as exc:
            assert exc.error == "EINVAL"
        else:
            raise AssertionError(f"events={events!r} was accepted")
    assert d.stop() == 0
    gone = d.ctl("vtd")
    assert gone.returncode == 1 and len(gone.stderr.splitlines()) == 1
