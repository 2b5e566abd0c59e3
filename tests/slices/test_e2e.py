"""Slices end to end: a real daemon reading unit files from temporary directories, and the
real ``ioasidctl``: limits in place before READY, bad units failed with the daemon running,
daemon-reload and SIGHUP, set-property (persistent and runtime), and run in a transient scope
whose allocations are charged to its slice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from daemon.daemons import BIN, Daemon, wait_until

from ioasidsd.slices import DROPIN_NAME

IOASIDCTL = str(BIN / "ioasidctl")
CAPACITY = 1 << 20


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def limit(d: Daemon, path: str) -> str:
    return (d.mount / path.lstrip("/") / "ioasids.max").read_text().strip()


def ok(d: Daemon, *args: str) -> str:
    done = d.ctl(*args)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def slices(d: Daemon) -> dict[str, dict]:
    return {row["unit"]: row for row in json.loads(ok(d, "slice", "list", "--json"))["slices"]}


def tenant_tree(units: Path) -> None:
    write(units / "tenant.slice", "[Unit]\nDescription=tenants\n[Slice]\nIOASIDsMax=300\n")
    write(units / "tenant-a.slice", "[Slice]\nIOASIDsMax=100\n")
    write(units / "tenant-b.slice.d" / "limit.conf", "[Slice]\nX-IOASIDsMax=50\n")
    write(units / "tenant-a-vm1.slice", "[Slice]\nIOASIDsMax=10\n")


def test_a_tenant_tree_is_realised_before_ready(daemons):
    d = daemons()
    tenant_tree(d.units)
    d.start()  # returns at READY=1: the files must be there already
    assert limit(d, "/tenant.slice") == "300"
    assert limit(d, "/tenant.slice/tenant-a.slice") == "100"
    assert limit(d, "/tenant.slice/tenant-b.slice") == "50"
    assert limit(d, "/tenant.slice/tenant-a.slice/tenant-a-vm1.slice") == "10"
    names = wait_until(lambda: (lambda n: "ready" in n and n)([e["event"] for e in d.events()]),
                       "the ready log line")  # logged just after READY=1 is sent
    assert names.index("units loaded") < names.index("ready")
    rows = slices(d)
    assert {rows[n]["active"] for n in rows} == {"active"}
    assert rows["tenant-b.slice"]["configured"] == "50"
    text = ok(d, "slice", "status", "tenant-a.slice")
    assert str(d.units / "tenant-a.slice") in text and "100" in text
    status = json.loads(ok(d, "slice", "status", "tenant-a.slice", "--json"))
    assert status["schema"] == 1 and status["source"] == f"{d.units / 'tenant-a.slice'}:2"
    assert status["effective"] == 100 and status["load"] == "loaded"
    assert d.status()["units"] == {"slices": 4, "failed": []}
    assert d.stop() == 0


BAD = {
    "bad--name.slice": ("[Slice]\nIOASIDsMax=5\n", None),
    "junk.slice": ("[Slice]\nIOASIDsMax=5\nIOASIDsMax=lots\n", 3),
    "huge.slice": ("[Slice]\n\nIOASIDsMax=2000000\n", 3),
}


def test_bad_units_fail_the_unit_and_the_daemon_serves(daemons):
    d = daemons()
    write(d.units / "good.slice", "[Slice]\nIOASIDsMax=9\n")
    for name, (text, _) in BAD.items():
        write(d.units / name, text)
    (d.units / "unreadable.slice").mkdir()  # root reads any file; not a directory
    d.start()
    assert limit(d, "/good.slice") == "9"
    failed = sorted(d.status()["units"]["failed"])
    assert failed == sorted([*BAD, "unreadable.slice"])
    errors = [e for e in d.events() if e.get("level") == "error" and "unit" in e]
    for name, (_, line) in BAD.items():
        (event,) = [e for e in errors if e["unit"] == name]
        assert event["file"] == str(d.units / name) and event["line"] == line
        status = json.loads(ok(d, "slice", "status", name, "--json"))
        assert status["active"] == "failed" and str(d.units / name) in status["error"]
    assert "ENOSPC" in json.loads(ok(d, "slice", "status", "huge.slice", "--json"))["error"]
    text = ok(d, "slice", "list")
    assert "junk.slice" in text and "failed" in text and f"{d.units / 'junk.slice'}:3" in text
    assert d.ctl("status").returncode == 0
    assert "failed: " in ok(d, "status")
    assert d.stop() == 0


def test_daemon_reload_and_sighup_apply_units_and_keep_limits_on_bad_input(daemons):
    d = daemons()
    tenant_tree(d.units)
    d.start()
    write(d.units / "tenant-a.slice", "[Slice]\nIOASIDsMax=80\n")
    write(d.units / "new.slice", "[Slice]\nIOASIDsMax=4\n")
    ok(d, "daemon-reload")  # returns once done
    d.wait_for("RELOADING")  # and tells the service manager, as a reload does
    d.wait_for("READY")
    assert limit(d, "/tenant.slice/tenant-a.slice") == "80"
    assert limit(d, "/new.slice") == "4"
    write(d.units / "tenant-a.slice", "[Slice]\nIOASIDsMax=eighty\n")
    write(d.units / "tenant-b.slice.d" / "limit.conf", "[Slice]\nX-IOASIDsMax=5000\n")
    done = d.ctl("daemon-reload")
    assert done.returncode == 0 and "2 slices failed" in done.stderr
    d.wait_for("READY")
    assert limit(d, "/tenant.slice/tenant-a.slice") == "80"  # kept
    assert limit(d, "/tenant.slice/tenant-b.slice") == "50"  # over its parent's 300: kept
    assert slices(d)["tenant-a.slice"]["active"] == "failed"
    write(d.units / "tenant-a.slice", "[Slice]\nIOASIDsMax=70\n")
    d.signal(signal.SIGHUP)
    d.wait_for("RELOADING")
    d.wait_for("READY")
    assert limit(d, "/tenant.slice/tenant-a.slice") == "70"
    assert slices(d)["tenant-a.slice"]["active"] == "active"
    assert d.pid and d.proc.poll() is None
    assert d.stop() == 0


def test_set_property_changes_a_limit_live_and_it_survives_a_restart(daemons):
    d = daemons()
    tenant_tree(d.units)
    d.start()
    ok(d, "set-property", "tenant-a.slice", "IOASIDsMax=25")
    dropin = d.units_control / "tenant-a.slice.d" / DROPIN_NAME
    assert "X-IOASIDsMax=25" in dropin.read_text()
    assert limit(d, "/tenant.slice/tenant-a.slice") == "25"
    done = d.ctl("set-property", "tenant-a.slice", "IOASIDsMax=400")  # over the parent's 300
    assert done.returncode == 1 and "ENOSPC" in done.stderr, done.stderr
    assert "X-IOASIDsMax=25" in dropin.read_text()
    assert limit(d, "/tenant.slice/tenant-a.slice") == "25"
    for bad in (["tenant-a.slice", "IOASIDsMax=x"], ["tenant-a.slice", "CPUQuota=5%"],
                ["a.service", "IOASIDsMax=1"]):
        done = d.ctl("set-property", *bad)
        assert done.returncode == 1 and "EINVAL" in done.stderr, done.stderr
    assert d.ctl("set-property", "tenant-a.slice", "IOASIDsMax").returncode == 2
    assert d.stop() == 0
    d2 = daemons(name="again").start()
    assert limit(d2, "/tenant.slice/tenant-a.slice") == "25"
    ok(d2, "set-property", "--runtime", "tenant-b.slice", "IOASIDsMax=0.02%")
    assert (d2.units_runtime / "tenant-b.slice.d" / DROPIN_NAME).is_file()
    assert not (d2.units_control / "tenant-b.slice.d").exists()
    assert limit(d2, "/tenant.slice/tenant-b.slice") == str(CAPACITY * 2 // 10000)
    assert d2.stop() == 0


def test_run_charges_the_slice_and_exits_with_the_commands_status(daemons):
    d = daemons()
    tenant_tree(d.units)
    d.start()
    ok(d, "set-property", "tenant-b.slice", "IOASIDsMax=2")
    script = ('"$0" --runtime-dir "$1" alloc -n 2 || exit 9; '
              '"$0" --runtime-dir "$1" alloc -n 3 && exit 8; exit 3')
    done = d.ctl("run", "--slice=tenant-b.slice", "--scope", "--", "sh", "-c", script,
                 IOASIDCTL, str(d.run))
    assert done.returncode == 3, done.stderr
    assert "Running scope as unit: run-u" in done.stderr
    unit = done.stderr.split("Running scope as unit: ")[1].split()[0]
    scope = f"/tenant.slice/tenant-b.slice/{unit}"
    # the third allocation was refused by the slice's limit (the daemon's log says so: the
    # refusal log drops a cgroup's ring with the cgroup)
    refusals = [e for e in d.events() if e["event"].startswith("refused")]
    assert [(e["cgroup"], e["errno"], e["event"]) for e in refusals] == \
        [(scope, "EAGAIN", "refused REQUEST_ALLOC: /tenant.slice/tenant-b.slice: "
                           "ioasids.max 2 reached")]
    assert json.loads(ok(d, "get", "-r", "ioasids.peak", "--json",
                         "/tenant.slice/tenant-b.slice"))["cgroups"][0]["values"] == \
        {"ioasids.peak": "2"}
    wait_until(lambda: not (d.mount / scope.lstrip("/")).exists(), "the scope to go")
    assert (d.mount / "tenant.slice" / "tenant-b.slice").is_dir()  # the slice stays


def test_run_names_and_limits_its_scope(daemons):
    d = daemons().start()
    probe = f'cat "{d.mount}/system.slice/job.scope/ioasids.max"; exit 4'
    done = d.ctl("run", "--unit", "job", "-p", "IOASIDsMax=1", "-q", "--", "sh", "-c", probe)
    assert (done.returncode, done.stdout, done.stderr) == (4, "1\n", "")
    assert limit(d, "/system.slice") == "max"
    assert d.ctl("run", "--", "false").returncode == 1
    done = d.ctl("run", "--", "no-such-command-here")
    assert done.returncode == 127 and "command not found" in done.stderr
    for bad in (["--slice", "a--b.slice"], ["--unit", "x.service"], ["-p", "IOASIDsMax=lots"]):
        done = d.ctl("run", *bad, "--", "true")
        assert done.returncode == 1 and "EINVAL" in done.stderr, done.stderr
    wait_until(lambda: not [p for p in (d.mount / "system.slice").iterdir()
                            if p.name.endswith(".scope")], "the scopes to go")


def test_an_unprivileged_user_does_what_the_delegation_allows(open_tmp, tenant):
    pytest.importorskip("mfusepy")
    d = Daemon(open_tmp)
    tenant_tree(d.units)
    try:
        d.start()
        os.chmod(d.run, 0o755)

        def as_tenant(*args: str):
            return tenant.run([IOASIDCTL, "--runtime-dir", str(d.run), *args])

        done = as_tenant("run", "--slice=tenant-b.slice", "--", "true")
        assert done.returncode == 1 and "EACCES" in done.stderr, done.stderr
        done = as_tenant("run", "--slice=other.slice", "--", "true")  # no such slice yet
        assert done.returncode == 1 and "EACCES" in done.stderr, done.stderr
        done = as_tenant("set-property", "tenant-b.slice", "IOASIDsMax=1")
        assert done.returncode == 1 and "EACCES" in done.stderr, done.stderr
        done = as_tenant("daemon-reload")
        assert done.returncode == 1 and "EPERM" in done.stderr, done.stderr
        assert as_tenant("slice", "list").returncode == 0
        slice_dir = d.mount / "tenant.slice" / "tenant-b.slice"
        for path in (slice_dir, slice_dir / "ioasids.max"):
            os.chown(path, tenant.uid, tenant.gid)  # delegated, as with chown on the kernel's
        done = as_tenant("set-property", "tenant-b.slice", "IOASIDsMax=7")
        assert done.returncode == 0, done.stderr
        assert limit(d, "/tenant.slice/tenant-b.slice") == "7"
        done = as_tenant("run", "--slice=tenant-b.slice", "--", "sh", "-c", "exit 5")
        assert done.returncode == 5, done.stderr
    finally:
        d.cleanup()


def test_slices_on_the_unified_hierarchy(daemons):
    """On the cgroup-v2 face a slice tree has systemd's unified layout: the same paths, the
    controller enabled on the way down, and run's scope a leaf that holds the processes."""
    d = daemons("--hierarchy", "v2")
    tenant_tree(d.units)
    d.start()
    assert limit(d, "/tenant.slice") == "300"
    assert limit(d, "/tenant.slice/tenant-a.slice/tenant-a-vm1.slice") == "10"
    assert "ioasids" in (d.mount / "tenant.slice" / "cgroup.subtree_control").read_text()
    ok(d, "set-property", "tenant-b.slice", "IOASIDsMax=2")
    script = ('"$0" --runtime-dir "$1" alloc -n 2 || exit 9; '
              '"$0" --runtime-dir "$1" alloc -n 3 && exit 8; exit 3')
    done = d.ctl("run", "--slice=tenant-b.slice", "-q", "--", "sh", "-c", script, IOASIDCTL,
                 str(d.run))
    assert done.returncode == 3, done.stderr
    refusals = [e for e in d.events() if e["event"].startswith("refused")]
    assert [e["event"] for e in refusals] == \
        ["refused REQUEST_ALLOC: /tenant.slice/tenant-b.slice: ioasids.max 2 reached"]
    wait_until(lambda: not [p for p in (d.mount / "tenant.slice" / "tenant-b.slice").iterdir()
                            if p.name.endswith(".scope")], "the scope to go")
    assert slices(d)["tenant-b.slice"]["active"] == "active"
    assert d.stop() == 0
