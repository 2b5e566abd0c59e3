"""A root daemon with a cgroup delegated to a real unprivileged user, as an admin would set it
up: ``/tenant`` with a limit of 100, its ``cgroup.procs`` and ``tasks`` owned by the user."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon.daemons import BIN, Daemon, fuse_missing
from localusers import LocalUser

LIMIT = 100


@dataclass
class Delegated:
    """The daemon, the tenant user, and ``/tenant`` on the daemon's mount."""

    daemon: Daemon
    user: LocalUser
    cgroup: Path
    python: str

    def ctl(self) -> list[str]:
        """``ioasidctl --runtime-dir RUN`` as argv."""
        return [str(BIN / "ioasidctl"), "--runtime-dir", str(self.daemon.run)]


@pytest.fixture
def delegate(tenant: LocalUser, open_tmp: Path, shared_python: str,
             ) -> Iterator[Callable[..., Delegated]]:
    """``delegate(*daemon_args, config="")``: start a root daemon on ``open_tmp`` (``config``:
    the text of a configuration file), make ``/tenant`` (limit 100) and hand its
    ``cgroup.procs`` and ``tasks`` to the tenant user."""
    reason = fuse_missing()
    if reason:
        pytest.skip(reason)
    made: list[Daemon] = []

    def start(*args: str, config: str = "") -> Delegated:
        if config:
            path = open_tmp / "ioasidsd.toml"
            path.write_text(config)
            args = ("--config", str(path), *args)
        daemon = Daemon(open_tmp, *args, name=f"d{len(made)}")
        made.append(daemon)
        daemon.start()
        os.chmod(daemon.run, 0o755)
        cgroup = daemon.mount / "tenant"
        cgroup.mkdir()
        (cgroup / "ioasids.max").write_text(str(LIMIT))
        for name in ("cgroup.procs", "tasks"):
            os.chown(cgroup / name, tenant.uid, tenant.gid)
        return Delegated(daemon, tenant, cgroup, shared_python)

    yield start
    for daemon in reversed(made):
        daemon.cleanup()
