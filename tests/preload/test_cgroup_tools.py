"""Debian's ``cgroup-tools`` (libcgroup), unmodified, on our mount through ``ioasidctl wrap``,
compared with the same commands on a child of the kernel's cgroup-v1 ``pids`` hierarchy: the
exit status, what they print (``pids`` and ``ioasids`` both read ``{c}``, each hierarchy's
mount point ``{root}``) and what they change.

The differences are the two hierarchies' own (``docs/cgroupfs.md``), and the tests allow for
exactly these: ours has ``ioasids.events.local`` (the kernel's ``pids`` of this kernel has no
``pids.events.local``); our root has a read-only ``ioasids.current`` (the kernel's ``pids``
root has no ``pids.current``), which ``cgsnapshot`` takes as "not writable" and leaves out of
every group; a new group's limit is ``max`` in the kernel and 0 in ours, so the tests set it.

On this machine libcgroup 2.0.2's ``lssubsys`` fails (status 82, nothing printed) on the
kernel's hierarchies as on ours; the tests compare that too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from daemon.daemons import Daemon, wait_until

from .conftest import remove_tree, steady, wrap, wrapped_env

pytestmark = pytest.mark.usefixtures("cgtools")

class Side:
    """One hierarchy: the kernel's ``pids`` (tools run as they are) or ours (wrapped)."""

    def __init__(self, controller: str, root: Path, daemon: Daemon | None) -> None:
        self.c = controller
        self.root = root
        self.daemon = daemon

    def run(self, *argv: str) -> tuple[int, str, str]:
        """Run a tool; its status and output with the names made common."""
        if self.daemon is None:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  check=False)
        else:
            done = wrap(self.daemon, *argv)
        return done.returncode, self.common(done.stdout), self.common(done.stderr)

    def common(self, text: str) -> str:
        text = text.replace(str(self.root), "{root}")
        return re.sub(rf"\b{self.c}\b|\b{self.c}(?=\.)", "{c}", text)

    def cgroup_of(self, pid: int) -> tuple[int, str]:
        """This hierarchy's line of ``/proc/PID/cgroup`` (read through the wrapper for ours):
        its hierarchy id and path."""
        argv = ["cat", f"/proc/{pid}/cgroup"]
        if self.daemon is None:
            text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        else:
            text = wrap(self.daemon, *argv).stdout
        for line in text.splitlines():
            hid, controllers, path = line.split(":", 2)
            if self.c in controllers.split(","):
                return int(hid), path
        raise AssertionError(f"no {self.c} line in /proc/{pid}/cgroup:\n{text}")


@pytest.fixture
def sides(daemon, kernel_pids) -> tuple[Side, Side, str]:
    name = f"wrapt{os.getpid()}"
    remove_tree(kernel_pids, kernel_pids / name)
    yield Side("pids", kernel_pids, None), Side("ioasids", daemon.mount, daemon), name
    remove_tree(kernel_pids, kernel_pids / name)


