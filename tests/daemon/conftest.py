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
