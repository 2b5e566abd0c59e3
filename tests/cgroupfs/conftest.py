"""Fixtures of the cgroupfs tests: a System mounted on a temporary directory in this process,
real child processes to move, and a child of the kernel's cgroup-v1 ``pids`` hierarchy."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ioasidsd.model.changes import Change
from ioasidsd.system import System

KERNEL_PIDS = Path("/sys/fs/cgroup/pids")
NOBODY = 65534


class Changes:
    """An ``on_change`` that records every change, in order."""

    def __init__(self) -> None:
        self.seen: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.seen.append(change)

    def kinds(self) -> list[str]:
        return [change.kind for change in self.seen]


@pytest.fixture(autouse=True, scope="session")
def fork_not_vfork() -> Iterator[None]:
    """Children are started with fork(2), not vfork(2), on interpreters that hold the GIL
    across vfork (CPython before 3.12, unless patched: gh-104372, Debian 12's 3.11.2 included).

    These tests serve the file system from threads of this process. With the GIL held by the
    thread blocked in vfork, a child whose set-up touches the mount (``cwd=`` a cgroup
    directory: the child's ``chdir`` waits for a FUSE answer) waits for a server thread that
    waits for the GIL: the whole test run hangs, out of reach of pytest-timeout's signal.
    """
    saved = getattr(subprocess, "_USE_VFORK", None)
    if saved is None or sys.version_info >= (3, 12):
        yield
        return
    subprocess._USE_VFORK = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        subprocess._USE_VFORK = saved  # type: ignore[attr-defined]


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def system(changes: Changes) -> System:
    return System(on_change=changes)


@pytest.fixture
def mountdir() -> Iterator[Path]:
    """An empty directory every user can reach (setuid children use the mount too)."""
    top = Path(tempfile.mkdtemp(prefix="ioasids-cgroupfs-"))
    top.chmod(0o755)
    try:
        yield top / "mnt"
    finally:
        mnt = top / "mnt"
        from cgroupfs import force_unmount

        with contextlib.suppress(OSError):
            force_unmount(str(mnt))
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def mounted(needs_fuse: None, system: System, mountdir: Path) -> Iterator[Path]:
    """``system`` mounted on ``mountdir``; the path of the mount."""
    from cgroupfs import mount

    handle = mount(system, str(mountdir))
    try:
        yield mountdir
    finally:
        handle.unmount()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real child processes (default ``sleep 60``); all are killed at the end."""
    children: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv or ["sleep", "60"], **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGKILL)
        child.wait()


@pytest.fixture
def kernel_ref() -> Iterator[Path]:
    """A fresh child of the kernel's cgroup-v1 ``pids`` hierarchy, removed afterwards with
    every cgroup below it (processes left inside go back to the hierarchy's root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups in the kernel's pids hierarchy")
    if not (KERNEL_PIDS / "tasks").exists() or not (KERNEL_PIDS / "release_agent").exists():
        pytest.skip(f"{KERNEL_PIDS} is not a kernel cgroup-v1 pids hierarchy")
    ref = KERNEL_PIDS / f"ioasids-ref-{os.getpid()}"
    _remove_kernel_tree(ref)
    ref.mkdir()
    try:
        yield ref
    finally:
        _remove_kernel_tree(ref)


def _remove_kernel_tree(top: Path) -> None:
    if not top.exists():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        procs = Path(dirpath) / "cgroup.procs"
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                (KERNEL_PIDS / "cgroup.procs").write_text(pid)
        os.rmdir(dirpath)


AS_USER = r"""
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "write":
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            print("open", errno.errorcode[e.errno]); sys.exit()
        print("ok", os.write(fd, sys.argv[3].encode()))
    elif op == "mkdir":
        os.mkdir(path); print("ok")
    elif op == "rmdir":
        os.rmdir(path); print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


@pytest.fixture
def as_user() -> Callable[..., str]:
    """``as_user(uid, op, path, data="")``: run ``op`` (``write``, ``mkdir``, ``rmdir``) on
    ``path`` in a child process running as ``uid`` (and gid ``uid``). Returns ``ok`` (``ok N``
    for a write), an errno name, or ``open <errno>`` when a write could not open the file."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run children as another user")
    interpreter = shutil.which("python3", path="/usr/bin:/bin")  # one every user can run
    if interpreter is None:
        pytest.skip("no /usr/bin/python3 for children running as another user")

    def run(uid: int, op: str, path: Path | str, data: str = "") -> str:
        done = subprocess.run(
            [interpreter, "-I", "-c", AS_USER, op, str(path), data],
            user=uid, group=uid, extra_groups=[], capture_output=True, text=True, check=True,
            timeout=30,
        )
        return done.stdout.strip()

    return run
