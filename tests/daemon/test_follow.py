"""Membership that follows the host's hierarchy (``[units] follow``): a process that systemd (or
anyone) puts in a cgroup of the host's ``name=systemd`` or unified hierarchy is charged in the
daemon's cgroup of the same path, made by the daemon, without a write to the daemon's
``cgroup.procs``. Each test makes a scratch subtree in the host's hierarchy, moves its own child
processes there, and removes it afterwards, whatever happened."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from ioasidsd.daemon.config import ConfigError, load_config
from ioasidsd.daemon.membership import FollowedHierarchy
from ioasidsd.host import UNIFIED, ProcessSource, cgroup_mount

from .daemons import BIN, pids, read, wait_until


class HostScratch:
    """A scratch cgroup at the top of a host hierarchy, its children, and the processes the
    test moved there (moved back where the test process is, then the tree removed)."""

    def __init__(self, hierarchy: str, mountpoint: Path) -> None:
        self.hierarchy = hierarchy
        self.mountpoint = mountpoint
        # a slice directly below the root: no '-' in its name (systemd nests x-y.slice in x.slice)
        self.top = mountpoint / f"ioasidstest{uuid.uuid4().hex[:12]}.slice"
        self.top.mkdir()
        home = ProcessSource().cgroup(os.getpid(), hierarchy) or "/"
        self.home = mountpoint / home.lstrip("/")

    def make(self, name: str) -> Path:
        path = self.top / name
        path.mkdir()
        return path

    def path(self, cgroup: Path) -> str:
        """The cgroup's path in the hierarchy: the daemon's cgroup of the same path."""
        return "/" + str(cgroup.relative_to(self.mountpoint))

    def cleanup(self) -> None:
        for top, _dirs, _ in sorted(os.walk(self.top), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):
                for pid in pids(Path(top) / "cgroup.procs"):
                    with contextlib.suppress(OSError):
                        (self.home / "cgroup.procs").write_text(f"{pid}\n")
            with contextlib.suppress(OSError):
                os.rmdir(top)
        assert not self.top.exists(), f"{self.top} could not be removed"


def scratch_on(hierarchy: str):
    if os.geteuid() != 0:
        pytest.skip("moving processes in the host's hierarchy needs root")
    mount = cgroup_mount(hierarchy)
    if mount is None or mount.root != "/":
        pytest.skip(f"the host's {'unified' if hierarchy == UNIFIED else hierarchy} hierarchy "
                    f"is not mounted here")
    return HostScratch(hierarchy, Path(mount.mount_point))


@pytest.fixture
def systemd_scratch():
    scratch = scratch_on("systemd")
    yield scratch
    scratch.cleanup()


@pytest.fixture
def unified_scratch():
    scratch = scratch_on(UNIFIED)
    yield scratch
    scratch.cleanup()


@pytest.fixture
def holders():
    """Processes that move themselves into a host cgroup, then allocate IOASIDs and hold them
    (``ioasidctl alloc --hold``); all ended at the end."""
    made: list[subprocess.Popen[str]] = []

    def start(d, cgroup: Path, count: int) -> subprocess.Popen[str]:
        holder = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec "$2" --runtime-dir "$3" alloc '
             '-n "$4" --hold', "holder", str(cgroup), str(BIN / "ioasidctl"), str(d.run),
             str(count)], stdout=subprocess.PIPE, text=True)
        made.append(holder)
        assert holder.stdout is not None
        ids = [holder.stdout.readline().strip() for _ in range(count)]
        assert all(i.isdigit() for i in ids), (ids, d.log())
        return holder

    yield start
    for holder in made:
        with contextlib.suppress(ProcessLookupError):
            holder.send_signal(signal.SIGTERM)
        holder.wait()


def follow_config(tmp_path: Path, mode: str, default_max: str = "infinity",
                  **extra: str) -> Path:
    config = tmp_path / f"follow-{mode}.toml"
    lines = [f'{key} = {value}' for key, value in extra.items()]
    # cgroups the daemon makes for the host's get no limit, so that the holders may allocate
    lines += ["[units]", f'follow = "{mode}"', f'default_ioasids_max = "{default_max}"',
              "[knobs]", 'new_cgroup_max = "max"']
    config.write_text("\n".join(lines) + "\n")
    return config


def current(path: Path) -> str | None:
    try:
        return read(path / "ioasids.current").strip()
    except FileNotFoundError:
        return None


def test_a_process_placed_in_systemds_hierarchy_is_charged_there(daemons, tmp_path,
                                                                  systemd_scratch, holders):
    scratch = systemd_scratch
    d = daemons("--config", str(follow_config(tmp_path, "systemd", poll_interval="0.2")))
    d.start()
    tracking = d.status()["tracking"]
    assert "name=systemd" in tracking["detail"] and tracking["membership"] == "kernel"
    vm1 = scratch.make("vm1.scope")
    ours = d.mount / scratch.path(vm1).lstrip("/")
    assert not ours.exists()  # nothing made for a host cgroup without processes

    holder = holders(d, vm1, 2)
    # charged where the kernel had it when it allocated; the daemon made the cgroup
    assert current(ours) == "2"
    assert pids(ours / "cgroup.procs") == [holder.pid]
    made = {e["cgroup"] for e in d.events() if e["event"] == "cgroup created"}
    assert {scratch.path(scratch.top), scratch.path(vm1)} <= made
    assert holder.pid not in pids(d.mount / "cgroup.procs")

    # a move through the daemon's cgroup.procs is refused, and the log says why
    with pytest.raises(OSError) as refused:
        (d.mount / "cgroup.procs").write_text(f"{holder.pid}\n")
    assert refused.value.errno == errno.EPERM
    assert any(e["event"].startswith("a move through cgroup.procs refused")
               and e["hierarchy"] == str(scratch.mountpoint) for e in d.events())
    assert pids(ours / "cgroup.procs") == [holder.pid]

    # the host moves it: its IOASIDs follow at the next scan
    vm2 = scratch.make("vm2.scope")
    (vm2 / "cgroup.procs").write_text(f"{holder.pid}\n")
    moved = d.mount / scratch.path(vm2).lstrip("/")
    wait_until(lambda: current(moved) == "2", "the charges moved to vm2.scope")
    assert current(ours) == "0"
    assert pids(moved / "cgroup.procs") == [holder.pid]

    # a cgroup of ours whose host cgroup holds a process cannot be removed
    with pytest.raises(OSError) as busy:
        moved.rmdir()
    assert busy.value.errno == errno.EBUSY
    assert d.stop() == 0


def test_followed_cgroups_get_their_units_limits_and_go_with_the_hosts(daemons, tmp_path,
                                                                         systemd_scratch,
                                                                         holders):
    """The slice the host has gets its unit file's limit, the scope in it the default, before
    the process in it is charged; when the process has exited and the host has removed its
    scope, the daemon removes its own; the slice, which the host still has, stays."""
    scratch = systemd_scratch
    d = daemons("--config", str(follow_config(tmp_path, "systemd", default_max="3",
                                              poll_interval="0.2")))
    d.units.mkdir(parents=True, exist_ok=True)
    (d.units / scratch.top.name).write_text("[Slice]\nIOASIDsMax=5\n")
    d.start()
    vm1 = scratch.make("vm1.scope")
    holder = holders(d, vm1, 2)
    top = d.mount / scratch.path(scratch.top).lstrip("/")
    ours = d.mount / scratch.path(vm1).lstrip("/")
    assert read(top / "ioasids.max").strip() == "5"
    assert read(ours / "ioasids.max").strip() == "3"
    assert current(ours) == "2"
    listed = json.loads(d.ctl("slice", "list", "--json").stdout)["slices"]
    slices = {row["unit"]: row for row in listed}
    assert slices[scratch.top.name]["configured"] == "5"

    holder.send_signal(signal.SIGTERM)
    holder.wait()
    wait_until(lambda: current(ours) == "0", "the exit released the scope's IOASIDs")
    assert ours.exists()  # the host still has it
    vm1.rmdir()
    wait_until(lambda: not ours.exists(), "the scope the host removed went here too")
    assert top.exists()
    assert any(e["event"].startswith("a followed cgroup removed")
               and e["cgroup"] == scratch.path(vm1) for e in d.events())
    assert d.stop() == 0


def test_run_in_a_followed_hierarchy_leaves_no_scope_behind(daemons, tmp_path,
                                                            systemd_scratch):
    """``ioasidctl run`` puts CMD in the host's scope of that path (the daemon's refuses the
    move); CMD is charged there, and once it exits the scope is gone from both hierarchies."""
    scratch = systemd_scratch
    d = daemons("--config", str(follow_config(tmp_path, "systemd", poll_interval="0.2")))
    d.start()
    done = d.ctl("run", f"--slice={scratch.top.name}", "--unit=job", "--", "sh", "-c",
                 '"$0" --runtime-dir "$1" alloc -n 2 && cat /proc/self/cgroup',
                 str(BIN / "ioasidctl"), str(d.run))
    assert done.returncode == 0, done.stderr
    scope = scratch.path(scratch.top) + "/job.scope"
    assert f":name=systemd:{scope}" in done.stdout
    refusals = [e for e in d.events() if e["event"].startswith("a move through cgroup.procs")]
    assert refusals
    wait_until(lambda: not (d.mount / scope.lstrip("/")).exists(), "our scope removed")
    wait_until(lambda: not (scratch.top / "job.scope").exists(), "the host's scope removed")
    assert d.stop() == 0


def test_classify_moves_in_the_followed_hierarchy(daemons, tmp_path, systemd_scratch,
                                                  holders):
    """``ioasidctl classify`` (cgclassify) cannot write the daemon's cgroup.procs when it
    follows: it moves the process in the host's hierarchy, making the cgroup there."""
    scratch = systemd_scratch
    d = daemons("--config", str(follow_config(tmp_path, "systemd", poll_interval="0.2")))
    d.start()
    status = d.status()["tracking"]
    assert status["follow"] == "systemd"
    assert status["followed"] == {"mount": str(scratch.mountpoint), "hierarchy": "name=systemd"}
    holder = holders(d, scratch.make("vm1.scope"), 1)
    target = scratch.path(scratch.top) + "/gold.scope"
    (d.mount / target.lstrip("/")).mkdir()  # ours first: the host has no such cgroup yet
    assert not (scratch.top / "gold.scope").exists()
    done = d.ctl("classify", "-g", target, str(holder.pid))
    assert done.returncode == 0, done.stderr
    assert pids(scratch.top / "gold.scope" / "cgroup.procs") == [holder.pid]
    assert pids(d.mount / target.lstrip("/") / "cgroup.procs") == [holder.pid]
    wait_until(lambda: current(d.mount / target.lstrip("/")) == "1", "the charge moved")
    assert d.stop() == 0


