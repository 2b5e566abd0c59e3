"""``SliceManager``: slices realised in a ``System`` from unit files in temporary directories,
their failures, set-property's drop-ins, the names ``run`` is given and the scope reaper."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from system.ops import FakeProcesses

from ioasidsd.model import profile
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.snapshot import dump, load
from ioasidsd.slices import (
    DROPIN_NAME,
    LIMIT_FILE_MODE,
    SearchPath,
    SliceManager,
    parse_ioasids_max,
)
from ioasidsd.system import System
from tests.slices.oracle import needs_analyze, verify

CAPACITY = 1000


class Log:
    """Records the manager's log lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def _add(self, level: str, message: str, **fields) -> None:
        self.lines.append((level, message, fields))

    def info(self, message: str, **fields) -> None:
        self._add("info", message, **fields)

    def warning(self, message: str, **fields) -> None:
        self._add("warning", message, **fields)

    def error(self, message: str, **fields) -> None:
        self._add("error", message, **fields)

    def errors(self) -> list[tuple[str, dict]]:
        return [(m, f) for level, m, f in self.lines if level == "error"]


@pytest.fixture
def units(tmp_path):
    """The directories of a search path: two control directories, two unit directories."""
    dirs = {name: tmp_path / name for name in ("control", "runtime", "etc", "lib")}
    for d in dirs.values():
        d.mkdir()
    return dirs


def manager(units, default: str = "infinity", system: System | None = None):
    if system is None:
        system = System(profile("fixed"), processes=FakeProcesses())
        system.core.install_capacity(CAPACITY)
    search = SearchPath((units["control"], units["runtime"]), (units["etc"], units["lib"]))
    log = Log()
    return SliceManager(system, search, parse_ioasids_max(default), log), system, log


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def limit(system: System, path: str):
    with system.lock:
        return system.cgroups.lookup(path).limit


def test_a_tenant_tree_comes_up_with_its_limits(units):
    write(units["etc"] / "tenant.slice", "[Slice]\nIOASIDsMax=500\n")
    write(units["etc"] / "tenant-a.slice", "[Unit]\nDescription=a\n[Slice]\nIOASIDsMax=10%\n")
    write(units["lib"] / "tenant-b.slice.d" / "limit.conf", "[Slice]\nX-IOASIDsMax=200\n")
    write(units["etc"] / "tenant-a-vm1.slice", "[Slice]\nIOASIDsMax=30\n")
    m, system, log = manager(units)
    counts = m.load()
    assert counts == {"slices": 4, "failed": 0}
    assert limit(system, "/tenant.slice") == 500
    assert limit(system, "/tenant.slice/tenant-a.slice") == 100
    assert limit(system, "/tenant.slice/tenant-b.slice") == 200
    assert limit(system, "/tenant.slice/tenant-a.slice/tenant-a-vm1.slice") == 30
    assert not log.errors()
    rows = {row["unit"]: row for row in m.slices()}
    assert rows["tenant-a.slice"]["configured"] == "10%"
    assert rows["tenant-a.slice"]["max"] == 100
    assert rows["tenant-b.slice"]["load"] == "loaded"
    assert all(row["active"] == "active" for row in rows.values())


def test_the_order_of_the_files_does_not_matter_when_limits_shrink(units):
    parent = write(units["etc"] / "t.slice", "[Slice]\nIOASIDsMax=500\n")
    child = write(units["etc"] / "t-a.slice", "[Slice]\nIOASIDsMax=400\n")
    m, system, _log = manager(units)
    m.load()
    parent.write_text("[Slice]\nIOASIDsMax=100\n")  # below the child's 400: EBUSY first
    child.write_text("[Slice]\nIOASIDsMax=50\n")
    assert m.load()["failed"] == 0
    assert limit(system, "/t.slice") == 100
    assert limit(system, "/t.slice/t-a.slice") == 50


def test_an_ancestor_without_a_file_gets_the_default(units):
    write(units["etc"] / "a-b-c.slice", "[Slice]\nIOASIDsMax=7\n")
    m, system, _ = manager(units, default="50%")
    m.load()
    assert limit(system, "/a.slice") == 500  # not the new cgroup's limit 0 of "fixed"
    assert limit(system, "/a.slice/a-b.slice") == 500
    assert limit(system, "/a.slice/a-b.slice/a-b-c.slice") == 7


