"""Fixtures of the model tests; the helpers themselves live in ``helpers.py``."""

from __future__ import annotations

import pytest

from .helpers import Recorder, World


@pytest.fixture
def rec() -> Recorder:
    """A notifier recorder."""
    return Recorder()


@pytest.fixture
def world(prof: str) -> World:
    """A ``World`` in the profile the test is parametrized with (``prof``)."""
    return World(prof)
