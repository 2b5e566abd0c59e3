"""Fixtures of the preload-library tests: the built library, the C client compiled from
``<linux/ioasid.h>``, a real daemon, the wrapper's environment, and a child of the kernel's
cgroup-v1 ``pids`` hierarchy to compare with."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from daemon.daemons import BIN, Daemon

from ioasidsd.cli.wrap import library_path

TOP = Path(__file__).resolve().parents[2]
INCLUDE = TOP / "preload" / "include"
HERE = Path(__file__).resolve().parent
KERNEL_PIDS = Path("/sys/fs/cgroup/pids")
T = TypeVar("T")


def compile_c(source: Path, out: Path) -> Path:
    """``gcc`` ``source`` against the project's ``<linux/ioasid.h>``; fails the test if it
    does not build."""
    done = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{INCLUDE}",
                           "-o", str(out), str(source)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def library() -> Path:
    """The preload library ``scripts/bootstrap`` built."""
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler: the preload library cannot be built here")
    lib = library_path()
    assert lib.is_file(), f"{lib} is missing: scripts/bootstrap builds it"
    return lib


@pytest.fixture(scope="session")
def client(library, tmp_path_factory) -> Path:
    """The unmodified C client (``ioasid_client.c``), built once."""
    return compile_c(HERE / "ioasid_client.c", tmp_path_factory.mktemp("cc") / "ioasid_client")


@pytest.fixture
def daemons(daemons, library) -> Callable[..., Daemon]:
    """The suite's factory of real daemons (``tests/conftest.py``), once the library is
    built."""
    return daemons


@pytest.fixture
def daemon(daemons) -> Daemon:
    """A running daemon in the default profile."""
    return daemons().start()


def wrapped_env(d: Daemon, library: Path, **extra: str) -> dict[str, str]:
    """The wrapper's environment for daemon ``d`` (as ``ioasidctl wrap --env`` prints it)."""
    done = subprocess.run([str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "wrap",
                           "--env"], capture_output=True, text=True, check=True)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", **extra)
    for line in done.stdout.splitlines():
        verb, assignment = shlex.split(line)
        name, _, value = assignment.partition("=")
        if verb == "export":
            env[name] = value
        else:
            env.pop(name, None)
    assert env["LD_PRELOAD"].split()[0] == str(library)
    assert env["IOASIDS_MOUNT"] == str(d.mount)
    return env


def wrap(d: Daemon, *command: str, stdin: str | None = None,
         **kwargs) -> subprocess.CompletedProcess[str]:
    """``ioasidctl wrap -- COMMAND`` against daemon ``d``."""
    return subprocess.run([str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "wrap", "--",
                           *command], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False, **kwargs)


@pytest.fixture
def cgtools() -> None:
    """Skip where Debian's cgroup-tools are not installed (scripts/bootstrap installs them)."""
    if shutil.which("cgcreate") is None:
        pytest.skip("Debian's cgroup-tools are not installed")


@pytest.fixture
def kernel_pids() -> Path:
    """The kernel's cgroup-v1 ``pids`` hierarchy, where this machine has it (and we may
    create cgroups in it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups in the kernel's pids hierarchy")
    if not (KERNEL_PIDS / "tasks").exists() or not (KERNEL_PIDS / "release_agent").exists():
        pytest.skip(f"{KERNEL_PIDS} is not a kernel cgroup-v1 pids hierarchy")
    return KERNEL_PIDS


def remove_tree(root: Path, top: Path) -> None:
    """Remove cgroup ``top`` of the hierarchy at ``root`` and everything below it (its
    processes go back to the root)."""
    if not top.exists():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        for pid in (Path(dirpath) / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        os.rmdir(dirpath)


@pytest.fixture
def sleepers() -> Iterator:
    """A factory of idle processes; all killed at the end."""
    made: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        made.append(proc)
        return proc.pid

    yield start
    for proc in made:
        proc.kill()
        proc.wait()


def kernel_top() -> int:
    """The highest hierarchy id the kernel shows."""
    return max(int(line.split(":")[0])
               for line in Path("/proc/self/cgroup").read_text().splitlines())


def steady(look: Callable[[], T]) -> T:
    """``look()``'s result, from a run during which the kernel's hierarchies held still (other
    sessions mount and unmount named hierarchies, which moves the id ours is given)."""
    for _ in range(20):
        before = kernel_top()
        seen = look()
        if kernel_top() == before:
            return seen
    raise AssertionError("the kernel's cgroup hierarchies never held still")