def test_default_and_prefix_dropins(units):
    write(units["etc"] / "machine.slice", "[Unit]\nDescription=VMs\n")
    write(units["etc"] / "machine-.slice.d" / "10.conf", "[Slice]\nIOASIDsMax=33\n")
    write(units["etc"] / "machine-vm1.slice", "")  # empty: masked
    write(units["etc"] / "machine-vm2.slice", "[Slice]\n")
    m, system, _ = manager(units, default="50")
    m.load()
    assert limit(system, "/machine.slice") == 50
    assert limit(system, "/machine.slice/machine-vm2.slice") == 33
    with pytest.raises(IoasidError):
        limit(system, "/machine.slice/machine-vm1.slice")
    assert {row["unit"]: row["load"] for row in m.slices()}["machine-vm1.slice"] == "masked"


@pytest.mark.parametrize("name, text, load, line", [
    ("bad--name.slice", "[Slice]\nIOASIDsMax=5\n", "error", None),
    ("junk.slice", "[Slice]\nIOASIDsMax=5\nIOASIDsMax=lots\n", "bad-setting", 3),
    ("toobig.slice", "[Slice]\n\nIOASIDsMax=5000\n", "loaded", 3),
    ("header.slice", "[Slice]\nIOASIDsMax=5\n[Slice\n", "error", 3),
])
def test_bad_input_fails_the_unit_and_keeps_the_previous_limit(units, name, text, load, line):
    path = write(units["etc"] / name, "[Slice]\nIOASIDsMax=5\n")
    write(units["etc"] / "good.slice", "[Slice]\nIOASIDsMax=9\n")
    m, system, log = manager(units)
    m.load()
    valid = name != "bad--name.slice"
    if valid:
        assert limit(system, f"/{name}") == 5
    path.write_text(text)
    log.lines.clear()
    counts = m.load()
    assert counts["failed"] == 1
    if valid:
        assert limit(system, f"/{name}") == 5  # the previous limit is kept
    assert limit(system, "/good.slice") == 9
    (message, fields), = log.errors()
    assert fields["unit"] == name and fields["file"] == str(path) and fields["line"] == line
    assert str(path) in message
    row = m.status(name)
    assert row["active"] == "failed" and row["load"] == load
    assert str(path) in row["error"]
    if line is not None:
        assert f"{path}:{line}" in row["error"]


def test_a_refused_limit_says_why(units):
    write(units["etc"] / "big.slice", "[Slice]\nIOASIDsMax=2000\n")
    m, _system, _log = manager(units)
    m.load()
    row = m.status("big.slice")
    assert row["active"] == "failed"
    assert "ENOSPC" in row["error"] and "big.slice:2" in row["error"]


def test_an_unreadable_file_fails_the_unit(units):
    if os.geteuid() == 0:
        path = write(units["etc"] / "secret.slice", "[Slice]\nIOASIDsMax=5\n")
        os.chmod(path, 0)
        # root reads any file: a directory in its place cannot be read as one
        path.unlink()
        path.mkdir()
    else:
        path = write(units["etc"] / "secret.slice", "[Slice]\nIOASIDsMax=5\n")
        os.chmod(path, 0)
    m, _system, log = manager(units)
    assert m.load()["failed"] == 1
    row = m.status("secret.slice")
    assert row["active"] == "failed" and row["load"] == "error"
    assert str(path) in log.errors()[0][0]


def test_set_property_writes_a_dropin_and_survives_a_reload(units):
    m, system, _ = manager(units)
    m.load()
    result = m.set_property("t-a.slice", ["IOASIDsMax=25"], runtime=False, uid=0, gid=0)
    dropin = units["control"] / "t-a.slice.d" / DROPIN_NAME
    assert result["dropin"] == str(dropin)
    assert "X-IOASIDsMax=25" in dropin.read_text()
    assert limit(system, "/t.slice/t-a.slice") == 25
    assert limit(system, "/t.slice") is None  # realised with the default
    m.load()
    assert limit(system, "/t.slice/t-a.slice") == 25
    m.set_property("t-a.slice", ["IOASIDsMax=5"], runtime=True, uid=0, gid=0)
    assert (units["runtime"] / "t-a.slice.d" / DROPIN_NAME).is_file()
    assert limit(system, "/t.slice/t-a.slice") == 5  # applied now
    m.set_property("t-a.slice", ["IOASIDsMax="], runtime=False, uid=0, gid=0)
    # the persistent drop-in, reset, hides the runtime one of the same name, as in systemd
    assert limit(system, "/t.slice/t-a.slice") is None


