"""Mounting the file system: a libfuse3 multi-threaded loop (mfusepy) on a background thread,
its unmounting, and dead mounts left by a killed daemon.

mfusepy runs libfuse's ``fuse_main_real`` on the serving thread: it mounts, serves with
``fuse_loop_mt`` until the mount goes away, then unmounts. Two consequences for the process:

- libfuse installs handlers for SIGHUP, SIGINT and SIGTERM that end the loop (and so unmount)
  only where a signal still has its default disposition, and removes them when the loop ends.
  Python's SIGINT handler is not the default, so Ctrl-C stays with Python; a daemon that owns
  SIGTERM and SIGHUP installs its handlers before ``mount``.
- A mount whose serving process was killed stays behind as a dead mount point (``ENOTCONN`` on
  every access) until someone removes it: ``stale_mount`` recognises one, ``force_unmount``
  removes it.

On a cgroup-v2 hierarchy the mount also notifies ``cgroup.events`` when a cgroup's
``populated`` turns, as kernfs does: a thread of its own wakes the file's pollers
(``CgroupOperations.events_changed``, through libfuse's ``fuse_notify_poll``) and truncates the
file through the mount (which changes nothing in the model), so the kernel reports
``IN_MODIFY`` to its inotify watchers, as it does for the kernel's ``cgroup.events``. FUSE gives
a server no other way to raise an inotify event. The truncation needs write permission on the
file, which only root has (a daemon run as another user wakes pollers only).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import shutil
import subprocess
import threading
from errno import EBUSY, EINVAL, ENODEV, ENOENT, ENOTCONN, ENOTDIR, ETIMEDOUT

import mfusepy
import structlog

from cgroupfs import fastopen, files
from cgroupfs.kernelcache import ATTR_TIMEOUT, ENTRY_TIMEOUT, current_fuse
from cgroupfs.operations import CgroupOperations
from ioasidsd.host import mounts
from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.model.snapshot import is_removed
from ioasidsd.model.unified import UnifiedHierarchy
from ioasidsd.system import System

log = structlog.get_logger(__name__)

MOUNT_TIMEOUT = 30.0
"""Seconds ``mount`` waits for the kernel to connect before giving up."""
MNT_FORCE = 1
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class CgroupMount:
    """A mounted hierarchy, served by a background thread until it is unmounted."""

    def __init__(self, system: System, mountpoint: str, options: dict[str, object], *,
                 kernel_cache: bool = True) -> None:
        self.mountpoint = mountpoint
        self.system = system
        self._options = options
        self._error: BaseException | None = None
        self._settled = threading.Event()  # the kernel connected, or the thread ended
        self.operations = CgroupOperations(system, on_init=self._initialised,
                                           kernel_cache=kernel_cache)
        self.operations.cache.mountpoint = mountpoint
        if kernel_cache:
            self.operations.cache.find_inode = fastopen.kernel_inode
        self._fast: fastopen.Serving | None = None
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._serve, name=f"cgroupfs {mountpoint}", daemon=True
        )
        self._events: queue.SimpleQueue[Cgroup | None] = queue.SimpleQueue()
        self._notifier: threading.Thread | None = None

    def _populated_turned(self, cg: Cgroup) -> None:
        """A watcher of the v2 hierarchy (called under the model lock): only take note."""
        self._events.put(cg)

    def _notify(self) -> None:
        """Truncate ``cgroup.events`` of every cgroup whose ``populated`` turned (see the
        module docstring), until ``None`` arrives."""
        while True:
            cg = self._events.get()
            if cg is None:
                return
            with self.system.lock:
                if is_removed(cg) or self.system.cgroups.parent_gone(cg):
                    continue
                path = cg.path
            self.operations.events_changed(cg)
            if os.geteuid() != 0:
                continue
            with contextlib.suppress(OSError):
                os.truncate(os.path.join(self.mountpoint, path.lstrip("/"), "cgroup.events"), 0)

    def _start_notifier(self) -> None:
        tree = self.system.cgroups
        if isinstance(tree, UnifiedHierarchy):
            self._notifier = threading.Thread(target=self._notify, daemon=True,
                                              name=f"cgroupfs events {self.mountpoint}")
            self._notifier.start()
            with self.system.lock:
                tree.watchers.append(self._populated_turned)

    def _stop_notifier(self) -> None:
        tree = self.system.cgroups
        if self._notifier is None or not isinstance(tree, UnifiedHierarchy):
            return
        with self.system.lock:
            if self._populated_turned in tree.watchers:
                tree.watchers.remove(self._populated_turned)
        self._events.put(None)
        if self._notifier is not threading.current_thread():
            self._notifier.join()

    def _initialised(self) -> None:
        """libfuse is initialised (on its thread, in ``init``): the mount is live."""
        if self._fast is not None:
            self._fast.register(current_fuse())
        self._settled.set()

    @property
    def fast_open(self) -> bool:
        """Whether files are opened by the C ``open`` (``cgroupfs.fastopen``)."""
        return self._fast is not None

    @property
    def serving(self) -> fastopen.Serving | None:
        """The mount's C parts (``None`` without the shared object)."""
        return self._fast

    def _serve(self) -> None:
        try:
            # the kernel cache stops invalidating when libfuse's loop ends, before libfuse
            # tears the session down: whoever unmounted (us, fusermount, umount)
            with fastopen.serving(self.operations, self.operations.cache.detach) as self._fast:
                if self._fast is not None:  # getattr, read (and a rewrite) answered in C
                    self._fast.table.rewrites(files.unchanged_by_rewrite(self.system))
                    self.operations.cache.published = self._fast.table
                mfusepy.FUSE(self.operations, self.mountpoint, raw_fi=True, **self._options)
        except BaseException as exc:  # reported by mount() or kept for wait()
            self._error = exc
        finally:
            self._ended.set()
            self._settled.set()

    def _start(self) -> None:
        self._thread.start()
        if not self._settled.wait(MOUNT_TIMEOUT):
            self.unmount()
            raise OSError(ETIMEDOUT, f"{self.mountpoint}: the kernel did not connect in time")
        if self._ended.is_set():
            raise OSError(
                EINVAL,
                f"{self.mountpoint}: libfuse could not mount ({self._error!r}; its own message "
                "is on stderr)",
            )
        if not os.path.exists(os.path.join(self.mountpoint, "cgroup.procs")):
            self.unmount()
            raise OSError(ENOENT, f"{self.mountpoint}: mounted, but cgroup.procs is missing")
        # what the mount point shows now is this mount: paths under it are taken for its
        # files only while it shows the same device (not once something is mounted over it)
        device = os.stat(self.mountpoint).st_dev
        self.operations.cache.device = device
        if self._fast is not None:
            self._fast.set_device(device)
        self._start_notifier()

    @property
    def mounted(self) -> bool:
        """Whether the serving thread still runs."""
        return not self._ended.is_set()

    def unmount(self) -> None:
        """Unmount and return once the serving thread has ended; does nothing when unmounted.

        A busy mount point (an open file, a shell's working directory) is detached anyway: as
        root the connection is aborted first (``MNT_FORCE``), so the holders get ``ENOTCONN``;
        otherwise ``fusermount3 -u -z`` detaches it and the thread ends with the last holder.
        """
        self._stop_notifier()
        # nothing left to invalidate once the mount goes: stop now rather than when the loop
        # ends (which is where an unmount from outside stops it)
        self.operations.cache.detach()
        with self._lock:
            if not self._ended.is_set():
                _unmount(self.mountpoint)
        self._thread.join()

    def wait(self) -> None:
        """Block until the file system is unmounted, by ``unmount`` or from outside."""
        self._ended.wait()
        self._stop_notifier()
        self._thread.join()

    def __enter__(self) -> CgroupMount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"CgroupMount({self.mountpoint!r}, mounted={self.mounted})"


