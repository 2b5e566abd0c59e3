"""Fixtures of the tests of the VT-d simulation inside the daemon: a model host with its store
(``hosts.Host``); real daemons are the ``daemons`` fixture of ``tests/conftest.py``."""

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