def test_set_property_refusals_change_nothing(units):
    m, system, _ = manager(units)
    m.set_property("t.slice", ["IOASIDsMax=30"], runtime=False, uid=0, gid=0)
    dropin = units["control"] / "t.slice.d" / DROPIN_NAME
    before = dropin.read_text()
    for args, code in ((["IOASIDsMax=5000"], errno.ENOSPC), (["IOASIDsMax=x"], errno.EINVAL),
                       (["TasksMax=5"], errno.EINVAL), ([], errno.EINVAL)):
        with pytest.raises(IoasidError) as info:
            m.set_property("t.slice", args, runtime=False, uid=0, gid=0)
        assert info.value.errno == code
        assert dropin.read_text() == before
        assert limit(system, "/t.slice") == 30
    with pytest.raises(IoasidError) as info:
        m.set_property("t.service", ["IOASIDsMax=1"], runtime=False, uid=0, gid=0)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(IoasidError) as info:
        m.set_property("fresh.slice", ["IOASIDsMax=1"], runtime=True, uid=5000, gid=5000)
    assert info.value.errno == errno.EACCES
    assert not (units["runtime"] / "fresh.slice.d").exists()


def test_set_property_as_a_user_follows_the_limit_files_mode(units):
    m, system, _ = manager(units)
    m.set_property("t.slice", ["IOASIDsMax=30"], runtime=False, uid=0, gid=0)
    with pytest.raises(IoasidError) as info:
        m.set_property("t.slice", ["IOASIDsMax=3"], runtime=False, uid=5000, gid=5000)
    assert info.value.errno == errno.EACCES
    system.set_attrs("/t.slice", {"ioasids.max": {"uid": 5000}})  # chown: delegated
    m.set_property("t.slice", ["IOASIDsMax=3"], runtime=False, uid=5000, gid=5000)
    assert limit(system, "/t.slice") == 3
    system.set_attrs("/t.slice", {"ioasids.max": {"mode": 0o444}})
    assert not m.may_write_limit("/t.slice", 5000, 5000)


def test_the_limit_files_mode_is_the_mounts():
    from cgroupfs import files

    system = System(profile("fixed"), processes=FakeProcesses())
    cg = system.mkdir("/x")
    with system.lock:
        assert files.files_of(system, cg)["ioasids.max"].mode == LIMIT_FILE_MODE


def test_run_names_scopes_and_realises_slices_named_by_use(units):
    write(units["etc"] / "x-.slice.d" / "1.conf", "[Slice]\nIOASIDsMax=40\n")
    m, system, _ = manager(units)
    m.load()
    first = m.prepare_scope("x-y.slice", None, [], uid=0)
    assert first["unit"].startswith("run-u") and first["unit"].endswith(".scope")
    assert first["cgroup"] == f"/x.slice/x-y.slice/{first['unit']}"
    assert first["ioasids_max"] == "max"
    assert limit(system, "/x.slice/x-y.slice") == 40
    second = m.prepare_scope(None, "job", ["IOASIDsMax=5%"], uid=0)
    assert second["cgroup"] == "/system.slice/job.scope" and second["ioasids_max"] == "50"
    system.mkdir(second["cgroup"])
    with pytest.raises(IoasidError) as info:
        m.prepare_scope("other.slice", "job.scope", [], uid=0)
    assert info.value.errno == errno.EEXIST
    for args in (("bad--.slice", None), ("a.slice", "j.service"), ("a.scope", None)):
        with pytest.raises(IoasidError) as info:
            m.prepare_scope(*args, [], uid=0)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(IoasidError) as info:
        m.prepare_scope("new.slice", None, [], uid=5000)
    assert info.value.errno == errno.EACCES


@pytest.mark.parametrize("slice_name, where", [("w.slice", "/w.slice/"), ("-.slice", "/")])
def test_empty_scopes_are_removed(units, slice_name, where):
    m, system, _ = manager(units)
    system.on_change = m.note_change
    m.start()
    try:
        scope = m.prepare_scope(slice_name, None, [], uid=0)["cgroup"]
        assert scope.startswith(where) and scope.count("/") == where.count("/")
        system.mkdir(scope)
        system.processes.live[4242] = 1.0
        system.write_procs(scope, "4242", writer_pid=1, writer_uid=0)
        system.exit(4242)
        m.stop()  # the reaper drains what it was told before it stops
    finally:
        m.stop()
    with pytest.raises(IoasidError):
        limit(system, scope)
    if slice_name != "-.slice":
        assert limit(system, "/w.slice") is None  # the slice stays


