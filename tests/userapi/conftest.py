"""Fixtures of the user-API tests (the helpers they build on are in ``helpers.py``)."""

from __future__ import annotations

import pytest

from .helpers import Served


@pytest.fixture(params=["fixed", "v4"])
def served(request: pytest.FixtureRequest, tmp_path) -> Served:
    s = Served(request.param, str(tmp_path))
    yield s
    s.close()


@pytest.fixture
def served_fixed(tmp_path) -> Served:
    s = Served("fixed", str(tmp_path))
    yield s
    s.close()


@pytest.fixture(params=["fixed", "v4"])
def served_two(request: pytest.FixtureRequest, tmp_path) -> Served:
    """Served where two processes can open: in v4 with the quota-0 grab switched off."""
    knobs = {"set_quota_zero_takes_all": False} if request.param == "v4" else {}
    s = Served(request.param, str(tmp_path), **knobs)
    yield s
    s.close()
