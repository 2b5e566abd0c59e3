"""Fixtures every test folder may use: a real unprivileged local user, made by the test set-up,
and directories that user can reach; Systems over made-up processes in each profile
(``make_system``); real daemons (``daemons``) where FUSE can be mounted (``needs_fuse``).

The isolation tests act as that user against a daemon run by root, as a hostile tenant would:
its processes are real, its credentials are the kernel's, and nothing in the daemon is told
who it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from localusers import LocalUser
from system.ops import PROFILES as SYSTEM_PROFILES
from system.ops import FakeProcesses

TENANT = "ioasids-tenant"
"""The name of the unprivileged user the test set-up makes (and removes if it made it)."""


USERS_LOCK = Path("/run/lock/ioasids-test-users.lock")
"""Held shared by every test session that uses the tenant user, so that a session removes the
user only when no other session (another checkout's suite on the same machine) still uses it."""


@pytest.fixture(scope="session")
def tenant() -> Iterator[LocalUser]:
    """A real unprivileged local user (``ioasids-tenant``), created with ``useradd`` if it does
    not exist, and removed at the end by the last session that used it if one of them made it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create an unprivileged user")
    USERS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        try:
            entry = pwd.getpwnam(TENANT)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            done = subprocess.run([useradd, "--system", "--user-group", "--no-create-home",
                                   "--home-dir", "/nonexistent", "--shell",
                                   "/usr/sbin/nologin", TENANT],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0 and "already exists" not in done.stderr:
                pytest.skip(f"useradd {TENANT} failed: {done.stderr.strip()}")
            entry = pwd.getpwnam(TENANT)
        yield LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    finally:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no other session uses it
        except BlockingIOError:
            pass
        else:
            userdel = shutil.which("userdel") or "/usr/sbin/userdel"
            subprocess.run([userdel, TENANT], capture_output=True, check=False)
        os.close(lock)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A fresh directory (mode 0755) every user can reach, removed afterwards (pytest's own
    ``tmp_path`` lies under a directory only its owner may enter)."""
    top = Path(tempfile.mkdtemp(prefix="ioasids-open-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        # from the mount table: a dead FUSE mount's stat fails, and is_mount says False
        with open("/proc/self/mountinfo", encoding="utf-8") as info:
            points = [line.split()[4] for line in info]
        for mnt in sorted((p for p in points if p.startswith(f"{top}/")),
                          key=lambda p: -p.count("/")):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_python() -> str:
    """An interpreter every user can run that imports this project: the venv's, when its base
    is reachable by others (``scripts/bootstrap`` builds it from Debian's ``/usr/bin/python3``
    for that reason)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import os, sys; print(os.path.realpath(sys._base_executable))"],
        capture_output=True, text=True, check=True)
    base = Path(probe.stdout.strip())
    for parent in [base, *base.parents]:
        if parent.exists() and not os.stat(parent).st_mode & 0o001 and parent != base:
            pytest.skip(f"{sys.executable} is built from {base}, which other users cannot "
                        f"reach ({parent} is not searchable): run scripts/bootstrap")
    return sys.executable


@pytest.fixture(params=range(len(SYSTEM_PROFILES)), ids=lambda i: "-".join(
    [SYSTEM_PROFILES[i][0], *(f"{k}={v}" for k, v in SYSTEM_PROFILES[i][1].items())]))
def make_system(request):
    """A factory of Systems with fake processes, one profile per parametrisation."""
    from ioasidsd.model import profile
    from ioasidsd.system import System

    name, overrides = SYSTEM_PROFILES[request.param]

    def make(**kwargs) -> System:
        return System(profile(name, **overrides), processes=FakeProcesses(), **kwargs)

    return make


@pytest.fixture
def needs_fuse() -> None:
    """Skip where the machine cannot mount FUSE file systems."""
    from cgroupfs import fuse_unavailable

    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def daemons(tmp_path, needs_fuse):
    """A factory of real ``ioasidsd run`` daemons (``daemon/daemons.py``) on ``tmp_path`` (all
    share its directories unless told)."""
    from daemon.daemons import Daemon

    made: list[Daemon] = []

    def make(*args: str, base=None, name: str | None = None) -> Daemon:
        daemon = Daemon(base or tmp_path, *args, name=name or f"d{len(made)}")
        made.append(daemon)
        return daemon

    yield make
    for daemon in reversed(made):
        daemon.cleanup()