def test_the_start_sweeps_the_empty_scopes_an_earlier_run_left(units):
    m, system, _ = manager(units)
    system.mkdir("/w.slice")
    system.mkdir("/w.slice/run-u7.scope")
    system.mkdir("/w.slice/not-a-scope")
    system.mkdir("/plain")
    system.mkdir("/plain/x.scope")  # not in a slice: not a transient scope
    m.load()
    assert limit(system, "/w.slice/run-u7.scope") == 0
    m.load(sweep=True)
    with pytest.raises(IoasidError):
        limit(system, "/w.slice/run-u7.scope")
    for kept in ("/w.slice/not-a-scope", "/plain/x.scope"):
        assert limit(system, kept) == 0
    assert limit(system, "/w.slice") is None  # realised: it was in the hierarchy


@needs_analyze
def test_systemd_reads_set_propertys_dropin_without_a_word(units, tmp_path):
    """The drop-in set-property writes, in a control directory systemd reads, is one systemd
    loads without a warning (the X- spelling), and one whose IOASIDsMax= spelling it names."""
    m, _, _ = manager(units)
    m.set_property("t.slice", ["IOASIDsMax=25"], runtime=False, uid=0, gid=0)
    write(units["etc"] / "t.slice", "[Unit]\nDescription=t\n")
    log = verify(["t.slice"], tmp_path, [units["control"], units["etc"]])
    assert DROPIN_NAME not in log, log
    dropin = units["control"] / "t.slice.d" / DROPIN_NAME
    dropin.write_text(dropin.read_text().replace("X-IOASIDsMax", "IOASIDsMax"))
    assert f"{dropin}:3" in verify(["t.slice"], tmp_path, [units["control"], units["etc"]])


class Followed:
    """A followed ``KernelMembership`` whose host has the cgroups ``host`` maps to their
    processes."""

    name = "fake"
    follows = True

    def __init__(self) -> None:
        self.host: dict[str, set[int]] = {}

    def cgroup_of(self, pid: int) -> str | None:
        return next((path for path, pids in self.host.items() if pid in pids), None)

    def mkdir(self, path: str) -> None: ...
    def rename(self, old: str, new: str) -> None: ...

    def rmdir(self, path: str) -> None:
        if self.host.get(path):
            raise OSError(errno.EBUSY, "the host's cgroup holds processes")

    def attach(self, pid: int, path: str) -> None:
        raise PermissionError(errno.EPERM, "membership follows the host")

    def procs(self, path: str) -> list[int]:
        return sorted(self.host.get(path, ()))

    def tasks(self, path: str) -> list[int]:
        return self.procs(path)


def following(units, default: str, placed: dict[str, set[int]] | None = None):
    """A manager whose system follows a ``Followed`` host, with the manager's hook;
    ``placed``: where the host has which processes, each made to exist (started at 1.0).
    Returns the manager, the system, the log, the host and the fake processes."""
    mgr, system, log = manager(units, default)
    system.kernel = host = Followed()
    system.realise_followed = mgr.realise_followed
    processes = system.processes
    assert isinstance(processes, FakeProcesses)
    for path, pids in (placed or {}).items():
        host.host[path] = set(pids)
        processes.live.update(dict.fromkeys(pids, 1.0))
    return mgr, system, log, host, processes


def test_cgroups_made_by_following_get_their_units_limits(units):
    """A process the host has in a scope of a slice: the slice's cgroup gets its unit's
    limit (a truncated-prefix drop-in too), the scope the default, and a directory that names
    no unit the knobs' limit for a new cgroup, as a mkdir would."""
    write(units["etc"] / "machine.slice", "[Slice]\nIOASIDsMax=400\n")
    write(units["lib"] / "machine-.slice.d" / "10-vms.conf", "[Slice]\nIOASIDsMax=25%\n")
    mgr, system, log, _, _ = following(units, "30", {
        "/machine.slice/machine-qemu.slice/vm1.scope": {101},
        "/machine.slice/machine-qemu.slice/vm1.scope/payload": {102}})
    for pid in (101, 102):
        assert system.sync_member(pid) is not None
    assert limit(system, "/machine.slice") == 400
    assert limit(system, "/machine.slice/machine-qemu.slice") == CAPACITY // 4
    assert limit(system, "/machine.slice/machine-qemu.slice/vm1.scope") == 30
    made = system.knobs.new_cgroup_max
    assert limit(system, "/machine.slice/machine-qemu.slice/vm1.scope/payload") == \
        (None if made == "max" else int(made))
    status = mgr.status("machine-qemu.slice")
    assert status["configured"] == "25%" and status["procs"] == 2
    assert not log.errors()


