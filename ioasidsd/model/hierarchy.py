"""A cgroup-v1 hierarchy: the tree of cgroups, the processes that are members, and the controllers
bound to it (``kernel/cgroup/cgroup.c`` and ``cgroup-v1.c``).

The hierarchy knows nothing about what a controller accounts. It owns:

* the tree: ``lookup``, ``mkdir``, ``rmdir``, ``rename`` (within a parent only, as in v1), the
  flags ``notify_on_release`` and ``cgroup.clone_children`` (inherited on ``mkdir``), the
  file attributes a face sets (``Cgroup.attrs``), ``release_agent`` and ``sane_behavior``;
* membership: processes identified by pid and start time (``track``, ``fork``, ``exit``,
  ``attach``). Every process the hierarchy does not track is in the root. A forked child starts
  in its parent's cgroup. An exiting process runs the ``exit_hooks`` (what the process held is
  released: the user API closes its ``/dev/ioasid``, as ``exit_files`` does) and then leaves its
  cgroup;
* the release queue: a cgroup with ``notify_on_release`` that becomes empty (no process, no
  child) has its path appended to ``releases``; the daemon runs ``release_agent`` for each.

A controller (``Controller``, the equivalent of a ``struct cgroup_subsys``) is bound with
``bind`` and reached only through these hooks, in the kernel's order:

* ``mkdir``: ``css_alloc`` (before the cgroup is linked; a refusal fails the ``mkdir``), then
  ``css_online``;
* ``rmdir``: ``css_offline`` (while the cgroup is still linked; a refusal fails the ``rmdir``,
  unlike in the kernel, and the controllers offlined before it get ``css_online`` back), then,
  once unlinked, ``css_free``. The model keeps no reference counts: a cgroup is freed at once;
  an object that still names it (a charge) keeps the Python object, not the controller's
  resources;
* ``attach``: ``can_attach`` of every controller (a refusal cancels the controllers before it
  with ``cancel_attach``, in order, and leaves membership unchanged), the move, then ``attach``;
* ``fork``: ``fork`` once the child is a member; ``exit``: ``exit`` once the process has left.

Per-cgroup controller state: the ``ioasids`` controller keeps its state in slots of ``Cgroup``
(``limit``, ``reserved``, ``counter``, ``peak``, ``events``, ``events_local``) rather than in a
separate css object, because faces, the snapshot and the durable store read them there. The
hierarchy never reads or writes them; the controller's ``css_alloc`` initialises them.

Locking: every method takes ``lock`` (shared with whatever the controllers guard, the IOASID
core's lock for ``ioasids``). ``enter``, when given, is called first by every method a face
calls to change the tree or move a process; it raises to refuse the call (the IOASID core
refuses calls from its notifier callbacks with ``EDEADLK``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from errno import EACCES, EBUSY, EEXIST, EINVAL, EIO, ENAMETOOLONG, ENODEV, ENOENT, ESRCH
from typing import TYPE_CHECKING, Any

from ioasidsd.model.errors import IoasidError

if TYPE_CHECKING:
    from ioasidsd.model.ioasids import Charge

NAME_MAX = 255


def _valid_name(name: str) -> bool:
    """Whether ``name`` may name a cgroup: not empty, ``.`` or ``..``; no ``/``, NUL or newline."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\0\n")


class Process:
    """A real (or simulated) process: pid and start time, its cgroup and its thread count.

    The process is also its own mm token: the MM set of ``/dev/ioasid`` uses ``process.mm``.
    Equality and hashing use ``(pid, start_time)`` so that a token survives a daemon restart.
    """

    __slots__ = ("_hash", "alive", "cgroup", "key", "pid", "start_time", "threads")

    def __init__(self, pid: int, start_time: float, cgroup: Cgroup, threads: int = 1) -> None:
        self.pid = pid
        self.start_time = start_time
        self.key: tuple[int, float] = (pid, start_time)
        """``(pid, start_time)``: what the process is, made once (a process's set and its
        files are looked up by it on every request)."""
        self._hash = hash(self.key)
        self.cgroup = cgroup
        self.threads = threads
        self.alive = True

    @property
    def mm(self) -> Process:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and self.key == other.key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, cgroup={self.cgroup.path!r}, alive={self.alive})"


