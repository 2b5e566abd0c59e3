"""A cgroup-v2 (unified) hierarchy: the tree of ``Hierarchy`` with the rules of ``cgroup2``
(``kernel/cgroup/cgroup.c``, ``Documentation/admin-guide/cgroup-v2.rst``).

What differs from a v1 hierarchy, and lives here:

* Controllers are enabled per subtree. A cgroup's ``subtree_control`` names the controllers its
  children get; what a cgroup may enable (``controllers``) is what its parent enabled (the root:
  every bound controller). A controller is enabled in a cgroup (it has the controller's css and
  its interface files) when the cgroup is the root or its parent enables it, and the cgroup is
  not threaded (a threaded controller would be; ``ioasids`` is not one).
* The charge walk of a cgroup (``Cgroup.chain``) starts at the nearest cgroup, itself or an
  ancestor, where the controller is enabled: processes of a cgroup without it are charged to
  that ancestor, as the kernel charges them to its css. Enabling or disabling a controller moves
  the charges along (``Controller.walks_changed``), as the kernel migrates the processes to the
  new css; a cgroup that loses the controller is offlined and its state reset (its limit, peak
  and events are gone; enabled again, it starts afresh, with its processes' charges).
* ``set_subtree_control``: ``ENOENT`` to enable a controller the cgroup does not have,
  ``EBUSY`` to disable one a child still enables, ``EOPNOTSUPP`` to enable a domain controller
  in a threaded subtree, ``EBUSY`` to enable one in a non-root cgroup with processes (the
  no-internal-process rule); enabling what is enabled or disabling what is not does nothing.
* The no-internal-process rule on moves (``attach``): a non-root cgroup that enables a
  controller takes no process (``EBUSY``) unless it could be a threaded domain; a cgroup that is
  not a valid domain (``domain invalid``) takes none (``EOPNOTSUPP``); a single thread moves only
  within its threaded domain (``EOPNOTSUPP``).
* Threaded mode: ``set_threaded`` (``cgroup.type``), and ``type_of`` for its four values.
* ``max_depth`` and ``max_descendants``: ``mkdir`` is ``EAGAIN`` beyond either, at any ancestor.
* Delegation: moving a process needs write access to the ``cgroup.procs`` of the nearest
  common ancestor of its source and destination, for the credentials the file was opened with
  (``check_move``); the target's owner does not matter (v1's rule does not apply).
* No ``rename`` (``EPERM``: cgroup2 has no rename operation), no release agent.
* ``populated`` (``cgroup.events``): whether a cgroup or a descendant has a process, kept as a
  count per cgroup; each callable of ``watchers`` is called (under the lock: it must only take
  note) with every cgroup whose ``populated`` or ``frozen`` turned, as the kernel notifies
  ``cgroup.events``.
* The freezer (``kernel/cgroup/freezer.c``): ``set_freeze`` records a cgroup's own request
  (``cgroup.freeze``); a cgroup is frozen (``frozen`` in ``cgroup.events``) when it or an
  ancestor asks, so a new child of a frozen cgroup is born frozen while its own ``cgroup.freeze``
  reads ``0``, and thawing a cgroup thaws only the descendants no other ancestor keeps frozen.
  ``frozen_usec`` (``cgroup.stat.local``) adds up the time each cgroup spent frozen, from the
  request (or its birth, frozen) to the thaw, on a clock of nanoseconds the caller passes
  (``now``); a period whose start lies after ``now`` (a clock that went back) counts 0.
  The model decides which cgroups turn; stopping and continuing the real processes is the
  caller's (``ioasidsd.system``), done before the write returns, which is when the kernel's
  ``frozen`` would turn once every task has stopped.
* ``kill_targets`` (``cgroup.kill``): every process of a subtree; ``EOPNOTSUPP`` in a threaded
  cgroup (killing is per process, as ``cgroup.procs`` is).

The charge walk kept in ``Cgroup.chain`` is that of the first bound controller: the model
binds one (``ioasids``); a second controller would need walks of its own.

Every method runs under ``lock``, as the base class's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from errno import EACCES, EAGAIN, EBUSY, EINVAL, ENOENT, EOPNOTSUPP, EPERM

from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup, Controller, Hierarchy, Process

PROCS_MODE = 0o644
"""The mode of a ``cgroup.procs`` file nobody changed (the delegation check reads it)."""


class UnifiedHierarchy(Hierarchy):
    """A cgroup-v2 hierarchy (see the module docstring). Bind controllers before any ``mkdir``;
    each is enabled in the root only, until a ``subtree_control`` enables it below."""

    version = 2

    def __init__(self, lock: threading.RLock | None = None, *,
                 enter: Callable[[], None] | None = None) -> None:
        super().__init__(lock, enter=enter)
        self.watchers: list[Callable[[Cgroup], None]] = []
        self._in_subtree: dict[Cgroup, int] = {}  # processes in a cgroup and below it

    # ------------------------------------------------------------------ what is where
    def controller_names(self) -> tuple[str, ...]:
        """The names of the bound controllers, in binding order."""
        return tuple(controller.name for controller in self.controllers)

    def controllers_of(self, cg: Cgroup) -> tuple[str, ...]:
        """``cgroup.controllers``: what ``cg`` may enable for its children (the root: every
        controller; a threaded cgroup: only threaded controllers, so none here)."""
        if cg.parent is None:
            return self.controller_names()
        if cg.threaded:
            return ()
        return tuple(n for n in self.controller_names() if n in cg.parent.subtree_control)

    def subtree_control_of(self, cg: Cgroup) -> tuple[str, ...]:
        """``cgroup.subtree_control``: the enabled names in binding order."""
        return tuple(n for n in self.controller_names() if n in cg.subtree_control)

    def enabled(self, cg: Cgroup, name: str) -> bool:
        """Whether controller ``name`` is enabled in ``cg`` (it has its css and files)."""
        if cg.parent is None:
            return True
        return not cg.threaded and name in cg.parent.subtree_control

    def populated(self, cg: Cgroup) -> bool:
        """Whether ``cg`` or a descendant has a process (``cgroup.events``: ``populated``)."""
        return self._in_subtree.get(cg, 0) > 0

    def _count(self, cg: Cgroup, delta: int) -> None:
        """``delta`` processes joined (or left) ``cg``: count them up the tree and tell the
        watchers of every cgroup whose ``populated`` turned."""
        counts = self._in_subtree
        node: Cgroup | None = cg
        turned: list[Cgroup] = []
        while node is not None:
            before = counts.get(node, 0)
            after = before + delta
            if after:
                counts[node] = after
            else:
                counts.pop(node, None)
            if (before > 0) != (after > 0) and node.parent is not None:
                turned.append(node)
            node = node.parent
        for node in turned:
            for watcher in self.watchers:
                watcher(node)

    @staticmethod
    def frozen(cg: Cgroup) -> bool:
        """Whether ``cg`` is frozen (``cgroup.events``: ``frozen``): it or an ancestor asks to
        be (``cgroup.freeze``)."""
        node: Cgroup | None = cg
        while node is not None:
            if node.freeze:
                return True
            node = node.parent
        return False

    @staticmethod
    def frozen_ns(cg: Cgroup, now: int) -> int:
        """The nanoseconds ``cg`` has spent frozen until ``now`` (``cgroup.stat.local``:
        ``frozen_usec``, in microseconds), the period it is frozen in included."""
        since = cg.frozen_since
        return cg.frozen_ns + (max(0, now - since) if since is not None else 0)

    @staticmethod
    def nr_descendants(cg: Cgroup) -> int:
        """The cgroups below ``cg`` (``cgroup.stat``: ``nr_descendants``)."""
        return sum(1 for _ in cg.descendants()) - 1

    def nr_enabled(self, cg: Cgroup, name: str) -> int:
        """``cg`` and its descendants where ``name`` is enabled (``nr_subsys_<name>``)."""
        return sum(1 for node in cg.descendants() if self.enabled(node, name))

    @staticmethod
    def domain_of(cg: Cgroup) -> Cgroup:
        """The threaded domain of ``cg``: itself unless it is threaded, else its nearest
        ancestor that is not (``dom_cgrp``)."""
        node = cg
        while node.threaded and node.parent is not None:
            node = node.parent
        return node

    @staticmethod
    def is_thread_root(cg: Cgroup) -> bool:
        """A domain with threaded children (``domain threaded``)."""
        return not cg.threaded and any(child.threaded for child in cg.children.values())

    def is_valid_domain(self, cg: Cgroup) -> bool:
        """Whether ``cg`` may hold resources as a domain: not threaded, and no ancestor but the
        root is threaded or a threaded domain (otherwise ``cgroup.type`` reads
        ``domain invalid``)."""
        if cg.threaded:
            return False
        node = cg.parent
        while node is not None:
            if node.parent is not None and self.is_thread_root(node):
                return False
            if node.threaded:
                return False
            node = node.parent
        return True

    def can_be_thread_root(self, cg: Cgroup) -> bool:
        """Whether ``cg`` may be (or become) a threaded domain: the root always; otherwise a
        domain with no populated domain child and no domain controller enabled for its
        children (every controller here is a domain controller)."""
        if cg.parent is None:
            return True
        if cg.threaded:
            return False
        if any(not child.threaded and self.populated(child) for child in cg.children.values()):
            return False
        return not cg.subtree_control

    def type_of(self, cg: Cgroup) -> str:
        """``cgroup.type``: ``threaded``, ``domain invalid``, ``domain threaded`` or
        ``domain``."""
        if cg.threaded:
            return "threaded"
        if not self.is_valid_domain(cg):
            return "domain invalid"
        if self.is_thread_root(cg):
            return "domain threaded"
        return "domain"

    # ------------------------------------------------------------------ the tree
    def mkdir(
        self, parent: Cgroup, name: str, *, reserved_names: frozenset[str] = frozenset(),
        now: int = 0,
    ) -> Cgroup:
        """``Hierarchy.mkdir`` with the v2 rules (the hooks below: ``EAGAIN`` when an
        ancestor's ``max_descendants`` or ``max_depth`` would be exceeded; each controller
        online, and the new cgroup's walk starting at it, only where the parent enables it).
        Under a frozen parent the new cgroup is born frozen, at ``now``."""
        with self.lock:
            cg = super().mkdir(parent, name, reserved_names=reserved_names)
            if self.frozen(parent):
                cg.frozen_since = now
            return cg

    # ``Hierarchy.mkdir`` with the v2 rules: the tree limits, the charge walk, and the
    # controllers online only where the parent enables them.
    def _check_room(self, parent: Cgroup) -> None:
        """``EAGAIN`` when an ancestor's ``max_descendants`` or ``max_depth`` would be
        exceeded by a new child of ``parent``."""
        level = 0
        node: Cgroup | None = parent
        while node is not None:
            if node.max_descendants is not None and \
                    self.nr_descendants(node) >= node.max_descendants:
                raise IoasidError(EAGAIN, f"{node.path}: cgroup.max.descendants reached")
            if node.max_depth is not None and level >= node.max_depth:
                raise IoasidError(EAGAIN, f"{node.path}: cgroup.max.depth reached")
            level += 1
            node = node.parent

    def _new_cgroup(self, parent: Cgroup, name: str) -> Cgroup:
        """The new child with its charge walk (no v1 flags to inherit)."""
        cg = Cgroup(name, parent)
        cg.chain = self._walk(cg)
        return cg

    def _comes_online(self, cg: Cgroup, controller: Controller) -> bool:
        """A controller's state is online, and the new cgroup's walk starts at it, only where
        the parent enables the controller."""
        return self.enabled(cg, controller.name)

    def _walk(self, cg: Cgroup) -> tuple[Cgroup, ...]:
        """The charge walk of ``cg`` from its parent's (computed already)."""
        if cg.parent is None:
            return ()
        names = self.controller_names()
        if names and self.enabled(cg, names[0]):
            return (cg, *cg.parent.chain)
        return cg.parent.chain

    def restored(self, cgroups: Iterable[Cgroup]) -> None:
        """After ``snapshot.load``: every cgroup's charge walk, from the controllers its
        parents enable (a removed cgroup still charged: as its parent enables them now), and
        the ``populated`` counts (the snapshot holds neither)."""
        with self.lock:
            for cg in cgroups:
                cg.chain = self._walk(cg)
            self._in_subtree = {}
            for proc in self.processes.values():
                node: Cgroup | None = proc.cgroup
                while node is not None:
                    self._in_subtree[node] = self._in_subtree.get(node, 0) + 1
                    node = node.parent

    def rename(self, cg: Cgroup, new_parent: Cgroup, new_name: str, *,
               reserved_names: frozenset[str] = frozenset()) -> None:
        """``EPERM``: a cgroup2 hierarchy cannot rename (kernfs without a rename operation)."""
        raise IoasidError(EPERM, "cgroup2 cgroups cannot be renamed")

    # ------------------------------------------------------------------ control files
    def set_subtree_control(self, cg: Cgroup, enable: frozenset[str],
                            disable: frozenset[str]) -> bool:
        """A write to ``cgroup.subtree_control`` of ``cg`` (names already checked to be
        controllers: see ``formats.parse_subtree_control``). Returns whether anything changed.

        ``ENOENT`` to enable what ``controllers_of(cg)`` lacks, ``EBUSY`` to disable what a
        child enables, ``EOPNOTSUPP`` to enable in a cgroup that cannot hold resources or in a
        threaded subtree, ``EBUSY`` to enable in a non-root cgroup with processes, whatever a
        controller's ``css_offline`` raises; each having changed nothing.
        """
        with self.lock:
            self._enter()
            available = self.controllers_of(cg)
            enable = frozenset(n for n in enable if n not in cg.subtree_control)
            disable = frozenset(n for n in disable if n in cg.subtree_control)
            for name in self.controller_names():
                if name in enable and name not in available:
                    raise IoasidError(ENOENT, f"{name} is not available in {cg.path}")
                if name in disable and any(name in child.subtree_control
                                           for child in cg.children.values()):
                    raise IoasidError(EBUSY, f"a child of {cg.path} enables {name}")
            if not enable and not disable:
                return False
            if enable:
                if not self.is_valid_domain(self.domain_of(cg)):
                    raise IoasidError(EOPNOTSUPP, f"{cg.path} cannot hold resources")
                if cg.parent is not None:
                    if self.is_thread_root(cg) or cg.threaded:
                        raise IoasidError(EOPNOTSUPP, f"{cg.path} is in a threaded subtree")
                    if cg.procs:
                        raise IoasidError(EBUSY, f"{cg.path} has processes")
            before = cg.subtree_control
            cg.subtree_control = (before | enable) - disable
            try:
                self._apply_control(cg)
            except BaseException:
                cg.subtree_control = before
                raise
            return True

    def set_threaded(self, cg: Cgroup) -> bool:
        """A write of ``threaded`` to ``cgroup.type`` (the only value it takes; the face
        refuses others with ``EINVAL``). Returns whether ``cg`` changed.

        ``EOPNOTSUPP`` for a populated cgroup, one that enables a controller for its children,
        or one whose parent's domain cannot be a threaded domain; ``EINVAL`` for the root.
        """
        with self.lock:
            self._enter()
            if cg.parent is None:
                raise IoasidError(EINVAL, "the root has no type")
            if cg.threaded:
                return False
            if self.populated(cg) or cg.subtree_control:
                raise IoasidError(EOPNOTSUPP, f"{cg.path} is populated or enables controllers")
            domain = self.domain_of(cg.parent)
            if not self.is_valid_domain(domain) or not self.can_be_thread_root(domain):
                raise IoasidError(EOPNOTSUPP, f"{domain.path} cannot be a threaded domain")
            cg.threaded = True
            try:
                self._apply_control(cg)
            except BaseException:
                cg.threaded = False
                raise
            return True

    def set_max_depth(self, cg: Cgroup, value: int | None) -> bool:
        """Set ``cgroup.max.depth`` (``None``: ``max``). Lowering it below what exists is
        allowed: it only refuses new cgroups. Returns whether it changed."""
        with self.lock:
            self._enter()
            if cg.max_depth == value:
                return False
            cg.max_depth = value
            return True

    def set_max_descendants(self, cg: Cgroup, value: int | None) -> bool:
        """Set ``cgroup.max.descendants`` (``None``: ``max``), as ``set_max_depth``."""
        with self.lock:
            self._enter()
            if cg.max_descendants == value:
                return False
            cg.max_descendants = value
            return True

    def set_freeze(self, cg: Cgroup, freeze: bool, now: int = 0) -> tuple[Cgroup, ...] | None:
        """A write to ``cgroup.freeze`` of ``cg`` at ``now``: record its own request. Returns
        ``None`` when it asked for that already (nothing changed), else the cgroups of its
        subtree whose ``frozen`` turned (none when an ancestor keeps the subtree frozen), each
        told to the ``watchers``, its frozen period begun or ended at ``now``; their processes
        are to be stopped (``freeze``) or continued. ``EINVAL`` for the root, which has no
        ``cgroup.freeze``."""
        with self.lock:
            self._enter()
            if cg.parent is None:
                raise IoasidError(EINVAL, "the root cannot be frozen")
            if cg.freeze == freeze:
                return None
            if self.frozen(cg.parent):
                cg.freeze = freeze
                return ()
            cg.freeze = freeze
            turned = tuple(self._unfrozen_below(cg))
            for node in turned:
                if freeze:
                    node.frozen_since = now
                else:
                    node.frozen_ns = self.frozen_ns(node, now)
                    node.frozen_since = None
                for watcher in self.watchers:
                    watcher(node)
            return turned

    @staticmethod
    def _unfrozen_below(top: Cgroup) -> Iterable[Cgroup]:
        """``top`` and its descendants, but for the subtrees below it that ask to be frozen
        themselves (their state does not turn with ``top``'s)."""
        stack = [top]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(child for child in node.children.values() if not child.freeze)

    def kill_targets(self, cg: Cgroup) -> list[Process]:
        """The processes a write to ``cgroup.kill`` of ``cg`` kills: those of ``cg`` and of
        every cgroup below it. ``EOPNOTSUPP`` when ``cg`` is threaded; ``EINVAL`` for the root,
        which has no ``cgroup.kill``."""
        with self.lock:
            if cg.parent is None:
                raise IoasidError(EINVAL, "the root cannot be killed")
            if cg.threaded:
                raise IoasidError(EOPNOTSUPP, f"{cg.path} is threaded: kill its domain")
            return [proc for node in cg.descendants() for proc in node.procs]

    def _apply_control(self, top: Cgroup) -> None:
        """Bring every cgroup below ``top`` (``top`` too) to the controllers its parents now
        enable: offline the controllers' state where they were disabled (a refusal undoes
        them and raises), allocate it where they were enabled, move charges to the new walks,
        reset what was disabled."""
        names = self.controller_names()
        lost: list[Cgroup] = []
        gained: list[Cgroup] = []
        old_walks: dict[Cgroup, tuple[Cgroup, ...]] = {}
        new_walks: dict[Cgroup, tuple[Cgroup, ...]] = {}
        for node in top.descendants():
            had = node in node.chain
            now = bool(names) and self.enabled(node, names[0])
            if had and not now:
                lost.append(node)
            elif now and not had:
                gained.append(node)
            parent_walk = () if node.parent is None else \
                new_walks.get(node.parent, node.parent.chain)
            walk = (node, *parent_walk) if now and node.parent is not None else parent_walk
            if walk != node.chain:
                old_walks[node] = node.chain
                new_walks[node] = walk
        offlined: list[tuple[Controller, Cgroup]] = []
        try:
            for node in lost:
                for controller in self.controllers:
                    controller.css_offline(node)
                    offlined.append((controller, node))
        except BaseException:
            for controller, node in offlined:
                controller.css_online(node)
            raise
        for node in gained:
            for controller in self.controllers:
                controller.css_alloc(node)
        for node, walk in new_walks.items():
            node.chain = walk
        if old_walks:
            for controller in self.controllers:
                controller.walks_changed(old_walks)
        for node in lost:
            for controller in self.controllers:
                controller.css_free(node)
                controller.css_alloc(node)
        for node in gained:
            for controller in self.controllers:
                controller.css_online(node)

    # ------------------------------------------------------------------ processes
    def track_locked(self, pid: int, start_time: float, cgroup: Cgroup | None = None,
                     threads: int = 1) -> Process:
        """``Hierarchy.track_locked``, counting the process for ``populated``."""
        old = self.processes.get(pid)
        proc = super().track_locked(pid, start_time, cgroup, threads)
        if proc is not old:
            self._count(proc.cgroup, 1)
        return proc

    def exit_locked(self, proc: Process) -> None:
        """``Hierarchy.exit_locked``, counting the process out of ``populated``."""
        if not proc.alive:
            return
        cg = proc.cgroup
        super().exit_locked(proc)
        self._count(cg, -1)

    def attach(self, proc: Process, dst: Cgroup, *, threadgroup: bool = True) -> None:
        """Move a process into ``dst`` under the v2 rules, then as ``Hierarchy.attach``.

        ``EOPNOTSUPP`` when ``dst`` is not in a valid domain, or (``threadgroup`` false: a
        write to ``cgroup.threads``) outside the threaded domain the process is in; ``EBUSY``
        when ``dst`` is a non-root cgroup that enables a controller for its children and could
        not be a threaded domain (the no-internal-process rule); the errors of
        ``Hierarchy.attach``.
        """
        with self.lock:
            self._enter()
            if proc.alive and not self.parent_gone(dst):
                self.check_destination(dst)
                if not threadgroup and self.domain_of(proc.cgroup) is not self.domain_of(dst):
                    raise IoasidError(EOPNOTSUPP, "a thread moves only within its domain")
            src = proc.cgroup
            super().attach(proc, dst)
            if proc.cgroup is not src:
                self._count(dst, 1)
                self._count(src, -1)

    def check_destination(self, dst: Cgroup) -> None:
        """``cgroup_migrate_vet_dst``: whether ``dst`` may take processes (see ``attach``)."""
        if not self.is_valid_domain(self.domain_of(dst)):
            raise IoasidError(EOPNOTSUPP, f"{dst.path} is not a valid domain")
        if self.can_be_thread_root(dst) or dst.threaded:
            return
        if dst.subtree_control:
            raise IoasidError(EBUSY, f"{dst.path} enables controllers for its children")

    @staticmethod
    def common_ancestor(a: Cgroup, b: Cgroup) -> Cgroup:
        """The nearest cgroup that is ``a`` or an ancestor of it and of ``b``."""
        above_b = set()
        node: Cgroup | None = b
        while node is not None:
            above_b.add(id(node))
            node = node.parent
        node = a
        while node.parent is not None and id(node) not in above_b:
            node = node.parent
        return node

    def check_move(self, src: Cgroup, dst: Cgroup, uid: int, gid: int) -> None:
        """The delegation rule of a move from ``src`` to ``dst`` by an opener with ``uid`` and
        ``gid``: root, or write permission on the ``cgroup.procs`` of their nearest common
        ancestor (its recorded mode and owner, ``PROCS_MODE`` and root by default). ``EACCES``
        otherwise. Supplementary groups are not known and not considered."""
        if uid == 0:
            return
        common = self.common_ancestor(src, dst)
        attrs = common.attrs.get("cgroup.procs", {})
        mode = attrs.get("mode", PROCS_MODE)
        if uid == attrs.get("uid", 0):
            allowed = mode & 0o200
        elif gid == attrs.get("gid", 0):
            allowed = mode & 0o020
        else:
            allowed = mode & 0o002
        if not allowed:
            raise IoasidError(EACCES, f"no write access to {common.path}/cgroup.procs")


__all__ = ["PROCS_MODE", "UnifiedHierarchy"]
