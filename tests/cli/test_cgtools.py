"""``ioasidctl``'s ``cg*`` analogues against the real tools: Debian's ``cgroup-tools``
(``cgget``, ``cgset``, ``cgdelete``, ``cgclassify``, ``cgexec``) on a child of the kernel's v1
``pids`` hierarchy and ``ioasidctl`` on our mount, the same operations on the same paths, with
``pids`` read as ``ioasids``: the same output and the same effects.

The kernel's hierarchy is the one mounted at ``/sys/fs/cgroup/pids`` or, if none is, one these
tests mount themselves (as root) and unmount afterwards; where neither is possible (no v1
``pids`` controller free) or the tools are missing, the tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ioasidsd.host import mounts

from .conftest import IOASIDCTL, Served

NAME = f"ioasids-cgtools-{os.getpid()}"
"""The cgroup both sides make: the same path in the kernel's hierarchy and in ours."""
TOOLS = ("cgget", "cgset", "cgdelete", "cgclassify", "cgexec")


def _v1_pids() -> Path | None:
    for mount in mounts():
        if mount.fstype == "cgroup" and "pids" in mount.super_options.split(","):
            return Path(mount.mount_point)
    return None


@pytest.fixture(scope="module")
def kernel() -> Iterator[Path]:
    """The kernel's v1 ``pids`` hierarchy (mounted here if it was not)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cgroup-tools is not installed ({', '.join(missing)} missing)")
    found = _v1_pids()
    made = None
    if found is None:
        if os.geteuid() != 0:
            pytest.skip("no v1 pids hierarchy is mounted, and only root may mount one")
        made = Path(tempfile.mkdtemp(prefix="ioasids-pids-"))
        done = subprocess.run(["mount", "-t", "cgroup", "-o", "pids", "pids", str(made)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            made.rmdir()
            pytest.skip(f"the v1 pids hierarchy cannot be mounted: {done.stderr.strip()}")
        found = made
    try:
        yield found
    finally:
        if made is not None:
            subprocess.run(["umount", str(made)], check=False)
            with contextlib.suppress(OSError):
                made.rmdir()


def _clear(root: Path, top: Path) -> None:
    """Move every process under ``top`` to ``root`` and remove ``top``, deepest first."""
    if not top.exists():
        return
    for where in [*sorted(top.rglob("*"), key=lambda p: -len(p.parts)), top]:
        if not where.is_dir():
            continue
        for pid in (where / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            where.rmdir()


@pytest.fixture
def both(kernel: Path, served: Served) -> Iterator[tuple[Path, Served]]:
    """``/NAME/a`` with ``a/x`` (pids.max 10, 3) in the kernel's hierarchy and the same with
    ioasids.max in ours; removed afterwards (processes moved to the root first)."""
    top = kernel / NAME
    (top / "a" / "x").mkdir(parents=True)
    (top / "a" / "pids.max").write_text("10")
    (top / "a" / "x" / "pids.max").write_text("3")
    served.ok("create", "-p", f"/{NAME}/a/x")
    served.ok("set", "-r", "ioasids.max=max", f"/{NAME}")
    served.ok("set", "-r", "ioasids.max=10", f"/{NAME}/a")
    served.ok("set", "-r", "ioasids.max=3", f"/{NAME}/a/x")
    try:
        yield kernel, served
    finally:
        _clear(kernel, top)
        if (served.mount / NAME).exists():
            for pid in served.ok("tree", "--json", f"/{NAME}").split('"pid": ')[1:]:
                with contextlib.suppress(OSError):
                    (served.mount / "cgroup.procs").write_text(pid.split(",")[0])
            served.ctl("delete", "-r", f"/{NAME}")


def tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


def as_ours(text: str) -> str:
    return text.replace("pids.", "ioasids.").replace("pids:", "ioasids:")


@pytest.mark.parametrize("flags", [(), ("-n",), ("-v",), ("-n", "-v")])
def test_get_prints_what_cgget_prints(both, flags) -> None:
    _, served = both
    paths = (f"/{NAME}/a/x", f"{NAME}/a")
    real = tool("cgget", *flags, "-r", "pids.max", "-r", "pids.current", *paths)
    assert real.returncode == 0, real.stderr
    ours = served.ctl("get", *flags, "-r", "ioasids.max", "-r", "ioasids.current", *paths)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == as_ours(real.stdout)


def test_get_without_names_shows_the_controller_files_as_cgget(both) -> None:
    _, served = both
    real = tool("cgget", "-g", "pids", f"/{NAME}/a")
    ours = served.ctl("get", f"/{NAME}/a")
    assert real.returncode == ours.returncode == 0, (real.stderr, ours.stderr)
    # the same files in the same layout; ours has ioasids.events.local besides (v1 pids has not)
    kept = [line for line in ours.stdout.splitlines() if not line.startswith(
        "ioasids.events.local:")]
    assert kept == as_ours(real.stdout).splitlines()


def values(root: Path, name: str) -> dict[str, str]:
    """``name`` of every cgroup below ``root/NAME``, by path from there."""
    return {str(p.parent.relative_to(root)): p.read_text().strip()
            for p in sorted((root / NAME).rglob(name))}


def test_set_has_the_effects_of_cgset(both) -> None:
    kernel, served = both
    steps = [
        (("-r", "pids.max=7", f"/{NAME}/a"), ("-r", "ioasids.max=7", f"/{NAME}/a")),
        # Debian's cgset (libcgroup 2.0) has no -R: the cgroups it recurses into are named
        (("-r", "pids.max=5", f"/{NAME}/a", f"/{NAME}/a/x"),
         ("-R", "-r", "ioasids.max=5", f"/{NAME}/a")),
        (("--copy-from", f"/{NAME}/a/x", f"/{NAME}/a"),
         ("--copy-from", f"/{NAME}/a/x", f"/{NAME}/a")),
    ]
    for real_args, our_args in steps:
        (kernel / NAME / "a" / "x" / "pids.max").write_text("2")
        served.ok("set", "-r", "ioasids.max=2", f"/{NAME}/a/x")
        real = tool("cgset", *real_args)
        ours = served.ctl("set", *our_args)
        assert real.returncode == ours.returncode == 0, (real.stderr, ours.stderr)
        assert values(served.mount, "ioasids.max") == values(kernel, "pids.max"), our_args


@pytest.mark.parametrize("value", ["junk", "-1", "9999999999999999999999"])
def test_a_value_cgset_refuses_is_refused_and_changes_nothing(both, value) -> None:
    kernel, served = both
    real = tool("cgset", "-r", f"pids.max={value}", f"/{NAME}/a")
    ours = served.ctl("set", "-r", f"ioasids.max={value}", f"/{NAME}/a")
    assert real.returncode != 0 and ours.returncode == 1
    assert len(ours.stderr.splitlines()) == 1
    assert values(served.mount, "ioasids.max") == values(kernel, "pids.max")


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "120"])


def kernel_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return path
    raise AssertionError(f"process {pid} is in no pids cgroup")


def our_cgroup(served: Served, pid: int) -> str:
    return served.ok("which", str(pid)).split()[1]


def test_classify_and_delete_move_processes_as_cgclassify_and_cgdelete(both) -> None:
    kernel, served = both
    real, ours = sleeper(), sleeper()
    try:
        assert tool("cgclassify", "-g", f"pids:/{NAME}/a/x", str(real.pid)).returncode == 0
        served.ok("classify", "-g", f"/{NAME}/a/x", str(ours.pid))
        assert kernel_cgroup(real.pid) == our_cgroup(served, ours.pid) == f"/{NAME}/a/x"
        # a cgroup with a child is not removed without -r, by either
        real_busy = tool("cgdelete", f"pids:/{NAME}/a")
        our_busy = served.ctl("delete", f"/{NAME}/a")
        assert real_busy.returncode != 0 and our_busy.returncode == 1
        assert (kernel / NAME / "a").is_dir() and (served.mount / NAME / "a").is_dir()
        # the members of a removed cgroup go to its parent
        assert tool("cgdelete", f"pids:/{NAME}/a/x").returncode == 0
        served.ok("delete", f"/{NAME}/a/x")
        assert kernel_cgroup(real.pid) == our_cgroup(served, ours.pid) == f"/{NAME}/a"
        assert tool("cgdelete", "-r", f"pids:/{NAME}").returncode == 0
        served.ok("delete", "-r", f"/{NAME}")
        assert kernel_cgroup(real.pid) == our_cgroup(served, ours.pid) == "/"
        assert not (kernel / NAME).exists() and not (served.mount / NAME).exists()
    finally:
        for proc in (real, ours):
            proc.kill()
            proc.wait()


def test_exec_runs_in_the_cgroup_and_exits_with_the_status_as_cgexec(both) -> None:
    _, served = both
    script = "cat /proc/self/cgroup; exit 3"
    real = tool("cgexec", "-g", f"pids:/{NAME}/a", "sh", "-c", script)
    assert real.returncode == 3 and f"pids:/{NAME}/a\n" in real.stdout
    ours = served.ctl("exec", "-g", f"/{NAME}/a", "--", "sh", "-c",
                      f"{IOASIDCTL} --runtime-dir {served.daemon.run} which $$; exit 3")
    assert ours.returncode == 3, ours.stderr
    assert ours.stdout.split()[1] == f"/{NAME}/a"