class Cgroup:
    """One cgroup of a hierarchy.

    The hierarchy's fields: ``name``, ``parent``, ``children``, ``procs`` (the member processes),
    ``notify_on_release``, ``clone_children``, ``chain`` and ``attrs`` (file attributes a face
    set: ``chmod``, ``chown``, times, by file name, ``""`` for the directory itself; the model
    does not interpret them). The fields of a cgroup-v2 hierarchy
    (``ioasidsd.model.unified``), left at their defaults on v1: ``subtree_control`` (the names
    of the controllers enabled for the children), ``threaded`` (``cgroup.type`` was set to
    ``threaded``), ``max_depth`` and ``max_descendants`` (``None`` for ``max``), ``freeze``
    (``cgroup.freeze`` of this cgroup: its own request, not what its ancestors ask),
    ``frozen_ns`` (the nanoseconds of the periods it was frozen that have ended) and
    ``frozen_since`` (when the period it is frozen now began, on the caller's clock; ``None``
    when it is not frozen).

    The ``ioasids`` controller's state (its css), which only the controller initialises and
    changes: ``counter`` is ``ioasids.current``, ``limit`` is ``ioasids.max`` (``None`` for
    ``max``), ``reserved`` the capacity this cgroup holds from the pool for its limit, ``peak``,
    ``events`` and ``events_local`` the refusals (``ioasids.events``, ``ioasids.events.local``),
    ``unit_charges`` the two ``Charge`` records of one IOASID charged here with nothing else to
    undo (not covered, covered by a reservation), made at its first charge instead of on every
    allocation (empty until then).
    A cgroup of a hierarchy the controller is not bound to does not have them.
    """

    __slots__ = (  # the hierarchy's and the ioasids controller's, as the docstring divides them
        "attrs",
        "chain",
        "children",
        "clone_children",
        "counter",
        "events",
        "events_local",
        "freeze",
        "frozen_ns",
        "frozen_since",
        "limit",
        "max_depth",
        "max_descendants",
        "name",
        "notify_on_release",
        "parent",
        "peak",
        "procs",
        "reserved",
        "subtree_control",
        "threaded",
        "unit_charges",
    )

    counter: int
    events: int
    events_local: int
    limit: int | None
    peak: int
    reserved: int
    unit_charges: tuple[Charge, ...]

    def __init__(self, name: str, parent: Cgroup | None) -> None:
        self.attrs: dict[str, dict[str, int]] = {}
        self.name = name
        self.parent = parent
        self.children: dict[str, Cgroup] = {}
        self.procs: set[Process] = set()
        self.notify_on_release = False
        self.clone_children = False
        self.subtree_control: frozenset[str] = frozenset()
        self.threaded = False
        self.max_depth: int | None = None
        self.max_descendants: int | None = None
        self.freeze = False
        self.frozen_ns = 0
        self.frozen_since: int | None = None
        # This cgroup and its ancestors below the root (a controller's charge walk). The tree
        # only ever renames within a parent, so the walk of a cgroup never changes.
        self.chain: tuple[Cgroup, ...] = () if parent is None else (self, *parent.chain)
        self.unit_charges = ()  # the controller's, made at its first charge here

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def path(self) -> str:
        """The path from the root, ``/`` for the root, ``/a/b`` below it."""
        parts: list[str] = []
        node: Cgroup | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def walk(self) -> Iterator[Cgroup]:
        """This cgroup and its ancestors, stopping before the root (the charge walk). On a v2
        hierarchy the walk starts at the nearest of them where the controller is enabled
        (``ioasidsd.model.unified``)."""
        return iter(self.chain)

    def descendants(self) -> Iterator[Cgroup]:
        """This cgroup and everything below it, parents before children, by name."""
        yield self
        for name in sorted(self.children):
            yield from self.children[name].descendants()

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r})"


