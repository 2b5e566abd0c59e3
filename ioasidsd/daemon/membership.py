"""Membership kept by the kernel: a named cgroup-v1 hierarchy that mirrors the daemon's.

``mount -t cgroup -o none,name=NAME`` makes a cgroup-v1 hierarchy with no controller attached:
its cgroups group processes and do nothing else to them. The daemon keeps one such hierarchy
with the same tree as its own, and moves a process in it whenever it moves one in its own
(a write to ``cgroup.procs`` or ``tasks``). The kernel then does what a tracker can only
approximate: a child starts in its parent's cgroup at fork, with no event to lose; it stays
there when it is re-parented (to init or to a subreaper); threads stay with their process; and
all of it outlives the daemon, because a hierarchy with cgroups below its root stays in the
kernel after its last mount is gone.

``KernelHierarchy`` is that hierarchy as the ``System`` uses it (``ioasidsd.system``'s
``KernelMembership``): mirror a ``mkdir``, ``rmdir`` or ``rename``, move a process
(``attach``), list a cgroup (``procs``, ``tasks``), and say which cgroup the kernel has a process
in (``cgroup_of``, from ``/proc/PID/cgroup``). Paths are those of the daemon's hierarchy (``/``,
``/a/b``). Every method raises ``OSError`` with the kernel's errno when the kernel refuses
(``EBUSY`` for an ``rmdir`` of a cgroup with processes, ``ESRCH`` for a process that is gone,
``EINVAL`` for a kernel thread that may not move).

Its name is ``ioasids`` for the default state directory, and ``ioasids-`` with a digest of the
state directory's path otherwise (``hierarchy_name``), so that each state keeps its own
hierarchy across restarts and two daemons never share one. It is mounted on
``RUNTIME_DIR/membership``, root's only to write: no user moves a process there but through the
daemon's ``cgroup.procs``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from ioasidsd.host import ProcessSource, mounts

DEFAULT_STATE_DIR = Path("/var/lib/ioasidsd")
MOUNT_NAME = "membership"
"""The mount point's name in the runtime directory."""


def hierarchy_name(state_dir: Path) -> str:
    """The name of the named hierarchy that keeps the members of the state in ``state_dir``."""
    path = os.path.abspath(state_dir)
    if Path(path) == DEFAULT_STATE_DIR:
        return "ioasids"
    return "ioasids-" + hashlib.sha256(os.fsencode(path)).hexdigest()[:16]


def _run(*argv: str) -> None:
    """Run ``mount`` or ``umount``; ``OSError`` with its message when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else \
            f"{argv[0]} exited with status {done.returncode}"
        raise OSError(errno.EPERM if "permission" in message.lower() else errno.EIO, message)


class KernelHierarchy:
    """The named hierarchy ``name``, mounted (by ``mount``) on ``mountpoint``."""

    def __init__(self, name: str, mountpoint: Path,
                 processes: ProcessSource | None = None) -> None:
        self.name = name
        self.mountpoint = Path(mountpoint)
        self.processes = processes or ProcessSource()
        self.fresh = False
        """After ``mount``: whether the hierarchy had no cgroup below its root (it was just
        made, or nothing was kept in it), so that membership must be seeded from the state."""
        self._mounted_here = False

    def __repr__(self) -> str:
        return f"KernelHierarchy(name={self.name!r}, mountpoint={str(self.mountpoint)!r})"

    # ------------------------------------------------------------------ the mount
    def _is_mounted(self) -> bool:
        point = str(self.mountpoint)
        return any(m.mount_point == point and m.fstype == "cgroup"
                   and f"name={self.name}" in m.super_options.split(",") for m in mounts())

    def mount(self) -> None:
        """Mount the hierarchy (made by the kernel if it does not exist), or keep the mount a
        daemon that was killed left; sets ``fresh``. ``OSError`` when it cannot be mounted
        (not root, a kernel without cgroup-v1, the name taken with other options)."""
        made = not self.mountpoint.exists()
        self.mountpoint.mkdir(mode=0o755, exist_ok=True)
        if not self._is_mounted():
            try:
                _run("mount", "-t", "cgroup", "-o", f"none,name={self.name}",
                     "ioasids-membership", str(self.mountpoint))
            except OSError:
                if made:
                    with contextlib.suppress(OSError):
                        self.mountpoint.rmdir()
                raise
        self._mounted_here = True
        self.fresh = not self.paths()

    def unmount(self) -> None:
        """Unmount it; the hierarchy stays in the kernel while it has cgroups. Idempotent."""
        if self._mounted_here:
            self._mounted_here = False
            _run("umount", str(self.mountpoint))
            with contextlib.suppress(OSError):
                self.mountpoint.rmdir()

    @property
    def detail(self) -> str:
        return f"named cgroup-v1 hierarchy name={self.name} on {self.mountpoint}"

    # ------------------------------------------------------------------ the tree
    def _dir(self, path: str) -> Path:
        inside = path.strip("/")
        return self.mountpoint / inside if inside else self.mountpoint

    def paths(self) -> list[str]:
        """Every cgroup below the root, parents before children."""
        found: list[str] = []
        for top, dirs, _ in os.walk(self.mountpoint):
            dirs.sort()
            rel = os.path.relpath(top, self.mountpoint)
            if rel != ".":
                found.append("/" + rel)
        return found

    def mkdir(self, path: str) -> None:
        os.mkdir(self._dir(path), 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._dir(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._dir(old), self._dir(new))

    # ------------------------------------------------------------------ processes
    def attach(self, pid: int, path: str) -> None:
        """Move process ``pid`` (all its threads) into the cgroup at ``path``."""
        with open(self._dir(path) / "cgroup.procs", "w") as procs:
            procs.write(str(pid))

    def _ids(self, path: str, file: str) -> list[int]:
        with open(self._dir(path) / file, "rb") as ids:
            return sorted({int(line) for line in ids.read().split()})

    def procs(self, path: str) -> list[int]:
        """The processes of the cgroup at ``path`` (its ``cgroup.procs``), ascending."""
        return self._ids(path, "cgroup.procs")

    def tasks(self, path: str) -> list[int]:
        """The threads of the cgroup at ``path`` (its ``tasks``), ascending."""
        return self._ids(path, "tasks")

    def cgroup_of(self, pid: int) -> str | None:
        """The path of the cgroup the kernel has process ``pid`` in; ``None`` if it is
        gone."""
        return self.processes.cgroup(pid, self.name)


def remove_hierarchy(name: str) -> list[str]:
    """Remove every cgroup of the named hierarchy ``name`` that holds no process, children
    first, so that the kernel drops the hierarchy once it holds none; returns the paths left
    (cgroups with processes). For tests and for an admin retiring a state. ``OSError`` if it
    cannot be mounted."""
    with tempfile.TemporaryDirectory(prefix="ioasids-membership-") as where:
        hierarchy = KernelHierarchy(name, Path(where) / MOUNT_NAME)
        hierarchy.mount()
        left = []
        try:
            for path in reversed(hierarchy.paths()):
                try:
                    hierarchy.rmdir(path)
                except OSError:
                    left.append(path)
        finally:
            hierarchy.unmount()
        return sorted(left)
