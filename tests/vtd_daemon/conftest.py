"""Fixtures of the tests of the VT-d simulation inside the daemon: a model host with its store
(``hosts.Host``) and the real daemons of ``tests/daemon``."""

from __future__ import annotations

import pytest

from .hosts import Host


@pytest.fixture(params=["fixed", "v4"])
def host(request: pytest.FixtureRequest, tmp_path) -> Host:
    """A fresh host in each profile."""
    return Host(tmp_path / "state", request.param)


@pytest.fixture
def fixed_host(tmp_path) -> Host:
    return Host(tmp_path / "state", "fixed")


@pytest.fixture
def daemons(tmp_path):
    """A factory of real ``ioasidsd run`` daemons on ``tmp_path`` (``tests/daemon/daemons.py``);
    skipped where FUSE cannot be used."""
    from daemon.daemons import Daemon, fuse_missing

    reason = fuse_missing()
    if reason:
        pytest.skip(reason)
    made: list[Daemon] = []

    def make(*args: str, name: str | None = None) -> Daemon:
        daemon = Daemon(tmp_path, *args, name=name or f"d{len(made)}")
        made.append(daemon)
        return daemon

    yield make
    for daemon in reversed(made):
        daemon.cleanup()