def mount(system: System, mountpoint: str, *, allow_other: bool = True,
          fsname: str = "ioasids") -> CgroupMount:
    """Mount the hierarchy of ``system`` on ``mountpoint`` (created if missing) and serve it on
    a background thread (multi-threaded libfuse3 loop, mfusepy), with ``default_permissions``
    and ``allow_other`` (when ``/etc/fuse.conf`` or root allows it); the kernel caches
    attributes and the contents of the files that follow the model, and is told when they
    change (``cgroupfs.kernelcache``). That needs the mount's C loop (``cgroupfs.fastopen``),
    which stops the notifications before libfuse tears the session down: without the shared
    object, the kernel keeps attributes for a second (libfuse's default) and no contents.

    Returns once the mount is live (``mountpoint/cgroup.procs`` exists). Raises ``OSError`` with
    a clear message on failure: ``ENODEV`` without ``/dev/fuse``, ``EBUSY`` for a mount point
    that is already mounted (or holds a dead mount: see ``force_unmount``), ``ENOTDIR`` for a
    file, ``EINVAL`` when libfuse refuses, ``ETIMEDOUT`` when the kernel never connects.
    """
    mountpoint = os.path.abspath(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise OSError(ENODEV, "/dev/fuse is missing: load the fuse module (modprobe fuse)")
    if stale_mount(mountpoint):
        raise OSError(
            EBUSY, f"{mountpoint} holds a dead FUSE mount (a killed daemon?): force_unmount it"
        )
    if os.path.lexists(mountpoint) and not os.path.isdir(mountpoint):
        raise NotADirectoryError(ENOTDIR, f"{mountpoint} is not a directory")
    os.makedirs(mountpoint, exist_ok=True)
    if os.path.ismount(mountpoint):
        raise OSError(EBUSY, f"{mountpoint} is already a mount point")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise OSError(ENOENT, "fusermount3 is missing (Debian package fuse3)")
    if allow_other and not _allow_other_permitted():
        log.warning("allow_other dropped: not root and no user_allow_other in /etc/fuse.conf",
                    mountpoint=mountpoint)
        allow_other = False
    kernel_cache = fastopen.library() is not None
    options: dict[str, object] = {
        "foreground": True,
        "default_permissions": True,
        "attr_timeout": ATTR_TIMEOUT if kernel_cache else 1.0,
        "entry_timeout": ENTRY_TIMEOUT if kernel_cache else 1.0,
        # read-only opens send no FLUSH on close: nothing is kept per open file
        "no_rofd_flush": True,
        "fsname": fsname,
        "subtype": "ioasids",
        # Left unset, libfuse 3.14's fuse_main_real hands UINT_MAX to
        # fuse_loop_cfg_set_idle_threads, which prints "Ignoring invalid max threads value" on
        # every mount; 10 idle workers is the loop's usual size.
        "max_idle_threads": 10,
    }
    if allow_other:
        options["allow_other"] = True
    handle = CgroupMount(system, mountpoint, options, kernel_cache=kernel_cache)
    handle._start()
    return handle


def fuse_unavailable() -> str | None:
    """Why this machine cannot serve and manage a FUSE mount, or ``None`` if it can: no
    ``/dev/fuse`` (the fuse module), or no ``fusermount3`` (Debian package fuse3)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    return None


def stale_mount(path: str) -> bool:
    """Whether ``path`` is a FUSE mount point whose server is gone (``ENOTCONN``)."""
    path = os.path.abspath(path)
    if not _fuse_mounted_at(path):
        return False
    try:
        os.statvfs(path)  # always asks the server (a stat may be answered from the cache)
    except OSError as exc:
        return exc.errno == ENOTCONN
    return False


def force_unmount(path: str) -> None:
    """Remove whatever FUSE mount is at ``path``, busy or dead: a lazy unmount (``umount -l``
    as root, ``fusermount3 -u -z`` otherwise). Does nothing when nothing is mounted there;
    ``OSError`` when the unmount fails."""
    path = os.path.abspath(path)
    if not _fuse_mounted_at(path):
        return
    if os.geteuid() == 0:
        _umount2(path, MNT_DETACH)
    else:
        _fusermount(path, lazy=True)


# ---------------------------------------------------------------------- helpers
def _unmount(path: str) -> None:
    """Unmount ``path``; detach it when busy (as root, aborting the connection first)."""
    if os.geteuid() != 0:
        try:
            _fusermount(path, lazy=False)
        except OSError:
            _fusermount(path, lazy=True)
        return
    try:
        _umount2(path, 0)
    except OSError as exc:
        if exc.errno == EINVAL:  # not (or no longer) mounted: the loop is ending by itself
            return
        if exc.errno != EBUSY:
            raise
        with contextlib.suppress(OSError):
            _umount2(path, MNT_FORCE)  # fuse_umount_begin aborts the connection
        with contextlib.suppress(OSError):
            _umount2(path, MNT_DETACH)


def _umount2(path: str, flags: int) -> None:
    if _libc.umount2(os.fsencode(path), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"umount {path}: {os.strerror(code)}")


def _fusermount(path: str, *, lazy: bool) -> None:
    argv = ["fusermount3", "-u", *(["-z"] if lazy else []), path]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(EBUSY, f"{' '.join(argv)}: {done.stderr.strip()}")


def _allow_other_permitted() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf", encoding="utf-8") as conf:
            return any(line.strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def _fuse_mounted_at(path: str) -> bool:
    """Whether ``/proc/self/mountinfo`` lists a FUSE file system mounted at ``path``
    (``False`` when it cannot be read)."""
    try:
        listed = mounts()
    except OSError:
        return False
    return any(m.mount_point == path and (m.fstype == "fuse" or m.fstype.startswith("fuse."))
               for m in listed)
