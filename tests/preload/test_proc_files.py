"""The /proc files a wrapped program reads: the hierarchy as a cgroup-v1 mount of ``ioasids``
beside the kernel's (same shape as the kernel's ``pids`` lines), the ``ioasids`` line of
``/proc/PID/cgroup`` for any process, and everything else untouched. Also the command's own
behaviour: ``wrap --env`` for scripts, and its errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from daemon.daemons import BIN

from .conftest import KERNEL_PIDS, kernel_top, steady, wrap


def read_both(d, path: str) -> tuple[str, str]:
    """``path`` read without and with the wrapper, retried until the machine's mounts held
    still in between (other tests mount and unmount meanwhile)."""
    for _ in range(20):
        before = Path(path).read_text()
        wrapped = wrap(d, "cat", path).stdout
        if Path(path).read_text() == before:
            return before, wrapped
    raise AssertionError(f"{path} never held still")


def test_mounts_show_a_cgroup_v1_mount_of_ioasids(daemon) -> None:
    mount = str(daemon.mount)
    paths = ["/proc/self/mounts", "/proc/mounts", f"/proc/{os.getpid()}/mounts"]
    if os.path.islink("/etc/mtab") and \
            os.readlink("/etc/mtab").endswith(("proc/self/mounts", "proc/mounts")):
        paths.append("/etc/mtab")  # the usual link reads as its target
    for path in paths:
        plain, wrapped = read_both(daemon, path)
        ours = [line for line in wrapped.splitlines() if line.split()[1] == mount]
        assert len(ours) == 1, wrapped
        source, _point, fstype, options, *rest = ours[0].split()
        assert (source, fstype, rest) == ("cgroup", "cgroup", ["0", "0"])
        assert options.split(",")[0] == "rw" and options.split(",")[-1] == "ioasids"
        # every other line is the kernel's, untouched
        assert [line for line in wrapped.splitlines() if line.split()[1] != mount] == \
            [line for line in plain.splitlines() if line.split()[1] != mount]
        assert f" {mount} fuse.ioasids " in plain
        if KERNEL_PIDS.is_dir():  # the kernel's own line for pids has the same shape
            kernel = [line.split() for line in plain.splitlines()
                      if line.split()[1] == str(KERNEL_PIDS)]
            if kernel:
                assert kernel[0][0] == "cgroup" and kernel[0][2] == "cgroup"
                assert kernel[0][3].split(",")[-1] == "pids"


def test_mountinfo_shows_the_cgroup_type(daemon) -> None:
    mount = str(daemon.mount)
    plain, wrapped = read_both(daemon, "/proc/self/mountinfo")

    def split(text: str) -> dict[str, tuple[list[str], list[str]]]:
        rows = {}
        for line in text.splitlines():
            head, _, tail = line.partition(" - ")
            rows[head.split()[4]] = (head.split(), tail.split())
        return rows

    before, after = split(plain), split(wrapped)
    assert before.keys() == after.keys()
    assert after[mount][0] == before[mount][0]  # ids, device, root, point, options kept
    assert before[mount][1][0] == "fuse.ioasids"
    assert after[mount][1] == ["cgroup", "cgroup", "rw,ioasids"]
    assert {k: v for k, v in after.items() if k != mount} == \
        {k: v for k, v in before.items() if k != mount}


def test_proc_cgroups_and_the_pid_cgroup_line(daemon, sleepers) -> None:
    (daemon.mount / "a").mkdir()
    (daemon.mount / "a" / "b").mkdir()
    pid = sleepers()
    (daemon.mount / "a" / "b" / "cgroup.procs").write_text(str(pid))

    def look() -> dict[str, object]:
        return {
            "top": kernel_top(),
            "cgroups": read_both(daemon, "/proc/cgroups"),
            "pid": [read_both(daemon, path) for path in
                    (f"/proc/{pid}/cgroup", f"/proc/{pid}/task/{pid}/cgroup")],
            "own": wrap(daemon, "sh", "-c", f"echo $$ > {daemon.mount}/a/cgroup.procs; "
                                            "exec cat /proc/self/cgroup").stdout,
            "ps": wrap(daemon, "ps", "-o", "pid=,cgroup=", "-p", str(pid)).stdout,
            "root": wrap(daemon, "cat", "/proc/self/cgroup").stdout,
        }

    seen = steady(look)
    plain, wrapped = seen["cgroups"]  # type: ignore[misc]
    assert wrapped.startswith(plain)
    name, hid, count, enabled = wrapped[len(plain):].rstrip("\n").split("\t")
    assert (name, count, enabled) == ("ioasids", "3", "1")  # the root, a and a/b
    assert int(hid) == seen["top"] + 1  # type: ignore[operator]  # above every kernel id
    for plain, wrapped in seen["pid"]:  # type: ignore[attr-defined]
        assert wrapped == f"{hid}:ioasids:/a/b\n" + plain
    # the wrapped program itself, and ps
    assert seen["own"].splitlines()[0] == f"{hid}:ioasids:/a"  # type: ignore[attr-defined]
    assert f"{hid}:ioasids:/a/b," in seen["ps"]  # type: ignore[operator]
    # a process in no child cgroup is in the root; no such process stays an error
    assert seen["root"].startswith(f"{hid}:ioasids:/\n")  # type: ignore[attr-defined]
    gone = wrap(daemon, "cat", "/proc/999999999/cgroup")
    assert gone.returncode != 0 and "No such file" in gone.stderr


def test_other_files_pass_through(daemon, tmp_path) -> None:
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 64)
    copy = wrap(daemon, "sh", "-c", f"cp {data} {tmp_path}/copy && cat /proc/self/limits")
    assert copy.returncode == 0, copy.stderr
    assert (tmp_path / "copy").read_bytes() == data.read_bytes()
    assert copy.stdout == Path("/proc/self/limits").read_text()
    # writing to a rewritten file is the kernel's business
    write = wrap(daemon, "sh", "-c", "echo x > /proc/self/mounts")
    assert write.returncode != 0


def test_the_environment_form_for_scripts(daemon) -> None:
    script = (f'eval "$({BIN}/ioasidctl --runtime-dir {daemon.run} wrap --env)"; '
              "head -1 /proc/self/cgroup; grep -c ' cgroup rw.*,ioasids ' /proc/self/mounts")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    first, count = done.stdout.splitlines()
    assert first.endswith(":ioasids:/") and count == "1"


def test_wrap_errors(daemon, tmp_path) -> None:
    ctl = [str(BIN / "ioasidctl"), "--runtime-dir", str(daemon.run), "wrap"]
    usage = subprocess.run(ctl, capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    missing = subprocess.run([*ctl, "--", "no-such-command-here"], capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 127
    assert missing.stderr == "ioasidctl: no-such-command-here: command not found\n"
    nolib = subprocess.run([*ctl, "--", "true"], capture_output=True, text=True, check=False,
                           env=dict(os.environ, IOASIDS_PRELOAD_LIB=str(tmp_path / "none.so")))
    assert nolib.returncode == 1 and nolib.stderr.startswith("ioasidctl: the preload library")
    status = subprocess.run([*ctl, "--", "sh", "-c", "exit 7"], check=False)
    assert status.returncode == 7


@pytest.mark.parametrize("mode", ["given", "found"])
def test_the_mount_given_or_found(daemon, mode) -> None:
    """``--mount`` names the hierarchy; without a daemon to ask the library finds the first
    fuse.ioasids mount itself."""
    ctl = [str(BIN / "ioasidctl"), "--runtime-dir",
           str(daemon.run) if mode == "given" else str(daemon.base / "elsewhere"), "wrap"]
    if mode == "given":
        ctl += ["--mount", str(daemon.mount)]
    done = subprocess.run([*ctl, "--", "cat", "/proc/self/mounts"], capture_output=True,
                          text=True, check=True)
    assert any(line.split()[2] == "cgroup" and line.split()[3].endswith(",ioasids")
               for line in done.stdout.splitlines())
