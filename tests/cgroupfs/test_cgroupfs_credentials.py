"""Writes are judged by the credentials the file was opened with, not by those of the process
calling write(2), as the kernel judges them (``of->file->f_cred``): a descriptor handed to
another process (over a unix socket with ``SCM_RIGHTS``, or inherited) carries its opener's
rights, no more and no less. Each test runs on our mount and on a child of the kernel's
cgroup-v1 ``pids`` hierarchy, with the same expectations, and uses a real unprivileged user."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

KERNEL_PIDS = Path("/sys/fs/cgroup/pids")


class LocalUser(Protocol):
    """What the ``tenant`` fixture gives (``tests/conftest.py``): a real unprivileged user."""

    name: str
    uid: int
    gid: int

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]: ...

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]: ...

OPEN_AND_SEND = r"""
import os, socket, sys
path, flags, sock = sys.argv[1], int(sys.argv[2]), socket.socket(fileno=int(sys.argv[3]))
try:
    fd = os.open(path, flags)
except OSError as exc:
    sock.sendall(os.strerror(exc.errno).encode())
else:
    socket.send_fds(sock, [b"fd"], [fd])
"""

WRITE_THROUGH = r"""
import errno, os, sys
fd = int(sys.argv[1])
for data in sys.argv[2:]:
    try:
        os.write(fd, data.encode())
        print("ok", os.getpid(), flush=True)
    except OSError as exc:
        print(errno.errorcode[exc.errno], os.getpid(), flush=True)
sys.stdin.read()  # stay alive until told, so that the test can look for this process
"""

Hierarchy = tuple[Path, Path]
"""The root of a hierarchy and a fresh child cgroup of it."""


@pytest.fixture(params=["ours", "kernel"])
def hierarchy(request: pytest.FixtureRequest) -> Hierarchy:
    if request.param == "kernel":
        return KERNEL_PIDS, request.getfixturevalue("kernel_ref")
    mounted: Path = request.getfixturevalue("mounted")
    (mounted / "a").mkdir()
    return mounted, mounted / "a"


def opened_by(user: LocalUser, python: str, path: Path, flags: int = os.O_WRONLY) -> int:
    """A descriptor of ``path`` that ``user`` opened in a process of its own and sent here over
    a unix socket (``SCM_RIGHTS``). ``AssertionError`` when ``user`` could not open it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        with theirs:
            child = user.popen([python, "-I", "-c", OPEN_AND_SEND, str(path), str(flags),
                                str(theirs.fileno())], pass_fds=[theirs.fileno()])
        try:
            message, fds, _flags, _address = socket.recv_fds(ours, 256, 1)
        finally:
            child.wait(30)
    if not fds:
        raise AssertionError(f"{user.name} could not open {path}: {message!r}")
    return fds[0]


def write_errno(fd: int, data: bytes) -> str:
    """``ok`` when one write(2) of ``data`` through ``fd`` succeeds, else the errno's name."""
    try:
        os.write(fd, data)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


def ids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines()]


def test_root_writing_through_a_user_s_descriptor_has_that_user_s_rights(
        hierarchy: Hierarchy, tenant: LocalUser, shared_python: str,
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """The confused deputy: a user hands its delegated ``cgroup.procs`` to a root process,
    which may then move only what the user could move itself."""
    _root, cg = hierarchy
    procs = cg / "cgroup.procs"
    os.chown(procs, tenant.uid, tenant.gid)
    roots = spawn()
    theirs = spawn(user=tenant.uid, group=tenant.gid, extra_groups=[])
    fd = opened_by(tenant, shared_python, procs)
    try:
        refused = write_errno(fd, str(roots.pid).encode())
        allowed = write_errno(fd, str(theirs.pid).encode())
    finally:
        os.close(fd)
    assert (refused, allowed) == ("EACCES", "ok")
    assert ids(procs) == [theirs.pid]


def test_a_user_writing_through_root_s_descriptor_has_root_s_rights(
        hierarchy: Hierarchy, tenant: LocalUser, shared_python: str,
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """The other way round: a descriptor root opened moves any process for whoever holds it,
    and ``0`` written through it still names the process calling write(2)."""
    _root, cg = hierarchy
    procs = cg / "cgroup.procs"
    roots = spawn()
    fd = os.open(procs, os.O_WRONLY)
    try:
        child = tenant.popen([shared_python, "-I", "-c", WRITE_THROUGH, str(fd), str(roots.pid),
                              "0"], pass_fds=[fd], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    finally:
        os.close(fd)
    try:
        assert child.stdout is not None and child.stdin is not None
        moved_root, moved_self = child.stdout.readline().split(), child.stdout.readline().split()
        assert (moved_root, moved_self) == (["ok", str(child.pid)], ["ok", str(child.pid)])
        assert ids(procs) == sorted([roots.pid, child.pid])
    finally:
        child.kill()
        child.wait(30)


def test_release_agent_is_judged_by_its_opener(hierarchy: Hierarchy, tenant: LocalUser,
                                               shared_python: str) -> None:
    """``cgroup_release_agent_write`` asks ``file_ns_capable(of->file, ...)``: root writing
    through a descriptor a user opened gets ``EPERM``; a user writing through root's succeeds.
    (The file is made writable by everyone for the test, and restored.)"""
    root, _cg = hierarchy
    agent = root / "release_agent"
    mode, saved = stat.S_IMODE(os.stat(agent).st_mode), agent.read_bytes()
    os.chmod(agent, 0o666)
    try:
        fd = opened_by(tenant, shared_python, agent)
        try:
            by_root = write_errno(fd, b"/bin/true")
        finally:
            os.close(fd)
        unchanged = agent.read_bytes()
        fd = os.open(agent, os.O_WRONLY)
        try:
            by_user = tenant.run([shared_python, "-I", "-c", WRITE_THROUGH, str(fd),
                                  "/bin/false"], pass_fds=[fd], input="").stdout.split()[:1]
        finally:
            os.close(fd)
        changed = agent.read_bytes()
    finally:
        os.chmod(agent, mode)
        agent.write_bytes(saved)  # "\n" at least: stripped, it restores an empty agent
    assert (by_root, unchanged) == ("EPERM", saved)
    assert (by_user, changed) == (["ok"], b"/bin/false\n")