def test_a_followed_slice_whose_unit_is_bad_is_made_and_shown_failed(units):
    write(units["etc"] / "tenant.slice", "[Slice]\nIOASIDsMax=lots\n")
    mgr, system, log, _, _ = following(units, "infinity", {"/tenant.slice/job.scope": {7}})
    proc = system.sync_member(7)
    assert proc is not None and proc.cgroup.path == "/tenant.slice/job.scope"
    made = system.knobs.new_cgroup_max
    assert limit(system, "/tenant.slice") == (None if made == "max" else int(made))  # unchanged
    [(message, fields)] = log.errors()
    assert "lots" in message and fields["unit"] == "tenant.slice" and fields["line"] == 2
    assert mgr.status("tenant.slice")["active"] == "failed"


def test_cgroups_made_by_following_go_when_the_hosts_go(units):
    """Only what following made, once empty and gone from the host; children first, and a
    cgroup someone made here keeps its parents."""
    _, system, log, host, processes = following(units, "infinity", {
        "/machine.slice/vm1.scope": {1}, "/machine.slice/vm2.scope": {2}})
    for pid in (1, 2):
        system.sync_member(pid)
    system.mkdir("/admin")  # made by a mkdir: never a leftover
    assert system.followed_leftovers(set()) == []  # every one holds a process

    processes.live.pop(1)
    system.sync_member(1)  # vm1 exited
    assert system.followed_leftovers(set(host.host)) == []  # the host still has vm1.scope
    del host.host["/machine.slice/vm1.scope"]
    assert system.followed_leftovers(set(host.host)) == ["/machine.slice/vm1.scope"]

    processes.live.pop(2)
    system.sync_member(2)
    assert system.followed_leftovers(set()) == ["/machine.slice/vm1.scope",
                                                "/machine.slice/vm2.scope", "/machine.slice"]
    system.mkdir("/machine.slice/mine")
    assert system.followed_leftovers(set()) == ["/machine.slice/vm1.scope",
                                                "/machine.slice/vm2.scope"]
    system.rmdir("/machine.slice/vm1.scope")  # removed: no longer found
    assert system.followed_leftovers(set()) == ["/machine.slice/vm2.scope"]

    restored = System(system.knobs)  # the marks are kept with the state, as a restart finds
    load(json.loads(json.dumps(dump(system.core))), restored.core)
    assert restored.followed_leftovers(set()) == ["/machine.slice/vm2.scope"]
    restored.rmdir("/machine.slice/mine")
    assert restored.followed_leftovers(set()) == ["/machine.slice/vm2.scope", "/machine.slice"]
    assert not log.errors()


def test_a_slice_followed_while_units_load_stays_listed(units):
    """Following makes a slice that has no unit file while a load reads the units (between
    the load's look at the tree and its new table): the slice is in the new table, not
    dropped with the old one."""
    write(units["etc"] / "early.slice", "[Slice]\nIOASIDsMax=5\n")
    mgr, system, log, _, _ = following(units, "infinity", {"/late.slice/job.scope": {9}})
    read = mgr._read
    followed = []

    def read_then_follow(name):
        if not followed:  # once, in the load's window: the system lock is not held here
            followed.append(system.sync_member(9))
        return read(name)

    mgr._read = read_then_follow
    mgr.load()
    assert followed and followed[0] is not None
    assert limit(system, "/late.slice") is None  # no unit: the default, infinity
    assert [row["unit"] for row in mgr.slices()] == ["early.slice", "late.slice"]
    assert not log.errors()


def test_the_reaper_leaves_scopes_made_by_following_to_the_host(units):
    """An empty scope following made goes when the host's goes (the scan), not when its last
    process leaves, nor at the start's sweep."""
    mgr, system, log, host, processes = following(units, "infinity", {"/w.slice/vm.scope": {5}})
    system.on_change = mgr.note_change
    system.sync_member(5)
    mgr.start()
    try:
        processes.live.pop(5)
        host.host["/w.slice/vm.scope"] = set()  # the host has the scope still, empty
        system.sync_member(5)  # its exit
        mgr.stop()  # the reaper drains what it was told before it stops
    finally:
        mgr.stop()
    mgr.load(sweep=True)
    assert limit(system, "/w.slice/vm.scope") is None  # still there
    assert system.followed_leftovers({"/w.slice", "/w.slice/vm.scope"}) == []
    assert not log.errors()