@dataclass(frozen=True, slots=True)
class TaskSet:
    """The processes one migration moves (``struct cgroup_taskset``): from ``src`` to ``dst``.
    ``procs`` are still in ``src`` during ``can_attach`` and ``cancel_attach``, and in ``dst``
    during ``attach``."""

    procs: tuple[Process, ...]
    src: Cgroup
    dst: Cgroup


class Controller:
    """The hooks a controller registers with a hierarchy (``struct cgroup_subsys``).

    Every hook does nothing by default; a controller overrides the ones it needs. The hierarchy
    calls them under its lock, in the order the module docstring gives. Hooks that may refuse
    (``css_alloc``, ``can_attach``) raise ``IoasidError``; the others must not raise.
    """

    name = ""
    """The controller's name, as in ``-o <name>`` and the prefix of its files."""

    def bound(self, hierarchy: Hierarchy) -> None:
        """The controller was bound to ``hierarchy`` (``bind``), before the root's
        ``css_alloc``."""

    def css_alloc(self, cg: Cgroup) -> None:
        """Set up the controller's state for ``cg`` (the root at ``bind``, a new cgroup at
        ``mkdir`` before it is linked; ``cg.parent`` is set). Raise to refuse the ``mkdir``."""

    def css_online(self, cg: Cgroup) -> None:
        """``cg`` is linked into the tree."""

    def css_offline(self, cg: Cgroup) -> None:
        """``cg`` is being removed (``rmdir``): it has no process and no child and is still
        linked. Raise, having changed nothing, to refuse the ``rmdir``."""

    def css_free(self, cg: Cgroup) -> None:
        """``cg`` was unlinked (``rmdir``), or its ``mkdir`` failed after its ``css_alloc``:
        drop what the controller keeps for it."""

    def can_attach(self, tset: TaskSet) -> None:
        """The processes of ``tset`` are about to move: prepare, or raise to refuse the move."""

    def cancel_attach(self, tset: TaskSet) -> None:
        """Undo a successful ``can_attach``: a later controller refused the move."""

    def attach(self, tset: TaskSet) -> None:
        """The processes of ``tset`` have moved to ``tset.dst``."""

    def fork(self, proc: Process) -> None:
        """``proc`` was forked and is a member of its parent's cgroup."""

    def exit(self, proc: Process) -> None:
        """``proc`` exited (``proc.alive`` is false) and has left its cgroup."""

    def walks_changed(self, old_walks: dict[Cgroup, tuple[Cgroup, ...]]) -> None:
        """Only on a v2 hierarchy, when the controller was enabled or disabled for some
        cgroups: the charge walk (``chain``) of each cgroup of ``old_walks`` changed from the
        walk given there to its ``chain``. Move what is charged to those cgroups from the old
        walks to the new ones, with no limit check (the kernel migrates the processes between
        the old and the new css). Cgroups that gained the controller were given a fresh state
        (``css_alloc``) before this call; those that lost it were offlined and are reset after
        it. Must not raise."""


