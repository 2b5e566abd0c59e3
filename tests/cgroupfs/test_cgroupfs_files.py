"""The file table and the process lists, without FUSE: names, modes, write rules, renderings,
and which processes ``cgroup.procs``/``tasks`` list (a scripted process source)."""

from __future__ import annotations

from errno import E2BIG, EACCES, EEXIST, EINVAL, EPERM, ESRCH

import pytest

from cgroupfs import files, pidlists
from cgroupfs.files import Writer
from ioasidsd.host import ProcessFacts, ProcessSource
from ioasidsd.model import IoasidSetType, profile
from ioasidsd.model.errors import IoasidError
from ioasidsd.system import System

ROOT = Writer(pid=4242, uid=0, gid=0)


class ScriptedProcesses(ProcessSource):
    """Processes a test starts and stops: pid -> (start time, uids, threads, movable)."""

    def __init__(self) -> None:
        self.running: dict[int, ProcessFacts] = {}
        self.threads: dict[int, list[int]] = {}

    def start(self, pid: int, *, start: float = 1.0, uid: int = 0, threads: list[int] | None = None,
              movable: bool = True) -> None:
        tids = threads or [pid]
        self.running[pid] = ProcessFacts(pid, start, (uid, uid, uid), pid, len(tids), movable)
        self.threads[pid] = tids

    def stop(self, pid: int) -> None:
        del self.running[pid]

    def facts(self, pid: int) -> ProcessFacts:
        if pid not in self.running:
            raise IoasidError(ESRCH, f"no process {pid}")
        return self.running[pid]

    def all_pids(self) -> list[int]:
        return list(self.running)

    def thread_ids(self, pid: int) -> list[int]:
        return list(self.threads.get(pid, [])) if pid in self.running else []


@pytest.fixture
def procs() -> ScriptedProcesses:
    return ScriptedProcesses()


@pytest.fixture
def system(procs: ScriptedProcesses, changes) -> System:
    return System(processes=procs, on_change=changes)


def text(system: System, path: str, name: str) -> str:
    cg = system.cgroups.lookup(path)
    return files.read(system, cg, files.files_of(system, cg)[name]).decode()


def write(system: System, path: str, name: str, data: bytes, writer: Writer = ROOT) -> int:
    cg = system.cgroups.lookup(path)
    return files.write(system, cg, files.files_of(system, cg)[name], data, writer)


