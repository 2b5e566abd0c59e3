"""Directories a running daemon owns: the runtime directory (pid file, sockets) and the
state directory (database), each claimed with an exclusive ``flock`` so that a second daemon on
the same directory refuses to start.

The lock is held for the daemon's life and released by the kernel however the daemon ends, so a
daemon killed with ``kill -9`` leaves no stale lock. The lock files are never unlinked (unlinking a
locked file lets two daemons lock two different files of the same name).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

PID_FILE = "ioasidsd.pid"
STATE_LOCK = "ioasidsd.lock"


class AlreadyRunning(Exception):
    """Another daemon holds the directory; the message names it and its pid."""


class DirectoryLock:
    """An exclusive lock on ``directory/name``, a file holding the owner's pid."""

    def __init__(self, directory: str | Path, name: str, role: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create the directory if needed (mode 0755), lock the file and write our pid.

        ``AlreadyRunning`` if another process holds it; ``OSError`` if the directory cannot be
        created or written.
        """
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            owner = read_pid(self.path)
            who = f"pid {owner}" if owner else "another process"
            raise AlreadyRunning(
                f"another ioasidsd ({who}) is using {self.role} {self.directory}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Empty the pid file and drop the lock. Idempotent."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None


def read_pid(path: str | Path) -> int | None:
    """The pid written in a pid file, or ``None`` if there is none."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
