"""The system: the model objects every face shares, and the operations faces perform on them.

A ``System`` holds the IOASID core, the cgroup hierarchy (``cgroups``) and the ``ioasids``
controller bound to it (``controller``), the semantics knobs, one lock and a
source of facts about real processes. Faces (the FUSE file system, the user-API socket, the
control API, experiments) call its methods for every change, so that each change is made in one
place, under the lock, and then handed to ``on_change`` (the daemon's durable store) as one
``Change`` (``ioasidsd.model.changes``: the contract of the feed) before the face answers. Reads
may use the model objects directly while holding ``system.lock``.

Membership kept by the kernel: when the daemon keeps a named cgroup-v1 hierarchy that mirrors
this one (``kernel``, a ``KernelMembership``), every change to the tree and every move is made
there too, under the lock, and the kernel is the reference for where a process is: a process
about to be charged is placed where the kernel has it (``place``), and ``sync_member`` brings
the model's record of a process into line with the kernel. Without one, the model's own
membership, fed by a process tracker, is the reference.

Following the host's hierarchy (a ``KernelMembership`` that ``follows``, such as systemd's):
the same, but membership is the host's. A process found in a cgroup of the host that this
hierarchy lacks has that cgroup made here first (``realise_followed``), and moves through this
hierarchy are refused by the followed one (``EPERM``). The cgroups made so are marked
(``FOLLOWED_MARK``): once one holds no process and no cgroup, and the host has removed its own,
it is removed here too (``followed_leftovers`` finds them for the daemon's scan).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from errno import EINVAL, EIO, ENOENT, EPERM, ESRCH
from signal import SIGCONT, SIGKILL, SIGSTOP
from typing import TYPE_CHECKING, Protocol

from ioasidsd.host import ProcessSource
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change, ChangeKind, Refusal, exact_change
from ioasidsd.model.core import IoasidCore
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.formats import (
    parse_cgroup_type,
    parse_flag,
    parse_freeze,
    parse_hierarchy_limit,
    parse_kill,
    parse_limit,
    parse_pid,
    parse_release_agent,
    parse_subtree_control,
)
from ioasidsd.model.hierarchy import Cgroup, Hierarchy, Process
from ioasidsd.model.ioasid_device import IoasidDevice, IoasidFile
from ioasidsd.model.ioasids import IoasidsController
from ioasidsd.model.knobs import Knobs
from ioasidsd.model.modellock import ModelLock, hold, let_go
from ioasidsd.model.snapshot import dump as snapshot_dump
from ioasidsd.model.snapshot import is_removed
from ioasidsd.model.snapshot import load as snapshot_load
from ioasidsd.model.unified import UnifiedHierarchy
from ioasidsd.model.workqueue import OrderedWorkQueue
from ioasidsd.vtd_binder import VtdGuestBinder

if TYPE_CHECKING:
    from ioasidsd.host import ProcessFacts
    from ioasidsd.vtd import VtdDriver


class KernelMembership(Protocol):
    """A named cgroup-v1 hierarchy that keeps the members of this one (paths are this
    hierarchy's: ``/``, ``/a/b``). Every method raises ``OSError`` with the kernel's errno when
    the kernel refuses."""

    name: str
    follows: bool
    """Membership is someone else's (the host's hierarchy, followed): a cgroup it has and this
    hierarchy lacks is made here when a process is found in it, not refused."""

    def cgroup_of(self, pid: int) -> str | None:
        """Where the kernel has process ``pid``; ``None`` if it is gone."""
        ...

    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def rename(self, old: str, new: str) -> None: ...

    def attach(self, pid: int, path: str) -> None:
        """Move process ``pid``, all its threads, into the cgroup at ``path``."""
        ...

    def procs(self, path: str) -> list[int]: ...
    def tasks(self, path: str) -> list[int]: ...


FOLLOWED_MARK = "followed"
"""The attribute of a cgroup's directory (``Cgroup.attrs[""]``) that says the cgroup was made
because the followed hierarchy had a process in it (value 1), rather than by a ``mkdir``: it
goes when the host's cgroup goes. Durable with the other attributes."""


def made_by_following(cg: Cgroup) -> bool:
    """Whether ``cg`` was made because the followed hierarchy had a process in it
    (``FOLLOWED_MARK``)."""
    return bool(cg.attrs.get("", {}).get(FOLLOWED_MARK))


FREEZE_WAIT = 2.0
"""Seconds a write to ``cgroup.freeze`` waits at most for the processes it stops to stop."""
KILL_ROUNDS = 8
"""Times at most a write to ``cgroup.kill`` looks for processes to kill: it looks again after
the process tracker caught up, for children forked before their parent died (the kernel kills
a fork racing with ``cgroup.kill`` in ``cgroup_post_fork``)."""
# the kinds of the hottest changes, read once (an enum member is a class attribute lookup away)
_FORK, _EXIT, _IOASID, _SET = ChangeKind.FORK, ChangeKind.EXIT, ChangeKind.IOASID, ChangeKind.SET


def unheard(change: Change) -> None:
    """``System.on_change`` while nobody listens (no ``on_change`` given, none set since): a
    tenant's calls (fork, open, ioctl, exit) then make no ``Change`` at all, since none would
    be read; the rarer calls make theirs and hand it here, where it is dropped."""


def _no_file(path: str, name: str) -> None:
    raise IoasidError(ENOENT, f"{path} has no {name}")


def _kernel_error(exc: OSError, what: str) -> IoasidError:
    return IoasidError(exc.errno or EIO, f"{what}: {exc.strerror or exc}")


