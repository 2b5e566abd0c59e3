"""A real daemon for the ``ioasidctl`` tests, started once per test module (each test makes
cgroups of its own names), with its runtime directory and mount open to other users."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon.daemons import BIN, TIMEOUT, Daemon, fuse_missing

IOASIDCTL = str(BIN / "ioasidctl")


class Served:
    """The module's daemon and ``ioasidctl`` pointed at it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.mount = daemon.mount

    def ctl(self, *args: str, user=None, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [IOASIDCTL, "--runtime-dir", str(self.daemon.run), *args]
        if user is not None:
            return user.run(argv, env=env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False, env=env, input=input)

    def ok(self, *args: str) -> str:
        done = self.ctl(*args)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    reason = fuse_missing()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="ioasids-cli-"))
    base.chmod(0o755)
    daemon = Daemon(base)
    try:
        daemon.start()
        os.chmod(daemon.run, 0o755)
        yield Served(daemon)
    finally:
        daemon.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)