def both(sides, *argv: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    """The same command on both sides, ``{c}`` and ``{g}`` filled in for each."""
    kernel, ours, name = sides
    return tuple(side.run(*[a.format(c=side.c, g=name) for a in argv])  # type: ignore
                 for side in (kernel, ours))


def same(sides, *argv: str) -> tuple[int, str, str]:
    """Run on both sides and insist on the same status and output."""
    kernel, ours = both(sides, *argv)
    assert ours == kernel, f"{argv}: kernel {kernel!r}, ours {ours!r}"
    return ours


def test_create_set_get_delete(sides) -> None:
    kernel, ours, name = sides
    assert same(sides, "cgcreate", "-g", "{c}:{g}")[0] == 0
    assert same(sides, "cgcreate", "-g", "{c}:{g}/sub")[0] == 0
    for side in (kernel, ours):
        assert (side.root / name / "sub").is_dir()
    same(sides, "cgcreate", "-g", "{c}:{g}")  # exists already
    assert same(sides, "cgset", "-r", "{c}.max=5", "{g}")[0] == 0
    for side in (kernel, ours):
        assert (side.root / name / f"{side.c}.max").read_text() == "5\n"
    assert same(sides, "cgget", "-r", "{c}.max", "{g}") == (0, f"{name}:\n{{c}}.max: 5\n\n", "")
    assert same(sides, "cgget", "-n", "-v", "-r", "{c}.max", "{g}") == (0, "5\n", "")
    # (a new group's limit differs: the kernel's is max, ours 0; docs/cgroupfs.md)
    assert same(sides, "cgset", "-r", "{c}.max=3", "{g}/sub")[0] == 0
    assert same(sides, "cgget", "-n", "-r", "{c}.max", "{g}", "{g}/sub") == (
        0, "{c}.max: 5\n{c}.max: 3\n", "")
    bad = same(sides, "cgset", "-r", "{c}.max=bogus", "{g}")
    assert bad[0] != 0  # the kernel's EINVAL, reported the same way
    assert same(sides, "cgset", "-r", "{c}.max=max", "{g}")[0] == 0
    assert same(sides, "cgget", "-n", "-v", "-r", "{c}.max", "{g}") == (0, "max\n", "")
    assert same(sides, "cgset", "--copy-from", "{g}", "{g}/sub")[0] == 0
    assert same(sides, "cgget", "-n", "-v", "-r", "{c}.max", "{g}/sub") == (0, "max\n", "")
    # all the files of a group: ours has one more (DIFFERENCES["events.local"])
    k, o = both(sides, "cgget", "-g", "{c}", "{g}")
    assert k[0] == o[0] == 0
    ours_lines = [line for line in o[1].splitlines() if "events.local" not in line]
    assert len(ours_lines) == len(o[1].splitlines()) - 1
    assert sorted(ours_lines) == sorted(k[1].splitlines())
    assert same(sides, "lscgroup", "{c}:/{g}") == (
        0, f"{{c}}:/{name}/\n{{c}}:/{name}/sub\n", "")
    assert same(sides, "cgdelete", "-g", "{c}:{g}/sub")[0] == 0
    same(sides, "cgdelete", "-g", "{c}:{g}/sub")  # gone already
    assert same(sides, "cgdelete", "-r", "-g", "{c}:{g}")[0] == 0
    for side in (kernel, ours):
        assert not (side.root / name).exists()


def test_create_with_owners_and_modes(sides) -> None:
    kernel, ours, name = sides
    assert same(sides, "cgcreate", "-a", "nobody:nogroup", "-t", "nobody:nogroup", "-d", "750",
                "-f", "640", "-g", "{c}:{g}")[0] == 0

    def modes(side: Side) -> dict[str, tuple[int, int, int]]:
        top = side.root / name
        out = {"": (top.stat().st_mode, top.stat().st_uid, top.stat().st_gid)}
        for path in top.iterdir():
            st = path.stat()
            out[side.common(path.name)] = (st.st_mode, st.st_uid, st.st_gid)
        return out

    theirs, mine = modes(kernel), modes(ours)
    assert mine.pop("{c}.events.local") == mine["{c}.events"]
    assert mine == theirs
    assert theirs[""][1] == theirs["tasks"][1] != 0
    assert same(sides, "cgdelete", "-g", "{c}:{g}")[0] == 0


def test_exec_and_classify_move_processes(sides, sleepers) -> None:
    kernel, ours, name = sides
    same(sides, "cgcreate", "-g", "{c}:{g}/a", "-g", "{c}:{g}/b")
    # cgexec: the command starts in the group; its own /proc/self/cgroup says so
    k, o = both(sides, "cgexec", "-g", "{c}:{g}/a", "cat", "/proc/self/cgroup")
    assert k[0] == o[0] == 0
    lines = [[line for line in out.splitlines() if ":{c}:" in line] for out in (k[1], o[1])]
    assert [line[0].split(":", 1)[1] for line in lines] == [f"{{c}}:/{name}/a"] * 2
    # cgclassify: a running process moves
    pid = sleepers()
    assert same(sides, "cgclassify", "-g", "{c}:{g}/b", str(pid))[0] == 0
    for side in (kernel, ours):
        assert (side.root / name / "b" / "cgroup.procs").read_text().split() == [str(pid)]
        assert side.cgroup_of(pid)[1] == f"/{name}/b"
    same(sides, "cgclassify", "-g", "{c}:{g}/none", str(pid))  # no such group
    # deleting the group moves its processes up to the parent
    assert same(sides, "cgdelete", "-g", "{c}:{g}/b")[0] == 0
    for side in (kernel, ours):
        wait_until(lambda side=side: side.cgroup_of(pid)[1] == f"/{name}", "the move up")
    assert same(sides, "cgdelete", "-r", "-g", "{c}:{g}")[0] == 0
    for side in (kernel, ours):
        assert side.cgroup_of(pid)[1] == "/"


def test_listings_and_snapshot(sides) -> None:
    name = sides[2]
    same(sides, "cgcreate", "-g", "{c}:{g}")
    same(sides, "cgset", "-r", "{c}.max=7", "{g}")
    same(sides, "lssubsys", "-m", "{c}")
    same(sides, "lssubsys", "-i", "{c}")
    same(sides, "lssubsys", "-a")
    k, o = both(sides, "lscgroup")
    assert k[0] == o[0] == 0
    # the whole listing, of our group's part (other sessions use the kernel's hierarchy too)
    def mine(text: str) -> list[str]:
        return [line for line in text.splitlines()
                if line == "{c}:/" or line.startswith(f"{{c}}:/{name}")]

    assert mine(k[1]) == mine(o[1]) == ["{c}:/", f"{{c}}:/{name}"]
    assert f"{{c}}:/{name}" in o[1].splitlines()
    k, o = both(sides, "cgsnapshot", "-s", "-b", "/dev/null", "{c}")
    assert k[0] == o[0] == 0
    assert "\t{c} = {root};" in k[1].splitlines() and "\t{c} = {root};" in o[1].splitlines()

    def group(text: str) -> list[str]:
        start = text.index(f"group {name} {{")
        return sorted(text[start:text.index("\n}\n", start)].splitlines())

    ours_group = [line for line in group(o[1]) if "events.local" not in line]
    kernel_group = [line for line in group(k[1]) if "{c}.current=" not in line]
    assert ours_group == kernel_group
    assert '\t\t{c}.max="7";' in ours_group


def test_the_hierarchy_id_is_the_same_in_proc_cgroups(sides, daemon, library) -> None:
    _kernel, ours, _name = sides
    env = wrapped_env(daemon, library)

    def look() -> tuple[str, int]:
        cgroups = subprocess.run(["cat", "/proc/cgroups"], capture_output=True, text=True,
                                 env=env, check=True).stdout
        return cgroups, ours.cgroup_of(os.getpid())[0]

    cgroups, hid = steady(look)
    line = [row.split("\t") for row in cgroups.splitlines() if row.startswith("ioasids\t")]
    assert len(line) == 1
    assert int(line[0][1]) == hid
    assert line[0][3] == "1"  # enabled