class System:
    """The shared model and the changes faces make to it.

    ``on_change(change)`` is called with a ``Change`` under the lock after every change succeeds
    and before the method returns (the daemon makes the change durable there); without one it
    is ``unheard``, and the calls a process makes through its life build no record. A method that
    raises has changed nothing (but for the events counters of a refused ioctl, whose ``Change``
    carries the ``Refusal``). ``wq`` is the core's work queue: by default ``step`` mode, where
    deferred work (the VT-d FREE cleanup) runs, and reports its own change, before the method
    returns; the daemon passes a ``thread`` mode queue (see ``ioasidsd.model.workqueue``).
    ``hierarchy`` is ``v1`` (a cgroup-v1 hierarchy, the default) or ``v2`` (a cgroup-v2 one,
    ``ioasidsd.model.unified``): the controller is on one hierarchy (``ValueError`` for another
    name).
    """

    def __init__(
        self,
        knobs: Knobs | None = None,
        *,
        processes: ProcessSource | None = None,
        wq: OrderedWorkQueue | None = None,
        on_change: Callable[[Change], None] | None = None,
        hierarchy: str = "v1",
    ) -> None:
        if hierarchy not in ("v1", "v2"):
            raise ValueError(f"hierarchy must be v1 or v2, not {hierarchy!r}")
        self.core = IoasidCore(knobs, wq=wq)
        tree: Hierarchy | None = None
        if hierarchy == "v2":
            tree = UnifiedHierarchy(self.core.lock, enter=self.core.check_not_in_notifier)
        self.controller = IoasidsController(self.core, tree)
        self.cgroups = self.controller.hierarchy
        self._v2 = isinstance(self.cgroups, UnifiedHierarchy)
        self.knobs = self.core.knobs
        self.lock: ModelLock = self.core.lock
        self._due = self.core.wq.due  # what ioasid_ioctl tests before ``lock.finish()``
        self.processes = processes or ProcessSource()
        self.on_change: Callable[[Change], None] = on_change or unheard
        self.names_watchers: list[Callable[[Change], None]] = []
        """Each is called under the lock, after ``on_change``, with each change that may remove
        a name from the tree: a cgroup removed (``RMDIR``) or renamed (``RENAME``), or files a
        cgroup no longer has (``CONTROL`` from ``cgroup.subtree_control`` or ``cgroup.type``).
        For a face whose kernel keeps directory entries (``cgroupfs.kernelcache``, one a
        mount): it follows these rare changes without following the rest of the feed."""
        self.settle: Callable[[], object] = lambda: None
        """Called before an untracked process is placed: the process tracker catches up;
        ``False`` when it could not (see ``place``)."""
        self.orphans: dict[int, float] = {}
        """pid -> start time of processes whose fork may have been missed (``note_orphans``)."""
        self.unplaced = "refuse"
        """What ``place`` does with a process whose cgroup cannot be established: ``refuse``
        (``EPERM``) or ``root``."""
        self.kernel: KernelMembership | None = None
        """The named hierarchy that keeps the members, when the daemon has one."""
        self.realise_followed: Callable[[str], Cgroup] = self._make_followed
        """Called under the lock with the path of a cgroup of a followed hierarchy that this
        one lacks, when a process is found in it: makes it (and its missing ancestors) and
        returns it; ``IoasidError`` if it cannot. By default ``mkdir`` each missing level
        (the new cgroups get the knobs' ``new_cgroup_max``); whoever realises slices with
        their limits replaces it."""
        self._followed: set[Cgroup] | None = None
        """The cgroups made by following (``FOLLOWED_MARK``), found by one walk of the tree
        the first time they are asked for (after a restore has filled it), then kept as
        following marks more; removed ones are dropped when next asked for."""
        self._init_userapi()

    # ------------------------------------------------------------------ hierarchy
    def mkdir(self, path: str, *, reserved_names: frozenset[str] = frozenset()) -> Cgroup:
        """Create the cgroup at ``path``; see ``Hierarchy.mkdir`` for errors."""
        parent_path, _, name = path.strip("/").rpartition("/")
        with self.lock:
            parent = self.cgroups.lookup(parent_path)
            tree = self.cgroups
            if isinstance(tree, UnifiedHierarchy):
                cg = tree.mkdir(parent, name, reserved_names=reserved_names,
                                now=time.monotonic_ns())
            else:
                cg = tree.mkdir(parent, name, reserved_names=reserved_names)
            if self.kernel is not None:
                try:
                    self.kernel.mkdir(cg.path)
                except OSError as exc:
                    self.cgroups.rmdir(cg)
                    raise _kernel_error(exc, f"cannot make {cg.path} in the kernel") from None
            self.on_change(Change(ChangeKind.MKDIR, cgroups=(cg,)))
            return cg

    def _names_changed(self, change: Change) -> None:
        """Report ``change``, one that may remove a name (see ``names_watchers``)."""
        self.on_change(change)
        for watcher in self.names_watchers:
            watcher(change)

    def rmdir(self, path: str) -> None:
        """Remove the cgroup at ``path``; see ``Hierarchy.rmdir``."""
        with self.lock:
            cg = self.cgroups.lookup(path)
            where = cg.path
            if self.kernel is not None and not cg.is_root:
                try:  # the kernel refuses while a process it keeps there lives (EBUSY)
                    self.kernel.rmdir(where)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise _kernel_error(exc, f"cannot remove {where}") from None
                try:
                    self.cgroups.rmdir(cg)
                except BaseException:
                    with contextlib.suppress(OSError):
                        self.kernel.mkdir(where)
                    raise
            else:
                self.cgroups.rmdir(cg)
            pooled = tuple(self.controller.take_pooled())
            self._names_changed(Change(ChangeKind.RMDIR, cgroups=(cg,), path=where, ids=pooled))

    def rename(self, old: str, new: str, *, reserved_names: frozenset[str] = frozenset()) -> None:
        """Rename ``old`` to ``new`` (same parent only); see ``Hierarchy.rename``."""
        new_parent_path, _, new_name = new.strip("/").rpartition("/")
        with self.lock:
            cg = self.cgroups.lookup(old)
            new_parent = self.cgroups.lookup(new_parent_path)
            old_path = cg.path
            self.cgroups.rename(cg, new_parent, new_name, reserved_names=reserved_names)
            if self.kernel is not None and cg.path != old_path:
                try:
                    self.kernel.rename(old_path, cg.path)
                except OSError as exc:
                    self.cgroups.rename(cg, new_parent, old_path.rpartition("/")[2])
                    raise _kernel_error(exc, f"cannot rename {old_path} in the kernel") from None
            self._names_changed(Change(ChangeKind.RENAME, cgroups=(cg,), path=old_path))

    def write_max(self, path: str, data: bytes | str) -> None:
        """A write to ``ioasids.max``: parse (``EINVAL``/``ERANGE``) and grant it; on a v2
        hierarchy ``ENOENT`` where the controller is not enabled (the file is absent)."""
        limit = parse_limit(data)
        with self.lock:
            cg = self.cgroups.lookup(path)
            tree = self.cgroups
            if isinstance(tree, UnifiedHierarchy) and not tree.enabled(cg, self.controller.name):
                raise IoasidError(ENOENT, f"{cg.path}: the ioasids controller is not enabled")
            before = (cg.limit, cg.reserved, self.core.capacity_avail)
            self.controller.set_max(cg, limit)
            pooled = tuple(self.controller.take_pooled())
            if (cg.limit, cg.reserved, self.core.capacity_avail) != before or pooled:
                # rewriting the same limit has nothing to store; a change of limit may change
                # the reservations of the limits below, and make live IOASIDs pooled
                below = tuple(c for c in cg.descendants() if c is not cg and c.limit is not None)
                self.on_change(Change(ChangeKind.LIMIT, cgroups=(cg, *below), ids=pooled))

    def set_root_max(self, limit: int | None) -> None:
        """Set the limit on IOASIDs charged to the root cgroup itself (``None``: ``max``, the
        kernel's behaviour; ``IoasidsController.set_root_max``). ``EINVAL`` for a negative
        limit."""
        with self.lock:
            root = self.cgroups.root
            before = (root.limit, root.counter, root.peak)
            self.controller.set_root_max(limit)
            if (root.limit, root.counter, root.peak) != before:
                self.on_change(Change(ChangeKind.LIMIT, cgroups=(root,)))

    def write_flag(self, path: str, name: str, data: bytes | str) -> None:
        """A write to ``notify_on_release`` or ``cgroup.clone_children``."""
        value = parse_flag(data)
        attr = {"notify_on_release": "notify_on_release",
                "cgroup.clone_children": "clone_children"}.get(name)
        if attr is None:
            raise IoasidError(EINVAL, f"{name} is not a flag")
        with self.lock:
            cg = self.cgroups.lookup(path)
            if getattr(cg, attr) != value:
                setattr(cg, attr, value)
                self.on_change(Change(ChangeKind.FLAG, cgroups=(cg,)))

    def write_release_agent(self, data: bytes | str) -> None:
        """A write to the root's ``release_agent``: as ``cgroup_release_agent_write``, the bytes
        up to the first NUL with white space stripped at both ends (``strstrip``), any other
        byte kept; stored as text with ``surrogateescape`` (``formats.parse_release_agent``,
        which also says what a ``str`` means). ``EINVAL`` only for a ``str`` that encodes to
        no bytes."""
        text = parse_release_agent(data)
        with self.lock:
            if self.cgroups.release_agent != text:
                self.cgroups.release_agent = text
                self.on_change(Change(ChangeKind.RELEASE_AGENT))

    # ------------------------------------------------------------------ cgroup-v2 core files
    def _unified(self) -> UnifiedHierarchy:
        if not isinstance(self.cgroups, UnifiedHierarchy):
            raise IoasidError(EINVAL, "not a cgroup-v2 hierarchy")
        return self.cgroups

    def write_subtree_control(self, path: str, data: bytes | str) -> None:
        """A write to ``cgroup.subtree_control`` (v2): parse (``EINVAL``) and apply it; see
        ``UnifiedHierarchy.set_subtree_control`` for the refusals."""
        tree = self._unified()
        enable, disable = parse_subtree_control(data, tree.controller_names())
        with self.lock:
            cg = tree.lookup(path)
            if tree.set_subtree_control(cg, enable, disable):
                self._names_changed(Change(ChangeKind.CONTROL, cgroups=tuple(cg.descendants())))

    def write_cgroup_type(self, path: str, data: bytes | str) -> None:
        """A write to ``cgroup.type`` (v2): only ``threaded`` (``EINVAL``); see
        ``UnifiedHierarchy.set_threaded``."""
        tree = self._unified()
        parse_cgroup_type(data)
        with self.lock:
            cg = tree.lookup(path)
            if tree.set_threaded(cg):
                self._names_changed(Change(ChangeKind.CONTROL, cgroups=tuple(cg.descendants())))

    def write_hierarchy_limit(self, path: str, name: str, data: bytes | str) -> None:
        """A write to ``cgroup.max.depth`` or ``cgroup.max.descendants`` (v2): ``max`` or a
        number (``EINVAL``, ``ERANGE``)."""
        tree = self._unified()
        value = parse_hierarchy_limit(data)
        with self.lock:
            cg = tree.lookup(path)
            if name == "cgroup.max.depth":
                changed = tree.set_max_depth(cg, value)
            elif name == "cgroup.max.descendants":
                changed = tree.set_max_descendants(cg, value)
            else:
                raise IoasidError(EINVAL, f"{name} is not a hierarchy limit")
            if changed:
                self.on_change(Change(ChangeKind.CONTROL, cgroups=(cg,)))

    def write_freeze(self, path: str, data: bytes | str) -> None:
        """A write to ``cgroup.freeze`` (v2): ``0`` or ``1`` (``EINVAL``, ``ERANGE``: see
        ``formats.parse_freeze``; ``EINVAL`` for the root), at the time of
        ``time.monotonic_ns`` (the clock of ``frozen_usec``). The processes of every cgroup
        whose ``frozen`` turned (``UnifiedHierarchy.set_freeze``) get ``SIGSTOP`` or
        ``SIGCONT`` (the daemon's own process never); a freeze returns once they have stopped,
        or after ``FREEZE_WAIT`` seconds."""
        tree = self._unified()
        freeze = parse_freeze(data)
        with self.lock:
            cg = tree.lookup(path)
            turned = tree.set_freeze(cg, freeze, time.monotonic_ns())
            if turned is None:
                return
            self.on_change(Change(ChangeKind.CONTROL, cgroups=(cg, *turned)))
            members = [(proc.pid, proc.start_time) for node in turned for proc in node.procs]
            sent = self._signal(members, SIGSTOP if freeze else SIGCONT)
        if freeze:
            self._await_stopped(sent)

    def write_kill(self, path: str, data: bytes | str) -> None:
        """A write to ``cgroup.kill`` (v2): only ``1`` (``EINVAL``, ``ERANGE``: see
        ``formats.parse_kill``). ``SIGKILL`` to every process of the cgroup and its
        descendants (``EOPNOTSUPP`` in a threaded cgroup, ``EINVAL`` for the root), the
        daemon's own process excepted; after the process tracker caught up, again to those it
        found meanwhile (up to ``KILL_ROUNDS`` times). Returns once the signals are sent: the
        processes leave the cgroup as they exit, as in the kernel. The model changes only by
        those exits."""
        tree = self._unified()
        parse_kill(data)
        killed: set[tuple[int, float]] = set()
        for _ in range(KILL_ROUNDS):
            with self.lock:
                cg = tree.lookup(path)
                members = [(proc.pid, proc.start_time) for proc in tree.kill_targets(cg)]
            fresh = [member for member in members if member not in killed]
            if not fresh:
                return
            self._signal(fresh, SIGKILL)
            killed.update(fresh)
            self.settle()

    def _signal(self, members: Iterable[tuple[int, float]], signum: int) -> list[tuple[int, float]]:
        """Send ``signum`` to each process (pid and start time) but this one; those it
        reached."""
        me = os.getpid()
        signal = self.processes.signal
        return [(pid, start) for pid, start in members
                if pid != me and signal(pid, start, signum)]

    def _await_stopped(self, members: list[tuple[int, float]]) -> None:
        """Wait until each process has stopped or is gone, ``FREEZE_WAIT`` seconds at most (a
        signal is delivered when its target next runs: microseconds on an idle machine)."""
        stopped = self.processes.stopped
        deadline = time.monotonic() + FREEZE_WAIT
        pause = 0.0005
        while True:
            members = [(pid, start) for pid, start in members if not stopped(pid, start)]
            if not members or time.monotonic() >= deadline:
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _follow_freezer(self, proc: Process, was_frozen: bool) -> None:
        """``proc`` moved (or was born) where ``frozen`` is not ``was_frozen``: stop or
        continue it, as the kernel freezes a task entering a frozen cgroup and thaws one
        leaving it."""
        tree = self.cgroups
        if not isinstance(tree, UnifiedHierarchy):
            return
        now = tree.frozen(proc.cgroup)
        if now != was_frozen:
            self._signal([(proc.pid, proc.start_time)], SIGSTOP if now else SIGCONT)
    # ------------------------------------------------------------------ rehearsal
    def rehearse(self, steps: Sequence[tuple[str, str | None, str]]) -> None:
        """Whether every one of ``steps`` would be granted now, in order, tried on a copy of the
        model: this one is not changed and nothing is reported. ``(path, None, "")`` makes the
        cgroup at ``path``; ``(path, name, data)`` writes ``data`` to its control file ``name``
        as the mount would (``ioasids.max``, ``notify_on_release``, ``cgroup.clone_children``,
        the root's ``release_agent``; on v2 also ``cgroup.subtree_control``,
        ``cgroup.max.depth``, ``cgroup.max.descendants``).

        Returns when all would be granted; raises the first refusal's ``IoasidError``, its
        message led by the step (``create PATH: `` or ``PATH NAME: ``); ``EINVAL`` for a file
        no step may write. File permissions are the face's to check, not this. The copy costs a
        snapshot of the whole model, taken under the lock.
        """
        shadow = System(self.knobs, hierarchy="v2" if isinstance(self.cgroups, UnifiedHierarchy)
                        else "v1")
        with self.lock:
            record = snapshot_dump(self.core)
        snapshot_load(record, shadow.core)
        writes: dict[str, Callable[[str, str], None]] = {
            "ioasids.max": shadow.write_max,
            "notify_on_release": lambda p, d: shadow.write_flag(p, "notify_on_release", d),
            "cgroup.clone_children": lambda p, d: shadow.write_flag(p, "cgroup.clone_children",
                                                                    d),
            "release_agent": lambda p, d: shadow.write_release_agent(d) if p.strip("/") == ""
            else _no_file(p, "release_agent"),
            "cgroup.subtree_control": shadow.write_subtree_control,
            "cgroup.max.depth": lambda p, d: shadow.write_hierarchy_limit(p, "cgroup.max.depth",
                                                                          d),
            "cgroup.max.descendants": lambda p, d: shadow.write_hierarchy_limit(
                p, "cgroup.max.descendants", d),
        }
        for path, name, data in steps:
            try:
                if name is None:
                    shadow.mkdir(path)
                elif name in writes:
                    writes[name](path, data)
                else:
                    raise IoasidError(EINVAL, f"{name} is not a file a step may write")
            except IoasidError as exc:
                shown = path if path.isprintable() else repr(path)
                what = f"create {shown}" if name is None else f"{shown} {name}"
                raise IoasidError(exc.errno or EIO, f"{what}: {exc.strerror}") from None

    # ------------------------------------------------------------------ processes
    def process(self, pid: int) -> Process:
        """The model's process for a real ``pid`` (tracked in the root if new). ``ESRCH``."""
        return self._process(pid, self.processes.facts(pid))

    def _process(self, pid: int, facts: ProcessFacts) -> Process:
        """``process`` of ``pid`` whose ``facts`` the caller has just read."""
        with self.lock:
            proc = self.cgroups.process(facts.tgid)
            if proc is not None and proc.start_time == facts.start_time:
                return proc
            leader = facts if facts.tgid == pid else self.processes.facts(facts.tgid)
            where = None if self.kernel is None else self._kernel_cgroup(leader.pid)
            return self.cgroups.track(leader.pid, leader.start_time, where, leader.threads)

    def write_procs(self, path: str, data: bytes | str, *, writer_pid: int, writer_uid: int,
                    writer_gid: int = 0, threadgroup: bool = True) -> Process:
        """A write to ``cgroup.procs`` or ``tasks``: move a real process (``0``: the process of
        ``writer_pid``, the thread calling write(2)).

        ``writer_uid`` is the effective uid the write is judged by. cgroup-v1 judges the
        credentials the file was opened with (``of->file->f_cred``), so a face passes the
        opener's, not those of the process calling write(2): they differ for a descriptor
        passed over a socket or inherited across a ``setuid``.

        ``EINVAL`` for junk or a kernel thread that may not move, ``ESRCH`` for no such process,
        ``EACCES`` when ``writer_uid`` is not root and matches neither the target's uid nor its
        saved uid. With membership kept by the kernel (v1 only), the kernel moves the process
        first (all its threads, whichever file was written) and its refusal is the write's.

        On a v2 hierarchy the target's owner does not matter: ``EACCES`` unless ``writer_uid``
        and ``writer_gid`` may write the ``cgroup.procs`` of the common ancestor of the source
        and ``path``; then the v2 rules of ``UnifiedHierarchy.attach`` (``EBUSY``,
        ``EOPNOTSUPP``; ``threadgroup`` false for a write to ``cgroup.threads``).
        """
        pid = parse_pid(data) or writer_pid
        facts = self.processes.facts(pid)
        if not facts.movable:
            raise IoasidError(EINVAL, f"process {pid} is a kernel thread that may not move")
        tree = self.cgroups
        if isinstance(tree, UnifiedHierarchy):
            with self.lock:
                dst = tree.lookup(path)
                proc = self.process(pid)
                src = proc.cgroup
                tree.check_move(src, dst, writer_uid, writer_gid)
                tree.attach(proc, dst, threadgroup=threadgroup)
                self.on_change(Change(ChangeKind.ATTACH, cgroups=(src,), processes=(proc,)))
                self._follow_freezer(proc, tree.frozen(src))
                return proc
        tree.check_owner(writer_uid, (facts.uids[0], facts.uids[2]))
        with self.lock:
            dst = self.cgroups.lookup(path)
            if self.kernel is not None:
                try:
                    self.kernel.attach(facts.tgid, dst.path)
                except OSError as exc:
                    raise _kernel_error(exc, f"cannot move process {pid}") from None
            proc = self.process(pid)
            src = proc.cgroup
            self.cgroups.attach(proc, dst)
            self.on_change(Change(ChangeKind.ATTACH, cgroups=(src,), processes=(proc,)))
            return proc

    def fork(self, parent_pid: int, pid: int, start_time: float, *,
             into: Cgroup | None = None) -> None:
        """A real process forked (from the process tracker): the child joins its parent's
        cgroup, or ``into``, the cgroup its parent was born in when the parent exited before
        its own fork was seen (then, if that cgroup is gone, the child is an orphan: see
        ``place``)."""
        lock = self.lock
        hold(lock)  # not ``with``: a tenant's every call (see ``ioasidsd.model.modellock``)
        try:
            if into is None:
                child = self.cgroups.fork(parent_pid, pid, start_time)
            elif not is_removed(into):
                child = self.cgroups.track_locked(pid, start_time, into)
            else:
                self.note_orphans({pid: start_time})
                return
            if child is not None:
                feed = self.on_change
                if feed is not unheard:
                    feed(exact_change(_FORK, (), (child,), (), ()))
                if self._v2:
                    self._follow_freezer(child, False)
        finally:
            let_go(lock)
            if self._due or lock.after_when:
                lock.finish_all()

    def exit(self, pid: int) -> None:
        """A real process exited (from the process tracker): release what it held."""
        lock = self.lock
        hold(lock)  # not ``with``: a tenant's every call (see ``ioasidsd.model.modellock``)
        try:
            proc = self.cgroups.processes.get(pid)
            if proc is not None:
                self.cgroups.exit_locked(proc)
                feed = self.on_change
                if feed is not unheard:
                    feed(exact_change(_EXIT, (), (proc,), (), ()))
        finally:
            let_go(lock)
            if self._due or lock.after_when:
                lock.finish_all()

    # ------------------------------------------------------------------ member lists
    def member_pids(self, cg: Cgroup, *, threaded_subtree: bool = False) -> list[int]:
        """The process ids ``cgroup.procs`` of ``cg`` lists, ascending, without duplicates.

        A non-root cgroup lists its member processes that still run: the model may still hold
        a process whose exit the tracker has not reported yet, so each is checked against the
        machine (pid and start time, through ``processes``). The root lists every process of
        the machine that is in no child cgroup, as in a kernel cgroup-v1 hierarchy. With
        ``threaded_subtree``, the processes of ``cg``'s threaded descendants too (a v2
        threaded domain lists every process with a thread in its threaded subtree). With
        membership kept by the kernel, the kernel's list of the mirrored cgroup (``ENOENT``
        if it is gone from there meanwhile). The lock is held only to copy the members; the
        checks against the machine run without it."""
        kernel = self.kernel
        if kernel is not None:
            return self._kernel_list(kernel.procs, cg)
        if cg.parent is None:
            return self._root_pids()
        with self.lock:
            members = [(proc.pid, proc.start_time) for proc in cg.procs]
            if threaded_subtree:
                members += [(proc.pid, proc.start_time) for node in cg.descendants()
                            if node.threaded for proc in node.procs]
        alive = self.processes.alive
        return sorted({pid for pid, start in members if alive(pid, start)})

    def member_tids(self, cg: Cgroup) -> list[int]:
        """The thread ids ``tasks`` of ``cg`` lists, ascending: those of ``member_pids``
        (with membership kept by the kernel, the kernel's own list)."""
        kernel = self.kernel
        if kernel is not None:
            return self._kernel_list(kernel.tasks, cg)
        thread_ids = self.processes.thread_ids
        return sorted(tid for pid in self.member_pids(cg) for tid in thread_ids(pid))

    def _kernel_list(self, read: Callable[[str], list[int]], cg: Cgroup) -> list[int]:
        with self.lock:
            path = cg.path
        try:
            return read(path)
        except OSError as exc:
            raise IoasidError(exc.errno or ENOENT, f"{path}: {exc.strerror or exc}") from None

    def _root_pids(self) -> list[int]:
        """Every process of the machine except those that live in a child cgroup."""
        with self.lock:
            root = self.cgroups.root
            elsewhere = {proc.pid: proc.start_time for proc in self.cgroups.processes.values()
                         if proc.cgroup is not root}
        pids = self.processes.all_pids()
        if not elsewhere:
            return sorted(pids)
        alive = self.processes.alive
        # A tracked pid whose process has gone may have been reused by a process of the root.
        return sorted(pid for pid in pids if pid not in elsewhere or not alive(pid, elsewhere[pid]))

    # ------------------------------------------------------------------ file attributes
    def set_attrs(self, path: str, changes: Mapping[str, Mapping[str, int]]) -> None:
        """Record file attributes of the cgroup at ``path`` (``chmod``, ``chown``, ``touch``
        through the file system, and the owner of a cgroup a non-root user created).

        ``changes`` maps a file name (``""`` for the directory) to the attributes that change:
        ``mode`` (permission bits), ``uid``, ``gid``, ``atime``, ``mtime`` (nanoseconds). The
        model keeps them in ``Cgroup.attrs`` without interpreting them; the kernel enforces them
        on the mount. ``ENOENT`` if there is no such cgroup.
        """
        with self.lock:
            cg = self.cgroups.lookup(path)
            for name, attrs in changes.items():
                cg.attrs.setdefault(name, {}).update(attrs)
            self.on_change(Change(ChangeKind.ATTRS, cgroups=(cg,)))

    # ------------------------------------------------------------------ /dev/ioasid
    # The user API's changes: an open file per connection of a real process. Each method reports
    # what it changed, as kind "set" (open, release) or "ioasid" (ioctl, exit), with the records
    # the device touched (``_ioasid_changed``: ``ids``, ``sets``, ``cgroups``) and, for open and
    # exit, the process. A refused ioctl is reported with its ``Refusal``, and with the events
    # counters it may still have changed.
    def _init_userapi(self) -> None:
        self.ioasid_device = IoasidDevice(self.core)
        self.cgroups.exit_hooks.append(self._ioasid_exit_hook)

    def _ioasid_changed(self, kind: ChangeKind, processes: tuple[Process, ...] = (),
                        refusal: Refusal | None = None) -> None:
        """The one place where what the device touched becomes a ``Change``: reported when
        the device touched something or ``refusal`` is given."""
        change = self.ioasid_device.take_change(kind, processes, refusal)
        if change is not None:
            self.on_change(change)

    def _ioasid_exit_hook(self, proc: Process) -> None:
        device = self.ioasid_device
        if not device.release_at_exit_locked(proc):  # the hierarchy's hooks run under the lock
            device.process_exit(proc)
        feed = self.on_change
        if feed is unheard:
            device.forget_touched()
            return
        change = device.take_change(_IOASID, (proc,))  # ``_ioasid_changed`` inlined
        if change is not None:
            feed(change)

    def ioasid_process(self, pid: int) -> Process:
        """The process ``pid`` for a charge: the model's process when it is tracked, otherwise
        the process placed where it belongs first (``place``). ``ESRCH`` for no such process,
        ``EPERM`` when its cgroup cannot be established (see ``place``)."""
        facts = self.processes.facts(pid)
        if self.kernel is None:
            with self.lock:
                known = self.cgroups.processes.get(facts.tgid)
                if known is not None and known.start_time == facts.start_time:
                    return known
        return self._ioasid_place(pid, facts)

    def _ioasid_place(self, pid: int, facts: ProcessFacts) -> Process:
        """``ioasid_process`` for a process that is not tracked (or whose cgroup the kernel
        keeps): ``place`` its thread-group leader."""
        leader = facts if facts.tgid == pid else self.processes.facts(facts.tgid)
        return self.place(leader)

    def place(self, leader: ProcessFacts) -> Process:
        """Track the untracked process ``leader`` (a thread-group leader) in the cgroup it is
        in, by what the kernel still shows of its origin, at the moment it is about to be
        charged. In order:

        1. the tracker catches up (``settle``): a fork reported meanwhile places it; a
           ``settle`` that answers ``False`` (a degraded or lagging tracker) makes every chain
           that reaches init uncertain, as an orphan's is;
        2. its live ancestors: the nearest tracked one, if it started before them, gives its
           cgroup to the whole untracked chain below it, as the forks would have (a connecting
           child is charged where it was born, not where the tracker's delay would leave it);
        3. a chain that ends at init (re-parented, or a child of init) with no tracked ancestor
           is in the root, unless it descends from an ``orphans`` entry: a process whose fork
           the tracker may have missed (``note_orphans``). Then its process group, else its
           session, decides: the one cgroup outside the root that holds live members of it.
           No such member, or members in several cgroups: its place cannot be established,
           and it is refused with ``EPERM`` (``unplaced = "refuse"``, the default) or put in
           the root (``unplaced = "root"``).

        With membership kept by the kernel (``kernel``), none of this is guessed: the process
        is placed, or its record moved, where the kernel has it at this moment
        (``sync_member``), tracked or not.

        ``ESRCH`` if it is gone.
        """
        if self.kernel is not None:
            proc = self.sync_member(leader.pid)
            if proc is None:
                raise IoasidError(ESRCH, f"no process {leader.pid}")
            return proc
        exact = self.settle() is not False  # False: the tracker may be missing forks
        root = self.cgroups.root
        with self.lock:
            known = self.cgroups.process(leader.pid)
            if known is not None and known.start_time == leader.start_time:
                return known
        chain = [leader]
        ancestor: Process | None = None
        orphaned = False
        for _ in range(64):
            top = chain[-1]
            with self.lock:
                orphaned = orphaned or self.orphans.get(top.pid) == top.start_time
            ppid = self.processes.parent(top.pid)
            if ppid is None or ppid == 1:  # init's children: re-parented or born there
                break
            with self.lock:
                tracked = self.cgroups.process(ppid)
            if tracked is not None:
                if tracked.start_time <= top.start_time:
                    ancestor = tracked
                break
            try:
                chain.append(self.processes.facts(ppid))
            except IoasidError:
                break
        if ancestor is not None and ancestor.cgroup is not root:
            parent_pid = ancestor.pid
            for child in reversed(chain):
                self.fork(parent_pid, child.pid, child.start_time)
                parent_pid = child.pid
            return self._process(leader.pid, leader)
        if ancestor is not None or (exact and not orphaned):
            return self._process(leader.pid, leader)
        # the chain reaches init, and the forks that made it may not all have been seen
        cgroup, why = self._origin(leader)
        if not exact and not orphaned:
            why = f"process tracking is not keeping up ({why})"
        if cgroup is None and self.unplaced != "root":
            raise IoasidError(EPERM, f"process {leader.pid} cannot be placed: {why}; refused "
                                     f"rather than charged to the root")
        with self.lock:
            proc = self.cgroups.track(leader.pid, leader.start_time, cgroup, leader.threads)
            self.on_change(Change(ChangeKind.PLACE, processes=(proc,)))
            return proc

    def _kernel_cgroup(self, pid: int) -> Cgroup | None:
        """The cgroup the kernel has ``pid`` in (the caller holds the lock); ``None`` if the
        process is gone. A cgroup of a followed hierarchy that this one lacks is made
        (``realise_followed``). ``EPERM`` for a kernel cgroup this hierarchy does not have and
        does not make (a directory made in the named hierarchy behind the daemon's back, or
        one that cannot be made here): never charged to the root."""
        assert self.kernel is not None
        path = self.kernel.cgroup_of(pid)
        if path is None:
            return None
        try:
            return self.cgroups.lookup(path)
        except IoasidError:
            if not self.kernel.follows:
                raise IoasidError(EPERM, f"process {pid} is in the kernel's {path}, which "
                                         f"this hierarchy does not have") from None
        names = path.strip("/").split("/")
        depth, cg = 0, self.cgroups.root  # the levels there were before: not marked
        while depth < len(names) and names[depth] in cg.children:
            cg = cg.children[names[depth]]
            depth += 1
        try:
            return self.realise_followed(path)
        except IoasidError as exc:
            raise IoasidError(EPERM, f"process {pid} is in the host's {path}, which cannot "
                                     f"be made here: {exc.strerror}") from None
        finally:  # every level made now, even if a deeper one could not be
            for name in names[depth:]:
                made = cg.children.get(name)
                if made is None:
                    break
                cg = made
                self.set_attrs(cg.path, {"": {FOLLOWED_MARK: 1}})
                if self._followed is not None:
                    self._followed.add(cg)

    def followed_leftovers(self, present: Container[str]) -> list[str]:
        """The paths of the cgroups made by following (``FOLLOWED_MARK``) that hold no
        process, whose path is not in ``present`` (the host's cgroups) and whose every child
        is such a cgroup too; children before their parents, so that removing them in that
        order succeeds. Changes nothing; costs what following made, not the whole tree."""
        with self.lock:
            if self._followed is None:
                self._followed = {cg for cg in self.cgroups.cgroups() if made_by_following(cg)}
            gone = {cg for cg in self._followed if self.cgroups.parent_gone(cg)}
            self._followed -= gone
            unwanted = {cg for cg in self._followed if not cg.procs and cg.path not in present}
            leftover: dict[Cgroup, bool] = {}

            def removable(cg: Cgroup) -> bool:
                if cg not in leftover:
                    leftover[cg] = cg in unwanted and all(
                        removable(child) for child in cg.children.values())
                return leftover[cg]

            found = [cg for cg in unwanted if removable(cg)]
            found.sort(key=lambda cg: (-cg.path.count("/"), cg.path))
            return [cg.path for cg in found]

    def _make_followed(self, path: str) -> Cgroup:
        """``realise_followed``'s default: ``mkdir`` every missing level of ``path``."""
        with self.lock:
            cg = self.cgroups.root
            for name in path.strip("/").split("/"):
                child = cg.children.get(name)
                cg = child if child is not None else self.mkdir(f"{cg.path.rstrip('/')}/{name}")
            return cg

    def sync_member(self, pid: int) -> Process | None:
        """Make the model's record of the process ``pid`` (a thread-group leader) agree with the
        kernel's named hierarchy (``kernel`` must be set): an untracked process is tracked where
        the kernel has it (a ``place`` change), a tracked one in another cgroup is moved there
        (an ``attach`` change: its charges move as a write to ``cgroup.procs`` would move them),
        a tracked one that is gone exits. Returns the process, ``None`` if it is gone.

        The kernel is asked under the lock, so that no write to ``cgroup.procs`` comes between
        the answer and the record. ``EPERM`` as ``_kernel_cgroup``.
        """
        try:
            facts = self.processes.facts(pid)
        except IoasidError:
            facts = None
        with self.lock:
            known = self.cgroups.process(pid)
            if known is not None and (facts is None or known.start_time != facts.start_time):
                self.exit(pid)  # gone, or its pid now names a later process
                known = None
            if facts is None:
                return None
            cg = self._kernel_cgroup(pid)
            if cg is None:
                if known is not None:
                    self.exit(pid)
                return None
            if known is None:
                proc = self.cgroups.track(pid, facts.start_time, cg, facts.threads)
                self.on_change(Change(ChangeKind.PLACE, processes=(proc,)))
                return proc
            if known.cgroup is not cg:
                src = known.cgroup
                self.cgroups.attach(known, cg)
                self.on_change(Change(ChangeKind.ATTACH, cgroups=(src,), processes=(known,)))
            return known

    def _origin(self, leader: ProcessFacts) -> tuple[Cgroup | None, str]:
        """The cgroup outside the root whose live members share ``leader``'s process group,
        else its session; ``None`` and why when there is no such single cgroup."""
        with self.lock:
            candidates = [p for p in self.cgroups.processes.values()
                          if p.cgroup is not self.cgroups.root and p.pid != leader.pid]
        groups: dict[Cgroup, None] = {}
        sessions: dict[Cgroup, None] = {}
        for proc in candidates:
            stat = self.processes.stat(proc.pid)
            if stat is None or not stat.running or stat.start_time != proc.start_time:
                continue
            if stat.pgid == leader.pgid:
                groups[proc.cgroup] = None
            if stat.sid == leader.sid:
                sessions[proc.cgroup] = None
        for found, what in ((groups, f"process group {leader.pgid}"),
                            (sessions, f"session {leader.sid}")):
            if len(found) == 1:
                return next(iter(found)), what
            if len(found) > 1:
                paths = ", ".join(sorted(cg.path for cg in found))
                return None, f"its {what} has members in several cgroups ({paths})"
        return None, (f"its parent exited before its fork was seen, and no tracked process "
                      f"shares its process group {leader.pgid} or session {leader.sid}")

    def note_orphans(self, found: Mapping[int, float]) -> None:
        """Remember the processes (pid -> start time) whose fork the tracker may have missed:
        re-parented to init, untracked, started while events were lost or not watched (see
        ``place``). Entries that no longer run, or are tracked now, are forgotten."""
        with self.lock:
            candidates = {**self.orphans, **found}
        running = {pid: start for pid, start in candidates.items()  # /proc, off the lock
                   if self.processes.alive(pid, start)}
        with self.lock:
            orphans = {pid: start for pid, start in running.items()
                       if pid not in self.cgroups.processes}
            # noted by another caller meanwhile: kept, checked at the next call
            orphans.update((pid, start) for pid, start in self.orphans.items()
                           if pid not in candidates)
            if orphans != self.orphans:
                self.orphans = orphans
                self.on_change(Change(ChangeKind.ORPHANS, orphans=orphans))

    def ioasid_open(self, pid: int, *, closes_at_exit: bool = True) -> IoasidFile:
        """``open("/dev/ioasid")`` by the real process ``pid`` (see ``ioasid_process`` for the
        cgroup of a process not tracked yet). ``closes_at_exit=False``: the caller holds the
        file through descriptors that may outlive the opener and calls ``ioasid_release`` at
        their last close (see ``IoasidFile``).

        ``ESRCH`` for no such process, then the errors of ``IoasidDevice.open``.
        """
        if self.kernel is None:
            # a tracked process (every tenant of an experiment, most clients of the socket):
            # found, as ``ioasid_process`` finds it, and its file opened under one hold
            tgid, start_time, facts = self.processes.identity(pid)
            lock = self.lock
            hold(lock)  # not ``with``: a tenant's every call (see ``ioasidsd.model.modellock``)
            try:
                known = self.cgroups.processes.get(tgid)
                if known is not None and known.start_time == start_time:
                    device = self.ioasid_device
                    try:
                        return device.open_locked(known, closes_at_exit=closes_at_exit)
                    finally:
                        feed = self.on_change
                        if feed is unheard:
                            device.forget_touched()
                        else:
                            change = device.take_change(_SET, (known,))  # ``_ioasid_changed``
                            if change is not None:
                                feed(change)
            finally:
                let_go(lock)
                if self._due or lock.after_when:
                    lock.finish_all()
            proc = self._ioasid_place(pid, facts or self.processes.facts(pid))
        else:
            proc = self.ioasid_process(pid)
        with self.lock:
            try:
                return self.ioasid_device.open_locked(proc, closes_at_exit=closes_at_exit)
            finally:
                self._ioasid_changed(ChangeKind.SET, (proc,))

    def ioasid_ioctl(self, file: IoasidFile, cmd: int, arg: bytes, *,
                     pid: int | None = None, uid: int | None = None) -> tuple[int, bytes]:
        """An ioctl on ``file`` by the real process ``pid`` (default: the opener) of user
        ``uid`` (``None``: not known); returns the result and the output bytes, or raises the
        ``IoasidError`` the ioctl fails with. A refusal by the device is reported (kind
        ``ioasid``) with a ``Refusal`` naming the caller, the command, its cgroup, the level
        whose limit refused (if one did), the errno and the request's arguments."""
        opener = file.opener
        task = opener if pid is None or pid == opener.pid else self.ioasid_process(pid)
        if task is not opener and self.kernel is not None and opener.alive:
            # the kernel's hierarchy tells no exits: whether the opener is gone (its mm
            # defunct) is asked here, where it changes what another process's request does
            self.sync_member(opener.pid)
        lock = self.lock
        hold(lock)  # not ``with``: this is every request (see ``ioasidsd.model.modellock``)
        try:
            if self.core.notifier_depth:
                self.core.check_not_in_notifier()  # EDEADLK
            try:
                result = self.ioasid_device.ioctl_locked(file, cmd, arg, task)
            except IoasidError as exc:
                refusal = Refusal(pid=task.pid, uid=uid, command=uapi.command_name(cmd),
                                  cgroup=task.cgroup.path, level=exc.level,
                                  errno=exc.errno or 0, request=uapi.request_fields(cmd, arg),
                                  message=exc.strerror or "")
                self._ioasid_changed(ChangeKind.IOASID, refusal=refusal)
                raise
            except BaseException:
                self._ioasid_changed(ChangeKind.IOASID)
                raise
            feed = self.on_change
            if feed is unheard:
                self.ioasid_device.forget_touched()
                return result
            change = self.ioasid_device.take_change(_IOASID)  # ``_ioasid_changed`` inlined
            if change is not None:
                feed(change)
            return result
        finally:
            let_go(lock)
            if self._due:
                lock.finish()

    def ioasid_free_batch_ok(self, file: IoasidFile, arg: bytes) -> bool:
        """Whether ``IOASID_REQUEST_FREE_BATCH`` with ``arg`` would free every ID it names now
        (``IoasidDevice.check_free_batch_locked``); changes nothing."""
        with self.lock:
            return self.ioasid_device.check_free_batch_locked(file, arg)

    def ioasid_release(self, file: IoasidFile, *, exited: bool = False) -> None:
        """The last close of ``file``. ``exited``: its opener is exiting, so the process exits
        first (as ``exit``), and the file is released with its mm gone, as the kernel closes
        an exiting process's files. Releasing twice does nothing."""
        with self.lock:
            if exited and file.opener.alive:
                self.cgroups.exit(file.opener)
                self.on_change(Change(ChangeKind.EXIT, processes=(file.opener,)))
            if file.released:
                return
            self.ioasid_device.release(file)
            self._ioasid_changed(ChangeKind.SET)

    def ioasid_release_unheld(self) -> int:
        """After a restart: release the ``/dev/ioasid`` sets of exited processes that no file
        holds any more (``IoasidDevice.release_unheld``); returns how many."""
        with self.lock:
            released = self.ioasid_device.release_unheld()
            self._ioasid_changed(ChangeKind.SET)
            return released

    # ------------------------------------------------------------------ VT-d
    # The simulated IOMMU. Its binds and unbinds come through the faces (the user API's bind
    # extension), which report them; the one change it makes on its own is the FREE cleanup on
    # the core's work queue, reported here.
    def vtd_attach(self, driver: VtdDriver) -> None:
        """Make ``driver`` (booted over this system's core) the system's IOMMU: it serves the
        bind extension of ``/dev/ioasid``, and what its FREE cleanup changes on the work queue
        (the UNBIND, the final reclaim, the uncharge, perhaps the end of a set) is handed to
        ``on_change`` as kind ``vtd_cleanup`` with the IOASIDs (``ids``) and cgroups it touched,
        under the lock, before the cleanup lets go of it."""
        with self.lock:
            driver.on_change = self._vtd_changed
            self.ioasid_device.binder = VtdGuestBinder(driver)

    def _vtd_changed(self, change: Change) -> None:
        self.on_change(change)