def test_a_process_placed_in_the_unified_hierarchy_is_charged_there(daemons, tmp_path,
                                                                   unified_scratch, holders):
    scratch = unified_scratch
    d = daemons("--config", str(follow_config(tmp_path, "unified"))).start()
    assert "cgroup-v2" in d.status()["tracking"]["detail"]
    job = scratch.make("job.scope")
    holder = holders(d, job, 3)
    ours = d.mount / scratch.path(job).lstrip("/")
    assert current(ours) == "3"
    assert pids(ours / "cgroup.procs") == [holder.pid]
    assert d.stop() == 0


def test_following_needs_the_kernels_membership(daemons, tmp_path):
    d = daemons("--config", str(follow_config(tmp_path, "systemd")), "--tracking", "poll")
    d.start(ready=False)
    assert d.wait() == 1
    assert "tracking must be auto or kernel" in d.log()


def test_the_follow_setting(tmp_path):
    config = tmp_path / "c.toml"
    for mode in ("none", "systemd", "unified"):
        config.write_text(f'[units]\nfollow = "{mode}"\n')
        assert load_config(config).follow == mode
    for text, message in (('[units]\nfollow = "sometimes"\n', "expected one of"),
                          ('[units]\nfolow = "systemd"\n', "unknown setting [units] 'folow'"),
                          ('follow = "systemd"\n', "unknown setting 'follow'")):
        config.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            load_config(config)
    assert load_config().follow == "none"


