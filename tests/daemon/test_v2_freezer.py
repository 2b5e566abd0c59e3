"""``cgroup.freeze`` and ``cgroup.kill`` of a real ``ioasidsd run --hierarchy v2``: the
processes the daemon follows (forks its tracker reported included) are stopped, continued and
killed, and the cgroup empties as they exit."""

from __future__ import annotations

from .daemons import pids, read, wait_until


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()[0].decode()


def test_freeze_and_kill_reach_the_forks_the_daemon_follows(daemons, forkers):
    d = daemons("--hierarchy", "v2").start()
    (d.mount / "a").mkdir()
    forker = forkers()
    (d.mount / "a" / "cgroup.procs").write_text(str(forker.pid))
    child = forker.fork()
    wait_until(lambda: child in pids(d.mount / "a" / "cgroup.procs"), "the fork in a")
    (d.mount / "a" / "cgroup.freeze").write_text("1")
    assert read(d.mount / "a" / "cgroup.events") == "populated 1\nfrozen 1\n"
    assert (state(forker.pid), state(child)) == ("T", "T")
    (d.mount / "a" / "cgroup.freeze").write_text("0")
    assert state(child) != "T" and state(forker.pid) != "T"
    (d.mount / "a" / "cgroup.freeze").write_text("1")
    (d.mount / "a" / "cgroup.kill").write_text("1")
    assert forker.proc.wait(10) == -9
    wait_until(lambda: pids(d.mount / "a" / "cgroup.procs") == [], "a emptied (the fork too)")
    assert read(d.mount / "a" / "cgroup.events") == "populated 0\nfrozen 1\n"
    forker.children.clear()  # killed with it
    assert d.stop() == 0