def errno_of(call, *args, **kwargs) -> int | None:
    try:
        call(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


# ---------------------------------------------------------------------- the table
def test_child_files_and_modes(system: System) -> None:
    cg = system.mkdir("a")
    table = files.files_of(system, cg)
    assert sorted(table) == sorted([
        "cgroup.procs", "tasks", "cgroup.clone_children", "notify_on_release", "ioasids.max",
        "ioasids.current", "ioasids.peak", "ioasids.events", "ioasids.events.local"])
    writable = {name for name, file in table.items() if file.mode == 0o644}
    assert writable == {"cgroup.procs", "tasks", "cgroup.clone_children", "notify_on_release",
                        "ioasids.max"}
    assert all(table[name].mode == 0o444 for name in set(table) - writable)


def test_root_files_depend_on_profile() -> None:
    core_files = {"cgroup.procs", "tasks", "cgroup.clone_children", "cgroup.sane_behavior",
                  "notify_on_release", "release_agent"}
    fixed = System(profile("fixed"))
    assert set(files.files_of(fixed, fixed.cgroups.root)) == core_files | {
        "ioasids.capacity", "ioasids.current"}
    v4 = System(profile("v4"))
    assert set(files.files_of(v4, v4.cgroups.root)) == core_files


def test_file_names_are_reserved_for_mkdir_per_directory() -> None:
    v4 = System(profile("v4"))
    root_names = files.names_of(v4, v4.cgroups.root)
    v4.mkdir("ioasids.current", reserved_names=root_names)  # no such file on a v4 root
    assert errno_of(v4.mkdir, "tasks", reserved_names=root_names) == EEXIST
    fixed = System()
    assert errno_of(fixed.mkdir, "ioasids.current",
                    reserved_names=files.names_of(fixed, fixed.cgroups.root)) == EEXIST
    a = fixed.mkdir("a")
    assert errno_of(fixed.mkdir, "a/ioasids.max", reserved_names=files.names_of(fixed, a)) == EEXIST


# ---------------------------------------------------------------------- write rules
def test_empty_write_returns_zero_and_changes_nothing(system: System, changes) -> None:
    system.mkdir("a")
    before = list(changes.seen)
    assert write(system, "a", "ioasids.max", b"") == 0
    assert changes.seen == before
    assert text(system, "a", "ioasids.max") == "0\n"


def test_writes_over_a_page_are_e2big_before_parsing(system: System) -> None:
    system.mkdir("a")
    assert errno_of(write, system, "a", "ioasids.max", b"5" + b" " * 4096) == E2BIG
    assert errno_of(write, system, "a", "ioasids.max", b"x" * 4096) == EINVAL
    assert write(system, "a", "ioasids.max", b"7" + b" " * 4095) == 4096
    assert text(system, "a", "ioasids.max") == "7\n"


def test_release_agent_takes_at_most_path_max_minus_one(system: System) -> None:
    agent = "/" + "a" * 4093 + "\n"
    assert write(system, "/", "release_agent", agent.encode()) == 4095
    assert text(system, "/", "release_agent") == agent.rstrip() + "\n"
    assert errno_of(write, system, "/", "release_agent", b"/" * 4096) == E2BIG


def test_release_agent_is_stripped_at_both_ends(system: System) -> None:
    assert write(system, "/", "release_agent", b" \t/sbin/agent x \n") == 17
    assert text(system, "/", "release_agent") == "/sbin/agent x\n"
    assert write(system, "/", "release_agent", b"\n") == 1
    assert text(system, "/", "release_agent") == "\n"


def test_release_agent_reads_back_the_bytes_written(system: System, changes) -> None:
    """Any byte but NUL is kept (stripped of the kernel's white space, 0xA0 included)."""
    cg = system.cgroups.root
    agent = files.files_of(system, cg)["release_agent"]
    assert write(system, "/", "release_agent", b"\xa0 /opt/\xff\xfe caf\xc3\xa9\xa0\n") == 17
    assert files.read(system, cg, agent) == b"/opt/\xff\xfe caf\xc3\xa9\n"
    assert changes.kinds()[-1] == "release_agent"


def test_only_root_sets_the_release_agent(system: System, changes) -> None:
    before = list(changes.seen)
    user = Writer(pid=1, uid=1000, gid=1000)
    assert errno_of(write, system, "/", "release_agent", b"/bin/true", user) == EPERM
    assert changes.seen == before
    assert text(system, "/", "release_agent") == "\n"


@pytest.mark.parametrize("name", ["ioasids.current", "ioasids.peak", "ioasids.events",
                                  "ioasids.events.local"])
def test_read_only_child_files_refuse_writes(system: System, name: str) -> None:
    system.mkdir("a")
    assert errno_of(write, system, "a", name, b"0") == EINVAL


@pytest.mark.parametrize("name", ["cgroup.sane_behavior", "ioasids.capacity", "ioasids.current"])
def test_read_only_root_files_refuse_writes(system: System, name: str) -> None:
    assert errno_of(write, system, "/", name, b"0") == EINVAL


def test_limit_round_trip_and_durable_change(system: System, changes) -> None:
    system.mkdir("a")
    assert write(system, "a", "ioasids.max", b" 0x10\n") == 6
    assert text(system, "a", "ioasids.max") == "16\n"
    assert changes.kinds()[-1] == "limit"
    assert write(system, "a", "ioasids.max", b"max\n") == 4
    assert text(system, "a", "ioasids.max") == "max\n"
    assert errno_of(write, system, "a", "ioasids.max", b"-1") == EINVAL
    assert text(system, "a", "ioasids.max") == "max\n"


def test_flags_parse_without_stripping_and_are_inherited(system: System) -> None:
    system.mkdir("a")
    assert errno_of(write, system, "a", "notify_on_release", b" 1") == EINVAL
    assert errno_of(write, system, "a", "notify_on_release", b"1 ") == EINVAL
    assert write(system, "a", "notify_on_release", b"+2\n") == 3
    assert write(system, "a", "cgroup.clone_children", b"0x1") == 3
    assert text(system, "a", "notify_on_release") == "1\n"
    system.mkdir("a/b")
    assert text(system, "a/b", "notify_on_release") == "1\n"
    assert text(system, "a/b", "cgroup.clone_children") == "1\n"
    assert text(system, "/", "cgroup.sane_behavior") == "0\n"


def test_root_capacity_and_current(system: System) -> None:
    capacity = system.core.capacity
    assert text(system, "/", "ioasids.capacity") == f"capacity {capacity}\navailable {capacity}\n"
    system.mkdir("a")
    write(system, "a", "ioasids.max", b"10")
    assert text(system, "/", "ioasids.capacity") == (
        f"capacity {capacity}\navailable {capacity - 10}\n")
    proc = system.cgroups.track(77, 1.0, system.cgroups.lookup("a"))
    ioasid_set = system.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
    for _ in range(3):
        system.core.alloc(ioasid_set, 1, 1000, task=proc)
    assert text(system, "/", "ioasids.current") == "3\n"
    assert text(system, "a", "ioasids.current") == "3\n"
    assert text(system, "a", "ioasids.peak") == "3\n"


def test_events_files_render_refusals(system: System) -> None:
    system.mkdir("a")
    system.mkdir("a/b")
    write(system, "a", "ioasids.max", b"1")
    write(system, "a/b", "ioasids.max", b"max")
    proc = system.cgroups.track(77, 1.0, system.cgroups.lookup("a/b"))
    ioasid_set = system.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
    system.core.alloc(ioasid_set, 1, 1000, task=proc)
    with pytest.raises(IoasidError):
        system.core.alloc(ioasid_set, 1, 1000, task=proc)
    assert text(system, "a", "ioasids.events") == "max 1\n"
    assert text(system, "a", "ioasids.events.local") == "max 1\n"
    assert text(system, "a/b", "ioasids.events") == "max 0\n"
    assert text(system, "a/b", "ioasids.events.local") == "max 0\n"


# ---------------------------------------------------------------------- processes
def test_root_lists_every_process_not_in_a_child(system: System, procs: ScriptedProcesses) -> None:
    for pid in (1, 20, 300):
        procs.start(pid)
    system.mkdir("a")
    assert text(system, "/", "cgroup.procs") == "1\n20\n300\n"
    assert write(system, "a", "cgroup.procs", b"20\n") == 3
    assert text(system, "/", "cgroup.procs") == "1\n300\n"
    assert text(system, "a", "cgroup.procs") == "20\n"


def test_exited_members_are_not_listed(system: System, procs: ScriptedProcesses) -> None:
    procs.start(20)
    system.mkdir("a")
    write(system, "a", "cgroup.procs", b"20")
    procs.stop(20)  # the exit was not reported to the model
    assert text(system, "a", "cgroup.procs") == ""
    assert text(system, "a", "tasks") == ""
    procs.start(20, start=2.0)  # the pid is reused by a new process, which is in the root
    assert text(system, "a", "cgroup.procs") == ""
    assert text(system, "/", "cgroup.procs") == "20\n"


def test_forget_exited_reports_only_gone_members(system: System, procs: ScriptedProcesses,
                                                 changes) -> None:
    procs.start(20)
    procs.start(21)
    system.mkdir("a")
    write(system, "a", "cgroup.procs", b"20")
    write(system, "a", "cgroup.procs", b"21")
    procs.stop(20)
    pidlists.forget_exited(system, system.cgroups.lookup("a"))
    assert changes.kinds()[-1] == "exit"
    assert [p.pid for p in system.cgroups.lookup("a").procs] == [21]


def test_tasks_lists_thread_ids_sorted(system: System, procs: ScriptedProcesses) -> None:
    procs.start(50, threads=[50, 53, 51])
    procs.start(40)
    system.mkdir("a")
    write(system, "a", "tasks", b"50")
    assert text(system, "a", "tasks") == "50\n51\n53\n"
    assert text(system, "a", "cgroup.procs") == "50\n"
    assert text(system, "/", "tasks") == "40\n"


def test_pid_zero_moves_the_writer(system: System, procs: ScriptedProcesses) -> None:
    procs.start(60)
    system.mkdir("a")
    write(system, "a", "cgroup.procs", b"0", Writer(pid=60, uid=0, gid=0))
    assert text(system, "a", "cgroup.procs") == "60\n"


def test_move_errors(system: System, procs: ScriptedProcesses, changes) -> None:
    procs.start(70, uid=1000)
    procs.start(71, uid=0)
    procs.start(2, movable=False)
    system.mkdir("a")
    before = list(changes.seen)
    user = Writer(pid=70, uid=1000, gid=1000)
    assert errno_of(write, system, "a", "cgroup.procs", b"71", user) == EACCES
    assert errno_of(write, system, "a", "cgroup.procs", b"99") == ESRCH
    assert errno_of(write, system, "a", "cgroup.procs", b"2") == EINVAL
    assert errno_of(write, system, "a", "cgroup.procs", b"-1") == EINVAL
    assert errno_of(write, system, "a", "cgroup.procs", b"70 71") == EINVAL
    assert errno_of(write, system, "a", "cgroup.procs", b"99999999999") == EINVAL
    assert changes.seen == before
    assert write(system, "a", "cgroup.procs", b"70", user) == 2
    assert text(system, "a", "cgroup.procs") == "70\n"
