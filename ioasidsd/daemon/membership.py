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

``FollowedHierarchy`` is the same role played by a hierarchy someone else manages: the host's
``name=systemd`` cgroup-v1 hierarchy or its cgroup-v2 (unified) one (``follow = "systemd"`` or
``"unified"`` in the ``[units]`` table). The daemon changes nothing there: processes are where
systemd (or anyone) put them, a cgroup of the host that holds a process is made in the daemon's
hierarchy when it is first seen (``follows``: see ``System``), a write to the daemon's
``cgroup.procs`` is refused (``EPERM``, saying where membership comes from), and a cgroup of
the daemon's may be removed only while the host's cgroup of that path holds no process
(``EBUSY``).

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
import time
from pathlib import Path
from typing import Any

from ioasidsd.host import UNIFIED, ProcessSource, cgroup_mount, mounts

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


def _cgroup_dir(mountpoint: Path, path: str) -> Path:
    """The directory of the cgroup at ``path`` in the hierarchy mounted at ``mountpoint``."""
    inside = path.strip("/")
    return mountpoint / inside if inside else mountpoint


def _cgroup_paths(mountpoint: Path) -> list[str]:
    """Every cgroup of the hierarchy mounted at ``mountpoint`` below its root, parents before
    children, siblings by name."""
    found: list[str] = []
    for top, dirs, _ in os.walk(mountpoint):
        dirs.sort()
        rel = os.path.relpath(top, mountpoint)
        if rel != ".":
            found.append("/" + rel)
    return found


class KernelHierarchy:
    """The named hierarchy ``name``, mounted (by ``mount``) on ``mountpoint``."""

    follows = False
    """Membership is the daemon's to make: every move and every cgroup is made here too."""

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
        return _cgroup_dir(self.mountpoint, path)

    def paths(self) -> list[str]:
        """Every cgroup below the root, parents before children."""
        return _cgroup_paths(self.mountpoint)

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


def remove_hierarchy(name: str, *, timeout: float = 5.0) -> list[str]:
    """Remove every cgroup of the named hierarchy ``name`` that holds no process, children
    first, so that the kernel drops the hierarchy once it holds none; returns the paths left
    (cgroups with processes). For tests and for an admin retiring a state. ``OSError`` if it
    cannot be mounted.

    The kernel drops a hierarchy when its last mount goes while its root has no child, some
    tens of milliseconds later; but a child just removed is still on that list until it is
    freed (after the last process that was in it is reaped), so the unmount that follows the
    removals may keep the hierarchy, for good. So when nothing was left, the drop is waited
    for, and a hierarchy still there is mounted and unmounted once more and waited for again,
    until the kernel no longer lists it (``timeout`` seconds at most). The waits come first and
    grow: a mount that comes while the hierarchy is dying waits for its end and makes a new
    one of the same name (which its unmount drops again). Every hierarchy left behind costs
    each ``fork`` and each read of ``/proc/PID/cgroup`` on the machine."""
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
        deadline = time.monotonic() + timeout
        wait = 0.1  # a drop takes some tens of milliseconds; a removed child's end, longer
        while not left:
            dropped_by = min(deadline, time.monotonic() + wait)
            while hierarchy_exists(name) and time.monotonic() < dropped_by:
                time.sleep(0.01)  # the kernel tells nothing when it is gone
            if not hierarchy_exists(name) or time.monotonic() >= deadline:
                break
            hierarchy.mount()  # kept, not dying: no child now, so this mount's end drops it
            hierarchy.unmount()
            wait *= 2
        return sorted(left)


def retire_hierarchy(state_dir: Path, *, timeout: float = 5.0) -> list[str] | None:
    """``remove_hierarchy`` of the hierarchy that keeps the members of the state in
    ``state_dir`` (``hierarchy_name``), when the kernel has it: the paths left (cgroups with
    processes), or ``None`` when there was no such hierarchy. For a state no daemon runs on
    (a daemon's next start on it makes the hierarchy again). ``OSError`` as
    ``remove_hierarchy``."""
    name = hierarchy_name(state_dir)
    if not hierarchy_exists(name):
        return None
    return remove_hierarchy(name, timeout=timeout)


def hierarchy_exists(name: str) -> bool:
    """Whether the kernel has the named cgroup-v1 hierarchy ``name`` (every process has a
    line for it in ``/proc/PID/cgroup``)."""
    return ProcessSource().cgroup(os.getpid(), name) is not None


