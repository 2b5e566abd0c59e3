"""Fixtures of the user-API tests (the helpers they build on are in ``helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import Served, serving


@pytest.fixture(params=["fixed", "v4"])
def served(request: pytest.FixtureRequest, tmp_path) -> Iterator[Served]:
    with serving(request.param, str(tmp_path)) as s:
        yield s


@pytest.fixture
def served_fixed(tmp_path) -> Iterator[Served]:
    with serving("fixed", str(tmp_path)) as s:
        yield s


@pytest.fixture(params=["fixed", "v4"])
def served_two(request: pytest.FixtureRequest, tmp_path) -> Iterator[Served]:
    """Served where two processes can open: in v4 with the quota-0 grab switched off."""
    with serving(request.param, str(tmp_path), two=True) as s:
        yield s
