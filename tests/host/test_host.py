"""``ioasidsd.host``: the one reader of ``/proc`` process files, ``mountinfo`` and ``boot_id``.

Mountinfo is parsed from crafted text (every escape the kernel writes, and any ``\\ooo``), and
once from a real tmpfs mounted at such a path in a private mount namespace.
"""

from __future__ import annotations

import ast
import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from importlib import import_module
from pathlib import Path

import pytest

import cgroupfs
import ioasidsd
from ioasidsd import host
from ioasidsd.host import Mount, ProcStat, parse_mountinfo, read_stat, unmangle
from ioasidsd.model.errors import IoasidError
from ioasidsd.userapi.server import process_exiting

ODD = "/mnt/a b\tc\nd\\e"
"""A mount point with every character the kernel escapes in mountinfo."""
ODD_MANGLED = rb"/mnt/a\040b\011c\012d\134e"
NO_PID = 2**22 + 12345  # beyond pid_max: never a process
FUSE_MOUNTS = import_module("cgroupfs.mount")  # the package's ``mount`` is a function


def mountinfo(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


CRAFTED = mountinfo(
    b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro",
    b"not a mount line",
    b"40 22 0:35 / /mnt rw shared:2 master:7 - tmpfs tmpfs rw,size=1024k",
    b"41 40 0:36 /sub\\040dir " + ODD_MANGLED + b" rw,nosuid - fuse.cgroupfs my\\040src "
    b"rw,user_id=0",
    b"42 40 0:37 / /mnt/caf\\303\\251 rw - tmpfs  rw",  # \303\251: UTF-8 of e-acute; no source
    b"43 40 0:38 / /mnt/short rw - tmpfs",  # cut short: skipped
    b"44 x 0:39 / /mnt/bad rw - tmpfs none rw",  # not a number: skipped
    b"45 22 0:40 / /mnt rw - proc proc rw",  # on top of mount 40
)


def test_mountinfo_fields_and_every_escape_are_decoded() -> None:
    found = parse_mountinfo(CRAFTED)
    assert [m.mount_id for m in found] == [22, 40, 41, 42, 45]
    assert found[0] == Mount(22, 1, "0:21", "/", "/", "rw,relatime", ("shared:1",), "ext4",
                             "/dev/sda1", "rw,errors=remount-ro")
    assert found[1].optional == ("shared:2", "master:7")
    odd = found[2]
    assert odd.mount_point == ODD
    assert odd.root == "/sub dir"
    assert (odd.fstype, odd.source, odd.super_options) == ("fuse.cgroupfs", "my src",
                                                            "rw,user_id=0")
    assert odd.optional == ()
    assert found[3].mount_point == "/mnt/café"
    assert found[3].source == ""  # an empty field keeps its place


def test_unmangle_decodes_any_octal_escape_and_only_those() -> None:
    assert unmangle(ODD_MANGLED) == ODD
    assert unmangle(rb"\101\102") == "AB"
    assert unmangle(rb"\303\251") == "é"
    assert unmangle(rb"\377") == os.fsdecode(b"\xff")  # not UTF-8: a surrogate, as fsdecode does
    assert unmangle(rb"a\b\12\400\8") == "a\\b\\12\\400\\8"  # not three octal digits of a byte


def test_filesystem_of_is_the_innermost_topmost_mount(monkeypatch) -> None:
    monkeypatch.setattr(host, "mounts", lambda: parse_mountinfo(CRAFTED))
    assert host.filesystem_of(ODD) == "fuse.cgroupfs"
    assert host.filesystem_of(ODD + "/deeper/still") == "fuse.cgroupfs"
    assert host.filesystem_of("/mnt/café/x") == "tmpfs"
    assert host.filesystem_of("/mnt/a b") == "proc"  # /mnt itself: the mount on top
    assert host.filesystem_of("/mntx") == "ext4"  # a prefix that is not a parent directory
    assert host.filesystem_of("/") == "ext4"


def test_cgroupfs_finds_its_fuse_mounts_through_the_one_parser(monkeypatch) -> None:
    monkeypatch.setattr(FUSE_MOUNTS, "mounts", lambda: parse_mountinfo(CRAFTED))
    assert FUSE_MOUNTS._fuse_mounted_at(ODD)
    assert not FUSE_MOUNTS._fuse_mounted_at("/mnt/a b")  # not the mount point
    assert not FUSE_MOUNTS._fuse_mounted_at("/mnt/café")  # not FUSE

    def unreadable() -> list[Mount]:
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(FUSE_MOUNTS, "mounts", unreadable)
    assert not FUSE_MOUNTS._fuse_mounted_at(ODD)


PROBE = """
import json, subprocess, sys
from ioasidsd.host import filesystem_of, mounts
path = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "ioasids host test", path], check=True)
ours = [m for m in mounts() if m.source == "ioasids host test"]
print(json.dumps({"points": [m.mount_point for m in ours], "types": [m.fstype for m in ours],
                  "inside": filesystem_of(path + "/x")}))
"""


def test_a_real_mount_at_an_odd_path_is_read_back(tmp_path: Path) -> None:
    """The kernel's own escaping, read back: a tmpfs mounted (in a private mount namespace,
    gone when the probe exits) on a directory whose name holds a space, a tab, a newline and
    a backslash."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount in a private namespace")
    point = tmp_path / "a b\tc\nd\\e"
    point.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", PROBE,
         str(point)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(ioasidsd.__file__).parent.parent)})
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"cannot make a mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"points": [str(point)], "types": ["tmpfs"], "inside": "tmpfs"}


def test_the_real_mountinfo_has_a_root() -> None:
    assert any(m.mount_point == "/" for m in host.mounts())


# ---------------------------------------------------------------------- processes
def test_stat_of_this_process_and_of_none() -> None:
    stat = read_stat(os.getpid())
    assert stat is not None and stat.running and not stat.exiting
    assert stat.ppid == os.getppid()
    assert (stat.pgid, stat.sid) == (os.getpgid(0), os.getsid(0))
    assert 0 < stat.start_time <= host.process_clock()
    assert read_stat(NO_PID) is None


def test_exiting_is_a_zombie_a_dead_task_or_pf_exiting() -> None:
    def stat(state: bytes, flags: int = 0) -> ProcStat:
        return ProcStat(state, 1, 1, 1, flags, 1.0)

    assert not stat(b"S").exiting and not stat(b"R").exiting
    assert stat(b"S", host.PF_EXITING).exiting
    assert all(stat(state).exiting for state in (b"Z", b"X", b"x"))


def test_process_exiting_reads_the_stat() -> None:
    """The socket face's question (``process_exiting``) is answered from ``read_stat``: a
    running process is not exiting, a zombie (exited, not reaped) and a pid with no process
    are."""
    assert not process_exiting(os.getpid())
    assert process_exiting(NO_PID)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie
        assert read_stat(child.pid).state == b"Z"
        assert process_exiting(child.pid)
    finally:
        child.wait()


def test_a_process_gone_is_none_or_esrch_for_every_read(monkeypatch) -> None:
    """Every process read of the module, on a pid with no process and on a process whose files
    fail with ESRCH after the open (it exited meanwhile): ``None``, ``False``, empty, ESRCH."""
    source = host.ProcessSource()

    def check(pid: int) -> None:
        assert read_stat(pid) is None
        assert source.stat(pid) is None
        assert source.parent(pid) is None
        assert not source.alive(pid, 0.0)
        assert source.thread_ids(pid) == []
        assert source.cgroup(pid, "systemd") is None
        with pytest.raises(IoasidError) as info:
            source.facts(pid)
        assert info.value.errno == errno.ESRCH

    check(NO_PID)

    class Vanishing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, *args):
            raise ProcessLookupError(errno.ESRCH, "No such process")

        def __iter__(self):
            raise ProcessLookupError(errno.ESRCH, "No such process")

    real_open, real_listdir = builtins.open, os.listdir

    def vanishing_listdir(path):
        if str(path).startswith("/proc/"):
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return real_listdir(path)

    monkeypatch.setattr("ioasidsd.host.open",
                        lambda path, *a, **k: Vanishing() if str(path).startswith("/proc/")
                        else real_open(path, *a, **k), raising=False)
    monkeypatch.setattr(host.os, "listdir", vanishing_listdir)
    check(os.getpid())


def test_this_process_facts_and_threads() -> None:
    facts = host.ProcessSource().facts(os.getpid())
    assert facts.tgid == os.getpid() and facts.ppid == os.getppid()
    assert facts.uids == os.getresuid()
    assert os.getpid() in host.ProcessSource().thread_ids(os.getpid())


def test_the_cgroup_of_a_named_hierarchy_is_read_from_its_line() -> None:
    data = (b"12:name=ioasids-1:/a/b c\n11:name=systemd:/user.slice\n8:pids,other:/x\n"
            b"0::/unified\n")
    assert host.cgroup_in(data, "ioasids-1") == "/a/b c"
    assert host.cgroup_in(data, "systemd") == "/user.slice"
    assert host.cgroup_in(data, "ioasids") is None  # a name is matched whole
    assert host.cgroup_in(data, "pids") is None  # a controller is not a name
    assert host.cgroup_in(b"", "systemd") is None


def test_this_process_cgroup_agrees_with_proc() -> None:
    with open("/proc/self/cgroup", "rb") as lines:
        named = [line.split(b":") for line in lines.read().splitlines()
                 if line.split(b":")[1].startswith(b"name=")]
    if not named:
        pytest.skip("no named cgroup-v1 hierarchy is mounted on this machine")
    _, name, path = named[0]
    got = host.ProcessSource().cgroup(os.getpid(), name.decode()[len("name="):])
    assert got == path.decode()


def test_boot_id_and_clock() -> None:
    assert uuid.UUID(host.boot_id()) and host.boot_id() == host.boot_id()
    before = host.process_clock()
    assert host.process_clock() >= before


# ---------------------------------------------------------------------- the one reader
PACKAGE_ROOTS = (Path(ioasidsd.__file__).parent, Path(cgroupfs.__file__).parent)


def literals(path: Path) -> list[tuple[int, str]]:
    """The string literals of ``path`` that are not documentation (a string statement)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs]


