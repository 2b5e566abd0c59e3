"""Fixtures of the daemon tests."""

from __future__ import annotations

import pytest

from ioasidsd.model import profile
from ioasidsd.system import System

from .ops import PROFILES, FakeProcesses


@pytest.fixture(params=range(len(PROFILES)), ids=lambda i: "-".join(
    [PROFILES[i][0], *(f"{k}={v}" for k, v in PROFILES[i][1].items())]))
def make_system(request):
    """A factory of Systems with fake processes, one profile per parametrisation."""
    name, overrides = PROFILES[request.param]

    def make(**kwargs) -> System:
        return System(profile(name, **overrides), processes=FakeProcesses(), **kwargs)

    return make


@pytest.fixture
def needs_fuse() -> None:
    """Skip where the machine cannot mount FUSE file systems."""
    from .daemons import fuse_missing

    reason = fuse_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def daemons(tmp_path, needs_fuse):
    """A factory of real daemons on ``tmp_path`` (all share its directories unless told)."""
    from .daemons import Daemon

    made: list[Daemon] = []

    def make(*args: str, base=None, name: str | None = None) -> Daemon:
        daemon = Daemon(base or tmp_path, *args, name=name or f"d{len(made)}")
        made.append(daemon)
        return daemon

    yield make
    for daemon in reversed(made):
        daemon.cleanup()


@pytest.fixture
def forkers():
    """A factory of real processes that fork on demand; all killed at the end."""
    from .daemons import Forker

    made: list[Forker] = []

    def make() -> Forker:
        forker = Forker()
        made.append(forker)
        return forker

    yield make
    for forker in made:
        forker.cleanup()
