"""What the kernel may hold of the mount (file contents in its page cache, attributes), and
telling it the moment that changes.

The mount lets the kernel cache: attributes (sizes, modes, owners) for ``ATTR_TIMEOUT``, and the
contents of the files whose text follows the model (``CgroupFile.cached``: limits, counters,
events, flags; not the process lists), which are opened with ``keep_cache`` so that a read of an
unchanged file never reaches the server. Correctness rests on one rule: whatever the kernel was
told about a file is *held* until the file is invalidated, and every ``Change`` of the model
invalidates the held files it may have changed, before the call that made it returns.

Contract:

* ``note(cg, name)`` records that the kernel is about to be told something of the file ``name``
  of ``cg`` (``""``: the directory itself): its content (a read) or its attributes (a getattr,
  whose size is the content's length). It is called **before** the value is rendered, so a
  change made after the rendering always finds the file held.
* ``changed(change)`` runs under the model's lock for every ``Change`` while anything is held
  (the mount installs it on ``System.on_change`` only then: when nothing is held, a change costs
  nothing more). The cgroups a change may have altered are those it names (``cgroups``, the
  cgroups of its ``processes``) with their ancestors, whose counters follow theirs, and the root
  (whose files count every IOASID); a change that cannot be named (kind ``sync``) alters all.
  Their held files stop being held and their paths wait, per thread, for the release. A
  directory's own attributes (mode, owner, link count) change only with the kinds in
  ``DIRECTORY_KINDS``, and only those of the cgroups named and of their parents (a link
  count); other directories stay held, so that a change does not make the next path walk ask
  for every directory's attributes again.
* ``flush()`` runs on the same thread after the outermost release of the model's lock
  (``ModelLock.after_release``), before the call returns to its face: each waiting path is
  invalidated (``fuse_invalidate_path``: the kernel drops the inode's cached pages and
  attributes). It runs outside the lock because dropping a page waits for a read of that page in
  flight, whose handler may need the lock.
* A file is invalidated only if it was held: a file nobody read since its last invalidation
  costs nothing.
* With a ``published`` table (the mount's C ``getattr`` and ``read``, ``cgroupfs.fastopen``),
  what the kernel is told may also be published there, so that the next request for it is
  answered in C: ``publish(cg, name, ticket, stat, text)`` with the ticket ``note`` returned
  publishes only if no held file stopped being held since that ``note`` (a value rendered
  before a change is never published after it). ``changed`` forgets what it stops holding
  from the table at once, under the model's lock, before the change returns; a rename or a
  ``sync`` forgets everything (the paths below a renamed cgroup changed). So whatever the
  table answers is held, and no older than the last change.
* Directory entries (a name's lookup) are kept for ``ENTRY_TIMEOUT``: a name the kernel was told
  of (``note``) is *known* until the tree loses it. The tree loses names only by changes the
  ``System`` reports to its ``names_watchers`` (``names_changed``: a cgroup removed or renamed,
  files a cgroup no longer has after a ``cgroup.subtree_control`` or ``cgroup.type`` write);
  each known name lost waits for ``flush`` as the paths do, which tells the kernel to drop the
  entry (``fuse_lowlevel_notify_inval_entry`` on the directory's inode, whose number is the
  libfuse node id: the mount does not pass ``use_ino``; found by ``find_inode``). A removal or
  rename the kernel itself asked for (``kernel_moves``: the mount's own ``rmdir`` and
  ``rename``) is not notified: the kernel updates that entry itself, and holds the directory's
  lock while it waits for the answer, so a notification then would wait for ever. The rest of
  the feed does not reach ``names_changed``: knowing names costs the charge path nothing.
* Nothing is held, and nothing invalidated, before ``attach`` (libfuse's ``init``) nor after
  ``detach``, which the mount calls when libfuse's loop ends, before libfuse tears the session
  down (a notification after that would read freed memory): ``detach`` waits for an
  invalidation in flight, and no other starts after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from cgroupfs import files
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.system import System

ATTR_TIMEOUT = 3600.0
"""Seconds the kernel may keep attributes: every change to them is notified, so this only bounds
what a missed notification could cost."""

ENTRY_TIMEOUT = 3600.0
"""Seconds the kernel may keep a directory entry: every name the tree loses is notified but
those the kernel removed itself, so this only bounds what a missed notification could cost."""

_libfuse = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
_libfuse.fuse_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_libfuse.fuse_invalidate_path.restype = ctypes.c_int
_libfuse.fuse_get_session.argtypes = (ctypes.c_void_p,)
_libfuse.fuse_get_session.restype = ctypes.c_void_p
_libfuse.fuse_lowlevel_notify_inval_entry.argtypes = (ctypes.c_void_p, ctypes.c_uint64,
                                                      ctypes.c_char_p, ctypes.c_size_t)
_libfuse.fuse_lowlevel_notify_inval_entry.restype = ctypes.c_int


class InodeFinder(Protocol):
    """``fastopen.kernel_inode``: the inode number the kernel gives ``path`` on ``device``,
    resolved from its caches only when ``cached_only``; ``None`` if it has none."""

    def __call__(self, path: str, device: int | None = None, *,
                 cached_only: bool = False) -> int | None: ...


DIRECTORY_KINDS = frozenset({ChangeKind.MKDIR, ChangeKind.RMDIR, ChangeKind.RENAME,
                             ChangeKind.ATTRS, ChangeKind.CONTROL, ChangeKind.SYNC})
"""The kinds of change that may alter a directory's attributes."""

