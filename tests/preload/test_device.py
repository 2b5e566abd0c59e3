"""An unmodified C program on ``/dev/ioasid`` through ``ioasidctl wrap``: the series' commands,
the refusals, bad input, and the open file's lifetime (last close, ``fork()``, exit)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from daemon.daemons import BIN, wait_until

from .conftest import wrap, wrapped_env


def steps(output: str) -> list[str]:
    return output.splitlines()


def cgroup(d, name: str, limit: int) -> Path:
    path = d.mount / name
    path.mkdir()
    (path / "ioasids.max").write_text(str(limit))
    return path


def enter_and_run(cg: Path, client: Path, *args: str) -> list[str]:
    """The shell line that moves itself into ``cg`` and becomes the client."""
    return ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec {client} "$@"', "sh", *args]


def test_the_series_commands_and_a_refusal_at_the_limit(daemon, client) -> None:
    cg = cgroup(daemon, "vmm", 2)
    done = wrap(daemon, *enter_and_run(cg, client, "open", "version", "info", "alloc:100:200",
                                       "alloc:100:200", "alloc:100:200", "free", "alloc:1:5",
                                       "free:1", "alloc:300:300", "wait"),
                stdin="")
    assert done.returncode == 0, done.stderr
    assert steps(done.stdout) == [
        "open 0", "version 0", "info 31", "alloc 100", "alloc 101",
        "alloc EAGAIN",  # ioasids.max of the cgroup: the fixed profile's errno
        "free 0", "alloc 1", "free 0", "alloc 300", "wait",
    ]
    assert (cg / "ioasids.events").read_text() == "max 1\n"
    assert (cg / "ioasids.peak").read_text() == "2\n"
    # the client exited holding 100 and 300: its exit closed the file, which freed them
    wait_until(lambda: (cg / "ioasids.current").read_text() == "0\n", "the release at exit")


def test_the_charge_is_visible_while_the_program_runs(daemon, client, library) -> None:
    cg = cgroup(daemon, "vmm", 10)
    proc = subprocess.Popen(enter_and_run(cg, client, "open", "batch:1:100:3", "wait"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=wrapped_env(daemon, library))
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "open 0\n"
    assert proc.stdout.readline() == "batch 3 1 2 3\n"
    assert proc.stdout.readline() == "wait\n"
    assert (cg / "ioasids.current").read_text() == "3\n"
    proc.stdin.close()
    assert proc.wait(30) == 0
    wait_until(lambda: (cg / "ioasids.current").read_text() == "0\n", "the release at exit")


def test_v4_answers_as_the_series(daemons, client) -> None:
    d = daemons("--profile", "v4").start()
    cg = cgroup(d, "vmm", 1)
    done = wrap(d, *enter_and_run(cg, client, "open", "alloc:1:10", "alloc:1:10", "unknown",
                                  "free:7"))
    assert steps(done.stdout) == ["open 0", "alloc 1", "alloc EINVAL", "unknown EINVAL",
                                  "free 0"]


def test_bad_input_never_crashes_the_program(daemon, client) -> None:
    done = wrap(daemon, str(client), "open", "badptr", "readonly", "short", "unknown",
                "free:99", "alloc:5:1", "dup", "version", "alloc:1:1", "close", "version")
    assert done.returncode == 0, done.stderr
    assert steps(done.stdout) == [
        "open 0",
        "badptr EFAULT",  # the argument's pointer is unmapped
        "readonly EFAULT",  # GET_INFO cannot write its answer
        "short EINVAL",  # argsz 8 < 16
        "unknown ENOTTY",  # the fixed profile's errno for an unknown command
        "free ENOENT", "alloc EINVAL",
        "dup 0", "version 0", "alloc 1",  # a dup()ed descriptor is the same file
        "close 0", "version EBADF",  # libc's own answer once it is closed
    ]


def test_no_daemon_is_enodev_at_open(tmp_path, library, client) -> None:
    done = subprocess.run([str(BIN / "ioasidctl"), "--runtime-dir", str(tmp_path / "none"),
                           "wrap", "--", str(client), "open"], capture_output=True, text=True,
                          check=False)
    assert steps(done.stdout) == ["open ENODEV"]


def test_a_daemon_that_died_is_eio(daemon, client, library) -> None:
    proc = subprocess.Popen([str(client), "open", "alloc:1:10", "wait", "alloc:1:10",
                             "version"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=wrapped_env(daemon, library))
    assert proc.stdout is not None and proc.stdin is not None
    assert [proc.stdout.readline() for _ in range(3)] == ["open 0\n", "alloc 1\n", "wait\n"]
    daemon.kill9()
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(30) == 0
    assert proc.stdout.read() == "alloc EIO\nversion EIO\n"


@pytest.mark.parametrize("profile", ["fixed", "v4"])
def test_an_inherited_descriptor_outlives_the_opener(daemons, client, library,
                                                     profile) -> None:
    """The file is released at its last close, in whatever process: the opener forks and
    exits, the child's copy keeps the file (and its IOASIDs) until the child closes it."""
    d = daemons("--profile", profile).start()
    cg = cgroup(d, "vmm", 10)
    proc = subprocess.Popen(enter_and_run(cg, client, "open", "alloc:1:10", "alloc:1:10",
                                          "fork", "wait", "info", "alloc:1:10", "free:1",
                                          "close", "wait"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=wrapped_env(d, library))
    assert proc.stdout is not None and proc.stdin is not None
    lines = [proc.stdout.readline() for _ in range(5)]
    assert lines[:3] == ["open 0\n", "alloc 1\n", "alloc 2\n"]
    forked, waiting = sorted(lines[3:])  # the parent's and the child's line, in either order
    assert waiting == "wait\n"
    child = int(forked.split()[1])
    proc.wait(30)  # the opener has exited
    # the tracker's events of the fork and of the opener's exit may come in either order
    wait_until(lambda: (cg / "cgroup.procs").read_text().split() == [str(child)],
               "the daemon to see the fork and the opener's exit")
    assert (cg / "ioasids.current").read_text() == "2\n"  # the child's copy keeps the file
    proc.stdin.write("\n")
    proc.stdin.flush()
    expected = {
        # the child is not the opener: ALLOC and FREE are the opener's alone
        "fixed": ["info 31\n", "alloc EPERM\n", "free EPERM\n", "close 0\n", "wait\n"],
        # the series: ALLOC fails at the cgroup's ownership check, FREE works
        "v4": ["info 31\n", "alloc EINVAL\n", "free 0\n", "close 0\n", "wait\n"],
    }[profile]
    assert [proc.stdout.readline() for _ in range(5)] == expected
    if profile == "fixed":
        wait_until(lambda: (cg / "ioasids.current").read_text() == "0\n",
                   "the release at the child's close")
    else:
        # the opener's mm is gone: the series frees the IOASIDs (the child's FREE, then the
        # release at its close) but skips their uncharge ("MM defunct")
        wait_until(lambda: d.status()["ioasids"] == 0, "the release at the child's close")
        assert (cg / "ioasids.current").read_text() == "2\n"
    proc.stdin.close()
    wait_until(lambda: str(child) not in (cg / "cgroup.procs").read_text().split(),
               "the child's exit")


@pytest.mark.parametrize("profile", ["fixed", "v4"])
def test_a_file_held_by_a_child_across_a_daemon_restart(daemons, client, library,
                                                        profile) -> None:
    """The child holding the file when the daemon is killed loses its connection; the file,
    whose opener is gone, is released at the restart (as at its last close; with the mm gone,
    ``v4`` skips the uncharge)."""
    d = daemons("--profile", profile).start()
    cg = cgroup(d, "vmm", 10)
    proc = subprocess.Popen(enter_and_run(cg, client, "open", "alloc:1:10", "fork", "wait",
                                          "version"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=wrapped_env(d, library))
    assert proc.stdout is not None and proc.stdin is not None
    lines = [proc.stdout.readline() for _ in range(4)]
    assert lines[:2] == ["open 0\n", "alloc 1\n"]
    proc.wait(30)
    wait_until(lambda: str(proc.pid) not in (cg / "cgroup.procs").read_text().split(),
               "the daemon to see the opener's exit")
    assert (cg / "ioasids.current").read_text() == "1\n"
    d.kill9()
    d.start()
    wait_until(lambda: d.status()["ioasids"] == 0, "the release")
    assert (cg / "ioasids.current").read_text() == ("1\n" if profile == "v4" else "0\n")
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.stdout.read() == "version EIO\n"  # its connection died with the daemon


def test_close_releases_while_the_program_lives(daemon, client, library) -> None:
    cg = cgroup(daemon, "vmm", 10)
    proc = subprocess.Popen(enter_and_run(cg, client, "open", "alloc:1:10", "alloc:1:10",
                                          "wait", "close", "wait", "open", "alloc:1:10"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=wrapped_env(daemon, library))
    assert proc.stdout is not None and proc.stdin is not None
    assert [proc.stdout.readline() for _ in range(4)] == [
        "open 0\n", "alloc 1\n", "alloc 2\n", "wait\n"]
    assert (cg / "ioasids.current").read_text() == "2\n"
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert [proc.stdout.readline() for _ in range(2)] == ["close 0\n", "wait\n"]
    wait_until(lambda: (cg / "ioasids.current").read_text() == "0\n", "the release at close")
    proc.stdin.write("\n")
    proc.stdin.close()
    # a new open after the release is a new file with a new set: the IDs start again
    assert proc.stdout.read() == "open 0\nalloc 1\n"
    assert proc.wait(30) == 0


def test_the_extensions(daemon, client) -> None:
    """Batch allocation and free, guest bind and unbind on the daemon's VT-d unit (its default
    devices include 0000:03:00.0, devid 0x300)."""
    cg = cgroup(daemon, "vmm", 10)
    done = wrap(daemon, *enter_and_run(cg, client, "open", "batch:20:30:3", "freebatch",
                                       "freebatch", "alloc:40:50", "bind:768", "bind:768",
                                       "unbind:768", "unbind:768", "bind:4095", "free"))
    assert done.returncode == 0, done.stderr
    assert steps(done.stdout) == [
        "open 0", "batch 3 20 21 22", "freebatch 3",
        "freebatch ENOENT",  # freed already: nothing is freed, all or nothing
        "alloc 40", "bind 0",
        "bind EBUSY",  # bound already (the driver's own check)
        "unbind 0",
        "unbind 0",  # the simulated driver's unbind of a PASID no longer bound does nothing
        "bind ENODEV",  # no such device
        "free 0",
    ]
