"""The FUSE operations (mfusepy, libfuse3 high-level API) of the cgroup file system (v1, or
v2 for a ``System`` with a cgroup-v2 hierarchy: then ``rename`` is ``EPERM``, as cgroup2 has
none, and a file made when the controller was enabled belongs to its directory's owner).

Every path is resolved against the model on each request: a directory is a cgroup, a file is an
entry of ``cgroupfs.files`` in its cgroup's directory. Changes go through ``System`` methods,
which call ``system.on_change`` (the daemon's durable store) before they return, so a write is
durable when the write(2) returns. Errors are ``OSError``s carrying a kernel errno (the model's
``IoasidError`` is one); mfusepy returns ``-errno`` to the kernel, and any other exception becomes
``EINVAL`` and is logged, so bad input never stops the file system. A change (``write``,
``mkdir``, ``rmdir``, ``rename``) by a user other than root is made in that user's
``client_context``: the log lines it causes are counted against its uid and rate-limited per
uid (``ioasidsd.clients``); root's are always logged.

What the kernel's cgroupfs does, and so what this does (errnos the VFS produces before a request
reaches a file system, such as ``ENOTDIR`` for ``rmdir`` of a file, are not repeated here):

- ``mkdir``: a cgroup (``EEXIST`` for a taken name, ``EINVAL`` for a newline in it); it belongs
  to its creator when that is not root, files included; ``rmdir``: ``EBUSY`` while it has
  running processes (members found to have exited are reported as exits first) or children;
  ``rename``: directories only (``ENOTDIR``), within the parent (``EIO``),
  not onto an existing name (``EEXIST``).
- No file creation (``EACCES``), deletion (``EPERM``), links or symlinks (``EPERM``).
- ``chmod``/``chown`` of directories and files are recorded (``System.set_attrs``) and enforced
  by the kernel (the mount uses ``default_permissions``); ``truncate`` and ``utimens`` are
  accepted and change nothing.
- Reads and writes through a file whose cgroup has been removed: ``ENODEV``. A read or write
  finds its file by the path libfuse keeps for the open file (``None`` once the directory was
  removed through the mount).
- Writes are judged by the credentials the file was opened with, as the kernel judges them
  (``of->file->f_cred``): ``open`` packs the opener's uid and gid into the file handle
  (``opener_handle``), which the kernel hands back with every write through that open file, so
  a descriptor passed to (or inherited by) another process keeps its opener's rights. Nothing
  is kept per open file, so no ``release`` is served; nor is ``flush``: libfuse answers them.
- Reads of a file whose text follows the model (``CgroupFile.cached``) are served from the
  kernel's page cache: ``open`` for reading sets ``keep_cache``, and every change the model
  reports invalidates the files the kernel holds that it may alter, before the change returns
  (``cgroupfs.kernelcache``). An unchanged file costs one round trip, the ``open``; a changed
  one, the ``open`` and a read. Opens for writing, and opens of the process lists, are
  ``direct_io``: each read renders afresh, and a write never leaves a page locked while its
  own change is being notified.
- Sizes: a cached file reports the length of its text (the kernel's page cache needs it; kernfs
  reports 0); directories and the process lists report 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from errno import EACCES, EISDIR, ENODEV, ENOENT, ENOTDIR, EPERM
from os import O_ACCMODE, O_RDONLY
from stat import S_IFDIR, S_IFREG
from typing import Any

import mfusepy

from cgroupfs import files, pidlists
from cgroupfs.files import CgroupFile, Writer
from cgroupfs.kernelcache import KernelCache, current_fuse
from ioasidsd.clients import client_context
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.system import System

ROOT_DIR_MODE = 0o555
DIR_MODE = 0o755
PIDLIST_LIFETIME = 1.0
"""Seconds a rendering stays for reads at a non-zero offset (``CGROUP_PIDLIST_DESTROY_DELAY``)."""
_UID_MASK = (1 << 32) - 1
EVENTS_FILE = "cgroup.events"
EVENTS_HANDLE = 1 << 63
"""The tag of the handles ``open`` gives ``cgroup.events`` (a serial, not the opener: the file
is read-only, and its handle must tell open files apart for ``poll``)."""
EVENTS_OPEN_MAX = 4096
"""Open ``cgroup.events`` files whose last read is remembered (the oldest are forgotten: no
``release`` is served, so an open file is never known to be closed)."""
FUSE_CAP_ATOMIC_O_TRUNC = 1 << 3
POLL_DEFAULT = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM
POLL_CHANGED = select.POLLERR | select.POLLPRI

_libfuse = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
_libfuse.fuse_notify_poll.argtypes = (ctypes.c_void_p,)
_libfuse.fuse_pollhandle_destroy.argtypes = (ctypes.c_void_p,)


def opener_handle(uid: int, gid: int) -> int:
    """The file handle ``open`` returns for an opener with ``uid`` and ``gid`` (32 bits each,
    as ``uid_t`` and ``gid_t``): ``uid | gid << 32``, the 64 bits of ``fuse_file_info.fh``."""
    return uid | gid << 32


def opener_of(fh: int) -> tuple[int, int]:
    """The opener's ``(uid, gid)`` packed in a file handle by ``opener_handle``."""
    return fh & _UID_MASK, fh >> 32