class FollowedHierarchy:
    """The host's hierarchy ``name`` (``systemd`` for ``name=systemd``, ``UNIFIED`` for
    cgroup v2) mounted on ``mountpoint``, whose root is the directory ``root`` of that
    hierarchy (``/`` but in a container), followed rather than kept (see the module).

    The tree methods change nothing in the host: ``mkdir`` and ``rename`` do nothing, ``rmdir``
    raises ``EBUSY`` while the host's cgroup of that path holds a process, ``attach`` raises
    ``EPERM`` and logs it (through ``log``, at info level, when given). ``procs`` and ``tasks``
    of a path the host does not have are empty.
    """

    follows = True
    """Membership is the host's: cgroups it has are made here as processes are found in
    them, and moves through the daemon are refused."""
    fresh = False

    def __init__(self, name: str, mountpoint: Path, root: str = "/",
                 processes: ProcessSource | None = None, log: Any = None) -> None:
        self.name = name
        self.log = log
        self.mountpoint = Path(mountpoint)
        self.root = root
        self.processes = processes or ProcessSource()
        what = "cgroup-v2 (unified)" if name == UNIFIED else f"cgroup-v1 name={name}"
        self.detail = f"follows the host's {what} hierarchy on {self.mountpoint}"

    def __repr__(self) -> str:
        return f"FollowedHierarchy(name={self.name!r}, mountpoint={str(self.mountpoint)!r})"

    def mount(self) -> None:
        """Check that the hierarchy is still mounted there; ``OSError`` if not."""
        if not (self.mountpoint / "cgroup.procs").exists():
            raise OSError(errno.ENOENT, f"{self.mountpoint} is not a cgroup hierarchy")

    def unmount(self) -> None:
        """Nothing: the mount is the host's."""

    # ------------------------------------------------------------------ the tree
    def _dir(self, path: str) -> Path:
        return _cgroup_dir(self.mountpoint, path)

    def paths(self) -> list[str]:
        """Every cgroup of the host below its root, parents before children."""
        return _cgroup_paths(self.mountpoint)

    def remove_empty(self, path: str) -> None:
        """Remove the host's cgroup at ``path`` if it holds no process and no cgroup (a scope
        that ``ioasidctl run`` made there and whose command has ended); nothing if it is gone
        or holds a cgroup. ``OSError`` ``EBUSY`` while it holds a process (or one still
        exiting): try again later."""
        try:
            os.rmdir(self._dir(path))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise

    def has(self, path: str) -> bool:
        """Whether the host has a cgroup at ``path``."""
        return self._dir(path).is_dir()

    def mkdir(self, path: str) -> None:
        """Nothing: a cgroup of the daemon's alone is normal (a slice systemd has not made)."""

    def rename(self, old: str, new: str) -> None:
        """Nothing: processes the host has in ``old`` will be found there again."""

    def rmdir(self, path: str) -> None:
        """``EBUSY`` while the host's cgroup at ``path`` holds a process."""
        if self.procs(path):
            raise OSError(errno.EBUSY, f"the host's {self._dir(path)} holds processes")

    def attach(self, pid: int, path: str) -> None:
        """Refused: ``EPERM``, saying where membership comes from."""
        if self.log is not None:
            self.log.info("a move through cgroup.procs refused: membership follows the host's "
                          "hierarchy", pid=pid, cgroup=path, hierarchy=str(self.mountpoint))
        raise OSError(errno.EPERM, f"membership follows {self.detail}: move processes there "
                                   f"(e.g. {self._dir(path)}/cgroup.procs), not here")

    # ------------------------------------------------------------------ processes
    def _ids(self, path: str, file: str) -> list[int]:
        try:
            with open(self._dir(path) / file, "rb") as ids:
                return sorted({int(line) for line in ids.read().split()})
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:  # a threaded cgroup-v2 cgroup lists no processes
                return []
            raise

    def procs(self, path: str) -> list[int]:
        """The processes the host has in the cgroup at ``path``, ascending (none for a path
        it does not have, or for a threaded cgroup of cgroup v2, whose processes its threaded
        domain lists)."""
        return self._ids(path, "cgroup.procs")

    def tasks(self, path: str) -> list[int]:
        """Their threads, ascending."""
        return self._ids(path, "cgroup.threads" if self.name == UNIFIED else "tasks")

    def cgroup_of(self, pid: int) -> str | None:
        """Where the host has process ``pid``, as a path of this mount; ``None`` if it is
        gone, or if it is outside the mounted subtree."""
        path = self.processes.cgroup(pid, self.name)
        if path is None:
            return None
        root = self.root.rstrip("/")
        if not root:
            return path
        if path == root:
            return "/"
        if path.startswith(root + "/"):
            return path[len(root):]
        return None


def followed_hierarchy(mode: str, processes: ProcessSource | None = None,
                       log: Any = None) -> FollowedHierarchy:
    """The host's hierarchy ``[units] follow = mode`` names: for ``systemd`` the cgroup-v1
    ``name=systemd`` hierarchy where it is mounted, else the unified one; for ``unified`` the
    unified one. ``OSError`` when it is not mounted, ``ValueError`` for another mode."""
    if mode not in ("systemd", "unified"):
        raise ValueError(f"follow = {mode!r}: expected systemd or unified")
    mount = cgroup_mount("systemd") if mode == "systemd" else None
    name = "systemd"
    if mount is None:
        mount, name = cgroup_mount(UNIFIED), UNIFIED
    if mount is None:
        raise OSError(errno.ENOENT, "no name=systemd nor cgroup-v2 hierarchy is mounted"
                      if mode == "systemd" else "no cgroup-v2 hierarchy is mounted")
    return FollowedHierarchy(name, Path(mount.mount_point), mount.root, processes, log)