_EVERY_PATH_KINDS = frozenset({ChangeKind.RENAME, ChangeKind.SYNC})
"""Kinds after which nothing published is kept (a rename changes the paths of a subtree)."""


class Published(Protocol):
    """A table of published attributes and texts (``cgroupfs.fastopen.Table``)."""

    def publish(self, path: str, stat: dict[str, int], text: bytes | None) -> None: ...

    def forget(self, paths: Iterable[str]) -> None: ...

    def clear(self) -> None: ...


class _Context(ctypes.Structure):
    _fields_ = [("fuse", ctypes.c_void_p)]  # the first field of struct fuse_context


_libfuse.fuse_get_context.restype = ctypes.POINTER(_Context)


def current_fuse() -> int | None:
    """The ``struct fuse *`` serving the calling libfuse thread (in a callback), or ``None``."""
    context = _libfuse.fuse_get_context()
    return context.contents.fuse if context else None


class KernelCache:
    """The files of ``system``'s mount the kernel may hold, and their invalidation."""

    def __init__(self, system: System) -> None:
        self.system = system
        self._held: dict[Cgroup, int] = {}  # the held names of each cgroup, as bits
        self._bits: dict[str, int] = {"": 1}  # a name's bit ("": the directory)
        self._names: list[str] = [""]  # the name of each bit
        self._pending: dict[int, list[str | tuple[str, str]]] = {}  # paths, entries
        self._lock = threading.Lock()  # _held, and which on_change is installed
        self._fuse: int | None = None
        self._fuse_lock = threading.Lock()  # the fuse pointer's lifetime
        self._base_on_change: Callable[[Change], None] | None = None
        self._epoch = 0  # counts the changes that stopped holding something
        self.published: Published | None = None
        """Where what the kernel is told is also published (the mount's C handlers), if any."""
        self.invalidations = 0
        """Paths invalidated so far (for tests and benchmarks)."""
        self.mountpoint: str | None = None
        """Where the mount is (set by it before it is served): where a directory's inode is
        found (``find_inode``) to drop an entry in it."""
        self.device: int | None = None
        """The mount's device, set by the mount once it is live: a path under ``mountpoint``
        is taken for one of its directories only while it shows this device (not once
        something is mounted over it); entries are not dropped before it is known."""
        self.find_inode: InodeFinder | None = None
        """How a directory's inode is found (``fastopen.kernel_inode``, set by the mount when
        the C parts are built); entries are not dropped without it."""
        self._known: dict[Cgroup, int] = {}  # the names of each cgroup the kernel was told of
        self._local = threading.local()  # ``kernel_moves``
        self.entry_invalidations = 0
        """Directory entries the kernel was told to drop so far (for tests)."""

    # ------------------------------------------------------------------ life cycle
    def attach(self, fuse: int | None) -> None:
        """The mount is served by ``fuse`` (from ``init``): start invalidating."""
        with self._fuse_lock:
            self._fuse = fuse
        with self.system.lock:
            if self.names_changed not in self.system.names_watchers:
                self.system.names_watchers.append(self.names_changed)
        self.system.lock.after_release(self.flush, self._pending)

    def detach(self) -> None:
        """The mount ends (its loop ended, or it is being unmounted): forget what is held and
        stop invalidating, once an invalidation in flight is done. Idempotent."""
        with self._fuse_lock:
            self._fuse = None
        with self.system.lock:
            self.system.lock.after_release(None)
            if self.names_changed in self.system.names_watchers:
                self.system.names_watchers.remove(self.names_changed)
            with self._lock:
                self._held.clear()
                self._known.clear()
                self._epoch += 1
                if self.published is not None:
                    self.published.clear()
                self._uninstall()
        self._pending.clear()

    # ------------------------------------------------------------------ what is held
    @property
    def attached(self) -> bool:
        """Whether the mount is served and its files are invalidated (see ``attach``)."""
        return self._fuse is not None

    def note(self, cg: Cgroup, name: str) -> int | None:
        """The kernel is about to be told of file ``name`` of ``cg`` (see the module); the
        ticket for ``publish``, ``None`` when not serving."""
        if self._fuse is None:  # not serving: nothing will be invalidated
            return None
        with self._lock:
            if self._fuse is None:  # detached since: holding now would outlive the mount
                return None
            bit = self._bits.get(name)
            if bit is None:  # a name never seen: the names are those of the file tables
                bit = self._bits[name] = 1 << len(self._names)
                self._names.append(name)
            held = self._held.get(cg)
            if held is None:
                self._held[cg] = bit
                if self._base_on_change is None:
                    self._install()
            else:
                self._held[cg] = held | bit
            known = self._known
            known[cg] = known.get(cg, 0) | bit
            return self._epoch

    def publish(self, cg: Cgroup, name: str, ticket: int | None, stat: dict[str, int],
                text: bytes | None, *, path: str | None = None) -> None:
        """Publish the attributes ``stat`` and the text (``None``: attributes only) of file
        ``name`` of ``cg`` (``""``: the directory), rendered after ``note`` gave ``ticket``,
        unless a change may have altered them since (see the module). ``path``: the file's
        path, when the caller has it (it must be ``cg``'s path and ``name``)."""
        published = self.published
        if published is None or ticket is None:
            return
        if path is None:
            base = cg.path.rstrip("/")
            path = base + "/" + name if name else base or "/"
        with self._lock:
            if ticket == self._epoch and self._fuse is not None:
                published.publish(path, stat, text)

    def held(self) -> int:
        """How many files are held."""
        with self._lock:
            return sum(bits.bit_count() for bits in self._held.values())

    def _install(self) -> None:
        system = self.system
        base = system.on_change
        self._base_on_change = base
        changed = self.changed

        def on_change(change: Change) -> None:
            base(change)
            changed(change)

        system.on_change = on_change

    def _uninstall(self) -> None:
        if self._base_on_change is not None:
            self.system.on_change = self._base_on_change
            self._base_on_change = None

    # ------------------------------------------------------------------ invalidation
    def changed(self, change: Change) -> None:
        """A change was made (under the model's lock): its held files wait for ``flush``."""
        paths: list[str] = []
        with self._lock:
            held = self._held
            if not held:
                return
            directories = change.kind in DIRECTORY_KINDS
            for cg, near in self._altered(change):
                bits = held.get(cg)
                if bits is None:
                    continue
                if (directories and near) or not bits & 1:
                    del held[cg]
                else:
                    if bits == 1:
                        continue
                    held[cg] = 1  # the directory stays held
                    bits &= ~1
                base = cg.path.rstrip("/")
                names = self._names
                while bits:
                    low = bits & -bits
                    name = names[low.bit_length() - 1]
                    paths.append(base + "/" + name if name else base or "/")
                    bits ^= low
            published = self.published
            if change.kind in _EVERY_PATH_KINDS:
                self._epoch += 1
                if published is not None:
                    published.clear()
            elif paths:
                self._epoch += 1
                if published is not None:
                    published.forget(paths)
            if not held:
                self._uninstall()
        if paths:
            self._pending.setdefault(threading.get_ident(), []).extend(paths)

    @contextlib.contextmanager
    def kernel_moves(self) -> Iterator[None]:
        """The calling thread serves the kernel's own ``rmdir`` or ``rename``: the entry it
        removes or moves is not notified (see the module)."""
        self._local.moving = True
        try:
            yield
        finally:
            self._local.moving = False

    def names_changed(self, change: Change) -> None:
        """The tree lost names (a ``System.names_watchers``, under the model's lock): the known
        ones wait for ``flush``, which drops their entries (see the module)."""
        lost: list[tuple[str, str]] = []  # (directory, name)
        kind = change.kind
        with self._lock:
            if self._fuse is None:
                return
            known = self._known
            if kind is ChangeKind.RMDIR or kind is ChangeKind.RENAME:
                cg = change.cgroups[0]
                bits = known.pop(cg, 0) if kind is ChangeKind.RMDIR else known.get(cg, 0)
                if bits & 1 and change.path and not getattr(self._local, "moving", False):
                    directory, _, name = change.path.rpartition("/")
                    lost.append((directory or "/", name))
            else:
                names = self._names
                for cg in change.cgroups:
                    bits = known.get(cg, 0) & ~1
                    if not bits:
                        continue
                    has = files.files_of(self.system, cg)
                    gone = 0
                    while bits:
                        low = bits & -bits
                        bits ^= low
                        name = names[low.bit_length() - 1]
                        if name not in has:
                            gone |= low
                            lost.append((cg.path, name))
                    if gone:
                        known[cg] &= ~gone
        if lost:
            self._pending.setdefault(threading.get_ident(), []).extend(lost)

    def _altered(self, change: Change) -> Iterator[tuple[Cgroup, bool]]:
        """The cgroups whose files ``change`` may have altered (see the module), each with
        whether it is named or the parent of one named (whose directory it may alter)."""
        if change.kind is ChangeKind.SYNC:
            yield from ((cg, True) for cg in list(self._held))
            return
        named = [*change.cgroups, *(p.cgroup for p in change.processes)]
        near = {*named, *(cg.parent for cg in named if cg.parent is not None)}
        seen: set[Cgroup] = set()
        for start in (*named, self.system.cgroups.root):
            node: Cgroup | None = start
            while node is not None and node not in seen:
                seen.add(node)
                yield node, node in near
                node = node.parent

    def flush(self) -> None:
        """Invalidate the paths this thread's changes left waiting (without the model's lock;
        see the module)."""
        waiting = self._pending.pop(threading.get_ident(), None)
        if not waiting:
            return
        paths = [item for item in waiting if type(item) is str]
        if paths:
            self.invalidate(paths)
        if len(paths) < len(waiting):
            self.drop_entries([item for item in waiting if type(item) is tuple])

    def drop_entries(self, entries: list[tuple[str, str]]) -> None:
        """Tell the kernel to drop its entries ``(directory, name)`` (paths on the mount),
        whether it has them or not; nothing when not serving. Without the model's lock: the
        directories' inodes are found through the kernel (``find_inode``), which may ask
        this server, but for a handler of the mount (a ``cgroup.subtree_control`` write
        through it), which finds them from the kernel's caches only, and drops no entry in a
        directory it cannot find so (one whose attributes a change invalidated: the kernel
        asks for those before it uses an entry in it, and finds the name gone)."""
        mountpoint, device, find = self.mountpoint, self.device, self.find_inode
        if mountpoint is None or device is None or find is None or self._fuse is None:
            return
        cached_only = current_fuse() is not None
        inodes: dict[str, int | None] = {}
        for directory, _ in entries:
            if directory not in inodes:
                inodes[directory] = find(mountpoint.rstrip("/") + directory, device,
                                         cached_only=cached_only)
        with self._fuse_lock:
            fuse = self._fuse
            if fuse is None:
                return
            session = _libfuse.fuse_get_session(fuse)
            for directory, name in entries:
                inode = inodes[directory]
                if inode is None:
                    continue  # the kernel has not the directory, nor so its entries
                raw = name.encode("utf-8", "surrogateescape")
                _libfuse.fuse_lowlevel_notify_inval_entry(session, inode, raw, len(raw))
                self.entry_invalidations += 1

    def invalidate(self, paths: list[str]) -> None:
        """Tell the kernel to drop what it keeps of ``paths`` (pages and attributes), whether
        held or not; nothing when not serving. Without the model's lock (see the module)."""
        with self._fuse_lock:
            fuse = self._fuse
            if fuse is None:
                return
            for path in paths:
                _libfuse.fuse_invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))
            self.invalidations += len(paths)


__all__ = ["ATTR_TIMEOUT", "ENTRY_TIMEOUT", "InodeFinder", "KernelCache", "Published",
           "current_fuse"]