def _caused_by(uid: int) -> contextlib.AbstractContextManager[None]:
    """The context of a change by ``uid``: its log lines rate-limited per uid, but root's."""
    return contextlib.nullcontext() if uid == 0 else client_context(uid)


class CgroupOperations(mfusepy.Operations):
    """The file system over ``system``; ``on_init`` is called once the kernel connected. With
    ``kernel_cache`` false, every open is ``direct_io`` and nothing is invalidated (for a
    mount whose loop cannot stop notifications in time: ``cgroupfs.mount``)."""

    use_ns = True

    def __init__(self, system: System, *, on_init: Callable[[], None] | None = None,
                 kernel_cache: bool = True) -> None:
        self.system = system
        self.kernel_cache = kernel_cache
        self._on_init = on_init
        self.started_ns = time.time_ns()
        self._renderings: OrderedDict[tuple[Cgroup, str], tuple[float, bytes]] = OrderedDict()
        self._renderings_lock = threading.Lock()
        # cgroup.events: changes per cgroup, what each open file last saw, pollers waiting
        self._events_lock = threading.Lock()
        self._generation: dict[Cgroup, int] = {}
        self._seen: OrderedDict[int, int] = OrderedDict()
        self._pollers: dict[Cgroup, list[int]] = {}
        self._serial = itertools.count(1)
        self.cache = KernelCache(system)

    # ------------------------------------------------------------------ resolution
    def _resolve(self, path: str | None) -> tuple[Cgroup, CgroupFile | None]:
        """The cgroup and file (``None`` for the directory itself) at ``path``; ``ENOENT``, or
        ``ENODEV`` without a path (an open file whose directory was removed)."""
        if path is None:
            raise IoasidError(ENODEV, "the cgroup was removed")
        node = self.system.cgroups.root
        if path == "/":
            return node, None
        parts = path[1:].split("/")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if i == last:
                file = files.files_of(self.system, node).get(part)
                if file is not None:
                    return node, file
            child = node.children.get(part)
            if child is None:
                code = ENOTDIR if part in files.files_of(self.system, node) else ENOENT
                raise IoasidError(code, f"no {path}")
            node = child
        return node, None

    def _resolve_file(self, path: str | None) -> tuple[Cgroup, CgroupFile]:
        """The cgroup and file an open file refers to, or ``ENODEV`` when that cgroup has been
        removed (``path`` is ``None`` once libfuse saw it go, unknown if another face did)."""
        if path is not None:
            try:
                cg, file = self._resolve(path)
            except IoasidError:
                pass
            else:
                if file is not None:
                    return cg, file
        raise IoasidError(ENODEV, "the cgroup was removed")

    def _stat(self, cg: Cgroup, file: CgroupFile | None,
              text: bytes | None = None) -> dict[str, Any]:
        """The attributes of ``file`` of ``cg`` (``None``: the directory); a cached file's
        size is the length of ``text``, rendered here when not given."""
        name = "" if file is None else file.name
        attrs = cg.attrs.get(name, {})
        if file is not None and "uid" not in attrs and self.system.cgroups.version == 2:
            # a controller's file made when a v2 parent enabled it belongs to the directory's
            # owner (cgroup_kn_set_ugid)
            owner = cg.attrs.get("")
            if owner and ("uid" in owner or "gid" in owner):
                attrs = {**{k: owner[k] for k in ("uid", "gid") if k in owner}, **attrs}
        size = 0
        if file is None:
            default = ROOT_DIR_MODE if cg.parent is None else DIR_MODE
            kind, nlink = S_IFDIR, 2 + len(cg.children)
        else:
            default, kind, nlink = file.mode, S_IFREG, 1
            if file.cached:
                size = len(files.read(self.system, cg, file) if text is None else text)
        started = self.started_ns
        return {
            "st_mode": kind | attrs.get("mode", default),
            "st_nlink": nlink,
            "st_uid": attrs.get("uid", 0),
            "st_gid": attrs.get("gid", 0),
            "st_size": size,
            "st_atime": attrs.get("atime", started),
            "st_mtime": attrs.get("mtime", started),
            "st_ctime": started,
        }

    # ------------------------------------------------------------------ life cycle
    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse is initialised: ``O_TRUNC`` comes with the ``open`` (``atomic_o_trunc``;
        truncating a cgroup file changes nothing, so no truncation round trip is needed)."""
        if conn is not None and conn.capable & FUSE_CAP_ATOMIC_O_TRUNC:
            conn.want |= FUSE_CAP_ATOMIC_O_TRUNC
        if self.kernel_cache:
            self.cache.attach(current_fuse())
        if self._on_init is not None:
            self._on_init()

    def destroy(self, path: str) -> None:
        self.cache.detach()

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    # ------------------------------------------------------------------ reading the tree
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        """The attributes, also published for the C ``getattr`` (and, for a cached file, its
        text for the C ``read``): the next request for them costs no Python call."""
        cg, file = self._resolve(path)
        name = "" if file is None else file.name
        ticket = self.cache.note(cg, name)  # before reading what is told
        text = files.read(self.system, cg, file) if file is not None and file.cached else None
        stat = self._stat(cg, file, text)
        self.cache.publish(cg, name, ticket, stat, text)
        return stat

    def readdir(self, path: str, fh: int) -> list[str | tuple[str, int, int]]:
        cg, file = self._resolve(path)
        if file is not None:
            raise IoasidError(ENOTDIR, f"{path} is a file")
        entries: list[str | tuple[str, int, int]] = [".", ".."]
        entries += [(name, S_IFREG, 0) for name in files.files_of(self.system, cg)]
        entries += [(name, S_IFDIR, 0) for name in list(cg.children)]
        return entries

    # ------------------------------------------------------------------ files
    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        """A read at offset 0 renders the file afresh and keeps the rendering for a second;
        reads further on continue it, so the pieces fit (seq_file keeps its buffer per open
        file; with nothing kept per open file, renderings are kept per cgroup file). A cached
        file is held (``KernelCache.note``) before it is rendered. ``fi`` is libfuse's
        ``fuse_file_info`` (the mount passes it raw)."""
        fh = fi.fh
        cg, file = self._resolve_file(path)
        ticket = self.cache.note(cg, file.name) if file.cached else None
        key = (cg, file.name)
        if offset:
            with self._renderings_lock:
                kept = self._renderings.get(key)
            if kept is not None and time.monotonic() - kept[0] < PIDLIST_LIFETIME:
                return kept[1][offset : offset + size]
        text = files.read(self.system, cg, file)
        if not offset:
            self._keep(key, text)
        if ticket is not None:  # the next reads are answered in C
            self.cache.publish(cg, file.name, ticket, self._stat(cg, file, text), text)
        if fh & EVENTS_HANDLE:
            self._saw(fh, cg)
        return text[offset : offset + size]

    def _keep(self, key: tuple[Cgroup, str], text: bytes) -> None:
        """Keep a rendering, dropping those older than ``PIDLIST_LIFETIME``."""
        now = time.monotonic()
        with self._renderings_lock:
            renderings = self._renderings
            renderings.pop(key, None)
            renderings[key] = (now, text)
            while renderings:
                oldest = next(iter(renderings.values()))
                if now - oldest[0] < PIDLIST_LIFETIME:
                    break
                renderings.popitem(last=False)

    def open(self, path: str, fi: Any) -> int:
        """Every open of a file: the handle (``fi.fh``) records the opener
        (``opener_handle``); a cached file opened read-only keeps the kernel's page cache
        (``keep_cache``), any other open is ``direct_io`` (see the module). Never fails: the
        kernel has already checked the mode (``default_permissions``) and found the file;
        whether its cgroup still exists is the business of each read and write."""
        if path.endswith("/" + EVENTS_FILE):
            fi.fh = self._open_events(path)
            fi.direct_io = 1
            return 0
        uid, gid, _pid = mfusepy.fuse_get_context()
        fi.fh = opener_handle(uid, gid)
        cached = False
        if self.kernel_cache and fi.flags & O_ACCMODE == O_RDONLY:
            try:
                _cg, file = self._resolve(path)
            except IoasidError:
                pass
            else:
                cached = file is not None and file.cached
        if cached:
            fi.keep_cache = 1
        else:
            fi.direct_io = 1
        return 0

    # ------------------------------------------------------------------ cgroup.events
    def _open_events(self, path: str) -> int:
        """A handle of its own for an open ``cgroup.events``, which has not read the file yet:
        until it does, ``poll`` reports a change (as kernfs's ``of->event`` starts behind)."""
        fh = EVENTS_HANDLE | next(self._serial)
        self._remember(fh, -1)
        return fh

    def _saw(self, fh: int, cg: Cgroup) -> None:
        with self._events_lock:
            generation = self._generation.get(cg, 0)
        self._remember(fh, generation)

    def _remember(self, fh: int, generation: int) -> None:
        with self._events_lock:
            self._seen[fh] = generation
            self._seen.move_to_end(fh)
            while len(self._seen) > EVENTS_OPEN_MAX:
                self._seen.popitem(last=False)

    def events_changed(self, cg: Cgroup) -> None:
        """``cgroup.events`` of ``cg`` changed (the mount's notifier calls this): open files
        that have not read it since see ``POLLPRI``/``POLLERR``, and waiting pollers wake."""
        with self._events_lock:
            self._generation[cg] = self._generation.get(cg, 0) + 1
            waiting = self._pollers.pop(cg, [])
        for ph in waiting:
            _libfuse.fuse_notify_poll(ph)
            _libfuse.fuse_pollhandle_destroy(ph)

    def poll(self, path: str | None, fi: Any, ph: int | None, reventsp: Any) -> int:
        """As kernfs: every file is readable and writable; an open ``cgroup.events`` whose
        content changed since it was opened or last read also has ``POLLPRI`` and
        ``POLLERR``. A poller of an unchanged ``cgroup.events`` is woken at its next change
        (``events_changed``); others are never woken (nothing else notifies)."""
        mask = POLL_DEFAULT
        fh = fi.fh
        try:
            cg, file = self._resolve_file(path)
        except IoasidError:  # removed: kernfs answers this way for a file gone
            if ph:
                _libfuse.fuse_pollhandle_destroy(ph)
            reventsp[0] = mask | POLL_CHANGED
            return 0
        if file.name == EVENTS_FILE and fh & EVENTS_HANDLE:
            with self._events_lock:
                generation = self._generation.get(cg, 0)
                if self._seen.get(fh, generation) != generation:
                    mask |= POLL_CHANGED
                elif ph:
                    self._pollers.setdefault(cg, []).append(ph)
                    ph = None
        if ph:
            _libfuse.fuse_pollhandle_destroy(ph)
        reventsp[0] = mask
        return 0

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        """One write(2) as mfusepy hands it (``fi``: libfuse's ``fuse_file_info``): ``write_from``
        with the calling thread of the request."""
        return self.write_from(path, data, fi.fh, mfusepy.fuse_get_context()[2])

    def write_from(self, path: str | None, data: bytes, fh: int, pid: int) -> int:
        """One write(2) of ``data`` through a file opened with handle ``fh`` by thread ``pid``:
        judged by the credentials of the file's opener (from ``fh``, see ``open``); a ``0``
        written to ``cgroup.procs`` names ``pid``. The bytes consumed; the errnos of
        ``files.write``, ``ENODEV`` when the cgroup was removed. The mount's C ``write`` calls
        this directly (``cgroupfs.fastopen``)."""
        uid, gid = opener_of(fh)
        writer = Writer(pid, uid, gid)
        with _caused_by(uid), self.system.lock:
            cg, file = self._resolve_file(path)
            written = files.write(self.system, cg, file, data, writer)
            if file.cached:  # the new value, for the writer's next stat and read (in C)
                ticket = self.cache.note(cg, file.name)
                text = files.read(self.system, cg, file)
                self.cache.publish(cg, file.name, ticket, self._stat(cg, file, text), text,
                                   path=path)
            return written

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        _cg, file = self._resolve(path)
        if file is None:
            raise IoasidError(EISDIR, f"{path} is a directory")
        return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        raise IoasidError(EACCES, "cgroup directories hold no new files")

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise IoasidError(EACCES, "cgroup directories hold no new files")

    def unlink(self, path: str) -> int:
        raise IoasidError(EPERM, "cgroup files cannot be removed")

    def symlink(self, target: str, source: str) -> int:
        raise IoasidError(EPERM, "cgroup directories hold no links")

    def link(self, target: str, source: str) -> int:
        raise IoasidError(EPERM, "cgroup directories hold no links")

    # ------------------------------------------------------------------ attributes
    def chmod(self, path: str, mode: int) -> int:
        cg, file = self._resolve(path)
        name = "" if file is None else file.name
        self.system.set_attrs(cg.path, {name: {"mode": mode & 0o7777}})
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        cg, file = self._resolve(path)
        change = {key: value for key, value in (("uid", uid), ("gid", gid)) if value != -1}
        if change:
            self.system.set_attrs(cg.path, {"" if file is None else file.name: change})
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._resolve(path)
        return 0

    # ------------------------------------------------------------------ the hierarchy
    def mkdir(self, path: str, mode: int) -> int:
        uid, gid, _pid = mfusepy.fuse_get_context()
        parent_path = path.rpartition("/")[0] or "/"
        with _caused_by(uid), self.system.lock:
            parent, file = self._resolve(parent_path)
            if file is not None:
                raise IoasidError(ENOTDIR, f"{parent_path} is a file")
            cg = self.system.mkdir(path, reserved_names=files.names_of(self.system, parent))
            changes: dict[str, dict[str, int]] = {}
            if mode & 0o7777 != DIR_MODE:
                changes[""] = {"mode": mode & 0o7777}
            if uid != 0 or gid != 0:
                # cgroup_kn_set_ugid: a non-root creator owns the directory and its files.
                owner = {"uid": uid, "gid": gid}
                for name in ("", *files.files_of(self.system, cg)):
                    changes.setdefault(name, {}).update(owner)
            if changes:
                self.system.set_attrs(cg.path, changes)
        return 0

    def rmdir(self, path: str) -> int:
        cg, file = self._resolve(path)
        if file is not None:
            raise IoasidError(ENOTDIR, f"{path} is a file")
        pidlists.forget_exited(self.system, cg)
        with _caused_by(mfusepy.fuse_get_context()[0]), self.cache.kernel_moves():
            self.system.rmdir(path)
        self.events_changed(cg)  # its pollers wake (and find it gone)
        with self._events_lock:
            self._generation.pop(cg, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        if self.system.cgroups.version == 2:
            raise IoasidError(EPERM, "cgroup2 has no rename")
        with _caused_by(mfusepy.fuse_get_context()[0]), self.cache.kernel_moves(), \
                self.system.lock:
            _cg, file = self._resolve(old)
            if file is not None:
                raise IoasidError(ENOTDIR, "only cgroups can be renamed")
            new_parent, file = self._resolve(new.rpartition("/")[0] or "/")
            if file is not None:
                raise IoasidError(ENOTDIR, f"{new} is not in a cgroup")
            self.system.rename(old, new, reserved_names=files.names_of(self.system, new_parent))
        return 0