def test_no_other_module_names_the_files_host_reads() -> None:
    """Only ``ioasidsd/host.py`` names ``/proc`` paths, ``mountinfo`` or ``boot_id`` in code."""
    here = Path(host.__file__)
    named = [f"{path}:{line}: {text!r}"
             for root in PACKAGE_ROOTS for path in sorted(root.rglob("*.py")) if path != here
             for line, text in literals(path)
             if "/proc" in text or "mountinfo" in text or "boot_id" in text]
    assert named == []
    assert any("/proc/" in text for _, text in literals(here))  # the scan sees literals


def test_the_cgroup_of_the_unified_hierarchy_is_read_from_its_line() -> None:
    data = (b"12:name=ioasids-1:/a/b c\n11:name=systemd:/user.slice\n8:pids,other:/x\n"
            b"0::/unified/x\n")
    assert host.cgroup_in(data, host.UNIFIED) == "/unified/x"
    assert host.cgroup_in(b"11:name=systemd:/user.slice\n", host.UNIFIED) is None
    assert host.cgroup_in(b"1::/not-v2\n", host.UNIFIED) is None  # only hierarchy 0 is v2


def test_the_mounts_of_the_hosts_hierarchies_are_found() -> None:
    found = False
    for hierarchy, fstype in (("systemd", "cgroup"), (host.UNIFIED, "cgroup2")):
        mount = host.cgroup_mount(hierarchy)
        if mount is None:
            continue
        found = True
        assert mount.fstype == fstype
        assert os.path.exists(os.path.join(mount.mount_point, "cgroup.procs"))
        where = host.ProcessSource().cgroup(os.getpid(), hierarchy)
        assert where is not None and where.startswith("/")
    if not found:
        pytest.skip("neither name=systemd nor cgroup v2 is mounted here")
    assert host.cgroup_mount("no-such-hierarchy-here") is None
