"""Fixtures of the daemon tests."""

from __future__ import annotations

import pytest


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