class Hierarchy:
    """A cgroup-v1 hierarchy: the tree, its member processes and the controllers bound to it.

    ``lock`` (default: a new re-entrant lock) guards it; ``enter`` guards the changing methods
    (see the module docstring).
    """

    version = 1
    """The cgroup version whose rules this hierarchy follows (``2``: ``UnifiedHierarchy``)."""

    def __init__(self, lock: threading.RLock | None = None, *,
                 enter: Callable[[], None] | None = None) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self._enter = enter or (lambda: None)
        self.root = Cgroup("", None)
        self.controllers: tuple[Controller, ...] = ()
        self._exit_controllers: tuple[Controller, ...] = ()
        """The controllers whose ``exit`` hook does something (overridden): every process's
        exit calls only these, in binding order (the others' would do nothing)."""
        self.processes: dict[int, Process] = {}
        self.exit_hooks: list[Callable[[Process], None]] = []
        self.releases: deque[str] = deque()
        self.release_agent = ""
        self.sane_behavior = False

    def bind(self, controller: Controller) -> None:
        """Bind ``controller`` to this hierarchy; its ``css_alloc`` and ``css_online`` run for
        the root. ``EBUSY`` once the tree has a cgroup below the root or the controller is
        already bound (as ``rebind_subsystems``)."""
        with self.lock:
            if self.root.children or controller in self.controllers:
                raise IoasidError(EBUSY, f"cannot bind {controller.name or controller!r}")
            controller.bound(self)
            controller.css_alloc(self.root)
            self.controllers = (*self.controllers, controller)
            self._exit_controllers = tuple(c for c in self.controllers
                                           if type(c).exit is not Controller.exit)
            controller.css_online(self.root)

    # ------------------------------------------------------------------ the tree
    def lookup(self, path: str) -> Cgroup:
        """The cgroup at ``path`` (``/`` or ``a/b`` or ``/a/b``); ``ENOENT`` if there is none."""
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = node.children.get(part)
            if child is None:
                raise IoasidError(ENOENT, f"no cgroup {path}")
            node = child
        return node

    def cgroups(self) -> Iterator[Cgroup]:
        """Every cgroup, the root first, then depth-first by name."""
        return self.root.descendants()

    def mkdir(
        self, parent: Cgroup, name: str, *, reserved_names: frozenset[str] = frozenset()
    ) -> Cgroup:
        """Create a child cgroup (``mkdir``).

        ``EEXIST`` if the name is taken by a cgroup or one of ``reserved_names`` (the face's
        files); ``EINVAL`` for an empty name, ``.``, ``..`` or one with ``/``, NUL or a newline
        (``cgroup_mkdir`` refuses ``\\n``); ``ENAMETOOLONG`` over 255 bytes; ``ENODEV`` if
        ``parent`` was removed; whatever a controller's ``css_alloc`` raises. ``notify_on_release``
        and ``cgroup.clone_children`` are inherited from the parent. A hierarchy with other rules
        changes the hooks below (the unified one: ``EAGAIN`` over a tree limit, controllers
        online only where the parent enables them).
        """
        with self.lock:
            self._enter()
            self._check_new_child(parent, name, reserved_names)
            self._check_room(parent)
            cg = self._new_cgroup(parent, name)
            allocated: list[Controller] = []
            try:
                for controller in self.controllers:
                    controller.css_alloc(cg)
                    allocated.append(controller)
            except BaseException:
                for controller in reversed(allocated):
                    controller.css_free(cg)
                raise
            parent.children[name] = cg
            for controller in self.controllers:
                if self._comes_online(cg, controller):
                    controller.css_online(cg)
            return cg

    # The hooks of ``mkdir`` a hierarchy with other rules (``unified.UnifiedHierarchy``)
    # overrides; ``mkdir`` itself is the same for every hierarchy.
    def _check_room(self, parent: Cgroup) -> None:
        """Refuse a new child of ``parent`` that a limit on the tree forbids (v1: none)."""

    def _new_cgroup(self, parent: Cgroup, name: str) -> Cgroup:
        """The new child, not yet in the tree: v1 inherits ``notify_on_release`` and
        ``cgroup.clone_children`` from the parent."""
        cg = Cgroup(name, parent)
        cg.notify_on_release = parent.notify_on_release
        cg.clone_children = parent.clone_children
        return cg

    def _comes_online(self, cg: Cgroup, controller: Controller) -> bool:
        """Whether a new cgroup's ``controller`` state is brought online (v1: always)."""
        return True

    def _check_new_child(self, parent: Cgroup, name: str, reserved_names: frozenset[str]) -> None:
        """The checks of ``mkdir`` before anything is made (see ``mkdir``)."""
        if not _valid_name(name):
            raise IoasidError(EINVAL, f"invalid cgroup name {name!r}")
        if len(name.encode()) > NAME_MAX:
            raise IoasidError(ENAMETOOLONG, "cgroup name too long")
        if name in parent.children or name in reserved_names:
            raise IoasidError(EEXIST, f"{name} exists")
        if self.parent_gone(parent):
            raise IoasidError(ENODEV, f"{parent.path} was removed")

    def parent_gone(self, cg: Cgroup) -> bool:
        """Whether ``cg`` has been removed from the tree."""
        node = cg
        while node.parent is not None:
            if node.parent.children.get(node.name) is not node:
                return True
            node = node.parent
        return node is not self.root

    def rmdir(self, cg: Cgroup) -> None:
        """Remove a cgroup (``rmdir``): ``EBUSY`` for the root or while it has processes or
        children, ``ENOENT`` if it was removed already, whatever a controller's ``css_offline``
        raises. The controllers' ``css_offline`` and ``css_free`` run; the parent may then be
        queued for release."""
        with self.lock:
            self._enter()
            if cg.parent is None or self.parent_gone(cg):
                code = EBUSY if cg.parent is None else ENOENT
                raise IoasidError(code, f"cannot remove {cg.path}")
            if cg.procs or cg.children:
                raise IoasidError(EBUSY, f"{cg.path} has processes or children")
            offlined: list[Controller] = []
            try:
                for controller in self.controllers:
                    controller.css_offline(cg)
                    offlined.append(controller)
            except BaseException:
                for controller in offlined:
                    controller.css_online(cg)
                raise
            del cg.parent.children[cg.name]
            for controller in self.controllers:
                controller.css_free(cg)
            self._check_release(cg.parent)

    def rename(self, cg: Cgroup, new_parent: Cgroup, new_name: str, *,
               reserved_names: frozenset[str] = frozenset()) -> None:
        """Rename a cgroup within its parent: ``EIO`` for a move to another parent (cgroup-v1
        refuses that), ``EEXIST`` onto an existing name, ``EINVAL`` for a bad name (as for
        ``mkdir``; ``cgroup1_rename`` refuses ``\\n``), ``ENAMETOOLONG`` over 255 bytes, ``EBUSY``
        for the root. Controllers are not told: nothing they keep depends on names."""
        with self.lock:
            self._enter()
            if "\n" in new_name:
                raise IoasidError(EINVAL, f"invalid cgroup name {new_name!r}")
            if cg.parent is None:
                raise IoasidError(EBUSY, "cannot rename the root")
            if new_parent is not cg.parent:
                raise IoasidError(EIO, "cgroups can only be renamed within their parent")
            if not _valid_name(new_name):
                raise IoasidError(EINVAL, f"invalid cgroup name {new_name!r}")
            if len(new_name.encode()) > NAME_MAX:
                raise IoasidError(ENAMETOOLONG, "cgroup name too long")
            if new_name == cg.name:
                return
            if new_name in cg.parent.children or new_name in reserved_names:
                raise IoasidError(EEXIST, f"{new_name} exists")
            del cg.parent.children[cg.name]
            cg.name = new_name
            cg.parent.children[new_name] = cg

    def _check_release(self, cg: Cgroup) -> None:
        if cg.parent is not None and cg.notify_on_release and not cg.procs and not cg.children:
            self.releases.append(cg.path)

    # ------------------------------------------------------------------ processes
    def process(self, pid: int) -> Process | None:
        """The tracked process with ``pid``, or ``None`` (then it is in the root cgroup)."""
        return self.processes.get(pid)

    def track(self, pid: int, start_time: float, cgroup: Cgroup | None = None,
              threads: int = 1) -> Process:
        """Start tracking a process that already runs (or return the tracked one with that key)
        in ``cgroup`` (default root). A tracked process with the same pid but another start time
        is an earlier process that exited unnoticed: it exits first. No controller hook runs:
        the hierarchy only learns where an existing process is."""
        with self.lock:
            return self.track_locked(pid, start_time, cgroup, threads)

    def track_locked(self, pid: int, start_time: float, cgroup: Cgroup | None = None,
                     threads: int = 1) -> Process:
        """``track`` for a caller that holds ``lock``."""
        old = self.processes.get(pid)
        if old is not None:
            if old.start_time == start_time:
                return old
            self.exit_locked(old)
        cg = cgroup or self.root
        proc = Process(pid, start_time, cg, threads)
        self.processes[pid] = proc
        cg.procs.add(proc)
        return proc

    def fork(self, parent_pid: int, pid: int, start_time: float) -> Process | None:
        """A process forked: the child starts in its parent's cgroup and the controllers'
        ``fork`` runs. Children of untracked (root) parents are not tracked; returns the child
        when it is."""
        with self.lock:
            parent = self.processes.get(parent_pid)
            if parent is None or parent.cgroup is self.root:
                return None
            known = self.processes.get(pid)
            if known is not None and known.start_time == start_time:
                return known
            child = self.track(pid, start_time, parent.cgroup)
            for controller in self.controllers:
                controller.fork(child)
            return child

    def exit(self, proc: Process) -> None:
        """A process exited: the exit hooks release what it held, it leaves its cgroup, the
        controllers' ``exit`` runs and the cgroup may be queued for release.

        As in the kernel's ``do_exit``, the mm is gone before the files are closed: the hooks
        run with ``proc.alive`` already false. Exiting twice does nothing.
        """
        with self.lock:
            self.exit_locked(proc)

    def exit_locked(self, proc: Process) -> None:
        """``exit`` for a caller that holds ``lock``."""
        if not proc.alive:
            return
        proc.alive = False
        for hook in self.exit_hooks:
            hook(proc)
        if self.processes.get(proc.pid) is proc:
            del self.processes[proc.pid]
        cg = proc.cgroup
        cg.procs.discard(proc)
        for controller in self._exit_controllers:
            controller.exit(proc)
        if cg.notify_on_release:  # the first of ``_check_release``'s tests, without its call
            self._check_release(cg)

    def attach(self, proc: Process, dst: Cgroup) -> None:
        """Move a process into ``dst`` (a write to ``cgroup.procs``) through the controllers'
        ``can_attach``, ``attach`` (and ``cancel_attach`` on a refusal).

        ``ESRCH`` if the process has exited, ``ENODEV`` if ``dst`` was removed, whatever a
        ``can_attach`` raises (the process then stays where it was).
        """
        with self.lock:
            self._enter()
            if not proc.alive:
                raise IoasidError(ESRCH, f"process {proc.pid} has exited")
            if self.parent_gone(dst):
                raise IoasidError(ENODEV, f"{dst.path} was removed")
            src = proc.cgroup
            if src is dst:
                return
            tset = TaskSet((proc,), src, dst)
            prepared: list[Controller] = []
            try:
                for controller in self.controllers:
                    controller.can_attach(tset)
                    prepared.append(controller)
            except BaseException:
                for controller in prepared:
                    controller.cancel_attach(tset)
                raise
            src.procs.discard(proc)
            dst.procs.add(proc)
            proc.cgroup = dst
            for controller in self.controllers:
                controller.attach(tset)
            self._check_release(src)

    @staticmethod
    def check_owner(writer_uid: int, target_uids: tuple[int, ...]) -> None:
        """cgroup-v1's permission rule for moving a process: root, or a writer whose euid
        matches the target's uid or suid. ``EACCES`` otherwise. The writer's euid is that of
        the credentials the file was opened with (``of->file->f_cred``)."""
        if writer_uid != 0 and writer_uid not in target_uids:
            raise IoasidError(EACCES, "not allowed to move that process")

    def restored(self, cgroups: Iterable[Cgroup]) -> None:
        """Called once a snapshot was loaded into this hierarchy (``snapshot.load``) with every
        cgroup it made, removed ones too, parents first: derive what the snapshot does not
        hold. A v1 hierarchy derives nothing."""

    def stats(self) -> dict[str, Any]:
        """Counts for status output."""
        return {
            "cgroups": sum(1 for _ in self.cgroups()),
            "processes": len(self.processes),
        }


__all__ = ["NAME_MAX", "Cgroup", "Controller", "Hierarchy", "Process", "TaskSet"]