def test_a_followed_hierarchy_seen_from_a_container():
    """Paths in ``/proc/PID/cgroup`` are the hierarchy's; a mount of a subtree (a container's
    view) maps them below its root, and a process outside that subtree is nowhere in it."""

    class Source(ProcessSource):
        def cgroup(self, pid: int, hierarchy: str) -> str | None:
            return {1: "/machine.slice/vm.scope", 2: "/machine.slice", 3: "/system.slice",
                    4: None}[pid]

    followed = FollowedHierarchy("systemd", Path("/nonexistent"), "/machine.slice", Source())
    assert [followed.cgroup_of(pid) for pid in (1, 2, 3, 4)] == ["/vm.scope", "/", None, None]
    whole = FollowedHierarchy("systemd", Path("/nonexistent"), "/", Source())
    assert whole.cgroup_of(1) == "/machine.slice/vm.scope"
    assert whole.procs("/machine.slice") == []  # a path the host does not have: empty
    with pytest.raises(PermissionError):
        whole.attach(1, "/machine.slice")


class FakeFollowed:
    """A ``KernelMembership``: the host has every process in ``/machine.slice/vm.scope``."""

    name = "fake"
    follows = True

    def cgroup_of(self, pid: int) -> str | None:
        return "/machine.slice/vm.scope"

    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def rename(self, old: str, new: str) -> None: ...

    def attach(self, pid: int, path: str) -> None:
        raise PermissionError(errno.EPERM, "membership follows the host")

    def procs(self, path: str) -> list[int]:
        return []

    def tasks(self, path: str) -> list[int]:
        return []


def test_the_system_makes_a_followed_cgroup_through_its_hook():
    from ioasidsd.model.errors import IoasidError
    from ioasidsd.system import System

    system = System()
    system.kernel = FakeFollowed()
    asked = []
    default = system.realise_followed

    def realise(path: str):
        asked.append(path)
        return default(path)

    system.realise_followed = realise
    proc = system.sync_member(os.getpid())
    assert proc is not None and proc.cgroup.path == "/machine.slice/vm.scope"
    assert asked == ["/machine.slice/vm.scope"]
    with pytest.raises(IoasidError) as refused:
        system.write_procs("/", str(os.getpid()), writer_pid=os.getpid(), writer_uid=0)
    assert refused.value.errno == errno.EPERM
    assert proc.cgroup.path == "/machine.slice/vm.scope"

    # a membership the daemon keeps itself does not make cgroups: a process in a cgroup it
    # lacks is refused rather than charged to the root
    kept = FakeFollowed()
    kept.follows = False
    kept.cgroup_of = lambda pid: "/elsewhere"
    system.kernel = kept
    with pytest.raises(IoasidError) as unknown:
        system.sync_member(os.getpid())
    assert unknown.value.errno == errno.EPERM
